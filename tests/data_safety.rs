//! Data safety on real LVM: no write into a volume that another volume reads or will read
//! through, chains kept whole under a leftover removal mark, illegal volumes never served,
//! copy sources read only as they were declared and held while they are read.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    check, dir_file, hold_local_lease, lvm_available, read_volume, resume, start_paused, status,
    uuid, Domain,
};
use lvchain::exec::Cmd;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn copy_args<'a>(d: &'a Domain, vol: &'a str, from: &'a str, generation: &'a str) -> Vec<&'a str> {
    vec![
        "volume",
        "copy",
        d.name(),
        vol,
        "--from",
        from,
        "--generation",
        generation,
    ]
}

/// Asserts that `args` fails with a message containing `want` and changes nothing.
fn refused(d: &Domain, args: &[&str], want: &str) -> String {
    let before = d.state();
    let e = d.fails(args);
    assert!(e.contains(want), "{args:?}: expected {want:?} in: {e}");
    assert_eq!(
        d.state(),
        before,
        "{args:?} was refused but changed the domain"
    );
    e
}

#[test]
fn lvm_a_copy_into_a_parent_whose_snapshot_creation_died_is_refused_until_gc() {
    if !lvm_available("copydeadsnap") {
        return;
    }
    let d = Domain::new("copydeadsnap");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let f = d.run_env(
        &["volume", "create", d.name(), "--parent", &base],
        &[("LVCHAIN_CRASH_AT", "create.after-parent-update")],
    );
    assert_ne!(f.code, Some(0), "the creation should have crashed");
    let (_dir, file) = dir_file(&[0x41; 1 << 20]);
    let from = file.to_str().unwrap();
    refused(&d, &copy_args(&d, &base, from, "0"), "not a leaf");
    d.ok(&["gc", d.name()]);
    d.ok(&copy_args(&d, &base, from, "0"));
    assert_eq!(status(&d, &base, 0)["state"], "succeeded");
    assert!(read_volume(&d, &img, &base, 1 << 20)
        .iter()
        .all(|&b| b == 0x41));
    assert!(check(&d).0, "{}", check(&d).1);
}

#[test]
fn lvm_a_live_snapshot_creation_holds_its_parents_lease_until_its_commit() {
    if !lvm_available("copylivesnap") {
        return;
    }
    let d = Domain::new("copylivesnap");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let (dir, file) = dir_file(&[0x42; 1 << 20]);
    let from = file.to_str().unwrap();
    let create = ["volume", "create", d.name(), "--parent", &base];
    for point in ["create.after-lvcreate", "create.after-parent-update"] {
        let (child, pause) = start_paused(&d, &create, point, dir.path());
        refused(&d, &copy_args(&d, &base, from, "0"), "held");
        // The creation goes on and commits: the base now has a snapshot.
        let snap = resume(child, &pause);
        let chain = d.json(&["image", "chain", d.name(), &img]);
        assert_eq!(chain.as_array().unwrap().len(), 2, "{chain}");
        refused(&d, &copy_args(&d, &base, from, "0"), "not a leaf");
        d.ok(&["volume", "remove", d.name(), snap.trim()]);
    }
    d.ok(&copy_args(&d, &base, from, "0"));
    assert!(check(&d).0, "{}", check(&d).1);
}

#[test]
fn lvm_a_removal_mark_left_on_a_middle_volume_keeps_the_whole_chain() {
    if !lvm_available("middlemark") {
        return;
    }
    let d = Domain::new("middlemark");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let mid = d.create(&["--parent", &base]);
    let leaf = d.create(&["--parent", &mid]);
    d.vg.lvm
        .lvchange_tags(d.name(), &mid, &[], &["LVC_REMOVING".into()])
        .unwrap();
    let (_dir, file) = dir_file(&[0x43; 1 << 20]);
    let from = file.to_str().unwrap();
    refused(&d, &["volume", "remove", d.name(), &base], "not a leaf");
    refused(
        &d,
        &["volume", "create", d.name(), "--parent", &base],
        "not a leaf",
    );
    refused(&d, &copy_args(&d, &base, from, "0"), "not a leaf");
    refused(&d, &["volume", "remove", d.name(), &mid], "not a leaf");
    refused(
        &d,
        &["volume", "remove", d.name(), &leaf],
        "run `lvchain gc`",
    );
    let ids = |chain: &Value| -> Vec<String> {
        chain
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    };
    let chain = d.json(&["image", "chain", d.name(), &img]);
    assert_eq!(ids(&chain), [base.clone(), mid.clone(), leaf.clone()]);
    assert_eq!(chain[0]["role"], "internal", "{chain}");
    let gc = d.json(&["gc", d.name()]);
    assert_eq!(gc["orphans"].as_array().unwrap().len(), 1, "{gc}");
    assert!(check(&d).0, "{}", check(&d).1);
    assert_eq!(
        ids(&d.json(&["image", "chain", d.name(), &img])),
        [base.clone(), mid.clone(), leaf.clone()]
    );
    assert!(!d.lv_tags(&mid).unwrap().contains(&"LVC_REMOVING".into()));
}

#[test]
fn lvm_illegal_volumes_are_not_prepared_and_check_reports_them() {
    if !lvm_available("illegalserve") {
        return;
    }
    let d = Domain::new("illegalserve");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let leaf = d.create(&["--parent", &base]);
    let (_dir, file) = dir_file(&[0x44; 1 << 20]);
    let from = file.to_str().unwrap();
    let f = d.run_env(
        &copy_args(&d, &leaf, from, "0"),
        &[("LVCHAIN_CRASH_AT", "op.after-work")],
    );
    assert_ne!(f.code, Some(0), "the copy should have crashed");
    assert_eq!(status(&d, &leaf, 0)["state"], "failed");
    let e = refused(&d, &["image", "prepare", d.name(), &img], &leaf);
    assert!(e.contains("illegal"), "{e}");
    assert!(!Path::new(&format!("/run/lvchain/{}/{img}", d.name())).exists());
    let (clean, report) = check(&d);
    assert!(!clean, "an illegal volume is a problem: {report}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report}");
    assert_eq!(problems[0]["kind"], "illegal");
    assert_eq!(problems[0]["subject"], leaf.as_str());
    assert!(problems[0]["detail"]
        .as_str()
        .unwrap()
        .contains("generation 0"));
    // Recovery work may look at it.
    d.ok(&["image", "prepare", d.name(), &img, "--allow-illegal"]);
    d.ok(&["image", "teardown", d.name(), &img]);
    // Operations that write no data do not make the failed copy's data whole.
    let update = [
        "volume",
        "update",
        d.name(),
        &leaf,
        "--generation",
        "0",
        "--description",
        "x",
    ];
    let v = d.json(&update);
    assert_eq!(
        (v["legality"].as_str(), v["generation"].as_u64()),
        (Some("illegal"), Some(1))
    );
    let extend = [
        "volume",
        "extend",
        d.name(),
        &leaf,
        "--size",
        "16M",
        "--generation",
        "1",
    ];
    assert_eq!(d.json(&extend)["legality"], "illegal");
    refused(&d, &["image", "prepare", d.name(), &img], "illegal");
    // The copy run again makes it legal: served and clean again.
    d.ok(&copy_args(&d, &leaf, from, "2"));
    d.ok(&["image", "prepare", d.name(), &img]);
    d.ok(&["image", "teardown", d.name(), &img]);
    assert!(check(&d).0, "{}", check(&d).1);
}

/// A host file with a known pattern and a qcow2 image whose header names it as backing.
fn backed_qcow2(dir: &Path) -> (PathBuf, PathBuf) {
    let secret = dir.join("secret");
    std::fs::write(&secret, b"SECRET-PATTERN!!".repeat(1 << 16)).unwrap();
    let evil = dir.join("upload.qcow2");
    let f = Cmd::new("/usr/bin/qemu-img", Duration::from_secs(60))
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&secret)
        .arg(&evil)
        .arg("1M")
        .run()
        .unwrap();
    assert!(f.success(), "{}", f.stderr);
    (secret, evil)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn lvm_a_qcow2_source_naming_a_backing_file_is_refused_and_its_backing_never_read() {
    if !lvm_available("copybacking") {
        return;
    }
    let d = Domain::new("copybacking");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "4M", "--format", "raw"]);
    let dir = tempfile::tempdir().unwrap();
    let (_secret, evil) = backed_qcow2(dir.path());
    let from = evil.to_str().unwrap();
    let mut args = copy_args(&d, &vol, from, "0");
    args.extend(["--from-format", "qcow2"]);
    refused(&d, &args, "backing file");
    // Read as raw (the default), the upload is its own bytes: the header, not the backing.
    d.ok(&copy_args(&d, &vol, from, "0"));
    let data = read_volume(&d, &img, &vol, 4 << 20);
    assert!(
        !contains(&data, b"SECRET-PATTERN"),
        "the backing file leaked"
    );
    assert_eq!(&data[..4], b"QFI\xfb", "the raw bytes of the upload");
    // A self-contained qcow2 is read as qcow2.
    let good = dir.path().join("good.qcow2");
    let raw = dir.path().join("good.raw");
    std::fs::write(&raw, [0x45u8; 1 << 20]).unwrap();
    let f = Cmd::new("/usr/bin/qemu-img", Duration::from_secs(60))
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&good)
        .run()
        .unwrap();
    assert!(f.success(), "{}", f.stderr);
    let mut args = copy_args(&d, &vol, good.to_str().unwrap(), "1");
    args.extend(["--from-format", "qcow2"]);
    d.ok(&args);
    let data = read_volume(&d, &img, &vol, 1 << 20);
    assert!(data.iter().all(|&b| b == 0x45));
}

#[test]
fn lvm_a_volume_source_must_be_legal_and_is_held_while_it_is_read() {
    if !lvm_available("copyvolsrc") {
        return;
    }
    let d = Domain::new("copyvolsrc");
    let (src_img, dst_img) = (uuid(), uuid());
    let src = d.create(&["--image", &src_img, "--size", "4M", "--format", "raw"]);
    let dst = d.create(&["--image", &dst_img, "--size", "4M", "--format", "raw"]);
    let (dir, file) = dir_file(&[0x46; 1 << 20]);
    d.ok(&copy_args(&d, &src, file.to_str().unwrap(), "0"));
    // Busy: an operation holds the source's lease.
    let lease = hold_local_lease(&d, &src);
    refused(&d, &copy_args(&d, &dst, &src, "0"), "held");
    drop(lease);
    // Illegal: an operation on the source failed.
    d.ok(&[
        "volume",
        "update",
        d.name(),
        &src,
        "--generation",
        "1",
        "--legality",
        "illegal",
    ]);
    refused(&d, &copy_args(&d, &dst, &src, "0"), "illegal");
    d.ok(&[
        "volume",
        "update",
        d.name(),
        &src,
        "--generation",
        "2",
        "--legality",
        "legal",
    ]);
    refused(&d, &copy_args(&d, &src, &src, "3"), "into itself");
    // While the copy reads it, no operation can start on the source.
    let (child, pause) = start_paused(
        &d,
        &copy_args(&d, &dst, &src, "0"),
        "op.after-work",
        dir.path(),
    );
    refused(
        &d,
        &[
            "volume",
            "update",
            d.name(),
            &src,
            "--generation",
            "3",
            "--description",
            "x",
        ],
        "held",
    );
    resume(child, &pause);
    assert!(read_volume(&d, &dst_img, &dst, 1 << 20)
        .iter()
        .all(|&b| b == 0x46));
    d.ok(&[
        "volume",
        "update",
        d.name(),
        &src,
        "--generation",
        "3",
        "--description",
        "x",
    ]);
}

#[test]
fn lvm_a_copy_from_a_snapshot_reads_through_its_whole_chain() {
    if !lvm_available("copyfromsnap") {
        return;
    }
    let d = Domain::new("copyfromsnap");
    let (img, dst_img) = (uuid(), uuid());
    let base = d.create(&["--image", &img, "--size", "4M", "--format", "raw"]);
    let (_dir, file) = dir_file(&[0x47; 1 << 20]);
    d.ok(&copy_args(&d, &base, file.to_str().unwrap(), "0"));
    let snap = d.create(&["--parent", &base]);
    let dst = d.create(&["--image", &dst_img, "--size", "4M", "--format", "raw"]);
    // The snapshot holds no data of its own: all of it comes from the base.
    d.ok(&copy_args(&d, &dst, &snap, "0"));
    let data = read_volume(&d, &dst_img, &dst, 1 << 20);
    assert!(
        data.iter().all(|&b| b == 0x47),
        "the base's data reached the copy"
    );
    assert!(check(&d).0, "{}", check(&d).1);
}
