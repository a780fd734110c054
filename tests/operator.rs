//! Operator-facing lifecycle (issue 15), through real mounts and a real
//! ZooKeeper: signals (as root, foreground and background), systemd's
//! NOTIFY_SOCKET, syslog, the refusals an operator expects, mount(8) options,
//! `zkfs status --format prometheus`, and the Debian package installed and
//! used with `mount -t zkfs` from an fstab-style line.

mod common;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zkops.rs"]
mod zkops;

use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{
    Frozen, Mount, TempDir, ZkServer, is_mounted, mount_entries, run_with_timeout, run_zkfs,
    shared_zk, unique_root, wait_until, zkfs_bin,
};
use proxy::Proxy;
use zkops::{Other, xattr_string};

const DEADLINE: Duration = Duration::from_secs(20);
/// The issue's bound: mount gone and daemon exited this soon after a signal.
const SIGNAL_BOUND: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Background daemons outlive the `zkfs mount` that started them; as the
/// child subreaper this test process inherits them and can read their exit
/// status. Called before any background mount.
fn become_subreaper() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        // SAFETY: a plain prctl on this process.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
    });
}

/// The exit status of child `pid` once it has exited (non-blocking).
fn try_reap(pid: i32) -> Option<libc::c_int> {
    let mut status = 0;
    // SAFETY: waitpid on one pid with a local status word.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (rc == pid).then_some(status)
}

fn exit_code(status: libc::c_int) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

fn kill(pid: i32, sig: libc::c_int) {
    // SAFETY: sending a signal to a process this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Whether the ZooKeeper node `path` exists, per another client.
fn exists(other: &Other, path: &str) -> bool {
    let fut = other.client.check_stat(path);
    other
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
        .expect("check_stat in time")
        .expect("check_stat")
        .is_some()
}

fn zkfs(args: &[&str]) -> (Option<i32>, String) {
    let out = run_zkfs(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A mount point directory of the test's own (for background mounts and
/// mount(8)); unmounted (lazily if need be) and removed on drop.
struct Spot {
    dir: TempDir,
    mountpoint: PathBuf,
}

impl Spot {
    fn new(tag: &str) -> Spot {
        let dir = TempDir::new(tag);
        let mountpoint = dir.path().join("mnt");
        fs::create_dir(&mountpoint).expect("create mount point");
        Spot { dir, mountpoint }
    }

    fn path(&self) -> &Path {
        &self.mountpoint
    }

    fn arg(&self) -> String {
        self.mountpoint.to_string_lossy().into_owned()
    }

    /// The daemon's pid, from the mount root's `user.zkfs.pid`.
    fn pid(&self) -> i32 {
        xattr_string(&self.mountpoint, "user.zkfs.pid")
            .parse()
            .expect("numeric user.zkfs.pid")
    }
}

impl Drop for Spot {
    fn drop(&mut self) {
        if is_mounted(&self.mountpoint) {
            let _ = run_with_timeout(
                {
                    let mut c = Command::new(zkfs_bin());
                    c.arg("unmount").arg(&self.mountpoint);
                    c
                },
                Duration::from_secs(15),
            );
        }
        if is_mounted(&self.mountpoint) {
            let mut c = Command::new("umount");
            c.arg("-l").arg(&self.mountpoint);
            let _ = run_with_timeout(c, Duration::from_secs(10));
        }
        if is_mounted(&self.mountpoint) {
            // Never let TempDir's removal recurse into a mount.
            eprintln!("warning: {} still mounted", self.mountpoint.display());
            std::mem::forget(std::mem::replace(&mut self.dir, TempDir::new("spot-leak")));
        }
    }
}

/// `zkfs mount ARGS... SERVERS MOUNTPOINT` in the background, with `env`.
fn background_mount(
    servers: &str,
    spot: &Spot,
    args: &[&str],
    env: &[(&str, &OsStr)],
) -> (Option<i32>, String) {
    become_subreaper();
    let mut cmd = Command::new(zkfs_bin());
    cmd.arg("mount")
        .args(args)
        .arg(servers)
        .arg(spot.path())
        .envs(env.iter().copied());
    let out = run_with_timeout(cmd, Duration::from_secs(60)).expect("zkfs mount");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One line of /proc/self/mountinfo for `mountpoint`: (mount options,
/// super options, source).
fn mount_options(mountpoint: &Path) -> Option<(String, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let target = mountpoint.to_string_lossy();
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(4)? == &target).then(|| {
            (
                fields[5].to_string(),
                fields.get(sep + 3).unwrap_or(&"").to_string(),
                fields.get(sep + 2).unwrap_or(&"").to_string(),
            )
        })
    })
}

// ---------------------------------------------------------------------------
// 1. Signals
// ---------------------------------------------------------------------------

/// A root with a registration directory, and a mount registering one node.
fn registered(tag: &str, zk: &str) -> (Other, String) {
    let root = unique_root(tag);
    let other = Other::connect(zk);
    other.ensure(&format!("{root}/svc"));
    (other, root)
}

#[test]
fn foreground_sigterm_and_sigint_unmount_and_exit_0_within_a_second() {
    let zk = shared_zk();
    for (sig, name) in [
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGQUIT, "QUIT"),
    ] {
        let (other, root) = registered(&format!("sigfg-{name}"), &zk);
        let mut mount = Mount::start(&format!("{zk}{root}"), &["--ephemeral", "svc"]);
        fs::write(mount.path().join("svc/host-1"), b"up").expect("register");
        assert!(exists(&other, &format!("{root}/svc/host-1")));
        let pid = mount.pid().expect("running") as i32;
        let sent = Instant::now();
        kill(pid, sig);
        assert!(
            mount.wait_exit(SIGNAL_BOUND),
            "SIG{name}: daemon still running after {SIGNAL_BOUND:?}\n{}",
            mount.log()
        );
        let took = sent.elapsed();
        assert!(!is_mounted(mount.path()), "SIG{name}: still mounted");
        assert_eq!(
            mount.exit_status().and_then(|s| s.code()),
            Some(0),
            "SIG{name}: exit status\n{}",
            mount.log()
        );
        // The session was closed, not left to expire: the registration is gone now.
        assert!(
            !exists(&other, &format!("{root}/svc/host-1")),
            "SIG{name}: registration outlived the daemon"
        );
        eprintln!("SIG{name} (foreground): unmounted and exited in {took:?}");
    }
}

/// A daemon that does not answer (stopped, wedged) must not hang the
/// operator's tools: `zkfs status` says so within its bound, and `zkfs
/// unmount` unmounts without waiting on it. Before, both waited on the
/// mount's FUSE requests for ever.
#[test]
fn status_and_unmount_of_a_stopped_daemon_answer_in_bounded_time() {
    let zk = shared_zk();
    let root = unique_root("stopped");
    Other::connect(&zk).ensure(&root);
    let mut mount = Mount::start(&format!("{zk}{root}"), &[]);
    let pid = mount.pid().expect("running") as i32;
    kill(pid, libc::SIGSTOP);
    let arg = mount.path().to_string_lossy().into_owned();
    // `zkfs ARGS` (bounded at 30 s): its output and how long it took.
    let timed = |args: &[&str]| {
        let started = Instant::now();
        let mut c = Command::new(zkfs_bin());
        c.args(args);
        let out = run_with_timeout(c, Duration::from_secs(30));
        (out, started.elapsed())
    };
    let (status, took) = timed(&["status", &arg]);
    let status = status.unwrap_or_else(|e| {
        kill(pid, libc::SIGCONT);
        panic!("zkfs status: {e}")
    });
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not answer"), "{stderr}");
    assert!(took < Duration::from_secs(10), "status took {took:?}");
    let (unmounted, took) = timed(&["unmount", &arg]);
    kill(pid, libc::SIGCONT);
    let unmounted = unmounted.expect("zkfs unmount");
    assert_eq!(
        unmounted.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&unmounted.stderr)
    );
    assert!(took < Duration::from_secs(15), "unmount took {took:?}");
    assert!(!is_mounted(mount.path()), "still mounted");
    assert!(
        mount.wait_exit(Duration::from_secs(10)),
        "daemon still running"
    );
}

/// A second SIGTERM while the daemon finishes (the mount gone, the session
/// not yet closed) ends it at once, with status 1. Its runtime thread is
/// held stopped (ptrace) so that the close cannot end: the first SIGTERM
/// unmounts, and the daemon then waits on that close. Before, the signal
/// thread had returned by then, and the second SIGTERM was never taken.
#[test]
fn a_second_sigterm_while_finishing_exits_at_once() {
    let zk = shared_zk();
    let root = unique_root("sig-twice");
    let other = Other::connect(&zk);
    other.ensure(&root);
    let mut mount = Mount::start(&format!("{zk}{root}"), &[]);
    let pid = mount.pid().expect("running");
    let mut frozen = Frozen::thread(pid, "zkfs-rt");
    kill(pid as i32, libc::SIGTERM);
    wait_until(
        "the first SIGTERM unmounts and ends the FUSE session",
        Duration::from_secs(10),
        || !is_mounted(mount.path()) && mount.log().contains("unmounted"),
    );
    assert!(
        mount.exit_status().is_none(),
        "the daemon exited with its runtime stopped: the test shows nothing\n{}",
        mount.log()
    );
    kill(pid as i32, libc::SIGTERM);
    wait_until(
        "the daemon exits after the second SIGTERM",
        Duration::from_secs(5),
        || frozen.exited(),
    );
    drop(frozen);
    assert!(
        mount.wait_exit(Duration::from_secs(5)),
        "not reaped after its threads exited\n{}",
        mount.log()
    );
    assert_eq!(
        mount.exit_status().and_then(|s| s.code()),
        Some(1),
        "exit status\n{}",
        mount.log()
    );
    assert!(
        mount
            .log()
            .contains("signal received while the final snapshot and the session close run"),
        "{}",
        mount.log()
    );
}

#[test]
fn background_sigterm_and_sigint_unmount_and_exit_0_within_a_second() {
    let zk = shared_zk();
    for (sig, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT")] {
        let (other, root) = registered(&format!("sigbg-{name}"), &zk);
        let spot = Spot::new("sigbg");
        let (code, err) =
            background_mount(&format!("{zk}{root}"), &spot, &["--ephemeral", "svc"], &[]);
        assert_eq!(code, Some(0), "{err}");
        fs::write(spot.path().join("svc/host-1"), b"up").expect("register");
        let pid = spot.pid();
        let sent = Instant::now();
        kill(pid, sig);
        let mut status = None;
        wait_until(
            &format!("the daemon exits after SIG{name}"),
            SIGNAL_BOUND,
            || {
                status = try_reap(pid);
                status.is_some()
            },
        );
        let took = sent.elapsed();
        assert!(!is_mounted(spot.path()), "SIG{name}: still mounted");
        assert_eq!(
            status.and_then(exit_code),
            Some(0),
            "SIG{name}: exit status"
        );
        assert!(!exists(&other, &format!("{root}/svc/host-1")));
        eprintln!("SIG{name} (background): unmounted and exited in {took:?}");
    }
}

#[test]
fn sigterm_while_zookeeper_is_unreachable_still_ends_within_a_second() {
    let zk = shared_zk();
    let root = unique_root("sigdown");
    let other = Other::connect(&zk);
    other.ensure(&root);
    // Connections dropped, or held open with nothing answering (the close
    // request then gets no reply at all).
    for mode in ["cut", "blackhole"] {
        let proxy = Proxy::start(&zk);
        let mut mount = Mount::start(
            &format!("{}{root}", proxy.address()),
            &["--session-timeout", "30s"],
        );
        assert!(fs::read_dir(mount.path()).is_ok());
        if mode == "cut" {
            proxy.cut();
        } else {
            proxy.blackhole();
        }
        kill(mount.pid().expect("running") as i32, libc::SIGTERM);
        assert!(
            mount.wait_exit(SIGNAL_BOUND),
            "{mode}: daemon still running with ZooKeeper unreachable\n{}",
            mount.log()
        );
        assert!(!is_mounted(mount.path()), "{mode}");
        assert_eq!(
            mount.exit_status().and_then(|s| s.code()),
            Some(0),
            "{mode}"
        );
    }
}

/// The shell steps of [`signals_to_a_non_root_daemon`], run in a private
/// mount namespace where `/dev/fuse` is a node user `nobody` may open (this
/// machine's own is root-only) and `/etc/fuse.conf` allows `allow_other`.
const NON_ROOT_SCRIPT: &str = r#"
set -eu
dir=$1 zkfs=$2 servers=$3 mode=$4 sig=$5
mount --bind "$dir/fuse" /dev/fuse
mount --bind "$dir/fuse.conf" /etc/fuse.conf
# A variable, not a function: `$nobody zkfs ... &` must give zkfs's own pid in $!.
nobody="setpriv --reuid=65534 --regid=65534 --clear-groups"
# Gone, or a zombie waiting for its parent (this test process, the subreaper).
gone() { ! grep -q '^[^)]*) [^Z]' "/proc/$1/stat" 2>/dev/null; }
mp=$dir/mnt
case $mode in
fg) $nobody "$zkfs" mount --foreground "$servers" "$mp" >"$dir/log" 2>&1 & pid=$! ;;
fg-allow-other) $nobody "$zkfs" mount --foreground --allow-other "$servers" "$mp" >"$dir/log" 2>&1 & pid=$! ;;
bg) $nobody "$zkfs" mount --log-file "$dir/log" "$servers" "$mp"
    pid=$($nobody getfattr --only-values -n user.zkfs.pid "$mp") ;;
esac
i=0
until findmnt "$mp" >/dev/null; do
    i=$((i + 1)); [ $i -lt 2000 ] || { echo "not mounted"; cat "$dir/log"; exit 1; }
    sleep 0.01
done
echo "uid=$(stat -c %u /proc/$pid)"
start=$(date +%s%N)
kill -s "$sig" "$pid"
until gone "$pid"; do
    [ $(( $(date +%s%N) - start )) -lt 5000000000 ] || break
    sleep 0.005
done
echo "ms=$(( ($(date +%s%N) - start) / 1000000 ))"
echo "pid=$pid"
if findmnt "$mp" >/dev/null; then echo "mounted"; else echo "unmounted"; fi
"#;

#[test]
fn signals_to_a_non_root_daemon() {
    let zk = shared_zk();
    become_subreaper();
    for (mode, sig) in [("fg", "TERM"), ("fg-allow-other", "INT"), ("bg", "TERM")] {
        let dir = TempDir::new("nonroot");
        let base = dir.path();
        fs::set_permissions(base, fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let dev =
            std::ffi::CString::new(base.join("fuse").to_string_lossy().as_bytes()).expect("path");
        // SAFETY: mknod of a character device node at a path we own.
        let rc =
            unsafe { libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(10, 229)) };
        assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
        fs::set_permissions(base.join("fuse"), fs::Permissions::from_mode(0o666)).expect("chmod");
        fs::write(base.join("fuse.conf"), "user_allow_other\n").expect("fuse.conf");
        fs::create_dir(base.join("mnt")).expect("mount point");
        // SAFETY: chown of a directory we created.
        let mp =
            std::ffi::CString::new(base.join("mnt").to_string_lossy().as_bytes()).expect("path");
        assert_eq!(unsafe { libc::chown(mp.as_ptr(), 65534, 65534) }, 0);
        // The background daemon opens its --log-file as nobody.
        fs::write(base.join("log"), b"").expect("log file");
        let log_path =
            std::ffi::CString::new(base.join("log").to_string_lossy().as_bytes()).expect("path");
        // SAFETY: chown of a file we created.
        assert_eq!(unsafe { libc::chown(log_path.as_ptr(), 65534, 65534) }, 0);

        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            NON_ROOT_SCRIPT,
            "sh",
        ])
        .arg(base)
        .arg(zkfs_bin())
        .args([zk.as_str(), mode, sig]);
        let out = run_with_timeout(cmd, Duration::from_secs(60)).expect("unshare");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let log = fs::read_to_string(base.join("log")).unwrap_or_default();
        let what = format!(
            "{mode} SIG{sig}: {text}{}\n--- zkfs log ---\n{log}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{what}");
        let field = |key: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in {what}"))
                .to_string()
        };
        assert_eq!(field("uid"), "65534", "the daemon is not root: {what}");
        let ms: u64 = field("ms").parse().expect("ms");
        assert!(ms < SIGNAL_BOUND.as_millis() as u64, "took {ms} ms: {what}");
        assert!(text.lines().any(|l| l == "unmounted"), "{what}");
        let pid: i32 = field("pid").parse().expect("pid");
        if mode == "bg" {
            // Orphaned by its `zkfs mount`, the daemon is this process's child now.
            let mut status = None;
            wait_until("the background daemon is reaped", DEADLINE, || {
                status = try_reap(pid);
                status.is_some()
            });
            assert_eq!(status.and_then(exit_code), Some(0), "{what}");
        } else {
            assert!(log.contains("unmounted"), "{what}");
        }
    }
}

#[test]
fn sigterm_with_a_file_open_on_the_mount_still_ends_within_a_second() {
    let zk = shared_zk();
    let root = unique_root("sigbusy");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"v1");
    let mut mount = Mount::start(&format!("{zk}{root}"), &[]);
    let held = fs::File::open(mount.path().join("cfg")).expect("open");
    kill(mount.pid().expect("running") as i32, libc::SIGTERM);
    assert!(
        mount.wait_exit(SIGNAL_BOUND),
        "daemon still running with a file open\n{}",
        mount.log()
    );
    assert!(!is_mounted(mount.path()));
    assert_eq!(mount.exit_status().and_then(|s| s.code()), Some(0));
    drop(held);
}

/// Whether `pid`'s main thread blocks SIGTERM (zkfs's signal handling is set up).
fn blocks_sigterm(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let mask = status.lines().find_map(|l| l.strip_prefix("SigBlk:"))?;
            u64::from_str_radix(mask.trim(), 16).ok()
        })
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

#[test]
fn sigterm_while_still_connecting_ends_the_start_at_once() {
    // Nothing listens there: the daemon would wait out --connect-timeout.
    let servers = format!("127.0.0.1:{}", common::free_port());
    let spot = Spot::new("sigconnect");
    let mut child = Command::new(zkfs_bin())
        .args([
            "mount",
            "--foreground",
            "--connect-timeout",
            "60s",
            &servers,
            &spot.arg(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zkfs");
    let pid = child.id();
    wait_until("the daemon handles signals", DEADLINE, || {
        blocks_sigterm(pid)
    });
    kill(pid as i32, libc::SIGTERM);
    let mut status = None;
    wait_until("the daemon exits after SIGTERM", SIGNAL_BOUND, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!is_mounted(spot.path()));
}

#[test]
fn sighup_reopens_the_log_file() {
    let zk = shared_zk();
    let dir = TempDir::new("sighup");
    let log = dir.path().join("zkfs.log");
    let rotated = dir.path().join("zkfs.log.1");
    let log_arg = log.to_string_lossy().into_owned();
    let mount = Mount::start(&zk, &["--log-file", &log_arg]);
    wait_until("the log file has the mount line", DEADLINE, || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("mounted"))
    });
    // What logrotate does: move the file, then SIGHUP.
    fs::rename(&log, &rotated).expect("rotate");
    kill(mount.pid().expect("running") as i32, libc::SIGHUP);
    wait_until("a new log file with the reopen line", DEADLINE, || {
        fs::read_to_string(&log).is_ok_and(|t| t.contains("log reopened"))
    });
    let old = fs::read_to_string(&rotated).expect("rotated log");
    assert!(
        old.contains("mounted") && !old.contains("log reopened"),
        "{old}"
    );
    // SIGHUP does not stop the mount.
    assert!(is_mounted(mount.path()));
    assert!(fs::read_dir(mount.path()).is_ok());
}

// ---------------------------------------------------------------------------
// 2. systemd notification
// ---------------------------------------------------------------------------

fn recv_text(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = socket
        .recv(&mut buf)
        .expect("a notification within the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn notify_socket_gets_ready_once_mounted_and_stopping_on_sigterm() {
    let zk = shared_zk();
    let dir = TempDir::new("notify");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let spot = Spot::new("notify");
    let mut child = Command::new(zkfs_bin())
        .args(["mount", "--foreground", &zk, &spot.arg()])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn zkfs");
    let ready = recv_text(&socket);
    // Checked the moment READY=1 arrives: the mount is already there.
    assert!(is_mounted(spot.path()), "READY=1 before the mount: {ready}");
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready}");
    assert!(
        lines.contains(&format!("MAINPID={}", child.id()).as_str()),
        "{ready}"
    );
    assert!(fs::read_dir(spot.path()).is_ok(), "the mount serves");
    kill(child.id() as i32, libc::SIGTERM);
    assert_eq!(recv_text(&socket), "STOPPING=1");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert!(!is_mounted(spot.path()));
    // Everything it sent is queued by now: nothing more than those two.
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    let extra = socket.recv(&mut buf);
    assert!(
        extra
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "unexpected notification: {:?}",
        extra.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
}

#[test]
fn notify_socket_in_the_abstract_namespace() {
    let zk = shared_zk();
    let name = format!(
        "zkfs-test-notify-{}-{}",
        std::process::id(),
        unique_root("n")
    );
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract socket");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let value = format!("@{name}");
    let mut mount = Mount::try_start_with_env(&zk, &[], &[("NOTIFY_SOCKET", OsStr::new(&value))])
        .unwrap_or_else(|log| panic!("{log}"));
    assert!(recv_text(&socket).lines().any(|l| l == "READY=1"));
    mount.unmount();
    // Unmounted from outside (zkfs unmount): STOPPING=1 all the same.
    assert_eq!(recv_text(&socket), "STOPPING=1");
}

// ---------------------------------------------------------------------------
// 3. Logs
// ---------------------------------------------------------------------------

/// `<PRI>Mmm dd hh:mm:ss zkfs[PID]: MESSAGE` → (PRI, PID, MESSAGE).
fn parse_syslog(datagram: &str) -> Option<(u32, u32, String)> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let rest = datagram.strip_prefix('<')?;
    let (pri, rest) = rest.split_once('>')?;
    let pri: u32 = pri.parse().ok()?;
    let (stamp, rest) = (rest.get(..15)?, rest.get(15..)?);
    let month_ok = MONTHS.contains(&stamp.get(..3)?);
    let clock = stamp.get(7..)?;
    let clock_ok = clock.len() == 8 && clock.chars().filter(|c| *c == ':').count() == 2;
    if !month_ok || !clock_ok {
        return None;
    }
    let rest = rest.strip_prefix(" zkfs[")?;
    let (pid, message) = rest.split_once("]: ")?;
    Some((pri, pid.parse().ok()?, message.to_string()))
}

#[test]
fn background_mount_without_log_file_logs_to_syslog() {
    // Its own server, so stopping it provokes a warning.
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let dir = TempDir::new("syslog");
    let socket_path = dir.path().join("log.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind syslog socket");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let spot = Spot::new("syslog");
    let (code, err) = background_mount(
        &zk,
        &spot,
        &["--session-timeout", "30s"],
        &[("ZKFS_SYSLOG_SOCKET", socket_path.as_os_str())],
    );
    assert_eq!(code, Some(0), "{err}");
    let pid = spot.pid() as u32;
    let next = |want: &str| -> (u32, u32, String) {
        loop {
            let text = recv_text(&socket);
            let parsed = parse_syslog(&text).unwrap_or_else(|| panic!("not syslog format: {text}"));
            if parsed.2.contains(want) {
                return parsed;
            }
        }
    };
    // daemon (3) * 8 + info (6) = 30; warning (4) = 28.
    let (pri, from, _) = next("mounted");
    assert_eq!((pri, from), (30, pid));
    server.stop();
    let (pri, from, message) = next("lost connection to ZooKeeper");
    assert_eq!((pri, from), (28, pid), "{message}");
}

/// A log line that cannot be written (stderr a pipe nobody reads any more,
/// a full disk) is dropped: the daemon keeps serving. It panicked in the
/// logging library (which reports its own write error with `eprint!`,
/// itself failing), so a `mv` that was applied reported failure, and in
/// the background the dying daemon left requests hanging in the kernel.
#[test]
fn a_log_line_that_cannot_be_written_does_not_stop_the_daemon() {
    let zk = shared_zk();
    let root = unique_root("log-epipe");
    let other = Other::connect(&zk);
    other.ensure(&root);
    let dir = TempDir::new("log-epipe");
    let mp = dir.path().join("mnt");
    fs::create_dir(&mp).expect("mkdir mountpoint");
    let mut child = Command::new(zkfs_bin())
        .args(["mount", "--foreground", "--log-level", "zkfs=info"])
        .arg(format!("{zk}{root}"))
        .arg(&mp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start zkfs");
    let mut stderr = child.stderr.take().expect("stderr");
    // Read until the mount is made, then stop reading: writes get EPIPE.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("mounted") {
        let n = stderr.read(&mut buf).expect("read the daemon's stderr");
        assert!(
            n > 0,
            "the daemon ended: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stderr);
    for i in 0..20 {
        let (a, b) = (mp.join(format!("t{i}")), mp.join(format!("r{i}")));
        fs::write(&a, b"x").expect("write");
        fs::rename(&a, &b).unwrap_or_else(|e| panic!("mv {i}: {e}"));
        fs::remove_file(&b).unwrap_or_else(|e| panic!("rm {i}: {e}"));
    }
    assert!(child.try_wait().expect("poll").is_none(), "the daemon died");
    let (code, out) = zkfs(&["unmount", &mp.to_string_lossy()]);
    assert_eq!(code, Some(0), "{out}");
    let status = child.wait().expect("wait for the daemon");
    assert_eq!(status.code(), Some(0), "the daemon's exit status");
}

#[test]
fn log_file_dash_is_stderr() {
    let zk = shared_zk();
    // The harness captures the daemon's stderr in its log.
    let mount = Mount::start(&zk, &["--log-file", "-"]);
    wait_until("the mount line on stderr", DEADLINE, || {
        mount.log().contains("mounted")
    });
}

// ---------------------------------------------------------------------------
// 5. Refusals
// ---------------------------------------------------------------------------

#[test]
fn auth_file_readable_by_group_or_others_is_refused() {
    let zk = shared_zk();
    let dir = TempDir::new("authmode");
    let auth = dir.path().join("auth");
    fs::write(&auth, "alice:secret\n").expect("auth file");
    let auth_arg = auth.to_string_lossy().into_owned();
    let spot = Spot::new("authmode");
    for mode in [0o644, 0o640, 0o604] {
        fs::set_permissions(&auth, fs::Permissions::from_mode(mode)).expect("chmod");
        let (code, err) = zkfs(&["mount", "--auth-file", &auth_arg, &zk, &spot.arg()]);
        assert_eq!(code, Some(1), "mode {mode:o}: {err}");
        assert!(
            err.contains("readable or writable by group or others") && err.contains("chmod 600"),
            "mode {mode:o}: {err}"
        );
        assert!(!err.contains("secret"), "{err}");
        assert!(!is_mounted(spot.path()));
    }
    fs::set_permissions(&auth, fs::Permissions::from_mode(0o600)).expect("chmod");
    let mount = Mount::start(&zk, &["--auth-file", &auth_arg]);
    assert!(is_mounted(mount.path()));
}

#[test]
fn non_empty_mount_point_is_refused_unless_nonempty() {
    let zk = shared_zk();
    for allow in [["-o", "nonempty"], ["--nonempty", "--read-only"]] {
        let spot = Spot::new("nonempty");
        fs::write(spot.path().join("local-file"), b"local").expect("file");
        let (code, err) = zkfs(&["mount", &zk, &spot.arg()]);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("not empty") && err.contains("nonempty"),
            "{err}"
        );
        assert!(!is_mounted(spot.path()));

        let (code, err) = background_mount(&zk, &spot, &allow, &[]);
        assert_eq!(code, Some(0), "{allow:?}: {err}");
        assert!(is_mounted(spot.path()));
        assert!(
            !spot.path().join("local-file").exists(),
            "hidden under the mount"
        );
        let (code, err) = zkfs(&["unmount", &spot.arg()]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(
            fs::read(spot.path().join("local-file")).expect("back"),
            b"local"
        );
    }
}

#[test]
fn unmount_lazy_detaches_a_busy_mount() {
    let zk = shared_zk();
    let root = unique_root("lazy");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"v1");
    for flag in ["-z", "--lazy"] {
        let mut mount = Mount::start(&format!("{zk}{root}"), &[]);
        let mp = mount.path().to_string_lossy().into_owned();
        let mut held = fs::File::open(mount.path().join("cfg")).expect("open");
        let (code, err) = zkfs(&["unmount", &mp]);
        assert_eq!(code, Some(1), "a busy mount needs --lazy: {err}");
        assert!(err.contains("busy"), "{err}");
        let (code, err) = zkfs(&["unmount", flag, &mp]);
        assert_eq!(code, Some(0), "{flag}: {err}");
        assert!(!is_mounted(mount.path()), "{flag}: detached at once");
        // It returned without the daemon's end the help speaks of: said.
        assert!(
            err.contains("keeps serving the files still open"),
            "{flag}: {err}"
        );
        // The open file still works; the daemon goes once it is closed.
        let mut text = String::new();
        held.read_to_string(&mut text).expect("read the held file");
        assert_eq!(text, "v1");
        drop(held);
        assert!(mount.wait_exit(DEADLINE), "{flag}: daemon kept running");
        assert_eq!(mount.exit_status().and_then(|s| s.code()), Some(0));
    }
}

// ---------------------------------------------------------------------------
// 4. mount(8) options, fsname, statfs, default port
// ---------------------------------------------------------------------------

#[test]
fn generic_and_systemd_mount_options_are_accepted() {
    let zk = shared_zk();
    let root = unique_root("opts");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"v1");
    let servers = format!("{zk}{root}");
    let options = "ro,_netdev,nofail,noauto,auto,defaults,rw,x-systemd.automount,\
                   x-systemd.mount-timeout=30s,x-systemd.requires=network-online.target,\
                   comment=systemd.automount,default_permissions,user,users";
    let mount = Mount::start(&servers, &["-o", options]);
    let (opts, super_opts, source) = mount_options(mount.path()).expect("in mountinfo");
    assert_eq!(source, servers, "findmnt SOURCE is the connection string");
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    assert!(
        super_opts.split(',').any(|o| o == "default_permissions"),
        "{super_opts}"
    );
    assert_eq!(
        fs::read_to_string(mount.path().join("cfg")).expect("cat"),
        "v1"
    );
    let err = fs::write(mount.path().join("cfg"), b"v2").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));

    // fsname= is applied as it means; commas in a connection string survive.
    let named = Mount::start(&servers, &["-o", "fsname=zk-main"]);
    let (_, _, source) = mount_options(named.path()).expect("in mountinfo");
    assert_eq!(source, "zk-main");
    let two = format!("{zk},{zk}{root}");
    let listed = Mount::start(&two, &[]);
    let entry = mount_entries()
        .into_iter()
        .find(|m| m.mount_point == listed.path())
        .expect("listed");
    assert_eq!(entry.source, two);
    assert_eq!(entry.fstype, "fuse.zkfs");
}

#[test]
fn statfs_inode_counts_do_not_look_full() {
    let zk = shared_zk();
    let mount = Mount::start(&zk, &[]);
    let path = std::ffi::CString::new(mount.path().to_string_lossy().as_bytes()).expect("path");
    // SAFETY: statvfs into a zeroed local struct.
    let st = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(path.as_ptr(), &mut st), 0);
        st
    };
    assert!(st.f_files > 0, "no inode total");
    assert!(
        st.f_ffree > st.f_files / 2,
        "df -i would show {} of {} inodes used",
        st.f_files - st.f_ffree,
        st.f_files
    );
    let out = Command::new("df")
        .arg("-i")
        .arg(mount.path())
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    let used = text
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(4))
        .expect("IUse% column");
    assert_ne!(used, "100%", "{text}");
    assert_ne!(used, "-", "{text}");
}

/// Forward 127.0.0.1:2181 to `upstream` for the lifetime of the process
/// (one connection at a time is enough here).
fn forward_2181(upstream: String) -> Option<()> {
    let listener = TcpListener::bind("127.0.0.1:2181").ok()?;
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            for (mut from, mut to) in [
                (client.try_clone(), server.try_clone()),
                (server.try_clone(), client.try_clone()),
            ]
            .into_iter()
            .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
            {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    Some(())
}

#[test]
fn a_host_without_port_uses_2181() {
    let zk = shared_zk();
    if forward_2181(zk.clone()).is_some() {
        let mount = Mount::start("127.0.0.1", &[]);
        assert_eq!(
            xattr_string(mount.path(), "user.zkfs.server"),
            "127.0.0.1:2181"
        );
        assert_eq!(xattr_string(mount.path(), "user.zkfs.state"), "connected");
    } else {
        // Something else has port 2181: at least the address tried is right.
        let spot = Spot::new("port");
        let (code, err) = zkfs(&["mount", "--connect-timeout", "1s", "127.0.0.1", &spot.arg()]);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("127.0.0.1:2181"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// 6. Monitoring
// ---------------------------------------------------------------------------

/// One sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Prometheus text exposition: every sample line is `name{labels} value`
/// with a preceding `# TYPE name counter|gauge`. Returns (name, labels, value).
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut typed: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name}"
        );
        assert!(typed.iter().any(|t| t == name), "{name} has no # TYPE");
        if name.ends_with("_total") {
            assert!(value >= 0.0);
        }
        let labels = labels
            .split("\",")
            .filter(|l| !l.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        samples.push((name.to_string(), labels, value));
    }
    samples
}

fn metric(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .find(|(n, labels, _)| {
            n == name && label.is_none_or(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"))
}

fn prometheus(mount: &Mount) -> Vec<Sample> {
    let out = run_zkfs(&[
        "status",
        "--format",
        "prometheus",
        &mount.path().to_string_lossy(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_prometheus(&text)
}

/// The JSON object `"kernel_requests":{...}` as (operation, count) pairs.
fn json_kernel_requests(json: &str) -> Vec<(String, u64)> {
    let start = json
        .find("\"kernel_requests\":{")
        .expect("kernel_requests object")
        + 19;
    let body = &json[start..start + json[start..].find('}').expect("closing brace")];
    body.split(',')
        .map(|pair| {
            let (k, v) = pair.split_once(':').expect("key:value");
            let k = k.trim_matches('"').to_string();
            (k, v.parse().unwrap_or_else(|_| panic!("number for {pair}")))
        })
        .collect()
}

#[test]
fn status_prometheus_and_json_report_the_mount() {
    let zk = shared_zk();
    let root = unique_root("prom");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/svc"));
    for i in 0..3 {
        other.create(&format!("{root}/n{i}"), b"data");
    }
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &["--ephemeral", "svc", "--session-timeout", "4s"],
    );
    let m = mount.path();
    assert_eq!(fs::read_dir(m).expect("ls").count(), 4);
    assert_eq!(fs::read(m.join("n0")).expect("cat"), b"data");
    fs::write(m.join("svc/me"), b"up").expect("register");

    let s = prometheus(&mount);
    let mp = m.to_string_lossy().into_owned();
    assert!(
        s.iter()
            .all(|(_, labels, _)| labels.iter().any(|(k, v)| k == "mountpoint" && *v == mp)),
        "every sample names the mount point"
    );
    assert_eq!(metric(&s, "zkfs_connected", None), 1.0);
    assert!(metric(&s, "zkfs_cached_nodes", None) >= 4.0);
    assert!(metric(&s, "zkfs_cached_bytes", None) >= 4.0);
    assert!(metric(&s, "zkfs_zookeeper_requests_total", None) >= 1.0);
    assert!(metric(&s, "zkfs_kernel_requests_total", Some(("op", "readdir"))) >= 1.0);
    assert!(metric(&s, "zkfs_kernel_requests_total", Some(("op", "open"))) >= 1.0);
    assert_eq!(metric(&s, "zkfs_registrations", None), 1.0);
    assert_eq!(metric(&s, "zkfs_reconnects_total", None), 0.0);
    assert_eq!(metric(&s, "zkfs_session_expiries_total", None), 0.0);
    assert!(metric(&s, "zkfs_last_contact_age_seconds", None) < 5.0);

    let json = run_zkfs(&["status", "--json", &mp]);
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    let kernel = json_kernel_requests(&json);
    for op in ["lookup", "getattr", "open", "read", "readdir", "getxattr"] {
        assert!(kernel.iter().any(|(k, _)| k == op), "{op} in {json}");
    }
    let opens = kernel.iter().find(|(k, _)| k == "open").map(|(_, n)| *n);
    assert_eq!(
        opens.map(|n| n as f64),
        Some(metric(
            &s,
            "zkfs_kernel_requests_total",
            Some(("op", "open"))
        )),
        "JSON and Prometheus agree (status itself opens nothing)"
    );

    // A reconnect within the session.
    proxy.cut();
    wait_until("disconnected", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
    assert_eq!(metric(&prometheus(&mount), "zkfs_connected", None), 0.0);
    proxy.restore();
    wait_until("one reconnect counted", DEADLINE, || {
        let s = prometheus(&mount);
        metric(&s, "zkfs_connected", None) == 1.0
            && metric(&s, "zkfs_reconnects_total", None) == 1.0
    });

    // A session expiry: cut until the server drops the session (its
    // registration goes), then let the mount build a new one.
    proxy.cut();
    wait_until("the server expired the session", DEADLINE, || {
        !exists(&other, &format!("{root}/svc/me"))
    });
    proxy.restore();
    wait_until("one expiry counted", DEADLINE, || {
        let s = prometheus(&mount);
        metric(&s, "zkfs_connected", None) == 1.0
            && metric(&s, "zkfs_session_expiries_total", None) == 1.0
    });
}

// ---------------------------------------------------------------------------
// 7. The Debian package
// ---------------------------------------------------------------------------

/// Held while a test installs the package (two test runs on one machine
/// must not run dpkg at once).
struct DpkgLock {
    _file: fs::File,
}

impl DpkgLock {
    fn take() -> DpkgLock {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("zkfs-test-dpkg.lock"))
            .expect("lock file");
        // SAFETY: flock on a descriptor we own; blocks until free.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        assert_eq!(rc, 0, "flock");
        DpkgLock { _file: file }
    }
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(program);
    cmd.args(args);
    // Long enough for scripts/package to `cargo install cargo-deb` first.
    let out = run_with_timeout(cmd, Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Removes the package even if the test fails half-way.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["-r", "zkfs"]);
    }
}

const PACKAGED: &[&str] = &[
    "/usr/bin/zkfs",
    "/usr/sbin/mount.zkfs",
    "/usr/share/man/man1/zkfs.1.gz",
    "/usr/lib/systemd/system/zkfs@.service",
    "/usr/share/bash-completion/completions/zkfs",
    "/usr/share/zsh/vendor-completions/_zkfs",
    "/usr/share/fish/vendor_completions.d/zkfs.fish",
    "/usr/share/doc/zkfs/copyright",
];

#[test]
fn debian_package_installs_mounts_from_fstab_and_removes_cleanly() {
    let zk = shared_zk();
    let _lock = DpkgLock::take();
    let (installed_before, _) = run("dpkg", &["-s", "zkfs"]);
    assert!(
        !installed_before,
        "a zkfs package is already installed on this machine; this test would remove it"
    );
    let out_dir = TempDir::new("deb");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/package");
    // The binary under test (cargo built it): no second build.
    let (ok, text) = run(
        &script.to_string_lossy(),
        &[
            "--profile",
            "dev",
            "--no-build",
            "--output",
            &out_dir.path().to_string_lossy(),
        ],
    );
    assert!(ok, "scripts/package failed:\n{text}");
    let deb = text
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .expect("the .deb path")
        .to_string();
    let (ok, depends) = run("dpkg-deb", &["--field", &deb, "Depends"]);
    assert!(ok && depends.contains("fuse3"), "{depends}");

    let (ok, text) = run("dpkg", &["-i", &deb]);
    assert!(ok, "dpkg -i:\n{text}");
    let installed = Installed;
    for path in PACKAGED {
        assert!(Path::new(path).exists(), "{path} not installed");
    }
    assert_eq!(
        fs::canonicalize("/usr/sbin/mount.zkfs").expect("helper"),
        Path::new("/usr/bin/zkfs")
    );
    if Path::new("/usr/bin/systemd-analyze").exists() {
        let (ok, text) = run(
            "systemd-analyze",
            &["verify", "/usr/lib/systemd/system/zkfs@.service"],
        );
        assert!(
            ok && text.trim().is_empty(),
            "systemd-analyze verify:\n{text}"
        );
        // The documented .mount/.automount pair, as an admin would copy it.
        let units = out_dir.path().join("units");
        fs::create_dir(&units).expect("units dir");
        let mut paths = Vec::new();
        for name in ["srv-zk.mount", "srv-zk.automount"] {
            let from = Path::new("/usr/share/doc/zkfs/examples").join(name);
            fs::copy(&from, units.join(name)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
            paths.push(units.join(name).to_string_lossy().into_owned());
        }
        let mut args = vec!["verify"];
        args.extend(paths.iter().map(String::as_str));
        let (ok, text) = run("systemd-analyze", &args);
        assert!(
            ok && text.trim().is_empty(),
            "systemd-analyze verify of the .mount units:\n{text}"
        );
    }
    let (ok, text) = run("/usr/bin/zkfs", &["completions", "bash"]);
    assert!(ok && text.contains("zkfs"), "{text}");

    let root = unique_root("deb");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"v1");
    let servers = format!("{zk}{root}");
    let options = "ro,_netdev,nofail,x-systemd.automount";
    for fstype in ["zkfs", "fuse.zkfs"] {
        let spot = Spot::new("deb-mount");
        become_subreaper();
        let (ok, text) = run(
            "mount",
            &["-t", fstype, &servers, &spot.arg(), "-o", options],
        );
        assert!(ok, "mount -t {fstype}:\n{text}");
        let (opts, _, source) = mount_options(spot.path()).expect("mounted");
        assert_eq!(source, servers);
        assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
        assert_eq!(
            fs::read_to_string(spot.path().join("cfg")).expect("cat"),
            "v1"
        );
        let pid = spot.pid();
        let (ok, text) = run("umount", &[&spot.arg()]);
        assert!(ok, "umount:\n{text}");
        let mut status = None;
        wait_until("the daemon exits after umount", DEADLINE, || {
            status = try_reap(pid);
            status.is_some()
        });
        assert_eq!(status.and_then(exit_code), Some(0));
    }

    // An fstab line, mounted by its mount point as mount(8) does at boot.
    let spot = Spot::new("deb-fstab");
    let fstab = out_dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# zkfs\n{servers} {} zkfs ro,_netdev,nofail,noauto,x-systemd.automount,session_timeout=4s 0 0\n",
            spot.arg()
        ),
    )
    .expect("fstab");
    let (ok, text) = run("mount", &["-T", &fstab.to_string_lossy(), &spot.arg()]);
    assert!(ok, "mount from fstab:\n{text}");
    assert_eq!(
        fs::read_to_string(spot.path().join("cfg")).expect("cat"),
        "v1"
    );
    let (ok, text) = run("/usr/bin/zkfs", &["unmount", &spot.arg()]);
    assert!(ok, "{text}");
    assert!(!is_mounted(spot.path()));

    // The packaged unit, run as far as this machine allows (systemd is not
    // PID 1 here): its ExecStart= as systemd would expand it, under a
    // NOTIFY_SOCKET of ours, then stopped as KillMode=mixed does (SIGTERM).
    let unit = fs::read_to_string("/usr/lib/systemd/system/zkfs@.service").expect("unit");
    let setting = |key: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_string()
    };
    assert_eq!(setting("Type"), "notify");
    let spot = Spot::new("deb-unit");
    let options = "--read-only --session-timeout 4s";
    let exec = setting("ExecStart")
        .replace("%f", &spot.arg())
        .replace("${ZKFS_SERVERS}", &servers);
    // `$VAR` splits at white space, `${VAR}` stays one word (systemd.service(5)).
    let words: Vec<String> = exec
        .split_whitespace()
        .flat_map(|w| {
            if w == "$ZKFS_OPTIONS" {
                options.split_whitespace().map(str::to_string).collect()
            } else {
                vec![w.to_string()]
            }
        })
        .collect();
    let socket_path = out_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut service = Command::new(&words[0])
        .args(&words[1..])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("ExecStart {words:?}: {e}"));
    assert!(recv_text(&socket).lines().any(|l| l == "READY=1"));
    assert!(is_mounted(spot.path()));
    assert_eq!(
        fs::read_to_string(spot.path().join("cfg")).expect("cat"),
        "v1"
    );
    kill(service.id() as i32, libc::SIGTERM);
    assert_eq!(recv_text(&socket), "STOPPING=1");
    let mut status = None;
    wait_until(
        "the service's zkfs exits after SIGTERM",
        SIGNAL_BOUND,
        || {
            status = service.try_wait().ok().flatten();
            status.is_some()
        },
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0));
    assert!(!is_mounted(spot.path()));
    // ExecStopPost= ("-": its failure is ignored) finds nothing left to detach.
    let stop_post = setting("ExecStopPost").replace("%f", &spot.arg());
    let stop_post = stop_post.strip_prefix('-').expect("'-' prefix");
    let stop_words: Vec<&str> = stop_post.split_whitespace().collect();
    assert!(Path::new(stop_words[0]).exists(), "{stop_post}");
    // A crash (SIGKILL), ExecStopPost=, and Restart=: the next start works.
    let start = || {
        Command::new(&words[0])
            .args(&words[1..])
            .env("NOTIFY_SOCKET", &socket_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("ExecStart {words:?}: {e}"))
    };
    let mut service = start();
    assert!(recv_text(&socket).lines().any(|l| l == "READY=1"));
    service.kill().expect("SIGKILL");
    service.wait().expect("reap");
    let mut post = Command::new(stop_words[0]);
    post.args(&stop_words[1..]);
    let _ = run_with_timeout(post, Duration::from_secs(30)).expect("ExecStopPost");
    wait_until("the dead mount is gone", DEADLINE, || {
        !is_mounted(spot.path())
    });
    let mut service = start();
    assert!(recv_text(&socket).lines().any(|l| l == "READY=1"));
    assert_eq!(
        fs::read_to_string(spot.path().join("cfg")).expect("cat"),
        "v1"
    );
    kill(service.id() as i32, libc::SIGTERM);
    assert_eq!(service.wait().expect("wait").code(), Some(0));

    drop(installed);
    let (still, _) = run("dpkg", &["-s", "zkfs"]);
    assert!(!still, "dpkg -r left the package installed");
    for path in PACKAGED {
        assert!(!Path::new(path).exists(), "{path} left behind by dpkg -r");
    }
}
