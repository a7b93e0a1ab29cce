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

macro_rules! crash_points {
    ($($var:ident = $name:literal,)+) => {
        /// A named step boundary (a misspelt point is a compile error, not a point that never
        /// fires). Its name is what `LVCHAIN_CRASH_AT` and `LVCHAIN_PAUSE_AT` take.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum CrashPoint {
            $($var,)+
        }

        impl CrashPoint {
            /// Every crash point, in the order an operation reaches them.
            pub const ALL: &'static [CrashPoint] = &[$(CrashPoint::$var,)+];

            pub fn name(self) -> &'static str {
                match self {
                    $(CrashPoint::$var => $name,)+
                }
            }
        }
    };
}

crash_points! {
    CreateAfterLvcreate = "create.after-lvcreate",
    CreateAfterMetadata = "create.after-metadata",
    CreateAfterQemuImg = "create.after-qemu-img",
    CreateAfterParentUpdate = "create.after-parent-update",
    CreateAfterLinks = "create.after-links",
    CreateAfterCommit = "create.after-commit",
    RemoveAfterMark = "remove.after-mark",
    RemoveAfterParentUpdate = "remove.after-parent-update",
    RemoveAfterLinks = "remove.after-links",
    RemoveAfterMetadata = "remove.after-metadata",
    RemoveAfterWipe = "remove.after-wipe",
    RemoveAfterLvremove = "remove.after-lvremove",
    ExtendAfterLvextend = "extend.after-lvextend",
    ExtendAfterResize = "extend.after-resize",
    ExtendAfterMetadata = "extend.after-metadata",
    GcAfterParentUpdate = "gc.after-parent-update",
    GcAfterLinks = "gc.after-links",
    GcAfterMetadata = "gc.after-metadata",
    GcAfterWipe = "gc.after-wipe",
    GcAfterLvremove = "gc.after-lvremove",
    OpAfterIllegal = "op.after-illegal",
    OpAfterWork = "op.after-work",
    OpAfterLegal = "op.after-legal",
    DomainRemoveAfterMark = "domain-remove.after-mark",
}

/// The names of every crash point (`lvchain debug crash-points`).
pub fn names() -> Vec<&'static str> {
    CrashPoint::ALL.iter().map(|p| p.name()).collect()
}

/// Aborts the process when `LVCHAIN_CRASH_AT` names `point`.
pub fn point(point: CrashPoint) {
    let point = point.name();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_dotted() {
        let names = names();
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert!(names.iter().all(|n| n.contains(".after-")), "{names:?}");
    }
}
