//! This host's domain lock: an exclusive `flock` on `/run/lock/lvchain/<VG>.lock`, the whole
//! domain lock of a local domain and the first part of every other manager's. The lock is held
//! by the returned guard and released when it drops, or when the process and the programs it
//! handed the lock to ([`super::Holding`]) have exited. The descriptor is close-on-exec: no
//! other program inherits it.
//!
//! A process waiting for the lock says so: it holds a shared `flock` on
//! `/run/lock/lvchain/<VG>.want` while it waits (the kernel drops it if the waiter dies). A
//! holder that keeps the lock across many requests (the agent's bursts) probes that file with
//! a non-blocking exclusive `flock` ([`LocalLock::wanted`]) and releases at once when it fails.

use super::{Descriptors, DomainGuard, LockError};
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Single-host domain lock: `flock(LOCK_EX)` on a file per VG, waiting up to `timeout`.
#[derive(Debug, Clone)]
pub struct LocalLock {
    pub dir: PathBuf,
    pub timeout: Duration,
}

impl Default for LocalLock {
    fn default() -> Self {
        let timeout = std::env::var("LVCHAIN_LOCK_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s >= 0.0)
            .map_or(Duration::from_secs(300), Duration::from_secs_f64);
        LocalLock {
            dir: PathBuf::from("/run/lock/lvchain"),
            timeout,
        }
    }
}

struct FileGuard(File);
impl DomainGuard for FileGuard {}
impl Descriptors for FileGuard {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.0.as_fd()]
    }
}

impl LocalLock {
    /// Takes `vg`'s lock, waiting up to `timeout`.
    /// Every acquisition is reported to the wait observer ([`super::set_wait_observer`]).
    pub fn lock_domain(&self, vg: &str) -> Result<Box<dyn DomainGuard>, LockError> {
        let start = Instant::now();
        let r = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| LockError::Io {
                path: self.dir.display().to_string(),
                source,
            })
            .and_then(|()| self.take(vg, vg));
        super::observe_wait(vg, super::LockPart::Local, start.elapsed(), &r);
        r
    }

    /// Takes the lock of the file `<stem>.lock` in `dir`, a directory that must exist (it is
    /// never made here: a domain's own directory, whose absence means there is no domain);
    /// `domain` names the domain in errors and wait reports.
    pub fn lock_in_place(
        &self,
        stem: &str,
        domain: &str,
    ) -> Result<Box<dyn DomainGuard>, LockError> {
        let start = Instant::now();
        let r = self.take(stem, domain);
        super::observe_wait(domain, super::LockPart::Local, start.elapsed(), &r);
        r
    }

    fn take(&self, stem: &str, vg: &str) -> Result<Box<dyn DomainGuard>, LockError> {
        let path = self.dir.join(format!("{stem}.lock"));
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(2);
        // Taken after the first refusal, held until the lock is ours: holders see a waiter.
        let mut want: Option<File> = None;
        loop {
            // SAFETY: flock on a file descriptor we own.
            let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if r == 0 {
                tracing::debug!(
                    vg,
                    waited_ms = start.elapsed().as_millis() as u64,
                    "domain lock taken"
                );
                return Ok(Box::new(FileGuard(file)));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(e));
            }
            if want.is_none() {
                want = self.announce(stem);
            }
            if start.elapsed() >= self.timeout {
                return Err(LockError::Busy {
                    vg: vg.to_string(),
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

impl LocalLock {
    fn want_path(&self, vg: &str) -> PathBuf {
        self.dir.join(format!("{vg}.want"))
    }

    /// Says that this process waits for `vg`'s lock: a shared lock on its want file (None when
    /// the file cannot be locked now: a holder probing it; the next round tries again).
    fn announce(&self, vg: &str) -> Option<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.want_path(vg))
            .ok()?;
        // SAFETY: flock on a file descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        (r == 0).then_some(file)
    }

    /// Whether another process (or another holder in this one) waits for `vg`'s lock. An error
    /// reading the want file counts as a waiter: the caller releases rather than hold on.
    pub fn wanted(&self, vg: &str) -> bool {
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.want_path(vg))
        else {
            return true;
        };
        // SAFETY: flock on a file descriptor we own; closing the file drops it.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        r != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_then_gives_up() -> Result<(), LockError> {
        let dir = tempfile::tempdir().map_err(|source| LockError::Io {
            path: "tmp".into(),
            source,
        })?;
        let lock = LocalLock {
            dir: dir.path().to_path_buf(),
            timeout: Duration::from_millis(100),
        };
        let held = lock.lock_domain("vg")?;
        assert!(matches!(
            lock.lock_domain("vg"),
            Err(LockError::Busy { .. })
        ));
        assert!(lock.lock_domain("other").is_ok());
        assert!(!lock.wanted("vg"), "nobody waits");
        let waiter = {
            let lock = lock.clone();
            std::thread::spawn(move || {
                LocalLock {
                    timeout: Duration::from_secs(30),
                    ..lock
                }
                .lock_domain("vg")
                .map(drop)
            })
        };
        let start = Instant::now();
        while !lock.wanted("vg") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the waiter never showed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(held);
        assert!(waiter.join().is_ok_and(|r| r.is_ok()));
        assert!(
            !lock.wanted("vg"),
            "the waiter got the lock and stopped waiting"
        );
        // Released with the waiter's guard: free again.
        assert!(lock.lock_domain("vg").is_ok());
        Ok(())
    }

    #[test]
    fn the_lock_passes_only_into_the_programs_of_the_operation_holding_it() -> Result<(), LockError>
    {
        let dir = tempfile::tempdir().map_err(|source| LockError::Io {
            path: "tmp".into(),
            source,
        })?;
        let lock = LocalLock {
            dir: dir.path().to_path_buf(),
            timeout: Duration::from_millis(100),
        };
        let name = dir.path().join("vg.lock").display().to_string();
        let open_in_child = || {
            crate::exec::Cmd::new("/bin/sh", Duration::from_secs(10))
                .args(["-c", "ls -l /proc/$$/fd"])
                .run()
                .map(|f| f.stdout)
                .unwrap_or_default()
        };
        let guard = lock.lock_domain("vg")?;
        let outside = open_in_child();
        assert!(!outside.is_empty());
        assert!(
            !outside.contains(&name),
            "not held by this thread's operation: {outside}"
        );
        let held =
            super::super::Holding::on_this_thread(guard).map_err(|source| LockError::Io {
                path: name.clone(),
                source,
            })?;
        let inside = open_in_child();
        assert!(inside.contains(&name), "{inside}");
        drop(held);
        assert!(lock.lock_domain("vg").is_ok(), "released with its holding");
        Ok(())
    }
}
