//! The registration supervisor's task (see [`super::registry`] for the
//! desired state it reconciles and the rules): the loop that wakes on new
//! sessions, reconnects and deletion events, the reconcile step against the
//! server, and the release of held registrations.
//!
//! Owns no state of its own (it works on [`Registry`] and talks to the
//! server through the store's backend); must not touch inodes, the cache or
//! handles.

use std::ffi::OsStr;
use std::time::Instant;

use tracing::{info, warn};

use super::core::{ZkFs, lock};
use super::error::FsError;
use super::registry::{DueStep, HOLD_XATTR, RETRY_CAP, STEP_LIMIT, Step};
use crate::zk::{CreateMode, ZkBackend, ZkError};

impl<B: ZkBackend> ZkFs<B> {
    /// The supervisor's loop: runs until the runtime shuts down.
    pub async fn supervise_registrations(&self) {
        loop {
            let woken = self.registry.wake.notified();
            let (ready, next) = self.registry.due(Instant::now());
            if ready.is_empty() {
                match next {
                    Some(t) => {
                        tokio::select! {
                            _ = woken => {}
                            _ = tokio::time::sleep_until(t.into()) => {}
                        }
                    }
                    None => woken.await,
                }
                continue;
            }
            for due in ready {
                self.reconcile_one(&due).await;
            }
        }
    }

    /// Run the steps due now once (what one turn of the loop does); returns
    /// how many ran.
    #[cfg(test)]
    pub async fn reconcile_due(&self) -> usize {
        let (ready, _) = self.registry.due(Instant::now());
        let n = ready.len();
        for due in ready {
            self.reconcile_one(&due).await;
        }
        n
    }

    async fn reconcile_one(&self, due: &DueStep) {
        if due.remove {
            return self.remove_doomed(&due.path).await;
        }
        let (path, data) = (due.path.as_str(), due.data.as_slice());
        let step = if self.store.backend().is_connected() {
            match tokio::time::timeout(STEP_LIMIT, self.reconcile_step(path, data)).await {
                Ok(step) => step,
                Err(_) => Step::Failed(format!("no answer within {STEP_LIMIT:?}")),
            }
        } else {
            Step::Failed("not connected to ZooKeeper".into())
        };
        let created = matches!(step, Step::Owned);
        if !self.registry.settle(due, &step) && created {
            // Removed through the mount while we were re-creating it: undo.
            let backend = self.store.backend();
            if let Ok((_, stat)) = backend.get_data(path).await
                && stat.ephemeral_owner == backend.session_id()
            {
                let _ = backend.delete(path, Some(stat.version)).await;
            }
        }
        if created {
            self.invalidate_path(path);
        }
    }

    async fn reconcile_step(&self, path: &str, data: &[u8]) -> Step {
        let backend = self.store.backend();
        let current = backend.session_id();
        match backend.get_data(path).await {
            Err(ZkError::NoNode) => {}
            Ok((_, stat)) if stat.ephemeral_owner != 0 && stat.ephemeral_owner == current => {
                return Step::Owned;
            }
            Ok((_, stat)) if backend.is_own_session(stat.ephemeral_owner) => {
                info!(
                    path,
                    old_session = %format!("{:#x}", stat.ephemeral_owner),
                    session = %format!("{current:#x}"),
                    "registration still owned by an earlier session of this mount; moving it to the current one"
                );
                match backend.delete(path, Some(stat.version)).await {
                    Ok(()) | Err(ZkError::NoNode) => {}
                    Err(ZkError::BadVersion) => return Step::Again,
                    Err(e) => return Step::Failed(format!("delete: {e}")),
                }
            }
            Ok((_, stat)) => return Step::HeldBy(stat.ephemeral_owner),
            Err(e) => return Step::Failed(format!("getData: {e}")),
        }
        match backend
            .create(path, data, CreateMode::Ephemeral, None)
            .await
        {
            Ok(stat) if stat.ephemeral_owner == backend.session_id() => {
                info!(path, session = %format!("{:#x}", stat.ephemeral_owner), "registration created on the current session");
                Step::Owned
            }
            // Created on a session that ended meanwhile: look again.
            Ok(_) => Step::Again,
            Err(ZkError::NodeExists) => Step::Again,
            Err(ZkError::NoNode) => {
                Step::Failed("its parent node does not exist (created again when it does)".into())
            }
            Err(e) => Step::Failed(format!("create: {e}")),
        }
    }

    /// `setxattr`: only [`HOLD_XATTR`] on a registration open for writing
    /// can be set (everything else mirrors ZooKeeper's Stat: ENOTSUP).
    pub async fn setxattr(&self, ino: u64, name: &OsStr, _value: &[u8]) -> Result<(), FsError> {
        let inode = self.inode(ino)?;
        let path = inode.path.to_string();
        if name != OsStr::new(HOLD_XATTR) {
            return Err(FsError::XattrUnsupported(path));
        }
        if !self.creates_ephemeral(&path) {
            warn!(
                path,
                "user.zkfs.hold refused: not in an --ephemeral directory"
            );
            return Err(FsError::Unsupported(
                path,
                "user.zkfs.hold outside an --ephemeral directory",
            ));
        }
        // The content must be on the server first (write, then fsync).
        if !self.registry.contains(&path) {
            warn!(
                path,
                "user.zkfs.hold refused: not registered yet (write and fsync first)"
            );
            return Err(FsError::Unsupported(
                path,
                "user.zkfs.hold before the registration was created (fsync first)",
            ));
        }
        let handles: Vec<u64> = lock(&self.files)
            .iter()
            .filter(|(_, f)| f.ino == ino && f.writer.is_some())
            .map(|(fh, _)| *fh)
            .collect();
        if handles.is_empty() {
            warn!(
                path,
                "user.zkfs.hold refused: no descriptor open for writing"
            );
            return Err(FsError::BadFileHandle);
        }
        if !self.registry.hold(&path, &handles) {
            warn!(
                path,
                "user.zkfs.hold refused: the registration is held by another descriptor"
            );
            return Err(FsError::Busy(
                path,
                "the registration is held by another descriptor (another zkfs register for it?)",
            ));
        }
        info!(
            path,
            handles = handles.len(),
            "registration held by its open descriptor(s)"
        );
        Ok(())
    }

    /// After the last close of a handle: if it was the last holder of a held
    /// registration, stop owning it and have the supervisor delete its node
    /// (only a node owned by one of this mount's sessions; retried while
    /// disconnected, so a dead holder's registration never lingers).
    pub(super) async fn release_hold(&self, fh: u64) {
        let Some(path) = self.registry.release_holder(fh) else {
            return;
        };
        if self.registry.take(&path).is_some() {
            info!(path, "last holder of the registration closed it: removing");
            self.registry.doom(&path);
        }
    }

    /// Delete a released held registration's node if it is ours.
    async fn remove_doomed(&self, path: &str) {
        let backend = self.store.backend();
        let result = if backend.is_connected() {
            let attempt = async {
                match backend.get_data(path).await {
                    Ok((_, stat)) if backend.is_own_session(stat.ephemeral_owner) => {
                        backend.delete(path, Some(stat.version)).await
                    }
                    // Gone, or not ours: nothing to delete.
                    Ok(_) | Err(ZkError::NoNode) => Ok(()),
                    Err(e) => Err(e),
                }
            };
            match tokio::time::timeout(STEP_LIMIT, attempt).await {
                Ok(Err(ZkError::NoNode)) => Ok(()),
                Ok(r) => r,
                Err(_) => Err(ZkError::Timeout),
            }
        } else {
            Err(ZkError::ConnectionLoss)
        };
        let mut inner = lock(&self.registry.inner);
        match result {
            Ok(()) => {
                if inner.doomed.remove(path).is_some() {
                    info!(path, "released registration removed");
                }
                drop(inner);
                self.invalidate_path(path);
            }
            Err(e) => {
                if let Some((due, attempts)) = inner.doomed.get_mut(path) {
                    let delay = self.registry.backoff(*attempts, RETRY_CAP);
                    if *attempts == 0 {
                        warn!(path, error = %e, retry_in = ?delay, "cannot remove released registration yet; retrying");
                    }
                    *attempts = attempts.saturating_add(1);
                    *due = Instant::now() + delay;
                }
            }
        }
    }
}
