//! The JSON objects the CLI prints (`--json`), built from the engine's types. Their field names
//! are a contract with scripts and managers: they are spelled here, once, and never follow a
//! rename inside the engine (a unit test pins every name). The agent answers with them and the
//! CLI reads its answers back into them (Deserialize), so both print from the same values.

use crate::check::{Problem, Report as CheckReport};
use crate::domain::DomainInfo;
use crate::format::ids::{ImageId, VolumeId};
use crate::gc::{Orphan, Report as GcReport};
use crate::operation::Status;
use crate::volume::{Catalog, Volume};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VolumeView {
    pub id: VolumeId,
    pub image: ImageId,
    pub parent: Option<VolumeId>,
    pub role: String,
    pub legality: String,
    pub generation: u64,
    pub format: String,
    pub capacity: u64,
    pub lv_size: u64,
    pub slot: u32,
    pub active: bool,
    pub ctime: u64,
    pub description: String,
    /// `volume info` only: the hosts holding the volume prepared (0: this host, local domain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prepared_on: Option<Vec<u64>>,
}

impl From<&Volume> for VolumeView {
    fn from(v: &Volume) -> Self {
        VolumeView {
            id: v.id,
            image: v.image,
            parent: v.parent,
            role: v.role.to_string(),
            legality: v.legality.to_string(),
            generation: v.generation.get(),
            format: v.format.to_string(),
            capacity: v.capacity.0,
            lv_size: v.lv_size.0,
            slot: v.slot,
            active: v.active,
            ctime: v.ctime,
            description: v.description.clone(),
            prepared_on: v.prepared_on.clone(),
        }
    }
}

pub fn volumes(vs: &[Volume]) -> Vec<VolumeView> {
    vs.iter().map(VolumeView::from).collect()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DomainInfoView {
    pub vg: String,
    pub format: u32,
    pub lock_manager: String,
    pub slot_size: u32,
    pub max_volumes: u32,
    pub extent_size: u64,
    pub vg_size: u64,
    pub vg_free: u64,
    pub wipe: String,
}

impl From<&DomainInfo> for DomainInfoView {
    fn from(i: &DomainInfo) -> Self {
        DomainInfoView {
            vg: i.vg.clone(),
            format: i.format,
            lock_manager: i.lock_manager.to_string(),
            slot_size: i.slot_size,
            max_volumes: i.max_volumes,
            extent_size: i.extent_size.0,
            vg_size: i.vg_size.0,
            vg_free: i.vg_free.0,
            wipe: i.wipe.to_string(),
        }
    }
}

/// `domain info`: the domain's facts and its counts.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DomainSummaryView {
    #[serde(flatten)]
    pub info: DomainInfoView,
    pub volumes: usize,
    pub images: usize,
    pub orphans: usize,
    pub free_slots: usize,
}

/// The metadata slots of a domain no LV owns (what `domain info` and the agent's gauge show).
pub fn free_slots(snap: &crate::domain::Snapshot) -> usize {
    snap.free_slots() as usize
}

impl From<&Catalog> for DomainSummaryView {
    fn from(cat: &Catalog) -> Self {
        let snap = &cat.snap;
        DomainSummaryView {
            info: DomainInfoView::from(&snap.info),
            volumes: cat.volumes.len(),
            images: snap.images().len(),
            orphans: snap.orphans().count(),
            free_slots: free_slots(snap),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StatusView {
    pub volume: VolumeId,
    pub generation: u64,
    pub state: String,
    pub host_id: Option<u64>,
    pub current_generation: u64,
    pub legality: String,
    pub reason: Option<String>,
}

impl From<&Status> for StatusView {
    fn from(s: &Status) -> Self {
        StatusView {
            volume: s.volume,
            generation: s.generation.get(),
            state: s.state.to_string(),
            host_id: s.host_id,
            current_generation: s.current_generation.get(),
            legality: s.legality.to_string(),
            reason: s.reason.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct OrphanView {
    pub lv: String,
    pub marker: String,
    pub image: Option<ImageId>,
    pub parent: Option<VolumeId>,
    pub slot: Option<u32>,
    pub actions: Vec<String>,
    pub error: Option<String>,
}

impl From<&Orphan> for OrphanView {
    fn from(o: &Orphan) -> Self {
        OrphanView {
            lv: o.lv.clone(),
            marker: o.marker.to_string(),
            image: o.image,
            parent: o.parent,
            slot: o.slot,
            actions: o.actions.iter().map(ToString::to_string).collect(),
            error: o.error.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GcView {
    pub vg: String,
    pub dry_run: bool,
    pub orphans: Vec<OrphanView>,
    pub seconds: f64,
}

impl From<&GcReport> for GcView {
    fn from(r: &GcReport) -> Self {
        GcView {
            vg: r.vg.clone(),
            dry_run: r.dry_run,
            orphans: r.orphans.iter().map(OrphanView::from).collect(),
            seconds: r.seconds,
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProblemView {
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

impl From<&Problem> for ProblemView {
    fn from(p: &Problem) -> Self {
        ProblemView {
            kind: p.kind.to_string(),
            subject: p.subject.clone(),
            detail: p.detail.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CheckView {
    pub vg: String,
    pub clean: bool,
    pub volumes: usize,
    pub images: usize,
    pub problems: Vec<ProblemView>,
    pub seconds: f64,
}

impl From<&CheckReport> for CheckView {
    fn from(r: &CheckReport) -> Self {
        CheckView {
            vg: r.vg.clone(),
            clean: r.clean,
            volumes: r.volumes,
            images: r.images,
            problems: r.problems.iter().map(ProblemView::from).collect(),
            seconds: r.seconds,
        }
    }
}

/// `image prepare`: where the chain is linked, and the chain.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PreparedView {
    pub image: ImageId,
    pub path: PathBuf,
    pub leaf: Option<PathBuf>,
    pub volumes: Vec<VolumeView>,
}

impl PreparedView {
    /// The view of `image`'s chain as prepared in domain `vg`.
    pub fn new(vg: &str, image: &ImageId, chain: &[Volume]) -> PreparedView {
        PreparedView {
            image: *image,
            path: crate::links::image_dir(vg, image),
            leaf: chain
                .last()
                .map(|v| crate::links::link_path(vg, image, &v.id)),
            volumes: volumes(chain),
        }
    }
}

/// A command whose answer is one sentence (`volume remove`, `image teardown`, ...); the
/// sentences are spelled here, once, for every client.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MessageView {
    pub result: String,
}

impl MessageView {
    fn new(result: String) -> MessageView {
        MessageView { result }
    }

    pub fn removed_volume(id: &VolumeId) -> MessageView {
        MessageView::new(format!("removed volume {id}"))
    }

    pub fn removed_image(image: &ImageId, volumes: usize) -> MessageView {
        MessageView::new(format!("removed image {image} ({volumes} volumes)"))
    }

    pub fn torn_down(image: &ImageId) -> MessageView {
        MessageView::new(format!("image {image} torn down"))
    }

    pub fn wipe_set(vg: &str, before: crate::tags::Wipe, now: crate::tags::Wipe) -> MessageView {
        MessageView::new(format!("domain {vg}: wipe {before} -> {now}"))
    }

    pub fn removed_domain(vg: &str, lvs: usize) -> MessageView {
        MessageView::new(format!("removed domain {vg} ({lvs} volume LVs)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::{Format, Legality, Role};

    fn keys<T: Serialize>(v: &T) -> Vec<String> {
        let json = serde_json::to_value(v).unwrap_or_default();
        let mut keys: Vec<String> = json
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    fn sorted(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(ToString::to_string).collect();
        v.sort();
        v
    }

    #[test]
    fn json_field_names_are_the_contract() {
        let vol = Volume {
            id: VolumeId::default(),
            image: ImageId::default(),
            parent: None,
            role: Role::Leaf,
            legality: Legality::Legal,
            generation: crate::format::ids::Generation::new(1),
            format: Format::Raw,
            capacity: crate::units::Bytes(1 << 30),
            lv_size: crate::units::Bytes(3 << 29),
            slot: 0,
            active: false,
            ctime: 0,
            description: String::new(),
            prepared_on: None,
        };
        let v = VolumeView::from(&vol);
        assert_eq!(
            keys(&v),
            sorted(&[
                "id",
                "image",
                "parent",
                "role",
                "legality",
                "generation",
                "format",
                "capacity",
                "lv_size",
                "slot",
                "active",
                "ctime",
                "description"
            ])
        );
        let json = serde_json::to_value(&v).unwrap_or_default();
        assert_eq!(
            (json["role"].as_str(), json["format"].as_str()),
            (Some("leaf"), Some("raw"))
        );
        // Sizes are plain byte counts.
        assert_eq!(
            (json["capacity"].as_u64(), json["lv_size"].as_u64()),
            (Some(1 << 30), Some(3 << 29))
        );
        let st = StatusView {
            volume: VolumeId::default(),
            generation: 0,
            state: crate::operation::State::Fenced.to_string(),
            host_id: None,
            current_generation: 3,
            legality: "illegal".into(),
            reason: None,
        };
        assert_eq!(
            keys(&st),
            sorted(&[
                "volume",
                "generation",
                "state",
                "host_id",
                "current_generation",
                "legality",
                "reason"
            ])
        );
        assert_eq!(st.state, "fenced");
        let info = DomainInfoView {
            vg: "vg".into(),
            format: 2,
            lock_manager: crate::lock::LockKind::Local.to_string(),
            slot_size: 512,
            max_volumes: 8,
            extent_size: 1,
            vg_size: 1,
            vg_free: 1,
            wipe: crate::tags::Wipe::Zero.to_string(),
        };
        assert_eq!(
            (info.lock_manager.as_str(), info.wipe.as_str()),
            ("local", "zero")
        );
        let summary = DomainSummaryView {
            info,
            volumes: 0,
            images: 0,
            orphans: 0,
            free_slots: 8,
        };
        assert_eq!(
            keys(&summary),
            sorted(&[
                "vg",
                "format",
                "lock_manager",
                "slot_size",
                "max_volumes",
                "extent_size",
                "vg_size",
                "vg_free",
                "wipe",
                "volumes",
                "images",
                "orphans",
                "free_slots"
            ])
        );
        let gc = GcView {
            vg: "vg".into(),
            dry_run: false,
            orphans: vec![OrphanView {
                lv: "x".into(),
                marker: "LVC_CREATING".into(),
                image: None,
                parent: None,
                slot: None,
                actions: vec![],
                error: None,
            }],
            seconds: 0.0,
        };
        assert_eq!(keys(&gc), sorted(&["vg", "dry_run", "orphans", "seconds"]));
        assert_eq!(
            keys(&gc.orphans[0]),
            sorted(&["lv", "marker", "image", "parent", "slot", "actions", "error"])
        );
        let check = CheckView {
            vg: "vg".into(),
            clean: true,
            volumes: 0,
            images: 0,
            problems: vec![ProblemView {
                kind: crate::check::ProblemKind::Illegal.to_string(),
                subject: "s".into(),
                detail: "d".into(),
            }],
            seconds: 0.0,
        };
        assert_eq!(
            keys(&check),
            sorted(&["vg", "clean", "volumes", "images", "problems", "seconds"])
        );
        assert_eq!(
            keys(&check.problems[0]),
            sorted(&["kind", "subject", "detail"])
        );
        assert_eq!(check.problems[0].kind, "illegal");
    }
}
