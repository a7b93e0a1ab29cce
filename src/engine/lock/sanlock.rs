//! The sanlock lock manager ([`Sanlock`]), for domains shared by several hosts: the domain lock
//! and the volume leases as sanlock paxos leases, and this host's membership (host id) in the
//! domain's lockspace.
//!
//! Layout (format version 1): the lockspace (one delta lease per host id) at offset 0 of the
//! `ids` LV, named after the VG; the domain lock `lvchain_domain` at 1 MiB of the `leases` LV;
//! volume leases at [`super::lease_offset`] of their slot, named after the volume id. A host
//! that joined records its host id in `/run/lvchain/<VG>/host-id` (gone at reboot, like the
//! lockspace membership itself). Every area uses the sectors of its LV
//! ([`SectorSize::of_device`]: 512, or 4096 on 4Kn storage), read whenever an area is named: the
//! offsets above hold for both, and a 4K domain has host ids 1..=250 (2000 on 512-byte sectors).

use super::local::Local;
use super::{
    lease_offset, Both, Descriptors, DomainGuard, Holder, Joined, LeaseError, LeaseGuard,
    LockError, LockKind, LockManager, LockPart, SanlockAction,
};
use crate::domain::{IDS_LV, LEASES_LV};
use crate::format::ids::VolumeId;
use crate::units::MIB;
use sanlock::{
    AcquireOptions, LeaveMode, Lockspace, Registration, Resource, SanlockError, SectorSize,
};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// sanlock I/O timeout of lvchain lockspaces (seconds).
pub const IO_TIMEOUT: u32 = 10;
pub const DOMAIN_LOCK_NAME: &str = "lvchain_domain";
pub const DOMAIN_LOCK_OFFSET: u64 = MIB;

fn dev(vg: &str, lv: &str) -> PathBuf {
    PathBuf::from("/dev").join(vg).join(lv)
}

/// `vg`'s lockspace as `host_id`, in the sectors of its `ids` LV (which must be active).
pub fn lockspace(vg: &str, host_id: u64) -> Result<Lockspace, SanlockError> {
    let path = dev(vg, IDS_LV);
    Ok(Lockspace {
        name: vg.to_string(),
        host_id,
        sector_size: SectorSize::of_device(&path)?,
        path,
        offset: 0,
    })
}

fn leases_resource(vg: &str, name: String, offset: u64) -> Result<Resource, SanlockError> {
    let path = dev(vg, LEASES_LV);
    Ok(Resource {
        lockspace: vg.to_string(),
        name,
        sector_size: SectorSize::of_device(&path)?,
        path,
        offset,
    })
}

/// The domain lock of `vg`, in the sectors of its `leases` LV (which must be active).
pub fn domain_resource(vg: &str) -> Result<Resource, SanlockError> {
    leases_resource(vg, DOMAIN_LOCK_NAME.into(), DOMAIN_LOCK_OFFSET)
}

/// The lease of the volume in `slot`, in the sectors of the `leases` LV (which must be active).
pub fn volume_resource(vg: &str, volume: &VolumeId, slot: u32) -> Result<Resource, SanlockError> {
    leases_resource(vg, volume.to_string(), lease_offset(slot))
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

fn lease_error(vg: &str, volume: &VolumeId, e: SanlockError) -> LeaseError {
    if e.is_held() {
        return LeaseError::Held {
            volume: *volume,
            holder: "another process or host".into(),
        };
    }
    match e {
        SanlockError::LockspaceNotJoined { .. } => LeaseError::NoLockspace { vg: vg.to_string() },
        source @ SanlockError::DaemonUnavailable { .. } => LeaseError::NoDaemon { source },
        source => LeaseError::Sanlock {
            volume: *volume,
            source,
        },
    }
}

/// Writes the lockspace and the domain lock of a new domain (no daemon needed).
pub fn format_domain(vg: &str) -> Result<(), SanlockError> {
    sanlock::format_lockspace(&lockspace(vg, 0)?, IO_TIMEOUT)?;
    sanlock::format_resource(&domain_resource(vg)?)
}

fn failed(vg: &str, action: SanlockAction) -> impl FnOnce(SanlockError) -> LockError + '_ {
    move |source| LockError::Sanlock {
        vg: vg.to_string(),
        action,
        source,
    }
}

/// Joins `vg`'s lockspace as `host_id` (the special LVs must be active); records the id. A host
/// id the lockspace's sectors have no room for is refused before anything is done.
pub fn join(vg: &str, host_id: u64) -> Result<Joined, LockError> {
    let ls = lockspace(vg, host_id).map_err(failed(vg, SanlockAction::ReadLockspace))?;
    // The lockspace's sectors set its host ids: 1..=2000 on 512-byte sectors, 1..=250 on 4K.
    if ls.check_host_id(host_id).is_err() {
        return Err(LockError::HostIdOutOfRange {
            vg: vg.to_string(),
            host_id,
            sectors: ls.sector_size,
        });
    }
    // One host id per host and lockspace: say so plainly (sanlock's answer is EINVAL).
    if let Some(joined) = joined_host_id(vg).filter(|&id| id != host_id) {
        return Err(LockError::JoinedAs {
            vg: vg.to_string(),
            joined,
            host_id,
        });
    }
    let new = match sanlock::join_lockspace(&ls, IO_TIMEOUT) {
        Ok(()) => true,
        Err(SanlockError::LockspaceAlreadyJoined { .. }) => false,
        Err(e) => return Err(failed(vg, SanlockAction::Join)(e)),
    };
    let file = host_id_file(vg);
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&file, format!("{host_id}\n")).map_err(|source| LockError::HostIdFile {
        path: file.display().to_string(),
        source,
    })?;
    Ok(Joined { host_id, new })
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
    sanlock::leave_lockspace(&lockspace(vg, host_id)?, LeaveMode::IfUnused)?;
    let _ = std::fs::remove_file(host_id_file(vg));
    Ok(host_id)
}

struct SanlockGuard {
    reg: Registration,
    res: Resource,
}
impl LeaseGuard for SanlockGuard {}
/// sanlock releases a registration's leases when its socket is closed in every process.
impl Descriptors for SanlockGuard {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        vec![self.reg.as_fd()]
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

/// The sanlock lock manager: the domain lock is this host's local lock, then the sanlock domain
/// lease; volume leases are sanlock paxos leases.
#[derive(Debug, Clone, Default)]
pub struct Sanlock {
    pub local: Local,
}

impl Sanlock {
    /// The sanlock domain lease, waiting up to the local lock's timeout.
    fn take_across_hosts(&self, vg: &str) -> Result<Option<Box<dyn DomainGuard>>, LockError> {
        if joined_host_id(vg).is_none() {
            return Err(LockError::NotJoined { vg: vg.to_string() });
        }
        let start = Instant::now();
        let error = |source: SanlockError| match source {
            SanlockError::LockspaceNotJoined { .. } => LockError::NotJoined { vg: vg.to_string() },
            source => failed(vg, SanlockAction::TakeDomainLock)(source),
        };
        let res = domain_resource(vg).map_err(error)?;
        loop {
            let mut reg = Registration::register().map_err(error)?;
            match reg.acquire(
                &res,
                AcquireOptions {
                    no_wait: true,
                    shared: false,
                },
            ) {
                Ok(()) => {
                    return Ok(Some(Box::new(SanlockGuard { reg, res })));
                }
                Err(e) if e.is_held() && start.elapsed() < self.local.lock.timeout => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) if e.is_held() => {
                    return Err(LockError::Busy {
                        vg: vg.to_string(),
                        waited: start.elapsed(),
                    })
                }
                Err(e) => return Err(error(e)),
            }
        }
    }
}

impl LockManager for Sanlock {
    fn kind(&self) -> LockKind {
        LockKind::Sanlock
    }

    fn check_vg_name(&self, vg: &str) -> Result<(), LockError> {
        if vg.len() > sanlock::NAME_LEN {
            return Err(LockError::NameTooLong {
                vg: vg.to_string(),
                max: sanlock::NAME_LEN,
            });
        }
        Ok(())
    }

    fn lvs(&self) -> &'static [&'static str] {
        &[LEASES_LV, IDS_LV]
    }

    fn format(&self, vg: &str) -> Result<(), LockError> {
        format_domain(vg).map_err(failed(vg, SanlockAction::Format))
    }

    fn lock_domain(&self, vg: &str) -> Result<Box<dyn DomainGuard>, LockError> {
        let local = self.local.lock.lock_domain(vg)?;
        let lease = self.lock_across_hosts(vg)?;
        Ok(Box::new(Both { lease, local }))
    }

    /// The sanlock domain lease, waiting up to the local lock's timeout while another host
    /// holds it; handed to the operation's programs like the local lock.
    fn lock_across_hosts(&self, vg: &str) -> Result<Option<Box<dyn DomainGuard>>, LockError> {
        let start = Instant::now();
        let r = self.take_across_hosts(vg);
        super::observe_wait(vg, LockPart::AcrossHosts, start.elapsed(), &r);
        r
    }

    fn acquire(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        acquire_mode(vg, volume, slot, false)
            .map_err(|e| super::explain_held(e, || self.shared_holders(vg, volume, slot)))
    }

    fn acquire_shared(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        acquire_mode(vg, volume, slot, true)
    }

    /// Reads the resource's shared owners (the daemon reads its mode blocks) and keeps those
    /// whose host this host's daemon does not know to be gone: dead, or joined again since
    /// (a later generation). A host it cannot judge counts as holding.
    fn shared_holders(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Vec<u64>, LeaseError> {
        let res = volume_resource(vg, volume, slot).map_err(|e| lease_error(vg, volume, e))?;
        let owners = sanlock::read_resource_owners(&res).map_err(|e| lease_error(vg, volume, e))?;
        if !owners.shared {
            return Ok(Vec::new());
        }
        let mut hosts: Vec<u64> = owners
            .owners
            .iter()
            .filter(|o| {
                let seen = sanlock::get_hosts(vg, o.host_id)
                    .ok()
                    .and_then(|v| v.into_iter().find(|h| h.host_id == o.host_id));
                match seen {
                    Some(h) if h.generation > o.generation => false,
                    Some(h) => {
                        !matches!(h.state, sanlock::HostState::Dead | sanlock::HostState::Free)
                    }
                    None => true,
                }
            })
            .map(|o| o.host_id)
            .collect();
        hosts.sort_unstable();
        hosts.dedup();
        Ok(hosts)
    }

    fn holder(&self, vg: &str, volume: &VolumeId, slot: u32) -> Result<Option<Holder>, LeaseError> {
        let res = volume_resource(vg, volume, slot).map_err(|e| lease_error(vg, volume, e))?;
        // This host's daemon judges other hosts' liveness; without it, read the disk.
        let running = match sanlock::owner_status(&res) {
            Ok(st) => owner_of(&st).map(|id| (id, st.is_running())),
            Err(_) => {
                let host_id = joined_host_id(vg).unwrap_or(0);
                let ls = lockspace(vg, host_id).map_err(|e| lease_error(vg, volume, e))?;
                let st = sanlock::probe_owner(&res, &ls, Duration::from_secs(25))
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

    fn init(&self, vg: &str, volume: &VolumeId, slot: u32) -> Result<(), LeaseError> {
        volume_resource(vg, volume, slot)
            .and_then(|res| sanlock::format_resource(&res))
            .map_err(|e| lease_error(vg, volume, e))
    }

    fn has_hosts(&self) -> bool {
        true
    }

    fn join(&self, vg: &str, host_id: u64) -> Result<Joined, LockError> {
        self.check_vg_name(vg)?;
        join(vg, host_id)
    }

    fn leave(&self, vg: &str) -> Result<u64, LockError> {
        leave(vg).map_err(failed(vg, SanlockAction::Leave))
    }

    fn joined_host_id(&self, vg: &str) -> Option<u64> {
        joined_host_id(vg)
    }

    fn other_hosts(&self, vg: &str) -> Result<Vec<u64>, LockError> {
        other_joined_hosts(vg).map_err(failed(vg, SanlockAction::ListHosts))
    }
}

/// Takes a volume's lease for this process (the host must have joined the lockspace).
fn acquire_mode(
    vg: &str,
    volume: &VolumeId,
    slot: u32,
    shared: bool,
) -> Result<Box<dyn LeaseGuard>, LeaseError> {
    if joined_host_id(vg).is_none() {
        return Err(LeaseError::NoLockspace { vg: vg.to_string() });
    }
    let res = volume_resource(vg, volume, slot).map_err(|e| lease_error(vg, volume, e))?;
    let mut reg = Registration::register().map_err(|e| lease_error(vg, volume, e))?;
    let opts = AcquireOptions {
        no_wait: true,
        shared,
    };
    reg.acquire(&res, opts)
        .map_err(|e| lease_error(vg, volume, e))?;
    Ok(Box::new(SanlockGuard { reg, res }))
}

fn owner_of(st: &sanlock::OwnerStatus) -> Option<u64> {
    match st {
        sanlock::OwnerStatus::Free { .. } | sanlock::OwnerStatus::Shared { .. } => None,
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
