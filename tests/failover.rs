//! A 3-server ensemble losing one server at a time (the leader among them):
//! the mount fails over to another server in the connection string, keeps
//! serving reads, accepts writes and sees other clients' changes (§8).

mod common;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::{Ensemble, Mount, unique_root, wait_until};
use proxy::Proxy;
use zkops::{Other, xattr_string};

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn mount_carries_on_while_each_server_in_turn_is_down() {
    let mut ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let root = unique_root("failover");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"v-start");
    let mount = Mount::start(
        &format!("{zk}{root}"),
        &["--session-timeout", "20s", "--op-timeout", "15s"],
    );
    let m = mount.path();
    let session = xattr_string(m, "user.zkfs.session_id");
    assert_eq!(fs::read_to_string(m.join("cfg")).expect("cat"), "v-start");
    let leader = ensemble.leader().expect("a leader");
    eprintln!("leader is server {leader}");

    for i in 0..3 {
        ensemble.server(i).stop();
        // Cached reads go on whatever the connection does.
        assert!(fs::read_to_string(m.join("cfg")).is_ok());
        // A write through the mount is applied once a server takes over.
        let mine = format!("mine-{i}");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join("cfg"))
            .expect("open for write");
        f.write_all(mine.as_bytes()).expect("buffered");
        f.sync_all().expect("write accepted after failover");
        drop(f);
        // Another client's change becomes visible.
        let theirs = format!("theirs-{i}");
        other.set(&format!("{root}/cfg"), theirs.as_bytes());
        wait_until("change visible after failover", DEADLINE, || {
            fs::read_to_string(m.join("cfg")).is_ok_and(|s| s == theirs)
        });
        ensemble.server(i).start_again();
    }
    assert_eq!(
        xattr_string(m, "user.zkfs.session_id"),
        session,
        "the same session throughout"
    );
    assert_eq!(xattr_string(m, "user.zkfs.state"), "connected");
}

/// A writer through `mount` (on `file`): every write truncates and writes
/// `w-N` and fsyncs (or, [`Writer::renaming`], writes `w-N` to a new file
/// and renames it over `file`, as `sed -i` and editors do); counts
/// successes, keeps failures and the last success.
struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    written: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    thread: std::thread::JoinHandle<(Vec<String>, String)>,
}

impl Writer {
    fn start(file: std::path::PathBuf) -> Writer {
        Writer::with_step(file, |file, value| {
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(file)
                .and_then(|mut f| {
                    f.write_all(value.as_bytes())?;
                    f.sync_all()
                })
        })
    }

    /// Each write a new file `.FILE.N` (created, written, fsynced) renamed
    /// over `file`, then a scratch file created and unlinked: a create and
    /// a rename (one `multi`), a create and a delete per step.
    fn renaming(file: std::path::PathBuf) -> Writer {
        Writer::with_step(file, |file, value| {
            let name = file.file_name().expect("a file name").to_string_lossy();
            let temp = file.with_file_name(format!(".{name}.{value}"));
            let mut f = fs::File::create(&temp)?;
            f.write_all(value.as_bytes())?;
            f.sync_all()?;
            drop(f);
            fs::rename(&temp, file)?;
            let scratch = file.with_file_name(format!(".{name}.scratch"));
            fs::File::create(&scratch)?.sync_all()?;
            fs::remove_file(&scratch)
        })
    }

    fn with_step(
        file: std::path::PathBuf,
        step: fn(&std::path::Path, &str) -> std::io::Result<()>,
    ) -> Writer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, written) = (stop.clone(), written.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                let mut last = String::from("start");
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let value = format!("w-{i}");
                    match step(&file, &value) {
                        Ok(()) => {
                            last = value;
                            written.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.push(format!("{value}: {e}")),
                    }
                    i += 1;
                }
                (failures, last)
            })
        };
        Writer {
            stop,
            written,
            thread,
        }
    }

    /// Wait until `n` more writes succeeded.
    fn progress(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let start = self.written.load(Ordering::SeqCst);
        wait_until("the writer makes progress", DEADLINE, || {
            self.written.load(Ordering::SeqCst) >= start + n
        });
    }

    /// Stop; no write may have failed. Returns the last value written.
    fn finish(self) -> String {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (failures, last) = self.thread.join().expect("writer");
        assert!(
            failures.is_empty(),
            "{} writes failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        last
    }
}

/// Each server of the ensemble behind its own proxy is blackholed in turn
/// (connections open, nothing gets through) while a writer runs: the mount
/// finds out, fails over to another server and resolves the write there;
/// no write fails.
#[test]
fn a_blackholed_server_during_a_write_loop_fails_no_write() {
    let ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let proxies: Vec<Proxy> = zk.split(',').map(Proxy::start).collect();
    let through: Vec<String> = proxies.iter().map(Proxy::address).collect();
    let root = unique_root("blackhole");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"start");
    drop(other);
    let mount = Mount::start(
        &format!("{}{root}", through.join(",")),
        &["--session-timeout", "6s", "--op-timeout", "5s"],
    );
    let writer = Writer::start(mount.path().join("cfg"));
    writer.progress(10);
    for proxy in &proxies {
        proxy.blackhole();
        writer.progress(10);
        proxy.restore();
    }
    let last = writer.finish();
    let other = Other::connect(&zk);
    assert_eq!(
        String::from_utf8_lossy(&other.get(&format!("{root}/cfg")).0),
        last
    );
    drop(ensemble);
}

/// A writer keeps writing through the mount while each server in turn is
/// stopped gracefully (SIGTERM closes the mount's connection mid-request):
/// no write fails, and what ZooKeeper holds at the end is the last write.
#[test]
fn graceful_server_stops_during_a_write_loop_fail_no_write() {
    graceful_stops_during("sigterm", Writer::start);
}

/// Each server of a fresh ensemble stopped gracefully and started again in
/// turn, while the writer `start` makes runs through a mount (20 successes
/// before, between and after): none fails, ZooKeeper ends with the last
/// one, and the root holds `cfg` alone.
fn graceful_stops_during(tag: &str, start: fn(std::path::PathBuf) -> Writer) {
    let mut ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"start");
    drop(other);
    let mount = Mount::start(
        &format!("{zk}{root}"),
        &["--session-timeout", "10s", "--op-timeout", "5s"],
    );
    let writer = start(mount.path().join("cfg"));
    writer.progress(20);
    for i in 0..3 {
        ensemble.server(i).stop_gracefully();
        writer.progress(20);
        ensemble.server(i).start_again();
        writer.progress(20);
    }
    // Shown only if the test fails: every failed operation's log line
    // (the log's tail that a failure prints is all renames).
    for line in mount
        .log()
        .lines()
        .filter(|l| l.contains("errno=") && !l.contains("DEBUG"))
    {
        eprintln!("mount: {line}");
    }
    let last = writer.finish();
    let other = Other::connect(&zk);
    assert_eq!(
        String::from_utf8_lossy(&other.get(&format!("{root}/cfg")).0),
        last
    );
    assert_eq!(
        other.children(&root),
        vec!["cfg".to_string()],
        "no temporary file left"
    );
}

/// The same with `sed -i`'s pattern: a new file renamed over the old one
/// (and a scratch file created and removed). A rename is one `multi`; a
/// stop that takes its request (or a delete's) with the connection sends it
/// again, one that takes its answer finds it applied, and the reads before
/// them wait for the connection: no step fails, and no temporary file is
/// left behind.
#[test]
fn graceful_server_stops_during_a_rename_loop_fail_no_rename() {
    graceful_stops_during("sigterm-mv", Writer::renaming);
}
