//! sanlock lease tests.
//!
//! Host-runnable (no daemon): formatting with libsanlock's direct functions and reading the
//! records back with lvchain's own decoder; the daemon-unavailable error.
//! VM-only (`scripts/vm-run scripts/test-sanlock-vm <this test binary>`): the scenario with the
//! daemon, which needs `LVCHAIN_TEST_SANLOCK=1` and `LVCHAIN_TEST_SANLOCK_DEV` (an O_DIRECT
//! capable block device, e.g. a loop device); without them it prints "skipped: ..." and passes.
//! Processes here are started with std::process::Command: these are test drivers, not lvchain
//! code (which starts programs only through `lvchain::exec`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sanlock::{
    self as lease, ondisk, AcquireOptions, DiskOwnerStatus, LeaveMode, Lockspace, OwnerStatus,
    Registration, Resource, SanlockError, SectorSize, ALIGN,
};

const LS_NAME: &str = "lvchain-test";
const IO_TIMEOUT: u32 = 5;
const HOLDER_ENV: &str = "LVCHAIN_LEASE_HOLDER";
const HOLDER_JOIN_ENV: &str = "LVCHAIN_LEASE_HOLDER_JOIN";
const HOLDER_LS_ENV: &str = "LVCHAIN_LEASE_HOLDER_LS";

fn vm_device() -> Option<PathBuf> {
    if std::env::var("LVCHAIN_TEST_SANLOCK").as_deref() != Ok("1") {
        println!("skipped: LVCHAIN_TEST_SANLOCK=1 is not set (run scripts/vm-run scripts/test-sanlock-vm <test binary>)");
        return None;
    }
    match std::env::var_os("LVCHAIN_TEST_SANLOCK_DEV") {
        Some(d) => Some(PathBuf::from(d)),
        None => {
            println!("skipped: LVCHAIN_TEST_SANLOCK_DEV (lease device) is not set");
            None
        }
    }
}

/// The sectors of the lease storage at `path` (512 for a file, the logical block size of a
/// device).
fn sectors(path: &Path) -> SectorSize {
    SectorSize::of_device(path).expect("sector size of the lease storage")
}

fn lockspace(path: &Path, host_id: u64) -> Lockspace {
    Lockspace {
        name: LS_NAME.into(),
        host_id,
        path: path.to_path_buf(),
        offset: 0,
        sector_size: sectors(path),
    }
}

fn resource(path: &Path, name: &str, slot: u64) -> Resource {
    Resource {
        lockspace: LS_NAME.into(),
        name: name.into(),
        path: path.to_path_buf(),
        offset: slot * ALIGN,
        sector_size: sectors(path),
    }
}

fn library_loads() -> bool {
    match lease::ffi::lib() {
        Ok(_) => true,
        Err(e) => {
            println!("skipped: {e}");
            false
        }
    }
}

#[test]
fn format_then_read_records_back_without_daemon() {
    if std::env::var("LVCHAIN_TEST_SANLOCK").as_deref() == Ok("1") {
        // In the VM /tmp is tmpfs, which has no O_DIRECT; vm_lease_lifecycle formats a device.
        println!("skipped: in the VM (no O_DIRECT file system for a temporary file)");
        return;
    }
    if !library_loads() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("leases");
    std::fs::write(&path, vec![0u8; 3 << 20]).expect("lease file");
    let ls = lockspace(&path, 0);
    let res = resource(&path, "vol-0001", 1);
    lease::format_lockspace(&ls, IO_TIMEOUT).expect("format lockspace");
    lease::format_resource(&res).expect("format resource");

    let host1 = ondisk::read_host_lease(&ls, 1).expect("host 1 lease");
    assert_eq!(host1.kind, ondisk::RecordKind::Delta);
    assert_eq!(host1.io_timeout, IO_TIMEOUT as u16);
    assert!(host1.is_free());
    let host2000 = ondisk::read_host_lease(&ls, 2000).expect("host 2000 lease");
    assert_eq!(host2000.space_name, LS_NAME);
    let leader = ondisk::read_resource_leader(&res).expect("leader");
    assert_eq!(leader.kind, ondisk::RecordKind::Paxos);
    assert_eq!(leader.sector_size, 512);
    assert!(leader.is_free());
    let st = ondisk::probe_owner(&res, &ls, Duration::ZERO).expect("probe");
    assert_eq!(st.is_running(), Some(false));
    println!("formatted lockspace + resource, read back without daemon: {st:?}");

    // A resource formatted under another name is not mistaken for ours.
    assert!(matches!(
        ondisk::read_resource_leader(&resource(&path, "vol-0002", 1)),
        Err(SanlockError::NotFormatted { .. })
    ));
    // Misaligned offsets never reach sanlock.
    let mut bad = res.clone();
    bad.offset = 4096;
    assert!(matches!(
        lease::format_resource(&bad),
        Err(SanlockError::InvalidArgument(_))
    ));
}

#[test]
fn register_without_daemon_is_daemon_unavailable() {
    if std::env::var("LVCHAIN_TEST_SANLOCK").as_deref() == Ok("1") || !library_loads() {
        println!("skipped: a sanlock daemon may be running here");
        return;
    }
    if Path::new("/run/sanlock/sanlock.sock").exists() {
        println!("skipped: /run/sanlock/sanlock.sock exists");
        return;
    }
    match Registration::register() {
        Err(SanlockError::DaemonUnavailable { .. }) => {}
        other => panic!("expected DaemonUnavailable, got {other:?}"),
    }
}

/// Child-process role: registers, acquires the resource named in $LVCHAIN_LEASE_HOLDER
/// (`path:name:slot`), prints HOLDER-ACQUIRED and sleeps until killed. A no-op in a normal run.
#[test]
fn lease_holder_child() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let mut parts = spec.rsplitn(3, ':');
    let slot: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .expect("slot in holder spec");
    let name = parts.next().expect("name in holder spec").to_string();
    let path = PathBuf::from(parts.next().expect("path in holder spec"));
    let res = resource(&path, &name, slot);
    // Optionally join a lockspace first ("name:host_id:offset"), through the daemon named by
    // SANLOCK_RUN_DIR: the child then plays another host.
    if let Ok(join) = std::env::var(HOLDER_JOIN_ENV) {
        let f: Vec<&str> = join.split(':').collect();
        assert_eq!(f.len(), 3, "join spec {join}");
        let ls = Lockspace {
            name: f[0].to_string(),
            host_id: f[1].parse().expect("host id"),
            path: path.clone(),
            offset: f[2].parse().expect("offset"),
            sector_size: sectors(&path),
        };
        if let Err(e) = lease::join_lockspace(&ls, IO_TIMEOUT) {
            println!("HOLDER-FAILED join: {e}");
            return;
        }
    }
    let res = Resource {
        lockspace: std::env::var(HOLDER_LS_ENV).unwrap_or(res.lockspace),
        ..res
    };
    let mut reg = Registration::register().expect("child register");
    match reg.acquire(&res, AcquireOptions::default()) {
        Ok(()) => println!("HOLDER-ACQUIRED pid {}", std::process::id()),
        Err(e) => {
            println!("HOLDER-FAILED {e}");
            return;
        }
    }
    std::thread::sleep(Duration::from_secs(600));
}

struct Holder {
    child: Child,
}

impl Holder {
    fn spawn(path: &Path, name: &str, slot: u64) -> Holder {
        Holder::spawn_env(path, name, slot, &[])
    }

    fn spawn_env(path: &Path, name: &str, slot: u64, env: &[(&str, String)]) -> Holder {
        let exe = std::env::current_exe().expect("test binary path");
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "lease_holder_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_ENV, format!("{}:{name}:{slot}", path.display()))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn holder");
        let stdout = child.stdout.take().expect("holder stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // libtest prints "test lease_holder_child ... " before the child's own line.
                Ok(l) if l.contains("HOLDER-ACQUIRED") => {
                    println!("holder child: {l}");
                    return Holder { child };
                }
                Ok(l) if l.contains("HOLDER-FAILED") => panic!("holder child: {l}"),
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    panic!("holder child did not acquire within 60s: {e}");
                }
            }
        }
    }

    fn kill9(mut self) {
        let pid = self.child.id();
        self.child.kill().expect("SIGKILL holder"); // Child::kill sends SIGKILL
        let st = self.child.wait().expect("reap holder");
        println!("holder child pid {pid} killed with SIGKILL: {st}");
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// owner_status, asked again while it is undecided (for at most 3 renewal periods).
fn owner_status_decided(res: &Resource) -> OwnerStatus {
    let deadline = Instant::now() + Duration::from_secs(3 * 2 * u64::from(IO_TIMEOUT));
    loop {
        let st = lease::owner_status(res).expect("owner status");
        if st.is_running().is_some() || Instant::now() >= deadline {
            return st;
        }
        println!("owner status undecided yet: {st:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn wait_free(res: &Resource, within: Duration) -> lease::ResourceOwners {
    let deadline = Instant::now() + within;
    loop {
        let o = lease::read_resource_owners(res).expect("read owners");
        if o.owners.is_empty() || Instant::now() >= deadline {
            return o;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The whole single-host scenario, in order (joining a lockspace takes ~2 × io_timeout, so it
/// is done once).
#[test]
fn vm_lease_lifecycle() {
    let Some(dev) = vm_device() else {
        return;
    };
    let t0 = Instant::now();
    let ls = lockspace(&dev, 1);
    let r1 = resource(&dev, "vol-0001", 1);
    let r2 = resource(&dev, "vol-0002", 2);

    lease::format_lockspace(&ls, IO_TIMEOUT).expect("format lockspace");
    lease::format_resource(&r1).expect("format r1");
    lease::format_resource(&r2).expect("format r2");
    println!(
        "step format: lockspace at 0, resources at 1 MiB and 2 MiB on {}",
        dev.display()
    );

    // Acquire before joining: the lockspace is missing.
    let mut reg = Registration::register().expect("register");
    let e = reg
        .acquire(&r1, AcquireOptions::default())
        .expect_err("acquire without lockspace");
    println!("step acquire-before-join: {e}");
    assert!(
        matches!(e, SanlockError::LockspaceNotJoined { .. }),
        "unexpected {e:?}"
    );

    assert!(!lease::is_joined(&ls).expect("inq before join"));
    lease::join_lockspace(&ls, IO_TIMEOUT).expect("join");
    assert!(lease::is_joined(&ls).expect("inq after join"));
    let e = lease::join_lockspace(&ls, IO_TIMEOUT).expect_err("second join");
    assert!(
        matches!(e, SanlockError::LockspaceAlreadyJoined { .. }),
        "{e:?}"
    );
    println!(
        "step join: host 1 joined in {:?}; second join: {e}",
        t0.elapsed()
    );

    // A child process acquires r1; this process reads the owners.
    let holder = Holder::spawn(&dev, "vol-0001", 1);
    let owners = lease::read_resource_owners(&r1).expect("read owners");
    println!("step owners-while-held: {owners:?}");
    assert_eq!(owners.owners.len(), 1);
    assert_eq!(owners.owners[0].host_id, 1);
    assert!(owners.owners[0].generation >= 1);
    // Right after joining, the daemon may not have read the host leases yet: undecided (None)
    // until its next renewal (every 2 × io_timeout).
    let st = owner_status_decided(&r1);
    println!(
        "step owner-status-while-held (daemon): {st:?} running={:?}",
        st.is_running()
    );
    assert!(matches!(st, OwnerStatus::Held { ref owner, .. } if owner.host_id == 1));
    assert_eq!(st.is_running(), Some(true));
    let disk = ondisk::probe_owner(&r1, &ls, ondisk::renewal_window(IO_TIMEOUT as u16))
        .expect("probe while held");
    println!(
        "step probe-while-held (no daemon): {disk:?} running={:?}",
        disk.is_running()
    );
    assert!(matches!(
        disk,
        DiskOwnerStatus::HeldLive { owner_id: 1, .. }
    ));

    // A second acquire while the child holds it fails with the held class.
    let e = reg
        .acquire(&r1, AcquireOptions::default())
        .expect_err("second acquire while held");
    println!(
        "step second-acquire-while-held: {e} (is_held={})",
        e.is_held()
    );
    assert!(e.is_held(), "{e:?}");

    // SIGKILL the holder: the daemon releases its lease.
    holder.kill9();
    let after = wait_free(&r1, Duration::from_secs(30));
    println!("step owners-after-kill: {after:?}");
    assert!(after.owners.is_empty(), "lease not freed: {after:?}");
    let st = lease::owner_status(&r1).expect("owner status after kill");
    assert_eq!(st.is_running(), Some(false));
    let disk = ondisk::probe_owner(&r1, &ls, Duration::from_secs(1)).expect("probe after kill");
    println!("step probe-after-kill (no daemon): {disk:?}");
    assert!(matches!(disk, DiskOwnerStatus::Free { last_owner: 1, .. }));

    // Now this process gets it.
    reg.acquire(&r1, AcquireOptions::default())
        .expect("acquire after holder died");
    let held = reg.held().expect("inquire");
    println!("step acquire-after-kill: ok, held={held:?}");
    assert!(held.iter().any(|h| h.starts_with("lvchain-test:vol-0001:")));
    reg.release(&r1).expect("release");
    assert!(lease::read_resource_owners(&r1)
        .expect("owners after release")
        .owners
        .is_empty());
    let e = reg.release(&r1).expect_err("release of a lease not held");
    assert!(matches!(e, SanlockError::NotHeld { .. }), "{e:?}");
    println!("step release: ok; second release: {e}");

    // Dropping the registration (closing its socket) releases what it held.
    reg.acquire(&r2, AcquireOptions::default())
        .expect("acquire r2");
    assert_eq!(
        lease::read_resource_owners(&r2)
            .expect("owners r2")
            .owners
            .len(),
        1
    );
    drop(reg);
    let after = wait_free(&r2, Duration::from_secs(30));
    println!(
        "step drop-registration: owners of r2 after drop: {:?}",
        after.owners
    );
    assert!(after.owners.is_empty());

    // A holder alive while leaving with IfUnused: refused.
    let holder = Holder::spawn(&dev, "vol-0002", 2);
    let e = lease::leave_lockspace(&ls, LeaveMode::IfUnused).expect_err("leave while used");
    println!("step leave-if-unused-while-held: {e}");
    assert!(matches!(e, SanlockError::LockspaceInUse { .. }), "{e:?}");
    holder.kill9();
    wait_free(&r2, Duration::from_secs(30));

    lease::leave_lockspace(&ls, LeaveMode::IfUnused).expect("leave");
    assert!(!lease::is_joined(&ls).expect("inq after leave"));
    let host1 = ondisk::read_host_lease(&ls, 1).expect("host lease after leave");
    println!(
        "step leave: joined=false host 1 delta lease free on disk={} (generation {})",
        host1.is_free(),
        host1.owner_generation
    );
    assert!(host1.is_free());
    println!("vm_lease_lifecycle done in {:?}", t0.elapsed());
}

/// Two hosts on one device: a second sanlock daemon (its own run dir, host id 2) stands for
/// another machine. Its process holds the lease; host 1 sees it held by a live host 2 (through
/// its daemon and from disk), cannot acquire it; then host 2's daemon is SIGKILLed (a crashing
/// host): its lease stays on disk, and the reader sees that host 2 stopped renewing.
#[test]
fn vm_held_by_other_host() {
    let Some(dev) = vm_device() else {
        return;
    };
    let (Ok(run2), Ok(pid2)) = (
        std::env::var("LVCHAIN_TEST_SANLOCK_RUN_DIR2"),
        std::env::var("LVCHAIN_TEST_SANLOCK_PID2"),
    ) else {
        println!("skipped: no second sanlock daemon (LVCHAIN_TEST_SANLOCK_RUN_DIR2/_PID2)");
        return;
    };
    let t0 = Instant::now();
    let ls_name = "lvchain-test2";
    let ls = Lockspace {
        name: ls_name.into(),
        host_id: 1,
        path: dev.clone(),
        offset: 4 * ALIGN,
        sector_size: sectors(&dev),
    };
    let res = Resource {
        lockspace: ls_name.into(),
        name: "vol-shared".into(),
        path: dev.clone(),
        offset: 5 * ALIGN,
        sector_size: sectors(&dev),
    };
    lease::format_lockspace(&ls, IO_TIMEOUT).expect("format lockspace 2");
    lease::format_resource(&res).expect("format resource");
    lease::join_lockspace(&ls, IO_TIMEOUT).expect("host 1 joins");
    println!(
        "step 2hosts-join: host 1 joined {ls_name} in {:?}",
        t0.elapsed()
    );

    let holder = Holder::spawn_env(
        &dev,
        "vol-shared",
        5,
        &[
            ("SANLOCK_RUN_DIR", run2),
            (HOLDER_JOIN_ENV, format!("{ls_name}:2:{}", 4 * ALIGN)),
            (HOLDER_LS_ENV, ls_name.to_string()),
        ],
    );
    let owners = lease::read_resource_owners(&res).expect("owners");
    println!("step 2hosts-owners: {owners:?}");
    assert_eq!(owners.owners.len(), 1);
    assert_eq!(owners.owners[0].host_id, 2);
    let st = owner_status_decided(&res);
    println!(
        "step 2hosts-owner-status (daemon of host 1): {st:?} running={:?}",
        st.is_running()
    );
    assert!(matches!(st, OwnerStatus::Held { ref owner, .. } if owner.host_id == 2));
    assert_ne!(st.is_running(), Some(false));
    let disk =
        ondisk::probe_owner(&res, &ls, ondisk::renewal_window(IO_TIMEOUT as u16)).expect("probe");
    println!(
        "step 2hosts-probe (no daemon): {disk:?} running={:?}",
        disk.is_running()
    );
    assert!(matches!(
        disk,
        DiskOwnerStatus::HeldLive { owner_id: 2, .. }
    ));

    let mut reg = Registration::register().expect("register host 1");
    let e = reg
        .acquire(
            &res,
            AcquireOptions {
                no_wait: true,
                ..Default::default()
            },
        )
        .expect_err("acquire held by host 2");
    println!(
        "step 2hosts-acquire-on-host-1: {e} (is_held={})",
        e.is_held()
    );
    assert!(e.is_held(), "{e:?}");

    // Host 2 crashes: its daemon dies, nothing is released on disk.
    let pid: i32 = pid2.parse().expect("pid of daemon 2");
    // SAFETY: plain kill(2) of the second daemon started by scripts/test-sanlock-vm.
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill daemon 2");
    let disk = ondisk::probe_owner(&res, &ls, ondisk::renewal_window(IO_TIMEOUT as u16))
        .expect("probe after crash");
    println!(
        "step 2hosts-probe-after-host-2-crash (no daemon): {disk:?} running={:?}",
        disk.is_running()
    );
    assert!(matches!(
        disk,
        DiskOwnerStatus::HeldUnrenewed { owner_id: 2, .. }
    ));
    assert_eq!(disk.is_running(), None);
    let e = reg
        .acquire(
            &res,
            AcquireOptions {
                no_wait: true,
                ..Default::default()
            },
        )
        .expect_err("acquire while host 2's lease has not timed out");
    println!(
        "step 2hosts-acquire-after-crash: {e} (is_held={})",
        e.is_held()
    );
    assert!(e.is_held(), "{e:?}");
    drop(holder);
    drop(reg);
    lease::leave_lockspace(&ls, LeaveMode::KillHolders).expect("host 1 leaves");
    println!("vm_held_by_other_host done in {:?}", t0.elapsed());
}
