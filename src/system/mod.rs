//! The system layer: everything lvchain does to the host and its devices, and nothing about
//! volumes. Starting programs ([`exec`], the only place that does), the storage seam and the
//! LVM command layer ([`lvm`]: real and simulated), O_DIRECT I/O ([`directio`]), zeroing
//! devices ([`wipe`]), qemu-img ([`qemu`]), the progress of a copy
//! ([`progress`]), link directories ([`links`]) and sizes ([`units`]).

pub mod directio;
pub mod exec;
pub mod links;
pub mod lvm;
pub mod progress;
pub mod qemu;
pub mod units;
pub mod wipe;
