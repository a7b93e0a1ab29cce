//! Lock managers: the domain lock (serializes every change of a domain's VG metadata), volume
//! leases (who may change a volume's data, readable by anyone without the holder's help) and the
//! hosts that share a domain.
//!
//! A domain names its manager in its `LVC_LOCK` tag ([`LockKind`]); [`manager`] gives the
//! implementation of a kind, so the domain layer takes whatever its own tag says, never what this
//! host did. One trait, [`LockManager`], covers everything a manager does — the domain lock,
//! volume leases and their holders, formatting its areas, and joining, leaving and listing hosts —
//! because these are one mechanism per kind: sanlock's domain lock and volume leases live in the
//! lockspace the host joined, and the local manager's in files on this host (where "hosts" are
//! just this one). Capabilities a kind lacks (hosts of a local domain) are refused by its
//! implementation with a typed error, so callers never ask which kind they hold.
//!
//! [`local::Local`]: this host's `flock` ([`local::LocalLock`], in `flock.rs`) and
//! open-file-description locks under `/run/lock/lvchain`, one host.
//! [`sanlock::Sanlock`]: the same `flock`, then paxos leases in the domain's `leases` LV and the
//! lockspace in its `ids` LV, many hosts (the binding itself is the `sanlock` crate). A lock or a
//! lease belongs to the process that took it and is released when that process dies, so a
//! reader can tell a running operation (lease held by a live holder) from a dead one (free).

mod flock;
pub mod local;
pub mod sanlock;

use crate::domain::format::{LEASES_RESERVED, LEASE_SIZE};
use crate::exec::{Carry, Inherit};
use crate::format::ids::VolumeId;
use ::sanlock::{SanlockError, SectorSize};
use std::fmt;
use std::os::fd::BorrowedFd;
use std::str::FromStr;
use std::time::Duration;

/// The lock manager of a domain, as its `LVC_LOCK` tag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// One host: file locks under `/run/lock/lvchain`.
    Local,
    /// Many hosts: sanlock leases on the domain's own storage.
    Sanlock,
}

impl LockKind {
    pub const ALL: [LockKind; 2] = [LockKind::Local, LockKind::Sanlock];

    pub const fn as_str(self) -> &'static str {
        match self {
            LockKind::Local => "local",
            LockKind::Sanlock => "sanlock",
        }
    }
}

impl fmt::Display for LockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `LVC_LOCK` value (or `--lock-manager` argument) this lvchain does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lock manager {0:?} (this lvchain knows local and sanlock)")]
pub struct UnknownLockKind(pub String);

impl FromStr for LockKind {
    type Err = UnknownLockKind;
    fn from_str(s: &str) -> Result<LockKind, UnknownLockKind> {
        LockKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownLockKind(s.to_string()))
    }
}

/// What a sanlock call failed to do, for [`LockError::Sanlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanlockAction {
    TakeDomainLock,
    Format,
    ReadLockspace,
    Join,
    Leave,
    ListHosts,
}

impl fmt::Display for SanlockAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SanlockAction::TakeDomainLock => "take the cluster lock of domain",
            SanlockAction::Format => "format the sanlock areas of",
            SanlockAction::ReadLockspace => "read the lockspace of",
            SanlockAction::Join => "join the lockspace of",
            SanlockAction::Leave => "leave the lockspace of",
            SanlockAction::ListHosts => "list the hosts of",
        })
    }
}

/// Errors of the domain lock and of host membership.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("domain {vg} is locked by another process; gave up after {}s", .waited.as_secs())]
    Busy { vg: String, waited: Duration },
    #[error("cannot use the lock file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {action} {vg}: {source}")]
    Sanlock {
        vg: String,
        action: SanlockAction,
        #[source]
        source: SanlockError,
    },
    #[error("this host has not joined the lockspace of domain {vg}; run `lvchain host join {vg} --host-id N`")]
    NotJoined { vg: String },
    #[error("domain {vg} uses the {kind} lock manager: only sanlock domains have hosts to join")]
    NoHosts { vg: String, kind: LockKind },
    #[error("--host-id must be 1 to {} on domain {vg}: its storage has {sectors}", .sectors.max_hosts())]
    HostIdOutOfRange {
        vg: String,
        host_id: u64,
        sectors: SectorSize,
    },
    #[error("cannot join the lockspace of {vg}: this host has joined {vg} as host {joined}; run `lvchain host leave {vg}` before joining as host {host_id}")]
    JoinedAs {
        vg: String,
        joined: u64,
        host_id: u64,
    },
    #[error("cannot record the host id in {path}: {source}")]
    HostIdFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{vg}: a sanlock domain's VG name has at most {max} characters")]
    NameTooLong { vg: String, max: usize },
    #[error("cannot join the lockspace of {vg}: this host has joined lockspace {lockspace} on {joined}, a domain with the same id (a copy of this one?); one domain id, one domain")]
    SameLockspaceElsewhere {
        vg: String,
        lockspace: String,
        joined: String,
    },
}

/// Errors of volume leases.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the lease of volume {volume} is held by {holder}")]
    Held { volume: VolumeId, holder: String },
    #[error("volume {volume} is in use on {}: its lease is held in shared mode there (its image prepared, or a copy or snapshot reading it); tear the image down there, or wait for the reader", describe_hosts(.hosts))]
    Prepared { volume: VolumeId, hosts: Vec<u64> },
    #[error("this host has not joined the lockspace of domain {vg}; run `lvchain host join {vg} --host-id N`")]
    NoLockspace { vg: String },
    #[error("the sanlock daemon does not answer on this host ({source}); start it, then `lvchain host join`")]
    NoDaemon {
        #[source]
        source: SanlockError,
    },
    #[error("lease I/O on {what}: {reason}")]
    Io { what: String, reason: String },
    #[error("lease I/O on sanlock lease of {volume}: {source}")]
    Sanlock {
        volume: VolumeId,
        #[source]
        source: SanlockError,
    },
}

/// Names the hosts of a shared holding: sanlock host ids; 0 is this host (a local domain).
pub fn describe_hosts(hosts: &[u64]) -> String {
    match hosts {
        [0] => "this host".to_string(),
        [one] => format!("host {one}"),
        many => {
            let ids: Vec<String> = many.iter().map(u64::to_string).collect();
            format!("hosts {}", ids.join(", "))
        }
    }
}

/// Who holds a lease, as read from shared storage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// sanlock host id (0 for the local lock manager).
    pub host_id: u64,
    /// Whether the holder is alive (its host renews its lockspace, or its process exists).
    pub alive: bool,
}

/// What holds a lock or a lease: the descriptors a program must have open to hold it too
/// (all close-on-exec; see [`Holding`] for handing them to an operation's programs).
pub trait Descriptors {
    fn fds(&self) -> Vec<BorrowedFd<'_>>;
}

impl<T: Descriptors + ?Sized> Descriptors for Box<T> {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        (**self).fds()
    }
}

impl<T: Descriptors + ?Sized> Descriptors for &T {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        (**self).fds()
    }
}

/// A held domain lock; dropping it releases the lock (a long-running client may hold it on
/// any thread).
pub trait DomainGuard: Send + Descriptors {}

/// A lock or lease held by the operation running on this thread: every program the thread
/// starts while it is held inherits it (lvm through a holder process, see
/// [`crate::exec::Cmd::closes_inherited_fds`]), so if lvchain dies, the lock lasts until those
/// programs have ended too. Programs of other threads never get it. Not `Send`: it belongs to
/// its thread.
pub struct Holding<G: Descriptors> {
    // Declared first: the duplicates close before the guard releases the lock.
    _carry: Carry,
    guard: G,
}

impl<G: Descriptors> Holding<G> {
    /// Hands `guard`'s descriptors to the programs this thread starts from now on.
    pub fn on_this_thread(guard: G) -> std::io::Result<Holding<G>> {
        let carry = Inherit::new(guard.fds())?.carry();
        Ok(Holding {
            _carry: carry,
            guard,
        })
    }

    pub fn guard(&self) -> &G {
        &self.guard
    }
}

impl<G: Descriptors> fmt::Debug for Holding<G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Holding")
    }
}

/// A domain lock held in two parts: the part beyond this host, then this host's local lock
/// (released in that order).
pub struct Both {
    pub lease: Option<Box<dyn DomainGuard>>,
    pub local: Box<dyn DomainGuard>,
}
impl DomainGuard for Both {}
impl Descriptors for Both {
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let mut fds = self.local.fds();
        fds.extend(self.lease.iter().flat_map(|l| l.fds()));
        fds
    }
}

/// A held lease; dropping it releases the lease. Sendable: the agent keeps the shared leases
/// of prepared images across its threads. An operation whose programs write under it (a data
/// writer such as qemu-img) holds it as a [`Holding`]: the lease is then free only once this
/// process and those programs are all gone, never while a writer it started still runs.
pub trait LeaseGuard: Send + Descriptors {}

/// Which part of a domain lock a wait was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockPart {
    /// This host's local lock (every manager's first part).
    Local,
    /// The part across hosts (sanlock's domain lease).
    AcrossHosts,
}

impl LockPart {
    pub fn as_str(self) -> &'static str {
        match self {
            LockPart::Local => "local",
            LockPart::AcrossHosts => "across_hosts",
        }
    }
}

/// One acquisition of a domain lock's part, as an observer sees it (after it ended).
#[derive(Debug)]
pub struct Waited<'a> {
    pub vg: &'a str,
    pub part: LockPart,
    /// From the first try to the lock taken or given up.
    pub waited: Duration,
    pub outcome: WaitOutcome,
}

/// How a wait for a lock ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    Acquired,
    /// Still held by another holder at the timeout.
    Busy,
    /// Any other error.
    Failed,
}

impl WaitOutcome {
    pub fn of<T>(r: &Result<T, LockError>) -> WaitOutcome {
        match r {
            Ok(_) => WaitOutcome::Acquired,
            Err(LockError::Busy { .. }) => WaitOutcome::Busy,
            Err(_) => WaitOutcome::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WaitOutcome::Acquired => "acquired",
            WaitOutcome::Busy => "busy",
            WaitOutcome::Failed => "failed",
        }
    }
}

type WaitObserver = Box<dyn Fn(&Waited<'_>) + Send + Sync>;

static WAIT_OBSERVER: std::sync::OnceLock<WaitObserver> = std::sync::OnceLock::new();

/// Sets the process's one lock-wait observer (a long-running client's metrics); false when one
/// was set already. It runs on the waiting thread: it must be quick.
pub fn set_wait_observer(observer: WaitObserver) -> bool {
    WAIT_OBSERVER.set(observer).is_ok()
}

/// Tells the observer (if one is set) how an acquisition of `part` of `vg`'s lock ended.
fn observe_wait<T>(vg: &str, part: LockPart, waited: Duration, r: &Result<T, LockError>) {
    if let Some(observer) = WAIT_OBSERVER.get() {
        observer(&Waited {
            vg,
            part,
            waited,
            outcome: WaitOutcome::of(r),
        });
    }
}

/// Where a volume's lease lives in the leases LV: after the reserved area, 1 MiB per slot.
pub fn lease_offset(slot: u32) -> u64 {
    LEASES_RESERVED + LEASE_SIZE * u64::from(slot)
}

/// This host joined a domain's lockspace as `host_id`; `new` unless it had already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub host_id: u64,
    pub new: bool,
}

/// Everything a lock manager does for the domains of its kind (`vg` names the domain).
pub trait LockManager: Send + Sync {
    /// The kind whose `LVC_LOCK` tag selects this manager.
    fn kind(&self) -> LockKind;

    /// Refuses a VG name the manager cannot name its areas after (before anything is done).
    fn check_vg_name(&self, _vg: &str) -> Result<(), LockError> {
        Ok(())
    }
    /// Special LVs the manager keeps its areas in: active while leases are taken or read, and
    /// held open by the manager (so a domain is released before these LVs can go).
    fn lvs(&self) -> &'static [&'static str] {
        &[]
    }
    /// Writes the manager's areas of a new domain (its special LVs are active).
    fn format(&self, _vg: &str) -> Result<(), LockError> {
        Ok(())
    }

    /// Takes the domain's exclusive lock (every metadata-changing operation holds it): this
    /// host's local lock, then [`LockManager::lock_across_hosts`].
    fn lock_domain(&self, vg: &str) -> Result<Box<dyn DomainGuard>, LockError>;
    /// The part of the domain lock beyond this host, taken while this host's local lock is held
    /// (sanlock's domain lease); None for a manager of one host, whose local lock is all of it.
    fn lock_across_hosts(&self, _vg: &str) -> Result<Option<Box<dyn DomainGuard>>, LockError> {
        Ok(None)
    }

    /// Takes the volume's lease for this process, or fails at once when someone holds it
    /// (with [`LeaseError::Prepared`] naming the hosts when they hold it in shared mode).
    fn acquire(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError>;
    /// Takes the volume's lease in shared mode (readers of its data: any number of them, and
    /// no exclusive holder meanwhile), or fails at once when it is held exclusively.
    fn acquire_shared(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Box<dyn LeaseGuard>, LeaseError>;
    /// The hosts holding the volume's lease in shared mode (images prepared there), read
    /// without taking it; hosts known to be dead are left out. The local manager answers `[0]`
    /// (this host) or nothing.
    fn shared_holders(
        &self,
        vg: &str,
        volume: &VolumeId,
        slot: u32,
    ) -> Result<Vec<u64>, LeaseError>;
    /// Reads who holds the lease, without taking it and without having joined.
    fn holder(&self, vg: &str, volume: &VolumeId, slot: u32) -> Result<Option<Holder>, LeaseError>;
    /// Prepares the lease area of a new volume (sanlock writes its paxos lease).
    fn init(&self, _vg: &str, _volume: &VolumeId, _slot: u32) -> Result<(), LeaseError> {
        Ok(())
    }

    /// Whether hosts join the domain (a lockspace) before they change it.
    fn has_hosts(&self) -> bool {
        false
    }
    /// Joins the domain as `host_id` (its [`LockManager::lvs`] are active).
    fn join(&self, vg: &str, _host_id: u64) -> Result<Joined, LockError> {
        Err(LockError::NoHosts {
            vg: vg.to_string(),
            kind: self.kind(),
        })
    }
    /// Leaves the domain; returns the host id this host had (refused while it holds leases).
    fn leave(&self, vg: &str) -> Result<u64, LockError> {
        Err(LockError::NoHosts {
            vg: vg.to_string(),
            kind: self.kind(),
        })
    }
    /// The host id this host joined the domain with, if it did.
    fn joined_host_id(&self, _vg: &str) -> Option<u64> {
        None
    }
    /// Other hosts joined to the domain and not known to be gone.
    fn other_hosts(&self, _vg: &str) -> Result<Vec<u64>, LockError> {
        Ok(Vec::new())
    }
}

/// The manager of `kind`, with this host's local lock settings (the sanlock manager takes the
/// local lock first too).
pub fn manager(kind: LockKind, local: &local::Local) -> Box<dyn LockManager> {
    match kind {
        LockKind::Local => Box::new(local.clone()),
        LockKind::Sanlock => Box::new(sanlock::Sanlock {
            local: local.clone(),
        }),
    }
}

/// Turns a refused exclusive acquire into [`LeaseError::Prepared`] when the lease is held in
/// shared mode (read afterwards: a reader that cannot tell keeps the original error).
pub(crate) fn explain_held(
    e: LeaseError,
    shared: impl FnOnce() -> Result<Vec<u64>, LeaseError>,
) -> LeaseError {
    match e {
        LeaseError::Held { volume, .. } => match shared() {
            Ok(hosts) if !hosts.is_empty() => LeaseError::Prepared { volume, hosts },
            _ => e,
        },
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_holders_are_named() {
        assert_eq!(describe_hosts(&[0]), "this host");
        assert_eq!(describe_hosts(&[2]), "host 2");
        assert_eq!(describe_hosts(&[2, 5]), "hosts 2, 5");
    }

    #[test]
    fn lock_kinds_read_and_write_their_tag_values() {
        for k in LockKind::ALL {
            assert_eq!(k.to_string().parse::<LockKind>(), Ok(k));
            assert_eq!(
                serde_json::to_string(&k).ok(),
                Some(format!("\"{}\"", k.as_str()))
            );
        }
        assert_eq!("local".parse::<LockKind>(), Ok(LockKind::Local));
        assert_eq!("sanlock".parse::<LockKind>(), Ok(LockKind::Sanlock));
        let e = "dlm".parse::<LockKind>().err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("unknown lock manager \"dlm\" (this lvchain knows local and sanlock)")
        );
        assert!("Local".parse::<LockKind>().is_err());
        assert!("".parse::<LockKind>().is_err());
    }

    #[test]
    fn each_kind_gets_its_manager() {
        let local = local::Local::default();
        for k in LockKind::ALL {
            assert_eq!(manager(k, &local).kind(), k);
        }
        assert!(!manager(LockKind::Local, &local).has_hosts());
        assert!(manager(LockKind::Sanlock, &local).has_hosts());
    }
}
