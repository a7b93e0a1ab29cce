//! The domains the agent serves and the one place it opens the engine's [`Domain`] handle
//! (every request and every gc round gets a fresh handle on the shared backend, as a CLI
//! process would). Never acts on a domain itself.

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
    /// The configured domains; None: any VG a request names, and every domain found.
    served: Option<Vec<String>>,
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

impl Domains {
    /// Domains on the real host's LVM.
    pub fn host(lvm: Arc<Lvm>, served: Option<Vec<String>>) -> Domains {
        Domains {
            backend: lvm.clone(),
            host: Some(lvm),
            served,
            lock_dir: None,
            burst: None,
            bursts: Mutex::default(),
        }
    }

    /// Domains on any backend, with lock files in `lock_dir` (the simulated LVM in tests).
    pub fn on(backend: Arc<dyn Backend>, served: Vec<String>, lock_dir: PathBuf) -> Domains {
        Domains {
            backend,
            host: None,
            served: Some(served),
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
    /// no report while it is held) when bursts are on, else as a one-shot creation.
    pub fn create_volume(&self, vg: &str, req: &CreateRequest) -> Result<Volume, OpenError> {
        let Some(settings) = self.burst else {
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

    /// The handle of domain `vg` for one request.
    pub fn open(&self, vg: &str) -> Result<Domain, OpenError> {
        let name = VgName::new(vg).map_err(OpenError::BadName)?;
        self.check_served(vg)?;
        Ok(Domain::with_local(
            name,
            self.backend.clone(),
            self.local(None),
        ))
    }

    /// The handle for a periodic gc: it waits [`GC_LOCK_WAIT`] at most for the domain lock.
    pub fn open_for_gc(&self, vg: &str) -> Result<Domain> {
        let name = VgName::new(vg).map_err(|e| Error::InvalidInput(e.to_string()))?;
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

    /// The configured domains, or every lvchain domain this host's LVM sees (one report).
    pub fn list(&self) -> Result<Vec<String>> {
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
