//! The host agent for tests: `lvchain agent` serving one loop-device domain on a socket in a
//! temporary directory ([`Agent`], killed on drop); the HTTP/1.1 client over the socket is
//! [`super::http`]'s.

use super::http::{call_within, wait_until_answering, ANSWER_WITHIN};
use super::{Domain, BIN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `lvchain agent` serving one domain; killed on drop.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    /// How it was started (for [`Agent::restart`]).
    args: Vec<String>,
    env: Vec<(String, PathBuf)>,
}

impl Agent {
    pub fn start(d: &Domain, extra: &[&str]) -> Agent {
        Agent::start_with_env(d, extra, &[])
    }

    /// As [`Agent::start`], with more environment (`LVCHAIN_LVM`, `LVCHAIN_QEMU_IMG`, ...).
    pub fn start_with_env(d: &Domain, extra: &[&str], env: &[(&str, &Path)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--socket".into(),
            socket.to_str().unwrap().into(),
            "--domain".into(),
            d.name().into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut env: Vec<(String, PathBuf)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_path_buf()))
            .collect();
        env.extend(d.vg.env().into_iter().map(|(k, v)| (k, PathBuf::from(v))));
        let child = spawn(dir.path(), &args, &env);
        let a = Agent {
            child,
            socket,
            dir,
            args,
            env,
        };
        a.wait_for_socket();
        a
    }

    /// Starts the agent again as it was started (same socket, log appended), after it ended.
    pub fn restart(&mut self) {
        self.child = spawn(self.dir.path(), &self.args, &self.env);
        self.wait_for_socket();
    }

    fn wait_for_socket(&self) {
        wait_until_answering(&self.socket, Duration::from_secs(60), || self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// One request; the status and the body (JSON when it parses, else a string).
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        call_within(&self.socket, method, path, body, ANSWER_WITHIN, || {
            self.log()
        })
    }

    pub fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, v) = self.call(method, path, body.to_string().as_bytes());
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the agent to exit (at most `limit`); its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            assert!(
                start.elapsed() < limit,
                "the agent did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `lvchain agent` with `args` and `env`, its stderr appended to `dir/agent.log`.
fn spawn(dir: &Path, args: &[String], env: &[(String, PathBuf)]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("agent.log"))
        .unwrap();
    let mut c = Command::new(BIN.as_str());
    c.args(args)
        .env("RUST_LOG", "lvchain=info")
        .stdout(Stdio::null())
        .stderr(log);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}
