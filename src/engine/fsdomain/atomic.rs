//! Durable file-system steps of file-domain transactions: a new file written and fsynced, a
//! file replaced atomically (temp + fsync + rename + directory fsync), a rename that commits,
//! an unlink; each fsyncs the directory it changed, so the step survives a crash of the host
//! (on NFS the server commits both the data and the directory entry before it answers).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes the directory entries of `dir` durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes a NEW file `path` (refused when it exists) with `bytes`, fsyncs it and its
/// directory.
pub fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fsync_dir(parent(path))
}

/// The temporary name [`replace`] writes before its rename: `.<name>.tmp` beside `path`.
pub fn temp_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent(path).join(format!(".{name}.tmp"))
}

/// Replaces `path` with `bytes` atomically: a reader (or a crash) sees the old content or the
/// new one, never a mix. Temp file written and fsynced, renamed over `path`, directory
/// fsynced. A leftover temp (a crash before the rename) is overwritten here, and collected by
/// gc.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_of(path);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    fsync_dir(parent(path))
}

/// Renames `from` to `to` (same directory) and fsyncs the directory: a file domain's commit
/// and removal marks.
pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    fsync_dir(parent(to))
}

/// Removes `path` if it exists and fsyncs its directory; whether it existed.
pub fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            fsync_dir(parent(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the directory `dir` if it exists and is empty (then fsyncs its parent); whether
/// it was removed.
pub fn remove_empty_dir(dir: &Path) -> std::io::Result<bool> {
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            fsync_dir(parent(dir))?;
            Ok(true)
        }
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOTEMPTY) | Some(libc::EEXIST) | Some(libc::ENOENT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_leaves_no_temp_and_write_new_refuses_an_existing_file(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let p = dir.path().join("a.meta");
        write_new(&p, b"one")?;
        assert!(write_new(&p, b"two").is_err());
        replace(&p, b"three")?;
        assert_eq!(std::fs::read(&p)?, b"three");
        assert!(!temp_of(&p).exists());
        assert_eq!(temp_of(&p), dir.path().join(".a.meta.tmp"));
        assert!(remove(&p)?);
        assert!(!remove(&p)?);
        Ok(())
    }
}
