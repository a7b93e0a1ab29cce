//! Bursts: the domain lock held across many creations, for a long-running client (the
//! agent's fast path). While the lock is held the domain's snapshot is cached and trusted (no
//! other process can change the VG), so a creation costs its marked `lvcreate` and its commit,
//! no report; creations that reach their commit together share ONE commit `lvchange` (lvm
//! commits each LV of it on its own: a crash in the middle leaves the others marked, and the
//! collector rolls each back alone, as after any creation that died before its commit).
//!
//! The lock is released when the burst ends (no creation for `idle`), when another holder wants
//! it (a process of this host waiting for the local lock says so, see
//! [`crate::lock::local::LocalLock::wanted`]; other hosts of a sanlock domain cannot, so there
//! the lock is never held longer than `max_hold` at a time), and when a burst is dropped.
//!
//! The LVM writes of a burst run one at a time: lvm serializes them on its VG lock anyway, and
//! each of many waiting lvm processes would read the VG again once it got that lock. On
//! release the VG's metadata stamp is read under the lock (the header sectors of its PVs'
//! metadata areas, by direct I/O: no lvm command, see [`crate::lvm::label`]), and the snapshot
//! kept with it; the next acquisition reads the stamp again and uses the snapshot only when it
//! did not change, and makes the full report otherwise. Where the stamp cannot be read, the
//! VG's uuid and sequence number (one `vgs`) stand in for it. Nothing cached is used without
//! the lock: a snapshot lives in the held state, and goes with it.

use super::{Domain, Snapshot};
use crate::error::{Error, Result};
use crate::exec::Inherit;
use crate::lock::{DomainGuard, LockError};
use crate::volume::{create, Catalog, CreateRequest, Volume};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// How a burst holds and shares the domain lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BurstSettings {
    /// Released after this long without a creation.
    pub idle: Duration,
    /// A domain shared with other hosts (sanlock) is never held longer than this at a time:
    /// they cannot ask for it. (This host's processes ask: a local domain has no bound.)
    pub max_hold: Duration,
    /// How long a creation ready to commit waits for others still making theirs.
    pub commit_wait: Duration,
    /// How often the watcher looks for the end of a burst and for waiters.
    pub poll: Duration,
}

impl Default for BurstSettings {
    fn default() -> Self {
        BurstSettings {
            idle: Duration::from_millis(200),
            max_hold: Duration::from_secs(5),
            commit_wait: Duration::from_secs(2),
            poll: Duration::from_millis(20),
        }
    }
}

/// What a burst did so far (for tests and benchmarks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BurstStats {
    /// Times the domain lock was taken.
    pub acquired: u64,
    /// Acquisitions whose kept snapshot was still the VG's (metadata unchanged).
    pub reused: u64,
    /// Acquisitions that made the full report.
    pub reread: u64,
    /// Commit `lvchange`s run, and the creations they committed.
    pub commits: u64,
    pub committed: u64,
    /// Releases because another process waited.
    pub yielded: u64,
}

/// What says whether the VG's metadata changed: the header sectors of its metadata areas,
/// or (where they cannot be read) its uuid and sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seq {
    Headers(Vec<u8>),
    Seqno(String, u64),
}

struct Held {
    /// The lock's descriptors, carried by each creation on its thread: the LVM commands of
    /// the burst hold the lock with it, and no other program does. Before the guard: its
    /// duplicates close first.
    inherit: Inherit,
    _guard: Box<dyn DomainGuard>,
    since: Instant,
    last: Instant,
    /// Trusted while the lock is held; None when an outcome is not known (re-read first).
    snap: Option<Snapshot>,
    /// The VG's metadata stamp when it was last known to match `snap`; None after changes.
    seq: Option<Seq>,
    /// Held at most `max_hold` (other hosts share the domain).
    bounded: bool,
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    /// The snapshot as of the last release and the stamp then: checked before any use.
    kept: Option<(Snapshot, Seq)>,
    /// The VG's PVs (where its metadata areas are), listed once.
    pvs: Option<Vec<std::path::PathBuf>>,
    /// Creations between their plan and their end (the lock stays held meanwhile).
    users: usize,
    /// Of those, creations making their LV (not yet queued for the commit).
    making: usize,
    /// Names queued for the next commit, results of commits done, a commit running.
    queue: Vec<String>,
    results: HashMap<String, Result<()>>,
    committing: bool,
    /// Someone else wants the lock: no creation starts until it was released.
    yielding: bool,
    /// After a release for someone else: wait (up to this instant) while they still wait.
    defer_until: Option<Instant>,
}

/// The domain lock held across the creations of a burst (see the module doc).
pub struct Burst {
    domain: Domain,
    settings: BurstSettings,
    state: Mutex<State>,
    changed: Condvar,
    /// Held around each creation's LVM writes and each commit.
    writer: Mutex<()>,
    stats: [AtomicU64; 6],
}

impl Burst {
    /// A burst over `domain`, with a watcher thread that releases the lock when the burst
    /// ends or another holder wants it (it ends when the burst is dropped).
    pub fn start(domain: Domain, settings: BurstSettings) -> Arc<Burst> {
        let burst = Arc::new(Burst {
            domain,
            settings,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            writer: Mutex::new(()),
            stats: Default::default(),
        });
        let weak = Arc::downgrade(&burst);
        std::thread::spawn(move || watch(weak, settings.poll));
        burst
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    pub fn stats(&self) -> BurstStats {
        let s = |i: usize| self.stats[i].load(Ordering::Relaxed);
        BurstStats {
            acquired: s(0),
            reused: s(1),
            reread: s(2),
            commits: s(3),
            committed: s(4),
            yielded: s(5),
        }
    }

    fn count(&self, i: usize, n: u64) {
        self.stats[i].fetch_add(n, Ordering::Relaxed);
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, d)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    /// Whether the lock is held now (tests).
    pub fn is_held(&self) -> bool {
        self.lock_state().held.is_some()
    }

    /// Creates a volume within the burst: as [`Domain::create_volume`], markers first and the
    /// commit last, without the report while the lock is held.
    pub fn create_volume(&self, req: &CreateRequest) -> Result<Volume> {
        let mut st = self.lock_state();
        // Start: the lock held, the snapshot trusted.
        loop {
            if st.yielding {
                st = self.wait(st, self.settings.poll);
                continue;
            }
            if let Some(until) = st.defer_until {
                if Instant::now() < until && self.domain.local.lock.wanted(&self.domain.vg) {
                    st = self.wait(st, self.settings.poll);
                    continue;
                }
                st.defer_until = None;
            }
            if st.held.is_none() {
                self.acquire(&mut st)?;
            }
            break;
        }
        // Until this creation ends (the lock is held so long), its LVM commands hold it too.
        let carry = st.held.as_ref().map(|h| h.inherit.carry());
        let (cat, store) = {
            let held = st.held.as_mut().ok_or_else(not_held)?;
            let snap = match held.snap.take() {
                Some(s) => s,
                None => {
                    held.seq = None;
                    self.domain.scan()?
                }
            };
            let store = self.domain.slots(&snap);
            held.snap = Some(snap.clone());
            (Catalog::from_snapshot(&self.domain, snap)?, store?)
        };
        let plan = create::plan(&self.domain, &cat, req)?;
        let vg_free = cat.snap.info.vg_free;
        let entry = plan.marked_entry(req.wipe);
        let name = entry.name.clone();
        if let Some(snap) = st.held.as_mut().and_then(|h| {
            h.seq = None;
            h.last = Instant::now();
            h.snap.as_mut()
        }) {
            snap.info.vg_free =
                crate::units::Bytes(snap.info.vg_free.0.saturating_sub(entry.size.0));
            snap.lvs.push(entry);
        }
        st.users += 1;
        st.making += 1;
        drop(st);

        let made = {
            let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            create::make(&self.domain, &store, vg_free, plan, req.wipe)
        };

        let mut st = self.lock_state();
        st.making -= 1;
        let made = match made {
            Ok(m) => m,
            Err(e) => {
                // Rolled back, or left for the collector: the next creation re-reads.
                self.forget(&mut st);
                drop(carry);
                st.users -= 1;
                self.changed.notify_all();
                return Err(e);
            }
        };
        st.queue.push(name.clone());
        self.changed.notify_all();
        let ready = Instant::now();
        let result = loop {
            if let Some(r) = st.results.remove(&name) {
                break r;
            }
            let waited = ready.elapsed() >= self.settings.commit_wait;
            if !st.committing && !st.queue.is_empty() && (st.making == 0 || waited) {
                let batch = std::mem::take(&mut st.queue);
                st.committing = true;
                drop(st);
                let results = {
                    let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
                    create::commit(&self.domain, &batch)
                };
                self.count(3, 1);
                st = self.lock_state();
                st.committing = false;
                for (n, r) in batch.into_iter().zip(results) {
                    match &r {
                        Ok(()) => {
                            self.count(4, 1);
                            if let Some(lv) = st
                                .held
                                .as_mut()
                                .and_then(|h| h.snap.as_mut())
                                .and_then(|s| s.lvs.iter_mut().find(|l| l.name == n))
                            {
                                lv.creating = false;
                            }
                        }
                        Err(_) => self.forget(&mut st),
                    }
                    st.results.insert(n, r);
                }
                if let Some(snap) = st.held.as_mut().and_then(|h| h.snap.as_mut()) {
                    snap.classify();
                }
                self.changed.notify_all();
                continue;
            }
            st = self.wait(st, self.settings.poll);
        };
        drop(carry);
        st.users -= 1;
        if let Some(h) = st.held.as_mut() {
            h.last = Instant::now();
        }
        self.changed.notify_all();
        drop(st);
        result?;
        Ok(create::finish(&self.domain, made))
    }

    /// Drops the cached snapshot: the next creation makes the full report (under the lock).
    fn forget(&self, st: &mut State) {
        if let Some(h) = st.held.as_mut() {
            h.snap = None;
            h.seq = None;
        }
    }

    /// The VG's metadata stamp, read under the lock: its metadata-area headers (no lvm
    /// command once its PVs are known), else its uuid and seqno (one `vgs`).
    fn stamp(&self, st: &mut State) -> Result<Seq> {
        let vg = self.domain.vg.as_str();
        if st.pvs.is_none() {
            match self.domain.lvm.pvs(vg) {
                Ok(rows) => {
                    st.pvs = Some(rows.into_iter().map(|r| r.pv_name.into()).collect());
                }
                Err(e) => tracing::debug!(vg, error = %e, "cannot list the VG's PVs"),
            }
        }
        if let Some(pvs) = st.pvs.as_deref() {
            match self.domain.lvm.metadata_stamp(vg, pvs) {
                Ok(h) => return Ok(Seq::Headers(h)),
                Err(e) => {
                    tracing::debug!(vg, error = %e, "cannot read the metadata-area headers: the seqno instead");
                    // The PVs may have changed: list them again next time.
                    st.pvs = None;
                }
            }
        }
        let row = self
            .domain
            .lvm
            .vgs(vg)
            .map_err(|e| self.domain.vg_error(e))?;
        Ok(Seq::Seqno(row.vg_uuid, row.vg_seqno))
    }

    /// Takes the domain lock; the kept snapshot is used only when the VG's metadata stamp
    /// says nothing changed since it was kept, else the full report is made now.
    fn acquire(&self, st: &mut State) -> Result<()> {
        let guard = self.domain.lock_guard()?;
        let inherit = Inherit::new(guard.fds()).map_err(|source| LockError::Io {
            path: format!("the domain lock of {}", self.domain.vg),
            source,
        })?;
        let carry = inherit.carry();
        let now = Instant::now();
        let (snap, seq) = match st.kept.take() {
            Some((snap, seq)) => {
                let current = self.stamp(st)?;
                if current == seq {
                    self.count(1, 1);
                    (snap, Some(seq))
                } else {
                    tracing::debug!(vg = %self.domain.vg, "the VG changed since the last burst");
                    self.count(2, 1);
                    (self.domain.scan()?, None)
                }
            }
            None => {
                self.count(2, 1);
                (self.domain.scan()?, None)
            }
        };
        self.domain.check_kind(&snap)?;
        let bounded = self.domain.locks()?.has_hosts();
        self.count(0, 1);
        drop(carry);
        st.held = Some(Held {
            inherit,
            _guard: guard,
            since: now,
            last: now,
            snap: Some(snap),
            seq,
            bounded,
        });
        Ok(())
    }

    /// Releases the lock when no creation is under way and the burst ended, is past its hold
    /// bound, or another holder waits (then no creation starts until it is released).
    fn tick(&self) {
        let mut st = self.lock_state();
        let Some(held) = st.held.as_ref() else {
            return;
        };
        let wanted = self.domain.local.lock.wanted(&self.domain.vg);
        let over = held.bounded && held.since.elapsed() >= self.settings.max_hold;
        if st.users > 0 {
            if wanted || over {
                st.yielding = true;
            }
            return;
        }
        if !(wanted || over || held.last.elapsed() >= self.settings.idle) {
            return;
        }
        if wanted || over {
            self.count(5, u64::from(wanted));
            st.defer_until = Some(Instant::now() + self.settings.max_hold);
        }
        self.release(&mut st);
        st.yielding = false;
        self.changed.notify_all();
    }

    /// Releases the lock, keeping the snapshot with the VG's metadata stamp read under it
    /// (nothing is kept when it cannot be read).
    fn release(&self, st: &mut State) {
        let Some(held) = st.held.take() else {
            return;
        };
        // The stamp is read before the guard goes (at the end of this function).
        let carry = held.inherit.carry();
        st.kept = match (held.snap, held.seq) {
            (Some(snap), Some(seq)) => Some((snap, seq)),
            (Some(snap), None) => match self.stamp(st) {
                Ok(seq) => Some((snap, seq)),
                Err(e) => {
                    tracing::debug!(vg = %self.domain.vg, error = %e, "no metadata stamp: the next burst re-reads");
                    None
                }
            },
            (None, _) => None,
        };
        drop(carry);
        tracing::debug!(vg = %self.domain.vg, held_ms = held.since.elapsed().as_millis() as u64, "burst ended: domain lock released");
    }
}

fn not_held() -> Error {
    Error::InvalidInput("internal: the burst does not hold the domain lock".into())
}

fn watch(burst: Weak<Burst>, poll: Duration) {
    loop {
        std::thread::sleep(poll);
        match burst.upgrade() {
            Some(b) => b.tick(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::FormatRequest;
    use crate::format::ids::ImageId;
    use crate::lvm::sim::SimLvm;
    use crate::lvm::Backend;
    use crate::metadata::Format;
    use crate::units::Bytes;

    fn base() -> CreateRequest {
        CreateRequest {
            image: Some(ImageId::random()),
            size: Some(Bytes(1 << 20)),
            format: Some(Format::Raw),
            parent: None,
            id: None,
            description: String::new(),
            wipe: None,
        }
    }

    fn count(log: &[String], verb: &str) -> usize {
        log.iter().filter(|l| l.starts_with(verb)).count()
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_burst_creates_without_reports_commits_together_and_rereads_a_changed_vg() {
        let dir = tempfile::tempdir().unwrap();
        let sim = Arc::new(SimLvm::new(&dir.path().join("sim")).unwrap());
        let pv = dir.path().join("pv0");
        std::fs::write(&pv, b"").unwrap();
        sim.add_device(&pv, 64 << 30);
        let locks = dir.path().join("lock");
        let vg = format!("burst{}", std::process::id());
        let d = Domain::new_local_in(vg.parse().unwrap(), sim.clone(), &locks);
        d.format(&FormatRequest {
            pvs: vec![pv],
            max_volumes: 64,
            lock_manager: crate::lock::LockKind::Local,
            wipe: crate::tags::Wipe::Zero,
        })
        .unwrap();
        let settings = BurstSettings {
            idle: Duration::from_millis(300),
            commit_wait: Duration::from_secs(5),
            ..BurstSettings::default()
        };
        let burst = Domain::new_local_in(vg.parse().unwrap(), sim.clone(), &locks).burst(settings);
        // The first creation takes the lock (one report), the next ones reuse it.
        burst.create_volume(&base()).unwrap();
        let before = sim.log().len();
        let made: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| burst.create_volume(&base())))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        let log = sim.log()[before..].to_vec();
        assert_eq!(count(&log, "lvs"), 0, "{log:#?}");
        assert_eq!(count(&log, "lvcreate"), 8, "{log:#?}");
        let stats = burst.stats();
        // The simulation logs each LV of a shared commit (lvm commits each on its own); it is
        // too fast to promise sharing, which the real LVM test checks.
        assert_eq!(count(&log, "lvchange"), 8, "{log:#?}");
        assert!(stats.commits <= 9);
        assert_eq!(stats.committed, 9);
        assert_eq!(stats.acquired, 1);
        let listed = d.volumes(None).unwrap();
        for v in &made {
            assert!(listed.iter().any(|l| l.id == v.id && l.slot == v.slot));
        }
        assert!(d.check().unwrap().clean);
        // The burst ends; another process changes the VG; the next burst sees it.
        let start = Instant::now();
        while burst.is_held() {
            assert!(start.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(20));
        }
        let outside = d.create_volume(&base()).unwrap();
        let v = burst.create_volume(&base()).unwrap();
        assert_ne!(v.slot, outside.slot, "the cached snapshot was not used");
        assert_eq!(burst.stats().reread, 2);
        // Unchanged between bursts: the metadata stamp alone, no lvm command.
        while burst.is_held() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = sim.log().len();
        burst.create_volume(&base()).unwrap();
        let log = sim.log()[before..].to_vec();
        assert_eq!(count(&log, "lvs"), 0, "{log:#?}");
        assert_eq!(count(&log, "vgs") + count(&log, "pvs"), 0, "{log:#?}");
        let lvm = log
            .iter()
            .filter(|l| ["lv", "vg", "pv"].iter().any(|p| l.starts_with(p)))
            .count();
        assert_eq!(lvm, 2, "lvcreate and its commit only: {log:#?}");
        assert_eq!(burst.stats().reused, 1);
        // Another holder waiting makes the burst release at once.
        assert!(burst.is_held());
        let waited = Instant::now();
        d.set_wipe(crate::tags::Wipe::None).unwrap();
        assert!(waited.elapsed() < settings.idle, "{:?}", waited.elapsed());
        assert_eq!(burst.stats().yielded, 1);
        assert!(d.check().unwrap().clean);
        let _ = sim.vgs(&vg);
    }
}
