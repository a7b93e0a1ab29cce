//! Removing a leaf volume, or a whole image.
//!
//! Under the domain lock: ONE `lvchange --addtag LVC_REMOVING` (the point of no return: from
//! here the removal is completed, by this process or by the collector), then the parent becomes
//! a leaf again, the link and the metadata slot go, the data is wiped (unless the volume's or
//! the domain's `LVC_WIPE` is `none`), and `lvremove` ends it.

use super::undo::{self, WipeProgress};
use super::{outcome, Catalog};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::ids::{ImageId, VolumeId};
use crate::tags::{self, Tag};

const POINTS: undo::Points = undo::Points {
    parent: Some(crate::crash::CrashPoint::RemoveAfterParentUpdate),
    links: Some(crate::crash::CrashPoint::RemoveAfterLinks),
    metadata: Some(crate::crash::CrashPoint::RemoveAfterMetadata),
    wipe: Some(crate::crash::CrashPoint::RemoveAfterWipe),
    lvremove: Some(crate::crash::CrashPoint::RemoveAfterLvremove),
};

/// Removes the leaf volume `id`; `progress` follows the wipe of its data.
pub(crate) fn remove(
    domain: &Domain,
    id: &VolumeId,
    progress: &mut WipeProgress<'_>,
) -> Result<()> {
    let _guard = domain.lock()?;
    let cat = Catalog::load_for_change(domain)?;
    let vol = cat.get(&domain.vg, id)?;
    let lv = cat.snap.volume(id).cloned().ok_or(Error::VolumeNotFound {
        vg: domain.vg.to_string(),
        id: *id,
    })?;
    if !cat.is_leaf(id) {
        return Err(Error::NotALeaf {
            id: *id,
            what: "remove its snapshots first, or use `image remove`".into(),
        });
    }
    // A parent still carrying a removal mark (an image removal whose mark did not reach every
    // member) is restored by the collector only while a committed volume descends from it:
    // removing this leaf would turn that mark into a removal nobody asked for.
    if let Some(p) = vol
        .parent
        .and_then(|p| cat.snap.volume(&p))
        .filter(|p| p.marked())
    {
        return Err(Error::PendingMark {
            id: *id,
            lv: p.name.clone(),
        });
    }
    if lv.open {
        return Err(Error::InUse { id: *id });
    }
    let store = domain.slots(&cat.snap)?;
    // No operation may be running on it, nor on its parent (which becomes a leaf again): hold
    // both leases through the removal, taken before the point of no return so that a busy
    // lease is a clean refusal.
    let mut held = vec![*id];
    let _lease = domain.lease(id, vol.slot)?;
    let _parent_lease = match vol.parent.and_then(|p| cat.volumes.get(&p)) {
        Some(p) => {
            held.push(p.id);
            Some(domain.lease(&p.id, p.slot)?)
        }
        None => None,
    };
    // A mark that may have committed all the same (timed out, killed) is judged by the VG as
    // it is now: marked, the removal has passed its point of no return and goes on.
    let removing = tags::strings(&[Tag::Removing]);
    if let Err(e) = domain
        .lvm
        .lvchange_tags(&domain.vg, &lv.name, &[], &removing)
    {
        let names = [lv.name.clone()];
        match outcome::done_despite(domain, &e, &names, &Tag::Removing, true) {
            Ok(done) if done.is_empty() => return Err(e.into()),
            Ok(_) => {}
            Err(reread) => return Err(outcome::unknown(e, reread)),
        }
    }
    crate::crash::point(crate::crash::CrashPoint::RemoveAfterMark);
    let mut marked = lv;
    marked.removing = true;
    undo::release(domain, &cat.snap, &store, &marked, &held, POINTS, progress).map_err(|e| {
        Error::LeftForGc {
            original: Box::new(e),
        }
    })?;
    Ok(())
}

/// Removes every volume of `image` (leaf first) and its link directory; `progress` follows the
/// wipe of their data.
pub(crate) fn remove_image(
    domain: &Domain,
    image: &ImageId,
    progress: &mut WipeProgress<'_>,
) -> Result<usize> {
    let _guard = domain.lock()?;
    let cat = Catalog::load_for_change(domain)?;
    let members = super::idle_members(&cat.snap, &domain.vg, image)?;
    let store = domain.slots(&cat.snap)?;
    // Chain order when the chain is sound, so removal goes leaf first.
    let mut order: Vec<VolumeId> = match crate::chain::walk(&cat, image) {
        Ok(chain) => chain.iter().map(|v| v.id).collect(),
        Err(_) => members.iter().filter_map(|l| l.id).collect(),
    };
    order.reverse();
    let mut leases = Vec::new();
    for l in &members {
        if let (Some(id), Some(slot)) = (l.id, l.slot) {
            leases.push(domain.lease(&id, slot)?);
        }
    }
    let held: Vec<VolumeId> = members.iter().filter_map(|l| l.id).collect();
    let names: Vec<String> = members.iter().map(|l| l.name.clone()).collect();
    let paths: Vec<String> = names.iter().map(|n| domain.lv_path(n)).collect();
    let removing = tags::strings(&[Tag::Removing]);
    // lvm commits each LV of one lvchange on its own: a failure can leave some members marked
    // (also one that timed out or was killed: the VG re-read says which). All marked: the
    // removal has passed its point of no return and goes on. Else unmark exactly the marked
    // ones (the collector would restore them too: it never completes the removal of a volume
    // that a committed one still needs).
    if let Err(e) = domain.lvm.lvchange_tags_many(&paths, &[], &removing) {
        // Re-read whatever the failure: an lvm that ended with an error may have committed
        // some LVs too. When the VG cannot be read, unmark every member.
        let marked = outcome::carrying(domain, &names, &Tag::Removing).unwrap_or_else(|reread| {
            tracing::warn!(error = %reread, "cannot re-read the VG after a failed mark");
            names.clone()
        });
        if !(e.maybe_committed() && marked.len() == names.len()) {
            let marked: Vec<String> = marked.iter().map(|n| domain.lv_path(n)).collect();
            return Err(
                match domain.lvm.lvchange_tags_many(&marked, &removing, &[]) {
                    Ok(()) => e.into(),
                    Err(_) => Error::LeftForGc {
                        original: Box::new(e.into()),
                    },
                },
            );
        }
    }
    crate::crash::point(crate::crash::CrashPoint::RemoveAfterMark);
    // Undo each volume's changes leaf first, wipe their data, then remove all LVs with ONE
    // lvremove. The undo sees the domain as it will be: without any member, so no parent is
    // made a leaf again (its lease is ours already, and it goes too).
    let mut snap = cat.snap.clone();
    snap.lvs
        .retain(|l| !members.iter().any(|m| m.name == l.name));
    let left_for_gc = |e| Error::LeftForGc {
        original: Box::new(e),
    };
    let mut undone = Vec::new();
    for id in &order {
        let Some(lv) = members.iter().find(|l| l.id.as_ref() == Some(id)) else {
            continue;
        };
        let mut marked = lv.clone();
        marked.removing = true;
        undo::undo_changes(
            domain,
            &snap,
            &store,
            &marked,
            &held,
            undo::Points::default(),
        )
        .map_err(left_for_gc)?;
        undone.push(marked);
    }
    let refs: Vec<&crate::domain::LvEntry> = undone.iter().collect();
    let mut failed = undo::wipe(domain, &snap.info, &refs, progress)
        .map_err(left_for_gc)?
        .failed;
    // The LVs whose wipe failed keep their marker (and their data) for the collector.
    let names: Vec<String> = undone
        .iter()
        .filter(|l| !failed.iter().any(|(n, _)| n == &l.name))
        .map(|l| l.name.clone())
        .collect();
    undo::remove_lvs(domain, &names).map_err(left_for_gc)?;
    if let Some((_, e)) = failed.pop() {
        return Err(left_for_gc(e));
    }
    crate::links::remove_image(&domain.vg, image)
        .map_err(Error::io("removing the link directory"))?;
    Ok(order.len())
}
