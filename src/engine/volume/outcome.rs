//! The outcome of a marking or commit `lvchange` that failed in a way that may have committed
//! (it ran past its deadline or was killed, see [`LvmError::maybe_committed`]): the VG is
//! re-read to learn which LVs carry the tag now. Never guesses: a failed re-read is an error.

use crate::domain::Domain;
use crate::error::{Error, Result};

/// The error for a command whose outcome cannot be learned: `failed`, and the re-read's error.
pub(crate) fn unknown(failed: LvmError, reread: Error) -> Error {
    Error::OutcomeUnknown {
        original: Box::new(Error::Lvm(failed)),
        reread: Box::new(reread),
    }
}
use crate::lvm::{Failure, LvmError};
use crate::tags::Tag;

/// An error of an LVM read that failed, as text (for each of several callers).
pub(super) fn copy_text(argv: &str, e: &Error) -> LvmError {
    LvmError::Failed {
        failure: Failure {
            argv: argv.into(),
            code: None,
            stderr: e.to_string(),
        },
    }
}

/// A copy of `e` for each of several callers (one command done for many): its class as
/// [`LvmError::maybe_committed`] judges it is kept (a command without lvm's own exit status
/// reads as killed).
pub(super) fn copy(e: &LvmError) -> LvmError {
    let failure = e.failure().cloned().unwrap_or_else(|| Failure {
        argv: "lvchange".into(),
        code: None,
        stderr: e.to_string(),
    });
    if e.maybe_committed() || failure.code.is_some() {
        LvmError::Failed { failure }
    } else {
        LvmError::Failed {
            failure: Failure {
                code: Some(5),
                ..failure
            },
        }
    }
}

/// Of the LVs named `names`, those that carry `tag` in the VG as it is now.
pub(super) fn carrying(domain: &Domain, names: &[String], tag: &Tag) -> Result<Vec<String>> {
    let tag = tag.to_string();
    Ok(domain
        .lvm
        .lvs(&domain.vg)?
        .into_iter()
        .filter(|r| names.contains(&r.lv_name) && r.lv_tags.contains(&tag))
        .map(|r| r.lv_name)
        .collect())
}

/// After `failed` changed `tag` on the LVs `names` (added when `added`, else removed): the
/// LVs whose tag is now as the command wanted it. Empty when the command surely changed
/// nothing (lvm ended on its own with an error). When the VG cannot be re-read the outcome is
/// unknown: the re-read's error is returned (the caller reports both with [`unknown`], never
/// as a change that did not happen).
pub(super) fn done_despite(
    domain: &Domain,
    failed: &LvmError,
    names: &[String],
    tag: &Tag,
    added: bool,
) -> Result<Vec<String>> {
    if !failed.maybe_committed() {
        return Ok(Vec::new());
    }
    let with = carrying(domain, names, tag)?;
    let done: Vec<String> = names
        .iter()
        .filter(|n| with.contains(n) == added)
        .cloned()
        .collect();
    tracing::warn!(
        error = %failed,
        tag = %tag,
        done = done.len(),
        of = names.len(),
        "an lvm command that failed may have committed; the VG re-read says it did on these LVs"
    );
    Ok(done)
}
