//! The agent's locks pass only into the programs of the operation holding them (real LVM, in
//! the VM). The agent runs many operations at once on its threads; a lock or lease handed to
//! every program the process starts would be kept by another operation's program (a copy
//! job's qemu-img) after its own operation ended. Here a copy's qemu-img starts while a burst
//! of creations holds the domain lock: once the burst ends the lock is free although qemu-img
//! still runs, and it never had the lock open; an `lvcreate` of a later burst has its own
//! burst's lock open (an lvm command outliving a killed agent keeps it) but not the lease of
//! the copy running beside it.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::Agent;
use common::{check, lvm_available, uuid, wait_until, Domain};
use serde_json::json;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(60);

/// A wrapper for `program`: when its first argument is `verb` and `dir/gate` exists, it writes
/// its pid to `dir/started`, waits for `dir/go`, then becomes the real program (same pid).
fn gated(dir: &Path, program: &str, verb: &str) -> PathBuf {
    let wrapper = dir.join("wrapper");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = {verb} ] && [ -e '{d}/gate' ]; then\n  \
         echo $$ > '{d}/started.tmp' && mv '{d}/started.tmp' '{d}/started'\n  \
         while [ ! -e '{d}/go' ]; do sleep 0.05; done\nfi\nexec {program} \"$@\"\n",
        d = dir.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// Arms the gate of `dir`'s wrapper.
fn arm(dir: &Path) {
    std::fs::write(dir.join("gate"), "").unwrap();
}

/// Waits for the gated program of `dir` to start; its pid.
fn started(dir: &Path) -> String {
    let file = dir.join("started");
    wait_until("the gated program", WAIT, || file.exists());
    std::fs::read_to_string(&file).unwrap().trim().to_string()
}

/// Takes an exclusive flock on `path` without waiting: whether it was free.
fn lock_is_free(path: &Path) -> bool {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock on a descriptor we own; closing the file drops it.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Says that this process waits for `vg`'s domain lock, as lvchain does (a shared flock on
/// its want file), until dropped: a burst holding the lock releases it at once.
fn want(vg: &str) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("/run/lock/lvchain/{vg}.want"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) }, 0);
    f
}

/// Whether process `pid` has a descriptor open on `path`.
fn has_open(pid: &str, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == path))
}

#[test]
fn lvm_agent_fds_a_copy_started_in_a_burst_keeps_its_lease_not_the_domain_lock() {
    if !lvm_available("lvm_agent_fds_a_copy_started_in_a_burst_keeps_its_lease_not_the_domain_lock")
    {
        return;
    }
    let d = Domain::new("agentfds");
    let vg = d.name().to_string();
    let vol = d.create(&["--image", &uuid(), "--size", "8M"]);
    let data = tempfile::tempdir().unwrap();
    let source = data.path().join("source.raw");
    std::fs::write(&source, vec![0x5a; 1 << 20]).unwrap();
    let (qemu_dir, lvm_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let qemu = gated(qemu_dir.path(), "/usr/bin/qemu-img", "convert");
    let lvm = gated(lvm_dir.path(), "/sbin/lvm", "lvcreate");
    arm(qemu_dir.path());
    // A burst keeps the lock until a minute after its last creation, or until asked for it.
    let agent = Agent::start_with_env(
        &d,
        &[
            "--gc-interval",
            "0",
            "--census-interval",
            "0",
            "--burst-idle",
            "60",
        ],
        &[("LVCHAIN_QEMU_IMG", &qemu), ("LVCHAIN_LVM", &lvm)],
    );
    let domain_lock = PathBuf::from(format!("/run/lock/lvchain/{vg}.lock"));
    let lease = PathBuf::from(format!("/run/lock/lvchain/{vg}/{vol}.lease"));
    let create = || {
        agent.call(
            "POST",
            &format!("/v1/domains/{vg}/volumes"),
            json!({"image": uuid(), "size": 4 << 20})
                .to_string()
                .as_bytes(),
        )
    };

    // A burst takes the lock; a copy starts under it (its qemu-img waits at the gate).
    let (status, v) = create();
    assert_eq!(status, 201, "{v}");
    let job = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes/{vol}/copy"),
        json!({"generation": 0, "from_file": source}),
    );
    let qemu_pid = started(qemu_dir.path());
    assert!(
        !lock_is_free(&domain_lock),
        "the burst held the domain lock when qemu-img started (else this test proves nothing)"
    );

    // Asked for, the burst ends: the lock is free at once, though qemu-img still runs.
    let asking = want(&vg);
    wait_until("the domain lock free after the burst", WAIT, || {
        lock_is_free(&domain_lock)
    });
    drop(asking);
    assert!(Path::new(&format!("/proc/{qemu_pid}")).exists());
    assert!(
        !has_open(&qemu_pid, &domain_lock),
        "qemu-img inherited the burst's domain lock"
    );
    assert!(
        has_open(&qemu_pid, &lease),
        "qemu-img holds the lease of its own copy"
    );

    // A later burst's lvcreate (gated) holds its burst's lock, not the copy's lease.
    arm(lvm_dir.path());
    let creating = std::thread::scope(|s| {
        let h = s.spawn(create);
        let lvm_pid = started(lvm_dir.path());
        let held = (has_open(&lvm_pid, &domain_lock), has_open(&lvm_pid, &lease));
        std::fs::write(lvm_dir.path().join("go"), "").unwrap();
        (held, h.join().unwrap())
    });
    let ((lock_in_lvm, lease_in_lvm), (status, v)) = creating;
    assert_eq!(status, 201, "{v}");
    assert!(
        lock_in_lvm,
        "the burst handed its domain lock to its lvcreate"
    );
    assert!(!lease_in_lvm, "the lvcreate inherited the copy's lease");
    assert!(
        !has_open(&qemu_pid, &domain_lock),
        "qemu-img got the second burst's lock"
    );

    // The copy completes; the domain is clean and its lock free.
    std::fs::write(qemu_dir.path().join("go"), "").unwrap();
    let id = job["id"].as_str().unwrap();
    let start = Instant::now();
    let done = loop {
        let j = agent.ok("GET", &format!("/v1/jobs/{id}"), json!({}));
        if j["state"] != "running" {
            break j;
        }
        assert!(start.elapsed() < WAIT, "{j}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    let asking = want(&vg);
    wait_until("the domain lock free at the end", WAIT, || {
        lock_is_free(&domain_lock)
    });
    drop(asking);
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
}

/// The value of the metric line that starts with `prefix` (0 when there is none).
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn lvm_agent_fds_lock_waits_are_in_the_metrics() {
    if !lvm_available("lvm_agent_fds_lock_waits_are_in_the_metrics") {
        return;
    }
    let d = Domain::new("agentlockwait");
    let vg = d.name().to_string();
    let agent = Agent::start(&d, &["--gc-interval", "0", "--census-interval", "0"]);
    let domain_lock = PathBuf::from(format!("/run/lock/lvchain/{vg}.lock"));
    let scrape = || {
        agent
            .call("GET", "/metrics", b"")
            .1
            .as_str()
            .unwrap()
            .to_string()
    };
    let series = format!("{{domain=\"{vg}\",part=\"local\",outcome=\"acquired\"}}");
    // Another process holds the domain lock for 2.5 s while a creation waits for it.
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&domain_lock)
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let before = scrape();
    let (status, v) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            agent.call(
                "POST",
                &format!("/v1/domains/{vg}/volumes"),
                json!({"image": uuid(), "size": 4 << 20})
                    .to_string()
                    .as_bytes(),
            )
        });
        std::thread::sleep(Duration::from_millis(2500));
        drop(held);
        h.join().unwrap()
    });
    assert_eq!(status, 201, "{v}");
    let after = scrape();
    let count = format!("lvchain_lock_wait_seconds_count{series}");
    let sum = format!("lvchain_lock_wait_seconds_sum{series}");
    assert_eq!(
        metric(&after, &count) - metric(&before, &count),
        1.0,
        "{after}"
    );
    let waited = metric(&after, &sum) - metric(&before, &sum);
    // The request reaches the lock some time after it was sent (TCG is slow).
    assert!((1.05..60.0).contains(&waited), "waited {waited}s: {after}");
    // The histogram puts it above the 1.024 s bucket.
    let fast = format!(
        "lvchain_lock_wait_seconds_bucket{{le=\"1.024\",domain=\"{vg}\",part=\"local\",outcome=\"acquired\"}}"
    );
    assert!(after.contains(&fast), "{after}");
    assert_eq!(metric(&after, &fast), metric(&before, &fast), "{after}");
}
