//! The census behind the per-domain gauges: every [`SCAN_INTERVAL`], and after each gc run,
//! ONE LVM report of each served block domain, one listing of each file domain (the engine's
//! `Domain::census`, never one command per LV) gives its orphans, free bytes and free slots to
//! the metrics (a file domain has no slots: no free-slots series). Never changes a domain and
//! never takes its lock.

use super::Agent;
use std::sync::Arc;
use std::time::Duration;

/// Seconds between two scans of every served domain.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// Scans `vg` once and records what it saw (a failure is logged and counted).
pub async fn scan(agent: &Arc<Agent>, vg: &str) {
    let worker = agent.clone();
    let name = vg.to_string();
    let census = tokio::task::spawn_blocking(move || {
        let d = worker
            .domains
            .open(&name)
            .map_err(|e| super::errors::ApiError::from(e).message)?;
        d.census().map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match census {
        Ok(c) => agent.metrics.domain_scanned(vg, Some(c)),
        Err(e) => {
            tracing::warn!(vg, "cannot scan the domain: {e}");
            agent.metrics.domain_scanned(vg, None);
        }
    }
}

/// Scans every served domain every `interval` (by default [`SCAN_INTERVAL`]) until `stop`
/// turns true.
pub async fn schedule(
    agent: Arc<Agent>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let worker = agent.clone();
        match tokio::task::spawn_blocking(move || worker.domains.list_for_rounds()).await {
            Ok(list) => {
                for vg in list {
                    scan(&agent, &vg).await;
                }
            }
            Err(e) => tracing::warn!("cannot list the domains: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
