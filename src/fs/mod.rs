//! The filesystem core: how ZooKeeper nodes appear as files, directories and
//! extended attributes, one async method per filesystem operation.
//!
//! Owns the inode table, validated names, the mapping rules (contract §3), open
//! handles and the error → errno table. It knows nothing of fuser or the
//! kernel protocol (the `crate::fuse` adapter calls it) and never talks to
//! ZooKeeper directly: everything goes through [`crate::zk::Store`].
//! Cache hits complete without awaiting anything, so the adapter can answer
//! them on the calling thread.

pub mod attr;
pub mod attrs;
pub mod core;
pub mod error;
pub mod glob;
pub mod handle;
pub mod held;
pub mod inode;
pub mod listing;
pub mod name;
pub mod online;
pub mod overlay;
pub mod pointer;
pub mod registry;
pub mod supervisor;
pub mod write;
pub mod xattr;

pub use self::core::{Entry, FsConfig, Invalidation, Invalidator, MountStatus, Opens, ZkFs};
pub use attr::{Attr, FileKind};
pub use error::FsError;
pub use handle::{OpenMode, Opened, PageCache};
pub use write::RenameFlags;

#[cfg(test)]
mod listing_tests;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
