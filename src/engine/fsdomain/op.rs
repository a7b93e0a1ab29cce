//! The lease/generation protocol on file domains: the same steps and verdicts as on block
//! domains ([`crate::operation`]): take the volume's lease, check generation N, write ILLEGAL,
//! work, write LEGAL and N+1. Each metadata write is one atomic rewrite of `<volume>.meta`
//! (temp + fsync + rename: see [`super::store::write_meta`] for why not an in-place write), so
//! a reader on any host decodes the whole record before or after it. Status reads the
//! metadata before and after the lease holder, as on block domains.

use super::store::{self, write_meta, Marker};
use super::FileDomain;
use crate::crash::{self, CrashPoint};
use crate::error::{Error, Result};
use crate::format::ids::{Generation, VolumeId};
use crate::metadata::{FenceRecord, Format, Legality, VolumeMeta};
use crate::operation::{
    check_generation, moved, next_generation, refuse_copy_into_a_parent, Source, Status, Work,
};
use crate::volume::{Catalog, Volume};
use std::path::PathBuf;

/// A volume whose lease this process holds, at the generation the caller expected.
struct Started {
    cat: Catalog,
    vol: Volume,
    path: PathBuf,
    _lease: crate::lock::Holding<Box<dyn crate::lock::LeaseGuard>>,
    meta: VolumeMeta,
}

fn read_own(path: &std::path::Path, vol: &Volume) -> Result<VolumeMeta> {
    let m = store::read_meta(path).map_err(|source| Error::Metadata { id: vol.id, source })?;
    if m.id != vol.id {
        return Err(Error::InvalidInput(format!(
            "{} no longer holds volume {}",
            path.display(),
            vol.id
        )));
    }
    Ok(m)
}

fn start(fd: &FileDomain, id: &VolumeId, generation: Generation) -> Result<Started> {
    let cat = store::scan(fd)?.catalog;
    let vol = cat.get(&fd.name, id)?.clone();
    // Every program the operation starts under the lease (qemu-img above all) holds it too.
    let _lease = crate::lock::Holding::on_this_thread(fd.lease(&vol.image, id)?).map_err(|e| {
        crate::lock::LeaseError::Io {
            what: format!("the lease of {id}"),
            reason: e.to_string(),
        }
    })?;
    let path = fd.meta_path(&vol.image, id, Marker::None);
    let meta = read_own(&path, &vol)?;
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
        path,
        _lease,
        meta,
    })
}

/// Runs `work` on volume `id` under the protocol; returns the volume as it ends.
pub fn run(fd: &FileDomain, id: &VolumeId, generation: Generation, work: &Work) -> Result<Volume> {
    let next = next_generation(generation, work)?;
    let _domain_lock = match work {
        Work::Extend { .. } => Some(fd.lock()?),
        _ => None,
    };
    let Started {
        cat,
        vol,
        path,
        _lease,
        mut meta,
    } = start(fd, id, generation)?;
    refuse_copy_into_a_parent(work, &cat, id, &meta)?;
    let (source, _source_lease) = match work {
        Work::Copy { from, .. } => {
            let (s, l) = source(fd, &cat, &vol, from)?;
            (Some(s), l)
        }
        _ => (None, None),
    };
    if let Work::Extend { size } = work {
        super::txn::check_growth(&vol, *size)?;
    }
    meta.legality = Legality::Illegal;
    meta.partial |= matches!(work, Work::Copy { .. });
    write_meta(&path, &meta)?;
    crash::point(CrashPoint::OpAfterIllegal);

    let mut legality = None;
    match work {
        Work::Copy { progress, .. } => {
            if let Some(spec) = &source {
                let dst = fd.data_path(&vol.image, &vol.id);
                crate::qemu::convert(spec, &dst, vol.format, progress)?;
                std::fs::File::open(&dst)
                    .and_then(|f| f.sync_all())
                    .map_err(Error::io(format!("syncing {}", dst.display())))?;
            }
        }
        Work::Update { legality: l, .. } => legality = *l,
        Work::Extend { size } => super::txn::grow(fd, &vol, *size)?,
    }
    crash::point(CrashPoint::OpAfterWork);

    let mut meta = read_own(&path, &vol)?;
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
    write_meta(&path, &meta)?;
    crash::point(CrashPoint::OpAfterLegal);
    let cat = store::scan(fd)?.catalog;
    Ok(cat.get(&fd.name, id)?.clone())
}

/// The `json:` spec qemu-img reads a copy from, and the shared lease of a volume source.
fn source(
    fd: &FileDomain,
    cat: &Catalog,
    dst: &Volume,
    from: &Source,
) -> Result<(String, Option<Box<dyn crate::lock::LeaseGuard>>)> {
    match from {
        Source::File { path, format } => {
            let kind = std::fs::metadata(path)
                .map_err(|e| Error::InvalidInput(format!("cannot read {}: {e}", path.display())))?;
            use std::os::unix::fs::FileTypeExt;
            if kind.file_type().is_fifo() {
                return Err(Error::InvalidInput(
                    "a stream (FIFO) source is not served on file domains".into(),
                ));
            }
            let spec = crate::qemu::source_spec(path, *format, kind.file_type().is_block_device());
            if *format == Format::Qcow2 {
                let external = crate::qemu::external_files(&spec)?;
                if !external.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "{} names other files ({}): a qcow2 source must be self-contained \
                         (flatten it first, e.g. `qemu-img convert -O qcow2`)",
                        path.display(),
                        external.join(", ")
                    )));
                }
            }
            Ok((spec, None))
        }
        Source::Volume(s) => {
            if *s == dst.id {
                return Err(Error::InvalidInput(format!(
                    "volume {s} cannot be copied into itself"
                )));
            }
            let sv = cat.get(&fd.name, s)?.clone();
            let lease = fd.lease_shared(&sv.image, s)?;
            let now = read_own(&fd.meta_path(&sv.image, s, Marker::None), &sv)?;
            let chain = crate::chain::walk(cat, &sv.image)?;
            let upto = chain
                .iter()
                .position(|v| v.id == sv.id)
                .map_or(0, |i| i + 1);
            let illegal = chain[..upto]
                .iter()
                .find(|v| v.legality != Legality::Legal)
                .map(|v| (v.id, v.generation))
                .or((now.legality != Legality::Legal).then_some((sv.id, now.generation)));
            if let Some((id, generation)) = illegal {
                return Err(Error::IllegalMember {
                    image: sv.image,
                    id,
                    generation,
                });
            }
            // Read through its chain as lvchain's metadata has it (never the headers' names).
            let mut spec = serde_json::Value::Null;
            for v in &chain[..upto] {
                let file = serde_json::json!({
                    "driver": "file",
                    "filename": fd.data_path(&v.image, &v.id).to_string_lossy(),
                });
                spec = match v.format {
                    Format::Raw => serde_json::json!({ "driver": "raw", "file": file }),
                    Format::Qcow2 => {
                        serde_json::json!({ "driver": "qcow2", "file": file, "backing": spec })
                    }
                };
            }
            Ok((format!("json:{spec}"), Some(lease)))
        }
    }
}

/// The status of the operation started at `generation`, from the files alone.
pub fn status(fd: &FileDomain, id: &VolumeId, generation: Generation) -> Result<Status> {
    let cat = store::scan(fd)?.catalog;
    let vol = cat.get(&fd.name, id)?.clone();
    let path = fd.meta_path(&vol.image, id, Marker::None);
    let mut tries = 0;
    let (meta, verdict) = loop {
        let before = read_own(&path, &vol)?;
        let holder = fd.lease_holder(&vol.image, id)?;
        let meta = read_own(&path, &vol)?;
        if meta == before {
            let verdict = crate::operation::decide(generation, &meta, holder.as_ref());
            break (meta, verdict);
        }
        tries += 1;
        if tries == 5 {
            let reason = "the volume's metadata changed on every read: operations are running";
            break (
                meta,
                (
                    crate::operation::State::Unknown,
                    None,
                    Some(reason.to_string()),
                ),
            );
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

/// Moves the generation from N to N+3 under the lease, recording the fence.
pub fn fence(fd: &FileDomain, id: &VolumeId, generation: Generation) -> Result<Volume> {
    check_generation(generation)?;
    let fenced = moved(generation, generation.fenced())?;
    let Started {
        path,
        _lease,
        mut meta,
        ..
    } = start(fd, id, generation)?;
    meta.generation = fenced;
    meta.legality = Legality::Illegal;
    meta.fence = FenceRecord {
        last: Some(generation),
        count: meta.fence.count.map(|n| n.saturating_add(1)),
    };
    write_meta(&path, &meta)?;
    let cat = store::scan(fd)?.catalog;
    Ok(cat.get(&fd.name, id)?.clone())
}
