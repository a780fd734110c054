//! The inode table: the permanent identity of every inode the kernel knows.
//!
//! Owns inode numbers and what each stands for; must not look at ZooKeeper
//! or the cache (callers pass in what they learnt).
//!
//! Identity rules (doc/SEMANTICS.md, "Inode numbers"):
//! - a **directory** inode names one incarnation of a node as a directory
//!   (path, czxid): it keeps its number when children come and go, when its
//!   data changes, and when it is renamed through this mount;
//! - a **content** inode (regular file, symlink, a directory's data file)
//!   names one *version* of the content (its mzxid): another client's
//!   change makes a new number, so the kernel never sees the size or the
//!   pages of an inode change under a reader (whole-file reads are atomic).
//!   A write through this mount keeps the writer's number
//!   ([`InodeTable::set_version`]), as an in-place write on a local disk
//!   does (the core then invalidates its pages: `ZkFs::settle`); a write
//!   that must not touch pages a reader uses moves the name to a fresh
//!   number first ([`InodeTable::retire_name_of`]);
//! - a change of kind (file ↔ directory ↔ symlink), or a node deleted and
//!   re-created (new czxid), always makes a new number.
//!
//! Numbers are never reused for something else. The mapping from a node to
//! its current number outlives the kernel's references (`forget`), so a
//! later lookup of the same incarnation gets the same number back; it ends
//! when the node is deleted ([`InodeTable::detach`]) or superseded.

use std::collections::HashMap;
use std::sync::Arc;

use super::attr::FileKind;

pub const ROOT_INO: u64 = 1;

/// czxid of an inode whose node is not created yet (it is, at close).
pub const PENDING_CZXID: i64 = -1;

/// [`InodeTable::resolve_seen`]'s answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The inode for the view.
    Ino(u64),
    /// The view is older than what the name's inode shows: read it again.
    Outdated,
}

/// What an inode stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The node itself.
    Node,
    /// The hidden data file (`.data`) of a directory node.
    DataFile,
}

/// An inode is 40 bytes (the table holds one per node the kernel has seen):
/// the version is stored without an `Option`'s tag and the lookup count in
/// 32 bits (the kernel adds one per entry it is given; four billion lookups
/// of one inode without a forget would take decades).
#[derive(Clone, Debug)]
pub struct Inode {
    /// Absolute ZooKeeper path of the node (shared with the path index).
    pub path: Arc<str>,
    pub role: Role,
    pub kind: FileKind,
    pub czxid: i64,
    /// See [`Inode::version`]; [`NO_VERSION`] for none.
    version: i64,
    /// Kernel lookup count (entries replied minus forgets).
    pub lookups: u32,
}

/// [`Inode::version`] of an inode that does not follow versions (no mzxid
/// is negative).
const NO_VERSION: i64 = i64::MIN;

fn version_slot(version: Option<i64>) -> i64 {
    version.unwrap_or(NO_VERSION)
}

impl Inode {
    /// The mzxid of the one version a content inode shows; `None` for
    /// directories (their identity does not depend on data).
    pub fn version(&self) -> Option<i64> {
        (self.version != NO_VERSION).then_some(self.version)
    }

    /// Whether this inode shows the node's content (its number follows versions).
    pub fn is_content(&self) -> bool {
        self.role == Role::DataFile || self.kind != FileKind::Directory
    }
}

/// A path as a caller holds it: the table keeps a shared one ([`Arc<str>`],
/// e.g. the cache's own copy) as it is, and copies a borrowed one.
pub trait PathKey {
    fn as_path(&self) -> &str;
    fn to_key(&self) -> Arc<str>;
}

impl PathKey for str {
    fn as_path(&self) -> &str {
        self
    }
    fn to_key(&self) -> Arc<str> {
        Arc::from(self)
    }
}

impl PathKey for String {
    fn as_path(&self) -> &str {
        self
    }
    fn to_key(&self) -> Arc<str> {
        Arc::from(self.as_str())
    }
}

impl PathKey for Arc<str> {
    fn as_path(&self) -> &str {
        self
    }
    fn to_key(&self) -> Arc<str> {
        self.clone()
    }
}

/// Whether `kind` in `role` is a content inode (see the module doc).
fn content_kind(role: Role, kind: FileKind) -> bool {
    role == Role::DataFile || kind != FileKind::Directory
}

#[derive(Default)]
pub struct InodeTable {
    by_ino: HashMap<u64, Inode>,
    /// The current inode of each path's node, and (a separate map: few
    /// directories have data, and an entry here is 24 bytes instead of 32
    /// with room for both) of its data file; the two share the key string.
    nodes: HashMap<Arc<str>, u64>,
    data_files: HashMap<Arc<str>, u64>,
    next_ino: u64,
}

impl InodeTable {
    pub fn new(root_path: &str) -> Self {
        let root: Arc<str> = Arc::from(root_path);
        let mut table = InodeTable {
            by_ino: HashMap::new(),
            nodes: HashMap::new(),
            data_files: HashMap::new(),
            next_ino: ROOT_INO + 1,
        };
        table.by_ino.insert(
            ROOT_INO,
            Inode {
                path: root.clone(),
                role: Role::Node,
                kind: FileKind::Directory,
                czxid: 0,
                version: NO_VERSION,
                lookups: 1,
            },
        );
        table.nodes.insert(root, ROOT_INO);
        table
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.by_ino.get(&ino)
    }

    /// The inode for this incarnation (and, for content, this version) of
    /// (path, role), allocating a new number when there is none or the
    /// current one stands for something else.
    pub fn resolve<P: PathKey + ?Sized>(
        &mut self,
        path: &P,
        role: Role,
        kind: FileKind,
        czxid: i64,
        mzxid: i64,
    ) -> u64 {
        let version = content_kind(role, kind).then_some(mzxid);
        if let Some(ino) = self.lookup_key(path.as_path(), role) {
            if ino == ROOT_INO {
                return ino;
            }
            if let Some(inode) = self.by_ino.get(&ino)
                && inode.kind == kind
                && inode.czxid == czxid
                && inode.version() == version
            {
                return ino;
            }
            self.supersede(ino);
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
                version: version_slot(version),
                lookups: 0,
            },
        );
        ino
    }

    /// [`Self::resolve`] for a view read before this call, which may be
    /// older or newer than what the current inode shows because of this
    /// mount's own send in flight. `sending`: inodes of the name with a
    /// send through this mount in flight whose answer made the view's
    /// version (the caller knows it from the store). Such an inode takes
    /// the version (what the send's `set_version`, a moment later, does),
    /// keeping its number. A view older than the current inode's version of
    /// the same incarnation (read before a send's answer, looked at after
    /// it) is no answer: [`Resolved::Outdated`], for the caller to read the
    /// view again.
    pub fn resolve_seen<P: PathKey + ?Sized>(
        &mut self,
        path: &P,
        role: Role,
        kind: FileKind,
        czxid: i64,
        mzxid: i64,
        sending: &[u64],
    ) -> Resolved {
        if let Some(ino) = self.lookup_key(path.as_path(), role)
            && ino != ROOT_INO
            && let Some(inode) = self.by_ino.get_mut(&ino)
            && inode.kind == kind
            && inode.czxid == czxid
            && inode.is_content()
            && let Some(shown) = inode.version()
        {
            // One incarnation's mzxids grow with its versions.
            if mzxid < shown {
                return Resolved::Outdated;
            }
            if mzxid > shown && sending.contains(&ino) {
                inode.version = mzxid;
                return Resolved::Ino(ino);
            }
        }
        Resolved::Ino(self.resolve(path, role, kind, czxid, mzxid))
    }

    /// `ino` no longer is the current inode of its key: drop it now if the
    /// kernel holds no reference (else at its last `forget`).
    fn supersede(&mut self, ino: u64) {
        if let Some(inode) = self.by_ino.get(&ino) {
            let (path, role) = (inode.path.clone(), inode.role);
            self.clear_key(&path, role, Some(ino));
            if inode_lookups(&self.by_ino, ino) == 0 {
                self.by_ino.remove(&ino);
            }
        }
    }

    fn role_map(&self, role: Role) -> &HashMap<Arc<str>, u64> {
        match role {
            Role::Node => &self.nodes,
            Role::DataFile => &self.data_files,
        }
    }

    fn role_map_mut(&mut self, role: Role) -> &mut HashMap<Arc<str>, u64> {
        match role {
            Role::Node => &mut self.nodes,
            Role::DataFile => &mut self.data_files,
        }
    }

    fn lookup_key(&self, path: &str, role: Role) -> Option<u64> {
        self.role_map(role).get(path).copied()
    }

    /// Make `ino` the current inode of (path, role); returns the path string
    /// it is kept under (the one already kept for the path's other role, if
    /// any, so both share it).
    fn set_key<P: PathKey + ?Sized>(&mut self, path: &P, role: Role, ino: u64) -> Arc<str> {
        let p = path.as_path();
        if let Some(slot) = self.role_map_mut(role).get_mut(p) {
            *slot = ino;
        }
        if let Some((key, _)) = self.role_map(role).get_key_value(p) {
            return key.clone();
        }
        let other = match role {
            Role::Node => Role::DataFile,
            Role::DataFile => Role::Node,
        };
        let key = match self.role_map(other).get_key_value(p) {
            Some((key, _)) => key.clone(),
            None => path.to_key(),
        };
        self.role_map_mut(role).insert(key.clone(), ino);
        key
    }

    /// Clear (path, role) if it still names `ino` (or any inode when `ino`
    /// is `None`).
    fn clear_key(&mut self, path: &str, role: Role, ino: Option<u64>) {
        let map = self.role_map_mut(role);
        if map
            .get(path)
            .is_some_and(|slot| ino.is_none_or(|i| i == *slot))
        {
            map.remove(path);
        }
    }

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

    /// A write through this mount made `mzxid` the content of `ino` (and
    /// `czxid` its incarnation, for a node created by the write): the writer's
    /// inode keeps its number. Does nothing for a superseded inode.
    pub fn set_version(&mut self, ino: u64, czxid: i64, mzxid: i64) {
        if !self.is_current(ino) {
            return;
        }
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.czxid = czxid;
            if inode.is_content() {
                inode.version = mzxid;
            }
        }
    }

    /// `ino` now denotes the node at `path` (after a rename through this
    /// mount), with the new node's identity: re-key it, and supersede
    /// whatever inode `path` had.
    pub fn move_to(&mut self, ino: u64, path: &str, kind: FileKind, czxid: i64, mzxid: i64) {
        let Some(inode) = self.by_ino.get(&ino) else {
            return;
        };
        let (old_path, old_role) = (inode.path.clone(), inode.role);
        if let Some(previous) = self.lookup_key(path, Role::Node)
            && previous != ino
        {
            self.supersede(previous);
        }
        self.clear_key(&old_path, old_role, Some(ino));
        let path = self.set_key(path, Role::Node, ino);
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.path = path;
            inode.role = Role::Node;
            inode.kind = kind;
            inode.czxid = czxid;
            inode.version = version_slot(content_kind(Role::Node, kind).then_some(mzxid));
        }
    }

    /// The inode currently at (path, role) stops being current (a failed
    /// write left the kernel's pages or size for it wrong): the next lookup
    /// gets a fresh number.
    pub fn retire(&mut self, ino: u64) {
        if ino != ROOT_INO && self.is_current(ino) {
            self.supersede(ino);
        }
    }

    /// Whatever inode now has `ino`'s name (`ino` itself, or the inode of a
    /// later version) stops being current: the next lookup of the name gets
    /// a fresh number. `ino` and that inode stay valid for who has them.
    pub fn retire_name_of(&mut self, ino: u64) {
        let Some(inode) = self.by_ino.get(&ino) else {
            return;
        };
        if let Some(current) = self.lookup_key(&inode.path.clone(), inode.role)
            && current != ROOT_INO
        {
            self.supersede(current);
        }
    }

    /// The node at `path` is gone: later lookups must get new inodes.
    pub fn detach(&mut self, path: &str) {
        for role in [Role::Node, Role::DataFile] {
            if let Some(ino) = self.lookup_key(path, role) {
                if ino == ROOT_INO {
                    continue;
                }
                self.supersede(ino);
            }
        }
    }

    pub fn add_lookup(&mut self, ino: u64) {
        if let Some(inode) = self.by_ino.get_mut(&ino) {
            inode.lookups = inode.lookups.saturating_add(1);
        }
    }

    /// The kernel dropped `n` references to `ino`. The current inode of a
    /// node stays known (same number at the next lookup); a superseded one
    /// is dropped once unreferenced.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let Some(inode) = self.by_ino.get_mut(&ino) else {
            return;
        };
        inode.lookups = inode
            .lookups
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        if inode.lookups == 0 && !self.is_current(ino) {
            self.by_ino.remove(&ino);
        }
    }

    pub fn len(&self) -> usize {
        self.by_ino.len()
    }
}

fn inode_lookups(by_ino: &HashMap<u64, Inode>, ino: u64) -> u32 {
    by_ino.get(&ino).map_or(0, |i| i.lookups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_change_gets_a_new_inode() {
        let mut t = InodeTable::new("/r");
        let a = t.resolve("/r/a", Role::Node, FileKind::RegularFile, 5, 5);
        assert_eq!(
            t.resolve("/r/a", Role::Node, FileKind::RegularFile, 5, 5),
            a
        );
        let b = t.resolve("/r/a", Role::Node, FileKind::Directory, 5, 5);
        assert_ne!(a, b);
        let c = t.resolve("/r/a", Role::Node, FileKind::Directory, 9, 9);
        assert_ne!(b, c);
        assert!(t.is_current(c));
        assert!(!t.is_current(b));
    }

    #[test]
    fn directories_keep_their_number_across_data_changes_content_does_not() {
        let mut t = InodeTable::new("/r");
        let d = t.resolve("/r/d", Role::Node, FileKind::Directory, 5, 5);
        assert_eq!(t.resolve("/r/d", Role::Node, FileKind::Directory, 5, 8), d);
        let f = t.resolve("/r/f", Role::Node, FileKind::RegularFile, 6, 6);
        let f2 = t.resolve("/r/f", Role::Node, FileKind::RegularFile, 6, 7);
        assert_ne!(f, f2, "another version is another inode");
        // A write through the mount keeps the writer's number.
        t.set_version(f2, 6, 9);
        assert_eq!(
            t.resolve("/r/f", Role::Node, FileKind::RegularFile, 6, 9),
            f2
        );
    }

    #[test]
    fn forget_keeps_the_current_number_and_drops_superseded_ones() {
        let mut t = InodeTable::new("/r");
        let d = t.resolve("/r/d", Role::Node, FileKind::Directory, 5, 5);
        t.add_lookup(d);
        t.forget(d, 1);
        assert_eq!(
            t.resolve("/r/d", Role::Node, FileKind::Directory, 5, 5),
            d,
            "the same incarnation gets its number back"
        );
        let a = t.resolve("/r/a", Role::Node, FileKind::RegularFile, 5, 5);
        t.add_lookup(a);
        let b = t.resolve("/r/a", Role::Node, FileKind::RegularFile, 6, 6);
        assert!(t.get(a).is_some(), "referenced superseded inode kept");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert!(t.is_current(b));
    }

    #[test]
    fn move_to_keeps_the_number_and_supersedes_the_target() {
        let mut t = InodeTable::new("/r");
        let src = t.resolve("/r/s", Role::Node, FileKind::RegularFile, 5, 5);
        let dst = t.resolve("/r/t", Role::Node, FileKind::RegularFile, 6, 6);
        t.move_to(src, "/r/t", FileKind::RegularFile, 6, 10);
        assert_eq!(t.node_ino("/r/t"), Some(src));
        assert_eq!(t.node_ino("/r/s"), None);
        assert!(!t.is_current(dst));
        assert_eq!(
            t.resolve("/r/t", Role::Node, FileKind::RegularFile, 6, 10),
            src
        );
    }

    #[test]
    fn a_view_made_by_a_send_in_flight_keeps_the_writers_number() {
        let mut t = InodeTable::new("/r");
        let f = t.resolve("/r/f", Role::Node, FileKind::RegularFile, 6, 6);
        // The send's answer reached the cache (version 9) before the
        // writer's `set_version`: the writer's inode takes it.
        assert_eq!(
            t.resolve_seen("/r/f", Role::Node, FileKind::RegularFile, 6, 9, &[f]),
            Resolved::Ino(f)
        );
        assert_eq!(t.get(f).and_then(Inode::version), Some(9));
        // A view read before that answer is outdated, not a new inode.
        assert_eq!(
            t.resolve_seen("/r/f", Role::Node, FileKind::RegularFile, 6, 6, &[f]),
            Resolved::Outdated
        );
        assert!(t.is_current(f));
        // Another client's version (no send of ours made it): a new inode.
        let g = t.resolve_seen("/r/f", Role::Node, FileKind::RegularFile, 6, 12, &[]);
        assert!(matches!(g, Resolved::Ino(g) if g != f));
        // A send on another inode of the name does not adopt either.
        let Resolved::Ino(g) = g else { unreachable!() };
        let h = t.resolve_seen("/r/f", Role::Node, FileKind::RegularFile, 6, 15, &[f]);
        assert!(matches!(h, Resolved::Ino(h) if h != g && h != f));
        // A new incarnation is a new inode whatever is in flight.
        let Resolved::Ino(h) = h else { unreachable!() };
        let i = t.resolve_seen("/r/f", Role::Node, FileKind::RegularFile, 20, 20, &[h]);
        assert!(matches!(i, Resolved::Ino(i) if i != h));
    }
}
