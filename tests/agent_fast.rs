//! The agent's fast path for creates on real LVM: creations within a burst skip the report
//! and share their commit `lvchange`; a VG changed by another process between two bursts is
//! seen (the cached snapshot is not used after a release); another process waiting for the
//! domain lock gets it at once; `kill -9` of the agent in the middle of a burst leaves nothing
//! that gc cannot repair, and no volume whose creation was answered is lost.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::Agent;
use common::http::request;
use common::{lvm_available, Domain};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// LVM commands the agent ran so far, by verb (its metrics).
fn lvm_commands(agent: &Agent) -> HashMap<String, u64> {
    let (_, m) = agent.call("GET", "/metrics", b"");
    let mut out = HashMap::new();
    for line in m.as_str().unwrap_or_default().lines() {
        let Some(rest) = line.strip_prefix("lvchain_commands_total{") else {
            continue;
        };
        if !rest.contains("program=\"lvm\"") {
            continue;
        }
        let verb = rest
            .split("verb=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        *out.entry(verb.to_string()).or_default() += n as u64;
    }
    out
}

fn delta(after: &HashMap<String, u64>, before: &HashMap<String, u64>, verb: &str) -> u64 {
    after.get(verb).copied().unwrap_or(0) - before.get(verb).copied().unwrap_or(0)
}

fn create_body() -> Value {
    json!({"image": common::uuid(), "size": 4 << 20})
}

/// `n` creations issued at once; their answers.
fn concurrent_creates(agent: &Agent, vg: &str, n: usize) -> Vec<(u16, Value)> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    agent.call(
                        "POST",
                        &format!("/v1/domains/{vg}/volumes"),
                        create_body().to_string().as_bytes(),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn lvm_agent_fast_concurrent_creates_share_commits_without_reports() {
    if !lvm_available("lvm_agent_fast_concurrent_creates_share_commits_without_reports") {
        return;
    }
    let d = Domain::new("fastconc");
    let vg = d.name();
    let agent = Agent::start(
        &d,
        &[
            "--gc-interval",
            "0",
            "--census-interval",
            "0",
            "--burst-idle",
            "2",
        ],
    );
    // The first creation takes the lock (one report).
    agent.ok("POST", &format!("/v1/domains/{vg}/volumes"), create_body());
    let before = lvm_commands(&agent);
    let answers = concurrent_creates(&agent, vg, 16);
    let after = lvm_commands(&agent);
    for (status, v) in &answers {
        assert_eq!(*status, 201, "{v}\n{}", agent.log());
    }
    let total: u64 = after.keys().map(|k| delta(&after, &before, k)).sum();
    eprintln!(
        "16 concurrent creates: {total} lvm commands ({:.2} per create): {after:?} - {before:?}",
        total as f64 / 16.0
    );
    assert_eq!(delta(&after, &before, "lvcreate"), 16);
    assert_eq!(
        delta(&after, &before, "lvs"),
        0,
        "no report within the burst"
    );
    let commits = delta(&after, &before, "lvchange");
    assert!(
        (1..16).contains(&commits),
        "{commits} commit lvchanges for 16 creations"
    );
    let ids = d.volume_ids();
    for (_, v) in &answers {
        assert!(ids.contains(&v["id"].as_str().unwrap().to_string()), "{v}");
    }
    assert_eq!(ids.len(), 17);
    assert_eq!(d.json(&["domain", "check", vg])["clean"], true);
}

#[test]
fn lvm_agent_fast_sees_the_vg_changed_between_bursts_and_yields_to_waiters() {
    if !lvm_available("lvm_agent_fast_sees_the_vg_changed_between_bursts_and_yields_to_waiters") {
        return;
    }
    let d = Domain::new("fastchg");
    let vg = d.name();
    let agent = Agent::start(
        &d,
        &[
            "--gc-interval",
            "0",
            "--census-interval",
            "0",
            "--burst-idle",
            "0.3",
        ],
    );
    let first = agent.ok("POST", &format!("/v1/domains/{vg}/volumes"), create_body());
    std::thread::sleep(Duration::from_secs(2));
    // Between two bursts another process creates a volume (the next free slot) and tags one.
    let outside = d.create(&["--image", &common::uuid(), "--size", "4M"]);
    let first_id = first["id"].as_str().unwrap();
    let lvm = d.vg.lvm.config.config_string();
    let f = lvchain::exec::Cmd::new("/sbin/lvm", Duration::from_secs(60))
        .args(["lvchange", "--config", &lvm, "--addtag", "OTHER_TOOL"])
        .arg(format!("{vg}/{first_id}"))
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    let outside_slot = d.json(&["volume", "info", vg, &outside])["slot"].clone();
    let before = lvm_commands(&agent);
    let second = agent.ok("POST", &format!("/v1/domains/{vg}/volumes"), create_body());
    let after = lvm_commands(&agent);
    assert_ne!(second["slot"], outside_slot, "the stale snapshot was used");
    // The change is seen in the VG's metadata-area headers: no `vgs`.
    assert_eq!(delta(&after, &before, "vgs"), 0, "{after:?}");
    assert_eq!(
        delta(&after, &before, "lvs"),
        1,
        "the changed VG is read again"
    );
    // Unchanged between bursts: the metadata stamp alone; the creation runs its `lvcreate`
    // and its commit and no other lvm command.
    std::thread::sleep(Duration::from_secs(2));
    let before = lvm_commands(&agent);
    agent.ok("POST", &format!("/v1/domains/{vg}/volumes"), create_body());
    let after = lvm_commands(&agent);
    let total: u64 = after.keys().map(|k| delta(&after, &before, k)).sum();
    assert_eq!(delta(&after, &before, "lvcreate"), 1, "{after:?}");
    assert_eq!(delta(&after, &before, "lvchange"), 1, "{after:?}");
    assert_eq!(total, 2, "{after:?} - {before:?}");
    assert_eq!(d.json(&["domain", "check", vg])["clean"], true);
    assert_eq!(d.volume_ids().len(), 4);
}

#[test]
fn lvm_agent_fast_releases_the_lock_at_once_to_another_process() {
    if !lvm_available("lvm_agent_fast_releases_the_lock_at_once_to_another_process") {
        return;
    }
    let d = Domain::new("fastwait");
    let vg = d.name();
    // A burst that would keep the lock for a minute when nobody asked for it.
    let agent = Agent::start(
        &d,
        &[
            "--gc-interval",
            "0",
            "--burst-idle",
            "60",
            "--burst-max-hold",
            "120",
        ],
    );
    agent.ok("POST", &format!("/v1/domains/{vg}/volumes"), create_body());
    let start = Instant::now();
    let outside = d.create(&["--image", &common::uuid(), "--size", "4M"]);
    let waited = start.elapsed();
    assert!(
        waited < Duration::from_secs(30),
        "the CLI waited {waited:?} for the burst's lock"
    );
    // The agent's next creation takes the lock again and sees the new volume.
    let v = agent.ok("POST", &format!("/v1/domains/{vg}/volumes"), create_body());
    assert_ne!(
        v["slot"],
        d.json(&["volume", "info", vg, &outside])["slot"],
        "{v}"
    );
    assert_eq!(d.json(&["domain", "check", vg])["clean"], true);
}

#[test]
fn lvm_agent_fast_kill_9_mid_burst_leaves_what_gc_repairs() {
    if !lvm_available("lvm_agent_fast_kill_9_mid_burst_leaves_what_gc_repairs") {
        return;
    }
    let d = Domain::new("fastkill");
    let vg = d.name().to_string();
    let mut agent = Agent::start(
        &d,
        &[
            "--gc-interval",
            "0",
            "--census-interval",
            "0",
            "--burst-idle",
            "5",
        ],
    );
    agent.ok("POST", &format!("/v1/domains/{vg}/volumes"), create_body());
    // A first wave is answered; the second is killed in the middle of its lvcreates.
    let first = concurrent_creates(&agent, &vg, 6);
    assert!(first.iter().all(|(status, _)| *status == 201), "{first:?}");
    let socket = agent.socket.clone();
    let answers: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|_| {
                let socket = socket.clone();
                let vg = vg.clone();
                s.spawn(move || {
                    std::panic::catch_unwind(|| {
                        request(
                            &socket,
                            "POST",
                            &format!("/v1/domains/{vg}/volumes"),
                            create_body().to_string().as_bytes(),
                        )
                    })
                    .ok()
                })
            })
            .collect();
        let start = Instant::now();
        while lvm_commands(&agent).get("lvcreate").copied().unwrap_or(0) < 1 + 6 + 3 {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent.signal(libc::SIGKILL);
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(agent.wait(Duration::from_secs(10)), None, "killed");
    let mut committed: Vec<String> = answers
        .iter()
        .flatten()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| {
            let v: Value = serde_json::from_slice(body).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    eprintln!(
        "{} of the second wave's 6 creations answered before the kill",
        committed.len()
    );
    assert!(
        d.state().contains("LVC_CREATING"),
        "the kill left creations in flight"
    );
    committed.extend(
        first
            .iter()
            .map(|(_, v)| v["id"].as_str().unwrap().to_string()),
    );
    d.ok(&["gc", &vg]);
    let check = d.json(&["domain", "check", &vg]);
    assert_eq!(check["clean"], true, "{check}");
    let ids = d.volume_ids();
    for id in &committed {
        assert!(ids.contains(id), "answered volume {id} lost");
    }
    assert!(!d.state().contains("LVC_CREATING"));
}
