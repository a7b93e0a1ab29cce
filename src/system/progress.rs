//! The progress of a copy while it runs: what is reported ([`Progress`]), where it goes
//! ([`ProgressSink`], handed down from a client through the facade to the program doing the
//! copy) and the reader of `qemu-img convert -p` output ([`QemuProgress`]).

use serde::Serialize;
use std::sync::Arc;

/// How far a copy has come (its JSON field names are part of the API).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Progress {
    /// Percent done, 0 to 100; `None` while the total is unknown (a stream from a FIFO).
    pub percent: Option<f64>,
    /// Bytes written so far, where the copy counts them (a stream); `None` otherwise.
    pub bytes: Option<u64>,
}

impl Progress {
    /// `percent` done (clamped to 0..=100), bytes not counted.
    pub fn percent(percent: f64) -> Progress {
        Progress {
            percent: Some(percent.clamp(0.0, 100.0)),
            bytes: None,
        }
    }
}

type Report = dyn Fn(Progress) + Send + Sync;

/// Where a copy reports its progress as it runs; nowhere by default. Called on the thread
/// that runs the copy, so it must be quick.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<Arc<Report>>);

impl ProgressSink {
    /// Reports to nobody.
    pub fn none() -> ProgressSink {
        ProgressSink(None)
    }

    /// Reports to `f`.
    pub fn new(f: impl Fn(Progress) + Send + Sync + 'static) -> ProgressSink {
        ProgressSink(Some(Arc::new(f)))
    }

    /// Whether anyone listens (a copy may skip measuring otherwise).
    pub fn wanted(&self) -> bool {
        self.0.is_some()
    }

    pub fn report(&self, p: Progress) {
        if let Some(f) = &self.0 {
            f(p);
        }
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ProgressSink(reporting)"
        } else {
            "ProgressSink(none)"
        })
    }
}

/// Reads `qemu-img convert -p` output as it comes: records like `    (12.34/100%)`, each
/// ended by `\r` (the last by `\r\n`), in chunks split anywhere.
#[derive(Debug, Default)]
pub struct QemuProgress {
    partial: Vec<u8>,
}

impl QemuProgress {
    /// Takes the next chunk of output; the percent of the last whole record in it, if any.
    /// Text that is not a record is skipped.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<f64> {
        self.partial.extend_from_slice(chunk);
        // Nothing ends in this chunk: all of it waits for the next.
        let end = self
            .partial
            .iter()
            .rposition(|&b| b == b'\r' || b == b'\n')?;
        let last = self.partial[..end]
            .rsplit(|&b| b == b'\r' || b == b'\n')
            .find_map(parse_record);
        self.partial.drain(..=end);
        last
    }
}

/// `    (12.34/100%)` -> 12.34.
fn parse_record(record: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(record).ok()?.trim();
    let inner = text.strip_prefix('(')?.strip_suffix("/100%)")?;
    let percent: f64 = inner.parse().ok()?;
    percent.is_finite().then(|| percent.clamp(0.0, 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_across_reads_are_read_whole() {
        let mut p = QemuProgress::default();
        assert_eq!(p.feed(b"    (0.00/100%)\r"), Some(0.0));
        // A record in three pieces: nothing until its end arrives.
        assert_eq!(p.feed(b"    (12."), None);
        assert_eq!(p.feed(b"34/10"), None);
        assert_eq!(p.feed(b"0%)\r    (25"), Some(12.34));
        // Several records in one read: the last whole one counts.
        assert_eq!(p.feed(b".00/100%)\r    (50.00/100%)\r    (7"), Some(50.0));
        assert_eq!(p.feed(b"5.00/100%)\r    (100.00/100%)\r\n"), Some(100.0));
        assert_eq!(p.feed(b""), None);
    }

    #[test]
    fn text_that_is_not_a_record_is_skipped() {
        let mut p = QemuProgress::default();
        assert_eq!(p.feed(b"warning: something\n"), None);
        assert_eq!(p.feed(b"    (33.00/100%)\rgarbage\r"), Some(33.0));
        assert_eq!(p.feed(b"    (nan/100%)\r    (x/100%)\r"), None);
        assert_eq!(p.feed(b"    (250.00/100%)\r"), Some(100.0));
    }
}
