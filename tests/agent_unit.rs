//! The shipped systemd unit (`dist/lvchain-agent.service`) in the VM, where systemd is not
//! PID 1: `systemd-analyze verify` accepts it (its program pointed at the binary under test),
//! and the agent started as the unit starts it (its `ExecStart` command line, systemd's clean
//! environment plus the unit's own, `NOTIFY_SOCKET` naming a datagram socket of the test)
//! says `READY=1` only once its API socket answers; SIGTERM, what `KillMode=mixed` sends the
//! main process, ends it with status 0 within `TimeoutStopSec`, its socket removed.
//!
//! The agent runs in a mount namespace of its own where a directory of the test is mounted on
//! `/run/lvchain`: its default socket (the unit passes none) is then the test's, and no other
//! test's CLI in the same VM finds it.
#![allow(clippy::unwrap_used)]

mod common;

use common::http::request;
use common::{lvm_available, BIN};
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/lvchain-agent.service");

/// The `[Service]` settings of the unit, by key (a repeated key's values in order).
fn service_settings(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut section = "";
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
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
    out
}

/// `45`, `45s`, `2min` -> the duration.
fn seconds(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().unwrap();
    match unit {
        "" | "s" | "sec" => Duration::from_secs(n),
        "min" => Duration::from_secs(60 * n),
        _ => panic!("a time span the test cannot read: {v}"),
    }
}

#[test]
fn lvm_agent_unit_verifies_and_starts_ready_only_once_serving() {
    if !lvm_available("lvm_agent_unit_verifies_and_starts_ready_only_once_serving") {
        return;
    }
    let Ok(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: no systemd-analyze on this host");
        return;
    };
    let shipped = std::fs::read_to_string(UNIT).unwrap();
    let service = service_settings(&shipped);
    // Every setting that changes how the agent runs is reproduced here; a new one must be
    // taught to this test before it passes.
    let known = [
        "Type",
        "ExecStart",
        "Restart",
        "RestartSec",
        "KillMode",
        "TimeoutStopSec",
        "Environment",
    ];
    for k in service.keys() {
        assert!(
            known.contains(&k.as_str()),
            "the unit sets {k}, which this test does not reproduce"
        );
    }
    assert_eq!(service["Type"], ["notify"]);
    assert_eq!(service["KillMode"], ["mixed"]);
    let exec = &service["ExecStart"];
    assert_eq!(exec.len(), 1, "{exec:?}");
    let argv: Vec<&str> = exec[0]
        .trim_start_matches(['-', '@', ':', '+', '!'])
        .split_whitespace()
        .collect();
    assert!(argv[0].ends_with("/lvchain"), "ExecStart runs {}", argv[0]);
    let stop_within = seconds(&service["TimeoutStopSec"][0]);

    // systemd-analyze verify on the unit as shipped, its program the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = shipped.replacen(
        &format!("ExecStart={}", argv[0]),
        &format!("ExecStart={}", BIN.as_str()),
        1,
    );
    assert_ne!(unit, shipped);
    let unit_path = dir.path().join("lvchain-agent.service");
    std::fs::write(&unit_path, &unit).unwrap();
    let verify = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr).into_owned()
        + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    // It exits 0 on settings it ignores: any word about the unit is a finding.
    assert!(
        !said.contains("lvchain-agent.service"),
        "systemd-analyze verify: {said}"
    );

    // The agent as systemd starts it.
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::create_dir_all("/run/lvchain").unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(format!(
            "mount --bind '{}' /run/lvchain && exec \"$@\"",
            run.display()
        ))
        .arg("sh")
        .arg(BIN.as_str())
        .args(&argv[1..])
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for e in service.get("Environment").into_iter().flatten() {
        for pair in e.split_whitespace() {
            let (k, v) = pair.trim_matches('"').split_once('=').unwrap();
            c.env(k, v);
        }
    }
    let mut agent = Command::spawn(&mut c).unwrap();
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let socket = run.join("agent.sock");

    let mut buf = [0u8; 256];
    let n = match notify.recv(&mut buf) {
        Ok(n) => n,
        Err(e) => panic!("no readiness: {e}\n{}", agent_log()),
    };
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    // At READY=1 the socket answers at once (it is not being bound still).
    let (status, body) = request(&socket, "GET", "/v1/agent", b"");
    assert_eq!(ready.lines().collect::<Vec<_>>(), ["READY=1"], "{ready}");
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        agent_log()
    );
    assert_eq!(
        agent.try_wait().unwrap(),
        None,
        "the agent ended: {}",
        agent_log()
    );

    // SIGTERM to the main process alone (KillMode=mixed).
    let start = Instant::now();
    // SAFETY: kill(2) on our own child (the agent: unshare and sh exec'ed it).
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    let code = loop {
        if let Some(st) = agent.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            start.elapsed() < stop_within,
            "the agent outlived TimeoutStopSec: {}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "{}", agent_log());
    assert!(!socket.exists(), "the socket is left behind");
    let _ = std::fs::remove_file(Path::new(&notify_path));
}

/// The path of `program` on `PATH`.
fn which(program: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .ok_or(())
}
