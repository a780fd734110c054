//! "Wait until connected or fail" for operations that start a modification
//! (contract §8, issue 14): opening a file for writing or creating one while
//! the mount is disconnected waits for the connection and fails the `open`
//! itself when it does not come back, so the caller (a shell's `>` too) sees
//! the error; a failure at the final close would be discarded by shells.
//!
//! Owns only that wait. The limit is the operation timeout the FUSE adapter
//! applies to every request (`--op-timeout`, then `ETIMEDOUT`); [`WAIT_CAP`]
//! bounds it for callers without one. Must not send anything to ZooKeeper.

use std::time::{Duration, Instant};

use tracing::warn;

use super::core::ZkFs;
use super::error::FsError;
use crate::zk::{ZkBackend, ZkError};

/// Longest wait without an outer operation timeout.
pub const WAIT_CAP: Duration = Duration::from_secs(60);
/// How often the connection state is looked at while waiting.
const POLL: Duration = Duration::from_millis(20);

impl<B: ZkBackend> ZkFs<B> {
    /// Return at once when connected; otherwise wait for the connection (the
    /// adapter's `--op-timeout` ends the wait with `ETIMEDOUT`).
    pub(super) async fn until_connected(&self, path: &str) -> Result<(), FsError> {
        let backend = self.store.backend();
        if backend.is_connected() {
            return Ok(());
        }
        warn!(
            path,
            "open for writing while disconnected from ZooKeeper: waiting for the connection"
        );
        let started = Instant::now();
        while !backend.is_connected() {
            if started.elapsed() >= WAIT_CAP {
                return Err(FsError::Zk {
                    path: path.to_string(),
                    op: "open for writing",
                    error: ZkError::Timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }
}
