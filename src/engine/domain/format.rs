//! Formatting a VG as a domain.
//!
//! Steps: create or adopt the VG tagged `LVC_DOMAIN_UNREADY` (with the format, lock manager,
//! slot layout and, when not the default, wipe policy tags), create the special LVs tagged `LVC_SPECIAL`, zero the metadata area, then
//! ONE `vgchange --deltag LVC_DOMAIN_UNREADY --addtag LVC_DOMAIN`. A VG left UNREADY is never
//! taken for a domain; running the format again completes it.

use super::{scan, Domain, IDS_LV, LEASES_LV, METADATA_LV};
use crate::error::{Error, Result};
use crate::lock::LockKind;
use crate::lvm::{LvmError, NewLv};
use crate::metadata::SlotStore;
use crate::tags::{self, Tag, Wipe, FORMAT_VERSION};
use crate::units::{Bytes, MIB};
use std::path::PathBuf;

/// What `domain create` was asked for.
#[derive(Debug, Clone)]
pub struct FormatRequest {
    pub pvs: Vec<PathBuf>,
    pub max_volumes: u32,
    pub lock_manager: LockKind,
    /// What removals do with volume data (an `LVC_WIPE` VG tag only when not the default).
    pub wipe: Wipe,
}

/// Bytes reserved in the leases LV before the first volume lease (domain lock and spares).
pub const LEASES_RESERVED: u64 = 4 * MIB;
/// sanlock paxos leases are 1 MiB apart (1 MiB alignment, 512-byte or 4K sectors).
pub const LEASE_SIZE: u64 = MIB;
/// The ids LV holds the delta lease of each host (up to 2000 hosts on 512-byte sectors, 250 on
/// 4K ones: one 1 MiB area either way).
pub const IDS_SIZE: u64 = 8 * MIB;
/// VG metadata area: room for thousands of tagged LVs.
pub const VG_METADATA_SIZE: u64 = 128 * MIB;

fn logical_block_size(domain: &Domain, pvs: &[PathBuf]) -> Result<u32> {
    let mut size = 512;
    for pv in pvs {
        let s = domain
            .lvm
            .logical_block_size(pv)
            .map_err(Error::io(format!(
                "reading the block size of {}",
                pv.display()
            )))?;
        size = size.max(s);
    }
    Ok(size)
}

/// Formats `domain.vg` on `req.pvs` (creating the VG) or adopts the existing empty VG.
pub fn format(domain: &Domain, req: &FormatRequest) -> Result<scan::DomainInfo> {
    if req.max_volumes == 0 {
        return Err(Error::InvalidInput(
            "--max-volumes must be at least 1".into(),
        ));
    }
    let manager = domain.manager_of(req.lock_manager);
    manager.check_vg_name(&domain.vg)?;
    // The VG is no domain yet: this host's local lock is the one there is.
    let _guard = domain.lock_local()?;
    let lvm = &domain.lvm;
    let vg = &domain.vg;
    let existing = match lvm.vgs(vg) {
        Ok(row) => Some(row),
        Err(LvmError::VgNotFound { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut have_lvs = Vec::new();
    match &existing {
        Some(row) => {
            let parsed: Vec<Tag> = row
                .vg_tags
                .iter()
                .filter_map(|t| Tag::parse(t).ok())
                .collect();
            if parsed.contains(&Tag::Domain) {
                return Err(Error::AlreadyDomain { vg: vg.to_string() });
            }
            if parsed.contains(&Tag::DomainUnready) {
                // A format that died: only our special LVs may be there; finish it.
                let rows = lvm.lvs(vg)?;
                for r in rows {
                    if !super::SPECIAL_LVS.contains(&r.lv_name.as_str()) {
                        return Err(Error::VgNotEmpty {
                            vg: vg.to_string(),
                            count: row.lv_count,
                        });
                    }
                    have_lvs.push((r.lv_name, r.lv_size));
                }
            } else if row.lv_count > 0 {
                return Err(Error::VgNotEmpty {
                    vg: vg.to_string(),
                    count: row.lv_count,
                });
            }
        }
        None => {
            if req.pvs.is_empty() {
                return Err(Error::InvalidInput(format!(
                    "volume group {vg} does not exist; name the devices to create it on"
                )));
            }
            for pv in &req.pvs {
                if !pv.exists() {
                    return Err(Error::InvalidInput(format!(
                        "device {} does not exist",
                        pv.display()
                    )));
                }
            }
        }
    }

    let pv_paths: Vec<PathBuf> = if existing.is_some() {
        lvm.pvs(vg)?
            .into_iter()
            .map(|p| PathBuf::from(p.pv_name))
            .collect()
    } else {
        req.pvs.clone()
    };
    let slot_size = logical_block_size(domain, &pv_paths)?;
    let mut layout = vec![
        Tag::DomainUnready,
        Tag::Format(FORMAT_VERSION),
        Tag::Lock(req.lock_manager),
        Tag::SlotSize(slot_size),
        Tag::MaxVolumes(req.max_volumes),
    ];
    // The default needs no tag: a domain that never chose stays readable by older lvchain.
    if req.wipe != Wipe::default() {
        layout.push(Tag::Wipe(req.wipe));
    }
    match &existing {
        None => lvm.vgcreate(
            vg,
            &req.pvs,
            &tags::strings(&layout),
            Bytes(VG_METADATA_SIZE),
        )?,
        Some(row) => {
            // Adopting an empty VG, or finishing a format that died: make the layout tags
            // exactly `layout` in one vgchange.
            let want = tags::strings(&layout);
            let del: Vec<String> = row
                .vg_tags
                .iter()
                .filter(|t| {
                    matches!(
                        Tag::parse(t),
                        Ok(Tag::Format(_)
                            | Tag::Lock(_)
                            | Tag::SlotSize(_)
                            | Tag::MaxVolumes(_)
                            | Tag::Wipe(_))
                    ) && !want.contains(t)
                })
                .cloned()
                .collect();
            let add: Vec<String> = want
                .into_iter()
                .filter(|t| !row.vg_tags.contains(t))
                .collect();
            if !del.is_empty() || !add.is_empty() {
                lvm.vgchange_tags(vg, &del, &add)?;
            }
        }
    }
    let info_row = lvm.vgs(vg)?;
    let extent = Bytes(info_row.vg_extent_size);
    let metadata_size =
        Bytes(u64::from(slot_size) * u64::from(req.max_volumes)).round_up_to_extents(extent);
    let leases_size = Bytes(LEASES_RESERVED + LEASE_SIZE * u64::from(req.max_volumes))
        .round_up_to_extents(extent);
    let specials = [
        (METADATA_LV, metadata_size, true),
        (LEASES_LV, leases_size, false),
        (IDS_LV, Bytes(IDS_SIZE).round_up_to_extents(extent), false),
    ];
    // The VG's free space after this run, kept as the LVs are made (no report at the end).
    let mut free = info_row.vg_free;
    for (name, size, activate) in specials {
        match have_lvs.iter().find(|(n, _)| n == name) {
            Some((_, have)) if *have >= size.0 => continue,
            // Made by an earlier run for a smaller layout; it holds nothing yet.
            Some((_, have)) => {
                lvm.lvremove(&[domain.lv_path(name)])?;
                free += have;
            }
            None => {}
        }
        lvm.lvcreate(
            vg,
            &NewLv {
                name,
                size,
                tags: tags::strings(&[Tag::Special]),
                activate,
            },
        )?;
        free = free.saturating_sub(size.0);
    }
    if !domain.metadata_path().exists() {
        lvm.lvchange_activation(
            &[domain.lv_path(METADATA_LV)],
            crate::lvm::Activation::Activate,
        )?;
    }
    let store = SlotStore {
        path: domain.metadata_path(),
        io: domain.lvm.clone(),
        slot_size: slot_size as usize,
        slots: req.max_volumes,
        version: FORMAT_VERSION,
    };
    store.wipe()?;
    // The manager's areas (sanlock: the lockspace and the domain lock), in its LVs.
    let lvs: Vec<String> = manager.lvs().iter().map(|lv| domain.lv_path(lv)).collect();
    lvm.lvchange_activation(&lvs, crate::lvm::Activation::Activate)?;
    manager.format(vg)?;
    lvm.vgchange_tags(
        vg,
        &tags::strings(&[Tag::DomainUnready]),
        &tags::strings(&[Tag::Domain]),
    )?;
    // The VG as the commit left it: the layout tags with LVC_DOMAIN for LVC_DOMAIN_UNREADY.
    let unready = Tag::DomainUnready.to_string();
    let mut tags: Vec<String> = info_row
        .vg_tags
        .into_iter()
        .filter(|t| *t != unready)
        .collect();
    tags.push(Tag::Domain.to_string());
    super::info_from_tags(vg, &tags, extent, Bytes(info_row.vg_size), Bytes(free))
}
