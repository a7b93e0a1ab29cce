//! The single-host lock manager ([`Local`]): the domain lock is this host's [`LocalLock`]
//! (a `flock`); volume leases ([`LocalLeases`]) are open-file-description write locks
//! (`F_OFD_SETLK`) on `/run/lock/lvchain/<VG>/<volume>.lease`. The kernel drops it when the
//! holder dies; a reader asks with `F_OFD_GETLK`, which reports a conflicting lock without
//! taking it.

pub use super::flock::LocalLock;
use super::{
    Descriptors, DomainGuard, Holder, LeaseError, LeaseGuard, LockError, LockKind, LockManager,
};
use crate::format::ids::VolumeId;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;

/// The local lock manager: this host's domain lock and volume leases.
#[derive(Debug, Clone, Default)]
pub struct Local {
    pub lock: LocalLock,
    pub leases: LocalLeases,
}

impl LockManager for Local {
    fn kind(&self) -> LockKind {
        LockKind::Local
    }

    fn lock_domain(&self, vg: &str) -> Result<Box<dyn DomainGuard>, LockError> {
        self.lock.lock_domain(vg)
    }

    fn acquire(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        self.leases
            .acquire(vg, volume, slot)
            .map_err(|e| super::explain_held(e, || self.leases.shared_holders(vg, volume, slot)))
    }

    fn acquire_shared(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        self.leases.acquire_shared(vg, volume, slot)
    }

    fn shared_holders(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Vec<u64>, LeaseError> {
        self.leases.shared_holders(vg, volume, slot)
    }

    fn holder(&self, vg: &str, volume: &VolumeId, slot: u32) -> Result<Option<Holder>, LeaseError> {
        self.leases.holder(vg, volume, slot)
    }
}

#[derive(Debug, Clone)]
pub struct LocalLeases {
    pub dir: PathBuf,
}

impl Default for LocalLeases {
    fn default() -> Self {
        LocalLeases {
            dir: PathBuf::from("/run/lock/lvchain"),
        }
    }
}

/// An OFD lock belongs to the open file description: a program handed the descriptor keeps it
/// held until it exits too.
struct Guard(File);
impl LeaseGuard for Guard {}
impl Descriptors for Guard {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.0.as_fd()]
    }
}

fn whole_file_lock(kind: libc::c_short) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl
}

impl LocalLeases {
    fn open(&self, vg: &str, volume: &VolumeId) -> Result<File, LeaseError> {
        let dir = self.dir.join(vg);
        let path = dir.join(format!("{volume}.lease"));
        let io = |e: std::io::Error| LeaseError::Io {
            what: path.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)
    }
}

impl LocalLeases {
    /// The volume's lease file opened read-only; None when it does not exist.
    fn open_to_read(&self, vg: &str, volume: &VolumeId) -> Result<Option<File>, LeaseError> {
        let path = self.dir.join(vg).join(format!("{volume}.lease"));
        match File::open(&path) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LeaseError::Io {
                what: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    pub fn acquire(
        &self,
        vg: &str,
        volume: &VolumeId,
        _slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        self.lock(vg, volume, libc::F_WRLCK as libc::c_short)
    }

    pub fn acquire_shared(
        &self,
        vg: &str,
        volume: &VolumeId,
        _slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        self.lock(vg, volume, libc::F_RDLCK as libc::c_short)
    }

    /// The exclusive holder (an operation); shared holders (readers) are not reported.
    pub fn holder(
        &self,
        vg: &str,
        volume: &VolumeId,
        _slot: u32,
    ) -> Result<Option<Holder>, LeaseError> {
        Ok(
            (self.conflicting(vg, volume)? == libc::F_WRLCK as libc::c_short).then_some(Holder {
                host_id: 0,
                alive: true,
            }),
        )
    }

    /// `[0]` (this host) while a process holds the lease in shared mode.
    pub fn shared_holders(
        &self,
        vg: &str,
        volume: &VolumeId,
        _slot: u32,
    ) -> Result<Vec<u64>, LeaseError> {
        Ok(
            if self.conflicting(vg, volume)? == libc::F_RDLCK as libc::c_short {
                vec![0]
            } else {
                Vec::new()
            },
        )
    }

    /// The type of a lock another open file description holds on the lease file (`F_UNLCK`:
    /// none): `F_OFD_GETLK` for a write lock reports any conflicting one without taking it.
    /// Only reads: a missing lease file is a free lease (every holder makes it first), and a
    /// read-only mount is read.
    fn conflicting(&self, vg: &str, volume: &VolumeId) -> Result<libc::c_short, LeaseError> {
        let Some(f) = self.open_to_read(vg, volume)? else {
            return Ok(libc::F_UNLCK as libc::c_short);
        };
        let mut fl = whole_file_lock(libc::F_WRLCK as libc::c_short);
        // SAFETY: as above; F_OFD_GETLK fills `fl` with a conflicting lock, if any.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
        if r != 0 {
            return Err(LeaseError::Io {
                what: format!("lease of {volume}"),
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        Ok(fl.l_type)
    }
}

impl LocalLeases {
    /// An OFD lock of `kind` (write: exclusive, read: shared) on the volume's lease file.
    fn lock(
        &self,
        vg: &str,
        volume: &VolumeId,
        kind: libc::c_short,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        // A shared lock needs the file open for reading only (a read-only mount's readers).
        let existing = if kind == libc::F_RDLCK as libc::c_short {
            self.open_to_read(vg, volume)?
        } else {
            None
        };
        let f = match existing {
            Some(f) => f,
            None => self.open(vg, volume)?,
        };
        let fl = whole_file_lock(kind);
        // SAFETY: fcntl with a valid flock struct on a descriptor we own.
        let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
        if r == 0 {
            return Ok(Box::new(Guard(f)));
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EACCES) => Err(LeaseError::Held {
                volume: *volume,
                holder: "a process on this host".into(),
            }),
            _ => Err(LeaseError::Io {
                what: format!("lease of {volume}"),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_domain_has_no_hosts() {
        let local = Local::default();
        assert!(matches!(
            local.join("vg", 1),
            Err(LockError::NoHosts {
                kind: LockKind::Local,
                ..
            })
        ));
        assert!(matches!(local.leave("vg"), Err(LockError::NoHosts { .. })));
        assert_eq!(local.joined_host_id("vg"), None);
        assert_eq!(local.other_hosts("vg").ok(), Some(vec![]));
    }

    #[test]
    fn held_lease_is_seen_and_refused_until_released() -> Result<(), LeaseError> {
        let dir = tempfile::tempdir().map_err(|e| LeaseError::Io {
            what: "tmp".into(),
            reason: e.to_string(),
        })?;
        let leases = LocalLeases {
            dir: dir.path().to_path_buf(),
        };
        let v = VolumeId::random();
        assert_eq!(leases.holder("vg", &v, 0)?, None);
        let g = leases.acquire("vg", &v, 0)?;
        assert!(leases.holder("vg", &v, 0)?.is_some());
        assert!(matches!(
            leases.acquire("vg", &v, 0),
            Err(LeaseError::Held { .. })
        ));
        drop(g);
        assert_eq!(leases.holder("vg", &v, 0)?, None);
        assert!(leases.acquire("vg", &v, 0).is_ok());
        Ok(())
    }

    #[test]
    fn shared_holders_coexist_and_keep_out_an_exclusive_one() -> Result<(), LeaseError> {
        let dir = tempfile::tempdir().map_err(|e| LeaseError::Io {
            what: "tmp".into(),
            reason: e.to_string(),
        })?;
        let leases = LocalLeases {
            dir: dir.path().to_path_buf(),
        };
        let v = VolumeId::random();
        let a = leases.acquire_shared("vg", &v, 0)?;
        let b = leases.acquire_shared("vg", &v, 0)?;
        assert_eq!(
            leases.holder("vg", &v, 0)?,
            None,
            "readers run no operation"
        );
        assert!(matches!(
            leases.acquire("vg", &v, 0),
            Err(LeaseError::Held { .. })
        ));
        assert_eq!(leases.shared_holders("vg", &v, 0)?, vec![0]);
        let manager = Local {
            leases: leases.clone(),
            ..Local::default()
        };
        assert!(matches!(
            manager.acquire("vg", &v, 0),
            Err(LeaseError::Prepared { ref hosts, .. }) if hosts == &[0]
        ));
        drop((a, b));
        assert_eq!(leases.shared_holders("vg", &v, 0)?, Vec::<u64>::new());
        let x = leases.acquire("vg", &v, 0)?;
        assert!(matches!(
            leases.acquire_shared("vg", &v, 0),
            Err(LeaseError::Held { .. })
        ));
        drop(x);
        Ok(())
    }
}
