//! ZooKeeper session and node cache.
//!
//! Owns everything that talks to ZooKeeper or remembers what it said: the
//! [`ZkBackend`] abstraction (implemented by the real [`session::ZkSession`] and,
//! in tests, by [`fake::FakeZk`]), the in-memory [`cache::NodeCache`] and the
//! [`store::Store`] that keeps that cache coherent from watch events.
//!
//! It knows nothing about inodes, file kinds or FUSE: it deals in ZooKeeper
//! paths, data and `Stat`s only. The filesystem core (`crate::fs`) builds the
//! POSIX view on top of it.

pub mod backend;
pub mod bulk;
pub mod cache;
#[cfg(test)]
pub mod fake;
pub mod host;
pub mod join;
pub mod path;
pub mod session;
pub mod snapshot;
pub mod store;

pub use backend::{
    AclEntry, CreateMode, NodeEvent, NodeStat, WriteOp, WriteResult, ZkBackend, ZkError,
};
pub use store::{Change, Exclusive, NodeView, Store};
