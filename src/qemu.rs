//! qemu-img operations (create, resize, info), run through [`crate::exec`].

use crate::exec::Cmd;
use std::path::Path;
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

/// Grows a qcow2 image's virtual size.
pub fn resize_qcow2(target: &Path, capacity: u64) -> Result<(), QemuError> {
    let c = Cmd::new(qemu_img(), Duration::from_secs(120))
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(target.as_os_str())
        .arg(capacity.to_string());
    run(c).map(drop)
}

/// Bytes of LV needed for a fully written qcow2 of `capacity`: data plus L1/L2 tables,
/// refcounts and header, for 64 KiB clusters, with margin.
pub fn qcow2_lv_size(capacity: u64) -> u64 {
    let clusters = capacity.div_ceil(65536);
    let l2 = clusters * 8;
    let refcounts = clusters * 2;
    capacity + l2 + refcounts + (4 << 20)
}
