//! lvchain: transactional VM disk-image volumes and qcow2 chains on a shared LVM volume group.
//!
//! Layers, bottom up: [`exec`] runs external programs; [`lvm`] is the typed LVM command layer.

pub mod directio;
pub mod exec;
pub mod lvm;
pub mod tags;
pub mod units;
