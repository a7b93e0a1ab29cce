//! The domains the agent serves and the one place it opens the engine's [`Domain`] handle
//! (every request and every gc round gets a fresh handle on the shared backend, as a CLI
//! process would). Never acts on a domain itself.
//!
//! Configured domains are exactly the ones served: VG names and file domains' paths. With none
//! configured, every lvchain VG the host's LVM sees, and any VG a request names, is served, and
//! no file domain: a directory cannot be found by scanning, and a request must not point the
//! agent (root) at a directory of its choosing. A request names a configured file domain by
//! its directory (compared after [`file_domain_key`]); any other path is `domain_not_served`.

use crate::domain::burst::{Burst, BurstSettings};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::ids::{BadVgName, VgName};
use crate::lock::local::{Local, LocalLock};
use crate::lvm::{Backend, Lvm};
use crate::tags::Tag;
use crate::volume::{CreateRequest, Volume};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// How long a periodic gc waits for the domain lock before it skips the round.
pub const GC_LOCK_WAIT: Duration = Duration::from_secs(1);

/// The served domains and the storage backend they live on.
pub struct Domains {
    backend: Arc<dyn Backend>,
    /// The real host's LVM, to find the domains when none are configured (None: simulated).
    host: Option<Arc<Lvm>>,
    /// The configured VGs; None: any VG a request names, and every domain found.
    served: Option<Vec<String>>,
    /// The configured file domains (their [`file_domain_key`]s).
    files: Vec<String>,
    /// Local lock and lease files elsewhere than /run/lock/lvchain (tests without root).
    lock_dir: Option<PathBuf>,
    /// How creations keep the domain lock across bursts (None: one-shot creations).
    burst: Option<BurstSettings>,
    /// Each domain's burst, made by its first creation.
    bursts: Mutex<HashMap<String, Arc<Burst>>>,
}

/// Why a request's domain cannot be opened: the engine's error, or a VG outside the
/// configured ones.
#[derive(Debug)]
pub enum OpenError {
    NotServed(String),
    BadName(BadVgName),
    Engine(Error),
}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        OpenError::Engine(e)
    }
}

/// The form in which a file domain's path is configured and compared: absolute, without empty
/// or `.` components or a trailing `/` (the same directory, spelled one way); None for a
/// relative path or one with `..` (which could name another directory through a symlink).
pub fn file_domain_key(path: &str) -> Option<String> {
    if !path.starts_with('/') || path.contains('\0') {
        return None;
    }
    let mut key = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return None;
        }
        key.push('/');
        key.push_str(part);
    }
    (!key.is_empty()).then_some(key)
}

/// Splits configured domains into VG names and file domains (keys).
fn split(served: Option<Vec<String>>) -> (Option<Vec<String>>, Vec<String>) {
    let Some(list) = served else {
        return (None, Vec::new());
    };
    let (files, vgs): (Vec<String>, Vec<String>) = list
        .into_iter()
        .partition(|d| crate::fsdomain::is_file_domain(d));
    let files = files.iter().filter_map(|f| file_domain_key(f)).collect();
    (Some(vgs), files)
}

impl Domains {
    /// Domains on the real host's LVM.
    pub fn host(lvm: Arc<Lvm>, served: Option<Vec<String>>) -> Domains {
        let (served, files) = split(served);
        Domains {
            backend: lvm.clone(),
            host: Some(lvm),
            served,
            files,
            lock_dir: None,
            burst: None,
            bursts: Mutex::default(),
        }
    }

    /// Domains on any backend, with lock files in `lock_dir` (the simulated LVM in tests).
    pub fn on(backend: Arc<dyn Backend>, served: Vec<String>, lock_dir: PathBuf) -> Domains {
        let (vgs, files) = split(Some(served));
        Domains {
            backend,
            host: None,
            served: vgs,
            files,
            lock_dir: Some(lock_dir),
            burst: None,
            bursts: Mutex::default(),
        }
    }

    /// Creations keep the domain lock across bursts with these settings.
    pub fn with_bursts(mut self, burst: Option<BurstSettings>) -> Domains {
        self.burst = burst;
        self
    }

    /// Creates a volume in `vg`: within the domain's burst (the lock kept across creations,
    /// no report while it is held) when bursts are on, else as a one-shot creation (always on
    /// a file domain: bursts are a block domain's fast path).
    pub fn create_volume(&self, vg: &str, req: &CreateRequest) -> Result<Volume, OpenError> {
        let Some(settings) = self.burst.filter(|_| !crate::fsdomain::is_file_domain(vg)) else {
            return Ok(self.open(vg)?.create_volume(req)?);
        };
        let name = VgName::new(vg).map_err(OpenError::BadName)?;
        self.check_served(vg)?;
        let burst = {
            let mut bursts = self.bursts.lock().unwrap_or_else(|p| p.into_inner());
            match bursts.get(vg) {
                Some(b) => b.clone(),
                None => {
                    let b = Domain::with_local(name, self.backend.clone(), self.local(None))
                        .burst(settings);
                    bursts.insert(vg.to_string(), b.clone());
                    b
                }
            }
        };
        Ok(burst.create_volume(req)?)
    }

    /// Ends every burst: their domain locks are released (shutdown).
    pub fn end_bursts(&self) {
        self.bursts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn local(&self, lock_wait: Option<Duration>) -> Local {
        let mut local = Local::default();
        if let Some(dir) = &self.lock_dir {
            local.lock.dir = dir.clone();
            local.leases.dir = dir.clone();
        }
        if let Some(wait) = lock_wait {
            local.lock = LocalLock {
                timeout: wait,
                ..local.lock
            };
        }
        local
    }

    fn check_served(&self, vg: &str) -> Result<(), OpenError> {
        match &self.served {
            Some(list) if !list.iter().any(|s| s == vg) => Err(OpenError::NotServed(vg.into())),
            _ => Ok(()),
        }
    }

    /// The name of a served domain as the engine takes it: a VG name, or a configured file
    /// domain's path as the request spells it (so answers name it as the CLI in-process does).
    fn served_name(&self, vg: &str) -> Result<VgName, OpenError> {
        if crate::fsdomain::is_file_domain(vg) {
            let key = file_domain_key(vg);
            return match VgName::file_domain(vg) {
                Some(name) if key.is_some_and(|k| self.files.contains(&k)) => Ok(name),
                _ => Err(OpenError::NotServed(vg.into())),
            };
        }
        let name = VgName::new(vg).map_err(OpenError::BadName)?;
        self.check_served(vg)?;
        Ok(name)
    }

    /// The handle of domain `vg` for one request.
    pub fn open(&self, vg: &str) -> Result<Domain, OpenError> {
        let name = self.served_name(vg)?;
        Ok(Domain::with_local(
            name,
            self.backend.clone(),
            self.local(None),
        ))
    }

    /// The handle for a periodic gc: it waits [`GC_LOCK_WAIT`] at most for the domain lock.
    pub fn open_for_gc(&self, vg: &str) -> Result<Domain> {
        let name = self.served_name(vg).map_err(|e| match e {
            OpenError::NotServed(vg) => Error::InvalidInput(format!("{vg} is not served")),
            OpenError::BadName(e) => Error::InvalidInput(e.to_string()),
            OpenError::Engine(e) => e,
        })?;
        Ok(Domain::with_local(
            name,
            self.backend.clone(),
            self.local(Some(GC_LOCK_WAIT)),
        ))
    }

    /// Whether the served domains are a fixed list (configured), not found on the host.
    pub fn is_fixed(&self) -> bool {
        self.served.is_some()
    }

    /// The name under which the agent records a domain's gc runs and gauges: a file domain's
    /// [`file_domain_key`] (one record however a request spells its path), else the name.
    pub fn key(vg: &str) -> String {
        match crate::fsdomain::is_file_domain(vg) {
            true => file_domain_key(vg).unwrap_or_else(|| vg.to_string()),
            false => vg.to_string(),
        }
    }

    /// The configured file domains.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// Every served domain: the VGs ([`Domains::vgs`]), then the configured file domains.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut list = self.vgs()?;
        list.extend(self.files.iter().cloned());
        Ok(list)
    }

    /// Every served domain for the agent's own rounds (gc, census, held images): as
    /// [`Domains::list`], but VGs that cannot be listed (logged) leave the file domains served.
    pub fn list_for_rounds(&self) -> Vec<String> {
        let mut list = self.vgs().unwrap_or_else(|e| {
            tracing::warn!("cannot list the VGs: {e}");
            Vec::new()
        });
        list.extend(self.files.iter().cloned());
        list
    }

    /// The configured VGs, or every lvchain domain this host's LVM sees (one report).
    pub fn vgs(&self) -> Result<Vec<String>> {
        if let Some(list) = &self.served {
            return Ok(list.clone());
        }
        let Some(lvm) = &self.host else {
            return Ok(Vec::new());
        };
        let domain = Tag::Domain.to_string();
        Ok(lvm
            .vgs_all()?
            .into_iter()
            .filter(|vg| vg.vg_tags.contains(&domain))
            .map(|vg| vg.vg_name)
            .collect())
    }
}
