//! Images on this host: prepare (activate the chain in one command, make the links) and
//! teardown (remove the links, deactivate in one command). Neither changes VG metadata.
//! Never serves an illegal volume unless asked to for recovery.

use crate::domain::Domain;
use crate::error::{Error, Result};
use crate::format::ids::ImageId;
use crate::links;
use crate::lvm::Activation;
use crate::metadata::Legality;
use crate::volume::{Catalog, Volume};

/// Activates the chain of `image` and links every member; returns the chain, base first.
/// A chain with an illegal member (partial data from an operation that failed, or one still
/// running) is refused unless `allow_illegal` (recovery work).
pub(crate) fn prepare(
    domain: &Domain,
    image: &ImageId,
    allow_illegal: bool,
) -> Result<Vec<Volume>> {
    let cat = Catalog::load(domain)?;
    let chain = crate::chain::walk(&cat, image)?;
    if let Some(v) = chain.iter().find(|v| v.legality != Legality::Legal) {
        if !allow_illegal {
            return Err(Error::IllegalMember {
                image: *image,
                id: v.id,
                generation: v.generation,
            });
        }
        tracing::warn!(image = %image, volume = %v.id, "preparing a chain with an illegal volume");
    }
    let inactive: Vec<String> = chain
        .iter()
        .filter(|v| !v.active || !domain.volume_device(&v.id).exists())
        .map(|v| domain.lv_path(&v.id.to_string()))
        .collect();
    domain
        .lvm
        .lvchange_activation(&inactive, Activation::Activate)?;
    let dir = links::image_dir(&domain.vg, image);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    for v in &chain {
        links::add(&domain.vg, image, &v.id, &domain.volume_device(&v.id))
            .map_err(Error::io("creating a link"))?;
    }
    Ok(chain)
}

/// Removes the links of `image` and deactivates its volumes.
pub(crate) fn teardown(domain: &Domain, image: &ImageId) -> Result<()> {
    let cat = Catalog::load(domain)?;
    let members = crate::volume::idle_members(&cat.snap, &domain.vg, image)?;
    links::remove_image(&domain.vg, image).map_err(Error::io("removing the links"))?;
    let active: Vec<String> = members
        .iter()
        .filter(|l| l.active)
        .map(|l| domain.lv_path(&l.name))
        .collect();
    domain
        .lvm
        .lvchange_activation(&active, Activation::Deactivate)?;
    Ok(())
}
