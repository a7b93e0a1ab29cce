//! Jobs: long work (a copy) run apart from the request that started it, under an id. The
//! request answers at once (202 and the job); `GET /v1/jobs/{id}` tells its state and how far
//! it has come (`progress`, reported by the work as it runs); the work goes on when the client goes away. Also [`InFlight`], the count of background work
//! (jobs, gc runs) that shutdown waits for. A job lost with its agent is not here any more:
//! its volume's status still comes from shared storage (`volume status`).

use super::errors::ApiError;
use super::metrics::Metrics;
use crate::progress::{Progress, ProgressSink};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;

/// How many finished jobs are kept for their clients to read.
const KEEP_FINISHED: usize = 1000;

/// Background work running now; [`InFlight::idle`] waits until there is none.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    changed: tokio::sync::Notify,
}

/// One unit of background work, counted until dropped.
pub struct Ticket(Arc<InFlight>);

impl InFlight {
    pub fn start(self: &Arc<Self>) -> Ticket {
        self.count.fetch_add(1, Ordering::SeqCst);
        Ticket(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Returns when no work is in flight.
    pub async fn idle(&self) {
        loop {
            let changed = self.changed.notified();
            if self.count() == 0 {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
}

/// A job as the API shows it (its field names are part of the API).
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: Uuid,
    pub kind: &'static str,
    pub domain: String,
    pub volume: Option<crate::format::ids::VolumeId>,
    pub state: JobState,
    /// Unix time (s) it started, and ended.
    pub started: u64,
    pub finished: Option<u64>,
    /// How long it has run (or ran).
    pub seconds: f64,
    /// How far the work has come, as it last reported (`None` before its first report).
    pub progress: Option<Progress>,
    /// What the operation answered (its JSON view), once succeeded.
    pub result: Option<serde_json::Value>,
    pub error: Option<ApiError>,
}

struct Job {
    view: JobView,
    start: Instant,
}

/// The jobs of this agent.
pub struct Jobs {
    jobs: Mutex<HashMap<Uuid, Job>>,
    inflight: Arc<InFlight>,
    metrics: Arc<Metrics>,
}

/// The outcome of a job's work: its JSON view, or the error.
pub type Outcome = Result<serde_json::Value, ApiError>;

impl Jobs {
    pub fn new(inflight: Arc<InFlight>, metrics: Arc<Metrics>) -> Jobs {
        Jobs {
            jobs: Mutex::default(),
            inflight,
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `work` on a blocking thread as a new job; returns the job as it starts. What
    /// `work` reports to the sink it is given is the job's `progress`.
    pub fn spawn<F>(
        self: &Arc<Self>,
        kind: &'static str,
        domain: &str,
        volume: Option<crate::format::ids::VolumeId>,
        work: F,
    ) -> JobView
    where
        F: FnOnce(ProgressSink) -> Outcome + Send + 'static,
    {
        let view = JobView {
            id: Uuid::new_v4(),
            kind,
            domain: domain.into(),
            volume,
            state: JobState::Running,
            started: crate::volume::now(),
            finished: None,
            seconds: 0.0,
            progress: None,
            result: None,
            error: None,
        };
        let id = view.id;
        {
            let mut jobs = self.lock();
            prune(&mut jobs);
            jobs.insert(
                id,
                Job {
                    view: view.clone(),
                    start: Instant::now(),
                },
            );
        }
        self.metrics.job_started();
        let ticket = self.inflight.start();
        let jobs = self.clone();
        let reporter = Arc::downgrade(self);
        let sink = ProgressSink::new(move |p| {
            if let Some(jobs) = reporter.upgrade() {
                if let Some(job) = jobs.lock().get_mut(&id) {
                    job.view.progress = Some(p);
                }
            }
        });
        tokio::task::spawn_blocking(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(sink)))
                .unwrap_or_else(|_| {
                    Err(ApiError::new(
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the job's work panicked",
                    ))
                });
            jobs.finish(id, outcome);
            drop(ticket);
        });
        view
    }

    fn finish(&self, id: Uuid, outcome: Outcome) {
        if let Some(job) = self.lock().get_mut(&id) {
            let v = &mut job.view;
            v.finished = Some(crate::volume::now());
            v.seconds = job.start.elapsed().as_secs_f64();
            match outcome {
                Ok(result) => {
                    v.state = JobState::Succeeded;
                    v.result = Some(result);
                }
                Err(e) => {
                    v.state = JobState::Failed;
                    v.error = Some(e);
                }
            }
        }
        self.metrics.job_ended();
    }

    /// One job, as it is now.
    pub fn get(&self, id: &Uuid) -> Option<JobView> {
        self.lock().get(id).map(current)
    }

    /// Every job kept, oldest first.
    pub fn list(&self) -> Vec<JobView> {
        let mut all: Vec<JobView> = self.lock().values().map(current).collect();
        all.sort_by_key(|j| (j.started, j.id));
        all
    }
}

fn current(job: &Job) -> JobView {
    let mut v = job.view.clone();
    if v.state == JobState::Running {
        v.seconds = job.start.elapsed().as_secs_f64();
    }
    v
}

/// Forgets the oldest finished jobs beyond [`KEEP_FINISHED`].
fn prune(jobs: &mut HashMap<Uuid, Job>) {
    let mut finished: Vec<(u64, Uuid)> = jobs
        .values()
        .filter_map(|j| j.view.finished.map(|f| (f, j.view.id)))
        .collect();
    if finished.len() < KEEP_FINISHED {
        return;
    }
    finished.sort();
    for (_, id) in &finished[..finished.len() + 1 - KEEP_FINISHED] {
        jobs.remove(id);
    }
}
