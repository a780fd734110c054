//! `zkfs mount`: checks the start conditions (mount point, credentials),
//! detaches into the background (re-executing itself with `--foreground` and
//! waiting for a readiness message), then wires the layers together:
//! ZooKeeper session → store → filesystem core → fuser adapter, plus the
//! watch-event loop, the invalidation thread, systemd notification and
//! signal handling (SIGTERM/SIGINT/SIGQUIT unmount and exit 0; SIGHUP reopens the
//! log file). Owns process lifetime only.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use crate::cli::{ChmodPolicy, MountArgs};
use crate::events::{EventHub, EventSocket};
use crate::fs::attr::Presentation;
use crate::fs::attrs::AttrRules;
use crate::fs::glob::DirGlob;
use crate::fs::{FsConfig, MountStatus, Opens, ZkFs};
use crate::fuse::busy_poll::BusyPoll;
use crate::fuse::counters::KernelRequestCounters;
use crate::fuse::{ZkFuse, invalidate};
use crate::logging::{Destination, LogHandle};
use crate::notify::{NOTIFY_SOCKET_ENV, Notifier};
use crate::zk::Store;
use crate::zk::session::{Credentials, NewNodeAcl, SessionConfig, SessionEvent, ZkSession};

/// The device-polling window to use, if any: polling needs a second CPU
/// (on one CPU the poller would take turns with the very process it waits for).
fn busy_poll_window(requested: Duration) -> Option<Duration> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (!requested.is_zero() && cpus >= 2).then_some(requested)
}

/// FUSE worker threads of a writable mount whose device is not polled
/// (override with ZKFS_FUSE_THREADS).
const FUSE_THREADS: usize = 4;

/// FUSE worker threads of a read-only mount whose device is not polled
/// (override with ZKFS_FUSE_THREADS): the kernel opens and reads its files
/// by itself, and a worker does not wait for ZooKeeper (it answers cache
/// hits and hands the rest to the runtime; at most it waits for the store's
/// lock while a resync records a wave of answers), so more would mostly
/// wait. Each worker keeps a receive buffer and a stack: three more cost
/// 640 KiB resident after the 10,000-entry rows of `bench_list` (12,204
/// KiB against 11,464–11,676 with one), with cold `ls -l` 0.18–0.21 s
/// against 0.16–0.17 s.
const FUSE_THREADS_READ_ONLY: usize = 1;

/// Environment variable naming the pipe a background daemon reports readiness on.
const READY_FD_ENV: &str = "ZKFS_READY_FD";

/// A start failure: one line for the user, and the exit status.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: 1,
        }
    }
}

/// Where a running mount reports "ready" or its start failure.
enum Reporter {
    Terminal,
    Pipe(File),
}

impl Reporter {
    fn from_env() -> Self {
        match std::env::var(READY_FD_ENV)
            .ok()
            .and_then(|v| v.parse::<RawFd>().ok())
        {
            Some(fd) if fd > 2 => {
                // Keep it out of helpers we start (fusermount3 would hold it open).
                // SAFETY: the parent created this descriptor for us and passed its number.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                Reporter::Pipe(unsafe { File::from_raw_fd(fd) })
            }
            _ => Reporter::Terminal,
        }
    }

    fn ready(&mut self) {
        if let Reporter::Pipe(f) = self {
            let _ = f.write_all(b"ok\n");
        }
        *self = Reporter::Terminal;
    }

    fn fail(&mut self, failure: &Failure) {
        if let Reporter::Pipe(f) = self {
            let _ = writeln!(f, "{}", failure.message);
        }
    }
}

/// Whether `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let target = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == target)
}

/// What is mounted on `path` now, oldest first: each mount's id (the first
/// field of its mountinfo line) and filesystem type (`fuse.zkfs`, ...).
fn mounts_at(path: &Path) -> Vec<(u64, String)> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let target = path.to_string_lossy();
    info.lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| unescape_mountinfo(mp) == target)
        })
        .filter_map(|l| {
            let id = l.split(' ').next()?.parse().ok()?;
            let (_, after) = l.split_once(" - ")?;
            Some((id, after.split(' ').next()?.to_string()))
        })
        .collect()
}

/// The filesystem type of what is mounted on `path` now (the topmost of
/// the mounts there), e.g. `fuse.zkfs`; `None` when nothing is.
pub fn mounted_fstype(path: &Path) -> Option<String> {
    mounts_at(path).pop().map(|(_, fstype)| fstype)
}

/// The kernel's id of the topmost zkfs mount on `path`, if there is one.
pub fn mount_id(path: &Path) -> Option<u64> {
    mounts_at(path)
        .into_iter()
        .rev()
        .find(|(_, fstype)| fstype == ZKFS_FSTYPE)
        .map(|(id, _)| id)
}

/// The type zkfs mounts have (`-o subtype=zkfs`).
pub const ZKFS_FSTYPE: &str = "fuse.zkfs";

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// After SIGTERM/SIGINT has unmounted, how long the daemon waits for the
/// kernel to end the FUSE session (it cannot while files on a lazily
/// detached mount are open) before it closes its session and exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Bound on closing the ZooKeeper session at shutdown (a close takes a few
/// milliseconds; a server that stopped answering must not hold up the exit).
const CLOSE_TIMEOUT: Duration = Duration::from_millis(300);

fn check_mountpoint(path: &Path, nonempty: bool) -> Result<PathBuf, Failure> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Failure::new(format!("mount point {} does not exist", path.display()))
        }
        _ => Failure::new(format!("mount point {}: {e}", path.display())),
    })?;
    if !meta.is_dir() {
        return Err(Failure::new(format!(
            "mount point {} is not a directory",
            path.display()
        )));
    }
    let canonical = path
        .canonicalize()
        .map_err(|e| Failure::new(format!("mount point {}: {e}", path.display())))?;
    if is_mount_point(&canonical) {
        return Err(Failure::new(format!(
            "mount point {} is busy: something is already mounted there",
            canonical.display()
        )));
    }
    if !nonempty {
        let mut entries = std::fs::read_dir(&canonical)
            .map_err(|e| Failure::new(format!("mount point {}: {e}", canonical.display())))?;
        if entries.next().is_some() {
            return Err(Failure::new(format!(
                "mount point {} is not empty (mounting would hide its files); \
                 use --nonempty (-o nonempty) to mount over them",
                canonical.display()
            )));
        }
    }
    Ok(canonical)
}

/// Refuse an auth file that users other than its owner may read or change
/// (like ssh and s3fs do): the password would not be secret.
fn check_auth_file_mode(path: &Path, file: &File) -> Result<(), Failure> {
    let mode = file
        .metadata()
        .map_err(|e| Failure::new(format!("auth file {}: {e}", path.display())))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Failure::new(format!(
            "auth file {} is readable or writable by group or others (mode {:04o}); \
             run chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        )));
    }
    Ok(())
}

/// Digest credentials from `--auth-file` or `ZKFS_AUTH` (never from argv).
fn load_credentials(args: &MountArgs) -> Result<Option<Credentials>, Failure> {
    let text = match &args.auth_file {
        Some(path) => {
            let io_failure =
                |e: std::io::Error| Failure::new(format!("auth file {}: {e}", path.display()));
            let mut file = File::open(path).map_err(io_failure)?;
            check_auth_file_mode(path, &file)?;
            let mut text = String::new();
            file.read_to_string(&mut text).map_err(io_failure)?;
            text
        }
        None => match std::env::var("ZKFS_AUTH") {
            Ok(v) => v,
            Err(_) => return Ok(None),
        },
    };
    let text = text.trim_end_matches(['\n', '\r']).to_string();
    if !text.contains(':') || text.starts_with(':') {
        let origin = args
            .auth_file
            .as_ref()
            .map_or("ZKFS_AUTH".to_string(), |p| {
                format!("auth file {}", p.display())
            });
        return Err(Failure::new(format!("{origin}: expected user:password")));
    }
    if args.new_node_acl == crate::cli::NewNodeAclChoice::Creator && text.is_empty() {
        return Err(Failure::new("--new-node-acl creator needs credentials"));
    }
    Ok(Some(Credentials(text)))
}

/// `zkfs mount`. Returns once the mount is ready (background) or unmounted
/// (foreground). `argv` is the command line as parsed (after `-o` expansion
/// and the mount helper's translation), re-used to start the background daemon.
pub fn mount(args: MountArgs, argv: Vec<OsString>) -> Result<(), Failure> {
    let mountpoint = check_mountpoint(&args.mountpoint, args.nonempty)?;
    let credentials = load_credentials(&args)?;
    if args.new_node_acl == crate::cli::NewNodeAclChoice::Creator && credentials.is_none() {
        return Err(Failure::new(
            "--new-node-acl creator needs credentials (--auth-file or ZKFS_AUTH)",
        ));
    }
    if !args.foreground {
        return spawn_background(&args, argv);
    }
    let mut reporter = Reporter::from_env();
    let result = run_foreground(args, mountpoint, &mut reporter);
    crate::events::remove_socket();
    if let Err(failure) = &result {
        reporter.fail(failure);
    }
    result
}

/// Re-execute ourselves with `--foreground` in a new session and wait until
/// the child reports the mount ready (or its failure).
fn spawn_background(args: &MountArgs, argv: Vec<OsString>) -> Result<(), Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::new(format!("cannot find own executable: {e}")))?;
    let mut fds = [0 as RawFd; 2];
    // SAFETY: plain pipe creation into a 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Failure::new(format!(
            "cannot create pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    // SAFETY: both descriptors were just created and are owned here.
    let mut reader = unsafe { File::from_raw_fd(read_fd) };
    let writer = unsafe { File::from_raw_fd(write_fd) };

    // argv is `zkfs mount ARGS...`: keep ARGS, add --foreground.
    let mut argv: Vec<OsString> = argv.into_iter().skip(2).collect();
    argv.insert(0, "--foreground".into());
    argv.insert(0, "mount".into());

    let stderr = match &args.log_file {
        Some(path) if path == Path::new("-") => Stdio::inherit(),
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .map_err(|e| Failure::new(format!("log file {}: {e}", path.display())))?,
        None => Stdio::null(),
    };
    let mut command = Command::new(exe);
    command
        .args(&argv)
        .env(READY_FD_ENV, write_fd.to_string())
        // The daemon is not the process a service manager started: only
        // `--foreground` talks to systemd.
        .env_remove(NOTIFY_SOCKET_ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(write_fd, libc::F_SETFD, 0) != 0 || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| Failure::new(format!("cannot start daemon: {e}")))?;
    drop(writer);

    let limit = args.connect_timeout + Duration::from_secs(30);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The first line is the verdict; don't wait for EOF.
        let mut text = String::new();
        let mut byte = [0u8; 1];
        while let Ok(1) = reader.read(&mut byte) {
            if byte[0] == b'\n' {
                break;
            }
            text.push(byte[0] as char);
        }
        let _ = tx.send(text);
    });
    match rx.recv_timeout(limit) {
        Ok(text) if text.starts_with("ok") => Ok(()),
        Ok(text) => {
            let _ = child.wait();
            let message = text.trim();
            Err(Failure::new(if message.is_empty() {
                "daemon exited before the mount was ready (see --log-file)".to_string()
            } else {
                message.to_string()
            }))
        }
        Err(_) => {
            let _ = child.kill();
            Err(Failure::new(format!(
                "mount was not ready within {limit:?}; daemon stopped"
            )))
        }
    }
}

/// Block the termination signals in this thread (and every thread it starts);
/// a dedicated thread waits for them with `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        // SIGQUIT too, ending the daemon as SIGTERM does: its default (a
        // core dump) with requests in flight leaves them hanging in the
        // kernel until the dump ends, which an invalidation blocked in the
        // kernel can keep from ever happening (use gcore for a dump).
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// One turn of the daemon's event loop.
enum Step {
    Event(SessionEvent),
    /// A resync fell due.
    Due,
    /// The running resync ended.
    Done(Result<Vec<crate::zk::Change>, tokio::task::JoinError>),
}

/// The longest a resync waits, after its reads, for the kernel to take the
/// invalidations of what it found (see the resync task).
const INVALIDATIONS_WAIT: Duration = Duration::from_secs(1);

/// First wait before repeating a resync that could not read everything
/// while connected; doubled up to [`RESYNC_RETRY_MAX`].
const RESYNC_RETRY_FIRST: Duration = Duration::from_secs(1);
const RESYNC_RETRY_MAX: Duration = Duration::from_secs(30);

/// Ask for a resync after a random delay below `limit`, unless one is due
/// already (it will read the state after this reconnect too: the watch for
/// the new connection is in place before the request). A fleet of mounts
/// that reconnect together (a leader failover, a server's restart) so sends
/// its resyncs spread over `limit` instead of in one burst.
fn resync_due(due: &mut Option<tokio::time::Instant>, limit: Duration, lifecycle: &Lifecycle) {
    lifecycle.resync_pending.store(true, Ordering::Relaxed);
    if due.is_none() {
        *due = Some(tokio::time::Instant::now() + crate::zk::session::jitter(limit));
    }
}

/// Session lifecycle events seen by the event loop, for `zkfs status`.
#[derive(Default)]
struct Lifecycle {
    /// Resyncs that compared every cached node with the server.
    resyncs: AtomicU64,
    /// A resync was asked for (reconnect, new session) and has not yet
    /// completed: cached data may miss changes made during the gap.
    resync_pending: std::sync::atomic::AtomicBool,
    /// Reconnections within the same session (events may have been lost).
    reconnects: AtomicU64,
    /// Expired sessions replaced by a new one.
    session_expiries: AtomicU64,
    /// When the last resync that compared every node ended, in ms since the
    /// epoch (0: none yet).
    last_resync_ms: AtomicU64,
}

/// `t` in ms since the epoch (0 before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct SessionStatus {
    session: Arc<ZkSession>,
    kernel_requests: Arc<KernelRequestCounters>,
    lifecycle: Arc<Lifecycle>,
    events_socket: Option<String>,
}

impl MountStatus for SessionStatus {
    fn attributes(&self) -> Vec<(String, String)> {
        let s = self.session.status();
        let last_contact_ms = unix_ms(s.last_contact);
        let connected_since_ms = s.connected_since.map_or(0, unix_ms);
        vec![
            ("state".into(), s.state.as_str().into()),
            ("session_id".into(), format!("{:#x}", s.session_id)),
            ("server".into(), s.servers),
            ("last_contact".into(), last_contact_ms.to_string()),
            ("connected_since".into(), connected_since_ms.to_string()),
            ("requests".into(), s.requests.to_string()),
            ("pid".into(), std::process::id().to_string()),
            ("kernel_requests".into(), self.kernel_requests.summary()),
            (
                "reconnects".into(),
                self.lifecycle
                    .reconnects
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "resyncs".into(),
                self.lifecycle.resyncs.load(Ordering::Relaxed).to_string(),
            ),
            (
                "last_resync".into(),
                self.lifecycle
                    .last_resync_ms
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "resync_pending".into(),
                u8::from(self.lifecycle.resync_pending.load(Ordering::Relaxed)).to_string(),
            ),
            (
                "session_expiries".into(),
                self.lifecycle
                    .session_expiries
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
        ]
        .into_iter()
        .chain(
            self.events_socket
                .clone()
                .map(|p| ("events_socket".into(), p)),
        )
        .collect()
    }
}

/// The chroot of a connection string (`/bank` of `zk1:2181/bank/`), "" without one.
fn chroot_of(servers: &str) -> String {
    servers
        .find('/')
        .map(|i| servers[i..].trim_end_matches('/').to_string())
        .unwrap_or_default()
}

fn run_foreground(
    args: MountArgs,
    mountpoint: PathBuf,
    reporter: &mut Reporter,
) -> Result<(), Failure> {
    let signals = block_signals();
    let background = matches!(reporter, Reporter::Pipe(_));
    let destination = Destination::choose(args.log_file.as_deref(), background);
    let log = crate::logging::init(args.log_level.as_deref(), &destination, background)?;
    // A panic (a bug) reaches the log too, not only stderr (which is
    // /dev/null in the background with syslog); the request it happened in
    // is answered `EIO` (fuse/mod.rs).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!(%info, "panic (a bug in zkfs)");
        default_hook(info);
    }));
    // `mount -o ro` over an fstab line with write options: the mount is
    // read-only, and says what that leaves unused.
    if args.read_only && (!args.ephemeral.is_empty() || args.last_writer_wins) {
        warn!(
            "--read-only: --ephemeral and --last-writer-wins have no effect on a read-only mount"
        );
    }
    // Read before anything could change the environment; only the process
    // systemd started (the foreground one) has NOTIFY_SOCKET.
    let notifier = Arc::new(Notifier::from_env());
    // Handle signals from the start: one during a long connect attempt ends
    // the start at once instead of when --connect-timeout runs out.
    let mounted: Arc<Mutex<Option<Mounted>>> = Arc::default();
    // Dropped when this function returns: tells the signal thread the
    // session ended by itself after its unmount.
    let (served_tx, served_rx) = std::sync::mpsc::channel::<()>();
    let signal_thread = SignalThread {
        signals,
        log,
        notifier: notifier.clone(),
        mounted: mounted.clone(),
        served: served_rx,
    };
    std::thread::Builder::new()
        .name("zkfs-signals".into())
        .spawn(move || signal_thread.run())
        .map_err(|e| Failure::new(format!("cannot start signal thread: {e}")))?;
    let servers = crate::cli::normalize_servers(&args.servers).map_err(Failure::new)?;
    crate::memory::spawn_trimmer()
        .map_err(|e| Failure::new(format!("cannot start the memory trimmer thread: {e}")))?;

    let scheduler = Scheduler::start()?;
    let runtime = scheduler.runtime.clone();

    let credentials = load_credentials(&args)?;
    let identity = credentials.as_ref().map(|c| c.user().to_string());
    let session_config = SessionConfig {
        servers: servers.clone(),
        root: args.root.clone(),
        session_timeout: args.session_timeout,
        op_timeout: args.op_timeout,
        connect_timeout: args.connect_timeout,
        credentials: credentials.clone(),
        new_node_acl: if args.new_node_acl == crate::cli::NewNodeAclChoice::Creator {
            NewNodeAcl::Creator
        } else {
            NewNodeAcl::Open
        },
    };
    let persist = args
        .cache_dir
        .as_deref()
        .map(|dir| crate::persist::Persist::new(dir, &servers, &args.root));
    // Read only when ZooKeeper does not answer in time.
    let mut restore = None;
    let last_known = || {
        restore = persist.as_ref().and_then(|p| p.load());
        restore
            .as_ref()
            .map(|s| UNIX_EPOCH + Duration::from_millis(s.taken_ms))
    };
    let session = Arc::new(
        runtime
            .block_on(ZkSession::connect_or_unconnected(
                session_config,
                last_known,
            ))
            .map_err(Failure::new)?,
    );
    let persist = persist.map(|p| match &restore {
        Some(s) => Arc::new(p.serving(s)),
        None => Arc::new(p),
    });

    let read_only = args.read_only;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let fs_config = FsConfig {
        root: args.root.clone(),
        data_name: args.data_name.clone(),
        presentation: Presentation {
            uid: args.uid.unwrap_or(uid),
            gid: args.gid.unwrap_or(gid),
            file_mode: args.file_mode,
            dir_mode: args.dir_mode,
            read_only,
            identity,
            attrs: AttrRules::new(&args.root, args.attrs.clone()),
        },
        max_data: args.max_data as usize,
        last_writer_wins: args.last_writer_wins,
        chrooted: args.servers.contains('/'),
        chroot: chroot_of(&args.servers),
        chmod_ignore: args.chmod == ChmodPolicy::Ignore,
        pointers: args.pointers == crate::cli::PointersChoice::Auto,
        mountpoint: mountpoint.clone(),
        ephemeral: args
            .ephemeral
            .iter()
            .map(|g| DirGlob::parse(g))
            .collect::<Result<_, _>>()
            .map_err(Failure::new)?,
        // A read-only mount has nothing to send at close: let the kernel
        // open by itself (no round trip per open; doc/SEMANTICS.md "Opens").
        opens: if read_only {
            Opens::Kernel
        } else {
            Opens::Handles
        },
    };
    let (invalidator, invalidations) = invalidate::channel();
    let kernel_requests = Arc::new(KernelRequestCounters::default());
    let lifecycle = Arc::new(Lifecycle::default());
    let event_socket = EventSocket::bind()
        .map_err(|e| warn!(error = %e, "cannot create the change notification socket; zkfs watch will not work"))
        .ok();
    let store =
        Store::new(session.clone(), args.cache_size as usize).with_connect_wait(args.op_timeout);
    if let Some(snapshot) = restore {
        warn!(
            nodes = snapshot.nodes.len(),
            taken_ms = snapshot.taken_ms,
            "ZooKeeper unreachable: serving the --cache-dir snapshot as last known data"
        );
        store.restore_snapshot(snapshot.nodes);
    }
    let mut status: Box<dyn MountStatus> = Box::new(SessionStatus {
        session: session.clone(),
        kernel_requests: kernel_requests.clone(),
        lifecycle: lifecycle.clone(),
        events_socket: event_socket
            .as_ref()
            .map(|s| s.path().to_string_lossy().into_owned()),
    });
    if let Some(persist) = &persist {
        status = Box::new(crate::persist::WithSource {
            inner: status,
            persist: persist.clone(),
        });
    }
    let fs = Arc::new(ZkFs::new(store, fs_config, Box::new(invalidator), status));
    fs.register_arc();
    let busy_poll = busy_poll_window(args.busy_poll_window()).map(|w| Arc::new(BusyPoll::new(w)));
    let adapter = ZkFuse::new(
        fs.clone(),
        runtime.handle().clone(),
        args.op_timeout,
        kernel_requests,
        busy_poll.clone(),
    );

    let is_root = uid == 0;
    // findmnt's SOURCE: the connection string as given, so an operator sees
    // which ensemble a mount serves (fusermount3 splits options at commas).
    let fsname = args.fsname.clone().unwrap_or_else(|| args.servers.clone());
    let mut options = vec![
        fuser::MountOption::FSName(fsname.replace('\\', "\\\\").replace(',', "\\,")),
        fuser::MountOption::Subtype("zkfs".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if read_only {
        options.push(fuser::MountOption::RO);
    }
    if args.allow_other || args.default_permissions {
        options.push(fuser::MountOption::DefaultPermissions);
    }
    // Auto-unmount (the fusermount3 helper unmounts when the daemon dies) needs
    // allow_other or root in fuser; without it a killed daemon leaves a dead
    // mount until `zkfs unmount`.
    let auto_unmount = is_root || args.allow_other;
    if auto_unmount {
        options.push(fuser::MountOption::AutoUnmount);
    } else {
        warn!(
            "not root and no --allow-other: auto-unmount unavailable; after a crash run `zkfs unmount`"
        );
    }
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = if args.allow_other {
        fuser::SessionACL::All
    } else if auto_unmount {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    // A polling device is served by one worker (more would all poll);
    // it answers cache hits and hands everything else to the runtime.
    config.n_threads = Some(if busy_poll.is_some() {
        1
    } else {
        std::env::var("ZKFS_FUSE_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n >= 1)
            .unwrap_or(if read_only {
                FUSE_THREADS_READ_ONLY
            } else {
                FUSE_THREADS
            })
    });
    config.clone_fd = std::env::var("ZKFS_FUSE_CLONE_FD").is_ok_and(|v| v == "1");

    // Held while mounting, so a signal sees either no mount or a complete one.
    let mut stage = mounted.lock().unwrap_or_else(|e| e.into_inner());
    let fuse_session = fuser::Session::new(adapter, &mountpoint, &config)
        .map_err(|e| Failure::new(format!("cannot mount on {}: {e}", mountpoint.display())))?;
    *stage = Some(Mounted {
        mountpoint: mountpoint.clone(),
        session: session.clone(),
        runtime: runtime.handle().clone(),
    });
    drop(stage);
    if let Some(poll) = &busy_poll {
        poll.attach(std::os::fd::AsFd::as_fd(&fuse_session))
            .map_err(|e| Failure::new(format!("cannot start device polling: {e}")))?;
    }
    let device = std::os::fd::AsFd::as_fd(&fuse_session)
        .try_clone_to_owned()
        .map_err(|e| warn!(error = %e, "cannot duplicate the FUSE device; entries are removed, not expired"))
        .ok();
    invalidate::spawn_sender(invalidations, fuse_session.notifier(), device)
        .map_err(|e| Failure::new(format!("cannot start invalidation thread: {e}")))?;

    let hub = Arc::new(EventHub::new(&args.root, &args.data_name));
    {
        let fs = fs.clone();
        let warm: crate::events::Warm = Arc::new(move |node: String| {
            let fs = fs.clone();
            Box::pin(async move { crate::events::warm(fs.store(), &node).await })
        });
        if let Some(socket) = event_socket {
            socket
                .serve(hub.clone(), warm, runtime.handle().clone())
                .map_err(Failure::new)?;
        }
    }
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    {
        // The follow loop must not die silently (the cache would go stale
        // forever): restart it if it ever panics.
        let session = session.clone();
        runtime.spawn(async move {
            loop {
                let (session, events) = (session.clone(), events_tx.clone());
                match tokio::spawn(async move { session.run(events).await }).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "session task failed; restarting it");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    {
        let fs = fs.clone();
        runtime.spawn(async move { fs.supervise_registrations().await });
    }
    if persist.is_some() {
        // The mount root in the cache, so that every --cache-dir snapshot
        // has it: a mount started from one answers `stat` of its root (a
        // path walk never asks for the root itself). A cache hit when the
        // kernel asked already; otherwise one getData, or the snapshot's.
        let fs = fs.clone();
        let root = args.root.clone();
        runtime.spawn(async move {
            let _ = fs.store().node(&root).await;
        });
    }
    if let Some(persist) = &persist {
        let session = session.clone();
        runtime.spawn(
            persist
                .clone()
                .keep_written(fs.clone(), move || snapshot_taken_ms(&session)),
        );
    }
    {
        let fs = fs.clone();
        let lifecycle = lifecycle.clone();
        let persist = persist.clone();
        let session = session.clone();
        let jitter_limit = crate::zk::session::resync_jitter_limit(args.session_timeout);
        runtime.spawn(async move {
            // Resyncs are spread (see `resync_due`) and run as tasks of
            // their own: events keep being applied while one reads (the
            // store and `ZkFs::resync` drop findings older than an event
            // applied meanwhile). Every event sent before a resync was asked
            // for has been applied by the time it starts (one channel, in
            // order), and the root watch was in place before it was asked
            // for. One resync at a time; one asked for while another runs
            // starts after it.
            let mut due: Option<tokio::time::Instant> = None;
            let mut running: Option<tokio::task::JoinHandle<Vec<crate::zk::Change>>> = None;
            let mut retry = RESYNC_RETRY_FIRST;
            loop {
                let step = tokio::select! {
                    event = events_rx.recv() => match event {
                        Some(event) => Step::Event(event),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)),
                        if due.is_some() && running.is_none() => Step::Due,
                    done = async {
                        match running.as_mut() {
                            Some(resync) => resync.await,
                            None => std::future::pending().await,
                        }
                    }, if running.is_some() => Step::Done(done),
                };
                match step {
                    Step::Event(SessionEvent::Node(e)) => {
                        let refresh = fs.apply_event(&e);
                        hub.publish(&e.path, e.kind);
                        if let Some(path) = refresh {
                            let fs = fs.clone();
                            tokio::spawn(async move { fs.refresh(&path).await });
                        }
                    }
                    Step::Event(SessionEvent::Resync) => {
                        lifecycle.reconnects.fetch_add(1, Ordering::Relaxed);
                        fs.watch_back();
                        fs.reregister();
                        resync_due(&mut due, jitter_limit, &lifecycle);
                        retry = RESYNC_RETRY_FIRST;
                    }
                    Step::Event(SessionEvent::Expired) => fs.session_ended(),
                    Step::Event(SessionEvent::NewSession) => {
                        lifecycle.session_expiries.fetch_add(1, Ordering::Relaxed);
                        fs.watch_back();
                        fs.reregister();
                        resync_due(&mut due, jitter_limit, &lifecycle);
                        retry = RESYNC_RETRY_FIRST;
                    }
                    // Disconnected again before it was due: every read
                    // would wait out --op-timeout for nothing. The
                    // reconnect asks for it again (resync stays pending).
                    Step::Due if !crate::zk::backend::ZkBackend::is_connected(&*session) => {
                        due = None;
                        debug!("resync put off: disconnected again; the reconnect asks for it");
                    }
                    Step::Due => {
                        due = None;
                        let fs = fs.clone();
                        // Ended once what it found is visible: until the
                        // kernel has its invalidations, a read may still
                        // find the page or dentry they drop (bounded: a
                        // notification can wait on the kernel's locks).
                        running = Some(tokio::spawn(async move {
                            let changes = fs.resync().await;
                            if tokio::time::timeout(INVALIDATIONS_WAIT, fs.invalidations_delivered())
                                .await
                                .is_err()
                            {
                                debug!("resync: the kernel had not taken its invalidations after {INVALIDATIONS_WAIT:?}");
                            }
                            changes
                        }));
                    }
                    Step::Done(done) => {
                        running = None;
                        let changes = match done {
                            Ok(changes) => changes,
                            // Only at runtime shutdown (a resync does not panic).
                            Err(e) => {
                                warn!(error = %e, "resync task ended without an answer");
                                continue;
                            }
                        };
                        hub.publish_changes(&changes);
                        if let Some(persist) = &persist {
                            persist.resynchronised();
                        }
                        if fs.store().resync_complete() {
                            lifecycle.resyncs.fetch_add(1, Ordering::Relaxed);
                            lifecycle
                                .last_resync_ms
                                .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
                            // (Another asked for meanwhile keeps it pending.)
                            if due.is_none() {
                                lifecycle.resync_pending.store(false, Ordering::Relaxed);
                            }
                        } else if crate::zk::backend::ZkBackend::is_connected(&*session) {
                            // Some reads failed while connected (timeouts):
                            // try again, backing off.
                            warn!(retry_in = ?retry, "resync incomplete; repeating it");
                            due.get_or_insert(tokio::time::Instant::now() + retry);
                            retry = (retry * 2).min(RESYNC_RETRY_MAX);
                        }
                        // Else the connection went: its return asks again.
                    }
                }
            }
        });
    }

    match mount_id(&mountpoint) {
        Some(id) => fs.set_mount_id(id),
        None => {
            debug!(mountpoint = %mountpoint.display(), "no mount id found: opens wait for pending releases")
        }
    }
    info!(servers = %servers, root = %args.root, mountpoint = %mountpoint.display(), "mounted");
    reporter.ready();
    notifier.ready();
    let served = fuse_session.run();
    // The session has ended: a signal thread waiting for it leaves the
    // rest (final snapshot, session close) to this thread, however long
    // that takes, instead of exiting in the middle of it.
    drop(served_tx);
    notifier.stopping();
    info!(mountpoint = %mountpoint.display(), "unmounted");
    if let Some(persist) = &persist {
        persist.write_final(fs.store(), snapshot_taken_ms(&session));
    }
    runtime.block_on(close_session(&session));
    drop(runtime);
    scheduler.stop();
    match served {
        // The kernel ends a connection whose mount is gone with ENODEV
        // (fuser's Ok) or, when it aborts requests still queued at that
        // moment (a lazily detached mount whose last file closes), with
        // ECONNABORTED: both are the end of the mount, not a failure.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            tracing::debug!("FUSE connection aborted by the kernel at unmount");
            Ok(())
        }
        served => served.map_err(|e| Failure::new(format!("FUSE session failed: {e}"))),
    }
}

/// The daemon's tokio runtime and the thread that runs its tasks.
///
/// One scheduler thread (a current-thread runtime driven by `zkfs-rt`),
/// not a multi-thread one: the FUSE threads answer cache hits themselves
/// and the ZooKeeper client runs on a thread of its own (`zk/host.rs`), so
/// what is left for the runtime (misses, events, resyncs) never had two
/// workers' worth of work on a 2-core host. Its scheduler's statistics are
/// also the only user of libm in the process (`powf`), whose loading alone
/// keeps about 500 KiB resident. Other threads may `block_on` it (start-up,
/// close, the signal thread): they join the driving thread's I/O and timers.
struct Scheduler {
    runtime: Arc<tokio::runtime::Runtime>,
    /// Dropped (with the scheduler, on an early return too) to end the
    /// scheduler thread.
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Scheduler {
    fn start() -> Result<Scheduler, Failure> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(Arc::new)
            .map_err(|e| Failure::new(format!("cannot start runtime: {e}")))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let driven = runtime.clone();
        let thread = std::thread::Builder::new()
            .name("zkfs-rt".into())
            .spawn(move || {
                driven.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(|e| Failure::new(format!("cannot start the runtime thread: {e}")))?;
        Ok(Scheduler {
            runtime,
            stop,
            thread,
        })
    }

    /// End the scheduler thread, then the runtime (call with no other
    /// holder of it left): its tasks are dropped, blocking ones given
    /// 200 ms.
    fn stop(self) {
        let Scheduler {
            runtime,
            stop,
            thread,
        } = self;
        drop(stop);
        if thread.join().is_err() {
            warn!("the runtime thread panicked");
        }
        match Arc::try_unwrap(runtime) {
            Ok(runtime) => runtime.shutdown_timeout(Duration::from_millis(200)),
            Err(_) => warn!("the runtime is still shared at exit; not waiting for its tasks"),
        }
    }
}

/// When the cached data was last known current: now while connected, else
/// the last contact with ZooKeeper (for `--cache-dir` snapshots).
fn snapshot_taken_ms(session: &ZkSession) -> u64 {
    crate::persist::epoch_ms(session.status().last_contact)
}

/// Close the ZooKeeper session (its ephemeral nodes go at once), bounded.
async fn close_session(session: &ZkSession) {
    if tokio::time::timeout(CLOSE_TIMEOUT, session.close())
        .await
        .is_err()
    {
        warn!("closing the ZooKeeper session timed out; its ephemeral nodes go when it expires");
    }
}

/// What a shutdown acts on once the file system is mounted.
struct Mounted {
    mountpoint: PathBuf,
    session: Arc<ZkSession>,
    runtime: tokio::runtime::Handle,
}

/// Waits for SIGTERM, SIGINT, SIGQUIT and SIGHUP (blocked in every other thread).
struct SignalThread {
    signals: libc::sigset_t,
    log: LogHandle,
    notifier: Arc<Notifier>,
    /// `None` until the file system is mounted.
    mounted: Arc<Mutex<Option<Mounted>>>,
    served: std::sync::mpsc::Receiver<()>,
}

// SAFETY: sigset_t is plain data.
unsafe impl Send for SignalThread {}

impl SignalThread {
    fn run(self) {
        // The FUSE session has ended and the main thread is finishing
        // (final snapshot, session close): a further signal ends the
        // process at once, as a second Ctrl-C does.
        let mut finishing = false;
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on the set blocked in every thread.
            if unsafe { libc::sigwait(&self.signals, &mut sig) } != 0 {
                warn!("sigwait failed; signals are no longer handled");
                return;
            }
            if sig == libc::SIGHUP {
                match self.log.reopen() {
                    Ok(()) => info!("SIGHUP: log reopened"),
                    Err(e) => {
                        warn!(error = %e, "SIGHUP: cannot reopen the log; still writing to the old one")
                    }
                }
                continue;
            }
            if finishing {
                warn!(
                    signal = sig,
                    "signal received while the final snapshot and the session close run; exiting now (the session's ephemeral nodes go when it expires)"
                );
                crate::events::remove_socket();
                std::process::exit(1);
            }
            self.notifier.stopping();
            let stage = self.mounted.lock().unwrap_or_else(|e| e.into_inner());
            let Some(mounted) = stage.as_ref() else {
                info!(
                    signal = sig,
                    "signal received before the mount was made; exiting"
                );
                crate::events::remove_socket();
                std::process::exit(0);
            };
            info!(signal = sig, mountpoint = %mounted.mountpoint.display(), "signal received; unmounting");
            if let Err(e) = detach(&mounted.mountpoint) {
                warn!(error = %e, "unmount on signal failed");
            }
            // The kernel ends the FUSE session once the mount is gone; the
            // main thread then closes the ZooKeeper session and exits.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                self.served.recv_timeout(SHUTDOWN_GRACE)
            {
                warn!(
                    "files on the detached mount are still open; exiting without waiting for them"
                );
                mounted.runtime.block_on(close_session(&mounted.session));
                crate::events::remove_socket();
                std::process::exit(0);
            }
            finishing = true;
        }
    }
}

/// Unmount `mountpoint` for a shutdown: directly as root (lazily if it is
/// busy), through `fusermount3 -u -z` otherwise. fuser's own unmount is not
/// used: with auto-unmount it only closes the socket to fusermount3's
/// helper, which then leaves the mount in place.
fn detach(mountpoint: &Path) -> Result<(), String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
            .map_err(|_| "mount point path contains a NUL byte".to_string())?;
        // SAFETY: a valid C string.
        if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EBUSY) {
            info!(mountpoint = %mountpoint.display(), "mount is busy; detaching it lazily");
            // SAFETY: a valid C string.
            if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
                return Ok(());
            }
            return Err(std::io::Error::last_os_error().to_string());
        }
        if err.raw_os_error() != Some(libc::EPERM) {
            return Err(err.to_string());
        }
    }
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg("-z")
        .arg(mountpoint)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run fusermount3: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Milliseconds since the epoch, for status ages.
pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
