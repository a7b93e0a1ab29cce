//! Volume leases: who may change a volume's data, readable by anyone without the holder's help.
//!
//! [`LeaseManager`] is implemented by [`local::LocalLeases`] (open-file-description locks, one
//! host) and by [`cluster::SanlockLeases`] (paxos leases in the domain's `leases` LV, many
//! hosts; the binding itself is [`sanlock`]). A lease belongs
//! to the process that acquired it and is released when that process dies, so a reader can
//! tell a running operation (lease held by a live holder) from a dead one (lease free).

pub mod cluster;
pub mod local;
pub mod sanlock;

use crate::domain::format::{LEASES_RESERVED, LEASE_SIZE};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the lease of volume {volume} is held by {holder}")]
    Held { volume: Uuid, holder: String },
    #[error("this host has not joined the lockspace of domain {vg}; run `lvchain host join {vg} --host-id N`")]
    NoLockspace { vg: String },
    #[error("the sanlock daemon does not answer on this host ({detail}); start it, then `lvchain host join`")]
    NoDaemon { detail: String },
    #[error("lease I/O on {what}: {reason}")]
    Io { what: String, reason: String },
}

/// Who holds a lease, as read from shared storage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// sanlock host id (0 for the local lease manager).
    pub host_id: u64,
    /// Whether the holder is alive (its host renews its lockspace, or its process exists).
    pub alive: bool,
}

/// A held lease; dropping it releases the lease.
pub trait LeaseGuard {
    /// Lets the lease's descriptor pass into every child started from now on while it is
    /// held (a data writer such as qemu-img): the lease is then free only once this process
    /// and those children are all gone, never while a writer it started still runs.
    fn inherit_into_children(&self) -> Result<(), LeaseError>;
}

/// Where a volume's lease lives in the leases LV: after the reserved area, 1 MiB per slot.
pub fn lease_offset(slot: u32) -> u64 {
    LEASES_RESERVED + LEASE_SIZE * u64::from(slot)
}

pub trait LeaseManager {
    /// Takes the volume's lease for this process, or fails at once when someone holds it.
    fn acquire(
        &self,
        vg: &str,
        volume: &Uuid,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError>;
    /// Reads who holds the lease, without taking it.
    fn holder(&self, vg: &str, volume: &Uuid, slot: u32) -> Result<Option<Holder>, LeaseError>;
    /// Prepares the lease area of a new volume (sanlock writes its paxos lease).
    fn init(&self, _vg: &str, _volume: &Uuid, _slot: u32) -> Result<(), LeaseError> {
        Ok(())
    }
}
