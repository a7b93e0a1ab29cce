//! Reading sanlock's on-disk records without the daemon.
//!
//! A reader that holds nothing and need not run (or join) sanlock can still tell who holds a
//! resource lease: it reads the lease's leader record (the sector at the resource offset) and the
//! owner's delta lease in the lockspace (sector `host_id - 1` of the lockspace area), with
//! `O_DIRECT` so that another host's writes are seen. Sectors are those of the area
//! ([`SectorSize`]: 512 or 4096 bytes), which is also what O_DIRECT needs: reads of whole
//! logical blocks at block-aligned offsets. A record whose own `sector_size` differs from the
//! area's is refused (its host leases would lie elsewhere). A host renews its delta lease
//! every 2 × io_timeout seconds with its own monotonic clock, so liveness is decided by watching
//! the timestamp change, not by comparing clocks.
//!
//! Record layout (little endian, `struct leader_record` of sanlock 3.x, shared by paxos and delta
//! leases): magic u32 @0, version u32 @4, flags u32 @8, sector_size u32 @12, num_hosts u64 @16,
//! max_hosts u64 @24, owner_id u64 @32, owner_generation u64 @40, lver u64 @48, space_name
//! 48 bytes @56, resource_name 48 bytes @104, timestamp u64 @152, unused1 u64 @160, checksum u32 @168,
//! unused2 u16 @172, io_timeout u16 @174, write_id u64 @176, write_generation u64 @184,
//! write_timestamp u64 @192. checksum = crc32c (Castagnoli, seed 0xFFFFFFFE, no final xor) of
//! bytes 0..168. A free lease has timestamp 0.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Lockspace, Resource, SanlockError, SectorSize};

pub const PAXOS_DISK_MAGIC: u32 = 0x0615_2010;
pub const DELTA_DISK_MAGIC: u32 = 0x1221_2010;
const PAXOS_VERSION_MAJOR: u32 = 0x0006_0000;
const DELTA_VERSION_MAJOR: u32 = 0x0003_0000;
const CHECKSUM_LEN: usize = 168;
const RECORD_LEN: usize = 200;

/// What kind of lease a leader record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A resource lease (paxos).
    Paxos,
    /// A host id lease in a lockspace (delta).
    Delta,
}

/// One decoded leader record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRecord {
    pub kind: RecordKind,
    pub version: u32,
    pub flags: u32,
    pub sector_size: u32,
    pub num_hosts: u64,
    pub max_hosts: u64,
    /// Paxos: host id of the (last) owner. Delta: the host id of this sector.
    pub owner_id: u64,
    /// Generation of the owning host instance (a host's generation grows at every join).
    pub owner_generation: u64,
    /// Paxos: lease version, +1 at each acquire.
    pub lver: u64,
    pub space_name: String,
    /// Paxos: resource name. Delta: the owner's host name.
    pub resource_name: String,
    /// 0: free. Otherwise the owner's monotonic time of the last acquire (paxos) or renewal
    /// (delta).
    pub timestamp: u64,
    pub io_timeout: u16,
}

/// Why a sector is not a usable leader record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("sector too short ({0} bytes)")]
    Short(usize),
    #[error("no sanlock magic (found {0:#010x})")]
    Magic(u32),
    #[error("unsupported on-disk version {0:#010x}")]
    Version(u32),
    #[error("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum { stored: u32, computed: u32 },
}

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32C: [u32; 256] = crc32c_table();

/// sanlock's `crc32c(seed, data, len)`: raw reflected CRC-32C, no final inversion.
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    data.iter().fold(seed, |c, &b| {
        CRC32C[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn name(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl LeaderRecord {
    /// Decodes and verifies (magic, major version, checksum) a record from a sector.
    pub fn parse(b: &[u8]) -> Result<LeaderRecord, RecordError> {
        if b.len() < RECORD_LEN {
            return Err(RecordError::Short(b.len()));
        }
        let magic = le32(b, 0);
        let version = le32(b, 4);
        let kind = match magic {
            PAXOS_DISK_MAGIC => RecordKind::Paxos,
            DELTA_DISK_MAGIC => RecordKind::Delta,
            m => return Err(RecordError::Magic(m)),
        };
        let major = match kind {
            RecordKind::Paxos => PAXOS_VERSION_MAJOR,
            RecordKind::Delta => DELTA_VERSION_MAJOR,
        };
        if version & 0xFFFF_0000 != major {
            return Err(RecordError::Version(version));
        }
        let stored = le32(b, 168);
        let computed = crc32c(0xFFFF_FFFE, &b[..CHECKSUM_LEN]);
        if stored != computed {
            return Err(RecordError::Checksum { stored, computed });
        }
        Ok(LeaderRecord {
            kind,
            version,
            flags: le32(b, 8),
            sector_size: le32(b, 12),
            num_hosts: le64(b, 16),
            max_hosts: le64(b, 24),
            owner_id: le64(b, 32),
            owner_generation: le64(b, 40),
            lver: le64(b, 48),
            space_name: name(&b[56..104]),
            resource_name: name(&b[104..152]),
            timestamp: le64(b, 152),
            io_timeout: u16::from_le_bytes([b[174], b[175]]),
        })
    }

    pub fn is_free(&self) -> bool {
        self.timestamp == 0
    }
}

#[repr(C, align(4096))]
struct AlignedSector([u8; 4096]);

fn open_direct(path: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        // A file system without O_DIRECT (e.g. tmpfs) is local storage: the page cache is then
        // coherent, and a buffered read is correct.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            OpenOptions::new().read(true).open(path)
        }
        r => r,
    }
}

/// Reads the sector of `sector` bytes at `offset` of `path`, bypassing the page cache (one
/// O_DIRECT read of a whole sector, from a buffer aligned for any logical block size).
pub fn read_sector(path: &Path, offset: u64, sector: SectorSize) -> Result<Vec<u8>, SanlockError> {
    let err = |source| SanlockError::DirectIo {
        path: path.display().to_string(),
        offset,
        source,
    };
    let len = sector.bytes();
    if offset % len != 0 {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("offset is not aligned to {sector}"),
        )));
    }
    let f = open_direct(path).map_err(err)?;
    let mut buf = Box::new(AlignedSector([0; 4096]));
    let bytes = &mut buf.0[..len as usize];
    f.read_exact_at(bytes, offset).map_err(err)?;
    Ok(bytes.to_vec())
}

fn read_record(
    path: &Path,
    offset: u64,
    sector: SectorSize,
    kind: RecordKind,
) -> Result<LeaderRecord, SanlockError> {
    let op = match kind {
        RecordKind::Paxos => super::Op::ReadResource,
        RecordKind::Delta => super::Op::InqLockspace,
    };
    let not_formatted = |detail: String| SanlockError::NotFormatted {
        op,
        path: path.display().to_string(),
        offset,
        detail,
    };
    let bytes = read_sector(path, offset, sector)?;
    let rec = LeaderRecord::parse(&bytes).map_err(|e| not_formatted(e.to_string()))?;
    if rec.kind != kind {
        return Err(not_formatted(format!(
            "expected a {kind:?} record, found a {:?} record",
            rec.kind
        )));
    }
    if u64::from(rec.sector_size) != sector.bytes() {
        return Err(not_formatted(format!(
            "the record was written with {}-byte sectors, the area has {sector}",
            rec.sector_size
        )));
    }
    Ok(rec)
}

/// Reads a resource's leader record from disk (no daemon) and checks it names `res`.
pub fn read_resource_leader(res: &Resource) -> Result<LeaderRecord, SanlockError> {
    res.validate()?;
    let rec = read_record(&res.path, res.offset, res.sector_size, RecordKind::Paxos)?;
    if rec.space_name != res.lockspace || rec.resource_name != res.name {
        return Err(SanlockError::NotFormatted {
            op: super::Op::ReadResource,
            path: res.path.display().to_string(),
            offset: res.offset,
            detail: format!(
                "the lease there is {}:{}, not {}:{}",
                rec.space_name, rec.resource_name, res.lockspace, res.name
            ),
        });
    }
    Ok(rec)
}

/// Reads host `host_id`'s delta lease in the lockspace area `ls` (no daemon; `ls.host_id` is
/// ignored).
pub fn read_host_lease(ls: &Lockspace, host_id: u64) -> Result<LeaderRecord, SanlockError> {
    ls.validate(true)?;
    let offset = ls.host_lease_offset(host_id)?;
    let rec = read_record(&ls.path, offset, ls.sector_size, RecordKind::Delta)?;
    if rec.space_name != ls.name {
        return Err(SanlockError::NotFormatted {
            op: super::Op::InqLockspace,
            path: ls.path.display().to_string(),
            offset,
            detail: format!(
                "the lockspace there is {:?}, not {:?}",
                rec.space_name, ls.name
            ),
        });
    }
    Ok(rec)
}

/// Why a held lease's owner instance is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    /// The owner host's delta lease is free: it left the lockspace.
    HostLeft,
    /// The owner host joined again since (newer generation): the holding instance is dead.
    HostRestarted { current_generation: u64 },
}

/// Who holds a resource lease, judged from disk alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOwnerStatus {
    /// Nobody holds it; `last_owner` is the host id that held it last (0: never acquired).
    Free { lver: u64, last_owner: u64 },
    /// Held, and the owner host renewed its host lease while we watched.
    HeldLive {
        lver: u64,
        owner_id: u64,
        generation: u64,
    },
    /// Held on disk by an owner instance that no longer exists.
    HeldStale {
        lver: u64,
        owner_id: u64,
        generation: u64,
        reason: StaleReason,
    },
    /// Held, and the owner host did not renew its host lease during `watched`.
    HeldUnrenewed {
        lver: u64,
        owner_id: u64,
        generation: u64,
        watched: Duration,
        io_timeout: u16,
    },
}

/// Seconds after its last renewal by which a host whose renewals stopped is certainly dead
/// (sanlock: 8 × io_timeout until it stops its processes + 60 s watchdog).
pub fn host_dead_after(io_timeout: u16) -> Duration {
    let io = if io_timeout == 0 { 10 } else { io_timeout };
    Duration::from_secs(8 * u64::from(io) + 60)
}

/// How long to watch a host lease to see a live host renew it (renewal every 2 × io_timeout,
/// plus a margin for slow storage).
pub fn renewal_window(io_timeout: u16) -> Duration {
    let io = if io_timeout == 0 { 10 } else { io_timeout };
    Duration::from_secs(2 * u64::from(io) + 2 + u64::from(io) / 2)
}

impl DiskOwnerStatus {
    /// `Some(true)`: an operation under this lease is running (held by a live host).
    /// `Some(false)`: not running (free, stale, or the owner stopped renewing long enough ago to
    /// be dead). `None`: the owner stopped renewing but may still be alive; ask again later.
    pub fn is_running(&self) -> Option<bool> {
        match self {
            DiskOwnerStatus::Free { .. } | DiskOwnerStatus::HeldStale { .. } => Some(false),
            DiskOwnerStatus::HeldLive { .. } => Some(true),
            DiskOwnerStatus::HeldUnrenewed {
                watched,
                io_timeout,
                ..
            } => {
                if *watched >= host_dead_after(*io_timeout) {
                    Some(false)
                } else {
                    None
                }
            }
        }
    }
}

/// Decides who holds `res` from disk alone. `ls` is the lockspace area of the resource's
/// lockspace (its `host_id` is ignored). When the lease is held and its owner's host lease is
/// still held by the same instance, the host lease is watched for at most `max_watch` (use
/// [`renewal_window`] of the owner's io_timeout to be sure to see a live host renew) and the
/// answer is [`DiskOwnerStatus::HeldLive`] as soon as it changes.
pub fn probe_owner(
    res: &Resource,
    ls: &Lockspace,
    max_watch: Duration,
) -> Result<DiskOwnerStatus, SanlockError> {
    if ls.name != res.lockspace {
        return Err(SanlockError::InvalidArgument(format!(
            "resource {} is in lockspace {:?}, not {:?}",
            res.name, res.lockspace, ls.name
        )));
    }
    // A lease that changes hands while we watch is read again; bound the retries.
    let mut attempts = 0;
    loop {
        attempts += 1;
        let leader = read_resource_leader(res)?;
        if leader.is_free() {
            return Ok(DiskOwnerStatus::Free {
                lver: leader.lver,
                last_owner: leader.owner_id,
            });
        }
        let (lver, owner_id, generation) = (leader.lver, leader.owner_id, leader.owner_generation);
        let host = read_host_lease(ls, owner_id)?;
        if let Some(reason) = stale_reason(&host, generation) {
            return Ok(DiskOwnerStatus::HeldStale {
                lver,
                owner_id,
                generation,
                reason,
            });
        }
        let start = Instant::now();
        let poll = Duration::from_millis(500);
        loop {
            let elapsed = start.elapsed();
            if elapsed >= max_watch {
                return Ok(DiskOwnerStatus::HeldUnrenewed {
                    lver,
                    owner_id,
                    generation,
                    watched: elapsed,
                    io_timeout: host.io_timeout,
                });
            }
            std::thread::sleep(poll.min(max_watch - elapsed));
            let now = read_host_lease(ls, owner_id)?;
            if now.timestamp == host.timestamp && now.owner_generation == host.owner_generation {
                continue;
            }
            let again = read_resource_leader(res)?;
            let same = !again.is_free() && again.lver == lver && again.owner_id == owner_id;
            if !same && attempts < 3 {
                break; // the lease changed hands: judge it afresh
            }
            if let Some(reason) = stale_reason(&now, generation) {
                return Ok(DiskOwnerStatus::HeldStale {
                    lver,
                    owner_id,
                    generation,
                    reason,
                });
            }
            return Ok(DiskOwnerStatus::HeldLive {
                lver,
                owner_id,
                generation,
            });
        }
    }
}

fn stale_reason(host: &LeaderRecord, generation: u64) -> Option<StaleReason> {
    if host.is_free() {
        Some(StaleReason::HostLeft)
    } else if host.owner_generation != generation {
        Some(StaleReason::HostRestarted {
            current_generation: host.owner_generation,
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A delta lease sector exactly as `sanlock direct init -s LS:0:file:0 -Z 512 -A 1M` writes
    /// host id 1 (sanlock 3.8.5), and the resource sector of `direct init -r LS:R1:file:1M`.
    fn delta_fixture() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..16].copy_from_slice(&[
            0x10, 0x20, 0x21, 0x12, 0x04, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x02,
            0x00, 0x00,
        ]);
        b[24] = 0x01;
        b[56] = b'L';
        b[57] = b'S';
        b[168..176].copy_from_slice(&[0xc0, 0x74, 0xf1, 0xb0, 0x00, 0x00, 0x0a, 0x00]);
        b
    }

    fn paxos_fixture() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..16].copy_from_slice(&[
            0x10, 0x20, 0x15, 0x06, 0x04, 0x00, 0x06, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x02,
            0x00, 0x00,
        ]);
        b[16..18].copy_from_slice(&[0xd0, 0x07]);
        b[24..26].copy_from_slice(&[0xd0, 0x07]);
        b[56] = b'L';
        b[57] = b'S';
        b[104] = b'R';
        b[105] = b'1';
        b[168..172].copy_from_slice(&[0x73, 0xa7, 0x73, 0x20]);
        b
    }

    /// Sets a field and recomputes the checksum, as sanlock does when it writes.
    fn set_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let c = crc32c(0xFFFF_FFFE, &b[..CHECKSUM_LEN]);
        b[168..172].copy_from_slice(&c.to_le_bytes());
    }

    #[test]
    fn decodes_real_sanlock_records() {
        let d = LeaderRecord::parse(&delta_fixture()).expect("delta record");
        assert_eq!(d.kind, RecordKind::Delta);
        assert_eq!(d.space_name, "LS");
        assert_eq!(d.sector_size, 512);
        assert_eq!(d.max_hosts, 1);
        assert_eq!(d.io_timeout, 10);
        assert!(d.is_free());
        let p = LeaderRecord::parse(&paxos_fixture()).expect("paxos record");
        assert_eq!(p.kind, RecordKind::Paxos);
        assert_eq!(
            (p.space_name.as_str(), p.resource_name.as_str()),
            ("LS", "R1")
        );
        assert_eq!(p.max_hosts, 2000);
        assert_eq!(p.num_hosts, 2000);
        assert!(p.is_free());
    }

    #[test]
    fn rejects_damaged_records() {
        let mut b = paxos_fixture();
        b[40] = 1; // owner_generation changed without a new checksum
        assert!(matches!(
            LeaderRecord::parse(&b),
            Err(RecordError::Checksum { .. })
        ));
        assert!(matches!(
            LeaderRecord::parse(&[0u8; 512]),
            Err(RecordError::Magic(0))
        ));
        assert!(matches!(
            LeaderRecord::parse(&[0u8; 10]),
            Err(RecordError::Short(10))
        ));
        let mut v = paxos_fixture();
        v[6] = 7; // major version 7
        assert!(matches!(
            LeaderRecord::parse(&v),
            Err(RecordError::Version(_))
        ));
    }

    #[test]
    fn held_records_decode_owner_and_generation() {
        let mut b = paxos_fixture();
        set_u64(&mut b, 32, 1);
        set_u64(&mut b, 40, 4);
        set_u64(&mut b, 48, 9);
        set_u64(&mut b, 152, 1234);
        let p = LeaderRecord::parse(&b).expect("record");
        assert_eq!((p.owner_id, p.owner_generation, p.lver), (1, 4, 9));
        assert!(!p.is_free());
    }

    #[test]
    fn stale_owner_detection() {
        let mut b = delta_fixture();
        set_u64(&mut b, 32, 1);
        set_u64(&mut b, 40, 2);
        set_u64(&mut b, 152, 77);
        let host = LeaderRecord::parse(&b).expect("record");
        assert_eq!(stale_reason(&host, 2), None);
        assert_eq!(
            stale_reason(&host, 1),
            Some(StaleReason::HostRestarted {
                current_generation: 2
            })
        );
        set_u64(&mut b, 152, 0);
        let left = LeaderRecord::parse(&b).expect("record");
        assert_eq!(stale_reason(&left, 2), Some(StaleReason::HostLeft));
    }

    #[test]
    fn running_verdicts() {
        assert_eq!(
            DiskOwnerStatus::Free {
                lver: 1,
                last_owner: 1
            }
            .is_running(),
            Some(false)
        );
        let unrenewed = |secs| DiskOwnerStatus::HeldUnrenewed {
            lver: 1,
            owner_id: 1,
            generation: 1,
            watched: Duration::from_secs(secs),
            io_timeout: 10,
        };
        assert_eq!(unrenewed(30).is_running(), None);
        assert_eq!(unrenewed(140).is_running(), Some(false));
        assert_eq!(renewal_window(10), Duration::from_secs(27));
    }

    #[test]
    fn reads_sectors_from_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        let mut data = vec![0u8; 2 << 20];
        data[..512].copy_from_slice(&delta_fixture());
        data[1 << 20..(1 << 20) + 512].copy_from_slice(&paxos_fixture());
        std::fs::write(&path, &data).expect("write fixture");
        let res = Resource {
            lockspace: "LS".into(),
            name: "R1".into(),
            path: path.clone(),
            offset: 1 << 20,
            sector_size: SectorSize::B512,
        };
        let ls = Lockspace {
            name: "LS".into(),
            host_id: 0,
            path: path.clone(),
            offset: 0,
            sector_size: SectorSize::B512,
        };
        let st = probe_owner(&res, &ls, Duration::ZERO).expect("probe");
        assert_eq!(
            st,
            DiskOwnerStatus::Free {
                lver: 0,
                last_owner: 0
            }
        );
        assert_eq!(read_host_lease(&ls, 1).expect("host 1").space_name, "LS");
        let mut wrong = res.clone();
        wrong.name = "R2".into();
        assert!(matches!(
            read_resource_leader(&wrong),
            Err(SanlockError::NotFormatted { .. })
        ));
        assert!(matches!(
            read_sector(&path, 3, SectorSize::B512),
            Err(SanlockError::DirectIo { .. })
        ));
        assert!(matches!(
            read_sector(&path, 512, SectorSize::B4K),
            Err(SanlockError::DirectIo { .. })
        ));
        // Records written with 512-byte sectors are not read as a 4K area's.
        let res4k = Resource {
            sector_size: SectorSize::B4K,
            ..res.clone()
        };
        assert!(matches!(
            read_resource_leader(&res4k),
            Err(SanlockError::NotFormatted { .. })
        ));
    }

    #[test]
    fn reads_4k_sector_records_where_4k_geometry_puts_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ids4k");
        // Host 3's delta lease of a 4K-sector lockspace at 1 MiB: sector 2 of 4096 bytes.
        let mut rec = delta_fixture();
        rec[12..16].copy_from_slice(&4096u32.to_le_bytes());
        set_u64(&mut rec, 32, 3);
        let mut data = vec![0u8; 2 << 20];
        let at = (1 << 20) + 2 * 4096;
        data[at..at + 512].copy_from_slice(&rec);
        std::fs::write(&path, &data).expect("write fixture");
        let ls = Lockspace {
            name: "LS".into(),
            host_id: 0,
            path: path.clone(),
            offset: 1 << 20,
            sector_size: SectorSize::B4K,
        };
        let host3 = read_host_lease(&ls, 3).expect("host 3");
        assert_eq!((host3.owner_id, host3.sector_size), (3, 4096));
        assert!(read_host_lease(&ls, 2).is_err(), "host 2's sector is empty");
        assert!(matches!(
            read_host_lease(&ls, 251),
            Err(SanlockError::InvalidArgument(_))
        ));
    }
}
