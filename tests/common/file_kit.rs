//! The file-domain test kit, shared by the host suites (`tests/file_domain.rs`,
//! `tests/conformance.rs`): the lvchain binary under test ([`bin`]), a file domain in a
//! temporary directory driven through it ([`Fd`]), and a host agent serving exactly that
//! domain on a socket of its own ([`FdAgent`]). Each including test crate also includes
//! `common/http.rs` as its module `http`.
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The lvchain binary the tests run: `$LVCHAIN_TEST_BIN` (scripts/test's optimized build), else
/// cargo's.
pub fn bin() -> String {
    std::env::var("LVCHAIN_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lvchain").to_string())
}

/// A temporary directory under `$LVCHAIN_FILE_DOMAIN_ROOT`, on the file system type
/// `$LVCHAIN_FILE_DOMAIN_FS` names when it is set (asserted).
pub fn domain_tmp() -> tempfile::TempDir {
    let tmp = match std::env::var_os("LVCHAIN_FILE_DOMAIN_ROOT") {
        Some(root) => tempfile::tempdir_in(root).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    if let Ok(want) = std::env::var("LVCHAIN_FILE_DOMAIN_FS") {
        let o = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "stat -f {}", tmp.path().display());
        let got = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert_eq!(
            got,
            want,
            "{} is on {got}, not on {want}",
            tmp.path().display()
        );
    }
    tmp
}

/// A file domain in a temporary directory, driven through the binary.
pub struct Fd {
    pub _tmp: tempfile::TempDir,
    pub path: String,
}

impl Fd {
    pub fn new() -> Fd {
        Fd::new_with(&[])
    }

    /// A domain formatted with the extra `domain create` arguments `args`.
    pub fn new_with(args: &[&str]) -> Fd {
        let tmp = domain_tmp();
        let path = tmp.path().join("dom").display().to_string();
        std::fs::create_dir(&path).unwrap();
        let d = Fd { _tmp: tmp, path };
        let mut a = vec!["domain", "create", "--path", &d.path];
        a.extend_from_slice(args);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        d.ok(&a);
        d
    }

    /// The domain id its record holds.
    pub fn id(&self) -> String {
        std::fs::read_to_string(Path::new(&self.path).join("dom_md/metadata"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("ID="))
            .unwrap()
            .to_string()
    }

    pub fn cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.arg("--direct").args(args);
        c.env_remove("LVCHAIN_CRASH_AT");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args, &[])
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "lvchain {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    pub fn create(&self, args: &[&str]) -> String {
        let mut a = vec!["volume", "create", &self.path];
        a.extend_from_slice(args);
        self.json(&a)["id"].as_str().unwrap().to_string()
    }
}

/// The in-process engine's settings (the CLI's list) and the agent socket's, removed for
/// runs that must go through the agent started here.
pub fn engine_env() -> impl Iterator<Item = &'static str> {
    lvchain::cli::remote::ENGINE_ENV
        .iter()
        .copied()
        .chain(["LVCHAIN_AGENT_SOCKET"])
}

/// `lvchain agent` serving exactly the file domain `path` (so it never touches the host's VGs)
/// on a socket of its own; killed on drop.
pub struct FdAgent {
    pub child: std::process::Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl FdAgent {
    pub fn start(path: &str, gc_interval: &str) -> FdAgent {
        FdAgent::start_with(path, gc_interval, &[])
    }

    /// [`FdAgent::start`] with more `lvchain agent` arguments.
    pub fn start_with(path: &str, gc_interval: &str, args: &[&str]) -> FdAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut c = Command::new(bin());
        c.args(["agent", "--socket", socket.to_str().unwrap()])
            .args(["--domain", path, "--gc-interval", gc_interval])
            .args(["--census-interval", "0"])
            .args(args)
            .env("RUST_LOG", "lvchain=info")
            .stdout(std::process::Stdio::null())
            .stderr(log);
        // Not root: the socket is served to this user's group.
        // SAFETY: getuid and getgid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            let o = Command::new("id").arg("-gn").output().unwrap();
            c.args(["--group", String::from_utf8_lossy(&o.stdout).trim()]);
        }
        for v in engine_env() {
            c.env_remove(v);
        }
        let a = FdAgent {
            child: c.spawn().unwrap(),
            socket,
            dir,
        };
        super::http::wait_until_answering(&a.socket, std::time::Duration::from_secs(30), || {
            a.log()
        });
        a
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// One request (`Connection: close`); the status and the body as JSON (or a string).
    pub fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let limit = super::http::ANSWER_WITHIN;
        super::http::call_within(&self.socket, method, path, body.as_bytes(), limit, || {
            self.log()
        })
    }

    pub fn metrics(&self) -> String {
        let (st, v) = self.call("GET", "/metrics", "");
        assert_eq!(st, 200);
        v.as_str().unwrap().to_string()
    }

    /// The request counters by `op outcome` (the metrics requests left out).
    pub fn operations(&self) -> BTreeMap<String, u64> {
        let re = regex::Regex::new(
            r#"(?m)^lvchain_operations_total\{op="([^"]+)",outcome="([^"]+)"\} (\d+)"#,
        )
        .unwrap();
        re.captures_iter(&self.metrics())
            .filter(|c| &c[1] != "GET /metrics")
            .map(|c| (format!("{} {}", &c[1], &c[2]), c[3].parse().unwrap()))
            .collect()
    }

    /// The per-domain gauges of `domain` by name.
    pub fn gauges(&self, domain: &str) -> BTreeMap<String, u64> {
        let re = regex::Regex::new(&format!(
            r#"(?m)^(lvchain_domain_[a-z_]+)\{{domain="{}"\}} (\d+)"#,
            regex::escape(domain)
        ))
        .unwrap();
        re.captures_iter(&self.metrics())
            .map(|c| (c[1].to_string(), c[2].parse().unwrap()))
            .collect()
    }
}

impl Drop for FdAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file domain's path as one API path segment.
pub fn segment(path: &str) -> String {
    path.replace('%', "%25")
        .replace('/', "%2F")
        .replace(' ', "%20")
}
