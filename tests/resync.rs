//! Resync after a reconnect against a real ZooKeeper: every change made
//! while a mount was cut off (a leaf's data, children created and deleted
//! in listed directories, with the child count unchanged too) is seen after
//! the reconnect, also on the cheap path where a directory is listed again
//! only when its pzxid moved; and a reconnect with nothing changed costs
//! the root watch and one multi-read, counted on the wire.

mod common;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zkops.rs"]
mod zkops;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use common::{Frozen, Mount, TempDir, shared_zk, unique_root, wait_until};
use proxy::{Proxy, op};
use zkops::{Other, requests, xattr_string};

const DEADLINE: Duration = Duration::from_secs(20);

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Now, in ms since the epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn resyncs(m: &Path) -> u64 {
    xattr_string(m, "user.zkfs.resyncs")
        .parse()
        .expect("resyncs")
}

/// A read-only mount of `root` through a new proxy, with a 30 s session
/// timeout and `--op-timeout op_timeout`.
fn proxied_mount(zk: &str, root: &str, op_timeout: &str) -> (Proxy, Mount) {
    let proxy = Proxy::start(zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &[
            "--session-timeout",
            "30s",
            "--op-timeout",
            op_timeout,
            "--read-only",
        ],
    );
    (proxy, mount)
}

/// A proxied read-only mount (`--op-timeout 1s`) of a new root holding
/// `config` = "v1", read once: (other client, root, proxy, mount, the
/// mount's session id).
fn config_mount(tag: &str) -> (Other, String, Proxy, Mount, String) {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"v1");
    let (proxy, mount) = proxied_mount(&zk, &root, "1s");
    assert_eq!(
        fs::read_to_string(mount.path().join("config")).expect("cat"),
        "v1"
    );
    let session = xattr_string(mount.path(), "user.zkfs.session_id");
    (other, root, proxy, mount, session)
}

/// Keep the cut for 4 s (the outage's length is what the re-attach tests
/// are about), restore it and wait until the mount is connected: when it
/// says it connected (ms since the epoch, its own clock), and how long
/// after the restore that was (against the test's clock).
fn four_seconds_then_restore(proxy: &Proxy, m: &Path) -> (u64, Duration) {
    std::thread::sleep(Duration::from_secs(4));
    let restored = unix_ms();
    proxy.restore();
    wait_until("reconnected", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
    });
    let since: u64 = xattr_string(m, "user.zkfs.connected_since")
        .parse()
        .expect("connected_since");
    assert!(
        since >= restored,
        "connected at {since}, before the restore at {restored}"
    );
    (since, Duration::from_millis(since - restored))
}

/// Cut the connection and wait until the mount noticed.
fn disconnect(proxy: &Proxy, m: &Path) {
    proxy.cut();
    wait_until("mount notices the drop", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
}

/// Cut the connection, run `gap` while the mount cannot see anything,
/// restore it and wait until the resync that follows has completed.
fn cut_off(proxy: &Proxy, m: &Path, gap: impl FnOnce()) {
    let done = resyncs(m);
    disconnect(proxy, m);
    gap();
    proxy.restore();
    wait_until("reconnected and resynchronised", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
            && resyncs(m) > done
            && xattr_string(m, "user.zkfs.resync_pending") == "0"
    });
}

#[test]
fn every_gap_change_is_seen_and_an_unchanged_reconnect_is_cheap() {
    let zk = shared_zk();
    let root = unique_root("resync");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"v1");
    other.ensure(&format!("{root}/svc"));
    for name in ["a", "b", "c"] {
        other.create(&format!("{root}/svc/{name}"), b"s");
    }
    other.ensure(&format!("{root}/svc/pool"));
    for i in 0..20 {
        other.create(&format!("{root}/svc/pool/n{i:02}"), b"p");
    }
    let (proxy, mount) = proxied_mount(&zk, &root, "1s");
    let m = mount.path();
    // Cache and list everything.
    assert_eq!(names(m), ["config", "svc"]);
    assert_eq!(names(&m.join("svc")), ["a", "b", "c", "pool"]);
    assert_eq!(names(&m.join("svc/pool")).len(), 20);
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "v1");
    for name in names(&m.join("svc/pool")) {
        fs::read(m.join("svc/pool").join(name)).expect("cat");
    }

    // First gap: the first resync has no baseline and lists every directory.
    // (No node is created here: a new node's ACL is loaded in the
    // background, which would blur the counts below.)
    cut_off(&proxy, m, || {
        other.set(&format!("{root}/config"), b"v2");
        other.delete(&format!("{root}/svc/c"));
    });
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "v2");
    assert_eq!(names(&m.join("svc")), ["a", "b", "pool"]);

    // A child arrives by event and is never looked at: its name is in the
    // cached list, the node itself is not cached.
    other.create(&format!("{root}/svc/z"), b"s");
    wait_until("event applied", DEADLINE, || {
        xattr_string(&m.join("svc"), "user.zk.num_children") == "4"
    });
    // Its pzxid moved since the first resync: /svc is listed again.
    cut_off(&proxy, m, || {});

    // Nothing changed: the root watch added again (the client forgets it
    // at reconnect; the old watcher is dropped only after, so no
    // RemoveWatches) and one multi-read; no directory is listed. Counted on
    // the wire by the proxy (pings and the session's handshake aside) and
    // by the mount's own counter. The client itself also sends one
    // SetWatches at every reconnect while a watcher is registered (its
    // resend, empty of the persistent watch: the bug); the mount does not
    // count what it did not send.
    let before = requests(m);
    let wire_before = proxy.requests();
    cut_off(&proxy, m, || {});
    let cost = requests(m) - before;
    let mut wire = proxy.requests_since(&wire_before);
    wire.remove(&op::PING);
    let expected = BTreeMap::from([
        (op::MULTI_READ, 1),
        (op::SET_WATCHES, 1),
        (op::ADD_WATCH, 1),
    ]);
    assert_eq!(
        wire, expected,
        "requests of a reconnect with nothing changed, by op code"
    );
    assert_eq!(cost, 2, "the mount's own count of the same reconnect");

    // The last gap, on the cheap path: a leaf's data; in /svc a child
    // created and the uncached one deleted (the count stays, no cached node
    // vanishes: only the pzxid tells); in /svc/pool one created, one created
    // and deleted again, one deleted; a node created at the root.
    cut_off(&proxy, m, || {
        other.set(&format!("{root}/config"), b"v3");
        other.create(&format!("{root}/svc/e"), b"s");
        other.delete(&format!("{root}/svc/z"));
        other.create(&format!("{root}/svc/pool/n20"), b"p");
        other.create(&format!("{root}/svc/pool/tmp"), b"t");
        other.delete(&format!("{root}/svc/pool/tmp"));
        other.delete(&format!("{root}/svc/pool/n00"));
        other.create(&format!("{root}/fresh"), b"f");
    });
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "v3");
    assert_eq!(names(m), ["config", "fresh", "svc"]);
    assert_eq!(names(&m.join("svc")), ["a", "b", "e", "pool"]);
    let pool = names(&m.join("svc/pool"));
    assert_eq!(pool.len(), 20);
    assert!(pool.contains(&"n20".to_string()) && !pool.contains(&"n00".to_string()));
    assert!(!m.join("svc/z").exists());

    // The re-added watch works.
    other.set(&format!("{root}/config"), b"v4");
    wait_until("watch re-added", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v4")
    });
}

/// Events keep being applied while a resync reads: the resync's multi-read
/// is held back on the wire, another client creates a child meanwhile, and
/// the mount shows it (from its cache, no request needed) before the
/// resync has its answer (within 5 s, while that read would only fail
/// after 15 s); once released, the resync completes.
#[test]
fn events_are_applied_while_a_resync_reads() {
    let zk = shared_zk();
    let root = unique_root("resync-events");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.ensure(&format!("{root}/svc"));
    other.create(&format!("{root}/svc/a"), b"s");
    // A held read waits 15 s before it fails: longer than the event may
    // take below, so a resync that held events back until it ended could
    // not pass by timing out first.
    let (proxy, mount) = proxied_mount(&zk, &root, "15s");
    let m = mount.path();
    assert_eq!(names(&m.join("svc")), ["a"]);
    let count = || xattr_string(&m.join("svc"), "user.zk.num_children");
    assert_eq!(count(), "1");
    let done = resyncs(m);
    disconnect(&proxy, m);
    proxy.hold_from(op::MULTI_READ);
    proxy.restore();
    wait_until("the resync's multi-read is held", DEADLINE, || {
        proxy.holding()
    });
    other.create(&format!("{root}/svc/b"), b"s");
    wait_until(
        "the child's event applied during the resync",
        Duration::from_secs(5),
        || count() == "2",
    );
    assert!(
        proxy.holding(),
        "the resync was still waiting for its answer"
    );
    assert_eq!(resyncs(m), done, "no resync completed meanwhile");
    proxy.release();
    wait_until("the resync completes", DEADLINE, || {
        resyncs(m) > done && xattr_string(m, "user.zkfs.resync_pending") == "0"
    });
    assert_eq!(names(&m.join("svc")), ["a", "b"]);
}

/// A cut longer than the client's own quick retries is taken over: the
/// mount re-attaches the *same* session soon after the server is reachable
/// again, instead of waiting out zookeeper-client's doubling backoff (for
/// one server: attempts 0.1, 0.3, 0.7, 1.5, 3.1–3.7, then 6.3–7.0 s after
/// the loss, so after a 4 s cut it would be back 2.3–3.0 s after the
/// restore). The re-attached mount then shows what changed in the gap and
/// follows later changes.
#[test]
fn a_long_cut_re_attaches_the_same_session_soon_after_the_restore() {
    let (other, root, proxy, mount, session) = config_mount("resync-reattach");
    let m = mount.path();
    let done = resyncs(m);
    let before = requests(m);
    let wire_before = proxy.requests();
    disconnect(&proxy, m);
    other.set(&format!("{root}/config"), b"v2");
    let (since, back_after) = four_seconds_then_restore(&proxy, m);
    eprintln!("connected {back_after:?} after the restore");
    assert!(
        back_after < Duration::from_millis(1800),
        "connected {back_after:?} after the restore (the client's own backoff would take 2.3 s or more)"
    );
    // The resync follows within its jitter window (up to 1 s here).
    wait_until("resynchronised", DEADLINE, || {
        resyncs(m) > done && xattr_string(m, "user.zkfs.resync_pending") == "0"
    });
    let resynced: u64 = xattr_string(m, "user.zkfs.last_resync")
        .parse()
        .expect("last_resync");
    assert!(
        resynced >= since && resynced <= unix_ms(),
        "last resync at {resynced}"
    );
    // On the wire: the sync, the root watch and one multi-read; the new
    // client has no watches of its own to resend (no SetWatches), so
    // ZooKeeper receives as many requests as after the client's own
    // reconnect (SetWatches, AddWatch, multi-read).
    let mut wire = proxy.requests_since(&wire_before);
    wire.remove(&op::PING);
    let expected = BTreeMap::from([(op::SYNC, 1), (op::MULTI_READ, 1), (op::ADD_WATCH, 1)]);
    assert_eq!(wire, expected, "requests of the re-attach, by op code");
    assert_eq!(requests(m) - before, 3, "the mount's own count of it");
    assert_eq!(
        xattr_string(m, "user.zkfs.session_id"),
        session,
        "the same session, re-attached"
    );
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "v2");
    other.set(&format!("{root}/config"), b"v3");
    wait_until("the new client's watch delivers", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v3")
    });
}

/// Once a resync is reported complete (`resync_pending` 0), everything it
/// found is visible: with 1,500 files changed during a gap, the kernel's
/// invalidations of them take the invalidation thread a while, and the
/// resync counts as ended only after the kernel has them. Every file, read
/// at once through the page cache the kernel kept from before the gap,
/// shows its new content.
#[test]
fn after_a_resync_ends_no_read_finds_what_it_changed() {
    const FILES: usize = 1500;
    let zk = shared_zk();
    let root = unique_root("resync-visible");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.ensure(&format!("{root}/d"));
    for i in 0..FILES {
        other.create(&format!("{root}/d/f{i:04}"), b"old");
    }
    let (proxy, mount) = proxied_mount(&zk, &root, "1s");
    let m = mount.path();
    let d = m.join("d");
    // Every file in the kernel's page cache.
    assert_eq!(names(&d).len(), FILES);
    for i in 0..FILES {
        assert_eq!(fs::read(d.join(format!("f{i:04}"))).expect("cat"), b"old");
    }
    cut_off(&proxy, m, || {
        for i in 0..FILES {
            other.set(&format!("{root}/d/f{i:04}"), b"new");
        }
    });
    let stale: Vec<usize> = (0..FILES)
        .filter(|i| fs::read(d.join(format!("f{i:04}"))).expect("cat") != b"new")
        .collect();
    assert!(
        stale.is_empty(),
        "{} of {FILES} files still showed the old content after the resync ended (first: f{:04})",
        stale.len(),
        stale.first().copied().unwrap_or(0)
    );
}

/// A re-attached client whose server does not answer its `sync` is not
/// used: the mount stays disconnected (serving its cache) and tries again,
/// instead of declaring itself connected and reading from a server that
/// may be behind what it has cached. Here every `sync` is held back on the
/// wire for 2.5 s (past `--op-timeout` 1 s, twice); once they go through,
/// the mount is connected on the same session.
#[test]
fn a_re_attach_whose_sync_gets_no_answer_is_not_used() {
    let (other, root, proxy, mount, session) = config_mount("resync-sync");
    let m = mount.path();
    disconnect(&proxy, m);
    // Past the takeover (0.5 s): the next connection is a re-attach.
    std::thread::sleep(Duration::from_secs(1));
    proxy.hold_from(op::SYNC);
    proxy.restore();
    wait_until("a re-attach's sync is held", DEADLINE, || proxy.holding());
    let held = std::time::Instant::now();
    while held.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            xattr_string(m, "user.zkfs.state"),
            "disconnected",
            "connected while its sync had no answer ({:?} into the hold)",
            held.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy.release();
    wait_until("connected once the sync goes through", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
    });
    assert_eq!(xattr_string(m, "user.zkfs.session_id"), session);
    other.set(&format!("{root}/config"), b"v2");
    wait_until("the watch delivers", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v2")
    });
}

/// A connection lost again while the root watch is being added back after
/// the client's own reconnect is taken over like any other loss: the
/// mount says `disconnected` (not `connected` with no watch) and is back on
/// the same session soon after the server is reachable again. Here the
/// re-added watch's `AddWatch` is held on the wire and the connection cut
/// under it for 4 s.
#[test]
fn a_loss_while_the_watch_is_added_back_is_taken_over_too() {
    let (other, root, proxy, mount, session) = config_mount("resync-rewatch");
    let m = mount.path();
    disconnect(&proxy, m);
    proxy.hold_from(op::ADD_WATCH);
    proxy.restore();
    wait_until("the re-added watch's AddWatch is held", DEADLINE, || {
        proxy.holding()
    });
    proxy.cut();
    proxy.release();
    wait_until("the mount notices the second loss", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
    other.set(&format!("{root}/config"), b"v2");
    let (_, back_after) = four_seconds_then_restore(&proxy, m);
    assert!(
        back_after < Duration::from_millis(1800),
        "connected {back_after:?} after the restore"
    );
    assert_eq!(xattr_string(m, "user.zkfs.session_id"), session);
    wait_until("the gap's change is seen", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v2")
    });
    other.set(&format!("{root}/config"), b"v3");
    wait_until("the watch delivers", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v3")
    });
}

/// The same after a session expiry: a connection lost while the new
/// session's root watch is being added is seen as a loss (`disconnected`,
/// not `connected` with no watch while the client retries on its own), and
/// once the connection is back the watch goes on, what changed meanwhile
/// is seen and later changes arrive. Here the session (2 s) expires under
/// a cut, the new session's `AddWatch` is held on the wire and the
/// connection cut under it.
#[test]
fn a_loss_while_a_new_sessions_watch_is_added_is_seen_as_one() {
    let zk = shared_zk();
    let root = unique_root("resync-newwatch");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"v1");
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &[
            "--session-timeout",
            "2s",
            "--op-timeout",
            "1s",
            "--read-only",
        ],
    );
    let m = mount.path();
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "v1");
    let first = xattr_string(m, "user.zkfs.session_id");
    proxy.cut();
    wait_until("the session is taken as expired", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "expired-reconnecting"
    });
    other.set(&format!("{root}/config"), b"v2");
    proxy.hold_from(op::ADD_WATCH);
    proxy.restore();
    wait_until("the new session's AddWatch is held", DEADLINE, || {
        proxy.holding()
    });
    let second = xattr_string(m, "user.zkfs.session_id");
    assert_ne!(second, first, "a new session");
    proxy.cut();
    proxy.release();
    wait_until("the mount notices the loss", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "disconnected"
    });
    other.set(&format!("{root}/config"), b"v3");
    proxy.restore();
    wait_until("connected again", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
    });
    wait_until("the gap's changes are seen", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v3")
    });
    other.set(&format!("{root}/config"), b"v4");
    wait_until("the watch delivers", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v4")
    });
}

/// A mount started from its snapshot with no server reachable, whose first
/// connection is lost while its root watch is being added, says
/// `disconnected` at once, not after `--op-timeout` (8 s here, with a 20 s
/// session): before the fix it went on to check that the root exists,
/// a getData the client does not send while it reconnects, and stayed
/// `connected` until that timed out. Once the connection is back the watch
/// goes on, the gap's change is seen and later changes arrive.
#[test]
fn a_first_connection_lost_while_its_watch_is_added_is_seen_at_once() {
    let zk = shared_zk();
    let root = unique_root("resync-firstwatch");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"v1");
    let base = TempDir::new("firstwatch");
    let cache = base.path().join("cache").to_string_lossy().into_owned();
    let proxy = Proxy::start(&zk);
    let servers = format!("{}{root}", proxy.address());
    let mut first = Mount::start(&servers, &["--cache-dir", &cache, "--read-only"]);
    assert_eq!(
        fs::read_to_string(first.path().join("config")).expect("cat"),
        "v1"
    );
    first.unmount();
    proxy.cut();
    proxy.hold_from(op::ADD_WATCH);
    let mount = Mount::start(
        &servers,
        &[
            "--cache-dir",
            &cache,
            "--connect-timeout",
            "1s",
            "--op-timeout",
            "8s",
            "--session-timeout",
            "20s",
            "--read-only",
        ],
    );
    let m = mount.path();
    assert_eq!(xattr_string(m, "user.zkfs.source"), "snapshot");
    proxy.restore();
    wait_until("the first AddWatch is held", DEADLINE, || proxy.holding());
    proxy.cut();
    proxy.release();
    wait_until(
        "the mount notices the loss, well inside --op-timeout",
        Duration::from_secs(3),
        || xattr_string(m, "user.zkfs.state") == "disconnected",
    );
    other.set(&format!("{root}/config"), b"v2");
    proxy.restore();
    wait_until("connected again, the gap's change seen", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
            && fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v2")
    });
    other.set(&format!("{root}/config"), b"v3");
    wait_until("the watch delivers", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v3")
    });
}

/// A silent server at the head of a re-attach attempt's round does not use
/// the attempt up: the client goes on to the next server in the same
/// attempt. Two proxies in front of one server and a 5 s session: both
/// are cut, and once the mount re-attaches both accept again but stay
/// silent; the first the attempt connects to stays so, the other is made
/// live (they accept only after the first attempt, which both refuse, so
/// that an attempt begins with the silent one). The silent one must be
/// connected to once only, in each of four
/// rounds, on the same session. Before the fix an attempt ended after a
/// third of the session timeout, before the client's 2/5 for the silent
/// server; the next attempt began with it again half of the time (the
/// client shuffles the servers).
#[test]
fn a_silent_server_does_not_use_up_a_re_attach_attempt() {
    let zk = shared_zk();
    let root = unique_root("resync-silent");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"v0");
    let proxies = [Proxy::start(&zk), Proxy::start(&zk)];
    let mount = Mount::start(
        &format!("{},{}{root}", proxies[0].address(), proxies[1].address()),
        &[
            "--session-timeout",
            "5s",
            "--op-timeout",
            "1s",
            "--read-only",
        ],
    );
    let m = mount.path();
    assert_eq!(fs::read_to_string(m.join("config")).expect("cat"), "v0");
    let session = xattr_string(m, "user.zkfs.session_id");
    let failed_attempts = || mount.log().matches("re-attach attempt failed").count();
    for round in 1..=4 {
        let before = failed_attempts();
        for p in &proxies {
            p.cut();
        }
        // Both refuse the first attempt at once; the next one is 100-200 ms
        // later, and both accept (silently) by then.
        wait_until("a re-attach attempt is refused", DEADLINE, || {
            failed_attempts() > before
        });
        let counts = proxies.each_ref().map(Proxy::accepted);
        for p in &proxies {
            p.restore_silent();
        }
        let mut silent = None;
        wait_until("an attempt connects", DEADLINE, || {
            silent = (0..2).find(|&i| proxies[i].accepted() > counts[i]);
            silent.is_some()
        });
        let silent = silent.expect("the silent proxy");
        proxies[1 - silent].restore();
        wait_until("connected", DEADLINE, || {
            xattr_string(m, "user.zkfs.state") == "connected"
        });
        assert_eq!(
            proxies[silent].accepted() - counts[silent],
            1,
            "round {round}: the silent server was connected to again"
        );
        assert_eq!(xattr_string(m, "user.zkfs.session_id"), session);
        proxies[silent].restore();
        other.set(&format!("{root}/config"), format!("v{round}").as_bytes());
        wait_until("the watch delivers", DEADLINE, || {
            fs::read_to_string(m.join("config")).is_ok_and(|s| s == format!("v{round}"))
        });
    }
}

/// Lookups the kernel has sent the mount so far.
fn lookups(m: &Path) -> u64 {
    let summary = xattr_string(m, "user.zkfs.kernel_requests");
    summary
        .split(' ')
        .find_map(|kv| kv.strip_prefix("lookup="))
        .and_then(|n| n.parse().ok())
        .expect("lookup count")
}

/// A proxied read-only mount (`--op-timeout 5s`) of a new root holding
/// `config` (read once) and `fresh` (never read through the mount).
fn a_file_never_read(tag: &str) -> (Other, Proxy, Mount) {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"v1");
    other.create(&format!("{root}/fresh"), b"never read before");
    let (proxy, mount) = proxied_mount(&zk, &root, "5s");
    assert_eq!(
        fs::read_to_string(mount.path().join("config")).expect("cat"),
        "v1"
    );
    (other, proxy, mount)
}

/// Read `fresh` on a thread of its own, once its lookup has reached the
/// daemon.
fn read_fresh_in_the_background(m: &Path) -> std::thread::JoinHandle<std::io::Result<String>> {
    let before = lookups(m);
    let reader = {
        let m = m.to_path_buf();
        std::thread::spawn(move || fs::read_to_string(m.join("fresh")))
    };
    wait_until("the lookup reaches the daemon", DEADLINE, || {
        lookups(m) > before
    });
    reader
}

/// A read that needs ZooKeeper while a re-attach is under way waits for it
/// (within `--op-timeout`, 5 s here) instead of failing at once with EIO:
/// the file is looked up for the first time once the re-attach has begun,
/// the lookup has reached the daemon, and only then is the connection
/// restored.
#[test]
fn a_read_during_a_re_attach_waits_for_it() {
    let (_other, proxy, mount) = a_file_never_read("resync-waits");
    let m = mount.path().to_path_buf();
    proxy.cut();
    wait_until("the re-attach starts", DEADLINE, || {
        mount.log().contains("re-attaching the session")
    });
    let reader = read_fresh_in_the_background(&m);
    proxy.restore();
    let read = reader.join().expect("reader thread");
    assert_eq!(
        read.expect("read during the re-attach"),
        "never read before"
    );
}

/// A read that reached the old client while it was still trying to
/// reconnect by itself (the first 0.5 s after a loss) is not failed when the
/// re-attach stops that client: it is asked again of the re-attached one,
/// within its `--op-timeout` (5 s here). Before, the stopped client failed
/// it and the reader got EIO, though the session came back 2 s later.
#[test]
fn a_read_queued_before_a_re_attach_is_asked_again_after_it() {
    let (_other, proxy, mount) = a_file_never_read("resync-queued");
    let m = mount.path().to_path_buf();
    disconnect(&proxy, &m);
    assert!(
        !mount.log().contains("re-attaching the session"),
        "the re-attach began before the read could be queued"
    );
    let reader = read_fresh_in_the_background(&m);
    wait_until("the re-attach starts", DEADLINE, || {
        mount.log().contains("re-attaching the session")
    });
    std::thread::sleep(Duration::from_secs(1));
    proxy.restore();
    let read = reader.join().expect("reader thread");
    assert_eq!(
        read.expect("a read queued before the re-attach"),
        "never read before"
    );
    // The read went to the old client (else it only waited for the
    // re-attach, which the test before this one covers).
    assert!(
        mount
            .log()
            .contains("a read failed with the client a re-attach stopped"),
        "the read was not one the re-attach's stop failed\n{}",
        mount.log()
    );
}

/// A connection lost and regained so quickly that `follow` sees only the
/// second state: the daemon's runtime thread is held stopped while its
/// ZooKeeper client (a thread of its own) loses the connection and
/// reconnects, so the state it last saw (`connected`) reaches it as one
/// more `connected` (the client's state watcher keeps the latest value
/// only). The change made meanwhile must still be seen (a resync), and
/// later changes must still arrive (zookeeper-client 0.11.2 does not resend the
/// persistent watch: it must be added again). Before the fix neither
/// happened: the mount said `connected` and showed `v1` for good.
#[test]
fn a_loss_the_state_watcher_never_shows_is_still_handled() {
    let (other, root, proxy, mount, _session) = config_mount("resync-blip");
    let m = mount.path();
    let pid = mount.pid().expect("daemon pid");
    let quiet = [op::PING, op::SET_WATCHES, op::SET_WATCHES2];
    {
        let frozen = Frozen::thread(pid, "zkfs-rt");
        proxy.cut();
        other.set(&format!("{root}/config"), b"v2");
        let before = proxy.requests();
        proxy.restore();
        // A lookup of a name never seen: the FUSE thread hands its getData
        // to the client, which sends it once it is connected again (the
        // answer waits for the runtime).
        let probe = {
            let path = m.join("never-there");
            std::thread::spawn(move || fs::metadata(path).map(|_| ()))
        };
        wait_until(
            "the client reconnected (a request passed)",
            DEADLINE,
            || {
                proxy
                    .requests_since(&before)
                    .keys()
                    .any(|code| *code > 0 && !quiet.contains(code))
            },
        );
        drop(frozen);
        let _ = probe.join().expect("probe");
    }
    wait_until("the change made during the loss is seen", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v2")
    });
    other.set(&format!("{root}/config"), b"v3");
    wait_until("the watch delivers", DEADLINE, || {
        fs::read_to_string(m.join("config")).is_ok_and(|s| s == "v3")
    });
}
