//! ZooKeeper misbehaving under a mounted zkfs (contract §8, reads): server
//! stopped, connection dropped while others change data, session expired, and
//! the daemon killed. Each test runs its own server (or a proxy) so faults do
//! not disturb other tests.

mod common;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::time::{Duration, Instant};

use common::{Mount, ZkServer, is_mounted, run_zkfs, shared_zk, unique_root, wait_until};
use proxy::Proxy;
use zkops::{Other, xattr_string};

const DEADLINE: Duration = Duration::from_secs(20);

fn status_exit(mount: &Mount) -> Option<i32> {
    run_zkfs(&["status", &mount.path().to_string_lossy()])
        .status
        .code()
}

#[test]
fn server_down_cached_reads_continue_and_recover() {
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let other = Other::connect(&zk);
    other.ensure("/app");
    other.create("/app/config", b"v1");
    other.create("/app/uncached", b"u");
    let mount = Mount::start(&zk, &["--op-timeout", "1s", "--session-timeout", "20s"]);
    let m = mount.path();
    assert_eq!(fs::read_to_string(m.join("app/config")).expect("cat"), "v1");
    assert_eq!(status_exit(&mount), Some(0));
    drop(other);

    // Gracefully, as `systemctl stop` does: it closes client connections.
    server.stop_gracefully();
    wait_until("status says disconnected", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
    // The root watch and the client's state both tell a stopped server's
    // loss (two warn lines before): one loss, one line. Both have told it
    // by the time the takeover starts, 0.5 s later.
    wait_until("the takeover starts", DEADLINE, || {
        mount.log().contains("re-attaching the session")
    });
    let log = mount.log();
    let losses = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("lost connection to ZooKeeper"))
        .count();
    assert_eq!(losses, 1, "one loss, one warn line:\n{log}");
    assert_eq!(
        status_exit(&mount),
        Some(1),
        "status exits non-zero while disconnected"
    );
    // Cached data is still served, with no ZooKeeper at all.
    assert_eq!(
        fs::read_to_string(m.join("app/config")).expect("cached cat"),
        "v1"
    );
    assert!(
        fs::metadata(m.join("app/config"))
            .expect("cached stat")
            .is_file()
    );
    // Something never read fails within the operation timeout, not forever.
    let start = Instant::now();
    let err = fs::read_to_string(m.join("app/uncached")).expect_err("uncached while down");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ETIMEDOUT)),
        "{err}"
    );

    server.start_again();
    wait_until("reconnected", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
    });
    let other = Other::connect(&zk);
    other.set("/app/config", b"v2");
    wait_until("change after recovery visible", DEADLINE, || {
        fs::read_to_string(m.join("app/config")).is_ok_and(|s| s == "v2")
    });
    assert_eq!(status_exit(&mount), Some(0));
}

#[test]
fn changes_made_while_disconnected_are_seen_after_reconnect() {
    let zk = shared_zk();
    let root = unique_root("gap");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"before");
    other.create(&format!("{root}/doomed"), b"x");
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &["--session-timeout", "30s", "--op-timeout", "1s"],
    );
    let m = mount.path();
    let session = xattr_string(m, "user.zkfs.session_id");
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "before");
    assert!(m.join("doomed").exists());

    proxy.cut();
    wait_until("mount notices the drop", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
    // Meanwhile another client changes things; the mount gets no events.
    other.set(&format!("{root}/config"), b"after");
    other.delete(&format!("{root}/doomed"));
    other.create(&format!("{root}/born"), b"new");
    assert_eq!(
        fs::read_to_string(m.join("config")).expect("cached"),
        "before"
    );

    proxy.restore();
    wait_until("resynchronised after reconnect", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "after")
            && !m.join("doomed").exists()
            && m.join("born").exists()
    });
    assert_eq!(
        xattr_string(m, "user.zkfs.session_id"),
        session,
        "same session"
    );
    // The re-added watch works: later changes still arrive.
    other.set(&format!("{root}/config"), b"later");
    wait_until("watch re-added", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "later")
    });
}

#[test]
fn session_expiry_builds_a_new_session_and_resyncs() {
    let zk = shared_zk();
    let root = unique_root("expiry");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"old");
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &["--session-timeout", "2s", "--op-timeout", "1s"],
    );
    let m = mount.path();
    let first = xattr_string(m, "user.zkfs.session_id");
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "old");

    proxy.cut();
    other.set(&format!("{root}/config"), b"new");
    // Longer than the session timeout: the server expires the session.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        fs::read_to_string(m.join("config")).expect("cached while away"),
        "old"
    );
    proxy.restore();

    wait_until(
        "new session and fresh data",
        Duration::from_secs(30),
        || {
            xattr_string(m, "user.zkfs.session_id") != first
                && xattr_string(m, "user.zkfs.state") == "connected"
                && fs::read_to_string(m.join("config")).is_ok_and(|s| s == "new")
        },
    );
    other.set(&format!("{root}/config"), b"newer");
    wait_until("watch on the new session", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "newer")
    });
}

#[test]
fn killed_daemon_does_not_wedge_the_mount_point() {
    let zk = shared_zk();
    let root = unique_root("kill9");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/f"), b"data");
    let mut mount = Mount::start(&format!("{zk}{root}"), &[]);
    let mp = mount.path().to_path_buf();
    assert_eq!(fs::read_to_string(mp.join("f")).expect("cat"), "data");
    mount.kill9();
    // Auto-unmount (fusermount3) normally removes the dead mount by itself;
    // `zkfs unmount` must clear it in any case (the documented fallback).
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_mounted(&mp) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if is_mounted(&mp) {
        eprintln!("auto-unmount had not happened after 10 s; using zkfs unmount");
        let out = run_zkfs(&["unmount", &mp.to_string_lossy()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(!is_mounted(&mp), "no wedged mount point after kill -9");
    // The same mount point is usable again at once (background mount).
    let mp_arg = mp.to_string_lossy().into_owned();
    let out = run_zkfs(&["mount", &format!("{zk}{root}"), &mp_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        fs::read_to_string(mp.join("f")).expect("cat after remount"),
        "data"
    );
    let out = run_zkfs(&["unmount", &mp_arg]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mp));
}

#[test]
fn writes_while_disconnected_fail_in_bounded_time_and_apply_nothing() {
    let zk = shared_zk();
    let root = unique_root("wdown");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"before");
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &["--session-timeout", "30s", "--op-timeout", "2s"],
    );
    let m = mount.path();
    assert_eq!(fs::read_to_string(m.join("cfg")).expect("cat"), "before");
    // Opened while connected: the connection drops before the close.
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.join("cfg"))
        .expect("open for write");
    proxy.cut();
    wait_until("disconnected", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
    // Opening for writing while disconnected fails the open itself.
    let start = Instant::now();
    let err = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.join("cfg"))
        .expect_err("open for write while disconnected");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    use std::io::Write;
    f.write_all(b"after").expect("buffered");
    let err = f.sync_all().expect_err("cannot be sent while disconnected");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        matches!(err.raw_os_error(), Some(libc::EIO) | Some(libc::ETIMEDOUT)),
        "{err}"
    );
    drop(f);
    proxy.restore();
    wait_until("reconnected", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
    });
    // Nothing was applied behind the error.
    let fut = other.client.get_data(&format!("{root}/cfg"));
    let (data, _) = other.rt.block_on(fut).expect("get");
    assert_eq!(data, b"before");
}

/// A lookup that times out on a server that stopped answering names the
/// path it looked for in its one log line, not the directory it looked in.
#[test]
fn a_timed_out_lookup_names_the_path_it_looked_up() {
    let zk = shared_zk();
    let root = unique_root("lookuptimeout");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/dir"), b"");
    other.create(&format!("{root}/dir/known"), b"k");
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &["--session-timeout", "30s", "--op-timeout", "1s"],
    );
    let m = mount.path();
    // `dir` is known but not listed: a name in it needs the server.
    assert!(m.join("dir").is_dir());
    proxy.mute_answers();
    let err = fs::metadata(m.join("dir/wanted")).expect_err("lookup with no answers");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let log = mount.log();
    // Two bounds of 1 s race: the request's (`lookup failed`) and the
    // read's own (`getData failed`); either names the path.
    let line = log
        .lines()
        .find(|l| l.contains("op=\"lookup\""))
        .unwrap_or_else(|| panic!("no lookup failure logged:\n{log}"));
    assert!(
        line.contains(": /dir/wanted: ZooKeeper "),
        "the line names the directory, not the path: {line}"
    );
    proxy.cut();
    proxy.restore();
}
