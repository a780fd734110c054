//! Per-node owner, group and mode (`--attrs GLOB=USER:GROUP:MODE`).
//!
//! Owns the rule syntax (with user and group names resolved once, when the
//! command line is parsed), the matching of a node's path against the rules
//! (the last matching rule wins), and the owner, group and permission bits a
//! node shows before `attr.rs` drops write bits (read-only mount, ACL).
//! Pure apart from the name look-ups (getpwnam_r/getgrnam_r).

use std::ffi::CString;

use super::attr::{FileKind, Presentation};
use super::glob::DirGlob;

/// One `--attrs` rule. `None` keeps the mount-wide value.
#[derive(Clone, Debug)]
pub struct AttrRule {
    glob: DirGlob,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<u16>,
}

/// User and group databases, for name look-ups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Database {
    User,
    Group,
}

impl Database {
    fn noun(self) -> &'static str {
        match self {
            Database::User => "user",
            Database::Group => "group",
        }
    }
}

/// Resolves a user or group name to its id; `Ok(None)`: no such name.
pub type Lookup = dyn Fn(Database, &str) -> Result<Option<u32>, String>;

const SYNTAX: &str = "use GLOB=USER:GROUP:MODE, e.g. 'secrets/*=www-data:www-data:0400'; \
                      USER, GROUP or MODE may be empty to keep the mount-wide value";

impl AttrRule {
    /// Parse `GLOB=USER:GROUP:MODE`, resolving names in the system's databases.
    pub fn parse(text: &str) -> Result<AttrRule, String> {
        AttrRule::parse_with(text, &lookup_id)
    }

    /// [`AttrRule::parse`] with the name look-up given (for tests).
    pub fn parse_with(text: &str, lookup: &Lookup) -> Result<AttrRule, String> {
        // The last `=`: node names (and so globs) may contain one, user and
        // group names and modes never do.
        let (pattern, spec) = text
            .rsplit_once('=')
            .ok_or_else(|| format!("invalid --attrs rule '{text}' (no '='): {SYNTAX}"))?;
        let fields: Vec<&str> = spec.split(':').collect();
        let [user, group, mode] = fields[..] else {
            return Err(format!(
                "invalid --attrs rule '{text}' ('{spec}' is not USER:GROUP:MODE): {SYNTAX}"
            ));
        };
        let glob = DirGlob::parse_for(pattern, "--attrs")?;
        let id = |db: Database, name: &str| -> Result<Option<u32>, String> {
            if name.is_empty() {
                return Ok(None);
            }
            owner_id(db, name, lookup)
                .map(Some)
                .map_err(|e| format!("--attrs rule '{text}': {e}"))
        };
        let uid = id(Database::User, user)?;
        let gid = id(Database::Group, group)?;
        let mode = if mode.is_empty() {
            None
        } else {
            Some(crate::cli::parse_mode(mode).map_err(|e| format!("--attrs rule '{text}': {e}"))?)
        };
        if uid.is_none() && gid.is_none() && mode.is_none() {
            return Err(format!(
                "--attrs rule '{text}' changes nothing: give a USER, GROUP or MODE"
            ));
        }
        Ok(AttrRule {
            glob,
            uid,
            gid,
            mode,
        })
    }
}

/// A user or group given as a number or a name (looked up). Not 4294967295:
/// to `chown(2)` that id means "leave unchanged", and the kernel shows it
/// as the overflow id (65534).
pub fn owner_id(db: Database, name: &str, lookup: &Lookup) -> Result<u32, String> {
    if name.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() {
        return match name.parse::<u32>() {
            Ok(id) if id != u32::MAX => Ok(id),
            _ => Err(format!(
                "{} id '{name}' is too large (at most 4294967294)",
                db.noun()
            )),
        };
    }
    match lookup(db, name)? {
        Some(id) => Ok(id),
        None => Err(format!("unknown {} '{name}'", db.noun())),
    }
}

/// `--uid`: a user name or number.
pub fn parse_uid(text: &str) -> Result<u32, String> {
    owner_id(Database::User, text, &lookup_id)
}

/// `--gid`: a group name or number.
pub fn parse_gid(text: &str) -> Result<u32, String> {
    owner_id(Database::Group, text, &lookup_id)
}

/// The `--attrs` rules of a mount, in command-line order.
#[derive(Clone, Debug, Default)]
pub struct AttrRules {
    /// The mount root (absolute ZooKeeper path): rules match paths relative to it.
    root: String,
    rules: Vec<AttrRule>,
}

impl AttrRules {
    pub fn new(root: &str, rules: Vec<AttrRule>) -> AttrRules {
        AttrRules {
            root: root.to_string(),
            rules,
        }
    }

    /// The effective (uid, gid, mode) of the rules matching node `path`
    /// (absolute), each `None` where no matching rule sets it; for each,
    /// the last matching rule that sets it wins.
    fn lookup(&self, path: &str) -> (Option<u32>, Option<u32>, Option<u16>) {
        let mut found = (None, None, None);
        if self.rules.is_empty() {
            return found;
        }
        let relative = if self.root == "/" {
            Some(path)
        } else {
            path.strip_prefix(self.root.as_str())
                .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        let Some(relative) = relative else {
            return found;
        };
        let elements: Vec<&str> = relative.split('/').filter(|e| !e.is_empty()).collect();
        for rule in self.rules.iter().filter(|r| r.glob.matches(&elements)) {
            found.0 = rule.uid.or(found.0);
            found.1 = rule.gid.or(found.1);
            found.2 = rule.mode.or(found.2);
        }
        found
    }
}

/// What a node shows before write bits are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub perm: u16,
}

/// A directory's mode for a rule's MODE: x added wherever r is set.
pub fn directory_mode(mode: u16) -> u16 {
    mode | ((mode & 0o444) >> 2)
}

/// Owner, group and permission bits of node `path` shown as `kind` (a data
/// file is `RegularFile` with its directory's path): the mount-wide options,
/// overridden by the matching `--attrs` rules. Symlinks stay 0777.
pub fn owner(presentation: &Presentation, path: &str, kind: FileKind) -> Owner {
    let (uid, gid, mode) = presentation.attrs.lookup(path);
    let perm = match kind {
        FileKind::Symlink => 0o777,
        FileKind::Directory => mode.map_or(presentation.dir_mode, directory_mode),
        FileKind::RegularFile => mode.unwrap_or(presentation.file_mode),
    };
    Owner {
        uid: uid.unwrap_or(presentation.uid),
        gid: gid.unwrap_or(presentation.gid),
        perm,
    }
}

/// A user's or group's id by name; `Ok(None)` if there is no such entry.
fn lookup_id(db: Database, name: &str) -> Result<Option<u32>, String> {
    let c_name = CString::new(name).map_err(|_| format!("invalid {} name '{name}'", db.noun()))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let (rc, id) = match db {
            Database::User => {
                // SAFETY: zeroed passwd is a valid out-parameter; buf outlives the call.
                let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::passwd = std::ptr::null_mut();
                let rc = unsafe {
                    libc::getpwnam_r(
                        c_name.as_ptr(),
                        &mut entry,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        &mut result,
                    )
                };
                (rc, (!result.is_null()).then_some(entry.pw_uid))
            }
            Database::Group => {
                // SAFETY: as above, for struct group.
                let mut entry: libc::group = unsafe { std::mem::zeroed() };
                let mut result: *mut libc::group = std::ptr::null_mut();
                let rc = unsafe {
                    libc::getgrnam_r(
                        c_name.as_ptr(),
                        &mut entry,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        &mut result,
                    )
                };
                (rc, (!result.is_null()).then_some(entry.gr_gid))
            }
        };
        match rc {
            0 => return Ok(id),
            libc::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            // "Not found" may come back as one of these instead of 0.
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(None),
            errno => {
                return Err(format!(
                    "cannot look up {} '{name}': {}",
                    db.noun(),
                    std::io::Error::from_raw_os_error(errno)
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(db: Database, name: &str) -> Result<Option<u32>, String> {
        Ok(match (db, name) {
            (Database::User, "www-data") => Some(33),
            (Database::Group, "www-data") => Some(34),
            _ => None,
        })
    }

    fn rule(text: &str) -> AttrRule {
        AttrRule::parse_with(text, &fake).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        AttrRule::parse_with(text, &fake).expect_err(text)
    }

    fn presentation(root: &str, rules: &[&str]) -> Presentation {
        Presentation {
            uid: 1000,
            gid: 1001,
            file_mode: 0o644,
            dir_mode: 0o755,
            read_only: false,
            identity: None,
            attrs: AttrRules::new(root, rules.iter().map(|r| rule(r)).collect()),
        }
    }

    fn shown(p: &Presentation, path: &str, kind: FileKind) -> (u32, u32, u16) {
        let o = owner(p, path, kind);
        (o.uid, o.gid, o.perm)
    }

    #[test]
    fn rule_syntax() {
        let r = rule("secrets/*=www-data:www-data:0400");
        assert_eq!((r.uid, r.gid, r.mode), (Some(33), Some(34), Some(0o400)));
        let r = rule("a=12::");
        assert_eq!((r.uid, r.gid, r.mode), (Some(12), None, None));
        let r = rule("a=:www-data:640");
        assert_eq!((r.uid, r.gid, r.mode), (None, Some(34), Some(0o640)));
        // A glob may contain '=' (node names can); the last one separates.
        let r = rule("k=v/x=0:0:0600");
        assert!(r.glob.matches(&["k=v", "x"]));

        assert!(err("secrets/*").contains("no '='"));
        assert!(err("a=0:0").contains("is not USER:GROUP:MODE"));
        assert!(err("a=0:0:0:0").contains("is not USER:GROUP:MODE"));
        assert!(err("a=bob::0400").contains("unknown user 'bob'"));
        assert!(err("a=:staff:0400").contains("unknown group 'staff'"));
        assert!(err("a=0:0:0999").contains("invalid mode '0999'"));
        assert!(err("a=0:0:1777").contains("invalid mode"));
        assert!(err("a=99999999999::").contains("too large"));
        assert!(err("a=::").contains("changes nothing"));
        assert!(err("=0:0:0400").contains("empty --attrs pattern"));
        assert!(err("a/../b=0:0:0400").contains("invalid --attrs pattern"));
    }

    #[test]
    fn names_resolve_in_the_system_databases() {
        // root is uid 0 and group root gid 0 on every Linux system.
        assert_eq!(lookup_id(Database::User, "root"), Ok(Some(0)));
        assert_eq!(lookup_id(Database::Group, "root"), Ok(Some(0)));
        assert_eq!(lookup_id(Database::User, "no-such-user-zkfs"), Ok(None));
        let r = AttrRule::parse("x=root:root:0600").expect("parses");
        assert_eq!((r.uid, r.gid), (Some(0), Some(0)));
        assert!(
            AttrRule::parse("x=no-such-user-zkfs::0600")
                .expect_err("unknown")
                .contains("unknown user 'no-such-user-zkfs'")
        );
    }

    #[test]
    fn matching_and_precedence() {
        let p = presentation(
            "/",
            &[
                "secrets/**/*=0:0:0400",
                "secrets/api=www-data:www-data:0440",
                "public/*=::0664",
                "public/*=7::",
            ],
        );
        use FileKind::*;
        assert_eq!(shown(&p, "/secrets/db", RegularFile), (0, 0, 0o400));
        assert_eq!(shown(&p, "/secrets/api", RegularFile), (33, 34, 0o440));
        assert_eq!(shown(&p, "/secrets/a/b", RegularFile), (0, 0, 0o400));
        assert_eq!(shown(&p, "/secrets/a", Directory), (0, 0, 0o500));
        assert_eq!(
            shown(&p, "/secrets", Directory),
            (1000, 1001, 0o755),
            "secrets/**/* leaves secrets itself alone"
        );
        // Fields a later rule leaves empty keep an earlier rule's value.
        assert_eq!(shown(&p, "/public/x", RegularFile), (7, 1001, 0o664));
        assert_eq!(shown(&p, "/other", RegularFile), (1000, 1001, 0o644));
        assert_eq!(shown(&p, "/secrets/link", Symlink), (0, 0, 0o777));
        assert_eq!(shown(&p, "/", Directory), (1000, 1001, 0o755));

        let all = presentation("/", &["**=5:5:0600"]);
        assert_eq!(
            shown(&all, "/", Directory),
            (5, 5, 0o700),
            "** matches the root"
        );
        assert_eq!(shown(&all, "/a/b/c", RegularFile), (5, 5, 0o600));
    }

    #[test]
    fn paths_are_relative_to_the_mount_root() {
        let p = presentation("/app", &["secrets/*=0:0:0400"]);
        assert_eq!(
            shown(&p, "/app/secrets/db", FileKind::RegularFile),
            (0, 0, 0o400)
        );
        assert_eq!(
            shown(&p, "/apps/secrets/db", FileKind::RegularFile),
            (1000, 1001, 0o644)
        );
        assert_eq!(shown(&p, "/app", FileKind::Directory), (1000, 1001, 0o755));
    }

    #[test]
    fn directories_get_x_where_r_is_set() {
        assert_eq!(directory_mode(0o400), 0o500);
        assert_eq!(directory_mode(0o640), 0o750);
        assert_eq!(directory_mode(0o644), 0o755);
        assert_eq!(directory_mode(0o600), 0o700);
        assert_eq!(directory_mode(0o200), 0o200);
        assert_eq!(directory_mode(0o000), 0o000);
    }
}
