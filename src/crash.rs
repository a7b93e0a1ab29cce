//! Crash points: a testing aid that makes the process die at a named step boundary.
//!
//! When the environment variable `LVCHAIN_CRASH_AT` names a point that an operation reaches,
//! the process aborts at once (no unwinding, no cleanup, no lock release other than what the
//! kernel does for a dead process), as a real crash would. `lvchain debug crash-points` lists
//! the names. Never set it in production.
//!
//! `LVCHAIN_PAUSE_AT=<point>` with `LVCHAIN_PAUSE_FILE=<path>` pauses there instead: the
//! process writes its pid into the file and waits (holding whatever it holds) until the file
//! is removed, so a test can act while an operation is alive at that step.

/// Every crash point, in the order an operation reaches them.
pub const POINTS: &[&str] = &[
    "create.after-lvcreate",
    "create.after-metadata",
    "create.after-qemu-img",
    "create.after-parent-update",
    "create.after-links",
    "create.after-commit",
    "remove.after-mark",
    "remove.after-parent-update",
    "remove.after-links",
    "remove.after-metadata",
    "remove.after-wipe",
    "remove.after-lvremove",
    "extend.after-lvextend",
    "extend.after-resize",
    "extend.after-metadata",
    "gc.after-parent-update",
    "gc.after-links",
    "gc.after-metadata",
    "gc.after-wipe",
    "gc.after-lvremove",
    "op.after-illegal",
    "op.after-work",
    "op.after-legal",
    "domain-remove.after-mark",
];

/// Aborts the process when `LVCHAIN_CRASH_AT` names `point`.
pub fn point(point: &'static str) {
    debug_assert!(POINTS.contains(&point), "unlisted crash point {point}");
    if std::env::var("LVCHAIN_CRASH_AT").as_deref() == Ok(point) {
        eprintln!("lvchain: crashing at {point} (LVCHAIN_CRASH_AT)");
        std::process::abort();
    }
    if std::env::var("LVCHAIN_PAUSE_AT").as_deref() == Ok(point) {
        pause(point);
    }
}

/// Waits at `point` until the pause file is removed (at most an hour).
fn pause(point: &str) {
    let Some(file) = std::env::var_os("LVCHAIN_PAUSE_FILE") else {
        eprintln!("lvchain: LVCHAIN_PAUSE_AT={point} needs LVCHAIN_PAUSE_FILE; not pausing");
        return;
    };
    let file = std::path::PathBuf::from(file);
    if let Err(e) = std::fs::write(&file, format!("{}\n", std::process::id())) {
        eprintln!("lvchain: cannot write {}: {e}; not pausing", file.display());
        return;
    }
    eprintln!(
        "lvchain: paused at {point} until {} is removed",
        file.display()
    );
    let start = std::time::Instant::now();
    while file.exists() && start.elapsed() < std::time::Duration::from_secs(3600) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
