//! `zkfs watch` through real mounts: CMD runs after changes made by another
//! ZooKeeper client, debounced, never concurrently, learnt from the daemon
//! (no polling), and the watch ends when the mount goes away.

mod common;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TempDir, shared_zk, unique_root, wait_until, zkfs_bin};
use proxy::Proxy;
use zkops::{Other, requests, xattr_string};

const DEADLINE: Duration = Duration::from_secs(20);

/// A running `zkfs watch` whose CMD appends one line per run to `runs`:
/// `$ZKFS_CHANGED` with newlines shown as `|`, a tab, and the content of
/// the file given as `shown` at the time of the run.
struct Watcher {
    child: Child,
    dir: TempDir,
}

impl Watcher {
    fn start(options: &[&str], paths: &[&Path], shown: &Path) -> Watcher {
        let dir = TempDir::new("watch");
        let runs = dir.path().join("runs");
        let stderr = fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let script = r#"c=$(printf '%s' "$ZKFS_CHANGED" | tr '\n' '|'); d=$(cat "$2" 2>/dev/null); printf '%s\t%s\n' "$c" "$d" >> "$1""#;
        let child = Command::new(zkfs_bin())
            .arg("watch")
            .args(options)
            .args(paths)
            .arg("--")
            .args(["sh", "-c", script, "sh"])
            .arg(&runs)
            .arg(shown)
            .env("ZKFS_LOG", "zkfs=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn zkfs watch");
        let mut watcher = Watcher { child, dir };
        wait_until("zkfs watch subscribed", DEADLINE, || {
            if let Ok(Some(status)) = watcher.child.try_wait() {
                panic!("zkfs watch exited with {status}: {}", watcher.stderr());
            }
            watcher.stderr().contains("watching for changes")
        });
        watcher
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// (changed paths, content of `shown`) of each run so far.
    fn runs(&self) -> Vec<(String, String)> {
        fs::read_to_string(self.dir.path().join("runs"))
            .unwrap_or_default()
            .lines()
            .map(|l| match l.split_once('\t') {
                Some((c, d)) => (c.to_string(), d.to_string()),
                None => (l.to_string(), String::new()),
            })
            .collect()
    }

    fn wait_runs(&self, n: usize) -> Vec<(String, String)> {
        wait_until(&format!("{n} runs"), DEADLINE, || self.runs().len() >= n);
        self.runs()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- zkfs watch stderr ---\n{}", self.stderr());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A mount of a fresh root holding `config/app.json` = "v0".
fn seeded(tag: &str, options: &[&str]) -> (Other, String, Mount) {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/config"));
    other.create(&format!("{root}/config/app.json"), b"v0");
    let mount = Mount::start(&format!("{zk}{root}"), options);
    (other, root, mount)
}

/// The absence of a further run can only be seen by waiting: this long.
const QUIET: Duration = Duration::from_secs(1);

#[test]
fn spaced_changes_run_the_command_once_each() {
    let (other, root, mount) = seeded("watch-spaced", &[]);
    let file = mount.path().join("config/app.json");
    let watcher = Watcher::start(&["--debounce", "150ms"], &[&file], &file);
    assert!(watcher.runs().is_empty(), "no run before a change");
    for i in 1..=3 {
        other.set(
            &format!("{root}/config/app.json"),
            format!("v{i}").as_bytes(),
        );
        let runs = watcher.wait_runs(i);
        assert_eq!(
            runs.last(),
            Some(&(text(&file), format!("v{i}"))),
            "run {i}: {runs:?}"
        );
    }
    std::thread::sleep(QUIET);
    assert_eq!(watcher.runs().len(), 3, "{:?}", watcher.runs());
}

#[test]
fn a_burst_of_changes_within_the_debounce_runs_the_command_once() {
    let (other, root, mount) = seeded("watch-burst", &[]);
    let file = mount.path().join("config/app.json");
    let watcher = Watcher::start(&["--debounce", "300ms"], &[&file], &file);
    let started = Instant::now();
    for i in 1..=10 {
        other.set(
            &format!("{root}/config/app.json"),
            format!("v{i}").as_bytes(),
        );
    }
    let burst = started.elapsed();
    wait_until("a run that saw the last value", DEADLINE, || {
        watcher.runs().last().is_some_and(|r| r.1 == "v10")
    });
    std::thread::sleep(QUIET);
    let runs = watcher.runs();
    assert!(
        (1..=2).contains(&runs.len()),
        "10 changes within {burst:?} ran {} times: {runs:?}",
        runs.len()
    );
    assert!(runs.iter().all(|r| r.0 == text(&file)), "{runs:?}");
}

#[test]
fn initial_run_socket_and_end_with_the_mount() {
    let (_other, _root, mut mount) = seeded("watch-initial", &[]);
    let file = mount.path().join("config/app.json");
    let dir = mount.path().join("config");
    let mut watcher = Watcher::start(&["--initial"], &[&file, &dir], &file);
    let runs = watcher.wait_runs(1);
    assert_eq!(
        runs[0],
        (format!("{}|{}", text(&dir), text(&file)), "v0".to_string())
    );

    let socket = PathBuf::from(xattr_string(mount.path(), "user.zkfs.events_socket"));
    let meta = fs::metadata(&socket).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // SAFETY: getuid cannot fail.
    assert_eq!(meta.uid(), unsafe { libc::getuid() });
    let parent = socket.parent().expect("socket directory");
    assert_eq!(
        fs::metadata(parent).expect("dir").permissions().mode() & 0o777,
        0o700
    );

    mount.unmount();
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = watcher.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "zkfs watch outlived its mount");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(1), "{}", watcher.stderr());
    assert!(
        watcher.stderr().contains("went away"),
        "{}",
        watcher.stderr()
    );
    assert!(!socket.exists(), "socket removed at unmount");
    assert!(!parent.exists(), "socket directory removed at unmount");
}

#[test]
fn a_directory_changes_with_its_list_of_children() {
    let zk = shared_zk();
    let root = unique_root("watch-dir");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/services/web/servers"));
    other.create(&format!("{root}/services/web/servers/a"), b"1");
    other.create(&format!("{root}/sentinel"), b"");
    let mount = Mount::start(&format!("{zk}{root}"), &[]);
    let dir = mount.path().join("services/web/servers");
    let sentinel = mount.path().join("sentinel");
    let watcher = Watcher::start(&[], &[&dir, &sentinel], Path::new("/dev/null"));

    other.create(&format!("{root}/services/web/servers/b"), b"2");
    let runs = watcher.wait_runs(1);
    assert_eq!(runs[0].0, text(&dir));

    // A child's data and a grandchild are not the directory's children list.
    other.set(&format!("{root}/services/web/servers/a"), b"changed");
    other.create(&format!("{root}/services/web/servers/a/deeper"), b"");
    other.set(&format!("{root}/sentinel"), b"x");
    wait_until("the sentinel's run", DEADLINE, || {
        watcher.runs().iter().any(|r| r.0 == text(&sentinel))
    });
    let runs = watcher.runs();
    assert_eq!(
        runs[1..],
        [(text(&sentinel), String::new())],
        "only the sentinel changed since: {runs:?}"
    );

    other.delete(&format!("{root}/services/web/servers/b"));
    let runs = watcher.wait_runs(3);
    assert_eq!(runs[2].0, text(&dir));
}

#[test]
fn a_file_that_does_not_exist_yet_changes_when_created_and_deleted() {
    let (other, root, mount) = seeded("watch-absent", &[]);
    let file = mount.path().join("config/later.json");
    let watcher = Watcher::start(&[], &[&file], &file);
    other.create(&format!("{root}/config/later.json"), b"here");
    let runs = watcher.wait_runs(1);
    assert_eq!(runs[0], (text(&file), "here".to_string()));
    other.delete(&format!("{root}/config/later.json"));
    let runs = watcher.wait_runs(2);
    assert_eq!(runs[1], (text(&file), String::new()));
}

/// Kernel requests by operation, without the getxattr calls reading them.
fn kernel_requests(mount: &Path) -> Vec<String> {
    xattr_string(mount, "user.zkfs.kernel_requests")
        .split_whitespace()
        .filter(|pair| !pair.starts_with("getxattr="))
        .map(str::to_string)
        .collect()
}

/// Context switches of every thread of process `pid` so far: a process
/// that only waits (in read, in epoll without a timer) makes none.
fn context_switches(pid: u32) -> u64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("/proc tasks");
    let mut total = 0;
    for task in tasks {
        let status =
            fs::read_to_string(task.expect("task").path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches:")
                || line.starts_with("nonvoluntary_ctxt_switches:")
            {
                let count = line.split_whitespace().last().unwrap_or("0");
                total += count.parse::<u64>().expect("numeric count");
            }
        }
    }
    total
}

#[test]
fn the_watch_never_polls() {
    let (other, root, mount) = seeded("watch-idle", &["--op-timeout", "200ms"]);
    let m = mount.path();
    let file = m.join("config/app.json");
    let watcher = Watcher::start(&["--debounce", "100ms"], &[&file], Path::new("/dev/null"));
    // Subscribing loads the node once: let that finish.
    let mut before = requests(m);
    wait_until("subscription loads settle", DEADLINE, || {
        std::thread::sleep(Duration::from_millis(200));
        let now = requests(m);
        let settled = now == before;
        before = now;
        settled
    });
    let kernel_before = kernel_requests(m);
    let woken_before = context_switches(watcher.child.id());
    // A quiet period while the watcher waits: nothing may be asked, and
    // the watcher itself never wakes up (no timer, and no stat either,
    // which the kernel's attribute cache would answer unseen by the daemon).
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(requests(m), before, "ZooKeeper requests while idle");
    assert_eq!(
        context_switches(watcher.child.id()),
        woken_before,
        "the watcher woke up while idle"
    );
    assert_eq!(
        kernel_requests(m),
        kernel_before,
        "kernel requests while idle"
    );
    assert!(watcher.runs().is_empty());

    other.set(&format!("{root}/config/app.json"), b"v1");
    let runs = watcher.wait_runs(1);
    assert_eq!(runs[0].0, text(&file));
    std::thread::sleep(QUIET);
    assert_eq!(watcher.runs().len(), 1);
}

#[test]
fn changes_while_disconnected_run_the_command_after_the_resync() {
    let zk = shared_zk();
    let root = unique_root("watch-gap");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/config"));
    other.create(&format!("{root}/config/app.json"), b"v0");
    other.ensure(&format!("{root}/servers/a"));
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &["--session-timeout", "30s", "--op-timeout", "1s"],
    );
    let m = mount.path();
    let file = m.join("config/app.json");
    let fresh = m.join("config/new.json");
    let dir = m.join("servers");
    let watcher = Watcher::start(&[], &[&file, &fresh, &dir], &file);

    proxy.cut();
    wait_until("mount notices the drop", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
    // The mount gets no events for these: only its resync finds them.
    other.set(&format!("{root}/config/app.json"), b"v1");
    other.create(&format!("{root}/config/new.json"), b"");
    other.create(&format!("{root}/servers/b"), b"");
    proxy.restore();

    let all: std::collections::BTreeSet<String> = [text(&dir), text(&file), text(&fresh)]
        .into_iter()
        .collect();
    let seen = || -> std::collections::BTreeSet<String> {
        watcher
            .runs()
            .iter()
            .flat_map(|r| r.0.split('|').map(str::to_string).collect::<Vec<_>>())
            .collect()
    };
    wait_until("every change found by the resync ran CMD", DEADLINE, || {
        seen() == all
    });
    assert_eq!(watcher.runs().last().map(|r| r.1.as_str()), Some("v1"));
}

/// `zkfs watch` ended by a signal while CMD runs takes CMD with it (CMD
/// gets SIGTERM): it kept running with no parent, unlike `zkfs register`'s
/// command.
#[test]
fn a_command_running_when_the_watcher_is_killed_ends_with_it() {
    let (_other, _root, mount) = seeded("watch-orphan", &[]);
    let file = mount.path().join("config/app.json");
    let dir = common::TempDir::new("watch-orphan");
    let pidfile = dir.path().join("pid");
    let mut watch = std::process::Command::new(common::zkfs_bin())
        .args(["watch", "--initial"])
        .arg(&file)
        .args(["--", "sh", "-c"])
        .arg(format!("echo $$ > '{}'; exec sleep 30", pidfile.display()))
        .spawn()
        .expect("zkfs watch");
    let mut pid = 0;
    common::wait_until("the command runs", DEADLINE, || {
        pid = fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(watch.id() as libc::pid_t, libc::SIGTERM) };
    let status = watch.wait().expect("wait for zkfs watch");
    assert_eq!(status.code(), None, "ended by the signal");
    let alive = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    };
    common::wait_until("the command ended with the watcher", DEADLINE, || {
        !alive(pid)
    });
}
