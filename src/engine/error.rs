//! Errors of the domain, volume, chain and collector layers, in the operator's words.

use crate::format::ids::{ImageId, VolumeId};
use crate::lock::{LeaseError, LockError, LockKind};
use crate::lvm::LvmError;
use crate::metadata::MetaError;
use crate::qemu::QemuError;
use crate::units::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidInput(String),
    #[error("volume group {vg} not found")]
    VgNotFound { vg: String },
    #[error("{vg} is not an lvchain domain{hint}")]
    NotADomain { vg: String, hint: String },
    #[error("{vg} is already an lvchain domain")]
    AlreadyDomain { vg: String },
    #[error(
        "volume group {vg} already holds {count} logical volume(s); a domain needs an empty VG"
    )]
    VgNotEmpty { vg: String, count: u64 },
    #[error(
        "domain {vg} uses on-disk format {found}; this lvchain reads formats {} to {supported}",
        crate::tags::OLDEST_FORMAT
    )]
    UnsupportedFormat {
        vg: String,
        found: u32,
        supported: u32,
    },
    #[error("domain {vg} has a bad tag: {reason}")]
    BadDomainTag { vg: String, reason: String },
    #[error("host(s) {hosts:?} are still joined to domain {vg}: run `lvchain host leave {vg}` there first")]
    HostsJoined { vg: String, hosts: Vec<u64> },
    #[error("domain {vg} still holds {count} volume(s); remove them or use --force")]
    DomainNotEmpty { vg: String, count: usize },
    #[error("volume {id} not found in domain {vg}")]
    VolumeNotFound { vg: String, id: VolumeId },
    #[error("image {image} not found in domain {vg}")]
    ImageNotFound { vg: String, image: ImageId },
    #[error("a volume or LV named {id} already exists in domain {vg}")]
    VolumeExists { vg: String, id: VolumeId },
    #[error("image {image} already has volumes; create a snapshot with --parent instead")]
    ImageExists { image: ImageId },
    #[error("volume {id} is not a leaf (it has a snapshot); {what}")]
    NotALeaf { id: VolumeId, what: String },
    #[error("volume {id} descends from {lv}, which carries a transaction marker left by an operation that died; run `lvchain gc` first")]
    PendingMark { id: VolumeId, lv: String },
    #[error("volume {id} is illegal (an operation on it failed or is running)")]
    Illegal { id: VolumeId },
    #[error("image {image} has an illegal volume {id} (generation {generation}): an operation on it failed or is running, its data may be partial; see `volume status`, re-run the operation, or prepare with --allow-illegal for recovery")]
    IllegalMember {
        image: ImageId,
        id: VolumeId,
        generation: crate::format::ids::Generation,
    },
    #[error("volume {id} is in use (its device is open)")]
    InUse { id: VolumeId },
    #[error("domain {vg} is shared by hosts (sanlock): an image prepared here must be held by the host agent (`lvchain agent`), whose shared leases keep other hosts from removing or changing its volumes while it is in use; prepare it through the agent, or pass --without-agent for recovery work")]
    NeedsAgent { vg: String },
    #[error("volume {id} is in use on {}: growing its qcow2 virtual size belongs to the qemu that has it open there", crate::lock::describe_hosts(.hosts))]
    ResizeInUse { id: VolumeId, hosts: Vec<u64> },
    #[error("no free metadata slot: the domain holds its maximum of {max} volumes")]
    NoFreeSlot { max: u32 },
    #[error("not enough free space in {vg} for {} bytes ({} bytes free); {source}", .need.0, .free.0)]
    NoSpace {
        vg: String,
        need: Bytes,
        free: Bytes,
        #[source]
        source: Box<LvmError>,
    },
    #[error("volume {id}: {source}")]
    Metadata {
        id: VolumeId,
        #[source]
        source: MetaError,
    },
    #[error("metadata: {0}")]
    Slot(#[from] MetaError),
    #[error("chain of image {image} is broken: {reason}")]
    BrokenChain { image: ImageId, reason: String },
    #[error(transparent)]
    Lvm(#[from] LvmError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("qemu-img: {0}")]
    Qemu(#[from] QemuError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{original}; rolling back also failed ({rollback}); the LV keeps its marker and `lvchain gc` will finish the job")]
    RollbackFailed {
        original: Box<Error>,
        rollback: Box<Error>,
    },
    #[error("domain {vg} uses the {domain} lock manager, not {ours}")]
    WrongLockManager {
        vg: String,
        domain: LockKind,
        ours: LockKind,
    },
    #[error("volume {id} has generation {found}, not {expected}; nothing was changed")]
    WrongGeneration {
        id: VolumeId,
        expected: crate::format::ids::Generation,
        found: crate::format::ids::Generation,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("domain {vg} is not clean: {problems} problem(s)")]
    Unclean { vg: String, problems: usize },
    #[error("cannot wipe the data of LV {lv} before removing it: {source}")]
    Wipe {
        lv: String,
        #[source]
        source: crate::wipe::WipeError,
    },
    #[error("the wipe of LV {lv} covered {} of its {} bytes (its device on this host is smaller than the LV); it is not removed", .wiped.0, .size.0)]
    WipeShort {
        lv: String,
        wiped: Bytes,
        size: Bytes,
    },
    #[error("cannot activate the LVs whose data is to be wiped: {source}")]
    WipeActivation {
        #[source]
        source: LvmError,
    },
    #[error("{original}; whether it took effect is unknown (the VG could not be re-read: {reread}); `lvchain domain check` and `lvchain gc` settle it")]
    OutcomeUnknown {
        original: Box<Error>,
        reread: Box<Error>,
    },
    #[error("{original}; the LV keeps its marker and `lvchain gc` will finish the job")]
    LeftForGc { original: Box<Error> },
    /// The reader of the output went away (a closed pipe): the command's work is done.
    #[error("the output was closed by its reader")]
    OutputClosed,
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
