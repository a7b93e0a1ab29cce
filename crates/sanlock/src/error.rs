//! Errors of the lease layer, with sanlock's return values sorted into classes callers act on.

use super::ffi;

/// Which sanlock call failed: the same return value means different things in different calls
/// (`-ENOENT` is "lockspace not joined" for `inq_lockspace` but "daemon not running" when the
/// socket cannot be reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Register,
    Acquire,
    Release,
    Inquire,
    AddLockspace,
    RemLockspace,
    InqLockspace,
    GetHosts,
    ReadResource,
    ReadOwners,
    WriteLockspace,
    WriteResource,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Op::Register => "register",
            Op::Acquire => "acquire",
            Op::Release => "release",
            Op::Inquire => "inquire",
            Op::AddLockspace => "add_lockspace",
            Op::RemLockspace => "rem_lockspace",
            Op::InqLockspace => "inq_lockspace",
            Op::GetHosts => "get_hosts",
            Op::ReadResource => "read_resource",
            Op::ReadOwners => "read_resource_owners",
            Op::WriteLockspace => "write_lockspace",
            Op::WriteResource => "write_resource",
        };
        f.write_str(s)
    }
}

/// What went wrong in the lease layer.
#[derive(Debug, thiserror::Error)]
pub enum SanlockError {
    /// libsanlock.so.1 is not installed (or lacks a symbol lvchain needs).
    #[error("sanlock library unavailable: {0}")]
    LibraryUnavailable(String),
    /// The sanlock daemon is not running or its socket cannot be reached.
    #[error("sanlock {op}: the sanlock daemon is not reachable ({detail})")]
    DaemonUnavailable { op: Op, detail: String },
    /// A name, path, offset or host id lvchain was asked to use is not valid for sanlock.
    #[error("invalid lease argument: {0}")]
    InvalidArgument(String),
    /// This host has not joined the lockspace (or it is not known to the daemon).
    #[error("sanlock {op}: lockspace {lockspace:?} is not joined on this host")]
    LockspaceNotJoined { op: Op, lockspace: String },
    /// This host has already joined the lockspace (`add_lockspace` of a joined lockspace).
    #[error("lockspace {lockspace:?} is already joined on this host")]
    LockspaceAlreadyJoined { lockspace: String },
    /// A join or leave of the lockspace is already under way.
    #[error("sanlock {op}: lockspace {lockspace:?} is being added or removed")]
    LockspaceBusy { op: Op, lockspace: String },
    /// Leaving was refused because processes of this host still hold leases in the lockspace.
    #[error("sanlock {op}: lockspace {lockspace:?} still has leases held on this host")]
    LockspaceInUse { op: Op, lockspace: String },
    /// The host id is held by another host (two hosts configured with one id?) or is outside
    /// the lockspace's range.
    #[error("sanlock {op}: host id {host_id} of lockspace {lockspace:?} is unusable: {detail}")]
    HostIdUnusable {
        op: Op,
        lockspace: String,
        host_id: u64,
        detail: String,
    },
    /// The resource lease is held by another host, or by another process of this host.
    #[error("resource {resource:?} is held by another owner ({detail})")]
    Held { resource: String, detail: String },
    /// The lease would become free once its owner's host lease times out; not waited for.
    #[error("resource {resource:?}: owner host is failing, retry later ({detail})")]
    HeldRetry { resource: String, detail: String },
    /// The area on disk holds no (or a different, or a damaged) sanlock record.
    #[error("sanlock {op}: no valid lease record at {path}:{offset}: {detail}")]
    NotFormatted {
        op: Op,
        path: String,
        offset: u64,
        detail: String,
    },
    /// Reading or writing the lease storage failed.
    #[error("sanlock {op}: I/O error on the lease storage ({detail})")]
    Io { op: Op, detail: String },
    /// The lease storage did not answer within sanlock's I/O timeout.
    #[error("sanlock {op}: I/O timeout on the lease storage ({detail})")]
    Timeout { op: Op, detail: String },
    /// This process does not hold the lease it tried to release.
    #[error("sanlock {op}: resource {resource:?} is not held by this process")]
    NotHeld { op: Op, resource: String },
    /// The sector size of the lease storage could not be read.
    #[error("cannot read the sector size of {path}: {source}")]
    SectorSize {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading the lease area directly (without the daemon) failed.
    #[error("cannot read {path} at {offset}: {source}")]
    DirectIo {
        path: String,
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    /// Any other sanlock failure: the raw return value and sanlock's text for it.
    #[error("sanlock {op} failed: {rv} ({detail})")]
    Sanlock { op: Op, rv: i32, detail: String },
}

/// The names a failed call was about, for the error text.
#[derive(Debug, Default, Clone)]
pub(crate) struct Subject<'a> {
    pub lockspace: &'a str,
    pub resource: &'a str,
    pub path: &'a str,
    pub offset: u64,
    pub host_id: u64,
}

/// Sorts a negative sanlock return value (`-errno` or `SANLK_*`) into a [`SanlockError`].
pub(crate) fn classify(op: Op, rv: i32, s: &Subject<'_>) -> SanlockError {
    let detail = format!("{rv}: {}", ffi::strerror(rv));
    let ls = s.lockspace.to_string();
    let res = s.resource.to_string();
    match rv {
        // The client library reports a failed connect() to the daemon's socket as -errno.
        r if r == -libc::ECONNREFUSED || (r == -libc::ENOENT && op == Op::Register) => {
            SanlockError::DaemonUnavailable { op, detail }
        }
        r if r == -libc::ENOENT
            && matches!(
                op,
                Op::InqLockspace | Op::RemLockspace | Op::GetHosts | Op::Acquire
            ) =>
        {
            SanlockError::LockspaceNotJoined { op, lockspace: ls }
        }
        ffi::SANLK_ACQUIRE_LOCKSPACE => SanlockError::LockspaceNotJoined { op, lockspace: ls },
        r if r == -libc::ENOSPC && op == Op::Acquire => {
            SanlockError::LockspaceNotJoined { op, lockspace: ls }
        }
        r if r == -libc::EEXIST && op == Op::AddLockspace => {
            SanlockError::LockspaceAlreadyJoined { lockspace: ls }
        }
        r if r == -libc::EBUSY && op == Op::RemLockspace => {
            SanlockError::LockspaceInUse { op, lockspace: ls }
        }
        r if (r == -libc::EINPROGRESS || r == -libc::EAGAIN || r == -libc::EBUSY)
            && matches!(op, Op::AddLockspace | Op::RemLockspace) =>
        {
            SanlockError::LockspaceBusy { op, lockspace: ls }
        }
        ffi::SANLK_HOSTID_BUSY | ffi::SANLK_ADDLS_INVALID_HOSTID | ffi::SANLK_RENEW_OWNER => {
            SanlockError::HostIdUnusable {
                op,
                lockspace: ls,
                host_id: s.host_id,
                detail,
            }
        }
        ffi::SANLK_ACQUIRE_IDLIVE | ffi::SANLK_ACQUIRE_OWNED | ffi::SANLK_ACQUIRE_OTHER => {
            SanlockError::Held {
                resource: res,
                detail,
            }
        }
        // Another process of this host holds it (the daemon refuses a second local holder).
        r if (r == -libc::EEXIST || r == -libc::EBUSY || r == -libc::EAGAIN)
            && op == Op::Acquire =>
        {
            SanlockError::Held {
                resource: res,
                detail: format!("a process of this host holds it; {detail}"),
            }
        }
        ffi::SANLK_ACQUIRE_OWNED_RETRY | ffi::SANLK_ACQUIRE_SHRETRY => SanlockError::HeldRetry {
            resource: res,
            detail,
        },
        ffi::SANLK_RELEASE_OWNER | ffi::SANLK_RELEASE_LVER => {
            SanlockError::NotHeld { op, resource: res }
        }
        // The daemon answers -EPERM/-ENOENT to releasing a lease the client does not hold.
        r if (r == -libc::ENOENT || r == -libc::EPERM) && op == Op::Release => {
            SanlockError::NotHeld { op, resource: res }
        }
        ffi::SANLK_AIO_TIMEOUT => SanlockError::Timeout { op, detail },
        r if r == -libc::ETIMEDOUT => SanlockError::Timeout { op, detail },
        ffi::SANLK_DBLOCK_READ
        | ffi::SANLK_DBLOCK_WRITE
        | ffi::SANLK_LEADER_READ
        | ffi::SANLK_LEADER_WRITE
        | ffi::SANLK_ACQUIRE_IDDISK => SanlockError::Io { op, detail },
        r if r == -libc::EIO => SanlockError::Io { op, detail },
        ffi::SANLK_LEADER_MAGIC
        | ffi::SANLK_LEADER_VERSION
        | ffi::SANLK_LEADER_SECTORSIZE
        | ffi::SANLK_LEADER_LOCKSPACE
        | ffi::SANLK_LEADER_RESOURCE
        | ffi::SANLK_LEADER_NUMHOSTS
        | ffi::SANLK_LEADER_CHECKSUM
        | ffi::SANLK_DBLOCK_CHECKSUM
        | ffi::SANLK_ADDLS_SIZES => SanlockError::NotFormatted {
            op,
            path: s.path.to_string(),
            offset: s.offset,
            detail,
        },
        r if r == -libc::EINVAL => SanlockError::InvalidArgument(format!("sanlock {op}: {detail}")),
        _ => SanlockError::Sanlock { op, rv, detail },
    }
}

impl SanlockError {
    /// True when the lease is held by someone else (a live owner): the "held" class.
    pub fn is_held(&self) -> bool {
        matches!(
            self,
            SanlockError::Held { .. } | SanlockError::HeldRetry { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subj() -> Subject<'static> {
        Subject {
            lockspace: "ls",
            resource: "r",
            path: "/dev/x",
            offset: 1 << 20,
            host_id: 3,
        }
    }

    #[test]
    fn acquire_failures_by_owner_are_the_held_class() {
        for rv in [
            ffi::SANLK_ACQUIRE_IDLIVE,
            ffi::SANLK_ACQUIRE_OWNED,
            ffi::SANLK_ACQUIRE_OTHER,
            -libc::EEXIST,
            ffi::SANLK_ACQUIRE_OWNED_RETRY,
        ] {
            assert!(classify(Op::Acquire, rv, &subj()).is_held(), "{rv}");
        }
    }

    #[test]
    fn enoent_depends_on_the_call() {
        assert!(matches!(
            classify(Op::InqLockspace, -libc::ENOENT, &subj()),
            SanlockError::LockspaceNotJoined { .. }
        ));
        assert!(matches!(
            classify(Op::Register, -libc::ENOENT, &subj()),
            SanlockError::DaemonUnavailable { .. }
        ));
        assert!(matches!(
            classify(Op::Release, -libc::ENOENT, &subj()),
            SanlockError::NotHeld { .. }
        ));
        assert!(matches!(
            classify(Op::Release, -libc::EPERM, &subj()),
            SanlockError::NotHeld { .. }
        ));
        assert!(matches!(
            classify(Op::RemLockspace, -libc::EBUSY, &subj()),
            SanlockError::LockspaceInUse { .. }
        ));
    }

    #[test]
    fn storage_failures() {
        assert!(matches!(
            classify(Op::Acquire, ffi::SANLK_AIO_TIMEOUT, &subj()),
            SanlockError::Timeout { .. }
        ));
        assert!(matches!(
            classify(Op::ReadOwners, ffi::SANLK_LEADER_READ, &subj()),
            SanlockError::Io { .. }
        ));
        assert!(matches!(
            classify(Op::ReadOwners, ffi::SANLK_LEADER_MAGIC, &subj()),
            SanlockError::NotFormatted {
                offset: 1048576,
                ..
            }
        ));
        assert!(matches!(
            classify(Op::AddLockspace, ffi::SANLK_HOSTID_BUSY, &subj()),
            SanlockError::HostIdUnusable { host_id: 3, .. }
        ));
        assert!(matches!(
            classify(Op::AddLockspace, -libc::EEXIST, &subj()),
            SanlockError::LockspaceAlreadyJoined { .. }
        ));
        assert!(matches!(
            classify(Op::Acquire, -9999, &subj()),
            SanlockError::Sanlock { rv: -9999, .. }
        ));
    }
}
