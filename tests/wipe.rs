//! Removed data is not readable by the next volume: removal (of a volume, of an image, or
//! completed by the collector) zeroes the data before its extents are freed, unless the
//! domain's or the volume's `LVC_WIPE` is `none`, which these tests prove is honoured by
//! finding the old data in the next volume on the same extents.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check, lvm_available, qemu_io, uuid, Domain, TestVg};
use lvchain::exec::Cmd;
use std::io::{Read, Write};
use std::time::Duration;

/// What the previous tenant wrote, over the whole volume.
const PATTERN: &[u8; 16] = b"tenant-A-secret!";

fn link(d: &Domain, img: &str, vol: &str) -> String {
    format!("/run/lvchain/{}/{img}/{vol}", d.name())
}

/// Fills the device with PATTERN and flushes it.
fn write_pattern(path: &str) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = device_size(path);
    let chunk = PATTERN.repeat(1 << 16);
    let mut done = 0;
    while done < size {
        let n = chunk.len().min((size - done) as usize);
        f.write_all(&chunk[..n]).unwrap();
        done += n as u64;
    }
    f.sync_all().unwrap();
}

fn device_size(path: &str) -> u64 {
    use std::io::Seek;
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(std::io::SeekFrom::End(0)).unwrap()
}

/// (copies of PATTERN found at 16-byte boundaries, whether every byte is zero).
fn scan(path: &str) -> (usize, bool) {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    // Whole buffers of zeroes or of the pattern are recognised with one comparison each
    // (memcmp): the byte-wise loops below are slow in a debug build under emulation.
    let zeroes = vec![0u8; buf.len()];
    let patterns = PATTERN.repeat(buf.len() / PATTERN.len());
    let (mut found, mut zero) = (0, true);
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let part = &buf[..n];
        if part == &zeroes[..n] {
            continue;
        }
        zero = false;
        if n % 16 == 0 && part == &patterns[..n] {
            found += n / 16;
        } else {
            found += part.chunks(16).filter(|c| *c == PATTERN).count();
        }
    }
    (found, zero)
}

/// A raw volume of `size` in a new image, prepared, filled with PATTERN, torn down.
fn tenant(d: &Domain, size: &str, extra: &[&str]) -> (String, String) {
    let img = uuid();
    let mut args = vec!["--image", &img, "--size", size, "--format", "raw"];
    args.extend_from_slice(extra);
    let vol = d.create(&args);
    d.ok(&["image", "prepare", d.name(), &img]);
    write_pattern(&link(d, &img, &vol));
    assert!(scan(&link(d, &img, &vol)).0 > 0);
    d.ok(&["image", "teardown", d.name(), &img]);
    (img, vol)
}

/// What a new raw volume of `size` reads: (copies of PATTERN, all zero).
fn next_tenant_reads(d: &Domain, size: &str) -> (usize, bool) {
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", size, "--format", "raw"]);
    d.ok(&["image", "prepare", d.name(), &img]);
    let r = scan(&link(d, &img, &vol));
    d.ok(&["image", "teardown", d.name(), &img]);
    r
}

fn domain_wipe(d: &Domain) -> String {
    let info = d.json(&["domain", "info", d.name()]);
    info["wipe"].as_str().unwrap().to_string()
}

fn vg_tags(d: &Domain) -> Vec<String> {
    d.vg.lvm.vgs(d.name()).unwrap().vg_tags
}

/// Runs an lvm command on the test VG's devices (what an operator would do by hand).
fn lvm(d: &Domain, args: &[&str]) {
    let cfg = d.vg.lvm.config.config_string();
    let f = Cmd::new("/sbin/lvm", Duration::from_secs(60))
        .arg(args[0])
        .args(["--config", &cfg])
        .args(args[1..].iter().copied())
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
}

#[test]
fn lvm_wipe_volume_remove_leaves_nothing_for_the_next_volume() {
    if !lvm_available("wiperemove") {
        return;
    }
    let d = Domain::new("wiperemove");
    let (_, vol) = tenant(&d, "16M", &[]);
    let tags = d.lv_tags(&vol).unwrap();
    d.ok(&["volume", "remove", d.name(), &vol]);
    assert_eq!(next_tenant_reads(&d, "16M"), (0, true));
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
    // The default is zero, and it is the absence of a tag (older lvchain reads the domain).
    assert_eq!(domain_wipe(&d), "zero", "the default");
    assert!(!vg_tags(&d).iter().any(|t| t.starts_with("LVC_WIPE")));
    assert!(!tags.iter().any(|t| t.starts_with("LVC_WIPE")), "{tags:?}");
}

#[test]
fn lvm_wipe_image_remove_zeroes_every_member() {
    if !lvm_available("wipeimage") {
        return;
    }
    let d = Domain::new("wipeimage");
    let (img, base) = tenant(&d, "16M", &[]);
    // A qcow2 snapshot whose LV holds the pattern too (written through its own device).
    let snap = d.create(&["--parent", &base]);
    d.ok(&["image", "prepare", d.name(), &img]);
    qemu_io(&link(&d, &img, &snap), "qcow2", "write -P 0x61 0 4M");
    d.ok(&["image", "teardown", d.name(), &img]);
    d.ok(&["image", "remove", d.name(), &img]);
    // One volume over the extents of both.
    let (found, zero) = next_tenant_reads(&d, "64M");
    assert_eq!((found, zero), (0, true));
}

#[test]
fn lvm_wipe_gc_completes_a_removal_that_crashed_after_its_mark() {
    if !lvm_available("wipegc") {
        return;
    }
    let d = Domain::new("wipegc");
    let (_, vol) = tenant(&d, "16M", &[]);
    let f = d.run_env(
        &["volume", "remove", d.name(), &vol],
        &[("LVCHAIN_CRASH_AT", "remove.after-mark")],
    );
    assert_eq!(f.signal, Some(libc::SIGABRT), "{f:?}");
    assert!(d.lv_tags(&vol).unwrap().contains(&"LVC_REMOVING".into()));
    let dry = d.json(&["gc", d.name(), "--dry-run"]);
    let r = d.json(&["gc", d.name()]);
    assert!(d.lv_tags(&vol).is_none());
    assert_eq!(next_tenant_reads(&d, "16M"), (0, true));
    assert!(dry.to_string().contains("wipe"), "{dry}");
    assert!(r.to_string().contains(&format!("LV {vol} wiped")), "{r}");
}

#[test]
fn lvm_wipe_none_on_a_volume_leaves_its_data_and_the_setting_is_honoured() {
    if !lvm_available("wipenonevol") {
        return;
    }
    let d = Domain::new("wipenonevol");
    let (_, vol) = tenant(&d, "16M", &["--wipe", "none"]);
    assert!(d.lv_tags(&vol).unwrap().contains(&"LVC_WIPE=none".into()));
    d.ok(&["volume", "remove", d.name(), &vol]);
    // The next volume gets the same extents and reads the old data: nothing was wiped.
    let (found, _) = next_tenant_reads(&d, "16M");
    assert_eq!(
        found,
        (16 << 20) / 16,
        "every copy of the pattern is still there"
    );
}

#[test]
fn lvm_wipe_none_on_a_domain_leaves_data_and_a_volume_override_wins() {
    if !lvm_available("wipenonedom") {
        return;
    }
    let d = Domain {
        vg: TestVg::devices("wipenonedom", 2, lvchain::units::Bytes(4 << 30)),
    };
    let mut args = vec!["domain", "create", d.name()];
    let loops: Vec<String> = d.vg.loops.iter().map(|l| l.display().to_string()).collect();
    args.extend(loops.iter().map(String::as_str));
    args.extend(["--wipe", "none"]);
    d.ok(&args);
    assert_eq!(domain_wipe(&d), "none");
    assert!(vg_tags(&d).contains(&"LVC_WIPE=none".into()));
    // No override: the domain's none.
    let (_, vol) = tenant(&d, "16M", &[]);
    d.ok(&["volume", "remove", d.name(), &vol]);
    let (img2, next) = {
        let img = uuid();
        let vol = d.create(&["--image", &img, "--size", "16M", "--format", "raw"]);
        (img, vol)
    };
    d.ok(&["image", "prepare", d.name(), &img2]);
    assert!(
        scan(&link(&d, &img2, &next)).0 > 0,
        "domain none: not wiped"
    );
    d.ok(&["image", "teardown", d.name(), &img2]);
    d.ok(&["image", "remove", d.name(), &img2]);
    // The volume's own zero wins over the domain's none.
    let (_, vol) = tenant(&d, "16M", &["--wipe", "zero"]);
    d.ok(&["volume", "remove", d.name(), &vol]);
    assert_eq!(next_tenant_reads(&d, "16M"), (0, true));
    // The setting changes later with one command; the default has no tag.
    d.ok(&["domain", "set", d.name(), "--wipe", "zero"]);
    assert_eq!(domain_wipe(&d), "zero");
    assert!(!vg_tags(&d).iter().any(|t| t.starts_with("LVC_WIPE")));
    d.ok(&["domain", "set", d.name(), "--wipe", "none"]);
    assert_eq!(domain_wipe(&d), "none");
    let table = d.ok(&["domain", "info", d.name()]);
    assert!(table.contains("WIPE") && table.contains("none"), "{table}");
}

#[test]
fn lvm_wipe_bad_settings_are_refused_and_change_nothing() {
    if !lvm_available("wipebad") {
        return;
    }
    let d = Domain::new("wipebad");
    let before = d.state();
    let img = uuid();
    for args in [
        vec![
            "volume",
            "create",
            d.name(),
            "--image",
            &img,
            "--size",
            "8M",
            "--wipe",
            "shred",
        ],
        vec!["domain", "set", d.name(), "--wipe", "random"],
    ] {
        let f = d.run(&args);
        assert_eq!(f.code, Some(2), "{f:?}");
        assert!(f.stderr.contains("zero or none"), "{}", f.stderr);
    }
    assert_eq!(d.state(), before);
}

#[test]
fn lvm_wipe_failure_keeps_the_marker_and_gc_retries() {
    if !lvm_available("wipefail") {
        return;
    }
    let d = Domain::new("wipefail");
    let (_, vol) = tenant(&d, "16M", &[]);
    // A read-only LV cannot be opened for writing: the wipe fails.
    lvm(&d, &["lvchange", "-p", "r", &format!("{}/{vol}", d.name())]);
    let e = d.fails(&["volume", "remove", d.name(), &vol]);
    assert!(
        e.contains(&format!("cannot wipe the data of LV {vol}")) && e.contains("gc"),
        "{e}"
    );
    let tags = d.lv_tags(&vol).unwrap();
    assert!(
        tags.contains(&"LVC_REMOVING".into()),
        "still marked: {tags:?}"
    );
    let r = d.run(&["gc", d.name(), "--json"]);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("cannot wipe"), "{}", r.stdout);
    assert!(d.lv_tags(&vol).is_some(), "not removed unwiped");
    lvm(&d, &["lvchange", "-a", "n", &format!("{}/{vol}", d.name())]);
    lvm(
        &d,
        &["lvchange", "-p", "rw", &format!("{}/{vol}", d.name())],
    );
    d.ok(&["gc", d.name()]);
    assert!(d.lv_tags(&vol).is_none());
    assert_eq!(next_tenant_reads(&d, "16M"), (0, true));
}

#[test]
fn lvm_wipe_covers_an_lv_grown_behind_this_hosts_mapping() {
    if !lvm_available("wipestale") {
        return;
    }
    let d = Domain::new("wipestale");
    // V first, then a tenant right after it whose data stays behind (no wipe).
    let v_img = uuid();
    let v = d.create(&["--image", &v_img, "--size", "8M", "--format", "raw"]);
    let (_, old) = tenant(&d, "8M", &["--wipe", "none"]);
    d.ok(&["volume", "remove", d.name(), &old]);
    // V is active here (prepared) when it grows onto those extents the way another host would
    // grow it: the metadata changes, this host's mapping keeps the old size.
    d.ok(&["image", "prepare", d.name(), &v_img]);
    let cfg = d.vg.lvm.config.config_string();
    let f = Cmd::new("/sbin/lvm", Duration::from_secs(60))
        .args([
            "lvextend",
            "--config",
            &cfg,
            "--driverloaded",
            "n",
            "-L",
            "16m",
        ])
        .arg(format!("{}/{v}", d.name()))
        .run()
        .unwrap();
    assert!(f.success(), "{}", f.stderr);
    assert_eq!(
        device_size(&link(&d, &v_img, &v)),
        8 << 20,
        "the mapping is stale"
    );
    d.ok(&["volume", "remove", d.name(), &v]);
    // Whatever V's extents held, all of them were wiped.
    assert_eq!(next_tenant_reads(&d, "16M"), (0, true));
}

#[test]
fn lvm_wipe_a_forced_domain_removal_wipes_every_volume() {
    if !lvm_available("wipedomain") {
        return;
    }
    let d = Domain::new("wipedomain");
    tenant(&d, "8M", &[]);
    d.ok(&["domain", "remove", d.name(), "--force"]);
    // A new domain on the same devices: its first volume lands where the old one was.
    let loops: Vec<String> = d.vg.loops.iter().map(|l| l.display().to_string()).collect();
    let mut args = vec!["domain", "create", d.name()];
    args.extend(loops.iter().map(String::as_str));
    d.ok(&args);
    assert_eq!(next_tenant_reads(&d, "8M"), (0, true));
}
