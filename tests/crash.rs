//! Crash consistency on real LVM (issue 4's "Must show"): a crash at every step boundary of
//! create, remove, extend and gc; kill -9 at random moments; concurrent writers with a
//! collector running in a loop. After each, `domain check` reports the damage, `gc` repairs it,
//! and the committed volumes, their chain and their data are intact.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check, hold_local_lease, lvm_available, qemu_io, uuid, Domain, BIN};
use lvchain::exec::Cmd;
use serde_json::Value;
use std::time::Duration;

/// An image with a raw base, one qcow2 snapshot and a qcow2 leaf, prepared, with known data.
struct Fixture {
    d: Domain,
    img: String,
    chain: Vec<String>,
}

impl Fixture {
    fn new(test: &str) -> Fixture {
        let d = Domain::new(test);
        let img = uuid();
        let base = d.create(&["--image", &img, "--size", "16M", "--format", "raw"]);
        d.ok(&["image", "prepare", d.name(), &img]);
        let mut f = Fixture {
            d,
            img,
            chain: vec![base],
        };
        for _ in 0..2 {
            let leaf = f.d.create(&["--parent", f.leaf()]);
            f.chain.push(leaf);
        }
        f.io("write -P 0x5a 1M 64k");
        f
    }

    fn leaf(&self) -> &str {
        self.chain.last().unwrap()
    }

    fn link(&self, id: &str) -> String {
        format!("/run/lvchain/{}/{}/{id}", self.d.name(), self.img)
    }

    fn io(&self, cmd: &str) {
        let fmt = if self.chain.len() == 1 {
            "raw"
        } else {
            "qcow2"
        };
        qemu_io(&self.link(self.leaf()), fmt, cmd);
    }

    /// gc, then: check clean, no marker anywhere, the expected chain with one leaf, data intact.
    fn repair_and_verify(&self, what: &str) {
        self.d.ok(&["gc", self.d.name()]);
        self.verify(what);
    }

    /// Check clean, no marker anywhere, the expected chain with one leaf, data intact.
    fn verify(&self, what: &str) {
        let (clean, report) = check(&self.d);
        assert!(clean, "{what}: not clean after gc: {report}");
        for row in self.d.vg.lvm.lvs(self.d.name()).unwrap() {
            assert!(
                !row.lv_tags
                    .iter()
                    .any(|t| t == "LVC_CREATING" || t == "LVC_REMOVING"),
                "{what}: marker left on {}",
                row.lv_name
            );
        }
        let chain = self.d.json(&["image", "chain", self.d.name(), &self.img]);
        self.verify_chain(what, &chain);
    }

    /// The chain is the expected one, ends in its only leaf, and the data reads back.
    fn verify_chain(&self, what: &str, chain: &Value) {
        self.verify_roles(what, chain);
        if self.chain.len() > 2 {
            self.io("read -P 0x5a 1M 64k");
        }
    }

    /// The chain is the expected one and ends in its only leaf.
    fn verify_roles(&self, what: &str, chain: &Value) {
        let ids: Vec<&str> = chain
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, self.chain, "{what}: chain");
        let roles: Vec<&str> = chain
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles.last(), Some(&"leaf"), "{what}");
        assert_eq!(
            roles.iter().filter(|r| **r == "leaf").count(),
            1,
            "{what}: one leaf"
        );
    }

    /// Re-reads the chain after an operation that may or may not have committed.
    fn resync(&mut self) -> Value {
        let chain = self.d.json(&["image", "chain", self.d.name(), &self.img]);
        self.chain = chain
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        chain
    }

    /// Every crash point of one operation, as the binary lists them (so none is left out).
    fn points(&self, prefix: &str) -> Vec<String> {
        let all = self.d.json(&["debug", "crash-points"]);
        let points: Vec<String> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .filter(|p| p.starts_with(prefix))
            .collect();
        assert!(!points.is_empty(), "no crash points for {prefix}");
        points
    }

    /// Creates a snapshot of the leaf with the given id, crashing at `point`.
    fn crash_create(&self, id: &str, point: &str) {
        let args = [
            "volume",
            "create",
            self.d.name(),
            "--parent",
            self.leaf(),
            "--id",
            id,
        ];
        self.crash(&args, point);
    }

    fn crash(&self, args: &[&str], point: &str) {
        let f = self.d.run_env(args, &[("LVCHAIN_CRASH_AT", point)]);
        assert_eq!(f.signal, Some(libc::SIGABRT), "{point}: must abort: {f:?}");
    }
}

#[test]
fn lvm_every_create_crash_point_is_reported_and_repaired() {
    if !lvm_available("crashcreate") {
        return;
    }
    let mut f = Fixture::new("crashcreate");
    for point in f.points("create.") {
        let point = point.as_str();
        let id = uuid();
        f.crash_create(&id, point);
        let (clean, report) = check(&f.d);
        if point == "create.after-commit" {
            assert!(
                clean,
                "{point}: the commit happened, check must be clean: {report}"
            );
            f.chain.push(id.clone());
        } else {
            assert!(!clean, "{point}: check must report the orphan");
            assert!(report.to_string().contains(&id), "{point}: {report}");
        }
        // Before gc, readers see the committed chain, with its one leaf and its data.
        let chain = f.d.json(&["image", "chain", f.d.name(), &f.img]);
        f.verify_chain(&format!("{point} before gc"), &chain);
        f.repair_and_verify(point);
        // The same operation retried succeeds.
        let again = f.d.create(&["--parent", f.leaf()]);
        f.chain.push(again);
        f.repair_and_verify(&format!("{point} retry"));
    }
}

#[test]
fn lvm_every_remove_crash_point_is_reported_and_repaired() {
    if !lvm_available("crashremove") {
        return;
    }
    let mut f = Fixture::new("crashremove");
    for point in f.points("remove.") {
        let point = point.as_str();
        let extra = f.d.create(&["--parent", f.leaf()]);
        f.chain.push(extra.clone());
        f.crash(&["volume", "remove", f.d.name(), &extra], point);
        let (clean, report) = check(&f.d);
        if point == "remove.after-lvremove" {
            assert!(clean, "{point}: {report}");
        } else {
            assert!(!clean, "{point}: check must report the orphan: {report}");
        }
        f.chain.pop();
        let chain = f.d.json(&["image", "chain", f.d.name(), &f.img]);
        f.verify_chain(&format!("{point} before gc"), &chain);
        f.repair_and_verify(point);
        // Retry: remove a new leaf.
        let leaf = f.d.create(&["--parent", f.leaf()]);
        f.d.ok(&["volume", "remove", f.d.name(), &leaf]);
        f.repair_and_verify(&format!("{point} retry"));
    }
}

#[test]
fn lvm_every_extend_crash_point_leaves_a_consistent_volume_and_retry_finishes() {
    if !lvm_available("crashextend") {
        return;
    }
    let f = Fixture::new("crashextend");
    for (i, point) in f.points("extend.").iter().enumerate() {
        let point = point.as_str();
        let size = format!("{}M", 32 + 16 * i);
        f.crash(
            &["volume", "extend", f.d.name(), f.leaf(), "--size", &size],
            point,
        );
        f.repair_and_verify(point);
        let v =
            f.d.json(&["volume", "extend", f.d.name(), f.leaf(), "--size", &size]);
        assert_eq!(
            v["capacity"].as_u64(),
            Some((32 + 16 * i as u64) << 20),
            "{point}"
        );
        f.repair_and_verify(&format!("{point} retry"));
    }
}

#[test]
fn lvm_a_collector_that_crashes_at_every_point_is_finished_by_the_next_run() {
    if !lvm_available("crashgc") {
        return;
    }
    let f = Fixture::new("crashgc");
    for point in f.points("gc.") {
        let point = point.as_str();
        let id = uuid();
        f.crash_create(&id, "create.after-links");
        let dry = f.d.json(&["gc", f.d.name(), "--dry-run"]);
        assert_eq!(dry["orphans"].as_array().unwrap().len(), 1, "{dry}");
        assert!(f.d.lv_tags(&id).is_some(), "dry run changed nothing");
        f.crash(&["gc", f.d.name()], point);
        f.repair_and_verify(point);
        assert!(f.d.lv_tags(&id).is_none(), "{point}: orphan gone");
    }
}

#[test]
fn lvm_a_collector_that_crashes_while_completing_a_removal_is_finished_by_the_next_run() {
    if !lvm_available("crashgcremove") {
        return;
    }
    let f = Fixture::new("crashgcremove");
    for point in f.points("gc.") {
        let point = point.as_str();
        // A removal that died at its mark: gc completes it (wipe included).
        let extra = f.d.create(&["--parent", f.leaf()]);
        f.crash(
            &["volume", "remove", f.d.name(), &extra],
            "remove.after-mark",
        );
        let dry = f.d.json(&["gc", f.d.name(), "--dry-run"]);
        assert!(dry.to_string().contains("wipe"), "{dry}");
        f.crash(&["gc", f.d.name()], point);
        f.repair_and_verify(point);
        assert!(f.d.lv_tags(&extra).is_none(), "{point}: orphan gone");
    }
}

#[test]
fn lvm_kill_9_at_random_moments_fifty_times() {
    if !lvm_available("kill9") {
        return;
    }
    let mut f = Fixture::new("kill9");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id());
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut killed_before_commit = 0;
    for round in 0..50 {
        let removing = f.chain.len() > 3 && round % 2 == 1;
        let leaf = f.leaf().to_string();
        let args: Vec<String> = if removing {
            vec!["volume".into(), "remove".into(), f.d.name().into(), leaf]
        } else {
            vec![
                "volume".into(),
                "create".into(),
                f.d.name().into(),
                "--parent".into(),
                leaf,
            ]
        };
        let mut c = std::process::Command::new(BIN.as_str());
        c.args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in f.d.vg.env() {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(next() % 1600));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            killed_before_commit += 1;
        }
        // gc waits for the lock: the killed process's lvm child may still be finishing.
        f.d.ok(&["gc", f.d.name()]);
        // Clean (no orphan, i.e. no marker left, every chain sound), then chain and data.
        let (clean, report) = check(&f.d);
        assert!(clean, "round {round}: not clean after gc: {report}");
        let chain = f.resync();
        // The chain every round; its data (a read through the whole chain) every tenth round
        // and after the last: damage to data stays, so it is found at the next read.
        if round % 10 == 9 {
            f.verify_chain(&format!("round {round}"), &chain);
        } else {
            f.verify_roles(&format!("round {round}"), &chain);
        }
    }
    assert!(
        killed_before_commit > 10,
        "the kills must land inside operations ({killed_before_commit})"
    );
}

#[test]
fn lvm_concurrent_writers_and_a_collector_never_corrupt_the_domain() {
    if !lvm_available("concurrent") {
        return;
    }
    let d = std::sync::Arc::new(Domain::new("concurrent"));
    let rounds = 6;
    let mut workers = Vec::new();
    for w in 0..2 {
        let d = d.clone();
        workers.push(std::thread::spawn(move || {
            let img = uuid();
            let base = d.create(&["--image", &img, "--size", "8M", "--format", "qcow2"]);
            let mut chain = vec![base];
            for r in 0..rounds {
                let leaf = d.create(&[
                    "--parent",
                    chain.last().unwrap(),
                    "--description",
                    &format!("w{w} r{r}"),
                ]);
                chain.push(leaf);
                if r % 3 == 2 {
                    d.ok(&["volume", "remove", d.name(), &chain.pop().unwrap()]);
                }
            }
            (img, chain)
        }));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (d, stop) = (d.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut runs = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let v = d.json(&["gc", d.name()]);
                assert_eq!(
                    v["orphans"].as_array().unwrap().len(),
                    0,
                    "gc found a live operation's LV: {v}"
                );
                runs += 1;
            }
            runs
        })
    };
    let results: Vec<(String, Vec<String>)> =
        workers.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let runs = collector.join().unwrap();
    assert!(runs > 0);
    d.ok(&["gc", d.name()]);
    let (clean, report) = check(&d);
    assert!(clean, "check: {report}");
    let list = d.json(&["volume", "list", d.name()]);
    let mut slots: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["slot"].as_u64().unwrap())
        .collect();
    let n = slots.len();
    slots.sort();
    slots.dedup();
    assert_eq!(slots.len(), n, "no slot given twice");
    for (img, chain) in results {
        let got = d.json(&["image", "chain", d.name(), &img]);
        let ids: Vec<&str> = got
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, chain, "no committed volume lost in image {img}");
    }
}

impl Fixture {
    /// Marks chain members (by index) LVC_REMOVING with one raw lvchange each, as a multi-LV
    /// `lvchange` that lvm committed only partly would leave them.
    fn mark_removing(&self, members: &[usize]) {
        for &i in members {
            self.d
                .vg
                .lvm
                .lvchange_tags(self.d.name(), &self.chain[i], &[], &["LVC_REMOVING".into()])
                .unwrap();
        }
    }
}

#[test]
fn lvm_gc_restores_marked_volumes_that_a_committed_volume_still_needs() {
    if !lvm_available("restore") {
        return;
    }
    let mut f = Fixture::new("restore");
    // An image removal whose mark reached the base and the middle, not the leaf.
    f.mark_removing(&[0, 1]);
    let (clean, report) = check(&f.d);
    assert!(!clean, "check reports the marked LVs: {report}");
    let dry = f.d.json(&["gc", f.d.name(), "--dry-run"]);
    let orphans = dry["orphans"].as_array().unwrap();
    assert_eq!(orphans.len(), 2, "{dry}");
    assert!(dry.to_string().contains("restore"), "{dry}");
    let r = f.d.json(&["gc", f.d.name()]);
    assert!(r.to_string().contains("marker removed"), "{r}");
    f.verify("base and middle restored");
    // The mark reached the base and the leaf: the leaf's removal is completed (its parent is
    // the leaf again), the base stays under the committed middle.
    f.mark_removing(&[0, 2]);
    f.d.ok(&["gc", f.d.name()]);
    f.chain.pop();
    f.verify("base restored, leaf removed");
}

#[test]
fn lvm_busy_leases_refuse_cleanly_and_gc_waits_for_a_removed_volumes_lease() {
    if !lvm_available("busylease") {
        return;
    }
    let mut f = Fixture::new("busylease");
    let (parent, leaf) = (f.chain[1].clone(), f.leaf().to_string());
    let before = f.d.state();
    {
        // An operation on the parent: removing its child would have to make it a leaf.
        let _op = hold_local_lease(&f.d, &parent);
        let e = f.d.fails(&["volume", "remove", f.d.name(), &leaf]);
        assert!(e.contains("held"), "{e}");
        assert_eq!(f.d.state(), before, "a refused removal changes nothing");
    }
    {
        // An operation on the leaf: a snapshot of it fails at the parent update and rolls
        // back without needing the lease it could not get.
        let _op = hold_local_lease(&f.d, &leaf);
        let e =
            f.d.fails(&["volume", "create", f.d.name(), "--parent", &leaf]);
        assert!(
            e.contains("held") && !e.contains("rolling back also failed"),
            "{e}"
        );
        assert_eq!(f.d.state(), before, "a failed create leaves nothing");
    }
    // A removal that died; an operation that started before it still holds the lease.
    f.crash(
        &["volume", "remove", f.d.name(), &leaf],
        "remove.after-mark",
    );
    {
        let _late = hold_local_lease(&f.d, &leaf);
        let r = f.d.run(&["gc", f.d.name(), "--json"]);
        assert_eq!(
            r.code,
            Some(1),
            "gc reports the orphan it could not take: {r:?}"
        );
        assert!(r.stdout.contains("held"), "{}", r.stdout);
        assert!(
            f.d.lv_tags(&leaf).is_some(),
            "the orphan waits for its lease"
        );
    }
    f.chain.pop();
    f.repair_and_verify("removal finished once the lease is free");
}

#[test]
fn lvm_gc_clears_a_stale_mapping_left_by_an_orphan() {
    if !lvm_available("stalemap") {
        return;
    }
    let d = Domain::new("stalemap");
    let (img, id) = (uuid(), uuid());
    let create = [
        "volume",
        "create",
        d.name(),
        "--image",
        &img,
        "--size",
        "8M",
        "--format",
        "raw",
        "--id",
        &id,
    ];
    // A raw base of an image that is not prepared stays inactive: crash right after lvcreate.
    let f = d.run_env(&create, &[("LVCHAIN_CRASH_AT", "create.after-lvcreate")]);
    assert_eq!(f.signal, Some(libc::SIGABRT), "{f:?}");
    // A failed deactivation left a mapping by the LV's name that lvm does not know.
    let dm = format!("{}-{}", d.name().replace('-', "--"), id.replace('-', "--"));
    let dmsetup = |args: &[&str]| {
        Cmd::new("/sbin/dmsetup", Duration::from_secs(60))
            .args(args.iter().copied())
            .run()
            .unwrap()
    };
    let made = dmsetup(&["create", "--noudevsync", &dm, "--table", "0 16384 zero"]);
    assert!(made.success(), "{made:?}");
    let r = d.json(&["gc", d.name()]);
    assert!(
        r.to_string()
            .contains("stale device-mapper mapping removed"),
        "{r}"
    );
    assert!(!dmsetup(&["info", &dm]).success(), "the mapping is gone");
    // The same volume, created again, activates under its name.
    d.create(&create[3..]);
    d.ok(&["image", "prepare", d.name(), &img]);
    let link = format!("/run/lvchain/{}/{img}/{id}", d.name());
    assert!(std::path::Path::new(&link).exists(), "{link}");
    d.ok(&["image", "teardown", d.name(), &img]);
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
}

/// The crash points of an operation under the lease/generation protocol (`op.`), for a copy
/// and an update: the status each leaves, the lease free, the retry at the right generation,
/// and the data (or description) read back.
#[test]
fn lvm_every_operation_crash_point_leaves_the_right_status_and_a_retry_succeeds() {
    if !lvm_available("crashop") {
        return;
    }
    let d = Domain::new("crashop");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "4M", "--format", "raw"]);
    let all = d.json(&["debug", "crash-points"]);
    let points: Vec<String> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .filter(|p| p.starts_with("op."))
        .collect();
    assert_eq!(
        points,
        ["op.after-illegal", "op.after-work", "op.after-legal"],
        "every op. point is covered here"
    );
    let dir = tempfile::tempdir().unwrap();
    let generation = |d: &Domain| {
        d.json(&["volume", "info", d.name(), &vol])["generation"]
            .as_u64()
            .unwrap()
    };
    let read_back = |d: &Domain| {
        d.ok(&["image", "prepare", d.name(), &img]);
        let data = std::fs::read(format!("/run/lvchain/{}/{img}/{vol}", d.name())).unwrap();
        d.ok(&["image", "teardown", d.name(), &img]);
        data
    };
    for (round, point) in points.iter().enumerate() {
        let point = point.as_str();
        let committed = point == "op.after-legal";
        for copy in [true, false] {
            let what = format!("{point} {}", if copy { "copy" } else { "update" });
            // Distinct data (or description) per round, so the retry's result is its own.
            let byte = 0x10 + (round as u8) * 2 + u8::from(copy);
            let file = dir.path().join(format!("data{byte}"));
            std::fs::write(&file, vec![byte; 4 << 20]).unwrap();
            let description = format!("round {byte}");
            let args = |g: u64| -> Vec<String> {
                let mut a: Vec<String> = vec!["volume".into()];
                if copy {
                    a.extend(["copy".into(), d.name().into(), vol.clone()]);
                    a.extend(["--from".into(), file.display().to_string()]);
                } else {
                    a.extend(["update".into(), d.name().into(), vol.clone()]);
                    a.extend(["--description".into(), description.clone()]);
                }
                a.extend(["--generation".into(), g.to_string()]);
                a
            };
            let g = generation(&d);
            let crash_args = args(g);
            let a: Vec<&str> = crash_args.iter().map(String::as_str).collect();
            let f = d.run_env(&a, &[("LVCHAIN_CRASH_AT", point)]);
            assert_eq!(f.signal, Some(libc::SIGABRT), "{what}: must abort: {f:?}");

            let s = common::status(&d, &vol, g);
            if committed {
                assert_eq!(s["state"], "succeeded", "{what}: {s}");
                assert_eq!(s["current_generation"], g + 1, "{what}: {s}");
                assert_eq!(s["legality"], "legal", "{what}: {s}");
            } else {
                assert_eq!(s["state"], "failed", "{what}: {s}");
                assert_eq!(s["current_generation"], g, "{what}: {s}");
                assert_eq!(s["legality"], "illegal", "{what}: {s}");
            }
            assert!(
                s["host_id"].is_null(),
                "{what}: nobody holds the lease: {s}"
            );
            // The lease is free: another holder takes it at once.
            drop(hold_local_lease(&d, &vol));

            // The operation run again at the generation the volume is at now.
            let retry_at = if committed { g + 1 } else { g };
            let retry_args = args(retry_at);
            let a: Vec<&str> = retry_args.iter().map(String::as_str).collect();
            let v: Value = serde_json::from_str(&d.ok(&[&a[..], &["--json"]].concat())).unwrap();
            assert_eq!(v["generation"], retry_at + 1, "{what}: {v}");
            assert_eq!(v["legality"], "legal", "{what}: {v}");
            let s = common::status(&d, &vol, retry_at);
            assert_eq!(s["state"], "succeeded", "{what} retry: {s}");
            if copy {
                let data = read_back(&d);
                assert_eq!(data.len(), 4 << 20, "{what}");
                assert!(
                    data.iter().all(|&b| b == byte),
                    "{what}: the data reads back"
                );
            } else {
                let info = d.json(&["volume", "info", d.name(), &vol]);
                assert_eq!(info["description"], description.as_str(), "{what}: {info}");
            }
            let (clean, report) = check(&d);
            assert!(clean, "{what}: clean after the retry: {report}");
        }
    }
}
