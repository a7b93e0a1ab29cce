//! Zeroing a block device before its space is given to someone else (the system side of a
//! volume's wipe on removal).
//!
//! Owns the `BLKZEROOUT` ioctl: the kernel zeroes the range with the device's write-zeroes
//! command where it has one (no data crosses the bus; loop devices and most SAN LUNs do) and
//! writes zero pages where it has not, so every byte reads back as zero afterwards, whatever
//! the device. The range goes in chunks, so a caller sees progress, and a cache flush ends the
//! wipe so the zeroes are on stable storage before the caller frees the extents. This module
//! never decides whether a device is wiped: that is the removal's policy.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes zeroed per ioctl: small enough for progress every second or so on a device without
/// a write-zeroes command, large enough that the call overhead does not count.
pub const CHUNK: u64 = 128 << 20;

/// What went wrong while wiping a device.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    #[error("cannot open {} for writing: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a block device", .path.display())]
    NotABlockDevice { path: PathBuf },
    #[error("cannot read the size of {}: {source}", .path.display())]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("zeroing {len} bytes at offset {offset} of {} failed: {source}", .path.display())]
    ZeroOut {
        path: PathBuf,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing {} after zeroing it failed: {source}", .path.display())]
    Flush {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A finished wipe: how many bytes were zeroed and how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Wiped {
    pub bytes: u64,
    pub duration: Duration,
}

/// Zeroes the whole block device at `path` with `BLKZEROOUT`, [`CHUNK`] bytes per call, then
/// flushes its cache. `progress(done, total)` is called before the first chunk and after
/// each one. Zeroing is idempotent: a wipe that died is finished by running it again.
pub fn zero_device(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Wiped, WipeError> {
    let start = Instant::now();
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| WipeError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let is_block = std::os::unix::fs::FileTypeExt::is_block_device(
        &file
            .metadata()
            .map_err(|source| WipeError::Size {
                path: path.to_path_buf(),
                source,
            })?
            .file_type(),
    );
    if !is_block {
        return Err(WipeError::NotABlockDevice {
            path: path.to_path_buf(),
        });
    }
    let total = device_size(&file).map_err(|source| WipeError::Size {
        path: path.to_path_buf(),
        source,
    })?;
    progress(0, total);
    let mut offset = 0;
    while offset < total {
        let len = CHUNK.min(total - offset);
        zero_out(&file, offset, len).map_err(|source| WipeError::ZeroOut {
            path: path.to_path_buf(),
            offset,
            len,
            source,
        })?;
        offset += len;
        progress(offset, total);
    }
    file.sync_all().map_err(|source| WipeError::Flush {
        path: path.to_path_buf(),
        source,
    })?;
    let wiped = Wiped {
        bytes: total,
        duration: start.elapsed(),
    };
    tracing::debug!(
        device = %path.display(),
        bytes = wiped.bytes,
        seconds = wiped.duration.as_secs_f64(),
        "wiped (BLKZEROOUT)"
    );
    Ok(wiped)
}

/// The device's size in bytes (BLKGETSIZE64).
fn device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Zeroes `len` bytes at `offset` (both multiples of 512; a device size always is).
fn zero_out(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let range: [u64; 2] = [offset, len];
    loop {
        // SAFETY: BLKZEROOUT reads two u64 (start, length) from `range`.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKZEROOUT, range.as_ptr()) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

// _IO(0x12, 127)
const BLKZEROOUT: libc::c_ulong = 0x127f;
// _IOR(0x12, 114, size_t)
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_refused_and_left_alone() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, b"data")?;
        let r = zero_device(&path, &mut |_, _| {});
        assert!(matches!(r, Err(WipeError::NotABlockDevice { .. })), "{r:?}");
        assert_eq!(std::fs::read(&path)?, b"data");
        Ok(())
    }
}
