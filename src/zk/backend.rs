//! The narrow interface between the cache and a ZooKeeper implementation.
//!
//! [`ZkBackend`] is what the [`crate::zk::store::Store`] needs from ZooKeeper:
//! reads with a `Stat`, plus the connection state. The real implementation is
//! [`crate::zk::session::ZkSession`]; tests use an in-memory fake. Types here
//! are our own so that nothing above this layer depends on the client crate.

use std::fmt;
use std::future::Future;

/// Our copy of ZooKeeper's `Stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStat {
    pub czxid: i64,
    pub mzxid: i64,
    pub pzxid: i64,
    /// Creation time, milliseconds since the epoch.
    pub ctime: i64,
    /// Last data change, milliseconds since the epoch.
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
}

impl NodeStat {
    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral_owner != 0
    }
}

/// One ACL entry, e.g. `world:anyone` with `cdrwa`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AclEntry {
    pub scheme: String,
    pub id: String,
    /// ZooKeeper permission bits: READ=1, WRITE=2, CREATE=4, DELETE=8, ADMIN=16.
    pub perms: i32,
}

impl fmt::Display for AclEntry {
    /// `scheme:id:cdrwa` as `zkCli getAcl` users know it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letters: String = [(4, 'c'), (8, 'd'), (1, 'r'), (2, 'w'), (16, 'a')]
            .iter()
            .filter(|(bit, _)| self.perms & bit != 0)
            .map(|(_, c)| *c)
            .collect();
        write!(f, "{}:{}:{}", self.scheme, self.id, letters)
    }
}

/// Errors of ZooKeeper calls, reduced to what the layers above act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZkError {
    NoNode,
    NodeExists,
    NotEmpty,
    BadVersion,
    NoAuth,
    /// Not connected, or the connection dropped before the answer came.
    ConnectionLoss,
    SessionExpired,
    /// Our own deadline (`--op-timeout`) passed before ZooKeeper answered.
    Timeout,
    /// The server does not implement the request (e.g. persistent watches before 3.6).
    Unimplemented,
    /// A write whose answer was lost, and that reading the nodes again could
    /// not settle (changed by another client since, or no server within the
    /// limit): it may have been applied.
    OutcomeUnknown,
    /// A create under an ephemeral node (they cannot have children).
    NoChildrenForEphemerals,
    Other(String),
}

impl ZkError {
    /// Errors that say nothing about the node, only about our link to ZooKeeper.
    pub fn is_connectivity(&self) -> bool {
        matches!(
            self,
            ZkError::ConnectionLoss | ZkError::SessionExpired | ZkError::Timeout
        )
    }
}

impl fmt::Display for ZkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZkError::NoNode => f.write_str("NoNode"),
            ZkError::NodeExists => f.write_str("NodeExists"),
            ZkError::NotEmpty => f.write_str("NotEmpty"),
            ZkError::BadVersion => f.write_str("BadVersion"),
            ZkError::NoAuth => f.write_str("NoAuth"),
            ZkError::ConnectionLoss => f.write_str("ConnectionLoss"),
            ZkError::SessionExpired => f.write_str("SessionExpired"),
            ZkError::Timeout => f.write_str("operation timed out"),
            ZkError::Unimplemented => f.write_str("Unimplemented"),
            ZkError::OutcomeUnknown => f.write_str(
                "outcome unknown: the answer was lost and the write may have been applied",
            ),
            ZkError::NoChildrenForEphemerals => f.write_str("NoChildrenForEphemerals"),
            ZkError::Other(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for ZkError {}

/// How a node is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMode {
    Persistent,
    /// Owned by this mount's session; vanishes when the session ends.
    Ephemeral,
}

/// One operation of a ZooKeeper `multi` transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// `acl: None` means the mount's default ACL for new nodes.
    Create {
        path: String,
        data: Vec<u8>,
        mode: CreateMode,
        acl: Option<Vec<AclEntry>>,
    },
    SetData {
        path: String,
        data: Vec<u8>,
        version: Option<i32>,
    },
    Delete {
        path: String,
        version: Option<i32>,
    },
}

impl WriteOp {
    /// The node this op changes.
    pub fn path(&self) -> &str {
        match self {
            WriteOp::Create { path, .. }
            | WriteOp::SetData { path, .. }
            | WriteOp::Delete { path, .. } => path,
        }
    }
}

/// Result of one successful `multi` operation, in the order of the ops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteResult {
    Created(NodeStat),
    Set(NodeStat),
    Deleted,
}

/// What a watch event says happened to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeEventKind {
    Created,
    Deleted,
    DataChanged,
}

/// A node event from the persistent recursive watch, path absolute in the
/// client's chroot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEvent {
    pub kind: NodeEventKind,
    pub path: String,
}

/// The answer to [`ZkBackend::get_data_batch`].
pub type BatchAnswer = Result<Vec<Result<(Vec<u8>, NodeStat), ZkError>>, ZkError>;

/// The reads the cache needs. Every call must finish in bounded time (the
/// real implementation applies `--op-timeout`), and must send its request when
/// the method is called, not when the future is first polled: the store relies
/// on that to pipeline many requests by calling first and awaiting later.
pub trait ZkBackend: Send + Sync + 'static {
    fn get_data(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<(Vec<u8>, NodeStat), ZkError>> + Send;
    fn get_children(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<(Vec<String>, NodeStat), ZkError>> + Send;
    fn get_acl(&self, path: &str) -> impl Future<Output = Result<Vec<AclEntry>, ZkError>> + Send;
    /// `getData` of every path in one request (a ZooKeeper 3.6+ multi-read).
    /// The outer error means the request as a whole failed and nothing is
    /// known of any node; otherwise one answer per path, in order.
    fn get_data_batch(&self, paths: &[&str]) -> impl Future<Output = BatchAnswer> + Send;
    /// `sync`: the server the session is connected to catches up with the
    /// leader (everything committed before this reached the leader) before
    /// it answers, so reads sent after the answer see at least that.
    fn sync(&self, path: &str) -> impl Future<Output = Result<(), ZkError>> + Send;
    /// Whether the session is connected right now (reads of stale entries go
    /// to the server only then; otherwise the last known value is served).
    fn is_connected(&self) -> bool;
    /// The current session's id (0 when unknown): the `ephemeralOwner` of
    /// nodes created now.
    fn session_id(&self) -> i64 {
        0
    }
    /// Whether `owner` is a session this mount has had (the current one or
    /// an earlier one): the registration supervisor's test for "ours".
    fn is_own_session(&self, owner: i64) -> bool {
        owner != 0 && owner == self.session_id()
    }

    /// Create a node; `acl: None` means the mount's default ACL.
    fn create(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        acl: Option<&[AclEntry]>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send;
    /// `setData`; `version: None` overwrites whatever is there.
    fn set_data(
        &self,
        path: &str,
        data: &[u8],
        version: Option<i32>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send;
    fn delete(
        &self,
        path: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<(), ZkError>> + Send;
    /// All of `ops` or none of them.
    fn multi(
        &self,
        ops: &[WriteOp],
    ) -> impl Future<Output = Result<Vec<WriteResult>, ZkError>> + Send;
}

impl<T: ZkBackend> ZkBackend for std::sync::Arc<T> {
    fn get_data(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<(Vec<u8>, NodeStat), ZkError>> + Send {
        (**self).get_data(path)
    }
    fn get_children(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<(Vec<String>, NodeStat), ZkError>> + Send {
        (**self).get_children(path)
    }
    fn get_acl(&self, path: &str) -> impl Future<Output = Result<Vec<AclEntry>, ZkError>> + Send {
        (**self).get_acl(path)
    }
    fn get_data_batch(&self, paths: &[&str]) -> impl Future<Output = BatchAnswer> + Send {
        (**self).get_data_batch(paths)
    }
    fn sync(&self, path: &str) -> impl Future<Output = Result<(), ZkError>> + Send {
        (**self).sync(path)
    }
    fn is_connected(&self) -> bool {
        (**self).is_connected()
    }
    fn session_id(&self) -> i64 {
        (**self).session_id()
    }
    fn is_own_session(&self, owner: i64) -> bool {
        (**self).is_own_session(owner)
    }
    fn create(
        &self,
        path: &str,
        data: &[u8],
        mode: CreateMode,
        acl: Option<&[AclEntry]>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send {
        (**self).create(path, data, mode, acl)
    }
    fn set_data(
        &self,
        path: &str,
        data: &[u8],
        version: Option<i32>,
    ) -> impl Future<Output = Result<NodeStat, ZkError>> + Send {
        (**self).set_data(path, data, version)
    }
    fn delete(
        &self,
        path: &str,
        version: Option<i32>,
    ) -> impl Future<Output = Result<(), ZkError>> + Send {
        (**self).delete(path, version)
    }
    fn multi(
        &self,
        ops: &[WriteOp],
    ) -> impl Future<Output = Result<Vec<WriteResult>, ZkError>> + Send {
        (**self).multi(ops)
    }
}
