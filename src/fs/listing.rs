//! A directory listing that is read while it is built: one load (its own
//! task, `ZkFs::fill_listing` in core.rs) appends the entries of one pass in
//! order, wave by wave, and each `readdir` of the pass waits only until the
//! entry at its offset is there (or the pass ended or failed).
//!
//! Owns the shared progress of one pass ([`Filler`] on the load's side,
//! [`Stream`] on the readers' side, a `tokio::sync::watch` between them) and
//! what one `readdir` is answered ([`Listed`]). What the entries are is
//! core.rs's; where a pass is kept (per handle, per inode) too.

use std::sync::Arc;

use tokio::sync::watch;

use super::core::DirEntry;
use super::error::FsError;
use crate::zk::ZkError;

/// What one `readdir` answers: the entries of the pass loaded so far (at
/// least the one at its offset, unless the pass has fewer).
#[derive(Clone, Debug, Default)]
pub struct Listed {
    parts: Vec<Arc<[DirEntry]>>,
    /// Every entry of the pass is in `parts`.
    complete: bool,
    /// The pass these entries are from (0 for none: [`Listed::whole`]).
    pass: u64,
}

impl Listed {
    /// A whole pass at once.
    pub fn whole(entries: Vec<DirEntry>) -> Self {
        Listed {
            parts: vec![entries.into()],
            complete: true,
            pass: 0,
        }
    }

    /// Whether these are all the entries of the pass (so a reply that takes
    /// all of them from its offset reached the end).
    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Whether a reply that took these entries from its offset on, up to
    /// the end of the loaded ones unless it was `full`, answered the pass's
    /// last entry: only then may the pass end ([`super::ZkFs::listing_ended`]).
    /// A pass still loading answers what it has so far, so a short reply
    /// of it is not its end.
    pub fn answers_end(&self, full: bool) -> bool {
        !full && self.complete
    }

    /// Which pass these entries are from ([`Stream::id`]); 0 for entries
    /// of no pass.
    pub fn pass(&self) -> u64 {
        self.pass
    }

    /// How many entries were loaded.
    pub fn loaded(&self) -> u64 {
        self.parts.iter().map(|p| p.len() as u64).sum()
    }

    /// The loaded entries from `offset` on, with their offsets.
    pub fn from(&self, offset: u64) -> impl Iterator<Item = (u64, &DirEntry)> {
        let mut start = 0u64;
        self.parts.iter().flat_map(move |part| {
            let first = start;
            start += part.len() as u64;
            let skip = offset.saturating_sub(first).min(part.len() as u64);
            part[skip as usize..]
                .iter()
                .zip(first + skip..)
                .map(|(e, i)| (i, e))
        })
    }

    /// Every loaded entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = &DirEntry> {
        self.from(0).map(|(_, e)| e)
    }
}

/// One pass as its load left it so far.
#[derive(Default)]
struct Progress {
    listed: Listed,
    /// Why the pass stopped short, when it did: offsets past the loaded
    /// entries get this.
    failed: Option<FsError>,
}

/// The load's side of a pass.
pub struct Filler(watch::Sender<Progress>);

/// The readers' side of a pass: kept where the pass is kept, cloned by each
/// `readdir` that waits on it.
#[derive(Clone)]
pub struct Stream {
    /// Unique per pass (from 1): whoever ends a pass says which.
    id: u64,
    progress: watch::Receiver<Progress>,
    /// The directory's path (for the error of a load that vanished).
    dir: Arc<str>,
}

/// A new, empty pass over the directory at `dir`.
pub fn pass(dir: &str) -> (Filler, Stream) {
    static PASSES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let (tx, rx) = watch::channel(Progress::default());
    let stream = Stream {
        id: PASSES.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        progress: rx,
        dir: dir.into(),
    };
    (Filler(tx), stream)
}

impl Filler {
    /// Append the next entries of the pass.
    pub fn push(&self, entries: Vec<DirEntry>) {
        if !entries.is_empty() {
            self.0.send_modify(|p| p.listed.parts.push(entries.into()));
        }
    }

    /// Whether the entries pushed so far include one named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.borrow().listed.iter().any(|e| e.name == name)
    }

    /// The pass is complete, or failed for the entries not pushed yet.
    pub fn end(self, result: Result<(), FsError>) {
        self.0.send_modify(|p| match result {
            Ok(()) => p.listed.complete = true,
            Err(e) => p.failed = Some(e),
        });
    }

    /// Nobody keeps the pass any more (a new pass replaced it, its handle
    /// was released): the load may stop.
    pub fn abandoned(&self) -> bool {
        self.0.is_closed()
    }
}

impl Stream {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pass from `offset`: waits until the entry at `offset` is loaded,
    /// or the pass is complete (then what it has, maybe nothing past
    /// `offset`), or failed short of it (its error).
    pub async fn at(&self, offset: u64) -> Result<Listed, FsError> {
        let mut rx = self.progress.clone();
        let progress = rx
            .wait_for(|p| p.listed.loaded() > offset || p.listed.complete || p.failed.is_some())
            .await
            // The load ended without saying how (its task was dropped, as
            // when the runtime shuts down).
            .map_err(|_| {
                let stopped = ZkError::Other("the listing's load stopped".into());
                FsError::zk(&self.dir, "getData", stopped)
            })?;
        match &progress.failed {
            Some(e) if progress.listed.loaded() <= offset => Err(e.clone()),
            _ => Ok(Listed {
                pass: self.id,
                ..progress.listed.clone()
            }),
        }
    }
}
