//! The sanlock lock manager ([`Sanlock`]), for domains shared by several hosts: the domain lock
//! and the volume leases as sanlock paxos leases, and this host's membership (host id) in the
//! domain's lockspace.
//!
//! Layout (format version 1), block domains: the lockspace (one delta lease per host id) at
//! offset 0 of the `ids` LV, named after the VG; the domain lock `lvchain_domain` at 1 MiB of
//! the `leases` LV; volume leases at [`super::lease_offset`] of their slot, named after the
//! volume id. File domains ([`Areas`]): the same in `dom_md/ids` and `dom_md/leases`, the
//! lockspace named after the domain id, each volume's lease at offset 0 of its own lease file.
//! A host that joined records its host id in `/run/lvchain/<lockspace>/host-id` (gone at
//! reboot, like the lockspace membership itself). Every area uses the sectors of its LV
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

/// Where a domain's sanlock areas are: the lockspace's name and storage (`ids`), the storage of
/// the domain lock (`leases`, at [`DOMAIN_LOCK_OFFSET`]), and the name errors and hints show.
/// A block domain's are its `ids` and `leases` LVs, its lockspace named after the VG; a file
/// domain's are `dom_md/ids` and `dom_md/leases`, its lockspace named after its domain id
/// (the same on every host, whatever path each mounts it at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Areas {
    /// The lockspace name (at most [`sanlock::NAME_LEN`] bytes).
    pub lockspace: String,
    pub ids: PathBuf,
    pub leases: PathBuf,
    /// The domain as the user names it (VG name or directory).
    pub domain: String,
}

impl Areas {
    /// The areas of block domain `vg`.
    pub fn block(vg: &str) -> Areas {
        Areas {
            lockspace: vg.to_string(),
            ids: dev(vg, IDS_LV),
            leases: dev(vg, LEASES_LV),
            domain: vg.to_string(),
        }
    }

    /// The lockspace as `host_id`, in the sectors of the `ids` storage.
    pub fn lockspace(&self, host_id: u64) -> Result<Lockspace, SanlockError> {
        Ok(Lockspace {
            name: self.lockspace.clone(),
            host_id,
            sector_size: SectorSize::of_device(&self.ids)?,
            path: self.ids.clone(),
            offset: 0,
        })
    }

    /// A resource named `name` at `path` + `offset`, in the sectors of `path`.
    pub fn resource(
        &self,
        name: String,
        path: PathBuf,
        offset: u64,
    ) -> Result<Resource, SanlockError> {
        Ok(Resource {
            lockspace: self.lockspace.clone(),
            name,
            sector_size: SectorSize::of_device(&path)?,
            path,
            offset,
        })
    }

    /// The domain lock.
    pub fn domain_resource(&self) -> Result<Resource, SanlockError> {
        self.resource(
            DOMAIN_LOCK_NAME.into(),
            self.leases.clone(),
            DOMAIN_LOCK_OFFSET,
        )
    }

    fn host_id_file(&self) -> PathBuf {
        crate::links::run_dir()
            .join(&self.lockspace)
            .join("host-id")
    }
}

/// Where a volume's sanlock lease is, as a lock manager outside lvchain names it (libvirt's
/// `<lease>`: lockspace, key, target path and offset). Nothing is read to make it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLocation {
    pub lockspace: String,
    pub key: String,
    pub path: PathBuf,
    pub offset: u64,
}

impl Areas {
    /// The location of `volume`'s lease at `path` + `offset`.
    pub fn location(&self, volume: &VolumeId, path: PathBuf, offset: u64) -> LeaseLocation {
        LeaseLocation {
            lockspace: self.lockspace.clone(),
            key: volume.to_string(),
            path,
            offset,
        }
    }
}

/// The location of the lease of the volume in `slot` of block domain `vg`.
pub fn volume_location(vg: &str, volume: &VolumeId, slot: u32) -> LeaseLocation {
    let a = Areas::block(vg);
    let path = a.leases.clone();
    a.location(volume, path, lease_offset(slot))
}

/// `vg`'s lockspace as `host_id`, in the sectors of its `ids` LV (which must be active).
pub fn lockspace(vg: &str, host_id: u64) -> Result<Lockspace, SanlockError> {
    Areas::block(vg).lockspace(host_id)
}

/// The domain lock of `vg`, in the sectors of its `leases` LV (which must be active).
pub fn domain_resource(vg: &str) -> Result<Resource, SanlockError> {
    Areas::block(vg).domain_resource()
}

/// The lease of the volume in `slot`, in the sectors of the `leases` LV (which must be active).
pub fn volume_resource(vg: &str, volume: &VolumeId, slot: u32) -> Result<Resource, SanlockError> {
    let a = Areas::block(vg);
    let path = a.leases.clone();
    a.resource(volume.to_string(), path, lease_offset(slot))
}

/// The lease of `volume` in the lockspace of `a`, at `path` + `offset`.
pub fn volume_resource_at(
    a: &Areas,
    volume: &VolumeId,
    path: PathBuf,
    offset: u64,
) -> Result<Resource, LeaseError> {
    a.resource(volume.to_string(), path, offset)
        .map_err(|e| lease_error(&a.domain, volume, e))
}

/// The host id this host joined `vg`'s lockspace with, if it did.
pub fn joined_host_id(vg: &str) -> Option<u64> {
    joined(&Areas::block(vg))
}

/// The host id this host joined the lockspace of `a` with, if it did.
pub fn joined(a: &Areas) -> Option<u64> {
    std::fs::read_to_string(a.host_id_file())
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
pub fn format_domain(a: &Areas) -> Result<(), SanlockError> {
    sanlock::format_lockspace(&a.lockspace(0)?, IO_TIMEOUT)?;
    sanlock::format_resource(&a.domain_resource()?)
}

/// The [`LockError`] of a sanlock call on domain `vg` that failed to do `action`.
pub(crate) fn failed(
    vg: &str,
    action: SanlockAction,
) -> impl FnOnce(SanlockError) -> LockError + '_ {
    move |source| LockError::Sanlock {
        vg: vg.to_string(),
        action,
        source,
    }
}

/// Joins the lockspace of `a` as `host_id` (its storage must be there: active LVs); records
/// the id. A host id the lockspace's sectors have no room for is refused before anything is
/// done.
pub fn join(a: &Areas, host_id: u64) -> Result<Joined, LockError> {
    let vg = a.domain.as_str();
    let ls = a
        .lockspace(host_id)
        .map_err(failed(vg, SanlockAction::ReadLockspace))?;
    // The lockspace's sectors set its host ids: 1..=2000 on 512-byte sectors, 1..=250 on 4K.
    if ls.check_host_id(host_id).is_err() {
        return Err(LockError::HostIdOutOfRange {
            vg: vg.to_string(),
            host_id,
            sectors: ls.sector_size,
        });
    }
    // One host id per host and lockspace: say so plainly (sanlock's answer is EINVAL).
    if let Some(joined) = joined(a).filter(|&id| id != host_id) {
        return Err(LockError::JoinedAs {
            vg: vg.to_string(),
            joined,
            host_id,
        });
    }
    // A lockspace name is one domain's: the same name on other storage (a copied file
    // domain keeps its id) would have its leases judged against the wrong hosts.
    let ids_file = a.host_id_file().with_file_name("ids");
    if let Ok(joined) = std::fs::read_to_string(&ids_file) {
        if joined.trim_end() != a.ids.display().to_string() && self::joined(a).is_some() {
            return Err(LockError::SameLockspaceElsewhere {
                vg: vg.to_string(),
                lockspace: a.lockspace.clone(),
                joined: joined.trim_end().to_string(),
            });
        }
    }
    let new = match sanlock::join_lockspace(&ls, IO_TIMEOUT) {
        Ok(()) => true,
        Err(SanlockError::LockspaceAlreadyJoined { .. }) => false,
        Err(e) => return Err(failed(vg, SanlockAction::Join)(e)),
    };
    let file = a.host_id_file();
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&file, format!("{host_id}\n")).map_err(|source| LockError::HostIdFile {
        path: file.display().to_string(),
        source,
    })?;
    std::fs::write(&ids_file, format!("{}\n", a.ids.display())).map_err(|source| {
        LockError::HostIdFile {
            path: ids_file.display().to_string(),
            source,
        }
    })?;
    Ok(Joined { host_id, new })
}

/// Hosts other than this one that this host's daemon sees in the lockspace of `a` and that
/// are not known to be gone (live, failing, or joined too recently to judge).
pub fn other_joined_hosts(a: &Areas) -> Result<Vec<u64>, SanlockError> {
    let me = joined(a).unwrap_or(0);
    // Right after a join the daemon answers EAGAIN until it has read the other hosts' delta
    // leases (its first renewal): asked again, for up to two renewals.
    let start = Instant::now();
    let hosts = loop {
        match sanlock::get_hosts(&a.lockspace, 0) {
            Err(SanlockError::Sanlock { rv, .. })
                if rv == -libc::EAGAIN
                    && start.elapsed() < Duration::from_secs(4 * u64::from(IO_TIMEOUT)) =>
            {
                std::thread::sleep(Duration::from_secs(1));
            }
            r => break r?,
        }
    };
    Ok(hosts
        .into_iter()
        .filter(|h| h.host_id != me)
        .filter(|h| !matches!(h.state, sanlock::HostState::Free | sanlock::HostState::Dead))
        .map(|h| h.host_id)
        .collect())
}

/// Leaves the lockspace of `a` (refused while this host holds leases in it).
pub fn leave(a: &Areas) -> Result<u64, SanlockError> {
    let host_id = joined(a).ok_or_else(|| SanlockError::LockspaceNotJoined {
        op: sanlock::Op::RemLockspace,
        lockspace: a.lockspace.clone(),
    })?;
    sanlock::leave_lockspace(&a.lockspace(host_id)?, LeaveMode::IfUnused)?;
    let _ = std::fs::remove_file(a.host_id_file());
    let _ = std::fs::remove_file(a.host_id_file().with_file_name("ids"));
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

/// The sanlock domain lease of `a`, waiting up to `timeout` while another host holds it.
pub fn take_domain_lease(a: &Areas, timeout: Duration) -> Result<Box<dyn DomainGuard>, LockError> {
    let vg = a.domain.as_str();
    if joined(a).is_none() {
        return Err(LockError::NotJoined { vg: vg.to_string() });
    }
    let start = Instant::now();
    let error = |source: SanlockError| match source {
        SanlockError::LockspaceNotJoined { .. } => LockError::NotJoined { vg: vg.to_string() },
        source => failed(vg, SanlockAction::TakeDomainLock)(source),
    };
    let res = a.domain_resource().map_err(error)?;
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
                return Ok(Box::new(SanlockGuard { reg, res }));
            }
            Err(e) if e.is_held() && start.elapsed() < timeout => {
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

/// The sanlock domain lease of `a` as [`LockManager::lock_across_hosts`] takes it (the wait
/// observed).
pub fn lock_across_hosts(a: &Areas, timeout: Duration) -> Result<Box<dyn DomainGuard>, LockError> {
    let start = Instant::now();
    let r = take_domain_lease(a, timeout);
    super::observe_wait(&a.domain, LockPart::AcrossHosts, start.elapsed(), &r);
    r
}

/// The sanlock lock manager: the domain lock is this host's local lock, then the sanlock domain
/// lease; volume leases are sanlock paxos leases.
#[derive(Debug, Clone, Default)]
pub struct Sanlock {
    pub local: Local,
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
        format_domain(&Areas::block(vg)).map_err(failed(vg, SanlockAction::Format))
    }

    fn lock_domain(&self, vg: &str) -> Result<Box<dyn DomainGuard>, LockError> {
        let local = self.local.lock.lock_domain(vg)?;
        let lease = self.lock_across_hosts(vg)?;
        Ok(Box::new(Both { lease, local }))
    }

    /// The sanlock domain lease, waiting up to the local lock's timeout while another host
    /// holds it; handed to the operation's programs like the local lock.
    fn lock_across_hosts(&self, vg: &str) -> Result<Option<Box<dyn DomainGuard>>, LockError> {
        lock_across_hosts(&Areas::block(vg), self.local.lock.timeout).map(Some)
    }

    fn acquire(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        let a = Areas::block(vg);
        let res = block_resource(&a, volume, slot)?;
        acquire(&a, volume, &res, false)
    }

    fn acquire_shared(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError> {
        let a = Areas::block(vg);
        let res = block_resource(&a, volume, slot)?;
        acquire(&a, volume, &res, true)
    }

    fn shared_holders(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Vec<u64>, LeaseError> {
        let res = volume_resource(vg, volume, slot).map_err(|e| lease_error(vg, volume, e))?;
        shared_holders(&Areas::block(vg), volume, &res)
    }

    fn holder(&self, vg: &str, volume: &VolumeId, slot: u32) -> Result<Option<Holder>, LeaseError> {
        let res = volume_resource(vg, volume, slot).map_err(|e| lease_error(vg, volume, e))?;
        holder(&Areas::block(vg), volume, &res)
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
        join(&Areas::block(vg), host_id)
    }

    fn leave(&self, vg: &str) -> Result<u64, LockError> {
        leave(&Areas::block(vg)).map_err(failed(vg, SanlockAction::Leave))
    }

    fn joined_host_id(&self, vg: &str) -> Option<u64> {
        joined_host_id(vg)
    }

    fn other_hosts(&self, vg: &str) -> Result<Vec<u64>, LockError> {
        other_joined_hosts(&Areas::block(vg)).map_err(failed(vg, SanlockAction::ListHosts))
    }
}

/// The lease of `volume` in `slot` of a block domain, for taking it: a host that has not
/// joined the lockspace is told so first (its `leases` LV may not even be active).
fn block_resource(a: &Areas, volume: &VolumeId, slot: u32) -> Result<Resource, LeaseError> {
    if joined(a).is_none() {
        return Err(LeaseError::NoLockspace {
            vg: a.domain.clone(),
        });
    }
    let path = a.leases.clone();
    volume_resource_at(a, volume, path, lease_offset(slot))
}

/// Takes the lease of `volume` (resource `res`, in the lockspace of `a`) for this process,
/// exclusive or shared (the host must have joined the lockspace). A lease held elsewhere names
/// the hosts holding it shared.
pub fn acquire(
    a: &Areas,
    volume: &VolumeId,
    res: &Resource,
    shared: bool,
) -> Result<Box<dyn LeaseGuard>, LeaseError> {
    let vg = a.domain.as_str();
    let r = (|| {
        if joined(a).is_none() {
            return Err(LeaseError::NoLockspace { vg: vg.to_string() });
        }
        let mut reg = Registration::register().map_err(|e| lease_error(vg, volume, e))?;
        let opts = AcquireOptions {
            no_wait: true,
            shared,
        };
        reg.acquire(res, opts)
            .map_err(|e| lease_error(vg, volume, e))?;
        Ok(Box::new(SanlockGuard {
            reg,
            res: res.clone(),
        }) as Box<dyn LeaseGuard>)
    })();
    if shared {
        return r;
    }
    r.map_err(|e| super::explain_held(e, || shared_holders(a, volume, res)))
}

/// Reads the resource's shared owners (the daemon reads its mode blocks) and keeps those
/// whose host this host's daemon does not know to be gone: dead, or joined again since
/// (a later generation). A host it cannot judge counts as holding.
pub fn shared_holders(
    a: &Areas,
    volume: &VolumeId,
    res: &Resource,
) -> Result<Vec<u64>, LeaseError> {
    let vg = a.domain.as_str();
    let owners = sanlock::read_resource_owners(res).map_err(|e| lease_error(vg, volume, e))?;
    if !owners.shared {
        return Ok(Vec::new());
    }
    let mut hosts: Vec<u64> = owners
        .owners
        .iter()
        .filter(|o| {
            let seen = sanlock::get_hosts(&a.lockspace, o.host_id)
                .ok()
                .and_then(|v| v.into_iter().find(|h| h.host_id == o.host_id));
            match seen {
                Some(h) if h.generation > o.generation => false,
                Some(h) => !matches!(h.state, sanlock::HostState::Dead | sanlock::HostState::Free),
                None => true,
            }
        })
        .map(|o| o.host_id)
        .collect();
    hosts.sort_unstable();
    hosts.dedup();
    Ok(hosts)
}

/// Who holds the lease of `volume` exclusively, and whether that holder is alive: this host's
/// daemon judges other hosts' liveness; without it, the disk is read.
pub fn holder(a: &Areas, volume: &VolumeId, res: &Resource) -> Result<Option<Holder>, LeaseError> {
    let vg = a.domain.as_str();
    let running = match sanlock::owner_status(res) {
        Ok(st) => owner_of(&st).map(|id| (id, st.is_running())),
        Err(_) => {
            let host_id = joined(a).unwrap_or(0);
            let ls = a
                .lockspace(host_id)
                .map_err(|e| lease_error(vg, volume, e))?;
            let st = sanlock::probe_owner(res, &ls, Duration::from_secs(25))
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

/// Writes a free lease for `volume` at `res` (no daemon needed).
pub fn init(a: &Areas, volume: &VolumeId, res: &Resource) -> Result<(), LeaseError> {
    sanlock::format_resource(res).map_err(|e| lease_error(&a.domain, volume, e))
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
