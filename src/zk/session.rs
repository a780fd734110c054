//! The real ZooKeeper session: one `zookeeper_client::Client` (rebuilt after
//! expiry), every call bounded by `--op-timeout`, and the task that follows
//! connection state and the persistent recursive watch on the mount root.
//!
//! Owns connection state, the request counter and the workarounds for the
//! client's known gaps (watches forgotten after reconnect; events lost during
//! a disconnect, ZOOKEEPER-4698). It reports node events and "resync needed"
//! upward through a channel and must not touch the cache itself. A mount
//! with a `--cache-dir` snapshot may start it unconnected; it then connects
//! in the background and reports a resync once it has.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use zookeeper_client as zk;

use super::backend::{
    AclEntry, BatchAnswer, CreateMode, NodeEvent, NodeEventKind, NodeStat, WriteOp, WriteResult,
    ZkBackend, ZkError,
};
use super::host::{self, ClientHost, ConnectFailure};

/// Digest credentials (`user:password`). Never printed.
#[derive(Clone)]
pub struct Credentials(pub String);

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

impl Credentials {
    /// The user part, for ACL checks and log lines.
    pub fn user(&self) -> &str {
        self.0.split_once(':').map_or(self.0.as_str(), |(u, _)| u)
    }
}

/// ACL given to nodes this mount creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewNodeAcl {
    /// `world:anyone:cdrwa`: anyone may read and change them.
    Open,
    /// `auth::cdrwa`: only the mount's authenticated identity (needs --auth-file).
    Creator,
}

/// Connection settings of a mount.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// `host:port[,host:port...][/chroot]`
    pub servers: String,
    /// The watched subtree (absolute, inside the chroot).
    pub root: String,
    pub session_timeout: Duration,
    pub op_timeout: Duration,
    pub connect_timeout: Duration,
    /// Digest credentials added to every session (re-applied after expiry).
    pub credentials: Option<Credentials>,
    pub new_node_acl: NewNodeAcl,
}

/// Connection state as shown by `zkfs status` and `user.zkfs.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    Connected,
    /// Lost the connection; the session may still be alive.
    Disconnected,
    /// The session expired; building a new one.
    Reconnecting,
    /// Shut down.
    Closed,
}

impl ConnState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Connected => "connected",
            ConnState::Disconnected => "disconnected",
            ConnState::Reconnecting => "expired-reconnecting",
            ConnState::Closed => "closed",
        }
    }
}

/// What the session reports to the layer that owns the cache.
#[derive(Debug)]
pub enum SessionEvent {
    Node(NodeEvent),
    /// Events may have been lost (reconnect): compare the cache with the server.
    Resync,
    /// The session expired (a new one is being built): its ephemeral nodes
    /// are not ours any more.
    Expired,
    /// The session expired and a new one is up: re-create owned ephemeral
    /// nodes, then compare the cache with the server.
    NewSession,
}

#[derive(Debug)]
struct Status {
    state: ConnState,
    session_id: i64,
    /// When we last knew the server to be reachable (now, while connected).
    last_contact: SystemTime,
    /// When the state last became `Connected` (`None` before the first time).
    connected_since: Option<SystemTime>,
}

/// A point-in-time copy of the session's status.
#[derive(Clone, Debug)]
pub struct StatusSnapshot {
    pub state: ConnState,
    pub session_id: i64,
    pub last_contact: SystemTime,
    /// When the state last became `Connected` (`None` before the first time).
    pub connected_since: Option<SystemTime>,
    pub requests: u64,
    pub servers: String,
}

pub struct ZkSession {
    config: SessionConfig,
    /// `None` once closed.
    client: RwLock<Option<zk::Client>>,
    /// The thread running `client`'s session task (see `host.rs`). Lock
    /// order: never held together with `client`.
    host: Mutex<Option<ClientHost>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// The root watch added by `connect`, taken by the first `follow`.
    initial_watcher: Mutex<Option<zk::PersistentWatcher>>,
    status: Mutex<Status>,
    connected: AtomicBool,
    requests: AtomicU64,
    /// Every session id this mount has had, oldest first (the last is current).
    sessions: Mutex<Vec<i64>>,
    /// Started without a connection (`--cache-dir` snapshot): `run` keeps
    /// trying to connect first.
    awaiting_first: AtomicBool,
    /// Set while [`Self::reattach`] runs (reads wait for it).
    reattaching: tokio::sync::watch::Sender<bool>,
}

fn map_error(e: zk::Error) -> ZkError {
    match e {
        zk::Error::NoNode => ZkError::NoNode,
        zk::Error::NodeExists => ZkError::NodeExists,
        zk::Error::NotEmpty => ZkError::NotEmpty,
        zk::Error::BadVersion => ZkError::BadVersion,
        zk::Error::NoAuth => ZkError::NoAuth,
        zk::Error::ConnectionLoss => ZkError::ConnectionLoss,
        // The client fails requests in flight with the transport's own
        // error when a connection breaks (a server stopped gracefully resets
        // it): the request's outcome is unknown, exactly as ConnectionLoss.
        zk::Error::Custom(_) => ZkError::ConnectionLoss,
        // A request still waiting in a client whose task was stopped (a
        // re-attach took the session over) is answered this way: it may
        // have gone out before the stop, so its outcome is unknown too.
        zk::Error::UnexpectedError(_) => ZkError::ConnectionLoss,
        zk::Error::SessionExpired | zk::Error::ClientClosed => ZkError::SessionExpired,
        zk::Error::Timeout => ZkError::Timeout,
        zk::Error::Unimplemented => ZkError::Unimplemented,
        zk::Error::NoChildrenForEphemerals => ZkError::NoChildrenForEphemerals,
        other => ZkError::Other(other.to_string()),
    }
}

pub fn map_stat(s: &zk::Stat) -> NodeStat {
    NodeStat {
        czxid: s.czxid,
        mzxid: s.mzxid,
        pzxid: s.pzxid,
        ctime: s.ctime,
        mtime: s.mtime,
        version: s.version,
        cversion: s.cversion,
        aversion: s.aversion,
        ephemeral_owner: s.ephemeral_owner,
        data_length: s.data_length,
        num_children: s.num_children,
    }
}

/// The client's connection settings: the session timeout asked for and the
/// mount's credentials; with `session`, that session is re-attached and
/// each attempt goes once round the servers (no backoff of the client's).
fn connector(config: &SessionConfig, session: Option<zk::SessionInfo>) -> zk::Connector {
    let mut connector = zk::Client::connector().with_session_timeout(config.session_timeout);
    if let Some(credentials) = &config.credentials {
        debug!(
            user = credentials.user(),
            "session authenticates with digest credentials"
        );
        connector = connector.with_auth("digest", credentials.0.as_bytes());
    }
    if let Some(session) = session {
        connector = connector.with_session(session).with_fail_eagerly();
    }
    connector
}

/// The `host:port` entries of `servers` (a connection string, chroot
/// allowed) whose host name does not resolve, each lookup bounded by 2 s:
/// what the client's own "no server answered" does not say.
async fn unresolved_hosts(servers: &str) -> Vec<String> {
    let hosts = servers.split('/').next().unwrap_or_default();
    let mut unresolved = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let name = host.to_string();
        let lookup = tokio::task::spawn_blocking(move || {
            std::net::ToSocketAddrs::to_socket_addrs(&name).is_ok_and(|mut a| a.next().is_some())
        });
        // Resolved, or no answer from the resolver either: not known to be
        // wrong.
        if let Ok(Ok(false)) = tokio::time::timeout(Duration::from_secs(2), lookup).await {
            unresolved.push(host.to_string());
        }
    }
    unresolved
}

/// Connect once for a new session, bounded by `timeout`.
async fn connect(
    config: &SessionConfig,
    timeout: Duration,
) -> Result<(zk::Client, ClientHost), String> {
    match host::connect(connector(config, None), config.servers.clone(), timeout).await {
        Ok(hosted) => Ok(hosted),
        Err(ConnectFailure::TimedOut) => {
            let unresolved = unresolved_hosts(&config.servers).await;
            let dns = if unresolved.is_empty() {
                String::new()
            } else {
                format!(" ({} does not resolve)", unresolved.join(", "))
            };
            Err(format!(
                "cannot connect to ZooKeeper at {}: no server answered within {:?}{dns}",
                config.servers, timeout
            ))
        }
        Err(e) => Err(format!(
            "cannot connect to ZooKeeper at {}: {e}",
            config.servers
        )),
    }
}

impl ZkSession {
    /// Connect (bounded by `connect_timeout`) and check that the root exists.
    /// When no server answers within `connect_timeout`, `last_known` is
    /// asked (only then) for the time of a snapshot the mount can serve;
    /// with one, the result is an unconnected session instead of an error:
    /// [`Self::run`] then keeps
    /// trying (with the backoff of a rebuild after expiry), adds the root
    /// watch and reports [`SessionEvent::Resync`]. A server that answers but
    /// refuses (no root, too old) still fails.
    pub async fn connect_or_unconnected(
        config: SessionConfig,
        last_known: impl FnOnce() -> Option<SystemTime>,
    ) -> Result<ZkSession, String> {
        let (client, host) = match connect(&config, config.connect_timeout)
            .await
            .map_err(|e| (last_known(), e))
        {
            Ok(hosted) => hosted,
            Err((Some(last_contact), e)) => {
                warn!(error = %e, "starting unconnected; connecting in the background");
                return Ok(ZkSession {
                    client: RwLock::new(None),
                    host: Mutex::new(None),
                    shutdown: tokio::sync::watch::Sender::new(false),
                    initial_watcher: Mutex::new(None),
                    status: Mutex::new(Status {
                        state: ConnState::Disconnected,
                        session_id: 0,
                        last_contact,
                        connected_since: None,
                    }),
                    connected: AtomicBool::new(false),
                    requests: AtomicU64::new(0),
                    sessions: Mutex::new(Vec::new()),
                    awaiting_first: AtomicBool::new(true),
                    reattaching: tokio::sync::watch::Sender::new(false),
                    config,
                });
            }
            Err((None, e)) => return Err(e),
        };
        let session_id = client.session_id().0;
        info!(servers = %config.servers, session = %format!("{session_id:#x}"), "connected to ZooKeeper");
        let session = ZkSession {
            client: RwLock::new(Some(client)),
            host: Mutex::new(Some(host)),
            shutdown: tokio::sync::watch::Sender::new(false),
            initial_watcher: Mutex::new(None),
            status: Mutex::new(Status {
                state: ConnState::Connected,
                session_id,
                last_contact: SystemTime::now(),
                connected_since: Some(SystemTime::now()),
            }),
            connected: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            sessions: Mutex::new(vec![session_id]),
            awaiting_first: AtomicBool::new(false),
            reattaching: tokio::sync::watch::Sender::new(false),
            config,
        };
        match session.get_data(&session.config.root).await {
            Ok(_) => Ok(()),
            Err(ZkError::NoNode) => Err(format!(
                "root node {} does not exist on {}{}",
                session.config.root,
                session.config.servers,
                if session.config.servers.contains('/') {
                    " (paths are inside the chroot)"
                } else {
                    ""
                }
            )),
            Err(e) => Err(format!(
                "cannot read root {} on {}: {e}",
                session.config.root, session.config.servers
            )),
        }?;
        // Add the root watch now, so an old server is refused at start and no
        // event between mount and the first `run` iteration is missed.
        let client = session
            .client()
            .ok_or("ZooKeeper client closed during start")?;
        let watcher = match session.watch_once(&client).await {
            Ok(watcher) => watcher,
            Err(Some(zk::Error::Unimplemented)) => {
                return Err(format!(
                    "ZooKeeper at {} does not support persistent recursive watches \
                     (server older than 3.6); zkfs needs 3.6 or newer",
                    session.config.servers
                ));
            }
            Err(Some(e)) => return Err(format!("cannot watch root {}: {e}", session.config.root)),
            Err(None) => return Err(format!("watching root {} timed out", session.config.root)),
        };
        *session
            .initial_watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(watcher);
        Ok(session)
    }

    fn client(&self) -> Option<zk::Client> {
        self.client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Close the session (its ephemeral nodes vanish at once) and wait, bounded,
    /// until the server acknowledged it.
    pub async fn close(&self) {
        self.shutdown.send_replace(true);
        let client = self
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(client) = client else {
            return;
        };
        let mut state = client.state_watcher();
        drop(client);
        let wait = async { while !state.changed().await.is_terminated() {} };
        if tokio::time::timeout(Duration::from_secs(3), wait)
            .await
            .is_err()
        {
            warn!("ZooKeeper did not confirm closing the session");
        }
        let host = self.host.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(host);
        self.set_state(ConnState::Closed);
        info!("ZooKeeper session closed");
    }

    fn set_state(&self, state: ConnState) {
        let mut status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if status.state == ConnState::Connected && state != ConnState::Connected {
            status.last_contact = SystemTime::now();
        }
        if status.state != ConnState::Connected && state == ConnState::Connected {
            status.connected_since = Some(SystemTime::now());
        }
        status.state = state;
        self.connected
            .store(state == ConnState::Connected, Ordering::SeqCst);
    }

    pub fn status(&self) -> StatusSnapshot {
        let status = self.status.lock().unwrap_or_else(|e| e.into_inner());
        StatusSnapshot {
            state: status.state,
            session_id: status.session_id,
            last_contact: if status.state == ConnState::Connected {
                SystemTime::now()
            } else {
                status.last_contact
            },
            connected_since: status.connected_since,
            requests: self.requests.load(Ordering::Relaxed),
            servers: self.config.servers.clone(),
        }
    }

    /// Bound a write by `--op-timeout` plus the session timeout and count it.
    /// A write is not abandoned while its connection may still deliver it:
    /// a connection that stops answering is declared lost within the session
    /// timeout, and the request then fails with ConnectionLoss (an unknown
    /// outcome the store resolves after reconnecting). Giving up earlier
    /// would report a failure for a write the server might still apply.
    fn bounded_write<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, zk::Error>> + Send + 'static,
    ) -> impl Future<Output = Result<T, ZkError>> + Send + 'static {
        self.bound(self.config.op_timeout + self.config.session_timeout, fut)
    }

    /// Count a request and bound it by `limit`.
    fn bound<T: Send + 'static>(
        &self,
        limit: Duration,
        fut: impl Future<Output = Result<T, zk::Error>> + Send + 'static,
    ) -> impl Future<Output = Result<T, ZkError>> + Send + 'static {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let timeout = tokio::time::timeout(limit, fut);
        async move {
            match timeout.await {
                Ok(r) => r.map_err(map_error),
                Err(_) => Err(ZkError::Timeout),
            }
        }
    }

    /// Follow connection state and the root watch until the process ends.
    /// Node events and resync requests go to `events`.
    pub async fn run(&self, events: mpsc::UnboundedSender<SessionEvent>) {
        let mut shutdown = self.shutdown.subscribe();
        if self.awaiting_first.load(Ordering::SeqCst) && !self.first_connect(&events).await {
            return;
        }
        loop {
            let Some(client) = self.client() else {
                return;
            };
            let end = tokio::select! {
                // A close is a close, whatever `follow` made of it.
                biased;
                _ = shutdown.wait_for(|closed| *closed) => FollowEnd::Closed,
                end = self.follow(&client, &events) => end,
            };
            drop(client);
            match end {
                FollowEnd::Closed => {
                    self.set_state(ConnState::Closed);
                    return;
                }
                FollowEnd::Reattached => {
                    // The new client's watch is on (taken by the next
                    // `follow`); what the gap hid is the resync's.
                    let _ = events.send(SessionEvent::Resync);
                    continue;
                }
                FollowEnd::Expired => {}
            }
            self.set_state(ConnState::Reconnecting);
            let _ = events.send(SessionEvent::Expired);
            let (fresh, host) = tokio::select! {
                fresh = self.rebuild() => fresh,
                _ = shutdown.wait_for(|closed| *closed) => return,
            };
            let state = fresh.state_watcher();
            let Some(id) = self.adopt(fresh.clone(), host) else {
                return;
            };
            info!(session = %format!("{id:#x}"), "new ZooKeeper session after expiry");
            self.set_state(ConnState::Connected);
            // The watch goes on before the resync is asked for, so no change
            // falls between the resync's reads and the first event; the
            // next `follow` takes it. Without it (the connection lost under
            // it, or the session ended at once) `follow` sees the loss, adds
            // the watch once connected and asks for a resync of its own, or
            // builds the next session.
            let watch = tokio::select! {
                watch = self.add_watch(&fresh, &state) => watch,
                _ = shutdown.wait_for(|closed| *closed) => return,
            };
            *self
                .initial_watcher
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = watch.into_watcher();
            drop(fresh);
            let _ = events.send(SessionEvent::NewSession);
        }
    }

    /// Make `fresh` the session's client: its id is the current one and
    /// joins the ids this mount has had (registrations it owned are its).
    /// `None` (both dropped) when the mount was closed meanwhile.
    fn adopt(&self, fresh: zk::Client, host: ClientHost) -> Option<i64> {
        let id = fresh.session_id().0;
        if !self.install(fresh, host) {
            return None;
        }
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .session_id = id;
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(id);
        Some(id)
    }

    /// Make `fresh` (on `host`) the client requests go to. The host it
    /// replaces is dropped, which stops its thread. False (and both
    /// dropped) when the mount was closed meanwhile.
    fn install(&self, fresh: zk::Client, host: ClientHost) -> bool {
        {
            // Checked under the lock `close` takes the client with (after
            // setting `shutdown`): a client installed here is one `close`
            // then finds and closes.
            let mut client = self.client.write().unwrap_or_else(|e| e.into_inner());
            if *self.shutdown.borrow() {
                drop(client);
                drop(fresh);
                drop(host);
                return false;
            }
            *client = Some(fresh);
        }
        let old = self
            .host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(host);
        drop(old);
        true
    }

    /// A session started unconnected: connect (retrying like after expiry),
    /// add the root watch for the first `follow` and ask for a resync.
    /// False when the mount was closed meanwhile. A connection lost while
    /// the watch is added is left to `follow`, which finds it lost when it
    /// starts, adds the watch once connected and asks for the resync then.
    async fn first_connect(&self, events: &mpsc::UnboundedSender<SessionEvent>) -> bool {
        let mut shutdown = self.shutdown.subscribe();
        let (fresh, host) = tokio::select! {
            fresh = self.rebuild() => fresh,
            _ = shutdown.wait_for(|closed| *closed) => return false,
        };
        let state = fresh.state_watcher();
        let Some(id) = self.adopt(fresh.clone(), host) else {
            return false;
        };
        info!(session = %format!("{id:#x}"), "connected to ZooKeeper (started unconnected); adding the root watch and resynchronising");
        self.set_state(ConnState::Connected);
        let watch = tokio::select! {
            watch = self.add_watch(&fresh, &state) => watch,
            _ = shutdown.wait_for(|closed| *closed) => return false,
        };
        let on = matches!(watch, Watch::On(_));
        *self
            .initial_watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = watch.into_watcher();
        self.awaiting_first.store(false, Ordering::SeqCst);
        if on {
            // The start checks the root; here the snapshot is already
            // served, so the check only logs, on a task of its own: a
            // connection lost under it must not hold `follow` back (the
            // state would say `connected` until it timed out).
            self.requests.fetch_add(1, Ordering::Relaxed);
            let root = fresh.get_data(&self.config.root);
            let (limit, path) = (self.config.op_timeout, self.config.root.clone());
            tokio::spawn(async move {
                if let Ok(Err(zk::Error::NoNode)) = tokio::time::timeout(limit, root).await {
                    error!(root = %path, "the root node does not exist on the server; the resync removes what the snapshot showed");
                }
            });
            let _ = events.send(SessionEvent::Resync);
        }
        true
    }

    /// Build a new client after expiry, retrying with backoff until it works.
    ///
    /// Each attempt is bounded by [`rebuild_attempt_limit`], not by the
    /// whole `--connect-timeout`: inside one attempt the client goes round
    /// the servers with a backoff of its own that doubles after every
    /// round they all refuse (300 ms × 2ⁿ for 3 servers), so a 10 s
    /// attempt made while the ensemble is down sleeps through its return
    /// for up to ~5 s. A new attempt starts with the client's first,
    /// undelayed round. Between attempts the delay doubles from 100 ms to
    /// [`REBUILD_BACKOFF_MAX`], jittered.
    async fn rebuild(&self) -> (zk::Client, ClientHost) {
        let mut delay = Duration::from_millis(100);
        let limit = rebuild_attempt_limit(self.config.session_timeout, self.config.connect_timeout);
        loop {
            match connect(&self.config, limit).await {
                Ok(hosted) => return hosted,
                Err(e) => {
                    // Jittered, so mounts that lost their sessions together
                    // (an ensemble outage) do not retry in step.
                    let wait = delay / 2 + jitter(delay / 2);
                    warn!(error = %e, retry_in = ?wait, "reconnect failed");
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(REBUILD_BACKOFF_MAX);
                }
            }
        }
    }

    /// Take a disconnected session over from its client, whose own
    /// reconnecting backs off in a way no setting changes (300 ms × 2ⁿ
    /// after each round of 3 servers): after a leader election of about a
    /// second, mounts came back 1.5–2 s after the ensemble did. The
    /// client's task is stopped without closing the session (`host.rs`),
    /// then the session is re-attached by new clients, each attempt one
    /// round of the servers (bounded by [`reattach_attempt_limit`]),
    /// [`reattach_delay`] apart, until one connects
    /// or a deadline like the client's own passes (7/5 of the negotiated
    /// timeout after the loss was seen: for a connection that went silent,
    /// up to 2/5 of the timeout later than the client's, which counts from
    /// the last answer). `Some` once the
    /// new client is installed with its root watch on; `None` when the
    /// session is gone (the server says expired, or the deadline passed).
    async fn reattach(&self, old: &zk::Client, lost_at: Instant) -> Option<()> {
        let session = old.session().clone();
        let id = session.id().0;
        let deadline = lost_at + old.session_timeout() * 7 / 5;
        // Cleared however this ends (cancelled too): reads stop waiting.
        self.reattaching.send_replace(true);
        let _reattaching = Clear(&self.reattaching);
        let host = self.host.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(host) = host {
            host.stop().await;
        }
        info!(
            session = %format!("{id:#x}"),
            after = ?TAKEOVER_AFTER,
            "still disconnected; re-attaching the session with a new client"
        );
        let limit = reattach_attempt_limit(
            self.config.session_timeout,
            server_count(&self.config.servers),
        );
        loop {
            let now = Instant::now();
            if now >= deadline {
                warn!(session = %format!("{id:#x}"), "no server reached within the session timeout; the session is taken as expired");
                return None;
            }
            let attempt = host::connect(
                connector(&self.config, Some(session.clone())),
                self.config.servers.clone(),
                limit.min(deadline - now),
            )
            .await;
            match attempt {
                Ok((client, host)) => match self.prepare(&client).await {
                    Ok(watcher) => {
                        if !self.install(client, host) {
                            return None;
                        }
                        *self
                            .initial_watcher
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(watcher);
                        self.set_state(ConnState::Connected);
                        info!(
                            "re-attached the ZooKeeper session; re-adding watch and resynchronising"
                        );
                        return Some(());
                    }
                    Err(e) => {
                        warn!(error = %e, "re-attached client not ready; trying again");
                        // The task first: the client dropped while it
                        // runs would close the session.
                        host.stop().await;
                        drop(client);
                    }
                },
                Err(ConnectFailure::Refused(zk::Error::SessionExpired)) => {
                    warn!(session = %format!("{id:#x}"), "ZooKeeper says the session expired; building a new one");
                    return None;
                }
                Err(ConnectFailure::Refused(zk::Error::AuthFailed)) => {
                    error!("ZooKeeper authentication failed; building a new session");
                    return None;
                }
                Err(e) => debug!(error = %e, "re-attach attempt failed"),
            }
            let wait = reattach_delay(lost_at.elapsed());
            let wait = (wait / 2 + jitter(wait / 2))
                .min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(wait).await;
        }
    }

    /// Ready a re-attached client before anything else uses it: its server
    /// catches up with the leader (`sync`: a re-attached client cannot tell
    /// the server the last zxid it saw, so nothing else stops a lagging
    /// follower from answering reads with older data than the cache holds;
    /// zookeeper-client's documentation advises the same), then the root
    /// watch goes on. One attempt of each, bounded by `--op-timeout`; a
    /// failure (the new connection lost already, say) fails the attempt.
    async fn prepare(&self, client: &zk::Client) -> Result<zk::PersistentWatcher, String> {
        let root = &self.config.root;
        self.requests.fetch_add(1, Ordering::Relaxed);
        match tokio::time::timeout(self.config.op_timeout, client.sync(root)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("sync of {root} failed: {e}")),
            Err(_) => return Err(format!("sync of {root} timed out")),
        }
        match self.watch_once(client).await {
            Ok(watcher) => Ok(watcher),
            Err(Some(e)) => Err(format!("cannot watch {root}: {e}")),
            Err(None) => Err(format!("watching {root} timed out")),
        }
    }

    /// One attempt to add the persistent recursive watch on the root,
    /// counted and bounded by `--op-timeout` (`Err(None)`: no answer).
    async fn watch_once(
        &self,
        client: &zk::Client,
    ) -> Result<zk::PersistentWatcher, Option<zk::Error>> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let watch = client.watch(&self.config.root, zk::AddWatchMode::PersistentRecursive);
        match tokio::time::timeout(self.config.op_timeout, watch).await {
            Ok(result) => result.map_err(Some),
            Err(_) => Err(None),
        }
    }

    /// Add the persistent recursive watch on the root, retrying (200 ms
    /// apart at first, doubling up to [`WATCH_RETRY_MAX`]: a server that
    /// refuses it, say after a downgrade, is asked, and logged, a few times
    /// a minute, not five times a second) only while the connection is up:
    /// a connection lost under it is [`Watch::Lost`], for the caller to treat as any other loss (state
    /// `disconnected`, takeover armed) rather than a retry loop that shows
    /// `connected` and waits out the client's backoff. The loss is seen
    /// when the state changes, not when the attempt ends: an `AddWatch`
    /// asked for after the client found its connection lost is not sent
    /// until it reconnects, and would otherwise be waited on for the whole
    /// `--op-timeout`, the mount saying `connected` all that time.
    async fn add_watch(&self, client: &zk::Client, state: &zk::StateWatcher) -> Watch {
        let mut wait = Duration::from_millis(200);
        loop {
            let attempt = tokio::select! {
                attempt = self.watch_once(client) => attempt,
                gone = not_connected(state.clone()) => return gone,
            };
            match attempt {
                Ok(watcher) => return Watch::On(watcher),
                Err(Some(zk::Error::Unimplemented)) => {
                    error!(
                        "ZooKeeper server does not support persistent recursive watches \
                         (needs 3.6 or newer); the cache cannot be kept coherent"
                    );
                }
                Err(Some(e)) => {
                    warn!(root = %self.config.root, error = %e, "cannot add root watch; retrying")
                }
                Err(None) => {
                    warn!(root = %self.config.root, "adding root watch timed out; retrying")
                }
            }
            if let Some(gone) = gone(state.peek_state()) {
                return gone;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                gone = not_connected(state.clone()) => return gone,
            }
            wait = (wait * 2).min(WATCH_RETRY_MAX);
        }
    }

    /// Reconnected after a loss: add the root watch again and ask for a
    /// resync. zookeeper-client 0.11.2 does not resend persistent watches
    /// on reconnect: ours is added again, and only then is the old watcher
    /// dropped. Dropped first, it would be the path's last watcher and the
    /// client would send a RemoveWatches (answered NoWatcher); dropped
    /// after, the new one remains and nothing is sent. Events of the old
    /// one not yet taken are covered by the resync that follows. Lost again
    /// under it, the old watcher stays and the next reconnect adds the
    /// watch. `Some` when `follow` is to end.
    async fn back(
        &self,
        client: &zk::Client,
        state: &zk::StateWatcher,
        watcher: &mut Option<zk::PersistentWatcher>,
        events: &mpsc::UnboundedSender<SessionEvent>,
        link: &mut Link,
    ) -> Option<FollowEnd> {
        *link = Link::default();
        self.set_state(ConnState::Connected);
        info!("reconnected to ZooKeeper; re-adding watch and resynchronising");
        let old = watcher.take();
        match self.add_watch(client, state).await {
            Watch::On(w) => *watcher = Some(w),
            Watch::Lost => {
                warn!(
                    "lost connection to ZooKeeper again while adding the watch; serving cached data"
                );
                *watcher = old;
                link.lose(self);
                return None;
            }
            Watch::Ended => return Some(FollowEnd::Expired),
            Watch::Closed => return Some(FollowEnd::Closed),
        }
        drop(old);
        let _ = events.send(SessionEvent::Resync);
        None
    }

    async fn follow(
        &self,
        client: &zk::Client,
        events: &mpsc::UnboundedSender<SessionEvent>,
    ) -> FollowEnd {
        let mut state = client.state_watcher();
        let mut watcher = self
            .initial_watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut link = Link::default();
        // What happened before `state` existed is not among its changes:
        // a session that ended or a connection already lost is taken from
        // the current state. With no watch yet (lost while it was being
        // added after a new session), it goes on now, or at the reconnect
        // if the connection is down; either way a resync follows, since
        // the one the new session asked for ran without it.
        match state.peek_state() {
            zk::SessionState::Closed => return FollowEnd::Closed,
            s if s.is_terminated() => return FollowEnd::Expired,
            zk::SessionState::Disconnected => {
                warn!("lost connection to ZooKeeper; serving cached data");
                link.lose(self);
            }
            _ if watcher.is_none() => match self.add_watch(client, &state).await {
                Watch::On(w) => {
                    watcher = Some(w);
                    let _ = events.send(SessionEvent::Resync);
                }
                Watch::Lost => {
                    warn!(
                        "lost connection to ZooKeeper while adding the watch; serving cached data"
                    );
                    link.lose(self);
                }
                Watch::Ended => return FollowEnd::Expired,
                Watch::Closed => return FollowEnd::Closed,
            },
            _ => {}
        }
        loop {
            let takeover_at = link.takeover.map(|(at, _)| at);
            tokio::select! {
                _ = sleep_until_some(takeover_at) => {
                    let lost_at = link.takeover.map_or_else(Instant::now, |(_, lost)| lost);
                    link.takeover = None;
                    if state.peek_state() != zk::SessionState::Disconnected {
                        // It just reconnected (or ended): the state branch
                        // takes it from here.
                        continue;
                    }
                    return match self.reattach(client, lost_at).await {
                        Some(()) => FollowEnd::Reattached,
                        None => FollowEnd::Expired,
                    };
                }
                event = next_event(&mut watcher) => {
                    let kind = match event.event_type {
                        zk::EventType::NodeCreated => NodeEventKind::Created,
                        zk::EventType::NodeDeleted => NodeEventKind::Deleted,
                        zk::EventType::NodeDataChanged => NodeEventKind::DataChanged,
                        // The client closes the watcher after a terminal
                        // session event: never poll it again after one.
                        zk::EventType::Session if event.session_state == zk::SessionState::Closed => {
                            return FollowEnd::Closed;
                        }
                        zk::EventType::Session if event.session_state.is_terminated() => {
                            warn!(state = %event.session_state, "ZooKeeper session ended; building a new one");
                            return FollowEnd::Expired;
                        }
                        // The root watcher's channel carries every session
                        // state, in order; the state watcher keeps only the
                        // latest, so a loss and the reconnect after it can
                        // reach it as one `connected` (its reader busy
                        // meanwhile), which re-adds no watch and asks for no
                        // resync. A loss seen here is handled as one seen
                        // there: whichever comes first acts, and the
                        // reconnect is acted on only while still connected
                        // (else the state branch sees the next loss).
                        zk::EventType::Session => {
                            match event.session_state {
                                // Already connected again (the channel is
                                // read late): the reconnect queued behind
                                // this loss re-adds the watch; nothing to
                                // report or take over meanwhile.
                                zk::SessionState::Disconnected
                                    if !link.was_disconnected && connected(state.peek_state()) =>
                                {
                                    debug!("a loss seen late by the root watch; the connection is back already");
                                    link.was_disconnected = true;
                                }
                                zk::SessionState::Disconnected if !link.was_disconnected => {
                                    warn!("lost connection to ZooKeeper (seen by the root watch); serving cached data");
                                    link.loss_told = true;
                                    link.lose(self);
                                }
                                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
                                    if link.was_disconnected && connected(state.peek_state()) =>
                                {
                                    if let Some(end) = self.back(client, &state, &mut watcher, events, &mut link).await {
                                        return end;
                                    }
                                }
                                _ => {}
                            }
                            continue;
                        }
                        // Persistent recursive watches never send child events.
                        _ => continue,
                    };
                    debug!(path = %event.path, ?kind, "watch event");
                    if events.send(SessionEvent::Node(NodeEvent { kind, path: event.path })).is_err() {
                        return FollowEnd::Closed;
                    }
                }
                new_state = state.changed() => {
                    match new_state {
                        zk::SessionState::Disconnected => {
                            // The root watch may have told this loss first:
                            // one loss, one warn line.
                            if link.loss_told {
                                debug!("lost connection to ZooKeeper (the client's state; the root watch told it first)");
                            } else {
                                warn!("lost connection to ZooKeeper; serving cached data");
                                link.loss_told = true;
                            }
                            link.lose(self);
                        }
                        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                            if link.was_disconnected {
                                if let Some(end) = self.back(client, &state, &mut watcher, events, &mut link).await {
                                    return end;
                                }
                            } else {
                                link.takeover = None;
                                self.set_state(ConnState::Connected);
                            }
                        }
                        zk::SessionState::Expired => {
                            warn!("ZooKeeper session expired; building a new one");
                            return FollowEnd::Expired;
                        }
                        zk::SessionState::AuthFailed => {
                            error!("ZooKeeper authentication failed; building a new session");
                            return FollowEnd::Expired;
                        }
                        zk::SessionState::Closed => return FollowEnd::Closed,
                    }
                }
            }
        }
    }
}

/// The longest wait between two attempts to add the root watch.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// How long a lost connection is left to the client's own reconnecting
/// before [`ZkSession::reattach`] takes the session over. Long enough for
/// the client's first, undelayed round of the servers and its second (a
/// server restart or a lost connection to one server ends there); short
/// against a leader election.
pub const TAKEOVER_AFTER: Duration = Duration::from_millis(500);

/// The longest wait between two re-attach attempts, `since_loss` after the
/// connection was lost (each wait is half to all of it): 200 ms for the
/// first 800 ms, then a quarter of the time since the loss, at most 2 s. A
/// failover is over in about a second, and a mount should be back within a
/// fraction of one after the ensemble is; a longer outage is met with
/// fewer attempts, each costing the servers one refused connection.
pub fn reattach_delay(since_loss: Duration) -> Duration {
    (since_loss / 4).clamp(Duration::from_millis(200), Duration::from_secs(2))
}

/// The longest wait between two attempts to build a new session (each
/// wait is half to all of the current delay). An attempt against servers
/// that are down costs them a refused connection, so a fleet retrying every
/// 1–2 s is no load; what matters is reconnecting soon after they are back.
const REBUILD_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long one attempt to build a new session may take: a third of the
/// session timeout (the time ZooKeeper's Java client gives each server),
/// at least 1 s, at most `--connect-timeout`.
pub fn rebuild_attempt_limit(session_timeout: Duration, connect_timeout: Duration) -> Duration {
    (session_timeout / 3)
        .max(Duration::from_secs(1))
        .min(connect_timeout)
}

/// How long one re-attach attempt may take: one whole round of the
/// `servers` at zookeeper-client's per-server connect timeout (2/5 of the
/// session timeout asked for, its default), plus 1 s for the answering
/// server's handshake; the re-attach's deadline bounds it further. Ended
/// sooner (it was the rebuild's third of the session timeout), an attempt
/// was used up by one silent server at the head of the client's shuffled
/// round, and the live servers after it were never tried. Servers that
/// refuse at once (an ensemble that is down) still end an attempt as soon
/// as its round is over (`with_fail_eagerly`).
pub fn reattach_attempt_limit(session_timeout: Duration, servers: usize) -> Duration {
    let servers = u32::try_from(servers.max(1)).unwrap_or(u32::MAX);
    (session_timeout * 2 / 5)
        .saturating_mul(servers)
        .saturating_add(Duration::from_secs(1))
}

/// How many servers a connect string names (`host:port,...[/chroot]`).
pub fn server_count(servers: &str) -> usize {
    let hosts = servers.split_once('/').map_or(servers, |(hosts, _)| hosts);
    hosts.split(',').filter(|h| !h.is_empty()).count().max(1)
}

/// The longest a resync waits after a reconnect or a new session:
/// `min(1 s, session timeout / 4)`. Spread over this window, a fleet of
/// mounts that reconnect at the same moment (a leader failover) does not
/// send its resyncs at the same moment; the window stays well inside the
/// session timeout, and short enough that gap changes appear within about a
/// second.
pub fn resync_jitter_limit(session_timeout: Duration) -> Duration {
    (session_timeout / 4).min(Duration::from_secs(1))
}

/// A uniformly random duration in `[0, max)` (zero for zero): a splitmix64
/// step over a per-process seed and a counter, which is all a spread of
/// retries needs (no crate for it).
pub fn jitter(max: Duration) -> Duration {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let seed = *SEED.get_or_init(|| {
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        now ^ (u64::from(std::process::id()) << 32)
    });
    let mut z = seed.wrapping_add(
        COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_nanos(z % nanos)
}

/// A read sent already (with what sends it again), or one waiting for a
/// re-attach under way (the old client's task is stopped then: a read sent
/// to it would fail at once; it waits as a read waits for the client's own
/// reconnect during the first 0.5 s after a loss).
enum Read<F, S> {
    Sent(F, S),
    Waiting(S),
}

/// Clears a flag when dropped.
struct Clear<'a>(&'a tokio::sync::watch::Sender<bool>);

impl Drop for Clear<'_> {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// What `follow` knows of a loss of its connection.
#[derive(Default)]
struct Link {
    /// Lost, and not yet handled as back (watch re-added, resync asked).
    was_disconnected: bool,
    /// That loss was logged (by the root watch, which may see it before the
    /// client's state does): one loss, one warn line.
    loss_told: bool,
    /// While disconnected: when the client's own reconnecting is taken
    /// over, and when the connection was lost.
    takeover: Option<(tokio::time::Instant, Instant)>,
}

impl Link {
    /// The connection is lost: the state says so, and the takeover is
    /// armed unless it is already (a second report of the same loss keeps
    /// its time). A loss after a takeover that found the connection back
    /// (before `follow` saw the reconnect) arms a new one.
    fn lose(&mut self, session: &ZkSession) {
        if self.takeover.is_some() {
            session.set_state(ConnState::Disconnected);
        } else {
            self.takeover = Some(session.lost());
        }
        self.was_disconnected = true;
    }
}

/// Whether `state` is a connected one.
fn connected(state: zk::SessionState) -> bool {
    matches!(
        state,
        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly
    )
}

/// How an [`ZkSession::add_watch`] ended.
enum Watch {
    On(zk::PersistentWatcher),
    /// The connection was lost before the watch went on.
    Lost,
    /// The session ended.
    Ended,
    /// The client was closed (the mount is closing).
    Closed,
}

impl Watch {
    fn into_watcher(self) -> Option<zk::PersistentWatcher> {
        match self {
            Watch::On(watcher) => Some(watcher),
            Watch::Lost | Watch::Ended | Watch::Closed => None,
        }
    }
}

/// What a session state means for a watch being added: `None` while
/// connected.
fn gone(state: zk::SessionState) -> Option<Watch> {
    match state {
        zk::SessionState::Closed => Some(Watch::Closed),
        s if s.is_terminated() => Some(Watch::Ended),
        zk::SessionState::Disconnected => Some(Watch::Lost),
        _ => None,
    }
}

/// Once `state` is no longer connected: how (see [`gone`]). A change
/// between two looks is not missed: `changed` returns at once for a state
/// newer than the last one this watcher (a clone's) has seen.
async fn not_connected(mut state: zk::StateWatcher) -> Watch {
    loop {
        if let Some(gone) = gone(state.peek_state()) {
            return gone;
        }
        state.changed().await;
    }
}

/// When a loss seen at `lost_at` is taken over (see [`TAKEOVER_AFTER`]),
/// paired with `lost_at`.
fn takeover_from(lost_at: Instant) -> (tokio::time::Instant, Instant) {
    (
        tokio::time::Instant::from_std(lost_at) + TAKEOVER_AFTER,
        lost_at,
    )
}

impl ZkSession {
    /// A connection found lost now: the state becomes `disconnected`; the
    /// takeover's time, as [`takeover_from`].
    fn lost(&self) -> (tokio::time::Instant, Instant) {
        self.set_state(ConnState::Disconnected);
        takeover_from(Instant::now())
    }
}

/// The root watch's next event; never, while there is no watch.
async fn next_event(watcher: &mut Option<zk::PersistentWatcher>) -> zk::WatchedEvent {
    match watcher {
        Some(watcher) => watcher.changed().await,
        None => std::future::pending().await,
    }
}

enum FollowEnd {
    Expired,
    /// The session was re-attached by a new client (already installed,
    /// its root watch on): resynchronise.
    Reattached,
    Closed,
}

/// Sleep until `at`; never, for `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next answer of a multi-read of `getData`s, as one node's answer.
/// Only called for paths that were sent (refused ones have no answer).
fn next_answer(
    answers: &mut impl Iterator<Item = zk::MultiReadResult>,
) -> Result<(Vec<u8>, NodeStat), ZkError> {
    match answers.next() {
        Some(zk::MultiReadResult::Data { data, stat }) => Ok((data, map_stat(&stat))),
        Some(zk::MultiReadResult::Error { err }) => Err(map_error(err)),
        _ => Err(ZkError::Other("multi-read answered out of order".into())),
    }
}

/// The reads of [`ZkBackend`], sent now (`limit` from now).
impl ZkSession {
    /// What a request gets when there is no client: before the first
    /// connection (a mount started from a snapshot) the connection is
    /// missing, not a session; afterwards the session expired and the new
    /// one is not up yet.
    fn no_client(&self) -> ZkError {
        if self.awaiting_first.load(Ordering::SeqCst) {
            ZkError::ConnectionLoss
        } else {
            ZkError::SessionExpired
        }
    }

    fn get_data_now(
        &self,
        path: &str,
        limit: Duration,
    ) -> impl Future<Output = Result<(Vec<u8>, NodeStat), ZkError>> + Send {
        let fut = self.client().map(|c| c.get_data(path));
        let bounded = fut.map(|f| self.bound(limit, f));
        let no_client = self.no_client();
        async move {
            match bounded {
                Some(b) => b.await.map(|(data, stat)| (data, map_stat(&stat))),
                None => Err(no_client),
            }
        }
    }

    fn sync_now(
        &self,
        path: &str,
        limit: Duration,
    ) -> impl Future<Output = Result<(), ZkError>> + Send {
        let path = path.to_string();
        let bounded = self
            .client()
            .map(|c| self.bound(limit, async move { c.sync(&path).await }));
        let no_client = self.no_client();
        async move {
            match bounded {
                Some(b) => b.await,
                None => Err(no_client),
            }
        }
    }

    fn get_children_now(
        &self,
        path: &str,
        limit: Duration,
    ) -> impl Future<Output = Result<(Vec<String>, NodeStat), ZkError>> + Send {
        let fut = self.client().map(|c| c.get_children(path));
        let bounded = fut.map(|f| self.bound(limit, f));
        let no_client = self.no_client();
        async move {
            match bounded {
                Some(b) => b.await.map(|(names, stat)| (names, map_stat(&stat))),
                None => Err(no_client),
            }
        }
    }

    fn get_data_batch_now(
        &self,
        paths: &[&str],
        limit: Duration,
    ) -> impl Future<Output = BatchAnswer> + Send {
        let client = self.client();
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        // Spawned so the request leaves now (the trait's contract), not when
        // the caller first polls. Paths the client refuses (not absolute, say)
        // are answered on their own; the others go out in one multi-read.
        let task = tokio::spawn(self.bound(limit, async move {
            let Some(client) = client else {
                return Err(zk::Error::ClientClosed);
            };
            let mut reader = client.new_multi_reader();
            let refused: Vec<Option<ZkError>> = paths
                .iter()
                .map(|p| reader.add_get_data(p).err().map(map_error))
                .collect();
            let answers = reader.commit().await?;
            Ok((refused, answers))
        }));
        async move {
            let (refused, answers) = task
                .await
                .unwrap_or_else(|e| Err(ZkError::Other(format!("multi-read task failed: {e}"))))?;
            let mut answers = answers.into_iter();
            Ok(refused
                .into_iter()
                .map(|refusal| match refusal {
                    Some(e) => Err(e),
                    None => next_answer(&mut answers),
                })
                .collect())
        }
    }

    fn get_acl_now(
        &self,
        path: &str,
        limit: Duration,
    ) -> impl Future<Output = Result<Vec<AclEntry>, ZkError>> + Send {
        let client = self.client();
        let path = path.to_string();
        // Spawned so the request leaves now (the trait's contract), not when
        // the caller first polls.
        let task = tokio::spawn(self.bound(limit, async move {
            let Some(client) = client else {
                return Err(zk::Error::ClientClosed);
            };
            client.get_acl(&path).await.map(|(acls, _)| {
                acls.iter()
                    .map(|a| AclEntry {
                        scheme: a.scheme().to_string(),
                        id: a.id().to_string(),
                        perms: permission_bits(a.permission()),
                    })
                    .collect::<Vec<_>>()
            })
        }));
        async move {
            task.await
                .unwrap_or_else(|e| Err(ZkError::Other(format!("getACL task failed: {e}"))))
        }
    }

    /// A read: `send(limit)` sends it now with `--op-timeout`, or, while a
    /// re-attach is under way, once that is over, with the time left; if
    /// none is left, it fails with `Timeout` unsent. A read sent to a client
    /// that a re-attach then stopped (it was waiting in that client's queue
    /// while the client tried to reconnect by itself) fails with the
    /// connection; it is sent once more, to the re-attached client, in the
    /// time left. Only reads: asking again changes nothing in ZooKeeper.
    fn read<T, F>(
        &self,
        send: impl Fn(Duration) -> F + Send,
    ) -> impl Future<Output = Result<T, ZkError>> + Send
    where
        F: Future<Output = Result<T, ZkError>> + Send,
    {
        let until = tokio::time::Instant::now() + self.config.op_timeout;
        // Marks the re-attach state seen now: a change later means a
        // re-attach began (or ended) after the read was sent.
        let mut reattaches = self.reattaching.subscribe();
        let read = if *reattaches.borrow_and_update() {
            Read::Waiting(send)
        } else {
            Read::Sent(send(self.config.op_timeout), send)
        };
        async move {
            let send = match read {
                Read::Sent(sent, send) => match sent.await {
                    Err(ZkError::ConnectionLoss | ZkError::SessionExpired)
                        if reattaches.has_changed().unwrap_or(false) =>
                    {
                        info!(
                            "a read failed with the client a re-attach stopped; asking the new one"
                        );
                        send
                    }
                    answer => return answer,
                },
                Read::Waiting(send) => send,
            };
            let left = self.after_reattach(until).await;
            if left.is_zero() {
                return Err(ZkError::Timeout);
            }
            send(left).await
        }
    }

    /// Wait until the re-attach is over or `until`; the time left then.
    async fn after_reattach(&self, until: tokio::time::Instant) -> Duration {
        let mut reattaching = self.reattaching.subscribe();
        let _ = tokio::time::timeout_at(until, reattaching.wait_for(|on| !*on)).await;
        until.saturating_duration_since(tokio::time::Instant::now())
    }
}

/// Reads wait for a re-attach under way (see [`ZkSession::read`]);
/// otherwise, and for writes, each request is sent when the method is called.
impl ZkBackend for ZkSession {
    fn get_data(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<(Vec<u8>, NodeStat), ZkError>> + Send {
        self.read(move |limit| self.get_data_now(path, limit))
    }

    fn get_children(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<(Vec<String>, NodeStat), ZkError>> + Send {
        self.read(move |limit| self.get_children_now(path, limit))
    }

    fn get_data_batch(&self, paths: &[&str]) -> impl Future<Output = BatchAnswer> + Send {
        self.read(move |limit| self.get_data_batch_now(paths, limit))
    }

    fn get_acl(&self, path: &str) -> impl Future<Output = Result<Vec<AclEntry>, ZkError>> + Send {
        self.read(move |limit| self.get_acl_now(path, limit))
    }

    fn sync(&self, path: &str) -> impl Future<Output = Result<(), ZkError>> + Send {
        self.read(move |limit| self.sync_now(path, limit))
    }

    fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    fn session_id(&self) -> i64 {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .session_id
    }

    fn is_own_session(&self, owner: i64) -> bool {
        owner != 0
            && self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&owner)
    }

    fn create(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        acl: Option<&[AclEntry]>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send {
        let client = self.client();
        let (path, data) = (path.to_string(), data.to_vec());
        let acl: Option<Vec<zk::Acl>> = acl.map(|a| a.iter().map(to_acl).collect());
        let default = self.config.new_node_acl;
        self.bounded_write(async move {
            let client = client.ok_or(zk::Error::ClientClosed)?;
            let options = create_options(mode, &acl, default);
            client
                .create(&path, &data, &options)
                .await
                .map(|(stat, _)| map_stat(&stat))
        })
    }

    fn set_data(
        &self,
        path: &str,
        data: &[u8],
        version: Option<i32>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send {
        let client = self.client();
        let (path, data) = (path.to_string(), data.to_vec());
        self.bounded_write(async move {
            let client = client.ok_or(zk::Error::ClientClosed)?;
            client
                .set_data(&path, &data, version)
                .await
                .map(|stat| map_stat(&stat))
        })
    }

    fn delete(
        &self,
        path: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<(), ZkError>> + Send {
        let client = self.client();
        let path = path.to_string();
        self.bounded_write(async move {
            let client = client.ok_or(zk::Error::ClientClosed)?;
            client.delete(&path, version).await
        })
    }

    fn multi(
        &self,
        ops: &[WriteOp],
    ) -> impl Future<Output = Result<Vec<WriteResult>, ZkError>> + Send {
        let client = self.client();
        let ops = ops.to_vec();
        let default = self.config.new_node_acl;
        self.bounded_write(async move {
            let client = client.ok_or(zk::Error::ClientClosed)?;
            let mut writer = client.new_multi_writer();
            for op in &ops {
                match op {
                    WriteOp::Create {
                        path,
                        data,
                        mode,
                        acl,
                    } => {
                        let acl: Option<Vec<zk::Acl>> =
                            acl.as_ref().map(|a| a.iter().map(to_acl).collect());
                        writer.add_create(path, data, &create_options(*mode, &acl, default))?;
                    }
                    WriteOp::SetData {
                        path,
                        data,
                        version,
                    } => writer.add_set_data(path, data, *version)?,
                    WriteOp::Delete { path, version } => writer.add_delete(path, *version)?,
                }
            }
            let results = writer.commit().await.map_err(zk::Error::from)?;
            Ok(results
                .into_iter()
                .map(|r| match r {
                    zk::MultiWriteResult::Create { stat, .. } => {
                        WriteResult::Created(map_stat(&stat))
                    }
                    zk::MultiWriteResult::SetData { stat } => WriteResult::Set(map_stat(&stat)),
                    _ => WriteResult::Deleted,
                })
                .collect())
        })
    }
}

fn to_acl(entry: &AclEntry) -> zk::Acl {
    let permission = [
        (1, zk::Permission::READ),
        (2, zk::Permission::WRITE),
        (4, zk::Permission::CREATE),
        (8, zk::Permission::DELETE),
        (16, zk::Permission::ADMIN),
    ]
    .iter()
    .filter(|(bit, _)| entry.perms & bit != 0)
    .fold(zk::Permission::NONE, |acc, (_, p)| acc | *p);
    zk::Acl::new(permission, zk::AuthId::new(&entry.scheme, &entry.id))
}

fn create_options<'a>(
    mode: CreateMode,
    acl: &'a Option<Vec<zk::Acl>>,
    default: NewNodeAcl,
) -> zk::CreateOptions<'a> {
    let mode = match mode {
        CreateMode::Persistent => zk::CreateMode::Persistent,
        CreateMode::Ephemeral => zk::CreateMode::Ephemeral,
    };
    let acls = match (acl, default) {
        (Some(acl), _) => zk::Acls::new(acl),
        (None, NewNodeAcl::Open) => zk::Acls::anyone_all(),
        (None, NewNodeAcl::Creator) => zk::Acls::creator_all(),
    };
    mode.with_acls(acls)
}

fn permission_bits(p: zk::Permission) -> i32 {
    [
        (zk::Permission::READ, 1),
        (zk::Permission::WRITE, 2),
        (zk::Permission::CREATE, 4),
        (zk::Permission::DELETE, 8),
        (zk::Permission::ADMIN, 16),
    ]
    .iter()
    .filter(|(perm, _)| p.has(*perm))
    .map(|(_, bit)| bit)
    .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuild_attempt_is_a_third_of_the_session_timeout_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(rebuild_attempt_limit(s(6), s(10)), s(2));
        assert_eq!(rebuild_attempt_limit(s(30), s(10)), s(10));
        assert_eq!(rebuild_attempt_limit(s(2), s(10)), s(1));
        assert_eq!(
            rebuild_attempt_limit(s(2), Duration::from_millis(500)),
            Duration::from_millis(500)
        );
    }

    /// zookeeper-client gives each server of a round 2/5 of the session
    /// timeout asked for (the documented default of its
    /// `Connector::with_connection_timeout`). A re-attach attempt that
    /// ends sooner than one whole round is used up by a silent server at
    /// the head of the client's (shuffled) round, and the servers after it
    /// are never tried: with 3 servers and a 30 s session, 10 s attempts
    /// against 12 s for the silent one alone.
    #[test]
    fn a_reattach_attempt_lasts_one_whole_round_of_the_servers() {
        let s = Duration::from_secs;
        for (session, servers) in [(2, 1), (2, 3), (10, 3), (30, 3), (30, 5)] {
            let per_server = s(session) * 2 / 5;
            let round = per_server * servers;
            let limit = reattach_attempt_limit(s(session), servers as usize);
            assert!(
                limit > round && limit <= round + s(1),
                "{session} s session, {servers} servers: {limit:?} for a round of {round:?}"
            );
        }
    }

    #[test]
    fn the_servers_of_a_connect_string_are_counted() {
        assert_eq!(server_count("a:1"), 1);
        assert_eq!(server_count("a:1,b:2,c:3"), 3);
        assert_eq!(server_count("a:1,b:2/app/x,y"), 2);
        assert_eq!(server_count("a:1,,b:2"), 2);
    }

    #[test]
    fn jitter_spreads_over_its_whole_window_and_stays_inside_it() {
        let max = Duration::from_millis(1000);
        let samples: Vec<Duration> = (0..2000).map(|_| jitter(max)).collect();
        assert!(samples.iter().all(|d| *d < max));
        // Each tenth of the window gets some of 2,000 draws (a constant or
        // a narrow spread would leave most of them empty).
        for decile in 0..10 {
            let (lo, hi) = (max * decile / 10, max * (decile + 1) / 10);
            let n = samples.iter().filter(|d| **d >= lo && **d < hi).count();
            assert!(n > 100, "decile {decile}: {n} of 2000");
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn resync_jitter_limit_is_a_quarter_session_timeout_at_most_one_second() {
        assert_eq!(
            resync_jitter_limit(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            resync_jitter_limit(Duration::from_secs(30)),
            Duration::from_secs(1)
        );
    }
}
