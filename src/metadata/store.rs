//! Slot I/O on the metadata LV: one O_DIRECT read or write per slot, or one read of all slots.

use super::codec::{decode, encode, MetaError, VolumeMeta};
use crate::directio::{AlignedBuf, DirectFile};
use std::path::PathBuf;

/// The slots of one domain's metadata LV.
#[derive(Debug, Clone)]
pub struct SlotStore {
    pub path: PathBuf,
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
        let f = DirectFile::open(&self.path, false).map_err(|e| self.io(e))?;
        let buf = f.read_at(off, self.slot_size).map_err(|e| self.io(e))?;
        decode(slot, buf.as_slice())
    }

    /// Reads every slot with one read; entry `n` is slot `n`.
    pub fn read_all(&self) -> Result<Vec<Result<VolumeMeta, MetaError>>, MetaError> {
        let f = DirectFile::open(&self.path, false).map_err(|e| self.io(e))?;
        let buf = f
            .read_at(0, self.slot_size * self.slots as usize)
            .map_err(|e| self.io(e))?;
        Ok(buf
            .as_slice()
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
        let mut buf = AlignedBuf::zeroed(self.slot_size).map_err(|e| self.io(e))?;
        buf.as_mut_slice().copy_from_slice(bytes);
        let f = DirectFile::open(&self.path, true).map_err(|e| self.io(e))?;
        f.write_at(off, &buf).map_err(|e| self.io(e))
    }

    /// Zeroes the whole area (a new domain must not show stale slots of old data).
    pub fn wipe(&self) -> Result<(), MetaError> {
        let total = self.slot_size * self.slots as usize;
        let chunk = (1 << 20).min(total);
        let buf = AlignedBuf::zeroed(chunk).map_err(|e| self.io(e))?;
        let f = DirectFile::open(&self.path, true).map_err(|e| self.io(e))?;
        let mut off = 0;
        while off < total {
            if total - off < chunk {
                let tail = AlignedBuf::zeroed(total - off).map_err(|e| self.io(e))?;
                f.write_at(off as u64, &tail).map_err(|e| self.io(e))?;
                break;
            }
            f.write_at(off as u64, &buf).map_err(|e| self.io(e))?;
            off += chunk;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::codec::{Format, Legality, Role};
    use super::*;
    use uuid::Uuid;

    #[test]
    fn slots_on_a_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("md");
        std::fs::File::create(&path)?.set_len(512 * 8)?;
        let store = SlotStore {
            path,
            slot_size: 512,
            slots: 8,
            version: super::super::codec::SLOT_VERSION,
        };
        let m = VolumeMeta {
            id: Uuid::new_v4(),
            image: Uuid::new_v4(),
            parent: None,
            format: Format::Raw,
            capacity: 4096,
            role: Role::Leaf,
            legality: Legality::Legal,
            generation: 0,
            ctime: 1,
            description: String::new(),
            fence: super::super::codec::FenceRecord::NONE,
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
