//! The Debian package (`scripts/build-deb`; scripts/test builds it on the host from the binary
//! under test and names it in `LVCHAIN_TEST_DEB`) installed in the VM with `dpkg -i`, as an
//! administrator would, and removed again:
//!
//! - installed, `lvchain --version` is the crate's version, `man lvchain` (and a subcommand's
//!   page) shows the NAME section, the completions load (bash registers `_lvchain`), the
//!   installed unit passes `systemd-analyze verify` with its manual-page check on (the page
//!   its `Documentation=` names is installed);
//! - the agent runs from the installed unit's `ExecStart` (the package's `/usr/bin/lvchain`)
//!   in the unit's sandbox (`tests/common/unit.rs`: ProtectSystem=strict and its writable
//!   paths, PrivateTmp, UMask, LimitNOFILE, NoNewPrivileges), served a block and a file domain
//!   by its config file: it says READY=1, answers, creates a volume in each (LVM's locks and
//!   metadata archive, the file domain under /mnt are writable there), prepares an image
//!   (its link directories 0755 whatever the umask, the socket 0600), and ends with status 0 on
//!   SIGTERM;
//! - `dpkg -r` leaves both domains as they were (every LV with its tags, size and attributes,
//!   the metadata area, every file of the file domain byte for byte) and the conffile
//!   /etc/lvchain/agent.toml in place; an administrator's change to it survives a
//!   reinstallation; `dpkg --purge` removes it and /etc/lvchain, and still leaves the domains
//!   as they were, clean by `domain check`.
//!
//! The package is purged at the end, also when the test fails (the VM's other tests run the
//! binary under test, never /usr/bin/lvchain; while it is installed its config file, all
//! comments, changes no agent's settings). A machine where lvchain is installed is refused:
//! the test would remove it.
#![allow(clippy::unwrap_used)]

mod common;

use common::http::request;
use common::unit::{exec_argv, mount_of, service_settings, shown_at, which, Service, UnitAgent};
use common::{check, lvm_available, uuid, Domain, BIN};
use lvchain::exec::{Cmd, Finished};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const INSTALLED_BIN: &str = "/usr/bin/lvchain";
const INSTALLED_UNIT: &str = "/lib/systemd/system/lvchain-agent.service";
const CONFFILE: &str = "/etc/lvchain/agent.toml";

/// Runs `program` with `args`; its outcome.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut c = Cmd::new(program, Duration::from_secs(300)).args(args.iter().copied());
    for (k, v) in env {
        c = c.env(k, v);
    }
    c.run().unwrap()
}

fn ok(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let f = run(program, args, env);
    assert!(
        f.success(),
        "{} failed ({:?}): {}{}",
        f.argv,
        f.code,
        f.stdout,
        f.stderr
    );
    f.stdout
}

/// dpkg with `args`. man-db's trigger (the package ships manual pages) would rebuild its
/// whole index, empty in the VM (/var/cache is a tmpfs there): minutes of 20,000 pages read
/// over 9p under TCG. dpkg runs in a mount namespace whose /var/lib/man-db is an empty
/// tmpfs, so the trigger says "Not building database" and ends; `man` finds a page without
/// the index. Everything dpkg writes is on the machine's file systems as usual.
fn dpkg(args: &[&str]) -> Finished {
    let mut argv = vec![
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        "[ ! -d /var/lib/man-db ] || mount -t tmpfs lvchain-test /var/lib/man-db; exec dpkg \"$@\"",
        "sh",
    ];
    argv.extend_from_slice(args);
    run("unshare", &argv, &[("DEBIAN_FRONTEND", "noninteractive")])
}

fn dpkg_ok(args: &[&str]) -> String {
    let f = dpkg(args);
    assert!(
        f.success(),
        "dpkg {args:?} failed ({:?}): {}{}",
        f.code,
        f.stdout,
        f.stderr
    );
    f.stdout
}

/// dpkg's word on the package: `ii 0.1.0`, `rc 0.1.0` (removed, its conffiles kept), or
/// None (unknown, or purged).
fn package_state() -> Option<String> {
    let f = run(
        "dpkg-query",
        &["-W", "-f", "${db:Status-Abbrev}${Version}", "lvchain"],
        &[],
    );
    let said = f.stdout.trim();
    (f.success() && !said.is_empty() && !said.starts_with("un"))
        .then(|| said.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Purges the package when dropped (a failed test leaves no installed lvchain behind).
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if package_state().is_some() {
            let f = dpkg(&["--purge", "lvchain"]);
            if !f.success() {
                eprintln!("could not purge lvchain: {}{}", f.stdout, f.stderr);
            }
        }
    }
}

/// Every entry under `dir`, by relative path: its kind, mode, size and a hash of its bytes
/// (a link: its target).
fn tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("link -> {}", target.display()));
            } else if m.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &path, out);
            } else {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&path).unwrap().hash(&mut h);
                let what = format!("file {mode:o} {} bytes {:x}", m.len(), h.finish());
                out.insert(
                    rel,
                    format!(
                        "{what} mtime {}",
                        m.mtime_nsec() + m.mtime() * 1_000_000_000
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What identifies both domains: the block domain's LVs, tags, sizes, attributes and
/// metadata area; its volume list; every file of the file domain.
fn domains_state(d: &Domain, fd: &Path) -> (String, String, BTreeMap<String, String>) {
    let listed = d.ok(&["volume", "list", d.name(), "--json", "--direct"]);
    (d.state(), listed, tree(fd))
}

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// One line of /proc/PID/status (`Umask:`, `NoNewPrivs:`), its value.
fn status_field(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// `%2Fmnt%2F...`: a file domain's directory as the one path segment of its routes.
fn segment(path: &str) -> String {
    path.replace('/', "%2F")
}

fn post(agent: &UnitAgent, path: &str, body: &str) -> serde_json::Value {
    let (status, answer) = request(&agent.socket(), "POST", path, body.as_bytes());
    let text = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        (200..300).contains(&status),
        "POST {path} {body}: {status} {text}\n{}",
        agent.log()
    );
    serde_json::from_str(&text).unwrap()
}

#[test]
fn lvm_package_installs_serves_from_its_unit_and_leaves_every_domain_on_removal() {
    let name = "lvm_package_installs_serves_from_its_unit_and_leaves_every_domain_on_removal";
    if !lvm_available(name) {
        return;
    }
    let required = std::env::var("LVCHAIN_TEST_REQUIRE_LVM").as_deref() == Ok("1");
    let Some(deb) = std::env::var_os("LVCHAIN_TEST_DEB").map(PathBuf::from) else {
        assert!(
            !required,
            "{name}: LVCHAIN_TEST_DEB is not set (scripts/test builds the package with \
             scripts/build-deb and names it there)"
        );
        eprintln!("skipped {name}: no LVCHAIN_TEST_DEB (scripts/build-deb makes the package)");
        return;
    };
    for tool in ["dpkg", "man", "systemd-analyze", "setpriv", "unshare"] {
        assert!(
            which(tool).is_some(),
            "{name}: {tool} is missing (scripts/vm-setup installs man-db and systemd)"
        );
    }
    assert_eq!(
        package_state(),
        None,
        "lvchain is installed on this machine: this test installs and purges the package; \
         run it in the test VM (scripts/test)"
    );
    assert!(
        !Path::new(INSTALLED_BIN).exists(),
        "{INSTALLED_BIN} exists and is not the package's: this test would replace it"
    );
    let deb = deb.to_str().unwrap().to_string();

    // Domains made by the binary under test before the package is there: a block domain with
    // an image of two volumes, a file domain with one.
    let d = Domain::new("package");
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "8M"]);
    let top = d.create(&["--parent", &base]);
    let dir = tempfile::tempdir().unwrap();
    let fd = dir.path().join("filedomain");
    std::fs::create_dir(&fd).unwrap();
    let fd_arg = fd.to_str().unwrap().to_string();
    ok(
        BIN.as_str(),
        &["domain", "create", "--path", &fd_arg, "--direct"],
        &[],
    );
    let file_img = uuid();
    let file_vol = ok(
        BIN.as_str(),
        &[
            "volume", "create", &fd_arg, "--image", &file_img, "--size", "1M", "--direct",
        ],
        &[],
    );

    // Installed.
    let _purge = Purge;
    dpkg_ok(&["-i", &deb]);
    assert_eq!(package_state().as_deref(), Some(&*format!("ii {VERSION}")));
    let files = ok("dpkg-query", &["-L", "lvchain"], &[]);
    for want in [
        INSTALLED_BIN,
        INSTALLED_UNIT,
        CONFFILE,
        "/usr/share/man/man1/lvchain.1.gz",
        "/usr/share/man/man1/lvchain-agent.1.gz",
        "/usr/share/man/man1/lvchain-volume-create.1.gz",
        "/usr/share/bash-completion/completions/lvchain",
        "/usr/share/zsh/vendor-completions/_lvchain",
        "/usr/share/fish/vendor_completions.d/lvchain.fish",
        "/usr/share/doc/lvchain/copyright",
    ] {
        assert!(
            files.lines().any(|l| l == want),
            "{want} not in the package: {files}"
        );
        assert!(Path::new(want).exists(), "{want} not installed");
    }
    assert_eq!(mode(Path::new(INSTALLED_BIN)), 0o755);
    assert_eq!(
        ok(INSTALLED_BIN, &["--version"], &[]),
        format!("lvchain {VERSION}\n")
    );

    // The manual pages, as `man` finds them.
    let man_env = [("LC_ALL", "C"), ("MANWIDTH", "80")];
    assert_eq!(
        ok("man", &["-w", "lvchain"], &man_env).trim(),
        "/usr/share/man/man1/lvchain.1.gz"
    );
    let page = ok("man", &["-P", "cat", "lvchain"], &man_env);
    assert!(
        page.contains("NAME\n       lvchain - VM disk-image volumes"),
        "{page}"
    );
    let page = ok("man", &["-P", "cat", "lvchain-volume-create"], &man_env);
    assert!(
        page.contains("NAME\n       lvchain-volume-create"),
        "{page}"
    );
    assert!(page.contains("--parent <PARENT>"), "{page}");

    // The completions load: bash registers its function for lvchain.
    let registered = ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/lvchain && complete -p lvchain",
        ],
        &[],
    );
    assert!(registered.contains("-F _lvchain"), "{registered}");
    let zsh = std::fs::read_to_string("/usr/share/zsh/vendor-completions/_lvchain").unwrap();
    assert!(zsh.starts_with("#compdef lvchain"), "{zsh}");
    let fish =
        std::fs::read_to_string("/usr/share/fish/vendor_completions.d/lvchain.fish").unwrap();
    assert!(fish.contains("complete -c lvchain"), "{fish}");

    // The installed unit verifies, manual-page check included (man:lvchain-agent(1)).
    let verify = run("systemd-analyze", &["verify", INSTALLED_UNIT], &[]);
    let said = verify.stderr.clone() + &verify.stdout;
    assert!(verify.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("lvchain-agent"),
        "systemd-analyze verify: {said}"
    );

    // The agent from the installed unit's command line, in its sandbox, served both domains
    // by a config file mounted over the conffile in its namespace (the real one, which other
    // tests' agents may read meanwhile, stays all comments).
    let service: Service = service_settings(&std::fs::read_to_string(INSTALLED_UNIT).unwrap());
    let argv = exec_argv(&service);
    assert_eq!(argv, [INSTALLED_BIN, "agent"], "ExecStart: {argv:?}");
    let fd_seen = shown_at(0);
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "domains = [\"{}\", \"{fd_seen}\"]\ngc_interval = 0\ncensus_interval = 0\n",
            d.name()
        ),
    )
    .unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let mut agent = UnitAgent::start(
        &service,
        &argv,
        &run_dir,
        Some(&config),
        std::slice::from_ref(&fd),
        &dir.path().join("agent.log"),
    );
    assert_eq!(agent.notified(), "READY=1", "{}", agent.log());
    let pid = agent.pid();
    // The sandbox is the unit's: the system read-only, what the agent and lvm write writable.
    for p in ["/", "/usr", "/etc", "/var", "/etc/lvchain/agent.toml"] {
        assert!(mount_of(&pid, p).read_only, "{p} is writable for the agent");
    }
    for p in [
        "/run/lvchain",
        "/run/lock/lvchain",
        "/run/lock/lvm",
        "/etc/lvm/archive",
        "/mnt",
    ] {
        assert!(
            !mount_of(&pid, p).read_only,
            "{p} is read-only for the agent"
        );
    }
    let tmp = mount_of(&pid, "/tmp");
    assert_eq!(
        (tmp.point.as_str(), tmp.fs_type.as_str()),
        ("/tmp", "tmpfs")
    );
    if dir.path().starts_with("/tmp") {
        // /proc/PID/root resolves paths in the agent's namespace: its /tmp is its own.
        let seen = PathBuf::from(format!("/proc/{pid}/root{}", dir.path().display()));
        assert!(
            !seen.exists(),
            "the test's {} is in the agent's /tmp",
            dir.path().display()
        );
    }
    assert_eq!(status_field(&pid, "Umask:"), "0077");
    assert_eq!(status_field(&pid, "NoNewPrivs:"), "1");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        nofile
            .split_whitespace()
            .skip(3)
            .take(2)
            .collect::<Vec<_>>(),
        ["4096", "4096"],
        "{nofile}"
    );

    // It serves: the volumes made before, a snapshot and a file-domain volume made by it.
    let (status, body) = request(
        &agent.socket(),
        "GET",
        &format!("/v1/domains/{}/volumes", d.name()),
        b"",
    );
    let listed = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{listed}\n{}", agent.log());
    assert!(listed.contains(&base) && listed.contains(&top), "{listed}");
    let snap = post(
        &agent,
        &format!("/v1/domains/{}/volumes", d.name()),
        &format!("{{\"parent\": \"{top}\"}}"),
    );
    let snap = snap["id"].as_str().unwrap().to_string();
    let made = post(
        &agent,
        &format!("/v1/domains/{}/volumes", segment(&fd_seen)),
        &format!("{{\"image\": \"{}\", \"size\": 1048576}}", uuid()),
    );
    assert!(made["id"].is_string(), "{made}");
    // An image prepared by it: its link directories 0755 whatever the unit's umask (a VM's
    // qemu, not root, walks them to the devices, whose own modes guard them).
    post(
        &agent,
        &format!("/v1/domains/{}/images/{img}/prepare", d.name()),
        "{}",
    );
    let links = run_dir.join(d.name()).join(&img);
    assert_eq!(mode(&links), 0o755, "{}", links.display());
    assert_eq!(mode(&run_dir.join(d.name())), 0o755);
    assert_eq!(mode(&agent.socket()), 0o600);
    assert_eq!(mode(&run_dir), 0o755, "RuntimeDirectoryMode");
    post(
        &agent,
        &format!("/v1/domains/{}/images/{img}/teardown", d.name()),
        "{}",
    );
    let code = agent.terminate(Duration::from_secs(45));
    assert_eq!(code, Some(0), "{}", agent.log());
    drop(agent);
    let volumes = d.ok(&["volume", "list", d.name(), "--direct"]);
    assert!(volumes.contains(&snap), "{volumes}");

    // Removed: the domains as they were, the conffile kept.
    let before = domains_state(&d, &fd);
    dpkg_ok(&["-r", "lvchain"]);
    assert_eq!(package_state().as_deref(), Some(&*format!("rc {VERSION}")));
    for gone in [
        INSTALLED_BIN,
        INSTALLED_UNIT,
        "/usr/share/man/man1/lvchain.1.gz",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left after dpkg -r");
    }
    let shipped = std::fs::read_to_string(CONFFILE).expect("the conffile stays after dpkg -r");
    assert_eq!(domains_state(&d, &fd), before, "dpkg -r changed a domain");
    assert!(Path::new("/run/lvchain").is_dir());

    // An administrator's change to the conffile survives a reinstallation.
    let changed = format!("{shipped}# changed by {name}\n");
    std::fs::write(CONFFILE, &changed).unwrap();
    dpkg_ok(&["-i", &deb]);
    assert_eq!(std::fs::read_to_string(CONFFILE).unwrap(), changed);

    // Purged: the conffile and its directory gone, the domains still as they were, clean.
    dpkg_ok(&["--purge", "lvchain"]);
    assert_eq!(package_state(), None);
    for gone in [INSTALLED_BIN, INSTALLED_UNIT, CONFFILE, "/etc/lvchain"] {
        assert!(!Path::new(gone).exists(), "{gone} left after dpkg --purge");
    }
    assert_eq!(
        domains_state(&d, &fd),
        before,
        "dpkg --purge changed a domain"
    );
    let (clean, report) = check(&d);
    assert!(clean, "{report}");
    let fd_check = run(BIN.as_str(), &["domain", "check", &fd_arg, "--direct"], &[]);
    assert!(fd_check.success(), "{}{}", fd_check.stdout, fd_check.stderr);
    assert!(
        ok(BIN.as_str(), &["volume", "list", &fd_arg, "--direct"], &[]).contains(file_vol.trim())
    );
}
