//! The CLI through the host agent on real LVM: every command prints the same stdout, the same
//! error line and exits with the same code whether the agent ran it or the CLI ran it
//! in-process (`--direct`); the agent's metrics prove which way each run went; and the CLI
//! falls back to in-process when no agent listens, when the socket does not answer, and for a
//! domain the agent does not serve.
#![allow(clippy::unwrap_used)]

mod common;

use common::{lvm_available, Domain, BIN};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The in-process engine's settings the CLI must not see when it should use the agent.
const ENGINE_ENV: &[&str] = &[
    "LVCHAIN_DEVICES",
    "LVCHAIN_LVM",
    "LVCHAIN_LVM_TIMEOUT",
    "LVCHAIN_LOCK_TIMEOUT",
    "LVCHAIN_QEMU_IMG",
    "LVCHAIN_COPY_TIMEOUT",
    "LVCHAIN_RUN_DIR",
    "LVCHAIN_CRASH_AT",
    "LVCHAIN_PAUSE_AT",
    "LVCHAIN_PAUSE_FILE",
    "LVCHAIN_AGENT_SOCKET",
];

/// A running `lvchain agent` serving one domain; killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Agent {
    fn start(d: &Domain) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let mut c = Command::new(BIN.as_str());
        c.args(["agent", "--socket", socket.to_str().unwrap()])
            .args(["--domain", d.name(), "--gc-interval", "0"])
            .env("RUST_LOG", "lvchain=info")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in d.vg.env() {
            c.env(k, v);
        }
        let a = Agent {
            child: c.spawn().unwrap(),
            socket,
            dir,
        };
        let start = Instant::now();
        while UnixStream::connect(&a.socket).is_err() {
            assert!(start.elapsed() < Duration::from_secs(30), "{}", a.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        a
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// The agent's request counters by `op outcome` (the metrics requests left out).
    fn operations(&self) -> BTreeMap<String, u64> {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let re = regex::Regex::new(
            r#"(?m)^lvchain_operations_total\{op="([^"]+)",outcome="([^"]+)"\} (\d+)"#,
        )
        .unwrap();
        re.captures_iter(&text)
            .filter(|c| &c[1] != "GET /metrics")
            .map(|c| (format!("{} {}", &c[1], &c[2]), c[3].parse().unwrap()))
            .collect()
    }
}

impl Agent {
    /// The per-domain gauges of `vg` by name.
    fn gauges(&self, vg: &str) -> BTreeMap<String, u64> {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let re = regex::Regex::new(&format!(
            r#"(?m)^(lvchain_domain_[a-z_]+)\{{domain="{vg}"\}} (\d+)"#
        ))
        .unwrap();
        re.captures_iter(&text)
            .map(|c| (c[1].to_string(), c[2].parse().unwrap()))
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the CLI is run.
#[derive(Clone, Copy)]
enum Mode<'a> {
    /// Without the engine's environment, the agent's socket named: through the agent.
    Agent(&'a Path),
    /// `--direct`, with the domain's environment (its devices).
    Direct(&'a Path),
}

/// What one CLI run printed.
#[derive(Debug, PartialEq)]
struct Run {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn lvchain(d: &Domain, mode: Mode<'_>, args: &[&str]) -> Run {
    let mut c = Command::new(BIN.as_str());
    c.args(args);
    for v in ENGINE_ENV {
        c.env_remove(v);
    }
    match mode {
        Mode::Agent(socket) => {
            c.arg("--agent-socket").arg(socket);
        }
        Mode::Direct(socket) => {
            c.arg("--direct").arg("--agent-socket").arg(socket);
            for (k, v) in d.vg.env() {
                c.env(k, v);
            }
        }
    }
    let out = c.output().unwrap();
    Run {
        args: args.join(" "),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Only what differs between two runs of the same command at different times: timestamps and
/// durations.
fn normalized(r: &Run) -> Run {
    let ctime = regex::Regex::new(r#""ctime": \d+"#).unwrap();
    let seconds = regex::Regex::new(r#""seconds": [0-9.e-]+"#).unwrap();
    let took = regex::Regex::new(r"orphan\(s\) in [0-9.]+s").unwrap();
    let fix = |s: &str| {
        let s = ctime.replace_all(s, "\"ctime\": T");
        let s = seconds.replace_all(&s, "\"seconds\": S");
        took.replace_all(&s, "orphan(s) in Ss").into_owned()
    };
    Run {
        args: r.args.clone(),
        code: r.code,
        stdout: fix(&r.stdout),
        stderr: fix(&r.stderr),
    }
}

const IMAGE: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000001";
const BASE: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000002";
const SNAP: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000003";
const ORPHAN_IMAGE: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000004";
const ORPHAN: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000005";
const UNKNOWN: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000006";

/// Every command, in an order that ends where it began (nothing left, wipe back to zero), so
/// the second run starts from the state the first one did: same ids, same slots, same space.
/// The commands that must succeed are checked; the others are the error cases.
/// `after_gc` is called after each gc.
fn scenario(d: &Domain, mode: Mode<'_>, source: &Path, after_gc: &mut dyn FnMut(&Run)) -> Vec<Run> {
    let vg = d.name();
    let src = source.to_str().unwrap();
    let steps: Vec<(Vec<&str>, Option<i32>)> = vec![
        (vec!["domain", "set", vg, "--wipe", "none"], Some(0)),
        (
            vec![
                "volume",
                "create",
                vg,
                "--image",
                IMAGE,
                "--id",
                BASE,
                "--size",
                "64M",
                "--description",
                "base",
            ],
            Some(0),
        ),
        (
            vec![
                "volume", "create", vg, "--parent", BASE, "--id", SNAP, "--json",
            ],
            Some(0),
        ),
        (vec!["volume", "list", vg, "--image", IMAGE], Some(0)),
        (vec!["volume", "info", vg, SNAP], Some(0)),
        (vec!["volume", "info", vg, BASE, "--json"], Some(0)),
        (vec!["image", "chain", vg, IMAGE], Some(0)),
        (vec!["domain", "info", vg, "--json"], Some(0)),
        (
            vec!["volume", "extend", vg, SNAP, "--size", "128M", "--json"],
            Some(0),
        ),
        (
            vec![
                "volume",
                "update",
                vg,
                SNAP,
                "--generation",
                "0",
                "--description",
                "renamed",
            ],
            Some(0),
        ),
        (
            vec!["volume", "status", vg, SNAP, "--generation", "0"],
            Some(0),
        ),
        (
            vec!["volume", "fence", vg, SNAP, "--generation", "1", "--json"],
            Some(0),
        ),
        (
            vec!["volume", "status", vg, SNAP, "--generation", "1"],
            Some(0),
        ),
        (
            vec![
                "volume",
                "copy",
                vg,
                SNAP,
                "--from",
                src,
                "--generation",
                "4",
            ],
            Some(0),
        ),
        (
            vec!["volume", "status", vg, SNAP, "--generation", "4", "--json"],
            Some(0),
        ),
        (vec!["image", "prepare", vg, IMAGE], Some(0)),
        (vec!["image", "teardown", vg, IMAGE, "--json"], Some(0)),
        // Errors: unknown volume, not a leaf, a size the engine refuses, a size clap refuses,
        // a stale generation, a copy whose job fails.
        (vec!["volume", "info", vg, UNKNOWN], Some(1)),
        (vec!["volume", "info", vg, UNKNOWN, "--json"], Some(1)),
        (vec!["volume", "remove", vg, BASE], Some(1)),
        (vec!["volume", "extend", vg, SNAP, "--size", "1M"], Some(1)),
        (vec!["volume", "extend", vg, SNAP, "--size", "12Q"], Some(2)),
        (
            vec![
                "volume",
                "update",
                vg,
                SNAP,
                "--generation",
                "0",
                "--description",
                "late",
            ],
            Some(1),
        ),
        (
            vec![
                "volume",
                "copy",
                vg,
                SNAP,
                "--from",
                src,
                "--generation",
                "0",
                "--json",
            ],
            Some(1),
        ),
    ];
    let mut runs: Vec<Run> = steps
        .iter()
        .map(|(args, want)| {
            let r = lvchain(d, mode, args);
            assert_eq!(r.code, *want, "{r:#?}");
            r
        })
        .collect();
    // An orphan (a create that died after its lvcreate; in-process by its environment), then
    // check (unclean: the report and exit 1), gc, check again, and removals.
    let crash = d.run_env(
        &[
            "volume",
            "create",
            vg,
            "--image",
            ORPHAN_IMAGE,
            "--id",
            ORPHAN,
            "--size",
            "8M",
        ],
        &[("LVCHAIN_CRASH_AT", "create.after-lvcreate")],
    );
    assert!(!crash.success());
    let steps: Vec<(Vec<&str>, Option<i32>)> = vec![
        (vec!["domain", "check", vg], Some(1)),
        (vec!["gc", vg, "--dry-run", "--json"], Some(0)),
        (vec!["gc", vg], Some(0)),
        (vec!["domain", "check", vg, "--json"], Some(0)),
        (vec!["volume", "remove", vg, SNAP], Some(0)),
        (vec!["image", "remove", vg, IMAGE, "--json"], Some(0)),
        (
            vec!["domain", "set", vg, "--wipe", "zero", "--json"],
            Some(0),
        ),
        (vec!["volume", "list", vg], Some(0)),
        (vec!["domain", "info", vg], Some(0)),
    ];
    for (args, want) in &steps {
        let r = lvchain(d, mode, args);
        assert_eq!(r.code, *want, "{r:#?}");
        if args[0] == "gc" {
            after_gc(&r);
        }
        runs.push(r);
    }
    runs
}

#[test]
fn lvm_agent_cli_prints_the_same_through_the_agent_and_in_process() {
    if !lvm_available("lvm_agent_cli_prints_the_same_through_the_agent_and_in_process") {
        return;
    }
    let started = Instant::now();
    let d = Domain::new("agentsame");
    let vg = d.name().to_string();
    let agent = Agent::start(&d);
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (_src_dir, source) = common::dir_file(&data);
    let before = agent.operations();
    // The gauges: the census after each collection (one report) shows the orphan, then none.
    let mut gauges = Vec::new();
    let through = scenario(&d, Mode::Agent(&agent.socket), &source, &mut |_| {
        gauges.push(agent.gauges(&vg))
    });
    assert_eq!(gauges.len(), 2, "{gauges:?}");
    assert_eq!(gauges[0]["lvchain_domain_orphans"], 1, "{gauges:?}");
    assert_eq!(gauges[1]["lvchain_domain_orphans"], 0, "{gauges:?}");
    assert_eq!(
        gauges[1]["lvchain_domain_free_slots"],
        2048 - 2,
        "{gauges:?}"
    );
    assert!(gauges[1]["lvchain_domain_free_bytes"] > 0, "{gauges:?}");
    let after_agent = agent.operations();
    let direct = scenario(&d, Mode::Direct(&agent.socket), &source, &mut |_| {});
    let after_direct = agent.operations();

    // Same output, line for line.
    assert_eq!(through.len(), direct.len());
    for (a, b) in through.iter().zip(&direct) {
        assert_eq!(normalized(a), normalized(b), "differs: {}", a.args);
    }
    // The error cases print the engine's one line.
    let unknown = through.iter().find(|r| r.args.ends_with(UNKNOWN)).unwrap();
    assert_eq!(
        unknown.stderr.lines().collect::<Vec<_>>(),
        [format!(
            "lvchain: error: volume {UNKNOWN} not found in domain {vg}"
        )],
        "{unknown:#?}"
    );

    // The first run went through the agent: every command with a route, counted by route
    // and outcome (the clap error and the crashed create never reached it) ...
    let count = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let delta = |k: &str| count(&after_agent, k) - count(&before, k);
    let v = "/v1/domains/{vg}";
    let sent = through.iter().filter(|r| r.code != Some(2)).count() as u64;
    let expected = [
        ("GET /v1/agent ok", sent),
        (&format!("GET {v} ok") as &str, 2),
        (&format!("PATCH {v} ok"), 2),
        (&format!("POST {v}/volumes ok"), 2),
        (&format!("GET {v}/volumes ok"), 2),
        (&format!("GET {v}/volumes/{{volume}} ok"), 2),
        (&format!("GET {v}/volumes/{{volume}} volume_not_found"), 2),
        (&format!("POST {v}/volumes/{{volume}}/extend ok"), 1),
        (
            &format!("POST {v}/volumes/{{volume}}/extend invalid_input"),
            1,
        ),
        (&format!("POST {v}/volumes/{{volume}}/update ok"), 1),
        (
            &format!("POST {v}/volumes/{{volume}}/update wrong_generation"),
            1,
        ),
        (&format!("POST {v}/volumes/{{volume}}/fence ok"), 1),
        (&format!("GET {v}/volumes/{{volume}}/status ok"), 3),
        (&format!("POST {v}/volumes/{{volume}}/copy ok"), 2),
        (&format!("DELETE {v}/volumes/{{volume}} ok"), 1),
        (&format!("DELETE {v}/volumes/{{volume}} not_a_leaf"), 1),
        (&format!("GET {v}/images/{{image}} ok"), 1),
        (&format!("POST {v}/images/{{image}}/prepare ok"), 1),
        (&format!("POST {v}/images/{{image}}/teardown ok"), 1),
        (&format!("DELETE {v}/images/{{image}} ok"), 1),
        (&format!("GET {v}/check ok"), 2),
        (&format!("POST {v}/gc ok"), 2),
    ];
    let mut seen = BTreeMap::new();
    for (k, n) in expected {
        seen.insert(k.to_string(), (delta(k), n));
    }
    let wrong: Vec<_> = seen.iter().filter(|(_, (got, want))| got != want).collect();
    assert!(wrong.is_empty(), "agent requests (got, want): {wrong:#?}");
    assert!(
        count(&after_agent, "GET /v1/jobs/{id} ok") > count(&before, "GET /v1/jobs/{id} ok"),
        "{after_agent:#?}"
    );
    // ... and the second run never did.
    assert_eq!(
        after_direct, after_agent,
        "a --direct run reached the agent"
    );

    // Fallbacks: no agent on the socket (quietly), --direct alone, a socket nobody answers
    // on (a warning, after the probe's bound), a domain the agent does not serve (in-process:
    // the engine's own error). The reference is the in-process run.
    let reference = lvchain(&d, Mode::Direct(&agent.socket), &["domain", "info", &vg]);
    let none = lvchain(
        &d,
        Mode::Agent(&agent.dir.path().join("none.sock")),
        &["domain", "info", &vg],
    );
    assert_eq!(none, reference);
    let mut direct_only = Command::new(BIN.as_str());
    direct_only.args(["domain", "info", &vg, "--direct"]);
    for v in ENGINE_ENV {
        direct_only.env_remove(v);
    }
    direct_only.env("LVCHAIN_AGENT_SOCKET", &agent.socket);
    let out = direct_only.output().unwrap();
    assert_eq!(
        (out.status.code(), String::from_utf8_lossy(&out.stdout)),
        (reference.code, reference.stdout.clone().into())
    );
    assert_eq!(
        agent.operations(),
        after_agent,
        "--direct reached the agent"
    );
    let silent_path = agent.dir.path().join("silent.sock");
    let _silent = std::os::unix::net::UnixListener::bind(&silent_path).unwrap();
    let t = Instant::now();
    let silent = lvchain(&d, Mode::Agent(&silent_path), &["domain", "info", &vg]);
    assert!(t.elapsed() >= Duration::from_secs(2), "{silent:#?}");
    assert_eq!(
        (silent.code, &silent.stdout),
        (reference.code, &reference.stdout)
    );
    assert!(silent.stderr.contains("does not answer"), "{silent:#?}");
    let other = "lvctnosuchvg";
    let unserved = lvchain(&d, Mode::Agent(&agent.socket), &["domain", "info", other]);
    let unserved_direct = lvchain(&d, Mode::Direct(&agent.socket), &["domain", "info", other]);
    assert_eq!(unserved, unserved_direct);
    assert_eq!(unserved.code, Some(1), "{unserved:#?}");
    assert_eq!(
        count(
            &agent.operations(),
            "GET /v1/domains/{vg} domain_not_served"
        ),
        1
    );
    // The socket from the environment is used when no option names one.
    let mut by_env = Command::new(BIN.as_str());
    by_env.args(["domain", "info", &vg]);
    for v in ENGINE_ENV {
        by_env.env_remove(v);
    }
    by_env.env("LVCHAIN_AGENT_SOCKET", &agent.socket);
    let out = by_env.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), reference.stdout);
    let now = agent.operations();
    assert_eq!(
        count(&now, "GET /v1/domains/{vg} ok"),
        count(&after_agent, "GET /v1/domains/{vg} ok") + 1
    );
    eprintln!("lvm_agent_cli: {:?}", started.elapsed());
}
