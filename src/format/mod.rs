//! The on-disk format, a contract between hosts and versions: LV and VG tags ([`tags`]) and
//! the metadata slot codec and store ([`metadata`]). Names and encodes; never decides when
//! anything changes.

pub mod ids;
pub mod metadata;
pub mod tags;
