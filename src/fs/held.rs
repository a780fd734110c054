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
//! Owns nothing but that map; must not look at ZooKeeper or the inode table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::attr::Attr;
use super::core::lock;

#[derive(Clone)]
pub struct HeldVersion {
    pub data: Arc<[u8]>,
    /// The attributes of that version (shown once it is superseded).
    pub attr: Attr,
}

#[derive(Default)]
pub struct Held {
    versions: Mutex<HashMap<u64, HeldVersion>>,
}

impl Held {
    /// Keep `version` as the content of `ino` (a version already held for
    /// `ino` stays: an inode shows one version).
    pub fn hold(&self, ino: u64, version: HeldVersion) {
        lock(&self.versions).entry(ino).or_insert(version);
    }

    pub fn get(&self, ino: u64) -> Option<HeldVersion> {
        lock(&self.versions).get(&ino).cloned()
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
    use crate::fs::attr::FileKind;

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
        assert_eq!(&*held.get(7).expect("held").data, b"old");
        assert_eq!(held.usage(), (1, 3));
        held.release(7);
        assert!(held.get(7).is_none());
        assert_eq!(held.usage(), (0, 0));
    }
}
