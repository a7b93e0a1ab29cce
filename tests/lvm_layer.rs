//! The LVM command layer against real lvm on loop devices (in the VM where the host has no
//! device-mapper): typed operations, tag changes in one command, activation and the error classes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{lvm_available, TestVg};
use lvchain::directio::{AlignedBuf, DirectFile};
use lvchain::ids::{ImageId, VolumeId};
use lvchain::lvm::{Activation, Backend, Lvm, LvmConfig, LvmError, NewLv};
use lvchain::tags::{self, Tag};
use lvchain::units::{Bytes, GIB, MIB};
use std::path::Path;
use std::time::{Duration, Instant};

fn lv_tags(vg: &TestVg, lv: &str) -> Vec<Tag> {
    let rows = vg.lvm.lvs(&vg.name).unwrap();
    let row = rows.iter().find(|r| r.lv_name == lv).unwrap();
    let mut t: Vec<Tag> = row.lv_tags.iter().map(|s| Tag::parse(s).unwrap()).collect();
    t.sort_by_key(|t| t.to_string());
    t
}

fn sorted(mut t: Vec<Tag>) -> Vec<Tag> {
    t.sort_by_key(|t| t.to_string());
    t
}

#[test]
fn lvm_vg_on_two_loop_devices_reports_both_pvs() {
    if !lvm_available("vg_on_two_loop_devices_reports_both_pvs") {
        return;
    }
    let vg = TestVg::new("twopvs", 2, Bytes(GIB));
    let pvs = vg.lvm.pvs(&vg.name).unwrap();
    assert_eq!(pvs.len(), 2);
    let info = vg.lvm.vgs(&vg.name).unwrap();
    assert_eq!(info.vg_name, vg.name);
    assert!(info.vg_size > GIB, "two 1 GiB PVs: {}", info.vg_size);
    assert_eq!(info.lv_count, 0);
}

#[test]
fn lvm_lv_created_with_four_tags_reads_them_back_typed() {
    if !lvm_available("lv_created_with_four_tags_reads_them_back_typed") {
        return;
    }
    let vg = TestVg::new("fourtags", 2, Bytes(GIB));
    let (img, parent) = (ImageId::random(), VolumeId::random());
    let want = vec![
        Tag::Creating,
        Tag::Image(img),
        Tag::Parent(parent),
        Tag::Slot(5),
    ];
    let lv = NewLv {
        name: "lv1",
        size: Bytes(8 * MIB),
        tags: tags::strings(&want),
        activate: false,
    };
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    assert_eq!(lv_tags(&vg, "lv1"), sorted(want));
}

#[test]
fn lvm_one_lvchange_removes_one_tag_and_adds_two() {
    if !lvm_available("one_lvchange_removes_one_tag_and_adds_two") {
        return;
    }
    let vg = TestVg::new("lvchange", 1, Bytes(GIB));
    let lv = NewLv {
        name: "lv1",
        size: Bytes(4 * MIB),
        tags: tags::strings(&[Tag::Creating, Tag::Slot(1)]),
        activate: false,
    };
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    let img = ImageId::random();
    vg.lvm
        .lvchange_tags(
            &vg.name,
            "lv1",
            &tags::strings(&[Tag::Creating]),
            &tags::strings(&[Tag::Removing, Tag::Image(img)]),
        )
        .unwrap();
    assert_eq!(
        lv_tags(&vg, "lv1"),
        sorted(vec![Tag::Slot(1), Tag::Removing, Tag::Image(img)])
    );
}

#[test]
fn lvm_activation_makes_a_device_for_direct_io_and_deactivation_removes_it() {
    if !lvm_available("activation_makes_a_device_for_direct_io_and_deactivation_removes_it") {
        return;
    }
    let vg = TestVg::new("activate", 1, Bytes(GIB));
    let lv = NewLv {
        name: "data",
        size: Bytes(4 * MIB),
        tags: vec![],
        activate: false,
    };
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    let dev = format!("/dev/{}/data", vg.name);
    assert!(!Path::new(&dev).exists());
    let name = vec![format!("{}/data", vg.name)];
    vg.lvm
        .lvchange_activation(&name, Activation::Activate)
        .unwrap();
    assert!(Path::new(&dev).exists(), "{dev} missing after activation");
    {
        let f = DirectFile::open(Path::new(&dev), true).unwrap();
        let mut buf = AlignedBuf::zeroed(4096).unwrap();
        buf.as_mut_slice()[..5].copy_from_slice(b"hello");
        f.write_at(8192, &buf).unwrap();
        let back = f.read_at(8192, 4096).unwrap();
        assert_eq!(&back.as_slice()[..5], b"hello");
    }
    let rows = vg.lvm.lvs(&vg.name).unwrap();
    assert!(rows[0].active());
    vg.lvm
        .lvchange_activation(&name, Activation::Deactivate)
        .unwrap();
    assert!(
        !Path::new(&dev).exists(),
        "{dev} still there after deactivation"
    );
    assert!(!vg.lvm.lvs(&vg.name).unwrap()[0].active());
}

#[test]
fn lvm_extend_grows_the_lv_and_refresh_keeps_it_usable() {
    if !lvm_available("extend_grows_the_lv_and_refresh_keeps_it_usable") {
        return;
    }
    let vg = TestVg::new("extend", 1, Bytes(GIB));
    let lv = NewLv {
        name: "data",
        size: Bytes(4 * MIB),
        tags: vec![],
        activate: true,
    };
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    vg.lvm.lvextend(&vg.name, "data", Bytes(12 * MIB)).unwrap();
    assert_eq!(vg.lvm.lvs(&vg.name).unwrap()[0].lv_size, 12 * MIB);
    let name = vec![format!("{}/data", vg.name)];
    vg.lvm
        .lvchange_activation(&name, Activation::Refresh)
        .unwrap();
    let f = DirectFile::open(Path::new(&format!("/dev/{}/data", vg.name)), true).unwrap();
    // The last block of the grown LV is writable: the mapping was reloaded.
    let buf = AlignedBuf::zeroed(4096).unwrap();
    f.write_at(12 * MIB - 4096, &buf).unwrap();
}

#[test]
fn lvm_remove_deletes_the_lv() {
    if !lvm_available("remove_deletes_the_lv") {
        return;
    }
    let vg = TestVg::new("remove", 1, Bytes(GIB));
    for name in ["a", "b"] {
        let lv = NewLv {
            name,
            size: Bytes(4 * MIB),
            tags: vec![],
            activate: true,
        };
        vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    }
    vg.lvm
        .lvremove(&[format!("{}/a", vg.name), format!("{}/b", vg.name)])
        .unwrap();
    assert!(vg.lvm.lvs(&vg.name).unwrap().is_empty());
}

#[test]
fn lvm_missing_vg_is_classified() {
    if !lvm_available("missing_vg_is_classified") {
        return;
    }
    let vg = TestVg::new("missingvg", 1, Bytes(GIB));
    let e = vg.lvm.lvs("lvchain_no_such_vg").unwrap_err();
    assert!(
        matches!(&e, LvmError::VgNotFound { vg, .. } if vg == "lvchain_no_such_vg"),
        "{e}"
    );
    let f = e.failure().unwrap();
    assert_eq!(f.code, Some(5));
    assert!(f.argv.contains("lvs"), "{}", f.argv);
}

#[test]
fn lvm_missing_lv_is_classified() {
    if !lvm_available("missing_lv_is_classified") {
        return;
    }
    let vg = TestVg::new("missinglv", 1, Bytes(GIB));
    let e = vg
        .lvm
        .lvchange_tags(&vg.name, "nolv", &[], &["x".into()])
        .unwrap_err();
    assert!(matches!(e, LvmError::LvNotFound { .. }), "{e}");
}

#[test]
fn lvm_duplicate_lv_name_is_classified() {
    if !lvm_available("duplicate_lv_name_is_classified") {
        return;
    }
    let vg = TestVg::new("duplicate", 1, Bytes(GIB));
    let lv = NewLv {
        name: "twice",
        size: Bytes(4 * MIB),
        tags: vec![],
        activate: false,
    };
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    let e = vg.lvm.lvcreate(&vg.name, &lv).unwrap_err();
    assert!(
        matches!(&e, LvmError::AlreadyExists { name, .. } if name == "twice"),
        "{e}"
    );
}

#[test]
fn lvm_no_space_is_classified() {
    if !lvm_available("no_space_is_classified") {
        return;
    }
    let vg = TestVg::new("nospace", 1, Bytes(64 * MIB));
    let lv = NewLv {
        name: "huge",
        size: Bytes(GIB),
        tags: vec![],
        activate: false,
    };
    let e = vg.lvm.lvcreate(&vg.name, &lv).unwrap_err();
    assert!(matches!(e, LvmError::NoSpace { .. }), "{e}");
}

#[test]
fn lvm_removing_an_open_lv_is_in_use() {
    if !lvm_available("removing_an_open_lv_is_in_use") {
        return;
    }
    let vg = TestVg::new("inuse", 1, Bytes(GIB));
    let lv = NewLv {
        name: "busy",
        size: Bytes(4 * MIB),
        tags: vec![],
        activate: true,
    };
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    let held = std::fs::File::open(format!("/dev/{}/busy", vg.name)).unwrap();
    let e = vg.lvm.lvremove(&[format!("{}/busy", vg.name)]).unwrap_err();
    assert!(matches!(e, LvmError::InUse { .. }), "{e}");
    drop(held);
    assert_eq!(
        vg.lvm.lvs(&vg.name).unwrap().len(),
        1,
        "the LV must survive"
    );
}

/// Runs on any host: the layer pointed at a script that never finishes.
#[test]
fn lvm_a_hanging_command_is_killed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("lvm");
    let marker = format!("9{}", std::process::id());
    std::fs::write(
        &script,
        format!("#!/bin/sh\nsleep {marker}1 &\nsleep {marker}2\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = LvmConfig::from_env().unwrap();
    config.lvm_path = script;
    config.timeout = Duration::from_millis(500);
    let lvm = Lvm::new(config);
    let start = Instant::now();
    let e = lvm.lvs("vg").unwrap_err();
    assert!(matches!(e, LvmError::Timeout(_)), "{e}");
    assert!(
        e.to_string().contains("lvs"),
        "the error names the command: {e}"
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.contains(&format!("sleep {marker}")),
        "processes left behind:\n{ps}"
    );
}

#[test]
fn lvm_metadata_stamp_changes_with_every_metadata_commit_and_not_with_activation() {
    if !lvm_available("metadata_stamp_changes_with_every_metadata_commit_and_not_with_activation") {
        return;
    }
    // Two PVs: the stamp covers the metadata areas of both.
    let vg = TestVg::new("stamp", 2, Bytes(GIB));
    let pvs: Vec<std::path::PathBuf> = vg
        .lvm
        .pvs(&vg.name)
        .unwrap()
        .into_iter()
        .map(|r| r.pv_name.into())
        .collect();
    let stamp = || vg.lvm.metadata_stamp(&vg.name, &pvs).unwrap();
    let lv = NewLv {
        name: "lv1",
        size: Bytes(8 * MIB),
        tags: vec![],
        activate: false,
    };
    let s0 = stamp();
    assert_eq!(s0, stamp(), "nothing changed");
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    let s1 = stamp();
    assert_ne!(s0, s1, "lvcreate committed new metadata");
    vg.lvm
        .lvchange_tags(&vg.name, "lv1", &[], &["OTHER".to_string()])
        .unwrap();
    let s2 = stamp();
    assert_ne!(s1, s2, "a tag change committed new metadata");
    // Activation and deactivation write no metadata.
    let path = format!("{}/lv1", vg.name);
    vg.lvm
        .lvchange_activation(std::slice::from_ref(&path), Activation::Activate)
        .unwrap();
    vg.lvm
        .lvchange_activation(std::slice::from_ref(&path), Activation::Deactivate)
        .unwrap();
    assert_eq!(s2, stamp(), "activation is not a metadata change");
    // The seqno agrees: it moved with each of the two commits and not with activation.
    let seq = vg.lvm.vgs(&vg.name).unwrap().vg_seqno;
    vg.lvm.lvextend(&vg.name, "lv1", Bytes(16 * MIB)).unwrap();
    assert_eq!(vg.lvm.vgs(&vg.name).unwrap().vg_seqno, seq + 1);
    assert_ne!(s2, stamp(), "lvextend committed new metadata");
}
