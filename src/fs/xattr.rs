//! Extended attribute names and values (contract §3): `user.zk.*` on every
//! node, `user.zk.data` on directories, `user.zkfs.*` on the mount root.

use crate::zk::NodeStat;

/// Stat-derived attributes every node carries (besides `user.zk.acl`).
pub const STAT_NAMES: &[&str] = &[
    "user.zk.version",
    "user.zk.cversion",
    "user.zk.aversion",
    "user.zk.czxid",
    "user.zk.mzxid",
    "user.zk.pzxid",
    "user.zk.ctime",
    "user.zk.mtime",
    "user.zk.ephemeral_owner",
    "user.zk.num_children",
    "user.zk.data_length",
];

pub const ACL: &str = "user.zk.acl";
pub const DATA: &str = "user.zk.data";
pub const MOUNT_PREFIX: &str = "user.zkfs.";

/// The value of a stat attribute, or `None` for other names.
pub fn stat_value(name: &str, stat: &NodeStat) -> Option<String> {
    Some(match name {
        "user.zk.version" => stat.version.to_string(),
        "user.zk.cversion" => stat.cversion.to_string(),
        "user.zk.aversion" => stat.aversion.to_string(),
        "user.zk.czxid" => format!("{:#x}", stat.czxid),
        "user.zk.mzxid" => format!("{:#x}", stat.mzxid),
        "user.zk.pzxid" => format!("{:#x}", stat.pzxid),
        // Milliseconds since the epoch, as ZooKeeper reports them.
        "user.zk.ctime" => stat.ctime.to_string(),
        "user.zk.mtime" => stat.mtime.to_string(),
        "user.zk.ephemeral_owner" => format!("{:#x}", stat.ephemeral_owner),
        "user.zk.num_children" => stat.num_children.to_string(),
        "user.zk.data_length" => stat.data_length.to_string(),
        _ => return None,
    })
}
