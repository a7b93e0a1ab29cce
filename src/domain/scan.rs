//! One LVM report of a domain's VG, classified: special LVs, committed volumes, orphans
//! (LVs carrying a transaction marker) and LVs that belong to no volume.

use crate::error::{Error, Result};
use crate::lvm::LvRow;
use crate::tags::{Tag, FORMAT_VERSION};
use std::collections::{BTreeSet, HashSet};
use uuid::Uuid;

/// Domain facts kept in VG tags.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DomainInfo {
    pub vg: String,
    pub format: u32,
    pub lock_manager: String,
    pub slot_size: u32,
    pub max_volumes: u32,
    pub extent_size: u64,
    pub vg_size: u64,
    pub vg_free: u64,
}

/// One LV of the domain with its tags parsed.
#[derive(Debug, Clone)]
pub struct LvEntry {
    pub name: String,
    pub id: Option<Uuid>,
    pub size: u64,
    pub active: bool,
    pub open: bool,
    pub image: Option<Uuid>,
    pub parent: Option<Uuid>,
    pub slot: Option<u32>,
    pub creating: bool,
    pub removing: bool,
    pub special: bool,
    /// `LVC_*` tags that do not parse (a damaged domain).
    pub bad_tags: Vec<String>,
}

impl LvEntry {
    fn from_row(row: &LvRow) -> LvEntry {
        let mut e = LvEntry {
            name: row.lv_name.clone(),
            id: Uuid::parse_str(&row.lv_name).ok(),
            size: row.lv_size,
            active: row.active(),
            open: row.open(),
            image: None,
            parent: None,
            slot: None,
            creating: false,
            removing: false,
            special: false,
            bad_tags: Vec::new(),
        };
        for t in &row.lv_tags {
            match Tag::parse(t) {
                Ok(Tag::Image(u)) => e.image = Some(u),
                Ok(Tag::Parent(u)) => e.parent = Some(u),
                Ok(Tag::Slot(n)) => e.slot = Some(n),
                Ok(Tag::Creating) => e.creating = true,
                Ok(Tag::Removing) => e.removing = true,
                Ok(Tag::Special) => e.special = true,
                Ok(_) => {}
                Err(_) => e.bad_tags.push(t.clone()),
            }
        }
        e
    }

    /// A transaction marker is set: the LV is an orphan whenever the domain lock is free.
    pub fn marked(&self) -> bool {
        self.creating || self.removing
    }

    /// A committed volume: a UUID name, image and slot tags, no marker, not special.
    pub fn is_volume(&self) -> bool {
        !self.marked()
            && !self.special
            && self.id.is_some()
            && self.image.is_some()
            && self.slot.is_some()
    }
}

/// The state of a domain as one report saw it.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub info: DomainInfo,
    pub lvs: Vec<LvEntry>,
}

impl Snapshot {
    /// Classifies the rows of one `lvs` report of `vg` (which must hold the special LVs).
    pub fn from_rows(vg: &str, rows: &[LvRow]) -> Result<Snapshot> {
        let first = rows.first().ok_or_else(|| Error::NotADomain {
            vg: vg.to_string(),
            hint: " (it holds no LVs)".into(),
        })?;
        let info = info_from_tags(
            vg,
            &first.vg_tags,
            first.vg_extent_size,
            first.vg_size,
            first.vg_free,
        )?;
        Ok(Snapshot {
            info,
            lvs: rows.iter().map(LvEntry::from_row).collect(),
        })
    }

    pub fn volumes(&self) -> impl Iterator<Item = &LvEntry> {
        self.lvs.iter().filter(|l| l.is_volume())
    }

    pub fn orphans(&self) -> impl Iterator<Item = &LvEntry> {
        self.lvs.iter().filter(|l| l.marked() && !l.special)
    }

    pub fn volume(&self, id: &Uuid) -> Option<&LvEntry> {
        self.volumes().find(|l| l.id.as_ref() == Some(id))
    }

    pub fn lv_named(&self, name: &str) -> Option<&LvEntry> {
        self.lvs.iter().find(|l| l.name == name)
    }

    /// Committed volumes whose parent tag names `id`.
    pub fn children(&self, id: &Uuid) -> Vec<&LvEntry> {
        self.volumes()
            .filter(|l| l.parent.as_ref() == Some(id))
            .collect()
    }

    pub fn image_volumes(&self, image: &Uuid) -> Vec<&LvEntry> {
        self.volumes()
            .filter(|l| l.image.as_ref() == Some(image))
            .collect()
    }

    pub fn images(&self) -> BTreeSet<Uuid> {
        self.volumes().filter_map(|l| l.image).collect()
    }

    /// Slots owned by any LV tag, committed or marked (a marked LV's slot stays taken).
    pub fn used_slots(&self) -> HashSet<u32> {
        self.lvs.iter().filter_map(|l| l.slot).collect()
    }

    /// The lowest slot no LV owns.
    pub fn lowest_free_slot(&self) -> Option<u32> {
        let used = self.used_slots();
        (0..self.info.max_volumes).find(|n| !used.contains(n))
    }
}

/// Reads the domain facts from VG tags; refuses what is not a complete domain of our format.
pub fn info_from_tags(
    vg: &str,
    tags: &[String],
    extent: u64,
    size: u64,
    free: u64,
) -> Result<DomainInfo> {
    let mut ready = false;
    let mut unready = false;
    let mut info = DomainInfo {
        vg: vg.to_string(),
        format: 0,
        lock_manager: "local".into(),
        slot_size: 0,
        max_volumes: 0,
        extent_size: extent,
        vg_size: size,
        vg_free: free,
    };
    for t in tags {
        match Tag::parse(t) {
            Ok(Tag::Domain) => ready = true,
            Ok(Tag::DomainUnready) => unready = true,
            Ok(Tag::Format(n)) => info.format = n,
            Ok(Tag::Lock(m)) => info.lock_manager = m,
            Ok(Tag::SlotSize(n)) => info.slot_size = n,
            Ok(Tag::MaxVolumes(n)) => info.max_volumes = n,
            _ => {}
        }
    }
    if !ready {
        let hint = if unready {
            " (formatting it did not finish; run `lvchain domain create` again to complete it)"
        } else {
            ""
        };
        return Err(Error::NotADomain {
            vg: vg.to_string(),
            hint: hint.into(),
        });
    }
    if info.format != FORMAT_VERSION {
        return Err(Error::UnsupportedFormat {
            vg: vg.to_string(),
            found: info.format,
            supported: FORMAT_VERSION,
        });
    }
    if info.slot_size == 0 || info.max_volumes == 0 {
        return Err(Error::NotADomain {
            vg: vg.to_string(),
            hint: " (its VG tags lack the slot layout)".into(),
        });
    }
    Ok(info)
}
