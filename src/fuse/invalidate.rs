//! Kernel cache invalidation from a dedicated thread.
//!
//! fuser's `Notifier` calls can deadlock the kernel when made from inside a
//! request handler (or while holding a lock handlers take), so the filesystem
//! core only queues [`Invalidation`]s on a channel and this thread sends them.
//!
//! Entries are *expired*, not removed (`FUSE_EXPIRE_ONLY`, Linux 6.2+): the
//! kernel asks again at the next path walk and keeps the dentry if the answer
//! names the same inode. Removing it would unhash a directory that is some
//! shell's working directory (`getcwd` then fails). fuser has no call for
//! that flag, so this module writes the notification itself; kernels that
//! refuse the flag get fuser's plain invalidation instead. A superseded
//! *version* of a file on a mount the kernel opens by itself is deleted
//! instead (`FUSE_NOTIFY_DELETE`): its inode then has no links, so the kernel
//! forgets it as soon as nothing has it open (and the daemon drops the bytes
//! it held for it).

use std::ffi::OsStr;
use std::future::Future;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::pin::Pin;
use std::sync::mpsc;

use fuser::{INodeNo, Notifier};
use tracing::debug;

use crate::fs::{Invalidation, Invalidator};

/// What the core's end queues for the thread.
pub enum Queued {
    Invalidation(Invalidation),
    /// Answered when every invalidation queued before it has been sent.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The core's end: queues and never blocks.
pub struct QueuedInvalidator(mpsc::Sender<Queued>);

impl Invalidator for QueuedInvalidator {
    fn invalidate(&self, invalidation: Invalidation) {
        // The receiver is gone only when the mount is shutting down.
        let _ = self.0.send(Queued::Invalidation(invalidation));
    }

    fn delivered(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.0.send(Queued::Barrier(tx));
        // An error: the thread is gone (shutting down), nothing to wait for.
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

pub fn channel() -> (QueuedInvalidator, mpsc::Receiver<Queued>) {
    let (tx, rx) = mpsc::channel();
    (QueuedInvalidator(tx), rx)
}

/// `FUSE_NOTIFY_INVAL_ENTRY` (include/uapi/linux/fuse.h).
const NOTIFY_INVAL_ENTRY: i32 = 3;
/// `FUSE_EXPIRE_ONLY`: mark the dentry expired instead of dropping it.
const EXPIRE_ONLY: u32 = 1;

/// Send one expire-only entry invalidation on the device.
fn expire_entry(device: &OwnedFd, parent: u64, name: &OsStr) -> std::io::Result<()> {
    let name = name.as_bytes();
    let namelen = u32::try_from(name.len()).map_err(|_| std::io::Error::other("name too long"))?;
    // struct fuse_out_header { u32 len; i32 error; u64 unique; }
    // struct fuse_notify_inval_entry_out { u64 parent; u32 namelen; u32 flags; }
    let len = 16 + 16 + name.len() + 1;
    let mut head = Vec::with_capacity(32);
    head.extend_from_slice(&(len as u32).to_ne_bytes());
    head.extend_from_slice(&NOTIFY_INVAL_ENTRY.to_ne_bytes());
    head.extend_from_slice(&0u64.to_ne_bytes());
    head.extend_from_slice(&parent.to_ne_bytes());
    head.extend_from_slice(&namelen.to_ne_bytes());
    head.extend_from_slice(&EXPIRE_ONLY.to_ne_bytes());
    let iov = [
        IoSlice::new(&head),
        IoSlice::new(name),
        IoSlice::new(&[0u8]),
    ];
    // SAFETY: writev on a descriptor we own, with slices that outlive the call.
    let n = unsafe {
        libc::writev(
            device.as_raw_fd(),
            iov.as_ptr().cast::<libc::iovec>(),
            iov.len() as libc::c_int,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Send queued invalidations to the kernel until the channel closes.
/// `device` is a duplicate of the session's /dev/fuse descriptor.
pub fn spawn_sender(
    rx: mpsc::Receiver<Queued>,
    notifier: Notifier,
    device: Option<OwnedFd>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("zkfs-invalidate".into())
        .spawn(move || {
            let mut expire = device;
            for queued in rx {
                let invalidation = match queued {
                    Queued::Invalidation(invalidation) => invalidation,
                    Queued::Barrier(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let result = match &invalidation {
                    Invalidation::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                    // ENOENT: the kernel no longer has the inode.
                    Invalidation::Store { ino, data } => {
                        match notifier.store(INodeNo(*ino), 0, data) {
                            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                            r => r,
                        }
                    }
                    // ENOENT: the dentry is gone or names another inode
                    // already (the kernel expired it all the same).
                    Invalidation::Delete {
                        parent,
                        child,
                        name,
                    } => match notifier.delete(INodeNo(*parent), INodeNo(*child), OsStr::new(name))
                    {
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                        r => r,
                    },
                    Invalidation::Entry { parent, name } => {
                        let name = OsStr::new(name);
                        match expire.as_ref().map(|d| expire_entry(d, *parent, name)) {
                            Some(Ok(())) => Ok(()),
                            Some(Err(e)) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                            Some(Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                                debug!("kernel refuses expire-only invalidation; removing entries");
                                expire = None;
                                notifier.inval_entry(INodeNo(*parent), name)
                            }
                            Some(Err(e)) => Err(e),
                            None => notifier.inval_entry(INodeNo(*parent), name),
                        }
                    }
                };
                if let Err(e) = result {
                    debug!(?invalidation, error = %e, "kernel invalidation not applied");
                }
            }
        })
}
