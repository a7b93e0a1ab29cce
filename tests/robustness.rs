//! Smaller hardening on real LVM: output into a closed pipe, lvm that never writes metadata
//! where it must not, "maybe committed" lvm commands, and data writers that die with lvchain.
#![allow(clippy::unwrap_used)]

mod common;

use common::{check, lvm_available, poll, uuid, Domain, BIN};
use std::process::{Command, Stdio};

/// `lvchain volume list VG | head -1`: the reader goes away before lvchain writes.
#[test]
fn lvm_volume_list_into_a_closed_pipe_exits_quietly() {
    if !lvm_available("closedpipe") {
        return;
    }
    let d = Domain::new("closedpipe");
    let img = uuid();
    let mut leaf = d.create(&["--image", &img, "--size", "8M", "--format", "qcow2"]);
    for _ in 0..3 {
        leaf = d.create(&["--parent", &leaf]);
    }
    for json in [false, true] {
        let mut c = Command::new(BIN.as_str());
        c.args(["volume", "list", d.name()]);
        if json {
            c.arg("--json");
        }
        for (k, v) in d.vg.env() {
            c.env(k, v);
        }
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The read end goes before lvchain writes (it runs lvm first).
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "json={json}: {stderr}");
        assert!(!stderr.contains("panicked"), "json={json}: {stderr}");
        assert!(stderr.is_empty(), "json={json}: quiet: {stderr}");
    }
    // Through a shell, as users type it: the first line arrives, nobody panics.
    let devs = d.vg.env();
    let f = lvchain::exec::Cmd::new("/bin/sh", std::time::Duration::from_secs(120))
        .env(&devs[0].0, &devs[0].1)
        .args([
            "-c",
            &format!("'{}' volume list {} | head -1", BIN.as_str(), d.name()),
        ])
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    assert!(f.stdout.starts_with("ID"), "{}", f.stdout);
    assert!(!f.stderr.contains("panicked"), "{}", f.stderr);
}

/// An lvm wrapper (LVCHAIN_LVM) that runs the real lvm but, for the command whose argv holds
/// `matching`, hangs past lvchain's deadline: `after` it ran (the change committed, then
/// "hung") or `before` (nothing changed). Written into the test's temp dir.
fn hanging_lvm(dir: &std::path::Path, matching: &str, when: &str) -> String {
    let path = dir.join(format!("lvm-hang-{when}"));
    let (before, after) = match when {
        "before" => ("sleep 600", ""),
        _ => ("", "sleep 600"),
    };
    let script = format!(
        "#!/bin/sh\ncase \" $* \" in\n  *\" {matching} \"*)\n    {before}\n    /sbin/lvm \"$@\"\n    \
         rc=$?\n    {after}\n    exit $rc ;;\nesac\nexec /sbin/lvm \"$@\"\n"
    );
    std::fs::write(&path, script).unwrap();
    let mut p = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(&path, p).unwrap();
    path.display().to_string()
}

/// lvm commands take a few seconds in the test VM; the hanging one sleeps far past this.
const LVM_TIMEOUT: &str = "20";

fn with_lvm(lvm: &str) -> [(&'static str, &str); 2] {
    [("LVCHAIN_LVM", lvm), ("LVCHAIN_LVM_TIMEOUT", LVM_TIMEOUT)]
}

/// `volume create` of a raw 8M base `id` in image `img`.
fn create_args<'a>(d: &'a Domain, img: &'a str, id: &'a str) -> [&'a str; 11] {
    [
        "volume",
        "create",
        d.name(),
        "--image",
        img,
        "--size",
        "8M",
        "--format",
        "raw",
        "--id",
        id,
    ]
}

#[test]
fn lvm_a_create_commit_that_timed_out_after_committing_reports_success() {
    if !lvm_available("commithang") {
        return;
    }
    let d = Domain::new("commithang");
    let dir = tempfile::tempdir().unwrap();
    let lvm = hanging_lvm(dir.path(), "--deltag LVC_CREATING", "after");
    let (img, id) = (uuid(), uuid());
    let create = create_args(&d, &img, &id);
    let f = d.run_env(&create, &with_lvm(&lvm));
    assert!(f.success(), "the commit happened: success: {f:?}");
    assert_eq!(f.stdout.trim(), id);
    let tags = d.lv_tags(&id).unwrap();
    assert!(!tags.iter().any(|t| t == "LVC_CREATING"), "{tags:?}");
    let v = d.json(&["volume", "info", d.name(), &id]);
    assert_eq!(v["id"], id.as_str());
    let (clean, report) = check(&d);
    assert!(clean, "clean: {report}");
}

#[test]
fn lvm_a_create_commit_that_timed_out_before_committing_is_left_for_gc() {
    if !lvm_available("commitnot") {
        return;
    }
    let d = Domain::new("commitnot");
    let before = d.state();
    let dir = tempfile::tempdir().unwrap();
    let lvm = hanging_lvm(dir.path(), "--deltag LVC_CREATING", "before");
    let (img, id) = (uuid(), uuid());
    let create = create_args(&d, &img, &id);
    let f = d.run_env(&create, &with_lvm(&lvm));
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(f.stderr.contains("gc"), "{}", f.stderr);
    assert!(
        d.lv_tags(&id).unwrap().iter().any(|t| t == "LVC_CREATING"),
        "not committed: still marked"
    );
    let list = d.json(&["volume", "list", d.name()]);
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    d.ok(&["gc", d.name()]);
    assert_eq!(d.state(), before, "after gc nothing of it is left");
}

#[test]
fn lvm_a_removal_mark_that_timed_out_after_committing_completes_the_removal() {
    if !lvm_available("markhang") {
        return;
    }
    let d = Domain::new("markhang");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let leaf = d.create(&["--parent", &base]);
    let dir = tempfile::tempdir().unwrap();
    let lvm = hanging_lvm(dir.path(), "--addtag LVC_REMOVING", "after");
    let f = d.run_env(&["volume", "remove", d.name(), &leaf], &with_lvm(&lvm));
    assert!(f.success(), "marked: the removal went on: {f:?}");
    assert!(d.lv_tags(&leaf).is_none(), "the leaf is gone");
    let chain = d.json(&["image", "chain", d.name(), &img]);
    assert_eq!(chain.as_array().unwrap().len(), 1, "{chain}");
    assert_eq!(chain[0]["role"], "leaf", "{chain}");
    let (clean, report) = check(&d);
    assert!(clean, "clean: {report}");
    // An image removal whose one mark of every member committed, then hung.
    let leaf = d.create(&["--parent", &base]);
    let f = d.run_env(&["image", "remove", d.name(), &img], &with_lvm(&lvm));
    assert!(f.success(), "all marked: the removal went on: {f:?}");
    assert!(d.lv_tags(&leaf).is_none() && d.lv_tags(&base).is_none());
    let (clean, report) = check(&d);
    assert!(clean, "clean: {report}");
}

#[test]
fn lvm_a_removal_mark_that_timed_out_before_committing_refuses_cleanly() {
    if !lvm_available("marknot") {
        return;
    }
    let d = Domain::new("marknot");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let leaf = d.create(&["--parent", &base]);
    let before = d.state();
    let dir = tempfile::tempdir().unwrap();
    let lvm = hanging_lvm(dir.path(), "--addtag LVC_REMOVING", "before");
    for args in [
        ["volume", "remove", d.name(), leaf.as_str()],
        ["image", "remove", d.name(), img.as_str()],
    ] {
        let f = d.run_env(&args, &with_lvm(&lvm));
        assert_eq!(f.code, Some(1), "{args:?}: {f:?}");
        assert!(f.stderr.contains("timed out"), "{}", f.stderr);
        assert!(
            !f.stderr.contains("gc"),
            "nothing is left for gc: {}",
            f.stderr
        );
        assert_eq!(
            d.state(),
            before,
            "{args:?}: a clean failure changes nothing"
        );
    }
    let (clean, report) = check(&d);
    assert!(clean, "clean: {report}");
}

#[test]
fn lvm_a_relative_lvchain_lvm_is_refused() {
    let f = lvchain::exec::Cmd::new(BIN.as_str(), std::time::Duration::from_secs(60))
        .env("LVCHAIN_LVM", "lvm")
        .args(["volume", "list", "novg"])
        .run()
        .unwrap();
    assert_eq!(f.code, Some(1), "{f:?}");
    assert!(
        f.stderr.contains("LVCHAIN_LVM") && f.stderr.contains("absolute"),
        "{}",
        f.stderr
    );
}

/// A digest of every PV's metadata area (everything before the first extent), read directly.
fn metadata_areas(d: &Domain) -> String {
    let mut out = String::new();
    for pv in &d.vg.loops {
        let pv = pv.display().to_string();
        let f = lvchain::exec::Cmd::new("/bin/sh", std::time::Duration::from_secs(120))
            .args([
                "-c",
                &format!("dd if={pv} bs=1M count=129 iflag=direct status=none | md5sum"),
            ])
            .run()
            .unwrap();
        assert!(f.success(), "{f:?}");
        out.push_str(&format!("{pv} {}", f.stdout));
    }
    out
}

/// Copies the first 129 MiB (label, metadata area) of `pv` to `file`, or back.
fn dd(from: &str, to: &str) {
    let f = lvchain::exec::Cmd::new("/bin/dd", std::time::Duration::from_secs(120))
        .args([
            &format!("if={from}"),
            &format!("of={to}"),
            "bs=1M",
            "count=129",
            "conv=notrunc",
            "status=none",
        ])
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
}

/// An lvm wrapper that logs each command line (one per line) to `log`, then runs lvm.
fn logging_lvm(dir: &std::path::Path, log: &std::path::Path) -> String {
    let path = dir.join("lvm-log");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec /sbin/lvm \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    let mut p = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut p, 0o755);
    std::fs::set_permissions(&path, p).unwrap();
    path.display().to_string()
}

#[test]
fn lvm_reports_and_activation_run_with_metadata_read_only_and_writes_do_not() {
    if !lvm_available("readonlyflag") {
        return;
    }
    let d = Domain::new("readonlyflag");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("argv");
    let lvm = logging_lvm(dir.path(), &log);
    let env = [("LVCHAIN_LVM", lvm.as_str())];
    let img = uuid();
    let ok = |args: &[&str]| {
        let f = d.run_env(args, &env);
        assert!(f.success(), "{args:?}: {f:?}");
        f.stdout
    };
    let base = ok(&[
        "volume",
        "create",
        d.name(),
        "--image",
        &img,
        "--size",
        "8M",
    ]);
    let base = base.trim();
    ok(&["volume", "create", d.name(), "--parent", base]);
    ok(&["image", "prepare", d.name(), &img]);
    ok(&["volume", "list", d.name()]);
    ok(&["image", "teardown", d.name(), &img]);
    let argv = std::fs::read_to_string(&log).unwrap();
    let (mut reads, mut writes) = (0, 0);
    for line in argv.lines() {
        let sub = line.split(' ').next().unwrap();
        let read = matches!(sub, "lvs" | "vgs" | "pvs")
            || (sub == "lvchange" && (line.contains(" -a ") || line.contains("--refresh")));
        if read {
            reads += 1;
            assert!(line.contains("metadata_read_only=1"), "read-only: {line}");
        } else {
            writes += 1;
            assert!(!line.contains("metadata_read_only"), "a write: {line}");
        }
    }
    assert!(reads > 3 && writes > 3, "both kinds ran: {argv}");
    // lvm parses the string as lvchain passes it, with the setting in effect.
    let cfg = d.vg.lvm.config.read_only_config_string();
    let f = lvchain::exec::Cmd::new("/sbin/lvm", std::time::Duration::from_secs(60))
        .args(["dumpconfig", "--config", &cfg, "global/metadata_read_only"])
        .run()
        .unwrap();
    assert_eq!(f.stdout.trim(), "metadata_read_only=1", "{f:?}");
}

/// A PV whose metadata area holds an older copy than the other PV's (an old copy restored
/// with dd): lvm 2.03.16 warns and uses the newer one; activation, deactivation and reports
/// through lvchain leave both metadata areas as they are.
#[test]
fn lvm_activation_on_a_vg_with_a_stale_metadata_copy_writes_no_metadata() {
    if !lvm_available("stalemda") {
        return;
    }
    let d = Domain::new("stalemda");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M", "--format", "raw"]);
    let pv0 = d.vg.loops[0].display().to_string();
    let old = d.vg.dir.path().join("pv0-old-metadata");
    dd(&pv0, &old.display().to_string());
    d.create(&["--parent", &base]);
    dd(&old.display().to_string(), &pv0);
    let before = metadata_areas(&d);
    let f = d.run(&["volume", "list", d.name()]);
    assert!(f.success(), "{f:?}");
    d.ok(&["image", "prepare", d.name(), &img]);
    d.ok(&["image", "teardown", d.name(), &img]);
    assert_eq!(metadata_areas(&d), before, "no metadata written");
}

fn dmsetup(args: &[&str]) -> lvchain::exec::Finished {
    let f = lvchain::exec::Cmd::new("/sbin/dmsetup", std::time::Duration::from_secs(60))
        .args(args.iter().copied())
        .run()
        .unwrap();
    assert!(f.success(), "dmsetup {args:?}: {f:?}");
    f
}

/// dm-delay devices over a test VG's loop devices (removed, with the loops, on drop).
struct Delayed {
    names: Vec<String>,
    loops: Vec<std::path::PathBuf>,
}

impl Delayed {
    /// The table of device `i`: reads at once, writes after `write_ms`.
    fn table(&self, i: usize, write_ms: u32) -> String {
        let dev = self.loops[i].display().to_string();
        let size = std::fs::read_to_string(format!(
            "/sys/class/block/{}/size",
            self.loops[i].file_name().unwrap().to_str().unwrap()
        ))
        .unwrap();
        format!("0 {} delay {dev} 0 0 {dev} 0 {write_ms}", size.trim())
    }

    /// Slows every write down by `ms` from now on.
    fn set_write_delay(&self, ms: u32) {
        for (i, name) in self.names.iter().enumerate() {
            dmsetup(&["reload", name, "--table", &self.table(i, ms)]);
            dmsetup(&["resume", "--noudevsync", name]);
        }
    }
}

impl Drop for Delayed {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = lvchain::exec::Cmd::new("/sbin/dmsetup", std::time::Duration::from_secs(60))
                .args(["remove", "--noudevsync", n])
                .run();
        }
        for l in &self.loops {
            let _ = lvchain::exec::Cmd::new("/sbin/losetup", std::time::Duration::from_secs(30))
                .args(["-d", &l.to_string_lossy()])
                .run();
        }
    }
}

/// A domain on dm-delay devices (no delay until `set_write_delay`).
fn delayed_domain(test: &str) -> (Delayed, Domain) {
    let mut vg = common::TestVg::devices(test, 2, lvchain::units::Bytes(4 << 30));
    let mut delayed = Delayed {
        names: Vec::new(),
        loops: vg.loops.clone(),
    };
    let mut devs = Vec::new();
    for i in 0..vg.loops.len() {
        let name = format!("{}-slow{i}", vg.name);
        dmsetup(&[
            "create",
            "--noudevsync",
            &name,
            "--table",
            &delayed.table(i, 0),
        ]);
        dmsetup(&["mknodes", &name]); // no udev in the test VM
        delayed.names.push(name.clone());
        devs.push(std::path::PathBuf::from(format!("/dev/mapper/{name}")));
    }
    vg.loops = devs.clone();
    vg.lvm.config.devices = devs;
    let d = Domain { vg };
    let mut args = vec!["domain".to_string(), "create".into(), d.name().to_string()];
    args.extend(d.vg.loops.iter().map(|l| l.display().to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    d.ok(&a);
    (delayed, d)
}

/// The local lease manager's lease of `vol` is held (an OFD lock on its file), read without
/// taking it.
fn lease_held(d: &Domain, vol: &str) -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = std::fs::File::open(format!("/run/lock/lvchain/{}/{vol}.lease", d.name())) else {
        return false;
    };
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor we own, with a valid flock.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    assert_eq!(r, 0);
    fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Processes (pid) whose command line holds `word`, and that are not zombies.
fn processes_with(word: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(word) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// State and kernel wait channel of each thread of `pid` (diagnostics).
fn threads(pid: u32) -> String {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path();
        let stat = std::fs::read_to_string(p.join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(") ")
            .map_or("?", |(_, s)| &s[..1])
            .to_string();
        let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
        out.push(format!("{state}:{wchan}"));
    }
    out.join(" ")
}

/// Whether any thread of the process is still running: a process whose main thread has
/// exited (a zombie) lives on while another thread waits for its I/O.
fn alive(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().any(|t| {
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").and_then(|(_, s)| s.chars().next());
        matches!(state, Some(c) if c != 'Z' && c != 'X')
    })
}

#[test]
fn lvm_a_killed_copy_leaves_no_qemu_img_and_its_lease_is_free_only_after_the_writer_is_gone() {
    if !lvm_available("killcopy") {
        return;
    }
    let (delayed, d) = delayed_domain("killcopy");
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "128M", "--format", "raw"]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("random.raw");
    let f = lvchain::exec::Cmd::new("/bin/dd", std::time::Duration::from_secs(120))
        .args([
            "if=/dev/urandom",
            &format!("of={}", src.display()),
            "bs=1M",
            "count=128",
            "status=none",
        ])
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    // Each write to the domain's devices takes a second: the copy runs for many seconds, and
    // a qemu-img killed in the middle waits for its writes in flight before it is gone.
    delayed.set_write_delay(1000);
    let mut c = Command::new(BIN.as_str());
    c.args([
        "volume",
        "copy",
        d.name(),
        &vol,
        "--generation",
        "0",
        "--from",
    ])
    .arg(&src);
    for (k, v) in d.vg.env() {
        c.env(k, v);
    }
    let mut lvchain = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let writer = poll(std::time::Duration::from_secs(120), || {
        let found = processes_with(&vol).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default() == "qemu-img\n"
        });
        assert!(
            found.is_some() || lvchain.try_wait().unwrap().is_none(),
            "the copy ended too soon"
        );
        found
    })
    .expect("qemu-img never started");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(alive(writer), "the copy is still running");
    assert!(lease_held(&d, &vol));
    lvchain.kill().unwrap(); // SIGKILL
    lvchain.wait().unwrap();
    // Poll: the lease free while the writer still runs (and still does a moment later, not
    // just on its way out) is the failure.
    let killed = std::time::Instant::now();
    let (mut writer_gone, mut lease_free) = (None, None);
    while writer_gone.is_none() || lease_free.is_none() {
        let now = killed.elapsed();
        let held = lease_held(&d, &vol);
        let mut running = alive(writer);
        if running && writer_gone.is_none() && !held {
            // The kernel drops a dying process's locks when it closes its files, after its
            // memory and its I/O in flight are gone and a moment before it turns zombie: a
            // writer that is dead 20 ms later was already past its last write.
            let seen = threads(writer);
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(
                !alive(writer),
                "the lease was free while qemu-img ({writer}) still ran: threads {seen}"
            );
            running = false;
        }
        if !running && writer_gone.is_none() {
            writer_gone = Some(now);
        }
        if !held && lease_free.is_none() {
            lease_free = Some(now);
        }
        assert!(
            now.as_secs() < 60,
            "writer or lease still there after a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(
        writer_gone <= lease_free,
        "qemu-img gone after {writer_gone:?}, the lease free after {lease_free:?}"
    );
    eprintln!("qemu-img gone after {writer_gone:?}, lease free after {lease_free:?}");
    assert_eq!(
        processes_with(&vol),
        Vec::<u32>::new(),
        "no child of the copy is left"
    );
    delayed.set_write_delay(0);
    let s = common::status(&d, &vol, 0);
    assert_eq!(s["state"], "failed", "{s}");
    // The copy goes through when run again.
    d.ok(&[
        "volume",
        "copy",
        d.name(),
        &vol,
        "--generation",
        "0",
        "--from",
        src.to_str().unwrap(),
    ]);
    assert_eq!(common::status(&d, &vol, 0)["state"], "succeeded");
}
