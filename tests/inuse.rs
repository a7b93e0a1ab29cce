//! Images in use, on real LVM: an image prepared through the host agent is held by it (a shared
//! lease on every chain member) until its teardown, and taken again after the agent restarts;
//! every exclusive-lease operation of another process (volume remove, image remove, copy,
//! update, fence, the collector's undo) is refused naming the holding host and changes nothing;
//! `volume info` shows where the volume is prepared; a raw volume prepared here may grow (the
//! agent refreshes a mapping that an extend elsewhere left small), a qcow2 resize may not; a
//! sanlock domain refuses an in-process prepare unless `--without-agent`; an image prepared
//! for a VM leaves its leaf's lease to the VM's lock manager (libvirt's `<lease>`, taken
//! here as libvirt's sanlock plugin takes it), and `image xml` prints a disk and a lease that
//! libvirt's schema accepts.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/virt_xml.rs"]
mod virt_xml;

use common::{lvm_available, sanlock_available, uuid, Domain, BIN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `lvchain agent` serving one domain, with its log kept; killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(d: &Domain, dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let log = dir.join("agent.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut c = Command::new(BIN.as_str());
        c.args(["agent", "--socket", socket.to_str().unwrap()])
            .args(["--domain", d.name(), "--gc-interval", "0"])
            .env("RUST_LOG", "lvchain=debug")
            .stdout(Stdio::null())
            .stderr(out);
        for (k, v) in d.vg.env() {
            c.env(k, v);
        }
        let child = c.spawn().unwrap();
        let a = Agent { child, socket, log };
        common::http::wait_until_answering(&a.socket, Duration::from_secs(30), || a.log());
        a
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        common::http::call_within(
            &self.socket,
            method,
            path,
            body.as_bytes(),
            Duration::from_secs(120),
            || self.log(),
        )
    }

    fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    fn prepare(&self, d: &Domain, image: &str) -> Value {
        let path = format!("/v1/domains/{}/images/{image}/prepare", d.name());
        self.ok("POST", &path, json!({}))
    }

    fn teardown(&self, d: &Domain, image: &str) -> (u16, Value) {
        let path = format!("/v1/domains/{}/images/{image}/teardown", d.name());
        self.call("POST", &path, json!({}))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs lvchain, asserts it fails with a message containing every one of `want`, and that
/// the domain is as it was; returns the message.
fn refused(d: &Domain, args: &[&str], want: &[&str]) -> String {
    let before = d.state();
    let e = d.fails(args);
    for w in want {
        assert!(e.contains(w), "lvchain {args:?}: {e:?} lacks {w:?}");
    }
    assert_eq!(d.state(), before, "lvchain {args:?} changed the domain");
    e
}

/// Every exclusive-lease operation on `vol` (the leaf of `img`, base `base`) is refused,
/// naming `host`, and changes nothing.
fn all_refused(d: &Domain, img: &str, base: &str, vol: &str, host: &str) {
    let vg = d.name();
    let prepared = ["is in use on", host];
    refused(d, &["volume", "remove", vg, vol], &prepared);
    refused(d, &["image", "remove", vg, img], &prepared);
    let (_dir, file) = common::dir_file(&[0x55; 1 << 20]);
    let file = file.to_str().unwrap();
    let copy = [
        "volume",
        "copy",
        vg,
        vol,
        "--from",
        file,
        "--generation",
        "0",
    ];
    refused(d, &copy, &prepared);
    let update = ["volume", "update", vg, vol, "--generation", "0"];
    refused(
        d,
        &[&update[..], &["--description", "x"]].concat(),
        &prepared,
    );
    refused(
        d,
        &["volume", "fence", vg, vol, "--generation", "0"],
        &prepared,
    );
    refused(
        d,
        &["volume", "fence", vg, base, "--generation", "0"],
        &prepared,
    );
}

fn prepared_on(d: &Domain, vol: &str) -> Value {
    d.json(&["volume", "info", d.name(), vol])["prepared_on"].clone()
}

/// The size of a device as this host maps it (BLKGETSIZE64 through a seek to its end).
fn device_size(path: &str) -> u64 {
    use std::io::Seek;
    std::fs::File::open(path)
        .unwrap()
        .seek(std::io::SeekFrom::End(0))
        .unwrap()
}

#[test]
fn lvm_inuse_the_agent_holds_prepared_images_until_teardown_and_after_a_restart() {
    if !lvm_available("lvm_inuse_the_agent_holds_prepared_images") {
        return;
    }
    let d = Domain::new("inuseheld");
    let vg = d.name();
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&d, dir.path());
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "64M"]);
    let leaf = d.create(&["--parent", &base, "--format", "qcow2"]);
    assert_eq!(prepared_on(&d, &leaf), json!([]));

    agent.prepare(&d, &img);
    assert_eq!(prepared_on(&d, &leaf), json!([0]));
    assert_eq!(prepared_on(&d, &base), json!([0]));
    all_refused(&d, &img, &base, &leaf, "this host");
    // The API names it too, with its own kind.
    let (status, e) = agent.call(
        "DELETE",
        &format!("/v1/domains/{vg}/volumes/{leaf}"),
        json!({}),
    );
    assert_eq!((status, e["kind"].as_str()), (423, Some("prepared")), "{e}");
    // A snapshot of an image in use is the live flow: allowed, and the image is re-prepared
    // with the new leaf held too.
    let top = d.create(&["--parent", &leaf, "--format", "qcow2"]);
    agent.prepare(&d, &img);
    assert_eq!(prepared_on(&d, &top), json!([0]));

    // A teardown that finds the image open refuses and keeps the leases.
    let link = format!("/run/lvchain/{vg}/{img}/{top}");
    let open = std::fs::File::open(&link).unwrap();
    let (status, e) = agent.teardown(&d, &img);
    assert_eq!((status, e["kind"].as_str()), (409, Some("in_use")), "{e}");
    drop(open);
    refused(&d, &["volume", "remove", vg, &top], &["this host"]);

    // kill -9 releases the leases with the process; the restarted agent takes them again
    // before it serves, because the image's links are still there.
    agent.kill();
    assert_eq!(prepared_on(&d, &top), json!([]));
    let agent = Agent::start(&d, dir.path());
    assert!(
        agent
            .log()
            .contains("holding the shared leases of an image prepared before the restart"),
        "{}",
        agent.log()
    );
    assert_eq!(prepared_on(&d, &top), json!([0]));
    assert_eq!(prepared_on(&d, &base), json!([0]));
    all_refused(&d, &img, &base, &top, "this host");

    // Teardown releases them: the removal now goes through.
    let (status, e) = agent.teardown(&d, &img);
    assert_eq!(status, 200, "{e}");
    assert_eq!(prepared_on(&d, &top), json!([]));
    d.ok(&["volume", "remove", vg, &top]);
    d.ok(&["image", "remove", vg, &img]);
    assert!(d.json(&["domain", "check", vg])["clean"].as_bool().unwrap());
}

#[test]
fn lvm_inuse_the_collector_does_not_undo_under_a_prepared_image() {
    if !lvm_available("lvm_inuse_the_collector_does_not_undo_under_a_prepared_image") {
        return;
    }
    let d = Domain::new("inusegc");
    let vg = d.name();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&d, dir.path());
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "64M"]);
    agent.prepare(&d, &img);
    // A snapshot that dies after turning its parent internal: the collector's undo makes the
    // parent a leaf again, a metadata write under the parent's exclusive lease.
    let f = d.run_env(
        &["volume", "create", vg, "--parent", &base],
        &[("LVCHAIN_CRASH_AT", "create.after-parent-update")],
    );
    assert!(!f.success());
    let before = d.state();
    let gc = d.run(&["gc", vg, "--json"]);
    assert!(!gc.success(), "{gc:?}");
    assert!(gc.stdout.contains("is in use on this host"), "{gc:?}");
    assert_eq!(d.state(), before, "the refused undo changed the domain");
    let (status, e) = agent.teardown(&d, &img);
    assert_eq!(status, 200, "{e}");
    d.ok(&["gc", vg]);
    assert!(d.json(&["domain", "check", vg])["clean"].as_bool().unwrap());
    assert_eq!(d.json(&["volume", "info", vg, &base])["role"], "leaf");
}

#[test]
fn lvm_inuse_a_prepared_raw_volume_grows_and_the_agent_refreshes_its_mapping() {
    if !lvm_available("lvm_inuse_a_prepared_raw_volume_grows") {
        return;
    }
    let d = Domain::new("inusegrow");
    let vg = d.name();
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&d, dir.path());
    let img = uuid();
    let vol = d.create(&["--image", &img, "--size", "64M"]);
    let qimg = uuid();
    let qvol = d.create(&["--image", &qimg, "--size", "64M", "--format", "qcow2"]);
    agent.prepare(&d, &img);
    agent.prepare(&d, &qimg);
    let link = format!("/run/lvchain/{vg}/{img}/{vol}");
    let data = vec![0x5a; 1 << 20];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&link)
        .unwrap()
        .write_all(&data)
        .unwrap();

    // The qcow2 header belongs to the qemu that has the image open: refused, nothing changed.
    refused(
        &d,
        &["volume", "extend", vg, &qvol, "--size", "128M"],
        &["is in use on this host", "qcow2 virtual size"],
    );
    // A raw volume grows under its holders.
    let v = d.json(&["volume", "extend", vg, &vol, "--size", "128M"]);
    assert_eq!(v["capacity"], 128 << 20);
    assert_eq!(device_size(&link), 128 << 20);

    // Another host's extend changes the VG metadata only (here: lvm told there is no
    // device-mapper). Without the agent nothing reloads the mapping: it stays small.
    let mut agent = agent;
    agent.kill();
    let cfg = d.vg.lvm.config.config_string();
    let f = lvchain::exec::Cmd::new("/sbin/lvm", Duration::from_secs(60))
        .args([
            "lvextend",
            "--config",
            &cfg,
            "--driverloaded",
            "n",
            "-L",
            "192M",
        ])
        .arg(format!("{vg}/{vol}"))
        .run()
        .unwrap();
    assert!(f.success(), "{f:?}");
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(device_size(&link), 128 << 20, "refreshed without the agent");
    // The agent (held again at its start) sees the LV larger than its mapping and refreshes
    // it at its next tick (every 5 s): one report and one lvchange, each of which takes
    // seconds on a loaded test machine, hence the generous wait.
    let agent = Agent::start(&d, dir.path());
    let start = Instant::now();
    while device_size(&link) != 192 << 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the mapping was not refreshed: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("refreshed after {:?}", start.elapsed());
    let logged = Instant::now();
    while !agent.log().contains("refreshed the mapping") {
        assert!(
            logged.elapsed() < Duration::from_secs(30),
            "{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut back = vec![0; 1 << 20];
    std::fs::File::open(&link)
        .unwrap()
        .read_exact(&mut back)
        .unwrap();
    assert!(
        back == data,
        "the data written before the extend reads back"
    );
    assert_eq!(agent.teardown(&d, &img).0, 200);
    assert_eq!(agent.teardown(&d, &qimg).0, 200);
}

#[test]
fn sanlock_inuse_prepared_images_are_held_in_shared_mode_by_the_agent() {
    if !lvm_available("sanlock_inuse_prepared") || !sanlock_available("sanlock_inuse_prepared") {
        return;
    }
    let d = Domain::new_sanlock("inusesl");
    let vg = d.name();
    d.ok(&["host", "join", vg, "--host-id", "3"]);
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "64M"]);
    let leaf = d.create(&["--parent", &base]);
    // In-process, nothing would hold the leases: refused, changing nothing, unless asked for;
    // the refusal names why the command ran here (the test's LVCHAIN_DEVICES).
    refused(
        &d,
        &["image", "prepare", vg, &img],
        &["--without-agent", "agent", "LVCHAIN_DEVICES"],
    );
    d.ok(&["image", "prepare", vg, &img, "--without-agent"]);
    assert_eq!(prepared_on(&d, &leaf), json!([]));
    d.ok(&["image", "teardown", vg, &img]);

    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&d, dir.path());
    agent.prepare(&d, &img);
    // Prepared again (as after a snapshot): the new leases are taken before the old go.
    agent.prepare(&d, &img);
    assert_eq!(prepared_on(&d, &leaf), json!([3]));
    assert_eq!(prepared_on(&d, &base), json!([3]));
    all_refused(&d, &img, &base, &leaf, "host 3");
    // The agent's restart: held again before serving.
    agent.kill();
    let agent = Agent::start(&d, dir.path());
    assert!(
        agent.log().contains("holding the shared leases"),
        "{}",
        agent.log()
    );
    assert_eq!(prepared_on(&d, &leaf), json!([3]));
    refused(
        &d,
        &["volume", "remove", vg, &leaf],
        &["is in use on host 3"],
    );
    let (status, e) = agent.teardown(&d, &img);
    assert_eq!(status, 200, "{e}");
    assert_eq!(prepared_on(&d, &leaf), json!([]));
    d.ok(&["volume", "remove", vg, &leaf]);
    d.ok(&["image", "remove", vg, &img]);
    drop(agent);
    d.ok(&["host", "leave", vg]);
}

/// The `LOCKSPACE:NAME:PATH:OFFSET` of the `<lease>` element `xml`, as sanlock's client takes it.
fn resource_of(xml: &str) -> String {
    let between = |open: &str, close: &str| {
        let from = xml
            .find(open)
            .unwrap_or_else(|| panic!("no {open} in {xml}"))
            + open.len();
        xml[from..].split(close).next().unwrap().to_string()
    };
    format!(
        "{}:{}:{}:{}",
        between("<lockspace>", "</lockspace>"),
        between("<key>", "</key>"),
        between("path='", "'"),
        between("offset='", "'")
    )
}

/// A process holding `resource` exclusively the way libvirt's sanlock plugin holds a VM's
/// lease: registered with the daemon, the lease acquired, then running (`sanlock client
/// command`). It ends at once when the lease cannot be acquired.
fn hold_as_vm(resource: &str) -> Child {
    Command::new("sanlock")
        .args([
            "client",
            "command",
            "-r",
            resource,
            "-c",
            "/bin/sleep",
            "600",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Whether process `pid` holds `resource` (`sanlock client status`: a line
/// `r LOCKSPACE:NAME:PATH:OFFSET:LVER p PID` per lease held).
fn holds(pid: u32, resource: &str) -> bool {
    let o = Command::new("sanlock")
        .args(["client", "status"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&o.stdout);
    status
        .lines()
        .any(|l| l.starts_with(&format!("r {resource}:")) && l.ends_with(&format!(" p {pid}")))
}

#[test]
fn sanlock_inuse_a_vm_lease_is_left_to_libvirt_and_the_chain_xml_validates() {
    if !lvm_available("sanlock_inuse_vm_lease") || !sanlock_available("sanlock_inuse_vm_lease") {
        return;
    }
    let d = Domain::new_sanlock("inusevm");
    let vg = d.name();
    d.ok(&["host", "join", vg, "--host-id", "4"]);
    let img = uuid();
    let base = d.create(&["--image", &img, "--size", "64M"]);
    let leaf = d.create(&["--parent", &base]);
    let dir = tempfile::tempdir().unwrap();
    let mut agent = Agent::start(&d, dir.path());
    let prepare = format!("/v1/domains/{vg}/images/{img}/prepare");

    // Prepared as usual, the agent shares the leaf's lease: the VM's cannot be taken.
    agent.prepare(&d, &img);
    let disk = d.ok(&["image", "xml", vg, &img]);
    let lease = d.ok(&["image", "xml", vg, &img, "--lease"]);
    virt_xml::assert_valid(&[&disk]);
    virt_xml::assert_valid(&[&disk, &lease]);
    for want in [
        "<disk type='block' device='disk'>".to_string(),
        format!("<source dev='/run/lvchain/{vg}/{img}/{leaf}'/>"),
        "<format type='raw'/>".into(),
        format!("<source dev='/run/lvchain/{vg}/{img}/{base}'/>"),
    ] {
        assert!(disk.contains(&want), "no {want} in\n{disk}");
    }
    assert!(lease.contains(&format!("<key>{leaf}</key>")), "{lease}");
    assert!(
        lease.contains(&format!("path='/dev/{vg}/leases'")),
        "{lease}"
    );
    let resource = resource_of(&lease);
    let mut vm = hold_as_vm(&resource);
    let refused_in = Instant::now();
    let status = loop {
        if let Some(s) = vm.try_wait().unwrap() {
            break s;
        }
        assert!(
            refused_in.elapsed() < Duration::from_secs(60),
            "the VM got a shared leaf"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !status.success(),
        "the VM's lease was granted beside the agent's"
    );

    // Prepared for a VM: the agent holds the other members; the leaf's lease is the VM's.
    agent.ok("POST", &prepare, json!({ "vm_lease": true }));
    assert_eq!(prepared_on(&d, &leaf), json!([]));
    assert_eq!(prepared_on(&d, &base), json!([4]));
    let mut vm = hold_as_vm(&resource);
    let took = Instant::now();
    while !holds(vm.id(), &resource) {
        assert!(
            vm.try_wait().unwrap().is_none(),
            "the VM could not take its lease"
        );
        assert!(
            took.elapsed() < Duration::from_secs(60),
            "the VM never held its lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nobody else changes the leaf (the VM's lease) or its base (the agent's) meanwhile.
    refused(&d, &["volume", "remove", vg, &leaf], &[]);
    refused(
        &d,
        &[
            "volume",
            "update",
            vg,
            &base,
            "--generation",
            "0",
            "--description",
            "x",
        ],
        &["host 4"],
    );
    // The agent's restart leaves the leaf to the VM again.
    agent.kill();
    let mut agent = Agent::start(&d, dir.path());
    assert!(
        agent.log().contains("holding the shared leases"),
        "{}",
        agent.log()
    );
    assert_eq!(prepared_on(&d, &base), json!([4]));
    assert!(
        holds(vm.id(), &resource),
        "the restarted agent took the VM's lease"
    );
    assert!(vm.try_wait().unwrap().is_none());

    // The VM stops; the image is torn down and forgets it left the leaf to a VM.
    let _ = vm.kill();
    let _ = vm.wait();
    let (status, e) = agent.teardown(&d, &img);
    assert_eq!(status, 200, "{e}");
    assert!(!Path::new(&format!("/run/lvchain/vm-lease/{img}")).exists());
    agent.kill();
    d.ok(&["volume", "remove", vg, &leaf]);
    d.ok(&["image", "remove", vg, &img]);
    d.ok(&["host", "leave", vg]);
}
