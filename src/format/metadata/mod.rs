//! Volume metadata: one slot per volume in the domain's `metadata` LV.
//!
//! A slot is one logical block (512 or 4096 bytes, recorded in the VG tag `LVC_SLOT_SIZE`) at
//! offset `slot * slot_size`, written with ONE O_DIRECT write so an update is atomic. Its text is
//! `KEY=VALUE` lines ending with `CHECKSUM=<crc32>` and zero padding; a torn, foreign or stale
//! slot fails to decode. This module owns the codec and the slot I/O; it never decides which
//! slot a volume gets (the volume layer does, under the domain lock).

mod codec;
mod store;

pub use codec::{
    check_description, decode, encode, FenceRecord, Format, Legality, MetaError, Role, VolumeMeta,
    MAX_DESCRIPTION, SLOT_VERSION,
};
pub use store::SlotStore;
