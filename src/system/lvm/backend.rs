//! The storage seam: everything the engine does to a VG and to its LVs' devices, as one trait.
//!
//! [`Backend`] has two implementations: [`super::Lvm`] runs the real lvm commands and does
//! O_DIRECT I/O and qemu-img on the real devices; [`super::sim::SimLvm`] keeps a VG in memory
//! with the same semantics (atomic tag changes, unique names, sizes rounded to extents) and LV
//! contents in sparse files, and can fail or "crash" at any step. The engine (domain, volume,
//! gc, operations) reaches LVM and LV data only through this trait; nothing here decides
//! policy (names, tags, when to change what).

use super::{Activation, LvRow, LvmError, NewLv, PvRow, VgRow};
use crate::metadata::Format;
use crate::qemu::QemuError;
use crate::units::Bytes;
use std::path::{Path, PathBuf};

/// LVM commands, LV device I/O and the qemu-img work done on LV devices.
pub trait Backend: Send + Sync {
    // One report per call: the engine reads a domain with one `lvs`.
    fn lvs(&self, vg: &str) -> Result<Vec<LvRow>, LvmError>;
    fn vgs(&self, vg: &str) -> Result<VgRow, LvmError>;
    fn pvs(&self, vg: &str) -> Result<Vec<PvRow>, LvmError>;
    /// A stamp of the VG's committed metadata read from `pvs` (its PVs) without an lvm
    /// command: equal stamps mean no metadata change in between ([`super::label`]).
    fn metadata_stamp(&self, vg: &str, pvs: &[PathBuf]) -> std::io::Result<Vec<u8>>;

    // Metadata-changing commands: each is one VG metadata commit.
    fn pvcreate(&self, devices: &[PathBuf], metadata_size: Bytes) -> Result<(), LvmError>;
    fn vgcreate(
        &self,
        vg: &str,
        pvs: &[PathBuf],
        tags: &[String],
        metadata_size: Bytes,
    ) -> Result<(), LvmError>;
    fn vgremove(&self, vg: &str, force: bool) -> Result<(), LvmError>;
    fn vgchange_tags(&self, vg: &str, del: &[String], add: &[String]) -> Result<(), LvmError>;
    fn lvcreate(&self, vg: &str, lv: &NewLv<'_>) -> Result<(), LvmError>;
    fn lvchange_tags(
        &self,
        vg: &str,
        lv: &str,
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError>;
    /// Several LVs (`vg/lv`) in one command; lvm commits each LV on its own.
    fn lvchange_tags_many(
        &self,
        lvs: &[String],
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError>;
    fn lvextend(&self, vg: &str, lv: &str, size: Bytes) -> Result<(), LvmError>;
    fn lvremove(&self, lvs: &[String]) -> Result<(), LvmError>;

    /// Activation on this host (no metadata change).
    fn lvchange_activation(&self, lvs: &[String], what: Activation) -> Result<(), LvmError>;
    /// Removes a device-mapper mapping named after `vg/lv` that lvm does not know (left by a
    /// failed deactivation); whether one was removed.
    fn remove_stale_mapping(&self, vg: &str, lv: &str) -> bool;

    /// Where active LVs appear: `<dev_dir>/<vg>/<lv>` (`/dev` on a real host).
    fn dev_dir(&self) -> PathBuf;
    /// Reads `len` bytes at `offset` of a device (both aligned to its logical block size).
    fn read_at(&self, device: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
    /// Writes `data` at `offset` of a device in one write (both aligned as for `read_at`).
    fn write_at(&self, device: &Path, offset: u64, data: &[u8]) -> std::io::Result<()>;
    /// The logical block size of a device (a PV, an LV).
    fn logical_block_size(&self, device: &Path) -> std::io::Result<u32>;

    /// Zeroes the whole device (before its extents are freed); `progress(done, total)`.
    fn zero_device(
        &self,
        device: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::wipe::Wiped, crate::wipe::WipeError>;

    /// A qcow2 header for `capacity` bytes, backed by `(file, format)`, made in memory.
    fn qcow2_header(
        &self,
        capacity: u64,
        backing: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, QemuError>;
    /// Grows the virtual size of the qcow2 image on `device`.
    fn resize_qcow2(&self, device: &Path, capacity: u64) -> Result<(), QemuError>;
    /// Copies the image `source` (a qemu-img `json:` spec) into `device` as `format`.
    fn convert(
        &self,
        source: &str,
        device: &Path,
        format: Format,
        progress: &crate::progress::ProgressSink,
    ) -> Result<(), QemuError>;
}

/// The real host: lvm commands, O_DIRECT I/O on `/dev/<vg>/<lv>`, qemu-img.
impl Backend for super::Lvm {
    fn lvs(&self, vg: &str) -> Result<Vec<LvRow>, LvmError> {
        super::Lvm::lvs(self, vg)
    }
    fn vgs(&self, vg: &str) -> Result<VgRow, LvmError> {
        super::Lvm::vgs(self, vg)
    }
    fn pvs(&self, vg: &str) -> Result<Vec<PvRow>, LvmError> {
        super::Lvm::pvs(self, vg)
    }

    fn metadata_stamp(&self, _vg: &str, pvs: &[PathBuf]) -> std::io::Result<Vec<u8>> {
        let start = std::time::Instant::now();
        let stamp =
            super::label::metadata_stamp(pvs, |pv, offset, len| self.read_at(pv, offset, len));
        tracing::debug!(
            pvs = pvs.len(),
            ok = stamp.is_ok(),
            elapsed_us = start.elapsed().as_micros() as u64,
            "read the VG's metadata-area headers"
        );
        stamp
    }
    fn pvcreate(&self, devices: &[PathBuf], metadata_size: Bytes) -> Result<(), LvmError> {
        super::Lvm::pvcreate(self, devices, metadata_size)
    }
    fn vgcreate(
        &self,
        vg: &str,
        pvs: &[PathBuf],
        tags: &[String],
        metadata_size: Bytes,
    ) -> Result<(), LvmError> {
        super::Lvm::vgcreate(self, vg, pvs, tags, metadata_size)
    }
    fn vgremove(&self, vg: &str, force: bool) -> Result<(), LvmError> {
        super::Lvm::vgremove(self, vg, force)
    }
    fn vgchange_tags(&self, vg: &str, del: &[String], add: &[String]) -> Result<(), LvmError> {
        super::Lvm::vgchange_tags(self, vg, del, add)
    }
    fn lvcreate(&self, vg: &str, lv: &NewLv<'_>) -> Result<(), LvmError> {
        super::Lvm::lvcreate(self, vg, lv)
    }
    fn lvchange_tags(
        &self,
        vg: &str,
        lv: &str,
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError> {
        super::Lvm::lvchange_tags(self, vg, lv, del, add)
    }
    fn lvchange_tags_many(
        &self,
        lvs: &[String],
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError> {
        super::Lvm::lvchange_tags_many(self, lvs, del, add)
    }
    fn lvextend(&self, vg: &str, lv: &str, size: Bytes) -> Result<(), LvmError> {
        super::Lvm::lvextend(self, vg, lv, size)
    }
    fn lvremove(&self, lvs: &[String]) -> Result<(), LvmError> {
        super::Lvm::lvremove(self, lvs)
    }
    fn lvchange_activation(&self, lvs: &[String], what: Activation) -> Result<(), LvmError> {
        super::Lvm::lvchange_activation(self, lvs, what)
    }

    fn remove_stale_mapping(&self, vg: &str, lv: &str) -> bool {
        let name = format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"));
        if !mapping_exists(&name) {
            return false;
        }
        let r = crate::exec::Cmd::new("/sbin/dmsetup", self.config.timeout)
            .args(["remove", "--retry", &name])
            .run();
        let removed = r.as_ref().is_ok_and(|f| f.success());
        tracing::warn!(mapping = %name, removed, result = ?r.map(|f| (f.code, f.stderr)), "stale device-mapper mapping");
        removed
    }

    fn dev_dir(&self) -> PathBuf {
        PathBuf::from("/dev")
    }

    fn read_at(&self, device: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let f = crate::directio::DirectFile::open(device, false)?;
        Ok(f.read_at(offset, len)?.as_slice().to_vec())
    }

    fn write_at(&self, device: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let mut buf = crate::directio::AlignedBuf::zeroed(data.len())?;
        buf.as_mut_slice().copy_from_slice(data);
        crate::directio::DirectFile::open(device, true)?.write_at(offset, &buf)
    }

    fn logical_block_size(&self, device: &Path) -> std::io::Result<u32> {
        let f = crate::directio::DirectFile::open(device, false)?;
        Ok(f.logical_block_size()? as u32)
    }

    fn zero_device(
        &self,
        device: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::wipe::Wiped, crate::wipe::WipeError> {
        crate::wipe::zero_device(device, progress)
    }

    fn qcow2_header(
        &self,
        capacity: u64,
        backing: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, QemuError> {
        crate::qemu::qcow2_header(capacity, backing)
    }

    fn resize_qcow2(&self, device: &Path, capacity: u64) -> Result<(), QemuError> {
        crate::qemu::resize_qcow2(device, capacity)
    }

    fn convert(
        &self,
        source: &str,
        device: &Path,
        format: Format,
        progress: &crate::progress::ProgressSink,
    ) -> Result<(), QemuError> {
        crate::qemu::convert(source, device, format, progress)
    }
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
