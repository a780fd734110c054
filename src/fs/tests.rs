//! Tests of the filesystem core against the in-memory fake ZooKeeper: the
//! mapping rules, cache hits without round trips, coherence from events and
//! resync, and a randomized reference-model test in which "another client"
//! changes the tree (with events delivered, or lost and recovered by resync).

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};

use super::inode::ROOT_INO;
use super::*;
use crate::fs::attr::Presentation;
use crate::zk::fake::FakeZk;
use crate::zk::{NodeEvent, Store};

/// Records invalidations; `delivered` resolves while the gate is open (it
/// is, unless a test closes it: the kernel has not taken them yet).
#[derive(Clone)]
struct Recorder(
    Arc<Mutex<Vec<Invalidation>>>,
    Arc<tokio::sync::watch::Sender<bool>>,
);

impl Default for Recorder {
    fn default() -> Self {
        Recorder(
            Default::default(),
            Arc::new(tokio::sync::watch::channel(true).0),
        )
    }
}

impl Invalidator for Recorder {
    fn invalidate(&self, invalidation: Invalidation) {
        self.0.lock().expect("recorder lock").push(invalidation);
    }

    fn delivered(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        let mut open = self.1.subscribe();
        Box::pin(async move {
            let _ = open.wait_for(|open| *open).await;
        })
    }
}

impl Recorder {
    fn take(&self) -> Vec<Invalidation> {
        std::mem::take(&mut *self.0.lock().expect("recorder lock"))
    }

    /// Hold (`false`) or let through (`true`) deliveries.
    fn deliver(&self, open: bool) {
        self.1.send_replace(open);
    }
}

struct NoStatus;

impl MountStatus for NoStatus {
    fn attributes(&self) -> Vec<(String, String)> {
        vec![("state".into(), "connected".into())]
    }
}

pub(super) struct Harness {
    pub(super) zk: Arc<FakeZk>,
    pub(super) fs: Arc<ZkFs<Arc<FakeZk>>>,
    invalidations: Recorder,
}

fn harness_with_limit(limit: usize) -> Harness {
    harness_with(limit, crate::fs::Opens::Handles)
}

/// A read-only mount whose files the kernel opens by itself.
pub(super) fn kernel_opens_harness() -> Harness {
    harness_with(1 << 20, crate::fs::Opens::Kernel)
}

/// A mount whose core runs under its `Arc`, as in the daemon: background
/// work (a listing's load, its ACLs) is spawned instead of run inline.
pub(super) fn registered_harness(opens: crate::fs::Opens) -> Harness {
    let h = harness_with(1 << 20, opens);
    h.fs.register_arc();
    h
}

fn harness_with(limit: usize, opens: crate::fs::Opens) -> Harness {
    let zk = Arc::new(FakeZk::new());
    let invalidations = Recorder::default();
    let fs = Arc::new(ZkFs::new(
        Store::new(zk.clone(), limit).with_connect_wait(std::time::Duration::from_millis(300)),
        FsConfig {
            root: "/".into(),
            data_name: ".data".into(),
            presentation: Presentation {
                uid: 1000,
                gid: 1000,
                file_mode: 0o644,
                dir_mode: 0o755,
                read_only: opens == crate::fs::Opens::Kernel,
                identity: None,
                attrs: Default::default(),
            },
            max_data: 1000,
            last_writer_wins: false,
            chrooted: false,
            chroot: String::new(),
            chmod_ignore: false,
            pointers: true,
            mountpoint: "/mnt/zk".into(),
            ephemeral: vec![super::glob::DirGlob::parse("services/*/servers").expect("glob")],
            opens,
        },
        Box::new(invalidations.clone()),
        Box::new(NoStatus),
    ));
    Harness {
        zk,
        fs,
        invalidations,
    }
}

pub(super) fn harness() -> Harness {
    harness_with_limit(1 << 20)
}

impl Harness {
    /// "Another client" changes the tree; the watch delivers the events.
    pub(super) fn apply(&self, events: Result<Vec<NodeEvent>, crate::zk::ZkError>) {
        for event in events.expect("fake zk mutation") {
            self.fs.apply_event(&event);
        }
    }

    /// A node at `path` with `content`, and a descriptor reading it through
    /// the inode's pages: (its inode, the reader).
    async fn node_with_page_reader(&self, path: &str, content: &[u8]) -> (u64, Opened) {
        self.apply(self.zk.create(path, content, 0));
        let ino = self.resolve(path).await.expect("stat").ino;
        let reader = self
            .fs
            .open(ino, OpenMode::default(), 1)
            .await
            .expect("open the reader");
        assert_eq!(reader.cache, PageCache::Keep);
        (ino, reader)
    }

    async fn resolve(&self, path: &str) -> Result<Attr, FsError> {
        let mut ino = ROOT_INO;
        let mut attr = self.fs.getattr(ROOT_INO).await?;
        for element in path.split('/').filter(|e| !e.is_empty()) {
            attr = self.fs.lookup(ino, OsStr::new(element)).await?.attr;
            ino = attr.ino;
        }
        Ok(attr)
    }

    async fn cat(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let attr = self.resolve(path).await?;
        let fh = self.fs.open(attr.ino, OpenMode::default(), 1).await?.fh;
        let (data, start, end) = self.fs.read(fh, 0, 1 << 30).await?;
        self.fs.release(fh).await?;
        Ok(data[start..end].to_vec())
    }

    async fn ls(&self, path: &str) -> Result<Vec<(String, FileKind)>, FsError> {
        let attr = self.resolve(path).await?;
        let fh = self.fs.opendir(attr.ino)?;
        let listing = self.fs.readdir(fh, 0).await?;
        self.fs.releasedir(fh);
        Ok(listing
            .iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| (e.name.clone(), e.attr.kind))
            .collect())
    }
}

fn names(listing: &[(String, FileKind)]) -> Vec<&str> {
    listing.iter().map(|(n, _)| n.as_str()).collect()
}

#[tokio::test]
async fn mapping_rules() {
    let h = harness();
    h.apply(h.zk.create("/config", b"", 0));
    h.apply(h.zk.create("/config/app.json", b"{\"a\":1}", 0));
    h.apply(h.zk.create("/svc", b"team", 0));
    h.apply(h.zk.create("/svc/web", b"", 0));
    h.apply(h.zk.create("/svc/web/10.0.0.5:8080", b"", 77));

    let app = h.resolve("/config/app.json").await.expect("file");
    assert_eq!(app.kind, FileKind::RegularFile);
    assert_eq!(app.size, 7);
    assert_eq!(app.perm, 0o644);
    assert_eq!(h.cat("/config/app.json").await.expect("cat"), b"{\"a\":1}");

    // A directory node with data shows it as .data; empty persistent → directory.
    assert_eq!(
        h.resolve("/svc").await.expect("dir").kind,
        FileKind::Directory
    );
    assert_eq!(names(&h.ls("/svc").await.expect("ls")), [".data", "web"]);
    assert_eq!(h.cat("/svc/.data").await.expect(".data"), b"team");
    // An ephemeral node is a file even when empty.
    let eph = h
        .resolve("/svc/web/10.0.0.5:8080")
        .await
        .expect("ephemeral");
    assert_eq!(eph.kind, FileKind::RegularFile);
    assert_eq!(eph.size, 0);
    // .data of a directory without data: not listed, not found by lookup
    // (so cp -r can create it exclusively); open(O_CREAT) finds it.
    assert_eq!(names(&h.ls("/config").await.expect("ls")), ["app.json"]);
    assert!(matches!(
        h.cat("/config/.data").await,
        Err(FsError::NotFound(_))
    ));
    // Names ZooKeeper cannot store cannot exist.
    assert_eq!(
        h.resolve("/config/a\nb").await.map(|_| ()),
        Err(FsError::NotFound("/config/a\nb".into()))
    );
}

#[tokio::test]
async fn real_child_named_like_data_file_wins() {
    let h = harness();
    h.apply(h.zk.create("/d", b"own", 0));
    h.apply(h.zk.create("/d/.data", b"child", 0));
    assert_eq!(names(&h.ls("/d").await.expect("ls")), [".data"]);
    assert_eq!(h.cat("/d/.data").await.expect("cat"), b"child");
    assert_eq!(
        h.fs.getxattr(
            h.resolve("/d").await.expect("d").ino,
            OsStr::new("user.zk.data")
        )
        .await
        .expect("xattr"),
        b"own"
    );
}

#[tokio::test]
async fn readers_of_a_changed_node_share_one_refetch_without_acl() {
    let h = harness();
    h.apply(h.zk.create("/a", b"one", 0));
    assert_eq!(h.cat("/a").await.expect("cat"), b"one");
    h.apply(h.zk.set("/a", b"two"));
    h.zk.delay_reads(20);
    let before = h.zk.requests();
    let (x, y, z) = tokio::join!(h.cat("/a"), h.cat("/a"), h.cat("/a"));
    for data in [x, y, z] {
        assert_eq!(data.expect("cat"), b"two");
    }
    // One getData for all three readers; the ACL version did not change,
    // so the ACL is not read again.
    assert_eq!(h.zk.requests() - before, 1);
}

#[tokio::test]
async fn cached_reads_make_no_requests() {
    let h = harness();
    h.apply(h.zk.create("/a", b"x", 0));
    h.apply(h.zk.create("/a/b", b"hello", 0));
    assert_eq!(h.cat("/a/b").await.expect("cat"), b"hello");
    h.ls("/a").await.expect("ls");
    let before = h.zk.requests();
    for _ in 0..10 {
        assert_eq!(h.cat("/a/b").await.expect("cat"), b"hello");
        h.ls("/a").await.expect("ls");
        h.resolve("/a/b").await.expect("stat");
    }
    assert_eq!(
        h.zk.requests(),
        before,
        "cache hits must not contact ZooKeeper"
    );
}

const APPEND: OpenMode = OpenMode {
    write: true,
    truncate: false,
    append: true,
};

/// `echo line >> log` on two hosts at once: O_APPEND means "at the end,
/// whatever is there", so another client's change since the open is no
/// conflict for an append-only handle: its bytes follow the node's new
/// content (read fresh, sent versioned again). Two appenders lose no line.
#[tokio::test]
async fn an_append_after_another_clients_change_goes_after_it() {
    let h = harness();
    h.apply(h.zk.create("/log", b"one\n", 0));
    let ino = h.resolve("/log").await.expect("log").ino;
    let fh = h.fs.open(ino, APPEND, 1).await.expect("open").fh;
    h.fs.write(fh, 0, b"mine\n").await.expect("append");
    // Not delivered: this mount still has version 0.
    h.zk.set("/log", b"one\ntheirs\n").expect("their append");
    h.fs.flush(fh).await.expect("close");
    assert_eq!(
        h.zk.data("/log").as_deref(),
        Some(&b"one\ntheirs\nmine\n"[..])
    );
    // Appended again through the same descriptor: after what it sent.
    h.fs.write(fh, 0, b"more\n").await.expect("append");
    h.fs.flush(fh).await.expect("close");
    assert_eq!(
        h.zk.data("/log").as_deref(),
        Some(&b"one\ntheirs\nmine\nmore\n"[..])
    );
    h.fs.release(fh).await.expect("release");
}

/// A handle that truncated is not append-only: a change by another client
/// is the usual conflict.
#[tokio::test]
async fn an_append_handle_that_truncated_still_conflicts() {
    let h = harness();
    h.apply(h.zk.create("/log", b"one\n", 0));
    let ino = h.resolve("/log").await.expect("log").ino;
    let fh = h.fs.open(ino, APPEND, 1).await.expect("open").fh;
    h.fs.setattr(ino, None, None, None, Some(0), Some(fh))
        .await
        .expect("ftruncate");
    h.fs.write(fh, 0, b"mine\n").await.expect("append");
    h.zk.set("/log", b"theirs\n").expect("their change");
    let err = h.fs.flush(fh).await.expect_err("conflict");
    assert_eq!(err.errno(), libc::ESTALE, "{err}");
    assert_eq!(h.zk.data("/log").as_deref(), Some(&b"theirs\n"[..]));
}

/// An `open` that lands on an inode whose version another client replaced
/// before the kernel looked the name up again reads the current version
/// with direct I/O (`PageCache::Bypass`); `fstat` on that descriptor must
/// work too (`cat` and `sed -i` call it first: "Stale file handle", "not a
/// regular file"), showing the version the descriptor reads, since no
/// descriptor reads the old version through the inode's pages or size.
#[tokio::test]
async fn fstat_works_on_a_descriptor_opened_on_a_replaced_version() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let old = h.resolve("/cfg").await.expect("stat").ino;
    h.apply(h.zk.set("/cfg", b"version-2"));
    for mode in [OpenMode::default(), WRITE_TRUNC] {
        let opened = h.fs.open(old, mode, 1).await.expect("open");
        assert_eq!(opened.cache, PageCache::Bypass, "{mode:?}");
        let attr = h.fs.getattr(old).await.expect("fstat after open");
        let size = if mode.truncate {
            0
        } else {
            b"version-2".len() as u64
        };
        assert_eq!(attr.size, size, "{mode:?}");
        assert_eq!(attr.ino, old);
        h.fs.release(opened.fh).await.expect("release");
        if !mode.write {
            // No descriptor left: the old inode is stale again. (The
            // writer's release sends its truncation, and its inode then
            // shows what it wrote.)
            let stale = h.fs.getattr(old).await.map_err(|e| e.errno()).err();
            assert_eq!(stale, Some(libc::ESTALE));
        }
    }
}

/// While a descriptor still reads the old version through the inode's
/// pages, a later descriptor on it that reads the new version directly
/// must not give the inode the new version's size: `fstat` shows the old.
#[tokio::test]
async fn a_bypass_descriptor_does_not_size_an_inode_another_descriptor_reads() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let old = h.resolve("/cfg").await.expect("stat").ino;
    let first =
        h.fs.open(old, OpenMode::default(), 1)
            .await
            .expect("open v1");
    assert_eq!(first.cache, PageCache::Keep);
    h.apply(h.zk.set("/cfg", b"version-2"));
    let second =
        h.fs.open(old, OpenMode::default(), 2)
            .await
            .expect("open again");
    assert_eq!(second.cache, PageCache::Bypass);
    assert_eq!(h.fs.getattr(old).await.expect("fstat").size, 2, "v1's size");
    h.fs.release(first.fh).await.expect("release");
    h.fs.release(second.fh).await.expect("release");
}

/// A writer opening an inode whose pages a reader on this mount uses is
/// moved (`ESTALE`, which the kernel retries after looking the name up
/// again) to a fresh inode of the same version; readers opening that one
/// before the writer does read directly, so the writer's retry never
/// finds a page-cache reader there. A reader opening while the writer is
/// open reads directly too.
#[tokio::test]
async fn a_writer_never_shares_an_inode_with_a_page_cache_reader() {
    let h = harness();
    let (old, reader) = h.node_with_page_reader("/cfg", b"v1").await;
    let moved = h.fs.open(old, WRITE_TRUNC, 2).await.map(|o| o.fh);
    assert_eq!(moved.map_err(|e| e.errno()), Err(libc::ESTALE));
    let fresh = h.resolve("/cfg").await.expect("look up again").ino;
    assert_ne!(fresh, old, "the name keeps the reader's inode");
    let early =
        h.fs.open(fresh, OpenMode::default(), 3)
            .await
            .expect("a reader before the writer's retry");
    assert_eq!(
        early.cache,
        PageCache::Bypass,
        "the fresh inode is the writer's"
    );
    let writer = h.fs.open(fresh, WRITE_TRUNC, 2).await.expect("the retry");
    assert_eq!(writer.cache, PageCache::Drop);
    let during =
        h.fs.open(fresh, OpenMode::default(), 4)
            .await
            .expect("a reader while the writer is open");
    assert_eq!(during.cache, PageCache::Bypass);
    h.fs.write(writer.fh, 0, b"v2").await.expect("write");
    h.fs.flush(writer.fh).await.expect("close");
    // The reader kept its version.
    let (data, start, end) = h.fs.read(reader.fh, 0, 100).await.expect("read");
    assert_eq!(&data[start..end], b"v1");
    for fh in [reader.fh, early.fh, writer.fh, during.fh] {
        h.fs.release(fh).await.expect("release");
    }
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"v2"[..]));
}

/// After a send, the writer's inode keeps its number and shows the sent
/// version, but its kernel pages and attributes (the writer's doing, and
/// maybe an attribute reply computed before the send) are invalidated, and
/// readers read directly until the kernel has that invalidation: from then
/// on it ignores every older attribute reply for the inode.
#[tokio::test]
async fn after_a_send_readers_keep_off_the_writers_pages_until_the_kernel_has_the_invalidation() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let ino = h.resolve("/cfg").await.expect("stat").ino;
    h.invalidations.deliver(false);
    let writer = h.fs.open(ino, WRITE_TRUNC, 1).await.expect("open");
    h.fs.write(writer.fh, 0, b"version-2").await.expect("write");
    h.invalidations.take();
    h.fs.flush(writer.fh).await.expect("close");
    h.fs.release(writer.fh).await.expect("release");
    assert!(
        h.invalidations
            .take()
            .iter()
            .any(|i| matches!(i, Invalidation::Inode(i) if *i == ino)),
        "the writer's inode is invalidated"
    );
    let same = h.resolve("/cfg").await.expect("look up again");
    assert_eq!(same.ino, ino, "the writer keeps its number");
    assert_eq!(same.size, b"version-2".len() as u64);
    let early =
        h.fs.open(ino, OpenMode::default(), 2)
            .await
            .expect("open before the kernel has it");
    assert_eq!(early.cache, PageCache::Bypass);
    let (data, start, end) = h.fs.read(early.fh, 0, 100).await.expect("read");
    assert_eq!(&data[start..end], b"version-2");
    h.invalidations.deliver(true);
    let mut cache = PageCache::Bypass;
    for _ in 0..100 {
        let opened = h.fs.open(ino, OpenMode::default(), 3).await.expect("open");
        h.fs.release(opened.fh).await.expect("release");
        cache = opened.cache;
        if cache == PageCache::Keep {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        cache,
        PageCache::Keep,
        "once delivered, readers use the pages"
    );
}

/// A write open first waits (a little) for the page-cache readers of its
/// inode to close, so that it keeps the inode and its number (vim checks
/// it); readers opening meanwhile read directly.
#[tokio::test]
async fn a_writer_waits_for_page_cache_readers_to_close_and_keeps_the_inode() {
    let h = harness();
    let (ino, reader) = h.node_with_page_reader("/cfg", b"v1").await;
    let close_reader = async {
        tokio::task::yield_now().await;
        let meanwhile =
            h.fs.open(ino, OpenMode::default(), 3)
                .await
                .expect("a reader while the writer waits");
        assert_eq!(meanwhile.cache, PageCache::Bypass);
        h.fs.release(reader.fh).await.expect("close the reader");
        meanwhile.fh
    };
    let (writer, meanwhile) = tokio::join!(h.fs.open(ino, WRITE_TRUNC, 2), close_reader);
    let writer = writer.expect("the writer waits, then opens the same inode");
    assert_eq!(writer.cache, PageCache::Drop);
    h.fs.write(writer.fh, 0, b"v2").await.expect("write");
    h.fs.flush(writer.fh).await.expect("close");
    h.fs.release(writer.fh).await.expect("release");
    h.fs.release(meanwhile).await.expect("release");
    assert_eq!(h.resolve("/cfg").await.expect("stat").ino, ino);
}

/// A close returns once the kernel has the invalidation of the writer's
/// inode, so a `stat` right after it is never answered from an older
/// reply's size.
#[tokio::test]
async fn a_close_returns_once_the_kernel_has_dropped_the_inodes_attributes() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let ino = h.resolve("/cfg").await.expect("stat").ino;
    let writer = h.fs.open(ino, WRITE_TRUNC, 1).await.expect("open");
    h.fs.write(writer.fh, 0, b"version-2").await.expect("write");
    h.invalidations.deliver(false);
    let fs = h.fs.clone();
    let close = tokio::spawn(async move { fs.flush(writer.fh).await });
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        h.zk.data("/cfg").as_deref(),
        Some(&b"version-2"[..]),
        "sent"
    );
    assert!(!close.is_finished(), "the close waits for the delivery");
    h.invalidations.deliver(true);
    close.await.expect("join").expect("close");
}

/// Two writers moved off a reader's inode: the fresh inode stays reserved
/// until both came back, so a reader between the first writer's close and
/// the second's retry does not take its pages (the second retry would meet
/// it and fail with ESTALE, which the kernel does not retry twice).
#[tokio::test]
async fn a_fresh_inode_stays_reserved_until_every_moved_writer_came_back() {
    let h = harness();
    let (old, reader) = h.node_with_page_reader("/cfg", b"v1").await;
    for pid in [2, 3] {
        let moved = h.fs.open(old, WRITE_TRUNC, pid).await.map(|o| o.fh);
        assert_eq!(moved.map_err(|e| e.errno()), Err(libc::ESTALE));
    }
    let fresh = h.resolve("/cfg").await.expect("look up again").ino;
    let first = h.fs.open(fresh, WRITE_TRUNC, 2).await.expect("first retry");
    h.fs.write(first.fh, 0, b"v2").await.expect("write");
    h.fs.flush(first.fh).await.expect("close");
    h.fs.release(first.fh).await.expect("release");
    let between =
        h.fs.open(fresh, OpenMode::default(), 4)
            .await
            .expect("a reader between the retries");
    assert_eq!(between.cache, PageCache::Bypass);
    let second =
        h.fs.open(fresh, WRITE_TRUNC, 3)
            .await
            .expect("second retry");
    h.fs.release(second.fh).await.expect("release");
    h.fs.release(between.fh).await.expect("release");
    h.fs.release(reader.fh).await.expect("release");
}

/// A `SETATTR`'s answer is applied by the kernel unchecked: until it is in
/// and an invalidation after it delivered, readers keep off the pages.
#[tokio::test]
async fn readers_keep_off_the_pages_until_a_setattrs_answer_is_followed_by_an_invalidation() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let ino = h.resolve("/cfg").await.expect("stat").ino;
    h.invalidations.deliver(false);
    h.fs.setattr(ino, None, None, None, None, None)
        .await
        .expect("utimes");
    let early = h.fs.open(ino, OpenMode::default(), 1).await.expect("open");
    assert_eq!(early.cache, PageCache::Bypass);
    h.invalidations.deliver(true);
    let mut cache = PageCache::Bypass;
    for _ in 0..100 {
        let opened = h.fs.open(ino, OpenMode::default(), 2).await.expect("open");
        h.fs.release(opened.fh).await.expect("release");
        cache = opened.cache;
        if cache == PageCache::Keep {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(cache, PageCache::Keep);
}

/// A later chunk of a listing answers with what the file shows now: a send
/// since the pass was read changed its size.
#[tokio::test]
async fn a_listed_entry_shows_the_size_a_later_send_made() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let listed = h.resolve("/cfg").await.expect("stat");
    let writer = h.fs.open(listed.ino, WRITE_TRUNC, 1).await.expect("open");
    h.fs.write(writer.fh, 0, b"version-2").await.expect("write");
    assert_eq!(
        h.fs.listed_attr(&listed).size,
        b"version-2".len() as u64,
        "unsent"
    );
    h.fs.flush(writer.fh).await.expect("close");
    h.fs.release(writer.fh).await.expect("release");
    assert_eq!(
        h.fs.listed_attr(&listed).size,
        b"version-2".len() as u64,
        "sent"
    );
}

/// `truncate -s` by path while a reader uses the inode's pages: moved to a
/// fresh inode like a writer's open (the kernel retries `truncate(2)`),
/// nothing sent; the retry truncates.
#[tokio::test]
async fn a_truncate_by_path_moves_off_a_page_cache_readers_inode() {
    let h = harness();
    let (old, reader) = h.node_with_page_reader("/cfg", b"hello world").await;
    let moved = h.fs.setattr(old, None, None, None, Some(5), None).await;
    assert_eq!(moved.map_err(|e| e.errno()).err(), Some(libc::ESTALE));
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"hello world"[..]));
    let fresh = h.resolve("/cfg").await.expect("look up again").ino;
    assert_ne!(fresh, old);
    let cut =
        h.fs.setattr(fresh, None, None, None, Some(5), None)
            .await
            .expect("the retry");
    assert_eq!(cut.size, 5);
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"hello"[..]));
    let (data, start, end) = h.fs.read(reader.fh, 0, 100).await.expect("read");
    assert_eq!(&data[start..end], b"hello world");
}

#[tokio::test]
async fn another_clients_changes_become_visible() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let before = h.resolve("/cfg").await.expect("stat");
    assert_eq!(h.cat("/cfg").await.expect("cat"), b"v1");
    h.invalidations.take();

    h.apply(h.zk.set("/cfg", b"version-2"));
    assert!(
        h.invalidations
            .take()
            .contains(&Invalidation::Inode(before.ino)),
        "data change invalidates the inode"
    );
    assert_eq!(h.cat("/cfg").await.expect("cat"), b"version-2");
    let after = h.resolve("/cfg").await.expect("stat");
    // Another client's version is another inode: the old one keeps its
    // size and pages for whoever still reads it, and is stale for the rest.
    assert_ne!(after.ino, before.ino);
    assert!(matches!(
        h.fs.getattr(before.ino).await,
        Err(FsError::Superseded(_))
    ));
    assert_eq!(after.size, 9);
    assert!(
        after.mtime_ns > before.mtime_ns,
        "mtime grows even within one millisecond"
    );

    h.apply(h.zk.create("/new", b"n", 0));
    assert_eq!(names(&h.ls("/").await.expect("ls")), ["cfg", "new"]);

    h.apply(h.zk.delete("/cfg"));
    assert!(h.invalidations.take().contains(&Invalidation::Entry {
        parent: ROOT_INO,
        name: "cfg".into()
    }));
    assert!(matches!(h.resolve("/cfg").await, Err(FsError::NotFound(_))));
    assert!(matches!(
        h.fs.getattr(before.ino).await,
        Err(FsError::NotFound(_))
    ));
}

#[tokio::test]
async fn file_gaining_a_child_becomes_a_directory_with_a_new_inode() {
    let h = harness();
    h.apply(h.zk.create("/f", b"data", 0));
    let file = h.resolve("/f").await.expect("file");
    assert_eq!(file.kind, FileKind::RegularFile);
    h.apply(h.zk.create("/f/child", b"c", 0));
    let dir = h.resolve("/f").await.expect("dir");
    assert_eq!(dir.kind, FileKind::Directory);
    assert_ne!(dir.ino, file.ino);
    assert!(matches!(
        h.fs.getattr(file.ino).await,
        Err(FsError::Stale(_))
    ));
    assert_eq!(names(&h.ls("/f").await.expect("ls")), [".data", "child"]);

    // Deleted and re-created: a new inode too.
    h.apply(h.zk.delete("/f/child"));
    h.apply(h.zk.create("/f/child", b"again", 0));
    let child = h.resolve("/f/child").await.expect("child");
    h.apply(h.zk.delete("/f/child"));
    h.apply(h.zk.create("/f/child", b"third", 0));
    assert_ne!(h.resolve("/f/child").await.expect("child").ino, child.ino);
}

#[tokio::test]
async fn disconnected_serves_cache_and_fails_uncached() {
    let h = harness();
    h.apply(h.zk.create("/a", b"1", 0));
    h.apply(h.zk.create("/b", b"2", 0));
    assert_eq!(h.cat("/a").await.expect("cat"), b"1");
    h.zk.set_connected(false);
    assert_eq!(h.cat("/a").await.expect("cached"), b"1");
    let err = h.cat("/b").await.expect_err("uncached while down");
    assert_eq!(err.errno(), libc::EIO);
    // A stale entry is still served while down.
    h.fs.apply_event(&NodeEvent {
        kind: crate::zk::backend::NodeEventKind::DataChanged,
        path: "/a".into(),
    });
    assert_eq!(h.cat("/a").await.expect("stale but served"), b"1");
}

#[tokio::test]
async fn resync_recovers_lost_events() {
    let h = harness();
    h.apply(h.zk.create("/a", b"1", 0));
    h.apply(h.zk.create("/gone", b"x", 0));
    assert_eq!(names(&h.ls("/").await.expect("ls")), ["a", "gone"]);
    assert_eq!(h.cat("/a").await.expect("cat"), b"1");
    // Changes while disconnected: the events are lost.
    h.zk.set("/a", b"2").expect("set");
    h.zk.delete("/gone").expect("delete");
    h.zk.create("/fresh", b"f", 0).expect("create");
    h.invalidations.take();
    h.fs.resync().await;
    assert!(!h.invalidations.take().is_empty());
    assert_eq!(h.cat("/a").await.expect("cat"), b"2");
    assert_eq!(names(&h.ls("/").await.expect("ls")), ["a", "fresh"]);
}

/// A node deleted in the gap whose resync answer said so, created again
/// (its event applied) while the resync still lists its directory.
#[tokio::test(start_paused = true)]
async fn a_node_created_again_during_a_resync_keeps_its_inode_and_is_not_reported_gone() {
    use crate::zk::store::Change;
    let h = harness();
    h.apply(h.zk.create("/d", b"", 0));
    h.apply(h.zk.create("/d/a", b"1", 0));
    h.ls("/d").await.expect("ls");
    h.resolve("/d/a").await.expect("a");
    // The gap: /d/a deleted, its event lost; the resync lists /d again
    // (its pzxid moved), slowly.
    h.zk.delete("/d/a").expect("delete");
    h.zk.delay_listings(100);
    let again = async {
        // The resync's multi-read (answered at once) found /d/a gone.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        h.apply(h.zk.create("/d/a", b"2", 0));
        h.resolve("/d/a").await.expect("again").ino
    };
    let (changes, ino) = tokio::join!(h.fs.resync(), again);
    assert!(!changes.contains(&Change::Deleted("/d/a".into())));
    assert_eq!(
        h.resolve("/d/a").await.expect("after").ino,
        ino,
        "the resync's older 'deleted' detached the new node's inode"
    );
    assert_eq!(h.cat("/d/a").await.expect("cat"), b"2");
}

#[tokio::test]
async fn cache_size_bounds_data_and_reloads_evicted() {
    let h = harness_with_limit(10);
    h.apply(h.zk.create("/a", b"123456", 0));
    h.apply(h.zk.create("/b", b"abcdef", 0));
    assert_eq!(h.cat("/a").await.expect("a"), b"123456");
    assert_eq!(h.cat("/b").await.expect("b"), b"abcdef");
    assert!(h.fs.store().usage().1 <= 10);
    assert_eq!(h.cat("/a").await.expect("a again"), b"123456");
}

#[tokio::test]
async fn xattrs() {
    let h = harness();
    h.apply(h.zk.create("/n", b"abc", 0));
    h.apply(h.zk.set("/n", b"abcd"));
    let ino = h.resolve("/n").await.expect("n").ino;
    let get = |name: &'static str| h.fs.getxattr(ino, OsStr::new(name));
    assert_eq!(get("user.zk.version").await.expect("version"), b"1");
    assert_eq!(get("user.zk.data_length").await.expect("len"), b"4");
    assert_eq!(get("user.zk.ephemeral_owner").await.expect("owner"), b"0x0");
    assert_eq!(
        get("user.zk.acl").await.expect("acl"),
        b"world:anyone:cdrwa"
    );
    assert!(matches!(
        get("user.zk.nope").await,
        Err(FsError::NoXattr(_))
    ));
    assert!(matches!(
        get("user.zk.data").await,
        Err(FsError::NoXattr(_))
    ));
    let root_names = h.fs.listxattr(ROOT_INO).expect("list");
    assert!(root_names.iter().any(|n| n == "user.zkfs.state"));
    assert_eq!(
        h.fs.getxattr(ROOT_INO, OsStr::new("user.zkfs.state"))
            .await
            .expect("state"),
        b"connected"
    );
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The reference model is the fake's own tree; the check walks it and
/// compares what the filesystem shows: every directory's listing, every
/// file's content and every node's kind.
async fn check_against_model(h: &Harness, seed: u64, step: usize) {
    for p in h.zk.all_paths() {
        let Some(stat) = h.zk.stat(&p) else { continue };
        let data = h.zk.data(&p).unwrap_or_default();
        let is_pointer = super::pointer::parse_pointer(&data, "/").is_some_and(|t| h.zk.exists(&t));
        let expected_kind = attr::node_kind(&stat, p == "/", false, is_pointer);
        let attr = h
            .resolve(&p)
            .await
            .unwrap_or_else(|e| panic!("seed {seed} step {step}: resolve {p}: {e}"));
        assert_eq!(
            attr.kind, expected_kind,
            "seed {seed} step {step}: kind of {p}"
        );
        if expected_kind == FileKind::Symlink {
            let target = super::pointer::parse_pointer(&data, "/").expect("pointer");
            let link = h.fs.readlink(attr.ino).await.expect("readlink");
            assert_eq!(
                String::from_utf8(link).expect("utf8"),
                super::pointer::relative_link(&p, &target),
                "seed {seed} step {step}: link of {p}"
            );
        } else if expected_kind == FileKind::Directory {
            let mut expected: Vec<String> = h.zk.children(&p);
            if !data.is_empty() && !expected.iter().any(|n| n == ".data") {
                expected.push(".data".into());
            }
            expected.sort();
            let mut shown: Vec<String> = h
                .ls(&p)
                .await
                .expect("ls")
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            shown.sort();
            assert_eq!(shown, expected, "seed {seed} step {step}: listing of {p}");
        } else {
            let content = h.cat(&p).await.expect("cat");
            assert_eq!(content, data, "seed {seed} step {step}: content of {p}");
        }
    }
}

#[tokio::test]
async fn randomized_other_client_changes_match_reference_model() {
    for seed in 1..=40u64 {
        let h = harness();
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let names = ["a", "b", "c", ".data"];
        for step in 0..60 {
            let paths = h.zk.all_paths();
            let target = &paths[rng.below(paths.len())];
            let name = names[rng.below(names.len())];
            let payload = match rng.below(6) {
                0 => Vec::new(),
                // Pointers to nodes that may or may not exist.
                1 => format!("/{}", names[rng.below(3)]).into_bytes(),
                2 => format!("/{}/{}\n", names[rng.below(3)], names[rng.below(3)]).into_bytes(),
                _ => format!("v{step}").into_bytes(),
            };
            let result = match rng.below(4) {
                0 | 1 => h.zk.create(
                    &crate::zk::path::join(target, name),
                    &payload,
                    if rng.below(5) == 0 { 42 } else { 0 },
                ),
                2 => h.zk.set(target, &payload),
                _ if target != "/" => h.zk.delete(target),
                _ => continue,
            };
            h.zk.tick(rng.below(2) as i64);
            let Ok(events) = result else { continue };
            // Usually the watch delivers the event; sometimes it is lost
            // (disconnect) and a resync must repair the cache.
            if rng.below(6) == 0 {
                h.fs.resync().await;
            } else {
                for event in &events {
                    h.fs.apply_event(event);
                }
            }
            if step % 5 == 0 {
                check_against_model(&h, seed, step).await;
            }
        }
        check_against_model(&h, seed, 60).await;
    }
}

// ---------------------------------------------------------------- writes

impl Harness {
    /// Deliver the watch events our own writes caused.
    pub(super) fn deliver_own(&self) {
        for event in self.zk.take_own_events() {
            self.fs.apply_event(&event);
        }
    }

    async fn write_file(&self, path: &str, content: &[u8], mode: OpenMode) -> Result<(), FsError> {
        let (dir, name) = path.rsplit_once('/').expect("absolute path");
        let dir_ino = self
            .resolve(if dir.is_empty() { "/" } else { dir })
            .await?
            .ino;
        let fh = match self.fs.lookup(dir_ino, OsStr::new(name)).await {
            Ok(entry) => self.fs.open(entry.attr.ino, mode, 1).await?.fh,
            Err(FsError::NotFound(_)) => {
                self.fs
                    .create(dir_ino, OsStr::new(name), mode, false, 1)
                    .await?
                    .1
            }
            Err(e) => return Err(e),
        };
        self.fs.write(fh, 0, content).await?;
        let result = self.fs.flush(fh).await;
        self.fs.release(fh).await?;
        self.deliver_own();
        result
    }
}

pub(super) const WRITE_TRUNC: OpenMode = OpenMode {
    write: true,
    truncate: true,
    append: false,
};

#[tokio::test]
async fn created_file_appears_complete_at_close() {
    let h = harness();
    let root = ROOT_INO;
    let (entry, fh) =
        h.fs.create(root, OsStr::new("new.json"), WRITE_TRUNC, true, 1)
            .await
            .expect("create");
    h.fs.write(fh, 0, b"{\"a\":").await.expect("write");
    h.fs.write(fh, 5, b"1}").await.expect("write");
    assert!(
        !h.zk.exists("/new.json"),
        "nothing reaches ZooKeeper before close"
    );
    // The writer sees its own file meanwhile.
    assert_eq!(h.fs.getattr(entry.attr.ino).await.expect("attr").size, 7);
    assert_eq!(names(&h.ls("/").await.expect("ls")), ["new.json"]);
    h.fs.flush(fh).await.expect("close sends");
    h.fs.release(fh).await.expect("release");
    assert_eq!(h.zk.data("/new.json").as_deref(), Some(&b"{\"a\":1}"[..]));
    assert_eq!(
        h.zk.stat("/new.json").map(|s| s.version),
        Some(0),
        "one create, no setData"
    );
    h.deliver_own();
    assert_eq!(h.cat("/new.json").await.expect("read back"), b"{\"a\":1}");
    // O_EXCL against an existing node.
    let err =
        h.fs.create(root, OsStr::new("new.json"), WRITE_TRUNC, true, 1)
            .await;
    assert_eq!(err.map(|_| ()).map_err(|e| e.errno()), Err(libc::EEXIST));
    // touch: an empty file stays a file.
    let (_, fh) =
        h.fs.create(root, OsStr::new("empty"), WRITE_TRUNC, false, 1)
            .await
            .expect("touch");
    h.fs.release(fh).await.expect("release");
    h.deliver_own();
    assert_eq!(
        h.resolve("/empty").await.expect("stat").kind,
        FileKind::RegularFile
    );
}

#[tokio::test]
async fn one_versioned_set_data_per_close_and_conflicts_are_estale() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v0", 0));
    h.write_file("/cfg", b"v1", WRITE_TRUNC)
        .await
        .expect("write");
    assert_eq!(h.zk.stat("/cfg").map(|s| s.version), Some(1));
    assert_eq!(h.cat("/cfg").await.expect("read-your-writes"), b"v1");

    // Another client writes between our open and our close.
    let ino = h.resolve("/cfg").await.expect("cfg").ino;
    let fh = h.fs.open(ino, WRITE_TRUNC, 1).await.expect("open").fh;
    h.apply(h.zk.set("/cfg", b"theirs"));
    h.fs.write(fh, 0, b"ours").await.expect("buffered");
    let err = h.fs.flush(fh).await.expect_err("conflict");
    assert_eq!(err.errno(), libc::ESTALE);
    assert!(err.to_string().contains("expected version 1"), "{err}");
    h.fs.release(fh).await.expect("reported once");
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"theirs"[..]));
}

#[tokio::test]
async fn append_offsets_and_truncate() {
    let h = harness();
    h.apply(h.zk.create("/f", b"hello", 0));
    let append = OpenMode {
        write: true,
        truncate: false,
        append: true,
    };
    h.write_file("/f", b" world", append).await.expect("append");
    assert_eq!(h.zk.data("/f").as_deref(), Some(&b"hello world"[..]));
    let ino = h.resolve("/f").await.expect("f").ino;
    // truncate(2) on a closed file: one setData.
    h.fs.setattr(ino, None, None, None, Some(5), None)
        .await
        .expect("truncate");
    assert_eq!(h.zk.data("/f").as_deref(), Some(&b"hello"[..]));
    h.deliver_own();
    // Writes at offsets beyond the end fill with zeros.
    let rw = OpenMode {
        write: true,
        truncate: false,
        append: false,
    };
    let fh = h.fs.open(ino, rw, 1).await.expect("open").fh;
    h.fs.write(fh, 7, b"!").await.expect("write");
    h.fs.release(fh).await.expect("close");
    assert_eq!(h.zk.data("/f").as_deref(), Some(&b"hello\0\0!"[..]));
}

/// The server bounds a whole request (data, paths, framing), not the data
/// alone: under a long path the data limit is lower, and the write that
/// crosses it gets `EFBIG` (max_data is 1000 in this harness, the room for
/// paths 1023 bytes; a path of 1,257 bytes leaves 1000 + 1023 - 1257 - 64
/// = 702). A rename's transaction carries both paths.
#[tokio::test]
async fn a_long_path_lowers_the_data_limit() {
    let h = harness();
    let dir = format!("/{}", "d".repeat(250));
    let deep = format!(
        "{dir}/{}/{}/{}/{}",
        "e".repeat(250),
        "f".repeat(250),
        "g".repeat(250),
        "h".repeat(250)
    );
    let mut at = String::new();
    for element in deep.split('/').skip(1) {
        at = format!("{at}/{element}");
        h.apply(h.zk.create(&at, b"", 0));
    }
    let file = format!("{deep}/x");
    assert_eq!(file.len(), 1257);
    h.apply(h.zk.create(&file, b"small", 0));
    let fh = h.buffered(&file, &[b'a'; 702]).await;
    h.fs.release(fh).await.expect("702 bytes fit");
    assert_eq!(h.zk.data(&file).map(|d| d.len()), Some(702));
    let ino = h.resolve(&file).await.expect("file").ino;
    let fh = h.fs.open(ino, WRITE_TRUNC, 1).await.expect("open").fh;
    let crossing = h.fs.write(fh, 0, &[b'b'; 703]).await.map_err(|e| e.errno());
    assert_eq!(crossing, Err(libc::EFBIG), "703 bytes do not");
    assert_eq!(
        h.fs.release(fh).await.map_err(|e| e.errno()),
        Err(libc::EFBIG)
    );
    assert_eq!(h.zk.data(&file).map(|d| d.len()), Some(702), "nothing sent");

    // 900 bytes fit at a short path, but not in a transaction that names it
    // and a long one.
    h.apply(h.zk.create("/short", &[b'c'; 900], 0));
    h.resolve("/short").await.expect("short");
    let deep_ino = h.resolve(&deep).await.expect("deep").ino;
    let renamed =
        h.fs.rename(
            ROOT_INO,
            OsStr::new("short"),
            deep_ino,
            OsStr::new("y"),
            RenameFlags::default(),
            1,
        )
        .await
        .map_err(|e| e.errno());
    assert_eq!(renamed, Err(libc::EFBIG));
    assert!(h.zk.exists("/short"), "nothing renamed");
    assert_eq!(h.zk.writes_received(), 1, "only the first write was sent");
}

#[tokio::test]
async fn refusals_have_precise_errnos() {
    let h = harness();
    h.apply(h.zk.create("/f", b"x", 0));
    let root = ROOT_INO;
    let ino = h.resolve("/f").await.expect("f").ino;
    let errno = |r: Result<(), FsError>| r.map_err(|e| e.errno());
    // Too big (max_data is 1000 in this harness) at the write that crosses it.
    let fh = h.fs.open(ino, WRITE_TRUNC, 1).await.expect("open").fh;
    h.fs.write(fh, 0, &[b'a'; 600])
        .await
        .expect("first half fits");
    assert_eq!(
        errno(h.fs.write(fh, 600, &[b'b'; 600]).await.map(|_| ())),
        Err(libc::EFBIG)
    );
    assert_eq!(
        errno(h.fs.release(fh).await),
        Err(libc::EFBIG),
        "close fails too"
    );
    assert_eq!(
        h.zk.data("/f").as_deref(),
        Some(&b"x"[..]),
        "nothing half-written"
    );
    assert_eq!(
        errno(
            h.fs.create(root, OsStr::new("a\u{1}b"), WRITE_TRUNC, false, 1)
                .await
                .map(|_| ())
        ),
        Err(libc::EINVAL)
    );
    assert_eq!(
        errno(h.fs.mkdir(root, OsStr::new("zookeeper")).await.map(|_| ())),
        Err(libc::EINVAL)
    );
    assert_eq!(
        errno(
            h.fs.mknod(root, OsStr::new("fifo"), false)
                .await
                .map(|_| ())
        ),
        Err(libc::EPERM)
    );
    assert_eq!(errno(h.fs.link(ino).map(|_| ())), Err(libc::EPERM));
    assert_eq!(
        errno(
            h.fs.setattr(ino, Some(0o600), None, None, None, None)
                .await
                .map(|_| ())
        ),
        Err(libc::EPERM)
    );
    assert_eq!(
        errno(
            h.fs.setattr(ino, None, Some(0), None, None, None)
                .await
                .map(|_| ())
        ),
        Err(libc::EPERM)
    );
    // chmod to the mode already shown, and times, are accepted (sed -i, touch).
    h.fs.setattr(ino, Some(0o100644), Some(1000), Some(1000), None, None)
        .await
        .expect("no-op");
}

#[tokio::test]
async fn chmod_ignore_accepts_chmod_and_chown_and_changes_nothing() {
    let mut h = harness();
    Arc::get_mut(&mut h.fs)
        .expect("not shared yet")
        .config
        .chmod_ignore = true;
    h.apply(h.zk.create("/f", b"x", 0));
    let ino = h.resolve("/f").await.expect("f").ino;
    let before = h.fs.getattr(ino).await.expect("stat");
    let after =
        h.fs.setattr(ino, Some(0o100600), Some(0), Some(0), None, None)
            .await
            .expect("accepted");
    assert_eq!((after.perm, after.uid, after.gid), (0o644, 1000, 1000));
    assert_eq!(after, h.fs.getattr(ino).await.expect("stat"));
    assert_eq!(before.perm, after.perm);
    // A truncate in the same call is still applied.
    let cut =
        h.fs.setattr(ino, Some(0o100600), None, None, Some(0), None)
            .await
            .expect("truncate");
    assert_eq!(cut.size, 0);
}

#[tokio::test]
async fn mkdir_unlink_rmdir_and_data_file() {
    let h = harness();
    let root = ROOT_INO;
    h.fs.mkdir(root, OsStr::new("d")).await.expect("mkdir");
    h.deliver_own();
    assert_eq!(h.resolve("/d").await.expect("d").kind, FileKind::Directory);
    h.write_file("/d/child", b"c", WRITE_TRUNC)
        .await
        .expect("child");
    h.write_file("/d/.data", b"own data", WRITE_TRUNC)
        .await
        .expect("dir data");
    assert_eq!(h.zk.data("/d").as_deref(), Some(&b"own data"[..]));
    let errno = |r: Result<(), FsError>| r.map_err(|e| e.errno());
    assert_eq!(
        errno(h.fs.rmdir(root, OsStr::new("d")).await),
        Err(libc::ENOTEMPTY)
    );
    let d = h.resolve("/d").await.expect("d").ino;
    h.fs.unlink(d, OsStr::new(".data"))
        .await
        .expect("empty the data");
    assert_eq!(h.zk.data("/d").as_deref(), Some(&b""[..]));
    h.fs.unlink(d, OsStr::new("child")).await.expect("rm");
    h.deliver_own();
    assert_eq!(
        errno(h.fs.unlink(root, OsStr::new("d")).await),
        Err(libc::EISDIR)
    );
    h.fs.rmdir(root, OsStr::new("d")).await.expect("rmdir");
    h.deliver_own();
    assert!(!h.zk.exists("/d"));
    assert!(matches!(h.resolve("/d").await, Err(FsError::NotFound(_))));
}

#[tokio::test]
async fn rename_is_one_transaction() {
    let h = harness();
    let root = ROOT_INO;
    h.apply(h.zk.create("/a", b"A", 0));
    h.apply(h.zk.create("/b", b"B", 0));
    let a = h.resolve("/a").await.expect("a");
    let flags = RenameFlags::default();
    // Onto an existing file: setData target + delete source.
    h.fs.rename(root, OsStr::new("a"), root, OsStr::new("b"), flags, 1)
        .await
        .expect("mv a b");
    h.deliver_own();
    assert!(!h.zk.exists("/a"));
    assert_eq!(h.zk.data("/b").as_deref(), Some(&b"A"[..]));
    // The kernel keeps a's inode under the new name: it must still work.
    assert_eq!(h.fs.getattr(a.ino).await.expect("moved inode").size, 1);
    // To a new name: create + delete.
    h.fs.rename(root, OsStr::new("b"), root, OsStr::new("c"), flags, 1)
        .await
        .expect("mv b c");
    h.deliver_own();
    assert_eq!(h.zk.data("/c").as_deref(), Some(&b"A"[..]));
    assert!(!h.zk.exists("/b"));
    // NOREPLACE, children, conflicts.
    h.apply(h.zk.create("/d", b"D", 0));
    let noreplace = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    let errno = |r: Result<(), FsError>| r.map_err(|e| e.errno());
    assert_eq!(
        errno(
            h.fs.rename(root, OsStr::new("c"), root, OsStr::new("d"), noreplace, 1)
                .await
        ),
        Err(libc::EEXIST)
    );
    h.apply(h.zk.create("/p", b"", 0));
    h.apply(h.zk.create("/p/kid", b"k", 0));
    assert_eq!(
        errno(
            h.fs.rename(root, OsStr::new("p"), root, OsStr::new("q"), flags, 1)
                .await
        ),
        Err(libc::EXDEV)
    );
    // The source changed behind our back (event not yet seen): the rename
    // moves what the server holds (read fresh), never the stale cached copy,
    // and the name gets a fresh inode for it.
    let before = h.resolve("/c").await.expect("cache c").ino;
    h.zk.set("/c", b"changed").expect("silent change");
    assert_eq!(
        errno(
            h.fs.rename(root, OsStr::new("c"), root, OsStr::new("e"), flags, 1)
                .await
        ),
        Ok(())
    );
    h.deliver_own();
    assert!(!h.zk.exists("/c"));
    assert_eq!(h.zk.data("/e").as_deref(), Some(&b"changed"[..]));
    let after = h.resolve("/e").await.expect("e");
    assert_ne!(after.ino, before, "the moved inode showed an older version");
    assert_eq!(h.cat("/e").await.expect("cat e"), b"changed");
}

#[tokio::test]
async fn echo_of_own_write_needs_no_refetch_but_foreign_changes_do() {
    let h = harness();
    h.apply(h.zk.create("/f", b"v0", 0));
    h.write_file("/f", b"mine", WRITE_TRUNC)
        .await
        .expect("write");
    let before = h.zk.requests();
    assert_eq!(h.cat("/f").await.expect("read-your-writes"), b"mine");
    assert_eq!(
        h.zk.requests(),
        before,
        "our own write's event needs no round trip"
    );
    // A foreign change right after ours is still seen.
    h.apply(h.zk.set("/f", b"theirs"));
    assert_eq!(h.cat("/f").await.expect("foreign change"), b"theirs");
}

/// Once the session has expired, none of its registrations is owned (the
/// server drops, or has dropped, its ephemeral nodes) until the new session
/// re-creates them: `zkfs status` must say pending, not owned, meanwhile.
#[tokio::test]
async fn registrations_are_pending_from_the_expiry_until_the_new_session_has_them() {
    let h = harness();
    h.apply(h.zk.create("/services", b"", 0));
    h.apply(h.zk.create("/services/web", b"", 0));
    h.apply(h.zk.create("/services/web/servers", b"", 0));
    h.write_file("/services/web/servers/10.0.0.5:8080", b"{}", WRITE_TRUNC)
        .await
        .expect("register");
    let counts = |h: &Harness| {
        let c = h.fs.registry.counts();
        (c.owned, c.pending)
    };
    assert_eq!(counts(&h), (1, 0));
    h.zk.delete("/services/web/servers/10.0.0.5:8080")
        .expect("expired");
    h.fs.session_ended();
    assert_eq!(counts(&h), (0, 1), "expired: not owned");
    h.fs.reregister();
    h.fs.reconcile_due().await;
    assert_eq!(counts(&h), (1, 0), "the new session has it");
}

#[tokio::test]
async fn registrations_are_ephemeral_and_come_back_after_expiry() {
    let h = harness();
    h.apply(h.zk.create("/services", b"", 0));
    h.apply(h.zk.create("/services/web", b"", 0));
    h.apply(h.zk.create("/services/web/servers", b"", 0));
    h.write_file(
        "/services/web/servers/10.0.0.5:8080",
        b"{\"pid\": 4242}",
        WRITE_TRUNC,
    )
    .await
    .expect("register");
    h.write_file(
        "/services/web/servers/10.0.0.6:8080",
        b"{\"pid\": 7}",
        WRITE_TRUNC,
    )
    .await
    .expect("register");
    h.write_file("/services/web/plain", b"persistent", WRITE_TRUNC)
        .await
        .expect("plain");
    let owner = |p: &str| h.zk.stat(p).map(|s| s.ephemeral_owner);
    assert_eq!(
        owner("/services/web/servers/10.0.0.5:8080"),
        Some(1),
        "ephemeral"
    );
    assert_eq!(
        owner("/services/web/plain"),
        Some(0),
        "outside the glob: persistent"
    );

    // rm deregisters for good.
    let servers = h.resolve("/services/web/servers").await.expect("dir").ino;
    h.fs.unlink(servers, OsStr::new("10.0.0.6:8080"))
        .await
        .expect("rm");
    h.deliver_own();

    // The session expires: the server drops our ephemerals (no events reach us).
    h.zk.delete("/services/web/servers/10.0.0.5:8080")
        .expect("expired");
    h.fs.reregister();
    h.fs.reconcile_due().await;
    assert_eq!(
        h.zk.data("/services/web/servers/10.0.0.5:8080").as_deref(),
        Some(&b"{\"pid\": 4242}"[..]),
        "re-created with its last data"
    );
    assert!(
        !h.zk.exists("/services/web/servers/10.0.0.6:8080"),
        "rm is for good"
    );
    h.deliver_own();
    h.fs.resync().await;
    assert_eq!(
        names(&h.ls("/services/web/servers").await.expect("ls")),
        ["10.0.0.5:8080"]
    );
}

// ------------------------------------------------- faults and cancellation
//
// Paused time (tokio's clock advances only when every task waits): the
// injected delays order events, never the machine's load.

use crate::zk::fake::WriteFault;

impl Harness {
    /// Open `path` for writing (truncating) and buffer `content`; the handle.
    async fn buffered(&self, path: &str, content: &[u8]) -> u64 {
        let ino = self.resolve(path).await.expect("resolve").ino;
        let fh = self.fs.open(ino, WRITE_TRUNC, 1).await.expect("open").fh;
        self.fs.write(fh, 0, content).await.expect("write");
        fh
    }

    /// Bring the connection back after `ms` (the store waits for it).
    pub(super) async fn reconnect_after(&self, ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        self.zk.set_connected(true);
    }
}

/// `/cfg` rewritten from v1 to v2 by a close whose answer meets `fault`
/// (applied on the server, answer lost), the connection back 50 ms later:
/// the close reports success, and v2 was sent once.
async fn close_with_a_lost_answer(fault: WriteFault) -> (Harness, u64) {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.inject(fault);
    let (flushed, ()) = tokio::join!(h.fs.flush(fh), h.reconnect_after(50));
    assert_eq!(flushed, Ok(()), "applied, so reported applied");
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"v2"[..]));
    assert_eq!(h.zk.stat("/cfg").map(|s| s.version), Some(1), "one setData");
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
    (h, fh)
}

#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_resolved_after_reconnecting_and_not_sent_twice() {
    let (h, fh) = close_with_a_lost_answer(WriteFault::LostAnswer).await;
    h.fs.release(fh).await.expect("release");
    assert_eq!(h.zk.writes_received(), 1, "release sends nothing more");
    assert_eq!(h.cat("/cfg").await.expect("cat"), b"v2");
}

/// A close whose answer was lost, then requests that fail at once while the
/// session still says connected (it has not noticed the connection is gone;
/// seen after a daemon stopped longer than the session timeout was let run
/// again). Reading the outcome again must wait between attempts: a retry
/// loop that never waits never lets the runtime run anything else (the
/// session task that would notice, the timeout around the wait, every other
/// request), and spun at full CPU with the close hanging for ever.
#[tokio::test(start_paused = true)]
async fn reading_a_lost_writes_outcome_again_waits_between_attempts() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.inject(WriteFault::LostAnswer);
    let reconnect_dead = async {
        h.reconnect_after(50).await;
        h.zk.fail_requests(2_000);
        let before = h.zk.requests();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        h.zk.requests() - before
    };
    let (flushed, in_a_second) = tokio::join!(h.fs.flush(fh), reconnect_dead);
    assert!(
        in_a_second <= 100,
        "{in_a_second} requests in a second of failures"
    );
    // Once requests are answered again the outcome is read: applied.
    assert_eq!(flushed, Ok(()));
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
}

/// A close whose answer was lost, read back on a server that has not
/// applied it yet (a follower behind the leader): what that server shows is
/// no proof that the write was not applied. The read must come after a
/// `sync`; otherwise the write is judged not applied, sent again, refused
/// (BadVersion: the first one was applied) and reported as a conflict,
/// while ZooKeeper holds it.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_read_back_after_the_server_caught_up() {
    let (h, _) = close_with_a_lost_answer(WriteFault::LostAnswerLagging).await;
    assert!(!h.zk.lagging(), "the server caught up before the read");
}

/// The same for an unlink: the lagging server still has the node, which
/// is no proof that ours was not deleted; sent again it would meet NoNode.
#[tokio::test(start_paused = true)]
async fn a_lost_unlink_answer_is_read_back_after_the_server_caught_up() {
    let h = harness();
    h.apply(h.zk.create("/a", b"x", 0));
    h.resolve("/a").await.expect("cached");
    h.zk.inject(WriteFault::LostAnswerLagging);
    let (unlinked, ()) = tokio::join!(
        h.fs.unlink(ROOT_INO, OsStr::new("a")),
        h.reconnect_after(50)
    );
    assert_eq!(unlinked.map_err(|e| e.errno()), Ok(()));
    assert!(!h.zk.exists("/a"));
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
}

/// `mv a b` in the root, `/a` cached, with `fault` on its transaction
/// while `meanwhile` runs; the errno if it failed.
async fn rename_a_to_b(
    h: &Harness,
    fault: WriteFault,
    meanwhile: impl std::future::Future<Output = ()>,
) -> Result<(), i32> {
    h.apply(h.zk.create("/a", b"A", 0));
    h.resolve("/a").await.expect("a");
    h.zk.inject(fault);
    let (renamed, ()) = tokio::join!(
        h.fs.rename(
            ROOT_INO,
            OsStr::new("a"),
            ROOT_INO,
            OsStr::new("b"),
            RenameFlags::default(),
            1
        ),
        meanwhile
    );
    renamed.map_err(|e| e.errno())
}

/// The other client acts during the gap (after our lost write reached the
/// server), then the connection comes back.
async fn meanwhile(h: &Harness, other: impl FnOnce(&FakeZk)) {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    other(&h.zk);
    h.reconnect_after(30).await;
}

/// A close whose answer was lost, after which another client wrote the
/// node: ours may have been applied (here it was, at version 1) and then
/// overwritten, or refused. Nothing read afterwards tells which, so the
/// close fails with `EIO` (outcome unknown), not `ESTALE` ("a conflict:
/// not applied"), and is not sent again.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_then_another_clients_write_is_an_unknown_outcome() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let fh = h.buffered("/cfg", b"mine").await;
    h.zk.inject(WriteFault::LostAnswer);
    let (flushed, ()) = tokio::join!(
        h.fs.flush(fh),
        meanwhile(&h, |zk| drop(zk.set("/cfg", b"theirs")))
    );
    assert_eq!(flushed.map_err(|e| e.errno()), Err(libc::EIO));
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"theirs"[..]));
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
}

/// An unlink whose answer was lost, after which another client created
/// the name again: the node we deleted is gone (a new one has another
/// czxid), so the unlink succeeded, and the new node must stay.
#[tokio::test(start_paused = true)]
async fn a_lost_unlink_answer_never_deletes_a_node_created_again_meanwhile() {
    let h = harness();
    h.apply(h.zk.create("/a", b"x", 0));
    h.resolve("/a").await.expect("cached");
    h.zk.inject(WriteFault::LostAnswer);
    let (unlinked, ()) = tokio::join!(
        h.fs.unlink(ROOT_INO, OsStr::new("a")),
        meanwhile(&h, |zk| drop(zk.create("/a", b"new", 0)))
    );
    assert_eq!(unlinked.map_err(|e| e.errno()), Ok(()));
    assert_eq!(
        h.zk.data("/a").as_deref(),
        Some(&b"new"[..]),
        "the new node stays"
    );
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
}

/// An append whose outcome stayed unknown may be in ZooKeeper: appending
/// more through the same descriptor must not send those bytes a second
/// time after another client's change; the close is then a conflict.
#[tokio::test(start_paused = true)]
async fn an_append_whose_outcome_is_unknown_is_never_appended_again() {
    let h = harness();
    h.apply(h.zk.create("/log", b"one\n", 0));
    let ino = h.resolve("/log").await.expect("log").ino;
    let fh = h.fs.open(ino, APPEND, 1).await.expect("open").fh;
    h.fs.write(fh, 0, b"mine\n").await.expect("append");
    h.zk.inject(WriteFault::LostAnswer);
    let (first, ()) = tokio::join!(
        h.fs.fsync(fh),
        meanwhile(&h, |zk| drop(zk.set("/log", b"one\nmine\ntheirs\n")))
    );
    assert_eq!(first.map_err(|e| e.errno()), Err(libc::EIO), "unknown");
    h.fs.write(fh, 0, b"more\n").await.expect("append");
    let second = h.fs.flush(fh).await;
    assert_eq!(second.map_err(|e| e.errno()), Err(libc::ESTALE));
    assert_eq!(
        h.zk.data("/log").as_deref(),
        Some(&b"one\nmine\ntheirs\n"[..])
    );
}

/// A rename whose answer was lost, after which another client changed the
/// target: the source is gone, the target holds theirs. Ours was applied
/// (then overwritten) or another client removed the source: unknown, `EIO`,
/// not sent again.
#[tokio::test(start_paused = true)]
async fn a_lost_rename_answer_then_a_change_of_the_target_is_an_unknown_outcome() {
    let h = harness();
    let renamed = rename_a_to_b(
        &h,
        WriteFault::LostAnswer,
        meanwhile(&h, |zk| drop(zk.set("/b", b"theirs"))),
    )
    .await;
    assert_eq!(renamed, Err(libc::EIO));
    assert_eq!(h.zk.data("/b").as_deref(), Some(&b"theirs"[..]));
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
}

/// A rename to a new name whose answer was lost, after which another
/// client deleted the target and created a node under the source's name:
/// the target's absence alone would say "send it again", but the source's
/// old node is gone, so it was applied. Unknown, `EIO`; sent again, it
/// would delete the other client's new node.
#[tokio::test(start_paused = true)]
async fn a_lost_rename_answer_never_deletes_a_node_created_under_the_old_name() {
    let h = harness();
    let renamed = rename_a_to_b(
        &h,
        WriteFault::LostAnswer,
        meanwhile(&h, |zk| {
            drop(zk.delete("/b"));
            drop(zk.create("/a", b"theirs", 0));
        }),
    )
    .await;
    assert_eq!(renamed, Err(libc::EIO));
    assert_eq!(
        h.zk.data("/a").as_deref(),
        Some(&b"theirs"[..]),
        "their node stays"
    );
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
}

/// A new file's create whose answer was lost, after which another client
/// wrote it: created by us (then changed) or by them first; unknown, `EIO`.
#[tokio::test(start_paused = true)]
async fn a_lost_create_answer_then_a_change_by_another_client_is_an_unknown_outcome() {
    let h = harness();
    let (_, fh) =
        h.fs.create(ROOT_INO, OsStr::new("n"), WRITE_TRUNC, false, 1)
            .await
            .expect("create");
    h.fs.write(fh, 0, b"mine").await.expect("write");
    h.zk.inject(WriteFault::LostAnswer);
    let (flushed, ()) = tokio::join!(
        h.fs.flush(fh),
        meanwhile(&h, |zk| drop(zk.set("/n", b"theirs")))
    );
    assert_eq!(flushed.map_err(|e| e.errno()), Err(libc::EIO));
    assert_eq!(h.zk.data("/n").as_deref(), Some(&b"theirs"[..]));
    assert_eq!(h.zk.writes_received(), 1, "not sent again");
}

/// A rename is one `multi`: its lost answer is resolved as a setData's is
/// (SEMANTICS "Unknown outcome": every node it deletes is gone, every node
/// it creates holds what it wrote), not reported failed.
#[tokio::test(start_paused = true)]
async fn a_renames_lost_answer_is_resolved_after_reconnecting_and_not_sent_twice() {
    let h = harness();
    let renamed = rename_a_to_b(&h, WriteFault::LostAnswer, h.reconnect_after(50)).await;
    assert_eq!(renamed, Ok(()), "applied, so reported applied");
    assert!(!h.zk.exists("/a"));
    assert_eq!(h.zk.data("/b").as_deref(), Some(&b"A"[..]));
    assert_eq!(h.zk.writes_received(), 1, "one multi, not sent again");
}

/// A rename whose transaction never reached the server is sent again on
/// the new connection, once.
#[tokio::test(start_paused = true)]
async fn a_renames_lost_request_is_sent_again_on_the_new_connection() {
    let h = harness();
    let renamed = rename_a_to_b(&h, WriteFault::LostRequest, h.reconnect_after(50)).await;
    assert_eq!(renamed, Ok(()));
    assert!(!h.zk.exists("/a"));
    assert_eq!(h.zk.data("/b").as_deref(), Some(&b"A"[..]));
    assert_eq!(h.zk.writes_received(), 1, "the lost one never arrived");
}

/// An unlink whose request was lost is sent again, once; one whose answer
/// was lost is found applied.
#[tokio::test(start_paused = true)]
async fn an_unlinks_lost_request_or_answer_is_resolved_after_reconnecting() {
    let h = harness();
    for (name, fault) in [
        ("a", WriteFault::LostRequest),
        ("b", WriteFault::LostAnswer),
    ] {
        let path = format!("/{name}");
        h.apply(h.zk.create(&path, b"x", 0));
        h.resolve(&path).await.expect("cached");
        let before = h.zk.writes_received();
        h.zk.inject(fault);
        let (unlinked, ()) = tokio::join!(
            h.fs.unlink(ROOT_INO, OsStr::new(name)),
            h.reconnect_after(50)
        );
        assert_eq!(unlinked.map_err(|e| e.errno()), Ok(()), "{fault:?}");
        assert!(!h.zk.exists(&path), "{fault:?}");
        assert_eq!(
            h.zk.writes_received(),
            before + 1,
            "{fault:?}: one delete arrived"
        );
    }
}

/// `create` (O_CREAT of a new name) while disconnected fails with
/// `ETIMEDOUT` after the mount's wait for a connection (`--op-timeout`; 300
/// ms in this harness), as `open` for writing does, not after a minute:
/// the FUSE adapter does not bound modifying operations.
#[tokio::test(start_paused = true)]
async fn a_create_while_disconnected_fails_after_the_op_timeout() {
    let h = harness();
    h.apply(h.zk.create("/d", b"", 0));
    let dir = h.resolve("/d").await.expect("d").ino;
    h.zk.set_connected(false);
    let started = tokio::time::Instant::now();
    let err =
        h.fs.create(dir, OsStr::new("new"), WRITE_TRUNC, false, 1)
            .await
            .expect_err("not connected");
    assert_eq!(err.errno(), libc::ETIMEDOUT, "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(300)
            && waited < std::time::Duration::from_millis(400),
        "waited {waited:?}"
    );
    assert!(!h.zk.exists("/d/new"));
}

/// A write whose answer is lost is checked for as long as SEMANTICS says
/// (60 s), not just `--op-timeout`: a reconnect after 40 s still resolves
/// it as applied.
#[tokio::test(start_paused = true)]
async fn a_lost_answer_is_resolved_after_a_reconnect_well_past_the_op_timeout() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.inject(WriteFault::LostAnswer);
    let (flushed, ()) = tokio::join!(h.fs.flush(fh), h.reconnect_after(40_000));
    assert_eq!(flushed, Ok(()), "applied, so reported applied");
    assert_eq!(h.zk.writes_received(), 1);
}

/// Past 60 s without a server the outcome stays unknown: `EIO`.
#[tokio::test(start_paused = true)]
async fn a_renames_outcome_unknown_for_60_s_is_eio() {
    let h = harness();
    let renamed = rename_a_to_b(&h, WriteFault::LostAnswer, async {}).await;
    assert_eq!(renamed, Err(libc::EIO));
}

#[tokio::test(start_paused = true)]
async fn a_lost_request_is_sent_again_on_the_new_connection_once() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.inject(WriteFault::LostRequest);
    let (flushed, ()) = tokio::join!(h.fs.flush(fh), h.reconnect_after(50));
    assert_eq!(flushed, Ok(()));
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"v2"[..]));
    assert_eq!(h.zk.stat("/cfg").map(|s| s.version), Some(1));
    assert_eq!(h.zk.writes_received(), 1, "the lost one never arrived");
}

#[tokio::test(start_paused = true)]
async fn a_close_that_failed_while_disconnected_is_never_sent_later() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.set_connected(false);
    let err =
        h.fs.flush(fh)
            .await
            .expect_err("no connection within the wait");
    assert_eq!(err.errno(), libc::ETIMEDOUT, "{err}");
    h.zk.set_connected(true);
    // Nothing is sent again, and an fsync does not say it was sent.
    let again = h.fs.fsync(fh).await.expect_err("the failure is told again");
    assert_eq!(again.errno(), libc::ETIMEDOUT, "{again}");
    h.fs.release(fh).await.expect("release");
    assert_eq!(
        h.zk.writes_received(),
        0,
        "the failed content was sent later"
    );
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"v1"[..]));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_flush_is_never_sent_later() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.set_connected(false);
    {
        // Polled until it waits for the connection, then dropped.
        let flush = h.fs.flush(fh);
        tokio::pin!(flush);
        let polled = tokio::time::timeout(std::time::Duration::from_millis(30), &mut flush).await;
        assert!(polled.is_err(), "still waiting for a connection");
    }
    h.zk.set_connected(true);
    h.fs.release(fh).await.expect("release");
    assert_eq!(h.zk.writes_received(), 0);
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"v1"[..]));
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_never_leaves_the_cache_believing_an_old_value() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    assert_eq!(h.cat("/cfg").await.expect("cat"), b"v1");
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.inject(WriteFault::LateAnswer(100));
    let other = async {
        // While our answer is on its way: our write's echo, then another
        // client's change (and its event).
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        h.deliver_own();
        h.apply(h.zk.set("/cfg", b"v3-other"));
    };
    let (flushed, ()) = tokio::join!(h.fs.flush(fh), other);
    assert_eq!(flushed, Ok(()));
    assert_eq!(h.cat("/cfg").await.expect("cat"), b"v3-other");
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_retires_the_inode_the_kernel_sized_for_it() {
    let h = harness();
    h.apply(h.zk.create("/cfg", b"a longer value", 0));
    let before = h.resolve("/cfg").await.expect("stat").ino;
    let fh = h.buffered("/cfg", b"x").await;
    h.apply(h.zk.set("/cfg", b"changed by another client"));
    let err = h.fs.flush(fh).await.expect_err("conflict");
    assert_eq!(err.errno(), libc::ESTALE);
    let after = h.resolve("/cfg").await.expect("stat");
    assert_ne!(after.ino, before, "a fresh inode for the name");
    assert_eq!(after.size, 25);
    assert_eq!(
        h.cat("/cfg").await.expect("cat"),
        b"changed by another client"
    );
}

#[tokio::test(start_paused = true)]
async fn supervisor_moves_old_session_nodes_and_waits_out_foreign_ones() {
    let h = harness();
    h.apply(h.zk.create("/services", b"", 0));
    h.apply(h.zk.create("/services/web", b"", 0));
    h.apply(h.zk.create("/services/web/servers", b"", 0));
    let a = "/services/web/servers/a:1";
    let b = "/services/web/servers/b:1";
    h.write_file(a, b"{\"pid\": 1}", WRITE_TRUNC)
        .await
        .expect("register a");
    h.write_file(b, b"{\"pid\": 2}", WRITE_TRUNC)
        .await
        .expect("register b");
    h.deliver_own();
    let owner = |p: &str| h.zk.stat(p).map(|s| s.ephemeral_owner);
    assert_eq!(owner(a), Some(1));

    // The client declared session 1 expired, the server still holds it (and
    // its nodes); a new session 2 is up. Meanwhile someone else (session 77)
    // took b.
    h.zk.new_session();
    h.apply(h.zk.delete(b));
    h.apply(h.zk.create(b, b"theirs", 77));
    h.fs.reregister();
    assert_eq!(h.fs.reconcile_due().await, 2);
    assert_eq!(owner(a), Some(2), "moved to the current session");
    assert_eq!(h.zk.data(a).as_deref(), Some(&b"{\"pid\": 1}"[..]));
    assert_eq!(owner(b), Some(77), "someone else's node is left alone");
    assert_eq!(h.zk.data(b).as_deref(), Some(&b"theirs"[..]));
    async fn mount_attr(h: &Harness, name: &str) -> String {
        let value =
            h.fs.getxattr(1, OsStr::new(&format!("user.zkfs.{name}")))
                .await
                .expect("xattr");
        String::from_utf8(value).expect("utf-8")
    }
    assert_eq!(mount_attr(&h, "registrations").await, "1");
    assert_eq!(mount_attr(&h, "registrations_held_by_others").await, "1");
    assert_eq!(mount_attr(&h, "registrations_pending").await, "0");

    // The other session ends: b is taken back at its deletion event.
    h.deliver_own();
    h.apply(h.zk.delete(b));
    assert!(h.fs.reconcile_due().await >= 1);
    assert_eq!(owner(b), Some(2), "taken back when it went");
    assert_eq!(h.zk.data(b).as_deref(), Some(&b"{\"pid\": 2}"[..]));
    assert_eq!(mount_attr(&h, "registrations").await, "2");

    // rm through the mount is for good: its deletion event re-creates nothing.
    h.deliver_own();
    let servers = h.resolve("/services/web/servers").await.expect("dir").ino;
    h.fs.unlink(servers, OsStr::new("a:1")).await.expect("rm");
    h.deliver_own();
    assert_eq!(h.fs.reconcile_due().await, 0);
    assert!(!h.zk.exists(a));
    assert_eq!(mount_attr(&h, "registrations").await, "1");
}

/// A daemon killed with SIGKILL leaves its session's registrations on the
/// server until that session expires; the mount started again (a new
/// session, unknown to it) finds the file there, and writing it is
/// registering it: the write updates the data, and the registration is kept
/// as one held by another session, taken back when that node goes. Before,
/// the write only updated the old session's node, which then vanished at
/// its expiry with nothing re-created.
#[tokio::test(start_paused = true)]
async fn writing_a_registration_another_session_holds_registers_it() {
    let h = harness();
    for dir in ["/services", "/services/web", "/services/web/servers"] {
        h.apply(h.zk.create(dir, b"", 0));
    }
    let a = "/services/web/servers/a:1";
    h.apply(h.zk.create(a, b"{\"pid\": 1}", 99));
    h.write_file(a, b"{\"pid\": 2}", WRITE_TRUNC)
        .await
        .expect("register a");
    h.deliver_own();
    assert_eq!(h.zk.data(a).as_deref(), Some(&b"{\"pid\": 2}"[..]));
    h.fs.reconcile_due().await;
    let owner = || h.zk.stat(a).map(|s| s.ephemeral_owner);
    assert_eq!(owner(), Some(99), "the other session's node is left alone");
    // That session expires: the name is taken back at once.
    h.apply(h.zk.delete(a));
    assert!(h.fs.reconcile_due().await >= 1);
    assert_eq!(owner(), Some(1), "registered on this mount's session");
    assert_eq!(h.zk.data(a).as_deref(), Some(&b"{\"pid\": 2}"[..]));
}

#[tokio::test(start_paused = true)]
async fn a_new_file_opened_twice_is_created_once_and_stays_a_file() {
    // pjdfstest open/23: create, then open again before the first close's
    // create went out; both closes raced to create the node, the loser's
    // NodeExists made the mount forget it had made a file (so the empty
    // node showed as a directory).
    let h = harness();
    let rw = OpenMode {
        write: true,
        truncate: false,
        append: false,
    };
    for (name, second_writes) in [("n", false), ("m", true)] {
        let (entry, fh1) =
            h.fs.create(ROOT_INO, OsStr::new(name), WRITE_TRUNC, false, 1)
                .await
                .expect("create");
        let fh2 =
            h.fs.open(entry.attr.ino, rw, 1)
                .await
                .expect("open again")
                .fh;
        if second_writes {
            h.fs.write(fh2, 0, b"second").await.expect("write");
        }
        // The first create's answer is late, so the second release runs
        // while it is out.
        h.zk.inject(WriteFault::LateAnswer(50));
        let (a, b) = tokio::join!(h.fs.release(fh1), h.fs.release(fh2));
        assert_eq!((a, b), (Ok(()), Ok(())), "{name}");
        h.deliver_own();
        let path = format!("/{name}");
        let expected: &[u8] = if second_writes { b"second" } else { b"" };
        assert_eq!(h.zk.data(&path).as_deref(), Some(expected), "{name}");
        assert_eq!(
            h.resolve(&path).await.expect("stat").kind,
            FileKind::RegularFile,
            "{name} stays a file"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_write_abandoned_while_its_answer_is_out_never_hides_its_own_echo() {
    // Issue "Core v2" 3(b): the server applied a setData whose answer came
    // after the operation was abandoned; the echo of that write must make
    // the cache re-read the node, not be swallowed as "ours, already known"
    // (the cache never recorded the write).
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    assert_eq!(h.cat("/cfg").await.expect("cat"), b"v1");
    let fh = h.buffered("/cfg", b"v2").await;
    h.zk.inject(WriteFault::LateAnswer(500));
    {
        let flush = h.fs.flush(fh);
        tokio::pin!(flush);
        let polled = tokio::time::timeout(std::time::Duration::from_millis(50), &mut flush).await;
        assert!(polled.is_err(), "the answer is still out");
    }
    // Applied on the server; its watch event arrives.
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b"v2"[..]));
    h.deliver_own();
    assert_eq!(h.cat("/cfg").await.expect("cat"), b"v2");
    h.fs.release(fh).await.expect("release sends nothing more");
    assert_eq!(h.zk.writes_received(), 1);
}

// ---- Opens::Kernel: reads and listings without per-open state ----

/// Read content inode `ino` from its start in `chunk`-byte requests, as the
/// kernel does for a file larger than one request.
async fn read_inode_all(h: &Harness, ino: u64, chunk: u32) -> Result<Vec<u8>, FsError> {
    let mut out = Vec::new();
    loop {
        let (data, start, end) = h.fs.read_inode(ino, out.len() as u64, chunk).await?;
        if start == end {
            return Ok(out);
        }
        out.extend_from_slice(&data[start..end]);
    }
}

#[tokio::test]
async fn kernel_opens_a_version_read_in_pieces_stays_whole_across_a_change() {
    let h = kernel_opens_harness();
    h.apply(h.zk.create("/f", &[b'a'; 300], 0));
    let old = h.resolve("/f").await.expect("f");
    let (data, start, end) = h.fs.read_inode(old.ino, 0, 100).await.expect("first");
    assert_eq!(&data[start..end], &[b'a'; 100][..]);
    h.invalidations.take();

    h.apply(h.zk.set("/f", &[b'b'; 250]));
    // The rest of that inode is the version it showed, never a mix.
    let mut rest = Vec::new();
    while let Ok((data, start, end)) = h.fs.read_inode(old.ino, 100 + rest.len() as u64, 100).await
        && start < end
    {
        rest.extend_from_slice(&data[start..end]);
    }
    assert_eq!(rest, vec![b'a'; 200]);
    // The kernel is told that version is gone from the name (so it forgets
    // the inode once nothing has it open), and sees it unlinked meanwhile.
    assert!(h.invalidations.take().contains(&Invalidation::Delete {
        parent: ROOT_INO,
        child: old.ino,
        name: "f".into()
    }));
    let attr = h.fs.getattr(old.ino).await.expect("old attr");
    assert_eq!((attr.size, attr.nlink), (300, 0));
    // The name now shows the new version, under a new number.
    let new = h.resolve("/f").await.expect("f again");
    assert_ne!(new.ino, old.ino);
    assert_eq!(
        read_inode_all(&h, new.ino, 100).await.expect("new"),
        vec![b'b'; 250]
    );
}

#[tokio::test]
async fn kernel_opens_an_unread_version_is_held_when_it_changes_and_dropped_at_forget() {
    let h = kernel_opens_harness();
    h.apply(h.zk.create("/g", b"first", 0));
    // Opened (looked up) but not read yet when another client changes it.
    let old = h.resolve("/g").await.expect("g");
    h.apply(h.zk.set("/g", b"second!"));
    assert_eq!(
        read_inode_all(&h, old.ino, 4096).await.expect("old"),
        b"first"
    );
    assert_eq!(h.fs.held.usage(), (1, 5));
    // A deleted node's last version is held the same way.
    let new = h.resolve("/g").await.expect("g");
    h.apply(h.zk.delete("/g"));
    assert_eq!(
        read_inode_all(&h, new.ino, 4096).await.expect("deleted"),
        b"second!"
    );
    assert_eq!(h.fs.held.usage(), (2, 12));
    // The kernel forgets the inodes: the bytes go, and a read of a version
    // no longer held fails instead of showing another version.
    h.fs.forget(old.ino, 1);
    h.fs.forget(new.ino, 1);
    assert_eq!(h.fs.held.usage(), (0, 0));
    assert!(matches!(
        h.fs.read_inode(old.ino, 0, 10).await,
        Err(FsError::Stale(_))
    ));
}

#[tokio::test]
async fn kernel_opens_a_fetch_that_leapfrogs_a_looked_up_version_cannot_take_its_bytes() {
    let h = kernel_opens_harness();
    h.apply(h.zk.create("/f", b"version-1", 0));
    let shown = h.resolve("/f").await.expect("f");
    // Another client writes twice; before either event arrives, a fetch
    // (a refresh after an earlier event, a resync) stores the last version.
    h.zk.set("/f", b"version-2").expect("set");
    h.zk.set("/f", b"version-3").expect("set");
    h.fs.store().read_fresh("/f").await.expect("fetch");
    assert_eq!(
        read_inode_all(&h, shown.ino, 4)
            .await
            .expect("the looked-up version"),
        b"version-1"
    );
    // A version never looked up is not held.
    h.apply(h.zk.create("/other", b"x", 0));
    h.apply(h.zk.set("/other", b"y"));
    assert_eq!(h.fs.held.usage(), (1, 9));
}

/// A read-only mount (the kernel opens by itself) with /d of five children.
async fn kernel_opens_dir_of_five() -> (Harness, Attr) {
    let h = kernel_opens_harness();
    h.apply(h.zk.create("/d", b"", 0));
    for i in 0..5 {
        h.apply(h.zk.create(&format!("/d/n{i}"), b"", 0));
    }
    let dir = h.resolve("/d").await.expect("d");
    (h, dir)
}

#[tokio::test]
async fn kernel_opens_a_listing_continues_across_offsets_without_a_handle() {
    let (h, dir) = kernel_opens_dir_of_five().await;
    let first = h.fs.readdir_inode(dir.ino, 0).await.expect("offset 0");
    // A child created between two calls of one pass does not shift it.
    h.apply(h.zk.create("/d/zz", b"", 0));
    let later = h.fs.readdir_inode(dir.ino, 3).await.expect("offset 3");
    let names = |l: &listing::Listed| l.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&first), names(&later));
    assert!(later.is_complete());
    h.fs.listing_ended(dir.ino, later.pass(), later.loaded());
    let end =
        h.fs.readdir_inode(dir.ino, later.loaded())
            .await
            .expect("end");
    assert_eq!((end.loaded(), end.is_complete()), (0, true));
    // The next pass starts afresh and sees the new child.
    let next = h.fs.readdir_inode(dir.ino, 0).await.expect("next pass");
    assert!(next.iter().any(|e| e.name == "zz"));
    assert!(!first.iter().any(|e| e.name == "zz"));
}

#[tokio::test]
async fn a_read_only_listing_loads_no_acls() {
    async fn listing_requests(h: &Harness) -> u64 {
        h.apply(h.zk.create("/d", b"", 0));
        for i in 0..5 {
            h.apply(h.zk.create(&format!("/d/n{i}"), b"x", 0));
        }
        let before = h.zk.requests();
        assert_eq!(h.ls("/d").await.expect("ls").len(), 5);
        h.zk.requests() - before
    }
    // A writable mount loads each child's ACL (it may take the write bit
    // away); a read-only one shows no write bits whatever the ACL says.
    let writable = listing_requests(&harness()).await;
    let read_only = listing_requests(&kernel_opens_harness()).await;
    assert!(
        writable >= read_only + 5,
        "writable {writable}, read-only {read_only}"
    );
}

#[tokio::test]
async fn kernel_opens_pages_are_offered_once_per_version() {
    let h = kernel_opens_harness();
    h.apply(h.zk.create("/f", b"one", 0));
    let first = h.resolve("/f").await.expect("f");
    h.invalidations.take();
    let stores = |invs: Vec<Invalidation>| -> Vec<u64> {
        invs.into_iter()
            .filter_map(|i| match i {
                Invalidation::Store { ino, .. } => Some(ino),
                _ => None,
            })
            .collect()
    };
    h.fs.offer_pages(&[first.ino]);
    h.fs.offer_pages(&[first.ino]);
    assert_eq!(stores(h.invalidations.take()), [first.ino]);
    // A new version is a new inode: offered again; the superseded one never.
    h.apply(h.zk.set("/f", b"two"));
    let second = h.resolve("/f").await.expect("f");
    h.invalidations.take();
    h.fs.offer_pages(&[first.ino, second.ino]);
    assert_eq!(stores(h.invalidations.take()), [second.ino]);
}

// ---- pjdfstest unlink/14: an unlinked open file keeps its writes ----

const HELLO: &[u8] = b"Hello,_World!";

/// pjdfstest unlink/14 test 5: `create N 0644` (open O_CREAT|O_EXCL, then
/// close: the flush sends nothing, the release that creates the node comes
/// asynchronously). Returns (inode, the creator's handle, not yet released).
async fn created_and_closed(h: &Harness, name: &str) -> (u64, u64) {
    let (entry, fh) =
        h.fs.create(ROOT_INO, OsStr::new(name), OpenMode::default(), true, 1)
            .await
            .expect("create");
    h.fs.flush(fh).await.expect("close");
    (entry.attr.ino, fh)
}

const RW: OpenMode = OpenMode {
    write: true,
    truncate: false,
    append: false,
};

#[tokio::test(start_paused = true)]
async fn unlink14_a_file_opened_before_its_create_landed_stats_its_writes_once_unlinked() {
    // Test 6 (`open N O_RDWR : write : unlink N : pread`) opened the file
    // while test 5's release had not created it yet: its handle was opened
    // on the pending file, then the release created the (empty) node. Once
    // unlinked, `fstat`/`GETATTR` through that handle failed with ENOENT
    // (the handle had no attributes of the created version to fall back to).
    for in_flight in [false, true] {
        let h = harness();
        let (ino, creator) = created_and_closed(&h, "n").await;
        let fh = if in_flight {
            // The release's create is out (applied, answer late) while the
            // next open and write arrive.
            h.zk.inject(WriteFault::LateAnswer(50));
            let release = h.fs.release(creator);
            tokio::pin!(release);
            let polled =
                tokio::time::timeout(std::time::Duration::from_millis(10), &mut release).await;
            assert!(polled.is_err(), "the create's answer is still out");
            assert!(h.zk.exists("/n"));
            let fh = h.fs.open(ino, RW, 1).await.expect("open").fh;
            h.fs.write(fh, 0, HELLO).await.expect("write");
            release.await.expect("release creates");
            fh
        } else {
            let fh = h.fs.open(ino, RW, 1).await.expect("open").fh;
            h.fs.write(fh, 0, HELLO).await.expect("write");
            h.fs.release(creator).await.expect("late release creates");
            fh
        };
        assert_eq!(h.zk.data("/n").as_deref(), Some(&b""[..]), "{in_flight}");
        h.deliver_own();
        assert_eq!(
            h.fs.getattr(ino).await.expect("stat").size,
            13,
            "{in_flight}"
        );
        h.fs.unlink(ROOT_INO, OsStr::new("n"))
            .await
            .expect("unlink");
        h.deliver_own();
        assert!(!h.zk.exists("/n"), "{in_flight}: deleted");
        let attr =
            h.fs.getattr(ino)
                .await
                .expect("fstat of the open unlinked file");
        assert_eq!((attr.size, attr.nlink), (13, 0), "{in_flight}");
        let (data, start, end) = h.fs.read(fh, 0, 13).await.expect("pread");
        assert_eq!(&data[start..end], HELLO, "{in_flight}");
        let _ = h.fs.release(fh).await;
        assert!(!h.zk.exists("/n"), "{in_flight}: nothing re-created");
    }
}

#[tokio::test(start_paused = true)]
async fn unlink14_an_unlinked_new_file_shows_what_was_written_not_an_untouched_handle() {
    // Test 5's release arrives after test 6's unlink: the new file is never
    // created, and until then two write handles hold it, the creator's
    // (nothing written) and test 6's (13 bytes). Its size was the last
    // dirty handle's in the handle table's order (a hash map's), so a
    // LOOKUP or GETATTR after the write could answer 0: the kernel takes
    // that size for the inode, and a pread of the 13 bytes returns nothing.
    // Which handle comes last differs per handle table: 32 fresh mounts
    // make a pass by luck one chance in 2^32.
    for round in 0..32 {
        let h = harness();
        let (ino, creator) = created_and_closed(&h, "n").await;
        let fh = h.fs.open(ino, RW, 1).await.expect("open").fh;
        h.fs.write(fh, 0, HELLO).await.expect("write");
        let looked_up =
            h.fs.lookup(ROOT_INO, OsStr::new("n"))
                .await
                .expect("lookup");
        assert_eq!(looked_up.attr.size, 13, "round {round}: lookup");
        assert_eq!(
            h.fs.getattr(ino).await.expect("stat").size,
            13,
            "round {round}"
        );
        h.fs.unlink(ROOT_INO, OsStr::new("n"))
            .await
            .expect("unlink");
        let attr =
            h.fs.getattr(ino)
                .await
                .expect("fstat of the open unlinked file");
        assert_eq!((attr.size, attr.nlink), (13, 0), "round {round}: fstat");
        let (data, start, end) = h.fs.read(fh, 0, 13).await.expect("pread");
        assert_eq!(&data[start..end], HELLO, "round {round}");
        h.fs.release(creator).await.expect("late release");
        h.fs.release(fh).await.expect("release");
        assert!(!h.zk.exists("/n"), "round {round}: nothing created");
        assert_eq!(h.zk.writes_received(), 0, "round {round}");
    }
}

#[tokio::test(start_paused = true)]
async fn unlink14_a_lookup_after_the_created_event_shows_the_unsent_writes() {
    // Test 5's release created the (empty) node after test 6 opened and
    // wrote the file (or its Created event came after the write): that event
    // drops the kernel's dentry, so the unlink's path walk looks `N` up
    // again, and the lookup answered the node's size (0) for the inode the
    // write had sized to 13. The kernel takes it: pread then sees EOF.
    for release_first in [false, true] {
        let h = harness();
        let (ino, creator) = created_and_closed(&h, "n").await;
        if release_first {
            h.fs.release(creator).await.expect("release creates");
        }
        let fh = h.fs.open(ino, RW, 1).await.expect("open").fh;
        h.fs.write(fh, 0, HELLO).await.expect("write");
        if !release_first {
            h.fs.release(creator).await.expect("late release creates");
        }
        h.deliver_own();
        let entry =
            h.fs.lookup(ROOT_INO, OsStr::new("n"))
                .await
                .expect("lookup");
        assert_eq!(
            (entry.attr.ino, entry.attr.size),
            (ino, 13),
            "release first: {release_first}"
        );
        h.fs.unlink(ROOT_INO, OsStr::new("n"))
            .await
            .expect("unlink");
        let (data, start, end) = h.fs.read(fh, 0, 13).await.expect("pread");
        assert_eq!(&data[start..end], HELLO);
        let _ = h.fs.release(fh).await;
        assert!(!h.zk.exists("/n"));
    }
}

#[tokio::test(start_paused = true)]
async fn stat_after_another_process_truncated_by_open_shows_the_new_mtime() {
    // pjdfstest open/00: `open(O_TRUNC)` + close in one process, then
    // `stat` in another; the truncation goes out with the release, which
    // the kernel sends without the closing process waiting for it.
    let h = harness();
    h.apply(h.zk.create("/cfg", b"v1", 0));
    let before = h.resolve("/cfg").await.expect("stat");
    let fh =
        h.fs.open(before.ino, WRITE_TRUNC, 1)
            .await
            .expect("open")
            .fh;
    h.fs.flush(fh).await.expect("close");
    let release_later = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        h.fs.release(fh).await.expect("release");
    };
    let (after, ()) = tokio::join!(h.fs.getattr(before.ino), release_later);
    let after = after.expect("getattr");
    assert_eq!(after.size, 0);
    assert!(
        after.mtime_ns > before.mtime_ns,
        "mtime {} must exceed {}",
        after.mtime_ns,
        before.mtime_ns
    );
    assert_eq!(h.zk.data("/cfg").as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn the_pointer_index_keeps_pointers_only() {
    let h = harness();
    h.apply(h.zk.create("/target", b"t", 0));
    h.apply(h.zk.create("/link", b"/target", 0));
    for i in 0..50 {
        h.apply(h.zk.create(&format!("/plain{i}"), b"{\"v\":1}", 0));
    }
    let listed = h.ls("/").await.expect("ls");
    assert_eq!(listed.len(), 52);
    assert_eq!(
        h.resolve("/link").await.expect("link").kind,
        FileKind::Symlink
    );
    let indexed = || {
        super::core::lock(&h.fs.pointers)
            .by_path
            .keys()
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(indexed(), ["/link"]);
    // A pointer that becomes plain data leaves the index (and is a file),
    // and comes back as a symlink when it points again.
    h.apply(h.zk.set("/link", b"plain"));
    assert_eq!(
        h.resolve("/link").await.expect("link").kind,
        FileKind::RegularFile
    );
    assert!(indexed().is_empty());
    assert!(super::core::lock(&h.fs.pointers).by_target.is_empty());
    h.apply(h.zk.set("/link", b"/target"));
    assert_eq!(
        h.resolve("/link").await.expect("link").kind,
        FileKind::Symlink
    );
    assert_eq!(indexed(), ["/link"]);
}

#[tokio::test]
async fn kernel_opens_the_end_of_one_pass_does_not_end_another() {
    // Two processes list one directory at once: the second's offset 0
    // starts a pass that replaces the first's; the first then reaches its
    // end. The second pass must go on (not end early, not start over).
    let (h, dir) = kernel_opens_dir_of_five().await;
    let first = h.fs.readdir_inode(dir.ino, 0).await.expect("first pass");
    let second = h.fs.readdir_inode(dir.ino, 0).await.expect("second pass");
    assert_ne!(first.pass(), second.pass());
    h.fs.listing_ended(dir.ino, first.pass(), first.loaded());
    let later = h.fs.readdir_inode(dir.ino, 3).await.expect("offset 3");
    assert_eq!(later.pass(), second.pass(), "the second pass continues");
    // Its own end does end it.
    h.fs.listing_ended(dir.ino, second.pass(), second.loaded());
    let end =
        h.fs.readdir_inode(dir.ino, second.loaded())
            .await
            .expect("end");
    assert_eq!((end.loaded(), end.pass()), (0, 0));
}

/// The store takes a send's answer into its cache a moment before the
/// writer's inode shows that version. A lookup in between (a `stat` on
/// another thread) must keep the writer's number, in both orders: seeing
/// the cache's new version first, and seeing the old one from before the
/// answer when the inode shows the new one already (nano and vim compare
/// the number across saves).
#[tokio::test]
async fn a_lookup_racing_a_sends_answer_keeps_the_writers_inode() {
    let h = harness();
    h.apply(h.zk.create("/f", b"one", 0));
    let ino = h.resolve("/f").await.expect("stat").ino;
    let w =
        h.fs.open(
            ino,
            OpenMode {
                write: true,
                ..OpenMode::default()
            },
            1,
        )
        .await
        .expect("open to write");
    // The answer is in the cache, the writer's `show_sent` not yet run.
    let before = h.fs.store().peek("/f").expect("cached");
    let sending = h.fs.sending(ino);
    h.fs.store()
        .set_data("/f", b"two".to_vec(), Some(before.stat.version))
        .await
        .expect("set");
    h.deliver_own();
    assert_eq!(h.resolve("/f").await.expect("stat").ino, ino);
    drop(sending);
    // A view read before the answer, resolved after the inode shows it.
    let sending = h.fs.sending(ino);
    let before = h.fs.store().peek("/f").expect("cached");
    h.fs.store()
        .set_data("/f", b"three".to_vec(), Some(before.stat.version))
        .await
        .expect("set");
    h.deliver_own();
    assert_eq!(h.resolve("/f").await.expect("stat").ino, ino);
    let after = h.fs.store().peek("/f").expect("cached");
    let (got, _, view) = h.fs.resolve_view("/f", super::inode::Role::Node, before);
    assert_eq!(got, ino, "an outdated view is no new inode");
    assert_eq!(view.stat.mzxid, after.stat.mzxid, "it was read again");
    drop(sending);
    // Another client's change is another version: a new number.
    h.apply(h.zk.set("/f", b"four"));
    assert_ne!(h.resolve("/f").await.expect("stat").ino, ino);
    h.fs.release(w.fh).await.expect("release");
}

fn entry_expiries(invalidations: &[Invalidation], name: &str) -> usize {
    invalidations
        .iter()
        .filter(|i| matches!(i, Invalidation::Entry { name: n, .. } if n == name))
        .count()
}

/// A write through the mount keeps the writer's inode and shows it: the
/// write's own watch event (before its answer, as ZooKeeper sends it, or
/// after) expires no entry, so the next `open` of the name needs no
/// `LOOKUP`. Another client's change still does.
#[tokio::test]
async fn an_own_writes_echo_expires_no_entry() {
    let h = harness();
    h.apply(h.zk.create("/f", b"one", 0));
    let ino = h.resolve("/f").await.expect("stat").ino;
    h.invalidations.take();
    // The echo after the answer.
    h.write_file("/f", b"two", WRITE_TRUNC)
        .await
        .expect("write");
    let seen = h.invalidations.take();
    assert_eq!(entry_expiries(&seen, "f"), 0, "{seen:?}");
    assert!(seen.contains(&Invalidation::Inode(ino)), "{seen:?}");
    // The echo while the send is out.
    let sending = h.fs.sending(ino);
    let version = h.fs.store().peek("/f").expect("cached").stat.version;
    h.fs.store()
        .set_data("/f", b"three".to_vec(), Some(version))
        .await
        .expect("set");
    h.deliver_own();
    drop(sending);
    let seen = h.invalidations.take();
    assert_eq!(entry_expiries(&seen, "f"), 0, "{seen:?}");
    // Another client's change: the name is looked up again.
    h.apply(h.zk.set("/f", b"four"));
    assert_eq!(entry_expiries(&h.invalidations.take(), "f"), 1);
}

/// A write that makes a file's data a pointer's path shows the node as a
/// symlink: with no entry expired by its echo, the write itself expires it.
#[tokio::test]
async fn an_own_write_that_changes_the_kind_expires_the_entry() {
    let h = harness();
    h.apply(h.zk.create("/target", b"t", 0));
    h.apply(h.zk.create("/f", b"plain", 0));
    h.resolve("/target").await.expect("the target is known");
    assert_eq!(
        h.resolve("/f").await.expect("stat").kind,
        FileKind::RegularFile
    );
    h.invalidations.take();
    h.write_file("/f", b"/target", WRITE_TRUNC)
        .await
        .expect("write");
    assert_eq!(entry_expiries(&h.invalidations.take(), "f"), 1);
    assert_eq!(h.resolve("/f").await.expect("stat").kind, FileKind::Symlink);
}

/// A write sent after the connection came back but before the root watch
/// was on again echoes no event. Once the watch is back, another client's
/// next change to that file must not be taken for the echo (the mount
/// would go on showing its own, older, data).
#[tokio::test]
async fn a_write_sent_before_the_watch_was_back_swallows_no_later_change() {
    let h = harness();
    h.apply(h.zk.create("/f", b"one", 0));
    assert_eq!(h.cat("/f").await.expect("cat"), b"one");
    let version = h.fs.store().peek("/f").expect("cached").stat.version;
    h.fs.store()
        .set_data("/f", b"ours".to_vec(), Some(version))
        .await
        .expect("set");
    // Its echo never comes: the watch was not on yet.
    let _ = h.zk.take_own_events();
    h.fs.watch_back();
    h.apply(h.zk.set("/f", b"theirs"));
    assert_eq!(h.cat("/f").await.expect("cat"), b"theirs");
}
