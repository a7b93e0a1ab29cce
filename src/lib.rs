//! lvchain: transactional VM disk-image volumes and qcow2 chains on a shared LVM volume group.
//!
//! Layers, bottom up: [`exec`] runs external programs; [`lvm`] is the typed LVM command layer.

pub mod chain;
pub mod check;
pub mod cli;
pub mod crash;
pub mod directio;
pub mod domain;
pub mod error;
pub mod exec;
pub mod gc;
pub mod image;
pub mod links;
pub mod lock;
pub mod lvm;
pub mod metadata;
pub mod operation;
pub mod qemu;
pub mod tags;
pub mod units;
pub mod volume;
pub mod wipe;
