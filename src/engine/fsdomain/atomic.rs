//! Durable file-system steps of file-domain transactions: a new file written and fsynced, a
//! file replaced atomically (temp + fsync + rename + directory fsync), a rename that commits,
//! an unlink; each fsyncs the directory it changed, so the step survives a crash of the host
//! (on NFS the server commits both the data and the directory entry before it answers).
//!
//! Also the modes of what a file domain makes ([`Perms`]): every file and directory is made
//! here, private to its owner unless the directory it is made in shares it with its group.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The modes of a new file and a new directory. Private (`0600`, `0700`) unless the directory
/// they are made in is set-group-ID: then they belong to its group (the kernel gives them
/// that group), which may read (`0640`, `2750`: a new directory stays set-group-ID, so the
/// whole domain below a shared top directory is shared alike). Never more, whatever the
/// process's umask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub file: u32,
    pub dir: u32,
}

impl Perms {
    pub const PRIVATE: Perms = Perms {
        file: 0o600,
        dir: 0o700,
    };
    pub const GROUP: Perms = Perms {
        file: 0o640,
        dir: 0o2750,
    };

    /// The modes of what is made in `dir`.
    pub fn in_dir(dir: &Path) -> Perms {
        match std::fs::metadata(dir) {
            Ok(m) if m.mode() & 0o2000 != 0 => Perms::GROUP,
            _ => Perms::PRIVATE,
        }
    }

    fn shared(self) -> bool {
        self != Perms::PRIVATE
    }
}

/// Opens `path` for writing, making it if it is missing (with `new`, refused when it exists)
/// with the modes of its directory. An existing file keeps its mode.
pub fn create_file(path: &Path, new: bool) -> std::io::Result<File> {
    let perms = Perms::in_dir(parent(path));
    let mut o = OpenOptions::new();
    o.write(true).mode(perms.file);
    if new {
        o.create_new(true);
        let f = o.open(path)?;
        if perms.shared() {
            // The umask may have taken the group's bit.
            f.set_permissions(std::fs::Permissions::from_mode(perms.file))?;
        }
        return Ok(f);
    }
    match o.open(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match create_file(path, true) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => o.open(path),
            r => r,
        },
        Err(e) => Err(e),
    }
}

/// Makes the directory `dir` (its parent must exist) with the modes of its parent; Ok when it
/// exists already.
pub fn make_dir(dir: &Path) -> std::io::Result<()> {
    let perms = Perms::in_dir(parent(dir));
    match std::fs::DirBuilder::new().mode(perms.dir).create(dir) {
        Ok(()) if perms.shared() => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(perms.dir))
        }
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `dir` and its missing parents, each with the modes of the one above it.
pub fn make_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_dir_all(p)?;
    }
    make_dir(dir)
}

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
    let mut f = create_file(path, true)?;
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
    let mut f = create_file(&tmp, false)?;
    f.set_len(0)?;
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

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).map_or(0, |m| m.mode() & 0o7777)
    }

    #[test]
    fn what_is_made_is_private_unless_its_directory_shares_it_with_its_group(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        // SAFETY: umask only sets the process's mask; the widest one, to show it is ignored.
        let old = unsafe { libc::umask(0) };
        let private = dir.path().join("private");
        make_dir_all(&private.join("a/b"))?;
        write_new(&private.join("a/b/f"), b"x")?;
        replace(&private.join("a/g"), b"y")?;
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared)?;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o2755))?;
        // SAFETY: as above, now the narrowest.
        unsafe { libc::umask(0o077) };
        make_dir(&shared.join("img"))?;
        write_new(&shared.join("img/f"), b"x")?;
        drop(create_file(&shared.join("img/l"), false)?);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        assert_eq!(mode(&private.join("a")), 0o700);
        assert_eq!(mode(&private.join("a/b")), 0o700);
        assert_eq!(mode(&private.join("a/b/f")), 0o600);
        assert_eq!(mode(&private.join("a/g")), 0o600);
        assert_eq!(mode(&shared.join("img")), 0o2750);
        assert_eq!(mode(&shared.join("img/f")), 0o640);
        assert_eq!(mode(&shared.join("img/l")), 0o640);
        Ok(())
    }
}
