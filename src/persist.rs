//! `--cache-dir`: the mount's cache kept on disk across restarts, so a mount
//! started while ZooKeeper is unreachable serves the last known data.
//!
//! Owns *when* snapshots are read and written: read at start only when
//! ZooKeeper does not answer within `--connect-timeout` (a corrupt
//! snapshot, or one of another ensemble/chroot/root, is ignored with one
//! warning), written when the cache changed (at most every
//! [`WRITE_INTERVAL`]) and at a clean unmount, and never while the mount
//! still serves a snapshot it has not yet resynchronised (that would only
//! rewrite old data as new). Also the `user.zkfs.source` / `snapshot_time`
//! status attributes. The bytes on disk are `crate::zk::snapshot`'s; this
//! module must not talk to ZooKeeper itself.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::fs::MountStatus;
use crate::zk::snapshot::{self, Snapshot};
use crate::zk::{Store, ZkBackend};

/// Shortest time between two periodic snapshot writes.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(2);

/// The mount's snapshot settings and where its data currently comes from.
pub struct Persist {
    dir: PathBuf,
    key: String,
    /// Serving a snapshot that has not been resynchronised with ZooKeeper.
    from_snapshot: AtomicBool,
    /// `taken_ms` of the snapshot the mount started from (0: none).
    snapshot_ms: u64,
    /// Held while writing (one writer at a time: they share the temp file);
    /// true once the final write at unmount was made (no more writes).
    writing: Mutex<bool>,
}

impl Persist {
    pub fn new(dir: &Path, servers: &str, root: &str) -> Persist {
        Persist {
            dir: dir.to_path_buf(),
            key: snapshot::key(servers, root),
            from_snapshot: AtomicBool::new(false),
            snapshot_ms: 0,
            writing: Mutex::new(false),
        }
    }

    /// The snapshot for this mount, if a valid one exists. A corrupt one or
    /// one of another mount is treated as absent, with one warning.
    pub fn load(&self) -> Option<Snapshot> {
        match snapshot::read(&self.dir, &self.key) {
            Ok(Some(s)) => Some(s),
            Ok(None) => {
                debug!(dir = %self.dir.display(), "no snapshot for this mount yet");
                None
            }
            Err(e) => {
                warn!(error = %e, "ignoring the snapshot in --cache-dir");
                None
            }
        }
    }

    /// The mount starts serving `snapshot` (ZooKeeper was unreachable).
    pub fn serving(mut self, snapshot: &Snapshot) -> Persist {
        self.snapshot_ms = snapshot.taken_ms;
        self.from_snapshot.store(true, Ordering::SeqCst);
        self
    }

    /// ZooKeeper answered and the cache was resynchronised.
    pub fn resynchronised(&self) {
        if self.from_snapshot.swap(false, Ordering::SeqCst) {
            info!("snapshot resynchronised with ZooKeeper; serving live data");
        }
    }

    /// The last write, at unmount: no periodic write follows it.
    pub fn write_final<B: ZkBackend>(&self, store: &Store<B>, taken_ms: u64) {
        self.write_locked(store, taken_ms, true);
    }

    /// Write the cache now (when it may be written). `taken_ms`: when the
    /// cached data was last known current. Returns the change counter written.
    fn write<B: ZkBackend>(&self, store: &Store<B>, taken_ms: u64) -> Option<u64> {
        self.write_locked(store, taken_ms, false)
    }

    fn write_locked<B: ZkBackend>(
        &self,
        store: &Store<B>,
        taken_ms: u64,
        last: bool,
    ) -> Option<u64> {
        let mut closed = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if *closed || self.from_snapshot.load(Ordering::SeqCst) {
            *closed |= last;
            return None;
        }
        *closed = last;
        let (changes, nodes) = store.export_snapshot();
        let count = nodes.len();
        let snapshot = Snapshot {
            key: self.key.clone(),
            taken_ms,
            nodes,
        };
        match snapshot::write(&self.dir, &snapshot) {
            Ok(file) => {
                debug!(file = %file.display(), nodes = count, "snapshot written");
                Some(changes)
            }
            Err(e) => {
                warn!(error = %e, "cannot write the snapshot");
                None
            }
        }
    }

    /// Write whenever the cache changed, at most every [`WRITE_INTERVAL`].
    /// `taken_ms` tells when the data was last known current.
    pub async fn keep_written<B: ZkBackend + 'static>(
        self: Arc<Self>,
        fs: Arc<crate::fs::ZkFs<B>>,
        taken_ms: impl Fn() -> u64 + Send + 'static,
    ) {
        // `None`: write at the next tick (after a snapshot was resynchronised).
        let mut written = Some(fs.store().cache_changes());
        loop {
            tokio::time::sleep(WRITE_INTERVAL).await;
            if self.from_snapshot.load(Ordering::SeqCst) {
                written = None;
                continue;
            }
            let now = fs.store().cache_changes();
            if written == Some(now) {
                continue;
            }
            let (me, fs2, taken) = (self.clone(), fs.clone(), taken_ms());
            match tokio::task::spawn_blocking(move || me.write(fs2.store(), taken)).await {
                Ok(Some(changes)) => written = Some(changes),
                Ok(None) => written = Some(now),
                Err(e) => warn!(error = %e, "snapshot writer failed"),
            }
        }
    }
}

/// The status attributes of a mount with `--cache-dir`: the inner ones plus
/// `source` (`snapshot` or `zookeeper`) and, while serving a snapshot,
/// `snapshot_time` (ms since the epoch).
pub struct WithSource {
    pub inner: Box<dyn MountStatus>,
    pub persist: Arc<Persist>,
}

impl MountStatus for WithSource {
    fn attributes(&self) -> Vec<(String, String)> {
        let mut attrs = self.inner.attributes();
        if self.persist.from_snapshot.load(Ordering::SeqCst) {
            attrs.push(("source".into(), "snapshot".into()));
            attrs.push(("snapshot_time".into(), self.persist.snapshot_ms.to_string()));
        } else {
            attrs.push(("source".into(), "zookeeper".into()));
        }
        attrs
    }
}

/// Milliseconds since the epoch of a `SystemTime`.
pub fn epoch_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
