//! The host agent on real LVM: `lvchain agent` serving a loop-device domain on a socket in a
//! temporary directory, spoken to over the socket with a plain HTTP/1.1 client. What the API
//! does equals what the CLI shows; bad requests get their JSON errors and change nothing; a
//! copy runs as a job; the periodic collector waits out a busy domain lock and collects; a
//! peer that is not root is refused; SIGTERM ends in-flight work within its bound and removes
//! the socket.
#![allow(clippy::unwrap_used)]

mod common;

use common::agent::Agent;
use common::{lvm_available, Domain};
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

fn uuid() -> String {
    common::uuid()
}

#[test]
fn lvm_agent_volumes_and_images_through_the_api_equal_the_cli() {
    if !lvm_available("lvm_agent_volumes_and_images_through_the_api_equal_the_cli") {
        return;
    }
    let d = Domain::new("agentcli");
    let agent = Agent::start(&d, &["--gc-interval", "0"]);
    let vg = d.name();
    let image = uuid();
    let base = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes"),
        json!({"image": image, "size": 64 << 20, "description": "through the agent"}),
    );
    let base_id = base["id"].as_str().unwrap();
    let snap = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes"),
        json!({"parent": base_id}),
    );
    let snap_id = snap["id"].as_str().unwrap();
    // What the API answers is what the CLI prints.
    let chain = agent.ok(
        "GET",
        &format!("/v1/domains/{vg}/images/{image}"),
        json!({}),
    );
    assert_eq!(chain, d.json(&["image", "chain", vg, &image]));
    // The base is the snapshot's parent now (internal); the snapshot is as created.
    assert_eq!(chain[0]["id"], base["id"]);
    assert_eq!(chain[0]["role"], "internal");
    assert_eq!(chain[1], snap);
    let info = agent.ok(
        "GET",
        &format!("/v1/domains/{vg}/volumes/{snap_id}"),
        json!({}),
    );
    assert_eq!(info, d.json(&["volume", "info", vg, snap_id]));
    let summary = agent.ok("GET", &format!("/v1/domains/{vg}"), json!({}));
    assert_eq!(summary, d.json(&["domain", "info", vg]));
    // Prepare and teardown: the links the CLI would make.
    let prepared = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/images/{image}/prepare"),
        json!({}),
    );
    let leaf = PathBuf::from(prepared["leaf"].as_str().unwrap());
    assert!(leaf.exists(), "{prepared}");
    assert_eq!(prepared["volumes"], chain);
    let torn = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/images/{image}/teardown"),
        json!({}),
    );
    assert_eq!(torn["result"], format!("image {image} torn down"));
    assert!(!leaf.exists());
    // Removal through the API: the CLI sees it.
    let removed = agent.ok(
        "DELETE",
        &format!("/v1/domains/{vg}/volumes/{snap_id}"),
        json!({}),
    );
    assert_eq!(removed["result"], format!("removed volume {snap_id}"));
    let list = d.json(&["volume", "list", vg]);
    // `volume info` also says where the volume is prepared (nowhere now); a list does not.
    let mut info = agent.ok(
        "GET",
        &format!("/v1/domains/{vg}/volumes/{base_id}"),
        json!({}),
    );
    assert_eq!(info["prepared_on"], json!([]));
    info.as_object_mut().unwrap().remove("prepared_on");
    assert_eq!(list, json!([info]));
    let gone = agent.ok(
        "DELETE",
        &format!("/v1/domains/{vg}/images/{image}"),
        json!({}),
    );
    assert_eq!(gone["result"], format!("removed image {image} (1 volumes)"));
    assert_eq!(d.json(&["volume", "list", vg]), json!([]));
    let check = agent.ok("GET", &format!("/v1/domains/{vg}/check"), json!({}));
    assert_eq!(check["clean"], true, "{check}");
    // The metrics saw the requests and the LVM commands by verb.
    let (status, metrics) = agent.call("GET", "/metrics", b"");
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("op=\"POST /v1/domains/{vg}/volumes\",outcome=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("program=\"lvm\",verb=\"lvcreate\",outcome=\"success\"} 2"),
        "{metrics}"
    );
}

#[test]
fn lvm_agent_bad_requests_change_nothing() {
    if !lvm_available("lvm_agent_bad_requests_change_nothing") {
        return;
    }
    let d = Domain::new("agentbad");
    let agent = Agent::start(&d, &["--gc-interval", "0"]);
    let vg = d.name();
    let image = uuid();
    let base = d.create(&["--image", &image, "--size", "16M"]);
    let snap = d.create(&["--parent", &base]);
    let before = d.state();
    let volumes = format!("/v1/domains/{vg}/volumes");
    let huge = vec![b' '; 100 << 20];
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        (
            "POST",
            volumes.clone(),
            b"{\"image\": ".to_vec(),
            400,
            "bad_request",
        ),
        (
            "POST",
            volumes.clone(),
            json!({"image": image, "size": 1 << 20, "colour": "red"})
                .to_string()
                .into(),
            400,
            "bad_request",
        ),
        (
            "POST",
            volumes.clone(),
            json!({"image": uuid(), "size": "sixteen megabytes"})
                .to_string()
                .into(),
            400,
            "bad_request",
        ),
        ("POST", volumes.clone(), huge, 413, "body_too_large"),
        ("GET", "/v1/elsewhere".into(), vec![], 404, "unknown_path"),
        ("GET", "/../etc/passwd".into(), vec![], 404, "unknown_path"),
        (
            "DELETE",
            format!("{volumes}/{base}"),
            vec![],
            409,
            "not_a_leaf",
        ),
        (
            "DELETE",
            format!("{volumes}/{}", uuid()),
            vec![],
            404,
            "volume_not_found",
        ),
        (
            "POST",
            format!("{volumes}/{snap}/extend"),
            json!({"size": 1 << 20}).to_string().into(),
            400,
            "invalid_input",
        ),
        (
            "GET",
            "/v1/domains/notserved/volumes".into(),
            vec![],
            404,
            "domain_not_served",
        ),
    ];
    for (method, path, body, status, kind) in cases {
        let (st, e) = agent.call(method, &path, &body);
        assert_eq!(
            (st, e["kind"].as_str()),
            (status, Some(kind)),
            "{method} {path}: {e}"
        );
    }
    // A peer that is not root (the socket opened to everyone to reach the check) is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args([
            "curl",
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(&agent.socket)
        .args(["-X", "POST", "-d"])
        .arg(json!({"image": uuid(), "size": 1 << 20}).to_string())
        .arg(format!("http://agent{volumes}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\n403"),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("\"kind\":\"forbidden\""), "{text}");
    assert_eq!(d.state(), before, "a refused request changed the domain");
}

#[test]
fn lvm_agent_copy_runs_as_a_job() {
    if !lvm_available("lvm_agent_copy_runs_as_a_job") {
        return;
    }
    let d = Domain::new("agentcopy");
    let agent = Agent::start(&d, &["--gc-interval", "0"]);
    let vg = d.name();
    let image = uuid();
    let vol = d.create(&["--image", &image, "--size", "8M"]);
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let (_src_dir, src) = common::dir_file(&data);
    let job = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes/{vol}/copy"),
        json!({"generation": 0, "from_file": src}),
    );
    assert_eq!(job["state"], "running", "{job}");
    let id = job["id"].as_str().unwrap();
    let start = Instant::now();
    let done = loop {
        let j = agent.ok("GET", &format!("/v1/jobs/{id}"), json!({}));
        if j["state"] != "running" {
            break j;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{j}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["result"]["generation"], 1, "{done}");
    let mut info = d.json(&["volume", "info", vg, &vol]);
    assert_eq!(info["prepared_on"], json!([]));
    info.as_object_mut().unwrap().remove("prepared_on");
    assert_eq!(done["result"], info);
    assert_eq!(common::status(&d, &vol, 0)["state"], "succeeded");
    assert_eq!(common::read_volume(&d, &image, &vol, data.len()), data);
    // A failing copy is a failed job with the engine's error.
    let job = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes/{vol}/copy"),
        json!({"generation": 0, "from_file": src}),
    );
    let id = job["id"].as_str().unwrap();
    let failed = loop {
        let j = agent.ok("GET", &format!("/v1/jobs/{id}"), json!({}));
        if j["state"] != "running" {
            break j;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["error"]["kind"], "wrong_generation", "{failed}");
}

/// A qemu-img that copies at `rate` bytes per second (`convert -r`), the real one otherwise.
/// It copies one chunk at a time (`-m 1`): with several in flight, qemu-img counts a chunk
/// done when a coroutine takes it, and a small copy would show 100% at its start.
fn slowed_qemu_img(dir: &std::path::Path, rate: &str) -> PathBuf {
    let wrapper = dir.join("qemu-img");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = convert ]; then\n  shift\n  \
         exec /usr/bin/qemu-img convert -m 1 -r {rate} \"$@\"\nfi\nexec /usr/bin/qemu-img \"$@\"\n"
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    wrapper
}

/// Polls job `id` until it ends; the job as it ended, and every job view seen running.
fn follow_job(agent: &Agent, id: &str) -> (Value, Vec<Value>) {
    let start = Instant::now();
    let mut running = Vec::new();
    loop {
        let j = agent.ok("GET", &format!("/v1/jobs/{id}"), json!({}));
        if j["state"] != "running" {
            return (j, running);
        }
        running.push(j);
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{running:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn lvm_agent_copy_job_reports_progress_while_it_runs() {
    if !lvm_available("lvm_agent_copy_job_reports_progress_while_it_runs") {
        return;
    }
    let d = Domain::new("agentprog");
    let vg = d.name();
    // qemu-img copies 1 MiB/s: an 8 MiB copy runs for seconds.
    let slow = tempfile::tempdir().unwrap();
    let qemu_img = slowed_qemu_img(slow.path(), "1M");
    let agent = Agent::start_with_env(
        &d,
        &["--gc-interval", "0"],
        &[("LVCHAIN_QEMU_IMG", qemu_img.as_path())],
    );
    let image = uuid();
    let vol = d.create(&["--image", &image, "--size", "16M"]);
    let data: Vec<u8> = (0..(8u32 << 20)).map(|i| (i % 253) as u8 | 1).collect();
    let (_src_dir, src) = common::dir_file(&data);
    let job = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes/{vol}/copy"),
        json!({"generation": 0, "from_file": src}),
    );
    let (done, running) = follow_job(&agent, job["id"].as_str().unwrap());
    let percents: Vec<f64> = running
        .iter()
        .filter_map(|j| j["progress"]["percent"].as_f64())
        .collect();
    assert!(
        percents.iter().any(|p| *p > 0.0 && *p < 100.0),
        "no progress between 0 and 100 seen while running: {percents:?}"
    );
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {percents:?}"
    );
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["progress"]["percent"], 100.0, "{done}");
    assert_eq!(common::read_volume(&d, &image, &vol, data.len()), data);

    // A stream (a FIFO) has no total: its bytes count, and it is 100% when it ends.
    let (_fifo_dir, fifo) = common::make_fifo();
    let job = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes/{vol}/copy"),
        json!({"generation": 1, "from_file": fifo}),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    feed.write_all(&data[..1 << 20]).unwrap();
    let start = Instant::now();
    let midway = loop {
        let j = agent.ok("GET", &format!("/v1/jobs/{id}"), json!({}));
        if j["progress"]["bytes"] == (1 << 20) {
            break j;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(midway["state"], "running", "{midway}");
    assert_eq!(midway["progress"]["percent"], Value::Null, "{midway}");
    feed.write_all(&data[1 << 20..(3 << 20) / 2]).unwrap();
    drop(feed);
    let (done, _) = follow_job(&agent, &id);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["progress"],
        json!({"percent": 100.0, "bytes": (3 << 20) / 2}),
        "{done}"
    );
}

/// Holds the domain lock of `vg` as another lvchain process would, until dropped.
fn hold_domain_lock(vg: &str) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    std::fs::create_dir_all("/run/lock/lvchain").unwrap();
    let f = std::fs::File::create(format!("/run/lock/lvchain/{vg}.lock")).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

fn wait_for_gc(agent: &Agent, vg: &str, outcome: &str) -> Value {
    let start = Instant::now();
    loop {
        let s = agent.ok("GET", &format!("/v1/domains/{vg}/gc"), json!({}));
        if s["last"]["outcome"] == outcome {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "no gc run ended {outcome}: {s}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lvm_agent_periodic_gc_waits_out_a_busy_lock_then_collects() {
    if !lvm_available("lvm_agent_periodic_gc_waits_out_a_busy_lock_then_collects") {
        return;
    }
    let d = Domain::new("agentgc");
    let vg = d.name();
    let image = uuid();
    let f = d.run_env(
        &["volume", "create", vg, "--image", &image, "--size", "8M"],
        &[("LVCHAIN_CRASH_AT", "create.after-lvcreate")],
    );
    assert!(!f.success());
    let lock = hold_domain_lock(vg);
    let agent = Agent::start(&d, &["--gc-interval", "1"]);
    let busy = wait_for_gc(&agent, vg, "busy");
    assert_eq!(busy["last"]["trigger"], "periodic", "{busy}");
    assert_eq!(busy["last"]["error"]["kind"], "busy", "{busy}");
    assert!(
        d.state().contains("LVC_CREATING"),
        "gc ran under a held lock"
    );
    drop(lock);
    let done = wait_for_gc(&agent, vg, "collected");
    let orphans = done["last"]["report"]["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 1, "{done}");
    assert_eq!(orphans[0]["marker"], "LVC_CREATING", "{done}");
    assert_eq!(d.json(&["domain", "check", vg])["clean"], true);
    let (_, metrics) = agent.call("GET", "/metrics", b"");
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains(&format!(
            "lvchain_gc_runs_total{{domain=\"{vg}\",outcome=\"busy\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("lvchain_gc_orphans_total{{domain=\"{vg}\"}} 1")),
        "{metrics}"
    );
}

#[test]
fn lvm_agent_sigterm_fails_work_past_the_bound_and_removes_the_socket() {
    if !lvm_available("lvm_agent_sigterm_fails_work_past_the_bound_and_removes_the_socket") {
        return;
    }
    let d = Domain::new("agentterm");
    let vg = d.name();
    let image = uuid();
    let vol = d.create(&["--image", &image, "--size", "8M"]);
    let mut agent = Agent::start(&d, &["--gc-interval", "0", "--shutdown-timeout", "2"]);
    // A copy from a FIFO that gets some data and then nothing more: in flight until the
    // agent ends.
    let (_fifo_dir, fifo) = common::make_fifo();
    let job = agent.ok(
        "POST",
        &format!("/v1/domains/{vg}/volumes/{vol}/copy"),
        json!({"generation": 0, "from_file": fifo}),
    );
    assert_eq!(job["state"], "running");
    let mut feed = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    feed.write_all(&[7u8; 64 << 10]).unwrap();
    let running = common::wait_for_state(&d, &vol, 0, "running");
    assert_eq!(running["state"], "running", "{running}");
    let start = Instant::now();
    agent.signal(libc::SIGTERM);
    assert_eq!(
        agent.wait(Duration::from_secs(20)),
        Some(0),
        "{}",
        agent.log()
    );
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the shutdown bound was not kept: {:?}",
        start.elapsed()
    );
    assert!(!agent.socket.exists(), "the socket is left behind");
    drop(feed);
    // The copy ended with the agent: shared storage says so, and gc has nothing to do.
    assert_eq!(common::status(&d, &vol, 0)["state"], "failed");
    assert_eq!(d.json(&["gc", vg])["orphans"], json!([]));
    // An idle agent ends at once on SIGTERM, also removing its socket.
    let mut idle = Agent::start(&d, &["--gc-interval", "0"]);
    idle.signal(libc::SIGTERM);
    assert_eq!(
        idle.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        idle.log()
    );
    assert!(!idle.socket.exists());
}
