//! Creating a volume: the transaction of the mission's first claim.
//!
//! Under the domain lock: (1) one report, validate, pick the lowest free slot; (2) ONE
//! `lvcreate` carrying `LVC_CREATING` and every identity tag; (3) the metadata slot, and for
//! qcow2 the header (backed by the parent's bare id, relative to the image's link directory;
//! `qemu-img create` makes it in memory while the lvcreate runs);
//! (4) the parent turns internal, the link appears when the image is prepared; (5) ONE
//! `lvchange --deltag LVC_CREATING`: the commit point. A failure before the commit rolls back
//! what it can; whatever it cannot stays marked for the collector.
//!
//! A snapshot holds its parent's lease in shared mode from before the `lvcreate` until after
//! the commit: no operation can start writing into the parent while it turns internal (a busy
//! lease refuses the creation before anything changes), while hosts that have the image
//! prepared (shared holders too) keep it: a snapshot of an image in use is the live flow.

use super::{outcome, undo, Catalog, Volume};
use crate::crash::{self, CrashPoint};
use crate::domain::{Domain, LvEntry};
use crate::error::{Error, Result};
use crate::format::ids::{Generation, ImageId, VolumeId};
use crate::links;
use crate::lock::LeaseGuard;
use crate::lvm::{Activation, LvmError, NewLv};
use crate::metadata::{check_description, FenceRecord, Format, Legality, Role, VolumeMeta};
use crate::qemu;
use crate::tags::{self, Tag, Wipe};
use crate::units::Bytes;

#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub image: Option<ImageId>,
    pub size: Option<Bytes>,
    pub format: Option<Format>,
    pub parent: Option<VolumeId>,
    pub id: Option<VolumeId>,
    pub description: String,
    /// The volume's own wipe-on-removal policy (an `LVC_WIPE` LV tag); None: the domain's.
    pub wipe: Option<Wipe>,
}

/// What validation decided, before anything changes.
pub(crate) struct Plan {
    pub(crate) meta: VolumeMeta,
    slot: u32,
    lv_size: Bytes,
    pub(crate) parent: Option<Volume>,
    prepared: bool,
}

pub(crate) fn plan(domain: &Domain, cat: &Catalog, req: &CreateRequest) -> Result<Plan> {
    plan_for(&domain.vg, cat, req)
}

/// [`plan`] for the domain named `vg` (a VG, or a file domain's directory).
pub(crate) fn plan_for(vg: &str, cat: &Catalog, req: &CreateRequest) -> Result<Plan> {
    check_description(&req.description).map_err(Error::InvalidInput)?;
    let parent = match &req.parent {
        Some(p) => Some(cat.get(vg, p)?.clone()),
        None => None,
    };
    let image = match (&req.image, &parent) {
        (Some(i), Some(p)) if *i != p.image => {
            return Err(Error::InvalidInput(format!(
                "parent {} belongs to image {}, not {i}",
                p.id, p.image
            )))
        }
        (_, Some(p)) => p.image,
        (Some(i), None) => {
            if !cat.snap.image_volumes(i).is_empty() {
                return Err(Error::ImageExists { image: *i });
            }
            *i
        }
        (None, None) => {
            return Err(Error::InvalidInput(
                "--image is required for a base volume".into(),
            ))
        }
    };
    let format = match (req.format, &parent) {
        (Some(Format::Raw), Some(_)) => {
            return Err(Error::InvalidInput(
                "a snapshot (--parent) must be qcow2".into(),
            ))
        }
        (Some(f), _) => f,
        (None, Some(_)) => Format::Qcow2,
        (None, None) => Format::Raw,
    };
    if let Some(size) = req.size {
        crate::volume::check_size(size).map_err(Error::InvalidInput)?;
    }
    let capacity = match (req.size, &parent) {
        (Some(s), Some(p)) if s < p.capacity => {
            return Err(Error::InvalidInput(format!(
                "size {} is smaller than the parent's capacity {}",
                s.0, p.capacity.0
            )))
        }
        (Some(s), _) => s,
        (None, Some(p)) => p.capacity,
        (None, None) => {
            return Err(Error::InvalidInput(
                "--size is required for a base volume".into(),
            ))
        }
    };
    if let Some(p) = &parent {
        if !cat.is_leaf(&p.id) {
            return Err(Error::NotALeaf {
                id: p.id,
                what: "only the leaf of a chain can get a snapshot".into(),
            });
        }
        if p.legality != Legality::Legal {
            return Err(Error::Illegal { id: p.id });
        }
    }
    let id = req.id.unwrap_or_else(VolumeId::random);
    if cat.snap.lv_named(&id.to_string()).is_some() {
        return Err(Error::VolumeExists {
            vg: vg.to_string(),
            id,
        });
    }
    // A domain without a metadata area (a file domain: one metadata file per volume) has no
    // slots to choose from.
    let slot = match cat.snap.info.slot_size {
        0 => 0,
        _ => cat.snap.lowest_free_slot().ok_or(Error::NoFreeSlot {
            max: cat.snap.info.max_volumes,
        })?,
    };
    let extent = cat.snap.info.extent_size;
    let lv_size = match format {
        Format::Raw => capacity,
        Format::Qcow2 => Bytes(qemu::qcow2_lv_size(capacity.0)),
    }
    .round_up_to_extents(extent);
    Ok(Plan {
        meta: VolumeMeta {
            id,
            image,
            parent: parent.as_ref().map(|p| p.id),
            format,
            capacity,
            role: Role::Leaf,
            legality: Legality::Legal,
            generation: Generation::default(),
            ctime: super::now(),
            description: req.description.clone(),
            fence: FenceRecord::NONE,
            partial: false,
        },
        slot,
        lv_size,
        prepared: links::prepared(vg, &image),
        parent,
    })
}

/// Creates a volume; returns it as committed.
pub(crate) fn create(domain: &Domain, req: &CreateRequest) -> Result<Volume> {
    let _guard = domain.lock()?;
    let cat = Catalog::load_for_change(domain)?;
    let plan = plan(domain, &cat, req)?;
    let store = domain.slots(&cat.snap)?;
    let made = make(domain, &store, cat.snap.info.vg_free, plan, req.wipe)?;
    let names = [made.name.clone()];
    commit(domain, &names).pop().unwrap_or(Ok(()))?;
    Ok(finish(domain, made))
}

/// A creation up to its commit: the LV exists, carries `LVC_CREATING`, and everything else
/// (slot, lease area, header, parent's role, link) is written. Holds the parent's lease.
pub(crate) struct Made {
    plan: Plan,
    pub(crate) name: String,
    activate: bool,
    wipe: Option<Wipe>,
    _parent_lease: Option<Box<dyn LeaseGuard>>,
}

impl Plan {
    /// The LV the creation will make, as a report would show it while it is marked.
    pub(crate) fn marked_entry(&self, wipe: Option<Wipe>) -> LvEntry {
        LvEntry {
            name: self.meta.id.to_string(),
            id: Some(self.meta.id),
            size: self.lv_size,
            active: false,
            open: false,
            image: Some(self.meta.image),
            parent: self.meta.parent,
            slot: Some(self.slot),
            creating: true,
            removing: false,
            special: false,
            member: false,
            wipe,
            bad_tags: vec![],
        }
    }
}

/// Steps 2 to 4 (the parent's lease first): the marked `lvcreate`, then the contents; a
/// failure after the `lvcreate` rolls back from what the VG says then.
pub(crate) fn make(
    domain: &Domain,
    store: &crate::metadata::SlotStore,
    vg_free: Bytes,
    plan: Plan,
    wipe: Option<Wipe>,
) -> Result<Made> {
    let parent_lease = match &plan.parent {
        Some(p) => Some(domain.lease_shared(&p.id, p.slot)?),
        None => None,
    };
    let held: Vec<VolumeId> = plan.parent.iter().map(|p| p.id).collect();
    let id = plan.meta.id;
    let name = id.to_string();
    let mut tags = vec![
        Tag::Creating,
        Tag::Image(plan.meta.image),
        Tag::Slot(plan.slot),
    ];
    if let Some(p) = &plan.parent {
        tags.push(Tag::Parent(p.id));
    }
    // Only an explicit choice is recorded, so a domain without overrides has no such tag.
    if let Some(w) = wipe {
        tags.push(Tag::Wipe(w));
    }
    // qcow2 needs the device to write its header; a prepared image keeps its volumes active.
    let activate = plan.meta.format == Format::Qcow2 || plan.prepared;
    let new_lv = NewLv {
        name: &name,
        size: plan.lv_size,
        tags: tags::strings(&tags),
        activate,
    };
    // qemu-img makes the qcow2 header in memory while lvcreate runs: each takes a while.
    let backing = plan
        .parent
        .as_ref()
        .map(|p| (p.id.to_string(), p.format.to_string()));
    let lvm = domain.lvm.clone();
    let (created, header) = std::thread::scope(|s| {
        let capacity = plan.meta.capacity;
        let backing = backing.as_ref().map(|(f, fmt)| (f.as_str(), fmt.as_str()));
        let header = (plan.meta.format == Format::Qcow2)
            .then(|| s.spawn(move || lvm.qcow2_header(capacity.0, backing)));
        let created = domain.lvm.lvcreate(&domain.vg, &new_lv);
        let header = header.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(qemu::QemuError::Scratch(std::io::Error::other(
                    "the qemu-img thread panicked",
                )))
            })
        });
        (created, header)
    });
    created.map_err(|e| match e {
        LvmError::NoSpace { .. } => Error::NoSpace {
            vg: domain.vg.to_string(),
            need: plan.lv_size,
            free: vg_free,
            source: Box::new(e),
        },
        LvmError::AlreadyExists { .. } => Error::VolumeExists {
            vg: domain.vg.to_string(),
            id,
        },
        other => Error::Lvm(other),
    })?;
    crash::point(CrashPoint::CreateAfterLvcreate);

    if let Err(original) = prepare_contents(domain, store, &plan, header) {
        // Roll back from what the VG says now (the LV exists and carries its marker).
        let rollback = domain.scan().and_then(|snap| {
            let lv = snap.lv_named(&name).cloned();
            match lv {
                // Marked LVC_CREATING: nothing committed to wipe.
                Some(lv) => undo::release(
                    domain,
                    &snap,
                    store,
                    &lv,
                    &held,
                    undo::Points::default(),
                    &mut |_, _, _| {},
                ),
                None => Ok(vec![]),
            }
        });
        return Err(match rollback {
            Ok(_) => original,
            Err(rollback) => Error::RollbackFailed {
                original: Box::new(original),
                rollback: Box::new(rollback),
            },
        });
    }
    Ok(Made {
        plan,
        name,
        activate,
        wipe,
        _parent_lease: parent_lease,
    })
}

/// Step 5, the commit point, for the creations `names` made under the domain lock: ONE
/// `lvchange --deltag LVC_CREATING` over all of them (lvm commits each LV on its own, so a
/// crash between two leaves the others marked, each rolled back by the collector alone). A
/// command that may have committed all the same (timed out, killed) is judged by the VG as it
/// is now. One result per name, in order: `LeftForGc` when that LV surely keeps its marker.
pub(crate) fn commit(domain: &Domain, names: &[String]) -> Vec<Result<()>> {
    let creating = tags::strings(&[Tag::Creating]);
    let run = match names {
        [one] => domain.lvm.lvchange_tags(&domain.vg, one, &creating, &[]),
        many => {
            let paths: Vec<String> = many.iter().map(|n| domain.lv_path(n)).collect();
            domain.lvm.lvchange_tags_many(&paths, &creating, &[])
        }
    };
    let Err(e) = run else {
        return names.iter().map(|_| Ok(())).collect();
    };
    let judged = outcome::done_despite(domain, &e, names, &Tag::Creating, false);
    if let [_] = names {
        // One creation: its own error, as it was.
        return vec![match judged {
            Ok(done) if !done.is_empty() => Ok(()),
            Ok(_) => Err(Error::LeftForGc {
                original: Box::new(Error::Lvm(e)),
            }),
            Err(reread) => Err(outcome::unknown(e, reread)),
        }];
    }
    names
        .iter()
        .map(|n| match &judged {
            Ok(done) if done.contains(n) => Ok(()),
            Ok(_) => Err(Error::LeftForGc {
                original: Box::new(Error::Lvm(outcome::copy(&e))),
            }),
            Err(reread) => Err(outcome::unknown(
                outcome::copy(&e),
                Error::Lvm(outcome::copy_text("lvs", reread)),
            )),
        })
        .collect()
}

/// After the commit: the volume as committed (a new LV that only the header needed active is
/// deactivated again, best effort). Releases the parent's lease.
pub(crate) fn finish(domain: &Domain, made: Made) -> Volume {
    crash::point(CrashPoint::CreateAfterCommit);
    let plan = &made.plan;
    if made.activate && !plan.prepared {
        // Best effort: the volume is committed; an active LV is harmless.
        if let Err(e) = domain
            .lvm
            .lvchange_activation(&[domain.lv_path(&made.name)], Activation::Deactivate)
        {
            tracing::warn!(volume = %plan.meta.id, error = %e, "could not deactivate the new volume");
        }
    }
    let mut lv = plan.marked_entry(made.wipe);
    lv.creating = false;
    lv.member = true;
    lv.active = plan.prepared;
    Volume::from_parts(&lv, plan.slot, &plan.meta)
}

/// Steps 3 and 4: everything between the marked `lvcreate` and the commit.
fn prepare_contents(
    domain: &Domain,
    store: &crate::metadata::SlotStore,
    plan: &Plan,
    qcow2_header: Option<std::result::Result<Vec<u8>, qemu::QemuError>>,
) -> Result<()> {
    let meta = &plan.meta;
    store.write(plan.slot, meta)?;
    domain.init_lease(&meta.id, plan.slot)?;
    crash::point(CrashPoint::CreateAfterMetadata);
    if let Some(header) = qcow2_header {
        qemu::write_qcow2_header(
            domain.lvm.as_ref(),
            &domain.volume_device(&meta.id),
            &header?,
        )
        .map_err(Error::io("writing the qcow2 header"))?;
    }
    crash::point(CrashPoint::CreateAfterQemuImg);
    if let Some(p) = &plan.parent {
        super::update_meta(domain, store, &p.id, p.slot, true, |pm| {
            // Re-checked under the parent's lease: an operation may have run meanwhile.
            if pm.legality != Legality::Legal {
                return Err(Error::Illegal { id: p.id });
            }
            pm.role = Role::Internal;
            Ok(true)
        })?;
    }
    crash::point(CrashPoint::CreateAfterParentUpdate);
    if plan.prepared {
        links::add(
            &domain.vg,
            &meta.image,
            &meta.id,
            &domain.volume_device(&meta.id),
        )
        .map_err(Error::io("creating the link"))?;
    }
    crash::point(CrashPoint::CreateAfterLinks);
    Ok(())
}
