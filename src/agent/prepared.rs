//! The images this agent holds prepared: the engine's [`HeldImage`] (a shared lease on every
//! chain member) per (domain, image), kept from prepare to teardown, so that no host removes or
//! rewrites a volume in use here. At start, before serving, the agent takes them again for the
//! images still prepared on this host ([`reacquire`]); every [`REFRESH_INTERVAL`] it refreshes
//! the mapping of prepared volumes whose LV grew on another host ([`refresh_loop`]). The lease
//! logic is the engine's; this module only keeps the guards and schedules the refresh.

use super::Agent;
use crate::format::ids::ImageId;
use crate::image::HeldImage;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How often prepared volumes are checked for growth elsewhere (one LVM report per domain):
/// a volume extended on another host shows its new size here within this interval plus one
/// report and one `lvchange --refresh`.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// The held images, by domain and image.
#[derive(Default)]
pub struct Prepared {
    held: Mutex<HashMap<(String, ImageId), HeldImage>>,
}

impl Prepared {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, ImageId), HeldImage>> {
        // A panic while holding the map leaves it whole (inserts and removes only).
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `held` for the image (a later prepare's leases replace the earlier ones, which
    /// are released only after the new ones were taken).
    pub fn keep(&self, vg: &str, image: ImageId, held: HeldImage) {
        let old = self.lock().insert((vg.to_string(), image), held);
        drop(old);
    }

    /// Releases the image's leases (after its teardown); whether it was held.
    pub fn release(&self, vg: &str, image: &ImageId) -> bool {
        let old = self.lock().remove(&(vg.to_string(), *image));
        old.is_some()
    }

    /// The held images, by domain.
    pub fn images(&self) -> BTreeMap<String, Vec<ImageId>> {
        let mut by_vg: BTreeMap<String, Vec<ImageId>> = BTreeMap::new();
        for (vg, image) in self.lock().keys() {
            by_vg.entry(vg.clone()).or_default().push(*image);
        }
        by_vg
    }
}

/// Takes again the shared leases of every image still prepared on this host (its link
/// directory exists; on a file domain, this host's record of the prepare) in the served
/// domains; run before the agent serves. An image whose leases
/// cannot be taken is logged as an error: it stays prepared but unheld until torn down or
/// prepared again.
pub fn reacquire(agent: &Agent) {
    let domains = match agent.domains.list() {
        Ok(list) => list,
        Err(e) => {
            tracing::error!("cannot list the domains to hold their prepared images: {e}");
            return;
        }
    };
    for vg in domains {
        let domain = match agent.domains.open(&vg) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(vg, "cannot open the domain of prepared images: {e:?}");
                continue;
            }
        };
        let images = match domain.prepared_images() {
            Ok(images) => images,
            Err(e) => {
                tracing::error!(vg, "cannot list the images prepared on this host: {e}");
                continue;
            }
        };
        for image in images {
            match domain.hold_prepared(&image) {
                Ok(held) => {
                    tracing::info!(vg, %image, volumes = held.volumes.len(), "holding the shared leases of an image prepared before the restart");
                    agent
                        .prepared
                        .keep(&super::domains::Domains::key(&vg), image, held);
                }
                Err(e) => {
                    tracing::error!(vg, %image, "an image prepared on this host is NOT held (its volumes are not protected from other hosts): {e}")
                }
            }
        }
    }
}

/// Every [`REFRESH_INTERVAL`] until stopped: refreshes the mapping of held volumes whose LV
/// grew elsewhere (the engine compares each LV's size with its device's).
pub async fn refresh_loop(agent: Arc<Agent>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        for (vg, images) in agent.prepared.images() {
            let worker = agent.clone();
            let name = vg.clone();
            let done = tokio::task::spawn_blocking(move || {
                let d = worker.domains.open(&name).map_err(|e| format!("{e:?}"))?;
                d.refresh_prepared(&images).map_err(|e| e.to_string())
            })
            .await;
            match done {
                Ok(Ok(refreshed)) if refreshed.is_empty() => {}
                Ok(Ok(refreshed)) => {
                    tracing::info!(vg, volumes = ?refreshed, "refreshed the mapping of volumes that grew elsewhere")
                }
                Ok(Err(e)) => tracing::warn!(vg, "cannot refresh the prepared volumes: {e}"),
                Err(e) => tracing::warn!(vg, "the refresh failed: {e}"),
            }
        }
    }
}
