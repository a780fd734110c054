//! The fuser adapter: a thin layer that turns kernel requests into calls on
//! the filesystem core ([`crate::fs::ZkFs`]) and its results into replies.
//!
//! Owns the kernel-facing choices (TTLs, open flags, init capabilities) and
//! the thread that sends invalidations. Cache hits are answered on the FUSE
//! worker thread; anything that must wait for ZooKeeper continues on the tokio
//! runtime, bounded by `--op-timeout`, so no worker ever blocks on the network.
//! It must not contain filesystem semantics.

pub mod busy_poll;
pub mod counters;
pub mod invalidate;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
};
use tracing::{Level, event};

use self::busy_poll::BusyPoll;
use self::counters::{KernelOp, KernelRequestCounters};
use crate::fs::{
    Attr, Entry, FileKind, FsError, OpenMode, Opened, Opens, PageCache, RenameFlags, ZkFs,
};
use crate::zk::{ZkBackend, ZkError};

/// How long the kernel may keep entries and attributes without asking. Every
/// change we learn of is invalidated explicitly (directory listings too, which
/// the kernel keeps with `FOPEN_CACHE_DIR`); the TTL only bounds how long a
/// lost invalidation could matter. Listings served from the kernel's cache
/// do not refresh attributes, so a short TTL would turn every `ls -l` of a
/// large directory into one `LOOKUP` per entry once it passed.
const TTL: Duration = Duration::from_secs(60);

/// What a request is about, for the log line of its timeout: an inode, or
/// a name in a directory (a lookup: the path it looked for).
enum Subject {
    Inode(u64),
    Child(u64, std::ffi::OsString),
}

impl From<u64> for Subject {
    fn from(ino: u64) -> Self {
        Subject::Inode(ino)
    }
}

pub struct ZkFuse<B: ZkBackend> {
    fs: Arc<ZkFs<B>>,
    runtime: tokio::runtime::Handle,
    op_timeout: Duration,
    counters: Arc<KernelRequestCounters>,
    busy_poll: Option<Arc<BusyPoll>>,
    /// Fixed at mount: whether the kernel opens by itself.
    opens: Opens,
    /// Files of each directory's last readdirplus chunk, whose pages are
    /// offered once the kernel asks for the next chunk ([`Opens::Kernel`]).
    listed: Arc<Mutex<HashMap<u64, Vec<u64>>>>,
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::RegularFile => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
    }
}

fn to_file_attr(attr: &Attr) -> FileAttr {
    let mtime = UNIX_EPOCH + Duration::from_nanos(attr.mtime_ns);
    let crtime = UNIX_EPOCH + Duration::from_millis(attr.crtime_ms.max(0) as u64);
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime,
        kind: to_file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Completion for operations answered with an empty reply.
fn empty_reply(reply: ReplyEmpty) -> impl FnOnce(Result<(), FsError>) + Send + 'static {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// Completion for operations answered with a directory entry.
fn entry_reply(reply: ReplyEntry) -> impl FnOnce(Result<Entry, FsError>) + Send + 'static {
    move |r| match r {
        Ok(entry) => reply.entry(&TTL, &to_file_attr(&entry.attr), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

/// How `open(2)` flags map onto a write handle.
fn open_mode(flags: i32) -> OpenMode {
    let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
    OpenMode {
        write: write || flags & libc::O_TRUNC != 0,
        truncate: flags & libc::O_TRUNC != 0,
        append: flags & libc::O_APPEND != 0,
    }
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

impl<B: ZkBackend> ZkFuse<B> {
    pub fn new(
        fs: Arc<ZkFs<B>>,
        runtime: tokio::runtime::Handle,
        op_timeout: Duration,
        counters: Arc<KernelRequestCounters>,
        busy_poll: Option<Arc<BusyPoll>>,
    ) -> Self {
        ZkFuse {
            opens: fs.opens(),
            listed: Default::default(),
            fs,
            runtime,
            op_timeout,
            counters,
            busy_poll,
        }
    }

    /// Every request starts here (`forget`, which has no reply, at [`Self::note_request`]).
    fn arrived(&self, op: KernelOp) {
        // Nobody waits for a release: it does not make a burst.
        let waited = !matches!(op, KernelOp::Release | KernelOp::Releasedir);
        self.note_request(op, waited);
    }

    /// Count the request and tell the device poller whether a caller waits.
    fn note_request(&self, op: KernelOp, waited: bool) {
        self.counters.count(op);
        if let Some(poll) = &self.busy_poll {
            poll.request_arrived(waited);
        }
    }

    /// Run a read-only `fut`, bounded by `--op-timeout` (dropping a read
    /// changes nothing: the core's reads are cancel-safe). `subject` names
    /// what a timeout is logged for.
    fn dispatch<T, F, R>(&self, op: &'static str, subject: impl Into<Subject>, fut: F, reply: R)
    where
        T: Send + 'static,
        F: Future<Output = Result<T, FsError>> + Send + 'static,
        R: FnOnce(Result<T, FsError>) + Send + 'static,
    {
        let timeout = self.op_timeout;
        let fs = self.fs.clone();
        let subject = subject.into();
        let bounded = async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(FsError::Zk {
                    path: match subject {
                        Subject::Inode(ino) => fs.describe(ino),
                        Subject::Child(parent, name) => {
                            crate::zk::path::join(&fs.describe(parent), &name.to_string_lossy())
                        }
                    },
                    op,
                    error: ZkError::Timeout,
                }),
            }
        };
        self.run(op, bounded, reply);
    }

    /// Run a modifying `fut` to its end: it is never dropped half-way (a
    /// dropped write could be applied after its failure was reported). The
    /// core bounds each of its steps itself: waiting for a connection by
    /// `--op-timeout` (nothing is sent then), a sent request until its
    /// outcome is known.
    fn dispatch_write<T, F, R>(&self, op: &'static str, fut: F, reply: R)
    where
        T: Send + 'static,
        F: Future<Output = Result<T, FsError>> + Send + 'static,
        R: FnOnce(Result<T, FsError>) + Send + 'static,
    {
        self.run(op, fut, reply);
    }

    /// Answer on this thread if `fut` completes without waiting (a cache
    /// hit), else finish it on the runtime. Errors are logged once here.
    fn run<T, F, R>(&self, op: &'static str, fut: F, reply: R)
    where
        T: Send + 'static,
        F: Future<Output = Result<T, FsError>> + Send + 'static,
        R: FnOnce(Result<T, FsError>) + Send + 'static,
    {
        let _guard = self.runtime.enter();
        // A panic in the handler is caught and answered (EIO): uncaught it
        // ended the FUSE thread that polled it here, or, in a task, left
        // the request unanswered and its caller waiting for ever.
        let mut fut = Answered {
            fut: Box::pin(fut),
            op,
        };
        let report = move |r: Result<T, FsError>| {
            if let Err(e) = &r {
                log_error(op, e);
            }
            reply(r)
        };
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(r) => {
                report(r);
                if let Some(poll) = &self.busy_poll {
                    poll.request_answered();
                }
            }
            Poll::Pending => {
                if let Some(poll) = &self.busy_poll {
                    poll.request_deferred();
                }
                self.runtime.spawn(async move { report(fut.await) });
            }
        }
    }
}

/// A request's future whose panic becomes [`FsError::Internal`].
struct Answered<T> {
    fut: Pin<Box<dyn Future<Output = Result<T, FsError>> + Send>>,
    op: &'static str,
}

impl<T> Future for Answered<T> {
    type Output = Result<T, FsError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let op = self.op;
        // Unwind safety: the core's locks are taken with
        // `unwrap_or_else(into_inner)` and its state changes are guarded
        // (see the module docs of `fs`); a handler that panicked mid-way
        // leaves what a cancelled one would.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.fut.as_mut().poll(cx)))
        {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Err(FsError::Internal(op.to_string()))),
        }
    }
}

fn log_error(op: &'static str, e: &FsError) {
    let errno = e.errno();
    match e.level() {
        Level::DEBUG => event!(Level::DEBUG, op, errno, "{e}"),
        _ if errno == libc::ESTALE && KERNEL_RETRY.repeats(op, &e.to_string()) => {
            event!(Level::DEBUG, op, errno, "{e} (again: the kernel's retry)")
        }
        _ => event!(Level::WARN, op, errno, "{e}"),
    }
}

/// The kernel answers an `ESTALE` from a call by path (`rename`, `unlink`,
/// `mkdir`, `open`, `stat`, ...) by looking the path up again and making
/// the call once more (`retry_estale`, `LOOKUP_REVAL`): a refusal that
/// stands is refused twice, a few milliseconds apart, for one failure the
/// caller sees. The second identical line is logged at debug, so that one
/// failure makes one warn line. Calls on a descriptor (`write`, `flush`,
/// `fsync`, `release`, `read`) are not retried: each of their failures is
/// its own.
static KERNEL_RETRY: RetryFilter = RetryFilter::new();

/// Longest gap between a refusal and the kernel's retry of it taken as one
/// failure (the retry follows at once; a second caller a second later is
/// another failure).
const KERNEL_RETRY_WINDOW: Duration = Duration::from_secs(1);

struct RetryFilter {
    last: Mutex<Option<(&'static str, String, std::time::Instant)>>,
}

impl RetryFilter {
    const fn new() -> Self {
        RetryFilter {
            last: Mutex::new(None),
        }
    }

    /// Whether this `ESTALE` of `op` repeats the last one logged (same
    /// line, within the window): the kernel's retry. A repeat is
    /// forgotten, so a third identical line is logged again.
    fn repeats(&self, op: &'static str, line: &str) -> bool {
        if matches!(op, "write" | "flush" | "fsync" | "release" | "read") {
            return false;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        let repeat = last.as_ref().is_some_and(|(o, l, at)| {
            *o == op && l == line && now.duration_since(*at) < KERNEL_RETRY_WINDOW
        });
        *last = if repeat {
            None
        } else {
            Some((op, line.to_string(), now))
        };
        repeat
    }
}

impl<B: ZkBackend> Filesystem for ZkFuse<B> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            // O_TRUNC arrives with open, not as a separate truncate.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            // No file has a set-user-ID bit (modes are at most 0777) or
            // file capabilities (no `security.*` attributes): nothing for
            // a write to clear. With this the kernel checks each inode
            // once and marks it `S_NOSEC` (`SB_NOSEC`) instead of asking
            // for `security.capability` before every truncate and write
            // (two `GETXATTR` round trips per write).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ] {
            if let Err(unsupported) = config.add_capabilities(flag) {
                tracing::debug!(?unsupported, "kernel lacks capability");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.arrived(KernelOp::Lookup);
        let fs = self.fs.clone();
        let name = name.to_os_string();
        let offer = (self.opens == Opens::Kernel).then(|| self.fs.clone());
        let reply = entry_reply(reply);
        let subject = Subject::Child(parent.0, name.clone());
        self.dispatch(
            "lookup",
            subject,
            async move { fs.lookup(parent.0, &name).await },
            move |r| {
                let file = match &r {
                    Ok(entry) if entry.attr.kind == FileKind::RegularFile => Some(entry.attr.ino),
                    _ => None,
                };
                reply(r);
                // A file looked up is usually read next (a new version
                // after a change): its pages may be in the kernel first.
                if let (Some(fs), Some(ino)) = (offer, file) {
                    fs.offer_pages(&[ino]);
                }
            },
        );
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.note_request(KernelOp::Other, false);
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.arrived(KernelOp::Getattr);
        let fs = self.fs.clone();
        let pid = req.pid();
        self.dispatch(
            "getattr",
            ino.0,
            async move { fs.getattr_by(ino.0, Some(pid)).await },
            move |r| match r {
                Ok(attr) => reply.attr(&TTL, &to_file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        let fh = fh.map(|f| f.0);
        self.dispatch_write(
            "setattr",
            async move { fs.setattr(ino.0, mode, uid, gid, size, fh).await },
            move |r| match r {
                Ok(attr) => reply.attr(&TTL, &to_file_attr(&attr)),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.arrived(KernelOp::Open);
        if self.opens == Opens::Kernel {
            // The kernel opens by itself from now on (fs/fuse/file.c:
            // `no_open`, with FOPEN_KEEP_CACHE); this open succeeds. The
            // mount is read-only, so the VFS refuses opens for writing.
            reply.error(Errno::ENOSYS);
            return;
        }
        let mode = open_mode(flags.0);
        let fs = self.fs.clone();
        let pid = req.pid();
        self.dispatch(
            "open",
            ino.0,
            async move { fs.open(ino.0, mode, pid).await },
            move |r| match r {
                Ok(Opened { fh, cache }) => {
                    let mut flags = match cache {
                        PageCache::Keep => FopenFlags::FOPEN_KEEP_CACHE,
                        PageCache::Drop => FopenFlags::empty(),
                        PageCache::Bypass => FopenFlags::FOPEN_DIRECT_IO,
                    };
                    if !mode.write {
                        // Nothing to send at close: spare the kernel a FLUSH.
                        flags |= FopenFlags::FOPEN_NOFLUSH;
                    }
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.arrived(KernelOp::Read);
        let fs = self.fs.clone();
        let by_inode = self.opens == Opens::Kernel;
        self.dispatch(
            "read",
            ino.0,
            async move {
                if by_inode {
                    fs.read_inode(ino.0, offset, size).await
                } else {
                    fs.read(fh.0, offset, size).await
                }
            },
            move |r| match r {
                Ok((data, start, end)) => reply.data(&data[start..end]),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        self.arrived(KernelOp::Write);
        let fs = self.fs.clone();
        let data = data.to_vec();
        self.dispatch_write(
            "write",
            async move { fs.write(fh.0, offset, &data).await },
            move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.arrived(KernelOp::Release);
        let fs = self.fs.clone();
        self.dispatch_write(
            "release",
            async move { fs.release(fh.0).await },
            empty_reply(reply),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        self.arrived(KernelOp::Flush);
        if self.opens == Opens::Kernel {
            // Never sent again on this connection (`no_flush`).
            reply.error(Errno::ENOSYS);
            return;
        }
        let fs = self.fs.clone();
        self.dispatch_write(
            "flush",
            async move { fs.flush(fh.0).await },
            empty_reply(reply),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        self.dispatch_write(
            "fsync",
            async move { fs.fsync(fh.0).await },
            empty_reply(reply),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.arrived(KernelOp::Create);
        let fs = self.fs.clone();
        let name = name.to_os_string();
        let mode = open_mode(flags);
        let exclusive = flags & libc::O_EXCL != 0;
        let pid = req.pid();
        self.dispatch_write(
            "create",
            async move { fs.create(parent.0, &name, mode, exclusive, pid).await },
            move |r| match r {
                Ok((entry, fh)) => reply.created(
                    &TTL,
                    &to_file_attr(&entry.attr),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        let name = name.to_os_string();
        let is_regular = mode & libc::S_IFMT == libc::S_IFREG;
        self.dispatch_write(
            "mknod",
            async move { fs.mknod(parent.0, &name, is_regular).await },
            entry_reply(reply),
        );
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        let name = name.to_os_string();
        self.dispatch_write(
            "mkdir",
            async move { fs.mkdir(parent.0, &name).await },
            entry_reply(reply),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        let name = name.to_os_string();
        self.dispatch_write(
            "unlink",
            async move { fs.unlink(parent.0, &name).await },
            empty_reply(reply),
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        let name = name.to_os_string();
        self.dispatch_write(
            "rmdir",
            async move { fs.rmdir(parent.0, &name).await },
            empty_reply(reply),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        let (name, newname) = (name.to_os_string(), newname.to_os_string());
        let pid = req.pid();
        let flags = RenameFlags {
            noreplace: flags.contains(fuser::RenameFlags::RENAME_NOREPLACE),
            exchange: flags.contains(fuser::RenameFlags::RENAME_EXCHANGE),
        };
        self.dispatch_write(
            "rename",
            async move {
                fs.rename(parent.0, &name, newparent.0, &newname, flags, pid)
                    .await
            },
            empty_reply(reply),
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.arrived(KernelOp::Readlink);
        let fs = self.fs.clone();
        self.dispatch(
            "readlink",
            ino.0,
            async move { fs.readlink(ino.0).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        self.arrived(KernelOp::Other);
        let fs = self.fs.clone();
        let (name, target) = (link_name.to_os_string(), target.to_path_buf());
        self.dispatch_write(
            "symlink",
            async move { fs.symlink(parent.0, &name, &target).await },
            entry_reply(reply),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.arrived(KernelOp::Other);
        match self.fs.link(ino.0) {
            Ok(entry) => reply.entry(&TTL, &to_file_attr(&entry.attr), Generation(0)),
            Err(e) => {
                log_error("link", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.arrived(KernelOp::Other);
        // Attributes mirror ZooKeeper's Stat; only user.zkfs.hold can be set.
        let fs = self.fs.clone();
        let (name, value) = (name.to_os_string(), value.to_vec());
        self.dispatch(
            "setxattr",
            ino.0,
            async move { fs.setxattr(ino.0, &name, &value).await },
            empty_reply(reply),
        );
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        self.arrived(KernelOp::Other);
        // No ioctls (tools probe some, e.g. for reflinks; Python's open()
        // asks isatty, TCGETS, of every file): the usual answer, at once.
        // Unlike OPEN, an ENOSYS here does not stop the kernel asking again
        // (tried on 6.18: every TCGETS still arrives).
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.arrived(KernelOp::Other);
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.arrived(KernelOp::Opendir);
        if self.opens == Opens::Kernel {
            // `no_opendir`: the kernel opens directories by itself, with
            // FOPEN_CACHE_DIR|FOPEN_KEEP_CACHE (listings cached until the
            // directory's inode is invalidated, as every child change does).
            reply.error(Errno::ENOSYS);
            return;
        }
        match self.fs.opendir(ino.0) {
            // The kernel may keep listings across opens: every change to a
            // directory's children invalidates the directory's inode.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => {
                log_error("opendir", &e);
                reply.error(errno(&e))
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.arrived(KernelOp::Readdir);
        let fs = self.fs.clone();
        let fs2 = self.fs.clone();
        let by_inode = self.opens == Opens::Kernel;
        self.dispatch(
            "readdir",
            ino.0,
            async move { fs.listing(by_inode, ino.0, fh.0, offset).await },
            move |r| match r {
                Ok(pass) => {
                    let mut full = false;
                    for (i, entry) in pass.from(offset) {
                        full = reply.add(
                            INodeNo(entry.attr.ino),
                            i + 1,
                            to_file_type(entry.attr.kind),
                            &entry.name,
                        );
                        if full {
                            break;
                        }
                    }
                    if by_inode && pass.answers_end(full) {
                        fs2.listing_ended(ino.0, pass.pass(), pass.loaded());
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.arrived(KernelOp::Readdir);
        let fs = self.fs.clone();
        let fs2 = self.fs.clone();
        let by_inode = self.opens == Opens::Kernel;
        // The kernel asks for the next chunk once it has made the inodes
        // of this one: now their pages can be stored.
        let offered = by_inode
            .then(|| lock_ignoring_poison(&self.listed).remove(&ino.0))
            .flatten();
        if let Some(inos) = offered {
            self.fs.offer_pages(&inos);
        }
        let listed = self.listed.clone();
        self.dispatch(
            "readdirplus",
            ino.0,
            async move { fs.listing(by_inode, ino.0, fh.0, offset).await },
            move |r| match r {
                Ok(pass) => {
                    let mut full = false;
                    let mut files = Vec::new();
                    for (i, entry) in pass.from(offset) {
                        // A later chunk: what the file shows now (a write
                        // here since the pass was read changed its size).
                        let attr = if offset != 0 && !by_inode {
                            fs2.listed_attr(&entry.attr)
                        } else {
                            entry.attr
                        };
                        full = reply.add(
                            INodeNo(entry.attr.ino),
                            i + 1,
                            &entry.name,
                            &TTL,
                            &to_file_attr(&attr),
                            Generation(0),
                        );
                        if full {
                            break;
                        }
                        // The kernel takes a reference on every entry but . and ..
                        if entry.name != "." && entry.name != ".." {
                            fs2.remember_lookup(entry.attr.ino);
                        }
                        if by_inode && entry.attr.kind == FileKind::RegularFile {
                            files.push(entry.attr.ino);
                        }
                    }
                    if by_inode && pass.answers_end(full) {
                        fs2.listing_ended(ino.0, pass.pass(), pass.loaded());
                    }
                    if !files.is_empty() {
                        fs2.hold_shown(&files);
                        lock_ignoring_poison(&listed).insert(ino.0, files);
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.arrived(KernelOp::Releasedir);
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.arrived(KernelOp::Other);
        // ZooKeeper has no inode limit: report a large fixed total with the
        // cached nodes in use, so `df -i` and inode alerts see a nearly empty
        // filesystem instead of a full one (no free inodes reads as 100% used).
        const INODES: u64 = u32::MAX as u64;
        let (nodes, _) = self.fs.store().usage();
        let used = (nodes as u64).min(INODES);
        reply.statfs(0, 0, 0, INODES, INODES - used, 4096, 255, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.arrived(KernelOp::Getxattr);
        let fs = self.fs.clone();
        let name = name.to_os_string();
        self.dispatch(
            "getxattr",
            ino.0,
            async move { fs.getxattr(ino.0, &name).await },
            move |r| match r {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.arrived(KernelOp::Other);
        match self.fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for name in names {
                    buf.extend_from_slice(name.as_bytes());
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.arrived(KernelOp::Other);
        reply.ok();
    }
}

/// getxattr/listxattr protocol: size 0 asks for the length; too small is ERANGE.
fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::{Answered, FsError, RetryFilter};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    #[test]
    fn a_handler_that_panics_is_answered_eio() {
        let panicking = async {
            if std::hint::black_box(true) {
                panic!("a bug in a handler");
            }
            Ok::<u32, FsError>(1)
        };
        let mut fut = Answered {
            fut: Box::pin(panicking),
            op: "lookup",
        };
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(&mut fut).poll(&mut cx) {
            Poll::Ready(Err(e @ FsError::Internal(_))) => assert_eq!(e.errno(), libc::EIO),
            other => panic!("not answered EIO: {:?}", other.map(|r| r.map(|_| ()))),
        }
        let mut fine = Answered {
            fut: Box::pin(async { Ok::<u32, FsError>(7) }),
            op: "getattr",
        };
        assert!(matches!(
            Pin::new(&mut fine).poll(&mut cx),
            Poll::Ready(Ok(7))
        ));
    }

    #[test]
    fn the_kernels_retry_of_a_refusal_is_one_failure() {
        let filter = RetryFilter::new();
        let line = "/a: write conflict: /a or /b changed by another client; nothing was renamed";
        assert!(!filter.repeats("rename", line), "the first is logged");
        assert!(filter.repeats("rename", line), "the retry is not");
        assert!(
            !filter.repeats("rename", line),
            "a third is another failure"
        );
        assert!(
            !filter.repeats("unlink", line),
            "another call is another failure"
        );
        assert!(!filter.repeats("rename", "/c: another line"));
        assert!(!filter.repeats("fsync", "/f: conflict"));
        assert!(
            !filter.repeats("fsync", "/f: conflict"),
            "calls on a descriptor are not retried by the kernel"
        );
    }
}
