//! Pointer nodes (contract §5): a childless persistent node whose data is the
//! absolute path of an existing node inside the mounted subtree (inside the
//! chroot, or, data starting with the chroot, as a client without it wrote
//! it) is shown as a symlink. Pure path arithmetic here; the core decides
//! when to apply it.

use std::path::{Component, Path};

use super::name::NodeName;
use crate::zk::path;

/// Data longer than this is never a pointer (and is not read to find out).
pub const MAX_POINTER_LEN: usize = 1024;

/// The node path a pointer's data names, if it is one: one valid absolute
/// ZooKeeper path (after removing one trailing newline) inside `root`.
pub fn parse_pointer(data: &[u8], root: &str) -> Option<String> {
    if data.len() > MAX_POINTER_LEN {
        return None;
    }
    let text = std::str::from_utf8(data).ok()?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if !text.starts_with('/') || text.len() < 2 || text.ends_with('/') {
        return None;
    }
    if !text[1..].split('/').all(|e| NodeName::parse_str(e).is_ok()) {
        return None;
    }
    path::is_within(text, root).then(|| text.to_string())
}

/// The node path pointer data names inside the mount's `chroot` when it
/// starts with it (`/bank/configs/v1` with chroot `/bank` → `/configs/v1`),
/// as a client connected without that chroot writes it: one valid absolute
/// path strictly below `chroot` whose rest lies inside `root`. The core
/// prefers it to [`parse_pointer`]'s reading when that node exists.
pub fn parse_unchrooted(data: &[u8], root: &str, chroot: &str) -> Option<String> {
    if chroot.len() < 2 {
        return None;
    }
    let full = parse_pointer(data, "/")?;
    let rest = full.strip_prefix(chroot)?;
    if !rest.starts_with('/') {
        return None;
    }
    path::is_within(rest, root).then(|| rest.to_string())
}

/// The relative link text from the directory holding `link` to `target`.
pub fn relative_link(link: &str, target: &str) -> String {
    let from: Vec<&str> = path::parent(link)
        .unwrap_or("/")
        .split('/')
        .filter(|e| !e.is_empty())
        .collect();
    let to: Vec<&str> = target.split('/').filter(|e| !e.is_empty()).collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; from.len() - common];
    parts.extend(&to[common..]);
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

/// Resolve the TARGET of `ln -s TARGET LINK` to an absolute node path.
/// `link_dir` is the node path of the directory the link is created in;
/// absolute targets must lie under `mountpoint` (which shows `root`).
pub fn resolve_target(
    target: &Path,
    link_dir: &str,
    mountpoint: &Path,
    root: &str,
) -> Result<String, &'static str> {
    let (mut parts, rest): (Vec<String>, &Path) = if target.is_absolute() {
        let rest = target
            .strip_prefix(mountpoint)
            .map_err(|_| "the target is outside the mount")?;
        let base = root
            .split('/')
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        (base, rest)
    } else {
        let base = link_dir
            .split('/')
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect();
        (base, target)
    };
    let floor = root.split('/').filter(|e| !e.is_empty()).count();
    for component in rest.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.len() <= floor {
                    return Err("the target is outside the mount");
                }
                parts.pop();
            }
            Component::Normal(name) => {
                let name = name.to_str().ok_or("the target is not UTF-8")?;
                NodeName::parse_str(name).map_err(|_| "the target is not a valid node path")?;
                parts.push(name.to_string());
            }
            Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers() {
        assert_eq!(
            parse_pointer(b"/configs/v2", "/"),
            Some("/configs/v2".into())
        );
        assert_eq!(
            parse_pointer(b"/configs/a\n", "/"),
            Some("/configs/a".into())
        );
        assert_eq!(parse_pointer(b"/configs/a\n\n", "/"), None);
        assert_eq!(
            parse_pointer(b"/var/log/app", "/sub"),
            None,
            "outside the subtree"
        );
        assert_eq!(parse_pointer(b"/sub/x", "/sub"), Some("/sub/x".into()));
        assert_eq!(parse_pointer(b"relative/x", "/"), None);
        assert_eq!(parse_pointer(b"/a b/c", "/"), Some("/a b/c".into()));
        assert_eq!(parse_pointer(b"/a//b", "/"), None);
        assert_eq!(parse_pointer(b"{\"a\": 1}", "/"), None);
        assert_eq!(parse_pointer(b"/", "/"), None);
    }

    #[test]
    fn pointers_written_without_the_chroot() {
        let u = |data: &[u8], root| parse_unchrooted(data, root, "/bank");
        assert_eq!(u(b"/bank/configs/v1", "/"), Some("/configs/v1".into()));
        assert_eq!(u(b"/bank/configs/v1\n", "/"), Some("/configs/v1".into()));
        assert_eq!(
            u(b"/bank/configs/v1", "/configs"),
            Some("/configs/v1".into())
        );
        assert_eq!(u(b"/bank/configs/v1", "/other"), None, "outside the root");
        assert_eq!(u(b"/bank", "/"), None, "the chroot itself");
        assert_eq!(u(b"/bank/", "/"), None);
        assert_eq!(u(b"/banking/x", "/"), None, "a longer first element");
        assert_eq!(u(b"/configs/v1", "/"), None, "no chroot prefix");
        assert_eq!(u(b"/bank//x", "/"), None);
        assert_eq!(
            parse_unchrooted(b"/bank/x", "/", ""),
            None,
            "mount without a chroot"
        );
        assert_eq!(
            parse_unchrooted(b"/a/b/x", "/", "/a/b"),
            Some("/x".into()),
            "a chroot of several elements"
        );
    }

    #[test]
    fn relative_links() {
        assert_eq!(
            relative_link("/pointers/current", "/configs/v2"),
            "../configs/v2"
        );
        assert_eq!(relative_link("/current", "/configs/v2"), "configs/v2");
        assert_eq!(relative_link("/a/b/p", "/a/c"), "../c");
        assert_eq!(relative_link("/a/p", "/a"), ".");
        assert_eq!(relative_link("/a/p", "/a/q"), "q");
    }

    #[test]
    fn ln_s_targets() {
        let mp = Path::new("/mnt/zk");
        assert_eq!(
            resolve_target(Path::new("../configs/v2"), "/pointers", mp, "/"),
            Ok("/configs/v2".into())
        );
        assert_eq!(
            resolve_target(Path::new("/mnt/zk/configs/v2"), "/pointers", mp, "/"),
            Ok("/configs/v2".into())
        );
        assert_eq!(
            resolve_target(Path::new("v2"), "/sub/configs", mp, "/sub"),
            Ok("/sub/configs/v2".into())
        );
        assert!(resolve_target(Path::new("/etc/passwd"), "/", mp, "/").is_err());
        assert!(resolve_target(Path::new("../../x"), "/sub", mp, "/sub").is_err());
    }
}
