//! Filesystem errors and the one table that turns them into errno values.

use std::fmt;

use tracing::Level;

use crate::zk::ZkError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsError {
    /// No such node (or name the node cannot have).
    NotFound(String),
    NotDir(String),
    IsDir(String),
    /// A modification on a read-only mount.
    ReadOnly(String),
    /// The inode no longer denotes the node (deleted, re-created or changed kind).
    Stale(String),
    /// A file's content inode shows an older version than the node has now
    /// (each version is an inode of its own).
    Superseded(String),
    /// A read of a superseded version whose bytes are no longer held.
    VersionGone(String),
    /// A write (a write open, a truncate by path) on an inode whose pages
    /// readers on this mount use: the name was given a fresh inode and the
    /// kernel retries the call on it (after `ESTALE` it looks the path up
    /// again, once).
    Reopen(String),
    /// No such extended attribute.
    NoXattr(String),
    /// An attribute namespace zkfs does not have (security.*, system.*, trusted.*).
    XattrUnsupported(String),
    BadFileHandle,
    /// readlink on something that is not a pointer.
    NotSymlink(String),
    /// A name ZooKeeper cannot store, with the reason.
    InvalidName(String, String),
    /// A name longer than 255 bytes (statfs's f_namemax).
    NameTooLong(String),
    Exists(String),
    NotEmpty(String),
    /// (path, size asked for, limit)
    TooBig(String, usize, usize),
    /// Someone else changed the node since this mount read it.
    Conflict {
        path: String,
        detail: String,
    },
    /// Refused by design (hard links, chmod, device nodes, ...).
    NotPermitted(String, &'static str),
    Unsupported(String, &'static str),
    Busy(String, &'static str),
    /// Cannot be done in one transaction; `mv` falls back to copy + delete.
    CrossDevice(String, &'static str),
    /// The request's handler panicked (a bug): answered, not left hanging.
    Internal(String),
    /// A ZooKeeper call failed.
    Zk {
        path: String,
        op: &'static str,
        error: ZkError,
    },
}

impl FsError {
    /// The refusal of a name this mount was asked to create.
    pub fn bad_name(shown: String, e: super::name::NameError) -> Self {
        match e {
            super::name::NameError::TooLong => FsError::NameTooLong(shown),
            e => FsError::InvalidName(shown, e.to_string()),
        }
    }

    pub fn zk(path: &str, op: &'static str, error: ZkError) -> Self {
        match error {
            ZkError::NoNode => FsError::NotFound(path.to_string()),
            error => FsError::Zk {
                path: path.to_string(),
                op,
                error,
            },
        }
    }

    /// The errno for this error. Every judgement call is written down here.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) => libc::ENOENT,
            FsError::NotDir(_) => libc::ENOTDIR,
            FsError::IsDir(_) => libc::EISDIR,
            FsError::ReadOnly(_) => libc::EROFS,
            // POSIX's "stale file handle": the object behind an inode or open
            // file changed identity on the server.
            FsError::Stale(_) => libc::ESTALE,
            // The inode is of another version: as for a changed identity;
            // the kernel answers it from a path-based call (`stat`, `open`)
            // by looking the name up again, which finds the new version's
            // inode.
            FsError::Superseded(_) => libc::ESTALE,
            // The descriptor's version cannot be read any more, and no
            // other version's bytes may be given in its place; reopening by
            // name reads the current one.
            FsError::VersionGone(_) => libc::ESTALE,
            // Not a failure the caller sees: the kernel answers ESTALE from
            // a path-based open or truncate by looking the path up again
            // (LOOKUP_REVAL) and retrying once, on the fresh inode.
            FsError::Reopen(_) => libc::ESTALE,
            FsError::NoXattr(_) => libc::ENODATA,
            FsError::XattrUnsupported(_) => libc::EOPNOTSUPP,
            FsError::BadFileHandle => libc::EBADF,
            FsError::NotSymlink(_) => libc::EINVAL,
            FsError::InvalidName(..) => libc::EINVAL,
            // POSIX's answer for a component longer than NAME_MAX, for
            // lookups and creates alike (tools probe for it).
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NotEmpty(_) => libc::ENOTEMPTY,
            // Past --max-data (the server's jute.maxbuffer would refuse it).
            FsError::TooBig(..) => libc::EFBIG,
            // A version conflict on close/fsync/rename: the handle's view of
            // the node is stale, as NFS reports it.
            FsError::Conflict { .. } => libc::ESTALE,
            FsError::NotPermitted(..) => libc::EPERM,
            FsError::Unsupported(..) => libc::EINVAL,
            FsError::Busy(..) => libc::EBUSY,
            // What mv(1) understands as "copy, then delete".
            FsError::CrossDevice(..) => libc::EXDEV,
            // Whatever the handler did is unknown: the caller must not take
            // it as done, nor as a refusal of its request.
            FsError::Internal(_) => libc::EIO,
            FsError::Zk { error, .. } => match error {
                ZkError::NoNode => libc::ENOENT,
                ZkError::NodeExists => libc::EEXIST,
                ZkError::NotEmpty => libc::ENOTEMPTY,
                // Someone else changed the node since we read it.
                ZkError::BadVersion => libc::ESTALE,
                ZkError::NoAuth => libc::EACCES,
                // Our own deadline (--op-timeout) passed.
                ZkError::Timeout => libc::ETIMEDOUT,
                // Not connected and nothing cached to serve: an I/O error, not
                // ENOTCONN, which users read as "the FUSE daemon died".
                ZkError::ConnectionLoss | ZkError::SessionExpired => libc::EIO,
                ZkError::Unimplemented => libc::ENOSYS,
                // Neither success nor a failure that stays one: EIO, the
                // error that promises nothing (SEMANTICS "Unknown outcome").
                ZkError::OutcomeUnknown => libc::EIO,
                // Only `create` meets it, and maps it to EPERM itself.
                ZkError::NoChildrenForEphemerals => libc::EPERM,
                ZkError::Other(_) => libc::EIO,
            },
        }
    }

    /// How loudly to log this error: routine answers at debug, trouble at warn.
    pub fn level(&self) -> Level {
        match self {
            FsError::NotFound(_)
            | FsError::NoXattr(_)
            | FsError::XattrUnsupported(_)
            | FsError::Reopen(_)
            // Routine on read-only mounts: a `stat` by path of a file that
            // changed since the kernel looked it up, retried by the kernel
            // on the new version's inode (55 warn lines for 830 changes
            // before).
            | FsError::Superseded(_)
            | FsError::NotDir(_)
            | FsError::IsDir(_)
            | FsError::Exists(_)
            | FsError::NotEmpty(_) => Level::DEBUG,
            _ => Level::WARN,
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::NotFound(p) => write!(f, "{p}: no such node"),
            FsError::NotDir(p) => write!(f, "{p}: not a directory"),
            FsError::IsDir(p) => write!(f, "{p}: is a directory"),
            FsError::ReadOnly(p) => write!(f, "{p}: mount is read-only"),
            FsError::Stale(p) => write!(
                f,
                "{p}: node changed identity (deleted, re-created or changed kind)"
            ),
            FsError::Superseded(p) => write!(
                f,
                "{p}: the node has a newer version than this inode shows (a lookup by name finds it)"
            ),
            FsError::VersionGone(p) => write!(
                f,
                "{p}: the version this descriptor reads is no longer held (evicted by \
                 --cache-size after the node changed); reopen it to read the current one"
            ),
            FsError::Reopen(p) => write!(
                f,
                "{p}: readers on this mount read this inode's pages; \
                 the write goes to a fresh inode (the kernel retries)"
            ),
            FsError::NoXattr(p) => write!(f, "{p}: no such extended attribute"),
            FsError::XattrUnsupported(p) => {
                write!(f, "{p}: only user.* extended attributes exist here")
            }
            FsError::BadFileHandle => write!(f, "unknown file handle"),
            FsError::NotSymlink(p) => write!(f, "{p}: not a pointer node"),
            FsError::InvalidName(p, why) => write!(f, "{p}: invalid name: {why}"),
            FsError::NameTooLong(p) => write!(f, "{p}: name longer than 255 bytes"),
            FsError::Exists(p) => write!(f, "{p}: node exists"),
            FsError::NotEmpty(p) => write!(f, "{p}: node has children"),
            FsError::TooBig(p, size, max) => write!(
                f,
                "{p}: {size} bytes exceed the data limit of {max} bytes (--max-data, server jute.maxbuffer)"
            ),
            FsError::Conflict { path, detail } => write!(f, "{path}: write conflict: {detail}"),
            FsError::NotPermitted(p, why) => write!(f, "{p}: {why}"),
            FsError::Unsupported(p, what) => write!(f, "{p}: {what} is not supported"),
            FsError::Busy(p, why) => write!(f, "{p}: {why}"),
            FsError::CrossDevice(p, why) => write!(f, "{p}: {why}"),
            FsError::Internal(p) => write!(
                f,
                "{p}: the request's handler panicked (a bug in zkfs; the panic message is on \
                 stderr); answered EIO"
            ),
            FsError::Zk { path, op, error } => write!(f, "{path}: ZooKeeper {op} failed: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_table() {
        assert_eq!(
            FsError::zk("/a", "getData", ZkError::NoNode).errno(),
            libc::ENOENT
        );
        assert_eq!(
            FsError::zk("/a", "setData", ZkError::BadVersion).errno(),
            libc::ESTALE
        );
        assert_eq!(
            FsError::zk("/a", "getData", ZkError::NoAuth).errno(),
            libc::EACCES
        );
        assert_eq!(
            FsError::zk("/a", "getData", ZkError::Timeout).errno(),
            libc::ETIMEDOUT
        );
        assert_eq!(FsError::ReadOnly("/a".into()).errno(), libc::EROFS);
    }

    #[test]
    fn an_older_version_is_routine_a_lost_one_is_not() {
        // The kernel retries a path's stat of an older version on the new
        // version's inode: nobody sees it fail. A descriptor whose version
        // is gone does see it.
        let older = FsError::Superseded("/a".into());
        assert_eq!((older.errno(), older.level()), (libc::ESTALE, Level::DEBUG));
        let gone = FsError::VersionGone("/a".into());
        assert_eq!((gone.errno(), gone.level()), (libc::ESTALE, Level::WARN));
        assert!(!older.to_string().contains("identity"), "{older}");
    }
}
