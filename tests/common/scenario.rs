//! The end-to-end scenario, one body for both kinds of domain (block: a VG on real LVM; file: a
//! directory): a raw base and three qcow2 snapshots, prepare, write, read through the chain,
//! remove the leaf, copy into the new leaf with its status, a fence, recovery, image removal.
//! `run` runs lvchain with the domain's environment: (exit code, stdout, stderr).
#![allow(dead_code, clippy::unwrap_used)]

use serde_json::Value;

pub type Run<'a> = &'a dyn Fn(&[&str]) -> (Option<i32>, String, String);

fn ok(run: Run<'_>, args: &[&str]) -> String {
    let (code, out, err) = run(args);
    assert_eq!(code, Some(0), "lvchain {args:?}: {err}");
    out
}

fn json(run: Run<'_>, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    serde_json::from_str(&ok(run, &a)).unwrap()
}

fn qemu_io(path: &str, cmd: &str) {
    let o = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd, path])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !out.contains("failed"),
        "qemu-io {cmd} {path}: {out}"
    );
}

/// Runs the scenario on the domain `name`; `scratch` is a directory for a copy source.
pub fn end_to_end(name: &str, scratch: &std::path::Path, run: Run<'_>) {
    let img = uuid::Uuid::new_v4().to_string();
    let id = |v: Value| v["id"].as_str().unwrap().to_string();
    let base = id(json(
        run,
        &[
            "volume", "create", name, "--image", &img, "--size", "16M", "--format", "raw",
        ],
    ));
    let mut chain = vec![base];
    for _ in 0..3 {
        let leaf = chain.last().unwrap().clone();
        chain.push(id(json(
            run,
            &["volume", "create", name, "--parent", &leaf],
        )));
    }
    let prepared = json(run, &["image", "prepare", name, &img]);
    let leaf = prepared["leaf"].as_str().unwrap().to_string();
    assert!(leaf.ends_with(chain.last().unwrap()), "{prepared}");
    assert_eq!(prepared["volumes"].as_array().unwrap().len(), 4);
    qemu_io(&leaf, "write -P 0x5a 1M 64k");
    qemu_io(&leaf, "read -P 0x5a 1M 64k");
    qemu_io(&leaf, "read -P 0 0 64k");
    ok(run, &["image", "teardown", name, &img]);
    // Remove the leaf: the one before is the leaf again.
    ok(run, &["volume", "remove", name, chain.last().unwrap()]);
    chain.pop();
    let now = json(run, &["image", "chain", name, &img]);
    let ids: Vec<&str> = now
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, chain.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(now[2]["role"], "leaf");
    // A copy under the lease/generation protocol, its status, a fence, recovery.
    let leaf_id = chain.last().unwrap().clone();
    let src = scratch.join(format!("src-{img}"));
    std::fs::write(&src, vec![0x77u8; 1 << 20]).unwrap();
    let src = src.display().to_string();
    let v = json(
        run,
        &[
            "volume",
            "copy",
            name,
            &leaf_id,
            "--from",
            &src,
            "--generation",
            "0",
        ],
    );
    assert_eq!(
        (v["generation"].as_u64(), v["legality"].as_str()),
        (Some(1), Some("legal"))
    );
    let st = json(
        run,
        &["volume", "status", name, &leaf_id, "--generation", "0"],
    );
    assert_eq!(st["state"], "succeeded", "{st}");
    let v = json(
        run,
        &["volume", "fence", name, &leaf_id, "--generation", "1"],
    );
    assert_eq!(v["generation"], 4);
    let st = json(
        run,
        &["volume", "status", name, &leaf_id, "--generation", "1"],
    );
    assert_eq!(st["state"], "fenced", "{st}");
    let (code, _, _) = run(&["domain", "check", name]);
    assert_eq!(code, Some(1), "an illegal volume is a problem");
    ok(
        run,
        &[
            "volume",
            "update",
            name,
            &leaf_id,
            "--generation",
            "4",
            "--legality",
            "legal",
        ],
    );
    let prepared = json(run, &["image", "prepare", name, &img]);
    let leaf = prepared["leaf"].as_str().unwrap().to_string();
    qemu_io(&leaf, "read -P 0x77 0 1M");
    ok(run, &["image", "teardown", name, &img]);
    ok(run, &["domain", "check", name]);
    ok(run, &["image", "remove", name, &img]);
    assert_eq!(
        json(run, &["volume", "list", name])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    ok(run, &["domain", "check", name]);
}
