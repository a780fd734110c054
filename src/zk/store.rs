//! The coherent cache: [`NodeCache`] + a [`ZkBackend`], kept in step by watch
//! events and re-synchronised after a reconnect or a new session.
//!
//! Owns the rules "when may a read be answered from memory" (cached and not
//! stale, or stale while ZooKeeper is unreachable) and "what did an event or a
//! resync change" (reported as [`Change`]s for the layer above to turn into
//! kernel invalidations), and copies the cache out to and back in from a
//! `--cache-dir` snapshot (whose format and files are `snapshot`'s). It must
//! not know about inodes or FUSE.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tracing::{debug, warn};

use super::backend::{
    AclEntry, CreateMode, NodeEvent, NodeEventKind, NodeStat, WriteOp, WriteResult, ZkBackend,
    ZkError,
};
use super::bulk::BulkRead;
use super::cache::{CachedNode, FetchTicket, NodeCache};
use super::join::await_all;
use super::path;

/// How many requests a bulk load keeps in flight on the session at once.
const PIPELINE_DEPTH: usize = 1024;

/// A change the store learnt of (from an event or a resync), by path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The node's data or stat changed.
    Data(String),
    /// The node appeared (its parent's child list changed).
    Created(String),
    /// The node is gone (its parent's child list changed).
    Deleted(String),
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Data(p) | Change::Created(p) | Change::Deleted(p) => p,
        }
    }
}

/// What one watch event did to the cache ([`Store::apply_event`]).
#[derive(Debug)]
pub struct Applied {
    pub changes: Vec<Change>,
    /// The event echoes a write of this mount's (which expected it).
    pub own: bool,
    /// The node is worth re-reading.
    pub refresh: bool,
}

/// A snapshot of one cached node.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// The node's path, as the cache keeps it (shared, not copied).
    pub path: Arc<str>,
    pub stat: NodeStat,
    /// `None` when evicted; [`Store::data`] fetches it again.
    pub data: Option<Arc<[u8]>>,
    pub change_time_ns: u64,
    /// The ACL, when known for the current `aversion`.
    pub acl: Option<Arc<[AclEntry]>>,
    /// The cached entry is known to be outdated (served because ZooKeeper is unreachable).
    pub stale: bool,
}

impl NodeView {
    fn of(path: &Arc<str>, node: &CachedNode) -> Self {
        NodeView {
            path: path.clone(),
            stat: node.stat,
            data: node.data.clone(),
            change_time_ns: node.change_time_ns,
            acl: node
                .acl
                .as_ref()
                .filter(|a| a.aversion == node.stat.aversion)
                .map(|a| a.entries.clone()),
            stale: node.stale,
        }
    }
}

/// Cache + backend. All methods take `&self`; the cache sits behind one mutex
/// that is never held across an `.await`.
pub struct Store<B: ZkBackend> {
    backend: B,
    cache: Mutex<NodeCache>,
    /// Watch events our own writes will cause (counted per path and kind,
    /// with the time of the write): the cache already holds their result, so
    /// they need no refetch. Cleared by a resync; old entries are ignored.
    own_events: Mutex<HashMap<(String, NodeEventKind), (u32, Instant)>>,
    /// ACL fetches in flight (background loads after listings), so that
    /// repeated listings do not ask for the same ACLs again.
    acls_in_flight: Mutex<std::collections::HashSet<String>>,
    /// Data fetches in flight: readers of a node being fetched wait for that
    /// answer instead of sending their own (a polling reader during a change).
    data_in_flight: Mutex<HashMap<String, Arc<Notify>>>,
    /// How long a write waits for a connection before it fails unsent.
    connect_wait: Duration,
    /// The mzxid of the last write this mount made to each node it wrote
    /// (forgotten when the node is deleted): whether a node's current
    /// version is this mount's own.
    own_versions: Mutex<HashMap<String, i64>>,
    /// Resync only: per listed directory, the `(czxid, pzxid)` at which its
    /// cached child list was read or confirmed (see [`Store::resync`]).
    resync_baselines: Mutex<Baselines>,
    /// Resync only: whether the last resync compared every node.
    resync_complete: std::sync::atomic::AtomicBool,
}

/// Reads of one resync that failed: one warn line for all of them (a
/// connection lost mid-resync fails every node; each is logged at debug).
#[derive(Default)]
struct Failures {
    count: usize,
    first: Option<(String, ZkError)>,
}

impl Failures {
    fn note(&mut self, path: &str, error: &ZkError) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some((path.to_string(), error.clone()));
        }
    }

    fn report(&self, what: &str) {
        if let Some((path, error)) = &self.first {
            warn!(count = self.count, first = %path, %error, "{what}");
        }
    }
}

/// The resync baselines and, while a resync runs, the directories whose
/// baselines child events ended meanwhile (the resync's own result must not
/// bring them back).
#[derive(Default)]
struct Baselines {
    confirmed: HashMap<String, (i64, i64)>,
    ended_during_resync: Option<std::collections::HashSet<String>>,
}

impl Baselines {
    fn end(&mut self, dir: &str) {
        self.confirmed.remove(dir);
        if let Some(ended) = &mut self.ended_during_resync {
            ended.insert(dir.to_string());
        }
    }
}

/// Fetches begun (their tickets) whose answer is awaited: dropped before
/// [`Fetching::settled`] (a read cancelled at `--op-timeout`), it ends them,
/// so a cancelled read leaves no fetch counted as in flight.
struct Fetching<'a, B: ZkBackend> {
    store: &'a Store<B>,
    begun: Vec<(String, FetchTicket)>,
}

impl<B: ZkBackend> Fetching<'_, B> {
    /// The answers arrived: the caller ends the fetches itself.
    fn settled(mut self) {
        self.begun.clear();
    }
}

impl<B: ZkBackend> Drop for Fetching<'_, B> {
    fn drop(&mut self) {
        if self.begun.is_empty() {
            return;
        }
        let mut cache = self.store.cache();
        for (path, ticket) in self.begun.drain(..) {
            cache.end_fetch(&path, ticket);
        }
    }
}

/// A bulk load handing out its results in order, wave by wave
/// ([`Store::load_in_order`]). Dropped half-way, it ends its fetches (the
/// wave in flight is forgotten like any dropped read).
pub struct LoadInOrder<'a, B: ZkBackend> {
    store: &'a Store<B>,
    /// By index of the load's paths; `None` until read.
    results: Vec<Option<Result<NodeView, ZkError>>>,
    /// Results before this index were handed out.
    given: usize,
    /// Indexes (into the paths) to read, in order, and their paths.
    to_fetch: Vec<usize>,
    fetch_paths: Vec<&'a str>,
    /// How many of `to_fetch` were read.
    fetched: usize,
    bulk: BulkRead,
}

impl<B: ZkBackend> LoadInOrder<'_, B> {
    /// The results of the next paths (at least one), reading waves until
    /// one completes them; `None` once every result was handed out.
    pub async fn next(&mut self) -> Option<Vec<Result<NodeView, ZkError>>> {
        loop {
            let ready = self
                .to_fetch
                .get(self.fetched)
                .copied()
                .unwrap_or(self.results.len());
            if ready > self.given {
                let given = self.results[self.given..ready]
                    .iter_mut()
                    .map(|r| r.take().unwrap_or(Err(ZkError::Other("not loaded".into()))))
                    .collect();
                self.given = ready;
                return Some(given);
            }
            let wave = self.bulk.next_wave()?;
            self.read(wave).await;
        }
    }

    async fn read(&mut self, wave: std::ops::Range<usize>) {
        let store = self.store;
        let (tickets, guard) = store.begin_fetches(&self.fetch_paths[wave.clone()]);
        let answers = self
            .bulk
            .read(&store.backend, &self.fetch_paths, wave.clone())
            .await;
        let mut cache = store.cache();
        guard.settled();
        self.fetched = wave.end;
        for ((k, ticket), answer) in wave.zip(tickets).zip(answers) {
            let path = self.fetch_paths[k];
            cache.end_fetch(path, ticket);
            let recorded = store.record_data(&mut cache, path, ticket, answer);
            self.results[self.to_fetch[k]] = Some(recorded.and_then(|_| {
                cache
                    .get_keyed(path)
                    .map(|(k, n)| NodeView::of(k, n))
                    .ok_or(ZkError::NoNode)
            }));
        }
    }
}

/// The expected echo of one of our writes, counted while the write is out:
/// dropped (the write failed, or its future was dropped) it takes the
/// expectation back, so a late or lost answer can never make the cache
/// swallow someone else's change.
struct OwnEcho<'a, B: ZkBackend> {
    store: &'a Store<B>,
    expected: Vec<(String, NodeEventKind)>,
}

impl<B: ZkBackend> OwnEcho<'_, B> {
    /// The write was applied: its echo is due.
    fn keep(mut self) {
        self.expected.clear();
    }
}

impl<B: ZkBackend> Drop for OwnEcho<'_, B> {
    fn drop(&mut self) {
        for (path, kind) in &self.expected {
            self.store.unexpect_own(path, *kind);
        }
    }
}

/// Ends a shared data fetch: wakes its waiters even if the fetch was
/// cancelled (a FUSE request timing out), so none waits forever.
struct FlightGuard<'a> {
    flights: &'a Mutex<HashMap<String, Arc<Notify>>>,
    path: &'a str,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let notify = self
            .flights
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.path);
        if let Some(notify) = notify {
            notify.notify_waiters();
        }
    }
}

/// Whether a write that failed with `e` and was found not applied may be
/// sent again. Only after ConnectionLoss: the dropped connection took the
/// request with it, so it cannot still be applied later (after our own
/// timeout it might). The server still judges the version.
fn retry_after(e: &ZkError, attempt: u32) -> bool {
    *e == ZkError::ConnectionLoss && attempt < 4
}

/// Longest wait to learn the outcome of a write whose answer was lost.
const UNKNOWN_OUTCOME_LIMIT: Duration = Duration::from_secs(60);

/// The wait between two attempts to read a lost write's node(s) again,
/// after one met a lost connection (as `connected` polls the state).
const SETTLE_RETRY_WAIT: Duration = Duration::from_millis(20);

/// What reading the node(s) again says about a write whose answer was lost.
enum Found<T> {
    /// It was applied (with what the answer would have said).
    Applied(T),
    /// It was not: sending it again is safe after ConnectionLoss.
    NotApplied,
    /// No answer within [`UNKNOWN_OUTCOME_LIMIT`], or one that cannot tell
    /// (NoAuth, say): never sent again; the caller reports the failure.
    Unknown,
}

/// The one warn line of a write whose outcome stayed unknown.
fn outcome_unknown(path: &str, why: &str) {
    warn!(
        path,
        "the outcome of a write whose answer was lost stayed unknown ({why}; limit \
         {UNKNOWN_OUTCOME_LIMIT:?}): it may have been applied; read the node before retrying"
    );
}

/// Whether a create must be the name's only creator (`mkdir`, `mknod`,
/// `ln -s`): the lost answer of such a create cannot be resolved by an
/// empty node, which another client's create of the name leaves too. A new
/// file's create at its close is not: had another client created the name
/// first, the open would have opened theirs, and an empty file is there
/// either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exclusive {
    Yes,
    No,
}

/// How one node of a write whose answer was lost reads now.
#[derive(Debug, PartialEq, Eq)]
enum Looks {
    /// As the op leaves it (the stat read; `None` for a node deleted).
    Applied(Option<NodeStat>),
    /// As it was when the op was sent, which the op, had it been applied,
    /// cannot have left: it was not.
    Untouched,
    /// Neither: another client changed it since (after ours, or instead).
    Neither,
    /// Gone (a create's node missing, a set node deleted): safe to send one
    /// op again, but no proof that it was not applied and deleted since;
    /// in a transaction it proves nothing against the other nodes.
    Gone,
}

/// Judge one op of a lost write by its node now (`None`: no node), given
/// `base`, the node as cached when the op was sent.
/// - create of an ephemeral node: ours if its owner is this `session`; not
///   applied if another session's node is at version 0 (ours met
///   NodeExists);
/// - create: ours if it holds our data (not empty: an empty node, `mkdir`'s
///   or a lock file's, is what another client's create leaves too) and has
///   no children; not applied if
///   the node is missing (ZooKeeper has no trace of a create deleted since;
///   SEMANTICS accepts that) or holds other data at version 0 (another
///   client's create, which ours would have met as NodeExists);
/// - setData: ours if it holds our data, newer than `base`, at the expected
///   version + 1; not applied if it is `base`'s node at `base`'s version,
///   or, for a versioned write, the same node at the expected version or
///   at version + 1 with other data (only one write can take a node from a
///   version to the next: that one was not ours); a node that is gone
///   counts as not applied too: what ours did, if anything, went with it;
/// - delete: done if the node is gone or is another node (a new czxid:
///   the one we deleted is gone); not applied if it is `base`'s node.
fn judge(
    op: &WriteOp,
    base: Option<&NodeStat>,
    now: Option<(&[u8], &NodeStat)>,
    session: i64,
    exclusive: Exclusive,
) -> Looks {
    let same_node = |stat: &NodeStat| base.is_some_and(|b| b.czxid == stat.czxid);
    match (op, now) {
        (WriteOp::Create { .. }, None) => Looks::Gone,
        // An ephemeral node names its session: ours or not, whatever it holds.
        (
            WriteOp::Create {
                mode: CreateMode::Ephemeral,
                ..
            },
            Some((_, stat)),
        ) => {
            if stat.ephemeral_owner == session && stat.num_children == 0 {
                Looks::Applied(Some(*stat))
            } else if stat.ephemeral_owner != session && stat.version == 0 {
                Looks::Untouched
            } else {
                Looks::Neither
            }
        }
        (WriteOp::Create { data, .. }, Some((now, stat))) => {
            // Empty data (`mkdir`, `touch`, a lock file) is what another
            // client's create of the name holds too: no telling whose it
            // is, and a lock must not be taken twice.
            let theirs_too = data.is_empty() && exclusive == Exclusive::Yes;
            if now == data.as_slice() && !theirs_too && stat.num_children == 0 {
                Looks::Applied(Some(*stat))
            } else if now == data.as_slice() {
                Looks::Neither
            } else if stat.version == 0 {
                Looks::Untouched
            } else {
                Looks::Neither
            }
        }
        // Gone: whatever ours did went with the node, and sending it again
        // meets NoNode, the failure the caller reports (the node was
        // deleted meanwhile).
        (WriteOp::SetData { .. }, None) => Looks::Gone,
        (WriteOp::SetData { data, version, .. }, Some((now, stat))) => {
            let newer = base.is_none_or(|b| stat.mzxid > b.mzxid);
            let follows = version.is_none_or(|v| stat.version == v + 1);
            if now == data.as_slice() && newer && follows {
                Looks::Applied(Some(*stat))
            } else if same_node(stat)
                && (base.is_some_and(|b| b.mzxid == stat.mzxid)
                    || version.is_some_and(|v| stat.version == v || stat.version == v + 1))
            {
                Looks::Untouched
            } else {
                Looks::Neither
            }
        }
        (WriteOp::Delete { .. }, None) => Looks::Applied(None),
        (WriteOp::Delete { .. }, Some((_, stat))) => {
            if same_node(stat) {
                Looks::Untouched
            } else if base.is_some() {
                Looks::Applied(None)
            } else {
                Looks::Neither
            }
        }
    }
}

/// How long an expected own event may take to arrive before it is ignored.
const OWN_EVENT_WINDOW: Duration = Duration::from_secs(10);

impl<B: ZkBackend> Store<B> {
    pub fn new(backend: B, data_limit: usize) -> Self {
        Store {
            backend,
            cache: Mutex::new(NodeCache::new(data_limit)),
            own_events: Mutex::new(HashMap::new()),
            acls_in_flight: Mutex::new(std::collections::HashSet::new()),
            data_in_flight: Mutex::new(HashMap::new()),
            connect_wait: Duration::from_secs(5),
            own_versions: Mutex::new(HashMap::new()),
            resync_baselines: Mutex::new(Baselines::default()),
            resync_complete: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// How long writes wait for a connection (`--op-timeout`).
    pub fn with_connect_wait(mut self, wait: Duration) -> Self {
        self.connect_wait = wait;
        self
    }

    fn own(&self) -> MutexGuard<'_, HashMap<(String, NodeEventKind), (u32, Instant)>> {
        self.own_events.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expect_own(&self, expected: &[(&str, NodeEventKind)]) -> OwnEcho<'_, B> {
        let mut own = self.own();
        for (path, kind) in expected {
            let entry = own
                .entry((path.to_string(), *kind))
                .or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
        }
        OwnEcho {
            store: self,
            expected: expected.iter().map(|(p, k)| (p.to_string(), *k)).collect(),
        }
    }

    /// The root watch is on again after a gap: a write of ours that the
    /// server applied before that echoes no event, so no expectation of an
    /// echo may outlive this (it would take another client's next change
    /// for ours). An echo still on its way is then taken for another
    /// client's change: the node is re-read, which costs a read only.
    pub fn forget_own_echoes(&self) {
        self.own().clear();
    }

    fn unexpect_own(&self, path: &str, kind: NodeEventKind) {
        let mut own = self.own();
        let key = (path.to_string(), kind);
        if let Some(entry) = own.get_mut(&key) {
            entry.0 -= 1;
            if entry.0 == 0 {
                own.remove(&key);
            }
        }
    }

    /// Whether this event is the echo of one of our own writes.
    fn take_own(&self, path: &str, kind: NodeEventKind) -> bool {
        let mut own = self.own();
        let key = (path.to_string(), kind);
        match own.get_mut(&key) {
            Some(entry) if entry.1.elapsed() < OWN_EVENT_WINDOW => {
                entry.0 -= 1;
                if entry.0 == 0 {
                    own.remove(&key);
                }
                true
            }
            Some(_) => {
                own.remove(&key);
                false
            }
            None => false,
        }
    }

    fn cache(&self) -> MutexGuard<'_, NodeCache> {
        // A panic while holding the lock leaves the cache usable: every
        // mutation keeps it consistent step by step.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The backend itself, for callers that must ask the server and not the
    /// cache (the registration supervisor).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// (cached nodes, cached data bytes)
    pub fn usage(&self) -> (usize, usize) {
        let cache = self.cache();
        (cache.node_count(), cache.data_bytes())
    }

    /// What is cached about `path`, without asking ZooKeeper.
    pub fn peek(&self, path: &str) -> Option<NodeView> {
        self.cache()
            .get_keyed(path)
            .map(|(k, n)| NodeView::of(k, n))
    }

    /// The cached child list, if it is not known to miss changes (an
    /// event raced its listing, a resync could not list it again).
    #[cfg(test)]
    pub fn peek_current_children(&self, path: &str) -> Option<Vec<String>> {
        let cache = self.cache();
        let node = cache.get(path).filter(|n| !n.children_stale)?;
        node.children.as_ref().map(|c| c.names())
    }

    /// Whether `path`'s cached child list has `name` (`None` when it was
    /// not listed, or, with `current_only`, when the list may miss
    /// changes), without copying the list.
    pub fn lists_child(&self, path: &str, name: &str, current_only: bool) -> Option<bool> {
        let cache = self.cache();
        let node = cache
            .get(path)
            .filter(|n| !(current_only && n.children_stale))?;
        node.children.as_ref().map(|c| c.contains(name))
    }

    /// Cached child names of `path` if they were listed (fresh or not).
    pub fn peek_children(&self, path: &str) -> Option<Vec<String>> {
        let cache = self.cache();
        let node = cache.get(path)?;
        node.children.as_ref().map(|c| c.names())
    }

    /// Whether a cached answer for `path` may be used without asking ZooKeeper.
    fn usable(&self, node: &CachedNode) -> bool {
        !node.stale || !self.backend.is_connected()
    }

    /// The node's stat (and data, if cached). Loads it on first access or when stale.
    pub async fn node(&self, path: &str) -> Result<NodeView, ZkError> {
        if let Some((key, node)) = self.cache().get_keyed(path)
            && self.usable(node)
        {
            return Ok(NodeView::of(key, node));
        }
        // Sent while connected and failed by the connection's drop (a
        // server stopped gracefully, say): asked once more when the session
        // is back, within the wait a write gets (`--op-timeout`; FUSE reads
        // are bounded by it too), instead of `EIO` for a `mv` whose lookup
        // met the drop. While disconnected already, it fails at once.
        let connected = self.backend.is_connected();
        match self.fetch_data(path).await {
            Err(ZkError::ConnectionLoss) if connected => {
                self.until_connected().await?;
                self.fetch_data(path).await
            }
            result => result,
        }
    }

    /// The node's data; fetched when not cached, evicted or stale.
    pub async fn data(&self, path: &str) -> Result<(Arc<[u8]>, NodeView), ZkError> {
        {
            let mut cache = self.cache();
            let usable = cache.get(path).is_some_and(|n| self.usable(n));
            if usable && let Some(data) = cache.data(path) {
                let view = cache.get_keyed(path).map(|(k, n)| NodeView::of(k, n));
                if let Some(view) = view {
                    return Ok((data, view));
                }
            }
        }
        let view = self.fetch_data(path).await?;
        match view.data.clone() {
            Some(data) => Ok((data, view)),
            // Evicted again at once (data larger than the whole cache budget).
            None => {
                let (data, stat) = self.backend.get_data(path).await?;
                Ok((data.into(), NodeView { stat, ..view }))
            }
        }
    }

    /// The node's data and stat as the server has them now (never from the
    /// cache; the cache is updated). For writes whose versions must not be
    /// based on a cached state an event might not have reached yet: a
    /// version alone cannot tell a node from one deleted and re-created at
    /// the same version, the czxid of a fresh read can.
    pub async fn read_fresh(&self, path: &str) -> Result<(Arc<[u8]>, NodeView), ZkError> {
        let view = self.fetch_data_now(path).await?;
        match view.data.clone() {
            Some(data) => Ok((data, view)),
            None => {
                let (data, stat) = self.backend.get_data(path).await?;
                Ok((data.into(), NodeView { stat, ..view }))
            }
        }
    }

    /// Child names of `path`, sorted. Listed on first access, then kept
    /// current from watch events.
    pub async fn children(&self, path: &str) -> Result<Vec<String>, ZkError> {
        {
            let cache = self.cache();
            if let Some(node) = cache.get(path)
                && let Some(children) = &node.children
                && (!node.children_stale || !self.backend.is_connected())
            {
                return Ok(children.names());
            }
        }
        // The node itself must be cached for its child list to be kept.
        self.node(path).await?;
        let ticket = self.cache().begin_fetch(path);
        let guard = self.fetching(path, ticket);
        let result = self.backend.get_children(path).await;
        let mut cache = self.cache();
        guard.settled();
        cache.end_fetch(path, ticket);
        match result {
            Ok((mut names, stat)) => {
                names.sort();
                cache.store_children(path, names.clone(), stat, ticket);
                // A list taken as read (no event raced it) is a resync
                // baseline too: the first reconnect after a listing need
                // not list the directory again if its pzxid did not move.
                if cache
                    .get(path)
                    .is_some_and(|n| !n.children_stale && n.stat.czxid == stat.czxid)
                {
                    self.baselines()
                        .confirmed
                        .insert(path.to_string(), (stat.czxid, stat.pzxid));
                }
                Ok(names)
            }
            Err(e) => {
                if e == ZkError::NoNode && cache.is_quiet_since(path, ticket) {
                    cache.remove(path);
                }
                // Unreachable: the last known list beats an error. A node
                // whose last known stat has no children had that list (the
                // mount lists such a node without asking, so a snapshot may
                // hold no list of it).
                if e.is_connectivity()
                    && let Some(node) = cache.get(path)
                {
                    match &node.children {
                        Some(children) => return Ok(children.names()),
                        None if node.stat.num_children == 0 => return Ok(Vec::new()),
                        None => {}
                    }
                }
                Err(e)
            }
        }
    }

    /// Fetch a node's data, sharing a fetch already in flight for it. A
    /// waiter whose shared answer is no longer usable (an event raced it, or
    /// it failed) fetches again itself.
    async fn fetch_data(&self, path: &str) -> Result<NodeView, ZkError> {
        loop {
            let waiting = {
                let mut flights = self
                    .data_in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match flights.get(path) {
                    Some(notify) => Some(notify.clone()),
                    None => {
                        flights.insert(path.to_string(), Arc::new(Notify::new()));
                        None
                    }
                }
            };
            let Some(notify) = waiting else {
                let _guard = FlightGuard {
                    flights: &self.data_in_flight,
                    path,
                };
                return self.fetch_data_now(path).await;
            };
            let notified = notify.notified();
            // The fetch may have ended between the lookup and `notified()`.
            let still_flying = self
                .data_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(path)
                .is_some_and(|n| Arc::ptr_eq(n, &notify));
            if still_flying {
                notified.await;
            }
            if let Some((key, node)) = self.cache().get_keyed(path)
                && self.usable(node)
            {
                return Ok(NodeView::of(key, node));
            }
        }
    }

    /// Fetch a node's data with a request of our own (sent now, so it sees
    /// everything this session did before).
    async fn fetch_data_now(&self, path: &str) -> Result<NodeView, ZkError> {
        let (ticket, known_aversion) = {
            let mut cache = self.cache();
            let known = cache
                .get(path)
                .and_then(|n| n.acl.as_ref().map(|a| a.aversion));
            (cache.begin_fetch(path), known)
        };
        let guard = self.fetching(path, ticket);
        // The ACL travels with the data (pipelined) when we do not have it
        // yet: write bits depend on it. A refresh reads the data alone and
        // the ACL only when the stat says it changed.
        let (result, acl) = match known_aversion {
            None => {
                let (result, acl) =
                    tokio::join!(self.backend.get_data(path), self.backend.get_acl(path));
                (result, Some(acl))
            }
            Some(aversion) => {
                let result = self.backend.get_data(path).await;
                let acl = match &result {
                    Ok((_, stat)) if stat.aversion != aversion => {
                        Some(self.backend.get_acl(path).await)
                    }
                    _ => None,
                };
                (result, acl)
            }
        };
        let mut cache = self.cache();
        guard.settled();
        cache.end_fetch(path, ticket);
        if let (Ok((_, stat)), Some(Ok(acl))) = (&result, acl) {
            let aversion = stat.aversion;
            let recorded = self.record_data(&mut cache, path, ticket, result);
            cache.store_acl(path, aversion, acl);
            return recorded.and_then(|_| {
                cache
                    .get_keyed(path)
                    .map(|(k, n)| NodeView::of(k, n))
                    .ok_or(ZkError::NoNode)
            });
        }
        self.record_data(&mut cache, path, ticket, result)
            .map(|(v, _)| v)
    }

    /// Store one `getData` answer; returns the view and whether it changed.
    fn record_data(
        &self,
        cache: &mut NodeCache,
        path: &str,
        ticket: FetchTicket,
        result: Result<(Vec<u8>, NodeStat), ZkError>,
    ) -> Result<(NodeView, bool), ZkError> {
        match result {
            Ok((data, stat)) => {
                let changed = cache.store_data(path, data, stat, ticket);
                // The node exists: a parent whose cached children missed it
                // (an event lost) must not answer "absent" for it any more.
                if let Some(parent) = path::parent(path)
                    && cache.get(parent).is_some_and(|p| {
                        p.children.as_ref().map_or(p.stat.num_children == 0, |c| {
                            !c.contains(path::basename(path))
                        })
                    })
                {
                    cache.add_child(parent, path::basename(path));
                }
                let view = cache
                    .get_keyed(path)
                    .map(|(k, n)| NodeView::of(k, n))
                    .ok_or(ZkError::NoNode)?;
                Ok((view, changed))
            }
            Err(ZkError::NoNode) => {
                // Gone on the server; forget it unless an event raced the read.
                if cache.is_quiet_since(path, ticket)
                    && cache.remove(path).is_some()
                    && let Some(parent) = path::parent(path)
                {
                    cache.remove_child(parent, path::basename(path));
                }
                Err(ZkError::NoNode)
            }
            Err(e) if e.is_connectivity() => match cache.get_keyed(path) {
                // ZooKeeper unreachable: serve the last known state.
                Some((key, node)) => Ok((NodeView::of(key, node), false)),
                None => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The data sizes the cache knows of (from an older `Stat`), for sizing
    /// bulk reads.
    fn known_sizes(&self, paths: &[&str]) -> Vec<Option<usize>> {
        let cache = self.cache();
        paths
            .iter()
            .map(|p| cache.get(p).map(|n| n.stat.data_length.max(0) as usize))
            .collect()
    }

    fn begin_fetches(&self, paths: &[&str]) -> (Vec<FetchTicket>, Fetching<'_, B>) {
        let mut cache = self.cache();
        let tickets: Vec<FetchTicket> = paths.iter().map(|p| cache.begin_fetch(p)).collect();
        let begun = paths
            .iter()
            .zip(&tickets)
            .map(|(p, t)| (p.to_string(), *t))
            .collect();
        (tickets, Fetching { store: self, begun })
    }

    /// A guard for one fetch begun under `ticket`.
    fn fetching(&self, path: &str, ticket: FetchTicket) -> Fetching<'_, B> {
        Fetching {
            store: self,
            begun: vec![(path.to_string(), ticket)],
        }
    }

    /// Load many nodes at once, in multi-reads (see [`BulkRead`]); results in
    /// the order of `paths`. Fresh cached nodes are not asked for.
    pub async fn load_many(&self, paths: &[String]) -> Vec<Result<NodeView, ZkError>> {
        let mut load = self.load_in_order(paths);
        let mut results = Vec::with_capacity(paths.len());
        while let Some(next) = load.next().await {
            results.extend(next);
        }
        results
    }

    /// [`Self::load_many`] one wave at a time: each [`LoadInOrder::next`]
    /// gives the results of the next paths in order, as soon as the wave
    /// that completes them was answered (so a caller can use the first
    /// results while the later waves are still to be read).
    pub fn load_in_order<'a>(&'a self, paths: &'a [String]) -> LoadInOrder<'a, B> {
        let mut results = Vec::with_capacity(paths.len());
        let mut to_fetch = Vec::new();
        {
            let cache = self.cache();
            for (i, p) in paths.iter().enumerate() {
                match cache.get_keyed(p) {
                    Some((key, node)) if self.usable(node) => {
                        results.push(Some(Ok(NodeView::of(key, node))))
                    }
                    _ => {
                        results.push(None);
                        to_fetch.push(i);
                    }
                }
            }
        }
        // Unreachable: what was never read stays unknown; a listing shows
        // such nodes from what it was told (no waiting for each of them).
        if !to_fetch.is_empty() && !self.backend.is_connected() {
            for &i in &to_fetch {
                results[i] = Some(Err(ZkError::ConnectionLoss));
            }
            to_fetch.clear();
        }
        // Data only: ACLs of a bulk load follow separately (`load_acls`).
        let fetch_paths: Vec<&str> = to_fetch.iter().map(|&i| paths[i].as_str()).collect();
        let bulk = BulkRead::new(&self.known_sizes(&fetch_paths));
        LoadInOrder {
            store: self,
            results,
            given: 0,
            to_fetch,
            fetch_paths,
            fetched: 0,
            bulk,
        }
    }

    /// Load the ACLs of cached nodes that have none for their current
    /// `aversion` (pipelined). Returns the paths whose ACL was recorded.
    pub async fn load_acls(&self, paths: &[String]) -> Vec<String> {
        let wanted: Vec<String> = {
            let cache = self.cache();
            let mut in_flight = self
                .acls_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            paths
                .iter()
                .filter(|p| {
                    cache.get(p).is_some_and(|n| {
                        n.acl.as_ref().is_none_or(|a| a.aversion != n.stat.aversion)
                    })
                })
                .filter(|p| in_flight.insert((*p).clone()))
                .cloned()
                .collect()
        };
        let mut done = Vec::new();
        for chunk in wanted.chunks(PIPELINE_DEPTH) {
            let acls = await_all(chunk.iter().map(|p| self.backend.get_acl(p)).collect()).await;
            let mut cache = self.cache();
            for (p, acl) in chunk.iter().zip(acls) {
                let aversion = cache.get(p).map(|n| n.stat.aversion);
                if let (Some(aversion), Ok(acl)) = (aversion, acl) {
                    cache.store_acl(p, aversion, acl);
                    done.push(p.clone());
                }
            }
            let mut in_flight = self
                .acls_in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            for p in chunk {
                in_flight.remove(p);
            }
        }
        done
    }

    /// The node's ACL (not cached: asked for on each call).
    pub async fn acl(&self, path: &str) -> Result<Vec<AclEntry>, ZkError> {
        self.backend.get_acl(path).await
    }

    /// Whether the node's version with this mzxid was written by this mount.
    pub fn written_here(&self, path: &str, mzxid: i64) -> bool {
        self.own_versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            == Some(&mzxid)
    }

    fn note_own_version(&self, path: &str, mzxid: Option<i64>) {
        let mut own = self.own_versions.lock().unwrap_or_else(|e| e.into_inner());
        match mzxid {
            Some(m) => {
                own.insert(path.to_string(), m);
            }
            None => {
                own.remove(path);
            }
        }
    }

    /// Record a node we just wrote (created or set) with its new stat.
    fn record_written(&self, path: &str, data: Vec<u8>, stat: NodeStat, ticket: FetchTicket) {
        self.note_own_version(path, Some(stat.mzxid));
        let mut cache = self.cache();
        cache.end_fetch(path, ticket);
        cache.store_data(path, data, stat, ticket);
    }

    fn record_created(&self, path: &str, data: Vec<u8>, stat: NodeStat, ticket: FetchTicket) {
        self.record_written(path, data, stat, ticket);
        if let Some(parent) = path::parent(path) {
            self.cache().add_child(parent, path::basename(path));
        }
    }

    fn record_deleted(&self, path: &str) {
        self.note_own_version(path, None);
        let mut cache = self.cache();
        cache.remove(path);
        if let Some(parent) = path::parent(path) {
            cache.remove_child(parent, path::basename(path));
        }
    }

    /// Until the session is connected (unbounded: callers bound it). The
    /// backend reports state, not changes, so this looks every 20 ms.
    async fn connected(&self) {
        while !self.backend.is_connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After a write's answer was lost, once the session is connected
    /// again and its server caught up with the leader (`sync`): read every
    /// node it changes and [`judge`] each against what the
    /// cache had when it was sent (`bases`, one per op). A `multi` is all or
    /// nothing: one node left as it was proves none was applied; every node
    /// as the write left it, that it was (the answers are rebuilt from what
    /// is read). Anything else is [`Found::Unknown`], with one warn line.
    /// While disconnected this keeps waiting, up to
    /// [`UNKNOWN_OUTCOME_LIMIT`] (FUSE writes are not bounded otherwise:
    /// `fuse::dispatch_write`).
    async fn settle(
        &self,
        ops: &[WriteOp],
        bases: &[Option<NodeStat>],
        exclusive: Exclusive,
    ) -> Found<Vec<WriteResult>> {
        let find_out = async {
            let mut results = Vec::with_capacity(ops.len());
            let mut all_applied = true;
            let mut any_applied = false;
            let mut any_neither = false;
            let mut synced = false;
            for (i, (op, base)) in ops.iter().zip(bases).enumerate() {
                // Deleted and created again by this same transaction: the
                // create's node says it all.
                let recreated = matches!(op, WriteOp::Delete { .. })
                    && ops[i + 1..]
                        .iter()
                        .any(|o| matches!(o, WriteOp::Create { .. }) && o.path() == op.path());
                if recreated {
                    results.push(WriteResult::Deleted);
                    continue;
                }
                let mut attempt = 0u32;
                let now = loop {
                    // Not the first try: the last one met a lost connection
                    // at once, maybe one the session has not noticed yet
                    // (it still says connected). Wait before the next, or
                    // this loop never lets the runtime run anything else:
                    // not the session task that would notice, not the limit
                    // around it.
                    if attempt > 0 {
                        tokio::time::sleep(SETTLE_RETRY_WAIT).await;
                    }
                    attempt += 1;
                    self.connected().await;
                    // The server found again may be a follower that has not
                    // applied the write yet (committed through the server
                    // lost): what it shows proves nothing until it caught up
                    // with the leader. Once per connection; a read that
                    // meets a lost connection syncs again on the next one.
                    if !synced {
                        match self.backend.sync(op.path()).await {
                            Err(e) if e.is_connectivity() => continue,
                            Ok(()) => synced = true,
                            Err(e) => {
                                return Err(format!(
                                    "the server could not catch up with the leader ({e})"
                                ));
                            }
                        }
                    }
                    match self.backend.get_data(op.path()).await {
                        Err(e) if e.is_connectivity() => synced = false,
                        Err(ZkError::NoNode) => break None,
                        Ok(read) => break Some(read),
                        Err(e) => return Err(format!("{} could not be read: {e}", op.path())),
                    }
                };
                match judge(
                    op,
                    base.as_ref(),
                    now.as_ref().map(|(d, s)| (d.as_slice(), s)),
                    self.backend.session_id(),
                    exclusive,
                ) {
                    Looks::Untouched => return Ok(Found::NotApplied),
                    Looks::Applied(stat) => {
                        any_applied = true;
                        results.push(match op {
                            WriteOp::Create { .. } => {
                                WriteResult::Created(stat.unwrap_or_default())
                            }
                            WriteOp::SetData { .. } => WriteResult::Set(stat.unwrap_or_default()),
                            WriteOp::Delete { .. } => WriteResult::Deleted,
                        });
                    }
                    Looks::Gone => all_applied = false,
                    Looks::Neither => {
                        all_applied = false;
                        any_neither = true;
                    }
                }
            }
            // Gone nodes alone are safe to send again (as for one op); next
            // to a node the write did leave, they say it was applied and
            // then undone by someone: no telling.
            Ok(if all_applied {
                Found::Applied(results)
            } else if !any_neither && !any_applied {
                Found::NotApplied
            } else {
                Found::Unknown
            })
        };
        let path = ops.first().map_or("/", WriteOp::path);
        match tokio::time::timeout(UNKNOWN_OUTCOME_LIMIT, find_out).await {
            Ok(Ok(Found::Unknown)) => {
                outcome_unknown(path, "the node changed since, so it cannot tell");
                Found::Unknown
            }
            Ok(Ok(found)) => found,
            Ok(Err(why)) => {
                outcome_unknown(path, &why);
                Found::Unknown
            }
            Err(_) => {
                outcome_unknown(path, "no server answered within the limit");
                Found::Unknown
            }
        }
    }

    /// The cached stat of every node `ops` change, as it is before they are
    /// sent ([`Self::settle`] compares with it).
    fn bases(&self, ops: &[WriteOp]) -> Vec<Option<NodeStat>> {
        let cache = self.cache();
        ops.iter()
            .map(|op| cache.get(op.path()).map(|n| n.stat))
            .collect()
    }

    /// [`Self::settle`] for one op.
    async fn settle_one(
        &self,
        op: WriteOp,
        base: Option<NodeStat>,
        exclusive: Exclusive,
    ) -> Found<WriteResult> {
        match self
            .settle(std::slice::from_ref(&op), &[base], exclusive)
            .await
        {
            Found::Applied(mut results) => match results.pop() {
                Some(result) => Found::Applied(result),
                None => Found::Unknown,
            },
            Found::NotApplied => Found::NotApplied,
            Found::Unknown => Found::Unknown,
        }
    }

    /// Writes are sent only while connected: the client would otherwise
    /// queue them and apply them after a reconnect, possibly long after the
    /// caller was told the write failed. Waits up to `--op-timeout`, then
    /// fails with nothing sent.
    pub async fn until_connected(&self) -> Result<(), ZkError> {
        tokio::time::timeout(self.connect_wait, self.connected())
            .await
            .map_err(|_| ZkError::Timeout)
    }

    /// A read a modifying operation depends on (whether a name is free, the
    /// versions a rename sends, the content a flush checks): a read failed
    /// by a lost connection or session changed nothing, so it is asked
    /// again once connected, waiting as a write does (up to `--op-timeout`
    /// each time, at most 4 attempts), instead of failing the operation
    /// with `EIO` while the write itself would have waited (a `mv` in a
    /// loop did, on a graceful server stop).
    pub async fn for_write<T, F, Fut>(&self, read: F) -> Result<T, ZkError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ZkError>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match read().await {
                Err(ZkError::ConnectionLoss | ZkError::SessionExpired) if attempt < 4 => {
                    self.until_connected().await?;
                }
                result => return result,
            }
        }
    }

    /// Create a node and cache it (read-your-writes).
    pub async fn create(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: CreateMode,
        acl: Option<&[AclEntry]>,
        exclusive: Exclusive,
    ) -> Result<NodeStat, ZkError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.until_connected().await?;
            let ticket = self.cache().begin_fetch(path);
            let echo = self.expect_own(&[(path, NodeEventKind::Created)]);
            let result = self.backend.create(path, &data, mode, acl).await;
            match result {
                Ok(stat) => {
                    echo.keep();
                    self.record_created(path, data, stat, ticket);
                    return Ok(stat);
                }
                Err(e) if e.is_connectivity() => {
                    let op = WriteOp::Create {
                        path: path.to_string(),
                        data: data.clone(),
                        mode,
                        acl: acl.map(<[AclEntry]>::to_vec),
                    };
                    match self.settle_one(op, None, exclusive).await {
                        Found::Applied(WriteResult::Created(stat)) => {
                            self.record_created(path, data, stat, ticket);
                            return Ok(stat);
                        }
                        found => {
                            self.cache().end_fetch(path, ticket);
                            match found {
                                Found::NotApplied if retry_after(&e, attempt) => {}
                                Found::NotApplied => return Err(e),
                                _ => return Err(ZkError::OutcomeUnknown),
                            }
                        }
                    }
                }
                Err(e) => {
                    self.cache().end_fetch(path, ticket);
                    return Err(e);
                }
            }
        }
    }

    /// `setData` and cache the result (read-your-writes).
    pub async fn set_data(
        &self,
        path: &str,
        data: Vec<u8>,
        version: Option<i32>,
    ) -> Result<NodeStat, ZkError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.until_connected().await?;
            let base = self.peek(path).map(|v| v.stat);
            let ticket = self.cache().begin_fetch(path);
            let echo = self.expect_own(&[(path, NodeEventKind::DataChanged)]);
            let result = self.backend.set_data(path, &data, version).await;
            match result {
                Ok(stat) => {
                    echo.keep();
                    self.record_written(path, data, stat, ticket);
                    return Ok(stat);
                }
                Err(e) if e.is_connectivity() => {
                    let op = WriteOp::SetData {
                        path: path.to_string(),
                        data: data.clone(),
                        version,
                    };
                    match self.settle_one(op, base, Exclusive::No).await {
                        Found::Applied(WriteResult::Set(stat)) => {
                            self.record_written(path, data, stat, ticket);
                            return Ok(stat);
                        }
                        found => {
                            self.cache().end_fetch(path, ticket);
                            match found {
                                Found::NotApplied if retry_after(&e, attempt) => {}
                                Found::NotApplied => return Err(e),
                                _ => {
                                    self.cache().mark_stale(path);
                                    return Err(ZkError::OutcomeUnknown);
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    self.cache().end_fetch(path, ticket);
                    if e == ZkError::BadVersion || e == ZkError::NoNode {
                        self.cache().mark_stale(path);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Delete a node (a lost answer resolved, a lost request sent again, as
    /// for [`Self::set_data`]).
    pub async fn delete(&self, path: &str, version: Option<i32>) -> Result<(), ZkError> {
        let mut attempt = 0;
        // Events for `path` from here on are newer than what the delete
        // found: one (another client's create of the name) wins over it.
        // Ended by the guard however this ends (dropped too).
        let ticket = self.cache().begin_fetch(path);
        let guard = self.fetching(path, ticket);
        let mut settled = false;
        let result = loop {
            attempt += 1;
            self.until_connected().await?;
            let base = self.peek(path).map(|v| v.stat);
            match self.backend.delete(path, version).await {
                Err(e) if e.is_connectivity() => {
                    let op = WriteOp::Delete {
                        path: path.to_string(),
                        version,
                    };
                    match self.settle_one(op, base, Exclusive::No).await {
                        // The node we deleted is gone (by us, or by another
                        // client: gone either way).
                        Found::Applied(_) => {
                            settled = true;
                            break Ok(());
                        }
                        Found::NotApplied if retry_after(&e, attempt) => continue,
                        Found::NotApplied => break Err(e),
                        Found::Unknown => break Err(ZkError::OutcomeUnknown),
                    }
                }
                result => break result,
            }
        };
        let quiet = {
            let mut cache = self.cache();
            guard.settled();
            let quiet = cache.is_quiet_since(path, ticket);
            cache.end_fetch(path, ticket);
            quiet
        };
        match &result {
            // Found gone only after a lost answer: a node an event brought
            // back since the delete was sent (another client's create of the
            // name) stays as the event made it. An answered delete is newer
            // than any event applied before it.
            Ok(()) | Err(ZkError::NoNode) if quiet || !settled => self.record_deleted(path),
            Ok(()) | Err(ZkError::NoNode) => self.note_own_version(path, None),
            Err(_) => {
                self.cache().mark_stale(path);
            }
        }
        result
    }

    /// Run a transaction and apply its results to the cache (a lost answer
    /// resolved, a lost request sent again, as for [`Self::set_data`]; the
    /// server judges the versions in it again).
    pub async fn multi(&self, ops: &[WriteOp]) -> Result<Vec<WriteResult>, ZkError> {
        let expected: Vec<(&str, NodeEventKind)> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Create { path, .. } => Some((path.as_str(), NodeEventKind::Created)),
                WriteOp::SetData { path, .. } => Some((path.as_str(), NodeEventKind::DataChanged)),
                WriteOp::Delete { .. } => None,
            })
            .collect();
        let mut attempt = 0;
        let results = loop {
            attempt += 1;
            self.until_connected().await?;
            // Expected only while this attempt is out (dropped, it takes
            // the expectation back).
            let echo = self.expect_own(&expected);
            let bases = self.bases(ops);
            match self.backend.multi(ops).await {
                Ok(r) => break Ok((r, echo)),
                Err(e) if e.is_connectivity() => {
                    match self.settle(ops, &bases, Exclusive::No).await {
                        Found::Applied(r) => break Ok((r, echo)),
                        Found::NotApplied if retry_after(&e, attempt) => continue,
                        Found::NotApplied => break Err(e),
                        Found::Unknown => break Err(ZkError::OutcomeUnknown),
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let results = match results {
            Ok((r, echo)) => {
                echo.keep();
                r
            }
            Err(e) => {
                let mut cache = self.cache();
                for op in ops {
                    match op {
                        WriteOp::Create { path, .. }
                        | WriteOp::SetData { path, .. }
                        | WriteOp::Delete { path, .. } => {
                            cache.mark_stale(path);
                        }
                    }
                }
                return Err(e);
            }
        };
        let mut results = results;
        for (op, result) in ops.iter().zip(results.iter_mut()) {
            match (op, result) {
                (WriteOp::Create { path, data, .. }, WriteResult::Created(stat)) => {
                    if stat.czxid <= 0 {
                        // ZooKeeper before 3.9 answers a create inside a multi
                        // with a dummy Stat (ZOOKEEPER-4026): read the real one.
                        if let Some(parent) = path::parent(path) {
                            self.cache().add_child(parent, path::basename(path));
                        }
                        self.cache().mark_stale(path);
                        if let Ok(view) = self.fetch_data_now(path).await {
                            *stat = view.stat;
                            self.note_own_version(path, Some(view.stat.mzxid));
                        }
                        continue;
                    }
                    let ticket = self.cache().begin_fetch(path);
                    self.record_created(path, data.clone(), *stat, ticket);
                }
                (WriteOp::SetData { path, data, .. }, WriteResult::Set(stat)) => {
                    let ticket = self.cache().begin_fetch(path);
                    self.record_written(path, data.clone(), *stat, ticket);
                }
                (WriteOp::Delete { path, .. }, _) => self.record_deleted(path),
                _ => {}
            }
        }
        Ok(results)
    }

    /// Apply one watch event to the cache; returns what changed, whether
    /// the event echoes a write of this mount's, and whether the node is
    /// worth re-reading (not for such an echo: the write's answer brings
    /// its result).
    pub fn apply_event(&self, event: &NodeEvent) -> Applied {
        let own = self.take_own(&event.path, event.kind);
        let mut cache = self.cache();
        let path = event.path.as_str();
        let parent = path::parent(path);
        let name = path::basename(path);
        // A child event for a listed directory ends its resync baseline:
        // the list is now the baseline's plus events, which a lost later
        // event (or a late one for a change the baseline already had)
        // could leave wrong while the pzxid still matches.
        if matches!(event.kind, NodeEventKind::Created | NodeEventKind::Deleted) {
            let mut baselines = self.baselines();
            if let Some(parent) = parent {
                baselines.end(parent);
            }
            if event.kind == NodeEventKind::Deleted {
                baselines.end(path);
            }
        }
        let changes = match event.kind {
            NodeEventKind::Created => {
                if !own {
                    cache.mark_stale(path);
                }
                if let Some(parent) = parent {
                    cache.add_child(parent, name);
                }
                vec![Change::Created(path.to_string())]
            }
            NodeEventKind::Deleted => {
                self.note_own_version(path, None);
                cache.remove(path);
                if let Some(parent) = parent {
                    cache.remove_child(parent, name);
                }
                vec![Change::Deleted(path.to_string())]
            }
            NodeEventKind::DataChanged => {
                if !own {
                    cache.mark_stale(path);
                }
                vec![Change::Data(path.to_string())]
            }
        };
        Applied {
            changes,
            own,
            refresh: !own && event.kind == NodeEventKind::DataChanged,
        }
    }

    /// Re-read a node whose data changed, so the next read is a cache hit.
    /// Does nothing for nodes that are not cached.
    pub async fn refresh(&self, path: &str) {
        if self.peek(path).is_none() {
            return;
        }
        if let Err(e) = self.fetch_data(path).await
            && e != ZkError::NoNode
        {
            debug!(path, error = %e, "background refresh failed; next read retries");
        }
    }

    /// Compare every cached node with the server (after a reconnect or a new
    /// session: events during the gap may be lost) and return what changed.
    ///
    /// Called once the root watch is in place again, so every change after
    /// this read arrives as an event and every change before it is in the
    /// answers. Every cached node's `getData` goes out in a few large
    /// multi-reads ([`BulkRead::for_resync`]): a changed mzxid or version is
    /// a data change, NoNode a deletion. A listed directory's children are
    /// read again only when they may have changed: ZooKeeper sets a node's
    /// pzxid to the zxid of the transaction that last created or deleted one
    /// of its children, so a pzxid (and czxid) equal to the one at which the
    /// previous resync read or confirmed the list proves that no child came
    /// or went since; the list then is that one plus the events delivered
    /// since, which are all in. The baseline is kept here, not taken from the
    /// cached stat: a read answered on the new connection before the watch
    /// was re-added can store a stat that already shows a gap change while
    /// the cached list does not. A directory without a baseline or with a
    /// changed pzxid is listed again; one whose answer failed keeps its
    /// baseline for the next resync (a failed resync loses nothing it
    /// knew). A child event during the resync ends the baseline it
    /// confirmed, as one between resyncs does. An event applied while an
    /// answer was out is newer than that answer: a node or child the answer
    /// says is gone is then not removed (it may have been created again).
    /// (Not cancelled mid-way: the daemon awaits it to its end. The daemon
    /// applies events between resyncs; the store does not depend on that,
    /// but `ZkFs::resync` invalidates the kernel's caches only at the end.)
    pub async fn resync(&self) -> Vec<Change> {
        // Events may have been lost: expectations of our own could now
        // swallow someone else's change.
        self.own().clear();
        let (paths, listed): (Vec<String>, std::collections::HashSet<String>) = {
            let cache = self.cache();
            let paths = cache.paths();
            let listed = paths
                .iter()
                .filter(|p| cache.get(p).is_some_and(|n| n.children.is_some()))
                .cloned()
                .collect();
            (paths, listed)
        };
        let baselines = {
            let mut b = self.baselines();
            b.ended_during_resync = Some(Default::default());
            std::mem::take(&mut b.confirmed)
        };
        let mut complete = true;
        let mut unread = Failures::default();
        let mut kept: HashMap<String, (i64, i64)> = HashMap::new();
        let mut relist: Vec<String> = Vec::new();
        let mut changes = Vec::new();
        let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
        let sizes = self.known_sizes(&paths);
        let mut bulk = BulkRead::for_resync(&sizes);
        while let Some(wave) = bulk.next_wave() {
            let (tickets, guard) = self.begin_fetches(&paths[wave.clone()]);
            let answers = bulk.read(&self.backend, &paths, wave.clone()).await;
            let mut cache = self.cache();
            guard.settled();
            for ((k, ticket), answer) in wave.zip(tickets).zip(answers) {
                let p = paths[k];
                cache.end_fetch(p, ticket);
                match answer {
                    Ok((data, stat)) => {
                        let seen = (stat.czxid, stat.pzxid);
                        if cache.store_data(p, data, stat, ticket) {
                            changes.push(Change::Data(p.to_string()));
                        }
                        if listed.contains(p) {
                            let list_ok = cache
                                .get(p)
                                .is_some_and(|n| n.children.is_some() && !n.children_stale);
                            if list_ok && baselines.get(p) == Some(&seen) {
                                kept.insert(p.to_string(), seen);
                            } else {
                                relist.push(p.to_string());
                            }
                        }
                    }
                    // Gone when it was read; an event since (created
                    // again, say) is newer than that answer: the node is
                    // then left as the event made it.
                    Err(ZkError::NoNode) if cache.is_quiet_since(p, ticket) => {
                        if cache.remove(p).is_some() {
                            if let Some(parent) = path::parent(p) {
                                cache.remove_child(parent, path::basename(p));
                            }
                            changes.push(Change::Deleted(p.to_string()));
                        }
                    }
                    Err(ZkError::NoNode) => {}
                    Err(e) => {
                        debug!(path = %p, error = %e, "resync could not read node; it stays stale");
                        unread.note(p, &e);
                        cache.mark_stale(p);
                        complete = false;
                        // Unanswered, a listed directory keeps its baseline:
                        // its cached list is still the one confirmed there
                        // (plus events), and the next resync compares its
                        // pzxid with it. Without one it is listed again.
                        if listed.contains(p) {
                            match baselines.get(p) {
                                Some(baseline) => {
                                    kept.insert(p.to_string(), *baseline);
                                }
                                None => relist.push(p.to_string()),
                            }
                        }
                    }
                }
            }
        }
        unread.report("resync could not read nodes; they stay stale until the next resync");
        debug!(
            nodes = paths.len(),
            listed = listed.len(),
            relisted = relist.len(),
            "resync compared the cache"
        );
        let mut unlisted = Failures::default();
        for chunk in relist.chunks(PIPELINE_DEPTH) {
            let tickets: Vec<FetchTicket> = {
                let mut cache = self.cache();
                chunk.iter().map(|p| cache.begin_fetch(p)).collect()
            };
            let answers =
                await_all(chunk.iter().map(|p| self.backend.get_children(p)).collect()).await;
            let mut cache = self.cache();
            for ((p, ticket), answer) in chunk.iter().zip(tickets).zip(answers) {
                cache.end_fetch(p, ticket);
                let (names, stat) = match answer {
                    Ok(answer) => answer,
                    Err(ZkError::NoNode) => continue,
                    Err(e) => {
                        debug!(path = %p, error = %e, "resync could not list directory; listed again at the next resync");
                        unlisted.note(p, &e);
                        // Its pzxid moved (or it had no baseline): the
                        // cached list may miss changes, so it is no answer
                        // while connected.
                        cache.mark_children_stale(p);
                        complete = false;
                        continue;
                    }
                };
                let before: Vec<String> = cache
                    .get(p)
                    .and_then(|n| n.children.as_ref())
                    .map(|c| c.names())
                    .unwrap_or_default();
                // A child event since the list was read is newer than it: a
                // child it lacks may have been created since, so it proves
                // no deletion then (the list is kept as outdated instead,
                // see `store_children`).
                let removals_proven = cache.is_quiet_since(p, ticket);
                for gone in before
                    .iter()
                    .filter(|n| removals_proven && !names.contains(n))
                {
                    let child = path::join(p, gone);
                    cache.remove(&child);
                    changes.push(Change::Deleted(child));
                }
                for new in names.iter().filter(|n| !before.contains(n)) {
                    changes.push(Change::Created(path::join(p, new)));
                }
                let seen = (stat.czxid, stat.pzxid);
                cache.store_children(p, names, stat, ticket);
                // A baseline only for a list the cache took as it was read
                // (no event raced it, same incarnation of the node).
                if cache
                    .get(p)
                    .is_some_and(|n| !n.children_stale && n.stat.czxid == seen.0)
                {
                    kept.insert(p.clone(), seen);
                }
            }
        }
        unlisted.report("resync could not list directories; listed again at the next resync");
        {
            // Listings made during the resync set baselines of their own
            // (newer than its answers); a child event during it ended
            // whatever it confirmed.
            let mut b = self.baselines();
            let ended = b.ended_during_resync.take().unwrap_or_default();
            for (dir, baseline) in std::mem::take(&mut b.confirmed) {
                kept.insert(dir, baseline);
            }
            kept.retain(|dir, _| !ended.contains(dir));
            b.confirmed = kept;
        }
        self.resync_complete
            .store(complete, std::sync::atomic::Ordering::SeqCst);
        changes
    }

    /// The resync baselines (lock order: after the cache's lock, never
    /// before it).
    fn baselines(&self) -> std::sync::MutexGuard<'_, Baselines> {
        self.resync_baselines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the last [`Store::resync`] compared every cached node with
    /// the server (false when some read failed: those nodes are stale and
    /// the resync is worth repeating).
    pub fn resync_complete(&self) -> bool {
        self.resync_complete
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A counter that moves whenever the cache changes (see
    /// [`NodeCache::changes`]): whether a snapshot is due.
    pub fn cache_changes(&self) -> u64 {
        self.cache().changes()
    }

    /// What the cache holds, for a snapshot (`--cache-dir`): every node's
    /// stat, its data when held and its child list when listed; with the
    /// change counter it corresponds to. The lock is held while copying
    /// (data is shared, not copied).
    pub fn export_snapshot(&self) -> (u64, Vec<super::snapshot::SnapNode>) {
        let (changes, mut nodes) = {
            let cache = self.cache();
            let nodes: Vec<_> = cache
                .paths()
                .into_iter()
                .filter_map(|path| {
                    let node = cache.get(&path)?;
                    Some(super::snapshot::SnapNode {
                        stat: node.stat,
                        data: node.data.clone(),
                        children: node.children.as_ref().map(|c| c.names()),
                        path,
                    })
                })
                .collect();
            (cache.changes(), nodes)
        };
        // Parents before children; sorted outside the lock.
        nodes.sort_by(|a, b| a.path.cmp(&b.path));
        (changes, nodes)
    }

    /// Fill the cache from a snapshot, every node stale: served while
    /// ZooKeeper is unreachable, compared with the server by the first
    /// resync. Returns the change counter after loading.
    pub fn restore_snapshot(&self, nodes: Vec<super::snapshot::SnapNode>) -> u64 {
        let mut cache = self.cache();
        for node in nodes {
            cache.restore(&node.path, node.stat, node.data, node.children);
        }
        cache.changes()
    }
}

#[cfg(test)]
mod resync_tests {
    //! The resync's cheap check (directory pzxid against the last resync's
    //! baseline) against the fake server, where changes can be made without
    //! delivering their events (a disconnected mount's gap).

    use std::sync::Arc;

    use super::*;
    use crate::zk::fake::FakeZk;

    fn sorted(mut changes: Vec<Change>) -> Vec<Change> {
        changes.sort_by(|a, b| a.path().cmp(b.path()));
        changes
    }

    /// A store that has read every node of a small tree and listed its
    /// three directories.
    async fn warm() -> (Arc<FakeZk>, Store<Arc<FakeZk>>) {
        let zk = Arc::new(FakeZk::new());
        for (p, d) in [
            ("/d", &b""[..]),
            ("/d/a", b"a"),
            ("/d/b", b"b"),
            ("/d/sub", b""),
            ("/d/sub/x", b"x"),
            ("/f", b"1"),
        ] {
            zk.as_ref().create(p, d, 0).expect("create");
        }
        let store = Store::new(zk.clone(), 1 << 20);
        for dir in ["/", "/d", "/d/sub"] {
            store.children(dir).await.expect("list");
        }
        for leaf in ["/d/a", "/d/b", "/d/sub/x", "/f"] {
            store.data(leaf).await.expect("read");
        }
        (zk, store)
    }

    /// The creations and deletions among `changes` (whether a directory's
    /// own stat counts as changed can depend on the order answers apply).
    fn child_changes(changes: Vec<Change>) -> Vec<Change> {
        changes
            .into_iter()
            .filter(|c| !matches!(c, Change::Data(_)))
            .collect()
    }

    /// A node deleted in the gap and created again (its event applied)
    /// while the resync's read of it, which found it gone, was out.
    #[tokio::test(start_paused = true)]
    async fn a_node_created_again_while_a_resync_reads_it_is_kept() {
        let (zk, store) = warm().await;
        zk.as_ref().delete("/d/a").expect("gap delete");
        zk.delay_reads(100);
        let again = async {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            zk.as_ref().create("/d/a", b"again", 0).expect("create");
            store.apply_event(&NodeEvent {
                kind: NodeEventKind::Created,
                path: "/d/a".into(),
            });
        };
        let (changes, ()) = tokio::join!(store.resync(), again);
        assert!(store.peek("/d/a").is_some(), "the resync removed it");
        assert!(!changes.contains(&Change::Deleted("/d/a".into())));
        assert!(
            store
                .peek_children("/d")
                .is_some_and(|c| c.contains(&"a".to_string()))
        );
    }

    /// A child created (its event applied) while the resync's relisting of
    /// its directory, whose answer lacks it, was out.
    #[tokio::test(start_paused = true)]
    async fn a_child_created_while_a_resync_lists_its_directory_is_kept() {
        let (zk, store) = warm().await;
        // A gap change moves /d's pzxid: the resync lists /d again.
        zk.as_ref().create("/d/gap", b"g", 0).expect("gap create");
        zk.delay_listings(100);
        let created = async {
            // After the multi-read (answered at once), during the listing.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            zk.as_ref().create("/d/new", b"n", 0).expect("create");
            store.apply_event(&NodeEvent {
                kind: NodeEventKind::Created,
                path: "/d/new".into(),
            });
        };
        let (changes, ()) = tokio::join!(store.resync(), created);
        assert!(!changes.contains(&Change::Deleted("/d/new".into())));
        assert!(changes.contains(&Change::Created("/d/gap".into())));
        let children = store.children("/d").await.expect("list");
        assert!(children.contains(&"new".to_string()) && children.contains(&"gap".to_string()));
    }

    /// Requests one resync sends, and what it found.
    async fn resync_counted(zk: &FakeZk, store: &Store<Arc<FakeZk>>) -> (u64, Vec<Change>) {
        let before = zk.requests();
        let changes = store.resync().await;
        assert!(store.resync_complete());
        (zk.requests() - before, sorted(changes))
    }

    #[tokio::test]
    async fn a_resync_with_nothing_changed_is_one_multi_read() {
        let (zk, store) = warm().await;
        // The listings were baselines: even the first resync only reads
        // the nodes' stats, in one multi-read.
        assert_eq!(resync_counted(&zk, &store).await, (1, vec![]));
        assert_eq!(resync_counted(&zk, &store).await, (1, vec![]));
    }

    /// Late events for changes /d's listing already had (before it, t was
    /// created and deleted, b deleted and created again; the events of t's
    /// deletion and b's re-creation are then lost with the connection): the
    /// cached list has t instead of b, with the right count, while /d's
    /// pzxid still matches the listing's.
    fn deliver_late_events(store: &Store<Arc<FakeZk>>) {
        for (path, kind) in [
            ("/d/t", NodeEventKind::Created),
            ("/d/b", NodeEventKind::Deleted),
        ] {
            store.apply_event(&NodeEvent {
                path: path.into(),
                kind,
            });
        }
    }

    /// The cached list of /d is the late events' wrong one; the next resync
    /// must list /d again (one multi-read and one getChildren) and put it
    /// right.
    async fn next_resync_puts_d_right(zk: &FakeZk, store: &Store<Arc<FakeZk>>) {
        assert_eq!(
            store.peek_children("/d").expect("listed"),
            ["a", "sub", "t"]
        );
        next_resync_relists_d(
            zk,
            store,
            &[
                Change::Created("/d/b".into()),
                Change::Deleted("/d/t".into()),
            ],
            &["a", "b", "sub"],
        )
        .await;
    }

    /// The next resync is one multi-read and one listing of /d, finds
    /// `children` (only the child changes are asserted: whether /d's own
    /// stat counts as changed can depend on the order answers apply) and
    /// leaves /d listed as `listed`.
    async fn next_resync_relists_d(
        zk: &FakeZk,
        store: &Store<Arc<FakeZk>>,
        children: &[Change],
        listed: &[&str],
    ) {
        let (requests, changes) = resync_counted(zk, store).await;
        assert_eq!(child_changes(changes), children);
        assert_eq!(requests, 1 + 1);
        assert_eq!(store.peek_children("/d").expect("listed"), listed);
    }

    #[tokio::test]
    async fn a_child_event_after_a_listing_ends_its_baseline() {
        let (zk, store) = warm().await;
        deliver_late_events(&store);
        next_resync_puts_d_right(&zk, &store).await;
    }

    #[tokio::test]
    async fn every_change_of_the_gap_is_found_and_only_changed_directories_are_listed() {
        let (zk, store) = warm().await;
        resync_counted(&zk, &store).await;
        // The gap: data changed, a child created and one deleted in /d, and
        // in /d/sub one created and another created and deleted again (the
        // list ends as it was, only pzxid tells). Events are not delivered.
        zk.as_ref().set("/f", b"2").expect("set");
        zk.as_ref().create("/d/c", b"c", 0).expect("create");
        zk.as_ref().delete("/d/a").expect("delete");
        zk.as_ref().create("/d/sub/tmp", b"t", 0).expect("create");
        zk.as_ref().delete("/d/sub/tmp").expect("delete");
        zk.as_ref().create("/d/sub/y", b"y", 0).expect("create");
        let (requests, changes) = resync_counted(&zk, &store).await;
        assert_eq!(
            changes,
            vec![
                Change::Data("/d".into()),
                Change::Deleted("/d/a".into()),
                Change::Created("/d/c".into()),
                Change::Data("/d/sub".into()),
                Change::Created("/d/sub/y".into()),
                Change::Data("/f".into()),
            ]
        );
        // One multi-read, then /d and /d/sub listed (not the root).
        assert_eq!(requests, 1 + 2);
        assert_eq!(
            store.peek_children("/d").expect("listed"),
            ["b", "c", "sub"]
        );
        assert_eq!(store.peek_children("/d/sub").expect("listed"), ["x", "y"]);
        assert_eq!(&*store.data("/f").await.expect("read").0, b"2");
        assert_eq!(resync_counted(&zk, &store).await, (1, vec![]));
    }

    #[tokio::test]
    async fn a_stat_read_before_the_resync_does_not_hide_a_gap_change() {
        let (zk, store) = warm().await;
        resync_counted(&zk, &store).await;
        // In the gap a child is born and another dies (the count stays); a
        // read on the new connection (before the resync) stores /d's new
        // stat, whose pzxid shows it, while the cached list does not: the
        // baseline must not come from that stat.
        zk.as_ref().create("/d/late", b"l", 0).expect("create");
        zk.as_ref().delete("/d/a").expect("delete");
        store.read_fresh("/d").await.expect("read");
        assert_eq!(
            store.peek_children("/d").expect("listed"),
            ["a", "b", "sub"]
        );
        // (The read stored the new stat, so only child changes count.)
        next_resync_relists_d(
            &zk,
            &store,
            &[
                Change::Deleted("/d/a".into()),
                Change::Created("/d/late".into()),
            ],
            &["b", "late", "sub"],
        )
        .await;
    }

    #[tokio::test]
    async fn a_resync_that_could_not_read_keeps_the_baselines() {
        let (zk, store) = warm().await;
        resync_counted(&zk, &store).await;
        // Connection lost again during the resync: nothing is confirmed,
        // and nothing known is lost either.
        zk.set_connected(false);
        store.resync().await;
        assert!(!store.resync_complete());
        zk.as_ref().create("/d/c", b"c", 0).expect("create");
        zk.set_connected(true);
        // The next one compares every directory with its baseline: /d's
        // pzxid moved (the child), the others' did not.
        let (requests, changes) = resync_counted(&zk, &store).await;
        assert_eq!(
            changes,
            vec![Change::Data("/d".into()), Change::Created("/d/c".into())]
        );
        assert_eq!(requests, 1 + 1);
        assert_eq!(resync_counted(&zk, &store).await, (1, vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_child_event_during_a_resync_ends_the_baseline_it_confirms() {
        let (zk, store) = warm().await;
        resync_counted(&zk, &store).await;
        // The late events arrive while the resync's multi-read is out: its
        // answer confirms /d's baseline, but the list is wrong now.
        zk.delay_reads(100);
        let late_events = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            deliver_late_events(&store);
        };
        tokio::join!(store.resync(), late_events);
        zk.delay_reads(0);
        next_resync_puts_d_right(&zk, &store).await;
    }

    #[tokio::test]
    async fn a_relist_that_fails_leaves_the_list_marked_outdated() {
        let (zk, store) = warm().await;
        resync_counted(&zk, &store).await;
        // In the gap a child is born in /d and another dies (the count
        // stays, so the new stat alone does not tell); the resync sees /d's
        // pzxid move, but its getChildren times out.
        zk.as_ref().create("/d/c", b"c", 0).expect("create");
        zk.as_ref().delete("/d/a").expect("delete");
        zk.time_out_listings(true);
        store.resync().await;
        assert!(!store.resync_complete());
        zk.time_out_listings(false);
        // The cached list is known to miss a change: it is not offered as
        // current, and a listing asks ZooKeeper instead of answering from it.
        assert_eq!(store.peek_current_children("/d"), None);
        assert_eq!(store.children("/d").await.expect("ls"), ["b", "c", "sub"]);
        assert_eq!(
            store.peek_current_children("/d").expect("listed"),
            ["b", "c", "sub"]
        );
    }
}

#[cfg(test)]
mod judge_tests {
    //! How a write whose answer was lost is judged from its node read again.
    //! Each case is a history that could have happened on the server.

    use super::*;

    const SESSION: i64 = 0x77;

    fn stat(czxid: i64, mzxid: i64, version: i32) -> NodeStat {
        NodeStat {
            czxid,
            mzxid,
            version,
            ..NodeStat::default()
        }
    }

    fn set(version: Option<i32>) -> WriteOp {
        WriteOp::SetData {
            path: "/n".into(),
            data: b"ours".to_vec(),
            version,
        }
    }

    #[test]
    fn set_data() {
        let base = stat(5, 10, 3);
        let judged = |op: &WriteOp, data: &[u8], now: NodeStat| {
            judge(op, Some(&base), Some((data, &now)), SESSION, Exclusive::Yes)
        };
        // Ours took version 3 to 4.
        let ours = stat(5, 20, 4);
        assert_eq!(
            judged(&set(Some(3)), b"ours", ours),
            Looks::Applied(Some(ours))
        );
        // Nothing happened since it was sent.
        assert_eq!(judged(&set(Some(3)), b"theirs", base), Looks::Untouched);
        assert_eq!(judged(&set(None), b"theirs", base), Looks::Untouched);
        // Another client took 3 to 4 first: ours met BadVersion.
        assert_eq!(
            judged(&set(Some(3)), b"theirs", stat(5, 20, 4)),
            Looks::Untouched
        );
        // At 5 with their data: ours 3→4 then theirs, or theirs twice.
        assert_eq!(
            judged(&set(Some(3)), b"theirs", stat(5, 30, 5)),
            Looks::Neither
        );
        // Unversioned: any later change of theirs hides whether ours came first.
        assert_eq!(
            judged(&set(None), b"theirs", stat(5, 20, 4)),
            Looks::Neither
        );
        // Deleted and created again: ours may have gone with the old node;
        // it is never sent to the new one.
        assert_eq!(
            judged(&set(Some(3)), b"theirs", stat(40, 40, 0)),
            Looks::Neither
        );
        // Gone: nothing of ours lasts (sent again, it meets NoNode).
        assert_eq!(
            judge(&set(Some(3)), Some(&base), None, SESSION, Exclusive::Yes),
            Looks::Gone
        );
    }

    #[test]
    fn create() {
        let op = WriteOp::Create {
            path: "/n".into(),
            data: b"ours".to_vec(),
            mode: CreateMode::Persistent,
            acl: None,
        };
        let ours = stat(7, 7, 0);
        assert_eq!(
            judge(&op, None, Some((b"ours", &ours)), SESSION, Exclusive::Yes),
            Looks::Applied(Some(ours))
        );
        assert_eq!(judge(&op, None, None, SESSION, Exclusive::Yes), Looks::Gone);
        // Another client's create at version 0: ours met NodeExists.
        assert_eq!(
            judge(
                &op,
                None,
                Some((b"theirs", &stat(7, 7, 0))),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Untouched
        );
        // Created (by us or them) and then changed.
        assert_eq!(
            judge(
                &op,
                None,
                Some((b"theirs", &stat(7, 9, 1))),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Neither
        );
        // Empty (mkdir, a lock file): another client's create of the name
        // looks the same, and a lock must not be taken twice.
        let empty = WriteOp::Create {
            path: "/lock".into(),
            data: Vec::new(),
            mode: CreateMode::Persistent,
            acl: None,
        };
        assert_eq!(
            judge(
                &empty,
                None,
                Some((b"", &stat(7, 7, 0))),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Neither
        );
        // A new file's create at its close: had another client made the
        // name first, the open would have opened theirs; empty either way.
        assert_eq!(
            judge(
                &empty,
                None,
                Some((b"", &stat(7, 7, 0))),
                SESSION,
                Exclusive::No
            ),
            Looks::Applied(Some(stat(7, 7, 0)))
        );
        // An ephemeral node names its owner, whatever its data.
        let registration = WriteOp::Create {
            path: "/servers/a:1".into(),
            data: Vec::new(),
            mode: CreateMode::Ephemeral,
            acl: None,
        };
        let owned_by = |owner: i64| NodeStat {
            ephemeral_owner: owner,
            ..stat(7, 7, 0)
        };
        assert_eq!(
            judge(
                &registration,
                None,
                Some((b"", &owned_by(SESSION))),
                SESSION,
                Exclusive::No
            ),
            Looks::Applied(Some(owned_by(SESSION)))
        );
        assert_eq!(
            judge(
                &registration,
                None,
                Some((b"", &owned_by(0x99))),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Untouched
        );
    }

    #[test]
    fn delete() {
        let op = WriteOp::Delete {
            path: "/n".into(),
            version: None,
        };
        let base = stat(5, 10, 3);
        assert_eq!(
            judge(&op, Some(&base), None, SESSION, Exclusive::Yes),
            Looks::Applied(None)
        );
        assert_eq!(
            judge(
                &op,
                Some(&base),
                Some((b"", &base)),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Untouched
        );
        // Changed but the same node: a delete would have removed it.
        assert_eq!(
            judge(
                &op,
                Some(&base),
                Some((b"", &stat(5, 20, 4))),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Untouched
        );
        // Another node under the name: the one we deleted is gone.
        assert_eq!(
            judge(
                &op,
                Some(&base),
                Some((b"", &stat(40, 40, 0))),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Applied(None)
        );
        // Nothing known of the node it meant: no telling.
        assert_eq!(
            judge(
                &op,
                None,
                Some((b"", &stat(40, 40, 0))),
                SESSION,
                Exclusive::Yes
            ),
            Looks::Neither
        );
    }
}
