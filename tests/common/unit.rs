//! The agent's systemd unit without systemd as PID 1 (the test VM has none): its `[Service]`
//! settings ([`service_settings`]), and the agent started as the unit starts it
//! ([`UnitAgent`]): its `ExecStart` command line in systemd's clean environment plus the
//! unit's own, `NOTIFY_SOCKET` naming an abstract datagram socket of the test, inside the
//! unit's sandbox rebuilt in a mount namespace of its own: `ProtectSystem=strict` (every
//! mount read-only but `/dev`, `/proc`, `/sys`, then the `ReadWritePaths` and runtime
//! directories writable again, with what is mounted under them), `RuntimeDirectory`,
//! `PrivateTmp`, `ProtectHome`, `UMask`, `LimitNOFILE`, `NoNewPrivileges`. A setting not in
//! [`KNOWN`] fails the test that reads the unit: a new one must be taught here first.
//!
//! The namespace also mounts a directory of the test on `/run/lvchain` (the agent's default
//! socket is then the test's, and no other test's CLI in the same VM finds it), and, when
//! given, a config file of the test over `/etc/lvchain/agent.toml` (read-only).

use std::collections::BTreeMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `[Service]` settings reproduced here (or, for `Restart*`, not needed by one start).
pub const KNOWN: &[&str] = &[
    "Type",
    "ExecStart",
    "Restart",
    "RestartSec",
    "KillMode",
    "TimeoutStopSec",
    "Environment",
    "UMask",
    "LimitNOFILE",
    "NoNewPrivileges",
    "PrivateTmp",
    "ProtectHome",
    "ProtectSystem",
    "RuntimeDirectory",
    "RuntimeDirectoryMode",
    "RuntimeDirectoryPreserve",
    "ReadWritePaths",
];

/// A unit's `[Service]` settings, by key (a repeated key's values in order).
pub type Service = BTreeMap<String, Vec<String>>;

/// The `[Service]` settings of the unit text `unit`; panics on one not in [`KNOWN`].
pub fn service_settings(unit: &str) -> Service {
    let mut section = "";
    let mut out = Service::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').unwrap();
            out.entry(k.trim().into())
                .or_default()
                .push(v.trim().into());
        }
    }
    for k in out.keys() {
        assert!(
            KNOWN.contains(&k.as_str()),
            "the unit sets {k}, which tests/common/unit.rs does not reproduce"
        );
    }
    out
}

/// The one value of `key`, if set.
pub fn one<'a>(service: &'a Service, key: &str) -> Option<&'a str> {
    let v = service.get(key)?;
    assert_eq!(v.len(), 1, "{key} set more than once: {v:?}");
    Some(v[0].as_str())
}

/// `ExecStart` split into its words (prefixes such as `-` or `+` dropped).
pub fn exec_argv(service: &Service) -> Vec<String> {
    let exec = one(service, "ExecStart").expect("ExecStart");
    exec.trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// `45`, `45s`, `2min` -> the duration.
pub fn seconds(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().unwrap();
    match unit {
        "" | "s" | "sec" => Duration::from_secs(n),
        "min" => Duration::from_secs(60 * n),
        _ => panic!("a time span the test cannot read: {v}"),
    }
}

/// The path of `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// One mount of `/proc/PID/mountinfo`: where, and whether writable.
#[derive(Debug, Clone)]
pub struct Mount {
    pub point: String,
    pub read_only: bool,
    pub fs_type: String,
}

/// The mounts `pid` sees (`self` for this process), in the table's order.
pub fn mounts(pid: &str) -> Vec<Mount> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    table
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap();
            Mount {
                point: unescape(f[4]),
                read_only: f[5].split(',').any(|o| o == "ro"),
                fs_type: f[sep + 1].to_string(),
            }
        })
        .collect()
}

/// mountinfo's octal escapes (`\040` for a blank) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount `path` is on, for `pid` (the last mount whose point is `path` or a parent of it).
pub fn mount_of(pid: &str, path: &str) -> Mount {
    let under =
        |point: &str| point == "/" || path == point || path.starts_with(&format!("{point}/"));
    mounts(pid)
        .into_iter()
        .filter(|m| under(&m.point))
        .max_by_key(|m| m.point.len())
        .unwrap()
}

/// `s` quoted for sh.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The paths the sandbox leaves writable: `ReadWritePaths` (`-` for "when it exists") and the
/// runtime directories; each with whether it must exist.
pub fn writable_paths(service: &Service) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for v in service.get("ReadWritePaths").into_iter().flatten() {
        for p in v.split_whitespace() {
            match p.strip_prefix('-') {
                Some(p) => out.push((p.to_string(), false)),
                None => out.push((p.to_string(), true)),
            }
        }
    }
    for v in service.get("RuntimeDirectory").into_iter().flatten() {
        for d in v.split_whitespace() {
            out.push((format!("/run/{d}"), true));
        }
    }
    out
}

fn yes(v: Option<&str>) -> bool {
    matches!(v, Some("yes" | "true" | "1" | "on"))
}

/// sh: the mount points of the namespace, one a line.
const POINTS: &str = "points() { awk '{ print $5 }' /proc/self/mountinfo; }\n";

/// sh: ProtectSystem=strict's first half, every mount read-only but the API file systems.
const READ_ONLY: &str = r#"for m in $(points); do
  case $m in /dev | /dev/* | /proc | /proc/* | /sys | /sys/*) continue ;; esac
  mount -o remount,bind,ro "$m" 2>/dev/null || :
done
"#;

/// sh: `rw PATH REQUIRED`, a writable path: bound on itself with what is mounted under it,
/// all writable again; a missing one is skipped (`-PATH`) or stops the start (as systemd's).
const WRITABLE: &str = r#"rw() {
  if [ -e "$1" ]; then
    mount --rbind "$1" "$1"
    mount -o remount,bind,rw "$1"
    for m in $(points); do
      case $m in "$1"/*) mount -o remount,bind,rw "$m" 2>/dev/null || : ;; esac
    done
  elif [ "$2" = 1 ]; then
    echo "sandbox: $1 does not exist (the unit would not start)" >&2
    exit 96
  fi
}
"#;

/// Where the agent sees the `i`th directory given to [`UnitAgent::start`] (its namespace has
/// a tmpfs on `/mnt` holding them, as NFS exports mounted under /mnt would be).
pub fn shown_at(i: usize) -> String {
    format!("/mnt/lvchain-test/{i}")
}

/// The shell script that builds the unit's sandbox, then execs `"$@"` (the `ExecStart`).
/// The mounts are listed in the namespace as it is then (the test's own mounts included):
/// names with blanks (mountinfo's `\040`) are not handled.
fn sandbox_script(
    service: &Service,
    run_dir: &Path,
    config: Option<&Path>,
    shown: &[PathBuf],
) -> String {
    let mut s = String::from("set -e\n");
    // The test's own mounts first: their sources are in the test's /tmp, which PrivateTmp hides.
    s += &format!(
        "mount --bind {} /run/lvchain\n",
        q(run_dir.to_str().unwrap())
    );
    if let Some(c) = config {
        s += &format!(
            "mount --bind {} /etc/lvchain/agent.toml\n",
            q(c.to_str().unwrap())
        );
    }
    if !shown.is_empty() {
        s += "mount -t tmpfs -o mode=0755 lvchain-test /mnt\nmkdir /mnt/lvchain-test\n";
        for (i, dir) in shown.iter().enumerate() {
            let at = q(&shown_at(i));
            s += &format!(
                "mkdir {at}\nmount --bind {} {at}\n",
                q(dir.to_str().unwrap())
            );
        }
    }
    let mode = one(service, "RuntimeDirectoryMode").unwrap_or("0755");
    for v in service.get("RuntimeDirectory").into_iter().flatten() {
        for d in v.split_whitespace() {
            s += &format!(
                "mkdir -p {p}\nchmod {mode} {p}\n",
                p = q(&format!("/run/{d}"))
            );
        }
    }
    s += POINTS;
    match one(service, "ProtectSystem") {
        None => {}
        Some("strict") => {
            s += READ_ONLY;
            s += WRITABLE;
            for (p, required) in writable_paths(service) {
                s += &format!("rw {} {}\n", q(&p), u8::from(required));
            }
        }
        Some(other) => panic!("ProtectSystem={other}: the test reproduces strict only"),
    }
    match one(service, "ProtectHome") {
        // Under ProtectSystem=strict, already read-only.
        None | Some("read-only") => {}
        Some("yes" | "true") => {
            for d in ["/home", "/root", "/run/user"] {
                s += &format!(
                    "[ ! -d {0} ] || mount -t tmpfs -o ro,mode=0755 tmpfs {0}\n",
                    q(d)
                );
            }
        }
        Some(other) => panic!("ProtectHome={other}: not reproduced"),
    }
    if yes(one(service, "PrivateTmp")) {
        s += "mount -t tmpfs -o mode=1777 tmpfs /tmp\nmount -t tmpfs -o mode=1777 tmpfs /var/tmp\n";
    }
    if let Some(m) = one(service, "UMask") {
        s += &format!("umask {m}\n");
    }
    if let Some(n) = one(service, "LimitNOFILE") {
        assert!(
            n.parse::<u64>().is_ok(),
            "LimitNOFILE={n}: one number reproduced"
        );
        s += &format!("ulimit -n {n}\n");
    }
    if yes(one(service, "NoNewPrivileges")) {
        s += "exec setpriv --no-new-privs -- \"$@\"\n";
    } else {
        s += "exec \"$@\"\n";
    }
    s
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The agent started as its unit starts it; killed on drop.
pub struct UnitAgent {
    pub child: Child,
    /// The directory mounted on /run/lvchain for the agent: its socket is `agent.sock` here.
    pub run_dir: PathBuf,
    pub log: PathBuf,
    notify: UnixDatagram,
}

impl UnitAgent {
    /// Starts `argv` (the unit's `ExecStart`, its program perhaps replaced) with the unit's
    /// environment and sandbox; `run_dir` is mounted on /run/lvchain, `config` over
    /// /etc/lvchain/agent.toml, each of `shown` at [`shown_at`]; stderr goes to `log`.
    pub fn start(
        service: &Service,
        argv: &[String],
        run_dir: &Path,
        config: Option<&Path>,
        shown: &[PathBuf],
        log: &Path,
    ) -> UnitAgent {
        let name = format!(
            "lvchain-test-notify-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let notify = UnixDatagram::bind_addr(&addr).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        std::fs::create_dir_all("/run/lvchain").unwrap();
        let argv = outside_private_tmp(service, argv);
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
            .arg(sandbox_script(service, run_dir, config, shown))
            .arg("sh")
            .args(&argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        for e in service.get("Environment").into_iter().flatten() {
            for pair in e.split_whitespace() {
                let (k, v) = pair.trim_matches('"').split_once('=').unwrap();
                c.env(k, v);
            }
        }
        UnitAgent {
            child: c.spawn().unwrap(),
            run_dir: run_dir.to_path_buf(),
            log: log.to_path_buf(),
            notify,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The next datagram the agent sends to its notify socket.
    pub fn notified(&self) -> String {
        let mut buf = [0u8; 256];
        match self.notify.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => panic!("no word on the notify socket: {e}\n{}", self.log()),
        }
    }

    /// The agent's pid as a string for /proc (sh exec'ed setpriv, which exec'ed the agent).
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// SIGTERM to the agent alone (what `KillMode=mixed` sends the main process); its exit
    /// code, which must come within `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        // SAFETY: kill(2) on our own child (the agent: unshare, sh and setpriv exec'ed it).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                start.elapsed() < within,
                "the agent outlived {within:?} after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `argv` with a program that PrivateTmp would hide (the binary under test, copied to the
/// VM's /tmp by scripts/run-integration-tests) copied to /run first.
fn outside_private_tmp(service: &Service, argv: &[String]) -> Vec<String> {
    let mut argv = argv.to_vec();
    let hidden = |p: &str| p.starts_with("/tmp/") || p.starts_with("/var/tmp/");
    if let Some(program) = argv.first_mut().filter(|p| hidden(p)) {
        if yes(one(service, "PrivateTmp")) {
            let dir = PathBuf::from(format!("/run/lvchain-test-bin/{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let copy = dir.join("lvchain");
            if !copy.exists() {
                std::fs::copy(&*program, &copy).unwrap();
            }
            *program = copy.display().to_string();
        }
    }
    argv
}

impl Drop for UnitAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
