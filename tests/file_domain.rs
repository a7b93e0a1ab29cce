//! File domains on the host (no device-mapper, no root): the `lvchain` binary driven on a
//! directory of the host's file system. Chains, removal, gc and check; bad input changes
//! nothing; the crash matrix over every crash point of create, remove, gc, extend and the
//! operations; random `kill -9` of lvchain mid-create and mid-remove. After every crash, gc
//! returns the domain to clean and the committed data reads back intact through the chain.
//!
//! The domains live in temporary directories under `$LVCHAIN_FILE_DOMAIN_ROOT` (default: the
//! system's temporary directory); `$LVCHAIN_FILE_DOMAIN_FS` names the file system type (as
//! `stat -f -c %T` prints it, e.g. `nfs`) that directory must be on: `scripts/vm-nfs` sets both
//! to run this suite on an NFS mount, and every domain checks it really is there.
#![allow(clippy::unwrap_used)]

#[path = "common/scenario.rs"]
mod scenario;

use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> String {
    std::env::var("LVCHAIN_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lvchain").to_string())
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The pattern the base volume holds at offset 1 MiB (committed data, read back after crashes).
const PATTERN_AT: usize = 1 << 20;
fn pattern() -> Vec<u8> {
    (0..65536u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// A temporary directory under `$LVCHAIN_FILE_DOMAIN_ROOT`, on the file system type
/// `$LVCHAIN_FILE_DOMAIN_FS` names when it is set (asserted).
fn domain_tmp() -> tempfile::TempDir {
    let tmp = match std::env::var_os("LVCHAIN_FILE_DOMAIN_ROOT") {
        Some(root) => tempfile::tempdir_in(root).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    if let Ok(want) = std::env::var("LVCHAIN_FILE_DOMAIN_FS") {
        let o = Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(tmp.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "stat -f {}", tmp.path().display());
        let got = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert_eq!(
            got,
            want,
            "{} is on {got}, not on {want}",
            tmp.path().display()
        );
    }
    tmp
}

/// A file domain in a temporary directory, driven through the binary.
struct Fd {
    _tmp: tempfile::TempDir,
    path: String,
}

impl Fd {
    fn new() -> Fd {
        Fd::new_with(&[])
    }

    /// A domain formatted with the extra `domain create` arguments `args`.
    fn new_with(args: &[&str]) -> Fd {
        let tmp = domain_tmp();
        let path = tmp.path().join("dom").display().to_string();
        std::fs::create_dir(&path).unwrap();
        let d = Fd { _tmp: tmp, path };
        let mut a = vec!["domain", "create", "--path", &d.path];
        a.extend_from_slice(args);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        d.ok(&a);
        d
    }

    /// The domain id its record holds.
    fn id(&self) -> String {
        std::fs::read_to_string(Path::new(&self.path).join("dom_md/metadata"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("ID="))
            .unwrap()
            .to_string()
    }

    fn cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.arg("--direct").args(args);
        c.env_remove("LVCHAIN_CRASH_AT");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args, &[])
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "lvchain {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn create(&self, args: &[&str]) -> String {
        let mut a = vec!["volume", "create", &self.path];
        a.extend_from_slice(args);
        self.json(&a)["id"].as_str().unwrap().to_string()
    }

    fn image_dir(&self, img: &str) -> PathBuf {
        Path::new(&self.path).join("images").join(img)
    }

    /// The chain as `(id, role)`, base first.
    fn chain(&self, img: &str) -> Vec<(String, String)> {
        self.json(&["image", "chain", &self.path, img])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["id"].as_str().unwrap().to_string(),
                    v["role"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn check_clean(&self) {
        let o = self.run(&["--json", "domain", "check", &self.path]);
        assert!(
            o.status.success(),
            "domain not clean: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }

    fn gc(&self) -> Value {
        self.json(&["gc", &self.path])
    }

    /// Every file under the domain with a digest of its contents (the "nothing changed" proof).
    fn listing(&self) -> BTreeMap<String, u32> {
        let mut out = BTreeMap::new();
        let mut stack = vec![PathBuf::from(&self.path)];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(&self.path).unwrap().display().to_string();
                if p.is_dir() {
                    out.insert(format!("{rel}/"), 0);
                    stack.push(p);
                } else {
                    out.insert(rel, crc32fast::hash(&std::fs::read(&p).unwrap()));
                }
            }
        }
        out
    }

    /// Reads the pattern back through the chain ending at `leaf` (qemu-img follows the
    /// relative backing files of the image directory).
    fn read_through(&self, img: &str, leaf: &str) -> Vec<u8> {
        let out = self._tmp.path().join(format!("read-{}", uuid()));
        let src = self.image_dir(img).join(leaf);
        let o = Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(&src)
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        data[PATTERN_AT..PATTERN_AT + pattern().len()].to_vec()
    }

    /// A base volume holding the pattern, and `n` snapshots; the image and the chain's ids.
    fn image_with(&self, n: usize) -> (String, Vec<String>) {
        let img = uuid();
        let base = self.create(&["--image", &img, "--size", "4M"]);
        let data = self.image_dir(&img).join(&base);
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[PATTERN_AT..PATTERN_AT + pattern().len()].copy_from_slice(&pattern());
        std::fs::write(&data, bytes).unwrap();
        let mut ids = vec![base];
        for _ in 0..n {
            let leaf = ids.last().unwrap().clone();
            ids.push(self.create(&["--parent", &leaf]));
        }
        (img, ids)
    }

    /// The chain is the committed `ids`, one leaf at the end, the data intact through it.
    fn assert_intact(&self, img: &str, ids: &[String]) {
        let chain = self.chain(img);
        let got: Vec<&String> = chain.iter().map(|(id, _)| id).collect();
        assert_eq!(got, ids.iter().collect::<Vec<_>>(), "chain of {img}");
        for (i, (_, role)) in chain.iter().enumerate() {
            let want = if i + 1 == chain.len() {
                "leaf"
            } else {
                "internal"
            };
            assert_eq!(role, want, "role of member {i}");
        }
        assert_eq!(self.read_through(img, ids.last().unwrap()), pattern());
    }
}

fn crashed(o: &Output) -> bool {
    o.status.signal() == Some(libc::SIGABRT)
}

#[test]
fn file_chain_snapshots_remove_gc_check() {
    let d = Fd::new();
    let (img, ids) = d.image_with(3);
    d.assert_intact(&img, &ids);
    let dir = d.image_dir(&img);
    // The layout: data, metadata in the slot codec, qcow2 backing files by bare id.
    for (i, id) in ids.iter().enumerate() {
        assert!(dir.join(id).is_file());
        let meta = std::fs::read_to_string(dir.join(format!("{id}.meta"))).unwrap();
        assert!(
            meta.starts_with("LVC_META=2\n") && meta.contains("\nCHECKSUM="),
            "{meta}"
        );
        if i > 0 {
            assert!(meta.contains(&format!("PARENT={}\n", ids[i - 1])));
            let info = Command::new("qemu-img")
                .args(["info", "--output", "json"])
                .arg(dir.join(id))
                .output()
                .unwrap();
            let info: Value = serde_json::from_slice(&info.stdout).unwrap();
            assert_eq!(info["backing-filename"], ids[i - 1].as_str());
        }
    }
    for f in ["metadata", "ids", "leases"] {
        assert!(Path::new(&d.path).join("dom_md").join(f).is_file());
    }
    d.check_clean();
    // Only a leaf goes; its parent becomes the leaf.
    let o = d.run(&["volume", "remove", &d.path, &ids[1]]);
    assert_eq!(o.status.code(), Some(1));
    d.ok(&["volume", "remove", &d.path, &ids[3]]);
    assert!(!dir.join(&ids[3]).exists());
    assert!(!dir.join(format!("{}.meta", ids[3])).exists());
    d.assert_intact(&img, &ids[..3]);
    d.check_clean();
    assert_eq!(d.gc()["orphans"].as_array().unwrap().len(), 0);
    // Listing and info read the same volumes.
    let list = d.json(&["volume", "list", &d.path]);
    assert_eq!(list.as_array().unwrap().len(), 3);
    let info = d.json(&["domain", "info", &d.path]);
    assert_eq!(info["volumes"], 3, "{info}");
    d.ok(&["image", "remove", &d.path, &img]);
    assert!(!dir.exists());
    d.check_clean();
    d.ok(&["domain", "remove", &d.path]);
    assert!(!Path::new(&d.path).join("dom_md").exists());
}

#[test]
fn file_operations_copy_update_extend_status_fence() {
    let d = Fd::new();
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "4M"]);
    let src = d._tmp.path().join("src");
    let mut bytes = vec![0u8; 4 << 20];
    bytes[PATTERN_AT..PATTERN_AT + pattern().len()].copy_from_slice(&pattern());
    std::fs::write(&src, &bytes).unwrap();
    let v = d.json(&[
        "volume",
        "copy",
        &d.path,
        &vol,
        "--from",
        &src.display().to_string(),
        "--generation",
        "0",
    ]);
    assert_eq!(
        (v["generation"].as_u64(), v["legality"].as_str()),
        (Some(1), Some("legal"))
    );
    assert_eq!(d.read_through(&img, &vol), pattern());
    let st = d.json(&["volume", "status", &d.path, &vol, "--generation", "0"]);
    assert_eq!(st["state"], "succeeded");
    // A wrong generation is refused and changes nothing.
    let before = d.listing();
    let o = d.run(&[
        "volume",
        "update",
        &d.path,
        &vol,
        "--generation",
        "0",
        "--description",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(d.listing(), before);
    let v = d.json(&[
        "volume",
        "update",
        &d.path,
        &vol,
        "--generation",
        "1",
        "--description",
        "hi",
    ]);
    assert_eq!(
        (v["generation"].as_u64(), v["description"].as_str()),
        (Some(2), Some("hi"))
    );
    let v = d.json(&[
        "volume",
        "extend",
        &d.path,
        &vol,
        "--size",
        "8M",
        "--generation",
        "2",
    ]);
    assert_eq!(v["capacity"], 8 << 20);
    assert_eq!(
        std::fs::metadata(d.image_dir(&img).join(&vol))
            .unwrap()
            .len(),
        8 << 20
    );
    let snap = d.create(&["--parent", &vol]);
    let v = d.json(&["volume", "extend", &d.path, &snap, "--size", "16M"]);
    assert_eq!(v["capacity"], 16 << 20);
    d.ok(&["volume", "remove", &d.path, &snap]);
    let v = d.json(&["volume", "fence", &d.path, &vol, "--generation", "3"]);
    assert_eq!(
        (v["generation"].as_u64(), v["legality"].as_str()),
        (Some(6), Some("illegal"))
    );
    let st = d.json(&["volume", "status", &d.path, &vol, "--generation", "3"]);
    assert_eq!(st["state"], "fenced");
    // An illegal volume is reported, and prepare refuses it.
    let o = d.run(&["domain", "check", &d.path]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        d.run(&["image", "prepare", &d.path, &img]).status.code(),
        Some(1)
    );
    d.ok(&[
        "volume",
        "update",
        &d.path,
        &vol,
        "--generation",
        "6",
        "--legality",
        "legal",
    ]);
    let p = d.json(&["image", "prepare", &d.path, &img]);
    assert_eq!(
        p["leaf"],
        d.image_dir(&img).join(&vol).display().to_string()
    );
    d.check_clean();
}

#[test]
fn file_bad_input_is_refused_and_changes_nothing() {
    let d = Fd::new();
    let (img, ids) = d.image_with(1);
    let missing = uuid();
    let tmp = domain_tmp();
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("precious"), b"x").unwrap();
    let busy = busy.display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["volume", "create", &d.path, "--parent", &ids[0]],
        vec!["volume", "create", &d.path, "--parent", &missing],
        vec!["volume", "create", &d.path, "--image", &img, "--size", "1M"],
        vec!["volume", "create", &d.path, "--image", &missing],
        vec![
            "volume", "create", &d.path, "--parent", &ids[1], "--format", "raw",
        ],
        vec![
            "volume", "create", &d.path, "--parent", &ids[1], "--wipe", "zero",
        ],
        vec![
            "volume", "create", &d.path, "--image", &missing, "--size", "1M", "--id", &ids[0],
        ],
        vec!["volume", "remove", &d.path, &ids[0]],
        vec!["volume", "remove", &d.path, &missing],
        vec!["volume", "extend", &d.path, &ids[1], "--size", "1M"],
        vec!["image", "remove", &d.path, &missing],
        vec!["domain", "create", "--path", &d.path],
        vec!["domain", "remove", &d.path],
        vec!["host", "join", &d.path, "--host-id", "1"],
    ];
    for args in &cases {
        let before = d.listing();
        let o = d.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?} must fail");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{args:?}: one message: {err}");
        assert!(err.starts_with("lvchain: error: "), "{err}");
        assert_eq!(d.listing(), before, "{args:?} changed the domain");
    }
    // Formatting refuses a directory with other files, and a missing one.
    for args in [
        vec!["domain", "create", "--path", &busy],
        vec!["domain", "create", "--path", "/nonexistent/dir"],
    ] {
        let o = d.run(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
    }
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    assert!(!Path::new("/nonexistent/dir").exists());
    d.assert_intact(&img, &ids);
    d.check_clean();
}

/// Crash points a file domain's transactions pass, and those only block domains have (every
/// point of these operations is one or the other, so none is left out).
const FILE_POINTS: &[&str] = &[
    "create.after-metadata",
    "create.after-parent-update",
    "create.after-qemu-img",
    "create.after-links",
    "create.after-commit",
    "remove.after-mark",
    "remove.after-parent-update",
    "remove.after-links",
    "remove.after-wipe",
    "remove.after-metadata",
    "gc.after-parent-update",
    "gc.after-links",
    "gc.after-wipe",
    "gc.after-metadata",
    "extend.after-lvextend",
    "extend.after-resize",
    "extend.after-metadata",
    "op.after-illegal",
    "op.after-work",
    "op.after-legal",
];
const BLOCK_ONLY: &[&str] = &[
    "create.after-lvcreate",
    "remove.after-lvremove",
    "gc.after-lvremove",
    "domain-remove.after-mark",
];

#[test]
fn file_crash_matrix_every_point_then_gc_is_clean_and_data_intact() {
    let d = Fd::new();
    let all: Vec<String> = d
        .json(&["debug", "crash-points"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    for p in &all {
        assert!(
            FILE_POINTS.contains(&p.as_str()) || BLOCK_ONLY.contains(&p.as_str()),
            "crash point {p} is neither in the file matrix nor block-only"
        );
    }
    let (img, mut ids) = d.image_with(1);
    let crash = |args: &[&str], point: &str| {
        let o = d.cmd(args, &[("LVCHAIN_CRASH_AT", point)]);
        assert!(crashed(&o), "{args:?} did not crash at {point}: {o:?}");
    };
    let settle = |ids: &[String]| {
        let report = d.gc();
        for o in report["orphans"].as_array().unwrap() {
            assert!(o["error"].is_null(), "gc: {o}");
        }
        d.check_clean();
        d.assert_intact(&img, ids);
    };
    for point in FILE_POINTS.iter().filter(|p| p.starts_with("create.")) {
        let id = uuid();
        let leaf = ids.last().unwrap().clone();
        crash(
            &["volume", "create", &d.path, "--parent", &leaf, "--id", &id],
            point,
        );
        if *point == "create.after-commit" {
            ids.push(id);
        }
        // Before gc, readers see the committed chain only (the parent is still the leaf).
        d.assert_intact(&img, &ids);
        settle(&ids);
    }
    for point in FILE_POINTS.iter().filter(|p| p.starts_with("remove.")) {
        let leaf = d.create(&["--parent", ids.last().unwrap()]);
        crash(&["volume", "remove", &d.path, &leaf], point);
        // Past its mark the volume is gone for readers, and gc completes its removal.
        d.assert_intact(&img, &ids);
        settle(&ids);
        assert!(!d.image_dir(&img).join(&leaf).exists());
    }
    for point in FILE_POINTS.iter().filter(|p| p.starts_with("gc.")) {
        // An orphan of each kind for gc to crash on: a dead creation and a dead removal.
        let leaf = ids.last().unwrap().clone();
        crash(
            &["volume", "create", &d.path, "--parent", &leaf],
            "create.after-qemu-img",
        );
        crash(&["gc", &d.path], point);
        settle(&ids);
        let doomed = d.create(&["--parent", &leaf]);
        crash(&["volume", "remove", &d.path, &doomed], "remove.after-mark");
        crash(&["gc", &d.path], point);
        settle(&ids);
    }
    for point in FILE_POINTS.iter().filter(|p| p.starts_with("extend.")) {
        let leaf = ids.last().unwrap().clone();
        let cap = d.json(&["volume", "info", &d.path, &leaf])["capacity"]
            .as_u64()
            .unwrap();
        let size = format!("{}", cap + (1 << 20));
        crash(
            &["volume", "extend", &d.path, &leaf, "--size", &size],
            point,
        );
        settle(&ids);
        // Run again, it completes.
        d.ok(&["volume", "extend", &d.path, &leaf, "--size", &size]);
        settle(&ids);
    }
    // The operations: the status each crash leaves, then a retry at the right generation.
    let leaf = ids.last().unwrap().clone();
    for point in FILE_POINTS.iter().filter(|p| p.starts_with("op.")) {
        let g = d.json(&["volume", "info", &d.path, &leaf])["generation"]
            .as_u64()
            .unwrap();
        let gs = g.to_string();
        crash(
            &[
                "volume",
                "update",
                &d.path,
                &leaf,
                "--generation",
                &gs,
                "--description",
                point,
            ],
            point,
        );
        let st = d.json(&["volume", "status", &d.path, &leaf, "--generation", &gs]);
        let want = if *point == "op.after-legal" {
            "succeeded"
        } else {
            "failed"
        };
        assert_eq!(st["state"], want, "{point}: {st}");
        let now = if *point == "op.after-legal" { g + 1 } else { g };
        d.ok(&[
            "volume",
            "update",
            &d.path,
            &leaf,
            "--generation",
            &now.to_string(),
            "--description",
            "again",
        ]);
        settle(&ids);
    }
}

#[test]
fn file_random_kill9_mid_create_and_remove_then_gc_is_clean() {
    let d = Fd::new();
    let (img, mut ids) = d.image_with(1);
    // 50 kills here on the host; 20 where the run targets a named shared file system (NFS in
    // the test VM, where each run costs ten times as much); LVCHAIN_TEST_KILLS overrides.
    let default_kills = if std::env::var_os("LVCHAIN_FILE_DOMAIN_FS").is_some() {
        20
    } else {
        50
    };
    let want: usize = std::env::var("LVCHAIN_TEST_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_kills);
    let mut seed: u64 = std::env::var("LVCHAIN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()) * 2654435761 + 1);
    eprintln!("seed {seed} (LVCHAIN_TEST_SEED replays it)");
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // The kills land within the time an operation takes here: one uncrashed creation timed
    // (a VM under TCG on NFS is far slower than a host's disk), at least 40 ms.
    let start = std::time::Instant::now();
    ids.push(d.create(&["--parent", ids.last().unwrap()]));
    let window = (start.elapsed().as_micros() as u64 * 6 / 5).max(40_000);
    eprintln!("kills within {window} us");
    let (mut killed, mut run, mut collected) = (0, 0, 0);
    while killed < want {
        assert!(
            run < want * 4,
            "only {killed} of {run} runs were killed mid-way"
        );
        let leaf = ids.last().unwrap().clone();
        // Creations, and removals of a snapshot made for the purpose.
        let remove = run % 2 == 1;
        let id = if remove {
            d.create(&["--parent", &leaf])
        } else {
            uuid()
        };
        let args: Vec<&str> = if remove {
            vec!["volume", "remove", &d.path, &id]
        } else {
            vec!["volume", "create", &d.path, "--parent", &leaf, "--id", &id]
        };
        let mut child = Command::new(bin())
            .arg("--direct")
            .args(&args)
            .env_remove("LVCHAIN_CRASH_AT")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(rand(window)));
        // SAFETY: kill of our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().unwrap();
        if status.signal() == Some(libc::SIGKILL) {
            killed += 1;
        }
        let report = d.gc();
        for o in report["orphans"].as_array().unwrap() {
            assert!(o["error"].is_null(), "run {run}: gc: {o}");
        }
        collected += usize::from(!report["orphans"].as_array().unwrap().is_empty());
        d.check_clean();
        // The volume is a chain member exactly when its transaction committed (a creation) or
        // never passed its mark (a removal); otherwise nothing of it is left.
        if d.chain(&img).iter().any(|(c, _)| *c == id) {
            ids.push(id);
        } else {
            assert!(
                !d.image_dir(&img).join(&id).exists(),
                "run {run}: leftover data"
            );
        }
        d.assert_intact(&img, &ids);
        run += 1;
    }
    eprintln!("{killed} of {run} runs killed mid-way; {collected} left a transaction for gc");
    // The kills land inside transactions, not only around them.
    assert!(collected >= 5, "only {collected} runs left anything for gc");
}

#[test]
fn file_check_and_gc_find_every_kind_of_leftover() {
    let d = Fd::new();
    let (img, ids) = d.image_with(1);
    let dir = d.image_dir(&img);
    // A creation that died after turning its parent internal, a removal that died after its
    // mark, the temp file of a metadata rewrite that died, a data file without metadata, a
    // lease file without metadata; and a file the NFS client keeps for a removed file still
    // open (`.nfs*`: no domain's, left to the client).
    let dead = uuid();
    let o = d.cmd(
        &[
            "volume", "create", &d.path, "--parent", &ids[1], "--id", &dead,
        ],
        &[("LVCHAIN_CRASH_AT", "create.after-parent-update")],
    );
    assert!(crashed(&o));
    let stray = uuid();
    std::fs::write(dir.join(format!(".{}.meta.tmp", ids[0])), b"torn").unwrap();
    std::fs::write(dir.join(&stray), b"data").unwrap();
    let lease = dir.join(format!("{}.lease", uuid()));
    std::fs::write(&lease, b"").unwrap();
    let nfs = dir.join(".nfs000000000123abcd00000001");
    std::fs::write(&nfs, b"open elsewhere").unwrap();
    // Readers never show the uncommitted volume; its parent is still the leaf for them.
    assert_eq!(
        d.chain(&img).last().unwrap(),
        &(ids[1].clone(), "leaf".into())
    );
    let o = d.run(&["--json", "domain", "check", &d.path]);
    assert_eq!(o.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<(&str, &str)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["kind"].as_str().unwrap(), p["subject"].as_str().unwrap()))
        .collect();
    assert!(kinds.contains(&("orphan", dead.as_str())), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|(k, _)| *k == "stray-file").count(),
        3,
        "{kinds:?}"
    );
    // A dry run changes nothing; the collection takes everything out and fixes the parent.
    let before = d.listing();
    let dry = d.json(&["gc", &d.path, "--dry-run"]);
    assert_eq!(dry["orphans"].as_array().unwrap().len(), 4, "{dry}");
    assert_eq!(d.listing(), before);
    let report = d.gc();
    let mut markers: Vec<&str> = report["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["marker"].as_str().unwrap())
        .collect();
    markers.sort_unstable();
    assert_eq!(
        markers,
        ["LVC_CREATING", "stray-file", "stray-file", "stray-file"],
        "{report}"
    );
    assert!(!dir.join(&stray).exists());
    assert!(!lease.exists());
    assert!(nfs.exists());
    assert!(!dir.join(format!("{dead}.meta.creating")).exists());
    assert!(!dir.join(&dead).exists());
    let meta = std::fs::read_to_string(dir.join(format!("{}.meta", ids[1]))).unwrap();
    assert!(meta.contains("ROLE=leaf\n"), "{meta}");
    d.check_clean();
    d.assert_intact(&img, &ids);
}

#[test]
fn file_half_formatted_domain_is_refused_until_create_completes_it() {
    let d = Fd::new();
    let record = Path::new(&d.path).join("dom_md/metadata");
    let text = std::fs::read_to_string(&record).unwrap();
    let body =
        text[..text.rfind("CHECKSUM=").unwrap()].replace("STATE=complete", "STATE=formatting");
    let half = format!("{body}CHECKSUM={:08x}\n", crc32fast::hash(body.as_bytes()));
    std::fs::write(&record, half).unwrap();
    let o = d.run(&["volume", "list", &d.path]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("a format did not finish"), "{err}");
    // The same id, completed.
    d.ok(&["domain", "create", "--path", &d.path]);
    let now = std::fs::read_to_string(&record).unwrap();
    assert_eq!(
        now.lines().nth(1),
        text.lines().nth(1),
        "the domain id is kept"
    );
    assert!(now.contains("STATE=complete\n"));
    d.check_clean();
}

#[test]
fn file_concurrent_creations_take_turns_under_the_domain_lock() {
    let d = Fd::new();
    let (img, ids) = d.image_with(0);
    // Eight processes snapshot the same leaf at once: exactly one wins, the others are
    // refused (no longer a leaf) and leave nothing behind.
    let children: Vec<std::process::Child> = (0..8)
        .map(|_| {
            Command::new(bin())
                .args(["--direct", "volume", "create", &d.path, "--parent", &ids[0]])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let won = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.success())
        .filter(|ok| *ok)
        .count();
    assert_eq!(won, 1);
    assert_eq!(d.chain(&img).len(), 2);
    d.check_clean();
    // Eight base volumes of eight images at once: all of them.
    let children: Vec<std::process::Child> = (0..8)
        .map(|_| {
            Command::new(bin())
                .args([
                    "--direct",
                    "volume",
                    "create",
                    &d.path,
                    "--image",
                    &uuid(),
                    "--size",
                    "1M",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        assert!(c.wait_with_output().unwrap().status.success());
    }
    assert_eq!(
        d.json(&["volume", "list", &d.path])
            .as_array()
            .unwrap()
            .len(),
        10
    );
    d.check_clean();
}

/// The end-to-end scenario whose body the block tier runs too
/// (`lvm_end_to_end_scenario_the_same_as_on_a_file_domain` in tests/volumes.rs).
#[test]
fn file_end_to_end_scenario_the_same_as_on_a_block_domain() {
    let d = Fd::new();
    let run = |args: &[&str]| {
        let o = d.run(args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    scenario::end_to_end(&d.path, d._tmp.path(), &run);
}

/// Whether the sanlock daemon runs here: scripts/run-integration-tests starts it in the VM and
/// sets LVCHAIN_TEST_SANLOCK=1, where this suite runs on NFS.
fn sanlock_here(test: &str) -> bool {
    if std::env::var("LVCHAIN_TEST_SANLOCK").as_deref() == Ok("1") {
        return true;
    }
    eprintln!("skipped {test}: needs the sanlock daemon (scripts/test runs it in the VM, on NFS)");
    false
}

fn sanlock(args: &[&str]) -> String {
    let o = Command::new("sanlock").args(args).output().unwrap();
    assert!(o.status.success(), "sanlock {args:?}: {o:?}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Polls `probe` every 0.5 s for up to `secs` seconds.
fn poll(secs: u64, mut probe: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if probe() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// A sanlock file domain: the lockspace named after the domain id in `dom_md/ids`, every
/// volume's lease a sanlock resource in `images/<image>/<volume>.lease`; a copy's lease is
/// held under host 1 while it runs (status `running` on host 1, removal refused), freed by
/// sanlock when the copy is killed (status `failed`), then fence, removal and gc; the domain's
/// removal leaves the lockspace.
#[test]
fn sanlock_file_domain_lockspace_volume_leases_status_and_removal() {
    if !sanlock_here("sanlock_file_domain_lockspace_volume_leases_status_and_removal") {
        return;
    }
    let d = Fd::new_with(&["--lock-manager", "sanlock"]);
    let id = d.id();
    let dump = sanlock(&["direct", "dump", &format!("{}/dom_md/leases:0", d.path)]);
    assert!(
        dump.contains(&id) && dump.contains("lvchain_domain"),
        "{dump}"
    );
    // Before this host joined, a change is refused and changes nothing.
    let before = d.listing();
    let o = d.run(&[
        "volume",
        "create",
        &d.path,
        "--image",
        &uuid(),
        "--size",
        "4M",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("host join"),
        "{o:?}"
    );
    assert_eq!(d.listing(), before);

    d.ok(&["host", "join", &d.path, "--host-id", "1"]);
    let status = sanlock(&["client", "status"]);
    assert!(
        status.contains(&format!("s {id}:1:{}/dom_md/ids:0", d.path)),
        "{status}"
    );
    let (img, ids) = d.image_with(1);
    for v in &ids {
        let lease = d.image_dir(&img).join(format!("{v}.lease"));
        assert_eq!(std::fs::metadata(&lease).unwrap().len(), 1 << 20);
        let dump = sanlock(&["direct", "dump", &format!("{}:0", lease.display())]);
        assert!(dump.contains(&id) && dump.contains(v.as_str()), "{dump}");
    }
    d.check_clean();

    // A copy into the leaf, paused after it marked the volume illegal: it runs under its
    // lease.
    let leaf = ids[1].clone();
    let src = d._tmp.path().join("src");
    std::fs::write(&src, vec![0x5au8; 1 << 20]).unwrap();
    let pause = d._tmp.path().join("pause");
    let mut copy = Command::new(bin())
        .args(["--direct", "volume", "copy", &d.path, &leaf])
        .arg("--from")
        .arg(&src)
        .args(["--generation", "0"])
        .env("LVCHAIN_PAUSE_AT", "op.after-illegal")
        .env("LVCHAIN_PAUSE_FILE", &pause)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(poll(120, || pause.exists()), "the copy never paused");
    let status = |g: &str| d.json(&["volume", "status", &d.path, &leaf, "--generation", g]);
    assert!(
        poll(60, || status("0")["state"] == "running"),
        "{}",
        status("0")
    );
    assert_eq!(status("0")["host_id"], 1);
    let chain = d.chain(&img);
    let o = d.run(&["volume", "remove", &d.path, &leaf]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(d.chain(&img), chain);

    // Killed: sanlock frees the lease of the dead process at once.
    copy.kill().unwrap();
    copy.wait().unwrap();
    assert!(
        poll(60, || status("0")["state"] == "failed"),
        "{}",
        status("0")
    );
    let v = d.json(&["volume", "fence", &d.path, &leaf, "--generation", "0"]);
    assert_eq!(v["generation"], 3);
    assert_eq!(status("0")["state"], "fenced");
    d.ok(&["volume", "remove", &d.path, &leaf]);
    assert!(!d.image_dir(&img).join(format!("{leaf}.lease")).exists());
    d.assert_intact(&img, &ids[..1]);
    d.check_clean();

    d.ok(&["domain", "remove", &d.path, "--force"]);
    assert!(!Path::new(&d.path).join("dom_md").exists());
    let status = sanlock(&["client", "status"]);
    assert!(!status.contains(&id), "{status}");
}
