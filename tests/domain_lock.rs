//! The domain lock outlives a killed lvchain while its lvm command still runs (in the VM).
//!
//! lvm commands run in their own process group, so `kill -9` of lvchain does not stop an
//! `lvcreate` in flight: it may still commit after lvchain is gone. A collector that scanned the
//! VG before that commit would act on a stale view, so the domain lock must stay held until the
//! command ends. lvm gets the lock with its other file descriptors: the local lock's flock and,
//! on a sanlock domain, the sanlock registration whose leases live while any process holds it.
//! Here an lvm wrapper holds `lvcreate` for a while; lvchain is killed meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use common::{lvm_available, sanlock_available, uuid, Domain, BIN};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long the wrapper holds `lvcreate` before running it.
const HOLD_SECS: u64 = 10;

/// An `lvm` that marks `started`, waits, runs `lvcreate`, then marks `done`; other
/// subcommands go straight to /sbin/lvm.
fn slow_lvcreate_wrapper(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (wrapper, started, done) = (dir.join("lvm"), dir.join("started"), dir.join("done"));
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = lvcreate ]; then\n  : > '{}'\n  sleep {HOLD_SECS}\n  \
         /sbin/lvm \"$@\"\n  rc=$?\n  : > '{}'\n  exit $rc\nfi\nexec /sbin/lvm \"$@\"\n",
        started.display(),
        done.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (wrapper, started, done)
}

fn wait_for(path: &Path, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{what} never came"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sanlock daemon's list of held resources names this domain's lock.
fn sanlock_holds_domain_lock(vg: &str) -> bool {
    let out = std::process::Command::new("sanlock")
        .args(["client", "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let needle = format!("{vg}:{}:", lvchain::lease::cluster::DOMAIN_LOCK_NAME);
    text.lines()
        .any(|l| l.starts_with("r ") && l.contains(&needle))
}

/// Kills a snapshot create while its lvcreate is held; checks who can lock, then repairs.
fn killed_create_keeps_the_domain_locked(d: &Domain, parent: &str, sanlock: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, started, done) = slow_lvcreate_wrapper(dir.path());
    let mut c = std::process::Command::new(BIN.as_str());
    c.args(["volume", "create", d.name(), "--parent", parent])
        .env("LVCHAIN_LVM", &wrapper)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in d.vg.env() {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    wait_for(&started, "the held lvcreate");
    child.kill().unwrap();
    child.wait().unwrap();

    // lvchain is dead, its lvcreate is not: nobody else gets the domain lock.
    let f = d.run_env(&["gc", d.name()], &[("LVCHAIN_LOCK_TIMEOUT", "1")]);
    assert_eq!(f.code, Some(1), "gc must not get the lock: {f:?}");
    assert!(
        f.stderr.contains("locked by another process"),
        "{}",
        f.stderr
    );
    if sanlock {
        assert!(
            sanlock_holds_domain_lock(d.name()),
            "the sanlock domain lease is still held"
        );
    }
    assert!(
        !done.exists(),
        "the lvcreate was still running during the checks above (raise HOLD_SECS)"
    );

    // Once the lvcreate has ended, the lock is free; gc finds its marked LV and removes it.
    wait_for(&done, "the end of the held lvcreate");
    let v = d.json(&["gc", d.name()]);
    let orphans = v["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "the killed create's LV: {v}");
    assert_eq!(orphans[0]["marker"], "LVC_CREATING", "{v}");
    d.ok(&["domain", "check", d.name()]);
    if sanlock {
        assert!(
            !sanlock_holds_domain_lock(d.name()),
            "the domain lease is free again"
        );
    }
    let chain = d.json(&["image", "chain", d.name(), &v_image(d, parent)]);
    let last = chain.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["id"].as_str(), last["role"].as_str()),
        (Some(parent), Some("leaf")),
        "the parent is the leaf again"
    );
}

fn v_image(d: &Domain, vol: &str) -> String {
    d.json(&["volume", "info", d.name(), vol])["image"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_killed_lvchain_keeps_the_local_domain_lock_until_its_lvm_command_ends() {
    if !lvm_available("locallockheld") {
        return;
    }
    let d = Domain::new("locallockheld");
    let base = d.create(&["--image", &uuid(), "--size", "8M", "--format", "qcow2"]);
    killed_create_keeps_the_domain_locked(&d, &base, false);
}

#[test]
fn a_killed_lvchain_keeps_the_sanlock_domain_lease_until_its_lvm_command_ends() {
    if !lvm_available("sanlocklockheld") || !sanlock_available("sanlocklockheld") {
        return;
    }
    let d = Domain::new_sanlock("sanlocklockheld");
    d.ok(&["host", "join", d.name(), "--host-id", "9"]);
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "qcow2"]);
    killed_create_keeps_the_domain_locked(&d, &base, true);
    d.ok(&["image", "remove", d.name(), &img]);
    d.ok(&["domain", "remove", d.name()]);
}
