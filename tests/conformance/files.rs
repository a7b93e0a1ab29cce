//! What a file domain leaves to other local users, and to directories that are no domain:
//! every file and directory lvchain makes is its owner's alone (or its group's, to read, in
//! a set-group-ID domain directory), read as an unprivileged user to prove it; a plain
//! directory that commands were wrongly pointed at is left exactly as it was; an agent never
//! makes the files of a domain removed under it again.

use crate::file_kit::{bin, domain_tmp, Fd, FdAgent};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// nobody / nogroup on Debian.
const NOBODY: u32 = 65534;

fn root() -> bool {
    // SAFETY: getuid cannot fail.
    unsafe { libc::getuid() == 0 }
}

/// Everything below `dir` (not `dir` itself), sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.push(p.clone());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
    }
    out.sort();
    out
}

/// `file`'s first byte read as user `uid` with group `gid` (no supplementary groups): Ok, or
/// what the reader said.
fn read_as(uid: u32, gid: u32, file: &Path) -> Result<(), String> {
    let o = Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "head",
            "-c1",
        ])
        .arg(file)
        .output()
        .unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// A domain directory `dom` in a temporary directory everyone may enter (as a mount point of
/// a shared file system is); `shared`: group nogroup, set-group-ID.
fn open_dir(shared: bool) -> (tempfile::TempDir, String) {
    let tmp = domain_tmp();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dom = tmp.path().join("dom");
    std::fs::create_dir(&dom).unwrap();
    if shared {
        std::os::unix::fs::chown(&dom, None, Some(NOBODY)).unwrap();
        std::fs::set_permissions(&dom, std::fs::Permissions::from_mode(0o2755)).unwrap();
    } else {
        std::fs::set_permissions(&dom, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = dom.display().to_string();
    (tmp, path)
}

/// A chain of every kind of file the domain holds: a raw base, a qcow2 snapshot of it, a
/// qcow2 volume of another image, their metadata and lease files.
fn fill(d: &Fd) -> Vec<String> {
    let image = uuid::Uuid::new_v4().to_string();
    let base = d.create(&["--image", &image, "--size", "1M", "--format", "raw"]);
    let snap = d.create(&["--parent", &base]);
    let other = uuid::Uuid::new_v4().to_string();
    let other = d.create(&["--image", &other, "--size", "1M", "--format", "qcow2"]);
    d.ok(&["volume", "status", &d.path, &snap, "--generation", "0"]);
    vec![base, snap, other]
}

/// A domain formatted in [`open_dir`] and [`fill`]ed: its directory's keeper, the domain and
/// its volumes; None (skipped) unless root, who alone can read as another user.
fn filled(shared: bool) -> Option<(tempfile::TempDir, Fd, Vec<String>)> {
    if !root() {
        eprintln!("skipped: reading as another user needs root");
        return None;
    }
    let (tmp, path) = open_dir(shared);
    let d = Fd {
        _tmp: domain_tmp(),
        path,
    };
    d.ok(&["domain", "create", "--path", &d.path]);
    let ids = fill(&d);
    Some((tmp, d, ids))
}

fn data_of(d: &Fd, id: &str) -> PathBuf {
    walk(Path::new(&d.path))
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == id))
        .unwrap()
}

#[test]
fn a_file_domain_is_readable_by_its_owner_only() {
    let Some((_tmp, d, ids)) = filled(false) else {
        return;
    };
    let all = walk(Path::new(&d.path));
    assert!(all.len() > 10, "{all:?}");
    for p in &all {
        let m = std::fs::metadata(p).unwrap();
        let want = if m.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(
            m.mode() & 0o7777,
            want,
            "{} is {:o}",
            p.display(),
            m.mode() & 0o7777
        );
    }
    for id in &ids {
        let data = data_of(&d, id);
        let e = read_as(NOBODY, NOBODY, &data).unwrap_err();
        assert!(e.contains("Permission denied"), "{e}");
    }
    // The owner reads them all the same.
    let o = Command::new(bin())
        .args(["--direct", "domain", "check", &d.path])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_set_group_id_domain_directory_shares_reads_with_its_group_only() {
    let Some((_tmp, d, ids)) = filled(true) else {
        return;
    };
    for p in walk(Path::new(&d.path)) {
        let m = std::fs::metadata(&p).unwrap();
        // This host's lock files (`flock`) hold no data and stay private.
        let lock = p.extension().is_some_and(|e| e == "lock" || e == "want");
        let want = match (m.is_dir(), lock) {
            (true, _) => 0o2750,
            (false, true) => 0o600,
            (false, false) => 0o640,
        };
        assert_eq!(m.mode() & 0o7777, want, "{}", p.display());
        assert_eq!(m.gid(), NOBODY, "{} has group {}", p.display(), m.gid());
    }
    for id in &ids {
        let data = data_of(&d, id);
        read_as(NOBODY - 1, NOBODY, &data).unwrap();
        let e = read_as(NOBODY, NOBODY - 1, &data).unwrap_err();
        assert!(e.contains("Permission denied"), "{e}");
    }
}

#[test]
fn commands_on_a_directory_that_is_no_domain_change_nothing_in_it() {
    let tmp = domain_tmp();
    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("notes.txt"), "mine\n").unwrap();
    let p = plain.display().to_string();
    let before = walk(&plain);
    let d = Fd {
        _tmp: domain_tmp(),
        path: p.clone(),
    };
    let vol = "2f794df7-eaf6-46ac-8195-28c9a02bc5ef";
    for args in [
        vec!["volume", "create", &p, "--image", vol, "--size", "1M"],
        vec!["volume", "remove", &p, vol],
        vec!["domain", "set", &p, "--wipe", "none"],
        vec!["gc", &p],
        vec!["domain", "check", &p],
        vec!["volume", "list", &p],
        vec!["domain", "remove", &p],
        vec!["domain", "remove", &p, "--force"],
    ] {
        let o = d.run(&args);
        assert!(!o.status.success(), "lvchain {args:?} succeeded");
        let said = String::from_utf8_lossy(&o.stderr);
        assert!(
            said.contains("not an lvchain domain"),
            "lvchain {args:?}: {said}"
        );
        assert_eq!(walk(&plain), before, "after lvchain {args:?}");
    }
    // Somebody's own dom_md is not taken for a format's leftovers.
    std::fs::create_dir(plain.join("dom_md")).unwrap();
    std::fs::write(plain.join("dom_md/x"), "").unwrap();
    let before = walk(&plain);
    for args in [
        vec!["gc", &p],
        vec!["domain", "remove", &p],
        vec!["volume", "create", &p, "--image", vol, "--size", "1M"],
    ] {
        assert!(!d.run(&args).status.success(), "lvchain {args:?}");
        assert_eq!(walk(&plain), before, "after lvchain {args:?}");
    }
}

#[test]
fn an_agent_does_not_make_the_files_of_a_domain_removed_under_it() {
    let d = Fd::new();
    let agent = FdAgent::start(&d.path, "1");
    let seg = crate::file_kit::segment(&d.path);
    let image = uuid::Uuid::new_v4().to_string();
    let vol = d.create(&["--image", &image, "--size", "1M"]);
    let (st, v) = agent.call("GET", &format!("/v1/domains/{seg}/volumes"), "");
    assert_eq!(st, 200, "{v}");
    d.ok(&["volume", "remove", &d.path, &vol]);
    d.ok(&["domain", "remove", &d.path]);
    assert_eq!(walk(Path::new(&d.path)), Vec::<PathBuf>::new());
    // Three of the agent's collections later, and requests for the removed domain.
    std::thread::sleep(std::time::Duration::from_millis(3500));
    for (method, route) in [("GET", "volumes"), ("POST", "gc"), ("GET", "check")] {
        let (st, v) = agent.call(method, &format!("/v1/domains/{seg}/{route}"), "");
        assert!(st >= 400, "{method} {route}: {st} {v}");
    }
    assert_eq!(
        walk(Path::new(&d.path)),
        Vec::<PathBuf>::new(),
        "agent log:\n{}",
        agent.log()
    );
}

#[test]
fn an_agent_under_umask_0077_makes_its_socket_directory_walkable() {
    use std::os::unix::process::CommandExt;
    let d = Fd::new();
    let run = tempfile::tempdir().unwrap();
    let socket = run.path().join("lvchain/sub/agent.sock");
    let mut c = Command::new(bin());
    c.args(["agent", "--socket", socket.to_str().unwrap()])
        .args([
            "--domain",
            &d.path,
            "--gc-interval",
            "0",
            "--census-interval",
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for v in crate::file_kit::engine_env() {
        c.env_remove(v);
    }
    // SAFETY: umask is async-signal-safe and only sets the child's mask.
    unsafe {
        c.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    let mut child = c.spawn().unwrap();
    crate::http::wait_until_answering(&socket, std::time::Duration::from_secs(30), String::new);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
    let walked = [run.path().join("lvchain"), run.path().join("lvchain/sub")];
    let modes: Vec<u32> = walked.iter().map(|p| mode(p)).collect();
    let sock = mode(&socket);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(modes, vec![0o755, 0o755], "{walked:?}");
    assert_eq!(sock, 0o600);
}

/// A read-only bind mount of `dir` (unmounted on drop).
struct ReadOnly(PathBuf);

impl ReadOnly {
    fn of(dir: &str) -> ReadOnly {
        let at = PathBuf::from(format!("{dir}-ro"));
        std::fs::create_dir(&at).unwrap();
        let run = |args: &[&str]| {
            let o = Command::new("mount").args(args).output().unwrap();
            assert!(o.status.success(), "mount {args:?}: {o:?}");
        };
        run(&["--bind", dir, at.to_str().unwrap()]);
        let ro = ReadOnly(at);
        run(&["-o", "remount,ro,bind", ro.0.to_str().unwrap()]);
        ro
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn every_read_works_on_a_read_only_mount() {
    if !root() {
        eprintln!("skipped: a read-only mount needs root");
        return;
    }
    let d = Fd::new();
    let image = uuid::Uuid::new_v4().to_string();
    let base = d.create(&["--image", &image, "--size", "1M", "--format", "raw"]);
    let snap = d.create(&["--parent", &base]);
    let listing = walk(Path::new(&d.path));
    let ro = ReadOnly::of(&d.path);
    let r = ro.0.display().to_string();
    let reads: Vec<Vec<&str>> = vec![
        vec!["volume", "info", &r, &snap],
        vec!["volume", "info", &r, &base],
        vec!["volume", "status", &r, &snap, "--generation", "0"],
        vec!["volume", "list", &r],
        vec!["image", "chain", &r, &image],
        vec!["domain", "info", &r],
        vec!["domain", "check", &r],
    ];
    for args in &reads {
        let mut json = vec!["--json"];
        json.extend_from_slice(args);
        let o = d.run(&json);
        assert!(
            o.status.success(),
            "lvchain {args:?} on a read-only mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let rw: Vec<&str> = json
            .iter()
            .map(|a| if *a == r { d.path.as_str() } else { *a })
            .collect();
        let same = d.run(&rw);
        let view = |out: &[u8]| {
            let text = String::from_utf8_lossy(out).replace(&r, &d.path);
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if let Some(o) = v.as_object_mut() {
                o.remove("seconds");
            }
            v
        };
        assert_eq!(view(&o.stdout), view(&same.stdout), "lvchain {args:?}");
    }
    assert_eq!(walk(Path::new(&d.path)), listing, "a read wrote");
}
