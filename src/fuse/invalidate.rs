//! Kernel cache invalidation from a dedicated thread.
//!
//! fuser's `Notifier` calls can deadlock the kernel when made from inside a
//! request handler (or while holding a lock handlers take), so the filesystem
//! core only queues [`Invalidation`]s on a channel and this thread sends them.

use std::ffi::OsStr;
use std::sync::mpsc;

use fuser::{INodeNo, Notifier};
use tracing::debug;

use crate::fs::{Invalidation, Invalidator};

/// The core's end: queues and never blocks.
pub struct QueuedInvalidator(mpsc::Sender<Invalidation>);

impl Invalidator for QueuedInvalidator {
    fn invalidate(&self, invalidation: Invalidation) {
        // The receiver is gone only when the mount is shutting down.
        let _ = self.0.send(invalidation);
    }
}

pub fn channel() -> (QueuedInvalidator, mpsc::Receiver<Invalidation>) {
    let (tx, rx) = mpsc::channel();
    (QueuedInvalidator(tx), rx)
}

/// Send queued invalidations to the kernel until the channel closes.
pub fn spawn_sender(
    rx: mpsc::Receiver<Invalidation>,
    notifier: Notifier,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("zkfs-invalidate".into())
        .spawn(move || {
            for invalidation in rx {
                let result = match &invalidation {
                    Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                    Invalidation::Entry { parent, name } => {
                        notifier.inval_entry(INodeNo(*parent), OsStr::new(name))
                    }
                };
                if let Err(e) = result {
                    debug!(?invalidation, error = %e, "kernel invalidation not applied");
                }
            }
        })
}
