//! The agent under load on real LVM (in the VM): 8 clients send 400 mixed requests (create,
//! snapshot, remove, prepare and teardown, status, list, chain) to one domain through the
//! agent's socket, with the periodic collector running every 2 s, and the agent is killed with
//! SIGKILL once in the middle and started again. At the end: every request was answered (a
//! success or a JSON error with a kind and a message), except those the kill cut off; no
//! volume whose creation was answered is lost unless its removal was answered too, no volume
//! whose removal was answered is left; `domain check` is clean after one gc.
//!
//! Each client works on its own images (a volume is removed or snapshotted only by the client
//! that made it), so its own answers tell what must exist. A request the kill cut off has an
//! unknown outcome: its volume is left out of both checks. A request that cannot connect
//! (the agent is down) was not sent: the client retries it.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::Agent;
use common::http::{try_request_within, Unanswered};
use common::{lvm_available, uuid, Domain};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CLIENTS: usize = 8;
const REQUESTS: usize = 400;
/// Answers after which the agent is killed.
const KILL_AFTER: usize = 160;

/// When the agent was killed and when it answered again.
#[derive(Default, Clone, Copy)]
struct Outage {
    killed: Option<Instant>,
    back: Option<Instant>,
}

impl Outage {
    /// Whether `[from, to]` overlaps the outage (a request the kill may have cut off).
    fn overlaps(&self, from: Instant, to: Instant) -> bool {
        match (self.killed, self.back) {
            (Some(k), Some(b)) => from <= b && to >= k,
            (Some(k), None) => to >= k,
            _ => false,
        }
    }
}

/// One request as a client saw it.
struct Answer {
    op: &'static str,
    /// None: cut off by the kill.
    status: Option<u16>,
    body: Value,
    from: Instant,
    to: Instant,
}

/// One image of a client: its chain as the client's answers tell it, base first.
struct Image {
    id: String,
    chain: Vec<String>,
}

/// What a client learned.
#[derive(Default)]
struct Ledger {
    /// Creation answered, no removal answered since.
    live: HashSet<String>,
    /// Removal answered.
    removed: HashSet<String>,
    /// Creation or removal cut off: may or may not exist.
    unknown: HashSet<String>,
    answers: Vec<Answer>,
    /// Connections refused (the agent down), retried.
    refused: Vec<Instant>,
}

/// xorshift64*: a fixed sequence per client.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

struct Client<'a> {
    socket: &'a Path,
    vg: &'a str,
    done: &'a AtomicUsize,
    ledger: Ledger,
}

impl Client<'_> {
    /// Sends one request until it is sent (retrying while nobody accepts); its answer.
    fn send(&mut self, op: &'static str, method: &str, path: &str, body: Value) -> Option<u16> {
        let start = Instant::now();
        loop {
            let from = Instant::now();
            // The agent's lock timeout (300 s) bounds every answer.
            let answer = try_request_within(
                self.socket,
                method,
                path,
                body.to_string().as_bytes(),
                Duration::from_secs(330),
            );
            match answer {
                Ok((status, raw)) => {
                    let body = serde_json::from_slice(&raw).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&raw).into_owned())
                    });
                    self.record(op, Some(status), body, from);
                    return Some(status);
                }
                Err(Unanswered::NotSent(e)) => {
                    self.ledger.refused.push(Instant::now());
                    assert!(
                        start.elapsed() < Duration::from_secs(120),
                        "{method} {path}: not accepted for 2 minutes: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(Unanswered::Lost(e)) => {
                    self.record(op, None, Value::String(e), from);
                    return None;
                }
            }
        }
    }

    fn record(&mut self, op: &'static str, status: Option<u16>, body: Value, from: Instant) {
        self.ledger.answers.push(Answer {
            op,
            status,
            body,
            from,
            to: Instant::now(),
        });
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn volumes(&self) -> String {
        format!("/v1/domains/{}/volumes", self.vg)
    }

    fn create(&mut self, images: &mut Vec<Image>, parent: Option<usize>) {
        let (op, body) = match parent {
            Some(i) => (
                "snapshot",
                json!({"parent": images[i].chain.last().unwrap()}),
            ),
            None => ("create", json!({"image": uuid(), "size": 4 << 20})),
        };
        let path = self.volumes();
        let status = self.send(op, "POST", &path, body);
        let answer = &self.ledger.answers.last().unwrap().body;
        match status {
            Some(201) => {
                let id = answer["id"].as_str().unwrap().to_string();
                let image = answer["image"].as_str().unwrap().to_string();
                self.ledger.live.insert(id.clone());
                match parent {
                    Some(i) => images[i].chain.push(id),
                    None => images.push(Image {
                        id: image,
                        chain: vec![id],
                    }),
                }
            }
            // Cut off: the volume's id is not known (gc rolls back an uncommitted one; a
            // committed one is not checked); a snapshot's image has an unknown leaf now.
            None => {
                if let Some(i) = parent {
                    images.remove(i);
                }
            }
            Some(_) => {}
        }
    }

    fn remove(&mut self, images: &mut Vec<Image>, i: usize) {
        let leaf = images[i].chain.last().unwrap().clone();
        let path = format!("{}/{leaf}", self.volumes());
        match self.send("remove", "DELETE", &path, json!({})) {
            Some(s) if (200..300).contains(&s) => {
                self.ledger.live.remove(&leaf);
                self.ledger.removed.insert(leaf);
                images[i].chain.pop();
                if images[i].chain.is_empty() {
                    images.remove(i);
                }
            }
            None => {
                // Removed or not (its parents stay): the client stops using the image.
                self.ledger.live.remove(&leaf);
                self.ledger.unknown.insert(leaf);
                images.remove(i);
            }
            Some(_) => {}
        }
    }

    /// The client's share of the requests.
    fn run(&mut self, seed: u64, requests: usize) {
        let mut rng = Rng(seed);
        let mut images: Vec<Image> = Vec::new();
        let mut sent = 0;
        while sent < requests {
            let roll = if images.is_empty() { 0 } else { rng.below(100) };
            let i = if images.is_empty() {
                0
            } else {
                rng.below(images.len())
            };
            match roll {
                0..15 => self.create(&mut images, None),
                15..25 => self.create(&mut images, Some(i)),
                25..35 => self.remove(&mut images, i),
                35..43 if sent + 2 <= requests => {
                    let base = format!("/v1/domains/{}/images/{}", self.vg, images[i].id);
                    self.send("prepare", "POST", &format!("{base}/prepare"), json!({}));
                    self.send("teardown", "POST", &format!("{base}/teardown"), json!({}));
                    sent += 1;
                }
                35..60 => {
                    let chain = &images[i].chain;
                    let v = chain[rng.below(chain.len())].clone();
                    let path = format!("{}/{v}/status?generation=0", self.volumes());
                    self.send("status", "GET", &path, json!({}));
                }
                60..80 => {
                    let path = self.volumes();
                    self.send("list", "GET", &path, json!({}));
                }
                _ => {
                    let path = format!("/v1/domains/{}/images/{}", self.vg, images[i].id);
                    self.send("chain", "GET", &path, json!({}));
                }
            }
            sent += 1;
        }
    }
}

#[test]
fn lvm_agent_load_8_clients_400_requests_with_gc_and_a_kill() {
    if !lvm_available("lvm_agent_load_8_clients_400_requests_with_gc_and_a_kill") {
        return;
    }
    // About 90 s of an idle test VM (minutes beside other jobs); LVCHAIN_TEST_LOAD=0 skips it.
    if std::env::var("LVCHAIN_TEST_LOAD").as_deref() == Ok("0") {
        eprintln!("SKIP lvm_agent_load: LVCHAIN_TEST_LOAD=0");
        return;
    }
    let d = Domain::new("agentload");
    let vg = d.name().to_string();
    let mut agent = Agent::start(&d, &["--gc-interval", "2", "--census-interval", "0"]);
    let socket = agent.socket.clone();
    let done = AtomicUsize::new(0);
    let outage = Mutex::new(Outage::default());
    let start = Instant::now();
    let ledgers: Vec<Ledger> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (socket, vg, done) = (&socket, &vg, &done);
                s.spawn(move || {
                    let mut client = Client {
                        socket,
                        vg,
                        done,
                        ledger: Ledger::default(),
                    };
                    client.run(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1), REQUESTS / CLIENTS);
                    client.ledger
                })
            })
            .collect();
        // The kill, once, in the middle of the run (after ~6 minutes in a full run beside the
        // other jobs; the bound is against a hang).
        while done.load(Ordering::Relaxed) < KILL_AFTER {
            assert!(
                start.elapsed() < Duration::from_secs(1200),
                "{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        outage.lock().unwrap().killed = Some(Instant::now());
        agent.signal(libc::SIGKILL);
        assert_eq!(agent.wait(Duration::from_secs(10)), None, "killed");
        agent.restart();
        outage.lock().unwrap().back = Some(Instant::now());
        clients.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed();
    let outage = *outage.lock().unwrap();

    // Every request answered: a success or a JSON error; none lost but to the kill.
    let answers: Vec<&Answer> = ledgers.iter().flat_map(|l| &l.answers).collect();
    assert_eq!(answers.len(), REQUESTS);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        let key = match a.status {
            Some(s) if (200..300).contains(&s) => format!("{} {s}", a.op),
            Some(s) => {
                let (kind, message) = (&a.body["kind"], &a.body["message"]);
                assert!(
                    kind.is_string() && message.as_str().is_some_and(|m| !m.is_empty()),
                    "{} answered {s} without a JSON error: {}",
                    a.op,
                    a.body
                );
                format!("{} {s} {}", a.op, kind.as_str().unwrap())
            }
            None => {
                assert!(
                    outage.overlaps(a.from, a.to),
                    "{} lost outside the kill: {} (sent {:?} after the start, lost {:?} \
                     later; killed at {:?}, back at {:?}); the agent's warnings:\n{}",
                    a.op,
                    a.body,
                    a.from - start,
                    a.to - a.from,
                    outage.killed.map(|k| k - start),
                    outage.back.map(|b| b - start),
                    agent
                        .log()
                        .lines()
                        .filter(|l| ["WARN", "ERROR", "panic"].iter().any(|w| l.contains(w)))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
                format!("{} cut off by the kill", a.op)
            }
        };
        *tally.entry(key).or_default() += 1;
    }
    for refused in ledgers.iter().flat_map(|l| &l.refused) {
        assert!(
            outage.overlaps(*refused, *refused),
            "a connection was refused while the agent was up"
        );
    }
    let cut = answers.iter().filter(|a| a.status.is_none()).count();
    eprintln!(
        "{REQUESTS} requests from {CLIENTS} clients in {:.1}s ({cut} cut off by the kill, \
         agent back after {:.1}s):",
        elapsed.as_secs_f64(),
        outage
            .back
            .zip(outage.killed)
            .map_or(0.0, |(b, k)| (b - k).as_secs_f64())
    );
    for (k, n) in &tally {
        eprintln!("  {n:4} {k}");
    }
    let mut by_op: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for a in &answers {
        let e = by_op.entry(a.op).or_default();
        e.0 += 1;
        e.1 += (a.to - a.from).as_secs_f64();
    }
    for (op, (n, total)) in &by_op {
        eprintln!("  {op}: mean {:.2}s over {n}", total / *n as f64);
    }
    // What the restarted agent ran (its counters began at the restart).
    let metrics = agent.call("GET", "/metrics", b"").1;
    let text = metrics.as_str().unwrap_or_default();
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let requests_since = answers
        .iter()
        .filter(|a| Some(a.from) >= outage.back)
        .count();
    let lvm = sum("lvchain_command_duration_seconds_count{program=\"lvm\"");
    eprintln!(
        "since the restart: {requests_since} requests, {lvm} lvm commands taking {:.2}s on \
         average, lock waits {:.1}s in all",
        sum("lvchain_command_duration_seconds_sum{program=\"lvm\"") / lvm.max(1.0),
        sum("lvchain_lock_wait_seconds_sum{")
    );
    let gc_runs: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("lvchain_gc_runs_total{"))
        .collect();
    eprintln!("gc since the restart: {gc_runs:?}");

    // One collection, then the domain is clean and nothing answered is lost.
    let (status, gc) = agent.call("POST", &format!("/v1/domains/{vg}/gc"), b"{}");
    assert_eq!(status, 200, "{gc}");
    let (status, report) = agent.call("GET", &format!("/v1/domains/{vg}/check"), b"");
    assert_eq!(report["clean"], true, "{status} {report}");
    let (clean, report) = common::check(&d);
    assert!(clean, "{report}");
    let present: HashSet<String> = d.volume_ids().into_iter().collect();
    let mut live = 0;
    for l in &ledgers {
        for id in l.live.difference(&l.unknown) {
            assert!(present.contains(id), "answered volume {id} lost");
            live += 1;
        }
        for id in l.removed.difference(&l.unknown) {
            assert!(!present.contains(id), "removed volume {id} is back");
        }
    }
    eprintln!(
        "{live} answered volumes present, {} volumes in the domain",
        present.len()
    );
    assert!(live > 0);
}
