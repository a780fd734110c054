//! Versions held for the kernel on mounts whose files the kernel opens by
//! itself ([`super::core::Opens::Kernel`]: read-only mounts answer `OPEN`,
//! `OPENDIR` and `FLUSH` with `ENOSYS` once, so no open reaches the daemon).
//!
//! Without a handle per open there is no per-open snapshot: a file's content
//! inode *is* one version (inode.rs), and this table keeps that version's
//! bytes while the kernel may still read them after the node moved on:
//! - taken when a change or deletion is seen for a version the kernel
//!   references (the cache still has those bytes then), and
//! - taken by a read that stops short of the end (more reads of the same
//!   version may follow, e.g. a 300 KiB file read in 128 KiB requests).
//!
//! An entry ends when the kernel forgets the inode: the adapter tells the
//! kernel a superseded version is deleted (`FUSE_NOTIFY_DELETE`), so its
//! inode is evicted, and forgotten, when the last descriptor on it closes.
//! While the version is current the bytes are shared with the cache (one
//! `Arc`), so holding them costs no copy.
//!
//! It also remembers whether a held version's pages were offered to the
//! kernel's page cache (once per inode).
//!
//! Owns nothing but that map; must not look at ZooKeeper or the inode table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::attr::{Attr, FileKind};
use super::core::lock;

#[derive(Clone)]
pub struct HeldVersion {
    pub data: Arc<[u8]>,
    /// The attributes of that version (shown once it is superseded).
    pub attr: Attr,
}

/// One held version as the map keeps it: 48 bytes instead of 64 (a
/// read-only mount holds one per file the kernel knows). Of its `Attr`
/// only what its bytes and its inode do not tell is kept.
struct Entry {
    data: Arc<[u8]>,
    kind: FileKind,
    /// Its pages were offered to the kernel ([`Held::first_offer`]).
    offered: bool,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime_ns: u64,
    crtime_ms: i64,
}

impl Entry {
    fn of(version: HeldVersion) -> Entry {
        let a = version.attr;
        Entry {
            data: version.data,
            kind: a.kind,
            offered: false,
            perm: a.perm,
            uid: a.uid,
            gid: a.gid,
            nlink: a.nlink,
            mtime_ns: a.mtime_ns,
            crtime_ms: a.crtime_ms,
        }
    }

    fn version(&self, ino: u64) -> HeldVersion {
        HeldVersion {
            data: self.data.clone(),
            attr: Attr {
                ino,
                kind: self.kind,
                // The attributes are those of these bytes.
                size: self.data.len() as u64,
                mtime_ns: self.mtime_ns,
                crtime_ms: self.crtime_ms,
                perm: self.perm,
                nlink: self.nlink,
                uid: self.uid,
                gid: self.gid,
            },
        }
    }
}

#[derive(Default)]
pub struct Held {
    versions: Mutex<HashMap<u64, Entry>>,
}

impl Held {
    /// Keep `version` as the content of `ino` (a version already held for
    /// `ino` stays: an inode shows one version). Its `attr.size` must be
    /// its bytes' length (it is not kept apart from them).
    pub fn hold(&self, ino: u64, version: HeldVersion) {
        debug_assert_eq!(version.attr.size, version.data.len() as u64);
        lock(&self.versions)
            .entry(ino)
            .or_insert_with(|| Entry::of(version));
    }

    pub fn get(&self, ino: u64) -> Option<HeldVersion> {
        lock(&self.versions).get(&ino).map(|e| e.version(ino))
    }

    /// Whether the pages of the version held for `ino` are to be offered
    /// now: true once per held version (none held: false).
    pub fn first_offer(&self, ino: u64) -> bool {
        match lock(&self.versions).get_mut(&ino) {
            Some(e) if !e.offered => {
                e.offered = true;
                true
            }
            _ => false,
        }
    }

    /// The kernel no longer references `ino`.
    pub fn release(&self, ino: u64) {
        lock(&self.versions).remove(&ino);
    }

    /// (inode, bytes) of every version held.
    pub fn entries(&self) -> Vec<(u64, usize)> {
        lock(&self.versions)
            .iter()
            .map(|(ino, v)| (*ino, v.data.len()))
            .collect()
    }

    /// (versions held, bytes they keep).
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        let versions = lock(&self.versions);
        (
            versions.len(),
            versions.values().map(|v| v.data.len()).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(bytes: &[u8]) -> HeldVersion {
        HeldVersion {
            data: Arc::from(bytes),
            attr: Attr {
                ino: 7,
                kind: FileKind::RegularFile,
                size: bytes.len() as u64,
                mtime_ns: 1,
                crtime_ms: 1,
                perm: 0o444,
                nlink: 1,
                uid: 0,
                gid: 0,
            },
        }
    }

    #[test]
    fn the_first_version_held_stays_until_released() {
        let held = Held::default();
        held.hold(7, version(b"old"));
        held.hold(7, version(b"newer"));
        let kept = held.get(7).expect("held");
        assert_eq!(&*kept.data, b"old");
        assert_eq!(kept.attr.size, 3);
        assert_eq!((kept.attr.mtime_ns, kept.attr.perm), (1, 0o444));
        assert_eq!(held.usage(), (1, 3));
        assert!(held.first_offer(7));
        assert!(!held.first_offer(7));
        assert!(!held.first_offer(8), "nothing held, nothing offered");
        held.release(7);
        assert!(held.get(7).is_none());
        assert_eq!(held.usage(), (0, 0));
    }
}
