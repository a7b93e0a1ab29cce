//! Safe wrappers over libsanlock: formatting (direct, no daemon), lockspace membership,
//! per-process registration with acquire/release, and owner/host queries (daemon).

use std::ffi::{c_char, c_int, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::{classify, Op, SanlockError, Subject};
use super::ffi::{self, SanlkDisk, SanlkHost, SanlkLockspace, SanlkResource1};
use super::{Lockspace, Resource};

fn lib() -> Result<&'static ffi::Lib, SanlockError> {
    ffi::lib().map_err(SanlockError::LibraryUnavailable)
}

fn fill_name(dst: &mut [c_char; ffi::SANLK_NAME_LEN], name: &str) {
    // Names are validated (<= 48 ASCII bytes) before this is called.
    for (d, b) in dst.iter_mut().zip(name.bytes()) {
        *d = b as c_char;
    }
}

fn disk(path: &Path, offset: u64) -> Result<SanlkDisk, SanlockError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.contains(&0) || bytes.len() >= ffi::SANLK_PATH_LEN {
        return Err(SanlockError::InvalidArgument(format!(
            "lease path {} is not usable by sanlock",
            path.display()
        )));
    }
    let mut d = SanlkDisk::zeroed();
    for (dst, b) in d.path.iter_mut().zip(bytes) {
        *dst = *b as c_char;
    }
    d.offset = offset;
    Ok(d)
}

fn c_lockspace(ls: &Lockspace, for_format: bool) -> Result<SanlkLockspace, SanlockError> {
    ls.validate(for_format)?;
    let mut c = SanlkLockspace {
        name: [0; ffi::SANLK_NAME_LEN],
        host_id: if for_format { 0 } else { ls.host_id },
        flags: ls.sector_size.lockspace_flags(),
        host_id_disk: disk(&ls.path, ls.offset)?,
    };
    fill_name(&mut c.name, &ls.name);
    Ok(c)
}

fn c_resource(res: &Resource) -> Result<SanlkResource1, SanlockError> {
    res.validate()?;
    let mut c = SanlkResource1 {
        lockspace_name: [0; ffi::SANLK_NAME_LEN],
        name: [0; ffi::SANLK_NAME_LEN],
        lver: 0,
        data64: 0,
        data32: 0,
        unused: 0,
        flags: res.sector_size.resource_flags(),
        num_disks: 1,
        disk: disk(&res.path, res.offset)?,
    };
    fill_name(&mut c.lockspace_name, &res.lockspace);
    fill_name(&mut c.name, &res.name);
    Ok(c)
}

fn ls_subject(ls: &Lockspace) -> Subject<'_> {
    Subject {
        lockspace: &ls.name,
        resource: "",
        path: ls.path.to_str().unwrap_or("<non-UTF-8 path>"),
        offset: ls.offset,
        host_id: ls.host_id,
    }
}

fn res_subject(res: &Resource) -> Subject<'_> {
    Subject {
        lockspace: &res.lockspace,
        resource: &res.name,
        path: res.path.to_str().unwrap_or("<non-UTF-8 path>"),
        offset: res.offset,
        host_id: 0,
    }
}

/// Writes an empty lockspace area (delta leases for host ids 1..=`ls.sector_size.max_hosts()`,
/// in sectors of `ls.sector_size`) at `ls.path`+`ls.offset` without the daemon (`sanlock direct init -s` equivalent). `io_timeout_s` is stored in the
/// host leases (0: sanlock's default, 10 s). `ls.host_id` is ignored. Destroys what was there:
/// never call it on a lockspace in use.
pub fn format_lockspace(ls: &Lockspace, io_timeout_s: u32) -> Result<(), SanlockError> {
    let l = lib()?;
    let mut c = c_lockspace(ls, true)?;
    // SAFETY: `c` is a valid, fully initialised sanlk_lockspace that outlives the call.
    let rv = unsafe { (l.direct_write_lockspace)(&mut c, 0, 0, io_timeout_s) };
    if rv < 0 {
        return Err(classify(Op::WriteLockspace, rv, &ls_subject(ls)));
    }
    Ok(())
}

/// Writes a free resource lease (in sectors of `res.sector_size`) at `res.path`+`res.offset`
/// without the daemon
/// (`sanlock direct init -r` equivalent). Destroys the lease that was there.
pub fn format_resource(res: &Resource) -> Result<(), SanlockError> {
    let l = lib()?;
    let mut c = c_resource(res)?;
    // SAFETY: `c` is a valid sanlk_resource with one disk, alive for the call.
    let rv = unsafe { (l.direct_write_resource)(&mut c, 0, 0, 0) };
    if rv < 0 {
        return Err(classify(Op::WriteResource, rv, &res_subject(res)));
    }
    Ok(())
}

/// Joins the lockspace as `ls.host_id` and returns once this host holds its delta lease (sanlock
/// needs about 2 × io_timeout for that). `io_timeout_s` 0 uses the daemon's default.
pub fn join_lockspace(ls: &Lockspace, io_timeout_s: u32) -> Result<(), SanlockError> {
    let l = lib()?;
    let mut c = c_lockspace(ls, false)?;
    // SAFETY: valid struct alive for the call.
    let rv = unsafe { (l.add_lockspace_timeout)(&mut c, 0, io_timeout_s) };
    if rv < 0 {
        return Err(classify(Op::AddLockspace, rv, &ls_subject(ls)));
    }
    Ok(())
}

/// What leaving a lockspace does to processes still holding leases in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveMode {
    /// Fail with [`SanlockError::LockspaceInUse`] if any lease of the lockspace is held.
    IfUnused,
    /// The daemon kills the processes holding leases in it, then leaves.
    KillHolders,
}

/// Leaves the lockspace (releases this host's delta lease).
pub fn leave_lockspace(ls: &Lockspace, mode: LeaveMode) -> Result<(), SanlockError> {
    let l = lib()?;
    let mut c = c_lockspace(ls, false)?;
    let flags = match mode {
        LeaveMode::IfUnused => ffi::SANLK_REM_UNUSED,
        LeaveMode::KillHolders => 0,
    };
    // SAFETY: valid struct alive for the call.
    let rv = unsafe { (l.rem_lockspace)(&mut c, flags) };
    if rv < 0 {
        return Err(classify(Op::RemLockspace, rv, &ls_subject(ls)));
    }
    Ok(())
}

/// Whether this host has joined the lockspace (and holds its host id lease).
pub fn is_joined(ls: &Lockspace) -> Result<bool, SanlockError> {
    let l = lib()?;
    let mut c = c_lockspace(ls, false)?;
    // SAFETY: valid struct alive for the call.
    let rv = unsafe { (l.inq_lockspace)(&mut c, 0) };
    match rv {
        0 => Ok(true),
        r if r == -libc::ENOENT => Ok(false),
        r => Err(classify(Op::InqLockspace, r, &ls_subject(ls))),
    }
}

/// Liveness of a host id as this host's daemon sees it (`SANLK_HOST_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Joined too recently to judge.
    Unknown,
    /// The host id's delta lease is not held.
    Free,
    /// Renewing its delta lease.
    Live,
    /// Not renewed for longer than the failure time: it may still be killing its processes.
    Fail,
    /// Not renewed for longer than the watchdog time: its leases can be taken over.
    Dead,
    Other(u32),
}

impl HostState {
    fn from_flags(flags: u32) -> Self {
        match flags & ffi::SANLK_HOST_MASK {
            ffi::SANLK_HOST_UNKNOWN => HostState::Unknown,
            ffi::SANLK_HOST_FREE => HostState::Free,
            ffi::SANLK_HOST_LIVE => HostState::Live,
            ffi::SANLK_HOST_FAIL => HostState::Fail,
            ffi::SANLK_HOST_DEAD => HostState::Dead,
            o => HostState::Other(o),
        }
    }
}

/// One host as sanlock reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    pub host_id: u64,
    pub generation: u64,
    /// Delta lease timestamp (the owner's clock) or, for a resource owner, the lease timestamp.
    pub timestamp: u64,
    pub io_timeout: u32,
    pub state: HostState,
}

impl From<&SanlkHost> for HostInfo {
    fn from(h: &SanlkHost) -> Self {
        HostInfo {
            host_id: h.host_id,
            generation: h.generation,
            timestamp: h.timestamp,
            io_timeout: h.io_timeout,
            state: HostState::from_flags(h.flags),
        }
    }
}

/// Copies a malloc'ed array of `sanlk_host` returned by libsanlock and frees it.
///
/// # Safety
/// `p` is NULL or points to `count` initialised `sanlk_host` allocated with malloc.
unsafe fn take_hosts(p: *mut SanlkHost, count: c_int) -> Vec<HostInfo> {
    if p.is_null() {
        return Vec::new();
    }
    let n = usize::try_from(count).unwrap_or(0);
    // SAFETY: guaranteed by the caller.
    let v = unsafe { std::slice::from_raw_parts(p, n) }
        .iter()
        .map(HostInfo::from)
        .collect();
    // SAFETY: allocated by libsanlock with malloc, not used after this.
    unsafe { libc::free(p.cast()) };
    v
}

/// Hosts of the lockspace `lockspace` (joined on this host) as this host's daemon sees them:
/// `host_id` 0 lists every host seen alive, otherwise just that one.
pub fn get_hosts(lockspace: &str, host_id: u64) -> Result<Vec<HostInfo>, SanlockError> {
    super::validate_name("lockspace", lockspace)?;
    let l = lib()?;
    let name = CString::new(lockspace)
        .map_err(|_| SanlockError::InvalidArgument("lockspace name contains NUL".into()))?;
    let mut p: *mut SanlkHost = std::ptr::null_mut();
    let mut count: c_int = 0;
    // SAFETY: name is NUL-terminated; p and count are valid out-pointers.
    let rv = unsafe { (l.get_hosts)(name.as_ptr(), host_id, &mut p, &mut count, 0) };
    // SAFETY: on return p is NULL or a malloc'ed array of `count` hosts.
    let hosts = unsafe { take_hosts(p, count) };
    if rv < 0 {
        let s = Subject {
            lockspace,
            host_id,
            ..Subject::default()
        };
        return Err(classify(Op::GetHosts, rv, &s));
    }
    Ok(hosts)
}

/// A resource lease as read from disk by the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceOwners {
    /// Lease version: incremented by every acquire.
    pub lver: u64,
    /// Shared holders exist (lvchain takes exclusive leases only).
    pub shared: bool,
    /// Current holders: host id + generation (+ timestamp for an exclusive holder). Empty:
    /// the lease is free.
    pub owners: Vec<HostInfo>,
}

/// Reads the lease's holders from disk (the daemon does the I/O; this host need not have joined
/// the lockspace).
pub fn read_resource_owners(res: &Resource) -> Result<ResourceOwners, SanlockError> {
    let l = lib()?;
    let mut c = c_resource(res)?;
    let mut p: *mut SanlkHost = std::ptr::null_mut();
    let mut count: c_int = 0;
    // SAFETY: valid struct and out-pointers, all alive for the call.
    let rv = unsafe { (l.read_resource_owners)(&mut c, 0, &mut p, &mut count) };
    // SAFETY: NULL or a malloc'ed array of `count` hosts.
    let owners = unsafe { take_hosts(p, count) };
    if rv < 0 {
        return Err(classify(Op::ReadOwners, rv, &res_subject(res)));
    }
    Ok(ResourceOwners {
        lver: c.lver,
        shared: c.flags & ffi::SANLK_RES_SHARED != 0,
        owners,
    })
}

/// Who holds a resource, with the owner's liveness, as this host's daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerStatus {
    /// Nobody holds the lease.
    Free { lver: u64 },
    /// Held in shared mode by `holders` (readers): no exclusive holder.
    Shared { lver: u64, holders: Vec<HostInfo> },
    /// Held by `owner` (host id + generation of the holding instance); `host` is the owner's
    /// current delta lease as seen by this host's daemon (`None`: unknown to it).
    Held {
        lver: u64,
        owner: HostInfo,
        host: Option<HostInfo>,
    },
}

impl OwnerStatus {
    /// Is an operation under this lease running? `Some(true)`: held by a live host instance;
    /// `Some(false)`: free, or held by a dead host or by an earlier instance (generation) of a
    /// host; `None`: cannot tell yet (owner unknown, failing, or this host joined too recently).
    pub fn is_running(&self) -> Option<bool> {
        match self {
            OwnerStatus::Free { .. } | OwnerStatus::Shared { .. } => Some(false),
            OwnerStatus::Held { owner, host, .. } => match host {
                None => None,
                Some(h) if h.generation > owner.generation => Some(false),
                Some(h) => match h.state {
                    HostState::Live => Some(true),
                    HostState::Dead | HostState::Free => Some(false),
                    HostState::Unknown | HostState::Fail | HostState::Other(_) => None,
                },
            },
        }
    }
}

/// Reads the lease's owner and judges the owner's liveness with this host's daemon (which must
/// have joined the lockspace to know other hosts). Right after a join the daemon may not have
/// read the host leases yet (until its next renewal, 2 × io_timeout): the owner's host is then
/// `None` and [`OwnerStatus::is_running`] undecided; ask again.
pub fn owner_status(res: &Resource) -> Result<OwnerStatus, SanlockError> {
    let ro = read_resource_owners(res)?;
    if ro.shared && !ro.owners.is_empty() {
        return Ok(OwnerStatus::Shared {
            lver: ro.lver,
            holders: ro.owners,
        });
    }
    let Some(owner) = ro.owners.into_iter().next() else {
        return Ok(OwnerStatus::Free { lver: ro.lver });
    };
    let host = match get_hosts(&res.lockspace, owner.host_id) {
        Ok(v) => v.into_iter().find(|h| h.host_id == owner.host_id),
        Err(SanlockError::Sanlock { .. }) => None,
        Err(e) => return Err(e),
    };
    Ok(OwnerStatus::Held {
        lver: ro.lver,
        owner,
        host,
    })
}

/// This process's registration with the sanlock daemon: leases acquired through it belong to
/// this process and are released by the daemon when the process exits or is killed, or when
/// the registration is dropped (its socket closed).
///
/// Methods take `&mut self`: libsanlock requires calls on one registered socket to be
/// serialised.
#[derive(Debug)]
pub struct Registration {
    sock: OwnedFd,
}

/// The registered socket (close-on-exec). The daemon keeps the registration's leases until
/// the socket is closed in every process: a program handed a duplicate holds them until it
/// exits (lvchain does so for the programs of the operation holding the domain lock).
impl AsFd for Registration {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

/// Options of [`Registration::acquire`].
#[derive(Debug, Clone, Copy, Default)]
pub struct AcquireOptions {
    /// Fail with [`SanlockError::HeldRetry`] instead of waiting when the owner's host lease must
    /// time out first.
    pub no_wait: bool,
    /// Shared mode: any number of shared holders, no exclusive one while they hold it.
    pub shared: bool,
}

impl Registration {
    /// Registers this process with the local sanlock daemon.
    pub fn register() -> Result<Registration, SanlockError> {
        let l = lib()?;
        // SAFETY: no arguments; returns a new socket fd or -errno.
        let fd = unsafe { (l.register)() };
        if fd < 0 {
            return Err(classify(Op::Register, fd, &Subject::default()));
        }
        // SAFETY: fd is a fresh descriptor owned by nobody else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        // Children must not inherit the registration: a surviving child would keep it open.
        // SAFETY: plain fcntl on a descriptor we own.
        let rc = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        if rc < 0 {
            return Err(SanlockError::Sanlock {
                op: Op::Register,
                rv: -std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
                detail: "cannot set close-on-exec on the registered socket".into(),
            });
        }
        Ok(Registration { sock })
    }

    /// Acquires `res` exclusively for this process. Fails with the held class
    /// ([`SanlockError::is_held`]) when another process or host holds it, and with
    /// [`SanlockError::LockspaceNotJoined`] when this host has not joined its lockspace.
    pub fn acquire(&mut self, res: &Resource, opts: AcquireOptions) -> Result<(), SanlockError> {
        let l = lib()?;
        let mut c = c_resource(res)?;
        if opts.shared {
            c.flags |= ffi::SANLK_RES_SHARED;
        }
        let mut arr: [*mut SanlkResource1; 1] = [&mut c];
        let flags = if opts.no_wait {
            ffi::SANLK_ACQUIRE_OWNER_NOWAIT
        } else {
            0
        };
        // SAFETY: registered socket; one valid resource pointer; no options.
        let rv = unsafe {
            (l.acquire)(
                self.sock.as_raw_fd(),
                -1,
                flags,
                1,
                arr.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        if rv < 0 {
            return Err(classify(Op::Acquire, rv, &res_subject(res)));
        }
        Ok(())
    }

    /// Releases `res`, held by this process.
    pub fn release(&mut self, res: &Resource) -> Result<(), SanlockError> {
        let l = lib()?;
        let mut c = c_resource(res)?;
        let mut arr: [*mut SanlkResource1; 1] = [&mut c];
        // SAFETY: registered socket; one valid resource pointer.
        let rv = unsafe { (l.release)(self.sock.as_raw_fd(), -1, 0, 1, arr.as_mut_ptr()) };
        if rv < 0 {
            return Err(classify(Op::Release, rv, &res_subject(res)));
        }
        Ok(())
    }

    /// The leases this process holds, in sanlock's string form
    /// (`lockspace:name:path:offset:lver`).
    pub fn held(&mut self) -> Result<Vec<String>, SanlockError> {
        let l = lib()?;
        let mut count: c_int = 0;
        let mut state: *mut c_char = std::ptr::null_mut();
        // SAFETY: registered socket; valid out-pointers.
        let rv = unsafe { (l.inquire)(self.sock.as_raw_fd(), -1, 0, &mut count, &mut state) };
        let text = if state.is_null() {
            String::new()
        } else {
            // SAFETY: libsanlock returns a malloc'ed NUL-terminated string; freed right after.
            let s = unsafe { std::ffi::CStr::from_ptr(state) }
                .to_string_lossy()
                .into_owned();
            // SAFETY: malloc'ed by libsanlock, not used after this.
            unsafe { libc::free(state.cast()) };
            s
        };
        if rv < 0 {
            return Err(classify(Op::Inquire, rv, &Subject::default()));
        }
        Ok(text.split_whitespace().map(str::to_string).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_states() {
        assert_eq!(HostState::from_flags(3), HostState::Live);
        assert_eq!(HostState::from_flags(0x15), HostState::Dead);
        assert_eq!(HostState::from_flags(0), HostState::Other(0));
    }

    fn host(id: u64, generation: u64, state: HostState) -> HostInfo {
        HostInfo {
            host_id: id,
            generation,
            timestamp: 1,
            io_timeout: 10,
            state,
        }
    }

    #[test]
    fn running_needs_a_live_owner_instance() {
        assert_eq!(OwnerStatus::Free { lver: 3 }.is_running(), Some(false));
        let held = |h: Option<HostInfo>| OwnerStatus::Held {
            lver: 3,
            owner: host(1, 2, HostState::Other(0)),
            host: h,
        };
        assert_eq!(
            held(Some(host(1, 2, HostState::Live))).is_running(),
            Some(true)
        );
        assert_eq!(
            held(Some(host(1, 3, HostState::Live))).is_running(),
            Some(false)
        );
        assert_eq!(
            held(Some(host(1, 2, HostState::Dead))).is_running(),
            Some(false)
        );
        assert_eq!(
            held(Some(host(1, 2, HostState::Free))).is_running(),
            Some(false)
        );
        assert_eq!(held(Some(host(1, 2, HostState::Fail))).is_running(), None);
        assert_eq!(held(None).is_running(), None);
    }

    #[test]
    fn structs_are_built_from_validated_input() {
        let r = Resource {
            lockspace: "ls".into(),
            name: "vol-1".into(),
            path: "/dev/loop0".into(),
            offset: 1 << 20,
            sector_size: crate::SectorSize::B512,
        };
        let c = c_resource(&r).expect("valid resource");
        assert_eq!(c.num_disks, 1);
        assert_eq!(c.disk.offset, 1 << 20);
        assert_eq!(c.flags, ffi::SANLK_RES_ALIGN1M | ffi::SANLK_RES_SECTOR512);
        let r4k = Resource {
            sector_size: crate::SectorSize::B4K,
            ..r.clone()
        };
        let c4k = c_resource(&r4k).expect("valid resource");
        assert_eq!(c4k.flags, ffi::SANLK_RES_ALIGN1M | ffi::SANLK_RES_SECTOR4K);
        let ls = Lockspace {
            name: "ls".into(),
            host_id: 250,
            path: "/dev/loop0".into(),
            offset: 0,
            sector_size: crate::SectorSize::B4K,
        };
        let cl = c_lockspace(&ls, false).expect("valid lockspace");
        assert_eq!(cl.flags, ffi::SANLK_LSF_ALIGN1M | ffi::SANLK_LSF_SECTOR4K);
        assert_eq!(cl.host_id, 250);
        let beyond = Lockspace {
            host_id: 251,
            ..ls.clone()
        };
        assert!(matches!(
            c_lockspace(&beyond, false),
            Err(SanlockError::InvalidArgument(_))
        ));
        assert_eq!(
            c.name[..5],
            [b'v', b'o', b'l', b'-', b'1'].map(|b| b as c_char)
        );
        assert_eq!(c.name[5], 0);
        let mut bad = r.clone();
        bad.path = "/dev/a\0b".into();
        assert!(matches!(
            c_resource(&bad),
            Err(SanlockError::InvalidArgument(_))
        ));
    }
}
