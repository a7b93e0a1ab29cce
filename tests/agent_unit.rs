//! The shipped systemd unit (`dist/lvchain-agent.service`) in the VM, where systemd is not
//! PID 1: `systemd-analyze verify` accepts it (its program pointed at the binary under test),
//! and the agent started as the unit starts it (`tests/common/unit.rs`: its `ExecStart`
//! command line, systemd's clean environment plus the unit's own, `NOTIFY_SOCKET` naming a
//! datagram socket of the test, the unit's sandbox rebuilt in a mount namespace) says
//! `READY=1` only once its API socket answers; SIGTERM, what `KillMode=mixed` sends the main
//! process, ends it with status 0 within `TimeoutStopSec`, its socket removed.
//!
//! The agent's namespace has a directory of the test on `/run/lvchain`: its default socket
//! (the unit passes none) is then the test's, and no other test's CLI in the same VM finds it.
//! `tests/package.rs` runs the installed package's unit the same way, with a domain to serve.
#![allow(clippy::unwrap_used)]

mod common;

use common::http::request;
use common::unit::{exec_argv, one, seconds, service_settings, which, UnitAgent};
use common::{lvm_available, BIN};
use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/lvchain-agent.service");

#[test]
fn lvm_agent_unit_verifies_and_starts_ready_only_once_serving() {
    if !lvm_available("lvm_agent_unit_verifies_and_starts_ready_only_once_serving") {
        return;
    }
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: no systemd-analyze on this host");
        return;
    };
    let shipped = std::fs::read_to_string(UNIT).unwrap();
    // Every setting that changes how the agent runs is reproduced by common::unit; a new
    // one must be taught there before this passes.
    let service = service_settings(&shipped);
    assert_eq!(one(&service, "Type"), Some("notify"));
    assert_eq!(one(&service, "KillMode"), Some("mixed"));
    let argv = exec_argv(&service);
    assert_eq!(argv[0], "/usr/bin/lvchain", "where the package installs it");
    let stop_within = seconds(one(&service, "TimeoutStopSec").unwrap());

    // systemd-analyze verify on the unit as shipped, its program the binary under test (the
    // manual page it names is the package's: tests/package.rs checks it installed).
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
    let mut cmdline = argv.clone();
    cmdline[0] = BIN.to_string();
    let mut agent = UnitAgent::start(&service, &cmdline, &run, None, &[], &dir.path().join("log"));
    let ready = agent.notified();
    // At READY=1 the socket answers at once (it is not being bound still).
    let (status, body) = request(&agent.socket(), "GET", "/v1/agent", b"");
    assert_eq!(ready.lines().collect::<Vec<_>>(), ["READY=1"], "{ready}");
    assert_eq!(
        status,
        200,
        "{}\n{}",
        String::from_utf8_lossy(&body),
        agent.log()
    );
    assert_eq!(
        agent.child.try_wait().unwrap(),
        None,
        "the agent ended: {}",
        agent.log()
    );

    // SIGTERM to the main process alone (KillMode=mixed).
    let code = agent.terminate(stop_within);
    assert_eq!(agent.notified(), "STOPPING=1");
    assert_eq!(code, Some(0), "{}", agent.log());
    assert!(!agent.socket().exists(), "the socket is left behind");
}
