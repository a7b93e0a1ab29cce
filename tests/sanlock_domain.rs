//! A domain on the sanlock lock manager, on one host with the sanlock daemon (in the VM):
//! format, join, the domain lock and volume leases as sanlock leases, an operation's status
//! read from the leases (running with its host id, failed after kill -9), fencing, leave; the
//! same on 4Kn storage (4096-byte logical sectors).
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    check, dir_file, lvm_available, make_fifo, resume, sanlock_available, sanlock_client_status,
    start_copy, start_paused, status, uuid, wait_for_state, Domain,
};
use lvchain::directio::DirectFile;
use std::io::Write;

#[test]
fn sanlock_a_sanlock_domain_serves_leases_and_status_from_shared_storage() {
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
    d.ok(&["image", "prepare", d.name(), &img, "--without-agent"]);
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
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
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
fn sanlock_a_volume_source_is_read_under_a_shared_sanlock_lease() {
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

/// `(magic, sector_size)` of the sanlock record at `offset` of the domain's LV `lv`, read with
/// O_DIRECT in whole 4K blocks (independently of lvchain's decoder).
fn sanlock_record(d: &Domain, lv: &str, offset: u64) -> (u32, u32) {
    let f = DirectFile::open(format!("/dev/{}/{lv}", d.name()).as_ref(), false).unwrap();
    let b = f.read_at(offset, 4096).unwrap();
    let b = b.as_slice();
    let le = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    (le(0), le(12))
}

/// The status as a reader without a sanlock daemon sees it: lvchain reads the leases from
/// disk (the O_DIRECT probe), since libsanlock finds no daemon socket in `SANLOCK_RUN_DIR`.
fn status_without_daemon(d: &Domain, vol: &str, generation: u64) -> serde_json::Value {
    let nodaemon = tempfile::tempdir().unwrap();
    let gen = generation.to_string();
    let f = d.run_env(
        &[
            "volume",
            "status",
            d.name(),
            vol,
            "--generation",
            &gen,
            "--json",
        ],
        &[("SANLOCK_RUN_DIR", nodaemon.path().to_str().unwrap())],
    );
    assert!(f.success(), "daemon-less status failed: {f:?}");
    serde_json::from_str(&f.stdout).unwrap()
}

#[test]
fn sanlock_domain_on_4k_sector_disks_works_end_to_end() {
    if !lvm_available("sanlock4k") || !sanlock_available("sanlock4k") {
        return;
    }
    let d = Domain::new_sanlock_with_sectors("sanlock4k", 4096);
    // The domain really is on 4Kn storage, and sanlock's records use its 4K sectors: the
    // lockspace at 0 of `ids` (host 1 .. host 250 one 4K sector apart), the domain lock at
    // 1 MiB of `leases`.
    assert_eq!(d.lv_sector_size("ids"), 4096);
    assert_eq!(d.lv_sector_size("leases"), 4096);
    let info = d.json(&["domain", "info", d.name()]);
    assert_eq!(info["lock_manager"], "sanlock", "{info}");
    assert_eq!(info["slot_size"], 4096, "{info}");
    const DELTA: u32 = 0x1221_2010;
    const PAXOS: u32 = 0x0615_2010;
    assert_eq!(sanlock_record(&d, "ids", 0), (DELTA, 4096));
    assert_eq!(sanlock_record(&d, "ids", 249 * 4096), (DELTA, 4096));
    assert_eq!(sanlock_record(&d, "leases", 1 << 20), (PAXOS, 4096));

    // A 4K lockspace has host ids 1..=250: 251 is bad input and changes nothing.
    let before = d.state();
    let e = d.fails(&["host", "join", d.name(), "--host-id", "251"]);
    assert!(e.contains("--host-id must be 1 to 250"), "{e}");
    assert!(e.contains("4096-byte sectors"), "{e}");
    assert_eq!(d.state(), before, "a refused join changes nothing");
    assert!(
        !sanlock_client_status().contains(d.name()),
        "the daemon did not join the lockspace"
    );
    let host_id_file = format!("/run/lvchain/{}/host-id", d.name());
    assert!(!std::path::Path::new(&host_id_file).exists());
    // The highest host id works (its delta lease is the lockspace's last 4K sector).
    d.ok(&["host", "join", d.name(), "--host-id", "250"]);
    assert!(sanlock_client_status().contains(d.name()));

    // A volume's lease is written at its creation; a copy runs under it.
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let (_dir, fifo) = make_fifo();
    let mut child = start_copy(&d, &vol, &fifo, 0);
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&[0x41; 1 << 20]).unwrap();
    // Through the daemon, and from disk alone (4K leader and host-lease sectors).
    let s = wait_for_state(&d, &vol, 0, "running");
    assert_eq!(
        (s["state"].as_str(), s["host_id"].as_u64()),
        (Some("running"), Some(250)),
        "{s}"
    );
    let s = status_without_daemon(&d, &vol, 0);
    assert_eq!(
        (s["state"].as_str(), s["host_id"].as_u64()),
        (Some("running"), Some(250)),
        "{s}"
    );
    let e = d.fails(&["volume", "fence", d.name(), &vol, "--generation", "0"]);
    assert!(e.contains("held"), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(w);
    let s = wait_for_state(&d, &vol, 0, "failed");
    assert_eq!(s["state"], "failed", "{s}");
    assert_eq!(status_without_daemon(&d, &vol, 0)["state"], "failed");

    // The copy again: succeeded, and the data reads back through the 4K device.
    let file = dir_file(&vec![0x42; 3 << 20]);
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
    assert_eq!(status_without_daemon(&d, &vol, 0)["state"], "succeeded");
    d.ok(&["image", "prepare", d.name(), &img, "--without-agent"]);
    let data = std::fs::read(format!("/run/lvchain/{}/{img}/{vol}", d.name())).unwrap();
    d.ok(&["image", "teardown", d.name(), &img]);
    assert!(data[..3 << 20].iter().all(|&b| b == 0x42));

    // Fencing.
    let v = d.json(&["volume", "fence", d.name(), &vol, "--generation", "1"]);
    assert_eq!(v["generation"], 4);
    assert_eq!(status(&d, &vol, 1)["state"], "fenced");
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
    assert_eq!(status_without_daemon(&d, &vol, 4)["state"], "succeeded");

    // The domain lock: a snapshot and its removal; a creation that dies is rolled back by gc.
    let snap = d.create(&["--parent", &vol]);
    d.ok(&["volume", "remove", d.name(), &snap]);
    let f = d.run_env(
        &["volume", "create", d.name(), "--parent", &vol],
        &[("LVCHAIN_CRASH_AT", "create.after-metadata")],
    );
    assert_eq!(f.signal, Some(libc::SIGABRT), "{f:?}");
    let (clean, report) = check(&d);
    assert!(!clean, "the dead creation is reported: {report}");
    d.ok(&["gc", d.name()]);
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
    let snap = d.create(&["--parent", &vol]);
    let chain = d.json(&["image", "chain", d.name(), &img]);
    assert_eq!(chain.as_array().map(Vec::len), Some(2), "{chain}");
    d.ok(&["volume", "remove", d.name(), &snap]);

    // Leaving and removing the domain.
    d.ok(&["image", "remove", d.name(), &img]);
    d.ok(&["host", "leave", d.name()]);
    d.ok(&["host", "join", d.name(), "--host-id", "250"]);
    d.ok(&["domain", "remove", d.name()]);
    let f = d.run(&["domain", "info", d.name()]);
    assert!(f.stderr.contains("not found"), "{f:?}");
}
