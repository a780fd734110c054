//! An in-memory ZooKeeper for unit and property tests: a tree of nodes with
//! real-looking `Stat`s, a request counter, a connectivity switch, and
//! mutations that return the watch events a persistent recursive watch on `/`
//! would deliver, injected faults for writes (late answers, lost
//! answers, connection loss before the request), and multi-reads held back
//! until a test releases (or fails) them. Never used instead of the real
//! server in integration tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use super::backend::{
    AclEntry, BatchAnswer, CreateMode, NodeEvent, NodeEventKind, NodeStat, WriteOp, WriteResult,
    ZkBackend, ZkError,
};
use super::path;

/// A fault for the next write request (create, setData, delete, multi).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteFault {
    /// Applied on the server, but the answer never arrives: the call fails
    /// with ConnectionLoss (and the connection is down until `set_connected`).
    LostAnswer,
    /// The connection dropped before the request reached the server: not
    /// applied, ConnectionLoss (and the connection is down).
    LostRequest,
    /// Applied at once, answered after this many milliseconds.
    LateAnswer(u64),
    /// As [`WriteFault::LostAnswer`], and the server the session finds
    /// again has not applied the write yet (a follower behind the leader):
    /// reads show the tree as it was before the write until a `sync`, or
    /// until the answer to a later write of this session (a server answers
    /// a write only after applying everything before it).
    LostAnswerLagging,
}

struct State {
    nodes: BTreeMap<String, (Vec<u8>, NodeStat)>,
    /// What a lagging server shows to reads instead of `nodes`
    /// ([`WriteFault::LostAnswerLagging`]).
    lagging: Option<BTreeMap<String, (Vec<u8>, NodeStat)>>,
    zxid: i64,
    now_ms: i64,
}

pub struct FakeZk {
    state: Mutex<State>,
    /// Events caused by writes through the backend trait (our own writes),
    /// waiting for a test to deliver them like the watch would.
    own_events: Mutex<Vec<NodeEvent>>,
    connected: AtomicBool,
    requests: AtomicU64,
    /// Milliseconds each `getData` answer takes (to overlap requests in tests).
    read_delay_ms: AtomicU64,
    /// While set, every `getChildren` times out (the rest is answered).
    listings_time_out: AtomicBool,
    listing_delay_ms: AtomicU64,
    /// Faults for the next write requests, in order.
    write_faults: Mutex<std::collections::VecDeque<WriteFault>>,
    /// Write requests that reached the server (applied or refused by it).
    writes_received: AtomicU64,
    /// Requests still to fail at once with ConnectionLoss while the session
    /// reports itself connected (a dead connection the client has not
    /// noticed yet; see [`FakeZk::fail_requests`]).
    failing_requests: AtomicU64,
    /// The current session id (1, 2, ...: every earlier one was ours too).
    session: AtomicI64,
    /// Multi-reads that still answer at once; `None`: all do (see
    /// [`FakeZk::hold_batch_reads_after`]).
    batch_reads_free: Mutex<Option<u64>>,
    /// What held multi-reads wait for: `None` while held, then the verdict
    /// (`Some(None)` answer, `Some(Some(e))` fail as a whole with `e`).
    batch_release: tokio::sync::watch::Sender<Option<Option<ZkError>>>,
}

impl Default for FakeZk {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// The tree as reads see it.
    fn shown(&self) -> &BTreeMap<String, (Vec<u8>, NodeStat)> {
        self.lagging.as_ref().unwrap_or(&self.nodes)
    }
}

impl FakeZk {
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert("/".to_string(), (Vec::new(), NodeStat::default()));
        FakeZk {
            state: Mutex::new(State {
                nodes,
                lagging: None,
                zxid: 0,
                now_ms: 1_700_000_000_000,
            }),
            own_events: Mutex::new(Vec::new()),
            connected: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            read_delay_ms: AtomicU64::new(0),
            listings_time_out: AtomicBool::new(false),
            listing_delay_ms: AtomicU64::new(0),
            write_faults: Mutex::new(std::collections::VecDeque::new()),
            writes_received: AtomicU64::new(0),
            failing_requests: AtomicU64::new(0),
            session: AtomicI64::new(1),
            batch_reads_free: Mutex::new(None),
            batch_release: tokio::sync::watch::Sender::new(None),
        }
    }

    /// The next `free` multi-reads answer at once; every later one waits
    /// until [`FakeZk::release_batch_reads`] and then reports the tree as
    /// it is at release (a node deleted meanwhile is `NoNode`).
    pub fn hold_batch_reads_after(&self, free: u64) {
        self.batch_release.send_replace(None);
        *self
            .batch_reads_free
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(free);
    }

    /// Answer the held multi-reads (and stop holding later ones), or fail
    /// each of them as a whole with `failure`.
    pub fn release_batch_reads(&self, failure: Option<ZkError>) {
        *self
            .batch_reads_free
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.batch_release.send_replace(Some(failure));
    }

    /// Whether this multi-read is held (and one fewer answers at once).
    fn batch_read_held(&self) -> bool {
        match &mut *self
            .batch_reads_free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            Some(0) => true,
            Some(free) => {
                *free -= 1;
                false
            }
            None => false,
        }
    }

    fn read_batch(&self, paths: &[String]) -> BatchAnswer {
        let state = self.state();
        Ok(paths
            .iter()
            .map(|p| state.shown().get(p).cloned().ok_or(ZkError::NoNode))
            .collect())
    }

    /// Make the next write request meet `fault`.
    pub fn inject(&self, fault: WriteFault) {
        self.write_faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(fault);
    }

    /// Write requests that reached the server so far.
    pub fn writes_received(&self) -> u64 {
        self.writes_received.load(Ordering::SeqCst)
    }

    /// Run one write request through the next injected fault: `apply` is
    /// the server's side (run unless the request is lost on the way).
    /// Returns the answer and how late it comes.
    fn faulty_write<T>(
        &self,
        apply: impl FnOnce() -> Result<T, ZkError>,
    ) -> (Result<T, ZkError>, u64) {
        let fault = self
            .write_faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let result = match self.check() {
            Err(e) => Err(e),
            Ok(()) => match fault {
                Some(WriteFault::LostRequest) => {
                    self.set_connected(false);
                    Err(ZkError::ConnectionLoss)
                }
                Some(WriteFault::LostAnswer) => {
                    self.writes_received.fetch_add(1, Ordering::SeqCst);
                    let _ = apply();
                    self.set_connected(false);
                    Err(ZkError::ConnectionLoss)
                }
                Some(WriteFault::LostAnswerLagging) => {
                    self.writes_received.fetch_add(1, Ordering::SeqCst);
                    let before = self.state().nodes.clone();
                    let _ = apply();
                    self.state().lagging = Some(before);
                    self.set_connected(false);
                    Err(ZkError::ConnectionLoss)
                }
                _ => {
                    self.writes_received.fetch_add(1, Ordering::SeqCst);
                    let answer = apply();
                    self.state().lagging = None;
                    answer
                }
            },
        };
        let delay = match fault {
            Some(WriteFault::LateAnswer(ms)) => ms,
            _ => 0,
        };
        (result, delay)
    }

    /// Whether reads still show the tree as it was before a lost write
    /// ([`WriteFault::LostAnswerLagging`]).
    pub fn lagging(&self) -> bool {
        self.state().lagging.is_some()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Make every `getChildren` time out (`true`) or be answered again.
    pub fn time_out_listings(&self, on: bool) {
        self.listings_time_out.store(on, Ordering::SeqCst);
    }

    /// Make every later `getChildren` answer arrive `ms` milliseconds after
    /// it was sent (the list it reports is the one at sending time).
    pub fn delay_listings(&self, ms: u64) {
        self.listing_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Make every later `getData` answer arrive `ms` milliseconds after it
    /// was sent (the state it reports is the one at sending time).
    pub fn delay_reads(&self, ms: u64) {
        self.read_delay_ms.store(ms, Ordering::SeqCst);
    }

    /// The session expired and a new one is up (ephemerals of the old one
    /// are not removed: the test decides what the server did with them).
    pub fn new_session(&self) {
        self.session.fetch_add(1, Ordering::SeqCst);
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
    }

    /// Advance the server clock (mtimes are in milliseconds).
    pub fn tick(&self, ms: i64) {
        self.state().now_ms += ms;
    }

    pub fn exists(&self, p: &str) -> bool {
        self.state().nodes.contains_key(p)
    }

    pub fn data(&self, p: &str) -> Option<Vec<u8>> {
        self.state().nodes.get(p).map(|(d, _)| d.clone())
    }

    pub fn stat(&self, p: &str) -> Option<NodeStat> {
        self.state().nodes.get(p).map(|(_, s)| *s)
    }

    pub fn children(&self, p: &str) -> Vec<String> {
        let state = self.state();
        Self::children_of(&state, p)
    }

    pub fn all_paths(&self) -> Vec<String> {
        self.state().nodes.keys().cloned().collect()
    }

    fn children_of(state: &State, p: &str) -> Vec<String> {
        Self::children_in(&state.nodes, p)
    }

    fn children_in(nodes: &BTreeMap<String, (Vec<u8>, NodeStat)>, p: &str) -> Vec<String> {
        nodes
            .keys()
            .filter(|k| k.as_str() != "/" && path::parent(k) == Some(p))
            .map(|k| path::basename(k).to_string())
            .collect()
    }

    /// Create a node (parent must exist). `owner` ≠ 0 makes it ephemeral.
    pub fn create(&self, p: &str, data: &[u8], owner: i64) -> Result<Vec<NodeEvent>, ZkError> {
        let mut state = self.state();
        let parent = path::parent(p).ok_or(ZkError::NodeExists)?.to_string();
        if state.nodes.contains_key(p) {
            return Err(ZkError::NodeExists);
        }
        let parent_stat = state
            .nodes
            .get(&parent)
            .map(|(_, s)| *s)
            .ok_or(ZkError::NoNode)?;
        if parent_stat.ephemeral_owner != 0 {
            return Err(ZkError::NoChildrenForEphemerals);
        }
        state.zxid += 1;
        let zxid = state.zxid;
        let now = state.now_ms;
        state.nodes.insert(
            p.to_string(),
            (
                data.to_vec(),
                NodeStat {
                    czxid: zxid,
                    mzxid: zxid,
                    pzxid: zxid,
                    ctime: now,
                    mtime: now,
                    ephemeral_owner: owner,
                    data_length: data.len() as i32,
                    ..NodeStat::default()
                },
            ),
        );
        if let Some((_, s)) = state.nodes.get_mut(&parent) {
            s.num_children += 1;
            s.cversion += 1;
            s.pzxid = zxid;
        }
        Ok(vec![NodeEvent {
            kind: NodeEventKind::Created,
            path: p.to_string(),
        }])
    }

    /// Watch events caused by our own writes since the last call.
    pub fn take_own_events(&self) -> Vec<NodeEvent> {
        std::mem::take(&mut *self.own_events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set(&self, p: &str, data: &[u8]) -> Result<Vec<NodeEvent>, ZkError> {
        self.set_versioned(p, data, None)
    }

    fn set_versioned(
        &self,
        p: &str,
        data: &[u8],
        version: Option<i32>,
    ) -> Result<Vec<NodeEvent>, ZkError> {
        let mut state = self.state();
        let current = state
            .nodes
            .get(p)
            .map(|(_, s)| s.version)
            .ok_or(ZkError::NoNode)?;
        if version.is_some_and(|v| v != current) {
            return Err(ZkError::BadVersion);
        }
        state.zxid += 1;
        let (zxid, now) = (state.zxid, state.now_ms);
        let (d, s) = state.nodes.get_mut(p).ok_or(ZkError::NoNode)?;
        *d = data.to_vec();
        s.mzxid = zxid;
        s.mtime = now;
        s.version += 1;
        s.data_length = data.len() as i32;
        Ok(vec![NodeEvent {
            kind: NodeEventKind::DataChanged,
            path: p.to_string(),
        }])
    }

    pub fn delete(&self, p: &str) -> Result<Vec<NodeEvent>, ZkError> {
        self.delete_versioned(p, None)
    }

    fn delete_versioned(&self, p: &str, version: Option<i32>) -> Result<Vec<NodeEvent>, ZkError> {
        let mut state = self.state();
        let current = state
            .nodes
            .get(p)
            .map(|(_, s)| s.version)
            .ok_or(ZkError::NoNode)?;
        if version.is_some_and(|v| v != current) {
            return Err(ZkError::BadVersion);
        }
        if !Self::children_of(&state, p).is_empty() {
            return Err(ZkError::NotEmpty);
        }
        state.zxid += 1;
        let zxid = state.zxid;
        state.nodes.remove(p);
        if let Some(parent) = path::parent(p)
            && let Some((_, s)) = state.nodes.get_mut(parent)
        {
            s.num_children -= 1;
            s.cversion += 1;
            s.pzxid = zxid;
        }
        Ok(vec![NodeEvent {
            kind: NodeEventKind::Deleted,
            path: p.to_string(),
        }])
    }

    fn check(&self) -> Result<(), ZkError> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if !self.connected.load(Ordering::SeqCst) {
            return Err(ZkError::ConnectionLoss);
        }
        let failing = self
            .failing_requests
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match failing {
            Ok(_) => Err(ZkError::ConnectionLoss),
            Err(_) => Ok(()),
        }
    }

    /// Fail the next `n` requests at once with ConnectionLoss while
    /// `is_connected` stays true: a connection that is gone before the
    /// session has noticed (it answers every request at once, without ever
    /// making the caller wait).
    pub fn fail_requests(&self, n: u64) {
        self.failing_requests.store(n, Ordering::SeqCst);
    }
}

/// An answer that arrives `delay_ms` after the request.
async fn answer<T>((result, delay_ms): (Result<T, ZkError>, u64)) -> Result<T, ZkError> {
    if delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
    }
    result
}

impl ZkBackend for FakeZk {
    fn get_data(
        &self,
        p: &str,
    ) -> impl Future<Output = Result<(Vec<u8>, NodeStat), ZkError>> + Send {
        let result = self
            .check()
            .and_then(|()| self.state().shown().get(p).cloned().ok_or(ZkError::NoNode));
        let delay = self.read_delay_ms.load(Ordering::SeqCst);
        async move {
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            result
        }
    }

    fn get_data_batch(&self, paths: &[&str]) -> impl Future<Output = BatchAnswer> + Send {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        let checked = self.check();
        let held = checked.is_ok() && self.batch_read_held();
        let result = checked.and_then(|()| self.read_batch(&paths));
        let mut release = self.batch_release.subscribe();
        let delay = self.read_delay_ms.load(Ordering::SeqCst);
        async move {
            if held {
                let verdict = release
                    .wait_for(Option::is_some)
                    .await
                    .map(|v| v.clone().flatten());
                match verdict {
                    Ok(Some(e)) => return Err(e),
                    Ok(None) => return self.read_batch(&paths),
                    Err(_) => return Err(ZkError::ConnectionLoss),
                }
            }
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            result
        }
    }

    fn get_children(
        &self,
        p: &str,
    ) -> impl Future<Output = Result<(Vec<String>, NodeStat), ZkError>> + Send {
        let result = self.check().and_then(|()| {
            if self.listings_time_out.load(Ordering::SeqCst) {
                return Err(ZkError::Timeout);
            }
            let state = self.state();
            let shown = state.shown();
            let stat = shown.get(p).map(|(_, s)| *s).ok_or(ZkError::NoNode)?;
            Ok((Self::children_in(shown, p), stat))
        });
        let delay = self.listing_delay_ms.load(Ordering::SeqCst);
        async move {
            if delay > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            }
            result
        }
    }

    fn sync(&self, _path: &str) -> impl Future<Output = Result<(), ZkError>> + Send {
        let result = self.check().map(|()| {
            self.state().lagging = None;
        });
        std::future::ready(result)
    }

    fn get_acl(&self, p: &str) -> impl Future<Output = Result<Vec<AclEntry>, ZkError>> + Send {
        let result = self.check().and_then(|()| {
            if self.exists(p) {
                Ok(vec![AclEntry {
                    scheme: "world".into(),
                    id: "anyone".into(),
                    perms: 31,
                }])
            } else {
                Err(ZkError::NoNode)
            }
        });
        std::future::ready(result)
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn session_id(&self) -> i64 {
        self.session.load(Ordering::SeqCst)
    }

    fn is_own_session(&self, owner: i64) -> bool {
        owner >= 1 && owner <= self.session_id()
    }

    fn create(
        &self,
        p: &str,
        data: &[u8],
        mode: CreateMode,
        _acl: Option<&[AclEntry]>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send {
        let owner = if mode == CreateMode::Ephemeral {
            self.session.load(Ordering::SeqCst)
        } else {
            0
        };
        answer(self.faulty_write(|| {
            self.create(p, data, owner).and_then(|events| {
                self.queue(events);
                self.stat(p).ok_or(ZkError::NoNode)
            })
        }))
    }

    fn set_data(
        &self,
        p: &str,
        data: &[u8],
        version: Option<i32>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send {
        answer(self.faulty_write(|| {
            self.set_versioned(p, data, version).and_then(|events| {
                self.queue(events);
                self.stat(p).ok_or(ZkError::NoNode)
            })
        }))
    }

    fn delete(
        &self,
        p: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<(), ZkError>> + Send {
        answer(self.faulty_write(|| {
            self.delete_versioned(p, version)
                .map(|events| self.queue(events))
        }))
    }

    fn multi(
        &self,
        ops: &[WriteOp],
    ) -> impl Future<Output = Result<Vec<WriteResult>, ZkError>> + Send {
        answer(self.faulty_write(|| self.apply_multi(ops)))
    }
}

impl FakeZk {
    fn queue(&self, events: Vec<NodeEvent>) {
        self.own_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(events);
    }

    /// All or nothing: roll the tree back when one op fails.
    fn apply_multi(&self, ops: &[WriteOp]) -> Result<Vec<WriteResult>, ZkError> {
        let snapshot = {
            let s = self.state();
            (s.nodes.clone(), s.zxid)
        };
        let mut results = Vec::new();
        let mut events = Vec::new();
        for op in ops {
            let step = match op {
                WriteOp::Create {
                    path, data, mode, ..
                } => {
                    let owner = if *mode == CreateMode::Ephemeral {
                        self.session.load(Ordering::SeqCst)
                    } else {
                        0
                    };
                    self.create(path, data, owner).and_then(|e| {
                        events.extend(e);
                        self.stat(path)
                            .map(WriteResult::Created)
                            .ok_or(ZkError::NoNode)
                    })
                }
                WriteOp::SetData {
                    path,
                    data,
                    version,
                } => self.set_versioned(path, data, *version).and_then(|e| {
                    events.extend(e);
                    self.stat(path).map(WriteResult::Set).ok_or(ZkError::NoNode)
                }),
                WriteOp::Delete { path, version } => {
                    self.delete_versioned(path, *version).map(|e| {
                        events.extend(e);
                        WriteResult::Deleted
                    })
                }
            };
            match step {
                Ok(r) => results.push(r),
                Err(e) => {
                    let mut s = self.state();
                    s.nodes = snapshot.0;
                    s.zxid = snapshot.1;
                    return Err(e);
                }
            }
        }
        self.queue(events);
        Ok(results)
    }
}
