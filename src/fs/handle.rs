//! Open file handles: what one `open` holds (a snapshot of the content for
//! reads, a [`Writer`] for writes) and the answers `open` gives the kernel.
//!
//! Owns the write handle's state machine ([`WriteState`]: clean, dirty,
//! refused, failed); the operations that move it (write, flush, rename...)
//! live in `write.rs`, the reads in `core.rs`, and both use this module. It
//! must not talk to ZooKeeper or the kernel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::attr::Attr;

/// Orders the content changes of all write handles (see `Writer::changed`).
static CHANGES: AtomicU64 = AtomicU64::new(1);

fn next_change() -> u64 {
    CHANGES.fetch_add(1, Ordering::Relaxed)
}

pub(super) struct OpenFile {
    pub(super) ino: u64,
    /// Node whose data this handle reads/writes (the directory for `.data`).
    pub(super) path: String,
    /// The content as of `open`: reads through one handle are consistent.
    pub(super) data: Arc<[u8]>,
    /// Present for handles opened for writing.
    pub(super) writer: Option<Arc<tokio::sync::Mutex<Writer>>>,
    /// Attributes at open: what `stat` shows through this handle once the
    /// node is gone (a vanished registration still reads its last data).
    pub(super) attr: Option<Attr>,
    /// For a [`PageCache::Bypass`] handle (its inode shows another version):
    /// the attributes of the version it reads, which `fstat` shows while no
    /// handle reads the inode's own version through its pages and size.
    pub(super) direct_attr: Option<Attr>,
    /// How the kernel reads through it (see [`PageCache`]): a [`PageCache::Keep`]
    /// reader uses its inode's pages, which no write on this mount may then
    /// change (`ZkFs::open`).
    pub(super) cache: PageCache,
    /// The process that opened it (the FUSE request's pid).
    pub(super) pid: u32,
    /// Notified when the handle is released (opens waiting for a pending
    /// truncation to be sent, see `Writer::awaits_release`).
    pub(super) released: Arc<tokio::sync::Notify>,
}

/// What the kernel may do with its cached pages of a file just opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCache {
    /// Keep them: the inode shows one version, and the pages are of it.
    Keep,
    /// Drop them and read through this handle (a writer is open here).
    Drop,
    /// Bypass the page cache and the inode's size (direct I/O): this handle
    /// reads a version other than the one its inode shows (the node moved
    /// on before the kernel looked the name up again), so neither the
    /// inode's pages nor its size may be mixed with it.
    Bypass,
}

/// The answer to `open`.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub fh: u64,
    pub cache: PageCache,
}

/// How a file is opened.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenMode {
    pub write: bool,
    pub truncate: bool,
    pub append: bool,
}

/// Where a write handle's content stands. The state is set *before* any
/// `.await` to what is right if the operation were dropped there, so a
/// cancelled or failed send can never be sent again behind the caller's back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteState {
    /// Nothing to send: the content is what the node has (as far as this
    /// handle knows).
    Clean,
    /// Changed since open or since the last send.
    Dirty,
    /// A write beyond `--max-data` was refused: nothing from this handle is
    /// ever sent, so no reader sees a truncated value. `reported` once a
    /// close/fsync said so too.
    Refused { size: usize, reported: bool },
    /// A send failed and the failure was reported: this content is never
    /// sent again (a reported failure is final); new writes make it Dirty.
    Failed,
}

/// The state of one write handle.
#[derive(Debug)]
pub struct Writer {
    pub(super) buf: Vec<u8>,
    /// The node version this content is based on (None: node not created yet).
    pub(super) base_version: Option<i32>,
    pub(super) state: WriteState,
    /// Data was written (or the size set) through this handle since open.
    /// `flush` runs at every close of a duplicated descriptor (the shell's
    /// `>` closes one right after open), so only then does it send; the
    /// last close (`release`) sends whatever is left.
    pub(super) written: bool,
    /// A close (`flush`) left content unsent (a truncation with nothing
    /// written): opens of the node wait for the release that sends it.
    pub(super) closed_unsent: bool,
    pub(super) append: bool,
    /// For an `O_APPEND` handle whose every change was an append: the
    /// length of the node's content it appends to (the rest of `buf` is
    /// its own). A change by another client is then not a conflict: the
    /// appended bytes go after the node's new content, as `O_APPEND`
    /// promises. `None` once the handle truncated or was not appending.
    pub(super) appended_from: Option<usize>,
    /// When the content last changed (a write, a size set, or an open that
    /// starts it empty), in the order of every handle's changes: of several
    /// handles of one file with unsent content, `stat` shows the latest.
    pub(super) changed: u64,
    /// Why the last send failed (state `Failed`): told again to every
    /// later `fsync` and close of this handle until new content, since the
    /// one that saw it may have been another descriptor's (a child's
    /// close-on-exec of an inherited one, say).
    pub(super) failure: Option<super::error::FsError>,
}

impl Writer {
    pub fn existing(data: &[u8], version: i32, mode: OpenMode) -> Writer {
        Writer {
            buf: if mode.truncate {
                Vec::new()
            } else {
                data.to_vec()
            },
            base_version: Some(version),
            // `> file` must empty the node even when nothing is written.
            state: if mode.truncate {
                WriteState::Dirty
            } else {
                WriteState::Clean
            },
            written: false,
            closed_unsent: false,
            append: mode.append,
            appended_from: (mode.append && !mode.truncate).then_some(data.len()),
            changed: if mode.truncate { next_change() } else { 0 },
            failure: None,
        }
    }

    pub(super) fn new_file(mode: OpenMode) -> Writer {
        Writer {
            buf: Vec::new(),
            base_version: None,
            state: WriteState::Dirty,
            written: false,
            closed_unsent: false,
            append: mode.append,
            appended_from: None,
            changed: next_change(),
            failure: None,
        }
    }

    pub fn content(&self) -> &[u8] {
        &self.buf
    }

    /// Size of the content this handle holds and has not sent (for `stat`
    /// while open), with when it last changed.
    pub(super) fn unsent(&self) -> Option<(u64, usize)> {
        (self.state == WriteState::Dirty).then_some((self.changed, self.buf.len()))
    }

    /// A close left content to be sent at release.
    pub fn awaits_release(&self) -> bool {
        self.closed_unsent && self.state == WriteState::Dirty
    }

    /// New content through this handle (after a refusal nothing counts).
    pub(super) fn touched(&mut self) {
        if !matches!(self.state, WriteState::Refused { .. }) {
            self.state = WriteState::Dirty;
        }
        self.written = true;
        self.changed = next_change();
        self.failure = None;
    }
}
