//! Errors of the LVM command layer, classified from lvm's coarse exit codes and its stderr.
//!
//! lvm exits 5 for "not found", "already exists", "in use" and lock failures alike, so the
//! class comes from stderr. Every variant carries the failed command (argv, exit code, stderr).

use crate::exec::{ExecError, Finished};
use std::fmt;

/// The facts of one failed lvm command, kept in every error so an operator can rerun it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub argv: String,
    pub code: Option<i32>,
    pub stderr: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self
            .code
            .map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
        write!(f, "`{}` ({code}): {}", self.argv, self.stderr.trim())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    #[error("volume group {vg} not found; {failure}")]
    VgNotFound { vg: String, failure: Failure },
    #[error("logical volume {lv} not found; {failure}")]
    LvNotFound { lv: String, failure: Failure },
    #[error("{name} already exists; {failure}")]
    AlreadyExists { name: String, failure: Failure },
    #[error("logical volume {lv} is in use; {failure}")]
    InUse { lv: String, failure: Failure },
    #[error("not enough free space; {failure}")]
    NoSpace { failure: Failure },
    #[error("lvm could not take its lock; {failure}")]
    LockFailed { failure: Failure },
    #[error("lvm command failed: {failure}")]
    Failed { failure: Failure },
    #[error("lvm command timed out: {0}")]
    Timeout(ExecError),
    #[error("cannot run lvm: {0}")]
    Exec(ExecError),
    #[error("cannot parse the report of `{argv}`: {reason}")]
    Parse { argv: String, reason: String },
    #[error("{name}={value:?}: {reason}")]
    BadSetting {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl From<ExecError> for LvmError {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Timeout { .. } => LvmError::Timeout(e),
            other => LvmError::Exec(other),
        }
    }
}

impl LvmError {
    /// Whether the command may have committed its change although it failed: it ran past
    /// its deadline or was killed (lvm writes the metadata, then the process ends). Only a
    /// re-read of the VG tells; an lvm that exited on its own with an error changed nothing.
    pub fn maybe_committed(&self) -> bool {
        match self {
            LvmError::Timeout(_) | LvmError::Exec(ExecError::Io { .. }) => true,
            other => other
                .failure()
                .is_some_and(|f| f.code.is_none_or(|c| c > 128)),
        }
    }

    /// The failed command's facts, when lvm ran and failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            LvmError::VgNotFound { failure, .. }
            | LvmError::LvNotFound { failure, .. }
            | LvmError::AlreadyExists { failure, .. }
            | LvmError::InUse { failure, .. }
            | LvmError::NoSpace { failure }
            | LvmError::LockFailed { failure }
            | LvmError::Failed { failure } => Some(failure),
            _ => None,
        }
    }
}

fn capture<'a>(re: &regex::Regex, s: &'a str) -> Option<&'a str> {
    re.captures(s)
        .and_then(|c| c.get(1).or_else(|| c.get(2)))
        .map(|m| m.as_str())
}

macro_rules! re {
    ($name:ident, $pat:expr) => {
        fn $name() -> &'static regex::Regex {
            static R: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
            // The patterns are literals checked by the unit tests below.
            #[allow(clippy::unwrap_used)]
            R.get_or_init(|| regex::Regex::new($pat).unwrap())
        }
    };
}

re!(vg_not_found, r#"Volume group "([^"]+)" not found"#);
re!(
    lv_not_found,
    r#"Failed to find logical volume "([^"]+)"|Logical volume (\S+) not found"#
);
re!(
    already_exists,
    r#"Logical Volume "([^"]+)" already exists|A volume group called (\S+) already exists"#
);
re!(
    in_use,
    r#"Logical volume (\S+) in use|Can't remove open logical volume "([^"]+)""#
);
re!(
    no_space,
    r"(?i)insufficient free (space|extents)|No space left|not enough free"
);
re!(
    lock_failed,
    r"(?i)can't get lock|failed to lock|lock failed|lockd.*(fail|error)|Global lock failed"
);

/// Turns a finished, failed lvm command into the matching error class.
pub fn classify(f: &Finished) -> LvmError {
    let failure = Failure {
        argv: f.argv.clone(),
        code: f.code,
        stderr: f.stderr.clone(),
    };
    let e = &f.stderr;
    if let Some(vg) = capture(vg_not_found(), e) {
        return LvmError::VgNotFound {
            vg: vg.to_string(),
            failure,
        };
    }
    if let Some(lv) = capture(lv_not_found(), e) {
        return LvmError::LvNotFound {
            lv: lv.to_string(),
            failure,
        };
    }
    if let Some(name) = capture(already_exists(), e) {
        return LvmError::AlreadyExists {
            name: name.to_string(),
            failure,
        };
    }
    if let Some(lv) = capture(in_use(), e) {
        return LvmError::InUse {
            lv: lv.to_string(),
            failure,
        };
    }
    if no_space().is_match(e) {
        return LvmError::NoSpace { failure };
    }
    if lock_failed().is_match(e) {
        return LvmError::LockFailed { failure };
    }
    LvmError::Failed { failure }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn fin(code: i32, stderr: &str) -> Finished {
        Finished {
            argv: "lvm test".into(),
            code: Some(code),
            signal: None,
            stdout: String::new(),
            stderr: stderr.into(),
            duration: Duration::ZERO,
        }
    }

    // Outputs recorded from lvm 2.03.16 (Debian 12).
    #[test]
    fn only_a_command_killed_or_past_its_deadline_may_have_committed() {
        let failed = |code: Option<i32>| LvmError::Failed {
            failure: Failure {
                argv: "lvm lvchange".into(),
                code,
                stderr: String::new(),
            },
        };
        assert!(!failed(Some(5)).maybe_committed());
        assert!(failed(None).maybe_committed(), "killed by a signal");
        assert!(
            failed(Some(137)).maybe_committed(),
            "killed, through a shell"
        );
        let timeout = LvmError::Timeout(ExecError::Timeout {
            argv: "lvm lvchange".into(),
            after: std::time::Duration::from_secs(1),
        });
        assert!(timeout.maybe_committed());
        let spawn = LvmError::Exec(ExecError::Spawn {
            argv: "lvm".into(),
            source: std::io::Error::other("no such file"),
        });
        assert!(!spawn.maybe_committed(), "never ran");
    }

    #[test]
    fn classifies_recorded_errors() {
        let e = classify(&fin(
            5,
            "  Volume group \"nosuchvg\" not found\n  Cannot process volume group nosuchvg\n",
        ));
        assert!(
            matches!(&e, LvmError::VgNotFound { vg, .. } if vg == "nosuchvg"),
            "{e}"
        );
        let e = classify(&fin(5, "  Failed to find logical volume \"vg1/nolv\"\n"));
        assert!(
            matches!(&e, LvmError::LvNotFound { lv, .. } if lv == "vg1/nolv"),
            "{e}"
        );
        let e = classify(&fin(
            5,
            "  Logical Volume \"lv1\" already exists in volume group \"vg1\"\n",
        ));
        assert!(
            matches!(&e, LvmError::AlreadyExists { name, .. } if name == "lv1"),
            "{e}"
        );
        let e = classify(&fin(5, "  A volume group called vg1 already exists.\n"));
        assert!(
            matches!(&e, LvmError::AlreadyExists { name, .. } if name == "vg1"),
            "{e}"
        );
        let e = classify(&fin(5, "  Logical volume vg1/lv1 in use.\n"));
        assert!(
            matches!(&e, LvmError::InUse { lv, .. } if lv.starts_with("vg1/lv1")),
            "{e}"
        );
        let e = classify(&fin(
            5,
            "  Volume group \"vg1\" has insufficient free space (3 extents): 25 required.\n",
        ));
        assert!(matches!(e, LvmError::NoSpace { .. }), "{e}");
        let e = classify(&fin(5, "  Can't get lock for vg1.\n"));
        assert!(matches!(e, LvmError::LockFailed { .. }), "{e}");
        let e = classify(&fin(3, "  Invalid argument for --size: x\n"));
        match e {
            LvmError::Failed { failure } => {
                assert_eq!(failure.code, Some(3));
                assert!(failure.stderr.contains("Invalid argument"));
                assert_eq!(failure.argv, "lvm test");
            }
            other => panic!("wrong class: {other}"),
        }
    }
}
