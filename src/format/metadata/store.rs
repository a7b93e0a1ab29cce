//! Slot I/O on the metadata LV: one direct read or write per slot, or one read of all slots,
//! through the storage seam ([`crate::lvm::Backend`]: O_DIRECT on a real host).

use super::codec::{decode, encode, MetaError, VolumeMeta};
use crate::lvm::Backend;
use std::path::PathBuf;
use std::sync::Arc;

/// The slots of one domain's metadata LV.
#[derive(Clone)]
pub struct SlotStore {
    pub path: PathBuf,
    pub io: Arc<dyn Backend>,
    pub slot_size: usize,
    pub slots: u32,
    /// The slot version written (the domain format's: 1 or 2); both are read.
    pub version: u32,
}

impl SlotStore {
    fn io(&self, e: std::io::Error) -> MetaError {
        MetaError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    fn offset(&self, slot: u32) -> Result<u64, MetaError> {
        if slot >= self.slots {
            return Err(MetaError::OutOfRange {
                slot,
                max: self.slots,
            });
        }
        Ok(u64::from(slot) * self.slot_size as u64)
    }

    pub fn read(&self, slot: u32) -> Result<VolumeMeta, MetaError> {
        let off = self.offset(slot)?;
        let buf = self
            .io
            .read_at(&self.path, off, self.slot_size)
            .map_err(|e| self.io(e))?;
        decode(slot, &buf)
    }

    /// Reads every slot with one read; entry `n` is slot `n`.
    pub fn read_all(&self) -> Result<Vec<Result<VolumeMeta, MetaError>>, MetaError> {
        let buf = self
            .io
            .read_at(&self.path, 0, self.slot_size * self.slots as usize)
            .map_err(|e| self.io(e))?;
        Ok(buf
            .chunks(self.slot_size)
            .enumerate()
            .map(|(n, b)| decode(n as u32, b))
            .collect())
    }

    /// Writes one slot with one direct write.
    pub fn write(&self, slot: u32, meta: &VolumeMeta) -> Result<(), MetaError> {
        let bytes = encode(meta, self.slot_size, self.version)?;
        self.write_raw(slot, &bytes)
    }

    /// Zeroes one slot.
    pub fn clear(&self, slot: u32) -> Result<(), MetaError> {
        self.write_raw(slot, &vec![0u8; self.slot_size])
    }

    fn write_raw(&self, slot: u32, bytes: &[u8]) -> Result<(), MetaError> {
        let off = self.offset(slot)?;
        self.io
            .write_at(&self.path, off, bytes)
            .map_err(|e| self.io(e))
    }

    /// Zeroes the whole area (a new domain must not show stale slots of old data).
    pub fn wipe(&self) -> Result<(), MetaError> {
        let total = self.slot_size * self.slots as usize;
        let chunk = (1 << 20).min(total);
        let zeros = vec![0u8; chunk];
        let mut off = 0;
        while off < total {
            let len = chunk.min(total - off);
            self.io
                .write_at(&self.path, off as u64, &zeros[..len])
                .map_err(|e| self.io(e))?;
            off += len;
        }
        Ok(())
    }
}

impl std::fmt::Debug for SlotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotStore")
            .field("path", &self.path)
            .field("slot_size", &self.slot_size)
            .field("slots", &self.slots)
            .field("version", &self.version)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{Format, Legality, Role};
    use super::*;
    use crate::format::ids::{ImageId, VolumeId};

    #[test]
    fn slots_on_a_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("md");
        std::fs::File::create(&path)?.set_len(512 * 8)?;
        let store = SlotStore {
            path,
            io: Arc::new(crate::lvm::sim::SimLvm::new(&dir.path().join("sim"))?),
            slot_size: 512,
            slots: 8,
            version: super::super::codec::SLOT_VERSION,
        };
        let m = VolumeMeta {
            id: VolumeId::random(),
            image: ImageId::random(),
            parent: None,
            format: Format::Raw,
            capacity: crate::units::Bytes(4096),
            role: Role::Leaf,
            legality: Legality::Legal,
            generation: crate::format::ids::Generation::default(),
            ctime: 1,
            description: String::new(),
            fence: super::super::codec::FenceRecord::NONE,
            partial: false,
        };
        store.write(5, &m)?;
        assert_eq!(store.read(5)?, m);
        let all = store.read_all()?;
        assert_eq!(all.len(), 8);
        assert_eq!(all[5].as_ref().ok(), Some(&m));
        assert!(matches!(all[4], Err(MetaError::Empty { slot: 4 })));
        store.clear(5)?;
        assert!(matches!(store.read(5), Err(MetaError::Empty { .. })));
        assert!(matches!(store.read(8), Err(MetaError::OutOfRange { .. })));
        Ok(())
    }
}
