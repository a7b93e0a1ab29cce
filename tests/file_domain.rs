//! File domains on the host (no device-mapper, no root): the `lvchain` binary driven on a
//! directory of the host's file system. Chains, removal, gc and check; bad input changes
//! nothing; the crash matrix over every crash point of create, remove, gc, extend and the
//! operations; random `kill -9` of lvchain mid-create and mid-remove. After every crash, gc
//! returns the domain to clean and the committed data reads back intact through the chain.
//! The host agent serving a file domain (`file_agent_*`; it needs no LVM): the CLI prints the
//! same through it as `--direct`, it collects the domain periodically, and refuses paths it is
//! not configured for.
//!
//! The domains live in temporary directories under `$LVCHAIN_FILE_DOMAIN_ROOT` (default: the
//! system's temporary directory); `$LVCHAIN_FILE_DOMAIN_FS` names the file system type (as
//! `stat -f -c %T` prints it, e.g. `nfs`) that directory must be on: `scripts/vm-nfs` sets both
//! to run this suite on an NFS mount, and every domain checks it really is there.
#![allow(clippy::unwrap_used)]

#[path = "common/file_kit.rs"]
mod file_kit;
#[path = "common/http.rs"]
mod http;
#[path = "common/scenario.rs"]
mod scenario;
#[path = "common/virt_xml.rs"]
mod virt_xml;

use file_kit::{bin, domain_tmp, engine_env, segment, Fd, FdAgent};

use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The pattern the base volume holds at offset 1 MiB (committed data, read back after crashes).
const PATTERN_AT: usize = 1 << 20;
fn pattern() -> Vec<u8> {
    (0..65536u32).map(|i| (i * 7 % 251) as u8).collect()
}

impl Fd {
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
    "domain-remove.after-mark",
];
const BLOCK_ONLY: &[&str] = &[
    "create.after-lvcreate",
    "remove.after-lvremove",
    "gc.after-lvremove",
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
    // (a VM under TCG on NFS is far slower than a host's disk, and an optimized lvchain on an
    // idle host finishes well within 40 ms: a fixed window would miss one or the other).
    let start = std::time::Instant::now();
    ids.push(d.create(&["--parent", ids.last().unwrap()]));
    let first = (start.elapsed().as_micros() as u64 * 6 / 5).max(1_000);
    let mut window = first;
    eprintln!("kills within {window} us at first");
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
        let was_killed = status.signal() == Some(libc::SIGKILL);
        killed += usize::from(was_killed);
        let report = d.gc();
        for o in report["orphans"].as_array().unwrap() {
            assert!(o["error"].is_null(), "run {run}: gc: {o}");
        }
        let left = !report["orphans"].as_array().unwrap().is_empty();
        collected += usize::from(left);
        // One timing is noisy (under TCG on NFS a run may take a second or ten): the window
        // follows what the runs show. Done before the kill: narrower; killed before the
        // transaction began: wider (at most twice the first).
        if !was_killed {
            window = (window * 3 / 4).max(1_000);
        } else if !left {
            window = (window * 5 / 4).min(first * 2);
        }
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
    eprintln!(
        "{killed} of {run} runs killed mid-way; {collected} left a transaction for gc; \
         window at the end {window} us"
    );
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
    let dump = sanlock(&[
        "direct",
        "dump",
        &format!("{}/dom_md/leases:1048576", d.path),
    ]);
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
    // A copy of the domain keeps its id, so its lockspace name: joining it is refused.
    let copy = d._tmp.path().join("copy");
    let o = Command::new("cp")
        .args(["-a", &d.path])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let o = d.run(&["host", "join", copy.to_str().unwrap(), "--host-id", "1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("same id"),
        "{o:?}"
    );
    std::fs::remove_dir_all(&copy).unwrap();
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

// The host agent serving file domains: no root needed beyond the socket's access rule, no LVM.

/// What one CLI run printed.
#[derive(Debug, PartialEq)]
struct Run {
    args: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `lvchain ARGS` through the agent on `socket` (the engine's environment removed), or
/// `--direct` (in-process).
fn lvchain(socket: &Path, direct: bool, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = Command::new(bin());
    for v in engine_env() {
        c.env_remove(v);
    }
    if direct {
        c.arg("--direct");
    }
    c.arg("--agent-socket").arg(socket).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    Run {
        args: args.join(" "),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Only what differs between two runs of the same command at different times: timestamps,
/// durations and the file system's free space (other files come and go beside the domain).
fn normalized(r: &Run) -> Run {
    let fixes = [
        (r#""ctime": \d+"#, "\"ctime\": T"),
        (r#""seconds": [0-9.e-]+"#, "\"seconds\": S"),
        (r"orphan\(s\) in [0-9.]+s", "orphan(s) in Ss"),
        (r#""vg_free": \d+"#, "\"vg_free\": F"),
    ];
    // `domain info`'s table: the sizes, and the column widths they make.
    let table = r.args.starts_with("domain info") && !r.args.contains("--json");
    let fix = |s: &str| {
        let mut s = s.to_string();
        for (re, to) in fixes {
            s = regex::Regex::new(re)
                .unwrap()
                .replace_all(&s, to)
                .into_owned();
        }
        if table {
            s = regex::Regex::new(r"\d+(\.\d+)?[KMGTPE]?i?B\b")
                .unwrap()
                .replace_all(&s, "SIZE")
                .into_owned();
            s = regex::Regex::new(r" +")
                .unwrap()
                .replace_all(&s, " ")
                .into_owned();
        }
        s
    };
    Run {
        args: r.args.clone(),
        code: r.code,
        stdout: fix(&r.stdout),
        stderr: fix(&r.stderr),
    }
}

const IMAGE: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000f01";
const BASE: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000f02";
const SNAP: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000f03";
const ORPHAN_IMAGE: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000f04";
const ORPHAN: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000f05";
const UNKNOWN: &str = "6f1b8c1e-0a4e-4c55-9a57-1c0de0000f06";

/// Every command a client runs on a domain, in an order that ends where it began (nothing
/// left, wipe back to zero), so a second run starts from the same state: same ids, same output.
/// `after_gc` is called after each gc.
fn agent_scenario(
    d: &Fd,
    socket: &Path,
    direct: bool,
    source: &Path,
    after_gc: &mut dyn FnMut(&Run),
) -> Vec<Run> {
    let p = d.path.as_str();
    let src = source.to_str().unwrap();
    #[rustfmt::skip]
    let steps: Vec<(Vec<&str>, Option<i32>)> = vec![
        (vec!["domain", "set", p, "--wipe", "none"], Some(0)),
        (vec!["volume", "create", p, "--image", IMAGE, "--id", BASE, "--size", "64M",
              "--description", "base"], Some(0)),
        (vec!["volume", "create", p, "--parent", BASE, "--id", SNAP, "--json"], Some(0)),
        (vec!["volume", "list", p, "--image", IMAGE], Some(0)),
        (vec!["volume", "info", p, SNAP], Some(0)),
        (vec!["volume", "info", p, BASE, "--json"], Some(0)),
        (vec!["image", "chain", p, IMAGE], Some(0)),
        (vec!["domain", "info", p, "--json"], Some(0)),
        (vec!["volume", "extend", p, SNAP, "--size", "128M", "--json"], Some(0)),
        (vec!["volume", "update", p, SNAP, "--generation", "0", "--description", "renamed"],
         Some(0)),
        (vec!["volume", "status", p, SNAP, "--generation", "0"], Some(0)),
        (vec!["volume", "fence", p, SNAP, "--generation", "1", "--json"], Some(0)),
        (vec!["volume", "status", p, SNAP, "--generation", "1"], Some(0)),
        (vec!["volume", "copy", p, SNAP, "--from", src, "--generation", "4"], Some(0)),
        (vec!["volume", "status", p, SNAP, "--generation", "4", "--json"], Some(0)),
        (vec!["image", "prepare", p, IMAGE], Some(0)),
        (vec!["image", "teardown", p, IMAGE, "--json"], Some(0)),
        // Errors: unknown volume, not a leaf, a size the engine refuses, a stale generation,
        // a copy (a job through the agent) that fails.
        (vec!["volume", "info", p, UNKNOWN], Some(1)),
        (vec!["volume", "remove", p, BASE], Some(1)),
        (vec!["volume", "extend", p, SNAP, "--size", "1M"], Some(1)),
        (vec!["volume", "update", p, SNAP, "--generation", "0", "--description", "late"],
         Some(1)),
        (vec!["volume", "copy", p, SNAP, "--from", src, "--generation", "0", "--json"], Some(1)),
    ];
    let mut runs: Vec<Run> = steps
        .iter()
        .map(|(args, want)| {
            let r = lvchain(socket, direct, args, &[]);
            assert_eq!(r.code, *want, "{r:#?}");
            r
        })
        .collect();
    // An orphan: a creation that died after its `.meta.creating` (in-process by its
    // environment), then check (unclean: exit 1), gc, check again, and the removals.
    let crash = lvchain(
        socket,
        true,
        &[
            "volume",
            "create",
            p,
            "--image",
            ORPHAN_IMAGE,
            "--id",
            ORPHAN,
            "--size",
            "8M",
        ],
        &[("LVCHAIN_CRASH_AT", "create.after-metadata")],
    );
    assert_ne!(crash.code, Some(0), "{crash:#?}");
    #[rustfmt::skip]
    let steps: Vec<(Vec<&str>, Option<i32>)> = vec![
        (vec!["domain", "check", p], Some(1)),
        (vec!["gc", p, "--dry-run", "--json"], Some(0)),
        (vec!["gc", p], Some(0)),
        (vec!["domain", "check", p, "--json"], Some(0)),
        (vec!["volume", "remove", p, SNAP], Some(0)),
        (vec!["image", "remove", p, IMAGE, "--json"], Some(0)),
        (vec!["domain", "set", p, "--wipe", "zero", "--json"], Some(0)),
        (vec!["volume", "list", p], Some(0)),
        (vec!["domain", "info", p], Some(0)),
    ];
    for (args, want) in &steps {
        let r = lvchain(socket, direct, args, &[]);
        assert_eq!(r.code, *want, "{r:#?}");
        if args[0] == "gc" {
            after_gc(&r);
        }
        runs.push(r);
    }
    runs
}

#[test]
fn file_agent_cli_prints_the_same_through_the_agent_and_in_process() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "0");
    let source = d._tmp.path().join("source.raw");
    let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&source, &data).unwrap();
    let before = agent.operations();
    let mut gauges = Vec::new();
    let through = agent_scenario(&d, &agent.socket, false, &source, &mut |_| {
        gauges.push(agent.gauges(&d.path))
    });
    let after_agent = agent.operations();
    let direct = agent_scenario(&d, &agent.socket, true, &source, &mut |_| {});
    let after_direct = agent.operations();
    assert_eq!(
        after_direct, after_agent,
        "a --direct run reached the agent"
    );
    // Same output, line for line.
    assert_eq!(through.len(), direct.len());
    for (a, b) in through.iter().zip(&direct) {
        assert_eq!(normalized(a), normalized(b), "differs: {}", a.args);
    }
    // Every command went through the agent, on the routes of a file domain.
    let count = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let delta = |k: &str| count(&after_agent, k) - count(&before, k);
    let v = "/v1/domains/{vg}";
    #[rustfmt::skip]
    let expected = [
        (format!("PATCH {v} ok"), 2),
        (format!("POST {v}/volumes ok"), 2),
        (format!("GET {v}/volumes ok"), 2),
        (format!("GET {v}/volumes/{{volume}} ok"), 2),
        (format!("GET {v}/volumes/{{volume}} volume_not_found"), 1),
        (format!("DELETE {v}/volumes/{{volume}} not_a_leaf"), 1),
        (format!("DELETE {v}/volumes/{{volume}} ok"), 1),
        (format!("POST {v}/volumes/{{volume}}/extend ok"), 1),
        (format!("POST {v}/volumes/{{volume}}/extend invalid_input"), 1),
        (format!("POST {v}/volumes/{{volume}}/update ok"), 1),
        (format!("POST {v}/volumes/{{volume}}/update wrong_generation"), 1),
        (format!("POST {v}/volumes/{{volume}}/fence ok"), 1),
        (format!("GET {v}/volumes/{{volume}}/status ok"), 3),
        (format!("POST {v}/volumes/{{volume}}/copy ok"), 2),
        (format!("GET {v}/images/{{image}} ok"), 1),
        (format!("POST {v}/images/{{image}}/prepare ok"), 1),
        (format!("POST {v}/images/{{image}}/teardown ok"), 1),
        (format!("DELETE {v}/images/{{image}} ok"), 1),
        (format!("GET {v} ok"), 2),
        (format!("GET {v}/check ok"), 2),
        (format!("POST {v}/gc ok"), 2),
    ];
    for (k, n) in &expected {
        assert_eq!(delta(k), *n, "{k}: {after_agent:#?}\n{}", agent.log());
    }
    // The copy ran as jobs of the agent: one succeeded (the volume), one failed.
    let (st, jobs) = agent.call("GET", "/v1/jobs", "");
    assert_eq!(st, 200);
    let states: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{jobs}");
    assert!(
        states.contains(&"succeeded") && states.contains(&"failed"),
        "{jobs}"
    );
    // The gauges after each collection: the orphan, then none; free bytes; no slot series.
    assert_eq!(gauges.len(), 2, "{gauges:?}");
    assert_eq!(
        gauges[0].get("lvchain_domain_orphans"),
        Some(&1),
        "{gauges:?}"
    );
    assert_eq!(
        gauges[1].get("lvchain_domain_orphans"),
        Some(&0),
        "{gauges:?}"
    );
    assert!(gauges[1]["lvchain_domain_free_bytes"] > 0, "{gauges:?}");
    assert!(
        !gauges[1].contains_key("lvchain_domain_free_slots"),
        "{gauges:?}"
    );
    // The collector's last run on the domain, by its path.
    let (st, gc) = agent.call("GET", &format!("/v1/domains/{}/gc", segment(&d.path)), "");
    assert_eq!(st, 200, "{gc}");
    assert_eq!(gc["last"]["trigger"], "request", "{gc}");
    assert_eq!(gc["last"]["outcome"], "collected", "{gc}");
    assert_eq!(
        gc["last"]["report"]["orphans"].as_array().map(Vec::len),
        Some(1),
        "{gc}"
    );
    d.check_clean();
}

#[test]
fn file_agent_collects_a_served_file_domain_periodically() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "1");
    let img = uuid();
    let o = d.cmd(
        &["volume", "create", &d.path, "--image", &img, "--size", "4M"],
        &[("LVCHAIN_CRASH_AT", "create.after-metadata")],
    );
    assert!(crashed(&o), "{o:?}");
    let gc_path = format!("/v1/domains/{}/gc", segment(&d.path));
    let start = std::time::Instant::now();
    let last = loop {
        let (st, gc) = agent.call("GET", &gc_path, "");
        assert_eq!(st, 200, "{gc}");
        let orphans = gc["last"]["report"]["orphans"].as_array().map(Vec::len);
        if gc["last"]["outcome"] == "collected" && orphans == Some(1) {
            break gc;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no periodic collection of the orphan: {gc}\n{}",
            agent.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(last["last"]["trigger"], "periodic", "{last}");
    assert_eq!(last["interval"], 1.0, "{last}");
    d.check_clean();
    assert!(!d
        .image_dir(&img)
        .join(format!("{img}.meta.creating"))
        .exists());
    let m = agent.metrics();
    assert!(
        m.contains(&format!(
            "lvchain_gc_runs_total{{domain=\"{}\",outcome=\"collected\"}}",
            d.path
        )),
        "{m}"
    );
    assert_eq!(
        agent.gauges(&d.path).get("lvchain_domain_orphans"),
        Some(&0)
    );
}

#[test]
fn file_agent_refuses_an_unconfigured_path_and_changes_nothing() {
    let served = Fd::new();
    let other = Fd::new();
    let agent = FdAgent::start(&served.path, "0");
    let before = other.listing();
    let img = uuid();
    let body = format!(r#"{{"image": "{img}", "size": 1048576}}"#);
    let outside = other._tmp.path().display().to_string();
    for path in [
        other.path.clone(),
        outside,
        format!("{}/../dom", served.path),
    ] {
        for (method, route, body) in [
            ("POST", "volumes", body.as_str()),
            ("GET", "volumes", ""),
            ("POST", "gc", ""),
            ("GET", "check", ""),
        ] {
            let (st, e) = agent.call(
                method,
                &format!("/v1/domains/{}/{route}", segment(&path)),
                body,
            );
            assert_eq!(
                (st, e["kind"].as_str()),
                (404, Some("domain_not_served")),
                "{method} {path} {route}: {e}"
            );
        }
    }
    assert_eq!(
        other.listing(),
        before,
        "a refused request changed the domain"
    );
    // The CLI runs such a domain in-process (the agent refused it): the same answer as --direct.
    let a = lvchain(
        &agent.socket,
        false,
        &["volume", "list", &other.path, "--json"],
        &[],
    );
    let b = lvchain(
        &agent.socket,
        true,
        &["volume", "list", &other.path, "--json"],
        &[],
    );
    assert_eq!((a.code, &a.stdout), (Some(0), &b.stdout), "{a:#?}");
    let ops = agent.operations();
    assert_eq!(
        ops.get("GET /v1/domains/{vg}/volumes domain_not_served"),
        Some(&4),
        "{ops:#?}"
    );
    assert_eq!(other.listing(), before);
}

/// A domain removal that died after its point of no return (the record renamed
/// `metadata.removing`): the directory is no domain any more, a format there is refused (it
/// would reuse what the removal still has to finish), and running the removal again finishes
/// it, leaving the directory empty.
#[test]
fn file_a_domain_removal_that_died_is_finished_by_running_it_again() {
    let d = Fd::new();
    let (img, _ids) = d.image_with(1);
    let o = d.cmd(
        &["domain", "remove", &d.path, "--force"],
        &[("LVCHAIN_CRASH_AT", "domain-remove.after-mark")],
    );
    assert!(crashed(&o), "{o:?}");
    assert!(Path::new(&d.path).join("dom_md/metadata.removing").exists());
    assert_eq!(d.run(&["volume", "list", &d.path]).status.code(), Some(1));
    let before = d.listing();
    let o = d.run(&["domain", "create", "--path", &d.path]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("domain remove"),
        "{o:?}"
    );
    assert_eq!(d.listing(), before);
    d.ok(&["domain", "remove", &d.path]);
    assert_eq!(std::fs::read_dir(&d.path).unwrap().count(), 0);
    assert!(!d.image_dir(&img).exists());
    // A new domain can be made there again.
    d.ok(&["domain", "create", "--path", &d.path]);
    d.check_clean();
}

/// The agent keeps a file domain's prepared image held across its own restart (this host
/// records the prepare), and a teardown releases it whatever spelling of the path it names.
#[test]
fn file_agent_holds_prepared_images_again_after_a_restart() {
    let d = Fd::new();
    let (img, ids) = d.image_with(1);
    let leaf = ids[1].clone();
    let refused = |what: &str| {
        let o = d.run(&["volume", "remove", &d.path, &leaf]);
        assert_eq!(o.status.code(), Some(1), "{what}: {o:?}");
        assert_eq!(d.chain(&img).len(), 2, "{what}");
    };
    let agent = FdAgent::start(&d.path, "0");
    let slashed = segment(&format!("{}/", d.path));
    let (st, v) = agent.call(
        "POST",
        &format!("/v1/domains/{slashed}/images/{img}/prepare"),
        "{}",
    );
    assert_eq!(st, 200, "{v}");
    refused("prepared through the agent");
    drop(agent);
    let agent = FdAgent::start(&d.path, "0");
    let (st, _) = agent.call("GET", "/v1/agent", "");
    assert_eq!(st, 200);
    refused("after the agent's restart");
    let (st, v) = agent.call(
        "POST",
        &format!("/v1/domains/{}/images/{img}/teardown", segment(&d.path)),
        "",
    );
    assert_eq!(st, 200, "{v}");
    d.ok(&["volume", "remove", &d.path, &leaf]);
    d.check_clean();
}

/// `image xml --lease` of a sanlock file domain: the leaf's lease file at offset 0 in the
/// domain's lockspace, beside the disk XML in a domain libvirt's schema accepts; a process
/// holding it as libvirt's sanlock plugin does (`sanlock client command`) takes it.
#[test]
fn sanlock_file_domain_image_xml_names_the_leaf_lease() {
    if !sanlock_here("sanlock_file_domain_image_xml_names_the_leaf_lease") {
        return;
    }
    let d = Fd::new_with(&["--lock-manager", "sanlock"]);
    d.ok(&["host", "join", &d.path, "--host-id", "2"]);
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "4M"]);
    let leaf = d.create(&["--parent", &base]);
    let disk = d.ok(&["image", "xml", &d.path, &img]);
    let lease = d.ok(&["image", "xml", &d.path, &img, "--lease"]);
    virt_xml::assert_valid(&[&disk, &lease]);
    let file = format!("{}/images/{img}/{leaf}.lease", d.path);
    let want = format!(
        "<lease>\n  <lockspace>{}</lockspace>\n  <key>{leaf}</key>\n  <target path='{file}' offset='0'/>\n</lease>\n",
        d.id()
    );
    assert_eq!(lease, want);
    let resource = format!("{}:{leaf}:{file}:0", d.id());
    let mut vm = Command::new("sanlock")
        .args([
            "client",
            "command",
            "-r",
            &resource,
            "-c",
            "/bin/sleep",
            "600",
        ])
        .spawn()
        .unwrap();
    let held = poll(60, || {
        assert!(
            vm.try_wait().unwrap().is_none(),
            "the lease was not granted"
        );
        sanlock(&["client", "status"]).contains(&format!("r {resource}"))
    });
    let _ = vm.kill();
    let _ = vm.wait();
    assert!(held, "never held");
    d.ok(&["image", "remove", &d.path, &img]);
    d.ok(&["host", "leave", &d.path]);
}
