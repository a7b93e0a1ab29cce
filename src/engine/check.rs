//! `domain check`: a read-only consistency report of a domain, like `fsck -n`.
//!
//! One LVM report and one read of the metadata area. Finds orphans (marked LVs), LVs that
//! belong to no volume, slot collisions, metadata that fails its checksum or names another
//! volume, tags that disagree with the metadata, and chains that are not one straight line
//! from a base to exactly one leaf (loops, forks, missing parents), and illegal volumes (an
//! operation failed or runs: their data may be partial). Changes nothing.

use crate::domain::{Domain, SPECIAL_LVS};
use crate::error::Result;
use crate::metadata::Legality;
use crate::volume::Catalog;
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// What kind of problem `domain check` found (JSON: the kebab-case name; variants in the
/// alphabetical order of those names, which is the report's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// An `LVC_*` tag that does not parse.
    BadTag,
    /// An image whose chain is not one line from a base to one leaf.
    Chain,
    /// An LV that belongs to no volume.
    ForeignLv,
    /// A volume whose data may be partial (an operation failed or runs).
    Illegal,
    /// A slot that fails its checksum or names another volume.
    Metadata,
    /// An LV carrying a transaction marker.
    Orphan,
    /// A slot owned by more than one LV tag.
    SlotCollision,
    /// A special LV (a file domain: a `dom_md` file) that is missing.
    SpecialLvMissing,
    /// A file of a file domain that belongs to no volume (a temp file, data without metadata).
    StrayFile,
    /// Tags that disagree with the metadata.
    TagMismatch,
}

impl std::fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
        f.write_str(s.as_str().unwrap_or_default())
    }
}

#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub vg: String,
    pub clean: bool,
    pub volumes: usize,
    pub images: usize,
    pub problems: Vec<Problem>,
    pub seconds: f64,
}

pub(crate) fn check(domain: &Domain) -> Result<Report> {
    let start = Instant::now();
    let cat = Catalog::load(domain)?;
    let snap = &cat.snap;
    let mut problems = Vec::new();
    let mut add = |kind, subject: String, detail: String| {
        problems.push(Problem {
            kind,
            subject,
            detail,
        })
    };
    for name in SPECIAL_LVS {
        if snap.lv_named(name).is_none() {
            add(
                ProblemKind::SpecialLvMissing,
                name.to_string(),
                "the domain lacks this LV".into(),
            );
        }
    }
    let mut by_slot: HashMap<u32, Vec<&str>> = HashMap::new();
    for lv in &snap.lvs {
        if let Some(s) = lv.slot {
            by_slot.entry(s).or_default().push(&lv.name);
        }
        if lv.marked() && !lv.special {
            let marker = if lv.removing {
                "LVC_REMOVING"
            } else {
                "LVC_CREATING"
            };
            add(
                ProblemKind::Orphan,
                lv.name.clone(),
                format!("carries {marker}: an operation died; run gc"),
            );
        } else if !lv.special && !lv.is_committed() {
            add(
                ProblemKind::ForeignLv,
                lv.name.clone(),
                "belongs to no volume (no UUID name, image or slot tag)".into(),
            );
        }
        if !lv.bad_tags.is_empty() {
            add(
                ProblemKind::BadTag,
                lv.name.clone(),
                format!("malformed tags {:?}", lv.bad_tags),
            );
        }
    }
    for (slot, owners) in &by_slot {
        if owners.len() > 1 {
            add(
                ProblemKind::SlotCollision,
                format!("slot {slot}"),
                format!("owned by {}", owners.join(", ")),
            );
        }
    }
    for (id, e) in &cat.bad {
        add(ProblemKind::Metadata, id.to_string(), e.to_string());
    }
    for v in cat.volumes.values() {
        let Some(lv) = snap.volume(&v.id) else {
            continue;
        };
        if lv.parent != v.parent {
            add(
                ProblemKind::TagMismatch,
                v.id.to_string(),
                format!(
                    "LVC_PARENT tag {:?} but metadata parent {:?}",
                    lv.parent, v.parent
                ),
            );
        }
        if lv.image != Some(v.image) {
            add(
                ProblemKind::TagMismatch,
                v.id.to_string(),
                format!(
                    "LVC_IMAGE tag {:?} but metadata image {}",
                    lv.image, v.image
                ),
            );
        }
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
    let images = snap.images();
    for image in &images {
        if let Err(e) = crate::chain::walk(&cat, image) {
            add(ProblemKind::Chain, image.to_string(), e.to_string());
        }
    }
    problems.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    Ok(Report {
        vg: domain.vg.to_string(),
        clean: problems.is_empty(),
        volumes: cat.volumes.len(),
        images: images.len(),
        problems,
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_kinds_keep_their_json_names_and_order() {
        use ProblemKind::*;
        let kinds = [
            BadTag,
            Chain,
            ForeignLv,
            Illegal,
            Metadata,
            Orphan,
            SlotCollision,
            SpecialLvMissing,
            StrayFile,
            TagMismatch,
        ];
        let names: Vec<String> = kinds.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "bad-tag",
                "chain",
                "foreign-lv",
                "illegal",
                "metadata",
                "orphan",
                "slot-collision",
                "special-lv-missing",
                "stray-file",
                "tag-mismatch"
            ]
        );
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names, "the report sorts by kind as it did by name");
        assert!(kinds.windows(2).all(|w| w[0] < w[1]));
    }
}
