//! The LVM command layer: typed lvm operations, run through [`crate::exec`].
//!
//! Owns the lvm binary path, the per-command `--config` (device restriction, no hints, no
//! udev where none runs, no devices file), the safe defaults of mutating commands
//! (`--autobackup n`, `--wipesignatures n`, `--setautoactivation n`) and report parsing.
//! Callers never build lvm argument lists; this module never decides policy (names, tags).

pub mod backend;
pub mod error;
pub mod label;
pub mod report;
pub mod sim;

pub use backend::Backend;
pub use error::{Failure, LvmError};
pub use report::{LvRow, PvRow, VgRow};

use crate::exec::Cmd;
use crate::units::Bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How lvm is run on this host.
#[derive(Debug, Clone)]
pub struct LvmConfig {
    /// Absolute path of the `lvm` binary.
    pub lvm_path: PathBuf,
    /// When not empty, lvm only looks at these devices.
    pub devices: Vec<PathBuf>,
    /// Whether udev runs on this host (when not, lvm creates device nodes itself).
    pub udev: bool,
    /// Whether the device-mapper driver is present (when not, only metadata can change).
    pub driver_loaded: bool,
    /// Deadline of every lvm command.
    pub timeout: Duration,
}

impl LvmConfig {
    /// Settings detected from this host and the `LVCHAIN_*` environment.
    pub fn from_env() -> Result<Self, LvmError> {
        let devices = std::env::var("LVCHAIN_DEVICES")
            .ok()
            .map(|s| {
                s.split(',')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let timeout = std::env::var("LVCHAIN_LVM_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map_or(Duration::from_secs(120), Duration::from_secs_f64);
        let lvm_path = std::env::var_os("LVCHAIN_LVM")
            .map_or_else(|| PathBuf::from("/sbin/lvm"), PathBuf::from);
        // Never looked up in PATH: the binary that changes shared metadata is named exactly.
        if !lvm_path.is_absolute() {
            return Err(LvmError::BadSetting {
                name: "LVCHAIN_LVM",
                value: lvm_path.display().to_string(),
                reason: "must be an absolute path",
            });
        }
        Ok(LvmConfig {
            lvm_path,
            devices,
            udev: Path::new("/run/udev/control").exists(),
            driver_loaded: device_mapper_in_kernel(),
            timeout,
        })
    }

    /// The `--config` string of commands that change VG metadata.
    pub fn config_string(&self) -> String {
        self.config_for(false)
    }

    /// The `--config` string of commands that must not change VG metadata (reports,
    /// activation, deactivation, refresh): also `global/metadata_read_only=1`, so that lvm
    /// repairs or updates nothing on a host that may not hold the domain lock.
    pub fn read_only_config_string(&self) -> String {
        self.config_for(true)
    }

    fn config_for(&self, read_only: bool) -> String {
        let mut devices = String::from(
            "hints=\"none\" obtain_device_list_from_udev=0 use_devicesfile=0 scan_lvs=0",
        );
        if !self.devices.is_empty() {
            let accept: Vec<String> = self
                .devices
                .iter()
                .map(|d| format!("\"a|^{}$|\"", regex::escape(&d.to_string_lossy())))
                .collect();
            devices.push_str(&format!(" filter=[{}, \"r|.*|\"]", accept.join(", ")));
        }
        let udev = if self.udev {
            ""
        } else {
            " activation { udev_sync=0 udev_rules=0 verify_udev_operations=1 }"
        };
        let global = if read_only {
            "use_lvmlockd=0 metadata_read_only=1"
        } else {
            "use_lvmlockd=0"
        };
        format!("devices {{ {devices} }}{udev} global {{ {global} }}")
    }
}

/// Whether this kernel has device-mapper: `/proc/misc` lists its control device. (The
/// `/dev/mapper/control` node alone proves nothing: libdevmapper makes it when it is missing.)
pub fn device_mapper_in_kernel() -> bool {
    std::fs::read_to_string("/proc/misc").is_ok_and(|misc| {
        misc.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
    })
}

/// Whether a command changes VG metadata (and so takes the mutating defaults), or must not
/// (and runs with `metadata_read_only=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// What `lvchange` does to activation, besides tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Activate,
    Deactivate,
    Refresh,
}

/// A new LV: name, size, tags (all set by the one `lvcreate`), activation.
#[derive(Debug, Clone)]
pub struct NewLv<'a> {
    pub name: &'a str,
    pub size: Bytes,
    pub tags: Vec<String>,
    pub activate: bool,
}

/// Typed lvm operations.
#[derive(Debug, Clone)]
pub struct Lvm {
    pub config: LvmConfig,
}

impl Lvm {
    pub fn new(config: LvmConfig) -> Self {
        Lvm { config }
    }

    fn command(&self, sub: &str, kind: Kind) -> Cmd {
        let config = match kind {
            Kind::Read => self.config.read_only_config_string(),
            Kind::Write => self.config.config_string(),
        };
        let mut c = Cmd::new(self.config.lvm_path.as_os_str(), self.config.timeout)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .arg(sub)
            .arg("--config")
            .arg(config);
        if !self.config.driver_loaded {
            c = c.args(["--driverloaded", "n"]);
        }
        if kind == Kind::Write && sub != "pvcreate" && sub != "vgremove" {
            c = c.args(["--autobackup", "n"]);
        }
        c
    }

    /// Runs the command; a non-zero exit becomes a classified error.
    /// lvm closes every descriptor it inherits (the suppressed warning is only the message),
    /// so the domain lock is carried past it by a holder process. Reports (see `report`) run
    /// without: a report changes nothing, one outliving a killed lvchain needs no lock.
    fn run(&self, mut cmd: Cmd) -> Result<String, LvmError> {
        cmd.closes_inherited_fds = true;
        let f = cmd.run()?;
        if f.success() {
            Ok(f.stdout)
        } else {
            Err(error::classify(&f))
        }
    }

    /// Runs a report; one retry when lvm was killed by a signal (a crashed `lvs` was seen).
    fn report<T: for<'de> serde::Deserialize<'de>>(
        &self,
        sub: &str,
        fields: &str,
        key: &str,
        target: &[&str],
    ) -> Result<Vec<T>, LvmError> {
        let build = || {
            self.command(sub, Kind::Read)
                .args(["--reportformat", "json", "--units", "b", "--nosuffix"])
                .args(["-o", fields])
                .args(target.iter().copied())
        };
        let mut f = build().run()?;
        if f.signal.is_some() || f.code.is_some_and(|c| c > 128) {
            tracing::warn!(argv = %f.argv, "lvm report crashed; retrying once");
            f = build().run()?;
        }
        if !f.success() {
            return Err(error::classify(&f));
        }
        report::parse_rows(&f.stdout, key).map_err(|reason| LvmError::Parse {
            argv: f.argv.clone(),
            reason,
        })
    }

    pub fn pvcreate(&self, devices: &[PathBuf], metadata_size: Bytes) -> Result<(), LvmError> {
        let c = self
            .command("pvcreate", Kind::Write)
            .args(["--metadatasize", &metadata_size.lvm_arg(), "-y"])
            .args(devices.iter().map(|d| d.as_os_str().to_owned()));
        self.run(c).map(drop)
    }

    pub fn vgcreate(
        &self,
        vg: &str,
        pvs: &[PathBuf],
        tags: &[String],
        metadata_size: Bytes,
    ) -> Result<(), LvmError> {
        let mut c = self
            .command("vgcreate", Kind::Write)
            .args(["--metadatasize", &metadata_size.lvm_arg()])
            .args(["--setautoactivation", "n"]);
        for t in tags {
            c = c.arg("--addtag").arg(t);
        }
        let c = c.arg(vg).args(pvs.iter().map(|d| d.as_os_str().to_owned()));
        self.run(c).map(drop)
    }

    /// Removes a VG; with `force`, its LVs too.
    pub fn vgremove(&self, vg: &str, force: bool) -> Result<(), LvmError> {
        let mut c = self.command("vgremove", Kind::Write);
        if force {
            c = c.args(["-f", "-f"]);
        }
        self.run(c.arg(vg)).map(drop)
    }

    /// Removes and adds VG tags in one metadata commit.
    pub fn vgchange_tags(&self, vg: &str, del: &[String], add: &[String]) -> Result<(), LvmError> {
        let c = tag_args(self.command("vgchange", Kind::Write), del, add).arg(vg);
        self.run(c).map(drop)
    }

    pub fn vgs(&self, vg: &str) -> Result<VgRow, LvmError> {
        let mut rows: Vec<VgRow> = self.report("vgs", VgRow::FIELDS, "vg", &[vg])?;
        rows.pop().ok_or_else(|| LvmError::Parse {
            argv: format!("vgs {vg}"),
            reason: "the report has no row".into(),
        })
    }

    /// Every VG this host's lvm sees (within the configured devices), in ONE report: how a
    /// client finds the domains on a host.
    pub fn vgs_all(&self) -> Result<Vec<VgRow>, LvmError> {
        self.report("vgs", VgRow::FIELDS, "vg", &[])
    }

    /// Every LV of the VG, with VG fields, in ONE report.
    pub fn lvs(&self, vg: &str) -> Result<Vec<LvRow>, LvmError> {
        self.report("lvs", LvRow::FIELDS, "lv", &[vg])
    }

    pub fn pvs(&self, vg: &str) -> Result<Vec<PvRow>, LvmError> {
        self.report(
            "pvs",
            PvRow::FIELDS,
            "pv",
            &["--select", &format!("vg_name={vg}")],
        )
    }

    /// Creates an LV carrying all `tags` from its first metadata commit.
    pub fn lvcreate(&self, vg: &str, lv: &NewLv<'_>) -> Result<(), LvmError> {
        let mut c = self
            .command("lvcreate", Kind::Write)
            .args(["-n", lv.name, "-L", &lv.size.lvm_arg()])
            .args(["--wipesignatures", "n", "-y"]);
        // Zeroing needs an active LV; lvchain writes what it needs itself.
        c = c.args(["-Z", "n"]);
        c = c.args(["-a", if lv.activate { "y" } else { "n" }]);
        for t in &lv.tags {
            c = c.arg("--addtag").arg(t);
        }
        self.run(c.arg(vg)).map(drop)
    }

    /// Removes and adds LV tags in ONE command (one metadata commit).
    pub fn lvchange_tags(
        &self,
        vg: &str,
        lv: &str,
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError> {
        let c = tag_args(self.command("lvchange", Kind::Write), del, add).arg(format!("{vg}/{lv}"));
        self.run(c).map(drop)
    }

    /// Adds and removes tags on several LVs (`vg/lv` names) in one command.
    pub fn lvchange_tags_many(
        &self,
        lvs: &[String],
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError> {
        if lvs.is_empty() {
            return Ok(());
        }
        let c = tag_args(self.command("lvchange", Kind::Write), del, add).args(lvs.iter());
        self.run(c).map(drop)
    }

    /// Activates, deactivates or refreshes LVs (`vg/lv` names) in one command.
    pub fn lvchange_activation(&self, lvs: &[String], what: Activation) -> Result<(), LvmError> {
        if lvs.is_empty() {
            return Ok(());
        }
        let c = match what {
            Activation::Activate => self.command("lvchange", Kind::Read).args(["-a", "y"]),
            Activation::Deactivate => self.command("lvchange", Kind::Read).args(["-a", "n"]),
            Activation::Refresh => self.command("lvchange", Kind::Read).arg("--refresh"),
        };
        self.run(c.args(lvs.iter())).map(drop)
    }

    /// Grows an LV to `size` (already rounded to extents by the caller).
    pub fn lvextend(&self, vg: &str, lv: &str, size: Bytes) -> Result<(), LvmError> {
        let c = self
            .command("lvextend", Kind::Write)
            .args(["-L", &size.lvm_arg()])
            .arg(format!("{vg}/{lv}"));
        self.run(c).map(drop)
    }

    /// Removes LVs (`vg/lv` names) in one command; active ones are deactivated first.
    pub fn lvremove(&self, lvs: &[String]) -> Result<(), LvmError> {
        if lvs.is_empty() {
            return Ok(());
        }
        let c = self
            .command("lvremove", Kind::Write)
            .arg("-f")
            .args(lvs.iter());
        self.run(c).map(drop)
    }
}

fn tag_args(mut c: Cmd, del: &[String], add: &[String]) -> Cmd {
    for t in del {
        c = c.arg("--deltag").arg(t);
    }
    for t in add {
        c = c.arg("--addtag").arg(t);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_restricts_devices_and_disables_udev() {
        let c = LvmConfig {
            lvm_path: "/sbin/lvm".into(),
            devices: vec!["/dev/loop0".into(), "/dev/loop1".into()],
            udev: false,
            driver_loaded: true,
            timeout: Duration::from_secs(1),
        };
        let s = c.config_string();
        assert!(
            s.contains(r#"filter=["a|^/dev/loop0$|", "a|^/dev/loop1$|", "r|.*|"]"#),
            "{s}"
        );
        assert!(s.contains("udev_sync=0"), "{s}");
        assert!(s.contains("hints=\"none\""), "{s}");
    }

    fn test_lvm() -> Lvm {
        Lvm::new(LvmConfig {
            lvm_path: "/sbin/lvm".into(),
            devices: vec!["/dev/loop0".into()],
            udev: true,
            driver_loaded: true,
            timeout: Duration::from_secs(1),
        })
    }

    /// The `--config` argument of a command built by `command`.
    fn config_of(c: &Cmd) -> String {
        let i = c
            .args
            .iter()
            .position(|a| a == "--config")
            .expect("--config");
        c.args[i + 1].to_string_lossy().into_owned()
    }

    #[test]
    fn commands_that_must_not_change_metadata_run_with_metadata_read_only() {
        let lvm = test_lvm();
        assert_eq!(
            lvm.config.read_only_config_string(),
            r#"devices { hints="none" obtain_device_list_from_udev=0 use_devicesfile=0 scan_lvs=0 filter=["a|^/dev/loop0$|", "r|.*|"] } global { use_lvmlockd=0 metadata_read_only=1 }"#
        );
        assert_eq!(
            lvm.config.config_string(),
            r#"devices { hints="none" obtain_device_list_from_udev=0 use_devicesfile=0 scan_lvs=0 filter=["a|^/dev/loop0$|", "r|.*|"] } global { use_lvmlockd=0 }"#
        );
        for sub in ["lvs", "vgs", "pvs", "lvchange"] {
            let s = config_of(&lvm.command(sub, Kind::Read));
            assert!(s.contains("metadata_read_only=1"), "{sub}: {s}");
        }
        for sub in ["lvcreate", "lvchange", "lvremove", "vgchange", "lvextend"] {
            let s = config_of(&lvm.command(sub, Kind::Write));
            assert!(!s.contains("metadata_read_only"), "{sub}: {s}");
        }
    }
}
