//! CLI output: human tables by default, JSON with `--json`.

use crate::domain::DomainInfo;
use crate::error::Result;
use crate::volume::{Catalog, Volume};
use serde::Serialize;
use uuid::Uuid;

pub struct Out {
    pub json: bool,
}

fn print_json<T: Serialize + ?Sized>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| crate::error::Error::InvalidInput(format!("cannot encode output: {e}")))?;
    println!("{s}");
    Ok(())
}

fn short(id: &Uuid) -> String {
    id.to_string()
}

fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

impl Out {
    pub fn message(&self, m: &str) -> Result<()> {
        if self.json {
            print_json(&serde_json::json!({ "result": m }))
        } else {
            println!("{m}");
            Ok(())
        }
    }

    pub fn list(&self, items: &[&str]) -> Result<()> {
        if self.json {
            return print_json(items);
        }
        for i in items {
            println!("{i}");
        }
        Ok(())
    }

    pub fn created(&self, v: &Volume) -> Result<()> {
        if self.json {
            print_json(v)
        } else {
            println!("{}", v.id);
            Ok(())
        }
    }

    pub fn volume(&self, v: &Volume) -> Result<()> {
        if self.json {
            return print_json(v);
        }
        let parent = v
            .parent
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let rows = [
            ("id", v.id.to_string()),
            ("image", v.image.to_string()),
            ("parent", parent),
            ("role", v.role.to_string()),
            ("legality", v.legality.to_string()),
            ("generation", v.generation.to_string()),
            ("format", v.format.to_string()),
            (
                "capacity",
                format!("{} ({})", v.capacity, crate::units::Bytes(v.capacity)),
            ),
            (
                "lv_size",
                format!("{} ({})", v.lv_size, crate::units::Bytes(v.lv_size)),
            ),
            ("slot", v.slot.to_string()),
            ("active", v.active.to_string()),
            ("description", v.description.clone()),
        ];
        for (k, val) in rows {
            println!("{k:<12} {val}");
        }
        Ok(())
    }

    pub fn volumes(&self, vs: &[Volume]) -> Result<()> {
        if self.json {
            return print_json(vs);
        }
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| {
                vec![
                    short(&v.id),
                    short(&v.image),
                    v.parent.map(|p| short(&p)).unwrap_or_else(|| "-".into()),
                    v.role.to_string(),
                    v.legality.to_string(),
                    v.generation.to_string(),
                    v.format.to_string(),
                    crate::units::Bytes(v.capacity).to_string(),
                    crate::units::Bytes(v.lv_size).to_string(),
                    v.slot.to_string(),
                ]
            })
            .collect();
        table(
            &[
                "ID", "IMAGE", "PARENT", "ROLE", "LEGALITY", "GEN", "FORMAT", "CAPACITY",
                "LV SIZE", "SLOT",
            ],
            &rows,
        );
        Ok(())
    }

    pub fn prepared(&self, vg: &str, image: &Uuid, chain: &[Volume]) -> Result<()> {
        let leaf = chain
            .last()
            .map(|v| crate::links::link_path(vg, image, &v.id));
        if self.json {
            return print_json(&serde_json::json!({
                "image": image,
                "path": crate::links::image_dir(vg, image),
                "leaf": leaf,
                "volumes": chain,
            }));
        }
        if let Some(leaf) = leaf {
            println!("{}", leaf.display());
        }
        Ok(())
    }

    pub fn domain_created(&self, info: &DomainInfo) -> Result<()> {
        if self.json {
            return print_json(info);
        }
        println!(
            "domain {} formatted: format {}, lock {}, {} slots of {} bytes, wipe {}",
            info.vg, info.format, info.lock_manager, info.max_volumes, info.slot_size, info.wipe
        );
        Ok(())
    }

    pub fn domain_info(&self, cat: &Catalog) -> Result<()> {
        #[derive(Serialize)]
        struct Info<'a> {
            #[serde(flatten)]
            info: &'a DomainInfo,
            volumes: usize,
            images: usize,
            orphans: usize,
            free_slots: usize,
        }
        let snap = &cat.snap;
        let i = Info {
            info: &snap.info,
            volumes: cat.volumes.len(),
            images: snap.images().len(),
            orphans: snap.orphans().count(),
            // Damaged tags may name slots beyond the area: they take none of its slots.
            free_slots: snap.info.max_volumes as usize
                - snap
                    .used_slots()
                    .iter()
                    .filter(|&&n| n < snap.info.max_volumes)
                    .count(),
        };
        if self.json {
            return print_json(&i);
        }
        let b = |n: u64| crate::units::Bytes(n).to_string();
        table(
            &[
                "DOMAIN",
                "FORMAT",
                "LOCK",
                "WIPE",
                "SIZE",
                "FREE",
                "VOLUMES",
                "IMAGES",
                "ORPHANS",
                "FREE SLOTS",
            ],
            &[vec![
                i.info.vg.clone(),
                i.info.format.to_string(),
                i.info.lock_manager.to_string(),
                i.info.wipe.to_string(),
                b(i.info.vg_size),
                b(i.info.vg_free),
                i.volumes.to_string(),
                i.images.to_string(),
                i.orphans.to_string(),
                i.free_slots.to_string(),
            ]],
        );
        Ok(())
    }

    pub fn check(&self, r: &crate::check::Report) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        if r.clean {
            println!(
                "domain {} is clean: {} volumes in {} images",
                r.vg, r.volumes, r.images
            );
            return Ok(());
        }
        let rows: Vec<Vec<String>> = r
            .problems
            .iter()
            .map(|p| vec![p.kind.to_string(), p.subject.clone(), p.detail.clone()])
            .collect();
        table(&["PROBLEM", "SUBJECT", "DETAIL"], &rows);
        Ok(())
    }

    pub fn gc(&self, r: &crate::gc::Report) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        let rows: Vec<Vec<String>> = r
            .orphans
            .iter()
            .map(|o| {
                vec![
                    o.lv.clone(),
                    o.marker.to_string(),
                    o.actions.join("; "),
                    o.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let verb = if r.dry_run {
            "would collect"
        } else {
            "collected"
        };
        println!("{verb} {} orphan(s) in {:.2}s", r.orphans.len(), r.seconds);
        if !rows.is_empty() {
            table(&["LV", "MARKER", "ACTIONS", "ERROR"], &rows);
        }
        Ok(())
    }

    pub fn status(&self, st: &crate::operation::Status) -> Result<()> {
        if self.json {
            return print_json(st);
        }
        let host = st
            .host_id
            .map(|h| format!(" (host {h})"))
            .unwrap_or_default();
        let reason = st
            .reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!("{}{host}{reason}", st.state);
        Ok(())
    }
}
