//! The engine on real LVM: the `Domain` facade driven directly (no binary), over loop devices
//! in the VM, asserting on the engine's typed answers (ids, roles, sizes, check problem kinds,
//! what gc did). The CLI's own tests drive the binary; these test the engine a client calls.
#![allow(clippy::unwrap_used)]

mod common;

use common::{lvm_available, EngineDomain};
use lvchain::check::ProblemKind;
use lvchain::error::Error;
use lvchain::gc::{GcAction, Marker};
use lvchain::ids::{Generation, ImageId, VolumeId};
use lvchain::metadata::{Format, Legality, Role};
use lvchain::operation::{Source, State};
use lvchain::units::{Bytes, MIB};
use lvchain::volume::{Action, CreateRequest, Volume};

fn base(image: ImageId, size: u64) -> CreateRequest {
    CreateRequest {
        image: Some(image),
        size: Some(Bytes(size)),
        format: Some(Format::Raw),
        parent: None,
        id: None,
        description: String::new(),
        wipe: None,
    }
}

fn snapshot(parent: VolumeId) -> CreateRequest {
    CreateRequest {
        image: None,
        size: None,
        format: None,
        parent: Some(parent),
        id: None,
        description: String::new(),
        wipe: None,
    }
}

fn ids(vs: &[Volume]) -> Vec<VolumeId> {
    vs.iter().map(|v| v.id).collect()
}

/// No wipe progress wanted.
fn quiet(_: &str, _: u64, _: u64) {}

#[test]
fn lvm_engine_create_snapshot_extend_prepare_and_remove() {
    if !lvm_available("engvol") {
        return;
    }
    let t = EngineDomain::new("engvol");
    let d = &t.d;
    let image = ImageId::random();
    let b = d.create_volume(&base(image, 16 * MIB)).unwrap();
    assert_eq!((b.image, b.parent, b.role), (image, None, Role::Leaf));
    assert_eq!((b.format, b.legality), (Format::Raw, Legality::Legal));
    assert_eq!(b.capacity, Bytes(16 * MIB));
    assert_eq!(b.generation, Generation::new(0));

    let s = d.create_volume(&snapshot(b.id)).unwrap();
    assert_eq!((s.image, s.parent, s.role), (image, Some(b.id), Role::Leaf));
    assert_eq!(s.format, Format::Qcow2);
    assert_eq!(
        s.capacity,
        Bytes(16 * MIB),
        "a snapshot takes its parent's capacity"
    );
    assert_eq!(d.volume(&b.id).unwrap().role, Role::Internal);
    assert_eq!(ids(&d.chain(&image).unwrap()), vec![b.id, s.id]);

    // Not a leaf: refused with its typed error, nothing changed.
    assert!(matches!(
        d.remove_volume(&b.id, &mut quiet),
        Err(Error::NotALeaf { id, .. }) if id == b.id
    ));
    assert!(matches!(
        d.extend_volume(&s.id, Bytes(MIB), None),
        Err(Error::InvalidInput(_))
    ));

    let grown = d.extend_volume(&s.id, Bytes(32 * MIB), None).unwrap();
    assert_eq!(grown.capacity, Bytes(32 * MIB));
    assert!(grown.lv_size >= Bytes(32 * MIB), "{grown:?}");

    // Prepare links the chain, base first, and activates it; teardown undoes both.
    let chain = d.prepare(&image, false).unwrap();
    assert_eq!(ids(&chain), vec![b.id, s.id]);
    assert_eq!(
        chain[1].capacity,
        Bytes(32 * MIB),
        "the extend is in the metadata"
    );
    for v in [b.id, s.id] {
        assert!(lvchain::links::link_path(d.vg(), &image, &v).exists());
    }
    assert!(d.volumes(Some(&image)).unwrap().iter().all(|v| v.active));
    d.teardown(&image).unwrap();
    assert!(!lvchain::links::prepared(d.vg(), &image));
    assert!(d.volumes(Some(&image)).unwrap().iter().all(|v| !v.active));

    // Removing the leaf makes its parent the leaf again; the image goes with its last volume.
    d.remove_volume(&s.id, &mut quiet).unwrap();
    let left = d.chain(&image).unwrap();
    assert_eq!((ids(&left), left[0].role), (vec![b.id], Role::Leaf));
    assert_eq!(d.remove_image(&image, &mut quiet).unwrap(), 1);
    assert!(matches!(
        d.volume(&b.id),
        Err(Error::VolumeNotFound { id, .. }) if id == b.id
    ));

    // Every transaction ended: nothing for gc, check clean (it reports any marker left).
    assert!(d
        .gc(false, &mut |_, _| {}, &mut quiet)
        .unwrap()
        .orphans
        .is_empty());
    let report = d.check().unwrap();
    assert!(report.clean, "{report:?}");
    assert_eq!((report.volumes, report.images), (0, 0));
}

#[test]
fn lvm_engine_check_reports_orphans_and_gc_finishes_them() {
    if !lvm_available("enggc") {
        return;
    }
    let t = EngineDomain::new("enggc");
    let d = &t.d;
    let image = ImageId::random();
    let b = d.create_volume(&base(image, 8 * MIB)).unwrap();
    let s = d.create_volume(&snapshot(b.id)).unwrap();
    let other = ImageId::random();
    let c = d.create_volume(&base(other, 8 * MIB)).unwrap();
    // What a removal and a creation that died after their marks leave: the markers on their
    // LVs, through the LVM layer (one lvchange).
    let lvm = &t.vg.lvm;
    lvm.lvchange_tags(d.vg(), &s.id.to_string(), &[], &["LVC_REMOVING".into()])
        .unwrap();
    lvm.lvchange_tags(d.vg(), &c.id.to_string(), &[], &["LVC_CREATING".into()])
        .unwrap();

    // Readers no longer see them; check names both as orphans.
    assert_eq!(ids(&d.volumes(None).unwrap()), vec![b.id]);
    let report = d.check().unwrap();
    assert!(!report.clean);
    let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(
        kinds,
        vec![ProblemKind::Orphan, ProblemKind::Orphan],
        "{report:?}"
    );

    // A dry run says what it would do and does nothing.
    let dry = d.gc(true, &mut |_, _| {}, &mut quiet).unwrap();
    let plan = |id: VolumeId| {
        let o = dry.orphans.iter().find(|o| o.lv == id.to_string()).unwrap();
        (o.marker, o.actions.clone())
    };
    assert_eq!(
        plan(s.id),
        (
            Marker::Removing,
            vec![GcAction::WouldComplete { wipe: true }]
        )
    );
    assert_eq!(
        plan(c.id),
        (Marker::Creating, vec![GcAction::WouldRollBack])
    );
    assert_eq!(d.scan().unwrap().orphans().count(), 2);

    // The real run completes the removal (wiped) and rolls the creation back (not wiped).
    let mut progress = Vec::new();
    let r = d.gc(
        false,
        &mut |done, total| progress.push((done, total)),
        &mut quiet,
    );
    let r = r.unwrap();
    assert_eq!(progress.last(), Some(&(2, 2)));
    let done = |id: VolumeId| {
        let o = r.orphans.iter().find(|o| o.lv == id.to_string()).unwrap();
        assert_eq!(o.error, None, "{o:?}");
        o.actions.clone()
    };
    let removed = done(s.id);
    assert!(
        removed.contains(&GcAction::Undo(Action::ParentLeaf(b.id))),
        "{removed:?}"
    );
    assert!(
        removed.contains(&GcAction::Undo(Action::SlotCleared(s.slot))),
        "{removed:?}"
    );
    assert!(
        removed.iter().any(|a| matches!(
            a,
            GcAction::Undo(Action::Wiped { lv, bytes, .. })
                if *lv == s.id.to_string() && *bytes >= s.lv_size
        )),
        "{removed:?}"
    );
    let lv_removed = |lv: &str, a: &GcAction| matches!(a, GcAction::Undo(Action::LvRemoved { lv: l, .. }) if l == lv);
    assert!(removed.iter().any(|a| lv_removed(&s.id.to_string(), a)));
    let rolled = done(c.id);
    assert!(
        rolled.contains(&GcAction::Undo(Action::SlotCleared(c.slot))),
        "{rolled:?}"
    );
    assert!(rolled.iter().any(|a| lv_removed(&c.id.to_string(), a)));
    assert!(
        !rolled
            .iter()
            .any(|a| matches!(a, GcAction::Undo(Action::Wiped { .. }))),
        "a rolled-back creation is not wiped: {rolled:?}"
    );

    assert_eq!(d.volume(&b.id).unwrap().role, Role::Leaf);
    let report = d.check().unwrap();
    assert!(report.clean, "{report:?}");
    assert_eq!((report.volumes, report.images), (1, 1));
}

#[test]
fn lvm_engine_operations_run_the_generation_protocol_round_trip() {
    if !lvm_available("engop") {
        return;
    }
    let t = EngineDomain::new("engop");
    let d = &t.d;
    let image = ImageId::random();
    let v = d.create_volume(&base(image, 8 * MIB)).unwrap();
    let (_dir, file) = common::dir_file(&[0x5au8; 65536]);

    // A copy at generation 0 ends legal at 1; its status is read back as succeeded.
    let g0 = Generation::new(0);
    let copied = d
        .copy(
            &v.id,
            g0,
            Source::File {
                path: file,
                format: Format::Raw,
            },
            lvchain::progress::ProgressSink::none(),
        )
        .unwrap();
    assert_eq!(
        (copied.generation, copied.legality),
        (Generation::new(1), Legality::Legal)
    );
    let st = d.status(&v.id, g0).unwrap();
    assert_eq!(
        (st.state, st.current_generation),
        (State::Succeeded, Generation::new(1))
    );

    // A wrong generation is refused with its typed error and changes nothing.
    assert!(matches!(
        d.update(&v.id, g0, Some("late".into()), None),
        Err(Error::WrongGeneration { .. })
    ));

    // An update that leaves the volume illegal: check names it, prepare refuses it.
    let g1 = Generation::new(1);
    let u = d
        .update(&v.id, g1, Some("half done".into()), Some(Legality::Illegal))
        .unwrap();
    assert_eq!(
        (u.generation, u.legality),
        (Generation::new(2), Legality::Illegal)
    );
    assert_eq!(u.description, "half done");
    let report = d.check().unwrap();
    let kinds: Vec<ProblemKind> = report.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, vec![ProblemKind::Illegal], "{report:?}");
    assert!(matches!(
        d.prepare(&image, false),
        Err(Error::IllegalMember { id, .. }) if id == v.id
    ));

    // A fence moves 2 to 5 and is read back as fenced; an update at 5 makes it legal again.
    let g2 = Generation::new(2);
    assert_eq!(d.fence(&v.id, g2).unwrap().generation, Generation::new(5));
    assert_eq!(d.status(&v.id, g2).unwrap().state, State::Fenced);
    let legal = d
        .update(&v.id, Generation::new(5), None, Some(Legality::Legal))
        .unwrap();
    assert_eq!(
        (legal.generation, legal.legality),
        (Generation::new(6), Legality::Legal)
    );

    // The data went through: prepare, read, teardown.
    let chain = d.prepare(&image, false).unwrap();
    assert_eq!(ids(&chain), vec![v.id]);
    let data = std::fs::read(lvchain::links::link_path(d.vg(), &image, &v.id)).unwrap();
    assert!(data[..65536].iter().all(|&b| b == 0x5a));
    assert!(data[65536..2 * 65536].iter().all(|&b| b == 0));
    d.teardown(&image).unwrap();
}
