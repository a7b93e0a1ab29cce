//! Image link directories: `/run/lvchain/<VG>/<image>/<volume>` -> the volume's device
//! (`/dev/<VG>/<volume>` on a real host).
//!
//! A link directory exists exactly while its image is prepared on this host. qcow2 backing
//! files are recorded as the parent's bare volume id, resolved relative to this directory.

use crate::format::ids::{ImageId, VolumeId};
use std::io;
use std::path::{Path, PathBuf};

static RUN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Root of all link directories: `/run/lvchain`, or `LVCHAIN_RUN_DIR`, or what
/// [`set_run_dir`] chose for this process.
pub fn run_dir() -> PathBuf {
    RUN_DIR.get().cloned().unwrap_or_else(|| {
        std::env::var_os("LVCHAIN_RUN_DIR")
            .map_or_else(|| PathBuf::from("/run/lvchain"), PathBuf::from)
    })
}

/// Sets the root of link directories for the whole process, once (tests that run without
/// root); false when it was set already to another directory.
pub fn set_run_dir(dir: &Path) -> bool {
    RUN_DIR.get_or_init(|| dir.to_path_buf()) == dir
}

/// The link directory of `image`; for a file domain (a `vg` that is a path) its image
/// directory itself, where every volume's data file sits under its bare id already.
pub fn image_dir(vg: &str, image: &ImageId) -> PathBuf {
    if crate::engine::fsdomain::is_file_domain(vg) {
        return Path::new(vg)
            .join(crate::engine::fsdomain::IMAGES)
            .join(image.to_string());
    }
    run_dir().join(vg).join(image.to_string())
}

pub fn link_path(vg: &str, image: &ImageId, volume: &VolumeId) -> PathBuf {
    image_dir(vg, image).join(volume.to_string())
}

/// Makes `dir` and its missing parents `0755` whatever the umask (the agent's unit sets
/// `0077`): a link directory and the socket's are walked by the users of what they hold (a
/// VM's qemu, the agent's group), which the devices' and the socket's own modes guard.
pub fn make_dirs(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(p) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_dirs(p)?;
    }
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)),
    }
}

/// This host's record that the leaf of `image`, prepared here, is left to a VM's lock
/// manager (libvirt's sanlock plugin holds its lease exclusively while the VM runs): holders
/// take the shared leases of the other members only. Image ids are unique on a host.
pub fn vm_lease_marker(image: &ImageId) -> PathBuf {
    run_dir().join("vm-lease").join(image.to_string())
}

/// Whether the image is prepared on this host.
pub fn prepared(vg: &str, image: &ImageId) -> bool {
    image_dir(vg, image).is_dir()
}

/// Creates (or replaces) the link of one volume to its `device`; the image directory must
/// exist.
pub fn add(vg: &str, image: &ImageId, volume: &VolumeId, device: &Path) -> io::Result<()> {
    let link = link_path(vg, image, volume);
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(device, &link)
}

/// Removes one volume's link; a missing link is fine.
pub fn remove(vg: &str, image: &ImageId, volume: &VolumeId) -> io::Result<()> {
    match std::fs::remove_file(link_path(vg, image, volume)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes an image's link directory and everything in it.
pub fn remove_image(vg: &str, image: &ImageId) -> io::Result<()> {
    match std::fs::remove_dir_all(image_dir(vg, image)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
