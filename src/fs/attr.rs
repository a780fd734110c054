//! The mapping rules of contract §3: which kind a node appears as, and its
//! attributes. Pure functions of cached state and mount options.

use crate::zk::{AclEntry, NodeStat, NodeView};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    Directory,
    RegularFile,
    Symlink,
}

/// Attributes of one inode, independent of fuser's types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    /// mtime = ctime, nanoseconds since the epoch, strictly increasing per change.
    pub mtime_ns: u64,
    /// Node creation time, milliseconds since the epoch.
    pub crtime_ms: i64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Ownership and permission options of the mount.
#[derive(Clone, Debug)]
pub struct Presentation {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub read_only: bool,
    /// Digest user of the session, to judge which ACL entries apply to us.
    pub identity: Option<String>,
    /// Per-node owner, group and mode (`--attrs`), over the values above.
    pub attrs: super::attrs::AttrRules,
}

/// Whether an ACL lets this session write: an entry with WRITE for
/// `world:anyone`, for our digest user, or of a scheme we cannot judge
/// here (ip, sasl, x509, ...; the server decides, EACCES if it refuses).
pub fn may_write(acl: &[AclEntry], identity: Option<&str>) -> bool {
    acl.iter()
        .filter(|a| a.perms & 2 != 0)
        .any(|a| match a.scheme.as_str() {
            "world" => a.id == "anyone",
            "digest" => identity.is_some_and(|user| a.id.split(':').next() == Some(user)),
            "auth" => identity.is_some(),
            _ => true,
        })
}

/// The kind a node appears as.
///
/// - the mount root is always a directory;
/// - an ephemeral node is a file (it cannot have children);
/// - a node with children is a directory;
/// - a pointer (see `pointer.rs`) is a symlink;
/// - a persistent childless node with empty data is a directory (so empty
///   registration parents can be listed), unless this mount created it as a file;
/// - anything else is a regular file.
pub fn node_kind(
    stat: &NodeStat,
    is_root: bool,
    created_as_file: bool,
    is_pointer: bool,
) -> FileKind {
    if is_root {
        FileKind::Directory
    } else if stat.is_ephemeral() {
        FileKind::RegularFile
    } else if stat.num_children > 0 {
        FileKind::Directory
    } else if is_pointer {
        FileKind::Symlink
    } else if stat.data_length == 0 && !created_as_file {
        FileKind::Directory
    } else {
        FileKind::RegularFile
    }
}

/// Attributes of the node `path` itself (role `Node`) or of its data file.
pub fn attr_of(
    ino: u64,
    kind: FileKind,
    path: &str,
    view: &NodeView,
    nlink: u32,
    presentation: &Presentation,
) -> Attr {
    let owner = super::attrs::owner(presentation, path, kind);
    let mut perm = owner.perm;
    let acl_denies = view
        .acl
        .as_ref()
        .is_some_and(|acl| !may_write(acl, presentation.identity.as_deref()));
    if (presentation.read_only || acl_denies) && kind != FileKind::Symlink {
        perm &= !0o222;
    }
    let size = match kind {
        FileKind::Directory => 0,
        _ => view.stat.data_length.max(0) as u64,
    };
    Attr {
        ino,
        kind,
        size,
        mtime_ns: view.change_time_ns,
        crtime_ms: view.stat.ctime,
        perm,
        nlink,
        uid: owner.uid,
        gid: owner.gid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(data_length: i32, num_children: i32, ephemeral_owner: i64) -> NodeStat {
        NodeStat {
            data_length,
            num_children,
            ephemeral_owner,
            ..NodeStat::default()
        }
    }

    #[test]
    fn write_permission_from_acl() {
        let entry = |scheme: &str, id: &str, perms| AclEntry {
            scheme: scheme.into(),
            id: id.into(),
            perms,
        };
        assert!(may_write(&[entry("world", "anyone", 31)], None));
        assert!(!may_write(&[entry("world", "anyone", 1)], None));
        let alice = [
            entry("digest", "alice:hash=", 31),
            entry("world", "anyone", 1),
        ];
        assert!(may_write(&alice, Some("alice")));
        assert!(!may_write(&alice, Some("bob")));
        assert!(!may_write(&alice, None));
    }

    #[test]
    fn kinds() {
        assert_eq!(
            node_kind(&stat(5, 0, 0), false, false, false),
            FileKind::RegularFile
        );
        assert_eq!(
            node_kind(&stat(5, 2, 0), false, false, false),
            FileKind::Directory
        );
        assert_eq!(
            node_kind(&stat(0, 0, 0), false, false, false),
            FileKind::Directory
        );
        assert_eq!(
            node_kind(&stat(0, 0, 0), false, true, false),
            FileKind::RegularFile
        );
        assert_eq!(
            node_kind(&stat(0, 0, 77), false, false, false),
            FileKind::RegularFile
        );
        assert_eq!(
            node_kind(&stat(5, 0, 0), true, false, false),
            FileKind::Directory
        );
        assert_eq!(
            node_kind(&stat(5, 0, 0), false, false, true),
            FileKind::Symlink
        );
        assert_eq!(
            node_kind(&stat(5, 1, 0), false, false, true),
            FileKind::Directory
        );
        assert_eq!(
            node_kind(&stat(5, 0, 9), false, false, true),
            FileKind::RegularFile
        );
    }
}
