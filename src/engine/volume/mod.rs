//! Volumes: the view that joins an LV (tags) with its metadata slot, and the transactions that
//! create, remove and extend volumes under the domain lock.
//!
//! Readers never show an LV that carries a transaction marker. The metadata is the truth for
//! a volume's parent and role; the `LVC_PARENT` tag is an index kept in step with it.

pub(crate) mod create;
mod extend;
mod outcome;
mod remove;
pub(crate) mod undo;

pub(crate) use create::create;
pub use create::CreateRequest;
pub(crate) use extend::extend;
pub(crate) use extend::grow_storage;
pub(crate) use remove::{remove, remove_image};
pub use undo::Action;

use crate::domain::{Domain, LvEntry, Snapshot};
use crate::error::{Error, Result};
use crate::format::ids::{Generation, ImageId, VolumeId};
use crate::metadata::{Format, Legality, MetaError, Role, VolumeMeta};
use crate::units::Bytes;
use std::collections::{HashMap, HashSet};

/// A committed volume: its LV and its metadata (the CLI's JSON view is `cli::views`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub id: VolumeId,
    pub image: ImageId,
    pub parent: Option<VolumeId>,
    pub role: Role,
    pub legality: Legality,
    pub generation: Generation,
    pub format: Format,
    pub capacity: Bytes,
    pub lv_size: Bytes,
    pub slot: u32,
    pub active: bool,
    pub ctime: u64,
    pub description: String,
    /// The hosts holding the volume prepared (shared lease holders; 0 is this host on a local
    /// domain), when read ([`crate::domain::Domain::volume_info`]).
    pub prepared_on: Option<Vec<u64>>,
}

impl Volume {
    pub fn from_parts(lv: &LvEntry, slot: u32, meta: &VolumeMeta) -> Volume {
        Volume {
            id: meta.id,
            image: meta.image,
            parent: meta.parent,
            role: meta.role,
            legality: meta.legality,
            generation: meta.generation,
            format: meta.format,
            capacity: meta.capacity,
            lv_size: lv.size,
            slot,
            active: lv.active,
            ctime: meta.ctime,
            description: meta.description.clone(),
            prepared_on: None,
        }
    }
}

/// Committed volumes with their metadata, read with one report and one read of all slots.
pub struct Catalog {
    pub snap: Snapshot,
    pub volumes: HashMap<VolumeId, Volume>,
    /// Committed LVs whose slot does not hold their metadata.
    pub bad: Vec<(VolumeId, Error)>,
}

impl Catalog {
    /// For readers: no lock is held, any lock manager will do.
    pub fn load(domain: &Domain) -> Result<Catalog> {
        let snap = domain.scan()?;
        Catalog::from_snapshot(domain, snap)
    }

    /// For changes: the caller holds the domain lock or a lease of the domain's own manager.
    pub fn load_for_change(domain: &Domain) -> Result<Catalog> {
        let snap = domain.scan()?;
        domain.check_kind(&snap)?;
        Catalog::from_snapshot(domain, snap)
    }

    pub fn from_snapshot(domain: &Domain, snap: Snapshot) -> Result<Catalog> {
        let store = domain.slots(&snap)?;
        let slots = store.read_all()?;
        let mut volumes = HashMap::new();
        let mut bad = Vec::new();
        let pending_parents: HashSet<VolumeId> = snap
            .orphans()
            .filter(|l| !l.member)
            .filter_map(|l| l.parent)
            .collect();
        for lv in snap.volumes() {
            let (Some(id), Some(slot)) = (lv.id, lv.slot) else {
                continue;
            };
            match slots.get(slot as usize) {
                Some(Ok(meta)) if meta.id == id => {
                    let mut v = Volume::from_parts(lv, slot, meta);
                    v.role = committed_role(&snap, &pending_parents, &v);
                    volumes.insert(id, v);
                }
                Some(Ok(meta)) => bad.push((
                    id,
                    Error::Metadata {
                        id,
                        source: MetaError::Damaged {
                            slot,
                            reason: format!("it holds volume {}", meta.id),
                        },
                    },
                )),
                Some(Err(e)) => bad.push((
                    id,
                    Error::Metadata {
                        id,
                        source: e.clone(),
                    },
                )),
                None => bad.push((
                    id,
                    Error::Metadata {
                        id,
                        source: MetaError::OutOfRange {
                            slot,
                            max: store.slots,
                        },
                    },
                )),
            }
        }
        Ok(Catalog { snap, volumes, bad })
    }

    /// The chain of `image`, base first (an error names a loop, a fork or a missing parent).
    pub fn chain(&self, image: &ImageId) -> Result<Vec<Volume>> {
        crate::chain::walk(self, image)
    }

    /// Whether `id` is its chain's leaf in the committed view (no member child).
    pub fn is_leaf(&self, id: &VolumeId) -> bool {
        self.volumes.get(id).is_some_and(|v| v.role == Role::Leaf)
            && self.snap.children(id).is_empty()
    }

    /// Whether any LV names `id` as its parent, chain member or pending (a creation in progress
    /// or dead, a removal not finished): its data is then read by another volume, or will be.
    pub fn has_any_child(&self, id: &VolumeId) -> bool {
        !self.snap.children(id).is_empty() || !self.snap.pending_children(id).is_empty()
    }

    pub fn get(&self, vg: &str, id: &VolumeId) -> Result<&Volume> {
        if let Some(v) = self.volumes.get(id) {
            return Ok(v);
        }
        if let Some((_, e)) = self.bad.iter().find(|(b, _)| b == id) {
            return Err(Error::InvalidInput(e.to_string()));
        }
        Err(Error::VolumeNotFound {
            vg: vg.to_string(),
            id: *id,
        })
    }

    /// Volumes sorted by image, then chain order (base first) where the chain is sound.
    pub fn list(&self, image: Option<&ImageId>) -> Vec<Volume> {
        let mut images: Vec<ImageId> = self.volumes.values().map(|v| v.image).collect();
        images.sort();
        images.dedup();
        let mut out = Vec::new();
        for img in images
            .iter()
            .filter(|i| image.is_none_or(|want| want == *i))
        {
            match crate::chain::walk(self, img) {
                Ok(chain) => out.extend(chain),
                Err(_) => {
                    let mut vs: Vec<Volume> = self
                        .volumes
                        .values()
                        .filter(|v| &v.image == img)
                        .cloned()
                        .collect();
                    vs.sort_by_key(|v| v.ctime);
                    out.extend(vs);
                }
            }
        }
        out
    }
}

/// A volume's role as the committed state has it. A creation writes the parent's new role
/// (internal) before its commit, and a removal writes it (leaf) after its point of no return:
/// in between, and after a crash there until the collector runs, the metadata says internal
/// while the volume's only children are pending (marked, not chain members). Its committed role
/// is then leaf: what a reader shows, and what a rollback or the completed removal leaves.
/// `pending_parents`: the parents named by pending LVs. A volume with a pending child still
/// takes no data write: see [`Catalog::has_any_child`].
pub(crate) fn committed_role(
    snap: &Snapshot,
    pending_parents: &HashSet<VolumeId>,
    v: &Volume,
) -> Role {
    if v.role == Role::Internal
        && pending_parents.contains(&v.id)
        && snap.children(&v.id).is_empty()
    {
        Role::Leaf
    } else {
        v.role
    }
}

/// The committed LVs of `image`; an error when there are none or one is open.
pub(crate) fn idle_members(snap: &Snapshot, vg: &str, image: &ImageId) -> Result<Vec<LvEntry>> {
    let members: Vec<LvEntry> = snap.image_volumes(image).into_iter().cloned().collect();
    if members.is_empty() {
        return Err(Error::ImageNotFound {
            vg: vg.to_string(),
            image: *image,
        });
    }
    if let Some(open) = members.iter().find(|l| l.open) {
        return Err(Error::InUse {
            id: open.id.unwrap_or_default(),
        });
    }
    Ok(members)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Rewrites the metadata of volume `id` (slot `slot`) while holding its lease, so that it never
/// interleaves with an operation's ILLEGAL/LEGAL writes: taken here unless `lease_held` says
/// the caller holds it already. `change` sees the current metadata and returns whether to
/// write it back.
pub(crate) fn update_meta(
    domain: &Domain,
    store: &crate::metadata::SlotStore,
    id: &VolumeId,
    slot: u32,
    lease_held: bool,
    change: impl FnOnce(&mut VolumeMeta) -> Result<bool>,
) -> Result<VolumeMeta> {
    let _lease = if lease_held {
        None
    } else {
        Some(domain.lease(id, slot)?)
    };
    let mut meta = store
        .read(slot)
        .map_err(|source| Error::Metadata { id: *id, source })?;
    if meta.id != *id {
        return Err(Error::Metadata {
            id: *id,
            source: MetaError::Damaged {
                slot,
                reason: format!("it holds volume {}", meta.id),
            },
        });
    }
    if change(&mut meta)? {
        store.write(slot, &meta)?;
    }
    Ok(meta)
}

/// The unit of every volume size: a disk sector.
pub const SECTOR: u64 = 512;
/// The largest volume: what qcow2 takes (2 PiB; LVM takes more).
pub const MAX_VOLUME: Bytes = Bytes(2 << 50);

/// The one check of a volume size, for every client: whole sectors, more than 0, at most
/// [`MAX_VOLUME`].
pub fn check_size(size: Bytes) -> std::result::Result<(), String> {
    if size.0 == 0 {
        return Err("a size of 0 bytes makes no volume".into());
    }
    if size.0 % SECTOR != 0 {
        return Err(format!(
            "size {} is not a whole number of {SECTOR}-byte sectors",
            size.0
        ));
    }
    if size > MAX_VOLUME {
        return Err(format!(
            "size {} is larger than the largest volume, {} bytes (2 PiB)",
            size.0, MAX_VOLUME.0
        ));
    }
    Ok(())
}

#[cfg(test)]
mod size_tests {
    use super::{check_size, MAX_VOLUME};
    use crate::units::Bytes;

    #[test]
    fn a_volume_size_is_whole_sectors_within_what_qcow2_takes() {
        assert!(check_size(Bytes(512)).is_ok());
        assert!(check_size(MAX_VOLUME).is_ok());
        for bad in [0, 1, 511, 513, MAX_VOLUME.0 + 512, 1 << 63, u64::MAX] {
            assert!(check_size(Bytes(bad)).is_err(), "{bad}");
        }
    }
}
