//! The command line: clap definitions, `-o key=value,...` expansion, and the
//! parsers for durations, sizes and modes. Turns argv into validated settings;
//! must not start anything.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::fs::name::NodeName;

#[derive(Parser, Debug)]
#[command(
    name = "zkfs",
    version,
    about = "Mount a ZooKeeper subtree as a filesystem",
    long_about = "zkfs presents a ZooKeeper subtree as an ordinary directory: nodes with \
                  children are directories, other nodes are files holding the node's data, \
                  served from an in-memory cache kept coherent by a ZooKeeper watch."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount SERVERS (host:port[,host:port...][/chroot]) on MOUNTPOINT.
    Mount(Box<MountArgs>),
    /// Unmount a zkfs mount and wait for its daemon to close its ZooKeeper session.
    Unmount(UnmountArgs),
    /// Show the state of a zkfs mount; exit status 0 only when connected.
    Status(StatusArgs),
    /// Run CMD with a registration at PATH (a file in an --ephemeral
    /// directory of a zkfs mount) that exists exactly as long as CMD runs.
    Register(RegisterArgs),
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// Registration content (default: {"pid": N}, N being CMD's pid).
    #[arg(long, conflicts_with = "data_file")]
    pub data: Option<String>,
    /// Read the registration content from FILE.
    #[arg(long, value_name = "FILE")]
    pub data_file: Option<PathBuf>,
    /// The registration file, e.g. /zk/services/web/servers/10.0.0.5:8080
    pub path: PathBuf,
    /// The command to run (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// ZooKeeper connection string: host:port[,host:port...][/chroot]
    pub servers: String,
    /// Existing empty directory to mount on.
    pub mountpoint: PathBuf,

    /// Subtree (inside the chroot) presented as the mount root.
    #[arg(long, default_value = "/", value_parser = parse_root, help_heading = "Mount")]
    pub root: String,
    /// Stay attached to the terminal (for systemd and debugging); by default
    /// zkfs returns once the mount is ready and keeps serving in the background.
    #[arg(long, short = 'f', help_heading = "Mount")]
    pub foreground: bool,
    /// Refuse every modification with EROFS.
    #[arg(long, help_heading = "Mount")]
    pub read_only: bool,
    /// Let other users access the mount (turns on kernel permission checks).
    #[arg(long, help_heading = "Mount")]
    pub allow_other: bool,
    /// Mount options as key=value,... (the long options without dashes; for fstab).
    #[arg(short = 'o', value_name = "OPTIONS", help_heading = "Mount")]
    pub options: Vec<String>,

    /// ZooKeeper session timeout (e.g. 10s, 4000ms; a bare number is milliseconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration, help_heading = "ZooKeeper")]
    pub session_timeout: Duration,
    /// Longest time any filesystem operation waits for ZooKeeper.
    #[arg(long, default_value = "5s", value_parser = parse_duration, help_heading = "ZooKeeper")]
    pub op_timeout: Duration,
    /// How long `zkfs mount` waits for ZooKeeper at start before giving up.
    #[arg(long, default_value = "10s", value_parser = parse_duration, help_heading = "ZooKeeper")]
    pub connect_timeout: Duration,

    /// Owner of every file (default: the mounting user).
    #[arg(long, help_heading = "Presentation")]
    pub uid: Option<u32>,
    /// Group of every file (default: the mounting user's group).
    #[arg(long, help_heading = "Presentation")]
    pub gid: Option<u32>,
    /// Permission bits of files, octal.
    #[arg(long, default_value = "0644", value_parser = parse_mode, help_heading = "Presentation")]
    pub file_mode: u16,
    /// Permission bits of directories, octal.
    #[arg(long, default_value = "0755", value_parser = parse_mode, help_heading = "Presentation")]
    pub dir_mode: u16,
    /// Name of the hidden file holding a directory node's own data.
    #[arg(long, default_value = ".data", value_parser = parse_data_name, help_heading = "Presentation")]
    pub data_name: String,

    /// File holding digest credentials `user:password` for the ZooKeeper
    /// session (or set ZKFS_AUTH=user:password). Never put secrets on argv.
    #[arg(long, help_heading = "ZooKeeper")]
    pub auth_file: Option<PathBuf>,
    /// ACL of nodes this mount creates: `open` (world:anyone:cdrwa) or
    /// `creator` (auth::cdrwa: only this mount's identity; needs credentials).
    #[arg(long, default_value = "open", value_parser = ["open", "creator"], help_heading = "Writes")]
    pub new_node_acl: String,
    /// Write with setData version -1 (last writer wins) instead of failing
    /// close with ESTALE when someone else changed the node since open.
    #[arg(long, help_heading = "Writes")]
    pub last_writer_wins: bool,
    /// Largest node data accepted (EFBIG beyond it); match the server's jute.maxbuffer.
    #[arg(long, default_value = "1047552", value_parser = parse_size, help_heading = "Writes")]
    pub max_data: u64,

    /// Files created in directories matching GLOB (relative to the mount
    /// root; `*` one element, `**` any depth) become ephemeral nodes owned by
    /// the mount's session: service registrations. Repeatable.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob, help_heading = "Writes")]
    pub ephemeral: Vec<String>,

    /// `auto`: show pointer nodes (data = the path of another node in the
    /// mount) as symlinks; `off`: show them as files.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"], help_heading = "Presentation")]
    pub pointers: String,

    /// Bound on cached node data (e.g. 256M, 1G; bare number = bytes). Least
    /// recently used data is dropped first; node metadata is always kept.
    #[arg(long, default_value = "256M", value_parser = parse_size, help_heading = "Cache")]
    pub cache_size: u64,

    /// After each kernel request, poll the FUSE device this long before
    /// sleeping (e.g. 200us, 1ms; 0 = off). Saves a thread wake-up per cached
    /// open during bursts of requests, at the cost of one CPU while a burst
    /// lasts. Off on machines with a single CPU.
    #[arg(long, default_value = "200us", value_parser = parse_poll_window, help_heading = "Cache")]
    pub busy_poll: Duration,

    /// Log filter (EnvFilter syntax, e.g. info, zkfs=debug); overrides ZKFS_LOG.
    #[arg(long, help_heading = "Logging")]
    pub log_level: Option<String>,
    /// Append logs to this file (in the background the default is no log).
    #[arg(long, help_heading = "Logging")]
    pub log_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub mountpoint: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `mount -t fuse.zkfs` (mount.fuse3) runs `zkfs SERVERS MOUNTPOINT -o ...`
/// without a subcommand: treat a first argument that is not a subcommand or
/// a help/version flag as the start of `mount`'s arguments.
pub fn default_to_mount(mut args: Vec<OsString>) -> Vec<OsString> {
    const KNOWN: &[&str] = &[
        "mount",
        "unmount",
        "status",
        "register",
        "help",
        "-h",
        "--help",
        "-V",
        "--version",
    ];
    if let Some(first) = args.get(1)
        && !KNOWN.contains(&first.to_string_lossy().as_ref())
    {
        args.insert(1, "mount".into());
    }
    args
}

/// Generic mount options accepted in `-o` (fstab, mount(8)) and ignored.
const IGNORED_OPTIONS: &[&str] = &[
    "rw", "defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev", "dev",
    "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "async",
];

/// Expand every `-o key=value,...` into `--key=value` arguments so one parser
/// (and one set of checks) serves both spellings. `ro` means `--read-only`.
pub fn expand_mount_options(args: Vec<OsString>) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        let list = if text == "-o" {
            match iter.next() {
                Some(v) => v.to_string_lossy().into_owned(),
                None => {
                    out.push(arg);
                    continue;
                }
            }
        } else if let Some(rest) = text.strip_prefix("-o").filter(|r| !r.is_empty()) {
            rest.to_string()
        } else {
            out.push(arg);
            continue;
        };
        for item in list.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            if IGNORED_OPTIONS.contains(&key) {
                continue;
            }
            let key = if key == "ro" { "read-only" } else { key };
            let key = key.replace('_', "-");
            out.push(match value {
                Some(v) => format!("--{key}={v}").into(),
                None => format!("--{key}").into(),
            });
        }
    }
    out
}

/// `4s`, `4000ms`, `2m`, `1.5s`; a bare number is milliseconds. Must be > 0.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (use e.g. 4s, 4000ms, 2m)"))?;
    let millis = match unit {
        "" | "ms" => value,
        "s" => value * 1000.0,
        "m" | "min" => value * 60_000.0,
        _ => return Err(format!("invalid duration unit in '{s}' (use ms, s or m)")),
    };
    if !(1.0..1e12).contains(&millis) {
        return Err(format!("duration '{s}' must be at least 1ms"));
    }
    Ok(Duration::from_micros((millis * 1000.0) as u64))
}

/// `0` (off), `200us`, `1ms`: at most 100 ms.
pub fn parse_poll_window(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" || t == "off" {
        return Ok(Duration::ZERO);
    }
    let window = match t.strip_suffix("us") {
        Some(micros) => micros
            .parse::<u64>()
            .map(Duration::from_micros)
            .map_err(|_| format!("invalid polling window '{s}' (use e.g. 200us, 1ms or 0)"))?,
        None => parse_duration(t)?,
    };
    if window > Duration::from_millis(100) {
        return Err(format!("polling window '{s}' must be at most 100ms"));
    }
    Ok(window)
}

/// `512`, `64K`, `256M`, `1G` (binary multiples; optional `iB`/`B` suffix).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (number, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid size '{s}' (use e.g. 64M, 1G or a byte count)"))
}

/// Octal permission bits, at most 0777.
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.trim_start_matches("0o");
    match u16::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("invalid mode '{s}' (octal, at most 0777)")),
    }
}

/// An absolute ZooKeeper path without trailing slash.
pub fn parse_root(s: &str) -> Result<String, String> {
    if s == "/" {
        return Ok(s.to_string());
    }
    if !s.starts_with('/') {
        return Err(format!("root '{s}' must be an absolute ZooKeeper path"));
    }
    let trimmed = s.trim_end_matches('/');
    for element in trimmed[1..].split('/') {
        NodeName::parse_str(element).map_err(|e| format!("root '{s}': {e}"))?;
    }
    Ok(trimmed.to_string())
}

pub fn parse_glob(s: &str) -> Result<String, String> {
    crate::fs::glob::DirGlob::parse(s).map(|_| s.to_string())
}

pub fn parse_data_name(s: &str) -> Result<String, String> {
    NodeName::parse_str(s)
        .map(|n| n.as_str().to_string())
        .map_err(|e| format!("data name '{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4s"), Ok(Duration::from_secs(4)));
        assert_eq!(parse_duration("4000ms"), Ok(Duration::from_secs(4)));
        assert_eq!(parse_duration("4000"), Ok(Duration::from_secs(4)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn sizes_and_modes() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("x").is_err());
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("01777").is_err());
    }

    #[test]
    fn roots() {
        assert_eq!(parse_root("/a/b/"), Ok("/a/b".into()));
        assert!(parse_root("a").is_err());
        assert!(parse_root("/a//b").is_err());
    }

    #[test]
    fn dash_o_expands_to_long_options() {
        let args: Vec<OsString> = ["zkfs", "mount", "-o", "ro,session_timeout=4s,rw", "s", "m"]
            .iter()
            .map(OsString::from)
            .collect();
        let out = expand_mount_options(args);
        let out: Vec<String> = out
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            out,
            [
                "zkfs",
                "mount",
                "--read-only",
                "--session-timeout=4s",
                "s",
                "m"
            ]
        );
        let cli = Cli::try_parse_from(out).expect("parses");
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert!(m.read_only);
        assert_eq!(m.session_timeout, Duration::from_secs(4));
    }

    #[test]
    fn mount_helper_form_without_subcommand() {
        let args: Vec<OsString> = ["zkfs", "127.0.0.1:2181/x", "/mnt/zk", "-o", "rw,ro"]
            .iter()
            .map(OsString::from)
            .collect();
        let cli =
            Cli::try_parse_from(expand_mount_options(default_to_mount(args))).expect("parses");
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert!(m.read_only);
        assert_eq!(m.servers, "127.0.0.1:2181/x");
    }

    #[test]
    fn unknown_dash_o_is_an_error() {
        let args: Vec<OsString> = ["zkfs", "mount", "-o", "bogus=1", "s", "m"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(Cli::try_parse_from(expand_mount_options(args)).is_err());
    }
}
