//! Smaller hardening on real LVM: output into a closed pipe, lvm that never writes metadata
//! where it must not, "maybe committed" lvm commands, and data writers that die with lvchain.
#![allow(clippy::unwrap_used)]

mod common;

use common::{lvm_available, uuid, Domain, BIN};
use std::process::{Command, Stdio};

/// `lvchain volume list VG | head -1`: the reader goes away before lvchain writes.
#[test]
fn volume_list_into_a_closed_pipe_exits_quietly() {
    if !lvm_available("closedpipe") {
        return;
    }
    let d = Domain::new("closedpipe");
    let img = uuid();
    let mut leaf = d.create(&["--image", &img, "--size", "8M", "--format", "qcow2"]);
    for _ in 0..3 {
        leaf = d.create(&["--parent", &leaf]);
    }
    for json in [false, true] {
        let mut c = Command::new(BIN.as_str());
        c.args(["volume", "list", d.name()]);
        if json {
            c.arg("--json");
        }
        for (k, v) in d.vg.env() {
            c.env(k, v);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The read end goes before lvchain writes (it runs lvm first).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "json={json}: {stderr}");
        assert!(!stderr.contains("panicked"), "json={json}: {stderr}");
        assert!(stderr.is_empty(), "json={json}: quiet: {stderr}");
    }
    // Through a shell, as users type it: the first line arrives, nobody panics.
    let devs = d.vg.env();
    let f = lvchain::exec::Cmd::new("/bin/sh", std::time::Duration::from_secs(120))
        .env(&devs[0].0, &devs[0].1)
        .args([
            "-c",
            &format!("'{}' volume list {} | head -1", BIN.as_str(), d.name()),
        ])
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    assert!(f.stdout.starts_with("ID"), "{}", f.stdout);
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
}
