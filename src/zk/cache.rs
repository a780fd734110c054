//! The in-memory node cache: what ZooKeeper last told us about each node.
//!
//! A plain data structure with no I/O and no locking of its own (the
//! [`crate::zk::store::Store`] wraps it in a mutex). It owns the byte budget for
//! cached data (`--cache-size`, least recently used data dropped first; the
//! `Stat` of a node is always kept) and the per-node "change time" that makes
//! mtimes strictly increasing. It must not decide how nodes look as files.
//!
//! Memory is most of what a mount holds (a fleet host runs a hundred), so
//! the entries are boxed (the table's empty slots then cost a pointer, not
//! a whole entry) and the data's recency is a stamp in the entry instead of
//! a linked list beside it: the eviction order is built only when the
//! budget is exceeded (see [`NodeCache::evict`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use super::backend::{AclEntry, NodeStat};
use super::path;

/// Everything cached about one node.
#[derive(Debug, Clone)]
pub struct CachedNode {
    pub stat: NodeStat,
    /// `None` when the data was evicted (the stat is still valid).
    pub data: Option<Arc<[u8]>>,
    /// Child names, once listed; kept current from watch events afterwards.
    /// Boxed: most nodes are leaves, and `None` then costs a pointer
    /// instead of a whole set (16 bytes less per cached node).
    pub children: Option<Box<Children>>,
    /// An event said the data or stat changed since we fetched it.
    pub stale: bool,
    /// The child list may miss changes (an event raced a listing).
    pub children_stale: bool,
    /// Bumped by every event that touches this node, so a fetch that was in
    /// flight during an event does not mark the entry fresh (compared for
    /// equality only; wraps).
    pub seq: u32,
    /// Nanoseconds since the epoch; strictly increases with every data change
    /// this cache observes (see [`next_change_time`]).
    pub change_time_ns: u64,
    /// The node's ACL and the `aversion` it was read at.
    pub acl: Option<Arc<NodeAcl>>,
    /// When the data was last stored or read ([`NodeCache`]'s clock).
    used: u64,
}

// A cached node is 128 bytes (malloc serves its box from a 144-byte chunk;
// 8 bytes more and it takes a 160-byte one, for every cached node).
const _: () = assert!(std::mem::size_of::<CachedNode>() <= 128);

/// A child's name as its parent's list keeps it: the child's whole path,
/// the same string as the child's own entry key when both are cached (one
/// allocation for both instead of a path and a name), ordered and looked up
/// by the part after the last `/`.
#[derive(Clone, Debug)]
struct ChildName(Arc<str>);

impl ChildName {
    fn name(&self) -> &str {
        path::basename(&self.0)
    }
}

impl std::borrow::Borrow<str> for ChildName {
    fn borrow(&self) -> &str {
        self.name()
    }
}

impl PartialEq for ChildName {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for ChildName {}

impl PartialOrd for ChildName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ChildName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

/// A node's listed children, by name.
#[derive(Clone, Debug, Default)]
pub struct Children(BTreeSet<ChildName>);

impl Children {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    /// The names, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(ChildName::name)
    }

    /// The names, in order, as owned strings.
    pub fn names(&self) -> Vec<String> {
        self.iter().map(str::to_string).collect()
    }

    /// The shared path of the child `name`.
    fn path_of(&self, name: &str) -> Option<&Arc<str>> {
        self.0.get(name).map(|c| &c.0)
    }
}

/// The node cache. Paths are absolute ZooKeeper paths (in the client's chroot).
pub struct NodeCache {
    nodes: HashMap<Arc<str>, Box<CachedNode>>,
    /// Fetches in flight for nodes that are not cached: events seen for the
    /// path meanwhile, and how many fetches are pending.
    pending: HashMap<String, (u32, usize)>,
    /// Counts data stores and reads; stamped into [`CachedNode::used`].
    clock: u64,
    /// Nodes that held data when the budget was last exceeded, as
    /// `(used, path)`, least recently used first; empty while the data fits
    /// (see [`NodeCache::evict`]).
    eviction: VecDeque<(u64, Arc<str>)>,
    data_bytes: usize,
    data_limit: usize,
    /// Distinct ACLs seen, shared by every node that has one of them (a
    /// fleet's nodes mostly carry a handful of ACLs).
    acls: AclInterner,
    /// Bumped by every change of what a snapshot would hold (`--cache-dir`).
    changes: u64,
}

/// Hands out one shared copy of each distinct ACL, up to a bound (beyond it,
/// e.g. a per-node digest ACL everywhere, ACLs are simply not shared).
#[derive(Default)]
struct AclInterner {
    known: HashSet<Arc<[AclEntry]>>,
    /// The same for (aversion, ACL) pairs: most nodes' ACL never changed
    /// (aversion 0), so a fleet's nodes share a handful of these too.
    records: HashSet<Arc<NodeAcl>>,
}

/// A node's ACL and the `aversion` it was read at, shared by every node
/// with the same pair (a cached node holds one pointer, 8 bytes instead of
/// 24 for the pair itself).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct NodeAcl {
    pub aversion: i32,
    pub entries: Arc<[AclEntry]>,
}

impl AclInterner {
    const MAX_DISTINCT: usize = 1024;

    fn intern(&mut self, acl: Vec<AclEntry>) -> Arc<[AclEntry]> {
        if let Some(known) = self.known.get(acl.as_slice()) {
            return known.clone();
        }
        let shared: Arc<[AclEntry]> = acl.into();
        if self.known.len() < Self::MAX_DISTINCT {
            self.known.insert(shared.clone());
        }
        shared
    }

    fn record(&mut self, aversion: i32, acl: Vec<AclEntry>) -> Arc<NodeAcl> {
        let record = NodeAcl {
            aversion,
            entries: self.intern(acl),
        };
        if let Some(known) = self.records.get(&record) {
            return known.clone();
        }
        let shared = Arc::new(record);
        if self.records.len() < Self::MAX_DISTINCT {
            self.records.insert(shared.clone());
        }
        shared
    }
}

/// The displayed change time for a node whose stat moved from `prev` to `stat`.
///
/// ZooKeeper mtimes have millisecond resolution and two changes may share one
/// millisecond (or the leader's clock may step back). Readers reload when the
/// mtime grows, so the shown time is the server mtime plus a sub-millisecond
/// part taken from the mzxid, and never less than one microsecond after the
/// previous shown time of the same node.
pub fn next_change_time(prev: Option<(i64, u64)>, stat: &NodeStat) -> u64 {
    let base = (stat.mtime.max(0) as u64)
        .saturating_mul(1_000_000)
        .saturating_add((stat.mzxid.rem_euclid(1000) as u64) * 1000);
    match prev {
        Some((prev_mzxid, prev_ns)) if prev_mzxid == stat.mzxid => prev_ns,
        Some((_, prev_ns)) => base.max(prev_ns + 1000),
        None => base,
    }
}

/// Taken before a fetch is sent, handed back with its answer: tells whether
/// an event touched the node while the request was in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchTicket {
    seq: u32,
    cached: bool,
}

/// Whether `new` describes the same or a later state of the node than `old`.
fn is_not_older(new: &NodeStat, old: &NodeStat) -> bool {
    new.mzxid > old.mzxid || (new.mzxid == old.mzxid && new.pzxid >= old.pzxid)
}

impl NodeCache {
    pub fn new(data_limit: usize) -> Self {
        NodeCache {
            nodes: HashMap::new(),
            pending: HashMap::new(),
            clock: 0,
            eviction: VecDeque::new(),
            data_bytes: 0,
            data_limit,
            acls: AclInterner::default(),
            changes: 0,
        }
    }

    /// A counter that moves whenever nodes, stats, data or child lists change.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Put a node read from a snapshot into the cache, stale (served only
    /// while ZooKeeper is unreachable; re-read or resynced at first contact).
    pub fn restore(
        &mut self,
        path: &str,
        stat: NodeStat,
        data: Option<Arc<[u8]>>,
        children: Option<Vec<String>>,
    ) {
        self.remove(path);
        let children = children.map(|names| self.children_of(path, names));
        let key = self.key_for(path);
        self.nodes.insert(
            key,
            Box::new(CachedNode {
                stat,
                data: None,
                children,
                stale: true,
                children_stale: true,
                seq: 0,
                change_time_ns: next_change_time(None, &stat),
                acl: None,
                used: 0,
            }),
        );
        if let Some(data) = data {
            self.set_data(path, data);
        }
        self.changes += 1;
    }

    pub fn get(&self, path: &str) -> Option<&CachedNode> {
        self.nodes.get(path).map(|node| &**node)
    }

    /// A cached node with the cache's own copy of its path (shareable: the
    /// inode table keeps the same string instead of another copy).
    pub fn get_keyed(&self, path: &str) -> Option<(&Arc<str>, &CachedNode)> {
        self.nodes.get_key_value(path).map(|(k, node)| (k, &**node))
    }

    /// Data of a cached node, marking it recently used.
    pub fn data(&mut self, path: &str) -> Option<Arc<[u8]>> {
        self.clock += 1;
        let node = self.nodes.get_mut(path)?;
        let data = node.data.clone()?;
        node.used = self.clock;
        Some(data)
    }

    pub fn paths(&self) -> Vec<String> {
        self.nodes.keys().map(|k| k.to_string()).collect()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// Start a fetch of `path`; pass the ticket to `store_*` and `end_fetch`.
    pub fn begin_fetch(&mut self, path: &str) -> FetchTicket {
        match self.nodes.get(path) {
            Some(node) => FetchTicket {
                seq: node.seq,
                cached: true,
            },
            None => {
                let entry = self.pending.entry(path.to_string()).or_insert((0, 0));
                entry.1 += 1;
                FetchTicket {
                    seq: entry.0,
                    cached: false,
                }
            }
        }
    }

    /// Finish a fetch started with `begin_fetch` (whatever its outcome).
    pub fn end_fetch(&mut self, path: &str, ticket: FetchTicket) {
        if ticket.cached {
            return;
        }
        if let Some(entry) = self.pending.get_mut(path) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.pending.remove(path);
            }
        }
    }

    /// Whether no event touched `path` since `ticket` was taken.
    pub fn is_quiet_since(&self, path: &str, ticket: FetchTicket) -> bool {
        match (self.nodes.get(path), ticket.cached) {
            (Some(node), true) => node.seq == ticket.seq,
            (None, false) => self.pending.get(path).is_none_or(|e| e.0 == ticket.seq),
            // Created or deleted (in our cache) while the request was in flight.
            _ => false,
        }
    }

    /// Record an event for a node that is not cached but may be being fetched.
    fn note_uncached_event(&mut self, path: &str) {
        if let Some(entry) = self.pending.get_mut(path) {
            entry.0 = entry.0.wrapping_add(1);
        }
    }

    /// Record the answer of a `getData` fetched under `ticket`. Returns true
    /// when the stat or data differs from what was cached.
    pub fn store_data(
        &mut self,
        path: &str,
        data: Vec<u8>,
        stat: NodeStat,
        ticket: FetchTicket,
    ) -> bool {
        let quiet = self.is_quiet_since(path, ticket);
        let changed;
        match self.nodes.get_mut(path) {
            Some(node) => {
                if !is_not_older(&stat, &node.stat) {
                    return false;
                }
                changed = node.stat != stat;
                node.change_time_ns =
                    next_change_time(Some((node.stat.mzxid, node.change_time_ns)), &stat);
                node.stat = stat;
                if let Some(children) = &node.children
                    && children.len() != stat.num_children as usize
                {
                    node.children_stale = true;
                }
                if quiet {
                    node.stale = false;
                }
            }
            None => {
                changed = true;
                let key = self.key_for(path);
                self.nodes.insert(
                    key,
                    Box::new(CachedNode {
                        stat,
                        data: None,
                        children: None,
                        stale: !quiet,
                        children_stale: false,
                        seq: 0,
                        change_time_ns: next_change_time(None, &stat),
                        acl: None,
                        used: 0,
                    }),
                );
            }
        }
        self.set_data(path, data.into());
        self.changes += 1;
        changed
    }

    /// Record a node's ACL, read when its stat said `aversion`.
    pub fn store_acl(&mut self, path: &str, aversion: i32, acl: Vec<AclEntry>) {
        if let Some(node) = self.nodes.get_mut(path) {
            node.acl = Some(self.acls.record(aversion, acl));
        }
    }

    /// Record the answer of a `getChildren2` fetched under `ticket`.
    pub fn store_children(
        &mut self,
        path: &str,
        names: Vec<String>,
        stat: NodeStat,
        ticket: FetchTicket,
    ) {
        let quiet = self.is_quiet_since(path, ticket);
        let Some(node) = self.nodes.get(path) else {
            return;
        };
        if stat.czxid != node.stat.czxid {
            // A different incarnation of the node: its stat will be refetched.
            if let Some(node) = self.nodes.get_mut(path) {
                node.stale = true;
            }
            return;
        }
        let children = self.children_of(path, names);
        let Some(node) = self.nodes.get_mut(path) else {
            return;
        };
        node.children = Some(children);
        node.children_stale = !quiet;
        self.changes += 1;
        // An event since the list was read is newer than its stat: the
        // child count it left (a child added, say) stays, with the list
        // marked outdated (a count of 0 would prove every name absent).
        if quiet && is_not_older(&stat, &node.stat) && stat.mzxid == node.stat.mzxid {
            node.stat.pzxid = stat.pzxid;
            node.stat.cversion = stat.cversion;
            node.stat.num_children = stat.num_children;
        }
    }

    /// The key for a new entry at `path`: the string its parent's child
    /// list already holds, when it lists it.
    fn key_for(&self, path: &str) -> Arc<str> {
        path::parent(path)
            .and_then(|parent| self.nodes.get(parent))
            .and_then(|parent| parent.children.as_ref())
            .and_then(|children| children.path_of(path::basename(path)))
            .cloned()
            .unwrap_or_else(|| Arc::from(path))
    }

    /// A child list of `parent` holding `names`, each sharing the path
    /// string of the child's own entry when it is cached.
    fn children_of(&self, parent: &str, names: Vec<String>) -> Box<Children> {
        let mut child = String::new();
        let set = names
            .into_iter()
            .map(|name| {
                child.clear();
                child.push_str(parent);
                if parent != "/" {
                    child.push('/');
                }
                child.push_str(&name);
                let shared = self
                    .nodes
                    .get_key_value(child.as_str())
                    .map(|(k, _)| k.clone());
                ChildName(shared.unwrap_or_else(|| Arc::from(child.as_str())))
            })
            .collect();
        Box::new(Children(set))
    }

    fn set_data(&mut self, path: &str, data: Arc<[u8]>) {
        let Some(node) = self.nodes.get_mut(path) else {
            return;
        };
        self.clock += 1;
        node.used = self.clock;
        let new_len = data.len();
        if let Some(old) = node.data.replace(data) {
            self.data_bytes -= old.len();
        }
        self.data_bytes += new_len;
        self.evict();
    }

    /// Drop data, least recently used first, until it fits the budget.
    ///
    /// The order is built when the budget is first exceeded: every node
    /// holding data then, by stamp. A node used (or stored, or re-created)
    /// since has a newer stamp than all of them, so its entry no longer
    /// matches and is skipped; the entries that still match come, in order,
    /// before everything else: popping them is exact LRU. When they run out
    /// the order is built again. Amortized, an eviction costs O(log n) and
    /// a cache that fits its budget keeps no order at all.
    fn evict(&mut self) {
        while self.data_bytes > self.data_limit {
            let Some((used, path)) = self.eviction.pop_front() else {
                let mut order: Vec<(u64, Arc<str>)> = self
                    .nodes
                    .iter()
                    .filter(|(_, node)| node.data.is_some())
                    .map(|(path, node)| (node.used, path.clone()))
                    .collect();
                if order.is_empty() {
                    break;
                }
                order.sort_unstable_by_key(|(used, _)| *used);
                self.eviction = order.into();
                continue;
            };
            if let Some(node) = self.nodes.get_mut(&path)
                && node.used == used
                && let Some(old) = node.data.take()
            {
                self.data_bytes -= old.len();
            }
        }
        if self.eviction.is_empty() && self.eviction.capacity() > 0 {
            self.eviction = VecDeque::new();
        }
    }

    /// Forget a node entirely (it was deleted).
    pub fn remove(&mut self, path: &str) -> Option<CachedNode> {
        self.note_uncached_event(path);
        let node = self.nodes.remove(path)?;
        self.changes += 1;
        if let Some(data) = &node.data {
            self.data_bytes -= data.len();
        }
        Some(*node)
    }

    /// Note that `name` appeared under `parent`.
    pub fn add_child(&mut self, parent: &str, name: &str) {
        self.note_uncached_event(parent);
        let child = path::join(parent, name);
        let shared = self
            .nodes
            .get_key_value(child.as_str())
            .map(|(k, _)| k.clone());
        if let Some(node) = self.nodes.get_mut(parent) {
            self.changes += 1;
            node.seq = node.seq.wrapping_add(1);
            match &mut node.children {
                Some(children) => {
                    if !children.contains(name) {
                        let path = shared.unwrap_or_else(|| Arc::from(child));
                        children.0.insert(ChildName(path));
                    }
                    node.stat.num_children = children.len() as i32;
                }
                // Counting is not idempotent here (our own create and its
                // event both arrive): let the next read refetch the stat,
                // but know at once that there is a child (the node's kind
                // depends on it, also while ZooKeeper is unreachable).
                None => {
                    node.stale = true;
                    node.stat.num_children = node.stat.num_children.max(1);
                }
            }
        }
    }

    /// Note that `name` vanished from under `parent`.
    pub fn remove_child(&mut self, parent: &str, name: &str) {
        self.note_uncached_event(parent);
        if let Some(node) = self.nodes.get_mut(parent) {
            self.changes += 1;
            node.seq = node.seq.wrapping_add(1);
            match &mut node.children {
                Some(children) => {
                    children.0.remove(name);
                    node.stat.num_children = children.len() as i32;
                }
                // The last child gone is certain (idempotent); beyond one,
                // the count waits for the refetch.
                None => {
                    node.stale = true;
                    if node.stat.num_children <= 1 {
                        node.stat.num_children = 0;
                    }
                }
            }
        }
    }

    /// Mark a node's child list as possibly missing changes (listed again
    /// before it is an answer while connected).
    pub fn mark_children_stale(&mut self, path: &str) {
        if let Some(node) = self.nodes.get_mut(path) {
            node.children_stale = true;
        }
    }

    /// Mark a node's data and stat as outdated.
    pub fn mark_stale(&mut self, path: &str) -> bool {
        self.note_uncached_event(path);
        match self.nodes.get_mut(path) {
            Some(node) => {
                node.seq = node.seq.wrapping_add(1);
                node.stale = true;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parent's list and the child's entry hold one path string,
    /// whichever of the two is stored first.
    #[test]
    fn a_listed_child_and_its_entry_share_one_path() {
        let mut cache = NodeCache::new(1 << 20);
        let dir = |n| NodeStat {
            num_children: n,
            ..stat(1, 1)
        };
        let t = cache.begin_fetch("/d");
        cache.store_data("/d", Vec::new(), dir(2), t);
        let t = cache.begin_fetch("/d/old");
        cache.store_data("/d/old", b"x".to_vec(), stat(2, 1), t);
        let t = cache.begin_fetch("/d");
        cache.store_children("/d", vec!["old".into(), "new".into()], dir(2), t);
        let t = cache.begin_fetch("/d/new");
        cache.store_data("/d/new", b"y".to_vec(), stat(3, 1), t);
        cache.add_child("/d", "later");
        let t = cache.begin_fetch("/d/later");
        cache.store_data("/d/later", b"z".to_vec(), stat(4, 1), t);
        let listed = cache
            .get("/d")
            .and_then(|n| n.children.clone())
            .expect("list");
        assert_eq!(listed.names(), ["later", "new", "old"]);
        for name in ["old", "new", "later"] {
            let (key, _) = cache.get_keyed(&format!("/d/{name}")).expect("entry");
            let in_list = listed.path_of(name).expect("listed");
            assert!(Arc::ptr_eq(key, in_list), "{name}: two copies of its path");
        }
        cache.remove_child("/d", "old");
        assert_eq!(
            cache
                .get("/d")
                .and_then(|n| n.children.clone())
                .expect("list")
                .names(),
            ["later", "new"]
        );
    }

    fn stat(mzxid: i64, mtime: i64) -> NodeStat {
        NodeStat {
            czxid: 1,
            mzxid,
            pzxid: 1,
            mtime,
            ..NodeStat::default()
        }
    }

    #[test]
    fn change_time_strictly_increases_within_one_millisecond() {
        let s1 = stat(999, 5);
        let t1 = next_change_time(None, &s1);
        // Next zxid wraps the sub-millisecond part to 0 in the same millisecond.
        let s2 = stat(1000, 5);
        let t2 = next_change_time(Some((999, t1)), &s2);
        assert!(t2 > t1, "{t2} > {t1}");
        // Clock stepping back on a new leader still moves forward.
        let s3 = stat(1001, 4);
        let t3 = next_change_time(Some((1000, t2)), &s3);
        assert!(t3 > t2);
        // Same mzxid: same time.
        assert_eq!(next_change_time(Some((1001, t3)), &s3), t3);
    }

    #[test]
    fn lru_bounds_data_bytes_but_keeps_stats() {
        let mut cache = NodeCache::new(10);
        let t = cache.begin_fetch("/a");
        cache.store_data("/a", vec![0; 6], stat(1, 1), t);
        let t = cache.begin_fetch("/b");
        cache.store_data("/b", vec![0; 6], stat(2, 1), t);
        assert!(cache.data_bytes() <= 10);
        assert!(cache.get("/a").is_some_and(|n| n.data.is_none()));
        assert!(cache.get("/b").is_some_and(|n| n.data.is_some()));
        assert_eq!(cache.node_count(), 2);
    }

    #[test]
    fn eviction_is_exact_lru_under_reads_rewrites_and_removals() {
        // Against a model that keeps paths in use order: every step leaves
        // exactly the most recently used data that fits the budget.
        let limit = 40;
        let mut cache = NodeCache::new(limit);
        let mut model: Vec<(String, usize)> = Vec::new(); // least recent first
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut zxid = 1;
        for _ in 0..5000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let path = format!("/n{}", rng % 23);
            let len = (rng >> 8) as usize % 9;
            match (rng >> 20) % 4 {
                0 | 1 => {
                    zxid += 1;
                    let t = cache.begin_fetch(&path);
                    cache.store_data(&path, vec![0; len], stat(zxid, 1), t);
                    cache.end_fetch(&path, t);
                    model.retain(|(p, _)| *p != path);
                    model.push((path, len));
                }
                2 => {
                    let held = cache.data(&path).is_some();
                    let pos = model.iter().position(|(p, _)| *p == path);
                    assert_eq!(held, pos.is_some(), "{path}");
                    if let Some(pos) = pos {
                        let entry = model.remove(pos);
                        model.push(entry);
                    }
                }
                _ => {
                    cache.remove(&path);
                    model.retain(|(p, _)| *p != path);
                }
            }
            while model.iter().map(|(_, len)| len).sum::<usize>() > limit {
                model.remove(0);
            }
            assert_eq!(
                cache.data_bytes(),
                model.iter().map(|(_, len)| len).sum::<usize>()
            );
            for i in 0..23 {
                let p = format!("/n{i}");
                let held = cache.get(&p).is_some_and(|n| n.data.is_some());
                assert_eq!(held, model.iter().any(|(m, _)| *m == p), "{p}");
            }
        }
    }

    #[test]
    fn older_answers_do_not_overwrite_newer() {
        let mut cache = NodeCache::new(1000);
        let t = cache.begin_fetch("/a");
        cache.store_data("/a", b"new".to_vec(), stat(5, 1), t);
        let t = cache.begin_fetch("/a");
        assert!(!cache.store_data("/a", b"old".to_vec(), stat(4, 1), t));
        assert_eq!(cache.data("/a").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn fetch_racing_an_event_stays_stale() {
        let mut cache = NodeCache::new(1000);
        let t = cache.begin_fetch("/a");
        cache.store_data("/a", b"1".to_vec(), stat(5, 1), t);
        let t = cache.begin_fetch("/a");
        cache.mark_stale("/a");
        cache.store_data("/a", b"2".to_vec(), stat(6, 1), t);
        assert!(cache.get("/a").is_some_and(|n| n.stale));
        let t = cache.begin_fetch("/a");
        cache.store_data("/a", b"3".to_vec(), stat(7, 1), t);
        assert!(cache.get("/a").is_some_and(|n| !n.stale));
    }

    #[test]
    fn first_fetch_racing_an_event_stays_stale() {
        // The event for an uncached node arrives before the (older) answer.
        let mut cache = NodeCache::new(1000);
        let t = cache.begin_fetch("/a");
        cache.mark_stale("/a");
        cache.store_data("/a", b"old".to_vec(), stat(5, 1), t);
        cache.end_fetch("/a", t);
        assert!(cache.get("/a").is_some_and(|n| n.stale));
    }

    #[test]
    fn equal_acls_are_stored_once() {
        let world = || {
            vec![AclEntry {
                scheme: "world".into(),
                id: "anyone".into(),
                perms: 31,
            }]
        };
        let mut cache = NodeCache::new(1000);
        for path in ["/a", "/b"] {
            let t = cache.begin_fetch(path);
            cache.store_data(path, b"x".to_vec(), stat(5, 1), t);
            cache.store_acl(path, 0, world());
        }
        let acl = |p: &str| {
            cache
                .get(p)
                .and_then(|n| n.acl.clone())
                .map(|a| a.entries.clone())
        };
        let (a, b) = (acl("/a").expect("acl a"), acl("/b").expect("acl b"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, world().as_slice());
    }
}
