//! The agent's metrics (Prometheus text format, `prometheus-client`): API operations by route
//! and outcome with latency histograms, external commands (lvm by verb, qemu-img) by outcome
//! with latency histograms (timeouts are an outcome), gc runs by domain and outcome with the
//! orphans they collected, jobs running, per served domain what its last scan saw (orphans,
//! free bytes, free slots), and waits for domain locks by domain, part and outcome (a
//! histogram; the lock layer's observer). Owns no behaviour: others record into it.

use crate::domain::Census;
use crate::exec::Observed;
use crate::lock::Waited;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    program: String,
    verb: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GcLabels {
    domain: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WaitLabels {
    domain: String,
    part: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DomainLabels {
    domain: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 5 ms to about 80 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Lock wait buckets from 1 ms (no wait) to about 131 s.
fn lock_wait() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    ops: Family<OpLabels, Counter>,
    op_seconds: Histograms<OpLabels>,
    commands: Family<CommandLabels, Counter>,
    command_seconds: Histograms<CommandLabels>,
    gc_runs: Family<GcLabels, Counter>,
    gc_orphans: Family<DomainLabels, Counter>,
    jobs_running: Gauge,
    orphans: Family<DomainLabels, Gauge>,
    free_bytes: Family<DomainLabels, Gauge>,
    free_slots: Family<DomainLabels, Gauge>,
    scans: Family<GcLabels, Counter>,
    lock_waits: Histograms<WaitLabels>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let ops = Family::<OpLabels, Counter>::default();
        let op_seconds: Histograms<OpLabels> = Family::new_with_constructor(latency);
        let commands = Family::<CommandLabels, Counter>::default();
        let command_seconds: Histograms<CommandLabels> = Family::new_with_constructor(latency);
        let gc_runs = Family::<GcLabels, Counter>::default();
        let gc_orphans = Family::<DomainLabels, Counter>::default();
        let jobs_running = Gauge::default();
        let orphans = Family::<DomainLabels, Gauge>::default();
        let free_bytes = Family::<DomainLabels, Gauge>::default();
        let free_slots = Family::<DomainLabels, Gauge>::default();
        let scans = Family::<GcLabels, Counter>::default();
        let lock_waits: Histograms<WaitLabels> = Family::new_with_constructor(lock_wait);
        registry.register(
            "lvchain_operations",
            "API requests by route and outcome (ok or the error kind)",
            ops.clone(),
        );
        registry.register(
            "lvchain_operation_duration_seconds",
            "API request latency by route and outcome",
            op_seconds.clone(),
        );
        registry.register(
            "lvchain_commands",
            "External commands (lvm by verb, qemu-img) by outcome (success, failed, timeout, not_run)",
            commands.clone(),
        );
        registry.register(
            "lvchain_command_duration_seconds",
            "External command latency by program, verb and outcome",
            command_seconds.clone(),
        );
        registry.register(
            "lvchain_gc_runs",
            "Collector runs by domain and outcome (collected, busy, failed)",
            gc_runs.clone(),
        );
        registry.register(
            "lvchain_gc_orphans",
            "Orphans the collector found and acted on, by domain",
            gc_orphans.clone(),
        );
        registry.register(
            "lvchain_jobs_running",
            "Jobs (copies) running now",
            jobs_running.clone(),
        );
        registry.register(
            "lvchain_domain_orphans",
            "Volumes (LVs, or a file domain's files) with a transaction marker that no committed volume needs (gc's work; alert when it stays above 0), by domain, as the last scan saw them",
            orphans.clone(),
        );
        registry.register(
            "lvchain_domain_free_bytes",
            "Free space of the domain (its VG, or a file domain's file system), bytes, at the last scan",
            free_bytes.clone(),
        );
        registry.register(
            "lvchain_domain_free_slots",
            "Metadata slots (volumes) still free in a block domain at the last scan (file domains have none)",
            free_slots.clone(),
        );
        registry.register(
            "lvchain_domain_scans",
            "Scans of a served domain (one LVM report, or one read of a file domain's directory, each) by domain and outcome (ok, failed)",
            scans.clone(),
        );
        registry.register(
            "lvchain_lock_wait_seconds",
            "Waits for a domain lock by domain, part (local: this host's lock; across_hosts: sanlock's domain lease) and outcome (acquired, busy: given up at the timeout, failed)",
            lock_waits.clone(),
        );
        Metrics {
            registry,
            lock_waits,
            orphans,
            free_bytes,
            free_slots,
            scans,
            ops,
            op_seconds,
            commands,
            command_seconds,
            gc_runs,
            gc_orphans,
            jobs_running,
        }
    }

    /// One API request ended.
    pub fn operation(&self, op: &str, outcome: &str, took: Duration) {
        let l = OpLabels {
            op: op.into(),
            outcome: outcome.into(),
        };
        self.ops.get_or_create(&l).inc();
        self.op_seconds
            .get_or_create(&l)
            .observe(took.as_secs_f64());
    }

    /// One wait for a domain lock ended (the [`crate::lock`] wait observer).
    pub fn lock_wait(&self, w: &Waited<'_>) {
        self.lock_waits
            .get_or_create(&WaitLabels {
                domain: w.vg.into(),
                part: w.part.as_str().into(),
                outcome: w.outcome.as_str().into(),
            })
            .observe(w.waited.as_secs_f64());
    }

    /// One external command ended (the [`crate::exec`] observer).
    pub fn command(&self, o: &Observed<'_>) {
        let program = std::path::Path::new(o.program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // lvm and qemu-img take their verb first; other programs are their own verb.
        let verb = match program.as_str() {
            "lvm" | "qemu-img" => o
                .args
                .iter()
                .map(|a| a.to_string_lossy())
                .find(|a| !a.starts_with('-'))
                .map(|a| a.into_owned())
                .unwrap_or_default(),
            _ => program.clone(),
        };
        let l = CommandLabels {
            program,
            verb,
            outcome: o.outcome.as_str().into(),
        };
        self.commands.get_or_create(&l).inc();
        self.command_seconds
            .get_or_create(&l)
            .observe(o.duration.as_secs_f64());
    }

    /// One collector run on `domain` ended; `orphans`: how many it acted on.
    pub fn gc_run(&self, domain: &str, outcome: &str, orphans: usize) {
        self.gc_runs
            .get_or_create(&GcLabels {
                domain: domain.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.gc_orphans
            .get_or_create(&DomainLabels {
                domain: domain.into(),
            })
            .inc_by(orphans as u64);
    }

    /// A scan of `domain` saw `counts` (None: it failed; the gauges keep the last values).
    pub fn domain_scanned(&self, domain: &str, counts: Option<Census>) {
        let d = DomainLabels {
            domain: domain.into(),
        };
        let outcome = if counts.is_some() { "ok" } else { "failed" };
        self.scans
            .get_or_create(&GcLabels {
                domain: domain.into(),
                outcome: outcome.into(),
            })
            .inc();
        if let Some(c) = counts {
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.orphans.get_or_create(&d).set(gauge(c.orphans));
            self.free_bytes.get_or_create(&d).set(gauge(c.free_bytes));
            if let Some(slots) = c.free_slots {
                self.free_slots.get_or_create(&d).set(gauge(slots));
            }
        }
    }

    pub fn job_started(&self) {
        self.jobs_running.inc();
    }

    pub fn job_ended(&self) {
        self.jobs_running.dec();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Outcome;
    use std::ffi::{OsStr, OsString};

    #[test]
    fn lock_waits_are_a_histogram_by_domain_part_and_outcome() {
        use crate::lock::{LockPart, WaitOutcome};
        let m = Metrics::new();
        m.lock_wait(&Waited {
            vg: "vg",
            part: LockPart::Local,
            waited: Duration::from_millis(1500),
            outcome: WaitOutcome::Acquired,
        });
        m.lock_wait(&Waited {
            vg: "vg",
            part: LockPart::AcrossHosts,
            waited: Duration::from_secs(300),
            outcome: WaitOutcome::Busy,
        });
        let text = m.encode();
        let local = "domain=\"vg\",part=\"local\",outcome=\"acquired\"";
        for line in [
            format!("lvchain_lock_wait_seconds_count{{{local}}} 1"),
            format!("lvchain_lock_wait_seconds_bucket{{le=\"1.024\",{local}}} 0"),
            format!("lvchain_lock_wait_seconds_bucket{{le=\"2.048\",{local}}} 1"),
            "lvchain_lock_wait_seconds_count{domain=\"vg\",part=\"across_hosts\",outcome=\"busy\"} 1"
                .to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn lvm_commands_are_counted_by_verb() {
        let m = Metrics::new();
        let args: Vec<OsString> = ["lvcreate", "--config", "x", "vg"]
            .iter()
            .map(OsString::from)
            .collect();
        m.command(&Observed {
            program: OsStr::new("/sbin/lvm"),
            args: &args,
            duration: Duration::from_millis(300),
            outcome: Outcome::Timeout,
        });
        m.operation("GET /v1/domains", "ok", Duration::from_millis(2));
        m.gc_run("vg", "collected", 2);
        m.domain_scanned(
            "vg",
            Some(Census {
                orphans: 1,
                free_bytes: 4096,
                free_slots: Some(7),
            }),
        );
        m.domain_scanned("vg", None);
        let text = m.encode();
        assert!(
            text.contains(
                "lvchain_commands_total{program=\"lvm\",verb=\"lvcreate\",outcome=\"timeout\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("lvchain_operations_total{op=\"GET /v1/domains\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("lvchain_gc_orphans_total{domain=\"vg\"} 2"),
            "{text}"
        );
        assert!(text.contains("lvchain_jobs_running 0"), "{text}");
        for line in [
            "lvchain_domain_orphans{domain=\"vg\"} 1",
            "lvchain_domain_free_bytes{domain=\"vg\"} 4096",
            "lvchain_domain_free_slots{domain=\"vg\"} 7",
            "lvchain_domain_scans_total{domain=\"vg\",outcome=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
