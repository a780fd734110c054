//! The command line: clap definitions, `-o key=value,...` expansion, and the
//! parsers for durations, sizes and modes. Turns argv into validated settings;
//! must not start anything.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
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
    // An option given again replaces its earlier value (repeatable ones,
    // --attrs and --ephemeral, add up): mount(8) appends the command
    // line's -o to the options in fstab, and its convention is that the
    // later wins.
    #[command(args_override_self = true)]
    Mount(Box<MountArgs>),
    /// Unmount a zkfs mount and wait for its daemon to close its ZooKeeper session.
    #[command(visible_alias = "umount")]
    Unmount(UnmountArgs),
    /// Show the state of a zkfs mount; exit status 0 only when connected.
    Status(StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Run CMD with a registration at PATH (a file in an --ephemeral
    /// directory of a zkfs mount) that exists exactly as long as CMD runs.
    Register(RegisterArgs),
    /// Run CMD after each change of any PATH (files or directories in zkfs
    /// mounts), with the changed paths in ZKFS_CHANGED (one a line).
    Watch(WatchArgs),
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// Changes closer together than this run CMD once (e.g. 150ms, 1s).
    #[arg(long, default_value = "150ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Also run CMD once at start (ZKFS_CHANGED lists every PATH).
    #[arg(long)]
    pub initial: bool,
    /// Files (their data and existence) or directories (their list of
    /// children) inside zkfs mounts; a file need not exist yet.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// The command to run (after `--`).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
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

/// `--new-node-acl`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewNodeAclChoice {
    /// world:anyone:cdrwa
    Open,
    /// auth::cdrwa (only this mount's identity; needs credentials)
    Creator,
}

/// `--pointers`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointersChoice {
    /// Pointer nodes are symlinks.
    Auto,
    /// Pointer nodes are files.
    Off,
}

#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// ZooKeeper connection string: host[:port][,host[:port]...][/chroot]
    /// (the port defaults to 2181).
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
    /// Refuse every modification with EROFS. The kernel then opens files and
    /// directories by itself (no daemon round trip per open); a reader keeps
    /// the version it opened until it closes it.
    #[arg(long, help_heading = "Mount")]
    pub read_only: bool,
    /// Let other users access the mount (turns on kernel permission checks).
    #[arg(long, help_heading = "Mount")]
    pub allow_other: bool,
    /// Let the kernel check permission bits (always on with --allow-other).
    #[arg(long, help_heading = "Mount")]
    pub default_permissions: bool,
    /// Mount even if the mount point is not empty (its files are hidden meanwhile).
    #[arg(long, help_heading = "Mount")]
    pub nonempty: bool,
    /// Source shown by findmnt and /proc/mounts (default: SERVERS).
    #[arg(long, value_name = "NAME", value_parser = parse_fsname, help_heading = "Mount")]
    pub fsname: Option<String>,
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

    /// Owner of every file, a user name or number (default: the mounting user).
    #[arg(long, value_parser = crate::fs::attrs::parse_uid, help_heading = "Presentation")]
    pub uid: Option<u32>,
    /// Group of every file, a group name or number (default: the mounting user's group).
    #[arg(long, value_parser = crate::fs::attrs::parse_gid, help_heading = "Presentation")]
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
    /// Owner, group and mode of the nodes whose path (relative to the mount
    /// root) matches GLOB (`*` one element, `**` any depth): USER and GROUP
    /// as names or numbers, MODE octal (directories get x where r is set);
    /// an empty field sets nothing (earlier rules or the mount-wide value
    /// apply). Repeatable; later rules win. In -o, one rule per `attrs=` (a
    /// comma ends it).
    #[arg(long, value_name = "GLOB=USER:GROUP:MODE", value_parser = crate::fs::attrs::AttrRule::parse, help_heading = "Presentation")]
    pub attrs: Vec<crate::fs::attrs::AttrRule>,
    /// `refuse`: chmod and chown fail with EPERM; `ignore`: they succeed and
    /// change nothing (for rsync -a, cp -a, tar x).
    #[arg(
        long,
        value_enum,
        default_value = "refuse",
        help_heading = "Presentation"
    )]
    pub chmod: ChmodPolicy,

    /// File holding digest credentials `user:password` for the ZooKeeper
    /// session (or set ZKFS_AUTH=user:password). Never put secrets on argv.
    #[arg(long, help_heading = "ZooKeeper")]
    pub auth_file: Option<PathBuf>,
    /// ACL of nodes this mount creates: `open` (world:anyone:cdrwa) or
    /// `creator` (auth::cdrwa: only this mount's identity; needs credentials).
    #[arg(long, value_enum, default_value_t = NewNodeAclChoice::Open, help_heading = "Writes")]
    pub new_node_acl: NewNodeAclChoice,
    /// Write with setData version -1 (last writer wins) instead of failing
    /// close with ESTALE when someone else changed the node since open.
    #[arg(long, help_heading = "Writes")]
    pub last_writer_wins: bool,
    /// Largest node data accepted (EFBIG beyond it): the server's
    /// jute.maxbuffer less 1 KiB for the path and framing (a longer path
    /// lowers it by the excess).
    #[arg(long, default_value = "1047552", value_parser = parse_max_data, help_heading = "Writes")]
    pub max_data: u64,

    /// Files created in directories matching GLOB (relative to the mount
    /// root; `*` one element, `**` any depth) become ephemeral nodes owned by
    /// the mount's session: service registrations. Repeatable.
    #[arg(long, value_name = "GLOB", value_parser = parse_glob, help_heading = "Writes")]
    pub ephemeral: Vec<String>,

    /// `auto`: show pointer nodes (data = the path of another node in the
    /// mount) as symlinks; `off`: show them as files.
    #[arg(long, value_enum, default_value_t = PointersChoice::Auto, help_heading = "Presentation")]
    pub pointers: PointersChoice,

    /// Bound on cached node data (e.g. 256M, 1G; bare number = bytes). Least
    /// recently used data is dropped first; node metadata is always kept.
    #[arg(long, default_value = "256M", value_parser = parse_size, help_heading = "Cache")]
    pub cache_size: u64,

    /// Keep a snapshot of the cache (data within --cache-size, stats, listed
    /// directories) in DIR (created 0700; files 0600), written when it
    /// changed (every few seconds at most) and at unmount. A mount that
    /// cannot reach ZooKeeper within --connect-timeout then starts from it,
    /// disconnected, and resynchronises when ZooKeeper answers.
    #[arg(long, value_name = "DIR", help_heading = "Cache")]
    pub cache_dir: Option<PathBuf>,

    /// After each kernel request, poll the FUSE device this long before
    /// sleeping (e.g. 200us, 1ms; 0 = off). Saves a thread wake-up per cached
    /// open during bursts of requests, at the cost of one CPU while a burst
    /// lasts. Default: 200us on writable mounts, off on read-only ones (the
    /// kernel opens and reads their files without asking the daemon, and a
    /// poller there only took a CPU from the threads that apply changes).
    /// Off on machines with a single CPU.
    #[arg(long, value_parser = parse_poll_window, help_heading = "Cache")]
    pub busy_poll: Option<Duration>,

    /// Log filter: LEVEL, MODULE=LEVEL, comma-separated (e.g. info, zkfs=debug,warn); overrides ZKFS_LOG.
    #[arg(long, help_heading = "Logging")]
    pub log_level: Option<String>,
    /// Append logs to this file (reopened on SIGHUP); `-` is stderr. Default:
    /// syslog in the background, stderr in the foreground.
    #[arg(long, value_name = "FILE", help_heading = "Logging")]
    pub log_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    pub mountpoint: PathBuf,
    /// Detach the mount now even if it is busy; it goes away once the last
    /// file on it is closed (umount -l).
    #[arg(long, short = 'z')]
    pub lazy: bool,
}

/// What chmod/chown (and fchmod, fchown) do (`--chmod`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChmodPolicy {
    /// Fail with EPERM (ZooKeeper nodes have no owner or mode).
    Refuse,
    /// Succeed and change nothing.
    Ignore,
}

/// Output formats of `zkfs status`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFormat {
    Text,
    Json,
    /// Prometheus text exposition format (node_exporter's textfile collector).
    Prometheus,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    pub mountpoint: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: StatusFormat,
    /// Print one JSON object (same as --format json).
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// `--busy-poll`'s default on a writable mount.
pub const BUSY_POLL_WRITABLE: Duration = Duration::from_micros(200);

impl MountArgs {
    /// The polling window asked for: `--busy-poll`, else 200 µs on a
    /// writable mount and none on a read-only one. Measured in
    /// `bench_read` on a 2-CPU VM, a reader polling a node through a
    /// read-only mount and yielding between reads: propagation p99 2.2–4.2
    /// ms polled, 0.56–0.80 ms not (doc/SEMANTICS.md, "Busy polling"). Almost
    /// nothing there reaches the daemon (the kernel opens and reads by
    /// itself), so the few requests a change brings started a burst whose
    /// poller then held a CPU without answering anything, while the
    /// ZooKeeper client's and the runtime's threads waited for it.
    pub fn busy_poll_window(&self) -> Duration {
        self.busy_poll.unwrap_or(if self.read_only {
            Duration::ZERO
        } else {
            BUSY_POLL_WRITABLE
        })
    }
}

impl StatusArgs {
    pub fn output(&self) -> StatusFormat {
        if self.json {
            StatusFormat::Json
        } else {
            self.format
        }
    }
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to print the completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `mount -t fuse.zkfs` (mount.fuse3) runs `zkfs SERVERS MOUNTPOINT -o ...`
/// without a subcommand: treat a first argument that is not a subcommand or
/// a help/version flag as the start of `mount`'s arguments.
pub fn default_to_mount(mut args: Vec<OsString>) -> Vec<OsString> {
    const KNOWN: &[&str] = &[
        "mount",
        "unmount",
        "umount",
        "status",
        "completions",
        "register",
        "watch",
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

/// Generic mount options accepted in `-o` (fstab, mount(8), systemd) and
/// ignored: they are for mount(8) or systemd, or zkfs always behaves so.
const IGNORED_OPTIONS: &[&str] = &[
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "nofail",
    "_netdev",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "async",
    "sync",
    "silent",
    "loud",
];

/// Whether `-o` option `key` is ignored: a generic option, a comment, or a
/// userspace option for mount(8) and systemd (`x-systemd.automount`, `x-*`).
fn ignored_option(key: &str) -> bool {
    IGNORED_OPTIONS.contains(&key) || key == "comment" || key.starts_with("x-")
}

/// Expand every `-o key=value,...` into `--key=value` arguments so one parser
/// (and one set of checks) serves both spellings. `ro` means `--read-only`.
pub fn expand_mount_options(args: Vec<OsString>) -> Vec<OsString> {
    expand_mount_options_with(args, None)
}

/// Refuse `-o` options that would otherwise fail as clap errors about
/// long options a `-o` user never typed (`use '-- --bogus-key'`,
/// `unexpected value '1' for '--read-only'`), or hang mount(8):
/// `foreground` (mount(8) would wait for the daemon to exit). `sloppy`
/// (mount(8)'s `-s`): unknown keys are dropped later, not refused.
pub fn check_mount_options(args: &[OsString], sloppy: bool) -> Result<(), String> {
    use clap::CommandFactory;
    let command = Cli::command();
    let Some(mount) = command.find_subcommand("mount") else {
        return Ok(());
    };
    let mut lists = Vec::new();
    let mut iter = mount_option_args(args).iter();
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy();
        if text == "-o" {
            if let Some(v) = iter.next() {
                lists.push(v.to_string_lossy().into_owned());
            }
        } else if let Some(rest) = text.strip_prefix("-o").filter(|r| !r.is_empty()) {
            lists.push(rest.to_string());
        }
    }
    for list in lists {
        for (key, long, value) in option_items(&list) {
            if long == "foreground" {
                return Err(
                    "mount option 'foreground' is for `zkfs mount --foreground` only: mount(8) \
                     would wait for the daemon to exit"
                        .into(),
                );
            }
            let Some(arg) = mount
                .get_arguments()
                .find(|a| a.get_long() == Some(long.as_str()))
            else {
                if sloppy {
                    continue;
                }
                return Err(format!(
                    "unknown mount option '{key}' (the options are `zkfs mount`'s long options \
                     without the dashes, e.g. session_timeout=10s, ro)"
                ));
            };
            let takes_value = arg.get_action().takes_values();
            match (takes_value, value) {
                (false, Some(v)) => {
                    return Err(format!(
                        "mount option '{key}' takes no value (got '{key}={v}')"
                    ));
                }
                (true, None) => {
                    return Err(format!("mount option '{key}' needs a value ({key}=VALUE)"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The long options of `zkfs mount`, for sloppy `-o` expansion.
pub fn mount_long_options() -> Vec<String> {
    use clap::CommandFactory;
    let command = Cli::command();
    command
        .find_subcommand("mount")
        .map(|m| {
            m.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// [`expand_mount_options`]; with `known` (mount(8)'s `-s`, sloppy), `-o`
/// options that are not among those long options are dropped instead of refused.
pub fn expand_mount_options_with(
    mut args: Vec<OsString>,
    known: Option<&[String]>,
) -> Vec<OsString> {
    // What follows the options (another subcommand's, or after `--`) is
    // passed on as it is: `zkfs watch P -- ssh -o X host` keeps its `-o`.
    let rest = args.split_off(mount_option_args(&args).len());
    let mut out = Vec::with_capacity(args.len() + rest.len());
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
        for (_, key, value) in option_items(&list) {
            if let Some(known) = known
                && !known.contains(&key)
            {
                continue;
            }
            out.push(match value {
                Some(v) => format!("--{key}={v}").into(),
                None => format!("--{key}").into(),
            });
        }
    }
    out.extend(rest);
    out
}

/// The items of one `-o` list that are not ignored: (the key as given,
/// the long option it stands for, its value).
fn option_items(list: &str) -> Vec<(&str, String, Option<&str>)> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        })
        .filter(|(key, _)| !ignored_option(key))
        .map(|(key, value)| {
            let long = if key == "ro" {
                "read-only".to_string()
            } else {
                key.replace('_', "-")
            };
            (key, long, value)
        })
        .collect()
}

/// The part of `args` where `-o` means mount options: all of a `zkfs mount`
/// command line up to a `--`; nothing of another subcommand's.
fn mount_option_args(args: &[OsString]) -> &[OsString] {
    if args.get(1).is_none_or(|a| a != "mount") {
        return &[];
    }
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    &args[..end]
}

/// ZooKeeper's client port, used for hosts given without one.
pub const DEFAULT_ZK_PORT: u16 = 2181;

/// The connection string with `:2181` added to every host given without a
/// port (`zk1,zk2:2182/app` → `zk1:2181,zk2:2182/app`; IPv6 hosts in brackets).
pub fn normalize_servers(servers: &str) -> Result<String, String> {
    let (hosts, chroot) = match servers.find('/') {
        Some(i) => servers.split_at(i),
        None => (servers, ""),
    };
    let mut out = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        let port = if let Some(rest) = host.strip_prefix('[') {
            match rest.split_once(']') {
                Some((_, "")) => None,
                Some((_, p)) => Some(p.strip_prefix(':').unwrap_or("?")),
                None => return Err(format!("invalid host '{host}' in '{servers}'")),
            }
        } else {
            host.rsplit_once(':').map(|(_, p)| p)
        };
        if host.is_empty() || host.starts_with(':') {
            return Err(format!("empty host in connection string '{servers}'"));
        }
        match port {
            None => out.push(format!("{host}:{DEFAULT_ZK_PORT}")),
            Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => out.push(host.to_string()),
            Some(p) => {
                return Err(format!(
                    "invalid port '{p}' in connection string '{servers}'"
                ));
            }
        }
    }
    Ok(format!("{}{chroot}", out.join(",")))
}

/// What a `mount.zkfs` run (mount(8)'s helper convention:
/// `mount.zkfs SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]`) asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct HelperCall {
    /// The equivalent `zkfs mount ...` argv (before `-o` expansion).
    pub args: Vec<OsString>,
    /// `-s`: drop unknown options instead of failing.
    pub sloppy: bool,
    /// `-f`: do everything but mount (nothing to do for zkfs).
    pub fake: bool,
}

/// Whether zkfs runs as mount(8)'s helper for `-t zkfs` (argv[0] `mount.zkfs`).
pub fn is_mount_helper(argv0: &std::ffi::OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|n| n == "mount.zkfs")
}

/// Translate a `mount.zkfs` command line into `zkfs mount` arguments.
pub fn mount_helper_args(args: Vec<OsString>) -> Result<HelperCall, String> {
    let mut call = HelperCall {
        args: vec!["zkfs".into(), "mount".into()],
        sloppy: false,
        fake: false,
    };
    let mut positional = Vec::new();
    let mut iter = args.into_iter().skip(1);
    while let Some(arg) = iter.next() {
        let text = arg.to_string_lossy().into_owned();
        match text.as_str() {
            "-o" => {
                let value = iter.next().ok_or("-o needs a value")?;
                call.args.push("-o".into());
                call.args.push(value);
            }
            // The filesystem type: we know it.
            "-t" => {
                iter.next().ok_or("-t needs a value")?;
            }
            "-N" => return Err("-N (mount namespaces) is not supported".into()),
            flags if flags.starts_with("-o") => call.args.push(arg),
            flags if flags.starts_with('-') && flags.len() > 1 => {
                for flag in flags[1..].chars() {
                    match flag {
                        's' => call.sloppy = true,
                        'f' => call.fake = true,
                        // No mtab to skip; verbosity: zkfs reports what it does anyway.
                        'n' | 'v' => {}
                        other => return Err(format!("unknown option -{other}")),
                    }
                }
            }
            _ => positional.push(arg),
        }
    }
    if positional.len() != 2 {
        return Err("usage: mount.zkfs SERVERS MOUNTPOINT [-sfnv] [-o OPTIONS]".into());
    }
    call.args.extend(positional);
    Ok(call)
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

/// Octal permission bits, at most 0777 (digits only: `from_str_radix`
/// also takes a sign).
pub fn parse_mode(s: &str) -> Result<u16, String> {
    let digits = s.trim_start_matches("0o");
    let octal = !digits.is_empty() && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    match u16::from_str_radix(digits, 8) {
        Ok(m) if octal && m <= 0o777 => Ok(m),
        _ => Err(format!("invalid mode '{s}' (octal, at most 0777)")),
    }
}

/// `--max-data`: a size from 1 byte to what one ZooKeeper packet can carry
/// (its length is a signed 32-bit number).
pub fn parse_max_data(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!(
            "--max-data '{s}' would refuse every write with data (at least 1 byte)"
        )),
        n if n > i32::MAX as u64 => Err(format!(
            "--max-data '{s}' exceeds what a ZooKeeper packet can carry (at most 2147483647 bytes)"
        )),
        n => Ok(n),
    }
}

/// `--fsname`: shown by findmnt; the kernel refuses an empty one late (in
/// fusermount3). Commas are escaped in the mount options (as the default,
/// a server list, has them).
pub fn parse_fsname(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("invalid --fsname '': empty".to_string());
    }
    Ok(s.to_string())
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
    fn option_values_that_cannot_work_are_refused_at_start() {
        for bad in [
            &["--uid", "4294967295"][..],
            &["--gid", "4294967295"],
            &["--uid", "no-such-user-zkfs"],
            &["--file-mode", "+644"],
            &["--dir-mode", "-755"],
            &["--dir-mode", ""],
            &["--attrs", "x=::+644"],
            &["--attrs", "x=4294967295::"],
            &["--max-data", "0"],
            &["--max-data", "10G"],
            &["--fsname", ""],
        ] {
            let args = [&["zkfs", "mount"][..], bad, &["s", "m"]].concat();
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?} was accepted");
        }
        // A server list's commas are escaped in the mount options.
        assert!(Cli::try_parse_from(["zkfs", "mount", "--fsname", "zk1,zk2", "s", "m"]).is_ok());
        // `mount -o ro` over fstab write options: read-only wins (a warning).
        let ro = [
            "zkfs",
            "mount",
            "--ephemeral",
            "svc",
            "--read-only",
            "s",
            "m",
        ];
        assert!(Cli::try_parse_from(ro).is_ok());
        let args = [
            "zkfs",
            "mount",
            "--uid",
            "root",
            "--gid",
            "0",
            "--file-mode",
            "0o640",
            "s",
            "m",
        ];
        let cli = Cli::try_parse_from(args).expect("parses");
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert_eq!((m.uid, m.gid, m.file_mode), (Some(0), Some(0), 0o640));
    }

    #[test]
    fn a_repeated_mount_option_takes_the_last_value() {
        // mount(8) appends the command line's -o to fstab's: the later wins,
        // and a flag given twice is given.
        let args: Vec<OsString> = [
            "zkfs",
            "mount",
            "-o",
            "op_timeout=1s,nonempty,attrs=a=::0600,ephemeral=svc",
            "-o",
            "op_timeout=3s,nonempty,attrs=b=::0640,ephemeral=reg",
            "--nonempty",
            "s",
            "m",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let cli = Cli::try_parse_from(expand_mount_options(args)).expect("parses");
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert!(m.nonempty);
        assert_eq!(m.op_timeout, Duration::from_secs(3));
        assert_eq!(m.attrs.len(), 2, "repeatable options keep every value");
        assert_eq!(m.ephemeral, ["svc", "reg"]);
    }

    #[test]
    fn busy_polling_defaults_to_writable_mounts_only() {
        let window = |args: &[&str]| {
            let cli = Cli::try_parse_from(args).expect("parses");
            let Command::Mount(m) = cli.command else {
                panic!("not mount")
            };
            m.busy_poll_window()
        };
        assert_eq!(
            window(&["zkfs", "mount", "s", "m"]),
            Duration::from_micros(200)
        );
        assert_eq!(
            window(&["zkfs", "mount", "--read-only", "s", "m"]),
            Duration::ZERO
        );
        assert_eq!(
            window(&[
                "zkfs",
                "mount",
                "--read-only",
                "--busy-poll",
                "1ms",
                "s",
                "m"
            ]),
            Duration::from_millis(1)
        );
        assert_eq!(
            window(&["zkfs", "mount", "--busy-poll", "0", "s", "m"]),
            Duration::ZERO
        );
    }

    #[test]
    fn attrs_and_chmod_options() {
        let out = expand_mount_options(os(&[
            "zkfs",
            "mount",
            "-o",
            "attrs=secrets/*=0:0:0400,chmod=ignore,attrs=a/**=::0644",
            "--attrs",
            "b=0::",
            "s",
            "m",
        ]));
        assert_eq!(
            strings(&out),
            [
                "zkfs",
                "mount",
                "--attrs=secrets/*=0:0:0400",
                "--chmod=ignore",
                "--attrs=a/**=::0644",
                "--attrs",
                "b=0::",
                "s",
                "m"
            ]
        );
        let cli = Cli::try_parse_from(out).expect("parses");
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert_eq!(m.attrs.len(), 3);
        assert_eq!(m.chmod, ChmodPolicy::Ignore);
        let cli = Cli::try_parse_from(os(&["zkfs", "mount", "s", "m"])).expect("parses");
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert_eq!(m.chmod, ChmodPolicy::Refuse, "the default");
        assert!(m.attrs.is_empty());
        let bad = Cli::try_parse_from(os(&["zkfs", "mount", "--attrs", "x", "s", "m"]));
        assert!(bad.is_err());
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

    /// `zkfs umount DIR`, spelt like umount(8), unmounts: it used to be taken
    /// for `zkfs mount umount DIR`, a mount of a server named "umount".
    #[test]
    fn umount_is_unmount() {
        let args: Vec<OsString> = ["zkfs", "umount", "-z", "/mnt/zk"]
            .iter()
            .map(OsString::from)
            .collect();
        let cli =
            Cli::try_parse_from(expand_mount_options(default_to_mount(args))).expect("parses");
        let Command::Unmount(u) = cli.command else {
            panic!("not unmount")
        };
        assert!(u.lazy);
        assert_eq!(u.mountpoint, std::path::Path::new("/mnt/zk"));
    }

    #[test]
    fn another_commands_dash_o_is_left_alone() {
        // `zkfs watch P -- ssh -o X host`: CMD's `-o` became `--X`.
        for argv in [
            &[
                "zkfs",
                "watch",
                "/m/p",
                "--",
                "ssh",
                "-o",
                "BatchMode=yes",
                "h",
            ][..],
            &[
                "zkfs",
                "register",
                "/m/s/x",
                "--",
                "ssh",
                "-oBatchMode=yes",
                "h",
            ],
        ] {
            let out = expand_mount_options(os(argv));
            assert_eq!(strings(&out), argv, "{argv:?}");
            assert!(check_mount_options(&os(argv), false).is_ok(), "{argv:?}");
        }
    }

    #[test]
    fn dash_o_mistakes_are_named_as_dash_o_options() {
        let check = |opts: &str| check_mount_options(&os(&["zkfs", "mount", "-o", opts]), false);
        assert!(check("ro,session_timeout=4s,attrs=a=::0600,_netdev,x-systemd.automount").is_ok());
        let err = |opts: &str| check(opts).expect_err(opts);
        assert!(err("bogus_key").contains("unknown mount option 'bogus_key'"));
        assert!(err("ro=1").contains("'ro' takes no value"));
        assert!(err("session_timeout").contains("needs a value"));
        assert!(err("foreground").contains("mount(8)"));
        let sloppy = check_mount_options(&os(&["zkfs", "mount", "-o", "bogus=1"]), true);
        assert!(sloppy.is_ok(), "mount -s drops unknown options");
    }

    #[test]
    fn unknown_dash_o_is_an_error() {
        let args: Vec<OsString> = ["zkfs", "mount", "-o", "bogus=1", "s", "m"]
            .iter()
            .map(OsString::from)
            .collect();
        assert!(Cli::try_parse_from(expand_mount_options(args)).is_err());
    }

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn generic_and_systemd_options_are_ignored_or_applied() {
        let opts = "ro,_netdev,nofail,noauto,auto,defaults,rw,x-systemd.automount,\
                    x-systemd.mount-timeout=30,comment=systemd.automount,user,users,\
                    default_permissions,nonempty,fsname=zk-main";
        let out = expand_mount_options(os(&["zkfs", "mount", "-o", opts, "s", "m"]));
        assert_eq!(
            strings(&out),
            [
                "zkfs",
                "mount",
                "--read-only",
                "--default-permissions",
                "--nonempty",
                "--fsname=zk-main",
                "s",
                "m"
            ]
        );
        let cli = Cli::try_parse_from(out).expect("parses");
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert!(m.read_only && m.default_permissions && m.nonempty);
        assert_eq!(m.fsname.as_deref(), Some("zk-main"));
    }

    #[test]
    fn sloppy_expansion_drops_unknown_options() {
        let known = mount_long_options();
        assert!(known.iter().any(|k| k == "session-timeout"));
        let out = expand_mount_options_with(
            os(&[
                "zkfs",
                "mount",
                "-o",
                "bogus=1,session_timeout=4s",
                "s",
                "m",
            ]),
            Some(&known),
        );
        assert_eq!(
            strings(&out),
            ["zkfs", "mount", "--session-timeout=4s", "s", "m"]
        );
    }

    #[test]
    fn mount_helper_flags() {
        let call = mount_helper_args(os(&[
            "/sbin/mount.zkfs",
            "zk1/app",
            "/mnt/zk",
            "-sv",
            "-n",
            "-o",
            "ro,_netdev",
            "-t",
            "zkfs",
        ]))
        .expect("helper args");
        assert!(call.sloppy && !call.fake);
        assert_eq!(
            strings(&call.args),
            ["zkfs", "mount", "-o", "ro,_netdev", "zk1/app", "/mnt/zk"]
        );
        let fake = mount_helper_args(os(&["mount.zkfs", "-f", "a", "b"])).expect("fake");
        assert!(fake.fake);
        assert!(mount_helper_args(os(&["mount.zkfs", "a"])).is_err());
        assert!(mount_helper_args(os(&["mount.zkfs", "-q", "a", "b"])).is_err());
        assert!(is_mount_helper("/usr/sbin/mount.zkfs".as_ref()));
        assert!(!is_mount_helper("/usr/bin/zkfs".as_ref()));
    }

    #[test]
    fn hosts_without_a_port_get_2181() {
        assert_eq!(normalize_servers("zk1").as_deref(), Ok("zk1:2181"));
        assert_eq!(
            normalize_servers("zk1,zk2:2182/app/x").as_deref(),
            Ok("zk1:2181,zk2:2182/app/x")
        );
        assert_eq!(
            normalize_servers("[::1],[fe80::1]:2000").as_deref(),
            Ok("[::1]:2181,[fe80::1]:2000")
        );
        assert!(normalize_servers("zk1:http").is_err());
        assert!(normalize_servers("zk1,,zk2").is_err());
        assert!(normalize_servers(":2181").is_err());
    }
}
