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

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: &'static str,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub vg: String,
    pub clean: bool,
    pub volumes: usize,
    pub images: usize,
    pub problems: Vec<Problem>,
    pub seconds: f64,
}

pub fn check(domain: &Domain) -> Result<Report> {
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
                "special-lv-missing",
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
                "orphan",
                lv.name.clone(),
                format!("carries {marker}: an operation died; run gc"),
            );
        } else if !lv.special && !lv.is_committed() {
            add(
                "foreign-lv",
                lv.name.clone(),
                "belongs to no volume (no UUID name, image or slot tag)".into(),
            );
        }
        if !lv.bad_tags.is_empty() {
            add(
                "bad-tag",
                lv.name.clone(),
                format!("malformed tags {:?}", lv.bad_tags),
            );
        }
    }
    for (slot, owners) in &by_slot {
        if owners.len() > 1 {
            add(
                "slot-collision",
                format!("slot {slot}"),
                format!("owned by {}", owners.join(", ")),
            );
        }
    }
    for (id, e) in &cat.bad {
        add("metadata", id.to_string(), e.to_string());
    }
    for v in cat.volumes.values() {
        let Some(lv) = snap.volume(&v.id) else {
            continue;
        };
        if lv.parent != v.parent {
            add(
                "tag-mismatch",
                v.id.to_string(),
                format!(
                    "LVC_PARENT tag {:?} but metadata parent {:?}",
                    lv.parent, v.parent
                ),
            );
        }
        if lv.image != Some(v.image) {
            add(
                "tag-mismatch",
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
                "illegal",
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
            add("chain", image.to_string(), e.to_string());
        }
    }
    problems.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
    Ok(Report {
        vg: domain.vg.clone(),
        clean: problems.is_empty(),
        volumes: cat.volumes.len(),
        images: images.len(),
        problems,
        seconds: start.elapsed().as_secs_f64(),
    })
}
