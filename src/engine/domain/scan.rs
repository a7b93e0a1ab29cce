//! One LVM report of a domain's VG, classified: special LVs, committed volumes, orphans
//! (LVs carrying a transaction marker) and LVs that belong to no volume.
//!
//! Chain membership is decided here, once: a chain member is a committed volume, or a marked
//! LV that a committed volume descends from (a removal mark that did not reach every member of
//! an image: the collector restores it). Every reader and every validation asks
//! [`Snapshot::volumes`], [`Snapshot::children`] and [`Snapshot::pending_children`], so a base
//! under a marked middle volume is never taken for a leaf.

use crate::error::{Error, Result};
use crate::format::ids::{ImageId, VolumeId};
use crate::lock::LockKind;
use crate::lvm::LvRow;
use crate::tags::{Tag, Wipe, FORMAT_VERSION, OLDEST_FORMAT};
use crate::units::Bytes;
use std::collections::{BTreeSet, HashSet};

/// Domain facts kept in VG tags.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub vg: String,
    pub format: u32,
    /// Serialized as `"local"` or `"sanlock"`, the `LVC_LOCK` value.
    pub lock_manager: LockKind,
    pub slot_size: u32,
    pub max_volumes: u32,
    pub extent_size: Bytes,
    pub vg_size: Bytes,
    pub vg_free: Bytes,
    /// What removals do with a volume's data unless its own `LVC_WIPE` says otherwise.
    pub wipe: Wipe,
}

/// One LV of the domain with its tags parsed.
#[derive(Debug, Clone)]
pub struct LvEntry {
    pub name: String,
    pub id: Option<VolumeId>,
    pub size: Bytes,
    pub active: bool,
    pub open: bool,
    pub image: Option<ImageId>,
    pub parent: Option<VolumeId>,
    pub slot: Option<u32>,
    pub creating: bool,
    pub removing: bool,
    pub special: bool,
    /// A chain member: committed, or marked but needed by a committed descendant (set by
    /// [`Snapshot::from_rows`]).
    pub member: bool,
    /// The volume's own wipe policy (`LVC_WIPE` LV tag), overriding the domain's.
    pub wipe: Option<Wipe>,
    /// `LVC_*` tags that do not parse (a damaged domain).
    pub bad_tags: Vec<String>,
}

impl LvEntry {
    fn from_row(row: &LvRow) -> LvEntry {
        let mut e = LvEntry {
            name: row.lv_name.clone(),
            id: row.lv_name.parse().ok(),
            size: Bytes(row.lv_size),
            active: row.active(),
            open: row.open(),
            image: None,
            parent: None,
            slot: None,
            creating: false,
            removing: false,
            special: false,
            member: false,
            wipe: None,
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
                Ok(Tag::Wipe(w)) => e.wipe = Some(w),
                Ok(_) => {}
                Err(_) => e.bad_tags.push(t.clone()),
            }
        }
        e
    }

    /// Whether removing this LV zeroes its data first: its own policy, else the domain's.
    /// Only a removal wipes: a rolled-back creation never held committed data.
    pub fn wipe_on_removal(&self, domain: &DomainInfo) -> bool {
        self.removing && self.wipe.unwrap_or(domain.wipe) == Wipe::Zero
    }

    /// A transaction marker is set: the LV is an orphan whenever the domain lock is free.
    pub fn marked(&self) -> bool {
        self.creating || self.removing
    }

    /// A committed volume: a UUID name, image and slot tags, no marker, not special.
    pub fn is_committed(&self) -> bool {
        !self.marked() && self.has_identity()
    }

    /// A UUID name, image and slot tags, not special: what a volume's LV carries.
    fn has_identity(&self) -> bool {
        !self.special && self.id.is_some() && self.image.is_some() && self.slot.is_some()
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
            Bytes(first.vg_extent_size),
            Bytes(first.vg_size),
            Bytes(first.vg_free),
        )?;
        let mut snap = Snapshot {
            info,
            lvs: rows.iter().map(LvEntry::from_row).collect(),
        };
        snap.classify();
        Ok(snap)
    }

    /// Sets [`LvEntry::member`] on every LV from the tags (call again after changing markers).
    pub fn classify(&mut self) {
        let needed = self.needed_by_committed();
        for lv in &mut self.lvs {
            lv.member = lv.has_identity() && (!lv.marked() || needed.contains(&lv.name));
        }
    }

    /// Chain members: committed volumes, and marked LVs a committed volume descends from.
    /// What every reader shows and every validation counts.
    pub fn volumes(&self) -> impl Iterator<Item = &LvEntry> {
        self.lvs.iter().filter(|l| l.member)
    }

    /// LVs carrying a transaction marker, chain members among them (the collector decides).
    pub fn orphans(&self) -> impl Iterator<Item = &LvEntry> {
        self.lvs.iter().filter(|l| l.marked() && !l.special)
    }

    /// Marked LVs naming `id` as parent that are not chain members: a creation in progress (or
    /// dead), or a removal past its point of no return. They do not make `id` internal for a
    /// reader, but nothing may change `id`'s data while one exists.
    pub fn pending_children(&self, id: &VolumeId) -> Vec<&LvEntry> {
        self.orphans()
            .filter(|l| !l.member && l.parent.as_ref() == Some(id))
            .collect()
    }

    pub fn volume(&self, id: &VolumeId) -> Option<&LvEntry> {
        self.volumes().find(|l| l.id.as_ref() == Some(id))
    }

    pub fn lv_named(&self, name: &str) -> Option<&LvEntry> {
        self.lvs.iter().find(|l| l.name == name)
    }

    /// Chain members whose parent tag names `id`.
    pub fn children(&self, id: &VolumeId) -> Vec<&LvEntry> {
        self.volumes()
            .filter(|l| l.parent.as_ref() == Some(id))
            .collect()
    }

    pub fn image_volumes(&self, image: &ImageId) -> Vec<&LvEntry> {
        self.volumes()
            .filter(|l| l.image.as_ref() == Some(image))
            .collect()
    }

    pub fn images(&self) -> BTreeSet<ImageId> {
        self.volumes().filter_map(|l| l.image).collect()
    }

    /// Marked LVs that a committed volume descends from (through `LVC_PARENT` tags, marked
    /// LVs included). Removing one would take a committed volume's backing data: a removal
    /// marks a volume only once nothing committed needs it, so such a marker is left by a
    /// multi-LV mark that did not finish, and the collector restores the LV instead.
    pub fn needed_by_committed(&self) -> HashSet<String> {
        let by_id: std::collections::HashMap<VolumeId, &LvEntry> = self
            .lvs
            .iter()
            .filter(|l| !l.special)
            .filter_map(|l| l.id.map(|id| (id, l)))
            .collect();
        let mut needed = HashSet::new();
        let mut seen = HashSet::new();
        for v in self.lvs.iter().filter(|l| l.is_committed()) {
            let mut next = v.parent;
            // `seen` ends every walk at a volume already walked: loops cannot spin.
            while let Some(p) = next {
                let Some(lv) = by_id.get(&p) else { break };
                if !seen.insert(p) {
                    break;
                }
                if lv.marked() {
                    needed.insert(lv.name.clone());
                }
                next = lv.parent;
            }
        }
        needed
    }

    /// Slots owned by any LV tag, committed or marked (a marked LV's slot stays taken).
    pub fn used_slots(&self) -> HashSet<u32> {
        self.lvs.iter().filter_map(|l| l.slot).collect()
    }

    /// The metadata slots no LV owns (damaged tags may name slots beyond the area: they take
    /// none of its slots).
    pub fn free_slots(&self) -> u32 {
        let max = self.info.max_volumes;
        let used = self.used_slots().iter().filter(|&&n| n < max).count();
        max.saturating_sub(u32::try_from(used).unwrap_or(u32::MAX))
    }

    /// The lowest slot no LV owns.
    pub fn lowest_free_slot(&self) -> Option<u32> {
        let used = self.used_slots();
        (0..self.info.max_volumes).find(|n| !used.contains(n))
    }
}

/// The lock manager a VG's `LVC_LOCK` tag names (local when there is none), whether or not
/// the domain is complete; an unknown one is an error (it must not be served as the default).
pub fn lock_kind(vg: &str, tags: &[String]) -> Result<LockKind> {
    let mut kind = LockKind::Local;
    for t in tags {
        match Tag::parse(t) {
            Ok(Tag::Lock(k)) => kind = k,
            Err(reason) if t.starts_with("LVC_LOCK=") => {
                return Err(Error::BadDomainTag {
                    vg: vg.to_string(),
                    reason,
                })
            }
            _ => {}
        }
    }
    Ok(kind)
}

/// Reads the domain facts from VG tags; refuses what is not a complete domain of our format.
pub fn info_from_tags(
    vg: &str,
    tags: &[String],
    extent: Bytes,
    size: Bytes,
    free: Bytes,
) -> Result<DomainInfo> {
    let mut ready = false;
    let mut unready = false;
    let mut info = DomainInfo {
        vg: vg.to_string(),
        format: 0,
        lock_manager: LockKind::Local,
        slot_size: 0,
        max_volumes: 0,
        extent_size: extent,
        vg_size: size,
        vg_free: free,
        wipe: Wipe::default(),
    };
    for t in tags {
        match Tag::parse(t) {
            Ok(Tag::Domain) => ready = true,
            Ok(Tag::DomainUnready) => unready = true,
            Ok(Tag::Format(n)) => info.format = n,

            Ok(Tag::SlotSize(n)) => info.slot_size = n,
            Ok(Tag::MaxVolumes(n)) => info.max_volumes = n,
            Ok(Tag::Wipe(w)) => info.wipe = w,
            _ => {}
        }
    }
    if !ready {
        let hint = if unready {
            " (a format or a removal did not finish: `lvchain domain create` completes the \
             format, `lvchain domain remove` the removal)"
        } else {
            ""
        };
        return Err(Error::NotADomain {
            vg: vg.to_string(),
            hint: hint.into(),
        });
    }
    if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&info.format) {
        return Err(Error::UnsupportedFormat {
            vg: vg.to_string(),
            found: info.format,
            supported: FORMAT_VERSION,
        });
    }
    info.lock_manager = lock_kind(vg, tags)?;
    if info.slot_size == 0 || info.max_volumes == 0 {
        return Err(Error::NotADomain {
            vg: vg.to_string(),
            hint: " (its VG tags lack the slot layout)".into(),
        });
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &VolumeId, tags: &[String]) -> LvRow {
        LvRow {
            lv_name: name.to_string(),
            lv_size: 1 << 20,
            lv_tags: tags.to_vec(),
            lv_attr: "-wi-------".into(),
            vg_extent_size: 4 << 20,
            vg_tags: ["LVC_DOMAIN", "LVC_FORMAT=1", "LVC_LOCK=local"]
                .iter()
                .map(ToString::to_string)
                .chain(["LVC_SLOT_SIZE=4096".into(), "LVC_MAX_VOLUMES=8".into()])
                .collect(),
            ..LvRow::default()
        }
    }

    fn domain_tags(lock: &str) -> Vec<String> {
        [
            "LVC_DOMAIN",
            "LVC_FORMAT=2",
            lock,
            "LVC_SLOT_SIZE=4096",
            "LVC_MAX_VOLUMES=8",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }

    #[test]
    fn the_lock_tag_names_the_manager_and_the_json_keeps_its_value() -> Result<()> {
        for (tag, kind, json) in [
            (
                "LVC_LOCK=local",
                LockKind::Local,
                "\"lock_manager\":\"local\"",
            ),
            (
                "LVC_LOCK=sanlock",
                LockKind::Sanlock,
                "\"lock_manager\":\"sanlock\"",
            ),
        ] {
            let info = info_from_tags(
                "vg",
                &domain_tags(tag),
                Bytes(4 << 20),
                Bytes(1 << 30),
                Bytes(1 << 29),
            )?;
            assert_eq!(info.lock_manager, kind);
            let view = crate::cli::views::DomainInfoView::from(&info);
            let text =
                serde_json::to_string(&view).map_err(|e| Error::InvalidInput(e.to_string()))?;
            assert!(text.contains(json), "{text}");
        }
        Ok(())
    }

    #[test]
    fn an_unknown_lock_manager_is_refused_by_name() {
        let e = info_from_tags(
            "vg",
            &domain_tags("LVC_LOCK=dlm"),
            Bytes(4 << 20),
            Bytes(1 << 30),
            Bytes(1 << 29),
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "domain vg has a bad tag: LVC_LOCK=dlm: unknown lock manager \"dlm\" (this \
                 lvchain knows local and sanlock)"
            )
        );
    }

    /// A chain base <- mid <- leaf, with the given markers on each.
    fn chain(markers: [&[Tag]; 3]) -> Result<(Snapshot, [VolumeId; 3])> {
        let ids = [VolumeId::random(), VolumeId::random(), VolumeId::random()];
        let image = ImageId::random();
        let rows: Vec<LvRow> = (0..3)
            .map(|i| {
                let mut tags = vec![Tag::Image(image), Tag::Slot(i as u32)];
                if i > 0 {
                    tags.push(Tag::Parent(ids[i - 1]));
                }
                tags.extend(markers[i].iter().cloned());
                row(&ids[i], &crate::tags::strings(&tags))
            })
            .collect();
        Ok((Snapshot::from_rows("vg", &rows)?, ids))
    }

    #[test]
    fn marked_ancestors_of_a_committed_volume_are_needed() -> Result<()> {
        let r = [Tag::Removing];
        let (snap, ids) = chain([&r, &r, &[]])?;
        let needed = snap.needed_by_committed();
        assert_eq!(needed.len(), 2);
        assert!(needed.contains(&ids[0].to_string()) && needed.contains(&ids[1].to_string()));
        // Only the base marked, above a committed middle: needed through its child.
        let (snap, ids) = chain([&r, &[], &r])?;
        let needed = snap.needed_by_committed();
        assert_eq!(needed, HashSet::from([ids[0].to_string()]));
        Ok(())
    }

    #[test]
    fn a_marked_middle_volume_stays_a_chain_member() -> Result<()> {
        let (snap, ids) = chain([&[], &[Tag::Removing], &[]])?;
        assert_eq!(
            snap.volumes().count(),
            3,
            "the marked middle is still a member"
        );
        let children: Vec<_> = snap.children(&ids[0]).iter().map(|l| l.id).collect();
        assert_eq!(children, vec![Some(ids[1])], "the base is not a leaf");
        assert!(snap.pending_children(&ids[0]).is_empty());
        assert_eq!(
            snap.orphans().count(),
            1,
            "the collector still sees the marker"
        );
        Ok(())
    }

    #[test]
    fn a_marked_top_is_pending_not_a_member() -> Result<()> {
        let (snap, ids) = chain([&[], &[], &[Tag::Creating]])?;
        assert_eq!(snap.volumes().count(), 2);
        assert!(snap.children(&ids[1]).is_empty());
        assert_eq!(snap.pending_children(&ids[1]).len(), 1);
        Ok(())
    }

    #[test]
    fn a_marked_top_of_the_chain_is_not_needed() -> Result<()> {
        let (snap, _) = chain([&[], &[], &[Tag::Removing]])?;
        assert!(snap.needed_by_committed().is_empty());
        let (snap, _) = chain([&[], &[Tag::Creating], &[Tag::Creating]])?;
        assert!(snap.needed_by_committed().is_empty());
        Ok(())
    }
}
