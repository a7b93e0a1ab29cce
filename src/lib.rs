//! lvchain: transactional VM disk-image volumes and qcow2 chains on a shared LVM volume group.
//!
//! Layers, bottom up: [`system`] (programs, the storage seam and LVM, device I/O, qemu-img),
//! [`format`] (tags and metadata slots: the on-disk contract), [`engine`] (domains, volumes,
//! chains, gc, check, operations, lock managers; its facade is [`engine::domain::Domain`]), and
//! the clients [`cli`] and [`agent`] (the host agent: the API on a unix socket). The modules
//! are also reachable at the crate root (`lvchain::lvm`, ...).

pub mod agent;
pub mod cli;
pub mod engine;
pub mod format;
pub mod system;

pub use engine::{
    chain, check, crash, domain, error, fsdomain, gc, image, lock, operation, volume,
};
pub use format::{ids, metadata, tags};
pub use system::{directio, exec, links, lvm, progress, qemu, units, wipe};
