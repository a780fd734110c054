//! The inode table: the permanent identity of every inode the kernel knows.
//!
//! An inode denotes one *incarnation* of a node in one role: its path, whether
//! it is the node itself or its hidden data file, its kind and the node's
//! czxid. When any of those change (deleted and re-created, a file gaining a
//! child) a new number is allocated instead of mutating the old inode, so the
//! kernel never sees an inode change type. Numbers are never reused.
//! `forget` only drops an entry whose number still matches.

use std::collections::HashMap;
use std::sync::Arc;

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
    /// Absolute ZooKeeper path of the node (shared with the path index).
    pub path: Arc<str>,
    pub role: Role,
    pub kind: FileKind,
    pub czxid: i64,
    /// Kernel lookup count (entries replied minus forgets).
    pub lookups: u64,
    /// mzxid of the data the kernel may hold in its page cache.
    pub cached_mzxid: Option<i64>,
}

/// The current inode of each role of one path.
#[derive(Clone, Copy, Debug, Default)]
struct RoleInodes {
    node: Option<u64>,
    data_file: Option<u64>,
}

impl RoleInodes {
    fn get(&self, role: Role) -> &Option<u64> {
        match role {
            Role::Node => &self.node,
            Role::DataFile => &self.data_file,
        }
    }

    fn get_mut(&mut self, role: Role) -> &mut Option<u64> {
        match role {
            Role::Node => &mut self.node,
            Role::DataFile => &mut self.data_file,
        }
    }
}

#[derive(Default)]
pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    /// Current inodes by path: one allocation per path for both roles.
    by_key: HashMap<Arc<str>, RoleInodes>,
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
                path: Arc::from(root_path),
                role: Role::Node,
                kind: FileKind::Directory,
                czxid: 0,
                lookups: 1,
                cached_mzxid: None,
            },
        );
        let root: Arc<str> = Arc::from(root_path);
        if let Some(inode) = table.by_ino.get_mut(&ROOT_INO) {
            inode.path = root.clone();
        }
        table.by_key.insert(
            root,
            RoleInodes {
                node: Some(ROOT_INO),
                data_file: None,
            },
        );
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
        if let Some(ino) = self.lookup_key(path, role) {
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
        let path = self.set_key(path, role, ino);
        self.by_ino.insert(
            ino,
            Inode {
                path,
                role,
                kind,
                czxid,
                lookups: 0,
                cached_mzxid: None,
            },
        );
        ino
    }

    fn lookup_key(&self, path: &str, role: Role) -> Option<u64> {
        self.by_key.get(path).and_then(|slots| *slots.get(role))
    }

    /// Make `ino` the current inode of (path, role); returns the shared path.
    fn set_key(&mut self, path: &str, role: Role, ino: u64) -> Arc<str> {
        if let Some(slots) = self.by_key.get_mut(path) {
            *slots.get_mut(role) = Some(ino);
            if let Some((key, _)) = self.by_key.get_key_value(path) {
                return key.clone();
            }
        }
        let key: Arc<str> = Arc::from(path);
        let mut slots = RoleInodes::default();
        *slots.get_mut(role) = Some(ino);
        self.by_key.insert(key.clone(), slots);
        key
    }

    /// Clear (path, role) if it still names `ino` (or any inode when `ino`
    /// is `None`); drops the path once no role is left.
    fn clear_key(&mut self, path: &str, role: Role, ino: Option<u64>) {
        let Some(slots) = self.by_key.get_mut(path) else {
            return;
        };
        let slot = slots.get_mut(role);
        if slot.is_some() && (ino.is_none() || *slot == ino) {
            *slot = None;
        }
        if slots.node.is_none() && slots.data_file.is_none() {
            self.by_key.remove(path);
        }
    }

    #[cfg(test)]
    /// Whether `ino` is still the current inode of its (path, role).
    pub fn is_current(&self, ino: u64) -> bool {
        self.by_ino
            .get(&ino)
            .is_some_and(|i| self.lookup_key(&i.path, i.role) == Some(ino))
    }

    /// Current inodes of a path (node and data file), for invalidation.
    pub fn current(&self, path: &str) -> Vec<u64> {
        [Role::Node, Role::DataFile]
            .into_iter()
            .filter_map(|role| self.lookup_key(path, role))
            .collect()
    }

    /// Current inode of the node itself at `path`.
    pub fn node_ino(&self, path: &str) -> Option<u64> {
        self.lookup_key(path, Role::Node)
    }

    /// `ino` now denotes the node at `path` (after a rename): re-key it, and
    /// supersede whatever inode `path` had.
    pub fn move_to(&mut self, ino: u64, path: &str, kind: FileKind, czxid: i64) {
        let Some(inode) = self.by_ino.get_mut(&ino) else {
            return;
        };
        let (old_path, old_role) = (inode.path.clone(), inode.role);
        inode.kind = kind;
        inode.czxid = czxid;
        inode.cached_mzxid = None;
        self.clear_key(&old_path, old_role, Some(ino));
        let path = self.set_key(path, Role::Node, ino);
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.path = path;
            inode.role = Role::Node;
        }
    }

    /// The node at `path` is gone: later lookups must get new inodes.
    pub fn detach(&mut self, path: &str) {
        for role in [Role::Node, Role::DataFile] {
            if let Some(ino) = self.lookup_key(path, role) {
                if ino == ROOT_INO {
                    continue;
                }
                self.clear_key(path, role, None);
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
            let (path, role) = (inode.path.clone(), inode.role);
            self.by_ino.remove(&ino);
            // Don't remove a newer inode of the same key.
            self.clear_key(&path, role, Some(ino));
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
