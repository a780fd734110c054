//! The registrations this mount owns (contract §6): path → data as *desired
//! state*, with each one's standing (owned, pending, held by another
//! session), the due queue and the backoff. The task that reconciles it
//! (`super::supervisor`) runs on every new session,
//! every reconnect and every deletion event for an owned path, until the file
//! is removed through the mount or the mount goes away.
//!
//! Per registration, one reconcile step reads the node from the server (never
//! the cache) and:
//! - absent: creates it (ephemeral, on the current session, with its data);
//! - owned by the current session: done;
//! - owned by one of this mount's *earlier* sessions (the client declared a
//!   session expired that the server still holds, or restored after a
//!   restart): deletes it, checked by the version just read, and creates it
//!   on the current session;
//! - owned by anyone else: leaves it, logs that once, and takes it back when
//!   it goes (its deletion event, or a capped periodic re-check).
//!
//! Failed steps are retried with capped, jittered backoff for as long as the
//! mount lives; every ZooKeeper call is bounded (`--op-timeout`, and the
//! whole step by [`STEP_LIMIT`]).
//!
//! It also owns *held* registrations (`user.zkfs.hold`, see
//! doc/SEMANTICS.md): write handles marked as holders; when the last one is
//! released the registration is removed.
//!
//! It owns no inode, cache or handle state and must not touch them: it talks
//! to the server through the store's backend and lets the watch events keep
//! the cache coherent. It never deletes a node owned by another client.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// A poisoned lock still holds consistent state (every change is one step).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The extended attribute that makes a write handle hold its registration.
pub const HOLD_XATTR: &str = "user.zkfs.hold";

/// Upper bound of one reconcile step (at most three bounded calls).
pub(super) const STEP_LIMIT: Duration = Duration::from_secs(60);
/// First retry delay after a failed step ...
pub(super) const RETRY_BASE: Duration = Duration::from_millis(200);
/// ... doubling up to this.
pub(super) const RETRY_CAP: Duration = Duration::from_secs(5);
/// A node held by someone else is re-checked at most this far apart (its
/// deletion event normally wakes us first).
pub(super) const HELD_RECHECK_CAP: Duration = Duration::from_secs(10);

/// Where a registration stands with ZooKeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegState {
    /// The node exists, owned by the current session.
    Owned,
    /// Not (known to be) on the server as ours yet: being (re-)created.
    Pending,
    /// The node exists, owned by another session (not one of this mount's).
    HeldByOther(i64),
}

/// Registration counts per state, for `zkfs status` and the root xattrs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegCounts {
    pub owned: usize,
    pub pending: usize,
    pub held_by_others: usize,
}

pub(super) struct Reg {
    pub(super) data: Vec<u8>,
    pub(super) state: RegState,
    /// Changes whenever the registration is (re-)made through the mount, so
    /// a step that raced with that does not overwrite its outcome.
    pub(super) generation: u64,
    /// When the next reconcile step is due (None: nothing to do).
    pub(super) due: Option<Instant>,
    pub(super) attempts: u32,
    /// The foreign owner already logged (log once per owner).
    pub(super) logged_owner: Option<i64>,
    /// Bumped by every request to look again (deletion event, reconnect):
    /// one that arrives while a step runs makes the step's answer stale.
    pub(super) marks: u64,
}

#[derive(Default)]
pub(super) struct Inner {
    pub(super) regs: HashMap<String, Reg>,
    /// Holder handles per held registration.
    pub(super) holders: HashMap<String, HashSet<u64>>,
    /// Released held registrations whose node must still be deleted (if it
    /// is one of this mount's): path → (when due, attempts so far).
    pub(super) doomed: HashMap<String, (Instant, u32)>,
}

/// The desired registrations and their state. Cheap, synchronous methods for
/// the filesystem core; the reconciling happens in
/// [`ZkFs::supervise_registrations`].
#[derive(Default)]
pub struct Registry {
    pub(super) inner: Mutex<Inner>,
    pub(super) wake: Notify,
    pub(super) generations: AtomicU64,
    pub(super) jitter_seed: AtomicU64,
}

impl Registry {
    pub(super) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A registration was just created (or updated) through the mount on the
    /// current session.
    pub fn insert(&self, path: &str, data: Vec<u8>) {
        let generation = self.next_generation();
        let mut inner = lock(&self.inner);
        inner.doomed.remove(path);
        inner.regs.insert(
            path.to_string(),
            Reg {
                data,
                state: RegState::Owned,
                generation,
                due: None,
                attempts: 0,
                logged_owner: None,
                marks: 0,
            },
        );
    }

    /// Put back a registration taken with [`Self::take`] whose removal
    /// failed; it is checked against the server at once.
    pub fn restore(&self, path: &str, data: Vec<u8>) {
        self.insert(path, data);
        if let Some(reg) = lock(&self.inner).regs.get_mut(path) {
            reg.state = RegState::Pending;
            reg.due = Some(Instant::now());
        }
        self.wake.notify_one();
    }

    /// New data was written to an owned registration through the mount.
    pub fn update(&self, path: &str, data: Vec<u8>) {
        if let Some(reg) = lock(&self.inner).regs.get_mut(path) {
            reg.data = data;
        }
    }

    pub fn contains(&self, path: &str) -> bool {
        lock(&self.inner).regs.contains_key(path)
    }

    /// Stop owning `path` (removed through the mount), returning its data.
    /// Called *before* the node is deleted, so its deletion event does not
    /// make the supervisor re-create it.
    pub fn take(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.inner).regs.remove(path).map(|r| r.data)
    }

    /// Delete the node at `path` if it is (or becomes visible as) one of this
    /// mount's: a held registration whose last holder is gone.
    pub(super) fn doom(&self, path: &str) {
        lock(&self.inner)
            .doomed
            .insert(path.to_string(), (Instant::now(), 0));
        self.wake.notify_one();
    }

    /// A deletion event for `path`: if it is ours, re-create it.
    pub fn node_deleted(&self, path: &str) {
        let mut inner = lock(&self.inner);
        if let Some(reg) = inner.regs.get_mut(path) {
            if reg.state == RegState::Owned {
                info!(path, "registration deleted on the server; re-creating it");
            }
            reg.state = RegState::Pending;
            reg.due = Some(Instant::now());
            reg.attempts = 0;
            reg.marks += 1;
            drop(inner);
            self.wake.notify_one();
        }
    }

    /// The session expired: the server drops its ephemeral nodes (or has),
    /// so none is owned until a new session re-creates it (`reconcile_all`
    /// when it is up). A step running meanwhile looks again when it ends.
    pub fn session_ended(&self) {
        let mut inner = lock(&self.inner);
        for reg in inner.regs.values_mut() {
            if reg.state == RegState::Owned {
                reg.state = RegState::Pending;
            }
            reg.marks += 1;
        }
    }

    /// A new session or a reconnect: check every registration now.
    pub fn reconcile_all(&self) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        for (due, _) in inner.doomed.values_mut() {
            *due = now;
        }
        for reg in inner.regs.values_mut() {
            if reg.state == RegState::Owned {
                reg.state = RegState::Pending;
            }
            reg.due = Some(now);
            reg.attempts = 0;
            reg.marks += 1;
        }
        drop(inner);
        self.wake.notify_one();
    }

    pub fn counts(&self) -> RegCounts {
        let mut counts = RegCounts::default();
        for reg in lock(&self.inner).regs.values() {
            match reg.state {
                RegState::Owned => counts.owned += 1,
                RegState::Pending => counts.pending += 1,
                RegState::HeldByOther(_) => counts.held_by_others += 1,
            }
        }
        counts
    }

    /// Mark `handles` (every write handle of the file: `setxattr` does not
    /// say whose it is) as holders of the registration at `path`, unless
    /// it is held already and some of them are new (false: a descriptor
    /// opened since wants to hold what another holds; its release would
    /// not end the registration, but its wrapper's `unlink` would, under
    /// the first holder). Holding again with the same handles is a no-op.
    pub fn hold(&self, path: &str, handles: &[u64]) -> bool {
        let mut inner = lock(&self.inner);
        let set = inner.holders.entry(path.to_string()).or_default();
        if !set.is_empty() && handles.iter().any(|fh| !set.contains(fh)) {
            return false;
        }
        set.extend(handles.iter().copied());
        true
    }

    /// A handle was released: the path whose last holder it was, if any.
    pub fn release_holder(&self, fh: u64) -> Option<String> {
        let mut inner = lock(&self.inner);
        let path = inner
            .holders
            .iter()
            .find(|(_, set)| set.contains(&fh))
            .map(|(p, _)| p.clone())?;
        let set = inner.holders.get_mut(&path)?;
        set.remove(&fh);
        if set.is_empty() {
            inner.holders.remove(&path);
            Some(path)
        } else {
            None
        }
    }

    /// Paths whose step is due at `now`, and when the next one is due.
    pub(super) fn due(&self, now: Instant) -> (Vec<DueStep>, Option<Instant>) {
        let inner = lock(&self.inner);
        let mut ready = Vec::new();
        let mut next: Option<Instant> = None;
        for (path, (t, _)) in &inner.doomed {
            if *t <= now {
                ready.push(DueStep {
                    path: path.clone(),
                    data: Vec::new(),
                    generation: 0,
                    marks: 0,
                    remove: true,
                });
            } else {
                next = Some(next.map_or(*t, |n| n.min(*t)));
            }
        }
        for (path, reg) in &inner.regs {
            match reg.due {
                Some(t) if t <= now => ready.push(DueStep {
                    path: path.clone(),
                    data: reg.data.clone(),
                    generation: reg.generation,
                    marks: reg.marks,
                    remove: false,
                }),
                Some(t) => next = Some(next.map_or(t, |n| n.min(t))),
                None => {}
            }
        }
        (ready, next)
    }

    /// A delay of `base * 2^attempts`, capped, times a jitter in [0.5, 1.5).
    pub(super) fn backoff(&self, attempts: u32, cap: Duration) -> Duration {
        let exp = RETRY_BASE.saturating_mul(1u32 << attempts.min(16)).min(cap);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        let seed = self
            .jitter_seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            ^ nanos;
        let mixed = seed.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 33;
        let factor = 0.5 + (mixed % 1000) as f64 / 1000.0;
        exp.mul_f64(factor)
    }

    /// Record a step's outcome for `path` if the registration is still the
    /// one the step worked on. Returns false when it is no longer desired at
    /// all (removed through the mount meanwhile).
    pub(super) fn settle(&self, due: &DueStep, outcome: &Step) -> bool {
        let path = due.path.as_str();
        let mut inner = lock(&self.inner);
        let Some(reg) = inner.regs.get_mut(path) else {
            return false;
        };
        if reg.generation != due.generation {
            return true;
        }
        if reg.marks != due.marks {
            // Something happened to the node while the step ran: look again.
            reg.state = RegState::Pending;
            reg.due = Some(Instant::now());
            return true;
        }
        match outcome {
            Step::Owned => {
                reg.state = RegState::Owned;
                reg.due = None;
                reg.attempts = 0;
                reg.logged_owner = None;
            }
            Step::HeldBy(owner) => {
                if reg.logged_owner != Some(*owner) {
                    reg.logged_owner = Some(*owner);
                    warn!(
                        path,
                        owner = %format!("{owner:#x}"),
                        "registration exists, owned by another session; left alone until it goes"
                    );
                }
                reg.state = RegState::HeldByOther(*owner);
                let delay = self.backoff(reg.attempts, HELD_RECHECK_CAP);
                reg.attempts = reg.attempts.saturating_add(1);
                reg.due = Some(Instant::now() + delay);
            }
            Step::Again => {
                reg.state = RegState::Pending;
                reg.due = Some(Instant::now());
            }
            Step::Failed(why) => {
                reg.state = RegState::Pending;
                let delay = self.backoff(reg.attempts, RETRY_CAP);
                if reg.attempts == 0 || reg.attempts % 10 == 9 {
                    warn!(path, error = %why, retry_in = ?delay, "cannot re-create registration yet; retrying");
                } else {
                    debug!(path, error = %why, retry_in = ?delay, "registration retry");
                }
                reg.attempts = reg.attempts.saturating_add(1);
                reg.due = Some(Instant::now() + delay);
            }
        }
        true
    }
}

/// A step to run, with what it was based on.
pub(super) struct DueStep {
    pub(super) path: String,
    pub(super) data: Vec<u8>,
    pub(super) generation: u64,
    pub(super) marks: u64,
    /// A doomed node to delete, not a registration to keep.
    pub(super) remove: bool,
}

/// A registration taken out of the desired state while its node is being
/// deleted through the mount. Put back (and checked at once) unless
/// [`Removal::done`] is called: on failure, and when the operation is
/// cancelled (the FUSE adapter's `--op-timeout`) before it finished.
pub struct Removal<'a> {
    pub(super) registry: &'a Registry,
    pub(super) path: String,
    pub(super) data: Option<Vec<u8>>,
}

impl Removal<'_> {
    /// Whether the path was a registration of this mount.
    pub fn was_registered(&self) -> bool {
        self.data.is_some()
    }

    /// The node is gone: the registration stays removed.
    pub fn done(mut self) {
        self.data = None;
    }
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        if let Some(data) = self.data.take() {
            self.registry.restore(&self.path, data);
        }
    }
}

impl Registry {
    /// Start removing `path` through the mount (see [`Removal`]).
    pub fn removing(&self, path: &str) -> Removal<'_> {
        Removal {
            registry: self,
            path: path.to_string(),
            data: self.take(path),
        }
    }
}

/// What one reconcile step found.
#[derive(Debug)]
pub(super) enum Step {
    /// The node is ours on the current session.
    Owned,
    /// Someone else's node (session id; 0 for a persistent node).
    HeldBy(i64),
    /// The node changed under us: look again at once.
    Again,
    Failed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn backoff_doubles_is_capped_and_jittered() {
        let r = Registry::default();
        let mut seen = HashSet::new();
        for attempts in 0..40 {
            let nominal = (RETRY_BASE * 2u32.pow(attempts.min(10))).min(RETRY_CAP);
            let d = r.backoff(attempts, RETRY_CAP);
            assert!(
                d >= nominal / 2,
                "attempt {attempts}: {d:?} < half of {nominal:?}"
            );
            assert!(
                d < nominal * 3 / 2,
                "attempt {attempts}: {d:?} >= 1.5 × {nominal:?}"
            );
            seen.insert(d);
        }
        assert!(
            seen.len() > 20,
            "jittered: {} distinct delays of 40",
            seen.len()
        );
        assert!(r.backoff(1000, RETRY_CAP) < Duration::from_millis(7500));
    }

    #[test]
    pub(super) fn counts_and_removal_guard() {
        let r = Registry::default();
        r.insert("/a", b"1".to_vec());
        r.insert("/b", b"2".to_vec());
        r.reconcile_all();
        assert_eq!(
            r.counts(),
            RegCounts {
                owned: 0,
                pending: 2,
                held_by_others: 0
            }
        );
        // A removal that does not finish puts the registration back.
        drop(r.removing("/a"));
        assert!(r.contains("/a"));
        r.removing("/a").done();
        assert!(!r.contains("/a"));
        // Deletion events for paths that are not ours change nothing.
        r.node_deleted("/a");
        assert!(!r.contains("/a"));
        assert_eq!(r.counts().pending, 1);
    }

    #[test]
    pub(super) fn last_holder_release_names_the_path() {
        let r = Registry::default();
        r.insert("/a", Vec::new());
        assert!(r.hold("/a", &[7, 8]));
        assert!(r.hold("/a", &[7, 8]), "holding again is a no-op");
        assert!(
            !r.hold("/a", &[7, 8, 9]),
            "a new descriptor wants what 7 and 8 hold"
        );
        assert_eq!(r.release_holder(7), None, "8 still holds it");
        assert_eq!(r.release_holder(9), None, "not a holder");
        assert_eq!(r.release_holder(8).as_deref(), Some("/a"));
        assert_eq!(r.release_holder(8), None, "released once");
    }
}
