//! [`ZkFs`]: one method per filesystem operation, answering from the coherent
//! cache and loading through it on a miss. Plain Rust types in and out.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::debug;

use super::attr::{self, Attr, FileKind, Presentation};
use super::attrs;
use super::error::FsError;
use super::handle::{OpenFile, OpenMode, Opened, PageCache, Writer};
use super::inode::{Inode, InodeTable, ROOT_INO, Resolved, Role};
use super::listing::{self, Filler, Listed, Stream};
use super::name::NodeName;
use super::pointer;
use super::xattr;
use crate::zk::path;
use crate::zk::{Change, NodeEvent, NodeView, Store, ZkBackend, ZkError};

/// Directories with more children than this report nlink 1 ("unknown")
/// instead of counting subdirectories on every stat.
const NLINK_COUNT_LIMIT: usize = 4096;

/// How often [`ZkFs::resolve_view`] reads a view again that turned out
/// older than the name's inode (each time the cache has a newer one: a
/// send's answer is in the cache before the writer's inode shows it).
const RESOLVE_ATTEMPTS: usize = 3;

/// Mount-level settings the core needs.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Absolute ZooKeeper path presented as the mount root.
    pub root: String,
    /// Name of the hidden data file of directory nodes (`--data-name`).
    pub data_name: String,
    pub presentation: Presentation,
    /// Largest data accepted by a write (EFBIG beyond).
    pub max_data: usize,
    /// setData with version -1 instead of the version seen at open.
    pub last_writer_wins: bool,
    /// The connection string has a chroot (so `/zookeeper` is not reserved).
    pub chrooted: bool,
    /// That chroot (`/bank` of `zk1:2181/bank`), "" without one: pointer data
    /// starting with it is resolved inside the chroot (`pointer.rs`).
    pub chroot: String,
    /// `--chmod ignore`: chmod and chown succeed and change nothing.
    pub chmod_ignore: bool,
    /// Show pointer nodes as symlinks (`--pointers auto`).
    pub pointers: bool,
    /// Where the mount is, to resolve absolute `ln -s` targets.
    pub mountpoint: std::path::PathBuf,
    /// Directories whose new files are ephemeral nodes (`--ephemeral`).
    pub ephemeral: Vec<super::glob::DirGlob>,
    /// Who opens files and directories: this daemon or the kernel alone.
    pub opens: Opens,
}

/// Who opens files and directories (doc/SEMANTICS.md, "Opens").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opens {
    /// Every open is a handle here (`OPEN`/`OPENDIR`/`FLUSH` reach the
    /// daemon): writes are buffered per handle and sent at close, a rename
    /// is checked against the version its process opened. Writable mounts.
    Handles,
    /// The kernel opens by itself: the adapter answers `OPEN`, `OPENDIR`
    /// and `FLUSH` with `ENOSYS` once and the kernel never sends them again,
    /// so a warm open+read+close reaches no daemon thread. Reads and
    /// listings are served per inode (a content inode is one version, kept
    /// by [`super::held`] while the kernel may still read it). Read-only
    /// mounts, which have nothing to send at close.
    Kernel,
}

/// A process (pid) and the node path it opened, for [`ZkFs::reads`]:
/// its version and czxid are the value.
pub(super) type ReadKey = (u32, Arc<str>);

/// Which nodes are pointers, and to what (by the mzxid the data was read at),
/// plus the reverse map so a target appearing or vanishing re-kinds them.
/// Nodes whose data is no pointer by any reading are not kept.
#[derive(Default)]
pub(super) struct PointerIndex {
    pub(super) by_path: HashMap<String, PointerEntry>,
    pub(super) by_target: HashMap<String, HashSet<String>>,
}

/// One possible pointer: the mzxid its data was read at, the target chosen,
/// and the data's two readings on a chrooted mount (as written, and inside
/// the chroot for data that starts with it), which a target appearing or
/// vanishing chooses between (`rechoose_chroot_pointer`).
pub(super) struct PointerEntry {
    pub(super) mzxid: i64,
    pub(super) target: Option<String>,
    written: Option<String>,
    inside: Option<String>,
}

/// A kernel cache entry to drop. Sent to an [`Invalidator`], which must not
/// block (the FUSE adapter queues them for a dedicated thread).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Attributes and cached pages of an inode.
    Inode(u64),
    /// The dentry `name` in directory inode `parent`.
    Entry { parent: u64, name: String },
    /// Put `data`, the whole content of the version content inode `ino`
    /// shows, into the kernel's page cache (`FUSE_NOTIFY_STORE`), so the
    /// first read of a listed file needs no round trip ([`Opens::Kernel`]).
    Store { ino: u64, data: Arc<[u8]> },
    /// The dentry `name` in `parent` names `child`, a version that is no
    /// longer there: drop the dentry and unlink `child`, so the kernel
    /// forgets it once the last descriptor on it closes ([`Opens::Kernel`]).
    Delete {
        parent: u64,
        child: u64,
        name: String,
    },
}

pub trait Invalidator: Send + Sync + 'static {
    fn invalidate(&self, invalidation: Invalidation);

    /// Resolves once every invalidation queued before the call has been
    /// handed to the kernel (at once for an invalidator that does not queue).
    fn delivered(&self) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(std::future::ready(()))
    }
}

/// Listed children's ACLs are loaded in batches of this many.
const ACL_BATCH: usize = 256;
/// A batch of background ACL loads waits for this much quiet ...
const IDLE_BEFORE_BACKGROUND: Duration = Duration::from_millis(50);
/// ... but never longer than this.
const BACKGROUND_MAX_DEFER: Duration = Duration::from_secs(2);

/// Session facts shown as the root's `user.zkfs.*` attributes.
pub trait MountStatus: Send + Sync + 'static {
    /// (name without the `user.zkfs.` prefix, value)
    fn attributes(&self) -> Vec<(String, String)>;
}

/// Reply to a lookup.
#[derive(Clone, Debug)]
pub struct Entry {
    pub attr: Attr,
}

/// One directory entry with the attributes `readdirplus` needs.
#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// How many (process, path) → version-read records are kept.
const READS_KEPT: usize = 4096;

/// Largest content offered to the kernel's page cache after a listing.
const PAGES_OFFERED_MAX: usize = 16 * 1024;

/// How many directories' listings are kept between `readdir` calls when
/// the kernel opens directories itself (one listing per directory inode).
const LISTINGS_KEPT: usize = 16;

/// A directory's listing between the `readdir` calls of one pass
/// ([`Opens::Kernel`]: no handle to keep it in).
enum Listing {
    /// Started at offset 0 (maybe still loading); later offsets continue it.
    Partial(Stream),
    /// The pass reached the end (the listing is dropped; the kernel's
    /// closing call at the end's offset needs only its length).
    Ended(u64),
}

/// The writes under way on an inode and the invalidations of it the kernel
/// may not have yet ([`ZkFs::settle`]).
#[derive(Default)]
struct Settling {
    /// Writes without a handle under way ([`Unsettled`] marks).
    writes: u32,
    /// One flag per invalidation sent, set once the kernel has it.
    barriers: Vec<Arc<AtomicBool>>,
}

impl Settling {
    fn is_settled(&mut self) -> bool {
        self.barriers.retain(|b| !b.load(Ordering::Acquire));
        self.writes == 0 && self.barriers.is_empty()
    }
}

/// A write without a handle under way on an inode ([`ZkFs::unsettle`]);
/// dropping it (at the end, or if the write's future is dropped) ends it
/// and invalidates the inode.
pub(super) struct Unsettled<'a, B: ZkBackend> {
    fs: &'a ZkFs<B>,
    ino: u64,
}

impl<B: ZkBackend> Drop for Unsettled<'_, B> {
    fn drop(&mut self) {
        if let Some(s) = lock(&self.fs.settling).get_mut(&self.ino) {
            s.writes = s.writes.saturating_sub(1);
        }
        self.fs.settle(self.ino);
    }
}

/// What a new handle is of (see [`ZkFs::admit_writer`]).
pub(super) struct NewHandle<'a> {
    pub(super) ino: u64,
    pub(super) path: &'a str,
    pub(super) data: Arc<[u8]>,
    pub(super) attr: Option<Attr>,
    pub(super) pid: u32,
}

/// How long a fresh inode made for a write ([`ZkFs::move_writer`]) keeps
/// readers off its pages while a moved write has not come back: the kernel
/// retries the write's open at once, within the same system call (its own
/// waits, for a connection or a pending release, are shorter); this only
/// ends the reservation of a retry that never came (a reopen through
/// `/proc/self/fd`, which the kernel does not look up again).
const WRITER_RESERVATION: Duration = Duration::from_secs(10);

/// How long a write open waits for the page-cache readers of its inode to
/// close before it moves to a fresh inode ([`ZkFs::admit_writer_draining`]).
const DRAIN_MAX: Duration = Duration::from_millis(250);

/// Writes moved off a path's inode that have not opened the fresh one yet.
struct Reserved {
    moved: u32,
    last: Instant,
}

struct OpenDir {
    ino: u64,
    /// Started at the first readdir (offset 0) and continued at later offsets.
    listing: Option<Stream>,
}

/// The filesystem core.
///
/// **Lock order.** A write handle's `tokio::sync::Mutex<Writer>` is the only
/// lock held across an `.await` (a send keeps its handle locked until the
/// outcome is known); it is taken before any other lock, and a handle that
/// claimed a pending create never waits for another handle's lock (so two
/// handles of one new file cannot deadlock). Every `std::sync::Mutex` here
/// (`inodes`, `files`, `for_writer`, `settling`, `sending`, `pending`, `creating`, `dirs`, `listings`, `held`, `pointers`, `reads`,
/// the overlay's and the registry's) is a leaf: taken for one short step,
/// never across an `.await`, and never while another of them is held
/// (`inodes` may call into the invalidator, which only queues), except
/// `settling`, taken under `files` where a reader's admission and a
/// truncate by path decide (never the other way round). The store's
/// own locks (cache, own-write echoes, fetches in flight) are leaves below
/// all of these.
pub struct ZkFs<B: ZkBackend> {
    pub(super) store: Store<B>,
    pub(super) config: FsConfig,
    pub(super) inodes: Mutex<InodeTable>,
    pub(super) files: Mutex<HashMap<u64, OpenFile>>,
    /// Paths whose inode a write moved off lately ([`Self::move_writer`]),
    /// with when.
    for_writer: Mutex<HashMap<String, Reserved>>,
    /// Inodes written through this mount whose invalidation the kernel may
    /// not have yet ([`Self::settle`]): set once it has.
    settling: Mutex<HashMap<u64, Settling>>,
    /// Inodes with a send through this mount in flight (how many), from
    /// before its request until its answer is shown ([`Self::sending`]).
    pub(super) sending: Mutex<HashMap<u64, u32>>,
    /// Notified when a page-cache reader's handle is released.
    reader_closed: tokio::sync::Notify,
    /// Files created through this mount and not yet sent (path → inode):
    /// the node is created with its complete content when the file is closed.
    pub(super) pending: Mutex<HashMap<String, u64>>,
    /// Pending files whose create is in flight (claimed by one handle).
    pub(super) creating: Mutex<HashSet<String>>,
    dirs: Mutex<HashMap<u64, OpenDir>>,
    /// Listings by directory inode ([`Opens::Kernel`]).
    listings: Mutex<lru::LruCache<u64, Listing>>,
    /// Versions the kernel may still read ([`Opens::Kernel`]), and whether
    /// their pages were offered to it (once per inode, which is one
    /// version; until the kernel forgets it).
    pub(super) held: super::held::Held,
    pub(super) next_fh: AtomicU64,
    /// The kernel's id of this mount (`mnt_id` in `/proc/*/fdinfo`), 0 until
    /// the daemon has mounted and said it ([`Self::set_mount_id`]).
    mount_id: AtomicU64,
    /// When the last operation started, in µs since `epoch`.
    last_activity_us: AtomicU64,
    epoch: Instant,
    /// Kinds this mount made nodes as (empty files stay files, mkdir'ed
    /// directories stay directories, `ln -s` links stay links; contract §3).
    pub(super) overlay: super::overlay::Overlay,
    pub(super) pointers: Mutex<PointerIndex>,
    /// The version of each node each process last opened (pid, path): a
    /// rename by that process over the node is checked against it, so an
    /// edit based on an old read fails instead of silently losing another
    /// writer's change (`sed -i`, editors' atomic saves). Keyed by the
    /// inode table's shared path string (no copy per entry).
    pub(super) reads: Mutex<lru::LruCache<ReadKey, (i32, i64)>>,
    /// Ephemeral nodes this mount created and still owns, with their last
    /// data: kept on the server by the supervisor (`registry.rs`).
    pub(super) registry: super::registry::Registry,
    /// This filesystem's own `Arc`, once registered: background work (ACLs of
    /// a listing) is spawned with it. Without it that work runs inline.
    me: std::sync::OnceLock<std::sync::Weak<Self>>,
    pub(super) invalidator: Box<dyn Invalidator>,
    status: Box<dyn MountStatus>,
}

/// `[offset, offset+size)` of `data`, clamped to its length.
fn slice(data: Arc<[u8]>, offset: u64, size: u32) -> (Arc<[u8]>, usize, usize) {
    let len = data.len();
    let start = usize::try_from(offset).unwrap_or(usize::MAX).min(len);
    let end = start.saturating_add(size as usize).min(len);
    (data, start, end)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<B: ZkBackend> ZkFs<B> {
    pub fn new(
        store: Store<B>,
        config: FsConfig,
        invalidator: Box<dyn Invalidator>,
        status: Box<dyn MountStatus>,
    ) -> Self {
        ZkFs {
            inodes: Mutex::new(InodeTable::new(&config.root)),
            store,
            config,
            files: Mutex::new(HashMap::new()),
            for_writer: Mutex::new(HashMap::new()),
            settling: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashMap::new()),
            reader_closed: tokio::sync::Notify::new(),
            pending: Mutex::new(HashMap::new()),
            creating: Mutex::new(HashSet::new()),
            dirs: Mutex::new(HashMap::new()),
            listings: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(LISTINGS_KEPT).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            held: Default::default(),
            next_fh: AtomicU64::new(1),
            mount_id: AtomicU64::new(0),
            last_activity_us: AtomicU64::new(0),
            epoch: Instant::now(),
            overlay: super::overlay::Overlay::default(),
            pointers: Mutex::new(PointerIndex::default()),
            reads: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(READS_KEPT).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            registry: Default::default(),
            me: std::sync::OnceLock::new(),
            invalidator,
            status,
        }
    }

    /// Let the filesystem spawn background work with its own `Arc`.
    pub fn register_arc(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// Fetch the ACLs of listed children and drop the kernel's attributes
    /// of those whose write bits change: after the listing returns when the
    /// filesystem runs under an `Arc` (a runtime), else before it.
    /// Load the ACLs of listed children (their write bits), in batches that
    /// wait for the mount to be idle when `defer` is set: a burst of work
    /// right after a listing (`cat *`) should not compete with bookkeeping.
    async fn settle_acls(&self, paths: Vec<String>, defer: bool) {
        for batch in paths.chunks(ACL_BATCH) {
            if defer {
                self.until_idle().await;
            }
            self.settle_acl_batch(batch).await;
        }
    }

    /// Wait until no filesystem operation started for [`IDLE_BEFORE_BACKGROUND`],
    /// but no longer than [`BACKGROUND_MAX_DEFER`].
    async fn until_idle(&self) {
        let started = Instant::now();
        loop {
            let busy_until = Duration::from_micros(self.last_activity_us.load(Ordering::Relaxed))
                + IDLE_BEFORE_BACKGROUND;
            let now = self.epoch.elapsed();
            if now >= busy_until || started.elapsed() >= BACKGROUND_MAX_DEFER {
                return;
            }
            tokio::time::sleep(busy_until - now).await;
        }
    }

    /// Note that an operation arrived (see [`Self::until_idle`]).
    pub(super) fn note_activity(&self) {
        self.last_activity_us
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    async fn settle_acl_batch(&self, paths: &[String]) {
        let loaded = self.store.load_acls(paths).await;
        let identity = self.config.presentation.identity.as_deref();
        // Listed attributes assumed "writable": only denials change anything.
        let denied: Vec<String> = loaded
            .into_iter()
            .filter(|p| {
                self.store
                    .peek(p)
                    .and_then(|v| v.acl)
                    .is_some_and(|acl| !attr::may_write(&acl, identity))
            })
            .collect();
        let inodes = lock(&self.inodes);
        for p in denied {
            if let Some(ino) = inodes.node_ino(&p) {
                self.invalidator.invalidate(Invalidation::Inode(ino));
            }
        }
    }

    pub fn store(&self) -> &Store<B> {
        &self.store
    }

    /// Who opens files on this mount.
    pub fn opens(&self) -> Opens {
        self.config.opens
    }

    /// The path behind an inode, for log lines.
    pub fn describe(&self, ino: u64) -> String {
        lock(&self.inodes)
            .get(ino)
            .map(|i| i.path.to_string())
            .unwrap_or_else(|| format!("inode {ino}"))
    }

    pub(super) fn inode(&self, ino: u64) -> Result<Inode, FsError> {
        lock(&self.inodes)
            .get(ino)
            .cloned()
            .ok_or_else(|| FsError::Stale(format!("inode {ino}")))
    }

    pub(super) fn kind_of(&self, path: &str, view: &NodeView) -> FileKind {
        let is_root = path == self.config.root;
        let remembered = self.overlay.kind(path);
        if !view.stat.is_ephemeral() && remembered == Some(FileKind::Directory) {
            return FileKind::Directory;
        }
        let target = self.pointer_target(path, view);
        // A link made here stays a link while its target does not exist yet.
        let is_pointer = target.is_some_and(|target| {
            remembered == Some(FileKind::Symlink) || self.store.peek(&target).is_some()
        });
        let created_as_file = remembered == Some(FileKind::RegularFile);
        attr::node_kind(&view.stat, is_root, created_as_file, is_pointer)
    }

    /// Whether a node with this stat can be a pointer at all (pointers are
    /// on, a persistent childless node with data of a path's length).
    fn may_be_pointer(&self, stat: &crate::zk::NodeStat) -> bool {
        self.config.pointers
            && stat.num_children == 0
            && !stat.is_ephemeral()
            && stat.data_length >= 2
            && stat.data_length as usize <= pointer::MAX_POINTER_LEN
    }

    /// The node `path` points to, if its data is a pointer (whether or not
    /// the target exists). Needs the data: `prepare_pointer` loads it.
    pub(super) fn pointer_target(&self, path: &str, view: &NodeView) -> Option<String> {
        let stat = &view.stat;
        if !self.may_be_pointer(stat) || path == self.config.root {
            return None;
        }
        let mut index = lock(&self.pointers);
        if let Some(entry) = index.by_path.get(path)
            && entry.mzxid == stat.mzxid
        {
            return entry.target.clone();
        }
        let data = view.data.as_deref()?;
        let plain = pointer::parse_pointer(data, &self.config.root);
        let inside = self.unchrooted(data);
        // Data starting with the chroot names a node inside it when that
        // node exists (or when the data as written is outside the subtree).
        let target = match &inside {
            Some(t) if plain.is_none() || self.store.peek(t).is_some() => inside.clone(),
            _ => plain.clone(),
        };
        if target.is_none() && inside.is_none() {
            // Not a pointer by either reading: nothing to re-choose later,
            // and parsing again is cheaper than remembering it (a tree of
            // small config files would keep an entry per file, ~100 bytes).
            self.unindex_pointer(&mut index, path);
            return None;
        }
        index.by_path.insert(
            path.to_string(),
            PointerEntry {
                mzxid: stat.mzxid,
                target: target.clone(),
                // Chosen between only when there are two readings.
                written: inside.as_ref().and(plain),
                inside: inside.clone(),
            },
        );
        // Under the in-chroot reading too: its appearing or vanishing
        // changes the choice (`invalidate`).
        for t in target.iter().chain(&inside) {
            index
                .by_target
                .entry(t.clone())
                .or_default()
                .insert(path.to_string());
        }
        target
    }

    /// Pointer data's in-chroot reading (`pointer::parse_unchrooted`).
    fn unchrooted(&self, data: &[u8]) -> Option<String> {
        pointer::parse_unchrooted(data, &self.config.root, &self.config.chroot)
    }

    /// The in-chroot reading of a possible pointer's data when it is not
    /// loaded and the pointer's target not chosen yet: load it before
    /// choosing (see `pointer_target`).
    fn unchosen_inside(&self, path: &str, view: &NodeView) -> Option<String> {
        if self.config.chroot.is_empty() || !self.may_be_pointer(&view.stat) {
            return None;
        }
        let inside = self.unchrooted(view.data.as_deref()?)?;
        let chosen = lock(&self.pointers)
            .by_path
            .get(path)
            .is_some_and(|entry| entry.mzxid == view.stat.mzxid);
        (!chosen && self.store.peek(&inside).is_none()).then_some(inside)
    }

    /// Node `p` appeared or vanished: pointers whose data names it inside
    /// the chroot (data that starts with the chroot) switch between it and
    /// the data's reading as written. A pointer whose data has one reading
    /// only keeps it: with its target gone it is a file.
    fn rechoose_chroot_pointer(&self, q: &str, p: &str, created: bool) {
        let mut index = lock(&self.pointers);
        let Some(entry) = index.by_path.get_mut(q) else {
            return;
        };
        if entry.inside.as_deref() != Some(p) {
            return;
        }
        let new = match entry.target.as_deref() {
            // The in-chroot node appeared: it wins over the data as written.
            Some(t) if created && t != p => p.to_string(),
            // It vanished: back to the data as written, if inside the subtree.
            Some(t) if !created && t == p => match &entry.written {
                Some(written) => written.clone(),
                None => return,
            },
            _ => return,
        };
        entry.target = Some(new.clone());
        index
            .by_target
            .entry(new)
            .or_default()
            .insert(q.to_string());
    }

    /// Make `kind_of` exact for a possible pointer: its data and its target
    /// must be known. Costs nothing for nodes that cannot be pointers.
    pub(super) async fn prepare_pointer(&self, path: &str, view: &NodeView) {
        let stat = &view.stat;
        if !self.may_be_pointer(stat) {
            return;
        }
        let mut view = view.clone();
        if view.data.is_none() {
            match self.store.data(path).await {
                Ok((data, _)) => view.data = Some(data),
                Err(_) => return,
            }
        }
        if let Some(inside) = self.unchosen_inside(path, &view) {
            let _ = self.store.node(&inside).await;
        }
        if let Some(target) = self.pointer_target(path, &view)
            && self.store.peek(&target).is_none()
        {
            // Absent is a fine answer (a dangling pointer is a file).
            let _ = self.store.node(&target).await;
        }
    }

    /// 2 + subdirectories when every child is cached, else 1 ("unknown").
    fn nlink(&self, path: &str, kind: FileKind, view: &NodeView) -> u32 {
        if kind != FileKind::Directory {
            return 1;
        }
        if view.stat.num_children == 0 && !view.stale {
            return 2;
        }
        let Some(children) = self.store.peek_children(path) else {
            return 1;
        };
        if children.len() > NLINK_COUNT_LIMIT {
            return 1;
        }
        let mut subdirs = 0;
        for name in &children {
            let child = path::join(path, name);
            match self.store.peek(&child) {
                Some(view) if self.kind_of(&child, &view) == FileKind::Directory => subdirs += 1,
                Some(_) => {}
                None => return 1,
            }
        }
        2 + subdirs
    }

    pub(super) fn attr_for(
        &self,
        ino: u64,
        path: &str,
        role: Role,
        kind: FileKind,
        view: &NodeView,
    ) -> Attr {
        match role {
            Role::Node => {
                let nlink = self.nlink(path, kind, view);
                let mut attr =
                    attr::attr_of(ino, kind, path, view, nlink, &self.config.presentation);
                if kind == FileKind::Symlink
                    && let Some(target) = self.pointer_target(path, view)
                {
                    attr.size = pointer::relative_link(path, &target).len() as u64;
                }
                attr
            }
            Role::DataFile => attr::attr_of(
                ino,
                FileKind::RegularFile,
                path,
                view,
                1,
                &self.config.presentation,
            ),
        }
    }

    /// Load a node through the cache, mapping errors to `FsError`.
    pub(super) async fn view(&self, path: &str) -> Result<NodeView, FsError> {
        self.store
            .node(path)
            .await
            .map_err(|e| FsError::zk(path, "getData", e))
    }

    /// [`Self::view`] for a modifying operation: asked again once connected
    /// when a lost connection fails it ([`crate::zk::Store::for_write`]).
    pub(super) async fn view_for_write(&self, path: &str) -> Result<NodeView, FsError> {
        self.store
            .for_write(|| self.store.node(path))
            .await
            .map_err(|e| FsError::zk(path, "getData", e))
    }

    /// Whether the cache proves `name` absent under `parent` without asking ZooKeeper.
    fn known_absent(&self, parent: &str, name: &str) -> bool {
        let Some(view) = self.store.peek(parent) else {
            return false;
        };
        if view.stale {
            return false;
        }
        if view.stat.num_children == 0 {
            return true;
        }
        self.store.lists_child(parent, name, true) == Some(false)
    }

    pub async fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, FsError> {
        self.note_activity();
        let mut entry = self.lookup_inner(parent, name, false).await?;
        // Like `getattr`: the kernel sets the inode's size from this answer,
        // and a write handle of this inode may hold content not sent yet
        // (the Created event of a file this mount just created makes the
        // kernel look it up again while another descriptor has written).
        if let Some(size) = self.unsent_size(entry.attr.ino).await {
            entry.attr.size = size;
        }
        self.hold_shown(&[entry.attr.ino]);
        Ok(entry)
    }

    /// The kernel is about to know these inodes (a lookup or listing
    /// answer, [`Opens::Kernel`]): hold the version each file shows while
    /// the cache has its bytes, until the kernel forgets it. A fetch that
    /// replaces the cache's copy with a later version before that change's
    /// event arrives (a refresh or resync that leapfrogs), or the cache's
    /// budget, can then never leave a referenced version without its bytes.
    /// While the version is current the held copy is the cache's own bytes.
    pub fn hold_shown(&self, inos: &[u64]) {
        if self.config.opens != Opens::Kernel {
            return;
        }
        for &ino in inos {
            let Ok(inode) = self.inode(ino) else {
                continue;
            };
            if inode.kind != FileKind::RegularFile || !inode.is_content() {
                continue;
            }
            let Some(view) = self.store.peek(&inode.path) else {
                continue;
            };
            let shows_it = inode.version() == Some(view.stat.mzxid)
                && (inode.role != Role::Node || view.stat.czxid == inode.czxid);
            if let Some(data) = view.data.clone().filter(|_| shows_it) {
                let attr = self.attr_for(ino, &inode.path, inode.role, inode.kind, &view);
                self.held.hold(ino, super::held::HeldVersion { data, attr });
            }
        }
    }

    /// The inode for `view` of (`path`, `role`), with the kind and the view
    /// it was resolved for. A view made by this mount's send in flight keeps
    /// the writer's number; one read before a send's answer and looked at
    /// after it is read again from the cache, which has the answer by then
    /// (`InodeTable::resolve_seen`; a few times at most, then as it is).
    /// The inode table shares the cache's copy of the path.
    pub(super) fn resolve_view(
        &self,
        path: &str,
        role: Role,
        mut view: NodeView,
    ) -> (u64, FileKind, NodeView) {
        let kind_of = |view: &NodeView| match role {
            Role::Node => self.kind_of(path, view),
            Role::DataFile => FileKind::RegularFile,
        };
        for _ in 0..RESOLVE_ATTEMPTS {
            let kind = kind_of(&view);
            // Before `inodes` (a leaf each): a send whose answer made this
            // version marked its inode before the cache had the answer, and
            // unmarks it only after its inode shows it.
            let sending = if self.store.written_here(path, view.stat.mzxid) {
                self.sending_now()
            } else {
                Vec::new()
            };
            let resolved = lock(&self.inodes).resolve_seen(
                &view.path,
                role,
                kind,
                view.stat.czxid,
                view.stat.mzxid,
                &sending,
            );
            match resolved {
                Resolved::Ino(ino) => return (ino, kind, view),
                Resolved::Outdated => match self.store.peek(path) {
                    Some(again) => view = again,
                    None => break,
                },
            }
        }
        let kind = kind_of(&view);
        let ino =
            lock(&self.inodes).resolve(&view.path, role, kind, view.stat.czxid, view.stat.mzxid);
        (ino, kind, view)
    }

    /// `lookup`, where `empty_data_file` also finds the data file of a
    /// directory without data (for opening it to write).
    pub(super) async fn lookup_inner(
        &self,
        parent: u64,
        name: &OsStr,
        empty_data_file: bool,
    ) -> Result<Entry, FsError> {
        let dir = self.inode(parent)?;
        if dir.kind != FileKind::Directory || dir.role != Role::Node {
            return Err(FsError::NotDir(dir.path.to_string()));
        }
        let name = match NodeName::parse(name) {
            Ok(name) => name,
            Err(super::name::NameError::TooLong) => {
                return Err(FsError::NameTooLong(path::join(
                    &dir.path,
                    &name.to_string_lossy(),
                )));
            }
            // A name ZooKeeper cannot store cannot exist.
            Err(_) => {
                return Err(FsError::NotFound(path::join(
                    &dir.path,
                    &name.to_string_lossy(),
                )));
            }
        };
        let child = path::join(&dir.path, name.as_str());
        let pending = lock(&self.pending).get(&child).copied();
        if let Some(ino) = pending {
            let attr = self.pending_attr(ino).await;
            lock(&self.inodes).add_lookup(ino);
            return Ok(Entry { attr });
        }
        let is_data_name = name.as_str() == self.config.data_name;
        let absent = self.known_absent(&dir.path, name.as_str());
        let found = if absent {
            None
        } else {
            match self.store.node(&child).await {
                Ok(view) => Some(view),
                Err(crate::zk::ZkError::NoNode) => None,
                Err(e) => return Err(FsError::zk(&child, "getData", e)),
            }
        };
        let attr = match found {
            Some(view) => {
                self.prepare_pointer(&child, &view).await;
                let (ino, kind, view) = self.resolve_view(&child, Role::Node, view);
                self.attr_for(ino, &child, Role::Node, kind, &view)
            }
            None if is_data_name => {
                // The directory's own data file. Without data it does not
                // exist for lookups (so `cp -r` can create it with O_EXCL)
                // but `open(O_CREAT)` finds it.
                let view = self.view(&dir.path).await?;
                if view.stat.data_length == 0 && !empty_data_file {
                    return Err(FsError::NotFound(child));
                }
                let (ino, _, view) = self.resolve_view(&dir.path, Role::DataFile, view);
                self.attr_for(ino, &dir.path, Role::DataFile, FileKind::RegularFile, &view)
            }
            None => return Err(FsError::NotFound(child)),
        };
        lock(&self.inodes).add_lookup(attr.ino);
        Ok(Entry { attr })
    }

    pub fn forget(&self, ino: u64, n: u64) {
        let mut inodes = lock(&self.inodes);
        inodes.forget(ino, n);
        let referenced = inodes.get(ino).is_some_and(|i| i.lookups > 0);
        drop(inodes);
        if !referenced {
            self.held.release(ino);
        }
    }

    /// What a listed entry's inode shows now. A later chunk of a listing is
    /// answered from entries made when the pass was read, and the kernel
    /// applies their attributes as if made at that chunk's request: a send
    /// through this mount since the pass was read would have its file's old
    /// size applied after the send's invalidation. Without waiting: a
    /// writer busy sending keeps the listed size (the request is older than
    /// the invalidation that send makes, so the kernel drops it).
    pub fn listed_attr(&self, attr: &Attr) -> Attr {
        let Some(inode) = lock(&self.inodes).get(attr.ino).cloned() else {
            return *attr;
        };
        if !inode.is_content() {
            return *attr;
        }
        let Some(view) = self.store.peek(&inode.path) else {
            return *attr;
        };
        if inode.version() != Some(view.stat.mzxid) {
            return *attr;
        }
        let mut now = self.attr_for(attr.ino, &inode.path, inode.role, inode.kind, &view);
        let mut unsent = Vec::new();
        for w in self.writers_of(attr.ino) {
            let Ok(w) = w.try_lock() else {
                return *attr;
            };
            unsent.extend(w.unsent());
        }
        if let Some(size) = super::write::latest_unsent(unsent) {
            now.size = size;
        }
        now
    }

    /// Count one more kernel reference (an entry returned by `readdirplus`).
    pub fn remember_lookup(&self, ino: u64) {
        lock(&self.inodes).add_lookup(ino);
    }

    /// The attributes of `ino`. Computed again when a send through this
    /// mount changed what the inode shows while they were being computed
    /// (the wait for a writer's unsent size can outlast a send): an answer
    /// with the old version's size would otherwise reach the kernel after
    /// the new content (a `SETATTR`'s answer is applied unchecked).
    pub async fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.getattr_by(ino, None).await
    }

    /// [`Self::getattr`] asked by thread `pid`, when the kernel said.
    pub async fn getattr_by(&self, ino: u64, pid: Option<u32>) -> Result<Attr, FsError> {
        let shown = |fs: &Self| lock(&fs.inodes).get(ino).map(|i| (i.czxid, i.version()));
        for _ in 0..3 {
            let before = shown(self);
            let attr = self.getattr_once(ino, pid).await?;
            if shown(self) == before {
                return Ok(attr);
            }
        }
        self.getattr_once(ino, pid).await
    }

    async fn getattr_once(&self, ino: u64, pid: Option<u32>) -> Result<Attr, FsError> {
        self.note_activity();
        let inode = self.inode(ino)?;
        if inode.czxid == super::inode::PENDING_CZXID {
            return Ok(self.pending_attr(ino).await);
        }
        // `: > f` from another process, then `stat f`: the truncation is
        // sent by the release that follows the close, which the closing
        // process does not wait for; the stat does (at most a second), so
        // it shows the emptied file's new mtime (pjdfstest open/00).
        let inode = if inode.is_content() {
            self.wait_for_pending_release(&inode.path, pid).await;
            // The release's write keeps this inode's number with the new
            // version (read it again).
            self.inode(ino)?
        } else {
            inode
        };
        let mut attr = match self.node_attr(ino, &inode).await {
            Ok(attr) => attr,
            Err(e @ (FsError::NotFound(_) | FsError::Stale(_) | FsError::Superseded(_))) => {
                // Gone or superseded, but still open here: keep showing
                // what was opened (an unlinked file has no links left).
                // Only a handle of the version this inode shows (`attr` is
                // kept for those alone): another version's size must never
                // reach the kernel for this inode.
                let open = lock(&self.files)
                    .values()
                    .find(|f| f.ino == ino && f.attr.is_some())
                    .and_then(|f| f.attr.map(|a| (a, f.data.len())));
                if open.is_none()
                    && let Some(held) = self.held.get(ino)
                {
                    // A superseded version the kernel still reads (it was
                    // told the version is deleted: no links left).
                    return Ok(Attr {
                        nlink: 0,
                        ..held.attr
                    });
                }
                // Nothing reads this inode's own version through its pages
                // or size: only handles that read another one directly
                // (opened after the change, before the kernel looked the
                // name up again). Their `fstat` shows what they read; the
                // size reaching the inode misleads no read of it.
                let open = open.or_else(|| {
                    lock(&self.files)
                        .values()
                        .find(|f| f.ino == ino && f.direct_attr.is_some())
                        .and_then(|f| f.direct_attr.map(|a| (a, f.data.len())))
                });
                match open {
                    Some((mut attr, len)) => {
                        attr.size = len as u64;
                        if matches!(e, FsError::NotFound(_)) {
                            attr.nlink = 0;
                        }
                        attr
                    }
                    None => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        if let Some(size) = self.unsent_size(ino).await {
            attr.size = size;
        }
        Ok(attr)
    }

    async fn node_attr(&self, ino: u64, inode: &Inode) -> Result<Attr, FsError> {
        let inode = inode.clone();
        let view = self.view(&inode.path).await?;
        self.prepare_pointer(&inode.path, &view).await;
        if inode.role == Role::DataFile {
            self.check_version(&inode, &view)?;
            return Ok(self.attr_for(
                ino,
                &inode.path,
                Role::DataFile,
                FileKind::RegularFile,
                &view,
            ));
        }
        let kind = self.kind_of(&inode.path, &view);
        if ino != ROOT_INO && (kind != inode.kind || view.stat.czxid != inode.czxid) {
            return Err(FsError::Stale(inode.path.to_string()));
        }
        self.check_version(&inode, &view)?;
        Ok(self.attr_for(ino, &inode.path, Role::Node, kind, &view))
    }

    /// A content inode shows one version: once the node moved on, the
    /// inode is stale (path lookups then get the new version's inode; the
    /// kernel retries a path-based `open` or `stat` after `ESTALE`).
    fn check_version(&self, inode: &Inode, view: &NodeView) -> Result<(), FsError> {
        if inode.is_content() && inode.version() != Some(view.stat.mzxid) {
            return Err(FsError::Superseded(inode.path.to_string()));
        }
        Ok(())
    }

    /// Open a file. Returns (handle, keep the kernel's cached pages).
    pub async fn open(&self, ino: u64, mode: OpenMode, pid: u32) -> Result<Opened, FsError> {
        self.note_activity();
        let inode = self.inode(ino)?;
        if inode.role == Role::Node && inode.kind == FileKind::Directory {
            return Err(FsError::IsDir(inode.path.to_string()));
        }
        if mode.write && self.config.presentation.read_only {
            return Err(FsError::ReadOnly(inode.path.to_string()));
        }
        if mode.write {
            self.until_connected(&inode.path).await?;
        }
        // As it is now (its create may have ended meanwhile).
        let inode = self.inode(ino)?;
        if inode.czxid == super::inode::PENDING_CZXID {
            return self.open_pending(ino, &inode.path, mode, pid);
        }
        self.wait_for_pending_release(&inode.path, Some(pid)).await;
        let (data, view) = self
            .store
            .data(&inode.path)
            .await
            .map_err(|e| FsError::zk(&inode.path, "getData", e))?;
        if inode.role == Role::Node && ino != ROOT_INO && view.stat.czxid != inode.czxid {
            return Err(FsError::Stale(inode.path.to_string()));
        }
        // The inode shows this version (and was not retired by a failed
        // write): the kernel's pages and size of it are right.
        let shows_it =
            lock(&self.inodes).is_current(ino) && self.check_version(&inode, &view).is_ok();
        let attr = shows_it.then(|| self.attr_for(ino, &inode.path, inode.role, inode.kind, &view));
        if inode.role == Role::Node {
            lock(&self.reads).put(
                (pid, inode.path.clone()),
                (view.stat.version, view.stat.czxid),
            );
        }
        let handle = NewHandle {
            ino,
            path: &inode.path,
            data,
            attr,
            pid,
        };
        let opened = if mode.write {
            let writer = Writer::existing(&handle.data, view.stat.version, mode);
            let cache = if shows_it {
                PageCache::Drop
            } else {
                PageCache::Bypass
            };
            self.admit_writer_draining(handle, writer, cache).await?
        } else {
            self.admit_reader(handle, shows_it.then_some(view.stat.mzxid))
        };
        if opened.cache == PageCache::Bypass {
            self.read_directly(opened.fh, &inode, &view);
        }
        Ok(opened)
    }

    /// Add a write handle, unless readers on this mount use the inode's
    /// pages: an `O_TRUNC` open empties the kernel's size and pages of the
    /// inode it opens and writes go into them, under a reader that was
    /// promised one version. Then the name gets a fresh inode (reserved for
    /// the writer: [`Self::reserved_for_writer`]) and the open fails with
    /// [`FsError::Reopen`], which the kernel retries on the fresh inode.
    ///
    /// The check and the insertion are one step under `files`, as is a
    /// reader's ([`Self::admit_reader`]): of a reader's and a writer's open
    /// of one inode, either the reader sees the writer (and reads directly)
    /// or the writer sees the reader (and moves).
    pub(super) fn admit_writer(
        &self,
        handle: NewHandle<'_>,
        writer: Writer,
        cache: PageCache,
    ) -> Result<Opened, FsError> {
        let ino = handle.ino;
        match self.try_admit_writer(handle, writer, cache) {
            Ok(opened) => Ok(opened),
            Err(back) => Err(self.move_writer(ino, back.0.path)),
        }
    }

    /// [`Self::admit_writer`], first waiting up to [`DRAIN_MAX`] for the
    /// page-cache readers to close (readers opening meanwhile read
    /// directly): a reader's `cat` is over in milliseconds, and moving the
    /// writer gives the name a new number, which vim takes for the file
    /// being replaced under it ("E949: File changed while writing").
    async fn admit_writer_draining(
        &self,
        handle: NewHandle<'_>,
        writer: Writer,
        cache: PageCache,
    ) -> Result<Opened, FsError> {
        let ino = handle.ino;
        let (mut handle, mut writer) = match self.try_admit_writer(handle, writer, cache) {
            Ok(opened) => return Ok(opened),
            Err(back) => *back,
        };
        let _waiting = self.unsettle(ino);
        let deadline = tokio::time::Instant::now() + DRAIN_MAX;
        loop {
            let closed = self.reader_closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            (handle, writer) = match self.try_admit_writer(handle, writer, cache) {
                Ok(opened) => return Ok(opened),
                Err(back) => *back,
            };
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.admit_writer(handle, writer, cache);
            }
        }
    }

    /// Add a write handle if no reader uses the inode's pages; else give
    /// the handle back.
    fn try_admit_writer<'a>(
        &self,
        handle: NewHandle<'a>,
        writer: Writer,
        cache: PageCache,
    ) -> Result<Opened, Box<(NewHandle<'a>, Writer)>> {
        let ino = handle.ino;
        let mut files = lock(&self.files);
        if files
            .values()
            .any(|f| f.ino == ino && f.cache == PageCache::Keep)
        {
            return Err(Box::new((handle, writer)));
        }
        let path = handle.path.to_string();
        let fh = self.insert_handle(&mut files, handle, Some(writer), cache);
        drop(files);
        self.writer_came(&path);
        Ok(Opened { fh, cache })
    }

    /// A page-cache reader's handle was released: writers waiting for the
    /// readers of its inode to close look again.
    pub(super) fn reader_released(&self) {
        self.reader_closed.notify_waiters();
    }

    /// Add a read handle: it reads through the inode's pages only while they
    /// show this handle's version and nothing on this mount writes them (a
    /// writer open, or one about to open the inode); else its own snapshot,
    /// with direct I/O.
    fn admit_reader(&self, handle: NewHandle<'_>, shows_it: Option<i64>) -> Opened {
        let version = shows_it;
        let shows_it = shows_it.is_some();
        let ino = handle.ino;
        let reserved = shows_it && self.reserved_for_writer(handle.path);
        let mut files = lock(&self.files);
        let writer_open = files.values().any(|f| f.ino == ino && f.writer.is_some());
        // Under `files`, as a truncate by path marks it (`files`, then
        // `settling`: the one nesting of these locks).
        let cache = if shows_it && !writer_open && !reserved && self.is_settled(ino) {
            PageCache::Keep
        } else {
            PageCache::Bypass
        };
        let fh = self.insert_handle(&mut files, handle, None, cache);
        drop(files);
        // Once the handle is in, no write on this mount can change the
        // inode (it moves instead); but one may have done so just before.
        // Then its pages are not this handle's version: read directly.
        let still = {
            let inodes = lock(&self.inodes);
            inodes.is_current(ino) && inodes.get(ino).and_then(|i| i.version()) == version
        };
        if cache == PageCache::Keep && !still {
            if let Some(f) = lock(&self.files).get_mut(&fh) {
                f.cache = PageCache::Bypass;
            }
            return Opened {
                fh,
                cache: PageCache::Bypass,
            };
        }
        Opened { fh, cache }
    }

    /// Move the name `path` off `ino`, whose pages readers use, for a write
    /// that must not touch them: the next lookup gets a fresh inode (also
    /// when `ino` was superseded already: the kernel retries once, so the
    /// retry must not land on a later version's inode with readers), kept
    /// for the writer (no reader uses its pages until a writer opened it, or
    /// for [`WRITER_RESERVATION`]). The reservation goes first: whoever
    /// finds the fresh inode finds it reserved.
    pub(super) fn move_writer(&self, ino: u64, path: &str) -> FsError {
        {
            let mut reserved = lock(&self.for_writer);
            reserved.retain(|_, r| r.last.elapsed() < WRITER_RESERVATION);
            let r = reserved.entry(path.to_string()).or_insert(Reserved {
                moved: 0,
                last: Instant::now(),
            });
            r.moved += 1;
            r.last = Instant::now();
        }
        lock(&self.inodes).retire_name_of(ino);
        FsError::Reopen(path.to_string())
    }

    /// Whether a write moved off `path`'s inode lately and has not opened
    /// the fresh one yet ([`Self::move_writer`]).
    fn reserved_for_writer(&self, path: &str) -> bool {
        let mut reserved = lock(&self.for_writer);
        match reserved.get(path) {
            Some(r) if r.last.elapsed() < WRITER_RESERVATION => true,
            Some(_) => {
                reserved.remove(path);
                false
            }
            None => false,
        }
    }

    /// A write open came (back) to `path`: one moved write fewer waits.
    fn writer_came(&self, path: &str) {
        let mut reserved = lock(&self.for_writer);
        if let Some(r) = reserved.get_mut(path) {
            r.moved = r.moved.saturating_sub(1);
            if r.moved == 0 {
                reserved.remove(path);
            }
        }
    }

    /// A write through this mount changed what `ino` shows: drop the
    /// kernel's pages and attributes of it, and keep readers off its pages
    /// until the kernel has that invalidation. The kernel handles an inode
    /// invalidation inside the write that carries it and then ignores every
    /// attribute reply to a request sent before; so from then on no size
    /// computed before the write can reach the inode (one did: it cut the
    /// written content to the old length under a reader).
    pub(super) fn settle(&self, ino: u64) {
        self.invalidator.invalidate(Invalidation::Inode(ino));
        let mut delivered = self.invalidator.delivered();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if delivered.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        let done = Arc::new(AtomicBool::new(false));
        {
            let mut settling = lock(&self.settling);
            settling.retain(|_, s| !s.is_settled());
            settling.entry(ino).or_default().barriers.push(done.clone());
        }
        tokio::spawn(async move {
            delivered.await;
            done.store(true, Ordering::Release);
        });
    }

    /// A write with no handle to show it (a truncate by path) is about to
    /// change `ino`: unless a reader uses its pages (then `None`), readers
    /// keep off them from now until the returned mark is dropped and the
    /// invalidation it then sends has reached the kernel. One step under
    /// `files` (then `settling`), as a reader's admission is.
    pub(super) fn unsettle_unless_read(&self, ino: u64) -> Option<Unsettled<'_, B>> {
        let files = lock(&self.files);
        if files
            .values()
            .any(|f| f.ino == ino && f.cache == PageCache::Keep)
        {
            return None;
        }
        Some(self.unsettle(ino))
    }

    /// `ino`'s attributes are about to be answered without the kernel's
    /// check for newer ones (a `SETATTR`'s answer is applied as it comes):
    /// readers keep off its pages until the returned mark is dropped and
    /// its invalidation delivered, so a size that a send made stale while
    /// the answer was on its way is dropped before a reader relies on it.
    pub(super) fn unsettle(&self, ino: u64) -> Unsettled<'_, B> {
        lock(&self.settling).entry(ino).or_default().writes += 1;
        Unsettled { fs: self, ino }
    }

    /// Whether the kernel has every invalidation of `ino` a write here made,
    /// and no write without a handle is under way on it.
    fn is_settled(&self, ino: u64) -> bool {
        let mut settling = lock(&self.settling);
        let settled = settling.get_mut(&ino).is_none_or(|s| s.is_settled());
        if settled {
            settling.remove(&ino);
        }
        settled
    }

    /// Handle `fh` reads `view`'s version with direct I/O, bypassing its
    /// inode (which shows another version): keep that version's attributes
    /// for `fstat` on it ([`OpenFile::direct_attr`]).
    fn read_directly(&self, fh: u64, inode: &Inode, view: &NodeView) {
        let ino = lock(&self.files).get(&fh).map(|f| f.ino);
        let Some(ino) = ino else { return };
        let attr = self.attr_for(ino, &inode.path, inode.role, inode.kind, view);
        if let Some(file) = lock(&self.files).get_mut(&fh) {
            file.direct_attr = Some(attr);
        }
    }

    /// The kernel's id of this mount, once mounted (`/proc/self/mountinfo`'s
    /// first field): descriptors of this mount in `/proc/*/fdinfo` have it.
    pub fn set_mount_id(&self, id: u64) {
        self.mount_id.store(id, Ordering::Relaxed);
    }

    /// A close that left a truncation unsent (`: > f`) is sent by the
    /// release that follows; an open or stat of the same node by a caller
    /// holding no write descriptor on it waits for it (at most a second),
    /// so the next `cat` sees the emptied file.
    async fn wait_for_pending_release(&self, path: &str, asker: Option<u32>) {
        type Waiting = (
            Arc<tokio::sync::Mutex<Writer>>,
            Arc<tokio::sync::Notify>,
            u64,
        );
        let waiting: Vec<Waiting> = lock(&self.files)
            .values()
            .filter(|f| *f.path == *path)
            .filter_map(|f| f.writer.clone().map(|w| (w, f.released.clone(), f.ino)))
            .collect();
        for (writer, released, ino) in waiting {
            let notified = released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !writer.lock().await.awaits_release() {
                continue;
            }
            // The asker holds a descriptor open for writing on the file
            // itself: the release comes when it is done with it, not before
            // its own call. `cmd > file`: the shell opened the file, and
            // closed its copy once `cmd` had one (dash closes it in the
            // parent after the fork, bash in the child before the exec);
            // `cmd`'s `fstat` of its output would wait the whole bound.
            let mount_id = self.mount_id.load(Ordering::Relaxed);
            if mount_id != 0 && asker.is_some_and(|pid| holds_for_writing(pid, mount_id, ino)) {
                continue;
            }
            debug!(
                path,
                ?asker,
                "waiting for the release that sends a truncation"
            );
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    fn insert_handle(
        &self,
        files: &mut HashMap<u64, OpenFile>,
        handle: NewHandle<'_>,
        writer: Option<Writer>,
        cache: PageCache,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        files.insert(
            fh,
            OpenFile {
                ino: handle.ino,
                path: handle.path.to_string(),
                data: handle.data,
                writer: writer.map(|w| Arc::new(tokio::sync::Mutex::new(w))),
                attr: handle.attr,
                direct_attr: None,
                cache,
                pid: handle.pid,
                released: Arc::new(tokio::sync::Notify::new()),
            },
        );
        fh
    }

    /// Bytes `[offset, offset+size)` of an open file's content (the handle's
    /// own buffer for write handles).
    pub async fn read(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<(Arc<[u8]>, usize, usize), FsError> {
        self.note_activity();
        let (data, writer) = {
            let files = lock(&self.files);
            let file = files.get(&fh).ok_or(FsError::BadFileHandle)?;
            (file.data.clone(), file.writer.clone())
        };
        let data = match writer {
            Some(w) => Arc::from(w.lock().await.content()),
            None => data,
        };
        Ok(slice(data, offset, size))
    }

    /// Bytes `[offset, offset+size)` of the version content inode `ino`
    /// shows, without a handle ([`Opens::Kernel`]). Never another version's
    /// bytes: a version the node has moved on from is served from what
    /// [`super::held`] kept, else the read fails with `ESTALE`.
    pub async fn read_inode(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Result<(Arc<[u8]>, usize, usize), FsError> {
        self.note_activity();
        if let Some(held) = self.held.get(ino) {
            return Ok(slice(held.data, offset, size));
        }
        let inode = self.inode(ino)?;
        if !inode.is_content() || inode.kind != FileKind::RegularFile {
            return Err(FsError::IsDir(inode.path.to_string()));
        }
        let fetched = self.store.data(&inode.path).await;
        let shown = match &fetched {
            Ok((_, view)) => {
                inode.version() == Some(view.stat.mzxid)
                    && (inode.role != Role::Node || view.stat.czxid == inode.czxid)
            }
            Err(_) => false,
        };
        if !shown {
            // The change was seen while this read waited: the version was
            // held when it was (the cache still had its bytes then).
            if let Some(held) = self.held.get(ino) {
                return Ok(slice(held.data, offset, size));
            }
            return match fetched {
                Err(e) if e != crate::zk::ZkError::NoNode => {
                    Err(FsError::zk(&inode.path, "getData", e))
                }
                Ok((_, view)) if inode.role != Role::Node || view.stat.czxid == inode.czxid => {
                    Err(FsError::VersionGone(inode.path.to_string()))
                }
                _ => Err(FsError::Stale(inode.path.to_string())),
            };
        }
        let Ok((data, view)) = fetched else {
            return Err(FsError::Stale(inode.path.to_string()));
        };
        let (data, start, end) = slice(data, offset, size);
        if end < data.len() {
            // More of this version may be read: keep it, whatever the node
            // does meanwhile.
            let attr = self.attr_for(ino, &inode.path, inode.role, inode.kind, &view);
            self.held.hold(
                ino,
                super::held::HeldVersion {
                    data: data.clone(),
                    attr,
                },
            );
        }
        Ok((data, start, end))
    }

    /// Before the cache forgets the version at `p` (a change or deletion
    /// seen): hold it for every content inode of it the kernel references.
    fn hold_outgoing_version(&self, p: &str) {
        let Some(view) = self.store.peek(p) else {
            return;
        };
        let Some(data) = view.data.clone() else {
            return;
        };
        let shown: Vec<(u64, Role, FileKind)> = {
            let inodes = lock(&self.inodes);
            inodes
                .current(p)
                .into_iter()
                .filter_map(|ino| inodes.get(ino).map(|i| (ino, i)))
                .filter(|(_, i)| {
                    i.kind == FileKind::RegularFile
                        && i.lookups > 0
                        && i.version() == Some(view.stat.mzxid)
                })
                .map(|(ino, i)| (ino, i.role, i.kind))
                .collect()
        };
        for (ino, role, kind) in shown {
            let attr = self.attr_for(ino, p, role, kind, &view);
            self.held.hold(
                ino,
                super::held::HeldVersion {
                    data: data.clone(),
                    attr,
                },
            );
        }
    }

    /// The listing of directory `ino` from `offset`, without a handle
    /// ([`Opens::Kernel`]): started at offset 0, continued at later offsets.
    /// `ended` is called by the adapter once a reply reached the end.
    pub async fn readdir_inode(&self, ino: u64, offset: u64) -> Result<Listed, FsError> {
        self.note_activity();
        if offset != 0 {
            let kept = match lock(&self.listings).get(&ino) {
                Some(Listing::Partial(pass)) => Some(pass.clone()),
                Some(Listing::Ended(len)) if offset >= *len => {
                    return Ok(Listed::whole(Vec::new()));
                }
                _ => None,
            };
            if let Some(pass) = kept {
                return pass.at(offset).await;
            }
        }
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Directory || inode.role != Role::Node {
            return Err(FsError::NotDir(inode.path.to_string()));
        }
        let pass = self.start_listing(ino, &inode.path).await;
        lock(&self.listings).put(ino, Listing::Partial(pass.clone()));
        pass.at(offset).await
    }

    /// A directory's listing from `offset`: by inode when the kernel opens
    /// directories itself (`by_inode`), else from the open handle `fh`.
    pub async fn listing(
        &self,
        by_inode: bool,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Listed, FsError> {
        if by_inode {
            self.readdir_inode(ino, offset).await
        } else {
            self.readdir(fh, offset).await
        }
    }

    /// Offer the kernel the pages of these listed inodes (the kernel has
    /// them now): each current small file whose version the cache holds
    /// gets its whole content stored, so the first `cat` after `ls` is
    /// served by the kernel ([`Opens::Kernel`] only: on writable mounts a
    /// handle decides what the pages show).
    pub fn offer_pages(&self, inos: &[u64]) {
        if self.config.opens != Opens::Kernel {
            return;
        }
        for &ino in inos {
            let Ok(inode) = self.inode(ino) else {
                continue;
            };
            if inode.kind != FileKind::RegularFile
                || !inode.is_content()
                || !lock(&self.inodes).is_current(ino)
            {
                continue;
            }
            let Some(view) = self.store.peek(&inode.path) else {
                continue;
            };
            let shows_it = !view.stale
                && inode.version() == Some(view.stat.mzxid)
                && (inode.role != Role::Node || view.stat.czxid == inode.czxid);
            match view.data {
                Some(data)
                    if shows_it
                        && !data.is_empty()
                        && data.len() <= PAGES_OFFERED_MAX
                        && self.held.first_offer(ino) =>
                {
                    self.invalidator
                        .invalidate(Invalidation::Store { ino, data })
                }
                _ => {}
            }
        }
    }

    /// A readdir pass over `ino` returned its last entry.
    /// Only the pass kept for `ino` ends it: another process's pass that
    /// started since (and replaced this one) goes on.
    pub fn listing_ended(&self, ino: u64, pass: u64, len: u64) {
        let mut listings = lock(&self.listings);
        if matches!(listings.peek(&ino), Some(Listing::Partial(kept)) if kept.id() == pass) {
            listings.put(ino, Listing::Ended(len));
        }
    }

    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let inode = self.inode(ino)?;
        if inode.kind != FileKind::Directory || inode.role != Role::Node {
            return Err(FsError::NotDir(inode.path.to_string()));
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, OpenDir { ino, listing: None });
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    /// The listing of an open directory: started at offset 0, continued at
    /// later offsets.
    pub async fn readdir(&self, fh: u64, offset: u64) -> Result<Listed, FsError> {
        self.note_activity();
        let (ino, kept) = {
            let dirs = lock(&self.dirs);
            let dir = dirs.get(&fh).ok_or(FsError::BadFileHandle)?;
            (dir.ino, dir.listing.clone().filter(|_| offset != 0))
        };
        let pass = match kept {
            Some(pass) => pass,
            None => {
                let path = self.inode(ino)?.path;
                let pass = self.start_listing(ino, &path).await;
                if let Some(dir) = lock(&self.dirs).get_mut(&fh) {
                    dir.listing = Some(pass.clone());
                }
                pass
            }
        };
        pass.at(offset).await
    }

    /// Start a pass over directory `ino`. Its load is a task of its own when
    /// the filesystem runs under an `Arc` (a runtime), so the first entries
    /// are answered while later waves are read and a dropped `readdir` does
    /// not cancel it; it ends when the load does (every round trip bounded
    /// by the store) or, between waves, once nobody keeps the pass. Without
    /// an `Arc` the load runs to its end here.
    async fn start_listing(&self, ino: u64, dir: &str) -> Stream {
        let (filler, pass) = listing::pass(dir);
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(me) => {
                // A load that needs no round trip (a cached directory) ends
                // right here, so the readdir is still answered on the
                // calling thread; otherwise its task finishes it.
                let mut load = Box::pin(async move { me.fill_listing(ino, filler).await });
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if load.as_mut().poll(&mut cx).is_pending() {
                    tokio::spawn(load);
                }
            }
            None => self.fill_listing(ino, filler).await,
        }
        pass
    }

    /// Load the pass over directory `ino` into `out`: `.`, `..` and the data
    /// file, then the children in getChildren order, each wave of them as
    /// soon as it was read, then the files being created here. A child that
    /// fails fatally ends the pass short: the offsets from it on fail.
    async fn fill_listing(&self, ino: u64, out: Filler) {
        let me = self.me.get().and_then(std::sync::Weak::upgrade);
        let mut acls_later = Vec::new();
        let later = me.is_some().then_some(&mut acls_later);
        let result = self.fill_entries(ino, &out, later).await;
        out.end(result);
        if let Some(me) = me
            && !acls_later.is_empty()
        {
            tokio::spawn(async move { me.settle_acls(acls_later, true).await });
        }
    }

    /// The entries of [`Self::fill_listing`]. The ACLs of listed children
    /// that have none are loaded here, before their entries, or, with
    /// `acls_later`, left to the caller (the paths go there).
    async fn fill_entries(
        &self,
        ino: u64,
        out: &Filler,
        mut acls_later: Option<&mut Vec<String>>,
    ) -> Result<(), FsError> {
        let dir = self.inode(ino)?;
        // Files being created here before the child list is read: one that
        // commits while the pass goes on is in neither that list nor the
        // pending set at the end, so the end looks at these again.
        let created_before = self.pending_children(&dir.path);
        let view = self.view(&dir.path).await?;
        let names = if view.stat.num_children == 0 && !view.stale {
            Vec::new()
        } else {
            self.store
                .children(&dir.path)
                .await
                .map_err(|e| FsError::zk(&dir.path, "getChildren", e))?
        };
        // `.`, `..` and the data file go out with the first children.
        let mut entries = self.head_entries(ino, &dir.path, &view, &names);
        let child_paths: Vec<String> = names.iter().map(|n| path::join(&dir.path, n)).collect();
        let mut load = self.store.load_in_order(&child_paths);
        let mut start = 0;
        let mut loaded = load.next().await;
        while let Some(views) = loaded {
            let wave = start..start + views.len();
            start = wave.end;
            // The next wave is read while this one's entries are made.
            let made = self.push_wave(
                out,
                std::mem::take(&mut entries),
                (&names[wave.clone()], &child_paths[wave]),
                views,
                acls_later.as_deref_mut(),
            );
            (loaded, ()) = tokio::try_join!(async { Ok(load.next().await) }, made)?;
            if out.abandoned() {
                // (Nobody can read the pass any more.)
                return Ok(());
            }
        }
        if out.abandoned() {
            return Ok(());
        }
        let pending_now = self.pending_children(&dir.path);
        // Those committed since the pass began, listed like its children.
        let (mut names, mut paths, mut views) = (Vec::new(), Vec::new(), Vec::new());
        for (name, pino) in created_before.into_iter().chain(pending_now) {
            if out.has(&name) || entries.iter().any(|e| e.name == name) || names.contains(&name) {
                continue;
            }
            let child = path::join(&dir.path, &name);
            let still_pending = lock(&self.pending).get(&child) == Some(&pino);
            if still_pending {
                let attr = self.pending_attr(pino).await;
                entries.push(DirEntry { name, attr });
            } else if let Ok(view) = self.store.node(&child).await {
                // A create that succeeded cached its node, so this is no
                // round trip; one that failed left nothing to read, and an
                // error of any kind leaves the name out (never listed as
                // something it may not be).
                names.push(name);
                paths.push(child);
                views.push(Ok(view));
            }
        }
        if names.is_empty() {
            out.push(entries);
            Ok(())
        } else {
            self.push_wave(out, entries, (&names, &paths), views, acls_later)
                .await
        }
    }

    /// The files being created in directory `dir` (names and inodes).
    fn pending_children(&self, dir: &str) -> Vec<(String, u64)> {
        lock(&self.pending)
            .iter()
            .filter(|(p, _)| path::parent(p) == Some(dir))
            .map(|(p, ino)| (path::basename(p).to_string(), *ino))
            .collect()
    }

    /// Push `entries` and those of one wave of children (`names`, `paths`)
    /// from their `views`, once their pointers' targets and, unless left to
    /// the caller (`acls_later`), their ACLs are loaded. A child that fails
    /// fatally ends the wave short (the entries before it are pushed).
    async fn push_wave(
        &self,
        out: &Filler,
        mut entries: Vec<DirEntry>,
        (names, paths): (&[String], &[String]),
        views: Vec<Result<NodeView, ZkError>>,
        acls_later: Option<&mut Vec<String>>,
    ) -> Result<(), FsError> {
        self.prepare_pointers(paths, &views).await;
        // ACLs only ever take write bits away: a read-only mount shows none
        // anyway, so it never loads them (one request per child saved).
        if !self.config.presentation.read_only {
            let acl_less = paths
                .iter()
                .zip(&views)
                .filter(|(_, v)| v.as_ref().is_ok_and(|v| v.acl.is_none()))
                .map(|(p, _)| p.clone());
            match acls_later {
                Some(later) => later.extend(acl_less),
                None => self.settle_acls(acl_less.collect(), false).await,
            }
        }
        entries.reserve(views.len());
        let mut result = Ok(());
        for ((name, child), view) in names.iter().zip(paths).zip(views) {
            match self.child_entry(name, child, view) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        out.push(entries);
        result
    }

    /// A listing's first entries: `.`, `..` and the directory's data file
    /// (when it has data and no child of that name).
    fn head_entries(
        &self,
        ino: u64,
        dir: &str,
        view: &NodeView,
        names: &[String],
    ) -> Vec<DirEntry> {
        let mut entries = Vec::with_capacity(3);
        let dir_attr = self.attr_for(ino, dir, Role::Node, FileKind::Directory, view);
        entries.push(DirEntry {
            name: ".".into(),
            attr: dir_attr,
        });
        let parent_attr = match path::parent(dir).filter(|_| ino != ROOT_INO) {
            Some(parent) => {
                let pino = lock(&self.inodes).node_ino(parent);
                match (pino, self.store.peek(parent)) {
                    (Some(pino), Some(pview)) => {
                        self.attr_for(pino, parent, Role::Node, FileKind::Directory, &pview)
                    }
                    _ => dir_attr,
                }
            }
            None => dir_attr,
        };
        entries.push(DirEntry {
            name: "..".into(),
            attr: parent_attr,
        });
        if view.stat.data_length > 0 && !names.contains(&self.config.data_name) {
            let (dino, _, dview) = self.resolve_view(dir, Role::DataFile, view.clone());
            entries.push(DirEntry {
                name: self.config.data_name.clone(),
                attr: self.attr_for(dino, dir, Role::DataFile, FileKind::RegularFile, &dview),
            });
        }
        entries
    }

    /// Pointer children need their targets known to get their kind right
    /// (first the in-chroot readings, which decide what the target is).
    async fn prepare_pointers(&self, paths: &[String], views: &[Result<NodeView, ZkError>]) {
        let inside: Vec<String> = paths
            .iter()
            .zip(views)
            .filter_map(|(c, v)| v.as_ref().ok().and_then(|v| self.unchosen_inside(c, v)))
            .collect();
        if !inside.is_empty() {
            let _ = self.store.load_many(&inside).await;
        }
        let mut targets = Vec::new();
        for (child, view) in paths.iter().zip(views) {
            if let Ok(view) = view {
                if view.data.is_none() {
                    self.prepare_pointer(child, view).await;
                } else if let Some(t) = self.pointer_target(child, view)
                    && self.store.peek(&t).is_none()
                {
                    targets.push(t);
                }
            }
        }
        if !targets.is_empty() {
            // Missing targets are an answer too (dangling pointers are files).
            let _ = self.store.load_many(&targets).await;
        }
    }

    /// A listed child's entry from its load: `None` when it was deleted
    /// since the child list was read (left out); an error only when the
    /// listing cannot go on.
    fn child_entry(
        &self,
        name: &str,
        child: &str,
        result: Result<NodeView, ZkError>,
    ) -> Result<Option<DirEntry>, FsError> {
        let view = match result {
            Ok(view) => view,
            // Deleted since the listing: leave it out.
            Err(ZkError::NoNode) => return Ok(None),
            // Exists, but this session may not read it: list it with no
            // permissions (opening or stat-ing it then gives EACCES)
            // instead of failing the whole listing.
            Err(ZkError::NoAuth) => return Ok(Some(self.unread_entry(name.into(), child, 0))),
            // Known to exist (an event said so before ZooKeeper became
            // unreachable) but never read: list it, as a file with no
            // content yet, rather than fail the whole listing.
            Err(e) if e.is_connectivity() => {
                return Ok(Some(self.unread_entry(name.into(), child, !0o222)));
            }
            Err(e) => return Err(FsError::zk(child, "getData", e)),
        };
        let (cino, kind, view) = self.resolve_view(child, Role::Node, view);
        Ok(Some(DirEntry {
            name: name.into(),
            attr: self.attr_for(cino, child, Role::Node, kind, &view),
        }))
    }

    /// A listed child whose node cannot be read (no permission, or never
    /// read and ZooKeeper unreachable): a file with no content, its owner
    /// from `--attrs`, and its file mode masked by `perm_mask`.
    fn unread_entry(&self, name: String, child: &str, perm_mask: u16) -> DirEntry {
        let ino = lock(&self.inodes).resolve(child, Role::Node, FileKind::RegularFile, 0, 0);
        let p = attrs::owner(&self.config.presentation, child, FileKind::RegularFile);
        DirEntry {
            name,
            attr: Attr {
                ino,
                kind: FileKind::RegularFile,
                size: 0,
                mtime_ns: 0,
                crtime_ms: 0,
                perm: p.perm & perm_mask,
                nlink: 1,
                uid: p.uid,
                gid: p.gid,
            },
        }
    }

    /// The relative path a symlink (pointer node) shows.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(ino)?;
        let view = self.view(&inode.path).await?;
        self.prepare_pointer(&inode.path, &view).await;
        match self.pointer_target(&inode.path, &view) {
            Some(target) if inode.kind == FileKind::Symlink => {
                Ok(pointer::relative_link(&inode.path, &target).into_bytes())
            }
            _ => Err(FsError::NotSymlink(inode.path.to_string())),
        }
    }

    pub async fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>, FsError> {
        let inode = self.inode(ino)?;
        let name = name
            .to_str()
            .ok_or_else(|| FsError::NoXattr(inode.path.to_string()))?;
        if !name.starts_with("user.") {
            // No SELinux labels, POSIX ACLs or trusted attributes here.
            // ENOTSUP (not ENODATA) lets tools such as ls -l remember that
            // for the whole filesystem instead of asking for every file.
            return Err(FsError::XattrUnsupported(inode.path.to_string()));
        }
        if ino == ROOT_INO
            && let Some(key) = name.strip_prefix(xattr::MOUNT_PREFIX)
        {
            return self
                .mount_attributes()
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_bytes())
                .ok_or(FsError::NoXattr(inode.path.to_string()));
        }
        if name == xattr::ACL {
            let acl = self
                .store
                .acl(&inode.path)
                .await
                .map_err(|e| FsError::zk(&inode.path, "getACL", e))?;
            let text: Vec<String> = acl.iter().map(|a| a.to_string()).collect();
            return Ok(text.join(",").into_bytes());
        }
        if name == xattr::DATA && inode.kind == FileKind::Directory && inode.role == Role::Node {
            let (data, _) = self
                .store
                .data(&inode.path)
                .await
                .map_err(|e| FsError::zk(&inode.path, "getData", e))?;
            return Ok(data.to_vec());
        }
        let view = self.view(&inode.path).await?;
        xattr::stat_value(name, &view.stat)
            .map(String::into_bytes)
            .ok_or(FsError::NoXattr(inode.path.to_string()))
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<String>, FsError> {
        let inode = self.inode(ino)?;
        let mut names: Vec<String> = xattr::STAT_NAMES.iter().map(|s| s.to_string()).collect();
        names.push(xattr::ACL.to_string());
        if inode.kind == FileKind::Directory && inode.role == Role::Node {
            names.push(xattr::DATA.to_string());
        }
        if ino == ROOT_INO {
            for (key, _) in self.mount_attributes() {
                names.push(format!("{}{key}", xattr::MOUNT_PREFIX));
            }
        }
        Ok(names)
    }

    fn mount_attributes(&self) -> Vec<(String, String)> {
        let mut attrs = self.status.attributes();
        let (nodes, bytes) = self.store.usage();
        attrs.push(("cached_nodes".into(), nodes.to_string()));
        attrs.push(("cached_bytes".into(), bytes.to_string()));
        attrs.push(("inodes".into(), lock(&self.inodes).len().to_string()));
        let opens = match self.config.opens {
            Opens::Handles => "daemon",
            Opens::Kernel => "kernel",
        };
        attrs.push(("opens".into(), opens.into()));
        // Superseded versions only (a current one is the cache's bytes).
        let (held, held_bytes) = {
            let inodes = lock(&self.inodes);
            self.held
                .entries()
                .into_iter()
                .filter(|(ino, _)| !inodes.is_current(*ino))
                .fold((0, 0), |(n, b), (_, len)| (n + 1, b + len))
        };
        attrs.push(("held_versions".into(), held.to_string()));
        attrs.push(("held_bytes".into(), held_bytes.to_string()));
        let counts = self.registry.counts();
        attrs.push(("registrations".into(), counts.owned.to_string()));
        attrs.push(("registrations_pending".into(), counts.pending.to_string()));
        attrs.push((
            "registrations_held_by_others".into(),
            counts.held_by_others.to_string(),
        ));
        attrs
    }

    /// Apply a watch event: update the cache, drop kernel caches for what
    /// changed. Returns a path worth re-reading in the background.
    pub fn apply_event(&self, event: &NodeEvent) -> Option<String> {
        use crate::zk::backend::NodeEventKind;
        if event.kind == NodeEventKind::Deleted {
            self.registry.node_deleted(&event.path);
        }
        // The mount point then answers ENOENT while the session is fine:
        // say why, once each way.
        if event.path == self.config.root {
            match event.kind {
                NodeEventKind::Deleted => tracing::warn!(
                    root = %event.path,
                    "the mount root node was deleted; the mount shows nothing (ENOENT) until it is created again"
                ),
                NodeEventKind::Created => {
                    tracing::info!(root = %event.path, "the mount root node exists again")
                }
                NodeEventKind::DataChanged => {}
            }
        }
        if self.config.opens == Opens::Kernel
            && matches!(
                event.kind,
                NodeEventKind::DataChanged | NodeEventKind::Deleted
            )
        {
            self.hold_outgoing_version(&event.path);
        }
        let applied = self.store.apply_event(event);
        if applied.own
            && event.kind == NodeEventKind::DataChanged
            && self.shows_own_write(&event.path)
        {
            // The writer's inode keeps its number and shows the write
            // ([`Self::show_sent`], which invalidates it): the name need not
            // be looked up again (one `LOOKUP` less per same-mount write).
            for ino in lock(&self.inodes).current(&event.path) {
                self.invalidator.invalidate(Invalidation::Inode(ino));
            }
        } else {
            self.invalidate(&applied.changes);
        }
        applied.refresh.then(|| event.path.clone())
    }

    /// The inodes with a send through this mount in flight now (a leaf
    /// lock: taken before `inodes`, never under it).
    fn sending_now(&self) -> Vec<u64> {
        lock(&self.sending).keys().copied().collect()
    }

    /// Whether the name `path` is a file whose inode is this mount's
    /// writer's: a send through it is in flight, or it shows the version
    /// this mount wrote last. Its data change's echo then needs no new
    /// lookup of the name.
    fn shows_own_write(&self, path: &str) -> bool {
        let sending = self.sending_now();
        let shown = {
            let inodes = lock(&self.inodes);
            inodes.node_ino(path).and_then(|ino| {
                let inode = inodes.get(ino)?;
                (inode.kind == FileKind::RegularFile).then(|| (ino, inode.version()))
            })
        };
        match shown {
            Some((ino, _)) if sending.contains(&ino) => true,
            Some((_, Some(version))) => self.store.written_here(path, version),
            _ => false,
        }
    }

    /// Re-read a node after a data change so the next read hits the cache.
    pub async fn refresh(&self, path: &str) {
        self.store.refresh(path).await;
        // A lookup between the event and this re-read got the old view (an
        // empty node shown as a directory) and kept the kernel's entry: now
        // that the data is in, a change of kind expires it again.
        self.expire_if_kind_changed(path);
    }

    /// Expire the name `path` when the cached node is no longer of the kind
    /// its inode shows (the next lookup makes an inode of the new kind).
    pub(super) fn expire_if_kind_changed(&self, path: &str) {
        let shown = {
            let inodes = lock(&self.inodes);
            inodes
                .node_ino(path)
                .and_then(|ino| inodes.get(ino).map(|i| i.kind))
        };
        if let (Some(shown), Some(view)) = (shown, self.store.peek(path))
            && self.kind_of(path, &view) != shown
        {
            let mut out = Vec::new();
            self.collect_entry(&lock(&self.inodes), path, &mut out);
            for inv in out {
                self.invalidator.invalidate(inv);
            }
        }
    }

    /// Compare the cache with the server after events may have been lost;
    /// returns what changed.
    /// Resolves once every kernel invalidation queued so far has been
    /// handed to the kernel: after it, no read finds what they dropped.
    pub async fn invalidations_delivered(&self) {
        self.invalidator.delivered().await
    }

    pub async fn resync(&self) -> Vec<Change> {
        // What the resync found is as old as its answers; an event applied
        // since (a node created again after its read found it gone, a child
        // deleted after its directory was listed) is newer: such findings
        // are dropped, the event's own changes stand.
        let changes: Vec<Change> = self
            .store
            .resync()
            .await
            .into_iter()
            .filter(|c| self.still_true(c))
            .collect();
        debug!(changes = changes.len(), "cache resynchronised");
        self.invalidate(&changes);
        changes
    }

    /// Whether the cache still shows `change` (a node gone is neither
    /// cached nor listed by its parent; one created is one of the two).
    fn still_true(&self, change: &Change) -> bool {
        let p = change.path();
        let present = || {
            self.store.peek(p).is_some()
                || path::parent(p).is_some_and(|parent| {
                    self.store.lists_child(parent, path::basename(p), false) == Some(true)
                })
        };
        match change {
            Change::Data(_) => true,
            Change::Created(_) => present(),
            Change::Deleted(_) => !present(),
        }
    }

    fn invalidate(&self, changes: &[Change]) {
        let mut out = Vec::new();
        for change in changes {
            let p = change.path();
            match change {
                Change::Data(_) => self.collect_content_change(p, &mut out),
                Change::Created(_) | Change::Deleted(_) => {
                    self.collect_child_change(p, &mut out);
                    // Pointers to this node change kind (symlink <-> file).
                    let pointing: Vec<String> = lock(&self.pointers)
                        .by_target
                        .get(p)
                        .map(|s| s.iter().cloned().collect())
                        .unwrap_or_default();
                    for q in pointing {
                        let created = matches!(change, Change::Created(_));
                        self.rechoose_chroot_pointer(&q, p, created);
                        self.collect_content_change(&q, &mut out);
                    }
                    if matches!(change, Change::Deleted(_)) {
                        self.forget_node(p, &mut out);
                    }
                }
            }
        }
        for inv in out {
            self.invalidator.invalidate(inv);
        }
    }

    /// The node at `p` is gone: its inodes, remembered kind and pointer entry.
    fn forget_node(&self, p: &str, out: &mut Vec<Invalidation>) {
        let mut inodes = lock(&self.inodes);
        for ino in inodes.current(p) {
            out.push(Invalidation::Inode(ino));
        }
        self.collect_version_gone(&inodes, p, Role::Node, out);
        inodes.detach(p);
        drop(inodes);
        self.overlay.forget(p);
        self.unindex_pointer(&mut lock(&self.pointers), p);
    }

    /// `p` is no pointer (any more): drop it and its reverse entries.
    fn unindex_pointer(&self, index: &mut PointerIndex, p: &str) {
        // Its reverse entries are the ones indexing and re-choosing made:
        // under the chosen target and under the in-chroot reading.
        if let Some(entry) = index.by_path.remove(p) {
            for t in entry.target.into_iter().chain(entry.inside) {
                if let Some(set) = index.by_target.get_mut(&t) {
                    set.remove(p);
                    if set.is_empty() {
                        index.by_target.remove(&t);
                    }
                }
            }
        }
    }

    /// Kernel caches to drop after our own change at `p` (a create, delete or
    /// rename through this mount): `p`'s entry and its parent's listing.
    pub(super) fn invalidate_path(&self, p: &str) {
        let mut out = Vec::new();
        self.collect_child_change(p, &mut out);
        for ino in lock(&self.inodes).current(p) {
            out.push(Invalidation::Inode(ino));
        }
        for inv in out {
            self.invalidator.invalidate(inv);
        }
    }

    /// Drop a directory's cached attributes and listing.
    pub(super) fn invalidate_listing(&self, dir: &str) {
        let ino = lock(&self.inodes).node_ino(dir);
        if let Some(ino) = ino {
            self.invalidator.invalidate(Invalidation::Inode(ino));
        }
    }

    /// Drop the parent's cached attributes and listing after a create here.
    pub(super) fn invalidate_entry_of(&self, p: &str) {
        if let Some(parent) = path::parent(p) {
            let pino = lock(&self.inodes).node_ino(parent);
            if let Some(pino) = pino {
                self.invalidator.invalidate(Invalidation::Inode(pino));
            }
        }
    }

    /// The content (data) of `p` changed. A content inode shows one
    /// version, so `p`'s name must be looked up again (new number) and the
    /// old inode's pages go. A directory keeps its dentry (a shell's cwd
    /// must survive): only its attributes and its data file's entry go.
    fn collect_content_change(&self, p: &str, out: &mut Vec<Invalidation>) {
        // Before `inodes` (leaf locks): whether a directory shown here stays
        // one whatever its new data (the event comes before the data does):
        // it has children, or this mount made it a directory. A childless
        // node shown as a directory because its data was empty is a file
        // once it has data.
        let stays_dir = p == self.config.root
            || self.overlay.kind(p) == Some(FileKind::Directory)
            || self
                .store
                .peek(p)
                .is_some_and(|view| view.stat.num_children > 0);
        let inodes = lock(&self.inodes);
        for ino in inodes.current(p) {
            out.push(Invalidation::Inode(ino));
        }
        let node = inodes
            .node_ino(p)
            .and_then(|ino| inodes.get(ino).map(|i| (ino, i.kind)));
        match node {
            Some((ino, FileKind::Directory)) => {
                if !self.collect_version_gone(&inodes, p, Role::DataFile, out) {
                    out.push(Invalidation::Entry {
                        parent: ino,
                        name: self.config.data_name.clone(),
                    })
                }
                // It may stop being a directory: the name must be looked up
                // again (a new inode of the new kind), or `cat` keeps meeting
                // the directory until the entry expires (60 s). Expired, not
                // removed: a lookup naming the same directory keeps it.
                if !stays_dir {
                    self.collect_entry(&inodes, p, out);
                }
            }
            _ => {
                if !self.collect_version_gone(&inodes, p, Role::Node, out) {
                    self.collect_entry(&inodes, p, out)
                }
            }
        }
    }

    /// On a mount the kernel opens by itself, the file version at (`p`,
    /// `role`) is gone (changed or deleted): delete its dentry and unlink
    /// its inode, so the kernel forgets it (and [`super::held`] its bytes)
    /// once the last descriptor on it closes. Returns whether it did.
    fn collect_version_gone(
        &self,
        inodes: &InodeTable,
        p: &str,
        role: Role,
        out: &mut Vec<Invalidation>,
    ) -> bool {
        if self.config.opens != Opens::Kernel {
            return false;
        }
        let child = match role {
            Role::Node => inodes.node_ino(p),
            Role::DataFile => inodes
                .current(p)
                .into_iter()
                .find(|ino| inodes.get(*ino).is_some_and(|i| i.role == Role::DataFile)),
        };
        let Some((child, FileKind::RegularFile)) =
            child.and_then(|ino| inodes.get(ino).map(|i| (ino, i.kind)))
        else {
            return false;
        };
        let (parent, name) = match role {
            Role::DataFile => match inodes.node_ino(p) {
                Some(dir) => (dir, self.config.data_name.clone()),
                None => return false,
            },
            Role::Node => {
                let parent = path::parent(p).and_then(|d| inodes.node_ino(d));
                match parent {
                    Some(parent) if p != self.config.root => {
                        (parent, path::basename(p).to_string())
                    }
                    _ => return false,
                }
            }
        };
        out.push(Invalidation::Delete {
            parent,
            child,
            name,
        });
        true
    }

    /// `p` appeared or vanished: its own entry (a negative or stale dentry)
    /// and its parent's attributes and cached listing. The parent's own
    /// dentry is dropped only when the change makes it another kind (a
    /// file that got its first child), never for a directory that stays one.
    fn collect_child_change(&self, p: &str, out: &mut Vec<Invalidation>) {
        let inodes = lock(&self.inodes);
        self.collect_entry(&inodes, p, out);
        let Some(parent) = path::parent(p).filter(|d| path::is_within(d, &self.config.root)) else {
            return;
        };
        let Some(pino) = inodes.node_ino(parent) else {
            return;
        };
        out.push(Invalidation::Inode(pino));
        let shown = inodes.get(pino).map(|i| i.kind);
        drop(inodes);
        if pino != ROOT_INO
            && let (Some(shown), Some(view)) = (shown, self.store.peek(parent))
            && self.kind_of(parent, &view) != shown
        {
            let inodes = lock(&self.inodes);
            self.collect_entry(&inodes, parent, out);
        }
    }

    /// The dentry of `p` in its parent directory.
    fn collect_entry(&self, inodes: &InodeTable, p: &str, out: &mut Vec<Invalidation>) {
        if p == self.config.root {
            return;
        }
        if let Some(parent) = path::parent(p)
            && let Some(pino) = inodes.node_ino(parent)
        {
            out.push(Invalidation::Entry {
                parent: pino,
                name: path::basename(p).to_string(),
            });
        }
    }
}

/// Whether thread `tid` (a request's caller) has a descriptor open for
/// writing on inode `ino` of the mount `mount_id`, by `/proc/TID/fdinfo`
/// (which, unlike following `/proc/TID/fd`, never calls into this
/// filesystem; inode numbers here are small, so the mount must match too:
/// `/dev/null` is inode 3 on devtmpfs). At most [`FDINFO_SCAN_MAX`]
/// descriptors are looked at (a few µs each, on the thread serving the
/// request): beyond them, or unreadable (the thread is gone), no.
fn holds_for_writing(tid: u32, mount_id: u64, ino: u64) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{tid}/fdinfo")) else {
        return false;
    };
    fds.flatten().take(FDINFO_SCAN_MAX).any(|fd| {
        let Ok(info) = std::fs::read_to_string(fd.path()) else {
            return false;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let number = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok());
        let writing = field("flags:")
            .and_then(|v| i32::from_str_radix(&v, 8).ok())
            .is_some_and(|flags| flags & libc::O_ACCMODE != libc::O_RDONLY);
        number("mnt_id:") == Some(mount_id) && number("ino:") == Some(ino) && writing
    })
}

/// How many of a caller's descriptors [`holds_for_writing`] reads at most.
const FDINFO_SCAN_MAX: usize = 1024;

#[cfg(test)]
mod fdinfo_tests {
    use super::holds_for_writing;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_descriptor_counts_only_on_its_own_mount() {
        // /dev/null open for writing: its inode number is small, like
        // zkfs's; only its own mount id makes it a holder.
        let null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        let ino = null.metadata().expect("fstat").ino();
        let fdinfo = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            std::os::fd::AsRawFd::as_raw_fd(&null)
        ))
        .expect("fdinfo");
        let mnt: u64 = fdinfo
            .lines()
            .find_map(|l| l.strip_prefix("mnt_id:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("mnt_id");
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(holds_for_writing(tid, mnt, ino));
        assert!(
            !holds_for_writing(tid, mnt + 1_000_000, ino),
            "another mount's inode"
        );
        assert!(!holds_for_writing(tid, mnt, ino + 1_000_000));
        drop(null);
    }
}
