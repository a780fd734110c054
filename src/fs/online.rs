//! "Wait until connected or fail" for operations that start a modification
//! (contract §8, issue 14): opening a file for writing or creating one while
//! the mount is disconnected waits for the connection and fails the `open`
//! itself when it does not come back, so the caller (a shell's `>` too) sees
//! the error; a failure at the final close would be discarded by shells.
//!
//! Owns only that wait. The limit is the mount's wait for a connection
//! (`--op-timeout`, then `ETIMEDOUT`; `Store::until_connected`), the same
//! a write waits before it is sent: modifying operations are not bounded
//! by the FUSE adapter (`fuse::dispatch_write`). Must not send anything to
//! ZooKeeper.

use tracing::warn;

use super::core::ZkFs;
use super::error::FsError;
use crate::zk::ZkBackend;

impl<B: ZkBackend> ZkFs<B> {
    /// Return at once when connected; otherwise wait for the connection, up
    /// to `--op-timeout` (then `ETIMEDOUT`).
    pub(super) async fn until_connected(&self, path: &str) -> Result<(), FsError> {
        if self.store.backend().is_connected() {
            return Ok(());
        }
        warn!(
            path,
            "open for writing while disconnected from ZooKeeper: waiting for the connection"
        );
        self.store
            .until_connected()
            .await
            .map_err(|error| FsError::Zk {
                path: path.to_string(),
                op: "open for writing",
                error,
            })
    }
}
