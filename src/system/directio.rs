//! Direct (O_DIRECT) block I/O: aligned buffers, whole-sector reads and writes, and the
//! device's logical block size. A write of one logical block with O_DIRECT reaches the device
//! as one request, which is what makes a metadata slot update atomic.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Alignment of every buffer: covers 512- and 4096-byte logical blocks.
pub const ALIGN: usize = 4096;

/// A zeroed heap buffer aligned to [`ALIGN`].
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the buffer is uniquely owned plain memory.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (`len` > 0).
    pub fn zeroed(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(len.max(1), ALIGN)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "aligned allocation",
            ));
        }
        Ok(AlignedBuf { ptr, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees uniqueness.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if let Ok(layout) = Layout::from_size_align(self.len.max(1), ALIGN) {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { alloc::dealloc(self.ptr, layout) };
        }
    }
}

/// A block device (or file) opened with O_DIRECT | O_SYNC.
pub struct DirectFile {
    file: File,
}

impl DirectFile {
    pub fn open(path: &Path, write: bool) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT | if write { libc::O_DSYNC } else { 0 })
            .open(path)?;
        Ok(DirectFile { file })
    }

    /// The logical block size (BLKSSZGET); 512 for regular files.
    pub fn logical_block_size(&self) -> io::Result<usize> {
        logical_block_size(&self.file)
    }

    /// Reads exactly `len` bytes at `offset` (both multiples of the block size).
    pub fn read_at(&self, offset: u64, len: usize) -> io::Result<AlignedBuf> {
        let mut buf = AlignedBuf::zeroed(len)?;
        self.file.read_exact_at(buf.as_mut_slice(), offset)?;
        Ok(buf)
    }

    /// Writes the whole buffer at `offset` in one request.
    pub fn write_at(&self, offset: u64, buf: &AlignedBuf) -> io::Result<()> {
        let n = self.file.write_at(buf.as_slice(), offset)?;
        if n != buf.as_slice().len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short direct write: {n} of {} bytes", buf.as_slice().len()),
            ));
        }
        Ok(())
    }
}

/// The logical block size of an open block device (BLKSSZGET): the unit of O_DIRECT offsets and
/// lengths on it. 512 for regular files.
pub fn logical_block_size(file: &File) -> io::Result<usize> {
    if file.metadata()?.is_file() {
        return Ok(512);
    }
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one c_int into `size`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut size) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    usize::try_from(size).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("BLKSSZGET returned {size}"),
        )
    })
}

// _IO(0x12, 104)
const BLKSSZGET: libc::c_ulong = 0x1268;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_is_aligned_and_zeroed() -> io::Result<()> {
        let b = AlignedBuf::zeroed(512)?;
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        Ok(())
    }
}
