//! Change notifications for `zkfs watch`, served by the daemon on a unix
//! socket of its own (see doc/SEMANTICS.md, "Change notifications").
//!
//! Owns the socket (a private 0700 directory holding `events.sock`, mode
//! 0600, created at mount time, published as the root's
//! `user.zkfs.events_socket`, removed at unmount), the subscriptions of the
//! connected watchers and their bounded queues. The daemon's event loop
//! hands it every watch event and what each resync found changed
//! ([`EventHub::publish`]). It must not poll ZooKeeper: the only reads it
//! causes are [`warm`]'s, once per subscription (the node and its children
//! loaded into the cache, so that a resync after lost events compares
//! them with the server). And it must never block that loop: a watcher
//! that falls behind loses its oldest lines and gets a `resync` marker
//! instead.
//!
//! Protocol, one line each way, paths relative to the mount root and
//! starting with `/` (`/` is the root itself):
//!
//! ```text
//! watcher: watch /services/web/servers     (repeated; then)
//! watcher: end
//! daemon:  ready
//! daemon:  changed /services/web/servers   (for every change, see below)
//! daemon:  resync                          (lines were lost: assume all changed)
//! ```
//!
//! A subscribed path changes when its node's data changes, or it is created
//! or deleted, or (for a directory) a direct child is created or deleted.
//! A subscription to a directory's data file (`--data-name`) is one to the
//! directory node.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::zk::backend::NodeEventKind;
use crate::zk::path;
use crate::zk::{Change, Store, ZkBackend, ZkError};

/// Lines a watcher may have waiting before the oldest are dropped.
pub const QUEUE_LIMIT: usize = 1024;
/// Subscriptions one watcher may make.
const SUBSCRIPTION_LIMIT: usize = 4096;
/// How long a watcher may take to send its subscriptions.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The socket's name inside its directory.
const SOCKET_NAME: &str = "events.sock";

/// Loads a subscribed node (and its children) into the cache, so a resync
/// after lost events compares it with the server. Given the ZooKeeper path.
pub type Warm = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What one watcher has not been sent yet.
#[derive(Default, Debug)]
struct Queue {
    lines: VecDeque<String>,
    /// The paths in `lines` (a path waiting once need not wait twice).
    queued: HashSet<String>,
    /// Lines were dropped: the next thing sent is `resync`.
    overflowed: bool,
    /// The watcher hung up.
    closed: bool,
}

impl Queue {
    /// Queue `changed <reply>` unless it already waits; drop the oldest
    /// line beyond [`QUEUE_LIMIT`].
    fn push(&mut self, reply: &str) {
        if self.closed || self.queued.contains(reply) {
            return;
        }
        if self.lines.len() >= QUEUE_LIMIT
            && let Some(old) = self.lines.pop_front()
        {
            self.queued.remove(&old);
            self.overflowed = true;
        }
        self.queued.insert(reply.to_string());
        self.lines.push_back(reply.to_string());
    }

    /// Everything to send now, as protocol text.
    fn drain(&mut self) -> String {
        let mut out = String::new();
        if std::mem::take(&mut self.overflowed) {
            out.push_str("resync\n");
        }
        for line in self.lines.drain(..) {
            out.push_str("changed ");
            out.push_str(&line);
            out.push('\n');
        }
        self.queued.clear();
        out
    }
}

/// One connected watcher.
#[derive(Default)]
struct Subscriber {
    /// (ZooKeeper path of the node, the path as the watcher asked for it)
    paths: Vec<(String, String)>,
    queue: Mutex<Queue>,
    ready: Condvar,
}

impl Subscriber {
    fn offer(&self, changed: &str, kind: NodeEventKind) {
        let mut hit = false;
        let mut queue = lock(&self.queue);
        for (node, reply) in &self.paths {
            if concerns(node, changed, kind) {
                queue.push(reply);
                hit = true;
            }
        }
        drop(queue);
        if hit {
            self.ready.notify_one();
        }
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.ready.notify_one();
    }
}

/// Whether an event of `kind` at `changed` is a change of the subscribed
/// node `node`: the node itself, or a child appearing or vanishing.
fn concerns(node: &str, changed: &str, kind: NodeEventKind) -> bool {
    changed == node || (kind != NodeEventKind::DataChanged && path::parent(changed) == Some(node))
}

/// Load a subscribed `node` and its children into the cache (when it does
/// not exist, its parent's children): what a resync compares.
pub async fn warm<B: ZkBackend>(store: &Store<B>, node: &str) {
    if let Err(ZkError::NoNode) = store.children(node).await
        && let Some(parent) = path::parent(node)
    {
        let _ = store.children(parent).await;
    }
}

/// The subscriptions of every connected watcher.
pub struct EventHub {
    /// The ZooKeeper path of the mount root.
    root: String,
    /// `--data-name`: a subscription to `dir/<data_name>` is one to `dir`.
    data_name: String,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
}

impl EventHub {
    pub fn new(root: &str, data_name: &str) -> Self {
        EventHub {
            root: root.to_string(),
            data_name: data_name.to_string(),
            subscribers: Mutex::default(),
        }
    }

    /// Tell the watchers concerned of one change (a watch event: `path`
    /// absolute in the session's chroot). Never blocks on a watcher.
    pub fn publish(&self, changed: &str, kind: NodeEventKind) {
        for subscriber in lock(&self.subscribers).iter() {
            subscriber.offer(changed, kind);
        }
    }

    /// Tell the watchers what a resync found changed.
    pub fn publish_changes(&self, changes: &[Change]) {
        for change in changes {
            let kind = match change {
                Change::Data(_) => NodeEventKind::DataChanged,
                Change::Created(_) => NodeEventKind::Created,
                Change::Deleted(_) => NodeEventKind::Deleted,
            };
            self.publish(change.path(), kind);
        }
    }

    /// The ZooKeeper node a watcher's path (relative to the mount root,
    /// starting with `/`) stands for.
    fn node_of(&self, relative: &str) -> Result<String, String> {
        let Some(rest) = relative.strip_prefix('/') else {
            return Err(format!("path '{relative}' must start with '/'"));
        };
        let mut node = self.root.clone();
        let elements: Vec<&str> = rest.split('/').filter(|e| !e.is_empty()).collect();
        for (i, element) in elements.iter().enumerate() {
            if *element == "." || *element == ".." {
                return Err(format!("path '{relative}' must not contain . or .."));
            }
            if i + 1 == elements.len() && *element == self.data_name {
                break;
            }
            node = path::join(&node, element);
        }
        Ok(node)
    }

    fn add(&self, subscriber: Arc<Subscriber>) {
        lock(&self.subscribers).push(subscriber);
    }

    fn remove(&self, subscriber: &Arc<Subscriber>) {
        lock(&self.subscribers).retain(|s| !Arc::ptr_eq(s, subscriber));
    }
}

/// The socket's directory, for removal on every way out of the daemon.
static SOCKET_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Remove the socket and its directory (at unmount; idempotent).
pub fn remove_socket() {
    if let Some(dir) = SOCKET_DIR.get() {
        let _ = std::fs::remove_file(dir.join(SOCKET_NAME));
        let _ = std::fs::remove_dir(dir);
    }
}

/// Where socket directories may go, in order of preference:
/// `$XDG_RUNTIME_DIR`, `/run/zkfs` for root, the temp directory.
fn socket_bases() -> Vec<PathBuf> {
    let mut bases = Vec::new();
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && dir.is_absolute()
        && dir.is_dir()
    {
        bases.push(dir);
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let run = PathBuf::from("/run/zkfs");
        if std::fs::DirBuilder::new().mode(0o755).create(&run).is_ok() || run.is_dir() {
            bases.push(run);
        }
    }
    bases.push(std::env::temp_dir());
    bases
}

/// A fresh private directory under `base`.
fn private_dir(base: &Path) -> Result<PathBuf, String> {
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let candidate = base.join(format!(
            "zkfs-events-{}-{:x}",
            std::process::id(),
            nanos.wrapping_add(attempt)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", candidate.display())),
        }
    }
    Err(format!("no fresh directory name under {}", base.display()))
}

/// The bound socket, not yet served.
pub struct EventSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl EventSocket {
    /// Create the private directory and bind the socket in it, in the
    /// first place of [`socket_bases`] where that works.
    pub fn bind() -> Result<EventSocket, String> {
        let mut failures = Vec::new();
        for base in socket_bases() {
            match Self::bind_in(&base) {
                Ok(socket) => return Ok(socket),
                Err(e) => failures.push(e),
            }
        }
        Err(failures.join("; "))
    }

    fn bind_in(base: &Path) -> Result<EventSocket, String> {
        let dir = private_dir(base)?;
        let path = dir.join(SOCKET_NAME);
        let bound = (|| {
            // The umask may have narrowed the directory; never widened.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let listener =
                UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(listener)
        })();
        match bound {
            Ok(listener) => {
                let _ = SOCKET_DIR.set(dir);
                Ok(EventSocket { listener, path })
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept watchers in a thread of their own (two threads per watcher:
    /// one sends, one notices the hang-up). `warm` runs on `runtime`.
    pub fn serve(
        self,
        hub: Arc<EventHub>,
        warm: Warm,
        runtime: tokio::runtime::Handle,
    ) -> Result<(), String> {
        let EventSocket { listener, path } = self;
        std::thread::Builder::new()
            .name("zkfs-events".into())
            .spawn(move || {
                info!(socket = %path.display(), "serving change notifications");
                for stream in listener.incoming() {
                    let stream = match stream {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(error = %e, "change notifications: accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    let (hub, warm, runtime) = (hub.clone(), warm.clone(), runtime.clone());
                    let spawned = std::thread::Builder::new()
                        .name("zkfs-watcher".into())
                        .spawn(move || {
                            if let Err(e) = serve_watcher(stream, &hub, &warm, &runtime) {
                                debug!(error = %e, "watcher connection ended");
                            }
                        });
                    if let Err(e) = spawned {
                        warn!(error = %e, "cannot start a thread for a watcher");
                    }
                }
            })
            .map(|_| ())
            .map_err(|e| format!("cannot start the change notification thread: {e}"))
    }
}

/// The peer's uid must be ours or root's (the socket's mode says so too).
fn peer_allowed(stream: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a connected socket and a buffer of the stated length.
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(stream),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    rc == 0 && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}

fn serve_watcher(
    stream: UnixStream,
    hub: &EventHub,
    warm: &Warm,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    if !peer_allowed(&stream) {
        return Err("watcher of another user refused".into());
    }
    stream
        .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut subscriber = Subscriber::default();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
            return Err("hung up before subscribing".into());
        }
        let line = line.trim_end_matches('\n');
        if line == "end" {
            break;
        }
        let answer = match line.strip_prefix("watch ") {
            Some(relative) if subscriber.paths.len() < SUBSCRIPTION_LIMIT => hub
                .node_of(relative)
                .map(|node| (node, relative.to_string())),
            Some(_) => Err(format!("at most {SUBSCRIPTION_LIMIT} paths")),
            None => Err(format!("unknown request '{line}'")),
        };
        match answer {
            Ok(subscription) => subscriber.paths.push(subscription),
            Err(message) => {
                let _ = writeln!(writer, "error {message}");
                return Err(message);
            }
        }
    }
    let nodes: Vec<String> = subscriber.paths.iter().map(|(n, _)| n.clone()).collect();
    let subscriber = Arc::new(subscriber);
    hub.add(subscriber.clone());
    let result = (|| {
        for node in nodes {
            runtime.block_on(warm(node));
        }
        writer
            .write_all(b"ready\n")
            .map_err(|e| format!("cannot answer: {e}"))?;
        debug!(paths = subscriber.paths.len(), "watcher subscribed");
        // The hang-up (or anything else it sends) ends the subscription.
        let watcher = subscriber.clone();
        let mut stream = reader.into_inner();
        stream.set_read_timeout(None).map_err(|e| e.to_string())?;
        std::thread::Builder::new()
            .name("zkfs-watcher-eof".into())
            .spawn(move || {
                let mut byte = [0u8; 64];
                while let Ok(n) = std::io::Read::read(&mut stream, &mut byte) {
                    if n == 0 {
                        break;
                    }
                }
                watcher.close();
            })
            .map_err(|e| e.to_string())?;
        loop {
            let text = {
                let mut queue = lock(&subscriber.queue);
                while queue.lines.is_empty() && !queue.overflowed && !queue.closed {
                    queue = subscriber
                        .ready
                        .wait(queue)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if queue.closed {
                    return Ok(());
                }
                queue.drain()
            };
            writer
                .write_all(text.as_bytes())
                .map_err(|e| format!("cannot send: {e}"))?;
        }
    })();
    subscriber.close();
    hub.remove(&subscriber);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_changes_with_itself_and_its_direct_children_appearing_or_vanishing() {
        use NodeEventKind::*;
        assert!(concerns("/r/a", "/r/a", DataChanged));
        assert!(concerns("/r/a", "/r/a", Created));
        assert!(concerns("/r/a", "/r/a", Deleted));
        assert!(concerns("/r/a", "/r/a/x", Created));
        assert!(concerns("/r/a", "/r/a/x", Deleted));
        assert!(!concerns("/r/a", "/r/a/x", DataChanged));
        assert!(!concerns("/r/a", "/r/a/x/y", Created));
        assert!(!concerns("/r/a", "/r/ab", Created));
        assert!(!concerns("/r/a", "/r", DataChanged));
    }

    #[test]
    fn a_socket_that_cannot_be_bound_leaves_no_directory_behind() {
        // Longer than a unix socket address may be (108 bytes).
        let base = std::env::temp_dir().join(format!(
            "zkfs-events-unit-{}-{}",
            std::process::id(),
            "x".repeat(120)
        ));
        std::fs::create_dir_all(&base).expect("base");
        let failure = EventSocket::bind_in(&base).err();
        let left = std::fs::read_dir(&base).expect("list").count();
        std::fs::remove_dir(&base).expect("cleanup");
        assert!(failure.is_some(), "bound a socket path that is too long");
        assert_eq!(left, 0, "the private directory was removed");
        assert!(
            EventSocket::bind_in(Path::new("/nonexistent/zkfs")).is_err(),
            "no directory to create it in"
        );
    }

    #[test]
    fn watcher_paths_map_to_nodes_under_the_root() {
        let hub = EventHub::new("/app", ".data");
        assert_eq!(hub.node_of("/").as_deref(), Ok("/app"));
        assert_eq!(hub.node_of("/a/b").as_deref(), Ok("/app/a/b"));
        assert_eq!(hub.node_of("/a/.data").as_deref(), Ok("/app/a"));
        assert!(hub.node_of("a").is_err());
        assert!(hub.node_of("/a/../b").is_err());
        let top = EventHub::new("/", "_d");
        assert_eq!(top.node_of("/x").as_deref(), Ok("/x"));
        assert_eq!(top.node_of("/_d").as_deref(), Ok("/"));
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_says_resync() {
        let mut q = Queue::default();
        q.push("/a");
        q.push("/a");
        assert_eq!(q.drain(), "changed /a\n", "a waiting path waits once");
        for i in 0..QUEUE_LIMIT + 2 {
            q.push(&format!("/n{i}"));
        }
        let text = q.drain();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), QUEUE_LIMIT + 1);
        assert_eq!(lines[0], "resync");
        assert_eq!(lines[1], "changed /n2", "the two oldest were dropped");
        assert_eq!(lines[QUEUE_LIMIT], format!("changed /n{}", QUEUE_LIMIT + 1));
        assert_eq!(q.drain(), "", "nothing left, no second resync");
    }

    #[test]
    fn publish_reaches_only_subscribers_concerned() {
        let hub = EventHub::new("/app", ".data");
        let a = Arc::new(Subscriber {
            paths: vec![("/app/dir".into(), "/dir".into())],
            ..Default::default()
        });
        let b = Arc::new(Subscriber {
            paths: vec![("/app/file".into(), "/file".into())],
            ..Default::default()
        });
        hub.add(a.clone());
        hub.add(b.clone());
        hub.publish("/app/dir/x", NodeEventKind::Created);
        hub.publish_changes(&[Change::Data("/app/dir/x".into())]);
        assert_eq!(lock(&a.queue).drain(), "changed /dir\n");
        assert_eq!(lock(&b.queue).drain(), "");
        hub.remove(&a);
        hub.publish("/app/dir", NodeEventKind::DataChanged);
        assert_eq!(lock(&a.queue).drain(), "");
    }
}
