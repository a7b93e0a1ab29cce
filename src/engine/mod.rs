//! The engine: domains and their lock managers, volumes and their transactions, chains,
//! images, the collector, the consistency check and the lease/generation protocol. Clients
//! reach it through the [`domain::Domain`] handle (its facade); it reaches storage only through
//! the system layer's seam ([`crate::lvm::Backend`]).

pub mod chain;
pub mod check;
pub mod crash;
pub mod domain;
pub mod error;
pub mod fsdomain;
pub mod gc;
pub mod image;
pub mod lock;
pub mod operation;
pub mod volume;
