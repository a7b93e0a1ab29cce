//! Test fixtures: real LVM volume groups on loop devices backed by sparse files, a domain
//! driven through the `lvchain` binary ([`Domain`]) or through the engine's facade
//! ([`EngineDomain`]); and one helper per job: [`qemu_io`], [`check`], [`poll`] /
//! [`wait_until`], [`sanlock_client_status`]; [`agent`]: a running `lvchain agent` and an HTTP
//! client for its socket; [`unit`]: the agent as its systemd unit starts it.
//!
//! Each fixture has a unique VG name and its own loop devices, and lvm is restricted to those
//! devices, so tests run in parallel. Everything is removed on drop, also when a test fails.
//! Tests that need device-mapper skip with a message where it is missing, unless
//! `LVCHAIN_TEST_REQUIRE_LVM=1` (set by scripts/test in the VM) makes that a failure.
#![allow(dead_code, clippy::unwrap_used)]

pub mod agent;
pub mod http;
pub mod scenario;
pub mod unit;

use lvchain::exec::Cmd;
use lvchain::lvm::{Lvm, LvmConfig};
use lvchain::units::{Bytes, MIB};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether real LVM with device-mapper can run here; panics when it is required but missing.
pub fn lvm_available(test: &str) -> bool {
    let ok = lvchain::lvm::device_mapper_in_kernel()
        // SAFETY: geteuid has no preconditions.
        && unsafe { libc::geteuid() } == 0
        && Path::new("/sbin/lvm").exists();
    if !ok {
        if std::env::var("LVCHAIN_TEST_REQUIRE_LVM").as_deref() == Ok("1") {
            panic!("{test}: real LVM with device-mapper is required here but missing");
        }
        eprintln!("skipped {test}: needs root and device-mapper (run scripts/test)");
    }
    ok
}

/// Whether the sanlock daemon runs here (scripts/run-integration-tests starts it in the VM);
/// panics when it is required but missing.
pub fn sanlock_available(test: &str) -> bool {
    if std::env::var("LVCHAIN_TEST_SANLOCK").as_deref() == Ok("1") {
        return true;
    }
    if std::env::var("LVCHAIN_TEST_REQUIRE_LVM").as_deref() == Ok("1") {
        panic!("{test}: the sanlock daemon is required here (LVCHAIN_TEST_SANLOCK=1)");
    }
    eprintln!("skipped {test}: needs the sanlock daemon (run scripts/test)");
    false
}

fn sh(program: &str, args: &[&str]) -> String {
    let f = Cmd::new(program, Duration::from_secs(60))
        .args(args.iter().copied())
        .run()
        .unwrap();
    assert!(f.success(), "{} failed: {}", f.argv, f.stderr);
    f.stdout.trim().to_string()
}

/// A VG on loop devices, removed with its devices on drop.
pub struct TestVg {
    pub name: String,
    pub loops: Vec<PathBuf>,
    pub lvm: Lvm,
    pub dir: tempfile::TempDir,
}

impl TestVg {
    /// Loop devices of `size` each (512-byte sectors), not yet in a VG (the VG name is reserved).
    pub fn devices(test: &str, count: usize, size: Bytes) -> TestVg {
        TestVg::devices_with_sectors(test, count, size, 512)
    }

    /// Loop devices of `size` each with `sector_size`-byte logical sectors (`losetup
    /// --sector-size`: 4096 makes 4Kn disks), not yet in a VG.
    pub fn devices_with_sectors(test: &str, count: usize, size: Bytes, sector_size: u32) -> TestVg {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let short: String = test
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(24)
            .collect();
        let name = format!("lvct{}x{n}{short}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("lvchain-test")
            .tempdir()
            .unwrap();
        let mut loops = Vec::new();
        for i in 0..count {
            let file = dir.path().join(format!("pv{i}.img"));
            std::fs::File::create(&file)
                .unwrap()
                .set_len(size.0)
                .unwrap();
            let sector = sector_size.to_string();
            let dev = sh(
                "/sbin/losetup",
                &[
                    "--sector-size",
                    &sector,
                    "-f",
                    "--show",
                    file.to_str().unwrap(),
                ],
            );
            loops.push(PathBuf::from(dev));
        }
        let mut config = LvmConfig::from_env().unwrap();
        config.devices = loops.clone();
        config.timeout = Duration::from_secs(120);
        TestVg {
            name,
            loops,
            lvm: Lvm::new(config),
            dir,
        }
    }

    /// A VG on `count` loop devices of `size` each.
    pub fn new(test: &str, count: usize, size: Bytes) -> TestVg {
        let vg = TestVg::devices(test, count, size);
        vg.lvm.pvcreate(&vg.loops, Bytes(8 * MIB)).unwrap();
        vg.lvm
            .vgcreate(&vg.name, &vg.loops, &[], Bytes(8 * MIB))
            .unwrap();
        vg
    }

    /// The environment that points the `lvchain` binary at this VG's devices.
    pub fn env(&self) -> Vec<(String, String)> {
        let devs: Vec<String> = self.loops.iter().map(|d| d.display().to_string()).collect();
        vec![("LVCHAIN_DEVICES".into(), devs.join(","))]
    }
}

impl Drop for TestVg {
    /// The VG goes with its loop devices' files; what holds the devices are this machine's
    /// mappings of its LVs: those are removed with one `dmsetup` (no lvm command: each costs
    /// a third of a second in the test VM), then the VG's device links, then the loop devices.
    fn drop(&mut self) {
        let prefix = format!("{}-", self.name);
        let mappings: Vec<String> = std::fs::read_dir("/dev/mapper")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(&prefix))
            .collect();
        if !mappings.is_empty() {
            let _ = Cmd::new("/sbin/dmsetup", Duration::from_secs(60))
                .args(["remove", "--retry"])
                .args(mappings.iter().map(String::as_str))
                .run();
        }
        let _ = std::fs::remove_dir_all(format!("/dev/{}", self.name));
        for l in &self.loops {
            let _ = Cmd::new("/sbin/losetup", Duration::from_secs(30))
                .args(["-d", &l.to_string_lossy()])
                .run();
        }
    }
}

/// The `lvchain` binary run against a test domain.
pub struct Domain {
    pub vg: TestVg,
}

/// The lvchain binary: `LVCHAIN_TEST_BIN` (a copy made by scripts/test) or cargo's.
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("LVCHAIN_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_lvchain").to_string())
});

impl Domain {
    /// A formatted domain on two 4 GiB sparse loop devices.
    pub fn new(test: &str) -> Domain {
        let vg = TestVg::devices(test, 2, Bytes(4 * lvchain::units::GIB));
        let d = Domain { vg };
        let mut args = vec!["domain".to_string(), "create".into(), d.vg.name.clone()];
        args.extend(d.vg.loops.iter().map(|l| l.display().to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        d.ok(&a);
        d
    }

    /// A domain on the sanlock lock manager, on one 4 GiB sparse loop device (not joined yet).
    pub fn new_sanlock(test: &str) -> Domain {
        Domain::new_sanlock_with_sectors(test, 512)
    }

    /// [`Domain::new_sanlock`] on a loop device with `sector_size`-byte logical sectors (4096: a
    /// 4Kn disk).
    pub fn new_sanlock_with_sectors(test: &str, sector_size: u32) -> Domain {
        let vg = TestVg::devices_with_sectors(test, 1, Bytes(4 * lvchain::units::GIB), sector_size);
        let d = Domain { vg };
        let dev = d.vg.loops[0].display().to_string();
        d.ok(&[
            "domain",
            "create",
            d.name(),
            &dev,
            "--lock-manager",
            "sanlock",
        ]);
        d
    }

    pub fn name(&self) -> &str {
        &self.vg.name
    }

    /// The logical block size of one of the domain's LVs as the kernel reports it (BLKSSZGET).
    pub fn lv_sector_size(&self, lv: &str) -> u64 {
        let f = std::fs::File::open(format!("/dev/{}/{lv}", self.name())).unwrap();
        lvchain::directio::logical_block_size(&f).unwrap() as u64
    }

    /// Runs lvchain with extra environment.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> lvchain::exec::Finished {
        let mut c = Cmd::new(BIN.as_str(), Duration::from_secs(300)).args(args.iter().copied());
        for (k, v) in self.vg.env() {
            c = c.env(&k, &v);
        }
        for (k, v) in env {
            c = c.env(k, v);
        }
        c.run().unwrap()
    }

    pub fn run(&self, args: &[&str]) -> lvchain::exec::Finished {
        self.run_env(args, &[])
    }

    /// Runs lvchain, asserts success, returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let f = self.run(args);
        assert!(
            f.success(),
            "lvchain {args:?} failed ({:?}): {}",
            f.code,
            f.stderr
        );
        f.stdout
    }

    /// Runs lvchain with --json, asserts success, parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Runs lvchain, asserts exit status 1 with one message, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let f = self.run(args);
        assert_eq!(f.code, Some(1), "lvchain {args:?} should fail: {f:?}");
        assert!(f.stderr.starts_with("lvchain: error: "), "{}", f.stderr);
        f.stderr
    }

    /// Creates a volume, returns its id.
    pub fn create(&self, extra: &[&str]) -> String {
        let mut a = vec!["volume", "create", self.name()];
        a.extend_from_slice(extra);
        self.ok(&a).trim().to_string()
    }

    /// Everything that identifies the domain's state: every LV with tags, size and attributes,
    /// the VG tags and free space, and the whole metadata area.
    /// The ids `lvchain volume list` shows.
    pub fn volume_ids(&self) -> Vec<String> {
        self.json(&["volume", "list", self.name()])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn state(&self) -> String {
        let cfg = self.vg.lvm.config.config_string();
        let f = Cmd::new("/sbin/lvm", Duration::from_secs(60))
            .args([
                "lvs",
                "--config",
                &cfg,
                "--noheadings",
                "--units",
                "b",
                "-o",
                "lv_name,lv_size,lv_attr,lv_tags,vg_tags,vg_free",
                "--sort",
                "lv_name",
                self.name(),
            ])
            .run()
            .unwrap();
        assert!(f.success(), "{}", f.stderr);
        let md = std::fs::read(format!("/dev/{}/metadata", self.name())).unwrap_or_default();
        // Position-weighted, a word at a time (cheap in a debug build under emulation too).
        let sum: u64 = md
            .chunks(8)
            .enumerate()
            .map(|(i, w)| {
                let mut word = [0u8; 8];
                word[..w.len()].copy_from_slice(w);
                (i as u64 + 1).wrapping_mul(u64::from_le_bytes(word))
            })
            .fold(0, u64::wrapping_add);
        format!("{}\nmetadata checksum {sum}", f.stdout)
    }

    /// Raw tags of one LV (None when the LV does not exist).
    pub fn lv_tags(&self, lv: &str) -> Option<Vec<String>> {
        let rows = self.vg.lvm.lvs(self.name()).unwrap();
        rows.into_iter()
            .find(|r| r.lv_name == lv)
            .map(|r| r.lv_tags)
    }
}

/// The engine's facade on a domain formatted on one 4 GiB sparse loop device, built as the CLI
/// builds it (`Domain::new` over the real LVM layer, restricted to the fixture's devices).
pub struct EngineDomain {
    /// Declared first: dropped before the VG it works on.
    pub d: lvchain::domain::Domain,
    pub vg: TestVg,
}

impl EngineDomain {
    /// A formatted local domain with room for 64 volumes.
    pub fn new(test: &str) -> EngineDomain {
        let vg = TestVg::devices(test, 1, Bytes(4 * lvchain::units::GIB));
        let name = vg.name.parse().unwrap();
        let d = lvchain::domain::Domain::new(name, std::sync::Arc::new(vg.lvm.clone()));
        let req = lvchain::domain::FormatRequest {
            pvs: vg.loops.clone(),
            max_volumes: 64,
            lock_manager: lvchain::lock::LockKind::Local,
            wipe: lvchain::tags::Wipe::Zero,
        };
        let answered = format!("{:?}", d.format(&req).unwrap());
        // What the format answers (its free space kept, not reported again) is what a scan reads.
        let scanned = format!("{:?}", d.catalog().unwrap().snap.info);
        assert_eq!(answered, scanned);
        EngineDomain { d, vg }
    }
}

pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

// The lease/generation protocol, driven through the binary.

pub fn status(d: &Domain, vol: &str, generation: u64) -> serde_json::Value {
    d.json(&[
        "volume",
        "status",
        d.name(),
        vol,
        "--generation",
        &generation.to_string(),
    ])
}

/// Polls the status until it reads `want` (or a minute passed); returns the last status.
pub fn wait_for_state(d: &Domain, vol: &str, generation: u64, want: &str) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    poll(Duration::from_secs(60), || {
        last = status(d, vol, generation);
        (last["state"] == want).then_some(())
    });
    last
}

/// Calls `probe` every 50 ms until it gives a value and returns that; None once `deadline`
/// passed without one (the probe may panic itself, e.g. when a process it waits on ended).
pub fn poll<T>(deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if start.elapsed() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`poll`] for a condition that must come within `deadline`; panics naming `what` otherwise.
pub fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    if poll(deadline, || done().then_some(())).is_none() {
        panic!("{what} never came within {deadline:?}");
    }
}

/// `lvchain domain check --json`: (clean, the report). Clean is the exit status 0, and the
/// report must say the same.
pub fn check(d: &Domain) -> (bool, serde_json::Value) {
    let f = d.run(&["domain", "check", d.name(), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&f.stdout)
        .unwrap_or_else(|e| panic!("domain check printed no report ({e}): {f:?}"));
    let clean = f.code == Some(0);
    assert_eq!(report["clean"].as_bool(), Some(clean), "{f:?}");
    (clean, report)
}

/// Runs qemu-io command `cmd` on the image at `path` read as `format` (raw or qcow2, through
/// its backing chain); asserts it succeeded and no verification failed; returns its output.
pub fn qemu_io(path: &str, format: &str, cmd: &str) -> String {
    let f = Cmd::new("/usr/bin/qemu-io", Duration::from_secs(60))
        .args(["-f", format, "-c", cmd, path])
        .run()
        .unwrap();
    assert!(
        f.success() && !f.stdout.contains("failed"),
        "qemu-io {cmd}: {f:?}"
    );
    f.stdout
}

/// `sanlock client status` of this host's daemon (its lockspaces and held resources).
pub fn sanlock_client_status() -> String {
    let f = Cmd::new("sanlock", Duration::from_secs(30))
        .args(["client", "status"])
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    f.stdout
}

/// A copy process reading from a FIFO that the test feeds.
pub fn start_copy(
    d: &Domain,
    vol: &str,
    fifo: &std::path::Path,
    generation: u64,
) -> std::process::Child {
    let mut c = std::process::Command::new(BIN.as_str());
    c.args([
        "volume",
        "copy",
        d.name(),
        vol,
        "--from",
        fifo.to_str().unwrap(),
        "--generation",
        &generation.to_string(),
    ]);
    for (k, v) in d.vg.env() {
        c.env(k, v);
    }
    c.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn make_fifo() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("input");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    (dir, fifo)
}

/// Holds volume `vol`'s lease of the local lease manager as a running operation would (an
/// open-file-description write lock on its lease file) until the returned file is dropped.
pub fn hold_local_lease(d: &Domain, vol: &str) -> std::fs::File {
    use std::os::unix::io::AsRawFd;
    let dir = format!("/run/lock/lvchain/{}", d.name());
    std::fs::create_dir_all(&dir).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(format!("{dir}/{vol}.lease"))
        .unwrap();
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor we own, with a valid flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    assert_eq!(r, 0, "cannot hold the lease of {vol}");
    f
}

/// A file holding `data` (kept alive by the returned directory).
pub fn dir_file(data: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.raw");
    std::fs::write(&path, data).unwrap();
    (dir, path)
}

/// Starts lvchain with `args`, paused at `point` until the returned file is removed; waits
/// until it is there.
pub fn start_paused(
    d: &Domain,
    args: &[&str],
    point: &str,
    dir: &std::path::Path,
) -> (std::process::Child, std::path::PathBuf) {
    let file = dir.join(format!("pause-{}", point.replace('.', "-")));
    let mut c = std::process::Command::new(BIN.as_str());
    c.args(args)
        .env("LVCHAIN_PAUSE_AT", point)
        .env("LVCHAIN_PAUSE_FILE", &file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in d.vg.env() {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    wait_until(
        &format!("a pause at {point}"),
        Duration::from_secs(120),
        || {
            if let Some(st) = child.try_wait().unwrap() {
                let stderr = child.stderr.take().map(std::io::read_to_string);
                let stderr = stderr.and_then(Result::ok).unwrap_or_default();
                panic!("lvchain {args:?} ended ({st}) before pausing at {point}: {stderr}");
            }
            file.exists()
        },
    );
    (child, file)
}

/// Lets a paused lvchain go on and returns its stdout; asserts it succeeded.
pub fn resume(child: std::process::Child, file: &std::path::Path) -> String {
    std::fs::remove_file(file).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Reads the first `len` bytes of volume `vol` of image `img` (prepare, read, teardown).
pub fn read_volume(d: &Domain, img: &str, vol: &str, len: usize) -> Vec<u8> {
    d.ok(&["image", "prepare", d.name(), img]);
    let mut data = std::fs::read(format!("/run/lvchain/{}/{img}/{vol}", d.name())).unwrap();
    d.ok(&["image", "teardown", d.name(), img]);
    data.truncate(len);
    data
}
