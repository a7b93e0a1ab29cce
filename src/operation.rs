//! Operations that change a volume's data or attributes, and their status read from shared
//! storage only (the lease/generation protocol).
//!
//! An operation started with `--generation N`: acquire the volume's lease -> check the
//! generation is N (else refuse, changing nothing) -> metadata ILLEGAL -> work -> ONE slot write
//! of LEGAL and generation N+1 -> release. A failure leaves the volume ILLEGAL at generation N.
//! A reader holding nothing then decides: generation N+1 -> succeeded (whoever holds the lease
//! now runs a later change); N+3 -> fenced; at N, lease held by a live holder -> running,
//! lease free and illegal -> failed.

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::exec::Cmd;
use crate::lvm::Activation;
use crate::metadata::{Format, Legality, SlotStore, VolumeMeta};
use crate::units::Bytes;
use crate::volume::{Catalog, Volume};
use crate::{crash, links};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;
use uuid::Uuid;

/// How far fencing moves the generation: a late runner finds a generation it did not expect.
pub const FENCE_STEP: u64 = 3;

/// The data source of a copy.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Volume(Uuid),
}

#[derive(Debug, Clone)]
pub enum Work {
    Copy {
        from: Source,
        progress: bool,
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
pub fn run(domain: &Domain, id: &Uuid, generation: u64, work: &Work) -> Result<Volume> {
    if let Work::Update {
        description: Some(d),
        ..
    } = work
    {
        crate::metadata::check_description(d).map_err(Error::InvalidInput)?;
    }
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
    if matches!(work, Work::Copy { .. }) && !cat.snap.children(id).is_empty() {
        return Err(Error::NotALeaf {
            id: *id,
            what: "copying into it would change what its snapshots read".into(),
        });
    }
    meta.legality = Legality::Illegal;
    store.write(vol.slot, &meta)?;
    crash::point("op.after-illegal");

    let mut legality = Legality::Legal;
    match work {
        Work::Copy { from, progress } => copy(domain, &cat, &vol, from, *progress)?,
        Work::Update { legality: l, .. } => legality = l.unwrap_or(Legality::Legal),
        Work::Extend { size } => {
            crate::volume::grow_storage(domain, &cat, &vol, *size)?;
        }
    }
    crash::point("op.after-work");

    // The end: one sector write of LEGAL and generation + 1 (and what the work changed).
    let mut meta = read_own(&store, &vol)?;
    meta.legality = legality;
    meta.generation = generation + 1;
    match work {
        Work::Update {
            description: Some(d),
            ..
        } => meta.description = d.clone(),
        Work::Extend { size } => meta.capacity = size.0,
        _ => {}
    }
    store.write(vol.slot, &meta)?;
    crash::point("op.after-legal");
    let cat = Catalog::load(domain)?;
    Ok(cat.get(&domain.vg, id)?.clone())
}

/// A volume whose lease this process holds, at the generation the caller expected.
struct Started {
    cat: Catalog,
    vol: Volume,
    store: SlotStore,
    _lease: Box<dyn crate::lease::LeaseGuard>,
    meta: VolumeMeta,
}

/// Takes the volume's lease and checks its generation (refusing, changing nothing, if not N).
fn start(domain: &Domain, id: &Uuid, generation: u64) -> Result<Started> {
    let cat = Catalog::load_for_change(domain)?;
    let vol = cat.get(&domain.vg, id)?.clone();
    let store = domain.slots(&cat.snap)?;
    let _lease = domain.leases.acquire(&domain.vg, id, vol.slot)?;
    // Every program started under the lease (qemu-img above all) holds it too.
    _lease.inherit_into_children()?;
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

/// Activates what the copy needs and runs it; leaves activation as it was.
fn copy(domain: &Domain, cat: &Catalog, vol: &Volume, from: &Source, progress: bool) -> Result<()> {
    let mut activated = Vec::new();
    let mut need = vec![vol.clone()];
    let src = match from {
        Source::File(p) => {
            if !p.exists() {
                return Err(Error::InvalidInput(format!(
                    "{} does not exist",
                    p.display()
                )));
            }
            (p.clone(), None)
        }
        Source::Volume(s) => {
            let sv = cat.get(&domain.vg, s)?.clone();
            if sv.format == Format::Qcow2 && sv.parent.is_some() {
                // The source chain must be readable: all of it active and linked.
                crate::image::prepare(domain, &sv.image)?;
            }
            need.push(sv.clone());
            (links::device_path(&domain.vg, s), Some(sv.format))
        }
    };
    for v in &need {
        if !v.active || !links::device_path(&domain.vg, &v.id).exists() {
            domain
                .lvm
                .lvchange_activation(&[domain.lv_path(&v.id.to_string())], Activation::Activate)?;
            activated.push(domain.lv_path(&v.id.to_string()));
        }
    }
    let r = convert(
        &src.0,
        src.1,
        &links::device_path(&domain.vg, &vol.id),
        vol.format,
        progress,
    );
    if let Err(e) = domain
        .lvm
        .lvchange_activation(&activated, Activation::Deactivate)
    {
        tracing::warn!(error = %e, "could not deactivate after the copy");
    }
    r
}

fn is_fifo(p: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false)
}

/// qemu-img convert into the existing volume; a FIFO (a stream) is copied as raw data.
fn convert(
    src: &std::path::Path,
    src_fmt: Option<Format>,
    dst: &std::path::Path,
    dst_fmt: Format,
    progress: bool,
) -> Result<()> {
    if is_fifo(src) {
        if dst_fmt != Format::Raw {
            return Err(Error::InvalidInput(
                "a stream (FIFO) can only be copied into a raw volume".into(),
            ));
        }
        return stream_copy(src, dst);
    }
    let timeout = std::env::var("LVCHAIN_COPY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(24 * 3600), Duration::from_secs);
    let mut c = Cmd::new(
        std::env::var("LVCHAIN_QEMU_IMG").unwrap_or_else(|_| "/usr/bin/qemu-img".into()),
        timeout,
    )
    .args(["convert", "-n", "-t", "none", "-O", &dst_fmt.to_string()]);
    if let Some(f) = src_fmt {
        c = c.args(["-f", &f.to_string()]);
    }
    c.die_with_parent = true;
    if progress {
        c = c.arg("-p");
        c.stdout_to_stderr = true;
    }
    let f = c
        .arg(src.as_os_str())
        .arg(dst.as_os_str())
        .run()
        .map_err(crate::qemu::QemuError::from)?;
    if !f.success() {
        return Err(crate::qemu::QemuError::Failed {
            argv: f.argv,
            code: f.code,
            stderr: f.stderr.trim().to_string(),
        }
        .into());
    }
    Ok(())
}

/// Copies a stream into a raw device with direct writes, padding the last block with zeros.
fn stream_copy(src: &std::path::Path, dst: &std::path::Path) -> Result<()> {
    use std::io::Read;
    let mut input =
        std::fs::File::open(src).map_err(Error::io(format!("opening {}", src.display())))?;
    let out = crate::directio::DirectFile::open(dst, true)
        .map_err(Error::io(format!("opening {}", dst.display())))?;
    let chunk = 1 << 20;
    let mut buf = crate::directio::AlignedBuf::zeroed(chunk).map_err(Error::io("allocating"))?;
    let mut offset = 0u64;
    loop {
        let mut filled = 0;
        while filled < chunk {
            let n = input
                .read(&mut buf.as_mut_slice()[filled..])
                .map_err(Error::io("reading the source"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        let len = filled.div_ceil(4096) * 4096;
        buf.as_mut_slice()[filled..len].fill(0);
        let mut part = crate::directio::AlignedBuf::zeroed(len).map_err(Error::io("allocating"))?;
        part.as_mut_slice().copy_from_slice(&buf.as_slice()[..len]);
        out.write_at(offset, &part)
            .map_err(Error::io("writing the volume"))?;
        offset += len as u64;
        if filled < chunk {
            return Ok(());
        }
    }
}

/// What a reader concludes about the operation that was started at `generation`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub volume: Uuid,
    pub generation: u64,
    pub state: &'static str,
    pub host_id: Option<u64>,
    pub current_generation: u64,
    pub legality: Legality,
    pub reason: Option<String>,
}

/// Reads the status from shared storage only: the volume's lease and its metadata slot.
pub fn status(domain: &Domain, id: &Uuid, generation: u64) -> Result<Status> {
    let cat = Catalog::load(domain)?;
    let vol = cat.get(&domain.vg, id)?.clone();
    let store = domain.slots(&cat.snap)?;
    // The reader follows the domain's lock manager, not this host's: a host that never joined
    // a sanlock domain still reads its leases (from disk when no daemon can answer).
    let sanlock_reader = crate::lease::cluster::SanlockLeases;
    let reader: &dyn crate::lease::LeaseManager = if cat.snap.info.lock_manager == "sanlock" {
        use crate::domain::{IDS_LV, LEASES_LV};
        domain.activate_special(&cat.snap, &[LEASES_LV, IDS_LV])?;
        &sanlock_reader
    } else {
        domain.leases.as_ref()
    };
    let holder = reader.holder(&domain.vg, id, vol.slot)?;
    let meta = read_own(&store, &vol)?;
    let (state, host_id, reason) = decide(generation, &meta, holder.as_ref());
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
fn decide(
    generation: u64,
    meta: &VolumeMeta,
    holder: Option<&crate::lease::Holder>,
) -> (&'static str, Option<u64>, Option<String>) {
    // The operation's last write is generation N+1 (with the legality its work chose).
    if meta.generation == generation + 1 {
        return ("succeeded", None, None);
    }
    if meta.generation == generation + FENCE_STEP {
        return ("fenced", None, None);
    }
    if meta.generation != generation {
        return (
            "unknown",
            None,
            Some(format!("the volume is at generation {}", meta.generation)),
        );
    }
    match holder {
        Some(h) if h.alive => ("running", Some(h.host_id), None),
        Some(h) => (
            "unknown",
            Some(h.host_id),
            Some(format!(
                "the lease is held by host {} whose liveness is unknown",
                h.host_id
            )),
        ),
        None if meta.legality == Legality::Illegal => ("failed", None, None),
        None => (
            "unknown",
            None,
            Some("the volume is legal at this generation: the operation never started".into()),
        ),
    }
}

/// Moves the generation from N to N+3 under the lease, so a late runner refuses to write.
pub fn fence(domain: &Domain, id: &Uuid, generation: u64) -> Result<Volume> {
    let Started {
        vol,
        store,
        _lease,
        mut meta,
        ..
    } = start(domain, id, generation)?;
    meta.generation = generation + FENCE_STEP;
    meta.legality = Legality::Illegal;
    store.write(vol.slot, &meta)?;
    let cat = Catalog::load(domain)?;
    Ok(cat.get(&domain.vg, id)?.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Holder;

    fn meta(generation: u64, legality: Legality) -> VolumeMeta {
        VolumeMeta {
            id: Uuid::nil(),
            image: Uuid::nil(),
            parent: None,
            format: Format::Raw,
            capacity: 1 << 20,
            role: crate::metadata::Role::Leaf,
            legality,
            generation,
            ctime: 0,
            description: String::new(),
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
        assert_eq!(decide(4, &m, Some(&LIVE)), ("running", Some(7), None));
    }

    #[test]
    fn the_next_generation_is_success_whoever_holds_the_lease_now() {
        for l in [Legality::Legal, Legality::Illegal] {
            let m = meta(5, l);
            assert_eq!(decide(4, &m, Some(&LIVE)).0, "succeeded");
            assert_eq!(decide(4, &m, None).0, "succeeded");
        }
    }

    #[test]
    fn free_lease_illegal_at_the_generation_is_failed() {
        assert_eq!(decide(4, &meta(4, Legality::Illegal), None).0, "failed");
        let never = decide(4, &meta(4, Legality::Legal), None);
        assert_eq!(never.0, "unknown");
    }

    #[test]
    fn fenced_and_other_generations() {
        assert_eq!(
            decide(4, &meta(7, Legality::Illegal), Some(&LIVE)).0,
            "fenced"
        );
        let other = decide(4, &meta(9, Legality::Legal), Some(&LIVE));
        assert_eq!(other.0, "unknown");
        let unsure = decide(4, &meta(4, Legality::Illegal), Some(&UNSURE));
        assert_eq!((unsure.0, unsure.1), ("unknown", Some(7)));
    }
}
