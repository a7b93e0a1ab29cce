//! A domain on the sanlock lock manager, on one host with the sanlock daemon (in the VM):
//! format, join, the domain lock and volume leases as sanlock leases, an operation's status
//! read from the leases (running with its host id, failed after kill -9), fencing, leave.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    dir_file, lvm_available, make_fifo, resume, sanlock_available, start_copy, start_paused,
    status, uuid, wait_for_state, Domain,
};
use std::io::Write;

#[test]
fn a_sanlock_domain_serves_leases_and_status_from_shared_storage() {
    if !lvm_available("sanlockdomain") || !sanlock_available("sanlockdomain") {
        return;
    }
    let d = Domain::new_sanlock("sanlockdomain");
    let info = d.json(&["domain", "info", d.name()]);
    assert_eq!(info["lock_manager"], "sanlock", "{info}");
    // Without joining, commands say what is missing and change nothing.
    let img = uuid();
    let e = d.fails(&[
        "volume",
        "create",
        d.name(),
        "--image",
        &img,
        "--size",
        "8M",
    ]);
    assert!(e.contains("host join"), "{e}");
    let e = d.fails(&["host", "join", d.name(), "--host-id", "0"]);
    assert!(e.contains("--host-id must be"), "{e}");
    d.ok(&["host", "join", d.name(), "--host-id", "7"]);
    let e = d.fails(&["host", "join", d.name(), "--host-id", "8"]);
    assert!(e.contains("as host 7"), "{e}");
    d.ok(&["host", "join", d.name(), "--host-id", "7"]);
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    // A copy fed through a FIFO runs under the volume's sanlock lease: status names host 7.
    let (_dir, fifo) = make_fifo();
    let mut child = start_copy(&d, &vol, &fifo, 0);
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&[0x71; 1 << 20]).unwrap();
    let s = wait_for_state(&d, &vol, 0, "running");
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["host_id"], 7, "{s}");
    let e = d.fails(&["volume", "fence", d.name(), &vol, "--generation", "0"]);
    assert!(e.contains("held"), "{e}");
    // kill -9: sanlock frees the lease of a dead process; the operation reads as failed.
    child.kill().unwrap();
    child.wait().unwrap();
    drop(w);
    let s = wait_for_state(&d, &vol, 0, "failed");
    assert_eq!(s["state"], "failed", "{s}");
    let v = d.json(&["volume", "info", d.name(), &vol]);
    assert_eq!(
        (v["legality"].as_str(), v["generation"].as_u64()),
        (Some("illegal"), Some(0))
    );
    // A new copy with the same generation runs to the end: succeeded, and the data reads back.
    let file = dir_file(&vec![0x72; 3 << 20]);
    d.ok(&[
        "volume",
        "copy",
        d.name(),
        &vol,
        "--from",
        file.1.to_str().unwrap(),
        "--generation",
        "0",
    ]);
    assert_eq!(status(&d, &vol, 0)["state"], "succeeded");
    d.ok(&["image", "prepare", d.name(), &img]);
    let data = std::fs::read(format!("/run/lvchain/{}/{img}/{vol}", d.name())).unwrap();
    d.ok(&["image", "teardown", d.name(), &img]);
    assert!(
        data[..3 << 20].iter().all(|&b| b == 0x72),
        "the copied data reads back"
    );
    // Fence generation 1, then a late runner with that generation refuses.
    let v = d.json(&["volume", "fence", d.name(), &vol, "--generation", "1"]);
    assert_eq!(v["generation"], 4);
    assert_eq!(status(&d, &vol, 1)["state"], "fenced");
    let e = d.fails(&[
        "volume",
        "update",
        d.name(),
        &vol,
        "--generation",
        "1",
        "--description",
        "late",
    ]);
    assert!(e.contains("generation 4, not 1"), "{e}");
    d.json(&[
        "volume",
        "update",
        d.name(),
        &vol,
        "--generation",
        "4",
        "--legality",
        "legal",
    ]);
    assert_eq!(status(&d, &vol, 4)["state"], "succeeded");
    // A host that is not in the lockspace, with nothing active (as after a reboot), reads the
    // status from shared storage all the same.
    d.ok(&["host", "leave", d.name()]);
    let specials: Vec<String> = ["ids", "leases", "metadata"]
        .iter()
        .map(|lv| format!("{}/{lv}", d.name()))
        .collect();
    d.vg.lvm
        .lvchange_activation(&specials, lvchain::lvm::Activation::Deactivate)
        .unwrap();
    assert_eq!(status(&d, &vol, 4)["state"], "succeeded");
    d.ok(&["host", "join", d.name(), "--host-id", "7"]);
    // Snapshots and removal take the sanlock domain lock; the domain stays clean.
    let snap = d.create(&["--parent", &vol]);
    d.ok(&["volume", "remove", d.name(), &snap]);
    d.ok(&["domain", "check", d.name()]);
    d.ok(&["image", "remove", d.name(), &img]);
    // A removal that dies after its mark: no host takes the VG for a domain any more, and
    // running the removal again finishes it.
    let f = d.run_env(
        &["domain", "remove", d.name()],
        &[("LVCHAIN_CRASH_AT", "domain-remove.after-mark")],
    );
    assert_eq!(f.signal, Some(libc::SIGABRT), "{f:?}");
    let e = d.fails(&[
        "volume",
        "create",
        d.name(),
        "--image",
        &uuid(),
        "--size",
        "8M",
    ]);
    assert!(e.contains("not an lvchain domain"), "{e}");
    d.ok(&["domain", "remove", d.name()]);
    let f = d.run(&["domain", "info", d.name()]);
    assert!(f.stderr.contains("not found"), "{f:?}");
}

#[test]
fn a_volume_source_is_read_under_a_shared_sanlock_lease() {
    if !lvm_available("sanlockshared") || !sanlock_available("sanlockshared") {
        return;
    }
    let d = Domain::new_sanlock("sanlockshared");
    d.ok(&["host", "join", d.name(), "--host-id", "9"]);
    let (src_img, dst_img) = (uuid(), uuid());
    let src = d.create(&["--image", &src_img, "--size", "8M", "--format", "raw"]);
    let dst = d.create(&["--image", &dst_img, "--size", "8M", "--format", "raw"]);
    let (dir, file) = dir_file(&[0x73; 1 << 20]);
    let copy = |to: &str, from: &str, g: &str| {
        let v: Vec<String> = [
            "volume",
            "copy",
            d.name(),
            to,
            "--from",
            from,
            "--generation",
            g,
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        v
    };
    let a = copy(&src, file.to_str().unwrap(), "0");
    d.ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let a = copy(&dst, &src, "0");
    let args: Vec<&str> = a.iter().map(String::as_str).collect();
    let (child, pause) = start_paused(&d, &args, "op.after-work", dir.path());
    // The reader holds the source shared: no operation starts on it, and none reads running.
    let before = d.state();
    let e = d.fails(&["volume", "update", d.name(), &src, "--generation", "1"]);
    assert!(e.contains("held"), "{e}");
    assert_eq!(d.state(), before);
    let s = status(&d, &src, 1);
    assert_ne!(
        s["state"], "running",
        "a shared reader is not an operation: {s}"
    );
    assert_eq!(status(&d, &dst, 0)["state"], "running");
    resume(child, &pause);
    assert_eq!(status(&d, &dst, 0)["state"], "succeeded");
    d.ok(&["volume", "update", d.name(), &src, "--generation", "1"]);
    d.ok(&["host", "leave", d.name()]);
}
