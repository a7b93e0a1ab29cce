//! Crash points: a testing aid that makes the process die at a named step boundary.
//!
//! When the environment variable `LVCHAIN_CRASH_AT` names a point that an operation reaches,
//! the process aborts at once (no unwinding, no cleanup, no lock release other than what the
//! kernel does for a dead process), as a real crash would. `lvchain debug crash-points` lists
//! the names. Never set it in production.

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
}
