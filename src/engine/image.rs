//! Images on this host: prepare (activate the chain in one command, make the links) and
//! teardown (remove the links, deactivate in one command). Neither changes VG metadata.
//! Never serves an illegal volume unless asked to for recovery.
//!
//! An image prepared through the host agent is held: the agent keeps a shared lease on every
//! chain member ([`HeldImage`]) for as long as the image is prepared, so that no host can take a
//! member's exclusive lease (remove, copy, update, fence) meanwhile, and every host can read who
//! holds it. After its own restart the agent takes them again ([`hold_prepared`]) for the images
//! whose link directories exist. Holders learn that a volume grew elsewhere by [`refresh`].
//! On a sanlock domain an image prepared without a holder is refused unless asked for
//! (recovery work): nothing would keep other hosts from freeing its extents.

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::ids::{ImageId, VolumeId};
use crate::links;
use crate::lock::{LeaseGuard, LockKind};
use crate::lvm::Activation;
use crate::metadata::Legality;
use crate::volume::{Catalog, Volume};
use std::io::Seek;

pub use crate::lock::sanlock::LeaseLocation;

/// Makes `dir` and its missing parents `0755` whatever the umask, as the link directories
/// are: for a client's directories that other users walk (the agent's socket's).
pub fn make_walkable_dirs(dir: &std::path::Path) -> std::io::Result<()> {
    links::make_dirs(dir)
}

/// Who holds an image prepared on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// The caller keeps the shared leases of the chain ([`HeldImage`]): the host agent.
    Leases,
    /// As [`Holding::Leases`] but for the leaf, whose lease a VM's lock manager holds
    /// exclusively while the VM runs (libvirt's `<lease>`).
    LeasesLeafToVm,
    /// Nobody (a one-shot process): refused on a domain shared by hosts.
    None,
    /// Nobody, asked for explicitly (recovery work without the agent).
    NoneForRecovery,
}

/// The shared leases of a prepared image's volumes, held until dropped (at teardown).
pub struct HeldImage {
    /// The volumes held: the chain, base first (at prepare), or the linked volumes (after a
    /// restart).
    pub volumes: Vec<VolumeId>,
    _leases: Vec<Box<dyn LeaseGuard>>,
}

impl HeldImage {
    /// The shared `leases` of `volumes`, held until dropped.
    pub(crate) fn new(volumes: Vec<VolumeId>, leases: Vec<Box<dyn LeaseGuard>>) -> HeldImage {
        HeldImage {
            volumes,
            _leases: leases,
        }
    }
}

impl std::fmt::Debug for HeldImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldImage")
            .field("volumes", &self.volumes)
            .finish_non_exhaustive()
    }
}

/// Takes the shared lease of every volume in `volumes` (each a committed volume of `cat`);
/// a member whose lease is held exclusively (an operation running on it) refuses.
fn hold(domain: &Domain, cat: &Catalog, volumes: &[&Volume]) -> Result<HeldImage> {
    domain.activate_lease_lvs(&cat.snap)?;
    let mut leases = Vec::with_capacity(volumes.len());
    for v in volumes {
        leases.push(domain.lease_shared(&v.id, v.slot)?);
    }
    Ok(HeldImage {
        volumes: volumes.iter().map(|v| v.id).collect(),
        _leases: leases,
    })
}

/// Activates the chain of `image` and links every member; returns the chain, base first, and
/// its shared leases when `holding` is [`Holding::Leases`] (taken before anything is activated).
/// A chain with an illegal member (partial data from an operation that failed, or one still
/// running) is refused unless `allow_illegal` (recovery work).
pub(crate) fn prepare(
    domain: &Domain,
    image: &ImageId,
    allow_illegal: bool,
    holding: Holding,
) -> Result<(Vec<Volume>, Option<HeldImage>)> {
    let cat = Catalog::load(domain)?;
    if holding == Holding::None && cat.snap.info.lock_manager == LockKind::Sanlock {
        return Err(Error::NeedsAgent {
            vg: domain.vg.to_string(),
        });
    }
    let chain = crate::chain::walk(&cat, image)?;
    if holding == Holding::LeasesLeafToVm && cat.snap.info.lock_manager != LockKind::Sanlock {
        return Err(no_vm_lease(&domain.vg));
    }
    if let Some(v) = chain.iter().find(|v| v.legality != Legality::Legal) {
        if !allow_illegal {
            return Err(Error::IllegalMember {
                image: *image,
                id: v.id,
                generation: v.generation,
            });
        }
        tracing::warn!(image = %image, volume = %v.id, "preparing a chain with an illegal volume");
    }
    if holding == Holding::NoneForRecovery {
        tracing::warn!(image = %image, "preparing without the agent: no shared leases are held");
    }
    let held = match holding {
        Holding::Leases | Holding::LeasesLeafToVm => {
            let members = held_members(&chain, holding == Holding::LeasesLeafToVm);
            Some(hold(domain, &cat, &members.iter().collect::<Vec<_>>())?)
        }
        Holding::None | Holding::NoneForRecovery => None,
    };
    let inactive: Vec<String> = chain
        .iter()
        .filter(|v| !v.active || !domain.volume_device(&v.id).exists())
        .map(|v| domain.lv_path(&v.id.to_string()))
        .collect();
    domain
        .lvm
        .lvchange_activation(&inactive, Activation::Activate)?;
    let dir = links::image_dir(&domain.vg, image);
    links::make_dirs(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    for v in &chain {
        links::add(&domain.vg, image, &v.id, &domain.volume_device(&v.id))
            .map_err(Error::io("creating a link"))?;
    }
    Ok((chain, held))
}

/// The volumes linked in `image`'s link directory on this host (empty: not prepared here).
fn linked(vg: &str, image: &ImageId) -> Result<Vec<VolumeId>> {
    let dir = links::image_dir(vg, image);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()))(e)),
    };
    let mut ids = Vec::new();
    for e in entries {
        let e = e.map_err(Error::io(format!("reading {}", dir.display())))?;
        if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The images prepared on this host in domain `vg` (their link directories exist).
pub fn prepared_images(vg: &str) -> Result<Vec<ImageId>> {
    let dir = links::run_dir().join(vg);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()))(e)),
    };
    let mut images = Vec::new();
    for e in entries {
        let e = e.map_err(Error::io(format!("reading {}", dir.display())))?;
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if let Some(image) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
            if is_dir {
                images.push(image);
            }
        }
    }
    Ok(images)
}

/// Takes again the shared leases of an image still prepared on this host (after the holder
/// restarted): every linked volume that is still a committed volume of the domain.
pub(crate) fn hold_prepared(domain: &Domain, image: &ImageId) -> Result<HeldImage> {
    let cat = Catalog::load(domain)?;
    let ids = linked(&domain.vg, image)?;
    let leaf = vm_leaf(&cat, image);
    let volumes: Vec<&Volume> = ids
        .iter()
        .filter(|id| Some(**id) != leaf)
        .filter_map(|id| cat.volumes.get(id))
        .collect();
    hold(domain, &cat, &volumes)
}

/// The members of `chain` (base first) whose shared leases a holder takes: all, or all but
/// the leaf when its lease is left to a VM.
pub(crate) fn held_members(chain: &[Volume], leaf_to_vm: bool) -> &[Volume] {
    match chain.split_last() {
        Some((_, below)) if leaf_to_vm => below,
        _ => chain,
    }
}

/// The leaf of `image` when this host left its lease to a VM ([`links::vm_lease_marker`]).
pub(crate) fn vm_leaf(cat: &Catalog, image: &ImageId) -> Option<VolumeId> {
    if !links::vm_lease_marker(image).exists() {
        return None;
    }
    crate::chain::walk(cat, image)
        .ok()
        .and_then(|c| c.last().map(|v| v.id))
}

/// The refusal of a VM's lease on a domain with the local lock manager.
pub fn no_vm_lease(vg: &str) -> Error {
    Error::InvalidInput(format!(
        "{vg} uses the local lock manager: its volumes have no sanlock lease for a VM's lock \
         manager to hold"
    ))
}

/// Records (or, with `to_vm` false, forgets) that the leaf of `image` is left to a VM.
pub(crate) fn mark_vm_lease(vg: &str, image: &ImageId, to_vm: bool) -> Result<()> {
    let marker = links::vm_lease_marker(image);
    let io = |e| Error::io(format!("recording the VM's lease in {}", marker.display()))(e);
    if !to_vm {
        return match std::fs::remove_file(&marker) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        };
    }
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    std::fs::write(&marker, format!("{vg}\n")).map_err(io)
}

/// The size of a device as this host maps it.
fn device_size(path: &std::path::Path) -> std::io::Result<u64> {
    std::fs::File::open(path)?.seek(std::io::SeekFrom::End(0))
}

/// Reloads the mapping of the volumes of `images` (prepared on this host) whose LV grew on
/// another host: ONE report, each linked volume's LV size against its device's size here, then
/// ONE `lvchange --refresh` of those that differ. Returns the volumes refreshed.
pub(crate) fn refresh(domain: &Domain, images: &[ImageId]) -> Result<Vec<VolumeId>> {
    let snap = domain.scan()?;
    let mut stale = Vec::new();
    for image in images {
        for id in linked(&domain.vg, image)? {
            let Some(lv) = snap.volume(&id) else {
                tracing::debug!(volume = %id, "a linked volume is not a volume of the domain");
                continue;
            };
            // Whether this host maps the LV is what its device node says: the report's state
            // character is not trusted here, since lvm judges it against metadata that
            // another host has just changed.
            let mapped = device_size(&domain.volume_device(&id));
            tracing::debug!(volume = %id, lv_size = lv.size.0, attr_active = lv.active, mapped = ?mapped.as_ref().ok(), "checking the mapping");
            match mapped {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Ok(size) if size != lv.size.0 => {
                    tracing::info!(volume = %id, mapped = size, lv_size = lv.size.0, "the LV's size differs from its mapping here");
                    stale.push(id)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(volume = %id, error = %e, "cannot read the device size"),
            }
        }
    }
    let paths: Vec<String> = stale
        .iter()
        .map(|id| domain.lv_path(&id.to_string()))
        .collect();
    domain
        .lvm
        .lvchange_activation(&paths, Activation::Refresh)?;
    Ok(stale)
}

/// Removes the links of `image` and deactivates its volumes.
pub(crate) fn teardown(domain: &Domain, image: &ImageId) -> Result<()> {
    let cat = Catalog::load(domain)?;
    let members = crate::volume::idle_members(&cat.snap, &domain.vg, image)?;
    links::remove_image(&domain.vg, image).map_err(Error::io("removing the links"))?;
    let active: Vec<String> = members
        .iter()
        .filter(|l| l.active || domain.device(&l.name).exists())
        .map(|l| domain.lv_path(&l.name))
        .collect();
    domain
        .lvm
        .lvchange_activation(&active, Activation::Deactivate)?;
    Ok(())
}
