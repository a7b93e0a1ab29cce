//! File-domain transactions, in the shape of the block ones: the marker first, ONE commit.
//!
//! Create (under the domain lock): `<volume>.meta.creating` written and fsynced (the marker,
//! holding the parent, role leaf, legality); the parent's metadata turns internal (atomic
//! rewrite, under its lease held shared as on block domains); the data file (raw: sized and
//! fsynced; qcow2: `qemu-img create` naming the parent's bare id as backing file, relative to
//! the image directory); then the rename of `.meta.creating` to `.meta` and a directory fsync:
//! the commit point. Crash points: `create.after-metadata`, `create.after-parent-update`,
//! `create.after-qemu-img` (the data file, raw or qcow2), `create.after-links` (no links on a
//! file domain), `create.after-commit`.
//!
//! Remove: the rename of `.meta` to `.meta.removing` (the point of no return), then the
//! parent becomes a leaf again, the data file goes, the lease file, and last the metadata
//! file. Crash points: `remove.after-mark`, `remove.after-parent-update`, `remove.after-links`,
//! `remove.after-wipe` (the data file unlinked: on a file system that is what makes the data
//! unreadable to later files, so no zeroing), `remove.after-metadata` (the end).
//!
//! The collector holds the domain lock, so every marked metadata file belongs to a
//! transaction that died: a creation is rolled back, a removal completed, with the same
//! idempotent `undo` (crash points `gc.after-parent-update`, `gc.after-links`,
//! `gc.after-wipe`, `gc.after-metadata`); temp files of atomic rewrites and data files without
//! metadata go too.

use super::store::{self, write_meta, Entry, Marker, StrayKind};
use super::{atomic, FileDomain};
use crate::check::{Problem, ProblemKind, Report as CheckReport};
use crate::crash::{self, CrashPoint};
use crate::error::{Error, Result};
use crate::format::ids::{ImageId, VolumeId};
use crate::gc::{GcAction, Orphan, Report as GcReport};
use crate::metadata::{Format, Legality, Role};
use crate::units::Bytes;
use crate::volume::{Action, Catalog, CreateRequest, Volume};
use std::time::{Duration, Instant};

/// Crash points an undo passes (the caller's operation names them).
#[derive(Clone, Copy, Default)]
struct Points {
    parent: Option<CrashPoint>,
    links: Option<CrashPoint>,
    data: Option<CrashPoint>,
    metadata: Option<CrashPoint>,
}

const REMOVE: Points = Points {
    parent: Some(CrashPoint::RemoveAfterParentUpdate),
    links: Some(CrashPoint::RemoveAfterLinks),
    data: Some(CrashPoint::RemoveAfterWipe),
    metadata: Some(CrashPoint::RemoveAfterMetadata),
};

const GC: Points = Points {
    parent: Some(CrashPoint::GcAfterParentUpdate),
    links: Some(CrashPoint::GcAfterLinks),
    data: Some(CrashPoint::GcAfterWipe),
    metadata: Some(CrashPoint::GcAfterMetadata),
};

fn pass(p: Option<CrashPoint>) {
    if let Some(p) = p {
        crash::point(p);
    }
}

/// An I/O error of `what`; a file larger than the file system takes (EFBIG) is the request's
/// fault, not the system's.
fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.to_string();
    move |e| {
        if e.raw_os_error() == Some(libc::EFBIG) {
            Error::InvalidInput(format!(
                "{what}: the file system holds no file that large ({e})"
            ))
        } else {
            Error::io(what)(e)
        }
    }
}

/// Creates a base volume or a snapshot of a leaf; returns it as committed.
pub fn create(fd: &FileDomain, req: &CreateRequest) -> Result<Volume> {
    if req.wipe.is_some() {
        return Err(Error::InvalidInput(
            "--wipe does not apply to a file domain: removing a volume unlinks its data file, \
             whose blocks the file system never shows to another file"
                .into(),
        ));
    }
    let _guard = fd.lock()?;
    let scan = store::scan(fd)?;
    let plan = crate::volume::create::plan_for(&fd.name, &scan.catalog, req)?;
    let meta = plan.meta.clone();
    if scan.strays.iter().any(|s| s.volume == Some(meta.id)) {
        return Err(Error::VolumeExists {
            vg: fd.name.clone(),
            id: meta.id,
        });
    }
    let parent_lease = match &plan.parent {
        Some(p) => Some(fd.lease_shared(&p.image, &p.id)?),
        None => None,
    };
    let dir = fd.image_dir(&meta.image);
    let creating = fd.meta_path(&meta.image, &meta.id, Marker::Creating);
    if !dir.exists() {
        atomic::make_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
        atomic::fsync_dir(&fd.images_dir()).map_err(io("syncing images/"))?;
    }
    let bytes = store::encode_meta(&meta)?;
    let header: Option<Header> =
        (plan.parent.is_some() || meta.format == Format::Qcow2).then(|| {
            let capacity = meta.capacity.0;
            let backing = plan
                .parent
                .as_ref()
                .map(|p| (p.id.to_string(), p.format.to_string()));
            std::thread::spawn(move || {
                let backing = backing.as_ref().map(|(f, fmt)| (f.as_str(), fmt.as_str()));
                crate::qemu::qcow2_header(capacity, backing)
            })
        });
    if let Err(e) = atomic::write_new(&creating, &bytes) {
        // Nothing of the volume exists but, maybe, a torn marker: take it out again.
        let _ = atomic::remove(&creating);
        let _ = atomic::remove_empty_dir(&dir);
        return Err(io(format!("writing {}", creating.display()))(e));
    }
    if let Err(original) = contents(fd, &plan, header) {
        let entry = Entry {
            id: meta.id,
            image: meta.image,
            marker: Marker::Creating,
            meta: Ok(meta.clone()),
            data: None,
        };
        let held: Vec<VolumeId> = plan.parent.iter().map(|p| p.id).collect();
        let rollback =
            store::scan(fd).and_then(|s| undo(fd, &s.catalog, &entry, &held, Points::default()));
        return Err(match rollback {
            Ok(_) => original,
            Err(rollback) => Error::RollbackFailed {
                original: Box::new(original),
                rollback: Box::new(rollback),
            },
        });
    }
    // The commit point.
    let committed = fd.meta_path(&meta.image, &meta.id, Marker::None);
    atomic::rename(&creating, &committed).map_err(|e| Error::LeftForGc {
        original: Box::new(io("committing the volume")(e)),
    })?;
    crash::point(CrashPoint::CreateAfterCommit);
    drop(parent_lease);
    let size = std::fs::metadata(fd.data_path(&meta.image, &meta.id)).map_or(0, |m| m.len());
    let entry = Entry {
        id: meta.id,
        image: meta.image,
        marker: Marker::None,
        meta: Ok(meta.clone()),
        data: Some(size),
    };
    Ok(Volume::from_parts(&store::lv_entry(&entry), 0, &meta))
}

/// Everything between the marker and the commit: the parent's role, the data file.
/// The qcow2 header `qemu-img create` writes for the new volume (backed by the parent's bare
/// id), made in memory on another thread while the marker and the parent are written, as
/// block creations make it while their `lvcreate` runs.
type Header = std::thread::JoinHandle<std::result::Result<Vec<u8>, crate::qemu::QemuError>>;

fn io_panic(what: &str) -> crate::qemu::QemuError {
    crate::qemu::QemuError::Scratch(std::io::Error::other(what.to_string()))
}

fn contents(
    fd: &FileDomain,
    plan: &crate::volume::create::Plan,
    header: Option<Header>,
) -> Result<()> {
    let meta = &plan.meta;
    // The volume's lease area, made with the volume as on block domains, so taking the lease
    // later never creates anything.
    fd.make_lease(&meta.image, &meta.id)?;
    crash::point(CrashPoint::CreateAfterMetadata);
    if let Some(p) = &plan.parent {
        let path = fd.meta_path(&p.image, &p.id, Marker::None);
        let mut pm =
            store::read_meta(&path).map_err(|source| Error::Metadata { id: p.id, source })?;
        // Re-checked under the parent's lease: an operation may have run meanwhile.
        if pm.legality != Legality::Legal {
            return Err(Error::Illegal { id: p.id });
        }
        pm.role = Role::Internal;
        write_meta(&path, &pm)?;
    }
    crash::point(CrashPoint::CreateAfterParentUpdate);
    let data = fd.data_path(&meta.image, &meta.id);
    let what = || format!("creating {}", data.display());
    match &plan.parent {
        None if meta.format == Format::Raw => {
            let f = atomic::create_file(&data, true).map_err(io(what()))?;
            f.set_len(meta.capacity.0).map_err(io(what()))?;
            f.sync_all().map_err(io(what()))?;
            atomic::fsync_dir(&fd.image_dir(&meta.image)).map_err(io(what()))?;
        }
        _ => {
            let header = match header {
                Some(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(io_panic("the qemu-img thread panicked")))?,
                None => return Err(Error::InvalidInput("no qcow2 header was made".into())),
            };
            atomic::write_new(&data, &header).map_err(io(what()))?;
        }
    }
    crash::point(CrashPoint::CreateAfterQemuImg);
    crash::point(CrashPoint::CreateAfterLinks);
    Ok(())
}

/// Takes a marked volume out: the parent's role, the data file, the lease file, the metadata
/// file (last: the marker stays until everything else is undone), the image directory when it
/// is empty. Every step is idempotent. `held`: the leases the caller holds.
fn undo(
    fd: &FileDomain,
    cat: &Catalog,
    e: &Entry,
    held: &[VolumeId],
    points: Points,
) -> Result<Vec<Action>> {
    let mut done = Vec::new();
    // A removal is undone under the volume's own lease, so an operation that started before
    // it cannot write its metadata once it goes (busy: nothing done).
    let _own = (e.marker == Marker::Removing && !held.contains(&e.id))
        .then(|| fd.lease(&e.image, &e.id))
        .transpose()?;
    if let Some(p) = e.meta.as_ref().ok().and_then(|m| m.parent) {
        let others = cat
            .snap
            .children(&p)
            .iter()
            .filter(|c| c.id != Some(e.id))
            .count();
        if let (Some(pv), 0) = (cat.volumes.get(&p), others) {
            let path = fd.meta_path(&pv.image, &p, Marker::None);
            if matches!(store::read_meta(&path), Ok(m) if m.role == Role::Internal) {
                let _lease = (!held.contains(&p))
                    .then(|| fd.lease(&pv.image, &p))
                    .transpose()?;
                if let Ok(mut m) = store::read_meta(&path) {
                    m.role = Role::Leaf;
                    write_meta(&path, &m)?;
                    done.push(Action::ParentLeaf(p));
                }
            }
        }
    }
    pass(points.parent);
    pass(points.links);
    let data = fd.data_path(&e.image, &e.id);
    if atomic::remove(&data).map_err(io(format!("removing {}", data.display())))? {
        done.push(Action::FileRemoved(data.display().to_string()));
    }
    pass(points.data);
    let lease = fd.lease_path(&e.image, &e.id);
    let _ = atomic::remove(&lease);
    let meta = fd.meta_path(&e.image, &e.id, e.marker);
    if atomic::remove(&meta).map_err(io(format!("removing {}", meta.display())))? {
        done.push(Action::FileRemoved(meta.display().to_string()));
    }
    let _ = atomic::remove_empty_dir(&fd.image_dir(&e.image));
    pass(points.metadata);
    Ok(done)
}

/// Removes the leaf volume `id`.
pub fn remove(fd: &FileDomain, id: &VolumeId) -> Result<()> {
    let _guard = fd.lock()?;
    let scan = store::scan(fd)?;
    let cat = &scan.catalog;
    let vol = cat.get(&fd.name, id)?.clone();
    if !cat.is_leaf(id) {
        return Err(Error::NotALeaf {
            id: *id,
            what: "remove its snapshots first, or use `image remove`".into(),
        });
    }
    if let Some(p) = vol
        .parent
        .and_then(|p| cat.snap.volume(&p))
        .filter(|p| p.marked())
    {
        return Err(Error::PendingMark {
            id: *id,
            lv: p.name.clone(),
        });
    }
    let mut held = vec![*id];
    let _lease = fd.lease(&vol.image, id)?;
    let _parent_lease = match vol.parent.and_then(|p| cat.volumes.get(&p)) {
        Some(p) => {
            held.push(p.id);
            Some(fd.lease(&p.image, &p.id)?)
        }
        None => None,
    };
    let entry = mark(fd, &scan, id)?;
    undo(fd, cat, &entry, &held, REMOVE).map_err(|e| Error::LeftForGc {
        original: Box::new(e),
    })?;
    Ok(())
}

/// The point of no return of a removal: `.meta` renamed to `.meta.removing`.
fn mark(fd: &FileDomain, scan: &store::Scan, id: &VolumeId) -> Result<Entry> {
    let mut e =
        scan.entries
            .iter()
            .find(|e| e.id == *id)
            .cloned()
            .ok_or(Error::VolumeNotFound {
                vg: fd.name.clone(),
                id: *id,
            })?;
    atomic::rename(
        &fd.meta_path(&e.image, id, Marker::None),
        &fd.meta_path(&e.image, id, Marker::Removing),
    )
    .map_err(io(format!("marking volume {id} for removal")))?;
    crash::point(CrashPoint::RemoveAfterMark);
    e.marker = Marker::Removing;
    Ok(e)
}

/// Removes every volume of `image`, leaf first; how many there were.
pub fn remove_image(fd: &FileDomain, image: &ImageId) -> Result<usize> {
    let _guard = fd.lock()?;
    let scan = store::scan(fd)?;
    let cat = &scan.catalog;
    let mut order: Vec<VolumeId> = match crate::chain::walk(cat, image) {
        Ok(chain) => chain.iter().map(|v| v.id).collect(),
        Err(Error::ImageNotFound { .. }) => {
            return Err(Error::ImageNotFound {
                vg: fd.name.clone(),
                image: *image,
            })
        }
        Err(_) => cat
            .snap
            .image_volumes(image)
            .iter()
            .filter_map(|l| l.id)
            .collect(),
    };
    order.reverse();
    let mut leases = Vec::new();
    for id in &order {
        leases.push(fd.lease(image, id)?);
    }
    // Marked leaf first, so no committed volume ever descends from a marked one.
    let mut marked = Vec::new();
    for id in &order {
        marked.push(mark(fd, &scan, id).map_err(|e| Error::LeftForGc {
            original: Box::new(e),
        })?);
    }
    let mut after = store::scan(fd)?;
    for e in &marked {
        undo(fd, &after.catalog, e, &order, Points::default()).map_err(|e| Error::LeftForGc {
            original: Box::new(e),
        })?;
        after = store::scan(fd)?;
    }
    Ok(order.len())
}

/// Collects orphans: marked metadata files, temp files, data files without metadata.
pub fn gc(fd: &FileDomain, dry_run: bool) -> Result<GcReport> {
    let start = Instant::now();
    let _guard = fd.lock()?;
    let scan = store::scan(fd)?;
    let needed = scan.catalog.snap.needed_by_committed();
    let mut out = Vec::new();
    for e in scan.entries.iter().filter(|e| e.marker != Marker::None) {
        let meta = e.meta.as_ref().ok();
        let mut o = Orphan {
            lv: e.id.to_string(),
            marker: if e.marker == Marker::Removing {
                crate::gc::Marker::Removing
            } else {
                crate::gc::Marker::Creating
            },
            image: Some(e.image),
            parent: meta.and_then(|m| m.parent),
            slot: None,
            actions: vec![],
            error: None,
        };
        if needed.contains(&e.id.to_string()) {
            // A committed volume descends from it: restore it (never happens through lvchain's
            // own removals, which mark leaf first).
            if e.marker == Marker::Removing && e.meta.is_ok() {
                if dry_run {
                    o.actions.push(GcAction::WouldRestore);
                } else {
                    match atomic::rename(
                        &fd.meta_path(&e.image, &e.id, Marker::Removing),
                        &fd.meta_path(&e.image, &e.id, Marker::None),
                    ) {
                        Ok(()) => o.actions.push(GcAction::MarkerRemoved),
                        Err(err) => o.error = Some(format!("removing its marker: {err}")),
                    }
                }
            } else {
                o.error = Some(
                    "left alone: a committed volume descends from it, but it is not a removal \
                     with intact metadata; repair by hand"
                        .into(),
                );
            }
        } else if dry_run {
            o.actions.push(match e.marker {
                Marker::Removing => GcAction::WouldComplete { wipe: false },
                _ => GcAction::WouldRollBack,
            });
        } else {
            let cat = store::scan(fd)?.catalog;
            match undo(fd, &cat, e, &[], GC) {
                Ok(done) => o.actions = done.into_iter().map(GcAction::Undo).collect(),
                Err(err) => o.error = Some(err.to_string()),
            }
        }
        out.push(o);
    }
    for s in &scan.strays {
        let removable = matches!(
            s.kind,
            StrayKind::Temp | StrayKind::DataWithoutMetadata | StrayKind::LeaseWithoutMetadata
        );
        let mut o = Orphan {
            lv: s.path.display().to_string(),
            marker: crate::gc::Marker::Stray,
            image: None,
            parent: None,
            slot: None,
            actions: vec![],
            error: None,
        };
        if !removable {
            o.error = Some(format!("{}: left alone; repair by hand", describe(s.kind)));
        } else if !dry_run {
            // A temp file of a live operation (which holds the volume's lease) is its own.
            let lease = match (s.kind, s.volume) {
                (StrayKind::Temp, Some(id)) => {
                    let lease = store::image_of(&s.path).map(|image| fd.lease(&image, &id));
                    match lease {
                        Some(Ok(l)) => Some(l),
                        _ => continue,
                    }
                }
                _ => None,
            };
            match atomic::remove(&s.path) {
                Ok(_) => o.actions.push(GcAction::Undo(Action::FileRemoved(
                    s.path.display().to_string(),
                ))),
                Err(e) => o.error = Some(e.to_string()),
            }
            drop(lease);
        } else {
            o.actions.push(GcAction::WouldRemoveFile);
        }
        out.push(o);
    }
    for o in &out {
        tracing::info!(file = %o.lv, actions = ?o.actions, error = ?o.error, "orphan");
    }
    Ok(GcReport {
        vg: fd.name.clone(),
        dry_run,
        orphans: out,
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn describe(kind: StrayKind) -> &'static str {
    match kind {
        StrayKind::Temp => "a temp file of a metadata rewrite that died",
        StrayKind::DataWithoutMetadata => "a data file without metadata",
        StrayKind::LeaseWithoutMetadata => "a lease file without metadata",
        StrayKind::Duplicate => "a second metadata file of one volume",
        StrayKind::Foreign => "a file that belongs to no volume",
    }
}

/// The read-only consistency report, with the block check's kinds (`stray-file` for files that
/// belong to no volume).
pub fn check(fd: &FileDomain) -> Result<CheckReport> {
    let start = Instant::now();
    let scan = store::scan(fd)?;
    let cat = &scan.catalog;
    let mut problems = Vec::new();
    let mut add = |kind, subject: String, detail: String| {
        problems.push(Problem {
            kind,
            subject,
            detail,
        })
    };
    for area in ["ids", "leases"] {
        if !fd.dom_md().join(area).is_file() {
            add(
                ProblemKind::SpecialLvMissing,
                format!("dom_md/{area}"),
                "the domain lacks this file".into(),
            );
        }
    }
    for e in &scan.entries {
        match e.marker {
            Marker::None => {}
            m => add(
                ProblemKind::Orphan,
                e.id.to_string(),
                format!("has {}{}: an operation died; run gc", e.id, m.suffix()),
            ),
        }
        if e.marker == Marker::None && e.data.is_none() {
            add(
                ProblemKind::Metadata,
                e.id.to_string(),
                "committed metadata without its data file".into(),
            );
        }
    }
    for s in &scan.strays {
        add(
            ProblemKind::StrayFile,
            s.path.display().to_string(),
            format!("{}; run gc", describe(s.kind)),
        );
    }
    for (id, e) in &cat.bad {
        add(ProblemKind::Metadata, id.to_string(), e.to_string());
    }
    for v in cat.volumes.values() {
        if v.legality != Legality::Legal {
            add(
                ProblemKind::Illegal,
                v.id.to_string(),
                format!(
                    "illegal at generation {}: an operation on it failed (or is running); its \
                     data may be partial (see `volume status`)",
                    v.generation
                ),
            );
        }
    }
    let images = cat.snap.images();
    for image in &images {
        if let Err(e) = crate::chain::walk(cat, image) {
            add(ProblemKind::Chain, image.to_string(), e.to_string());
        }
    }
    problems.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    Ok(CheckReport {
        vg: fd.name.clone(),
        clean: problems.is_empty(),
        volumes: cat.volumes.len(),
        images: images.len(),
        problems,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Grows a volume (raw: the file; qcow2: its virtual size) and its metadata capacity, under
/// the domain lock and the volume's lease. Crash points `extend.after-lvextend` (the file
/// grown), `extend.after-resize`, `extend.after-metadata`.
pub fn extend(fd: &FileDomain, id: &VolumeId, size: Bytes) -> Result<Volume> {
    let _guard = fd.lock()?;
    let cat = store::scan(fd)?.catalog;
    let vol = cat.get(&fd.name, id)?.clone();
    check_growth(&vol, size)?;
    let _lease = fd.lease(&vol.image, id)?;
    grow(fd, &vol, size)?;
    let path = fd.meta_path(&vol.image, id, Marker::None);
    let mut m = store::read_meta(&path).map_err(|source| Error::Metadata { id: *id, source })?;
    m.capacity = size;
    write_meta(&path, &m)?;
    crash::point(CrashPoint::ExtendAfterMetadata);
    let cat = store::scan(fd)?.catalog;
    Ok(cat.get(&fd.name, id)?.clone())
}

/// Refuses to shrink a volume.
pub(crate) fn check_growth(vol: &Volume, size: Bytes) -> Result<()> {
    if size < vol.capacity {
        return Err(Error::InvalidInput(format!(
            "size {} is smaller than the current capacity {}",
            size.0, vol.capacity.0
        )));
    }
    Ok(())
}

/// Grows the data of `vol` to `size` (refusing to shrink).
pub(crate) fn grow(fd: &FileDomain, vol: &Volume, size: Bytes) -> Result<()> {
    check_growth(vol, size)?;
    let data = fd.data_path(&vol.image, &vol.id);
    let what = || format!("growing {}", data.display());
    match vol.format {
        Format::Raw => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&data)
                .map_err(io(what()))?;
            if f.metadata().map_err(io(what()))?.len() < size.0 {
                f.set_len(size.0).map_err(io(what()))?;
            }
            f.sync_all().map_err(io(what()))?;
            crash::point(CrashPoint::ExtendAfterLvextend);
        }
        Format::Qcow2 => {
            crash::point(CrashPoint::ExtendAfterLvextend);
            let spec = serde_json::json!({
                "driver": "qcow2",
                "backing": null,
                "file": { "driver": "file", "filename": data.to_string_lossy() },
            });
            let qemu_img =
                std::env::var("LVCHAIN_QEMU_IMG").unwrap_or_else(|_| "/usr/bin/qemu-img".into());
            let mut c = crate::exec::Cmd::new(qemu_img, Duration::from_secs(120))
                .args(["resize", "-q"])
                .arg(format!("json:{spec}"))
                .arg(size.0.to_string());
            c.die_with_parent = true;
            let f = c.run().map_err(crate::qemu::QemuError::from)?;
            if !f.success() {
                return Err(crate::qemu::QemuError::Failed {
                    argv: f.argv,
                    code: f.code,
                    stderr: f.stderr.trim().to_string(),
                }
                .into());
            }
        }
    }
    crash::point(CrashPoint::ExtendAfterResize);
    Ok(())
}
