//! The domains the agent serves and the one place it opens the engine's [`Domain`] handle
//! (every request and every gc round gets a fresh handle on the shared backend, as a CLI
//! process would). Never acts on a domain itself.

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::ids::{BadVgName, VgName};
use crate::lock::local::{Local, LocalLock};
use crate::lvm::{Backend, Lvm};
use crate::tags::Tag;
use std::path::PathBuf;
use std::sync::Arc;
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
        }
    }

    /// Domains on any backend, with lock files in `lock_dir` (the simulated LVM in tests).
    pub fn on(backend: Arc<dyn Backend>, served: Vec<String>, lock_dir: PathBuf) -> Domains {
        Domains {
            backend,
            host: None,
            served: Some(served),
            lock_dir: Some(lock_dir),
        }
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
