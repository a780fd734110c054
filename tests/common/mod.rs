//! Test harness for zkfs integration tests: real ZooKeeper servers (Debian's
//! zookeeper 3.8 jars run with `java`), ZooKeeper clients, and zkfs daemons
//! mounted through the real kernel FUSE module.
//!
//! Use from a test file with `mod common;`. Async helpers need a tokio
//! runtime; prefer `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`
//! when a test mixes them with blocking helpers (`wait_until`, `ZkServer::stop`,
//! file system calls on a mount), so the client's background task keeps running.
//!
//! Nothing here calls the shell scripts: `cargo test` alone is enough, given
//! `java` and the zookeeper jars (`scripts/install-deps`).
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zookeeper_client::{Acls, Client, CreateMode};

/// How long a ZooKeeper server may take to start serving.
const ZK_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `Mount::start` waits for the kernel to show the mount.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// Session timeout of the clients made by [`client`].
const CLIENT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn sanitize(tag: &str) -> String {
    let s: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "x".to_string() } else { s }
}

// ---------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed (recursively) on drop.
/// Never use it to hold a mount point: see [`Mount`] for that.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::temp_dir();
        let tag = sanitize(tag);
        for _ in 0..100 {
            let path = base.join(format!(
                "zkfs-{tag}-{}-{}-{}",
                std::process::id(),
                next_id(),
                nanos()
            ));
            match fs::create_dir(&path) {
                Ok(()) => {
                    let path = path.canonicalize().unwrap_or(path);
                    return TempDir { path };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create a temp dir {}: {e}", path.display()),
            }
        }
        panic!("cannot find a fresh temp dir name under {}", base.display());
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Gives up ownership: the directory is no longer removed on drop.
    pub fn into_path(self) -> PathBuf {
        let path = self.path.clone();
        std::mem::forget(self);
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// Polls `f` every ~5 ms until it returns true; panics naming `what` if that
/// does not happen within `timeout`.
pub fn wait_until<F: FnMut() -> bool>(what: &str, timeout: Duration, mut f: F) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A unique absolute znode path, `/t-<tag>-<pid>-<n>-<nanos>`, to use as a
/// test's root (chroot) so tests can share one server.
pub fn unique_root(tag: &str) -> String {
    format!(
        "/t-{}-{}-{}-{}",
        sanitize(tag),
        std::process::id(),
        next_id(),
        nanos()
    )
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`):
/// where it picks the source port of every outgoing connection.
pub fn ephemeral_port_range() -> (u16, u16) {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut fields = text.split_whitespace().map(|f| f.parse::<u16>().ok());
    match (fields.next().flatten(), fields.next().flatten()) {
        (Some(lo), Some(hi)) if lo <= hi => (lo, hi),
        _ => (32768, 60999),
    }
}

/// A TCP port on 127.0.0.1 that nothing had bound a moment ago, below the
/// kernel's ephemeral range, and not handed out before by this process.
///
/// Below the range because servers are stopped and started again on the same
/// port: while one is down, any outgoing connection on the machine (a
/// client's connection to another ensemble member, a quorum link) may be
/// given that port as its source port, and the restart then fails with
/// `Address already in use` (a clean-clone CI run failed that way). The
/// kernel never picks a source port outside its range.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let (ephemeral_lo, ephemeral_hi) = ephemeral_port_range();
    // Below the range if 1,000 ports fit there, else above it.
    let (lo, hi) = if ephemeral_lo > 2048 {
        (
            ephemeral_lo.saturating_sub(12_000).max(1025),
            ephemeral_lo - 1,
        )
    } else if ephemeral_hi < 64_535 {
        (ephemeral_hi + 1, ephemeral_hi.saturating_add(12_000))
    } else {
        panic!(
            "the ephemeral port range {ephemeral_lo}-{ephemeral_hi} leaves no room for servers' ports"
        );
    };
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut seed = nanos() as u64 ^ (u64::from(std::process::id()) << 32);
    for _ in 0..10_000 {
        // xorshift: spread the picks of concurrent test processes.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = lo + (seed % u64::from(hi - lo + 1)) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free loopback port in {lo}..={hi}");
}

/// Runs `start` (which picks its ports with [`free_port`]) up to three
/// times while it fails with `Address already in use`: a port taken between
/// `free_port` and java's bind, by another process (this one hands out each
/// port once). Panics with the last failure's log.
fn retrying_lost_ports<T>(mut start: impl FnMut() -> Result<T, String>) -> T {
    let mut attempt = 1;
    loop {
        match start() {
            Ok(started) => return started,
            Err(log) if attempt < 3 && log.contains("Address already in use") => attempt += 1,
            Err(log) => panic!("{log}"),
        }
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs `cmd` with stdin closed and stdout/stderr captured, killing it after
/// `timeout`. Output that a grandchild keeps writing to the inherited pipes
/// (e.g. a daemon that did not close them) is collected for at most 2 s after
/// the command itself exits.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
    let readers = [
        child.stdout.take().map(|r| spawn_reader(Box::new(r))),
        child.stderr.take().map(|r| spawn_reader(Box::new(r))),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("{what} did not finish within {timeout:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(format!("waiting for {what}: {e}")),
        }
    };
    let grace = Instant::now() + Duration::from_secs(2);
    let mut outputs = Vec::new();
    for reader in readers {
        let Some((buf, handle)) = reader else {
            outputs.push(Vec::new());
            continue;
        };
        while !handle.is_finished() && Instant::now() < grace {
            thread::sleep(Duration::from_millis(5));
        }
        let bytes = buf.lock().map(|b| b.clone()).unwrap_or_default();
        outputs.push(bytes);
    }
    let stderr = outputs.pop().unwrap_or_default();
    let stdout = outputs.pop().unwrap_or_default();
    match status {
        Ok(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        Err(e) => Err(format!(
            "{e}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

type Reader = (Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>);

fn spawn_reader(mut r: Box<dyn Read + Send>) -> Reader {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => match sink.lock() {
                    Ok(mut b) => b.extend_from_slice(&chunk[..n]),
                    Err(_) => break,
                },
            }
        }
    });
    (buf, handle)
}

// ---------------------------------------------------------------------------
// ZooKeeper servers
// ---------------------------------------------------------------------------

/// Debian's zookeeper.jar names jute, netty, metrics, slf4j-api, ... in its
/// manifest Class-Path; only an slf4j binding is missing, hence log4j 1.2.
const DEFAULT_ZK_CLASSPATH: &str = "/etc/zookeeper/conf:/usr/share/java/zookeeper.jar:\
/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar";

const JVM_OPTS: &[&str] = &[
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
];

/// Kills the server (by the pid in DIR/java.pid) and removes DIR once the test
/// process is gone; exits early when DIR disappears (the ZkServer was dropped).
const WATCHDOG: &str = r#"
while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 0.5; done
[ -d "$2" ] || exit 0
p=$(cat "$2/java.pid" 2>/dev/null) && kill -9 "$p" 2>/dev/null
sleep 0.2
rm -rf "$2"
"#;

fn zk_classpath() -> String {
    if let Ok(cp) = std::env::var("ZKFS_ZK_CLASSPATH")
        && !cp.trim().is_empty()
    {
        return cp;
    }
    for jar in [
        "/usr/share/java/zookeeper.jar",
        "/usr/share/java/slf4j-log4j12.jar",
        "/usr/share/java/log4j-1.2.jar",
    ] {
        assert!(
            Path::new(jar).exists(),
            "{jar} is missing: install ZooKeeper with scripts/install-deps (Debian package `zookeeper`)"
        );
    }
    DEFAULT_ZK_CLASSPATH.to_string()
}

/// Sends a four-letter word to 127.0.0.1:port and returns the answer.
pub fn four_letter_word(port: u16, word: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .ok()?;
    stream.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A private standalone ZooKeeper server for tests that stop and restart it
/// (or one member of an [`Ensemble`]).
pub struct ZkServer {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    watchdog: Option<Child>,
    /// (myid, the `server.N=...` lines) for an ensemble member.
    quorum: Option<(usize, String)>,
}

/// A 3-server ZooKeeper ensemble on loopback, for failover tests.
pub struct Ensemble {
    servers: Vec<ZkServer>,
    /// (client, quorum, leader election) port of each member.
    ports: Vec<(u16, u16, u16)>,
}

impl Ensemble {
    /// Starts three servers and waits until each serves as leader or follower.
    pub fn start() -> Ensemble {
        retrying_lost_ports(Ensemble::try_start)
    }

    /// One attempt: the members are stopped and removed (dropped) when one
    /// fails, and the failure comes with its log.
    fn try_start() -> Result<Ensemble, String> {
        let ports: Vec<(u16, u16, u16)> = (0..3)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let lines: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, election))| {
                format!("server.{}=127.0.0.1:{peer}:{election}\n", i + 1)
            })
            .collect();
        let mut servers: Vec<ZkServer> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, _, _))| ZkServer {
                dir: TempDir::new("zk-ens"),
                port: *client,
                child: None,
                watchdog: None,
                quorum: Some((i + 1, lines.clone())),
            })
            .collect();
        for server in &mut servers {
            server.spawn_watchdog();
            server.write_config();
            server.spawn_java();
        }
        for server in &mut servers {
            if let Err(e) = server.wait_serving() {
                return Err(format!(
                    "ensemble member failed to start: {e}\n{}",
                    server.log_tail()
                ));
            }
        }
        Ok(Ensemble { servers, ports })
    }

    /// Every port the members listen on: client, quorum, leader election.
    pub fn all_ports(&self) -> Vec<u16> {
        self.ports.iter().flat_map(|&(c, q, e)| [c, q, e]).collect()
    }

    /// "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
    pub fn connect_string(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.connect_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn server(&mut self, i: usize) -> &mut ZkServer {
        &mut self.servers[i]
    }

    /// Starts every stopped member again at once (one alone has no quorum,
    /// so it would never serve) and waits until each serves.
    pub fn start_all_again(&mut self) {
        for server in &mut self.servers {
            if server.child.is_none() {
                server.spawn_java();
            }
        }
        for server in &mut self.servers {
            if let Err(e) = server.wait_serving() {
                panic!(
                    "ensemble member failed to start again: {e}\n{}",
                    server.log_tail()
                );
            }
        }
    }

    /// Index of the current leader, if one answers.
    pub fn leader(&self) -> Option<usize> {
        self.servers.iter().position(|s| {
            four_letter_word(s.port, "srvr").is_some_and(|a| a.contains("Mode: leader"))
        })
    }
}

impl ZkServer {
    /// Starts a server with a fresh data dir on a free port and waits until it
    /// serves. Panics with the server's log on failure.
    pub fn start() -> ZkServer {
        let dir = TempDir::new("zk");
        let mut server = ZkServer {
            dir,
            port: 0,
            child: None,
            watchdog: None,
            quorum: None,
        };
        server.spawn_watchdog();
        retrying_lost_ports(|| {
            server.port = free_port();
            server.write_config();
            server.spawn_java();
            match server.wait_serving() {
                Ok(()) => Ok(()),
                Err(e) => {
                    let log = server.log_tail();
                    server.kill_java();
                    Err(format!("ZooKeeper failed to start: {e}\n{log}"))
                }
            }
        });
        server
    }

    /// "127.0.0.1:PORT"
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The java process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the java process runs (it may not serve yet).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// kill -9 the server and wait until its port is closed.
    pub fn stop(&mut self) {
        self.kill_java();
        let start = Instant::now();
        while port_open(self.port) {
            if start.elapsed() > Duration::from_secs(10) {
                panic!(
                    "port {} still accepts connections 10 s after killing ZooKeeper",
                    self.port
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM the server (a graceful stop, as `systemctl stop` does: it
    /// closes its client connections) and wait until it has exited.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling a child process we own.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if start.elapsed() < Duration::from_secs(20) => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        let _ = fs::remove_file(self.dir.path().join("java.pid"));
    }

    /// Starts the server again on the same port with the same data dir (a
    /// running server is stopped first) and waits until it serves.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn_java();
        if let Err(e) = self.wait_serving() {
            let log = self.log_tail();
            self.kill_java();
            panic!("ZooKeeper failed to start again: {e}\n{log}");
        }
    }

    /// The last lines of the server's logs.
    pub fn log_tail(&self) -> String {
        let dir = self.dir.path();
        format!(
            "--- {0}/server.out (tail) ---\n{1}\n--- {0}/zookeeper.log (tail) ---\n{2}",
            dir.display(),
            tail_lines(&read_lossy(&dir.join("server.out")), 20),
            tail_lines(&read_lossy(&dir.join("zookeeper.log")), 60)
        )
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let data = dir.join("data");
        let _ = fs::remove_dir_all(&data);
        fs::create_dir_all(&data).expect("create the ZooKeeper data dir");
        // Unknown keys become zookeeper.* system properties: forceSync=no
        // (no fsync per write), snapshot.trust.empty=true (restart after a
        // kill -9 without a snapshot), preAllocSize in KiB.
        let cfg = format!(
            "tickTime=500\n\
             initLimit=20\n\
             syncLimit=10\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             minSessionTimeout=1000\n\
             maxSessionTimeout=60000\n\
             maxClientCnxns=0\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=*\n\
             autopurge.purgeInterval=0\n\
             forceSync=no\n\
             snapshot.trust.empty=true\n\
             preAllocSize=4096\n",
            data = data.display(),
            port = self.port
        );
        let cfg = match &self.quorum {
            Some((myid, lines)) => {
                fs::write(data.join("myid"), format!("{myid}\n")).expect("write myid");
                format!("{cfg}{lines}")
            }
            None => cfg,
        };
        fs::write(dir.join("zoo.cfg"), cfg).expect("write zoo.cfg");
        let log4j = format!(
            "log4j.rootLogger=INFO, FILE\n\
             log4j.appender.FILE=org.apache.log4j.FileAppender\n\
             log4j.appender.FILE.File={}\n\
             log4j.appender.FILE.Append=true\n\
             log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.FILE.layout.ConversionPattern=%d{{ISO8601}} - %-5p [%t:%C{{1}}@%L] - %m%n\n",
            dir.join("zookeeper.log").display()
        );
        fs::write(dir.join("log4j.properties"), log4j).expect("write log4j.properties");
    }

    fn spawn_java(&mut self) {
        let dir = self.dir.path().to_path_buf();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.out"))
            .expect("open server.out");
        let err = out.try_clone().expect("clone server.out handle");
        let mut log4j_opt = OsString::from("-Dlog4j.configuration=file:");
        log4j_opt.push(dir.join("log4j.properties"));
        let mut log_dir_opt = OsString::from("-Dzookeeper.log.dir=");
        log_dir_opt.push(&dir);
        let child = Command::new("java")
            .args(JVM_OPTS)
            .arg(log4j_opt)
            .arg(log_dir_opt)
            .arg("-cp")
            .arg(zk_classpath())
            .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
            .arg(dir.join("zoo.cfg"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run java for ZooKeeper ({e}); run scripts/install-deps")
            });
        let _ = fs::write(dir.join("java.pid"), child.id().to_string());
        self.child = Some(child);
    }

    fn spawn_watchdog(&mut self) {
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("zkfs-zk-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(child) => self.watchdog = Some(child),
            Err(e) => eprintln!("warning: cannot start the ZooKeeper watchdog: {e}"),
        }
    }

    fn wait_serving(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        return Err(format!("the java process exited with {status}"));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("cannot check the java process: {e}")),
                }
            } else {
                return Err("no java process".to_string());
            }
            if let Some(answer) = four_letter_word(self.port, "srvr")
                && ["Mode: standalone", "Mode: leader", "Mode: follower"]
                    .iter()
                    .any(|m| answer.contains(m))
            {
                return Ok(());
            }
            if start.elapsed() > ZK_START_TIMEOUT {
                return Err(format!(
                    "not serving on 127.0.0.1:{} after {ZK_START_TIMEOUT:?}",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_java(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.dir.path().join("java.pid"));
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill_java();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // self.dir (TempDir) removes the directory.
    }
}

/// Connect string of a server shared by all tests of this process:
/// `$ZKFS_TEST_ZK` when set (scripts/test sets it), else a server started
/// once, which a watchdog kills when the test process exits.
pub fn shared_zk() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            if let Ok(s) = std::env::var("ZKFS_TEST_ZK")
                && !s.trim().is_empty()
            {
                return s.trim().to_string();
            }
            let server = ZkServer::start();
            let connect = server.connect_string();
            // Statics are never dropped: the watchdog stops it at exit.
            std::mem::forget(server);
            connect
        })
        .clone()
}

/// A new ZooKeeper client (session timeout 10 s) connected to `connect`
/// ("host:port[,host:port...][/chroot]"); panics if that fails within 20 s.
pub async fn client(connect: &str) -> Client {
    let connecting = Client::connector()
        .with_session_timeout(CLIENT_SESSION_TIMEOUT)
        .connect(connect);
    match tokio::time::timeout(Duration::from_secs(20), connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("cannot connect a ZooKeeper client to {connect}: {e}"),
        Err(_) => panic!("timed out after 20 s connecting a ZooKeeper client to {connect}"),
    }
}

/// Creates `path` and its missing ancestors: persistent, empty, world:anyone.
pub async fn ensure_path(client: &Client, path: &str) {
    assert!(
        path.starts_with('/'),
        "ensure_path needs an absolute path, got {path:?}"
    );
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let mut current = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        current.push('/');
        current.push_str(part);
        let creating = client.create(&current, &[], &options);
        match tokio::time::timeout(Duration::from_secs(30), creating).await {
            Ok(Ok(_)) | Ok(Err(zookeeper_client::Error::NodeExists)) => {}
            Ok(Err(e)) => panic!("ensure_path({path}): cannot create {current}: {e}"),
            Err(_) => panic!("ensure_path({path}): creating {current} timed out after 30 s"),
        }
    }
}

// ---------------------------------------------------------------------------
// zkfs mounts
// ---------------------------------------------------------------------------

pub fn zkfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_zkfs")
}

fn zkfs_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(zkfs_bin());
    cmd.args(args);
    cmd
}

/// Runs the zkfs binary with `args`; panics if it takes more than 60 s.
pub fn run_zkfs(args: &[&str]) -> Output {
    run_with_timeout(zkfs_command(args), Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("zkfs {args:?}: {e}"))
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

/// The mounts visible to this process, from /proc/self/mountinfo.
pub fn mount_entries() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut entries = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 7 {
            continue;
        }
        let Some(sep) = fields.iter().skip(6).position(|f| *f == "-") else {
            continue;
        };
        let sep = sep + 6;
        entries.push(MountEntry {
            mount_point: unescape_mountinfo(fields[4]),
            fstype: fields.get(sep + 1).unwrap_or(&"").to_string(),
            source: fields.get(sep + 2).unwrap_or(&"").to_string(),
        });
    }
    entries
}

/// Absolute form of `path` with its parent canonicalized; never touches
/// `path` itself, so it cannot hang on a dead FUSE mount.
fn normalize(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| abs.clone()),
        _ => abs,
    }
}

/// Whether something is mounted on `path` (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let path = normalize(path);
    mount_entries().iter().any(|m| m.mount_point == path)
}

fn fuse_mounted(path: &Path) -> bool {
    mount_entries()
        .iter()
        .any(|m| m.mount_point == path && m.fstype.starts_with("fuse"))
}

fn mounted_under(dir: &Path) -> bool {
    mount_entries()
        .iter()
        .any(|m| m.mount_point.starts_with(dir))
}

/// A zkfs daemon (`zkfs mount --foreground`) mounted through the kernel.
pub struct Mount {
    dir: PathBuf,
    mountpoint: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
}

impl Mount {
    /// Mounts `servers` (connect string, maybe with a chroot) on a fresh
    /// directory; panics with the daemon's log if that fails.
    pub fn start(servers: &str, extra_args: &[&str]) -> Mount {
        Mount::try_start(servers, extra_args).unwrap_or_else(|log| panic!("{log}"))
    }

    /// Like [`Mount::start`], but returns the failure (with the daemon's log).
    pub fn try_start(servers: &str, extra_args: &[&str]) -> Result<Mount, String> {
        Mount::try_start_with_env(servers, extra_args, &[])
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// The daemon's log (stdout + stderr) so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The daemon's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The daemon's exit status once it has exited and been reaped.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.poll_child();
        self.exit_status
    }

    fn poll_child(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exit_status = Some(status);
            self.child = None;
        }
    }

    /// Waits up to `timeout` for the daemon to exit; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            self.poll_child();
            if self.child.is_none() {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the daemon without unmounting (the mount is left dead).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.exit_status = Some(status);
            }
        }
    }

    /// Runs `zkfs unmount <mountpoint>` and waits (bounded) for the daemon to
    /// exit; panics with the daemon's log if either fails.
    pub fn unmount(&mut self) {
        let mp = self.mountpoint.to_string_lossy().into_owned();
        let out = match run_with_timeout(zkfs_command(&["unmount", &mp]), Duration::from_secs(60)) {
            Ok(out) => out,
            Err(e) => panic!("zkfs unmount {mp}: {e}\n--- zkfs log ---\n{}", self.log()),
        };
        if !out.status.success() {
            panic!(
                "zkfs unmount {mp} failed with {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- zkfs log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        if !self.wait_exit(Duration::from_secs(20)) {
            panic!(
                "the zkfs daemon did not exit within 20 s after zkfs unmount {mp}\n--- zkfs log ---\n{}",
                self.log()
            );
        }
        if is_mounted(&self.mountpoint) {
            panic!(
                "{mp} is still mounted after zkfs unmount and the daemon's exit\n--- zkfs log ---\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let mp = self.mountpoint.clone();
        if thread::panicking() {
            // Whether the daemon was still serving when the test failed: an
            // error like ECONNABORTED means it was gone.
            self.poll_child();
            let daemon = match (self.exit_status, &self.child) {
                (Some(status), _) => format!("gone ({status})"),
                (None, Some(_)) => "still running".to_string(),
                (None, None) => "not this test's child".to_string(),
            };
            eprintln!(
                "--- zkfs log of {} (tail; the daemon is {daemon}) ---\n{}\n--- end of zkfs log ---",
                mp.display(),
                tail_lines(&self.log(), 200)
            );
        }
        if is_mounted(&mp) {
            let mp_arg = mp.to_string_lossy().into_owned();
            let _ = run_with_timeout(zkfs_command(&["unmount", &mp_arg]), Duration::from_secs(15));
            // Give a healthy daemon a moment to notice and exit by itself.
            self.wait_exit(Duration::from_secs(2));
            for fallback in [["umount", "-l"], ["fusermount3", "-uz"]] {
                if !is_mounted(&mp) {
                    break;
                }
                let mut cmd = Command::new(fallback[0]);
                cmd.arg(fallback[1]).arg(&mp);
                let _ = run_with_timeout(cmd, Duration::from_secs(10));
            }
        }
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(None) if start.elapsed() < Duration::from_secs(5) => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Ok(None) => {
                        eprintln!("warning: the zkfs daemon {} does not die", child.id());
                        break;
                    }
                    _ => break,
                }
            }
        }
        // Never recurse into a mounted file system: that would delete znodes.
        if mounted_under(&self.dir) {
            eprintln!(
                "warning: {} is still mounted; leaving {}",
                mp.display(),
                self.dir.display()
            );
            return;
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// zkfs mounts with extra environment (operator tests)
// ---------------------------------------------------------------------------

impl Mount {
    /// Like [`Mount::try_start`], with `env` added to the daemon's
    /// environment (e.g. `NOTIFY_SOCKET`, `ZKFS_SYSLOG_SOCKET`).
    pub fn try_start_with_env(
        servers: &str,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Mount, String> {
        let dir = TempDir::new("mnt").into_path();
        let mountpoint = dir.join("mnt");
        let log_path = dir.join("zkfs.log");
        let mut mount = Mount {
            dir,
            mountpoint,
            log_path,
            child: None,
            exit_status: None,
        };
        fs::create_dir(&mount.mountpoint)
            .map_err(|e| format!("cannot create {}: {e}", mount.mountpoint.display()))?;
        let log = File::create(&mount.log_path)
            .map_err(|e| format!("cannot create {}: {e}", mount.log_path.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot clone the log file handle: {e}"))?;
        let mut cmd = Command::new(zkfs_bin());
        cmd.arg("mount")
            .arg("--foreground")
            .args(extra_args)
            .arg(servers)
            .arg(&mount.mountpoint)
            .env("ZKFS_LOG", "zkfs=debug,zookeeper_client=info,warn")
            .env("RUST_BACKTRACE", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let what = format!("{cmd:?}");
        let child = cmd.spawn().map_err(|e| format!("cannot run {what}: {e}"))?;
        mount.child = Some(child);
        let start = Instant::now();
        loop {
            if fuse_mounted(&mount.mountpoint) {
                return Ok(mount);
            }
            if let Some(child) = mount.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                mount.exit_status = Some(status);
                mount.child = None;
                return Err(format!(
                    "{what} exited with {status} before mounting\n--- zkfs log ---\n{}",
                    mount.log()
                ));
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                return Err(format!(
                    "{what}: {} not mounted after {MOUNT_TIMEOUT:?}\n--- zkfs log ---\n{}",
                    mount.mountpoint.display(),
                    mount.log()
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One thread of another process held stopped (ptrace) until dropped. The
/// thread that freezes must also be the one that drops it (ptrace's tracer
/// is a thread).
pub struct Frozen {
    tid: libc::pid_t,
    /// The thread has exited and was reaped here.
    gone: bool,
}

impl Frozen {
    /// Stop the thread of `pid` named `name`.
    pub fn thread(pid: u32, name: &str) -> Frozen {
        let tid: libc::pid_t = fs::read_dir(format!("/proc/{pid}/task"))
            .expect("task dir")
            .flatten()
            .find(|t| fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
            .and_then(|t| t.file_name().to_str()?.parse().ok())
            .unwrap_or_else(|| panic!("daemon {pid} has no thread {name}"));
        // SAFETY: plain ptrace and waitpid calls on a thread id; failures
        // are checked.
        unsafe {
            assert_eq!(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                0,
                "PTRACE_SEIZE {tid}: {}",
                std::io::Error::last_os_error()
            );
            assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0), 0);
            let mut status = 0;
            assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid);
        }
        Frozen { tid, gone: false }
    }

    /// Whether the stopped thread has exited (its process ended: a killed
    /// tracee exits though stopped). A traced thread that exits waits for
    /// its tracer to reap it, and its process cannot be reaped before:
    /// this reaps it.
    pub fn exited(&mut self) -> bool {
        if !self.gone {
            let mut status = 0;
            // SAFETY: a non-blocking waitpid on our own tracee.
            let r = unsafe { libc::waitpid(self.tid, &mut status, libc::__WALL | libc::WNOHANG) };
            self.gone = r == self.tid && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status));
        }
        self.gone
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.gone {
            // SAFETY: detaching a tracee this thread stopped.
            unsafe {
                libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0);
            }
        }
    }
}
