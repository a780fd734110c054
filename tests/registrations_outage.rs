//! Registrations survive outages (contract §6, §8; issue 14): a private
//! standalone server stopped for 3 s, 7 s and 12 s with a 4 s session timeout,
//! a TCP blackhole longer than the session timeout, a 3-server ensemble
//! restarted one server at a time and stopped as a whole. After each, every
//! registration is present with its data, owned by the mount's *current*
//! session, and still there once the old session's timeout has passed on the
//! server (a restarted server restores the old session from its log and
//! expires it, with its ephemerals, only then).
//!
//! Each scenario has its own server(s), so the tests run in parallel.

mod common;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use common::{Ensemble, Mount, ZkServer, unique_root, wait_until};
use proxy::Proxy;
use zkops::{Other, xattr_string};

const SESSION_TIMEOUT: Duration = Duration::from_secs(4);
const DEADLINE: Duration = Duration::from_secs(40);

/// (data, ephemeralOwner) of `path`, None when absent or unreadable now.
fn node(other: &Other, path: &str) -> Option<(Vec<u8>, i64)> {
    let fut = other.client.get_data(path);
    match other
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), fut).await })
    {
        Ok(Ok((data, stat))) => Some((data, stat.ephemeral_owner)),
        _ => None,
    }
}

fn session_of(mount: &Mount) -> i64 {
    let hex = xattr_string(mount.path(), "user.zkfs.session_id");
    i64::from_str_radix(hex.trim_start_matches("0x"), 16).unwrap_or(0)
}

/// The registrations a scenario makes: (name, data).
fn registrations(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("10.9.0.{i}:8080"),
                format!("{{\"pid\": {}}}", 1000 + i).into_bytes(),
            )
        })
        .collect()
}

/// Whether every registration is present with its data and owned by the
/// mount's current session (read from the mount, compared with the server).
fn all_owned(other: &Other, mount: &Mount, root: &str, regs: &[(String, Vec<u8>)]) -> bool {
    if xattr_string(mount.path(), "user.zkfs.state") != "connected" {
        return false;
    }
    let session = session_of(mount);
    session != 0
        && regs.iter().all(|(name, data)| {
            node(other, &format!("{root}/svc/servers/{name}"))
                .is_some_and(|(d, owner)| &d == data && owner == session)
        })
}

fn describe(other: &Other, mount: &Mount, root: &str, regs: &[(String, Vec<u8>)]) -> String {
    let session = session_of(mount);
    let nodes: Vec<String> = regs
        .iter()
        .map(|(name, _)| {
            let n = node(other, &format!("{root}/svc/servers/{name}"));
            format!(
                "{name}: {:?}",
                n.map(|(d, o)| (String::from_utf8_lossy(&d).into_owned(), format!("{o:#x}")))
            )
        })
        .collect();
    format!(
        "mount session {session:#x}, registrations xattr {:?}\n{}\n--- zkfs log ---\n{}",
        zkops::xattr(mount.path(), "user.zkfs.registrations")
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
        nodes.join("\n"),
        mount.log()
    )
}

fn register_all(mount: &Mount, regs: &[(String, Vec<u8>)]) {
    let dir = mount.path().join("svc/servers");
    for (name, data) in regs {
        fs::write(dir.join(name), data).expect("register");
    }
}

/// After the outage: all registrations come back owned by the mount's
/// current session, and are still so once the old session's timeout has
/// passed on the server since `back` (when it was reachable again).
fn assert_recovered(
    zk: &str,
    mount: &Mount,
    root: &str,
    regs: &[(String, Vec<u8>)],
    back: Instant,
) {
    let other = Other::connect(zk);
    let deadline = Instant::now() + DEADLINE;
    while !all_owned(&other, mount, root, regs) {
        if Instant::now() > deadline {
            panic!(
                "registrations not back within {DEADLINE:?}\n{}",
                describe(&other, mount, root, regs)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    // Time itself is the condition here: a restarted server expires the
    // sessions it restored one session timeout after it started (plus its
    // tick); only then would a wrongly kept old-session node vanish.
    let settle = back + SESSION_TIMEOUT * 2 + Duration::from_secs(1);
    if let Some(rest) = settle.checked_duration_since(Instant::now()) {
        thread::sleep(rest);
    }
    // Re-creation after the old session's expiry is allowed (the mount may
    // lose its session meanwhile), loss is not.
    let deadline = Instant::now() + DEADLINE;
    while !all_owned(&other, mount, root, regs) {
        if Instant::now() > deadline {
            panic!(
                "registrations lost after the old session's timeout\n{}",
                describe(&other, mount, root, regs)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + DEADLINE;
    while xattr_string(mount.path(), "user.zkfs.registrations") != regs.len().to_string() {
        if Instant::now() > deadline {
            panic!(
                "the mount does not count them all as owned\n{}",
                describe(&other, mount, root, regs)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A mount of `connect{root}` with `svc/servers` as its registration directory.
fn mount_for(connect: &str, root: &str, op_timeout: &str) -> Mount {
    let session_timeout = format!("{}s", SESSION_TIMEOUT.as_secs());
    Mount::start(
        &format!("{connect}{root}"),
        &[
            "--ephemeral",
            "svc/servers",
            "--session-timeout",
            &session_timeout,
            "--op-timeout",
            op_timeout,
        ],
    )
}

fn standalone_outage(tag: &str, down: Duration) {
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let root = unique_root(tag);
    Other::connect(&zk).ensure(&format!("{root}/svc/servers"));
    let mount = mount_for(&zk, &root, "2s");
    let regs = registrations(3);
    register_all(&mount, &regs);
    server.stop();
    let stopped = Instant::now();
    if down > SESSION_TIMEOUT * 2 {
        // The client gives the session up within the outage: from then on
        // none of its registrations is owned (status must not say so).
        wait_until("the mount takes the session as expired", down, || {
            xattr_string(mount.path(), "user.zkfs.state") == "expired-reconnecting"
        });
        // The state changes first; the registry hears of the expiry on the
        // daemon's event loop, right after.
        wait_until(
            "no registration owned once expired",
            Duration::from_secs(2),
            || xattr_string(mount.path(), "user.zkfs.registrations") == "0",
        );
        assert_eq!(
            xattr_string(mount.path(), "user.zkfs.registrations_pending"),
            regs.len().to_string()
        );
    }
    // The outage itself: the scenario is "down for this long".
    thread::sleep(down.saturating_sub(stopped.elapsed()));
    server.start_again();
    let back = Instant::now();
    assert_recovered(&zk, &mount, &root, &regs, back);
}

#[test]
fn standalone_server_down_3s() {
    standalone_outage("outage-3s", Duration::from_secs(3));
}

#[test]
fn standalone_server_down_7s() {
    standalone_outage("outage-7s", Duration::from_secs(7));
}

#[test]
fn standalone_server_down_12s() {
    standalone_outage("outage-12s", Duration::from_secs(12));
}

/// The network, not the server, fails: a blackhole longer than the session
/// timeout. The server expires the session (and drops its ephemerals) while
/// the mount cannot reach it; the mount must put them back.
#[test]
fn proxy_blackhole_longer_than_session_timeout() {
    let zk = common::shared_zk();
    let root = unique_root("outage-blackhole");
    Other::connect(&zk).ensure(&format!("{root}/svc/servers"));
    let proxy = Proxy::start(&zk);
    let mount = mount_for(&proxy.address(), &root, "2s");
    let regs = registrations(3);
    register_all(&mount, &regs);
    let first = session_of(&mount);
    proxy.cut();
    let other = Other::connect(&zk);
    wait_until(
        "the server expired the mount's first session",
        DEADLINE,
        || {
            regs.iter()
                .all(|(n, _)| node(&other, &format!("{root}/svc/servers/{n}")).is_none())
        },
    );
    proxy.restore();
    let back = Instant::now();
    assert_recovered(&zk, &mount, &root, &regs, back);
    assert_ne!(session_of(&mount), first, "a new session");
}

/// 20 registrations on a 3-server ensemble: restarted one server at a time
/// (each down long enough to lose its clients' connections), then the whole
/// ensemble down for twice the session timeout.
#[test]
fn ensemble_rolling_restart_and_full_outage() {
    let mut ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let root = unique_root("outage-ensemble");
    Other::connect(&zk).ensure(&format!("{root}/svc/servers"));
    let mount = mount_for(&zk, &root, "3s");
    let regs = registrations(20);
    register_all(&mount, &regs);

    for i in 0..3 {
        ensemble.server(i).stop();
        // Down longer than the session timeout: a mount connected to it
        // must move to another server within the session.
        thread::sleep(SESSION_TIMEOUT + Duration::from_secs(1));
        ensemble.server(i).start_again();
        let other = Other::connect(&zk);
        let deadline = Instant::now() + DEADLINE;
        while !all_owned(&other, &mount, &root, &regs) {
            if Instant::now() > deadline {
                panic!(
                    "registrations not back after restarting server {i}\n{}",
                    describe(&other, &mount, &root, &regs)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    for i in 0..3 {
        ensemble.server(i).stop();
    }
    thread::sleep(SESSION_TIMEOUT * 2);
    ensemble.start_all_again();
    let back = Instant::now();
    assert_recovered(&zk, &mount, &root, &regs, back);
}

/// A shell overwriting a registration while ZooKeeper is down must see the
/// failure (at `open`: the error of the final close is discarded by the
/// shell), and the registration keeps its data once the server is back.
#[test]
fn shell_overwrite_while_down_fails_and_changes_nothing() {
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let root = unique_root("outage-shell");
    Other::connect(&zk).ensure(&format!("{root}/svc/servers"));
    Other::connect(&zk).ensure(&format!("{root}/svc/listed"));
    let mount = mount_for(&zk, &root, "2s");
    let regs = registrations(1);
    register_all(&mount, &regs);
    let file = mount.path().join("svc/servers").join(&regs[0].0);
    let fresh = mount.path().join("svc/servers/10.9.9.9:1");
    // Listed before the outage: the cache proves the name absent, so the
    // create itself waits for the connection (it used to wait 60 s).
    let listed = mount.path().join("svc/listed");
    assert_eq!(fs::read_dir(&listed).expect("ls").count(), 0);
    let absent = listed.join("new");
    server.stop();
    wait_until("the mount noticed the outage", DEADLINE, || {
        xattr_string(mount.path(), "user.zkfs.state") != "connected"
    });
    // Overwrite and append wait for the connection, then ETIMEDOUT; a new
    // name the cache cannot prove absent already fails its lookup (EIO).
    for (script, errno_text) in [
        (
            format!("echo '{{\"pid\": 1}}' > '{}'", file.display()),
            "timed out",
        ),
        (format!("echo more >> '{}'", file.display()), "timed out"),
        (format!("echo new > '{}'", fresh.display()), "error"),
        (format!("echo new > '{}'", absent.display()), "timed out"),
    ] {
        let started = Instant::now();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("sh");
        assert!(
            !out.status.success(),
            "{script} must fail while ZooKeeper is down\n--- zkfs log ---\n{}",
            mount.log()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(errno_text),
            "{script}: the shell reports the error ({errno_text}), got {stderr:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{script}: failed within the operation timeout"
        );
    }
    server.start_again();
    let back = Instant::now();
    assert_recovered(&zk, &mount, &root, &regs, back);
    let other = Other::connect(&zk);
    assert!(
        node(&other, &format!("{root}/svc/servers/10.9.9.9:1")).is_none(),
        "the refused new file was never created"
    );
}

/// While the mount could not reach the server, its session expired and
/// another client registered the same name: the mount leaves that node
/// alone (and says so in `zkfs status`), and takes the name back as soon as
/// the other client's node goes.
#[test]
fn foreign_registration_is_left_alone_and_taken_back_when_it_goes() {
    let zk = common::shared_zk();
    let root = unique_root("outage-foreign");
    Other::connect(&zk).ensure(&format!("{root}/svc/servers"));
    let proxy = Proxy::start(&zk);
    let mount = mount_for(&proxy.address(), &root, "2s");
    let regs = registrations(1);
    register_all(&mount, &regs);
    let path = format!("{root}/svc/servers/{}", regs[0].0);
    proxy.cut();
    let other = Other::connect(&zk);
    wait_until("the server expired the mount's session", DEADLINE, || {
        node(&other, &path).is_none()
    });
    let squatter = Other::connect(&zk);
    squatter.create_mode(&path, b"theirs", zookeeper_client::CreateMode::Ephemeral);
    proxy.restore();
    let status = || {
        let out = std::process::Command::new(common::zkfs_bin())
            .args(["status", "--json"])
            .arg(mount.path())
            .output()
            .expect("zkfs status");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until(
        "status shows the registration held by another session",
        DEADLINE,
        || status().contains("\"registrations_held_by_others\":1"),
    );
    assert_eq!(
        node(&other, &path).map(|(d, o)| (d, o == squatter.session_id())),
        Some((b"theirs".to_vec(), true)),
        "the other client's node is left alone"
    );
    assert!(
        mount.log().contains("owned by another session; left alone"),
        "logged"
    );
    drop(squatter);
    let back = Instant::now();
    assert_recovered(&zk, &mount, &root, &regs, back);
    assert!(
        status().contains(
            "\"registrations\":1,\"registrations_pending\":0,\"registrations_held_by_others\":0"
        ),
        "{}",
        status()
    );
}

/// CMD under `zkfs register` dies while ZooKeeper is down: its registration
/// cannot be removed then, but it is as soon as the server is back, and it
/// is never re-created.
#[test]
fn register_cmd_dying_during_an_outage_is_deregistered_when_back() {
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let root = unique_root("outage-register");
    Other::connect(&zk).ensure(&format!("{root}/svc/servers"));
    let mount = mount_for(&zk, &root, "2s");
    let file = mount.path().join("svc/servers/10.9.1.1:80");
    let path = format!("{root}/svc/servers/10.9.1.1:80");
    let mut wrapper = std::process::Command::new(common::zkfs_bin())
        .arg("register")
        .arg(&file)
        .args(["--", "sleep", "60"])
        .spawn()
        .expect("zkfs register");
    {
        let other = Other::connect(&zk);
        wait_until("registered", DEADLINE, || node(&other, &path).is_some());
    }
    server.stop();
    wait_until("the mount noticed the outage", DEADLINE, || {
        xattr_string(mount.path(), "user.zkfs.state") != "connected"
    });
    // SAFETY: signalling the wrapper this test started; it passes SIGTERM on.
    unsafe { libc::kill(wrapper.id() as libc::pid_t, libc::SIGTERM) };
    let status = wrapper.wait().expect("wrapper exits");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "CMD's status");
    server.start_again();
    let back = Instant::now();
    let other = Other::connect(&zk);
    wait_until("deregistered once the server is back", DEADLINE, || {
        node(&other, &path).is_none()
    });
    // Past the old session's timeout (a restarted server may restore it):
    // still gone, and not owned by the mount any more.
    let settle = back + SESSION_TIMEOUT * 2 + Duration::from_secs(1);
    if let Some(rest) = settle.checked_duration_since(Instant::now()) {
        thread::sleep(rest);
    }
    assert!(node(&other, &path).is_none(), "{}", mount.log());
    assert_eq!(xattr_string(mount.path(), "user.zkfs.registrations"), "0");
    assert_eq!(
        xattr_string(mount.path(), "user.zkfs.registrations_pending"),
        "0"
    );
}
