//! File domains: the same volumes, chains and transactions on a directory of any POSIX file
//! system (NFS in production), behind the same [`crate::domain::Domain`] facade as block
//! domains. A domain argument that contains a `/` names one.
//!
//! Layout under the domain directory:
//! - `dom_md/metadata`: the domain's `KEY=VALUE` + `CHECKSUM` record (`ID`, `STATE=formatting`
//!   while it is being formatted, `complete` once done: the half-formatted marker), `LOCK`,
//!   `WIPE`; while a domain removal runs it is `dom_md/metadata.removing`.
//!   `dom_md/domain.lock`: this host's `flock` (the domain lock's local part, both managers).
//!   `dom_md/ids` and `dom_md/leases`: the sanlock lockspace (named after the domain `ID`, so
//!   every host names it alike whatever path it mounts the domain at) and the domain lock at
//!   1 MiB of `leases` (zeroed and unused with the local manager);
//!   `dom_md/local-leases/<volume>.lease`: the local manager's volume leases (OFD locks).
//! - `images/<image>/<volume>`: the data (raw, or qcow2 naming its parent's bare id as backing
//!   file, resolved in the same directory); `<volume>.meta`: the volume's metadata in the
//!   same codec as a block slot; `<volume>.lease`: the volume's sanlock lease (1 MiB, sanlock
//!   domains only). While a transaction is open the metadata file carries its marker in its
//!   name: `<volume>.meta.creating`, `<volume>.meta.removing`. Names `.nfs*` are the NFS
//!   client's (a removed file still open somewhere) and are no domain's.
//!
//! The seam: a [`crate::domain::Domain`] whose name is a path carries a [`FileDomain`], and
//! every facade method sends its call here. Below the facade the two kinds share what is not
//! storage: the readers' [`crate::volume::Catalog`] (chains, roles, listings, views), creation's validation
//! (`volume::create`'s plan), the committed-role rule, the status verdicts
//! ([`crate::operation`]), the gc and check reports, and the crash-point names; each kind keeps
//! its own storage steps (LV tags and slots there; file names, renames and fsyncs here), so
//! the block engine, proven on real LVM, is untouched.
//!
//! What owns what: [`store`] scans the directory into the engine's [`crate::volume::Catalog`] (the same view
//! block domains give readers, so chains, listings and JSON views are shared);
//! [`txn`] holds the create / remove / gc / check transactions; [`op`] the lease/generation
//! protocol; [`atomic`] the durable file-system steps.

pub mod atomic;
pub mod op;
pub mod store;
pub mod txn;

use crate::domain::DomainInfo;
use crate::error::{Error, Result};
use crate::format::ids::{ImageId, VolumeId};
use crate::lock::local::{LocalLeases, LocalLock};
use crate::lock::sanlock::{failed, Areas};
use crate::lock::{Both, DomainGuard, LeaseGuard, LockError, LockKind, SanlockAction};
use crate::tags::Wipe;
use crate::units::Bytes;
use std::path::{Path, PathBuf};

pub use store::{Entry, Marker, Scan};

/// The directory of domain metadata, lock and lease files.
pub const DOM_MD: &str = "dom_md";
/// The directory of image directories.
pub const IMAGES: &str = "images";
/// Size of the reserved sanlock areas (`dom_md/ids`, `dom_md/leases`).
const AREA_SIZE: u64 = 8 << 20;
/// The `vg` name under which the local lock manager keeps this domain's lease files.
pub(crate) const LEASE_DIR: &str = "local-leases";

/// Whether a domain argument names a file domain (a path: it contains a `/`).
pub fn is_file_domain(name: &str) -> bool {
    name.contains('/')
}

/// A file domain: its directory and this host's locks on it.
#[derive(Debug)]
pub struct FileDomain {
    /// The directory as given (what reports show as the domain's name).
    pub(crate) name: String,
    pub(crate) root: PathBuf,
    lock: LocalLock,
    leases: LocalLeases,
    /// The record's id and lock manager, read once (neither ever changes).
    facts: std::sync::OnceLock<(uuid::Uuid, LockKind)>,
}

/// The domain record (`dom_md/metadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    pub id: uuid::Uuid,
    pub complete: bool,
    pub lock: LockKind,
    pub wipe: Wipe,
}

impl DomainRecord {
    fn encode(&self) -> Vec<u8> {
        let body = format!(
            "LVC_FILE_DOMAIN=1\nID={}\nSTATE={}\nLOCK={}\nWIPE={}\n",
            self.id,
            if self.complete {
                "complete"
            } else {
                "formatting"
            },
            self.lock,
            self.wipe
        );
        format!("{body}CHECKSUM={:08x}\n", crc32fast::hash(body.as_bytes())).into_bytes()
    }

    fn decode(text: &str) -> std::result::Result<DomainRecord, String> {
        let pos = text.rfind("CHECKSUM=").ok_or("no checksum")?;
        let (body, tail) = text.split_at(pos);
        let want = tail
            .trim_end()
            .strip_prefix("CHECKSUM=")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or("malformed checksum")?;
        if crc32fast::hash(body.as_bytes()) != want {
            return Err("checksum mismatch".into());
        }
        let kv: std::collections::HashMap<&str, &str> =
            body.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| kv.get(k).copied().ok_or(format!("no {k}"));
        if get("LVC_FILE_DOMAIN")? != "1" {
            return Err("unknown format".into());
        }
        Ok(DomainRecord {
            id: get("ID")?.parse().map_err(|_| "ID is not a UUID")?,
            complete: match get("STATE")? {
                "complete" => true,
                "formatting" => false,
                s => return Err(format!("unknown STATE {s}")),
            },
            lock: get("LOCK")?
                .parse()
                .map_err(|e: crate::lock::UnknownLockKind| e.to_string())?,
            wipe: get("WIPE")?.parse()?,
        })
    }
}

impl FileDomain {
    /// The file domain at `name` (a path; nothing is read yet).
    pub fn new(name: &str) -> FileDomain {
        let root = PathBuf::from(name);
        let dom_md = root.join(DOM_MD);
        FileDomain {
            name: name.to_string(),
            lock: LocalLock {
                dir: dom_md.clone(),
                ..Default::default()
            },
            leases: LocalLeases { dir: dom_md },
            root,
            facts: std::sync::OnceLock::new(),
        }
    }

    /// The domain's id and lock manager (from its record, read once).
    fn facts(&self) -> Result<(uuid::Uuid, LockKind)> {
        if let Some(f) = self.facts.get() {
            return Ok(*f);
        }
        let rec = self.record()?;
        Ok(*self.facts.get_or_init(|| (rec.id, rec.lock)))
    }

    /// The domain's lock manager.
    pub fn lock_kind(&self) -> Result<LockKind> {
        Ok(self.facts()?.1)
    }

    /// The sanlock areas of a domain with the record `id`.
    fn areas_of(&self, id: uuid::Uuid) -> Areas {
        Areas {
            lockspace: id.to_string(),
            ids: self.dom_md().join("ids"),
            leases: self.dom_md().join("leases"),
            domain: self.name.clone(),
        }
    }

    /// The sanlock areas, for a domain whose lock manager is sanlock.
    fn sanlock(&self) -> Result<Option<Areas>> {
        let (id, kind) = self.facts()?;
        Ok((kind == LockKind::Sanlock).then(|| self.areas_of(id)))
    }

    /// The same domain, waiting at most `timeout` for its domain lock (the host agent's
    /// periodic gc waits briefly and skips a busy round).
    pub fn with_lock_timeout(mut self, timeout: std::time::Duration) -> FileDomain {
        self.lock.timeout = timeout;
        self
    }

    pub(crate) fn dom_md(&self) -> PathBuf {
        self.root.join(DOM_MD)
    }

    pub(crate) fn record_path(&self) -> PathBuf {
        self.dom_md().join("metadata")
    }

    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join(IMAGES)
    }

    pub(crate) fn image_dir(&self, image: &crate::format::ids::ImageId) -> PathBuf {
        self.images_dir().join(image.to_string())
    }

    /// NotADomain unless the domain record is there.
    fn require_record(&self) -> Result<()> {
        if self.record_path().is_file() {
            Ok(())
        } else {
            Err(self.not_a_domain())
        }
    }

    fn not_a_domain(&self) -> Error {
        let hint = if self.removing_path().exists() {
            " (its removal did not finish: run `lvchain domain remove` again)"
        } else if self.root.is_dir() {
            " (it has no dom_md/metadata)"
        } else {
            " (no such directory)"
        };
        Error::NotADomain {
            vg: self.name.clone(),
            hint: hint.into(),
        }
    }

    /// The domain record, refusing what is not a complete file domain.
    pub fn record(&self) -> Result<DomainRecord> {
        let not = |hint: String| Error::NotADomain {
            vg: self.name.clone(),
            hint,
        };
        if !self.root.is_dir() {
            return Err(not(" (no such directory)".into()));
        }
        let text = match std::fs::read_to_string(self.record_path()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(not(" (it has no dom_md/metadata)".into()))
            }
            Err(e) => return Err(Error::io("reading dom_md/metadata")(e)),
        };
        let rec =
            DomainRecord::decode(&text).map_err(|r| not(format!(" (dom_md/metadata: {r})")))?;
        if !rec.complete {
            return Err(not(
                " (a format did not finish: `lvchain domain create` completes it)".into(),
            ));
        }
        Ok(rec)
    }

    /// The domain facts in the shape block domains report them (a file domain has no slots
    /// and no extents: `max_volumes` 0, extent 1 byte; sizes are the file system's).
    pub fn info(&self, rec: &DomainRecord) -> DomainInfo {
        let (size, free) = statvfs(&self.root).unwrap_or((0, 0));
        DomainInfo {
            vg: self.name.clone(),
            format: crate::tags::FORMAT_VERSION,
            lock_manager: rec.lock,
            slot_size: 0,
            max_volumes: 0,
            extent_size: Bytes(1),
            vg_size: Bytes(size),
            vg_free: Bytes(free),
            wipe: rec.wipe,
        }
    }

    /// The domain lock: this host's `flock` on `dom_md/domain.lock`, then, on a sanlock
    /// domain, the domain lease in `dom_md/leases` (other hosts).
    /// Nothing is written before the directory is known to be a domain: the lock file is made
    /// only in the `dom_md` of a directory that has a record, and the record is looked for
    /// again once the lock is held (a removal may have run meanwhile).
    pub(crate) fn lock(&self) -> Result<Box<dyn DomainGuard>> {
        self.require_record()?;
        let local = match self.lock.lock_in_place("domain", &self.name) {
            Err(LockError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.not_a_domain())
            }
            r => r?,
        };
        self.require_record()?;
        match self.sanlock()? {
            None => Ok(local),
            Some(a) => {
                let lease = crate::lock::sanlock::lock_across_hosts(&a, self.lock.timeout)?;
                Ok(Box::new(Both {
                    lease: Some(lease),
                    local,
                }))
            }
        }
    }

    /// The sanlock resource of volume `id`: its lease file, at offset 0.
    fn resource(
        &self,
        a: &Areas,
        image: &ImageId,
        id: &VolumeId,
    ) -> std::result::Result<::sanlock::Resource, crate::lock::LeaseError> {
        crate::lock::sanlock::volume_resource_at(a, id, self.lease_path(image, id), 0)
    }

    /// Where volume `id`'s sanlock lease is (None with the local manager).
    pub(crate) fn lease_location(
        &self,
        image: &ImageId,
        id: &VolumeId,
    ) -> Result<Option<crate::lock::sanlock::LeaseLocation>> {
        Ok(self
            .sanlock()?
            .map(|a| a.location(id, self.lease_path(image, id), 0)))
    }

    /// Volume `id`'s lease, exclusive (refused, naming the holders, while held elsewhere).
    pub(crate) fn lease(&self, image: &ImageId, id: &VolumeId) -> Result<Box<dyn LeaseGuard>> {
        if let Some(a) = self.sanlock()? {
            let res = self.resource(&a, image, id)?;
            return Ok(crate::lock::sanlock::acquire(&a, id, &res, false)?);
        }
        Ok(self.leases.acquire(LEASE_DIR, id, 0).map_err(|e| {
            crate::lock::explain_held(e, || self.leases.shared_holders(LEASE_DIR, id, 0))
        })?)
    }

    /// Volume `id`'s lease, shared (readers: a copy's source, a snapshot's parent, a prepared
    /// image).
    pub(crate) fn lease_shared(
        &self,
        image: &ImageId,
        id: &VolumeId,
    ) -> Result<Box<dyn LeaseGuard>> {
        if let Some(a) = self.sanlock()? {
            let res = self.resource(&a, image, id)?;
            return Ok(crate::lock::sanlock::acquire(&a, id, &res, true)?);
        }
        Ok(self.leases.acquire_shared(LEASE_DIR, id, 0)?)
    }

    /// Who holds volume `id`'s lease exclusively (an operation), and whether it lives.
    pub(crate) fn lease_holder(
        &self,
        image: &ImageId,
        id: &VolumeId,
    ) -> Result<Option<crate::lock::Holder>> {
        if let Some(a) = self.sanlock()? {
            let res = self.resource(&a, image, id)?;
            return Ok(crate::lock::sanlock::holder(&a, id, &res)?);
        }
        Ok(self.leases.holder(LEASE_DIR, id, 0)?)
    }

    /// The hosts holding volume `id`'s lease shared.
    pub(crate) fn shared_holders(&self, image: &ImageId, id: &VolumeId) -> Result<Vec<u64>> {
        if let Some(a) = self.sanlock()? {
            let res = self.resource(&a, image, id)?;
            return Ok(crate::lock::sanlock::shared_holders(&a, id, &res)?);
        }
        Ok(self.leases.shared_holders(LEASE_DIR, id, 0)?)
    }

    /// The lease file of volume `id` (made with the volume, removed with it): in its image
    /// directory on a sanlock domain, under `dom_md/local-leases` with the local manager.
    pub(crate) fn lease_path(&self, image: &ImageId, id: &VolumeId) -> PathBuf {
        match self.facts() {
            Ok((_, LockKind::Sanlock)) => self.image_dir(image).join(format!("{id}.lease")),
            _ => self.dom_md().join(LEASE_DIR).join(format!("{id}.lease")),
        }
    }

    /// Makes volume `id`'s lease file: an empty file carrying OFD locks (local manager; no
    /// fsync: one lost in a crash is made again by the first lease taken), or 1 MiB holding a
    /// free sanlock lease, synced (sanlock).
    pub(crate) fn make_lease(&self, image: &ImageId, id: &VolumeId) -> Result<()> {
        let path = self.lease_path(image, id);
        let io = |e| Error::io(format!("creating {}", path.display()))(e);
        if let Some(dir) = path.parent() {
            atomic::make_dir_all(dir).map_err(io)?;
        }
        let f = atomic::create_file(&path, false).map_err(io)?;
        if let Some(a) = self.sanlock()? {
            f.set_len(::sanlock::ALIGN).map_err(io)?;
            f.sync_all().map_err(io)?;
            let res = self.resource(&a, image, id)?;
            crate::lock::sanlock::init(&a, id, &res)?;
            f.sync_all().map_err(io)?;
        }
        Ok(())
    }

    /// Joins the domain's lockspace as `host_id` (sanlock domains only).
    pub fn join(&self, host_id: u64) -> Result<crate::lock::Joined> {
        let a = self.sanlock_or_refuse()?;
        Ok(crate::lock::sanlock::join(&a, host_id)?)
    }

    /// Leaves the domain's lockspace; the host id this host had.
    pub fn leave(&self) -> Result<u64> {
        let a = match self.sanlock_or_refuse() {
            Ok(a) => a,
            // A removal that died after the record went: its `metadata.removing` names it.
            Err(Error::NotADomain { .. }) => match self.removing_record() {
                Some(rec) if rec.lock == LockKind::Sanlock => self.areas_of(rec.id),
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "{} is not a domain",
                        self.name
                    )))
                }
            },
            Err(e) => return Err(e),
        };
        self.leave_lockspace(&a)
    }

    fn leave_lockspace(&self, a: &Areas) -> Result<u64> {
        Ok(crate::lock::sanlock::leave(a).map_err(failed(&self.name, SanlockAction::Leave))?)
    }

    fn sanlock_or_refuse(&self) -> Result<Areas> {
        match self.sanlock()? {
            Some(a) => Ok(a),
            None => Err(LockError::NoHosts {
                vg: self.name.clone(),
                kind: LockKind::Local,
            }
            .into()),
        }
    }

    /// Hosts other than this one joined to the domain's lockspace (none on a local domain).
    pub fn other_hosts(&self) -> Result<Vec<u64>> {
        match self.sanlock()? {
            None => Ok(Vec::new()),
            Some(a) => Ok(crate::lock::sanlock::other_joined_hosts(&a)
                .map_err(failed(&self.name, SanlockAction::ListHosts))?),
        }
    }

    /// This host's record of the images prepared here through the agent (in `/run`: gone at
    /// reboot, like the preparation itself).
    fn prepared_dir(&self) -> Result<PathBuf> {
        Ok(crate::links::run_dir()
            .join(self.facts()?.0.to_string())
            .join("prepared"))
    }

    /// Records `image` as prepared on this host.
    pub(crate) fn mark_prepared(&self, image: &ImageId) -> Result<()> {
        let dir = self.prepared_dir()?;
        let io = |e| Error::io(format!("recording the prepare in {}", dir.display()))(e);
        atomic::make_dir_all(&dir).map_err(io)?;
        let mut f = atomic::create_file(&dir.join(image.to_string()), false).map_err(io)?;
        f.set_len(0).map_err(io)?;
        std::io::Write::write_all(&mut f, format!("{}\n", self.name).as_bytes()).map_err(io)
    }

    /// Forgets `image`'s prepare on this host.
    pub(crate) fn unmark_prepared(&self, image: &ImageId) -> Result<()> {
        let path = self.prepared_dir()?.join(image.to_string());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// The images recorded as prepared on this host.
    pub fn prepared_images(&self) -> Result<Vec<ImageId>> {
        let dir = self.prepared_dir()?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("reading {}", dir.display()))(e)),
        };
        let mut images: Vec<ImageId> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        images.sort();
        Ok(images)
    }

    fn removing_path(&self) -> PathBuf {
        self.dom_md().join("metadata.removing")
    }

    /// The record of a domain whose removal began.
    fn removing_record(&self) -> Option<DomainRecord> {
        std::fs::read_to_string(self.removing_path())
            .ok()
            .and_then(|t| DomainRecord::decode(&t).ok())
    }

    /// Formats the directory as a domain: `dom_md/metadata` first with `STATE=formatting`,
    /// then the areas (sanlock: the lockspace and the domain lock written in them) and
    /// `images/`, then ONE atomic rewrite to `STATE=complete`. Refused, changing nothing, for a
    /// missing directory, one holding other files, a complete domain, and PVs.
    pub fn format(&self, req: &crate::domain::FormatRequest) -> Result<DomainInfo> {
        if !req.pvs.is_empty() {
            return Err(Error::InvalidInput(
                "a file domain takes no physical volumes".into(),
            ));
        }
        if !self.root.is_dir() {
            return Err(Error::InvalidInput(format!(
                "{} is not a directory",
                self.name
            )));
        }
        if self.removing_path().exists() {
            return Err(Error::InvalidInput(format!(
                "a removal of the domain in {} did not finish: run `lvchain domain remove {}` \
                 to finish it first",
                self.name, self.name
            )));
        }
        match self.record() {
            Ok(_) => {
                return Err(Error::AlreadyDomain {
                    vg: self.name.clone(),
                })
            }
            Err(Error::NotADomain { .. }) => {}
            Err(e) => return Err(e),
        }
        let half = std::fs::read_to_string(self.record_path())
            .ok()
            .and_then(|t| DomainRecord::decode(&t).ok())
            .filter(|r| !r.complete);
        if half.is_none() {
            let others: Vec<String> = std::fs::read_dir(&self.root)
                .map_err(Error::io(format!("reading {}", self.name)))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != DOM_MD && n != IMAGES)
                .collect();
            if !others.is_empty() || self.images_dir().exists() {
                return Err(Error::InvalidInput(format!(
                    "{} is not empty ({}): a file domain is formatted in an empty directory",
                    self.name,
                    if others.is_empty() {
                        IMAGES.to_string()
                    } else {
                        others.join(", ")
                    }
                )));
            }
        }
        let io = |what: &str| Error::io(format!("formatting {}: {what}", self.name));
        atomic::make_dir(&self.dom_md()).map_err(io("dom_md"))?;
        atomic::fsync_dir(&self.root).map_err(io("dom_md"))?;
        // This host's lock only: the domain lease is written below (no other host can use
        // a domain whose record says `formatting`).
        let _guard = self.lock.lock_in_place("domain", &self.name)?;
        let mut rec = half.unwrap_or(DomainRecord {
            id: uuid::Uuid::new_v4(),
            complete: false,
            lock: req.lock_manager,
            wipe: req.wipe,
        });
        rec.lock = req.lock_manager;
        rec.wipe = req.wipe;
        atomic::replace(&self.record_path(), &rec.encode()).map_err(io("dom_md/metadata"))?;
        for area in ["ids", "leases"] {
            let f = atomic::create_file(&self.dom_md().join(area), false).map_err(io(area))?;
            f.set_len(AREA_SIZE).map_err(io(area))?;
            f.sync_all().map_err(io(area))?;
        }
        if rec.lock == LockKind::Sanlock {
            crate::lock::sanlock::format_domain(&self.areas_of(rec.id))
                .map_err(failed(&self.name, SanlockAction::Format))?;
        }
        atomic::make_dir(&self.images_dir()).map_err(io(IMAGES))?;
        atomic::fsync_dir(&self.dom_md()).map_err(io("dom_md"))?;
        atomic::fsync_dir(&self.root).map_err(io(IMAGES))?;
        rec.complete = true;
        atomic::replace(&self.record_path(), &rec.encode()).map_err(io("dom_md/metadata"))?;
        Ok(self.info(&rec))
    }

    /// Sets the domain's wipe policy (kept in its record; a file domain never wipes: removing
    /// a file frees its blocks, and a file system never shows them to another file). Returns
    /// the previous one.
    pub fn set_wipe(&self, wipe: Wipe) -> Result<Wipe> {
        let _guard = self.lock()?;
        let mut rec = self.record()?;
        let before = rec.wipe;
        rec.wipe = wipe;
        atomic::replace(&self.record_path(), &rec.encode())
            .map_err(Error::io("writing dom_md/metadata"))?;
        Ok(before)
    }

    /// Removes the domain (with `force`, its volumes first, the way image removal goes);
    /// how many volumes went. Refused while other hosts are joined (sanlock). Under the domain
    /// lock, the record is renamed `metadata.removing` (from then on the directory is no domain
    /// and no host can join it); other hosts are asked again (one that joined meanwhile keeps
    /// the domain: the record is renamed back and the removal refused); then `images/` goes,
    /// the lock is released, this host leaves the lockspace and `dom_md` goes. A removal that
    /// died is finished by running it again.
    pub fn remove(&self, force: bool) -> Result<usize> {
        if !self.record_path().exists() {
            // A removal that died after its record was renamed (the record names the
            // lockspace to leave), or, from older versions, after the record went.
            if let Some(rec) = self.removing_record() {
                return self.finish_remove(&rec).map(|()| 0);
            }
            // A format that died before its first record left at most its lock and its
            // record's temporary file; anything else in the directory is not ours.
            if !self.images_dir().exists() && self.format_leftovers_only() {
                std::fs::remove_dir_all(self.dom_md())
                    .map_err(Error::io(format!("removing {}/dom_md", self.name)))?;
                return Ok(0);
            }
            return Err(self.not_a_domain());
        }
        let hosts = self.other_hosts()?;
        if !hosts.is_empty() {
            return Err(Error::HostsJoined {
                vg: self.name.clone(),
                hosts,
            });
        }
        let mut removed = 0;
        if force {
            let report = txn::gc(self, false)?;
            if let Some(e) = report.orphans.iter().find_map(|o| o.error.clone()) {
                return Err(Error::InvalidInput(format!(
                    "cannot collect the orphans of {} before removing it: {e}",
                    self.name
                )));
            }
            for image in store::scan(self)?.catalog.snap.images() {
                removed += txn::remove_image(self, &image)?;
            }
        }
        let guard = self.lock()?;
        let scan = store::scan(self)?;
        let count = scan.entries.len() + scan.strays.len();
        if count > 0 {
            return Err(Error::DomainNotEmpty {
                vg: self.name.clone(),
                count,
            });
        }
        let rec = self.record()?;
        let io = |e| Error::io(format!("removing {}", self.name))(e);
        // The point of no return: nothing takes the directory for a domain from now on.
        atomic::rename(&self.record_path(), &self.removing_path()).map_err(io)?;
        let hosts = self.other_hosts()?;
        if !hosts.is_empty() {
            atomic::rename(&self.removing_path(), &self.record_path()).map_err(io)?;
            return Err(Error::HostsJoined {
                vg: self.name.clone(),
                hosts,
            });
        }
        crate::crash::point(crate::crash::CrashPoint::DomainRemoveAfterMark);
        let _ = std::fs::remove_dir_all(self.images_dir());
        drop(guard);
        self.finish_remove(&rec)?;
        Ok(removed)
    }

    /// Whether `dom_md` exists and holds nothing but what a format writes before its record
    /// (the lock files and the record's temporary file, see [`atomic::temp_of`]).
    fn format_leftovers_only(&self) -> bool {
        let temp = atomic::temp_of(&self.record_path());
        let temp = temp.file_name().map(|n| n.to_string_lossy().into_owned());
        let Ok(entries) = std::fs::read_dir(self.dom_md()) else {
            return false;
        };
        entries.flatten().all(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name == "domain.lock" || name == "domain.want" || Some(&name) == temp.as_ref()
        })
    }

    /// The end of a removal whose record is `metadata.removing`: `images/` (emptied under the
    /// lock), then this host leaves the lockspace (the daemon keeps `dom_md/ids` open while
    /// joined), then `dom_md` goes.
    fn finish_remove(&self, rec: &DomainRecord) -> Result<()> {
        match std::fs::remove_dir_all(self.images_dir()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing {}/images", self.name))(e))
            }
            _ => {}
        }
        if rec.lock == LockKind::Sanlock {
            let a = self.areas_of(rec.id);
            if crate::lock::sanlock::joined(&a).is_some() {
                self.leave_lockspace(&a)?;
            }
        }
        std::fs::remove_dir_all(self.dom_md())
            .map_err(Error::io(format!("removing {}/dom_md", self.name)))
    }
}

/// Size and free bytes of the file system holding `dir`.
fn statvfs(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills a plain struct from a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    let frsize = s.f_frsize as u64;
    Some((s.f_blocks as u64 * frsize, s.f_bavail as u64 * frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_domain_record_round_trips_and_detects_damage() {
        let rec = DomainRecord {
            id: uuid::Uuid::new_v4(),
            complete: false,
            lock: LockKind::Local,
            wipe: Wipe::Zero,
        };
        let text = String::from_utf8(rec.encode()).unwrap_or_default();
        assert_eq!(DomainRecord::decode(&text), Ok(rec.clone()));
        let torn = text.replace("formatting", "complete");
        assert!(DomainRecord::decode(&torn).is_err());
        assert!(is_file_domain("/srv/dom1") && is_file_domain("./d") && !is_file_domain("vg1"));
    }
}
