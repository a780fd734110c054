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

/// What a held version's attributes have in common with many others (a
/// mount shows a handful of owner, group and mode combinations): kept once
/// in [`Table::shapes`], named by its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Shape {
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
}

/// One held version as the map keeps it: 32 bytes (a read-only mount holds
/// one per file the kernel knows; with its key a map slot is 40 bytes
/// instead of 56). Of its `Attr` only what its bytes and its inode do not
/// tell is kept: the change time, and packed into one word the creation
/// time, the shape and the "offered" flag.
struct Entry {
    data: Arc<[u8]>,
    mtime_ns: u64,
    /// Bits 0..48: the creation time in ms (signed, so ±4,000 years around
    /// 1970; outside, clamped); bits 48..63: the shape's index
    /// ([`ODD_SHAPE`] for one kept in [`Table::odd`]); bit 63: offered.
    packed: u64,
}

const CRTIME_BITS: u32 = 48;
const CRTIME_MASK: u64 = (1 << CRTIME_BITS) - 1;
const OFFERED: u64 = 1 << 63;
/// The shape index of an entry whose shape did not fit in the shared list.
const ODD_SHAPE: u16 = 0x7fff;

fn pack_crtime(ms: i64) -> u64 {
    let bound = 1i64 << (CRTIME_BITS - 1);
    (ms.clamp(-bound, bound - 1) as u64) & CRTIME_MASK
}

fn unpack_crtime(packed: u64) -> i64 {
    // Sign-extend the low 48 bits.
    (((packed & CRTIME_MASK) << (64 - CRTIME_BITS)) as i64) >> (64 - CRTIME_BITS)
}

impl Entry {
    fn shape_index(&self) -> u16 {
        ((self.packed >> CRTIME_BITS) as u16) & ODD_SHAPE
    }

    fn offered(&self) -> bool {
        self.packed & OFFERED != 0
    }
}

/// The map and what its entries share.
#[derive(Default)]
struct Table {
    entries: HashMap<u64, Entry>,
    shapes: Vec<Shape>,
    shape_ids: HashMap<Shape, u16>,
    /// Shapes of entries beyond the shared list's capacity, by inode.
    odd: HashMap<u64, Shape>,
}

impl Table {
    fn insert(&mut self, ino: u64, version: HeldVersion) {
        let a = version.attr;
        let shape = Shape {
            kind: a.kind,
            perm: a.perm,
            uid: a.uid,
            gid: a.gid,
            nlink: a.nlink,
        };
        let index = match self.shape_ids.get(&shape) {
            Some(&index) => index,
            None if self.shapes.len() < ODD_SHAPE as usize => {
                let index = self.shapes.len() as u16;
                self.shapes.push(shape);
                self.shape_ids.insert(shape, index);
                index
            }
            None => {
                self.odd.insert(ino, shape);
                ODD_SHAPE
            }
        };
        let entry = Entry {
            data: version.data,
            mtime_ns: a.mtime_ns,
            packed: pack_crtime(a.crtime_ms) | (u64::from(index) << CRTIME_BITS),
        };
        self.entries.insert(ino, entry);
    }

    fn version(&self, ino: u64) -> Option<HeldVersion> {
        let e = self.entries.get(&ino)?;
        let shape = match e.shape_index() {
            ODD_SHAPE => *self.odd.get(&ino)?,
            index => *self.shapes.get(usize::from(index))?,
        };
        Some(HeldVersion {
            data: e.data.clone(),
            attr: Attr {
                ino,
                kind: shape.kind,
                // The attributes are those of these bytes.
                size: e.data.len() as u64,
                mtime_ns: e.mtime_ns,
                crtime_ms: unpack_crtime(e.packed),
                perm: shape.perm,
                nlink: shape.nlink,
                uid: shape.uid,
                gid: shape.gid,
            },
        })
    }

    fn remove(&mut self, ino: u64) {
        if let Some(e) = self.entries.remove(&ino)
            && e.shape_index() == ODD_SHAPE
        {
            self.odd.remove(&ino);
        }
    }
}

// A held version stays 32 bytes (see [`Entry`]).
const _: () = assert!(std::mem::size_of::<Entry>() == 32);

#[derive(Default)]
pub struct Held {
    versions: Mutex<Table>,
}

impl Held {
    /// Keep `version` as the content of `ino` (a version already held for
    /// `ino` stays: an inode shows one version). Its `attr.size` must be
    /// its bytes' length (it is not kept apart from them).
    pub fn hold(&self, ino: u64, version: HeldVersion) {
        debug_assert_eq!(version.attr.size, version.data.len() as u64);
        let mut table = lock(&self.versions);
        if !table.entries.contains_key(&ino) {
            table.insert(ino, version);
        }
    }

    pub fn get(&self, ino: u64) -> Option<HeldVersion> {
        lock(&self.versions).version(ino)
    }

    /// Whether the pages of the version held for `ino` are to be offered
    /// now: true once per held version (none held: false).
    pub fn first_offer(&self, ino: u64) -> bool {
        match lock(&self.versions).entries.get_mut(&ino) {
            Some(e) if !e.offered() => {
                e.packed |= OFFERED;
                true
            }
            _ => false,
        }
    }

    /// The kernel no longer references `ino`.
    pub fn release(&self, ino: u64) {
        lock(&self.versions).remove(ino);
    }

    /// (inode, bytes) of every version held.
    pub fn entries(&self) -> Vec<(u64, usize)> {
        lock(&self.versions)
            .entries
            .iter()
            .map(|(ino, v)| (*ino, v.data.len()))
            .collect()
    }

    /// (versions held, bytes they keep).
    #[cfg(test)]
    pub fn usage(&self) -> (usize, usize) {
        let table = lock(&self.versions);
        (
            table.entries.len(),
            table.entries.values().map(|v| v.data.len()).sum(),
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
    fn held_attributes_come_back_as_given() {
        let held = Held::default();
        for (ino, crtime_ms, uid) in [(1, 1_795_240_000_123, 0), (2, -5, 7), (3, 0, 7)] {
            let mut v = version(b"abc");
            v.attr.ino = ino;
            v.attr.crtime_ms = crtime_ms;
            v.attr.uid = uid;
            v.attr.mtime_ns = u64::MAX - ino;
            held.hold(ino, v.clone());
            assert!(held.first_offer(ino));
            assert_eq!(held.get(ino).expect("held").attr, v.attr, "inode {ino}");
        }
        // Beyond ±2^47 ms the creation time is clamped.
        let mut far = version(b"");
        far.attr.crtime_ms = i64::MAX;
        held.hold(9, far);
        assert_eq!(held.get(9).expect("held").attr.crtime_ms, (1 << 47) - 1);
    }

    #[test]
    fn shapes_beyond_the_shared_list_are_kept_apart() {
        let held = Held::default();
        let n = u32::from(ODD_SHAPE) + 2;
        for i in 0..n {
            let mut v = version(b"x");
            v.attr.gid = i;
            held.hold(u64::from(i) + 10, v);
        }
        for i in [0, u32::from(ODD_SHAPE) - 1, n - 2, n - 1] {
            let ino = u64::from(i) + 10;
            assert_eq!(held.get(ino).expect("held").attr.gid, i, "gid {i}");
        }
        held.release(u64::from(n - 1) + 10);
        assert_eq!(lock(&held.versions).odd.len(), 1);
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
