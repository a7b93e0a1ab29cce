//! The domain lock outlives a killed lvchain while its lvm command still runs (in the VM).
//!
//! lvm commands run in their own process group, so `kill -9` of lvchain does not stop an
//! `lvcreate` in flight: it may still commit after lvchain is gone. A collector that scanned the
//! VG before that commit would act on a stale view, so the domain lock must stay held until the
//! command ends. lvm closes every descriptor it inherits at start-up, so lvchain carries the
//! lock (the local lock's flock and, on a sanlock domain, the registration whose leases live
//! while any process holds it) in a holder process that dies with the command.
//! Here a real `lvcreate` waits for lvm's own VG lock, which the test holds, past its start-up;
//! lvchain is killed meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    check, lvm_available, sanlock_available, sanlock_client_status, uuid, wait_until, Domain, BIN,
};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the waits on the gated lvcreate and the lock may take.
const WAIT: Duration = Duration::from_secs(120);

/// An `lvm` that, for `lvcreate`, writes its pid to `started`, waits for `go`, then becomes
/// the real lvm (same pid); other subcommands go straight to /sbin/lvm.
fn gated_lvcreate_wrapper(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (wrapper, started, go) = (dir.join("lvm"), dir.join("started"), dir.join("go"));
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = lvcreate ]; then\n  echo $$ > '{s}.tmp' && mv '{s}.tmp' '{s}'\n  \
         while [ ! -e '{g}' ]; do sleep 0.05; done\nfi\nexec /sbin/lvm \"$@\"\n",
        s = started.display(),
        g = go.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    (wrapper, started, go)
}

/// Takes an exclusive flock on `path` (created if needed) without waiting; None when held.
fn try_flock(path: &Path) -> Option<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (r == 0).then_some(f)
}

/// Whether process `pid` has `needle` among the paths of its open descriptors.
fn has_open(pid: &str, needle: &str) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten().any(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains(needle))
            })
        })
        .unwrap_or(false)
}

/// The sanlock daemon's list of held resources names this domain's lock.
fn sanlock_holds_domain_lock(vg: &str) -> bool {
    let text = sanlock_client_status();
    let needle = format!("{vg}:{}:", lvchain::lock::sanlock::DOMAIN_LOCK_NAME);
    text.lines()
        .any(|l| l.starts_with("r ") && l.contains(&needle))
}

/// Kills a snapshot create while its real lvcreate waits for lvm's VG lock; checks who can
/// lock, then lets the lvcreate finish and repairs.
fn killed_create_keeps_the_domain_locked(d: &Domain, parent: &str, sanlock: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, started, go) = gated_lvcreate_wrapper(dir.path());
    let mut c = std::process::Command::new(BIN.as_str());
    c.args(["volume", "create", d.name(), "--parent", parent])
        .env("LVCHAIN_LVM", &wrapper)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in d.vg.env() {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    wait_until("the gated lvcreate", WAIT, || started.exists());
    let pid = std::fs::read_to_string(&started)
        .unwrap()
        .trim()
        .to_string();
    // lvm's own VG lock, held here: the lvcreate will start, close what it inherited, then wait.
    std::fs::create_dir_all("/run/lock/lvm").unwrap();
    let vg_lock_path = PathBuf::from(format!("/run/lock/lvm/V_{}", d.name()));
    let vg_lock = try_flock(&vg_lock_path).expect("lvm's VG lock is free");
    std::fs::write(&go, "").unwrap();
    wait_until("the lvcreate waiting for the VG lock", WAIT, || {
        has_open(&pid, &format!("V_{}", d.name()))
    });
    assert!(
        !has_open(&pid, &format!("lvchain/{}.lock", d.name())),
        "lvm closed the domain lock it inherited (else this test proves nothing)"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // lvchain is dead, its lvcreate is not: nobody else gets the domain lock.
    let domain_lock = PathBuf::from(format!("/run/lock/lvchain/{}.lock", d.name()));
    assert!(
        try_flock(&domain_lock).is_none(),
        "the domain lock must stay held while the lvcreate runs"
    );
    if sanlock {
        assert!(
            sanlock_holds_domain_lock(d.name()),
            "the sanlock domain lease is still held"
        );
    }
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the lvcreate was still running during the checks above"
    );

    // Once the lvcreate has ended, the lock is free; gc finds its marked LV and removes it.
    drop(vg_lock);
    wait_until("the end of the lvcreate", WAIT, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| st.contains(") Z "))
    });
    wait_until("the domain lock to be free", WAIT, || {
        try_flock(&domain_lock).is_some()
    });
    let v = d.json(&["gc", d.name()]);
    let orphans = v["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "the killed create's LV: {v}");
    assert_eq!(orphans[0]["marker"], "LVC_CREATING", "{v}");
    let (clean, report) = check(d);
    assert!(clean, "{report}");
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
fn lvm_a_killed_lvchain_keeps_the_local_domain_lock_until_its_lvm_command_ends() {
    if !lvm_available("locallockheld") {
        return;
    }
    let d = Domain::new("locallockheld");
    let base = d.create(&["--image", &uuid(), "--size", "8M", "--format", "qcow2"]);
    killed_create_keeps_the_domain_locked(&d, &base, false);
}

#[test]
fn sanlock_a_killed_lvchain_keeps_the_sanlock_domain_lease_until_its_lvm_command_ends() {
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
