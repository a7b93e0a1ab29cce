//! The engine's facade: every operation on a domain as a method of its handle. The CLI, the
//! tests and any other client call these (they only translate requests and answers); the
//! modules behind them (volume, image, chain, gc, check, operation) are the engine's insides.

use super::burst::{Burst, BurstSettings};
use super::{format, Domain, DomainInfo, FormatRequest};
use crate::error::{Error, Result};
use crate::format::ids::{Generation, ImageId, VolumeId};
use crate::image::{HeldImage, Holding};
use crate::metadata::Legality;
use crate::operation::{self, Source, Status, Work};
use crate::progress::ProgressSink;
use crate::units::Bytes;
use crate::volume::{self, undo::WipeProgress, Catalog, CreateRequest, Volume};

impl Domain {
    /// Formats the VG as a domain (creating it on the request's PVs, or adopting it).
    pub fn format(&self, req: &FormatRequest) -> Result<DomainInfo> {
        if let Some(f) = &self.file {
            return f.format(req);
        }
        format(self, req)
    }

    /// Every committed volume with its metadata (one report, one read of the slots).
    pub fn catalog(&self) -> Result<Catalog> {
        if let Some(f) = &self.file {
            return Ok(crate::fsdomain::store::scan(f)?.catalog);
        }
        Catalog::load(self)
    }

    /// Committed volumes, by image and chain order; only `image`'s when given.
    pub fn volumes(&self, image: Option<&ImageId>) -> Result<Vec<Volume>> {
        Ok(self.catalog()?.list(image))
    }

    /// One committed volume.
    pub fn volume(&self, id: &VolumeId) -> Result<Volume> {
        Ok(self.catalog()?.get(&self.vg, id)?.clone())
    }

    /// The chain of `image`, base first.
    pub fn chain(&self, image: &ImageId) -> Result<Vec<Volume>> {
        crate::chain::walk(&self.catalog()?, image)
    }

    /// The read-only consistency report.
    pub fn check(&self) -> Result<crate::check::Report> {
        if let Some(f) = &self.file {
            return crate::fsdomain::txn::check(f);
        }
        crate::check::check(self)
    }

    /// Collects orphans (or lists what it would do, with `dry_run`).
    pub fn gc(
        &self,
        dry_run: bool,
        progress: &mut dyn FnMut(usize, usize),
        wipe_progress: &mut WipeProgress<'_>,
    ) -> Result<crate::gc::Report> {
        if let Some(f) = &self.file {
            let report = crate::fsdomain::txn::gc(f, dry_run)?;
            progress(report.orphans.len(), report.orphans.len());
            return Ok(report);
        }
        crate::gc::collect(self, dry_run, progress, wipe_progress)
    }

    /// Creates a base volume or a snapshot of a leaf.
    pub fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        if let Some(f) = &self.file {
            return crate::fsdomain::txn::create(f, req);
        }
        volume::create(self, req)
    }

    /// Holds the domain lock across the creations of bursts (a long-running client's fast
    /// path): [`Burst::create_volume`] is [`Domain::create_volume`] without the report.
    pub fn burst(self, settings: BurstSettings) -> std::sync::Arc<Burst> {
        Burst::start(self, settings)
    }

    /// Removes a leaf volume (its data wiped first where the policy says so).
    pub fn remove_volume(&self, id: &VolumeId, progress: &mut WipeProgress<'_>) -> Result<()> {
        if let Some(f) = &self.file {
            return crate::fsdomain::txn::remove(f, id);
        }
        volume::remove(self, id, progress)
    }

    /// Removes every volume of `image`; how many there were.
    pub fn remove_image(&self, image: &ImageId, progress: &mut WipeProgress<'_>) -> Result<usize> {
        if let Some(f) = &self.file {
            return crate::fsdomain::txn::remove_image(f, image);
        }
        volume::remove_image(self, image, progress)
    }

    /// Grows a volume to `size`; with a generation, under the lease/generation protocol.
    pub fn extend_volume(
        &self,
        id: &VolumeId,
        size: Bytes,
        generation: Option<Generation>,
    ) -> Result<Volume> {
        crate::volume::check_size(size).map_err(Error::InvalidInput)?;
        if let Some(f) = &self.file {
            return match generation {
                Some(g) => crate::fsdomain::op::run(f, id, g, &Work::Extend { size }),
                None => crate::fsdomain::txn::extend(f, id, size),
            };
        }
        match generation {
            Some(g) => operation::run(self, id, g, &Work::Extend { size }),
            None => volume::extend(self, id, size),
        }
    }

    /// Copies `from` into the volume under the protocol, started at `generation`; how far it
    /// has come goes to `progress` while it runs.
    pub fn copy(
        &self,
        id: &VolumeId,
        generation: Generation,
        from: Source,
        progress: ProgressSink,
    ) -> Result<Volume> {
        if let Some(f) = &self.file {
            let work = Work::Copy { from, progress };
            return crate::fsdomain::op::run(f, id, generation, &work);
        }
        operation::run(self, id, generation, &Work::Copy { from, progress })
    }

    /// Changes the description or the legality under the protocol.
    pub fn update(
        &self,
        id: &VolumeId,
        generation: Generation,
        description: Option<String>,
        legality: Option<Legality>,
    ) -> Result<Volume> {
        let work = Work::Update {
            description,
            legality,
        };
        if let Some(f) = &self.file {
            return crate::fsdomain::op::run(f, id, generation, &work);
        }
        operation::run(self, id, generation, &work)
    }

    /// The status of the operation started at `generation`, from shared storage only.
    pub fn status(&self, id: &VolumeId, generation: Generation) -> Result<Status> {
        if let Some(f) = &self.file {
            return crate::fsdomain::op::status(f, id, generation);
        }
        operation::status(self, id, generation)
    }

    /// Moves the generation on from `generation` (recorded as a fence).
    pub fn fence(&self, id: &VolumeId, generation: Generation) -> Result<Volume> {
        if let Some(f) = &self.file {
            return crate::fsdomain::op::fence(f, id, generation);
        }
        operation::fence(self, id, generation)
    }

    /// The chain of `image`, base first, each member with the path it has on this host (its
    /// link, or a file domain's file); refused unless the image is prepared here (a block
    /// domain's links exist only then).
    pub fn prepared_chain(&self, image: &ImageId) -> Result<Vec<(Volume, std::path::PathBuf)>> {
        let chain = self.chain(image)?;
        if !crate::links::prepared(&self.vg, image) {
            return Err(Error::InvalidInput(format!(
                "image {image} is not prepared on this host: run `lvchain image prepare {} \
                 {image}` first (its paths exist only then)",
                self.vg
            )));
        }
        Ok(chain
            .into_iter()
            .map(|v| {
                let path = crate::links::link_path(&self.vg, image, &v.id);
                (v, path)
            })
            .collect())
    }

    /// Where the sanlock lease of `v` (a volume of this domain, as a reader returned it) is,
    /// for a lock manager outside lvchain (libvirt's sanlock plugin holding the leaf of a
    /// running VM); None on a local domain. No scan when one already taught the lock manager.
    pub fn lease_location(&self, v: &Volume) -> Result<Option<crate::image::LeaseLocation>> {
        if let Some(f) = &self.file {
            return f.lease_location(&v.image, &v.id);
        }
        Ok((self.locks()?.kind() == crate::lock::LockKind::Sanlock)
            .then(|| crate::lock::sanlock::volume_location(&self.vg, &v.id, v.slot)))
    }

    /// One committed volume, with the hosts that hold it prepared (`prepared_on`; left out,
    /// with a warning, where the leases cannot be read: no sanlock daemon on this host).
    pub fn volume_info(&self, id: &VolumeId) -> Result<Volume> {
        let cat = self.catalog()?;
        if let Some(f) = &self.file {
            let mut v = cat.get(&self.vg, id)?.clone();
            v.prepared_on = Some(f.shared_holders(&v.image, id)?);
            return Ok(v);
        }
        let mut v = cat.get(&self.vg, id)?.clone();
        let holders = self
            .activate_lease_lvs(&cat.snap)
            .and_then(|()| Ok(self.locks()?.shared_holders(&self.vg, id, v.slot)?));
        v.prepared_on = match holders {
            Ok(hosts) => Some(hosts),
            Err(e) => {
                tracing::warn!(volume = %id, error = %e, "cannot read where the volume is prepared");
                None
            }
        };
        Ok(v)
    }

    /// Activates `image`'s chain on this host and links it; the chain, base first. Nothing
    /// holds it: refused on a domain shared by hosts (sanlock), where images are prepared
    /// through the host agent ([`Domain::prepare_held`]).
    pub fn prepare(&self, image: &ImageId, allow_illegal: bool) -> Result<Vec<Volume>> {
        if let Some(f) = &self.file {
            if f.lock_kind()? == crate::lock::LockKind::Sanlock {
                return Err(crate::error::Error::NeedsAgent {
                    vg: self.vg.to_string(),
                });
            }
            return prepare_file(f, image, allow_illegal);
        }
        crate::image::prepare(self, image, allow_illegal, Holding::None).map(|(c, _)| c)
    }

    /// [`Domain::prepare`] without a holder even on a sanlock domain (recovery work).
    pub fn prepare_without_agent(
        &self,
        image: &ImageId,
        allow_illegal: bool,
    ) -> Result<Vec<Volume>> {
        if let Some(f) = &self.file {
            return prepare_file(f, image, allow_illegal);
        }
        crate::image::prepare(self, image, allow_illegal, Holding::NoneForRecovery).map(|(c, _)| c)
    }

    /// Prepares `image` holding a shared lease on every chain member (the host agent keeps the
    /// returned [`HeldImage`] until teardown); the chain, base first. With `leaf_to_vm`, the
    /// leaf's lease is left to the VM's lock manager (libvirt's sanlock plugin takes it
    /// exclusively while the VM runs, see [`Domain::lease_location`]); refused on a local
    /// domain, which has no such lease.
    pub fn prepare_held(
        &self,
        image: &ImageId,
        allow_illegal: bool,
        leaf_to_vm: bool,
    ) -> Result<(Vec<Volume>, HeldImage)> {
        let result = if let Some(f) = &self.file {
            hold_file(f, image, leaf_to_vm).and_then(|(chain, held)| {
                if leaf_to_vm && f.lock_kind()? != crate::lock::LockKind::Sanlock {
                    return Err(crate::image::no_vm_lease(&self.vg));
                }
                let chain = legal_chain(image, chain, allow_illegal)?;
                // Recorded on this host, so a restarted agent holds the image again.
                f.mark_prepared(image)?;
                Ok((chain, held))
            })
        } else {
            let holding = if leaf_to_vm {
                Holding::LeasesLeafToVm
            } else {
                Holding::Leases
            };
            match crate::image::prepare(self, image, allow_illegal, holding)? {
                (chain, Some(held)) => Ok((chain, held)),
                (_, None) => Err(Error::InvalidInput("prepare held no leases".into())),
            }
        };
        let (chain, held) = result?;
        crate::image::mark_vm_lease(&self.vg, image, leaf_to_vm)?;
        Ok((chain, held))
    }

    /// Takes again the shared leases of `image`, still prepared on this host (its links exist;
    /// on a file domain: this host's record of its prepare).
    pub fn hold_prepared(&self, image: &ImageId) -> Result<HeldImage> {
        if let Some(f) = &self.file {
            if !f.prepared_images()?.contains(image) {
                return Err(crate::error::Error::InvalidInput(format!(
                    "image {image} of {} is not prepared on this host",
                    f.name
                )));
            }
            let leaf_to_vm = crate::links::vm_lease_marker(image).exists();
            return hold_file(f, image, leaf_to_vm).map(|(_, held)| held);
        }
        crate::image::hold_prepared(self, image)
    }

    /// Refreshes the mapping of the volumes of `images` (prepared here) whose LV grew
    /// elsewhere; the volumes refreshed.
    pub fn refresh_prepared(&self, images: &[ImageId]) -> Result<Vec<VolumeId>> {
        if self.file.is_some() {
            // A file has no mapping on the host: its readers see its size at once.
            return Ok(Vec::new());
        }
        crate::image::refresh(self, images)
    }

    /// Removes `image`'s links and deactivates its volumes on this host.
    pub fn teardown(&self, image: &ImageId) -> Result<()> {
        if let Some(f) = &self.file {
            // Nothing is linked or mapped: a file domain's image directory is its link
            // directory. This host's record of the prepare goes.
            crate::chain::walk(&crate::fsdomain::store::scan(f)?.catalog, image)?;
            f.unmark_prepared(image)?;
            return crate::image::mark_vm_lease(&self.vg, image, false);
        }
        crate::image::teardown(self, image)?;
        crate::image::mark_vm_lease(&self.vg, image, false)
    }

    /// The images prepared on this host (linked; on a file domain: recorded at prepare).
    pub fn prepared_images(&self) -> Result<Vec<ImageId>> {
        match &self.file {
            Some(f) => f.prepared_images(),
            None => crate::image::prepared_images(&self.vg),
        }
    }
}

/// The shared lease of every volume of `image`'s chain, and the chain they hold: the chain is
/// read again once the leases are taken, and must be the one held (a snapshot made meanwhile
/// by another host would be a leaf without a lease); tried three times.
fn hold_file(
    f: &crate::fsdomain::FileDomain,
    image: &ImageId,
    leaf_to_vm: bool,
) -> Result<(Vec<Volume>, HeldImage)> {
    let walk = || crate::chain::walk(&crate::fsdomain::store::scan(f)?.catalog, image);
    let ids = |c: &[Volume]| c.iter().map(|v| v.id).collect::<Vec<_>>();
    for _ in 0..3 {
        let chain = walk()?;
        let held = crate::image::held_members(&chain, leaf_to_vm);
        let mut leases = Vec::with_capacity(held.len());
        for v in held {
            leases.push(f.lease_shared(&v.image, &v.id)?);
        }
        let now = walk()?;
        if ids(&now) == ids(&chain) {
            return Ok((now, HeldImage::new(ids(held), leases)));
        }
    }
    Err(crate::error::Error::InvalidInput(format!(
        "the chain of image {image} kept changing while its leases were taken; try again"
    )))
}

/// What a domain's gauges show (the host agent's census): read without the domain lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// What gc would take up: marked volumes (and on a file domain its stray files).
    pub orphans: u64,
    /// Free bytes of the VG, or of the file domain's file system.
    pub free_bytes: u64,
    /// Free metadata slots; None on a file domain (it has no slots: a volume is its files).
    pub free_slots: Option<u64>,
}

impl Domain {
    /// The domain's census: one LVM report of a block domain, one listing of a file domain.
    pub fn census(&self) -> Result<Census> {
        if let Some(f) = &self.file {
            let scan = crate::fsdomain::store::scan(f)?;
            let marked = scan
                .entries
                .iter()
                .filter(|e| e.marker != crate::fsdomain::Marker::None)
                .count();
            return Ok(Census {
                orphans: (marked + scan.strays.len()) as u64,
                free_bytes: scan.catalog.snap.info.vg_free.0,
                free_slots: None,
            });
        }
        let snap = self.scan()?;
        Ok(Census {
            orphans: snap.orphans().count() as u64,
            free_bytes: snap.info.vg_free.0,
            free_slots: Some(u64::from(snap.free_slots())),
        })
    }
}

/// A file domain's image is ready where it lies (its directory is its link directory, the
/// leaf's qcow2 names its parent's bare id there): the chain, checked as on block domains.
fn prepare_file(
    f: &crate::fsdomain::FileDomain,
    image: &ImageId,
    allow_illegal: bool,
) -> Result<Vec<Volume>> {
    let chain = crate::chain::walk(&crate::fsdomain::store::scan(f)?.catalog, image)?;
    legal_chain(image, chain, allow_illegal)
}

/// `chain`, refused when a member is illegal unless `allow_illegal`.
fn legal_chain(image: &ImageId, chain: Vec<Volume>, allow_illegal: bool) -> Result<Vec<Volume>> {
    match chain.iter().find(|v| v.legality != Legality::Legal) {
        Some(v) if !allow_illegal => Err(crate::error::Error::IllegalMember {
            image: *image,
            id: v.id,
            generation: v.generation,
        }),
        _ => Ok(chain),
    }
}
