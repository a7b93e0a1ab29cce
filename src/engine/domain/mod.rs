//! Storage domains: one VG formatted with lvchain's special LVs and VG tags.
//!
//! Owns formatting (`LVC_DOMAIN_UNREADY` while the special LVs are made, then ONE `vgchange`
//! that swaps it for `LVC_DOMAIN`), opening (one `lvs` report per scan), info, settings
//! (`LVC_WIPE`), removal, and the domain's lock manager: the one its `LVC_LOCK` tag names,
//! learned from the first scan (host join and leave go through it too). Never changes a volume:
//! that is the volume layer's job.

pub mod burst;
mod facade;
pub use facade::Census;
pub mod format;
mod scan;

pub(crate) use format::format;
pub use format::FormatRequest;
pub use scan::{info_from_tags, DomainInfo, LvEntry, Snapshot};

use crate::error::{Error, Result};
use crate::format::ids::{VgName, VolumeId};
use crate::lock::local::Local;
use crate::lock::{self, DomainGuard, Holder, Joined, LeaseGuard, LockError, LockManager};
use crate::lvm::{Activation, Backend, LvmError};
use crate::metadata::SlotStore;
use crate::tags::{self, Tag, Wipe};
use crate::units::Bytes;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::ThreadId;

/// Names of the special LVs.
pub const METADATA_LV: &str = "metadata";
pub const LEASES_LV: &str = "leases";
pub const IDS_LV: &str = "ids";
pub const SPECIAL_LVS: [&str; 3] = [METADATA_LV, LEASES_LV, IDS_LV];

/// A domain (VG) and the means to act on it.
pub struct Domain {
    pub(crate) vg: VgName,
    /// LVM and LV device I/O: the real host or the simulation.
    pub(crate) lvm: Arc<dyn Backend>,
    /// This host's local lock settings: the local manager's, and the first part of every
    /// manager's domain lock.
    local: Local,
    /// The manager the domain's `LVC_LOCK` tag names, set by the first scan (or lock).
    manager: OnceLock<Box<dyn LockManager>>,
    /// The scan [`Domain::lock`] made to learn the manager, when the lock it then held was the
    /// whole domain lock: handed to that thread's next [`Domain::scan`] instead of a second
    /// report, and dropped with the lock.
    fresh: Arc<Mutex<Option<(ThreadId, Snapshot)>>>,
    /// Set when the domain is a file domain (its name is a directory): every facade method
    /// goes there instead.
    pub(crate) file: Option<Arc<crate::fsdomain::FileDomain>>,
}

impl Domain {
    /// The domain `vg` (its name checked when it was parsed), with this host's default local
    /// lock settings; its lock manager is the one its `LVC_LOCK` tag names.
    pub fn new(vg: VgName, lvm: Arc<dyn Backend>) -> Domain {
        Domain::with_local(vg, lvm, Local::default())
    }

    /// [`Domain::new`] with other local lock settings (lock file directory, timeout).
    pub fn with_local(vg: VgName, lvm: Arc<dyn Backend>, local: Local) -> Domain {
        let lock_timeout = local.lock.timeout;
        Domain {
            lvm,
            local,
            manager: OnceLock::new(),
            fresh: Arc::default(),
            file: vg.is_file_domain().then(|| {
                Arc::new(crate::fsdomain::FileDomain::new(&vg).with_lock_timeout(lock_timeout))
            }),
            vg,
        }
    }

    /// The domain's VG name.
    pub fn vg(&self) -> &VgName {
        &self.vg
    }

    /// A domain whose local lock and lease files live in `dir` (instead of
    /// `/run/lock/lvchain`): tests that run without root.
    pub fn new_local_in(vg: VgName, lvm: Arc<dyn Backend>, dir: &std::path::Path) -> Domain {
        let local = Local {
            lock: crate::lock::local::LocalLock {
                dir: dir.to_path_buf(),
                ..Default::default()
            },
            leases: crate::lock::local::LocalLeases {
                dir: dir.to_path_buf(),
            },
        };
        Domain::with_local(vg, lvm, local)
    }

    /// The manager of `kind`; the domain's own once it is known (the first call sets it).
    fn learn(&self, kind: lock::LockKind) -> &dyn LockManager {
        self.manager
            .get_or_init(|| lock::manager(kind, &self.local))
            .as_ref()
    }

    /// The domain's lock manager (a scan learns it when none did yet).
    pub fn locks(&self) -> Result<&dyn LockManager> {
        if let Some(m) = self.manager.get() {
            return Ok(m.as_ref());
        }
        let snap = self.scan()?;
        Ok(self.learn(snap.info.lock_manager))
    }

    /// The manager of `kind` with this host's local settings, for a domain not formatted yet.
    pub fn manager_of(&self, kind: lock::LockKind) -> Box<dyn LockManager> {
        lock::manager(kind, &self.local)
    }

    /// Takes this host's local lock of the VG only: for formatting, before the VG is a domain.
    pub fn lock_local(&self) -> Result<lock::Holding<Box<dyn DomainGuard>>> {
        let local = self.local.lock.lock_domain(&self.vg)?;
        self.holding(local)
    }

    /// Takes the domain lock (every metadata-changing operation holds it throughout) for the
    /// operation running on this thread: the programs it starts hold the lock with it
    /// ([`lock::Holding`]), no others. Every manager's lock starts with this host's local
    /// lock; under it one report tells the manager, which then takes the rest
    /// ([`LockManager::lock_across_hosts`]). When there is no rest (a local domain) that report
    /// was made under the whole lock and serves this thread's next [`Domain::scan`], so locking
    /// costs no extra LVM command.
    pub(crate) fn lock(&self) -> Result<lock::Holding<Box<dyn DomainGuard>>> {
        let guard = self.lock_guard()?;
        self.holding(guard)
    }

    /// The domain lock as a guard that any thread may hold (a burst); its holder hands it to
    /// the programs it starts under it ([`crate::exec::Inherit`]).
    pub(crate) fn lock_guard(&self) -> Result<Box<dyn DomainGuard>> {
        if let Some(m) = self.manager.get() {
            return Ok(m.lock_domain(&self.vg)?);
        }
        let local = self.local.lock.lock_domain(&self.vg)?;
        let snap = {
            let _held = self.holding(&local)?;
            self.read()?
        };
        let manager = self.learn(snap.info.lock_manager);
        if let Some(lease) = manager.lock_across_hosts(&self.vg)? {
            return Ok(Box::new(lock::Both {
                lease: Some(lease),
                local,
            }));
        }
        *self.fresh.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((std::thread::current().id(), snap));
        Ok(Box::new(Fresh {
            _local: local,
            fresh: Arc::clone(&self.fresh),
        }))
    }

    /// `guard` handed to the programs this thread starts while the result lives.
    fn holding<G: lock::Descriptors>(&self, guard: G) -> Result<lock::Holding<G>> {
        lock::Holding::on_this_thread(guard).map_err(|source| {
            LockError::Io {
                path: self
                    .local
                    .lock
                    .dir
                    .join(format!("{}.lock", self.vg))
                    .display()
                    .to_string(),
                source,
            }
            .into()
        })
    }

    /// Reads the domain with ONE lvs report (none when [`Domain::lock`] just made it).
    pub fn scan(&self) -> Result<Snapshot> {
        let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
        if fresh
            .as_ref()
            .is_some_and(|(thread, _)| *thread == std::thread::current().id())
        {
            if let Some((_, snap)) = fresh.take() {
                return Ok(snap);
            }
        }
        drop(fresh);
        let snap = self.read()?;
        self.learn(snap.info.lock_manager);
        Ok(snap)
    }

    fn read(&self) -> Result<Snapshot> {
        // Every block path starts with this report: none may run on a file domain.
        self.refuse_file("an LVM report")?;
        let rows = self.lvm.lvs(&self.vg).map_err(|e| self.vg_error(e))?;
        if rows.is_empty() {
            // No LV: maybe a VG that is not (or not yet) a domain; its tags tell.
            let vg = self.lvm.vgs(&self.vg).map_err(|e| self.vg_error(e))?;
            info_from_tags(
                &self.vg,
                &vg.vg_tags,
                Bytes(vg.vg_extent_size),
                Bytes(vg.vg_size),
                Bytes(vg.vg_free),
            )?;
            return Err(Error::NotADomain {
                vg: self.vg.to_string(),
                hint: " (its special LVs are missing)".into(),
            });
        }
        Snapshot::from_rows(&self.vg, &rows)
    }

    /// Refuses to change a domain through a lock manager other than its own (one learned
    /// before the domain was formatted anew with another).
    pub(crate) fn check_kind(&self, snap: &Snapshot) -> Result<()> {
        let domain = snap.info.lock_manager;
        let ours = self.learn(domain).kind();
        if ours != domain {
            return Err(Error::WrongLockManager {
                vg: self.vg.to_string(),
                domain,
                ours,
            });
        }
        Ok(())
    }

    /// Takes the lease of volume `id` (in `slot`) for this process.
    pub fn lease(&self, id: &VolumeId, slot: u32) -> Result<Box<dyn LeaseGuard>> {
        Ok(self.locks()?.acquire(&self.vg, id, slot)?)
    }

    /// Takes the lease of volume `id` in shared mode (a reader of its data).
    pub fn lease_shared(&self, id: &VolumeId, slot: u32) -> Result<Box<dyn LeaseGuard>> {
        Ok(self.locks()?.acquire_shared(&self.vg, id, slot)?)
    }

    /// Reads who holds the lease of volume `id`, without taking it: works on a host that never
    /// joined (the manager's LVs must be active, [`Domain::activate_lease_lvs`]).
    pub fn lease_holder(&self, id: &VolumeId, slot: u32) -> Result<Option<Holder>> {
        Ok(self.locks()?.holder(&self.vg, id, slot)?)
    }

    /// Writes the lease area of a new volume.
    pub fn init_lease(&self, id: &VolumeId, slot: u32) -> Result<()> {
        Ok(self.locks()?.init(&self.vg, id, slot)?)
    }

    /// Activates the special LVs the domain's lock manager keeps its leases in (none for a
    /// local domain).
    pub fn activate_lease_lvs(&self, snap: &Snapshot) -> Result<()> {
        let lvs = self.locks()?.lvs();
        self.activate_special(snap, lvs)
    }

    /// Joins the domain's lockspace as `host_id`: activates the special LVs, then joins and
    /// records the id. Refused, changing nothing, for a domain without hosts (local) and for a
    /// host id outside 1..=2000, or beyond what the lockspace's sectors hold (250 on 4K).
    pub fn join(&self, host_id: u64) -> Result<Joined> {
        if !(1..=::sanlock::MAX_HOSTS).contains(&host_id) {
            return Err(Error::InvalidInput(format!(
                "--host-id must be 1 to {}",
                ::sanlock::MAX_HOSTS
            )));
        }
        if let Some(f) = &self.file {
            return f.join(host_id);
        }
        let snap = self.scan()?;
        let manager = self.locks()?;
        if !manager.has_hosts() {
            return Err(LockError::NoHosts {
                vg: self.vg.to_string(),
                kind: manager.kind(),
            }
            .into());
        }
        manager.check_vg_name(&self.vg)?;
        self.activate_special(&snap, &SPECIAL_LVS)?;
        Ok(manager.join(&self.vg, host_id)?)
    }

    /// Leaves the domain's lockspace; returns the host id this host had. Works on a domain
    /// whose removal did not finish (its VG tags name the manager).
    pub fn leave(&self) -> Result<u64> {
        if let Some(f) = &self.file {
            return f.leave();
        }
        let row = self.lvm.vgs(&self.vg).map_err(|e| self.vg_error(e))?;
        let manager = self.learn(scan::lock_kind(&self.vg, &row.vg_tags)?);
        Ok(manager.leave(&self.vg)?)
    }

    /// Refuses `what` on a file domain (it has no VG).
    fn refuse_file(&self, what: &str) -> Result<()> {
        match &self.file {
            Some(f) => Err(Error::InvalidInput(format!(
                "{what}: {} is a file domain (a directory, no VG)",
                f.name
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn vg_error(&self, e: LvmError) -> Error {
        match e {
            LvmError::VgNotFound { .. } => Error::VgNotFound {
                vg: self.vg.to_string(),
            },
            other => Error::Lvm(other),
        }
    }

    pub(crate) fn metadata_path(&self) -> PathBuf {
        self.device(METADATA_LV)
    }

    /// The device of LV `lv` while it is active on this host.
    pub(crate) fn device(&self, lv: &str) -> PathBuf {
        self.lvm.dev_dir().join(&self.vg).join(lv)
    }

    /// The device of volume `id` while it is active on this host.
    pub(crate) fn volume_device(&self, id: &VolumeId) -> PathBuf {
        self.device(&id.to_string())
    }

    /// The slot store, activating the metadata LV on this host first if needed.
    pub(crate) fn slots(&self, snap: &Snapshot) -> Result<SlotStore> {
        if snap.lv_named(METADATA_LV).is_none() {
            return Err(Error::NotADomain {
                vg: self.vg.to_string(),
                hint: " (its metadata LV is missing)".into(),
            });
        }
        self.activate_special(snap, &[METADATA_LV])?;
        Ok(SlotStore {
            path: self.metadata_path(),
            io: self.lvm.clone(),
            slot_size: snap.info.slot_size as usize,
            slots: snap.info.max_volumes,
            version: snap.info.format,
        })
    }

    /// Activates those of the special LVs `names` that are not active here, in one lvchange
    /// (a host reads leases and slots without having joined: after a reboot, nothing is
    /// active, since domains never auto-activate).
    pub(crate) fn activate_special(&self, snap: &Snapshot, names: &[&str]) -> Result<()> {
        let inactive: Vec<String> = names
            .iter()
            .filter(|n| !snap.lv_named(n).is_some_and(|l| l.active) || !self.device(n).exists())
            .map(|n| self.lv_path(n))
            .collect();
        self.lvm
            .lvchange_activation(&inactive, Activation::Activate)?;
        Ok(())
    }

    /// Sets the domain's wipe policy (what removals do with volume data unless a volume's own
    /// `LVC_WIPE` says otherwise): under the domain lock, ONE vgchange that replaces the VG's
    /// `LVC_WIPE` tag; the default (`zero`) is the tag's absence. Returns the previous policy.
    pub fn set_wipe(&self, wipe: Wipe) -> Result<Wipe> {
        if let Some(f) = &self.file {
            return f.set_wipe(wipe);
        }
        let _guard = self.lock()?;
        let snap = self.scan()?;
        self.check_kind(&snap)?;
        let row = self.lvm.vgs(&self.vg).map_err(|e| self.vg_error(e))?;
        let del: Vec<String> = row
            .vg_tags
            .iter()
            .filter(|t| t.starts_with("LVC_WIPE="))
            .cloned()
            .collect();
        let add = match wipe {
            w if w == Wipe::default() => vec![],
            w => tags::strings(&[Tag::Wipe(w)]),
        };
        if del != add {
            self.lvm.vgchange_tags(&self.vg, &del, &add)?;
        }
        Ok(snap.info.wipe)
    }

    /// `vg/lv` as lvm takes it.
    pub(crate) fn lv_path(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    /// Removes the domain: refuses while volumes exist unless `force`. A sanlock domain is
    /// refused while other hosts are joined to it (their daemons write into its ids LV); its
    /// lease must be released before the VG goes, so the VG is first marked
    /// `LVC_DOMAIN_UNREADY` (one vgchange, under the lock): from then on no host takes it for a
    /// domain, and a removal that dies is finished by running it again.
    pub fn remove(&self, force: bool) -> Result<usize> {
        if let Some(f) = &self.file {
            return f.remove(force);
        }
        if let Some(n) = self.remove_unready()? {
            return Ok(n);
        }
        let mut removed = 0;
        if force {
            // Volumes go the way every removal goes (their leases, their marks, their data
            // wiped where the policy says): the collector first, then each image. Refused
            // before anything changes while other hosts are joined.
            let hosts = self.locks()?.other_hosts(&self.vg)?;
            if !hosts.is_empty() {
                return Err(Error::HostsJoined {
                    vg: self.vg.to_string(),
                    hosts,
                });
            }
            let report = self.gc(false, &mut |_, _| {}, &mut |_, _, _| {})?;
            if let Some(e) = report.orphans.iter().find_map(|o| o.error.clone()) {
                return Err(Error::InvalidInput(format!(
                    "cannot collect the orphans of {} before removing it: {e}",
                    self.vg
                )));
            }
            for image in self.catalog()?.snap.images() {
                removed += self.remove_image(&image, &mut |_, _, _| {})?;
            }
        }
        let guard = self.lock()?;
        let snap = self.scan()?;
        self.check_kind(&snap)?;
        let count = snap.lvs.iter().filter(|l| !l.special).count();
        if count > 0 && !force {
            return Err(Error::DomainNotEmpty {
                vg: self.vg.to_string(),
                count,
            });
        }
        for image in snap.images() {
            crate::links::remove_image(&self.vg, &image)
                .map_err(Error::io(format!("removing links of image {image}")))?;
        }
        let manager = self.locks()?;
        let hosts = manager.other_hosts(&self.vg)?;
        if !hosts.is_empty() {
            return Err(Error::HostsJoined {
                vg: self.vg.to_string(),
                hosts,
            });
        }
        if !manager.lvs().is_empty() {
            self.lvm.vgchange_tags(
                &self.vg,
                &tags::strings(&[Tag::Domain]),
                &tags::strings(&[Tag::DomainUnready]),
            )?;
            crate::crash::point(crate::crash::CrashPoint::DomainRemoveAfterMark);
            // The manager keeps its LVs open (sanlock: ids and leases): release, leave, then
            // remove.
            drop(guard);
        }
        self.finish_remove(manager)?;
        Ok(removed + count)
    }

    /// Leaves the lockspace (if joined), removes the links and the VG.
    fn finish_remove(&self, manager: &dyn LockManager) -> Result<()> {
        if manager.joined_host_id(&self.vg).is_some() {
            manager.leave(&self.vg)?;
        }
        let vg_dir = crate::links::run_dir().join(&self.vg);
        let _ = std::fs::remove_dir_all(vg_dir);
        self.lvm.vgremove(&self.vg, true)?;
        Ok(())
    }

    /// Finishes the removal of a VG marked `LVC_DOMAIN_UNREADY` that holds only special LVs (a
    /// removal or a format that died); None when the VG is not in that state.
    fn remove_unready(&self) -> Result<Option<usize>> {
        let row = self.lvm.vgs(&self.vg).map_err(|e| self.vg_error(e))?;
        if !row
            .vg_tags
            .iter()
            .any(|t| t == &Tag::DomainUnready.to_string())
        {
            return Ok(None);
        }
        let rows = self.lvm.lvs(&self.vg)?;
        if rows
            .iter()
            .any(|r| !SPECIAL_LVS.contains(&r.lv_name.as_str()))
        {
            return Err(Error::VgNotEmpty {
                vg: self.vg.to_string(),
                count: row.lv_count,
            });
        }
        let manager = self.learn(scan::lock_kind(&self.vg, &row.vg_tags)?);
        self.finish_remove(manager)?;
        Ok(Some(0))
    }
}

/// The local part of the domain lock, with the report made under it (dropped first).
struct Fresh {
    _local: Box<dyn DomainGuard>,
    fresh: Arc<Mutex<Option<(ThreadId, Snapshot)>>>,
}
impl DomainGuard for Fresh {}
impl lock::Descriptors for Fresh {
    fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self._local.fds()
    }
}
impl Drop for Fresh {
    fn drop(&mut self) {
        *self.fresh.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
