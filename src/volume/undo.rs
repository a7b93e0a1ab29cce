//! Taking a marked LV out of the domain: the one procedure behind a creation's rollback, a
//! removal, and the collector. Order: parent's role, link, metadata slot, then the LV itself
//! (last, so the marker stays until everything else is undone). Every step is idempotent:
//! rerunning it after a crash at any point finishes the job.
//!
//! Metadata is written under the volume's lease (never beside an operation's writes): the
//! caller names the leases it holds already; the others are taken here, and only where a write
//! is due. A removed volume is undone under its own lease too, so an operation that started
//! before the removal cannot write into its slot once it is free.

use crate::crash;
use crate::domain::{Domain, LvEntry, Snapshot};
use crate::error::Result;
use crate::metadata::{MetaError, Role, SlotStore};
use crate::{links, lvm::LvmError};
use uuid::Uuid;

/// Crash points to pass on the way (the caller's operation names them).
#[derive(Clone, Copy, Default)]
pub struct Points {
    pub parent: Option<&'static str>,
    pub links: Option<&'static str>,
    pub metadata: Option<&'static str>,
    pub lvremove: Option<&'static str>,
}

fn pass(p: Option<&'static str>) {
    if let Some(p) = p {
        crash::point(p);
    }
}

/// Undoes what the marked LV `lv` changed and removes it. Returns what was done.
/// `held`: the volumes whose leases the caller holds.
pub fn release(
    domain: &Domain,
    snap: &Snapshot,
    store: &SlotStore,
    lv: &LvEntry,
    held: &[Uuid],
    points: Points,
) -> Result<Vec<String>> {
    let mut done = undo_changes(domain, snap, store, lv, held, points)?;
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
    held: &[Uuid],
    points: Points,
) -> Result<Vec<String>> {
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
                    Ok(_) if changed => done.push(format!("parent {p} is a leaf again")),
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
            done.push("link removed".into());
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
            done.push(format!("slot {n} cleared"));
        }
    }
    pass(points.metadata);
    Ok(done)
}

/// Step 4: removes the LVs (deactivating them), and with them their markers, in ONE lvremove;
/// when that fails, one LV at a time, clearing a stale device-mapper mapping first if needed.
/// A mapping by an LV's name that lvm did not know (left by a failed deactivation: lvm finds
/// mappings by uuid) survives a successful lvremove and would break the next activation of
/// that name: it goes too.
pub fn remove_lvs(domain: &Domain, names: &[String]) -> Result<Vec<String>> {
    let paths: Vec<String> = names.iter().map(|n| domain.lv_path(n)).collect();
    let removed = |name: &String, stale: bool| match stale {
        true => format!("LV {name} removed; stale device-mapper mapping removed"),
        false => format!("LV {name} removed"),
    };
    if paths.is_empty() || domain.lvm.lvremove(&paths).is_ok() {
        return Ok(names
            .iter()
            .map(|n| removed(n, remove_stale_mapping(domain, n)))
            .collect());
    }
    let mut done = Vec::new();
    for (name, path) in names.iter().zip(&paths) {
        let first = domain.lvm.lvremove(std::slice::from_ref(path));
        let stale = remove_stale_mapping(domain, name);
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

/// Removes a device-mapper mapping left behind by a failed deactivation, if any; returns
/// whether one was removed.
fn remove_stale_mapping(domain: &Domain, lv: &str) -> bool {
    let name = format!("{}-{}", domain.vg.replace('-', "--"), lv.replace('-', "--"));
    if !mapping_exists(&name) {
        return false;
    }
    let r = crate::exec::Cmd::new("/sbin/dmsetup", domain.lvm.config.timeout)
        .args(["remove", "--retry", &name])
        .run();
    let removed = r.as_ref().is_ok_and(|f| f.success());
    tracing::warn!(mapping = %name, removed, result = ?r.map(|f| (f.code, f.stderr)), "stale device-mapper mapping");
    removed
}

/// Whether the kernel has a device-mapper mapping named `name` (from sysfs: no process, and
/// true even where no udev made its /dev/mapper node).
fn mapping_exists(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim_end() == name)
    })
}
