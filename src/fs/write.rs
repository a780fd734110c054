//! The write half of the filesystem core (contract §7): write handles that
//! buffer the whole content and send it as one versioned `setData` (or one
//! `create`) at close/fsync, and create, mkdir, unlink, rmdir, rename (one
//! `multi`), truncate and the refusals. Plain Rust types in and out, like
//! `core.rs`; nothing here knows about fuser.
//!
//! Cancellation: these operations are not cancellable — the adapter runs
//! every modifying request to its end (`dispatch_write`), and the store bounds
//! each step itself. Where bookkeeping precedes an `.await` (the overlay's
//! kind, a registration, a handle's state) it is set to what is right if the
//! request fails, or undone on the error path; a handle's state is set to
//! `Failed` before its send goes out, so even a dropped send is never sent
//! again.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::attr::{Attr, FileKind};
use super::core::{Entry, ZkFs, lock};
use super::error::FsError;
use super::handle::{OpenMode, Opened, PageCache, WriteState, Writer};
use super::inode::Role;
use super::inode::{PENDING_CZXID, ROOT_INO};
use super::name::NodeName;
use super::pointer;
use crate::zk::NodeView;
use crate::zk::path;
use crate::zk::{CreateMode, Exclusive, WriteOp, WriteResult, ZkBackend, ZkError};

/// How many times an append-only handle's bytes are sent after another
/// client's change before that counts as a conflict (`append_again`).
/// Between rounds a random wait of up to 1, 2, 4 ... 32 ms, so two hosts
/// appending as fast as they can do not keep meeting each other (8 rounds
/// without the wait ran out about once in 75 appends of two shell loops).
const APPEND_ATTEMPTS: u32 = 16;
const APPEND_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(32);

/// What a send of a handle's content is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendFor {
    /// A `close` (FLUSH): sends only content written since the last send,
    /// so a pure truncation (`> file` with nothing written, closed once per
    /// descriptor) is left for the release; a failure told before is told
    /// again.
    Close,
    /// `fsync`: sends whatever is unsent, written or not; a failure told
    /// before is told again (the content is not in ZooKeeper).
    Fsync,
    /// The last close (RELEASE): sends what is left; its answer reaches no
    /// one (the kernel drops it), so an earlier failure is not repeated.
    Release,
}

/// Flags of `rename(2)` the core understands.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenameFlags {
    pub noreplace: bool,
    pub exchange: bool,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Of write handles' unsent content (`Writer::unsent`: change, length), the
/// size of the one changed last.
pub(super) fn latest_unsent(unsent: impl IntoIterator<Item = (u64, usize)>) -> Option<u64> {
    unsent
        .into_iter()
        .max_by_key(|(change, _)| *change)
        .map(|(_, len)| len as u64)
}

/// How long a close waits for the kernel to have its inode's invalidation.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What a request may carry besides the data of `--max-data`: the server's
/// `jute.maxbuffer` bounds the whole request (1 MiB − 1 by default, and the
/// default `--max-data` is 1 MiB − 1 KiB, which leaves this much). Paths,
/// ACLs and framing beyond it lower the data limit of that request, so the
/// write gets `EFBIG` instead of the server dropping the connection.
const REQUEST_ROOM: usize = 1023;

/// Framing of one op in a request, generously: length, xid, type, the
/// multi header, version or flags, the length prefixes of path and data,
/// and the mount's default ACL for a create.
const OP_FRAMING: usize = 64;

/// What one op's path and ACL take in a request (with the chroot, which the
/// client prefixes to every path), framing included.
fn op_overhead(chroot: &str, op: &WriteOp) -> usize {
    let acl = match op {
        WriteOp::Create { acl: Some(acl), .. } => acl
            .iter()
            .map(|e| e.scheme.len() + e.id.len() + 12)
            .sum::<usize>(),
        _ => 0,
    };
    chroot.len() + op.path().len() + OP_FRAMING + acl
}

impl<B: ZkBackend> ZkFs<B> {
    /// The largest data a request with `overhead` bytes of paths, ACLs and
    /// framing can carry: `--max-data`, less what the overhead takes beyond
    /// [`REQUEST_ROOM`].
    fn data_limit_with(&self, overhead: usize) -> usize {
        self.config
            .max_data
            .min((self.config.max_data + REQUEST_ROOM).saturating_sub(overhead))
    }

    /// The largest content of the node at `path` (one setData or create).
    pub(super) fn data_limit(&self, path: &str) -> usize {
        self.data_limit_with(self.config.chroot.len() + path.len() + OP_FRAMING)
    }

    fn writable(&self, path: &str) -> Result<(), FsError> {
        if self.config.presentation.read_only {
            Err(FsError::ReadOnly(path.to_string()))
        } else {
            Ok(())
        }
    }

    /// The parent directory's path and a validated new name under it.
    async fn new_child(&self, parent: u64, name: &OsStr) -> Result<(String, String), FsError> {
        let dir = self.inode(parent)?;
        self.writable(&dir.path)?;
        if dir.kind != FileKind::Directory || dir.role != Role::Node {
            return Err(FsError::NotDir(dir.path.to_string()));
        }
        self.check_parent(parent, &dir).await?;
        let shown = path::join(&dir.path, &name.to_string_lossy());
        let name = NodeName::parse(name).map_err(|e| FsError::bad_name(shown.clone(), e))?;
        if !self.config.chrooted && &*dir.path == "/" && name.as_str() == "zookeeper" {
            return Err(FsError::InvalidName(
                shown,
                "/zookeeper is reserved by ZooKeeper".into(),
            ));
        }
        let child = path::join(&dir.path, name.as_str());
        Ok((dir.path.to_string(), child))
    }

    /// A directory inode a name is made or removed in (a descriptor, a
    /// shell's cwd) still denotes its node: `ENOENT` once the node is gone
    /// (as in a deleted directory anywhere), `ESTALE` once it was created
    /// again or is a pointer now. Without this a cwd on the old
    /// incarnation created its children in the new one, a pointer's old
    /// directory inode turned the pointer back into a directory, and a
    /// create in a deleted directory said success and created nothing. A
    /// node shown as a file now (childless, with data: `tar x` of a tree
    /// writes a directory's `.data` before its children) is still the
    /// node: a child makes it a directory again, as it always did. The
    /// mount root denotes whatever node is at its path. Usually a cache
    /// hit: the inode was looked up through it.
    async fn check_parent(&self, parent: u64, dir: &super::inode::Inode) -> Result<(), FsError> {
        let view = self.view_for_write(&dir.path).await?;
        if parent != ROOT_INO
            && (view.stat.czxid != dir.czxid || self.kind_of(&dir.path, &view) == FileKind::Symlink)
        {
            return Err(FsError::Stale(dir.path.to_string()));
        }
        Ok(())
    }

    /// Whether `name` under `dir` is the virtual data file (no real child has that name).
    async fn is_data_file(&self, dir: &str, name: &str) -> Result<bool, FsError> {
        if name != self.config.data_name {
            return Ok(false);
        }
        let data_path = path::join(dir, name);
        match self.store.for_write(|| self.store.node(&data_path)).await {
            Ok(_) => Ok(false),
            Err(ZkError::NoNode) => Ok(true),
            Err(e) => Err(FsError::zk(dir, "getData", e)),
        }
    }

    /// Attributes of a file created here and not yet sent.
    pub(super) async fn pending_attr(&self, ino: u64) -> Attr {
        let size = self.unsent_size(ino).await.unwrap_or(0);
        let path = self
            .inode(ino)
            .map(|i| i.path.to_string())
            .unwrap_or_default();
        let owner = super::attrs::owner(&self.config.presentation, &path, FileKind::RegularFile);
        // Unlinked before it was ever created, but still open: no links.
        let nlink = u32::from(lock(&self.inodes).is_current(ino));
        Attr {
            ino,
            kind: FileKind::RegularFile,
            size,
            mtime_ns: now_ns(),
            crtime_ms: (now_ns() / 1_000_000) as i64,
            perm: owner.perm,
            nlink,
            uid: owner.uid,
            gid: owner.gid,
        }
    }

    /// Size of the content a write handle of `ino` holds but has not sent
    /// (of several such handles, the one changed last: a new file's creator
    /// that wrote nothing must not hide what another handle wrote since).
    pub(super) async fn unsent_size(&self, ino: u64) -> Option<u64> {
        let mut unsent = Vec::new();
        for w in self.writers_of(ino) {
            unsent.extend(w.lock().await.unsent());
        }
        latest_unsent(unsent)
    }

    /// The write handles open on `ino`.
    pub(super) fn writers_of(&self, ino: u64) -> Vec<Arc<tokio::sync::Mutex<Writer>>> {
        lock(&self.files)
            .values()
            .filter(|f| f.ino == ino)
            .filter_map(|f| f.writer.clone())
            .collect()
    }

    pub(super) fn open_pending(
        &self,
        ino: u64,
        path: &str,
        mode: OpenMode,
        pid: u32,
    ) -> Result<Opened, FsError> {
        let writer = Writer::new_file(mode);
        // Admitted like any writer: the create may have ended since the
        // caller looked, and a reader may use the new node's pages already.
        self.admit_writer(
            super::core::NewHandle {
                ino,
                path,
                data: Arc::from(&[][..]),
                attr: None,
                pid,
            },
            writer,
            PageCache::Drop,
        )
    }

    /// `open(O_CREAT)`: a new file whose node appears, with its complete
    /// content, when the file is closed. An existing node is opened instead
    /// (`EEXIST` with `O_EXCL`).
    pub async fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: OpenMode,
        exclusive: bool,
        pid: u32,
    ) -> Result<(Entry, u64), FsError> {
        let (dir, child) = self.new_child(parent, name).await?;
        self.until_connected(&child).await?;
        let mode = OpenMode {
            write: true,
            ..mode
        };
        if self.is_data_file(&dir, path::basename(&child)).await? {
            // The data file is listed only when the node has data; creating it
            // exclusively (cp -r into a new directory) works while it is empty.
            let has_data = self
                .store
                .peek(&dir)
                .is_some_and(|v| v.stat.data_length > 0);
            if exclusive && has_data {
                return Err(FsError::Exists(child));
            }
            let entry = self.lookup_inner(parent, name, true).await?;
            let fh = self.open_entry(&entry, mode, pid).await?;
            return Ok((entry, fh));
        }
        let pending = lock(&self.pending).get(&child).copied();
        let exists = match pending {
            Some(_) => true,
            None => match self.store.for_write(|| self.store.node(&child)).await {
                Ok(_) => true,
                Err(ZkError::NoNode) => false,
                Err(e) => return Err(FsError::zk(&child, "getData", e)),
            },
        };
        if exists {
            if exclusive {
                return Err(FsError::Exists(child));
            }
            let entry = self.lookup(parent, name).await?;
            let fh = self.open_entry(&entry, mode, pid).await?;
            return Ok((entry, fh));
        }
        let ino =
            lock(&self.inodes).resolve(&child, Role::Node, FileKind::RegularFile, PENDING_CZXID, 0);
        lock(&self.inodes).add_lookup(ino);
        lock(&self.pending).insert(child.clone(), ino);
        let fh = match self.open_pending(ino, &child, mode, pid) {
            Ok(opened) => opened.fh,
            Err(e) => {
                lock(&self.pending).remove(&child);
                self.forget(ino, 1);
                return Err(e);
            }
        };
        let attr = self.pending_attr(ino).await;
        self.invalidate_entry_of(&child);
        Ok((Entry { attr }, fh))
    }

    /// Open the node `create` found existing. The entry's lookup reference
    /// reaches the kernel only with the open: a failed open (a write moved
    /// off a reader's inode, say) gives it back.
    async fn open_entry(&self, entry: &Entry, mode: OpenMode, pid: u32) -> Result<u64, FsError> {
        match self.open(entry.attr.ino, mode, pid).await {
            Ok(opened) => Ok(opened.fh),
            Err(e) => {
                self.forget(entry.attr.ino, 1);
                Err(e)
            }
        }
    }

    /// `mknod`: regular files only (created empty at once); the rest cannot be stored.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        is_regular: bool,
    ) -> Result<Entry, FsError> {
        let (_, child) = self.new_child(parent, name).await?;
        if !is_regular {
            return Err(FsError::NotPermitted(
                child,
                "device nodes, FIFOs and sockets cannot be stored in ZooKeeper",
            ));
        }
        self.overlay.remember(&child, FileKind::RegularFile);
        let mode = self.create_mode(&child);
        if mode == CreateMode::Ephemeral {
            self.registry.insert(&child, Vec::new());
        }
        if let Err(e) = self
            .store
            .create(&child, Vec::new(), mode, None, Exclusive::Yes)
            .await
        {
            self.registry.take(&child);
            self.overlay.forget(&child);
            return Err(create_error(&child, e));
        }
        self.lookup(parent, name).await
    }

    /// `mkdir`: a persistent empty node (shown as a directory).
    pub async fn mkdir(&self, parent: u64, name: &OsStr) -> Result<Entry, FsError> {
        let (_, child) = self.new_child(parent, name).await?;
        self.overlay.remember(&child, FileKind::Directory);
        if let Err(e) = self
            .store
            .create(
                &child,
                Vec::new(),
                CreateMode::Persistent,
                None,
                Exclusive::Yes,
            )
            .await
        {
            self.overlay.forget(&child);
            return Err(create_error(&child, e));
        }
        self.lookup(parent, name).await
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, FsError> {
        let (path, writer) = self.writer_of(fh)?;
        let mut w = writer.lock().await;
        let start = if w.append {
            w.buf.len()
        } else {
            offset as usize
        };
        let end = start.saturating_add(data.len());
        let limit = self.data_limit(&path);
        if end > limit {
            // Close reports the refusal too, even with nothing written.
            w.state = WriteState::Refused {
                size: end,
                reported: false,
            };
            return Err(FsError::TooBig(path, end, limit));
        }
        if matches!(w.state, WriteState::Refused { .. }) {
            return Err(FsError::TooBig(path, end, limit));
        }
        if w.buf.len() < end {
            w.buf.resize(end, 0);
        }
        w.buf[start..end].copy_from_slice(data);
        w.touched();
        Ok(data.len() as u32)
    }

    fn writer_of(&self, fh: u64) -> Result<(String, Arc<tokio::sync::Mutex<Writer>>), FsError> {
        let files = lock(&self.files);
        let file = files.get(&fh).ok_or(FsError::BadFileHandle)?;
        match &file.writer {
            Some(w) => Ok((file.path.clone(), w.clone())),
            None => Err(FsError::BadFileHandle),
        }
    }

    /// `close`/`fsync`: send the handle's content if it changed (one
    /// `setData` with the version seen at open, or one `create`).
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        self.send_handle(fh, SendFor::Close).await
    }

    /// `fsync`: send now, written or not.
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        self.send_handle(fh, SendFor::Fsync).await
    }

    /// Send a handle's content if it is Dirty (and, for a close, written:
    /// see [`SendFor`]).
    async fn send_handle(&self, fh: u64, why: SendFor) -> Result<(), FsError> {
        let (force, closing, retell) = match why {
            SendFor::Close => (false, true, true),
            SendFor::Fsync => (true, false, true),
            SendFor::Release => (true, false, false),
        };
        let (ino, path, writer, pid) = {
            let files = lock(&self.files);
            let file = files.get(&fh).ok_or(FsError::BadFileHandle)?;
            match &file.writer {
                Some(w) => (file.ino, file.path.clone(), w.clone(), file.pid),
                None => return Ok(()),
            }
        };
        let mut w = writer.lock().await;
        match w.state {
            WriteState::Refused { size, reported } => {
                if reported {
                    return Ok(());
                }
                w.state = WriteState::Refused {
                    size,
                    reported: true,
                };
                if w.base_version.is_none() {
                    lock(&self.pending).remove(&path);
                    lock(&self.inodes).detach(&path);
                }
                self.after_failed_write(ino, &path);
                let limit = self.data_limit(&path);
                return Err(FsError::TooBig(path, size, limit));
            }
            WriteState::Clean => return Ok(()),
            // The content never reached ZooKeeper: no later fsync or close
            // of this handle may say it did.
            WriteState::Failed => {
                return match &w.failure {
                    Some(e) if retell => Err(e.clone()),
                    _ => Ok(()),
                };
            }
            WriteState::Dirty => {}
        }
        if !(force || w.written) {
            if closing {
                w.closed_unsent = true;
            }
            return Ok(());
        }
        // Failed until proven sent: if this future were dropped while the
        // request is out, the content must not be sent again later.
        w.state = WriteState::Failed;
        let others: Vec<_> = lock(&self.files)
            .iter()
            .filter(|(other, f)| **other != fh && f.path == path)
            .filter_map(|(_, f)| f.writer.clone())
            .collect();
        let result = self.send(ino, &path, &mut w, &others).await;
        w.closed_unsent = false;
        match &result {
            Ok(()) => {
                w.state = WriteState::Clean;
                // What this process now bases its edits on is its own write.
                if let (Some(version), Some(czxid)) =
                    (w.base_version, self.store.peek(&path).map(|v| v.stat.czxid))
                {
                    lock(&self.reads).put((pid, Arc::from(path.as_str())), (version, czxid));
                }
                // The close (or fsync) returns once the kernel has dropped
                // the inode's attributes (`settle`): a `stat` right after it
                // must not be answered from an older reply's size (it was,
                // in 10-25 of 2,000 writes with other threads stat'ing).
                // Bounded: the invalidation thread only writes to the device.
                if retell {
                    let _ = tokio::time::timeout(SETTLE_WAIT, self.invalidator.delivered()).await;
                }
            }
            Err(e) => {
                w.failure = Some(e.clone());
                // Its appended bytes may be in ZooKeeper already (an unknown
                // outcome, say): never append them again after a change.
                w.appended_from = None;
                self.after_failed_write(ino, &path);
            }
        }
        result
    }

    /// A write through `ino` was refused or failed: the kernel's size and
    /// pages for that inode hold content ZooKeeper never got. Retire the
    /// inode (the name gets a fresh one showing the node's real content)
    /// and drop what the kernel keeps of it.
    fn after_failed_write(&self, ino: u64, path: &str) {
        lock(&self.inodes).retire(ino);
        self.invalidator
            .invalidate(super::core::Invalidation::Inode(ino));
        self.invalidate_path(path);
    }

    /// A send through `ino` made `stat` the node's version. The writer's
    /// inode shows it from now on (same number, as an in-place write on a
    /// local disk keeps its inode: nano and vim compare it across saves).
    /// But the kernel's pages of that inode are the writer's doing (a second
    /// writer's too, or not the content at all after an append resent on
    /// top of another client's change), and an attribute reply computed
    /// before the send can still reach the kernel after it (its size then
    /// cut the new content to the old length under a reader). So the
    /// inode's pages and attributes are invalidated, which makes the kernel
    /// drop every attribute reply to a request older than the invalidation,
    /// and no reader uses its pages until the kernel has it
    /// ([`ZkFs::settle`]).
    ///
    /// The write's own watch event expires no entry
    /// (`ZkFs::shows_own_write`): should the new data show the node as
    /// another kind (a pointer's path), the entry is expired here.
    fn show_sent(&self, ino: u64, stat: &crate::zk::NodeStat) {
        let path = {
            let mut inodes = lock(&self.inodes);
            inodes.set_version(ino, stat.czxid, stat.mzxid);
            inodes
                .get(ino)
                .filter(|i| i.role == Role::Node)
                .map(|i| i.path.clone())
        };
        self.settle(ino);
        if let Some(path) = path {
            self.expire_if_kind_changed(&path);
        }
    }

    /// Mark a send through `ino` in flight until the returned guard drops
    /// (after [`Self::show_sent`]). The store takes the send's answer into
    /// its cache a moment before `show_sent` gives the writer's inode that
    /// version; a lookup or listing between the two finds the name's inode
    /// behind the cache, and would otherwise give the name a fresh number
    /// (`InodeTable::resolve_seen`).
    pub(super) fn sending(&self, ino: u64) -> Sending<'_> {
        *lock(&self.sending).entry(ino).or_default() += 1;
        Sending {
            map: &self.sending,
            ino,
        }
    }

    /// Send one handle's content. `others`: the other write handles of the
    /// same path (a new file opened twice before it was created: exactly one
    /// of them creates the node, the rest wait for it and then write to it).
    async fn send(
        &self,
        ino: u64,
        path: &str,
        w: &mut Writer,
        others: &[Arc<tokio::sync::Mutex<Writer>>],
    ) -> Result<(), FsError> {
        let data = w.buf.clone();
        let version = match w.base_version {
            Some(version) => version,
            None => {
                let pending = lock(&self.pending).contains_key(path);
                // One creator per new file (a claim that outlives no await
                // it does not cover: released when the create ends).
                if pending && lock(&self.creating).insert(path.to_string()) {
                    let result = self.create_pending(ino, path, w, data).await;
                    lock(&self.creating).remove(path);
                    return result;
                }
                // Another handle creates (or created) it, or it was unlinked
                // before it was ever sent. A claimer never waits for anyone,
                // so waiting for the others cannot deadlock.
                for other in others {
                    drop(other.lock().await);
                }
                if !w.written {
                    return Ok(());
                }
                match self.store.for_write(|| self.store.node(path)).await {
                    // Created through this mount and not changed since: this
                    // handle's content follows, as one more setData.
                    Ok(view) if self.store.written_here(path, view.stat.mzxid) => view.stat.version,
                    Ok(_) => {
                        return Err(FsError::Conflict {
                            path: path.to_string(),
                            detail: "changed by another client before this file's content \
                                     was sent; it keeps the other writer's data"
                                .into(),
                        });
                    }
                    // Unlinked before it was ever sent: nothing to create.
                    Err(ZkError::NoNode) => return Ok(()),
                    Err(e) => return Err(FsError::zk(path, "getData", e)),
                }
            }
        };
        self.set_content(ino, path, w, data, version).await
    }

    /// Create a new file's node with its complete content (this handle
    /// holds the claim in `creating`).
    async fn create_pending(
        &self,
        ino: u64,
        path: &str,
        w: &mut Writer,
        data: Vec<u8>,
    ) -> Result<(), FsError> {
        // Before the node exists, so nobody sees it as an empty directory.
        self.overlay.remember(path, FileKind::RegularFile);
        let mode = self.create_mode(path);
        let result = self
            .store
            .create(path, data.clone(), mode, None, Exclusive::No)
            .await;
        if result.is_ok() && mode == CreateMode::Ephemeral {
            self.registry.insert(path, data);
        }
        if let Ok(stat) = &result {
            // Before the file stops being pending: whoever finds the node
            // from then on (a listing, a lookup) finds this inode showing
            // it, not an inode of a version it would take for another's.
            // Not settled (unlike `show_sent`): no earlier version's size
            // exists to reach the kernel, and readers of a pending file
            // read through its handles, not pages another version filled.
            lock(&self.inodes).set_version(ino, stat.czxid, stat.mzxid);
        }
        lock(&self.pending).remove(path);
        if result.is_err() {
            self.overlay.forget(path);
        }
        match result {
            Ok(stat) => {
                w.base_version = Some(stat.version);
                self.adopt_pending_handles(ino, path, &w.buf);
                self.invalidate_entry_of(path);
                Ok(())
            }
            Err(ZkError::NodeExists) => {
                lock(&self.inodes).detach(path);
                Err(FsError::Conflict {
                    path: path.to_string(),
                    detail: "another client created the node while this file was open; \
                                 it keeps the other client's data"
                        .into(),
                })
            }
            Err(e) => {
                lock(&self.inodes).detach(path);
                Err(create_error(path, e))
            }
        }
    }

    /// The handles opened on a new file before it was created (with no
    /// version to show) are handles of the version just created: `stat`
    /// through them falls back to its attributes once the node is unlinked
    /// (they had none, so an unlinked file opened while pending failed
    /// `fstat` with ENOENT).
    fn adopt_pending_handles(&self, ino: u64, path: &str, content: &[u8]) {
        let Some(view) = self.store.peek(path) else {
            return;
        };
        let attr = self.attr_for(ino, path, Role::Node, FileKind::RegularFile, &view);
        let data: Arc<[u8]> = Arc::from(content);
        for file in lock(&self.files)
            .values_mut()
            .filter(|f| f.ino == ino && f.attr.is_none())
        {
            file.attr = Some(attr);
            file.data = data.clone();
        }
    }

    /// One versioned setData of a handle's content.
    async fn set_content(
        &self,
        ino: u64,
        path: &str,
        w: &mut Writer,
        data: Vec<u8>,
        version: i32,
    ) -> Result<(), FsError> {
        // A file this mount empties stays a file here (it would otherwise
        // turn into an empty directory under the user's feet).
        let is_node = lock(&self.inodes)
            .get(ino)
            .is_some_and(|i| i.role == Role::Node);
        if data.is_empty() && is_node {
            self.overlay.remember(path, FileKind::RegularFile);
        }
        let expected = if self.config.last_writer_wins {
            None
        } else {
            Some(version)
        };
        let registration = self.registry.contains(path);
        let _sending = self.sending(ino);
        match self.store.set_data(path, data.clone(), expected).await {
            Ok(stat) => {
                if w.appended_from.is_some() {
                    w.appended_from = Some(data.len());
                }
                self.note_registration_written(path, registration, data, &stat);
                w.base_version = Some(stat.version);
                self.show_sent(ino, &stat);
                Ok(())
            }
            Err(ZkError::BadVersion) if w.appended_from.is_some() => {
                self.append_again(ino, path, w, &data).await
            }
            Err(ZkError::BadVersion) => {
                let actual = match self.store.node(path).await {
                    Ok(v) => v.stat.version.to_string(),
                    Err(e) => format!("unknown ({e})"),
                };
                Err(FsError::Conflict {
                    path: path.to_string(),
                    detail: format!(
                        "changed by another client since open: expected version {version}, \
                         node is at version {actual}; it keeps the other writer's data"
                    ),
                })
            }
            Err(ZkError::NoNode) => Err(FsError::Conflict {
                path: path.to_string(),
                detail: "deleted by another client while this file was open".into(),
            }),
            Err(e) => Err(FsError::zk(path, "setData", e)),
        }
    }

    /// An append-only handle met another client's change: send its appended
    /// bytes after the node's content as it is now (read fresh), versioned
    /// again, as `O_APPEND` means "at the end, whatever is there". At most
    /// [`APPEND_ATTEMPTS`] rounds; the node deleted meanwhile, or changed
    /// every time, is the usual conflict.
    async fn append_again(
        &self,
        ino: u64,
        path: &str,
        w: &mut Writer,
        data: &[u8],
    ) -> Result<(), FsError> {
        let from = w.appended_from.unwrap_or(data.len()).min(data.len());
        let appended = data[from..].to_vec();
        let mut wait = std::time::Duration::from_millis(1);
        for round in 0..APPEND_ATTEMPTS {
            if round > 0 {
                tokio::time::sleep(crate::zk::session::jitter(wait)).await;
                wait = (wait * 2).min(APPEND_WAIT_MAX);
            }
            let (current, view) = match self.store.for_write(|| self.store.read_fresh(path)).await {
                Ok(read) => read,
                Err(ZkError::NoNode) => {
                    return Err(FsError::Conflict {
                        path: path.to_string(),
                        detail: "deleted by another client while this file was open".into(),
                    });
                }
                Err(e) => return Err(FsError::zk(path, "getData", e)),
            };
            let mut next = current.to_vec();
            next.extend_from_slice(&appended);
            let limit = self.data_limit(path);
            if next.len() > limit {
                return Err(FsError::TooBig(path.to_string(), next.len(), limit));
            }
            debug!(
                path,
                version = view.stat.version,
                "appending after another client's change"
            );
            let _sending = self.sending(ino);
            match self
                .store
                .set_data(path, next.clone(), Some(view.stat.version))
                .await
            {
                Ok(stat) => {
                    let registration = self.registry.contains(path);
                    self.note_registration_written(path, registration, next.clone(), &stat);
                    w.appended_from = Some(next.len());
                    w.buf = next;
                    w.base_version = Some(stat.version);
                    self.show_sent(ino, &stat);
                    return Ok(());
                }
                Err(ZkError::BadVersion) => continue,
                Err(ZkError::NoNode) => {
                    return Err(FsError::Conflict {
                        path: path.to_string(),
                        detail: "deleted by another client while this file was open".into(),
                    });
                }
                Err(e) => return Err(FsError::zk(path, "setData", e)),
            }
        }
        Err(FsError::Conflict {
            path: path.to_string(),
            detail: format!(
                "changed by other clients each of {APPEND_ATTEMPTS} times this append was sent"
            ),
        })
    }

    /// Last close of a handle: send what was not sent yet, then forget it.
    pub async fn release(&self, fh: u64) -> Result<(), FsError> {
        // Its answer reaches no one (the kernel drops it): a failure told
        // before is not told again here.
        let result = self.send_handle(fh, SendFor::Release).await;
        let removed = lock(&self.files).remove(&fh);
        if let Some(file) = removed {
            file.released.notify_waiters();
            if file.cache == PageCache::Keep {
                self.reader_released();
            }
        }
        self.release_hold(fh).await;
        result
    }

    /// `truncate`/`ftruncate`, `chmod`, `chown`, `utimes` (times: accepted,
    /// no-op; chmod/chown too with `--chmod ignore`).
    pub async fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        fh: Option<u64>,
    ) -> Result<Attr, FsError> {
        let inode = self.inode(ino)?;
        if mode.is_some() || uid.is_some() || gid.is_some() || size.is_some() {
            self.writable(&inode.path)?;
        }
        // The kernel applies this answer's size without checking for a newer
        // one: a send finishing while it is on its way would leave the old
        // size on the inode, so readers keep off its pages until the answer
        // is in and an invalidation after it ([`ZkFs::unsettle`]).
        let _answering = inode.is_content().then(|| self.unsettle(ino));
        let current = self.getattr(ino).await?;
        let refuse = !self.config.chmod_ignore;
        if let Some(mode) = mode
            && (mode & 0o7777) as u16 != current.perm
            && refuse
        {
            return Err(FsError::NotPermitted(
                inode.path.to_string(),
                "chmod: ZooKeeper nodes have no mode bits \
                 (set --file-mode/--dir-mode/--attrs, or --chmod ignore)",
            ));
        }
        if (uid.is_some_and(|u| u != current.uid) || gid.is_some_and(|g| g != current.gid))
            && refuse
        {
            return Err(FsError::NotPermitted(
                inode.path.to_string(),
                "chown: ZooKeeper nodes have no owner (set --uid/--gid/--attrs, or --chmod ignore)",
            ));
        }
        if let Some(size) = size {
            let size = size as usize;
            let limit = self.data_limit(&inode.path);
            if size > limit {
                return Err(FsError::TooBig(inode.path.to_string(), size, limit));
            }
            if current.kind == FileKind::Directory {
                return Err(FsError::IsDir(inode.path.to_string()));
            }
            let handle = fh.and_then(|fh| self.writer_of(fh).ok());
            match handle {
                Some((_, writer)) => {
                    let mut w = writer.lock().await;
                    if let WriteState::Refused { size, .. } = w.state {
                        return Err(FsError::TooBig(inode.path.to_string(), size, limit));
                    }
                    w.buf.resize(size, 0);
                    w.appended_from = None;
                    w.touched();
                }
                None => {
                    // truncate(2) by path: the kernel cuts the size and pages
                    // of the inode it truncates. A reader of them on this
                    // mount keeps its version: the truncate moves to a fresh
                    // inode (the kernel retries it there). Else readers
                    // opening it from now read directly (the kernel cuts its
                    // pages when the answer comes); should this future be
                    // dropped, they go on doing so.
                    let Some(_writing) = self.unsettle_unless_read(ino) else {
                        return Err(self.move_writer(ino, &inode.path));
                    };
                    self.truncate_closed(ino, &inode.path, size).await?;
                }
            }
        }
        self.getattr(ino).await
    }

    /// truncate(2) on a closed file: one versioned setData now.
    async fn truncate_closed(&self, ino: u64, path: &str, size: usize) -> Result<(), FsError> {
        let (data, view) = self
            .store
            .for_write(|| self.store.data(path))
            .await
            .map_err(|e| FsError::zk(path, "getData", e))?;
        let mut data = data.to_vec();
        data.resize(size, 0);
        let mut w = Writer::existing(&[], view.stat.version, OpenMode::default());
        w.buf = data;
        w.state = WriteState::Dirty;
        self.send(ino, path, &mut w, &[]).await
    }

    /// The kernel sends `release` asynchronously: a close just before an
    /// unlink or rename may still be creating the node. Wait for such sends.
    async fn wait_for_sends(&self, path: &str) {
        let writers: Vec<_> = lock(&self.files)
            .values()
            .filter(|f| f.path == path)
            .filter_map(|f| f.writer.clone())
            .collect();
        for writer in writers {
            drop(writer.lock().await);
        }
    }

    /// `unlink`: delete the node; on the data file, empty the directory's data.
    pub async fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (dir, child) = self.new_child(parent, name).await?;
        self.wait_for_sends(&child).await;
        if lock(&self.pending).remove(&child).is_some() {
            lock(&self.inodes).detach(&child);
            return Ok(());
        }
        if self.is_data_file(&dir, path::basename(&child)).await? {
            self.store
                .set_data(&dir, Vec::new(), None)
                .await
                .map_err(|e| FsError::zk(&dir, "setData", e))?;
            self.invalidate_path(&dir);
            return Ok(());
        }
        let view = self.view_for_write(&child).await?;
        if self.kind_of(&child, &view) == FileKind::Directory {
            return Err(FsError::IsDir(child));
        }
        self.delete(&child).await
    }

    /// `rmdir`: delete a directory node (`ENOTEMPTY` when it has children).
    pub async fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (_, child) = self.new_child(parent, name).await?;
        let view = self.view_for_write(&child).await?;
        if self.kind_of(&child, &view) != FileKind::Directory {
            return Err(FsError::NotDir(child));
        }
        self.delete(&child).await
    }

    async fn delete(&self, p: &str) -> Result<(), FsError> {
        // Not ours any more before its deletion event can arrive.
        let removal = self.registry.removing(p);
        let result = self.store.delete(p, None).await;
        if matches!(result, Ok(()) | Err(ZkError::NoNode)) {
            removal.done();
        }
        match result {
            Ok(()) => {
                self.forget_path(p);
                Ok(())
            }
            Err(ZkError::NotEmpty) => Err(FsError::NotEmpty(p.to_string())),
            Err(e) => Err(FsError::zk(p, "delete", e)),
        }
    }

    /// `rename` of a childless node as one `multi`: create-at-target (or
    /// set-target) + delete-source. Replacing a file is checked against the
    /// version the new content was based on ([`Self::rename_base`]).
    pub async fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
        pid: u32,
    ) -> Result<(), FsError> {
        let (src_dir, src) = self.new_child(parent, name).await?;
        let (dst_dir, dst) = self.new_child(new_parent, new_name).await?;
        if flags.exchange {
            return Err(FsError::Unsupported(src, "RENAME_EXCHANGE"));
        }
        if src == dst {
            return Ok(());
        }
        self.wait_for_sends(&src).await;
        if lock(&self.pending).contains_key(&src) {
            return Err(FsError::Busy(
                src,
                "the file is still open and not yet created in ZooKeeper; close it first",
            ));
        }
        if self.is_data_file(&src_dir, path::basename(&src)).await?
            || self.is_data_file(&dst_dir, path::basename(&dst)).await?
        {
            return Err(FsError::CrossDevice(
                src,
                "a directory's data file moves by copy (mv falls back to copying)",
            ));
        }
        let src_before = self.view_for_write(&src).await?;
        if src_before.stat.num_children > 0 {
            return Err(FsError::CrossDevice(
                src,
                "a node with children cannot be renamed in one transaction (mv falls back to copying)",
            ));
        }
        let src_kind = self.kind_of(&src, &src_before);
        // Both nodes as the server has them now: the transaction's versions
        // must not come from a cache an event has not reached yet (a node
        // deleted and re-created is at version 0 again).
        let (data, src_view) = self
            .store
            .for_write(|| self.store.read_fresh(&src))
            .await
            .map_err(|e| FsError::zk(&src, "getData", e))?;
        let known_czxid = {
            let inodes = lock(&self.inodes);
            inodes
                .node_ino(&src)
                .and_then(|ino| inodes.get(ino).map(|i| i.czxid))
                .unwrap_or(src_before.stat.czxid)
        };
        if src_view.stat.czxid != known_czxid {
            return Err(FsError::Conflict {
                path: src.clone(),
                detail: "re-created by another client; nothing was renamed".into(),
            });
        }
        let acl = self
            .store
            .for_write(|| self.store.acl(&src))
            .await
            .map_err(|e| FsError::zk(&src, "getACL", e))?;
        let dst_view = match self.store.for_write(|| self.store.read_fresh(&dst)).await {
            Ok((_, v)) => Some(v),
            Err(ZkError::NoNode) => None,
            Err(e) => return Err(FsError::zk(&dst, "getData", e)),
        };
        let versioned = !self.config.last_writer_wins;
        let src_version = versioned.then_some(src_view.stat.version);
        let mode = if src_view.stat.is_ephemeral() {
            CreateMode::Ephemeral
        } else {
            CreateMode::Persistent
        };
        let create = WriteOp::Create {
            path: dst.clone(),
            data: data.to_vec(),
            mode,
            acl: Some(acl),
        };
        let delete_src = WriteOp::Delete {
            path: src.clone(),
            version: src_version,
        };
        let ops = match &dst_view {
            None => vec![create, delete_src],
            Some(_) if flags.noreplace => return Err(FsError::Exists(dst)),
            Some(v) => {
                let dst_kind = self.kind_of(&dst, v);
                match (src_kind, dst_kind) {
                    (FileKind::Directory, FileKind::Directory) => {
                        if v.stat.num_children > 0 {
                            return Err(FsError::NotEmpty(dst));
                        }
                        vec![
                            WriteOp::Delete {
                                path: dst.clone(),
                                version: versioned.then_some(v.stat.version),
                            },
                            create,
                            delete_src,
                        ]
                    }
                    (_, FileKind::Directory) => return Err(FsError::IsDir(dst)),
                    (FileKind::Directory, _) => return Err(FsError::NotDir(dst)),
                    _ => vec![
                        WriteOp::SetData {
                            path: dst.clone(),
                            data: data.to_vec(),
                            version: if versioned {
                                Some(self.rename_base(pid, &src, &src_view, &dst, v)?)
                            } else {
                                None
                            },
                        },
                        delete_src,
                    ],
                }
            }
        };
        let overhead = ops
            .iter()
            .map(|op| op_overhead(&self.config.chroot, op))
            .sum();
        if data.len() > self.data_limit_with(overhead) {
            // The transaction carries the data and both paths: too large for
            // the server, which would drop the connection.
            return Err(FsError::TooBig(
                format!("{src} -> {dst} (the rename's transaction)"),
                data.len(),
                self.data_limit_with(overhead),
            ));
        }
        // Taken before the transaction: its own Deleted event may detach the
        // source path from its inode before we get to move it.
        let src_ino = lock(&self.inodes).node_ino(&src);
        let removal = self.registry.removing(&src);
        let moved = removal.was_registered();
        let results = self.store.multi(&ops).await;
        if results.is_ok() {
            removal.done();
        }
        let results = results.map_err(|e| match e {
            ZkError::BadVersion => FsError::Conflict {
                path: src.clone(),
                detail: format!("{src} or {dst} changed by another client; nothing was renamed"),
            },
            ZkError::NodeExists => FsError::Exists(dst.clone()),
            ZkError::NotEmpty => FsError::NotEmpty(dst.clone()),
            e => FsError::zk(&src, "multi (rename)", e),
        })?;
        // The kernel moves the source inode to the new name: make our inode
        // table agree, with the identity of the node now at `dst`.
        let new_czxid = results.iter().find_map(|r| match r {
            WriteResult::Created(s) | WriteResult::Set(s) => Some((s.czxid, s.mzxid)),
            WriteResult::Deleted => None,
        });
        // Only a rename to a new name keeps the node ephemeral (ours); onto an
        // existing node, that node keeps its own mode.
        if moved && mode == CreateMode::Ephemeral && dst_view.is_none() {
            self.registry.insert(&dst, data.to_vec());
        }
        // The node shows at `dst` as what it showed as at `src`: an empty
        // file stays a file, an empty directory a directory.
        self.overlay.rename(&src, &dst, src_kind);
        lock(&self.reads).pop(&(pid, Arc::from(src.as_str())));
        let dst_view = self.store.node(&dst).await.ok();
        let identity = dst_view
            .map(|v| (v.stat.czxid, v.stat.mzxid))
            .or(new_czxid)
            .filter(|(c, _)| *c > 0);
        let old_dst = lock(&self.inodes).node_ino(&dst);
        if let Some(ino) = src_ino {
            let mut inodes = lock(&self.inodes);
            // The inode showed the version that moved (it may not have, if
            // another client changed the source just before: then its pages
            // are of an older version, and the name gets a fresh inode).
            let showed_moved = inodes
                .get(ino)
                .is_some_and(|i| !i.is_content() || i.version() == Some(src_view.stat.mzxid));
            match identity {
                // The kernel moved the source's inode to the new name: same number.
                Some((czxid, mzxid)) if showed_moved => {
                    inodes.move_to(ino, &dst, src_kind, czxid, mzxid)
                }
                // Let the kernel look the name up again.
                _ => {
                    inodes.detach(&src);
                    inodes.retire(ino);
                    drop(inodes);
                    self.invalidator
                        .invalidate(super::core::Invalidation::Inode(ino));
                    self.invalidate_path(&dst);
                }
            }
        }
        // The kernel already moved its dentry; only the listings of both
        // directories and the replaced inode's pages are out of date.
        for dir in [&src_dir, &dst_dir] {
            self.invalidate_listing(dir);
        }
        if let Some(old) = old_dst.filter(|o| Some(*o) != src_ino) {
            self.invalidator
                .invalidate(super::core::Invalidation::Inode(old));
        }
        info!(from = %src, to = %dst, "renamed");
        Ok(())
    }

    /// The version a rename from `src` over the file `dst` must find at
    /// `dst`: the version this process last read or wrote of it (what its
    /// new content is based on); without one, the current version, unless
    /// `dst` changed after `src` was created here (a temp file written
    /// from an older read). SEMANTICS.md "rename" states the rule and its
    /// remaining window.
    fn rename_base(
        &self,
        pid: u32,
        src: &str,
        src_view: &NodeView,
        dst: &str,
        dst_view: &NodeView,
    ) -> Result<i32, FsError> {
        if let Some((version, czxid)) = lock(&self.reads)
            .get(&(pid, Arc::<str>::from(dst)))
            .copied()
        {
            if czxid != dst_view.stat.czxid {
                return Err(FsError::Conflict {
                    path: dst.to_string(),
                    detail: "deleted and re-created by another client since this process read it; \
                             nothing was renamed"
                        .into(),
                });
            }
            return Ok(version);
        }
        let created_here = self.overlay.kind(src) == Some(FileKind::RegularFile);
        if created_here
            && dst_view.stat.mzxid > src_view.stat.czxid
            && !self.store.written_here(dst, dst_view.stat.mzxid)
        {
            return Err(FsError::Conflict {
                path: dst.to_string(),
                detail: format!(
                    "changed by another client after {src} was created; nothing was renamed"
                ),
            });
        }
        Ok(dst_view.stat.version)
    }

    /// `ln -s TARGET LINK`: a persistent node whose data is TARGET resolved
    /// to an absolute node path (no trailing newline).
    pub async fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<Entry, FsError> {
        let (dir, child) = self.new_child(parent, name).await?;
        if !self.config.pointers {
            return Err(FsError::NotPermitted(
                child,
                "--pointers off: symlinks cannot be created",
            ));
        }
        let node =
            pointer::resolve_target(target, &dir, &self.config.mountpoint, &self.config.root)
                .map_err(|why| FsError::CrossDevice(child.clone(), why))?;
        if node.len() > pointer::MAX_POINTER_LEN {
            // Longer data is never read as a pointer: it would show as a file.
            return Err(FsError::NameTooLong(format!(
                "{child} -> {node}: a link target longer than {} bytes (as a node path)",
                pointer::MAX_POINTER_LEN
            )));
        }
        if pointer::parse_pointer(node.as_bytes(), &self.config.root).is_none() {
            // `/` (the mount root of a mount of ZooKeeper's root or of a
            // chroot's): pointer data cannot name it, so the node would be a
            // plain file with the text `/`.
            return Err(FsError::CrossDevice(
                child,
                "the target is the root of ZooKeeper's tree (or of the chroot), which a pointer cannot name",
            ));
        }
        // The target may not exist yet (`tar x` and `rsync -a` create links
        // before their targets): this mount shows the link as a link
        // meanwhile; other mounts see a file until the target exists.
        match self.store.for_write(|| self.store.node(&node)).await {
            Ok(_) | Err(ZkError::NoNode) => {}
            Err(e) => return Err(FsError::zk(&node, "getData", e)),
        }
        self.overlay.remember(&child, FileKind::Symlink);
        if let Err(e) = self
            .store
            .create(
                &child,
                node.into_bytes(),
                CreateMode::Persistent,
                None,
                Exclusive::Yes,
            )
            .await
        {
            self.overlay.forget(&child);
            return Err(create_error(&child, e));
        }
        self.lookup(parent, name).await
    }

    /// New content `data` was set on `path` (its new `stat`): an owned
    /// registration keeps it. Written over another session's ephemeral node
    /// in an `--ephemeral` directory (a killed daemon's earlier run, whose
    /// session the server still holds, or another host's), the write
    /// registers the file: the supervisor leaves that node alone and takes
    /// the name back, with this data, once it goes.
    fn note_registration_written(
        &self,
        path: &str,
        registration: bool,
        data: Vec<u8>,
        stat: &crate::zk::NodeStat,
    ) {
        if registration {
            self.registry.update(path, data);
        } else if stat.ephemeral_owner != 0
            && !self.store.backend().is_own_session(stat.ephemeral_owner)
            && self.creates_ephemeral(path)
        {
            info!(
                path,
                owner = %format!("{:#x}", stat.ephemeral_owner),
                "written over another session's registration: registered here, taken over when that node goes"
            );
            self.registry.restore(path, data);
        }
    }

    /// Whether files created at `path` become ephemeral nodes (registrations).
    pub(super) fn creates_ephemeral(&self, path: &str) -> bool {
        let Some(dir) = path::parent(path) else {
            return false;
        };
        let relative = dir.strip_prefix(self.config.root.as_str()).unwrap_or(dir);
        let elements: Vec<&str> = relative.split('/').filter(|e| !e.is_empty()).collect();
        self.config.ephemeral.iter().any(|g| g.matches(&elements))
    }

    fn create_mode(&self, path: &str) -> CreateMode {
        if self.creates_ephemeral(path) {
            CreateMode::Ephemeral
        } else {
            CreateMode::Persistent
        }
    }

    /// The root watch is on again after a reconnect or a new session (the
    /// session sends this before any event of the new watch): a write sent
    /// in the gap, after the connection was back but before the watch was,
    /// echoes nothing, and its expectation must not swallow another
    /// client's change ([`crate::zk::Store::forget_own_echoes`]; the resync
    /// that follows clears them too, up to its jitter later).
    pub fn watch_back(&self) {
        self.store.forget_own_echoes();
    }

    /// After a new session or a reconnect: have the supervisor check every
    /// registration this mount owns (`registry.rs`).
    pub fn reregister(&self) {
        self.registry.reconcile_all();
    }

    /// The session expired (a new one is being built): no registration is
    /// owned any more.
    pub fn session_ended(&self) {
        self.registry.session_ended();
    }

    /// `link(2)`: ZooKeeper has no hard links.
    pub fn link(&self, ino: u64) -> Result<Entry, FsError> {
        let inode = self.inode(ino)?;
        self.writable(&inode.path)?;
        Err(FsError::NotPermitted(
            inode.path.to_string(),
            "ZooKeeper nodes cannot have hard links",
        ))
    }

    fn forget_path(&self, p: &str) {
        self.overlay.forget(p);
        self.registry.take(p);
        self.invalidate_path(p);
        lock(&self.inodes).detach(p);
    }
}

fn create_error(path: &str, e: ZkError) -> FsError {
    match e {
        ZkError::NodeExists => FsError::Exists(path.to_string()),
        ZkError::NoChildrenForEphemerals => {
            warn!(path, "cannot create a child of an ephemeral node");
            FsError::NotPermitted(path.to_string(), "ephemeral nodes cannot have children")
        }
        e => FsError::zk(path, "create", e),
    }
}

/// A send in flight through one inode ([`ZkFs::sending`]); dropping it
/// (the send over, or its future dropped) ends the mark.
pub(super) struct Sending<'a> {
    map: &'a std::sync::Mutex<std::collections::HashMap<u64, u32>>,
    ino: u64,
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        if let Some(n) = map.get_mut(&self.ino) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ino);
            }
        }
    }
}
