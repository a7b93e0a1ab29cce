//! Operations that change a volume's data or attributes, and their status read from shared
//! storage only (the lease/generation protocol).
//!
//! An operation started with `--generation N`: acquire the volume's lease -> check the
//! generation is N (else refuse, changing nothing) -> metadata ILLEGAL -> work -> ONE slot write
//! of LEGAL and generation N+1 -> release. A failure leaves the volume ILLEGAL at generation N.
//! A reader holding nothing then decides: generation N+1 -> succeeded (whoever holds the lease
//! now runs a later change); N+3 -> fenced; at N, lease held by a live holder -> running,
//! lease free and illegal -> failed.

use crate::crash::{self, CrashPoint};
use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::ids::{Generation, VolumeId};
use crate::lvm::Activation;
use crate::metadata::{FenceRecord, Format, Legality, Role, SlotStore, VolumeMeta};
use crate::progress::{Progress, ProgressSink};
use crate::qemu;
use crate::units::Bytes;
use crate::volume::{Catalog, Volume};
use serde::Serialize;
use std::path::PathBuf;

pub use crate::format::ids::FENCE_STEP;
/// The highest generation an operation or a fence may start at (its end must still count).
pub const MAX_GENERATION: Generation = Generation::MAX_START;

/// Refuses a generation no operation can start at.
pub fn check_generation(generation: Generation) -> Result<()> {
    if generation > MAX_GENERATION {
        return Err(Error::InvalidInput(format!(
            "generation {generation} is out of range (at most {MAX_GENERATION})"
        )));
    }
    Ok(())
}

/// `moved` (a checked step from `generation`), or the error that it is out of range.
pub(crate) fn moved(generation: Generation, moved: Option<Generation>) -> Result<Generation> {
    moved.ok_or_else(|| {
        Error::InvalidInput(format!(
            "generation {generation} cannot move on: out of range"
        ))
    })
}

/// Checks what an operation was asked before anything is taken: the generation the caller
/// expects and the description an update sets; returns the generation the volume moves to.
pub(crate) fn next_generation(generation: Generation, work: &Work) -> Result<Generation> {
    check_generation(generation)?;
    let next = moved(generation, generation.next())?;
    if let Work::Update {
        description: Some(d),
        ..
    } = work
    {
        crate::metadata::check_description(d).map_err(Error::InvalidInput)?;
    }
    Ok(next)
}

/// A copy rewrites the data other volumes read through: refuses any child, committed or
/// pending (a snapshot being created, or one that died), and an internal role as read under
/// the lease (a creation that committed since the scan holds the lease until then).
pub(crate) fn refuse_copy_into_a_parent(
    work: &Work,
    cat: &Catalog,
    id: &VolumeId,
    meta: &VolumeMeta,
) -> Result<()> {
    if matches!(work, Work::Copy { .. }) && (cat.has_any_child(id) || meta.role == Role::Internal) {
        return Err(Error::NotALeaf {
            id: *id,
            what: "copying into it would change what its snapshots read".into(),
        });
    }
    Ok(())
}

/// The data source of a copy.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file, block device or FIFO, read as `format` (never guessed). A qcow2 source must
    /// be self-contained: one naming a backing or external data file is refused, and its
    /// backing is never opened.
    File { path: PathBuf, format: Format },
    /// A legal volume of the same domain, read under a shared lease.
    Volume(VolumeId),
}

#[derive(Debug, Clone)]
pub enum Work {
    Copy {
        from: Source,
        /// Where the copy reports how far it has come while it runs.
        progress: ProgressSink,
    },
    Update {
        description: Option<String>,
        legality: Option<Legality>,
    },
    Extend {
        size: Bytes,
    },
}

/// Runs `work` on volume `id` under the protocol; returns the volume as it ends.
pub(crate) fn run(
    domain: &Domain,
    id: &VolumeId,
    generation: Generation,
    work: &Work,
) -> Result<Volume> {
    let next = next_generation(generation, work)?;
    // Extend changes VG metadata: it also needs the domain lock, taken before the lease.
    let _domain_lock = match work {
        Work::Extend { .. } => Some(domain.lock()?),
        _ => None,
    };
    let Started {
        cat,
        vol,
        store,
        _lease,
        mut meta,
    } = start(domain, id, generation)?;
    refuse_copy_into_a_parent(work, &cat, id, &meta)?;
    // The source is checked (and a volume source held) before anything changes.
    let source = match work {
        Work::Copy { from, .. } => Some(CopySource::open(domain, &cat, &vol, from)?),
        _ => None,
    };
    meta.legality = Legality::Illegal;
    // A copy's data is partial from its first write until it completes.
    meta.partial |= matches!(work, Work::Copy { .. });
    store.write(vol.slot, &meta)?;
    crash::point(CrashPoint::OpAfterIllegal);

    let mut legality = None;
    match work {
        Work::Copy { progress, .. } => {
            if let Some(source) = &source {
                copy(domain, &cat, &vol, source, progress)?;
            }
        }
        Work::Update { legality: l, .. } => legality = *l,
        Work::Extend { size } => {
            crate::volume::grow_storage(domain, &cat, &vol, *size)?;
        }
    }
    crash::point(CrashPoint::OpAfterWork);

    // The end: one sector write of the legality and generation + 1 (and what the work
    // changed). A completed copy leaves whole data; an explicit legality is the operator's
    // word; any other operation leaves the volume legal only when no partial data is recorded
    // (an update or an extend never makes a failed copy's data whole).
    let mut meta = read_own(&store, &vol)?;
    match (work, legality) {
        (Work::Copy { .. }, _) | (_, Some(Legality::Legal)) => {
            meta.partial = false;
            meta.legality = Legality::Legal;
        }
        (_, Some(l)) => meta.legality = l,
        (_, None) if meta.partial => meta.legality = Legality::Illegal,
        (_, None) => meta.legality = Legality::Legal,
    }
    meta.generation = next;
    match work {
        Work::Update {
            description: Some(d),
            ..
        } => meta.description = d.clone(),
        Work::Extend { size } => meta.capacity = *size,
        _ => {}
    }
    store.write(vol.slot, &meta)?;
    crash::point(CrashPoint::OpAfterLegal);
    let cat = Catalog::load(domain)?;
    Ok(cat.get(&domain.vg, id)?.clone())
}

/// A volume whose lease this process holds, at the generation the caller expected.
struct Started {
    cat: Catalog,
    vol: Volume,
    store: SlotStore,
    _lease: crate::lock::Holding<Box<dyn crate::lock::LeaseGuard>>,
    meta: VolumeMeta,
}

/// Takes the volume's lease and checks its generation (refusing, changing nothing, if not N).
fn start(domain: &Domain, id: &VolumeId, generation: Generation) -> Result<Started> {
    let cat = Catalog::load_for_change(domain)?;
    let vol = cat.get(&domain.vg, id)?.clone();
    let store = domain.slots(&cat.snap)?;
    // Every program the operation starts under the lease (qemu-img above all) holds it too.
    let _lease =
        crate::lock::Holding::on_this_thread(domain.lease(id, vol.slot)?).map_err(|e| {
            crate::lock::LeaseError::Io {
                what: format!("the lease of {id}"),
                reason: e.to_string(),
            }
        })?;
    let meta = read_own(&store, &vol)?;
    if meta.generation != generation {
        return Err(Error::WrongGeneration {
            id: *id,
            expected: generation,
            found: meta.generation,
        });
    }
    Ok(Started {
        cat,
        vol,
        store,
        _lease,
        meta,
    })
}

fn read_own(store: &SlotStore, vol: &Volume) -> Result<VolumeMeta> {
    let m = store
        .read(vol.slot)
        .map_err(|source| Error::Metadata { id: vol.id, source })?;
    if m.id != vol.id {
        return Err(Error::InvalidInput(format!(
            "slot {} no longer holds volume {}",
            vol.slot, vol.id
        )));
    }
    Ok(m)
}

/// A checked copy source: what qemu-img reads (or the FIFO streamed), and the shared lease of
/// a volume source, held until the copy ends.
struct CopySource {
    read: Read,
    /// A volume source's chain up to it, base first (their devices are read).
    chain: Vec<Volume>,
    _lease: Option<Box<dyn crate::lock::LeaseGuard>>,
}

enum Read {
    Stream(PathBuf),
    Image(String),
}

impl CopySource {
    /// Checks the source of a copy into `dst`, changing nothing: a file is read in its given
    /// format (a qcow2 naming a backing or data file is refused); a volume must be legal, as
    /// must every volume it reads through, and is held under a shared lease (busy: refused).
    fn open(domain: &Domain, cat: &Catalog, dst: &Volume, from: &Source) -> Result<CopySource> {
        match from {
            Source::File { path, format } => {
                let kind = std::fs::metadata(path).map_err(|e| {
                    Error::InvalidInput(format!("cannot read {}: {e}", path.display()))
                })?;
                use std::os::unix::fs::FileTypeExt;
                if kind.file_type().is_fifo() {
                    if *format != Format::Raw || dst.format != Format::Raw {
                        return Err(Error::InvalidInput(
                            "a stream (FIFO) is copied as raw data into a raw volume only".into(),
                        ));
                    }
                    return Ok(CopySource {
                        read: Read::Stream(path.clone()),
                        chain: Vec::new(),
                        _lease: None,
                    });
                }
                let spec = qemu::source_spec(path, *format, kind.file_type().is_block_device());
                if *format == Format::Qcow2 {
                    let external = qemu::external_files(&spec)?;
                    if !external.is_empty() {
                        return Err(Error::InvalidInput(format!(
                            "{} names other files ({}): a qcow2 source must be self-contained \
                             (flatten it first, e.g. `qemu-img convert -O qcow2`)",
                            path.display(),
                            external.join(", ")
                        )));
                    }
                }
                Ok(CopySource {
                    read: Read::Image(spec),
                    chain: Vec::new(),
                    _lease: None,
                })
            }
            Source::Volume(s) => {
                if *s == dst.id {
                    return Err(Error::InvalidInput(format!(
                        "volume {s} cannot be copied into itself"
                    )));
                }
                let sv = cat.get(&domain.vg, s)?.clone();
                let lease = domain.lease_shared(s, sv.slot)?;
                // Read under the shared lease: no operation can start on it from now on.
                let store = domain.slots(&cat.snap)?;
                let now = read_own(&store, &sv)?;
                let chain = crate::chain::walk(cat, &sv.image)?;
                let upto = chain
                    .iter()
                    .position(|v| v.id == sv.id)
                    .map_or(0, |i| i + 1);
                let illegal = chain[..upto]
                    .iter()
                    .find(|v| v.legality != Legality::Legal)
                    .map(|v| (v.id, v.generation));
                let illegal = match illegal {
                    None if now.legality != Legality::Legal => Some((sv.id, now.generation)),
                    other => other,
                };
                if let Some((id, generation)) = illegal {
                    return Err(Error::IllegalMember {
                        image: sv.image,
                        id,
                        generation,
                    });
                }
                // Read through its whole chain, as lvchain's metadata has it.
                let chain = chain[..upto].to_vec();
                let members: Vec<_> = chain
                    .iter()
                    .map(|v| (domain.volume_device(&v.id), v.format))
                    .collect();
                Ok(CopySource {
                    read: Read::Image(qemu::chain_spec(&members)),
                    chain,
                    _lease: Some(lease),
                })
            }
        }
    }
}

/// Activates what the copy needs and runs it; leaves activation as it was.
fn copy(
    domain: &Domain,
    cat: &Catalog,
    vol: &Volume,
    source: &CopySource,
    progress: &ProgressSink,
) -> Result<()> {
    let mut activated = Vec::new();
    // qemu-img opens a qcow2 target's backing chain (bare ids, beside the target in /dev/VG).
    let chain = crate::chain::walk(cat, &vol.image)?;
    let mut need = match chain.iter().position(|v| v.id == vol.id) {
        Some(i) => chain[..=i].to_vec(),
        None => vec![vol.clone()],
    };
    // A volume source is read through its chain: all of it active.
    need.extend(source.chain.iter().cloned());
    for v in &need {
        if !v.active || !domain.volume_device(&v.id).exists() {
            domain
                .lvm
                .lvchange_activation(&[domain.lv_path(&v.id.to_string())], Activation::Activate)?;
            activated.push(domain.lv_path(&v.id.to_string()));
        }
    }
    let dst = domain.volume_device(&vol.id);
    let r = match &source.read {
        Read::Stream(fifo) => stream_copy(domain, fifo, &dst, progress),
        Read::Image(spec) => domain
            .lvm
            .convert(spec, &dst, vol.format, progress)
            .map_err(Error::from),
    };
    if let Err(e) = domain
        .lvm
        .lvchange_activation(&activated, Activation::Deactivate)
    {
        tracing::warn!(error = %e, "could not deactivate after the copy");
    }
    r
}

/// Copies a stream into a raw device with direct writes, padding the last block with zeros.
/// Its total is unknown until it ends: the progress counts bytes, and is 100% at the end.
fn stream_copy(
    domain: &Domain,
    src: &std::path::Path,
    dst: &std::path::Path,
    progress: &ProgressSink,
) -> Result<()> {
    let streamed = |bytes: u64, done: bool| {
        progress.report(Progress {
            percent: done.then_some(100.0),
            bytes: Some(bytes),
        })
    };
    use std::io::Read;
    let mut input =
        std::fs::File::open(src).map_err(Error::io(format!("opening {}", src.display())))?;
    let chunk = 1 << 20;
    let mut buf = vec![0u8; chunk];
    let mut offset = 0u64;
    let mut copied = 0u64;
    streamed(0, false);
    loop {
        let mut filled = 0;
        while filled < chunk {
            let n = input
                .read(&mut buf[filled..])
                .map_err(Error::io("reading the source"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            streamed(copied, true);
            return Ok(());
        }
        let len = filled.div_ceil(4096) * 4096;
        buf[filled..len].fill(0);
        domain
            .lvm
            .write_at(dst, offset, &buf[..len])
            .map_err(Error::io("writing the volume"))?;
        offset += len as u64;
        copied += filled as u64;
        let done = filled < chunk;
        streamed(copied, done);
        if done {
            return Ok(());
        }
    }
}

/// The verdict on an operation, read from shared storage (JSON: the lowercase name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its lease is held by a live holder at its generation.
    Running,
    /// It moved the generation on.
    Succeeded,
    /// Its lease is free and the volume illegal at its generation.
    Failed,
    /// A fence moved the generation on from it.
    Fenced,
    /// Storage cannot tell (the reason says why).
    Unknown,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::Running => "running",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Fenced => "fenced",
            State::Unknown => "unknown",
        })
    }
}

/// What a reader concludes about the operation that was started at `generation`.
#[derive(Debug, Clone)]
pub struct Status {
    pub volume: VolumeId,
    pub generation: Generation,
    pub state: State,
    pub host_id: Option<u64>,
    pub current_generation: Generation,
    pub legality: Legality,
    pub reason: Option<String>,
}

/// Reads the status from shared storage only: the volume's lease and its metadata slot.
pub(crate) fn status(domain: &Domain, id: &VolumeId, generation: Generation) -> Result<Status> {
    let cat = Catalog::load(domain)?;
    let vol = cat.get(&domain.vg, id)?.clone();
    let store = domain.slots(&cat.snap)?;
    // The reader follows the domain's lock manager, not this host's: a host that never joined
    // a sanlock domain still reads its leases (from disk when no daemon can answer).
    domain.activate_lease_lvs(&cat.snap)?;
    // The metadata before and after the holder: an operation that starts between two reads
    // changes the metadata (ILLEGAL) after taking the lease, so equal reads around the
    // holder's are one consistent moment.
    let mut tries = 0;
    let (meta, verdict) = loop {
        let before = read_own(&store, &vol)?;
        let holder = domain.lease_holder(id, vol.slot)?;
        let meta = read_own(&store, &vol)?;
        if meta == before {
            let verdict = decide(generation, &meta, holder.as_ref());
            break (meta, verdict);
        }
        tries += 1;
        if tries == 5 {
            let reason = "the volume's metadata changed on every read: operations are running";
            break (meta, (State::Unknown, None, Some(reason.to_string())));
        }
    };
    let (state, host_id, reason) = verdict;
    Ok(Status {
        volume: *id,
        generation,
        state,
        host_id,
        current_generation: meta.generation,
        legality: meta.legality,
        reason,
    })
}

/// The verdict on the operation started at `generation`, from the volume's metadata and the
/// holder of its lease. The generation decides first: once it has moved on, whoever holds the
/// lease now runs a later operation (or a brief structural change), not the one asked about.
/// Past generations are told apart by the fence record: a fence moves N to N+3, as three
/// successful operations do.
pub(crate) fn decide(
    generation: Generation,
    meta: &VolumeMeta,
    holder: Option<&crate::lock::Holder>,
) -> (State, Option<u64>, Option<String>) {
    let current = meta.generation;
    if current < generation {
        return (
            State::Unknown,
            None,
            Some(format!(
                "the volume is at generation {current}: nothing started at {generation}"
            )),
        );
    }
    if current > generation {
        return match past(generation, current, meta.fence) {
            Past::Succeeded => (State::Succeeded, None, None),
            Past::Fenced => (State::Fenced, None, None),
            Past::Unknown(reason) => (State::Unknown, None, Some(reason)),
        };
    }
    match holder {
        Some(h) if h.alive => (State::Running, Some(h.host_id), None),
        Some(h) => (
            State::Unknown,
            Some(h.host_id),
            Some(format!(
                "the lease is held by host {} whose liveness is unknown",
                h.host_id
            )),
        ),
        None if meta.legality == Legality::Illegal => (State::Failed, None, None),
        None => (
            State::Unknown,
            None,
            Some("the volume is legal at this generation: the operation never started".into()),
        ),
    }
}

/// What moved a volume past `generation` (now at `current`).
#[derive(Debug, PartialEq, Eq)]
enum Past {
    Succeeded,
    Fenced,
    Unknown(String),
}

fn past(generation: Generation, current: Generation, fence: FenceRecord) -> Past {
    // Without a fence, every step was one successful operation.
    let by_operations = Past::Succeeded;
    let (generation, current) = (generation.get(), current.get());
    match (fence.last.map(Generation::get), fence.count) {
        (_, Some(0)) => by_operations,
        (Some(f), _) if f == generation => Past::Fenced,
        (Some(f), _) if generation > f && generation < f.saturating_add(FENCE_STEP) => {
            Past::Unknown(format!(
                "generation {generation} never existed: the fence of {f} moved the volume to {}",
                f.saturating_add(FENCE_STEP)
            ))
        }
        // Only fences happen between recorded ones: after the last, steps are operations.
        (Some(f), _) if generation > f => by_operations,
        (Some(_), Some(1)) => by_operations,
        (Some(f), _) => Past::Unknown(format!(
            "only the last fence (of generation {f}) is recorded, and an earlier one may have \
             skipped generation {generation}"
        )),
        // A version-1 slot: no record. One step is an operation; anything else is ambiguous.
        (None, _) if current == generation + 1 => by_operations,
        (None, _) => Past::Unknown(format!(
            "the volume is at generation {current}, and its metadata (format 1) does not \
             record fences: the operation at {generation} succeeded or was fenced"
        )),
    }
}

/// Moves the generation from N to N+3 under the lease, so a late runner refuses to write.
/// The fence is recorded in the metadata (the generation it fenced), so that status tells it
/// from three successful operations.
pub(crate) fn fence(domain: &Domain, id: &VolumeId, generation: Generation) -> Result<Volume> {
    check_generation(generation)?;
    let fenced = moved(generation, generation.fenced())?;
    let Started {
        vol,
        store,
        _lease,
        mut meta,
        ..
    } = start(domain, id, generation)?;
    meta.generation = fenced;
    meta.legality = Legality::Illegal;
    meta.fence = FenceRecord {
        last: Some(generation),
        count: meta.fence.count.map(|n| n.saturating_add(1)),
    };
    store.write(vol.slot, &meta)?;
    let cat = Catalog::load(domain)?;
    Ok(cat.get(&domain.vg, id)?.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verdict on generation `g` (a plain number in these tests).
    fn decide(
        g: u64,
        meta: &VolumeMeta,
        holder: Option<&crate::lock::Holder>,
    ) -> (State, Option<u64>, Option<String>) {
        super::decide(Generation::new(g), meta, holder)
    }
    use crate::lock::Holder;

    fn meta(generation: u64, legality: Legality) -> VolumeMeta {
        VolumeMeta {
            id: VolumeId::default(),
            image: crate::format::ids::ImageId::default(),
            parent: None,
            format: Format::Raw,
            capacity: Bytes(1 << 20),
            role: crate::metadata::Role::Leaf,
            legality,
            generation: Generation::new(generation),
            ctime: 0,
            description: String::new(),
            fence: FenceRecord::NONE,
            partial: false,
        }
    }

    fn fenced(generation: u64, last: Option<u64>, count: Option<u64>) -> VolumeMeta {
        VolumeMeta {
            fence: FenceRecord {
                last: last.map(Generation::new),
                count,
            },
            ..meta(generation, Legality::Illegal)
        }
    }

    const LIVE: Holder = Holder {
        host_id: 7,
        alive: true,
    };
    const UNSURE: Holder = Holder {
        host_id: 7,
        alive: false,
    };

    #[test]
    fn a_live_holder_at_the_generation_is_running() {
        let m = meta(4, Legality::Illegal);
        assert_eq!(decide(4, &m, Some(&LIVE)), (State::Running, Some(7), None));
    }

    #[test]
    fn the_next_generation_is_success_whoever_holds_the_lease_now() {
        for l in [Legality::Legal, Legality::Illegal] {
            let m = meta(5, l);
            assert_eq!(decide(4, &m, Some(&LIVE)).0, State::Succeeded);
            assert_eq!(decide(4, &m, None).0, State::Succeeded);
        }
    }

    #[test]
    fn free_lease_illegal_at_the_generation_is_failed() {
        assert_eq!(
            decide(4, &meta(4, Legality::Illegal), None).0,
            State::Failed
        );
        let never = decide(4, &meta(4, Legality::Legal), None);
        assert_eq!(never.0, State::Unknown);
        let unsure = decide(4, &meta(4, Legality::Illegal), Some(&UNSURE));
        assert_eq!((unsure.0, unsure.1), (State::Unknown, Some(7)));
    }

    #[test]
    fn three_operations_are_not_a_fence() {
        // G, G+1, G+2 succeeded: the volume is at G+3 with no fence recorded.
        let m = meta(7, Legality::Legal);
        for g in 4..7 {
            assert_eq!(
                decide(g, &m, Some(&LIVE)).0,
                State::Succeeded,
                "generation {g}"
            );
        }
    }

    #[test]
    fn a_recorded_fence_is_fenced_and_what_it_skipped_never_existed() {
        let m = fenced(7, Some(4), Some(1));
        assert_eq!(decide(4, &m, None).0, State::Fenced);
        assert_eq!(decide(5, &m, None).0, State::Unknown);
        assert_eq!(decide(6, &m, None).0, State::Unknown);
        // Before the only fence, every step was an operation.
        assert_eq!(decide(2, &m, None).0, State::Succeeded);
        // After the fence: operations at 7, 8 took the volume to 9.
        let m = fenced(9, Some(4), Some(1));
        assert_eq!(decide(7, &m, None).0, State::Succeeded);
        assert_eq!(decide(8, &m, None).0, State::Succeeded);
        assert_eq!(decide(4, &m, None).0, State::Fenced);
    }

    #[test]
    fn before_the_last_of_several_fences_the_answer_is_unknown() {
        let m = fenced(20, Some(10), Some(2));
        assert_eq!(decide(10, &m, None).0, State::Fenced);
        assert_eq!(decide(15, &m, None).0, State::Succeeded);
        assert_eq!(decide(3, &m, None).0, State::Unknown);
    }

    #[test]
    fn version_1_metadata_keeps_the_old_reading_where_it_is_sure() {
        let m = fenced(5, None, None);
        assert_eq!(decide(4, &m, None).0, State::Succeeded);
        assert_eq!(
            decide(2, &m, None).0,
            State::Unknown,
            "3 operations or a fence"
        );
        assert_eq!(decide(1, &m, None).0, State::Unknown);
    }

    #[test]
    fn future_generations_are_unknown() {
        let m = meta(4, Legality::Legal);
        assert_eq!(decide(9, &m, Some(&LIVE)).0, State::Unknown);
        assert_eq!(decide(u64::MAX, &m, None).0, State::Unknown);
    }

    #[test]
    fn generation_arithmetic_never_wraps() {
        let above = Generation::new(MAX_GENERATION.get() + 1);
        assert!(check_generation(MAX_GENERATION).is_ok());
        assert!(check_generation(above).is_err());
        assert!(check_generation(Generation::new(u64::MAX)).is_err());
        let top = Generation::new(u64::MAX);
        assert!(moved(top, top.next()).is_err());
        assert!(moved(MAX_GENERATION, MAX_GENERATION.fenced()).is_ok());
        // The top generation an operation can leave still answers.
        let m = meta(u64::MAX, Legality::Legal);
        assert_eq!(decide(u64::MAX - 1, &m, None).0, State::Succeeded);
        assert_eq!(decide(u64::MAX, &m, None).0, State::Unknown);
    }
}
