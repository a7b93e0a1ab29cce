//! Test fixtures: real LVM volume groups on loop devices backed by sparse files.
//!
//! Each fixture has a unique VG name and its own loop devices, and lvm is restricted to those
//! devices, so tests run in parallel. Everything is removed on drop, also when a test fails.
//! Tests that need device-mapper skip with a message where it is missing, unless
//! `LVCHAIN_TEST_REQUIRE_LVM=1` (set by scripts/test in the VM) makes that a failure.
#![allow(dead_code, clippy::unwrap_used)]

use lvchain::exec::Cmd;
use lvchain::lvm::{Lvm, LvmConfig};
use lvchain::units::{Bytes, MIB};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether real LVM with device-mapper can run here; panics when it is required but missing.
pub fn lvm_available(test: &str) -> bool {
    let ok = Path::new("/dev/mapper/control").exists()
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
    /// Loop devices of `size` each, not yet in a VG (the VG name is reserved).
    pub fn devices(test: &str, count: usize, size: Bytes) -> TestVg {
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
            let dev = sh("/sbin/losetup", &["-f", "--show", file.to_str().unwrap()]);
            loops.push(PathBuf::from(dev));
        }
        let mut config = LvmConfig::from_env();
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
    fn drop(&mut self) {
        let cfg = self.lvm.config.config_string();
        let _ = Cmd::new("/sbin/lvm", Duration::from_secs(60))
            .args(["vgchange", "--config", &cfg, "-a", "n", &self.name])
            .run();
        let _ = Cmd::new("/sbin/lvm", Duration::from_secs(60))
            .args(["vgremove", "--config", &cfg, "-f", "-f", &self.name])
            .run();
        for l in &self.loops {
            let _ = Cmd::new("/sbin/losetup", Duration::from_secs(30))
                .args(["-d", &l.to_string_lossy()])
                .run();
        }
    }
}
