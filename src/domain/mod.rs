//! Storage domains: one VG formatted with lvchain's special LVs and VG tags.
//!
//! Owns formatting (`LVC_DOMAIN_UNREADY` while the special LVs are made, then ONE `vgchange`
//! that swaps it for `LVC_DOMAIN`), opening (one `lvs` report per scan), info, settings
//! (`LVC_WIPE`) and removal.
//! Never changes a volume: that is the volume layer's job.

pub mod format;
mod scan;

pub use format::{format, FormatRequest};
pub use scan::{info_from_tags, DomainInfo, LvEntry, Snapshot};

use crate::error::{Error, Result};
use crate::lease::LeaseManager;
use crate::lock::{DomainGuard, LockManager};
use crate::lvm::{Activation, Backend, LvmError};
use crate::metadata::SlotStore;
use crate::tags::{self, Tag, Wipe};
use std::path::PathBuf;
use std::sync::Arc;

/// Names of the special LVs.
pub const METADATA_LV: &str = "metadata";
pub const LEASES_LV: &str = "leases";
pub const IDS_LV: &str = "ids";
pub const SPECIAL_LVS: [&str; 3] = [METADATA_LV, LEASES_LV, IDS_LV];

/// A domain (VG) and the means to act on it.
pub struct Domain {
    pub vg: String,
    /// LVM and LV device I/O: the real host or the simulation.
    pub lvm: Arc<dyn Backend>,
    pub locks: Box<dyn LockManager>,
    pub leases: Box<dyn LeaseManager>,
    /// The lock manager these belong to ("local" or "sanlock"): must match the domain's.
    pub lock_kind: String,
}

/// Checks a VG name against LVM's rules.
pub fn validate_vg_name(vg: &str) -> Result<()> {
    let ok = !vg.is_empty()
        && vg.len() <= 127
        && !vg.starts_with('-')
        && vg != "."
        && vg != ".."
        && vg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{vg:?} is not a valid volume group name (letters, digits, + _ . -)"
        )))
    }
}

impl Domain {
    /// A domain on this host's local lock and lease managers.
    pub fn new(vg: &str, lvm: Arc<dyn Backend>, locks: Box<dyn LockManager>) -> Result<Domain> {
        validate_vg_name(vg)?;
        Ok(Domain {
            vg: vg.to_string(),
            lvm,
            locks,
            leases: Box::new(crate::lease::local::LocalLeases::default()),
            lock_kind: "local".into(),
        })
    }

    /// A domain on the local lock and lease managers with their files in `dir` (instead of
    /// `/run/lock/lvchain`): tests that run without root.
    pub fn new_local_in(vg: &str, lvm: Arc<dyn Backend>, dir: &std::path::Path) -> Result<Domain> {
        let locks = crate::lock::LocalLock {
            dir: dir.to_path_buf(),
            ..crate::lock::LocalLock::default()
        };
        let mut d = Domain::new(vg, lvm, Box::new(locks))?;
        d.leases = Box::new(crate::lease::local::LocalLeases {
            dir: dir.to_path_buf(),
        });
        Ok(d)
    }

    /// A domain shared through sanlock (this host joined its lockspace).
    pub fn new_sanlock(vg: &str, lvm: Arc<dyn Backend>) -> Result<Domain> {
        validate_vg_name(vg)?;
        if vg.len() > crate::lease::sanlock::NAME_LEN {
            return Err(Error::InvalidInput(format!(
                "{vg}: a sanlock domain's VG name has at most {} characters",
                crate::lease::sanlock::NAME_LEN
            )));
        }
        Ok(Domain {
            vg: vg.to_string(),
            lvm,
            locks: Box::new(crate::lease::cluster::SanlockLock::default()),
            leases: Box::new(crate::lease::cluster::SanlockLeases),
            lock_kind: "sanlock".into(),
        })
    }

    /// Takes the domain lock (every metadata-changing operation holds it throughout).
    pub fn lock(&self) -> Result<Box<dyn DomainGuard>> {
        Ok(self.locks.lock_domain(&self.vg)?)
    }

    /// Reads the domain with ONE lvs report.
    pub fn scan(&self) -> Result<Snapshot> {
        let rows = self.lvm.lvs(&self.vg).map_err(|e| self.vg_error(e))?;
        if rows.is_empty() {
            // No LV: maybe a VG that is not (or not yet) a domain; its tags tell.
            let vg = self.lvm.vgs(&self.vg).map_err(|e| self.vg_error(e))?;
            info_from_tags(
                &self.vg,
                &vg.vg_tags,
                vg.vg_extent_size,
                vg.vg_size,
                vg.vg_free,
            )?;
            return Err(Error::NotADomain {
                vg: self.vg.clone(),
                hint: " (its special LVs are missing)".into(),
            });
        }
        Snapshot::from_rows(&self.vg, &rows)
    }

    /// Refuses to change a domain through lock managers other than its own (a sanlock domain
    /// changed under a local lock would not be protected from the other hosts).
    pub fn check_kind(&self, snap: &Snapshot) -> Result<()> {
        if snap.info.lock_manager != self.lock_kind {
            return Err(Error::WrongLockManager {
                vg: self.vg.clone(),
                domain: snap.info.lock_manager.clone(),
                ours: self.lock_kind.clone(),
            });
        }
        Ok(())
    }

    pub(crate) fn vg_error(&self, e: LvmError) -> Error {
        match e {
            LvmError::VgNotFound { .. } => Error::VgNotFound {
                vg: self.vg.clone(),
            },
            other => Error::Lvm(other),
        }
    }

    pub fn metadata_path(&self) -> PathBuf {
        self.device(METADATA_LV)
    }

    /// The device of LV `lv` while it is active on this host.
    pub fn device(&self, lv: &str) -> PathBuf {
        self.lvm.dev_dir().join(&self.vg).join(lv)
    }

    /// The device of volume `id` while it is active on this host.
    pub fn volume_device(&self, id: &uuid::Uuid) -> PathBuf {
        self.device(&id.to_string())
    }

    /// The slot store, activating the metadata LV on this host first if needed.
    pub fn slots(&self, snap: &Snapshot) -> Result<SlotStore> {
        if snap.lv_named(METADATA_LV).is_none() {
            return Err(Error::NotADomain {
                vg: self.vg.clone(),
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
    pub fn activate_special(&self, snap: &Snapshot, names: &[&str]) -> Result<()> {
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
    pub fn lv_path(&self, lv: &str) -> String {
        format!("{}/{lv}", self.vg)
    }

    /// Removes the domain: refuses while volumes exist unless `force`. A sanlock domain is
    /// refused while other hosts are joined to it (their daemons write into its ids LV); its
    /// lease must be released before the VG goes, so the VG is first marked
    /// `LVC_DOMAIN_UNREADY` (one vgchange, under the lock): from then on no host takes it for a
    /// domain, and a removal that dies is finished by running it again.
    pub fn remove(&self, force: bool) -> Result<usize> {
        if let Some(n) = self.remove_unready()? {
            return Ok(n);
        }
        let guard = self.lock()?;
        let snap = self.scan()?;
        self.check_kind(&snap)?;
        let count = snap.lvs.iter().filter(|l| !l.special).count();
        if count > 0 && !force {
            return Err(Error::DomainNotEmpty {
                vg: self.vg.clone(),
                count,
            });
        }
        for image in snap.images() {
            crate::links::remove_image(&self.vg, &image)
                .map_err(Error::io(format!("removing links of image {image}")))?;
        }
        if self.lock_kind == "sanlock" {
            let others = crate::lease::cluster::other_joined_hosts(&self.vg).map_err(|e| {
                Error::InvalidInput(format!("cannot list the hosts of {}: {e}", self.vg))
            })?;
            if !others.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "host(s) {others:?} are still joined to domain {}: run `lvchain host leave \
                     {}` there first",
                    self.vg, self.vg
                )));
            }
            self.lvm.vgchange_tags(
                &self.vg,
                &tags::strings(&[Tag::Domain]),
                &tags::strings(&[Tag::DomainUnready]),
            )?;
            crate::crash::point("domain-remove.after-mark");
            // sanlock keeps the ids and leases LVs open: release, leave, then remove.
            drop(guard);
        }
        self.finish_remove()?;
        Ok(count)
    }

    /// Leaves the lockspace (if joined), removes the links and the VG.
    fn finish_remove(&self) -> Result<()> {
        if self.lock_kind == "sanlock" && crate::lease::cluster::joined_host_id(&self.vg).is_some()
        {
            crate::lease::cluster::leave(&self.vg).map_err(|e| {
                Error::InvalidInput(format!("cannot leave the lockspace of {}: {e}", self.vg))
            })?;
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
                vg: self.vg.clone(),
                count: row.lv_count,
            });
        }
        self.finish_remove()?;
        Ok(Some(0))
    }
}
