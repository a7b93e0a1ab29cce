//! Taking a marked LV out of the domain: the one procedure behind a creation's rollback, a
//! removal, and the collector. Order: parent's role, link, metadata slot, the wipe of a removed
//! volume's data, then the LV itself (last, so the marker stays until everything else is
//! undone). Every step is idempotent: rerunning it after a crash at any point finishes the job.
//!
//! Metadata is written under the volume's lease (never beside an operation's writes): the
//! caller names the leases it holds already; the others are taken here, and only where a write
//! is due. A removed volume is undone under its own lease too, so an operation that started
//! before the removal cannot write into its slot once it is free.

use crate::crash;
use crate::domain::{Domain, DomainInfo, LvEntry, Snapshot};
use crate::error::{Error, Result};
use crate::format::ids::VolumeId;
use crate::metadata::{MetaError, Role, SlotStore};
use crate::units::Bytes;
use crate::{links, lvm::LvmError};

/// Crash points to pass on the way (the caller's operation names them).
#[derive(Clone, Copy, Default)]
pub struct Points {
    pub parent: Option<crash::CrashPoint>,
    pub links: Option<crash::CrashPoint>,
    pub metadata: Option<crash::CrashPoint>,
    pub wipe: Option<crash::CrashPoint>,
    pub lvremove: Option<crash::CrashPoint>,
}

/// One thing the undo did; its text is what gc's report shows (stable).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// The parent has no committed child left: its role went back to leaf.
    ParentLeaf(VolumeId),
    LinkRemoved,
    SlotCleared(u32),
    Wiped {
        lv: String,
        bytes: Bytes,
        seconds: f64,
    },
    LvRemoved {
        lv: String,
        stale_mapping: bool,
    },
    /// A file of a file domain removed (its path).
    FileRemoved(String),
}

impl Action {
    /// The LV an LV-wide action was done to (wipes and removals are done for many at once).
    pub fn lv(&self) -> Option<&str> {
        match self {
            Action::Wiped { lv, .. } | Action::LvRemoved { lv, .. } => Some(lv),
            _ => None,
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::ParentLeaf(p) => write!(f, "parent {p} is a leaf again"),
            Action::LinkRemoved => f.write_str("link removed"),
            Action::FileRemoved(p) => write!(f, "{p} removed"),
            Action::SlotCleared(n) => write!(f, "slot {n} cleared"),
            Action::Wiped { lv, bytes, seconds } => {
                write!(f, "LV {lv} wiped ({bytes} in {seconds:.1}s)")
            }
            Action::LvRemoved {
                lv,
                stale_mapping: false,
            } => write!(f, "LV {lv} removed"),
            Action::LvRemoved {
                lv,
                stale_mapping: true,
            } => write!(f, "LV {lv} removed; stale device-mapper mapping removed"),
        }
    }
}

/// Progress of a wipe: the LV, bytes zeroed so far, its size.
pub type WipeProgress<'a> = dyn FnMut(&str, u64, u64) + 'a;

fn pass(p: Option<crash::CrashPoint>) {
    if let Some(p) = p {
        crash::point(p);
    }
}

/// Undoes what the marked LV `lv` changed, wipes its data when it is being removed (and its
/// policy says so), and removes it. Returns what was done; a failed wipe leaves the LV marked.
/// `held`: the volumes whose leases the caller holds.
pub fn release(
    domain: &Domain,
    snap: &Snapshot,
    store: &SlotStore,
    lv: &LvEntry,
    held: &[VolumeId],
    points: Points,
    progress: &mut WipeProgress<'_>,
) -> Result<Vec<Action>> {
    let mut done = undo_changes(domain, snap, store, lv, held, points)?;
    let mut wiped = wipe(domain, &snap.info, &[lv], progress)?;
    if let Some((_, e)) = wiped.failed.pop() {
        return Err(e);
    }
    done.extend(wiped.done);
    pass(points.wipe);
    done.extend(remove_lvs(domain, std::slice::from_ref(&lv.name))?);
    pass(points.lvremove);
    Ok(done)
}

/// Steps 1 to 3 of [`release`]: everything but removing the LV (which keeps its marker).
pub fn undo_changes(
    domain: &Domain,
    snap: &Snapshot,
    store: &SlotStore,
    lv: &LvEntry,
    held: &[VolumeId],
    points: Points,
) -> Result<Vec<Action>> {
    let mut done = Vec::new();
    // A committed volume being removed may have had an operation waiting for its lease: hold
    // it throughout, so no late write lands in the slot once it is free (busy: nothing done).
    let _own_lease = match (lv.id, lv.slot) {
        (Some(id), Some(n)) if lv.removing && !held.contains(&id) => Some(domain.lease(&id, n)?),
        _ => None,
    };
    let own_meta = lv
        .slot
        .and_then(|n| store.read(n).ok())
        .filter(|m| Some(m.id) == lv.id);
    // 1. The parent becomes a leaf again when no committed child is left.
    let parent = lv.parent.or(own_meta.as_ref().and_then(|m| m.parent));
    if let Some(p) = parent {
        let other_children = snap
            .children(&p)
            .iter()
            .filter(|c| c.name != lv.name)
            .count();
        if let (Some(pl), 0) = (snap.volume(&p), other_children) {
            // Roles change only under the domain lock, which we hold: reading needs no lease,
            // and a parent that is a leaf already needs no write (nor its lease).
            let internal =
                |n| matches!(store.read(n), Ok(m) if m.id == p && m.role == Role::Internal);
            if let Some(pslot) = pl.slot.filter(|&n| internal(n)) {
                let mut changed = false;
                let r = super::update_meta(domain, store, &p, pslot, held.contains(&p), |m| {
                    changed = m.role == Role::Internal;
                    m.role = Role::Leaf;
                    Ok(changed)
                });
                match r {
                    Ok(_) if changed => done.push(Action::ParentLeaf(p)),
                    Ok(_) | Err(crate::error::Error::Metadata { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    pass(points.parent);
    // 2. Its link, when the image is prepared here.
    if let (Some(image), Some(id)) = (lv.image.or(own_meta.as_ref().map(|m| m.image)), lv.id) {
        if links::link_path(&domain.vg, &image, &id)
            .symlink_metadata()
            .is_ok()
        {
            links::remove(&domain.vg, &image, &id)
                .map_err(crate::error::Error::io("removing a link"))?;
            done.push(Action::LinkRemoved);
        }
    }
    pass(points.links);
    // 3. Its metadata slot, which no other LV can own (marked LVs keep their slot taken).
    if let Some(n) = lv.slot {
        let shared = snap
            .lvs
            .iter()
            .any(|o| o.name != lv.name && o.slot == Some(n));
        let ours = match store.read(n) {
            Ok(m) => Some(m.id) == lv.id,
            Err(MetaError::Empty { .. }) => false,
            Err(_) => !shared,
        };
        if ours {
            store.clear(n)?;
            done.push(Action::SlotCleared(n));
        }
    }
    pass(points.metadata);
    Ok(done)
}

/// Step 4: zeroes the data of those `lvs` that are being removed and whose policy (their own
/// `LVC_WIPE`, else the domain's) is `zero`, so that no later volume on the same extents reads
/// it. An LV marked `LVC_CREATING` is never wiped: a rolled-back creation never held committed
/// data (it held nothing but what the creation itself wrote). The LVs not active on this host
/// are activated first, in ONE lvchange (an error there fails the whole step). Returns what
/// was done, and the LVs whose wipe failed with its error: those must not be removed (their
/// marker stays, so the collector retries).
pub fn wipe(
    domain: &Domain,
    info: &DomainInfo,
    lvs: &[&LvEntry],
    progress: &mut WipeProgress<'_>,
) -> Result<WipeOutcome> {
    let due: Vec<&LvEntry> = lvs
        .iter()
        .copied()
        .filter(|l| l.wipe_on_removal(info))
        .collect();
    let device = |l: &LvEntry| domain.device(&l.name);
    // A device this host maps already may map less than the LV (lvm may even report its state
    // unknown then): refresh every one that exists; activate the others.
    let active: Vec<&LvEntry> = due.iter().copied().filter(|l| device(l).exists()).collect();
    let inactive: Vec<&LvEntry> = due
        .iter()
        .copied()
        .filter(|l| !l.active || !device(l).exists())
        .collect();
    let paths =
        |lvs: &[&LvEntry]| -> Vec<String> { lvs.iter().map(|l| domain.lv_path(&l.name)).collect() };
    domain
        .lvm
        .lvchange_activation(&paths(&inactive), crate::lvm::Activation::Activate)
        .map_err(|source| Error::WipeActivation { source })?;
    // A mapping made before another host grew the LV is smaller than the LV: refreshed, the
    // wipe covers every extent lvremove frees.
    domain
        .lvm
        .lvchange_activation(&paths(&active), crate::lvm::Activation::Refresh)
        .map_err(|source| Error::WipeActivation { source })?;
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for l in due {
        match domain
            .lvm
            .zero_device(&device(l), &mut |d, t| progress(&l.name, d, t))
        {
            Ok(w) if Bytes(w.bytes) < l.size => failed.push((
                l.name.clone(),
                Error::WipeShort {
                    lv: l.name.clone(),
                    wiped: Bytes(w.bytes),
                    size: l.size,
                },
            )),
            Ok(w) => done.push(Action::Wiped {
                lv: l.name.clone(),
                bytes: Bytes(w.bytes),
                seconds: w.duration.as_secs_f64(),
            }),
            Err(source) => failed.push((
                l.name.clone(),
                Error::Wipe {
                    lv: l.name.clone(),
                    source,
                },
            )),
        }
    }
    Ok(WipeOutcome { done, failed })
}

/// What [`wipe`] did: its actions, and the LVs whose wipe failed (to be left marked).
pub struct WipeOutcome {
    pub done: Vec<Action>,
    pub failed: Vec<(String, Error)>,
}

/// Step 5: removes the LVs (deactivating them), and with them their markers, in ONE lvremove;
/// when that fails, one LV at a time, clearing a stale device-mapper mapping first if needed.
/// A mapping by an LV's name that lvm did not know (left by a failed deactivation: lvm finds
/// mappings by uuid) survives a successful lvremove and would break the next activation of
/// that name: it goes too.
pub fn remove_lvs(domain: &Domain, names: &[String]) -> Result<Vec<Action>> {
    let paths: Vec<String> = names.iter().map(|n| domain.lv_path(n)).collect();
    let removed = |name: &String, stale: bool| Action::LvRemoved {
        lv: name.clone(),
        stale_mapping: stale,
    };
    if paths.is_empty() || domain.lvm.lvremove(&paths).is_ok() {
        return Ok(names
            .iter()
            .map(|n| removed(n, domain.lvm.remove_stale_mapping(&domain.vg, n)))
            .collect());
    }
    let mut done = Vec::new();
    for (name, path) in names.iter().zip(&paths) {
        let first = domain.lvm.lvremove(std::slice::from_ref(path));
        let stale = domain.lvm.remove_stale_mapping(&domain.vg, name);
        match first {
            Ok(()) => done.push(removed(name, stale)),
            Err(LvmError::LvNotFound { .. }) => {}
            Err(e) => {
                domain
                    .lvm
                    .lvremove(std::slice::from_ref(path))
                    .map_err(|_| e)?;
                done.push(removed(name, stale));
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_read_as_gc_reports_them() {
        let p = VolumeId::default();
        let texts: Vec<String> = [
            Action::ParentLeaf(p),
            Action::LinkRemoved,
            Action::SlotCleared(3),
            Action::Wiped {
                lv: "v".into(),
                bytes: Bytes(8 << 20),
                seconds: 0.25,
            },
            Action::LvRemoved {
                lv: "v".into(),
                stale_mapping: true,
            },
            Action::LvRemoved {
                lv: "v".into(),
                stale_mapping: false,
            },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            texts,
            [
                format!("parent {p} is a leaf again"),
                "link removed".into(),
                "slot 3 cleared".into(),
                format!("LV v wiped ({} in 0.2s)", crate::units::Bytes(8 << 20)),
                "LV v removed; stale device-mapper mapping removed".into(),
                "LV v removed".into(),
            ]
        );
        assert_eq!(Action::LinkRemoved.lv(), None);
    }
}
