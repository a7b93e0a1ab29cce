//! A simulated LVM for fast tests: VGs in memory, LV contents in sparse files, faults on demand.
//!
//! Semantics kept from lvm: one metadata commit per command and per LV (a multi-LV `lvchange`
//! or `lvremove` commits LV by LV, so a fault can land between two LVs), all tags of one
//! command applied at once, unique LV names, sizes rounded up to the extent size, no space ->
//! failure, an LV's device exists only while it is active (`<root>/dev/<vg>/<lv>`, a link to
//! its data file). Every command, every LV commit of a multi-LV command and every device write
//! is a numbered step; [`SimLvm::inject`] makes one step fail, fail after taking effect (a
//! timeout after the commit), or crash: take effect, then unwind with a [`SimCrash`] payload, so
//! no code of the operation runs after it (locks drop as they would with a dead process).
//! Never used outside tests: every feature keeps its test on real LVM.

use super::backend::Backend;
use super::{Activation, Failure, LvRow, LvmError, NewLv, PvRow, VgRow};
use crate::exec::ExecError;
use crate::metadata::Format;
use crate::qemu::QemuError;
use crate::units::Bytes;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Extent size of every simulated VG.
pub const EXTENT: u64 = 4 << 20;

/// What an injected fault does to its step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The step takes effect, then the process "dies": nothing after it runs.
    Crash,
    /// The step fails without taking effect.
    Fail,
    /// The step takes effect, then reports a timeout (lvm killed after its commit).
    FailAfterCommit,
}

/// The unwinding payload of a simulated crash.
#[derive(Debug, Clone)]
pub struct SimCrash {
    pub step: usize,
    pub what: String,
}

#[derive(Debug, Clone)]
struct Lv {
    size: u64,
    tags: Vec<String>,
    active: bool,
}

#[derive(Debug, Clone)]
struct Vg {
    /// Raised by every change (activations too: more often than lvm, never less).
    seqno: u64,
    /// Differs between VGs made under the same name.
    uuid: String,
    tags: Vec<String>,
    pvs: Vec<PathBuf>,
    lvs: BTreeMap<String, Lv>,
}

#[derive(Debug, Default)]
struct State {
    /// Registered devices and the VG each belongs to (`Some("")`: a PV in no VG).
    devices: BTreeMap<PathBuf, (u64, Option<String>)>,
    vgs: BTreeMap<String, Vg>,
    /// VGs made so far (their uuids).
    vgs_made: u64,
}

#[derive(Debug, Default)]
struct Faults {
    steps: usize,
    plan: Vec<(usize, Fault)>,
    log: Vec<String>,
}

/// The simulated LVM (see the module doc).
#[derive(Debug)]
pub struct SimLvm {
    root: PathBuf,
    state: Mutex<State>,
    faults: Mutex<Faults>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn failure(argv: &str, stderr: String) -> Failure {
    Failure {
        argv: argv.to_string(),
        code: Some(5),
        stderr,
    }
}

fn round_up(size: u64) -> u64 {
    size.div_ceil(EXTENT).saturating_mul(EXTENT)
}

fn split_path(lv: &str) -> Result<(&str, &str), LvmError> {
    lv.split_once('/').ok_or_else(|| LvmError::Failed {
        failure: failure(lv, format!("\"{lv}\": not a vg/lv name")),
    })
}

fn apply_tags(tags: &mut Vec<String>, del: &[String], add: &[String]) {
    tags.retain(|t| !del.contains(t));
    for t in add {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
}

impl SimLvm {
    /// A simulated host whose devices live under `root` (created if needed).
    pub fn new(root: &Path) -> std::io::Result<SimLvm> {
        std::fs::create_dir_all(root.join("dev"))?;
        std::fs::create_dir_all(root.join("data"))?;
        Ok(SimLvm {
            root: root.to_path_buf(),
            state: Mutex::new(State::default()),
            faults: Mutex::new(Faults::default()),
        })
    }

    /// Makes a block device of `size` bytes appear (a disk to pvcreate).
    pub fn add_device(&self, path: &Path, size: u64) {
        lock(&self.state)
            .devices
            .insert(path.to_path_buf(), (size, None));
    }

    /// Writes `data` at `offset` of an LV's contents, active or not, outside the step count
    /// (a test planting known data).
    pub fn poke(&self, vg: &str, lv: &str, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.data_path(vg, lv))?
            .write_all_at(data, offset)
    }

    /// The first `len` bytes of an LV's contents, active or not (None: no such LV).
    pub fn peek(&self, vg: &str, lv: &str, len: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(self.data_path(vg, lv)).ok()?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, 0).ok()?;
        Some(buf)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        lock(&self.faults).steps
    }

    /// What each step was, in order.
    pub fn log(&self) -> Vec<String> {
        lock(&self.faults).log.clone()
    }

    /// Injects `fault` at step number `step` (counted from 1, as [`SimLvm::steps`] counts);
    /// several faults may be armed at once, at different steps.
    pub fn inject(&self, step: usize, fault: Fault) {
        lock(&self.faults).plan.push((step, fault));
    }

    /// Whether a fault is armed and has not fired yet.
    pub fn fault_pending(&self) -> bool {
        !lock(&self.faults).plan.is_empty()
    }

    pub fn clear_faults(&self) {
        lock(&self.faults).plan.clear();
    }

    /// Counts one step; the fault planned for it, if any.
    fn count(&self, what: &str) -> (usize, Option<Fault>) {
        let mut f = lock(&self.faults);
        f.steps += 1;
        f.log.push(what.to_string());
        let n = f.steps;
        match f.plan.iter().position(|(at, _)| *at == n) {
            Some(i) => (n, Some(f.plan.remove(i).1)),
            None => (n, None),
        }
    }

    /// Runs one step under the fault plan: `injected` is the error of a failure, `timed_out`
    /// the error of a failure after the step took effect.
    fn step<T, E>(
        &self,
        what: &str,
        injected: impl FnOnce() -> E,
        timed_out: impl FnOnce() -> E,
        apply: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let (n, fault) = self.count(what);
        if fault == Some(Fault::Fail) {
            return Err(injected());
        }
        let r = apply();
        match fault {
            Some(Fault::Crash) => std::panic::panic_any(SimCrash {
                step: n,
                what: what.to_string(),
            }),
            Some(Fault::FailAfterCommit) => {
                r?;
                Err(timed_out())
            }
            _ => r,
        }
    }

    /// One LVM command (or one LV's commit of a multi-LV command).
    fn lvm_step<T>(
        &self,
        what: &str,
        apply: impl FnOnce(&mut State) -> Result<T, LvmError>,
    ) -> Result<T, LvmError> {
        self.step(
            what,
            || LvmError::Failed {
                failure: failure(what, "injected failure".into()),
            },
            || {
                LvmError::Timeout(ExecError::Timeout {
                    argv: what.to_string(),
                    after: Duration::ZERO,
                })
            },
            || apply(&mut lock(&self.state)),
        )
    }

    /// One device write.
    fn io_step(
        &self,
        what: &str,
        apply: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        self.step(
            what,
            || std::io::Error::other("injected failure"),
            || {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "injected timeout after the write",
                )
            },
            apply,
        )
    }

    fn data_path(&self, vg: &str, lv: &str) -> PathBuf {
        self.root.join("data").join(vg).join(lv)
    }

    fn dev_path(&self, vg: &str, lv: &str) -> PathBuf {
        self.root.join("dev").join(vg).join(lv)
    }

    fn set_active(&self, vg: &str, lv: &str, active: bool) -> std::io::Result<()> {
        let dev = self.dev_path(vg, lv);
        if active {
            if let Some(dir) = dev.parent() {
                std::fs::create_dir_all(dir)?;
            }
            if dev.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(self.data_path(vg, lv), &dev)?;
            }
        } else if dev.symlink_metadata().is_ok() {
            std::fs::remove_file(&dev)?;
        }
        Ok(())
    }

    fn io_error(what: &str, e: std::io::Error) -> LvmError {
        LvmError::Failed {
            failure: failure(what, e.to_string()),
        }
    }
}

fn vg_missing(vg: &str, what: &str) -> LvmError {
    LvmError::VgNotFound {
        vg: vg.to_string(),
        failure: failure(what, format!("Volume group \"{vg}\" not found")),
    }
}

fn vg_ref<'a>(s: &'a State, vg: &str, what: &str) -> Result<&'a Vg, LvmError> {
    s.vgs.get(vg).ok_or_else(|| vg_missing(vg, what))
}

fn vg_mut<'a>(s: &'a mut State, vg: &str, what: &str) -> Result<&'a mut Vg, LvmError> {
    let v = s.vgs.get_mut(vg).ok_or_else(|| vg_missing(vg, what))?;
    v.seqno += 1;
    Ok(v)
}

fn lv_mut<'a>(v: &'a mut Vg, vg: &str, lv: &str, what: &str) -> Result<&'a mut Lv, LvmError> {
    v.lvs.get_mut(lv).ok_or_else(|| LvmError::LvNotFound {
        lv: format!("{vg}/{lv}"),
        failure: failure(what, format!("Failed to find logical volume \"{vg}/{lv}\"")),
    })
}

fn vg_size(s: &State, v: &Vg) -> u64 {
    v.pvs
        .iter()
        .filter_map(|p| s.devices.get(p))
        .map(|(size, _)| size / EXTENT * EXTENT)
        .sum()
}

fn vg_free(s: &State, v: &Vg) -> u64 {
    vg_size(s, v).saturating_sub(v.lvs.values().map(|l| l.size).sum())
}

impl Backend for SimLvm {
    fn lvs(&self, vg: &str) -> Result<Vec<LvRow>, LvmError> {
        let what = format!("lvs {vg}");
        self.lvm_step(&what, |s| {
            let v = vg_ref(s, vg, &what)?;
            let (size, free) = (vg_size(s, v), vg_free(s, v));
            Ok(v.lvs
                .iter()
                .map(|(name, l)| LvRow {
                    lv_name: name.clone(),
                    vg_name: vg.to_string(),
                    lv_size: l.size,
                    lv_tags: l.tags.clone(),
                    lv_attr: if l.active { "-wi-a-----" } else { "-wi-------" }.into(),
                    vg_extent_size: EXTENT,
                    vg_free: free,
                    vg_size: size,
                    vg_tags: v.tags.clone(),
                })
                .collect())
        })
    }

    fn vgs(&self, vg: &str) -> Result<VgRow, LvmError> {
        let what = format!("vgs {vg}");
        self.lvm_step(&what, |s| {
            let v = vg_ref(s, vg, &what)?;
            Ok(VgRow {
                vg_name: vg.to_string(),
                vg_size: vg_size(s, v),
                vg_free: vg_free(s, v),
                vg_extent_size: EXTENT,
                lv_count: v.lvs.len() as u64,
                vg_tags: v.tags.clone(),
                vg_seqno: v.seqno,
                vg_uuid: v.uuid.clone(),
            })
        })
    }

    fn pvs(&self, vg: &str) -> Result<Vec<PvRow>, LvmError> {
        self.lvm_step(&format!("pvs {vg}"), |s| {
            Ok(s.devices
                .iter()
                .filter(|(_, (_, owner))| owner.as_deref() == Some(vg))
                .map(|(p, (size, _))| PvRow {
                    pv_name: p.display().to_string(),
                    vg_name: vg.to_string(),
                    pv_size: *size,
                    pv_free: 0,
                })
                .collect())
        })
    }

    fn metadata_stamp(&self, vg: &str, pvs: &[PathBuf]) -> std::io::Result<Vec<u8>> {
        let s = lock(&self.state);
        match s.vgs.get(vg) {
            Some(v) if pvs.iter().any(|p| v.pvs.contains(p)) => {
                Ok(format!("{}:{}", v.uuid, v.seqno).into_bytes())
            }
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no metadata area of VG {vg} on these devices"),
            )),
        }
    }

    fn pvcreate(&self, devices: &[PathBuf], _metadata_size: Bytes) -> Result<(), LvmError> {
        let what = format!("pvcreate {devices:?}");
        self.lvm_step(&what, |s| {
            for d in devices {
                match s.devices.get_mut(d) {
                    Some((_, owner @ None)) => *owner = Some(String::new()),
                    Some(_) => {}
                    None => {
                        return Err(LvmError::Failed {
                            failure: failure(&what, format!("No device found for {}", d.display())),
                        })
                    }
                }
            }
            Ok(())
        })
    }

    fn vgcreate(
        &self,
        vg: &str,
        pvs: &[PathBuf],
        tags: &[String],
        _metadata_size: Bytes,
    ) -> Result<(), LvmError> {
        let what = format!("vgcreate {vg}");
        self.lvm_step(&what, |s| {
            if s.vgs.contains_key(vg) {
                return Err(LvmError::AlreadyExists {
                    name: vg.to_string(),
                    failure: failure(&what, format!("A volume group called {vg} already exists.")),
                });
            }
            for p in pvs {
                match s.devices.get_mut(p) {
                    Some((_, owner)) if owner.as_deref().is_none_or(str::is_empty) => {
                        *owner = Some(vg.to_string())
                    }
                    _ => {
                        return Err(LvmError::Failed {
                            failure: failure(&what, format!("{} is not a free PV", p.display())),
                        })
                    }
                }
            }
            s.vgs_made += 1;
            let uuid = format!("sim-{}", s.vgs_made);
            s.vgs.insert(
                vg.to_string(),
                Vg {
                    seqno: 1,
                    uuid,
                    tags: tags.to_vec(),
                    pvs: pvs.to_vec(),
                    lvs: BTreeMap::new(),
                },
            );
            Ok(())
        })
    }

    fn vgremove(&self, vg: &str, force: bool) -> Result<(), LvmError> {
        let what = format!("vgremove {vg}");
        let names = self.lvm_step(&what, |s| {
            let v = vg_mut(s, vg, &what)?;
            if !v.lvs.is_empty() && !force {
                return Err(LvmError::Failed {
                    failure: failure(&what, format!("Volume group \"{vg}\" still contains LVs")),
                });
            }
            let names: Vec<String> = v.lvs.keys().cloned().collect();
            s.vgs.remove(vg);
            for (_, owner) in s.devices.values_mut() {
                if owner.as_deref() == Some(vg) {
                    *owner = Some(String::new());
                }
            }
            Ok(names)
        })?;
        for lv in names {
            self.set_active(vg, &lv, false)
                .map_err(|e| Self::io_error(&what, e))?;
            let _ = std::fs::remove_file(self.data_path(vg, &lv));
        }
        Ok(())
    }

    fn vgchange_tags(&self, vg: &str, del: &[String], add: &[String]) -> Result<(), LvmError> {
        let what = format!("vgchange {vg} --deltag {del:?} --addtag {add:?}");
        self.lvm_step(&what, |s| {
            apply_tags(&mut vg_mut(s, vg, &what)?.tags, del, add);
            Ok(())
        })
    }

    fn lvcreate(&self, vg: &str, lv: &NewLv<'_>) -> Result<(), LvmError> {
        let what = format!("lvcreate {vg}/{} {:?}", lv.name, lv.tags);
        let size = round_up(lv.size.0);
        self.lvm_step(&what, |s| {
            let free = vg_free(s, vg_ref(s, vg, &what)?);
            let v = vg_mut(s, vg, &what)?;
            if v.lvs.contains_key(lv.name) {
                return Err(LvmError::AlreadyExists {
                    name: lv.name.to_string(),
                    failure: failure(
                        &what,
                        format!(
                            "Logical Volume \"{}\" already exists in volume group \"{vg}\"",
                            lv.name
                        ),
                    ),
                });
            }
            if size > free {
                return Err(LvmError::NoSpace {
                    failure: failure(&what, "Insufficient free space".into()),
                });
            }
            let data = self.data_path(vg, lv.name);
            let made = data
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::File::create(&data))
                .and_then(|f| f.set_len(size));
            made.map_err(|e| Self::io_error(&what, e))?;
            v.lvs.insert(
                lv.name.to_string(),
                Lv {
                    size,
                    tags: lv.tags.clone(),
                    active: lv.activate,
                },
            );
            self.set_active(vg, lv.name, lv.activate)
                .map_err(|e| Self::io_error(&what, e))
        })
    }

    fn lvchange_tags(
        &self,
        vg: &str,
        lv: &str,
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError> {
        let what = format!("lvchange {vg}/{lv} --deltag {del:?} --addtag {add:?}");
        self.lvm_step(&what, |s| {
            let v = vg_mut(s, vg, &what)?;
            apply_tags(&mut lv_mut(v, vg, lv, &what)?.tags, del, add);
            Ok(())
        })
    }

    fn lvchange_tags_many(
        &self,
        lvs: &[String],
        del: &[String],
        add: &[String],
    ) -> Result<(), LvmError> {
        let mut first_error = None;
        for path in lvs {
            let (vg, lv) = split_path(path)?;
            if let Err(e) = self.lvchange_tags(vg, lv, del, add) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn lvextend(&self, vg: &str, lv: &str, size: Bytes) -> Result<(), LvmError> {
        let what = format!("lvextend {vg}/{lv} -L {}", size.0);
        let size = round_up(size.0);
        self.lvm_step(&what, |s| {
            let free = vg_free(s, vg_ref(s, vg, &what)?);
            let v = vg_mut(s, vg, &what)?;
            let l = lv_mut(v, vg, lv, &what)?;
            if size <= l.size {
                return Err(LvmError::Failed {
                    failure: failure(&what, "New size given is not larger".into()),
                });
            }
            if size - l.size > free {
                return Err(LvmError::NoSpace {
                    failure: failure(&what, "Insufficient free space".into()),
                });
            }
            l.size = size;
            std::fs::OpenOptions::new()
                .write(true)
                .open(self.data_path(vg, lv))
                .and_then(|f| f.set_len(size))
                .map_err(|e| Self::io_error(&what, e))
        })
    }

    fn lvremove(&self, lvs: &[String]) -> Result<(), LvmError> {
        let mut first_error = None;
        for path in lvs {
            let (vg, lv) = split_path(path)?;
            let what = format!("lvremove {path}");
            let r = self.lvm_step(&what, |s| {
                let v = vg_mut(s, vg, &what)?;
                lv_mut(v, vg, lv, &what)?;
                v.lvs.remove(lv);
                self.set_active(vg, lv, false)
                    .and_then(|()| std::fs::remove_file(self.data_path(vg, lv)))
                    .map_err(|e| Self::io_error(&what, e))
            });
            if let Err(e) = r {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn lvchange_activation(&self, lvs: &[String], what: Activation) -> Result<(), LvmError> {
        if lvs.is_empty() {
            return Ok(());
        }
        let cmd = format!("lvchange {what:?} {lvs:?}");
        self.lvm_step(&cmd, |s| {
            for path in lvs {
                let (vg, lv) = split_path(path)?;
                let v = vg_mut(s, vg, &cmd)?;
                let l = lv_mut(v, vg, lv, &cmd)?;
                match what {
                    Activation::Activate => l.active = true,
                    Activation::Deactivate => l.active = false,
                    Activation::Refresh => {}
                }
                let active = l.active;
                self.set_active(vg, lv, active)
                    .map_err(|e| Self::io_error(&cmd, e))?;
            }
            Ok(())
        })
    }

    fn remove_stale_mapping(&self, _vg: &str, _lv: &str) -> bool {
        false
    }

    fn dev_dir(&self) -> PathBuf {
        self.root.join("dev")
    }

    fn read_at(&self, device: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        check_aligned(offset, len)?;
        let f = std::fs::File::open(device)?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = f.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(buf)
    }

    fn write_at(&self, device: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        check_aligned(offset, data.len())?;
        self.io_step(&format!("write {} at {offset}", device.display()), || {
            let f = std::fs::OpenOptions::new().write(true).open(device)?;
            let size = f.metadata()?.len();
            if offset + data.len() as u64 > size {
                return Err(std::io::Error::other("write beyond the end of the device"));
            }
            f.write_all_at(data, offset)
        })
    }

    fn logical_block_size(&self, _device: &Path) -> std::io::Result<u32> {
        Ok(512)
    }

    fn zero_device(
        &self,
        device: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::wipe::Wiped, crate::wipe::WipeError> {
        let start = std::time::Instant::now();
        let zero_err = |source| crate::wipe::WipeError::ZeroOut {
            path: device.to_path_buf(),
            offset: 0,
            len: 0,
            source,
        };
        let size = std::fs::metadata(device).map_err(zero_err)?.len();
        progress(0, size);
        self.io_step(&format!("zero {}", device.display()), || {
            let f = std::fs::OpenOptions::new().write(true).open(device)?;
            // A sparse file of the same size reads zeros: what BLKZEROOUT leaves.
            f.set_len(0)?;
            f.set_len(size)
        })
        .map_err(zero_err)?;
        progress(size, size);
        Ok(crate::wipe::Wiped {
            bytes: size,
            duration: start.elapsed(),
        })
    }

    fn qcow2_header(
        &self,
        capacity: u64,
        backing: Option<(&str, &str)>,
    ) -> Result<Vec<u8>, QemuError> {
        let mut h = b"QFI\xfb".to_vec();
        h.extend(format!(" sim capacity={capacity} backing={backing:?}\n").as_bytes());
        h.resize(512, 0);
        Ok(h)
    }

    fn resize_qcow2(&self, device: &Path, capacity: u64) -> Result<(), QemuError> {
        let old = self.read_at(device, 0, 512).map_err(QemuError::Scratch)?;
        if !old.starts_with(b"QFI\xfb") {
            return Err(QemuError::Scratch(std::io::Error::other(
                "not a qcow2 image",
            )));
        }
        let text = String::from_utf8_lossy(&old);
        let backing = text
            .split("backing=")
            .nth(1)
            .map(|b| b.trim_end_matches(['\0', '\n']).to_string())
            .unwrap_or_default();
        let mut h = b"QFI\xfb".to_vec();
        h.extend(format!(" sim capacity={capacity} backing={backing}\n").as_bytes());
        h.resize(512, 0);
        self.write_at(device, 0, &h).map_err(QemuError::Scratch)
    }

    fn convert(
        &self,
        source: &str,
        device: &Path,
        _format: Format,
        progress: &crate::progress::ProgressSink,
    ) -> Result<(), QemuError> {
        let spec: serde_json::Value = serde_json::from_str(source.trim_start_matches("json:"))
            .map_err(|e| QemuError::Scratch(std::io::Error::other(e.to_string())))?;
        let file = spec
            .pointer("/file/filename")
            .and_then(|v| v.as_str())
            .ok_or_else(|| QemuError::Scratch(std::io::Error::other("no file in the spec")))?;
        let mut data = std::fs::read(file).map_err(QemuError::Scratch)?;
        data.resize(data.len().div_ceil(512) * 512, 0);
        progress.report(crate::progress::Progress::percent(0.0));
        self.write_at(device, 0, &data)
            .map_err(QemuError::Scratch)?;
        progress.report(crate::progress::Progress::percent(100.0));
        Ok(())
    }
}

fn check_aligned(offset: u64, len: usize) -> std::io::Result<()> {
    if offset % 512 != 0 || len % 512 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("unaligned direct I/O: offset {offset}, length {len}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> (tempfile::TempDir, SimLvm) {
        let dir = tempfile::tempdir().expect("tempdir");
        let sim = SimLvm::new(dir.path()).expect("sim");
        sim.add_device(Path::new("/sim/pv0"), 1 << 30);
        sim.pvcreate(&["/sim/pv0".into()], Bytes(0)).expect("pv");
        sim.vgcreate("vg", &["/sim/pv0".into()], &["T".into()], Bytes(0))
            .expect("vg");
        (dir, sim)
    }

    fn new_lv<'a>(name: &'a str, tags: &[&str], activate: bool) -> NewLv<'a> {
        NewLv {
            name,
            size: Bytes(5 << 20),
            tags: tags.iter().map(ToString::to_string).collect(),
            activate,
        }
    }

    #[test]
    fn lvs_follow_commands_with_lvm_semantics() -> Result<(), LvmError> {
        let (_dir, sim) = sim();
        sim.lvcreate("vg", &new_lv("a", &["X", "Y"], true))?;
        assert!(matches!(
            sim.lvcreate("vg", &new_lv("a", &[], false)),
            Err(LvmError::AlreadyExists { .. })
        ));
        let rows = sim.lvs("vg")?;
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].lv_size, 8 << 20, "rounded up to extents");
        assert!(rows[0].active());
        assert_eq!(rows[0].vg_tags, ["T"]);
        assert!(sim.dev_dir().join("vg/a").exists());
        sim.lvchange_tags("vg", "a", &["X".into()], &["Z".into()])?;
        assert_eq!(sim.lvs("vg")?[0].lv_tags, ["Y", "Z"]);
        sim.lvchange_activation(&["vg/a".into()], Activation::Deactivate)?;
        assert!(!sim.dev_dir().join("vg/a").exists());
        sim.lvremove(&["vg/a".into()])?;
        assert!(sim.lvs("vg")?.is_empty());
        assert!(matches!(sim.lvs("nope"), Err(LvmError::VgNotFound { .. })));
        assert!(matches!(
            sim.lvcreate(
                "vg",
                &NewLv {
                    size: Bytes(2 << 30),
                    ..new_lv("big", &[], false)
                }
            ),
            Err(LvmError::NoSpace { .. })
        ));
        Ok(())
    }

    #[test]
    fn a_multi_lv_command_commits_lv_by_lv() -> Result<(), LvmError> {
        let (_dir, sim) = sim();
        for n in ["a", "b", "c"] {
            sim.lvcreate("vg", &new_lv(n, &[], false))?;
        }
        let next = sim.steps() + 2;
        sim.inject(next, Fault::Fail);
        let all: Vec<String> = ["vg/a", "vg/b", "vg/c"].map(String::from).to_vec();
        assert!(sim.lvchange_tags_many(&all, &[], &["M".into()]).is_err());
        let marked: Vec<bool> = sim
            .lvs("vg")?
            .iter()
            .map(|r| r.lv_tags.contains(&"M".to_string()))
            .collect();
        assert_eq!(marked, [true, false, true]);
        Ok(())
    }

    #[test]
    fn faults_fail_commit_then_fail_or_crash() -> Result<(), LvmError> {
        let (_dir, sim) = sim();
        sim.inject(sim.steps() + 1, Fault::FailAfterCommit);
        assert!(matches!(
            sim.lvcreate("vg", &new_lv("a", &[], false)),
            Err(LvmError::Timeout(_))
        ));
        assert_eq!(sim.lvs("vg")?.len(), 1, "the commit happened");
        sim.inject(sim.steps() + 1, Fault::Crash);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.lvchange_tags("vg", "a", &[], &["C".into()])
        }));
        let payload = r.expect_err("crashed");
        assert!(payload.downcast_ref::<SimCrash>().is_some());
        assert_eq!(
            sim.lvs("vg")?[0].lv_tags,
            ["C"],
            "the crashed step took effect"
        );
        Ok(())
    }
}
