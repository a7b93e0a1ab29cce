//! A binding of libsanlock: leases on shared storage.
//!
//! This crate owns everything lvchain does with sanlock, and depends on nothing of lvchain:
//! formatting lockspace and resource areas, joining and leaving a lockspace with this host's
//! id, acquiring and releasing a lease for the calling process, and reading who holds a lease —
//! through the daemon ([`client::owner_status`]) and without it, straight from the disk
//! ([`ondisk::probe_owner`]) — so that a reader that holds nothing can tell whether an
//! operation on a volume is running (the lease/generation protocol of the team notes, lvchain
//! issue 5).
//!
//! # Why libsanlock through FFI, loaded with `dlopen`
//! A sanlock lease belongs to a *registered process*: the daemon releases it when that process
//! exits or dies, which is the property the protocol relies on ("lease held ⇒ the worker is
//! alive"). With the `sanlock client ...` commands the registered process would be the short
//! lived `sanlock` command, not lvchain, so a lease taken that way would be gone (or would belong
//! to some other process) while lvchain works. lvchain therefore calls `sanlock_register` and
//! `sanlock_acquire` itself ([`Registration`]); the leases then live exactly as long as the
//! lvchain process (or until [`Registration`] is dropped, which closes the registered socket).
//! The registered socket is made close-on-exec, so children the process starts do not
//! inherit it and cannot keep a lease alive after lvchain is gone, unless the caller hands it
//! to them on purpose (`Registration` is `AsFd`).
//!
//! libsanlock is loaded at run time (`dlopen("libsanlock.so.1")`, package `libsanlock1`, which
//! the `sanlock` package pulls in) rather than linked: the crate then builds with no `-dev`
//! package and no build script, and lvchain runs on hosts without sanlock, where every lease
//! call fails with [`SanlockError::LibraryUnavailable`]. The hand-written declarations in
//! [`ffi`] follow the 3.8.x headers; a unit test pins the struct layouts.
//!
//! Calls into libsanlock block and have no deadline of their own (sanlock applies its I/O
//! timeout to storage; a hung daemon would hang the call). Formatting uses the `direct`
//! functions, which need no daemon; everything else talks to the local daemon.
//!
//! # Geometry
//! Every area is 1 MiB aligned ([`ALIGN`]) and uses the sectors of the storage it lives on
//! ([`SectorSize`]: 512 bytes, or 4096 on 4Kn storage; sanlock does O_DIRECT I/O, so its sector
//! must be the device's logical block size, [`SectorSize::of_device`]). A lockspace area holds
//! one delta lease per sector, for host ids 1..=[`SectorSize::max_hosts`] (2000 with 512-byte
//! sectors, 250 with 4K ones: sanlock's `ALIGN1M|SECTOR512` and `ALIGN1M|SECTOR4K`); a resource
//! area holds one paxos lease. Offsets must be multiples of [`ALIGN`], so an area's place does
//! not depend on its sector size.
//!
//! # Caveat for long-running work
//! Only the registered process's death frees the lease. Work done by a child (e.g. `qemu-img`
//! started by lvchain) survives a SIGKILL of lvchain, and would go on writing after
//! the lease was freed, unless the child dies with it. Two ways out, neither done here: the
//! child gets `PR_SET_PDEATHSIG(SIGKILL)` (a `pre_exec` hook in `exec`, used for work under a
//! lease), or the worker is started as `sanlock client command -r RESOURCE -c PROG ARGS`, which
//! registers, acquires and then execs PROG, so that the lease belongs to the worker itself.
//!
//! # Reading the owner
//! [`owner_status`] asks this host's daemon (which must have joined the lockspace to judge other
//! hosts) and answers at once. [`probe_owner`] needs no daemon at all: it reads the lease's
//! leader sector and the owner's host lease, and watches that host lease for up to a renewal
//! period ([`ondisk::renewal_window`]) to see the owner alive. Both give `is_running()`:
//! `Some(true)` held by a live host instance, `Some(false)` free or held by a dead/restarted
//! instance, `None` undecided (the owner stopped renewing but may not be dead yet).

pub mod client;
pub mod error;
pub mod ffi;
pub mod ondisk;

use std::path::{Path, PathBuf};

pub use client::{
    format_lockspace, format_resource, get_hosts, is_joined, join_lockspace, leave_lockspace,
    owner_status, read_resource_owners, AcquireOptions, HostInfo, HostState, LeaveMode,
    OwnerStatus, Registration, ResourceOwners,
};
pub use error::{Op, SanlockError};
pub use ondisk::{probe_owner, DiskOwnerStatus, LeaderRecord};

/// Size and alignment of a lockspace area and of a resource lease.
pub const ALIGN: u64 = 1 << 20;
/// The most host ids any lvchain lockspace has (512-byte sectors); a lockspace's own limit is
/// [`SectorSize::max_hosts`] of its sector size.
pub const MAX_HOSTS: u64 = 2000;

/// The sector size of a lease area: sanlock's unit of I/O and of its on-disk layout (one delta
/// lease per sector; a paxos lease is a leader sector, a request sector, then one sector per
/// host). With 1 MiB alignment sanlock supports exactly these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectorSize {
    /// 512-byte sectors: 2000 host ids per 1 MiB area.
    B512,
    /// 4096-byte sectors (4Kn storage): 250 host ids per 1 MiB area.
    B4K,
}

impl SectorSize {
    /// The sector size of `bytes` bytes (512 or 4096).
    pub fn from_bytes(bytes: u64) -> Result<SectorSize, SanlockError> {
        match bytes {
            512 => Ok(SectorSize::B512),
            4096 => Ok(SectorSize::B4K),
            n => Err(SanlockError::InvalidArgument(format!(
                "{n}-byte sectors: sanlock supports 512 and 4096"
            ))),
        }
    }

    /// The sector size of the lease storage at `path`: its logical block size (BLKSSZGET), the
    /// unit of the O_DIRECT I/O sanlock does there; 512 for a regular file (sanlock's own
    /// choice for files).
    pub fn of_device(path: &Path) -> Result<SectorSize, SanlockError> {
        let err = |source| SanlockError::SectorSize {
            path: path.display().to_string(),
            source,
        };
        let f = std::fs::File::open(path).map_err(err)?;
        let bytes = logical_block_size(&f).map_err(err)?;
        SectorSize::from_bytes(bytes).map_err(|_| {
            SanlockError::InvalidArgument(format!(
                "{} has {bytes}-byte logical sectors: sanlock supports 512 and 4096",
                path.display()
            ))
        })
    }

    pub const fn bytes(self) -> u64 {
        match self {
            SectorSize::B512 => 512,
            SectorSize::B4K => 4096,
        }
    }

    /// Host ids usable in a lockspace of this sector size (and hosts a resource lease serves),
    /// with [`ALIGN`] alignment.
    pub const fn max_hosts(self) -> u64 {
        match self {
            SectorSize::B512 => 2000,
            SectorSize::B4K => 250,
        }
    }

    /// `sanlk_lockspace.flags` that make sanlock use this geometry.
    pub const fn lockspace_flags(self) -> u32 {
        ffi::SANLK_LSF_ALIGN1M
            | match self {
                SectorSize::B512 => ffi::SANLK_LSF_SECTOR512,
                SectorSize::B4K => ffi::SANLK_LSF_SECTOR4K,
            }
    }

    /// `sanlk_resource.flags` that make sanlock use this geometry.
    pub const fn resource_flags(self) -> u32 {
        ffi::SANLK_RES_ALIGN1M
            | match self {
                SectorSize::B512 => ffi::SANLK_RES_SECTOR512,
                SectorSize::B4K => ffi::SANLK_RES_SECTOR4K,
            }
    }
}

impl std::fmt::Display for SectorSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-byte sectors", self.bytes())
    }
}
/// The logical block size of an open device (BLKSSZGET), the unit of O_DIRECT I/O on it; 512
/// for a regular file.
fn logical_block_size(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::io::AsRawFd;
    // _IO(0x12, 104)
    const BLKSSZGET: libc::c_ulong = 0x1268;
    if file.metadata()?.is_file() {
        return Ok(512);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int into `size`.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut size) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    u64::try_from(size).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("BLKSSZGET returned {size}"),
        )
    })
}

/// sanlock's limit on lockspace and resource names (bytes, no terminating NUL needed).
pub const NAME_LEN: usize = ffi::SANLK_NAME_LEN;

/// A lockspace: the delta-lease area `path`+`offset`, joined by this host as `host_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockspace {
    pub name: String,
    /// This host's id, 1..=`sector_size.max_hosts()` (ignored by [`format_lockspace`]).
    pub host_id: u64,
    pub path: PathBuf,
    pub offset: u64,
    /// The area's sectors: those of the storage at `path` ([`SectorSize::of_device`]).
    pub sector_size: SectorSize,
}

/// A resource lease (one paxos lease) in `lockspace`, at `path`+`offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Name of the lockspace the lease belongs to.
    pub lockspace: String,
    pub name: String,
    pub path: PathBuf,
    pub offset: u64,
    /// The lease's sectors: those of the storage at `path` ([`SectorSize::of_device`]).
    pub sector_size: SectorSize,
}

/// Checks a lockspace or resource name: 1..=48 bytes of `A-Z a-z 0-9 _ . - +` (sanlock's string
/// forms use `:` and spaces as separators, and lvchain names volumes with UUIDs and tags).
pub fn validate_name(what: &str, name: &str) -> Result<(), SanlockError> {
    if name.is_empty() || name.len() > NAME_LEN {
        return Err(SanlockError::InvalidArgument(format!(
            "{what} name {name:?} must be 1..={NAME_LEN} bytes"
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+')))
    {
        return Err(SanlockError::InvalidArgument(format!(
            "{what} name {name:?} contains {c:?} (allowed: A-Z a-z 0-9 _ . - +)"
        )));
    }
    Ok(())
}

fn validate_area(what: &str, path: &std::path::Path, offset: u64) -> Result<(), SanlockError> {
    if offset % ALIGN != 0 {
        return Err(SanlockError::InvalidArgument(format!(
            "{what} offset {offset} is not a multiple of {ALIGN}"
        )));
    }
    let bytes = path.as_os_str().len();
    if bytes == 0 || bytes >= ffi::SANLK_PATH_LEN {
        return Err(SanlockError::InvalidArgument(format!(
            "{what} path {} must be 1..{} bytes",
            path.display(),
            ffi::SANLK_PATH_LEN
        )));
    }
    Ok(())
}

impl Lockspace {
    /// Checks name, area and (unless `for_format`) the host id.
    pub fn validate(&self, for_format: bool) -> Result<(), SanlockError> {
        validate_name("lockspace", &self.name)?;
        validate_area("lockspace", &self.path, self.offset)?;
        if !for_format {
            self.check_host_id(self.host_id)?;
        }
        Ok(())
    }

    /// Checks that `host_id` exists in this lockspace: 1..=`sector_size.max_hosts()`.
    pub fn check_host_id(&self, host_id: u64) -> Result<(), SanlockError> {
        let max = self.sector_size.max_hosts();
        if !(1..=max).contains(&host_id) {
            return Err(SanlockError::InvalidArgument(format!(
                "host id {host_id} is outside 1..={max} (lockspace {:?} has {})",
                self.name, self.sector_size
            )));
        }
        Ok(())
    }

    /// Where host `host_id`'s delta lease sector lies on [`Lockspace::path`].
    pub fn host_lease_offset(&self, host_id: u64) -> Result<u64, SanlockError> {
        self.check_host_id(host_id)?;
        Ok(self.offset + (host_id - 1) * self.sector_size.bytes())
    }
}

impl Resource {
    pub fn validate(&self) -> Result<(), SanlockError> {
        validate_name("lockspace", &self.lockspace)?;
        validate_name("resource", &self.name)?;
        validate_area("resource", &self.path, self.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls() -> Lockspace {
        Lockspace {
            name: "lvchain-vg1".into(),
            host_id: 1,
            path: "/dev/vg1/leases".into(),
            offset: 0,
            sector_size: SectorSize::B512,
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("resource", "0b9e0c8e-1f0d-4c43-9d4e-3f6f0e3b1a2c").is_ok());
        assert!(validate_name("resource", "").is_err());
        assert!(validate_name("resource", &"x".repeat(49)).is_err());
        assert!(validate_name("resource", &"x".repeat(48)).is_ok());
        assert!(validate_name("resource", "a:b").is_err());
        assert!(validate_name("resource", "a b").is_err());
    }

    #[test]
    fn areas_are_aligned_and_host_ids_in_range() {
        assert!(ls().validate(false).is_ok());
        let mut l = ls();
        l.offset = 512;
        assert!(l.validate(true).is_err());
        let mut l = ls();
        l.host_id = 0;
        assert!(l.validate(false).is_err());
        assert!(l.validate(true).is_ok());
        l.host_id = MAX_HOSTS + 1;
        assert!(l.validate(false).is_err());
        let r = Resource {
            lockspace: "lvchain-vg1".into(),
            name: "vol1".into(),
            path: "".into(),
            offset: ALIGN,
            sector_size: SectorSize::B512,
        };
        assert!(r.validate().is_err());
    }

    #[test]
    fn host_lease_sectors() {
        let mut l = ls();
        l.offset = 3 * ALIGN;
        assert_eq!(l.host_lease_offset(1).ok(), Some(3 * ALIGN));
        assert_eq!(l.host_lease_offset(2).ok(), Some(3 * ALIGN + 512));
        assert_eq!(l.host_lease_offset(2000).ok(), Some(3 * ALIGN + 1999 * 512));
        assert!(l.host_lease_offset(0).is_err());
        assert!(l.host_lease_offset(2001).is_err());
    }

    /// sanlock_admin.h (3.8.5): `ALIGN1M | SECTOR512: max_hosts 2000`, `ALIGN1M | SECTOR4K:
    /// max_hosts 250`; the flag values are those of sanlock.h.
    #[test]
    fn geometry_of_512_and_4k_sectors() {
        assert_eq!(SectorSize::from_bytes(512).ok(), Some(SectorSize::B512));
        assert_eq!(SectorSize::from_bytes(4096).ok(), Some(SectorSize::B4K));
        assert!(SectorSize::from_bytes(1024).is_err());
        assert_eq!(SectorSize::B512.max_hosts(), 2000);
        assert_eq!(SectorSize::B4K.max_hosts(), 250);
        assert_eq!(SectorSize::B512.lockspace_flags(), 0x10 | 0x100);
        assert_eq!(SectorSize::B4K.lockspace_flags(), 0x10 | 0x200);
        assert_eq!(SectorSize::B512.resource_flags(), 0x10 | 0x100);
        assert_eq!(SectorSize::B4K.resource_flags(), 0x10 | 0x200);
        for s in [SectorSize::B512, SectorSize::B4K] {
            // Every delta lease of a lockspace lies inside its 1 MiB area, and a paxos lease
            // (leader, request, one sector per host) fits its 1 MiB.
            assert!(s.max_hosts() * s.bytes() <= ALIGN, "{s}");
            assert!((2 + s.max_hosts()) * s.bytes() <= ALIGN, "{s}");
            assert_eq!(ALIGN % s.bytes(), 0);
        }
        // On 4K sectors host n's delta lease is sector n - 1 of 4096 bytes; 251 does not exist.
        let mut l = ls();
        l.sector_size = SectorSize::B4K;
        l.offset = ALIGN;
        assert_eq!(l.host_lease_offset(1).ok(), Some(ALIGN));
        assert_eq!(l.host_lease_offset(2).ok(), Some(ALIGN + 4096));
        assert_eq!(l.host_lease_offset(250).ok(), Some(ALIGN + 249 * 4096));
        assert!(l.host_lease_offset(251).is_err());
        l.host_id = 250;
        assert!(l.validate(false).is_ok());
        l.host_id = 251;
        assert!(l.validate(false).is_err());
        assert!(l.validate(true).is_ok(), "formatting ignores the host id");
    }

    #[test]
    fn a_regular_file_has_512_byte_sectors() {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        assert_eq!(SectorSize::of_device(f.path()).ok(), Some(SectorSize::B512));
        assert!(matches!(
            SectorSize::of_device(Path::new("/nonexistent/lvchain/ids")),
            Err(SanlockError::SectorSize { .. })
        ));
    }
}
