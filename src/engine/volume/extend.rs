//! Growing a volume: the LV (rounded to extents), the qcow2 virtual size, then the capacity in
//! its metadata. Each step is idempotent, so a retry after a failure finishes the job.

use super::{Catalog, Volume};
use crate::crash::{self, CrashPoint};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::ids::VolumeId;
use crate::lock::LeaseError;
use crate::lvm::Activation;
use crate::metadata::Format;
use crate::qemu;
use crate::units::Bytes;

/// Grows volume `id` to `size` bytes of capacity (takes the domain lock and the volume lease;
/// shared when the volume is prepared somewhere, where only a raw volume may grow).
pub(crate) fn extend(domain: &Domain, id: &VolumeId, size: Bytes) -> Result<Volume> {
    let _guard = domain.lock()?;
    let cat = Catalog::load_for_change(domain)?;
    let mut vol = cat.get(&domain.vg, id)?.clone();
    let store = domain.slots(&cat.snap)?;
    // An image prepared on some host holds the lease shared: its LV may grow (the holders
    // refresh their mapping), but its qcow2 header belongs to the qemu that has it open. The
    // shared lease keeps operations out as the exclusive one would.
    let _lease = match domain.lease(id, vol.slot) {
        Ok(lease) => lease,
        Err(Error::Lease(LeaseError::Prepared { hosts, .. })) => {
            if vol.format == Format::Qcow2 && size > vol.capacity {
                return Err(Error::ResizeInUse { id: *id, hosts });
            }
            tracing::info!(volume = %id, hosts = ?hosts, "extending a volume prepared elsewhere: its holders refresh their mapping");
            domain.lease_shared(id, vol.slot)?
        }
        Err(e) => return Err(e),
    };
    vol.lv_size = grow_storage(domain, &cat, &vol, size)?;
    let mut meta = store.read(vol.slot)?;
    meta.capacity = size;
    store.write(vol.slot, &meta)?;
    crash::point(CrashPoint::ExtendAfterMetadata);
    vol.capacity = size;
    Ok(vol)
}

/// Grows the LV and the qcow2 virtual size (not the metadata); returns the LV size.
/// The caller holds the domain lock and the volume's lease.
pub(crate) fn grow_storage(
    domain: &Domain,
    cat: &Catalog,
    vol: &Volume,
    size: Bytes,
) -> Result<Bytes> {
    let id = &vol.id;
    if size < vol.capacity {
        return Err(Error::InvalidInput(format!(
            "volumes only grow: {} is smaller than the capacity {}",
            size.0, vol.capacity.0
        )));
    }
    let want_lv = match vol.format {
        Format::Raw => size,
        Format::Qcow2 => Bytes(qemu::qcow2_lv_size(size.0)),
    }
    .round_up_to_extents(cat.snap.info.extent_size);
    let name = id.to_string();
    if want_lv > vol.lv_size {
        domain.lvm.lvextend(&domain.vg, &name, want_lv)?;
    }
    crash::point(CrashPoint::ExtendAfterLvextend);
    if vol.format == Format::Qcow2 && size > vol.capacity {
        let was_active = vol.active;
        if !was_active {
            domain
                .lvm
                .lvchange_activation(&[domain.lv_path(&name)], Activation::Activate)?;
        }
        let r = domain.lvm.resize_qcow2(&domain.volume_device(id), size.0);
        if !was_active {
            domain
                .lvm
                .lvchange_activation(&[domain.lv_path(&name)], Activation::Deactivate)?;
        }
        r?;
    }
    crash::point(CrashPoint::ExtendAfterResize);
    Ok(want_lv.max(vol.lv_size))
}
