//! The one place that starts external programs (lvm, qemu-img, sanlock, ...).
//!
//! Every command gets an argument vector (never a shell), a fixed environment (`LC_ALL=C`),
//! a deadline and its own process group: when the deadline passes, the whole group is killed
//! with SIGKILL, so no child the program started is left behind. A global bound limits how many
//! external commands run at once. Each command is logged at debug level with its argv, exit
//! status and duration. Nothing outside this module may spawn processes.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// How many external commands may run at once in this process.
pub const MAX_CONCURRENT_COMMANDS: usize = 4;

/// What went wrong when running a command (before its exit status is judged).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` did not finish within {}s and was killed", .after.as_secs_f64())]
    Timeout { argv: String, after: Duration },
    #[error("I/O error while running `{argv}`: {source}")]
    Io {
        argv: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a command ended, as an observer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with status 0.
    Success,
    /// It exited with another status or was killed by a signal.
    Failed,
    /// It ran past its deadline and was killed.
    Timeout,
    /// It could not be started or waited for.
    NotRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Timeout => "timeout",
            Outcome::NotRun => "not_run",
        }
    }
}

/// One command that ran, as an observer sees it (after it ended).
#[derive(Debug)]
pub struct Observed<'a> {
    pub program: &'a std::ffi::OsStr,
    pub args: &'a [OsString],
    pub duration: Duration,
    pub outcome: Outcome,
}

type Observer = Box<dyn Fn(&Observed<'_>) + Send + Sync>;

static OBSERVER: std::sync::OnceLock<Observer> = std::sync::OnceLock::new();

/// Sets the process's one command observer (a long-running client's metrics); false when one
/// was set already. It runs on the thread that ran the command: it must be quick.
pub fn set_observer(observer: Observer) -> bool {
    OBSERVER.set(observer).is_ok()
}

/// A finished command: its exit code (`None` when killed by a signal), output and duration.
#[derive(Debug, Clone)]
pub struct Finished {
    pub argv: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// One command to run: program, arguments, extra environment, deadline, optional stdin text.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Send the program's stdout to our stderr as it comes (progress output), not captured.
    pub stdout_to_stderr: bool,
    /// Kill the program when lvchain dies (data writers: no write may outlive lvchain).
    /// Together with a lease passed into the child ([`crate::lease::LeaseGuard`]), the lease
    /// lasts until the writer is gone.
    pub die_with_parent: bool,
    /// The program closes the descriptors it inherits (lvm does, at start-up): a holder
    /// process keeps lvchain's inheritable ones (the domain lock) open until it exits.
    pub closes_inherited_fds: bool,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>, timeout: Duration) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: vec![("LC_ALL".into(), "C".into())],
            timeout,
            stdout_to_stderr: false,
            die_with_parent: false,
            closes_inherited_fds: false,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, it: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The command line as one printable string (for logs and errors).
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(self.args.iter())
            .map(|a| {
                let s = a.to_string_lossy();
                if s.is_empty() || s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"')
                {
                    format!("'{}'", s.replace('\'', "'\\''"))
                } else {
                    s.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs the command to completion or to its deadline; the observer (if one is set) sees
    /// how it ended.
    pub fn run(&self) -> Result<Finished, ExecError> {
        let start = Instant::now();
        let result = self.run_unobserved();
        if let Some(observer) = OBSERVER.get() {
            let outcome = match &result {
                Ok(f) if f.success() => Outcome::Success,
                Ok(_) => Outcome::Failed,
                Err(ExecError::Timeout { .. }) => Outcome::Timeout,
                Err(_) => Outcome::NotRun,
            };
            observer(&Observed {
                program: &self.program,
                args: &self.args,
                duration: start.elapsed(),
                outcome,
            });
        }
        result
    }

    fn run_unobserved(&self) -> Result<Finished, ExecError> {
        let _slot = SLOTS.acquire();
        let argv = self.display();
        let start = Instant::now();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(if self.stdout_to_stderr {
                Stdio::from(
                    std::io::stderr()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|source| ExecError::Spawn {
                            argv: argv.clone(),
                            source,
                        })?,
                )
            } else {
                Stdio::piped()
            })
            .stderr(Stdio::piped())
            .process_group(0);
        if self.die_with_parent {
            // The death signal only covers a parent that dies after prctl: one that died
            // since the fork has left the child to another parent, so it must not run at all.
            // SAFETY: getpid has no preconditions.
            let parent = unsafe { libc::getpid() };
            // SAFETY: prctl, getppid and _exit are async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::getppid() != parent {
                        libc::_exit(127);
                    }
                    Ok(())
                });
            }
        }
        let carried = if self.closes_inherited_fds {
            inheritable_fds()
        } else {
            Vec::new()
        };
        if !carried.is_empty() {
            // SAFETY: the closure only makes raw system calls (fork, prctl, getppid,
            // close_range, pause, _exit) and touches no lock or allocation.
            unsafe {
                command.pre_exec(move || fork_fd_holder(&carried));
            }
        }
        let mut child = command.spawn().map_err(|source| ExecError::Spawn {
            argv: argv.clone(),
            source,
        })?;
        let pid = child.id() as libc::pid_t;
        let out = child.stdout.take().map(reader_thread);
        let err = child.stderr.take().map(reader_thread);

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(self.timeout) {
            Ok(status) => status,
            Err(_) => {
                // SAFETY: kill(2) on our own child's process group; no memory is involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = rx.recv();
                // Let the readers finish: the group is dead, so its pipes are closed.
                let _ = out.map(|h| h.join());
                let _ = err.map(|h| h.join());
                tracing::debug!(argv = %argv, elapsed_ms = start.elapsed().as_millis() as u64, "command killed at its deadline");
                return Err(ExecError::Timeout {
                    argv,
                    after: self.timeout,
                });
            }
        };
        let status = status.map_err(|source| ExecError::Io {
            argv: argv.clone(),
            source,
        })?;
        // A program may leave children holding our pipes; they belong to its group: end them.
        // SAFETY: as above; ESRCH (group already gone) is the normal case and is ignored.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let stdout = join_reader(out);
        let stderr = join_reader(err);
        let duration = start.elapsed();
        let finished = Finished {
            argv,
            code: status.code(),
            signal: status.signal(),
            stdout,
            stderr,
            duration,
        };
        tracing::debug!(
            argv = %finished.argv,
            code = ?finished.code,
            signal = ?finished.signal,
            duration_ms = duration.as_secs_f64() * 1000.0,
            "command finished"
        );
        Ok(finished)
    }
}

/// This process's descriptors that an exec would pass on (no close-on-exec flag), past stdio:
/// the ones lvchain made inheritable on purpose (the domain lock, a sanlock registration).
fn inheritable_fds() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .filter(|&fd| {
            // SAFETY: F_GETFD reads flags; a descriptor closed meanwhile just fails.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            flags >= 0 && flags & libc::FD_CLOEXEC == 0
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// Runs in the child between fork and exec: forks a holder that keeps `keep` (sorted) open and
/// closes every other descriptor (stdio too, so the command's pipes end with the command), then
/// waits to be killed when the command exits (`PR_SET_PDEATHSIG`), or with its process group
/// at the deadline. The command may close its copies; the holder's keep the locks held.
fn fork_fd_holder(keep: &[i32]) -> std::io::Result<()> {
    // SAFETY: getpid and fork are async-signal-safe; the child makes raw system calls only.
    unsafe {
        let command = libc::getpid();
        match libc::fork() {
            -1 => Err(std::io::Error::last_os_error()),
            0 => {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() != command {
                    libc::_exit(0); // the command is gone already
                }
                let mut next: libc::c_uint = 0;
                for &fd in keep {
                    let fd = fd as libc::c_uint;
                    if fd > next {
                        libc::syscall(libc::SYS_close_range, next, fd - 1, 0);
                    }
                    next = fd + 1;
                }
                libc::syscall(libc::SYS_close_range, next, libc::c_uint::MAX, 0);
                loop {
                    libc::pause();
                }
            }
            _ => Ok(()),
        }
    }
}

fn reader_thread<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_reader(h: Option<std::thread::JoinHandle<Vec<u8>>>) -> String {
    h.and_then(|h| h.join().ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A counting semaphore bounding concurrent external commands.
struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

static SLOTS: Slots = Slots {
    used: Mutex::new(0),
    freed: Condvar::new(),
};

struct SlotGuard;

impl Slots {
    fn acquire(&'static self) -> SlotGuard {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= MAX_CONCURRENT_COMMANDS {
            used = self.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
        SlotGuard
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut used = SLOTS.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= 1;
        SLOTS.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_code() -> Result<(), ExecError> {
        let f = Cmd::new("/bin/sh", Duration::from_secs(10))
            .args(["-c", "echo out; echo err >&2; exit 3"])
            .run()?;
        assert_eq!(f.code, Some(3));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "err\n");
        Ok(())
    }

    #[test]
    fn kills_the_whole_group_at_the_deadline() {
        // Unique sleep lengths mark the two processes of the group.
        let marker = format!("sleep 7{}", std::process::id());
        let r = Cmd::new("/bin/sh", Duration::from_millis(300))
            .args(["-c", &format!("{marker} & sleep 8{}", std::process::id())])
            .run();
        assert!(matches!(r, Err(ExecError::Timeout { .. })), "{r:?}");
        std::thread::sleep(Duration::from_millis(100));
        let ps = Cmd::new("/bin/ps", Duration::from_secs(5))
            .args(["-eo", "args"])
            .run();
        if let Ok(ps) = ps {
            assert!(!ps.stdout.contains(&marker), "a child survived");
        }
    }

    #[test]
    fn display_quotes_spaces() {
        let c = Cmd::new("lvm", Duration::from_secs(1)).args(["--config", "a { b=1 }"]);
        assert_eq!(c.display(), "lvm --config 'a { b=1 }'");
    }
}
