//! Tests of the test harness itself (tests/common) against real ZooKeeper
//! servers: private servers can be killed and restarted with their data and
//! sessions intact, the shared server is usable, and nothing leaks when the
//! test process exits.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use zookeeper_client::{Acls, Client, CreateMode};

fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Alive and not a zombie (orphans may be reaped late by PID 1).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rsplit_once(") ") {
            Some((_, rest)) => !rest.starts_with('Z'),
            None => true,
        },
        Err(_) => false,
    }
}

/// Retries `get_data` until it succeeds (the client reconnects by itself).
async fn get_data_eventually(client: &Client, path: &str, timeout: Duration) -> Vec<u8> {
    let start = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), client.get_data(path)).await {
            Ok(Ok((data, _))) => return data,
            Ok(Err(e)) if start.elapsed() > timeout => panic!("get_data({path}) still fails: {e}"),
            Err(_) if start.elapsed() > timeout => panic!("get_data({path}) still times out"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_server_survives_kill9_and_restart() {
    let mut zk = ZkServer::start();
    let port = zk.port();
    assert_eq!(zk.connect_string(), format!("127.0.0.1:{port}"));
    assert!(port_accepts(port));

    let c = client(&zk.connect_string()).await;
    let root = unique_root("restart");
    ensure_path(&c, &format!("{root}/dir")).await;
    c.set_data(&root, b"hello", None)
        .await
        .expect("set_data on the root");
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    c.create(&format!("{root}/eph"), b"e", &ephemeral)
        .await
        .expect("create an ephemeral node");

    let started = Instant::now();
    zk.stop();
    eprintln!("stop took {:?}", started.elapsed());
    assert!(!port_accepts(port), "port {port} still open after stop()");
    assert!(!zk.is_running());
    // With the server gone, requests do not succeed.
    let r = tokio::time::timeout(Duration::from_secs(3), c.get_data(&root)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "get_data succeeded with the server down"
    );

    let started = Instant::now();
    zk.start_again();
    eprintln!("start_again took {:?}", started.elapsed());
    assert_eq!(zk.port(), port, "start_again must keep the port");
    assert!(port_accepts(port));

    // Data written before the kill -9 is still there, and the old session
    // (10 s timeout) survived the ~1 s outage: its ephemeral node is kept.
    let data = get_data_eventually(&c, &root, Duration::from_secs(20)).await;
    assert_eq!(data, b"hello");
    let other = client(&zk.connect_string()).await;
    let (eph, _) = other
        .get_data(&format!("{root}/eph"))
        .await
        .expect("the ephemeral node survives a short restart");
    assert_eq!(eph, b"e");
    let children = other.list_children(&root).await.expect("list children");
    let children: HashSet<String> = children.into_iter().collect();
    assert_eq!(
        children,
        HashSet::from(["dir".to_string(), "eph".to_string()])
    );

    // A second stop/start cycle works too.
    zk.stop();
    zk.start_again();
    let data = get_data_eventually(&other, &root, Duration::from_secs(20)).await;
    assert_eq!(data, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_server_kills_it_and_removes_its_dir() {
    let zk = ZkServer::start();
    let port = zk.port();
    let dir: PathBuf = zk.dir().to_path_buf();
    let pid = zk.pid().expect("a running server has a pid");
    assert!(dir.join("zoo.cfg").exists());
    assert!(process_alive(pid));
    let cfg = std::fs::read_to_string(dir.join("zoo.cfg")).expect("read zoo.cfg");
    assert!(cfg.contains("clientPortAddress=127.0.0.1"));
    let answer = four_letter_word(port, "srvr").expect("srvr answer");
    assert!(answer.contains("Mode: standalone"), "srvr: {answer}");
    drop(zk);
    assert!(!process_alive(pid), "java {pid} still alive after drop");
    assert!(!dir.exists(), "{} still exists after drop", dir.display());
    wait_until("the port closes", Duration::from_secs(5), || {
        !port_accepts(port)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_sessions_are_allowed() {
    // zkfs tests use 2-4 s session timeouts; the server must grant them.
    let zk = shared_zk();
    let c = Client::connector()
        .with_session_timeout(Duration::from_millis(2000))
        .connect(&zk)
        .await
        .expect("connect with a 2 s session timeout");
    assert!(
        c.session_timeout() <= Duration::from_millis(2000),
        "negotiated session timeout {:?}",
        c.session_timeout()
    );
    let c = Client::connector()
        .with_session_timeout(Duration::from_millis(1000))
        .connect(&zk)
        .await
        .expect("connect with a 1 s session timeout");
    assert_eq!(c.session_timeout(), Duration::from_millis(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_server_is_shared_and_usable() {
    let a = shared_zk();
    let b = shared_zk();
    assert_eq!(a, b);
    let c = client(&a).await;
    let root = unique_root("shared");
    let deep = format!("{root}/x/y/z");
    ensure_path(&c, &deep).await;
    ensure_path(&c, &deep).await; // idempotent
    ensure_path(&c, &root).await;
    let (data, stat) = c.get_data(&deep).await.expect("the path exists");
    assert!(data.is_empty());
    assert_eq!(stat.ephemeral_owner, 0);
    let (acls, _) = c.get_acl(&deep).await.expect("get_acl");
    assert_eq!(acls.len(), 1);
    assert_eq!(acls[0].scheme(), "world");
    assert_eq!(acls[0].id(), "anyone");

    // The root works as a chroot.
    let chrooted = client(&format!("{a}{root}")).await;
    let children = chrooted.list_children("/x/y").await.expect("list /x/y");
    assert_eq!(children, vec!["z".to_string()]);
}

#[test]
fn unique_roots_are_unique_absolute_single_components() {
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        let r = unique_root("my/tag x");
        assert!(r.starts_with("/t-my_tag_x-"), "{r}");
        assert_eq!(r.matches('/').count(), 1, "{r}");
        assert!(seen.insert(r));
    }
}

#[test]
fn wait_until_returns_once_true_and_panics_with_what_on_timeout() {
    let mut n = 0;
    wait_until("n reaches 3", Duration::from_secs(5), || {
        n += 1;
        n >= 3
    });
    assert_eq!(n, 3);

    let started = Instant::now();
    let err = std::panic::catch_unwind(|| {
        wait_until("the moon turns blue", Duration::from_millis(100), || false)
    })
    .expect_err("wait_until must panic on timeout");
    assert!(started.elapsed() >= Duration::from_millis(100));
    let msg = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(msg.contains("the moon turns blue"), "panic message: {msg}");
}

#[test]
fn mountinfo_helpers() {
    assert!(is_mounted(Path::new("/")));
    assert!(is_mounted(Path::new("/proc")));
    let dir = TempDir::new("selftest");
    assert!(!is_mounted(dir.path()));
    let entries = mount_entries();
    assert!(entries.iter().any(|m| m.fstype == "proc"));
    let path = dir.path().to_path_buf();
    drop(dir);
    assert!(!path.exists(), "TempDir drop removes the dir");
}

#[test]
fn run_with_timeout_captures_and_kills() {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
    let out = run_with_timeout(cmd, Duration::from_secs(10)).expect("sh runs");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let started = Instant::now();
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let err = run_with_timeout(cmd, Duration::from_millis(200)).expect_err("sleep 30 times out");
    assert!(err.contains("did not finish"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // A background grandchild that keeps the pipes open does not block us.
    let started = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 20 & echo started"]);
    let out = run_with_timeout(cmd, Duration::from_secs(10)).expect("sh runs");
    assert!(out.status.success());
    assert_eq!(out.stdout, b"started\n");
    assert!(started.elapsed() < Duration::from_secs(8));
}

const CHILD_ENV: &str = "ZKFS_SELFTEST_WATCHDOG_CHILD";

/// In the normal run: the shared server answers `ruok`. Run by
/// `no_server_outlives_the_test_process` in a child process (CHILD_ENV set):
/// starts a private and a shared server, reports them, and exits without
/// dropping them.
#[test]
fn watchdog_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        let shared = shared_zk();
        let port: u16 = shared
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("shared server port");
        assert_eq!(four_letter_word(port, "ruok").as_deref(), Some("imok"));
        return;
    }
    let zk = ZkServer::start();
    let shared = shared_zk();
    println!(
        "REPORT {} {} {} {}",
        zk.port(),
        zk.pid().expect("pid"),
        zk.dir().display(),
        shared
    );
    std::process::exit(0);
}

#[test]
fn no_server_outlives_the_test_process() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args([
        "watchdog_child",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "1")
    .env_remove("ZKFS_TEST_ZK");
    let out = run_with_timeout(cmd, Duration::from_secs(120)).expect("the child test runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = stdout
        .lines()
        .find_map(|l| l.split_once("REPORT ").map(|(_, r)| r.trim()))
        .unwrap_or_else(|| {
            panic!(
                "no report from the child: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let fields: Vec<&str> = report.split(' ').collect();
    assert_eq!(fields.len(), 4, "report: {report}");
    let port: u16 = fields[0].parse().expect("port");
    let pid: u32 = fields[1].parse().expect("pid");
    let dir = PathBuf::from(fields[2]);
    let shared_port: u16 = fields[3]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("shared server port");

    wait_until(
        "the watchdog kills the leaked servers",
        Duration::from_secs(15),
        || !process_alive(pid) && !port_accepts(port) && !port_accepts(shared_port),
    );
    wait_until(
        "the watchdog removes the server dir",
        Duration::from_secs(5),
        || !dir.exists(),
    );
}

/// Servers listen on ports outside the kernel's ephemeral range, each
/// handed out once. Members are stopped and started again on the same port:
/// while one is down, a port from that range can be given to any socket bound
/// to port 0 or connecting out (another test's proxy, a client's connection
/// to another member), and its restart then fails with `Address already in
/// use`. A clean-clone CI run failed that way (an ensemble member's client
/// port, 39551, taken while it was down); so did an ensemble's first start
/// in an earlier round. The kernel never gives out a port outside the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_listen_outside_the_ephemeral_range_on_ports_of_their_own() {
    let (lo, hi) = ephemeral_port_range();
    let zk = ZkServer::start();
    let mut ensemble = Ensemble::start();
    let mut ports = ensemble.all_ports();
    ports.push(zk.port());
    ports.extend((0..100).map(|_| free_port()));
    for &port in &ports {
        assert!(
            !(lo..=hi).contains(&port),
            "port {port} lies in the ephemeral range {lo}-{hi}"
        );
    }
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        ports.len(),
        "a port was handed out twice: {ports:?}"
    );
    for member in 0..3 {
        assert!(port_accepts(ensemble.server(member).port()));
    }
}
