//! Storage domains and transactional volume creation on real LVM (issue 3's "Must show").
#![allow(clippy::unwrap_used)]

mod common;

use common::{lvm_available, qemu_io, uuid, Domain, BIN};
use serde_json::Value;

fn chain_ids(d: &Domain, img: &str) -> Vec<(String, String)> {
    let v = d.json(&["image", "chain", d.name(), img]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["id"].as_str().unwrap().to_string(),
                x["role"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn lvm_raw_base_and_three_qcow2_snapshots_form_a_chain_that_reads_back() {
    if !lvm_available("chain") {
        return;
    }
    let d = Domain::new("chain");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "64M", "--format", "raw"]);
    d.ok(&["image", "prepare", d.name(), &img]);
    let dir = format!("/run/lvchain/{}/{img}", d.name());
    // Data in the base, then one pattern per snapshot, each written through the leaf.
    let f = lvchain::exec::Cmd::new("/bin/sh", std::time::Duration::from_secs(30))
        .args([
            "-c",
            &format!("printf base-data | dd of={dir}/{base} conv=notrunc,fsync status=none"),
        ])
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    let mut ids = vec![base.clone()];
    for (i, pattern) in ["0x41", "0x42", "0x43"].iter().enumerate() {
        let snap = d.create(&["--parent", ids.last().unwrap()]);
        qemu_io(
            &format!("{dir}/{snap}"),
            "qcow2",
            &format!("write -P {pattern} {}M 64k", i + 1),
        );
        ids.push(snap);
    }
    let leaf = format!("{dir}/{}", ids[3]);
    for (i, pattern) in ["0x41", "0x42", "0x43"].iter().enumerate() {
        qemu_io(&leaf, "qcow2", &format!("read -P {pattern} {}M 64k", i + 1));
    }
    let out = qemu_io(&leaf, "qcow2", "read -v 0 16");
    assert!(
        out.contains("62 61 73 65 2d 64 61 74 61"),
        "base data through the chain: {out}"
    );
    // qemu resolves the whole chain through the links.
    let f = lvchain::exec::Cmd::new("/usr/bin/qemu-img", std::time::Duration::from_secs(60))
        .args(["info", "--backing-chain", "--output", "json", &leaf])
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    let infos: Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(infos.as_array().unwrap().len(), 4);
    // The chain, base first, one leaf at the end.
    let chain = chain_ids(&d, &img);
    let want: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.clone(),
                if i == 3 { "leaf" } else { "internal" }.to_string(),
            )
        })
        .collect();
    assert_eq!(chain, want);
    let v = d.json(&["volume", "info", d.name(), &ids[2]]);
    for key in [
        "id",
        "image",
        "parent",
        "role",
        "legality",
        "generation",
        "format",
        "capacity",
        "lv_size",
        "slot",
    ] {
        assert!(v.get(key).is_some(), "volume JSON lacks {key}: {v}");
    }
    assert_eq!(v["parent"], Value::String(ids[1].clone()));
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["legality"], "legal");
    assert_eq!(v["capacity"], 64 << 20);
    let b = d.json(&["volume", "info", d.name(), &base]);
    assert_eq!(b["parent"], Value::Null);
    assert_eq!(b["format"], "raw");
    d.ok(&["image", "teardown", d.name(), &img]);
    assert!(!std::path::Path::new(&dir).exists());
}

#[test]
fn lvm_removing_the_leaf_makes_the_parent_the_leaf_and_frees_the_slot_for_reuse() {
    if !lvm_available("removeleaf") {
        return;
    }
    let d = Domain::new("removeleaf");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "16M", "--format", "qcow2"]);
    let s1 = d.create(&["--parent", &base]);
    let s2 = d.create(&["--parent", &s1]);
    let slot_of = |id: &str| {
        d.json(&["volume", "info", d.name(), id])["slot"]
            .as_u64()
            .unwrap()
    };
    let freed = slot_of(&s2);
    // Only a leaf can be removed.
    let e = d.fails(&["volume", "remove", d.name(), &s1]);
    assert!(e.contains("not a leaf"), "{e}");
    d.ok(&["volume", "remove", d.name(), &s2]);
    assert_eq!(
        chain_ids(&d, &img),
        vec![
            (base.clone(), "internal".into()),
            (s1.clone(), "leaf".into())
        ]
    );
    assert!(d.lv_tags(&s2).is_none(), "the LV is gone");
    let s3 = d.create(&["--parent", &s1]);
    assert_eq!(slot_of(&s3), freed, "the freed slot is reused");
    // Removing the whole image leaves only the special LVs.
    d.ok(&["image", "remove", d.name(), &img]);
    let list = d.json(&["volume", "list", d.name()]);
    assert_eq!(list.as_array().unwrap().len(), 0);
    let rows = d.vg.lvm.lvs(d.name()).unwrap();
    assert_eq!(rows.len(), 3, "only metadata, leases, ids: {rows:?}");
}

#[test]
fn lvm_a_create_that_fails_for_lack_of_space_changes_nothing() {
    if !lvm_available("nospace") {
        return;
    }
    let d = Domain::new("nospace");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "16M"]);
    let before = d.state();
    let e = d.fails(&[
        "volume",
        "create",
        d.name(),
        "--parent",
        &base,
        "--size",
        "100G",
    ]);
    assert!(e.contains("not enough free space"), "{e}");
    assert_eq!(d.state(), before);
}

#[test]
fn lvm_a_create_whose_qemu_img_fails_is_rolled_back() {
    if !lvm_available("qemufail") {
        return;
    }
    let d = Domain::new("qemufail");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "16M"]);
    let before = d.state();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("qemu-img");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'qemu-img: simulated failure' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let f = d.run_env(
        &["volume", "create", d.name(), "--parent", &base],
        &[("LVCHAIN_QEMU_IMG", fake.to_str().unwrap())],
    );
    assert_eq!(f.code, Some(1));
    assert!(f.stderr.contains("simulated failure"), "{}", f.stderr);
    assert_eq!(
        d.state(),
        before,
        "rollback restores parent role, slot and LV"
    );
    assert_eq!(chain_ids(&d, &img), vec![(base, "leaf".into())]);
}

#[test]
fn lvm_a_crash_at_every_create_step_leaves_nothing_or_a_marked_lv_no_reader_shows() {
    if !lvm_available("crashsteps") {
        return;
    }
    let d = Domain::new("crashsteps");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "16M"]);
    for point in [
        "create.after-lvcreate",
        "create.after-metadata",
        "create.after-qemu-img",
        "create.after-parent-update",
        "create.after-links",
    ] {
        let id = uuid();
        let f = d.run_env(
            &["volume", "create", d.name(), "--parent", &base, "--id", &id],
            &[("LVCHAIN_CRASH_AT", point)],
        );
        assert_ne!(f.code, Some(0), "{point}: the process must die");
        let tags = d
            .lv_tags(&id)
            .unwrap_or_else(|| panic!("{point}: LV missing"));
        assert!(
            tags.iter().any(|t| t == "LVC_CREATING"),
            "{point}: marker kept: {tags:?}"
        );
        let list = d.json(&["volume", "list", d.name()]);
        assert!(
            !list.to_string().contains(&id),
            "{point}: list shows a marked LV"
        );
        let f = d.run(&["volume", "info", d.name(), &id]);
        assert_eq!(f.code, Some(1), "{point}: info shows a marked LV");
        // Readers see the committed chain: the parent is still its leaf.
        assert_eq!(
            chain_ids(&d, &img),
            vec![(base.clone(), "leaf".into())],
            "{point}: chain before gc"
        );
        // Clean up through the collector's path before the next point.
        remove_orphan(&d, &id);
        assert_eq!(
            chain_ids(&d, &img),
            vec![(base.clone(), "leaf".into())],
            "{point}"
        );
    }
}

/// Removes an orphan the way the collector does (gc), so each crash point starts clean.
fn remove_orphan(d: &Domain, _id: &str) {
    d.ok(&["gc", d.name()]);
}

#[test]
fn lvm_bad_input_gets_a_clear_error_and_changes_nothing() {
    if !lvm_available("badinput") {
        return;
    }
    let d = Domain::new("badinput");
    let other = Domain::new("badinput2");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "16M"]);
    let snap = d.create(&["--parent", &base]);
    let foreign = other.create(&["--image", &uuid(), "--size", "8M"]);
    let before = d.state();
    let name = d.name().to_string();
    // 160 tabs are 160 bytes, but 960 once escaped in the slot.
    let tabs = "\t".repeat(160);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "volume",
                "create",
                &name,
                "--parent",
                &snap,
                "--description",
                &tabs,
            ],
            "at most 140 fit",
        ),
        (
            vec![
                "volume",
                "update",
                &name,
                &snap,
                "--generation",
                "0",
                "--description",
                &tabs,
            ],
            "at most 140 fit",
        ),
        (vec!["volume", "list", "lvchain_no_such_vg"], "not found"),
        (vec!["volume", "info", &name, &foreign], "not found"),
        (
            vec!["volume", "create", &name, "--parent", &foreign],
            "not found",
        ),
        (
            vec!["volume", "create", &name, "--parent", &snap, "--size", "1M"],
            "smaller than the parent",
        ),
        (
            vec!["volume", "create", &name, "--parent", &base],
            "not a leaf",
        ),
        (
            vec!["volume", "create", &name, "--image", &img, "--size", "8M"],
            "already has volumes",
        ),
        (
            vec![
                "volume", "create", &name, "--parent", &snap, "--format", "raw",
            ],
            "must be qcow2",
        ),
        (
            vec!["volume", "create", &name, "--parent", &snap, "--id", &base],
            "already exists",
        ),
        (vec!["volume", "remove", &name, &base], "not a leaf"),
        (
            vec!["volume", "extend", &name, &snap, "--size", "1M"],
            "only grow",
        ),
        (vec!["domain", "remove", &name], "still holds"),
        (
            vec!["host", "join", &name, "--host-id", "1"],
            "only sanlock domains",
        ),
        (vec!["domain", "create", &name], "already an lvchain domain"),
    ];
    for (args, msg) in &cases {
        let e = d.fails(args);
        assert!(e.contains(msg), "{args:?}: expected {msg:?} in {e}");
        assert_eq!(e.trim().lines().count(), 1, "one message: {e}");
    }
    // Usage errors exit 2.
    for args in [
        vec![
            "volume",
            "create",
            &name,
            "--image",
            "not-a-uuid",
            "--size",
            "8M",
        ],
        vec!["volume", "create", &name, "--image", &img, "--size", "lots"],
        vec!["volume", "info", &name, "1234"],
        vec![
            "volume", "create", &name, "--image", &img, "--size", "8M", "--format", "vmdk",
        ],
    ] {
        let f = d.run(&args);
        assert_eq!(f.code, Some(2), "{args:?}: {f:?}");
    }
    // A VG name lvm would refuse is bad usage, refused before any lvm command.
    let pv = d.vg.loops[0].display().to_string();
    for args in [
        vec!["volume", "list", "no:such:vg"],
        vec!["domain", "create", "--", "-vg", &pv],
        vec!["domain", "create", "..", &pv],
        vec!["gc", "vg name"],
    ] {
        let f = d.run(&args);
        assert_eq!(f.code, Some(2), "{args:?}: {f:?}");
        assert!(
            f.stderr.contains("not a valid volume group name"),
            "{args:?}: {}",
            f.stderr
        );
    }
    // An argument with a `/` names a file domain (a directory): one that is none is refused.
    let f = d.run(&["volume", "list", "no/such/dir"]);
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(
        f.stderr.contains("is not an lvchain domain"),
        "{}",
        f.stderr
    );
    assert_eq!(d.state(), before, "nothing changed");
}

#[test]
fn lvm_a_vg_with_lvs_or_half_formatted_is_not_taken_for_a_domain() {
    if !lvm_available("refuse") {
        return;
    }
    let vg = common::TestVg::new("refuse", 1, lvchain::units::Bytes(4 << 30));
    let lv = lvchain::lvm::NewLv {
        name: "foreign",
        size: lvchain::units::Bytes(4 << 20),
        tags: vec![],
        activate: false,
    };
    vg.lvm.lvcreate(&vg.name, &lv).unwrap();
    let d = Domain { vg };
    let e = d.fails(&["domain", "create", d.name()]);
    assert!(e.contains("already holds 1 logical volume"), "{e}");
    let e = d.fails(&["volume", "list", d.name()]);
    assert!(e.contains("not an lvchain domain"), "{e}");
    // A VG tagged UNREADY (a format that died) is refused by readers, completed by create.
    d.vg.lvm
        .lvremove(&[format!("{}/foreign", d.name())])
        .unwrap();
    d.vg.lvm
        .vgchange_tags(d.name(), &[], &["LVC_DOMAIN_UNREADY".into()])
        .unwrap();
    let e = d.fails(&["domain", "info", d.name()]);
    assert!(e.contains("not an lvchain domain"), "{e}");
    // That format had made a metadata LV for a smaller layout (say --max-volumes 8).
    let small = lvchain::lvm::NewLv {
        name: "metadata",
        size: lvchain::units::Bytes(4 << 20),
        tags: vec!["LVC_SPECIAL".into()],
        activate: false,
    };
    d.vg.lvm.lvcreate(d.name(), &small).unwrap();
    let created = d.json(&["domain", "create", d.name()]);
    let info = d.json(&["domain", "info", d.name()]);
    // What create answers (free space kept as it went, not reported again) is what is there.
    for (k, v) in created.as_object().unwrap() {
        assert_eq!(&info[k], v, "{k}: create said {created}, info says {info}");
    }
    assert_eq!(info["volumes"], 0);
    assert_eq!(info["format"], lvchain::tags::FORMAT_VERSION);
    let md = d.vg.lvm.lvs(d.name()).unwrap();
    let md = md.iter().find(|r| r.lv_name == "metadata").unwrap();
    let need = info["max_volumes"].as_u64().unwrap() * info["slot_size"].as_u64().unwrap();
    assert!(md.lv_size >= need, "metadata LV {} < {need}", md.lv_size);
    d.ok(&["domain", "remove", d.name()]);
    let f = lvchain::exec::Cmd::new(BIN.as_str(), std::time::Duration::from_secs(60))
        .args(["domain", "info", d.name()])
        .env("LVCHAIN_DEVICES", &d.vg.loops[0].display().to_string())
        .run()
        .unwrap();
    assert!(f.stderr.contains("not found"), "{f:?}");
}

#[test]
fn lvm_extend_grows_lv_qcow2_and_capacity() {
    if !lvm_available("extend") {
        return;
    }
    let d = Domain::new("extend");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "16M", "--format", "qcow2"]);
    let v = d.json(&["volume", "extend", d.name(), &base, "--size", "48M"]);
    assert_eq!(v["capacity"], 48 << 20);
    let v = d.json(&["volume", "info", d.name(), &base]);
    assert_eq!(v["capacity"], 48 << 20);
    assert!(v["lv_size"].as_u64().unwrap() >= 48 << 20);
    d.ok(&["image", "prepare", d.name(), &img]);
    let f = lvchain::exec::Cmd::new("/usr/bin/qemu-img", std::time::Duration::from_secs(60))
        .args([
            "info",
            "--output",
            "json",
            &format!("/run/lvchain/{}/{img}/{base}", d.name()),
        ])
        .run()
        .unwrap();
    let info: Value = serde_json::from_str(&f.stdout).unwrap();
    assert_eq!(info["virtual-size"], 48 << 20);
    d.ok(&["image", "teardown", d.name(), &img]);
}

/// The end-to-end scenario whose body the file-domain tier runs too
/// (`file_end_to_end_scenario_the_same_as_on_a_block_domain` in tests/file_domain.rs).
#[test]
fn lvm_end_to_end_scenario_the_same_as_on_a_file_domain() {
    if !lvm_available("scenario") {
        return;
    }
    let d = Domain::new("scenario");
    let scratch = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let f = d.run(args);
        (f.code, f.stdout, f.stderr)
    };
    common::scenario::end_to_end(d.name(), scratch.path(), &run);
}
