//! Domains shared by several hosts: the domain lock and the volume leases as sanlock paxos
//! leases, and this host's membership (host id) in the domain's lockspace.
//!
//! Layout (format version 1): the lockspace (one delta lease per host id) at offset 0 of the
//! `ids` LV, named after the VG; the domain lock `lvchain_domain` at 1 MiB of the `leases` LV;
//! volume leases at [`super::lease_offset`] of their slot, named after the volume id. A host
//! that joined records its host id in `/run/lvchain/<VG>/host-id` (gone at reboot, like the
//! lockspace membership itself).

use super::sanlock::{
    self, AcquireOptions, LeaveMode, Lockspace, Registration, Resource, SanlockError,
};
use super::{lease_offset, Holder, LeaseError, LeaseGuard, LeaseManager};
use crate::lock::{DomainGuard, LocalLock, LockError, LockManager};
use crate::units::MIB;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// sanlock I/O timeout of lvchain lockspaces (seconds).
pub const IO_TIMEOUT: u32 = 10;
pub const DOMAIN_LOCK_NAME: &str = "lvchain_domain";
pub const DOMAIN_LOCK_OFFSET: u64 = MIB;

fn dev(vg: &str, lv: &str) -> PathBuf {
    PathBuf::from("/dev").join(vg).join(lv)
}

pub fn lockspace(vg: &str, host_id: u64) -> Lockspace {
    Lockspace {
        name: vg.to_string(),
        host_id,
        path: dev(vg, crate::domain::IDS_LV),
        offset: 0,
    }
}

pub fn domain_resource(vg: &str) -> Resource {
    Resource {
        lockspace: vg.to_string(),
        name: DOMAIN_LOCK_NAME.into(),
        path: dev(vg, crate::domain::LEASES_LV),
        offset: DOMAIN_LOCK_OFFSET,
    }
}

pub fn volume_resource(vg: &str, volume: &Uuid, slot: u32) -> Resource {
    Resource {
        lockspace: vg.to_string(),
        name: volume.to_string(),
        path: dev(vg, crate::domain::LEASES_LV),
        offset: lease_offset(slot),
    }
}

fn host_id_file(vg: &str) -> PathBuf {
    crate::links::run_dir().join(vg).join("host-id")
}

/// The host id this host joined `vg`'s lockspace with, if it did.
pub fn joined_host_id(vg: &str) -> Option<u64> {
    std::fs::read_to_string(host_id_file(vg))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn lease_error(vg: &str, volume: &Uuid, e: SanlockError) -> LeaseError {
    if e.is_held() {
        return LeaseError::Held {
            volume: *volume,
            holder: "another process or host".into(),
        };
    }
    match e {
        SanlockError::LockspaceNotJoined { .. } => LeaseError::NoLockspace { vg: vg.to_string() },
        e @ SanlockError::DaemonUnavailable { .. } => LeaseError::NoDaemon {
            detail: e.to_string(),
        },
        other => LeaseError::Io {
            what: format!("sanlock lease of {volume}"),
            reason: other.to_string(),
        },
    }
}

/// Writes the lockspace and the domain lock of a new domain (no daemon needed).
pub fn format_domain(vg: &str) -> Result<(), SanlockError> {
    sanlock::format_lockspace(&lockspace(vg, 0), IO_TIMEOUT)?;
    sanlock::format_resource(&domain_resource(vg))
}

/// Joins `vg`'s lockspace as `host_id` (the special LVs must be active); records the id.
pub fn join(vg: &str, host_id: u64) -> Result<bool, SanlockError> {
    // One host id per host and lockspace: say so plainly (sanlock's answer is EINVAL).
    if let Some(id) = joined_host_id(vg).filter(|&id| id != host_id) {
        return Err(SanlockError::Sanlock {
            op: sanlock::Op::AddLockspace,
            rv: -libc::EEXIST,
            detail: format!(
                "this host has joined {vg} as host {id}; run `lvchain host leave {vg}` before \
                 joining as host {host_id}"
            ),
        });
    }
    let joined = match sanlock::join_lockspace(&lockspace(vg, host_id), IO_TIMEOUT) {
        Ok(()) => true,
        Err(SanlockError::LockspaceAlreadyJoined { .. }) => false,
        Err(e) => return Err(e),
    };
    let file = host_id_file(vg);
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&file, format!("{host_id}\n")).map_err(|e| SanlockError::Sanlock {
        op: sanlock::Op::AddLockspace,
        rv: 0,
        detail: format!("cannot record the host id in {}: {e}", file.display()),
    })?;
    Ok(joined)
}

/// Hosts other than this one that this host's daemon sees in `vg`'s lockspace and that are
/// not known to be gone (live, failing, or joined too recently to judge).
pub fn other_joined_hosts(vg: &str) -> Result<Vec<u64>, SanlockError> {
    let me = joined_host_id(vg).unwrap_or(0);
    Ok(sanlock::get_hosts(vg, 0)?
        .into_iter()
        .filter(|h| h.host_id != me)
        .filter(|h| !matches!(h.state, sanlock::HostState::Free | sanlock::HostState::Dead))
        .map(|h| h.host_id)
        .collect())
}

/// Leaves `vg`'s lockspace (refused while this host holds leases in it).
pub fn leave(vg: &str) -> Result<u64, SanlockError> {
    let host_id = joined_host_id(vg).ok_or_else(|| SanlockError::LockspaceNotJoined {
        op: sanlock::Op::RemLockspace,
        lockspace: vg.to_string(),
    })?;
    sanlock::leave_lockspace(&lockspace(vg, host_id), LeaveMode::IfUnused)?;
    let _ = std::fs::remove_file(host_id_file(vg));
    Ok(host_id)
}

struct SanlockGuard {
    reg: Registration,
    res: Resource,
}
impl LeaseGuard for SanlockGuard {
    fn inherit_into_children(&self) -> Result<(), LeaseError> {
        // sanlock releases a registration's leases when its socket closes in every process.
        self.reg
            .inherit_into_children()
            .map_err(|e| LeaseError::Io {
                what: format!("sanlock registration of {}", self.res.name),
                reason: e.to_string(),
            })
    }
}
impl DomainGuard for SanlockGuard {}
impl Drop for SanlockGuard {
    fn drop(&mut self) {
        if let Err(e) = self.reg.release(&self.res) {
            tracing::warn!(resource = %self.res.name, error = %e, "sanlock release failed; closing the registration frees it");
        }
    }
}

/// Volume leases as sanlock paxos leases.
#[derive(Debug, Clone, Default)]
pub struct SanlockLeases;

impl LeaseManager for SanlockLeases {
    fn acquire(
        &self,
        vg: &str,
        volume: &Uuid,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        let res = volume_resource(vg, volume, slot);
        let mut reg = Registration::register().map_err(|e| lease_error(vg, volume, e))?;
        reg.acquire(&res, AcquireOptions { no_wait: true })
            .map_err(|e| lease_error(vg, volume, e))?;
        Ok(Box::new(SanlockGuard { reg, res }))
    }

    fn holder(&self, vg: &str, volume: &Uuid, slot: u32) -> Result<Option<Holder>, LeaseError> {
        let res = volume_resource(vg, volume, slot);
        // This host's daemon judges other hosts' liveness; without it, read the disk.
        let running = match sanlock::owner_status(&res) {
            Ok(st) => owner_of(&st).map(|id| (id, st.is_running())),
            Err(_) => {
                let host_id = joined_host_id(vg).unwrap_or(0);
                let st =
                    sanlock::probe_owner(&res, &lockspace(vg, host_id), Duration::from_secs(25))
                        .map_err(|e| lease_error(vg, volume, e))?;
                disk_owner(&st).map(|id| (id, st.is_running()))
            }
        };
        Ok(match running {
            None | Some((_, Some(false))) => None,
            Some((host_id, Some(true))) => Some(Holder {
                host_id,
                alive: true,
            }),
            Some((host_id, None)) => Some(Holder {
                host_id,
                alive: false,
            }),
        })
    }

    fn init(&self, vg: &str, volume: &Uuid, slot: u32) -> Result<(), LeaseError> {
        sanlock::format_resource(&volume_resource(vg, volume, slot))
            .map_err(|e| lease_error(vg, volume, e))
    }
}

fn owner_of(st: &sanlock::OwnerStatus) -> Option<u64> {
    match st {
        sanlock::OwnerStatus::Free { .. } => None,
        sanlock::OwnerStatus::Held { owner, .. } => Some(owner.host_id),
    }
}

fn disk_owner(st: &sanlock::DiskOwnerStatus) -> Option<u64> {
    use sanlock::DiskOwnerStatus::*;
    match st {
        Free { .. } => None,
        HeldLive { owner_id, .. } | HeldUnrenewed { owner_id, .. } => Some(*owner_id),
        HeldStale { .. } => None,
    }
}

/// The domain lock across hosts: this host's local lock, then the sanlock domain lease.
#[derive(Debug, Clone, Default)]
pub struct SanlockLock {
    pub local: LocalLock,
}

struct BothGuards {
    _sanlock: SanlockGuard,
    _local: Box<dyn DomainGuard>,
}
impl DomainGuard for BothGuards {}

impl LockManager for SanlockLock {
    fn lock_domain(&self, vg: &str) -> Result<Box<dyn DomainGuard>, LockError> {
        let local = self.local.lock_domain(vg)?;
        let res = domain_resource(vg);
        let start = Instant::now();
        let failed = |detail: String| LockError::Cluster {
            vg: vg.to_string(),
            detail,
        };
        loop {
            let mut reg = Registration::register().map_err(|e| failed(e.to_string()))?;
            match reg.acquire(&res, AcquireOptions { no_wait: true }) {
                Ok(()) => {
                    reg.inherit_into_children()
                        .map_err(|e| failed(e.to_string()))?;
                    return Ok(Box::new(BothGuards {
                        _sanlock: SanlockGuard { reg, res },
                        _local: local,
                    }));
                }
                Err(e) if e.is_held() && start.elapsed() < self.local.timeout => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) if e.is_held() => {
                    return Err(LockError::Busy {
                        vg: vg.to_string(),
                        waited: start.elapsed(),
                    })
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    }
}
