//! The lease/generation protocol on real LVM with the local lease manager (issue 5, one host):
//! a copy's status read by another process while it runs, after it succeeds, after kill -9;
//! wrong generations refused; fencing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    check, dir_file, lvm_available, make_fifo, read_volume, start_copy, status, uuid,
    wait_for_state, Domain,
};
use std::io::Write;

#[test]
fn lvm_a_running_copy_is_seen_running_then_succeeded_and_its_data_reads_back() {
    if !lvm_available("copyrunning") {
        return;
    }
    let d = Domain::new("copyrunning");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let (_dir, fifo) = make_fifo();
    let child = start_copy(&d, &vol, &fifo, 0);
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&[0x61; 1 << 20]).unwrap();
    let s = wait_for_state(&d, &vol, 0, "running");
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(s["legality"], "illegal", "illegal while the copy runs: {s}");
    w.write_all(&[0x62; 1 << 20]).unwrap();
    drop(w);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = status(&d, &vol, 0);
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["current_generation"], 1);
    assert_eq!(s["legality"], "legal");
    let data = read_volume(&d, &img, &vol, 2 << 20);
    assert!(data[..1 << 20].iter().all(|&b| b == 0x61));
    assert!(data[1 << 20..].iter().all(|&b| b == 0x62));
}

#[test]
fn lvm_a_copy_killed_with_kill_9_is_failed_and_can_be_run_again() {
    if !lvm_available("copykilled") {
        return;
    }
    let d = Domain::new("copykilled");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let (dir, fifo) = make_fifo();
    let mut child = start_copy(&d, &vol, &fifo, 0);
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&[0x63; 1 << 20]).unwrap();
    assert_eq!(wait_for_state(&d, &vol, 0, "running")["state"], "running");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(w);
    let s = wait_for_state(&d, &vol, 0, "failed");
    assert_eq!(s["state"], "failed", "{s}");
    let v = d.json(&["volume", "info", d.name(), &vol]);
    assert_eq!(v["legality"], "illegal");
    assert_eq!(v["generation"], 0);
    // The same generation again, from a regular file this time.
    let file = dir.path().join("data.raw");
    std::fs::write(&file, vec![0x64u8; 3 << 20]).unwrap();
    d.ok(&[
        "volume",
        "copy",
        d.name(),
        &vol,
        "--from",
        file.to_str().unwrap(),
        "--generation",
        "0",
    ]);
    assert_eq!(status(&d, &vol, 0)["state"], "succeeded");
    let data = read_volume(&d, &img, &vol, 3 << 20);
    assert!(data.iter().all(|&b| b == 0x64));
}

#[test]
fn lvm_a_wrong_generation_is_refused_and_changes_nothing_and_fencing_stops_late_runners() {
    if !lvm_available("generation") {
        return;
    }
    let d = Domain::new("generation");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    d.json(&[
        "volume",
        "update",
        d.name(),
        &vol,
        "--generation",
        "0",
        "--description",
        "first",
    ]);
    let before = d.state();
    let e = d.fails(&[
        "volume",
        "update",
        d.name(),
        &vol,
        "--generation",
        "0",
        "--description",
        "late",
    ]);
    assert!(e.contains("generation 1, not 0"), "{e}");
    let e = d.fails(&[
        "volume",
        "extend",
        d.name(),
        &vol,
        "--size",
        "16M",
        "--generation",
        "5",
    ]);
    assert!(e.contains("not 5"), "{e}");
    assert_eq!(d.state(), before, "a refused operation changes nothing");
    // Extend under the protocol.
    let v = d.json(&[
        "volume",
        "extend",
        d.name(),
        &vol,
        "--size",
        "16M",
        "--generation",
        "1",
    ]);
    assert_eq!(v["capacity"], 16 << 20);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["legality"], "legal");
    // Fence generation 2: a runner that was told "2" now refuses.
    let v = d.json(&["volume", "fence", d.name(), &vol, "--generation", "2"]);
    assert_eq!(v["generation"], 5);
    assert_eq!(status(&d, &vol, 2)["state"], "fenced");
    let e = d.fails(&[
        "volume",
        "update",
        d.name(),
        &vol,
        "--generation",
        "2",
        "--description",
        "late",
    ]);
    assert!(e.contains("generation 5, not 2"), "{e}");
    // Fencing is refused while the lease is held.
    let (_dir, fifo) = make_fifo();
    let mut child = start_copy(&d, &vol, &fifo, 5);
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&[1; 4096]).unwrap();
    assert_eq!(wait_for_state(&d, &vol, 5, "running")["state"], "running");
    let e = d.fails(&["volume", "fence", d.name(), &vol, "--generation", "5"]);
    assert!(e.contains("held"), "{e}");
    let e = d.fails(&["volume", "remove", d.name(), &vol]);
    assert!(
        e.contains("held") || e.contains("in use"),
        "removal is refused while the operation runs: {e}"
    );
    assert!(d.lv_tags(&vol).is_some(), "the volume survives");
    drop(w);
    assert!(child.wait().unwrap().success());
    assert_eq!(status(&d, &vol, 5)["state"], "succeeded");
    // The operation at 5 stays succeeded while a later one (at 6) holds the lease.
    let mut child = start_copy(&d, &vol, &fifo, 6);
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    w.write_all(&[2; 4096]).unwrap();
    assert_eq!(wait_for_state(&d, &vol, 6, "running")["state"], "running");
    let s = status(&d, &vol, 5);
    assert_eq!(s["state"], "succeeded", "{s}");
    drop(w);
    assert!(child.wait().unwrap().success());
    // A volume with a snapshot is not a copy target: its snapshot reads through it.
    d.create(&["--parent", &vol]);
    let before = (d.state(), d.json(&["volume", "info", d.name(), &vol]));
    let (_dir2, file) = dir_file(&[3; 4096]);
    let e = d.fails(&[
        "volume",
        "copy",
        d.name(),
        &vol,
        "--from",
        file.to_str().unwrap(),
        "--generation",
        "7",
    ]);
    assert!(e.contains("not a leaf"), "{e}");
    let after = (d.state(), d.json(&["volume", "info", d.name(), &vol]));
    assert_eq!(after, before, "a refused copy changes nothing");
    assert_eq!(after.1["generation"], 7);
}

fn update(d: &Domain, vol: &str, generation: u64, description: &str) {
    d.ok(&[
        "volume",
        "update",
        d.name(),
        vol,
        "--generation",
        &generation.to_string(),
        "--description",
        description,
    ]);
}

#[test]
fn lvm_three_operations_are_succeeded_not_fenced_and_only_a_recorded_fence_is_fenced() {
    if !lvm_available("threeops") {
        return;
    }
    let d = Domain::new("threeops");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    for g in 0..3 {
        update(&d, &vol, g, &format!("op {g}"));
    }
    // At G+3 after three operations: G succeeded (a fence would also have reached G+3).
    for g in 0..3 {
        let s = status(&d, &vol, g);
        assert_eq!(s["state"], "succeeded", "generation {g}: {s}");
    }
    d.ok(&["volume", "fence", d.name(), &vol, "--generation", "3"]);
    assert_eq!(status(&d, &vol, 3)["state"], "fenced");
    assert_eq!(status(&d, &vol, 0)["state"], "succeeded");
    // Generations the fence skipped never existed.
    assert_eq!(status(&d, &vol, 4)["state"], "unknown");
    // After the fence, operations again.
    update(&d, &vol, 6, "after the fence");
    assert_eq!(status(&d, &vol, 6)["state"], "succeeded");
    assert_eq!(status(&d, &vol, 3)["state"], "fenced");
}

#[test]
fn lvm_impossible_generations_are_bad_input_and_change_nothing() {
    if !lvm_available("biggen") {
        return;
    }
    let d = Domain::new("biggen");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let before = d.state();
    for g in ["18446744073709551615", "18446744073709551613", "-1", "x"] {
        for cmd in ["update", "fence"] {
            let f = d.run(&["volume", cmd, d.name(), &vol, "--generation", g]);
            assert_eq!(f.code, Some(2), "{cmd} --generation {g}: {f:?}");
            assert!(f.stderr.contains("generation"), "{}", f.stderr);
        }
    }
    assert_eq!(d.state(), before);
    // A read of any generation is answered.
    let s = status(&d, &vol, u64::MAX);
    assert_eq!(s["state"], "unknown", "{s}");
    assert_eq!(d.state(), before);
}

#[test]
fn lvm_format_1_domains_are_served_and_keep_version_1_slots() {
    if !lvm_available("format1") {
        return;
    }
    let d = Domain::new("format1");
    d.vg.lvm
        .vgchange_tags(d.name(), &["LVC_FORMAT=2".into()], &["LVC_FORMAT=1".into()])
        .unwrap();
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    update(&d, &vol, 0, "old format");
    let slot = d.json(&["volume", "info", d.name(), &vol])["slot"]
        .as_u64()
        .unwrap();
    let md = std::fs::read(format!("/dev/{}/metadata", d.name())).unwrap();
    let text = &md[slot as usize * 512..][..512];
    assert!(text.starts_with(b"LVC_META=1\n"), "a version-1 slot");
    assert!(!text.windows(7).any(|w| w == b"FENCED="));
    assert_eq!(status(&d, &vol, 0)["state"], "succeeded");
    assert_eq!(d.json(&["domain", "info", d.name()])["format"], 1);
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
}
