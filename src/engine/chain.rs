//! Volume chains: base first, each volume backed by the one before, exactly one leaf.
//!
//! Walks follow the metadata's parent pointers with loop detection: a corrupted chain (loop,
//! fork, missing parent, several bases) is reported, never walked forever.

use crate::error::{Error, Result};
use crate::format::ids::{ImageId, VolumeId};
use crate::metadata::Role;
use crate::volume::{Catalog, Volume};
use std::collections::{HashMap, HashSet};

/// The chain of `image`, base first; an error names what is wrong with it.
pub(crate) fn walk(catalog: &Catalog, image: &ImageId) -> Result<Vec<Volume>> {
    let members: HashMap<VolumeId, &Volume> = catalog
        .volumes
        .values()
        .filter(|v| &v.image == image)
        .map(|v| (v.id, v))
        .collect();
    let broken = |reason: String| Error::BrokenChain {
        image: *image,
        reason,
    };
    if members.is_empty() {
        return Err(Error::ImageNotFound {
            vg: catalog.snap.info.vg.clone(),
            image: *image,
        });
    }
    let mut children: HashMap<VolumeId, Vec<VolumeId>> = HashMap::new();
    let mut bases = Vec::new();
    for v in members.values() {
        match v.parent {
            None => bases.push(v.id),
            Some(p) if members.contains_key(&p) => children.entry(p).or_default().push(v.id),
            Some(p) => return Err(broken(format!("volume {} has a missing parent {p}", v.id))),
        }
    }
    let base = match bases.as_slice() {
        [b] => *b,
        [] => return Err(broken("no base volume (a loop?)".into())),
        _ => return Err(broken(format!("{} base volumes", bases.len()))),
    };
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut cur = base;
    loop {
        if !seen.insert(cur) {
            return Err(broken(format!("loop at volume {cur}")));
        }
        let v = members[&cur];
        chain.push(v.clone());
        match children.get(&cur).map(Vec::as_slice) {
            None | Some([]) => break,
            Some([next]) => cur = *next,
            Some(many) => {
                return Err(broken(format!("volume {cur} has {} children", many.len())));
            }
        }
    }
    if chain.len() != members.len() {
        return Err(broken(format!(
            "{} volume(s) are not reachable from the base (a loop?)",
            members.len() - chain.len()
        )));
    }
    let leaves = chain.iter().filter(|v| v.role == Role::Leaf).count();
    let last_is_leaf = chain.last().is_some_and(|v| v.role == Role::Leaf);
    if leaves != 1 || !last_is_leaf {
        return Err(broken(format!(
            "{leaves} volume(s) marked leaf; the last volume must be the only leaf"
        )));
    }
    Ok(chain)
}
