//! The garbage collector: finds LVs that still carry a transaction marker and finishes them.
//!
//! It holds the domain lock, the same one every creation and removal holds throughout, so any
//! marked LV it sees belongs to an operation that died. A creation that died is rolled back, a
//! removal that died is completed (its data wiped first, as the removal would have); both go
//! through the steps of [`crate::volume::undo`], which are idempotent, so a collector that
//! itself dies is finished by the next run. It never touches a committed volume other than to
//! make a parent a leaf again.
//!
//! One exception to "complete a removal": a marked LV that a committed volume still descends
//! from (an image removal whose multi-LV mark did not finish: lvm commits each LV of one
//! `lvchange` on its own). Removing it would take the committed volume's backing data, and the
//! removal changed nothing before every member was marked, so its marker is removed instead.

use crate::domain::{Domain, LvEntry};
use crate::error::Result;
use crate::format::ids::{ImageId, VolumeId};
use crate::tags::Tag;
use crate::volume::undo::{self, Action, Points, WipeProgress};
use std::time::Instant;

const POINTS: Points = Points {
    parent: Some(crate::crash::CrashPoint::GcAfterParentUpdate),
    links: Some(crate::crash::CrashPoint::GcAfterLinks),
    metadata: Some(crate::crash::CrashPoint::GcAfterMetadata),
    wipe: None,
    lvremove: None,
};

/// The transaction marker an orphan carries (its tag, as the report shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// `LVC_CREATING`: a creation that died.
    Creating,
    /// `LVC_REMOVING`: a removal that died.
    Removing,
    /// A file domain's file that belongs to no transaction (a temp file of a metadata rewrite
    /// that died, a data file without metadata): `stray-file`.
    Stray,
}

impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Marker::Creating => Tag::Creating.fmt(f),
            Marker::Removing => Tag::Removing.fmt(f),
            Marker::Stray => f.write_str("stray-file"),
        }
    }
}

/// One thing the collector did (or, with `dry_run`, would do) with an orphan; its text is what
/// gc's report shows (stable).
#[derive(Debug, Clone, PartialEq)]
pub enum GcAction {
    /// Dry run: the removal would be completed (its data wiped first when `wipe`).
    WouldComplete { wipe: bool },
    /// Dry run: the creation would be rolled back.
    WouldRollBack,
    /// Dry run: its marker would be removed (a committed volume still descends from it).
    WouldRestore,
    /// Its marker was removed: a committed volume still descends from it.
    MarkerRemoved,
    /// A step of taking the LV out ([`undo::Action`]).
    Undo(Action),
    /// The LV was gone already when the collector removed the others.
    LvAlreadyGone,
    /// Dry run: a file domain's stray file would be removed.
    WouldRemoveFile,
}

impl std::fmt::Display for GcAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GcAction::WouldComplete { wipe: true } => {
                f.write_str("complete the removal: parent role, link, slot, wipe, LV")
            }
            GcAction::WouldComplete { wipe: false } => {
                f.write_str("complete the removal: parent role, link, slot, LV (no wipe)")
            }
            GcAction::WouldRollBack => {
                f.write_str("roll back the creation: parent role, link, slot, LV")
            }
            GcAction::WouldRestore => {
                f.write_str("restore: a committed volume still descends from it")
            }
            GcAction::MarkerRemoved => {
                f.write_str("marker removed: a committed volume still descends from it")
            }
            GcAction::Undo(a) => a.fmt(f),
            GcAction::LvAlreadyGone => f.write_str("LV already gone"),
            GcAction::WouldRemoveFile => f.write_str("remove the file"),
        }
    }
}

/// What the collector did (or, with `dry_run`, would do) with one orphan.
#[derive(Debug, Clone)]
pub struct Orphan {
    pub lv: String,
    pub marker: Marker,
    pub image: Option<ImageId>,
    pub parent: Option<VolumeId>,
    pub slot: Option<u32>,
    pub actions: Vec<GcAction>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub vg: String,
    pub dry_run: bool,
    pub orphans: Vec<Orphan>,
    pub seconds: f64,
}

fn describe(lv: &LvEntry) -> Orphan {
    Orphan {
        lv: lv.name.clone(),
        marker: if lv.removing {
            Marker::Removing
        } else {
            Marker::Creating
        },
        image: lv.image,
        parent: lv.parent,
        slot: lv.slot,
        actions: Vec::new(),
        error: None,
    }
}

/// Collects every orphan of the domain. `progress` is called after each orphan (done, total),
/// `wipe_progress` during the wipe of a removed volume's data.
pub(crate) fn collect(
    domain: &Domain,
    dry_run: bool,
    progress: &mut dyn FnMut(usize, usize),
    wipe_progress: &mut WipeProgress<'_>,
) -> Result<Report> {
    let start = Instant::now();
    let _guard = domain.lock()?;
    let mut snap = domain.scan()?;
    domain.check_kind(&snap)?;
    let orphans: Vec<LvEntry> = snap.orphans().cloned().collect();
    let store = domain.slots(&snap)?;
    let mut out = Vec::new();
    let total = orphans.len();
    let needed = snap.needed_by_committed();
    let restored = restore(
        domain, &mut snap, &store, &orphans, &needed, dry_run, &mut out,
    );
    progress(out.len(), total);
    // Undo what each other orphan changed, then remove all of them with ONE lvremove.
    let mut undone = Vec::new();
    for lv in orphans.iter().filter(|l| !needed.contains(&l.name)) {
        let mut o = describe(lv);
        if dry_run {
            o.actions.push(if lv.removing {
                GcAction::WouldComplete {
                    wipe: lv.wipe_on_removal(&snap.info),
                }
            } else {
                GcAction::WouldRollBack
            });
        } else {
            match undo::undo_changes(domain, &snap, &store, lv, &[], POINTS) {
                Ok(done) => {
                    o.actions = done.into_iter().map(GcAction::Undo).collect();
                    snap.lvs.retain(|l| l.name != lv.name);
                    undone.push((out.len(), lv));
                }
                Err(e) => o.error = Some(e.to_string()),
            }
        }
        out.push(o);
        progress(out.len(), total);
    }
    // Wipe the removed volumes' data; an LV whose wipe failed keeps its marker for next time.
    let lvs: Vec<&LvEntry> = undone.iter().map(|(_, l)| *l).collect();
    match undo::wipe(domain, &snap.info, &lvs, wipe_progress) {
        Ok(wiped) => {
            for (i, _) in &undone {
                let o = &mut out[*i];
                let mine = wiped.done.iter().filter(|a| a.lv() == Some(o.lv.as_str()));
                o.actions.extend(mine.cloned().map(GcAction::Undo));
                if let Some((_, e)) = wiped.failed.iter().find(|(n, _)| n == &o.lv) {
                    o.error = Some(e.to_string());
                }
            }
        }
        Err(e) => {
            for (i, l) in &undone {
                if l.wipe_on_removal(&snap.info) {
                    out[*i].error = Some(e.to_string());
                }
            }
        }
    }
    undone.retain(|(i, _)| out[*i].error.is_none());
    let names: Vec<String> = undone.iter().map(|(i, _)| out[*i].lv.clone()).collect();
    if !names.is_empty() {
        crate::crash::point(crate::crash::CrashPoint::GcAfterWipe);
    }
    match undo::remove_lvs(domain, &names) {
        Ok(done) => {
            for (i, _) in &undone {
                let o = &mut out[*i];
                let action = done.iter().find(|a| a.lv() == Some(o.lv.as_str()));
                o.actions
                    .push(action.map_or(GcAction::LvAlreadyGone, |a| GcAction::Undo(a.clone())));
            }
        }
        Err(e) => {
            for (i, _) in &undone {
                out[*i].error = Some(format!("removing the LVs: {e}"));
            }
        }
    }
    if !names.is_empty() {
        crate::crash::point(crate::crash::CrashPoint::GcAfterLvremove);
    }
    if let Err(e) = restored {
        // Reported per orphan; the rest of the collection stands.
        tracing::warn!(error = %e, "restoring marked LVs failed");
    }
    for o in &out {
        tracing::info!(lv = %o.lv, marker = %o.marker, actions = ?o.actions, error = ?o.error, "orphan");
    }
    Ok(Report {
        vg: domain.vg.to_string(),
        dry_run,
        orphans: out,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Takes the marker off the REMOVING orphans in `needed` whose metadata is intact, in ONE
/// lvchange, and counts them as committed in `snap` from then on. Others in `needed` are left
/// alone with an error: lvchain cannot tell how to finish them without breaking a committed
/// volume.
fn restore(
    domain: &Domain,
    snap: &mut crate::domain::Snapshot,
    store: &crate::metadata::SlotStore,
    orphans: &[LvEntry],
    needed: &std::collections::HashSet<String>,
    dry_run: bool,
    out: &mut Vec<Orphan>,
) -> Result<()> {
    let mut restore = Vec::new();
    for lv in orphans.iter().filter(|l| needed.contains(&l.name)) {
        let mut o = describe(lv);
        let intact = lv
            .slot
            .and_then(|n| store.read(n).ok())
            .is_some_and(|m| Some(m.id) == lv.id);
        if lv.removing && intact {
            o.actions.push(if dry_run {
                GcAction::WouldRestore
            } else {
                GcAction::MarkerRemoved
            });
            restore.push(out.len());
        } else {
            o.error = Some(
                "left alone: a committed volume descends from it, but it is not a removal \
                 with intact metadata; repair by hand"
                    .into(),
            );
        }
        out.push(o);
    }
    if dry_run || restore.is_empty() {
        return Ok(());
    }
    let paths: Vec<String> = restore
        .iter()
        .map(|&i| domain.lv_path(&out[i].lv))
        .collect();
    let removing = crate::tags::strings(&[crate::tags::Tag::Removing]);
    if let Err(e) = domain.lvm.lvchange_tags_many(&paths, &removing, &[]) {
        for &i in &restore {
            out[i].actions.clear();
            out[i].error = Some(format!("removing its marker: {e}"));
        }
        return Err(e.into());
    }
    for &i in &restore {
        if let Some(lv) = snap.lvs.iter_mut().find(|l| l.name == out[i].lv) {
            lv.removing = false;
        }
    }
    Ok(())
}
