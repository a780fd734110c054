//! The inode table: the permanent identity of every inode the kernel knows.
//!
//! An inode denotes one *incarnation* of a node in one role: its path, whether
//! it is the node itself or its hidden data file, its kind and the node's
//! czxid. When any of those change (deleted and re-created, a file gaining a
//! child) a new number is allocated instead of mutating the old inode, so the
//! kernel never sees an inode change type. Numbers are never reused.
//! `forget` only drops an entry whose number still matches.

use std::collections::HashMap;

use super::attr::FileKind;

pub const ROOT_INO: u64 = 1;

/// What an inode stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The node itself.
    Node,
    /// The hidden data file (`.data`) of a directory node.
    DataFile,
}

#[derive(Clone, Debug)]
pub struct Inode {
    /// Absolute ZooKeeper path of the node.
    pub path: String,
    pub role: Role,
    pub kind: FileKind,
    pub czxid: i64,
    /// Kernel lookup count (entries replied minus forgets).
    pub lookups: u64,
    /// mzxid of the data the kernel may hold in its page cache.
    pub cached_mzxid: Option<i64>,
}

#[derive(Default)]
pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    by_key: HashMap<(String, Role), u64>,
    next_ino: u64,
}

impl InodeTable {
    pub fn new(root_path: &str) -> Self {
        let mut table = InodeTable {
            by_ino: HashMap::new(),
            by_key: HashMap::new(),
            next_ino: ROOT_INO + 1,
        };
        table.by_ino.insert(
            ROOT_INO,
            Inode {
                path: root_path.to_string(),
                role: Role::Node,
                kind: FileKind::Directory,
                czxid: 0,
                lookups: 1,
                cached_mzxid: None,
            },
        );
        table
            .by_key
            .insert((root_path.to_string(), Role::Node), ROOT_INO);
        table
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.by_ino.get_mut(&ino)
    }

    /// The inode for this incarnation of (path, role), allocating a new number
    /// when there is none or the current one has another kind or czxid.
    pub fn resolve(&mut self, path: &str, role: Role, kind: FileKind, czxid: i64) -> u64 {
        let key = (path.to_string(), role);
        if let Some(&ino) = self.by_key.get(&key) {
            if ino == ROOT_INO {
                return ino;
            }
            if let Some(inode) = self.by_ino.get(&ino)
                && inode.kind == kind
                && inode.czxid == czxid
            {
                return ino;
            }
            // Superseded: drop the old entry now if the kernel holds no reference.
            if self.by_ino.get(&ino).is_some_and(|i| i.lookups == 0) {
                self.by_ino.remove(&ino);
            }
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.by_ino.insert(
            ino,
            Inode {
                path: path.to_string(),
                role,
                kind,
                czxid,
                lookups: 0,
                cached_mzxid: None,
            },
        );
        self.by_key.insert(key, ino);
        ino
    }

    #[cfg(test)]
    /// Whether `ino` is still the current inode of its (path, role).
    pub fn is_current(&self, ino: u64) -> bool {
        self.by_ino
            .get(&ino)
            .is_some_and(|i| self.by_key.get(&(i.path.clone(), i.role)) == Some(&ino))
    }

    /// Current inodes of a path (node and data file), for invalidation.
    pub fn current(&self, path: &str) -> Vec<u64> {
        [Role::Node, Role::DataFile]
            .into_iter()
            .filter_map(|role| self.by_key.get(&(path.to_string(), role)).copied())
            .collect()
    }

    /// Current inode of the node itself at `path`.
    pub fn node_ino(&self, path: &str) -> Option<u64> {
        self.by_key.get(&(path.to_string(), Role::Node)).copied()
    }

    /// `ino` now denotes the node at `path` (after a rename): re-key it, and
    /// supersede whatever inode `path` had.
    pub fn move_to(&mut self, ino: u64, path: &str, kind: FileKind, czxid: i64) {
        let Some(inode) = self.by_ino.get_mut(&ino) else {
            return;
        };
        let old_key = (inode.path.clone(), inode.role);
        inode.path = path.to_string();
        inode.kind = kind;
        inode.czxid = czxid;
        inode.cached_mzxid = None;
        if self.by_key.get(&old_key) == Some(&ino) {
            self.by_key.remove(&old_key);
        }
        self.by_key.insert((path.to_string(), Role::Node), ino);
    }

    /// The node at `path` is gone: later lookups must get new inodes.
    pub fn detach(&mut self, path: &str) {
        for role in [Role::Node, Role::DataFile] {
            let key = (path.to_string(), role);
            if let Some(&ino) = self.by_key.get(&key) {
                if ino == ROOT_INO {
                    continue;
                }
                self.by_key.remove(&key);
                if self.by_ino.get(&ino).is_some_and(|i| i.lookups == 0) {
                    self.by_ino.remove(&ino);
                }
            }
        }
    }

    pub fn add_lookup(&mut self, ino: u64) {
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.lookups += 1;
        }
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(inode) = self.by_ino.get_mut(&ino) else {
            return;
        };
        inode.lookups = inode.lookups.saturating_sub(n);
        if inode.lookups == 0 {
            let key = (inode.path.clone(), inode.role);
            self.by_ino.remove(&ino);
            // Don't remove a newer inode of the same key.
            if self.by_key.get(&key) == Some(&ino) {
                self.by_key.remove(&key);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_ino.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_change_gets_a_new_inode() {
        let mut t = InodeTable::new("/r");
        let a = t.resolve("/r/a", Role::Node, FileKind::RegularFile, 5);
        assert_eq!(t.resolve("/r/a", Role::Node, FileKind::RegularFile, 5), a);
        let b = t.resolve("/r/a", Role::Node, FileKind::Directory, 5);
        assert_ne!(a, b);
        let c = t.resolve("/r/a", Role::Node, FileKind::Directory, 9);
        assert_ne!(b, c);
        assert!(t.is_current(c));
        assert!(!t.is_current(b));
    }

    #[test]
    fn forget_keeps_newer_inode() {
        let mut t = InodeTable::new("/r");
        let a = t.resolve("/r/a", Role::Node, FileKind::RegularFile, 5);
        t.add_lookup(a);
        let b = t.resolve("/r/a", Role::Node, FileKind::RegularFile, 6);
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert!(t.is_current(b));
    }
}
