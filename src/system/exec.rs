//! The one place that starts external programs (lvm, qemu-img, sanlock, ...).
//!
//! Every command gets an argument vector (never a shell), a fixed environment (`LC_ALL=C`),
//! a deadline and its own process group: when the deadline passes, the whole group is killed
//! with SIGKILL, so no child the program started is left behind. A global bound limits how many
//! external commands run at once. Each command is logged at debug level with its argv, exit
//! status and duration. Nothing outside this module may spawn processes.
//!
//! Descriptors: every descriptor lvchain opens stays close-on-exec. A lock or a lease that the
//! programs of an operation must hold with it (so that, if lvchain dies, the lock lasts until
//! they end) is handed to them explicitly: [`Inherit`] duplicates its descriptors, and while a
//! [`Carry`] of it lives on a thread, the programs that thread starts (and only those) get
//! them, made inheritable in the child alone. Programs of other threads (another request of
//! the agent, a copy job) never see them.

use std::cell::RefCell;
use std::ffi::OsString;
use std::io::Read;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
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

/// The descriptors of a held lock or lease, duplicated (the same open file descriptions, so a
/// program holding them holds the lock), to be handed to the programs of the operation that
/// holds it ([`Inherit::carry`]). Cloning shares the duplicates; they close with the last
/// clone, which must go before the lock's own guard is dropped (else the lock outlives it).
#[derive(Debug, Clone)]
pub struct Inherit(Arc<[OwnedFd]>);

impl Inherit {
    /// Duplicates `fds` (close-on-exec, like every descriptor of this process).
    pub fn new<'a>(fds: impl IntoIterator<Item = BorrowedFd<'a>>) -> std::io::Result<Inherit> {
        let dups = fds
            .into_iter()
            .map(|fd| fd.try_clone_to_owned())
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Inherit(dups.into()))
    }

    /// Hands the descriptors to every program this thread starts while the returned guard
    /// lives.
    pub fn carry(&self) -> Carry {
        let id = NEXT_CARRY.fetch_add(1, Ordering::Relaxed);
        CARRIED.with(|c| {
            c.borrow_mut()
                .extend(self.0.iter().map(|fd| (id, fd.as_raw_fd())))
        });
        Carry {
            id,
            _fds: self.clone(),
            _thread: PhantomData,
        }
    }
}

/// While it lives, the programs started by this thread inherit an [`Inherit`]'s descriptors.
/// Bound to its thread (not `Send`); it keeps the duplicates open.
#[derive(Debug)]
pub struct Carry {
    id: u64,
    _fds: Inherit,
    _thread: PhantomData<*const ()>,
}

impl Drop for Carry {
    fn drop(&mut self) {
        let id = self.id;
        // A thread being torn down has dropped its registry already: nothing to remove.
        let _ = CARRIED.try_with(|c| c.borrow_mut().retain(|(i, _)| *i != id));
    }
}

static NEXT_CARRY: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The descriptors the programs of this thread inherit, by the [`Carry`] that handed them.
    static CARRIED: RefCell<Vec<(u64, RawFd)>> = const { RefCell::new(Vec::new()) };
}

/// The descriptors carried on this thread now, sorted, without repeats.
fn carried_fds() -> Vec<RawFd> {
    let mut fds: Vec<RawFd> = CARRIED.with(|c| c.borrow().iter().map(|(_, fd)| *fd).collect());
    fds.sort_unstable();
    fds.dedup();
    fds
}

/// Runs in the child between fork and exec: clears close-on-exec on `fds`, in the child's
/// descriptor table only (the parent's copies stay close-on-exec).
fn inherit_in_child(fds: &[RawFd]) -> std::io::Result<()> {
    for &fd in fds {
        // SAFETY: fcntl is async-signal-safe; `fd` is open (its Carry outlives the spawn).
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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

/// Where a streamed program's stdout goes, chunk by chunk.
type StdoutSink<'a> = &'a mut dyn FnMut(&[u8]);

/// One command to run: program, arguments, extra environment, deadline, optional stdin text.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Kill the program when lvchain dies (data writers: no write may outlive lvchain).
    /// Together with a lease handed to the child ([`crate::lock::Holding`]), the lease lasts
    /// until the writer is gone.
    pub die_with_parent: bool,
    /// The program closes the descriptors it inherits (lvm does, at start-up): a holder
    /// process keeps the ones carried on this thread ([`Carry`]: the domain lock) open until
    /// it exits.
    pub closes_inherited_fds: bool,
}

impl Cmd {
    pub fn new(program: impl Into<OsString>, timeout: Duration) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: vec![("LC_ALL".into(), "C".into())],
            timeout,
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
        self.run_observed(None)
    }

    /// [`Cmd::run`], handing the program's stdout to `on_stdout` as it comes (progress
    /// output), in chunks split anywhere, on this thread; [`Finished::stdout`] is then empty.
    /// The deadline holds while it reads.
    pub fn run_streaming(&self, on_stdout: &mut dyn FnMut(&[u8])) -> Result<Finished, ExecError> {
        self.run_observed(Some(on_stdout))
    }

    fn run_observed(&self, on_stdout: Option<StdoutSink<'_>>) -> Result<Finished, ExecError> {
        let start = Instant::now();
        let result = self.run_unobserved(on_stdout);
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

    fn run_unobserved(&self, mut on_stdout: Option<StdoutSink<'_>>) -> Result<Finished, ExecError> {
        let _slot = SLOTS.acquire();
        let argv = self.display();
        let start = Instant::now();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
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
        let carried = carried_fds();
        if !carried.is_empty() {
            let holder = self.closes_inherited_fds;
            // SAFETY: the closure only makes raw system calls (fcntl, fork, prctl, getppid,
            // close_range, pause, _exit) and touches no lock or allocation.
            unsafe {
                command.pre_exec(move || {
                    inherit_in_child(&carried)?;
                    if holder {
                        fork_fd_holder(&carried)?;
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().map_err(|source| ExecError::Spawn {
            argv: argv.clone(),
            source,
        })?;
        let pid = child.id() as libc::pid_t;
        // Every event of the run comes to this thread: stdout chunks (when streamed), the end
        // of stdout, the exit.
        let (tx, rx) = mpsc::channel();
        let out = match (child.stdout.take(), on_stdout.is_some()) {
            (Some(stdout), true) => {
                chunk_thread(stdout, tx.clone());
                None
            }
            (stdout, _) => stdout.map(reader_thread),
        };
        let err = child.stderr.take().map(reader_thread);
        std::thread::spawn(move || {
            let _ = tx.send(Event::Exited(child.wait()));
        });
        let deadline = start + self.timeout;
        let status = loop {
            // Checked on every event: a program that keeps writing never postpones its kill.
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match left.is_zero() {
                true => Err(mpsc::RecvTimeoutError::Timeout),
                false => rx.recv_timeout(left),
            };
            match event {
                Ok(Event::Exited(status)) => break status,
                Ok(Event::Out(chunk)) => {
                    if let Some(f) = on_stdout.as_mut() {
                        f(&chunk);
                    }
                }
                Ok(Event::OutEnd) => {}
                Err(_) => {
                    // SAFETY: kill(2) on our own child's process group; no memory is involved.
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                    while !matches!(rx.recv(), Ok(Event::Exited(_)) | Err(_)) {}
                    // Let the readers finish: the group is dead, so its pipes are closed.
                    let _ = out.map(|h| h.join());
                    let _ = err.map(|h| h.join());
                    tracing::debug!(argv = %argv, elapsed_ms = start.elapsed().as_millis() as u64, "command killed at its deadline");
                    return Err(ExecError::Timeout {
                        argv,
                        after: self.timeout,
                    });
                }
            }
        };
        let status = status.map_err(|source| ExecError::Io {
            argv: argv.clone(),
            source,
        })?;
        // A program may leave children holding our pipes; they belong to its group: end them.
        // SAFETY: as above; ESRCH (group already gone) is the normal case and is ignored.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        // What the program wrote last, up to the end of its stdout (the group is dead).
        if let Some(f) = on_stdout.as_mut() {
            while let Ok(Event::Out(chunk)) = rx.recv() {
                f(&chunk);
            }
        }
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

/// What the thread running a command hears about it.
enum Event {
    /// A chunk of its stdout (streamed).
    Out(Vec<u8>),
    /// Its stdout ended (streamed).
    OutEnd,
    /// It exited.
    Exited(std::io::Result<std::process::ExitStatus>),
}

/// Reads `r` on a thread and sends what comes, chunk by chunk, then [`Event::OutEnd`].
fn chunk_thread<R: Read + Send + 'static>(mut r: R, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Event::Out(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(Event::OutEnd);
    });
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
    use std::os::fd::AsFd;

    #[test]
    fn streamed_output_arrives_while_the_program_runs() -> Result<(), ExecError> {
        let start = Instant::now();
        let mut seen: Vec<(Duration, Vec<u8>)> = Vec::new();
        let f = Cmd::new("/bin/sh", Duration::from_secs(10))
            .args([
                "-c",
                "printf 'one\\r'; sleep 1; printf 'two\\r'; echo err >&2; exit 2",
            ])
            .run_streaming(&mut |chunk| seen.push((start.elapsed(), chunk.to_vec())))?;
        assert_eq!(f.code, Some(2));
        assert_eq!(f.stderr, "err\n");
        assert_eq!(f.stdout, "");
        let all: Vec<u8> = seen.iter().flat_map(|(_, c)| c.clone()).collect();
        assert_eq!(all, b"one\rtwo\r");
        // The first chunk came before the program's second write, a second later.
        assert!(seen[0].1.starts_with(b"one"), "{seen:?}");
        assert!(
            f.duration - seen[0].0 >= Duration::from_millis(700),
            "{seen:?}"
        );
        Ok(())
    }

    #[test]
    fn a_streaming_program_is_killed_at_its_deadline() {
        let mut chunks = 0usize;
        let r = Cmd::new("/bin/sh", Duration::from_millis(500))
            .args(["-c", "while :; do echo tick; sleep 0.05; done"])
            .run_streaming(&mut |_| chunks += 1);
        assert!(matches!(r, Err(ExecError::Timeout { .. })), "{r:?}");
        assert!(chunks > 0);
    }

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

    /// The paths of the descriptors a program started now on this thread has open.
    fn open_in_child() -> String {
        Cmd::new("/bin/sh", Duration::from_secs(10))
            .args(["-c", "ls -l /proc/$$/fd"])
            .run()
            .map(|f| f.stdout)
            .unwrap_or_default()
    }

    #[test]
    fn carried_descriptors_pass_only_into_the_programs_of_their_thread() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("held.lock");
        let file = std::fs::File::create(&path)?;
        let name = path.display().to_string();
        let inherit = Inherit::new([file.as_fd()])?;
        // The carry and a program started under it on another thread, at the same time.
        let barrier = std::sync::Barrier::new(2);
        let (mine, others) = std::thread::scope(|s| {
            let mine = s.spawn(|| {
                let _carry = inherit.carry();
                barrier.wait();
                let seen = open_in_child();
                barrier.wait();
                seen
            });
            let others = s.spawn(|| {
                barrier.wait();
                let seen = open_in_child();
                barrier.wait();
                seen
            });
            (mine.join(), others.join())
        });
        let (mine, others) = (mine.unwrap_or_default(), others.unwrap_or_default());
        assert!(
            mine.contains(&name),
            "the carrying thread's program: {mine}"
        );
        assert!(
            !others.contains(&name),
            "another thread's program: {others}"
        );
        // Not after the carry ended, and never the parent's own descriptor.
        let later = open_in_child();
        assert!(!later.contains(&name), "{later}");
        assert!(!later.is_empty());
        // SAFETY: F_GETFD on a descriptor we own.
        let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        Ok(())
    }

    #[test]
    fn display_quotes_spaces() {
        let c = Cmd::new("lvm", Duration::from_secs(1)).args(["--config", "a { b=1 }"]);
        assert_eq!(c.display(), "lvm --config 'a { b=1 }'");
    }
}
