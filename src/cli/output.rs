//! CLI output: human tables by default, JSON with `--json`, both printed from the views of
//! `views.rs` only (never from engine types): a command run in-process and one answered by
//! the agent (whose JSON is read back into the same views) print the same bytes.
//!
//! Everything goes through one writer (stdout in the binary). A reader that went away (a
//! closed pipe, `lvchain volume list VG | head -1`) ends the output with
//! [`Error::OutputClosed`], which the binary treats as a quiet success: the command's work is
//! done by the time it prints. SIGPIPE stays ignored (a signal could end lvchain mid-change).

use super::views::{
    self, CheckView, DomainInfoView, DomainSummaryView, GcView, PreparedView, StatusView,
    VolumeView,
};
use crate::error::{Error, Result};
use serde::Serialize;
use std::cell::RefCell;
use std::fmt::Arguments;
use std::io::Write;

pub struct Out {
    pub json: bool,
    w: RefCell<Box<dyn Write>>,
}

/// A failed write of the output: a closed pipe is [`Error::OutputClosed`].
fn write_error(e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Error::OutputClosed
    } else {
        Error::Io {
            what: "writing the output".into(),
            source: e,
        }
    }
}

fn short(id: &dyn std::fmt::Display) -> String {
    id.to_string()
}

fn table(out: &Out, headers: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.line(format_args!("{}", s.join("  ").trim_end()))
    };
    line(headers.iter().map(|h| h.to_string()).collect())?;
    for r in rows {
        line(r.clone())?;
    }
    Ok(())
}

impl Out {
    /// Output to this process's stdout.
    pub fn stdout(json: bool) -> Out {
        Out::to(json, Box::new(std::io::stdout()))
    }

    /// Output to any writer.
    pub fn to(json: bool, w: Box<dyn Write>) -> Out {
        Out {
            json,
            w: RefCell::new(w),
        }
    }

    /// Writes one line and passes it on at once (the reader sees each line as it comes).
    fn line(&self, text: Arguments<'_>) -> Result<()> {
        let mut w = self.w.borrow_mut();
        writeln!(w, "{text}")
            .and_then(|()| w.flush())
            .map_err(write_error)
    }

    fn print_json<T: Serialize + ?Sized>(&self, v: &T) -> Result<()> {
        let s = serde_json::to_string_pretty(v)
            .map_err(|e| Error::InvalidInput(format!("cannot encode output: {e}")))?;
        self.line(format_args!("{s}"))
    }

    pub fn message(&self, m: &str) -> Result<()> {
        if self.json {
            self.print_json(&views::MessageView { result: m.into() })
        } else {
            self.line(format_args!("{m}"))?;
            Ok(())
        }
    }

    /// An XML document or element: as it is, or with --json as `{"xml": ...}`.
    pub fn xml(&self, text: &str) -> Result<()> {
        if self.json {
            return self.print_json(&serde_json::json!({ "xml": text }));
        }
        self.raw(text.as_bytes())
    }

    /// Writes bytes as they are (a generated script: never JSON).
    pub fn raw(&self, bytes: &[u8]) -> Result<()> {
        let mut w = self.w.borrow_mut();
        w.write_all(bytes)
            .and_then(|()| w.flush())
            .map_err(write_error)
    }

    pub fn list(&self, items: &[&str]) -> Result<()> {
        if self.json {
            return self.print_json(items);
        }
        for i in items {
            self.line(format_args!("{i}"))?;
        }
        Ok(())
    }

    pub fn created(&self, v: &VolumeView) -> Result<()> {
        if self.json {
            self.print_json(v)
        } else {
            self.line(format_args!("{}", v.id))?;
            Ok(())
        }
    }

    pub fn volume(&self, v: &VolumeView) -> Result<()> {
        if self.json {
            return self.print_json(v);
        }
        let parent = v
            .parent
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let rows = [
            ("id", v.id.to_string()),
            ("image", v.image.to_string()),
            ("parent", parent),
            ("role", v.role.clone()),
            ("legality", v.legality.clone()),
            ("generation", v.generation.to_string()),
            ("format", v.format.clone()),
            (
                "capacity",
                format!("{} ({})", v.capacity, crate::units::Bytes(v.capacity)),
            ),
            (
                "lv_size",
                format!("{} ({})", v.lv_size, crate::units::Bytes(v.lv_size)),
            ),
            ("slot", v.slot.to_string()),
            ("active", v.active.to_string()),
            ("description", v.description.clone()),
        ];
        for (k, val) in rows {
            self.line(format_args!("{k:<12} {val}"))?;
        }
        Ok(())
    }

    pub fn volumes(&self, vs: &[VolumeView]) -> Result<()> {
        if self.json {
            return self.print_json(vs);
        }
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| {
                vec![
                    short(&v.id),
                    short(&v.image),
                    v.parent.map(|p| short(&p)).unwrap_or_else(|| "-".into()),
                    v.role.clone(),
                    v.legality.clone(),
                    v.generation.to_string(),
                    v.format.clone(),
                    crate::units::Bytes(v.capacity).to_string(),
                    crate::units::Bytes(v.lv_size).to_string(),
                    v.slot.to_string(),
                ]
            })
            .collect();
        table(
            self,
            &[
                "ID", "IMAGE", "PARENT", "ROLE", "LEGALITY", "GEN", "FORMAT", "CAPACITY",
                "LV SIZE", "SLOT",
            ],
            &rows,
        )
    }

    pub fn prepared(&self, view: &PreparedView) -> Result<()> {
        if self.json {
            return self.print_json(view);
        }
        if let Some(leaf) = &view.leaf {
            self.line(format_args!("{}", leaf.display()))?;
        }
        Ok(())
    }

    pub fn domain_created(&self, info: &DomainInfoView) -> Result<()> {
        if self.json {
            return self.print_json(info);
        }
        self.line(format_args!(
            "domain {} formatted: format {}, lock {}, {} slots of {} bytes, wipe {}",
            info.vg, info.format, info.lock_manager, info.max_volumes, info.slot_size, info.wipe
        ))?;
        Ok(())
    }

    pub fn domain_info(&self, i: &DomainSummaryView) -> Result<()> {
        if self.json {
            return self.print_json(i);
        }
        let b = |n: u64| crate::units::Bytes(n).to_string();
        table(
            self,
            &[
                "DOMAIN",
                "FORMAT",
                "LOCK",
                "WIPE",
                "SIZE",
                "FREE",
                "VOLUMES",
                "IMAGES",
                "ORPHANS",
                "FREE SLOTS",
            ],
            &[vec![
                i.info.vg.clone(),
                i.info.format.to_string(),
                i.info.lock_manager.clone(),
                i.info.wipe.clone(),
                b(i.info.vg_size),
                b(i.info.vg_free),
                i.volumes.to_string(),
                i.images.to_string(),
                i.orphans.to_string(),
                i.free_slots.to_string(),
            ]],
        )
    }

    pub fn check(&self, r: &CheckView) -> Result<()> {
        if self.json {
            return self.print_json(r);
        }
        if r.clean {
            self.line(format_args!(
                "domain {} is clean: {} volumes in {} images",
                r.vg, r.volumes, r.images
            ))?;
            return Ok(());
        }
        let rows: Vec<Vec<String>> = r
            .problems
            .iter()
            .map(|p| vec![p.kind.clone(), p.subject.clone(), p.detail.clone()])
            .collect();
        table(self, &["PROBLEM", "SUBJECT", "DETAIL"], &rows)?;
        Ok(())
    }

    pub fn gc(&self, r: &GcView) -> Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let rows: Vec<Vec<String>> = r
            .orphans
            .iter()
            .map(|o| {
                vec![
                    o.lv.clone(),
                    o.marker.clone(),
                    o.actions.join("; "),
                    o.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let verb = if r.dry_run {
            "would collect"
        } else {
            "collected"
        };
        self.line(format_args!(
            "{verb} {} orphan(s) in {:.2}s",
            r.orphans.len(),
            r.seconds
        ))?;
        if !rows.is_empty() {
            table(self, &["LV", "MARKER", "ACTIONS", "ERROR"], &rows)?;
        }
        Ok(())
    }

    pub fn status(&self, st: &StatusView) -> Result<()> {
        if self.json {
            return self.print_json(st);
        }
        let host = st
            .host_id
            .map(|h| format!(" (host {h})"))
            .unwrap_or_default();
        let reason = st
            .reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        self.line(format_args!("{}{host}{reason}", st.state))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// A pipe's write end whose read end is already closed (as after `| head -1` exits).
    fn closed_pipe() -> std::fs::File {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two new descriptors, which we own from here on.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fds[0] is ours; closing it leaves the pipe without a reader.
        unsafe { libc::close(fds[0]) };
        // SAFETY: fds[1] is a new descriptor that nothing else owns.
        unsafe { std::fs::File::from_raw_fd(fds[1]) }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_quietly() {
        // The Rust runtime ignores SIGPIPE, as lvchain does: the write fails with EPIPE.
        for json in [false, true] {
            let out = Out::to(json, Box::new(closed_pipe()));
            let r = out.list(&["one", "two"]);
            assert!(matches!(r, Err(Error::OutputClosed)), "{r:?}");
        }
    }

    #[test]
    fn lines_reach_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("out");
        let out = Out::to(false, Box::new(std::fs::File::create(&path).expect("file")));
        out.list(&["one", "two"]).expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\ntwo\n");
    }
}
