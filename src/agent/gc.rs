//! The collector in the agent: periodic runs per served domain (the interval with +-10 %
//! jitter, so hosts sharing a domain do not collide; a round that finds the domain lock busy is
//! skipped and retried soon), runs asked for through the API, never two at once on a domain,
//! and the last result of each domain for the API and the metrics (a run that collected is
//! followed by a census scan, so the orphans gauge drops at once).

use super::errors::ApiError;
use super::Agent;
use crate::cli::views::GcView;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How soon a round skipped for a busy domain lock is tried again (at most the interval).
pub const BUSY_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The agent's schedule (waits briefly for the domain lock, skips when busy).
    Periodic,
    /// A client's request (waits for the lock as a CLI command would).
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GcOutcome {
    /// It ran; every orphan was collected (or, dry, listed).
    Collected,
    /// The domain lock (or another collection on it) was busy: skipped, retried soon.
    Busy,
    /// It failed, or an orphan could not be collected (see the report).
    Failed,
}

/// One collector run on a domain.
#[derive(Debug, Clone, Serialize)]
pub struct GcRun {
    pub trigger: Trigger,
    /// Unix time (s) it started.
    pub started: u64,
    pub seconds: f64,
    pub outcome: GcOutcome,
    /// The collector's report (as `lvchain gc --json` prints it), when it ran.
    pub report: Option<serde_json::Value>,
    pub error: Option<ApiError>,
}

/// `GET /v1/domains/{vg}/gc`: the collector on one domain.
#[derive(Debug, Clone, Serialize)]
pub struct GcStatusView {
    pub vg: String,
    /// Seconds between periodic runs (null: none).
    pub interval: Option<f64>,
    pub running: bool,
    pub last: Option<GcRun>,
}

#[derive(Default)]
struct DomainGc {
    running: tokio::sync::Mutex<()>,
    last: Mutex<Option<GcRun>>,
}

/// The collector's state per domain.
#[derive(Default)]
pub struct GcBoard {
    domains: Mutex<HashMap<String, Arc<DomainGc>>>,
}

impl GcBoard {
    fn of(&self, vg: &str) -> Arc<DomainGc> {
        self.domains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(vg.to_string())
            .or_default()
            .clone()
    }

    pub fn status(&self, vg: &str, interval: Option<Duration>) -> GcStatusView {
        let d = self.of(vg);
        let last = d.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let running = d.running.try_lock().is_err();
        GcStatusView {
            vg: vg.to_string(),
            interval: interval.map(|i| i.as_secs_f64()),
            running,
            last,
        }
    }
}

fn busy(vg: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "busy",
        format!("a collection of domain {vg} is running"),
    )
}

/// Runs the collector on `vg` once; the report (as `lvchain gc --json` prints it).
pub async fn collect(
    agent: &Arc<Agent>,
    vg: &str,
    trigger: Trigger,
    dry_run: bool,
) -> Result<serde_json::Value, ApiError> {
    let key = super::domains::Domains::key(vg);
    let board = agent.gc.of(&key);
    let _running = match trigger {
        Trigger::Periodic => board.running.try_lock().map_err(|_| busy(vg))?,
        Trigger::Request => board.running.lock().await,
    };
    let _ticket = agent.inflight.start();
    let started = crate::volume::now();
    let clock = Instant::now();
    let worker = agent.clone();
    let name = vg.to_string();
    let result = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let d = match trigger {
            Trigger::Periodic => worker.domains.open_for_gc(&name)?,
            Trigger::Request => worker.domains.open(&name)?,
        };
        Ok(d.gc(dry_run, &mut |_, _| {}, &mut |_, _, _| {})?)
    })
    .await
    .unwrap_or_else(|e| Err(super::api::worker_failed(e)));
    let (outcome, orphans, report, error) = match &result {
        Ok(r) => {
            let failed = r.orphans.iter().any(|o| o.error.is_some());
            let outcome = if failed {
                GcOutcome::Failed
            } else {
                GcOutcome::Collected
            };
            let view = serde_json::to_value(GcView::from(r)).ok();
            (outcome, r.orphans.len(), view, None)
        }
        Err(e) if e.kind == "busy" => (GcOutcome::Busy, 0, None, Some(e.clone())),
        Err(e) => (GcOutcome::Failed, 0, None, Some(e.clone())),
    };
    let outcome_name = match outcome {
        GcOutcome::Collected => "collected",
        GcOutcome::Busy => "busy",
        GcOutcome::Failed => "failed",
    };
    agent.metrics.gc_run(&key, outcome_name, orphans);
    let run = GcRun {
        trigger,
        started,
        seconds: clock.elapsed().as_secs_f64(),
        outcome,
        report: report.clone(),
        error: error.clone(),
    };
    tracing::info!(vg, ?trigger, ?outcome, orphans, "gc run");
    *board.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(run);
    if outcome != GcOutcome::Busy {
        // What the collection changed shows in the gauges at once (one report).
        super::census::scan(agent, &key).await;
    }
    match (result, report) {
        (Ok(_), Some(view)) => Ok(view),
        (Ok(_), None) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot encode the gc report",
        )),
        (Err(e), _) => Err(e),
    }
}

/// A random factor in [0.9, 1.1).
fn jitter() -> f64 {
    let r = uuid::Uuid::new_v4().as_u128() as u64;
    0.9 + 0.2 * (r as f64 / u64::MAX as f64)
}

/// Collects `vg` every `interval` (with jitter) until `stop` turns true.
async fn domain_loop(
    agent: Arc<Agent>,
    vg: String,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut delay = interval.mul_f64(jitter());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let busy = matches!(
            collect(&agent, &vg, Trigger::Periodic, false).await,
            Err(ref e) if e.kind == "busy"
        );
        delay = if busy {
            BUSY_RETRY.min(interval)
        } else {
            interval.mul_f64(jitter())
        };
    }
}

/// Starts a collection loop for every served domain; without configured domains, looks for
/// new ones every interval.
pub async fn schedule(
    agent: Arc<Agent>,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut started: HashSet<String> = HashSet::new();
    loop {
        let worker = agent.clone();
        let found = tokio::task::spawn_blocking(move || worker.domains.list_for_rounds()).await;
        match found {
            Ok(list) => {
                for vg in list {
                    if started.insert(vg.clone()) {
                        tracing::info!(vg, "periodic gc scheduled");
                        tokio::spawn(domain_loop(agent.clone(), vg, interval, stop.clone()));
                    }
                }
            }
            Err(e) => tracing::warn!("cannot list the domains: {e}"),
        }
        if agent.domains.is_fixed() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
