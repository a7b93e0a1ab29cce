//! `domain check` finds each kind of damage it names, on a real domain damaged on purpose:
//! a torn slot, a slot owned twice, a parent tag that disagrees with the metadata, a chain loop,
//! a foreign LV; and it changes nothing while looking.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check, lvm_available, uuid, Domain};
use lvchain::directio::{AlignedBuf, DirectFile};
use lvchain::lvm::NewLv;
use lvchain::metadata::{decode, encode};
use lvchain::units::Bytes;
use serde_json::Value;
use std::path::Path;

fn kinds(report: &Value) -> Vec<String> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The report of a check that must find damage.
fn damaged(d: &Domain) -> Value {
    let (clean, report) = check(d);
    assert!(!clean, "damage must make check fail: {report}");
    report
}

fn slot_bytes(d: &Domain, slot: u64) -> Vec<u8> {
    let f = DirectFile::open(Path::new(&format!("/dev/{}/metadata", d.name())), false).unwrap();
    f.read_at(slot * 512, 512).unwrap().as_slice().to_vec()
}

fn write_slot(d: &Domain, slot: u64, bytes: &[u8]) {
    let f = DirectFile::open(Path::new(&format!("/dev/{}/metadata", d.name())), true).unwrap();
    let mut buf = AlignedBuf::zeroed(512).unwrap();
    buf.as_mut_slice().copy_from_slice(bytes);
    f.write_at(slot * 512, &buf).unwrap();
}

#[test]
fn lvm_check_reports_every_kind_of_damage_and_changes_nothing() {
    if !lvm_available("checkdamage") {
        return;
    }
    let d = Domain::new("checkdamage");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "qcow2"]);
    let mid = d.create(&["--parent", &base]);
    let leaf = d.create(&["--parent", &mid]);
    let other = d.create(&["--image", &uuid(), "--size", "8M"]);
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
    let info = |id: &str| d.json(&["volume", "info", d.name(), id]);
    let slot = |id: &str| info(id)["slot"].as_u64().unwrap();

    // A torn write in the other image's slot.
    let mut torn = slot_bytes(&d, slot(&other));
    torn[30] ^= 0x55;
    write_slot(&d, slot(&other), &torn);
    // The leaf's parent tag disagrees with its metadata.
    d.vg.lvm
        .lvchange_tags(
            d.name(),
            &leaf,
            &[format!("LVC_PARENT={mid}")],
            &[format!("LVC_PARENT={base}")],
        )
        .unwrap();
    // A loop: the base's metadata names the leaf as its parent.
    let bslot = slot(&base);
    let mut meta = decode(bslot as u32, &slot_bytes(&d, bslot)).unwrap();
    meta.parent = Some(leaf.parse().unwrap());
    write_slot(
        &d,
        bslot,
        &encode(&meta, 512, lvchain::metadata::SLOT_VERSION).unwrap(),
    );
    // A foreign LV, and one that claims the middle volume's slot.
    for (name, tags) in [
        ("foreign".to_string(), vec![]),
        (
            uuid(),
            vec![
                format!("LVC_IMAGE={img}"),
                format!("LVC_SLOT={}", slot(&mid)),
            ],
        ),
    ] {
        let lv = NewLv {
            name: &name,
            size: Bytes(4 << 20),
            tags,
            activate: false,
        };
        d.vg.lvm.lvcreate(d.name(), &lv).unwrap();
    }

    let before = d.state();
    let report = damaged(&d);
    let found = kinds(&report);
    for kind in [
        "metadata",
        "tag-mismatch",
        "chain",
        "foreign-lv",
        "slot-collision",
    ] {
        assert!(
            found.iter().any(|k| k == kind),
            "check missed {kind}: {report}"
        );
    }
    assert!(
        report.to_string().contains("loop") || report.to_string().contains("no base"),
        "{report}"
    );
    assert_eq!(d.state(), before, "check changed the domain");
    // The human form is a table with one row per problem.
    let f = d.run(&["domain", "check", d.name()]);
    assert_eq!(f.code, Some(1));
    assert!(f.stdout.starts_with("PROBLEM"), "{}", f.stdout);
    assert_eq!(f.stdout.lines().count(), found.len() + 1);
}
