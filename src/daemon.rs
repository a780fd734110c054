//! `zkfs mount`: checks the start conditions, detaches into the background
//! (re-executing itself with `--foreground` and waiting for a readiness
//! message), then wires the layers together: ZooKeeper session → store →
//! filesystem core → fuser adapter, plus the watch-event loop, the
//! invalidation thread and signal handling. Owns process lifetime only.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::cli::MountArgs;
use crate::fs::attr::Presentation;
use crate::fs::glob::DirGlob;
use crate::fs::{FsConfig, MountStatus, ZkFs};
use crate::fuse::busy_poll::BusyPoll;
use crate::fuse::counters::KernelRequestCounters;
use crate::fuse::{ZkFuse, invalidate};
use crate::zk::Store;
use crate::zk::session::{Credentials, NewNodeAcl, SessionConfig, SessionEvent, ZkSession};

/// The device-polling window to use, if any: polling needs a second CPU
/// (on one CPU the poller would take turns with the very process it waits for).
fn busy_poll_window(requested: Duration) -> Option<Duration> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (!requested.is_zero() && cpus >= 2).then_some(requested)
}

/// FUSE worker threads when the device is not polled (override with ZKFS_FUSE_THREADS).
const FUSE_THREADS: usize = 4;

/// Environment variable naming the pipe a background daemon reports readiness on.
const READY_FD_ENV: &str = "ZKFS_READY_FD";

/// A start failure: one line for the user, and the exit status.
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
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

fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

fn check_mountpoint(path: &Path) -> Result<PathBuf, Failure> {
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
    Ok(canonical)
}

pub fn init_logging(level: Option<&str>, file: Option<&Path>) -> Result<(), Failure> {
    let spec = level
        .map(str::to_string)
        .or_else(|| std::env::var("ZKFS_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&spec)
        .map_err(|e| Failure::new(format!("invalid log filter '{spec}': {e}")))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Failure::new(format!("log file {}: {e}", path.display())))?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .init();
        }
        None => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// Digest credentials from `--auth-file` or `ZKFS_AUTH` (never from argv).
fn load_credentials(args: &MountArgs) -> Result<Option<Credentials>, Failure> {
    let text = match &args.auth_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::new(format!("auth file {}: {e}", path.display())))?,
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
    if args.new_node_acl == "creator" && text.is_empty() {
        return Err(Failure::new("--new-node-acl creator needs credentials"));
    }
    Ok(Some(Credentials(text)))
}

/// `zkfs mount`. Returns once the mount is ready (background) or unmounted (foreground).
pub fn mount(args: MountArgs) -> Result<(), Failure> {
    let mountpoint = check_mountpoint(&args.mountpoint)?;
    let credentials = load_credentials(&args)?;
    if args.new_node_acl == "creator" && credentials.is_none() {
        return Err(Failure::new(
            "--new-node-acl creator needs credentials (--auth-file or ZKFS_AUTH)",
        ));
    }
    if !args.foreground {
        return spawn_background(&args);
    }
    let mut reporter = Reporter::from_env();
    let result = run_foreground(args, mountpoint, &mut reporter);
    if let Err(failure) = &result {
        reporter.fail(failure);
    }
    result
}

/// Re-execute ourselves with `--foreground` in a new session and wait until
/// the child reports the mount ready (or its failure).
fn spawn_background(args: &MountArgs) -> Result<(), Failure> {
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

    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let at = argv.iter().position(|a| a == "mount").map_or(0, |i| i + 1);
    argv.insert(at, "--foreground".into());

    let stderr = match &args.log_file {
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
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

struct SessionStatus {
    session: Arc<ZkSession>,
    kernel_requests: Arc<KernelRequestCounters>,
}

impl MountStatus for SessionStatus {
    fn attributes(&self) -> Vec<(String, String)> {
        let s = self.session.status();
        let last_contact_ms = s
            .last_contact
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        vec![
            ("state".into(), s.state.as_str().into()),
            ("session_id".into(), format!("{:#x}", s.session_id)),
            ("server".into(), s.servers),
            ("last_contact".into(), last_contact_ms.to_string()),
            ("requests".into(), s.requests.to_string()),
            ("pid".into(), std::process::id().to_string()),
            ("kernel_requests".into(), self.kernel_requests.summary()),
        ]
    }
}

fn run_foreground(
    args: MountArgs,
    mountpoint: PathBuf,
    reporter: &mut Reporter,
) -> Result<(), Failure> {
    let signals = block_signals();
    init_logging(args.log_level.as_deref(), args.log_file.as_deref())?;
    crate::memory::spawn_trimmer()
        .map_err(|e| Failure::new(format!("cannot start the memory trimmer thread: {e}")))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("zkfs-rt")
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start runtime: {e}")))?;

    let credentials = load_credentials(&args)?;
    let identity = credentials.as_ref().map(|c| c.user().to_string());
    let session_config = SessionConfig {
        servers: args.servers.clone(),
        root: args.root.clone(),
        session_timeout: args.session_timeout,
        op_timeout: args.op_timeout,
        connect_timeout: args.connect_timeout,
        credentials: credentials.clone(),
        new_node_acl: if args.new_node_acl == "creator" {
            NewNodeAcl::Creator
        } else {
            NewNodeAcl::Open
        },
    };
    let session = Arc::new(
        runtime
            .block_on(ZkSession::connect(session_config))
            .map_err(Failure::new)?,
    );

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
        },
        max_data: args.max_data as usize,
        last_writer_wins: args.last_writer_wins,
        chrooted: args.servers.contains('/'),
        pointers: args.pointers == "auto",
        mountpoint: mountpoint.clone(),
        ephemeral: args
            .ephemeral
            .iter()
            .map(|g| DirGlob::parse(g))
            .collect::<Result<_, _>>()
            .map_err(Failure::new)?,
    };
    let (invalidator, invalidations) = invalidate::channel();
    let kernel_requests = Arc::new(KernelRequestCounters::default());
    let store = Store::new(session.clone(), args.cache_size as usize);
    let fs = Arc::new(ZkFs::new(
        store,
        fs_config,
        Box::new(invalidator),
        Box::new(SessionStatus {
            session: session.clone(),
            kernel_requests: kernel_requests.clone(),
        }),
    ));
    fs.register_arc();
    let busy_poll = busy_poll_window(args.busy_poll).map(|w| Arc::new(BusyPoll::new(w)));
    let adapter = ZkFuse::new(
        fs.clone(),
        runtime.handle().clone(),
        args.op_timeout,
        kernel_requests,
        busy_poll.clone(),
    );

    let is_root = uid == 0;
    let mut options = vec![
        fuser::MountOption::FSName("zkfs".into()),
        fuser::MountOption::Subtype("zkfs".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if read_only {
        options.push(fuser::MountOption::RO);
    }
    if args.allow_other {
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
            .unwrap_or(FUSE_THREADS)
    });
    config.clone_fd = std::env::var("ZKFS_FUSE_CLONE_FD").is_ok_and(|v| v == "1");

    let mut fuse_session = fuser::Session::new(adapter, &mountpoint, &config)
        .map_err(|e| Failure::new(format!("cannot mount on {}: {e}", mountpoint.display())))?;
    if let Some(poll) = &busy_poll {
        poll.attach(std::os::fd::AsFd::as_fd(&fuse_session))
            .map_err(|e| Failure::new(format!("cannot start device polling: {e}")))?;
    }
    invalidate::spawn_sender(invalidations, fuse_session.notifier())
        .map_err(|e| Failure::new(format!("cannot start invalidation thread: {e}")))?;

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
    {
        let fs = fs.clone();
        runtime.spawn(async move {
            while let Some(event) = events_rx.recv().await {
                match event {
                    SessionEvent::Node(e) => {
                        if let Some(path) = fs.apply_event(&e) {
                            let fs = fs.clone();
                            tokio::spawn(async move { fs.refresh(&path).await });
                        }
                    }
                    SessionEvent::Resync => {
                        fs.reregister();
                        fs.resync().await;
                    }
                    SessionEvent::NewSession => {
                        fs.reregister();
                        fs.resync().await;
                    }
                }
            }
        });
    }

    let mut unmounter = fuse_session.unmount_callable();
    let mp = mountpoint.clone();
    std::thread::Builder::new()
        .name("zkfs-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: waits on the set blocked above.
            if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
                info!(signal = sig, mountpoint = %mp.display(), "signal received; unmounting");
                if let Err(e) = unmounter.unmount() {
                    warn!(error = %e, "unmount on signal failed");
                }
            }
        })
        .map_err(|e| Failure::new(format!("cannot start signal thread: {e}")))?;

    info!(servers = %args.servers, root = %args.root, mountpoint = %mountpoint.display(), "mounted");
    reporter.ready();
    let served = fuse_session.run();
    info!(mountpoint = %mountpoint.display(), "unmounted");
    runtime.block_on(session.close());
    runtime.shutdown_timeout(Duration::from_secs(1));
    served.map_err(|e| Failure::new(format!("FUSE session failed: {e}")))
}

/// Milliseconds since the epoch, for status ages.
pub fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
