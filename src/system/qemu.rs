//! qemu-img operations (create, resize, info), run through [`crate::exec`].

use crate::directio::ALIGN;
use crate::exec::Cmd;
use crate::progress::{Progress, ProgressSink, QemuProgress};
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("`{argv}` failed (exit {code:?}): {stderr}")]
    Failed {
        argv: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    #[error("qcow2 header in memory: {0}")]
    Scratch(#[source] std::io::Error),
}

fn qemu_img() -> String {
    std::env::var("LVCHAIN_QEMU_IMG").unwrap_or_else(|_| "/usr/bin/qemu-img".into())
}

fn run(cmd: Cmd) -> Result<String, QemuError> {
    let f = cmd.run()?;
    if f.success() {
        Ok(f.stdout)
    } else {
        Err(QemuError::Failed {
            argv: f.argv,
            code: f.code,
            stderr: f.stderr.trim().to_string(),
        })
    }
}

/// Writes a qcow2 header on `target`; `backing` is (relative path, format). The backing file
/// is not opened (`-u`): the chain may be inactive while the header is written.
pub fn create_qcow2(
    target: &Path,
    capacity: u64,
    backing: Option<(&str, &str)>,
) -> Result<(), QemuError> {
    let mut c =
        Cmd::new(qemu_img(), Duration::from_secs(120)).args(["create", "-q", "-f", "qcow2"]);
    if let Some((file, fmt)) = backing {
        c = c.args(["-u", "-b", file, "-F", fmt]);
    }
    c = c
        .args(["-o", "compat=1.1"])
        .arg(target.as_os_str())
        .arg(capacity.to_string());
    run(c).map(drop)
}

/// The bytes `qemu-img create` writes for a new qcow2 image, made in memory (a memfd) so that
/// it can run while the LV is still being created. qemu-img writes the same header, refcount
/// and L1 clusters to a file as to a device; [`write_qcow2_header`] puts them on the device.
pub fn qcow2_header(capacity: u64, backing: Option<(&str, &str)>) -> Result<Vec<u8>, QemuError> {
    // SAFETY: memfd_create with a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(c"lvchain-qcow2".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(QemuError::Scratch(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    let path = PathBuf::from(format!("/proc/{}/fd/{fd}", std::process::id()));
    create_qcow2(&path, capacity, backing)?;
    let mut bytes = Vec::new();
    file.rewind()
        .and_then(|()| file.read_to_end(&mut bytes))
        .map_err(QemuError::Scratch)?;
    if bytes.is_empty() {
        return Err(QemuError::Scratch(std::io::Error::other(
            "qemu-img wrote nothing",
        )));
    }
    Ok(bytes)
}

/// Writes a header made by [`qcow2_header`] at the start of `device` in one O_DIRECT write,
/// zero-padded to whole 4 KiB blocks.
pub fn write_qcow2_header(
    io: &dyn crate::lvm::Backend,
    device: &Path,
    header: &[u8],
) -> std::io::Result<()> {
    let mut buf = header.to_vec();
    buf.resize(header.len().div_ceil(ALIGN) * ALIGN, 0);
    io.write_at(device, 0, &buf)
}

/// Grows a qcow2 image's virtual size.
/// The image is opened without its backing file: a resize changes only the image's own header
/// and tables, and the parent need not be active on this host.
pub fn resize_qcow2(target: &Path, capacity: u64) -> Result<(), QemuError> {
    let spec = serde_json::json!({
        "driver": "qcow2",
        "backing": null,
        "file": { "driver": "host_device", "filename": target.to_string_lossy() },
    });
    let mut c = Cmd::new(qemu_img(), Duration::from_secs(120))
        .args(["resize", "-q"])
        .arg(format!("json:{spec}"))
        .arg(capacity.to_string());
    // It writes the image's tables, under the volume's lease.
    c.die_with_parent = true;
    run(c).map(drop)
}

/// Bytes of LV needed for a fully written qcow2 of `capacity`: data plus L1/L2 tables,
/// refcounts and header, for 64 KiB clusters, with margin.
/// qemu-img convert of `src` (a `json:` source spec) into the existing volume. With a sink
/// that listens, qemu-img runs with `-p` and its progress is reported as it comes (100 once
/// it succeeded).
pub fn convert(
    src: &str,
    dst: &Path,
    dst_fmt: crate::metadata::Format,
    progress: &ProgressSink,
) -> Result<(), QemuError> {
    let timeout = std::env::var("LVCHAIN_COPY_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(24 * 3600), Duration::from_secs);
    let mut c = Cmd::new(qemu_img(), timeout).args([
        "convert",
        "-n",
        "-t",
        "none",
        "-O",
        &dst_fmt.to_string(),
    ]);
    c.die_with_parent = true;
    if progress.wanted() {
        c = c.arg("-p");
    }
    let c = c.arg(src).arg(dst.as_os_str());
    let f = if progress.wanted() {
        let mut records = QemuProgress::default();
        c.run_streaming(&mut |chunk| {
            if let Some(percent) = records.feed(chunk) {
                progress.report(Progress::percent(percent));
            }
        })?
    } else {
        c.run()?
    };
    if !f.success() {
        return Err(QemuError::Failed {
            argv: f.argv,
            code: f.code,
            stderr: f.stderr.trim().to_string(),
        });
    }
    progress.report(Progress::percent(100.0));
    Ok(())
}

/// The `json:` source qemu-img reads `path` through: the format given (never probed), the
/// protocol driver named (so no `nbd:`/`json:` prefix in a file name is interpreted), and for
/// qcow2 no backing file, whatever the header names.
pub fn source_spec(path: &Path, format: crate::metadata::Format, block_device: bool) -> String {
    let file = serde_json::json!({
        "driver": if block_device { "host_device" } else { "file" },
        "filename": path.to_string_lossy(),
    });
    let spec = match format {
        crate::metadata::Format::Raw => serde_json::json!({ "driver": "raw", "file": file }),
        crate::metadata::Format::Qcow2 => {
            serde_json::json!({ "driver": "qcow2", "backing": null, "file": file })
        }
    };
    format!("json:{spec}")
}

/// The `json:` source of a volume chain, base first: each qcow2 member reads through the one
/// before it (named here from lvchain's metadata, never from the image's header), the base
/// reads nothing else. Every member's device must be active.
pub fn chain_spec(members: &[(PathBuf, crate::metadata::Format)]) -> String {
    let mut spec = serde_json::Value::Null;
    for (device, format) in members {
        let file =
            serde_json::json!({ "driver": "host_device", "filename": device.to_string_lossy() });
        spec = match format {
            crate::metadata::Format::Raw => serde_json::json!({ "driver": "raw", "file": file }),
            crate::metadata::Format::Qcow2 => {
                serde_json::json!({ "driver": "qcow2", "file": file, "backing": spec })
            }
        };
    }
    format!("json:{spec}")
}

/// The other files a qcow2 image's header names (a backing file, an external data file).
pub fn external_files(spec: &str) -> Result<Vec<String>, QemuError> {
    let c = Cmd::new(qemu_img(), Duration::from_secs(120))
        .args(["info", "--output", "json"])
        .arg(spec);
    let out = run(c)?;
    let info: serde_json::Value = serde_json::from_str(&out).map_err(|e| QemuError::Failed {
        argv: format!("qemu-img info {spec}"),
        code: Some(0),
        stderr: format!("unreadable output: {e}"),
    })?;
    let mut files = Vec::new();
    if let Some(b) = info.get("backing-filename").and_then(|v| v.as_str()) {
        files.push(format!("backing file {b:?}"));
    }
    if let Some(d) = info
        .pointer("/format-specific/data/data-file")
        .and_then(|v| v.as_str())
    {
        files.push(format!("data file {d:?}"));
    }
    Ok(files)
}

pub fn qcow2_lv_size(capacity: u64) -> u64 {
    let clusters = capacity.div_ceil(65536);
    let l2 = clusters * 8;
    let refcounts = clusters * 2;
    capacity + l2 + refcounts + (4 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_spec_reads_each_member_through_the_one_before() {
        use crate::metadata::Format;
        let spec = chain_spec(&[
            (PathBuf::from("/dev/vg/base"), Format::Raw),
            (PathBuf::from("/dev/vg/mid"), Format::Qcow2),
            (PathBuf::from("/dev/vg/top"), Format::Qcow2),
        ]);
        let v: serde_json::Value =
            serde_json::from_str(spec.trim_start_matches("json:")).expect("json");
        assert_eq!(v["driver"], "qcow2");
        assert_eq!(v["file"]["filename"], "/dev/vg/top");
        assert_eq!(v["backing"]["file"]["filename"], "/dev/vg/mid");
        assert_eq!(v["backing"]["backing"]["driver"], "raw");
        assert_eq!(v["backing"]["backing"]["file"]["filename"], "/dev/vg/base");
        assert!(v["backing"]["backing"].get("backing").is_none());
        // A lone qcow2 (no parent) reads nothing else.
        let lone = chain_spec(&[(PathBuf::from("/dev/vg/q"), Format::Qcow2)]);
        assert!(lone.contains("\"backing\":null"), "{lone}");
    }

    #[test]
    fn a_header_made_in_memory_is_the_image_qemu_img_would_write() {
        if !Path::new(&qemu_img()).exists() {
            eprintln!("skipped: no qemu-img");
            return;
        }
        let header = qcow2_header(3 << 30, Some(("parent-id", "raw"))).expect("header");
        assert_eq!(&header[..4], b"QFI\xfb");
        // On a "device" of stale bytes, the header written over its start makes a valid image.
        let dir = std::env::temp_dir().join(format!("lvchain-qcow2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let dev = dir.join("dev");
        std::fs::write(&dev, vec![0xa5u8; 8 << 20]).expect("device");
        let real = crate::lvm::Lvm::new(crate::lvm::LvmConfig::from_env().expect("lvm settings"));
        write_qcow2_header(&real, &dev, &header).expect("write");
        let info = Cmd::new(qemu_img(), Duration::from_secs(60))
            .args(["info", "--output", "json", "-f", "qcow2"])
            .arg(dev.as_os_str())
            .run()
            .expect("qemu-img info");
        // Checked without opening the backing file (it does not exist here).
        let spec = format!(
            r#"json:{{"driver":"qcow2","file":{{"driver":"file","filename":"{}"}},"backing":null}}"#,
            dev.display()
        );
        let check = Cmd::new(qemu_img(), Duration::from_secs(60))
            .args(["check", &spec])
            .run()
            .expect("qemu-img check");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(info.success(), "{}", info.stderr);
        assert!(
            info.stdout.contains("\"virtual-size\": 3221225472"),
            "{}",
            info.stdout
        );
        assert!(
            info.stdout.contains("\"backing-filename\": \"parent-id\""),
            "{}",
            info.stdout
        );
        assert!(
            info.stdout.contains("\"backing-filename-format\": \"raw\""),
            "{}",
            info.stdout
        );
        assert!(check.success(), "{} {}", check.stdout, check.stderr);
    }
}
