//! Image link directories: `/run/lvchain/<VG>/<image>/<volume>` -> `/dev/<VG>/<volume>`.
//!
//! A link directory exists exactly while its image is prepared on this host. qcow2 backing
//! files are recorded as the parent's bare volume id, resolved relative to this directory.

use std::io;
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Root of all link directories (`LVCHAIN_RUN_DIR` overrides, for tests).
pub fn run_dir() -> PathBuf {
    std::env::var_os("LVCHAIN_RUN_DIR").map_or_else(|| PathBuf::from("/run/lvchain"), PathBuf::from)
}

pub fn image_dir(vg: &str, image: &Uuid) -> PathBuf {
    run_dir().join(vg).join(image.to_string())
}

pub fn link_path(vg: &str, image: &Uuid, volume: &Uuid) -> PathBuf {
    image_dir(vg, image).join(volume.to_string())
}

pub fn device_path(vg: &str, volume: &Uuid) -> PathBuf {
    Path::new("/dev").join(vg).join(volume.to_string())
}

/// Whether the image is prepared on this host.
pub fn prepared(vg: &str, image: &Uuid) -> bool {
    image_dir(vg, image).is_dir()
}

/// Creates (or replaces) the link of one volume; the image directory must exist.
pub fn add(vg: &str, image: &Uuid, volume: &Uuid) -> io::Result<()> {
    let link = link_path(vg, image, volume);
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(device_path(vg, volume), &link)
}

/// Removes one volume's link; a missing link is fine.
pub fn remove(vg: &str, image: &Uuid, volume: &Uuid) -> io::Result<()> {
    match std::fs::remove_file(link_path(vg, image, volume)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes an image's link directory and everything in it.
pub fn remove_image(vg: &str, image: &Uuid) -> io::Result<()> {
    match std::fs::remove_dir_all(image_dir(vg, image)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
