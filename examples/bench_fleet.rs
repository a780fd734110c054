//! Fleet benchmark (issue 17, Deliver 3, simulated on one host): N read-only
//! mounts, each its own zkfs daemon and ZooKeeper session, against a
//! 3-server ensemble, each caching the same seeded tree. For (a) a leader
//! failover (twice: the first reconnect after mounting has no resync
//! baselines yet, the second has), (b) a follower's restart and (c) an
//! ensemble-wide outage longer than the session timeout, with nothing in
//! the tree changed meanwhile, it measures the ZooKeeper requests the
//! mounts send to reconnect (from each daemon's own counter), when the
//! ensemble takes writes again, when the last mount is connected again, and
//! when every mount has converged (connected, no resync pending, every
//! reconnected mount resynchronised); then how long a change made after
//! that takes to show through every mount. The reference, measured in the
//! same run, is a mount's cold warm-up (reading every node once).
//!
//! Usage: bench_fleet SERVERS ZKFS ENSEMBLE_DIR MOUNT_DIR [MOUNTS [NODES]]
//! (run by scripts/bench-fleet, which starts the ensemble).

#[path = "support/bench.rs"]
mod bench;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use zookeeper_client as zk;

const ROOT: &str = "/fleet";
/// Written to find out when the ensemble takes writes again; outside
/// `ROOT`, so no mount hears of it.
const PROBE: &str = "/fleet-probe";
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);
const CONVERGE_DEADLINE: Duration = Duration::from_secs(120);

struct Fleet {
    mounts: Vec<PathBuf>,
    pids: Vec<String>,
}

#[derive(Clone, Default)]
struct Counters {
    requests: u64,
    resyncs: u64,
    reconnects: u64,
    expiries: u64,
}

fn counters(m: &Path) -> Counters {
    let n = |k: &str| {
        bench::xattr(m, &format!("user.zkfs.{k}"))
            .parse()
            .unwrap_or(0)
    };
    Counters {
        requests: n("requests"),
        resyncs: n("resyncs"),
        reconnects: n("reconnects"),
        expiries: n("session_expiries"),
    }
}

/// The `srvr` answer of the server on `addr`, if it serves.
fn srvr(addr: &str) -> Option<String> {
    let mut s =
        std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"srvr").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn mode(addr: &str) -> Option<String> {
    srvr(addr)?
        .lines()
        .find_map(|l| l.strip_prefix("Mode: ").map(str::to_string))
}

fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn zk_script(args: &[&str]) {
    let ok = Command::new("scripts/zk")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("scripts/zk");
    assert!(ok.success(), "scripts/zk {args:?} failed");
}

/// `scripts/zk ensemble stop-one|start-one DIR N` for server index `i` (0-based).
fn member(action: &str, ens_dir: &str, i: usize) {
    zk_script(&["ensemble", action, ens_dir, &(i + 1).to_string()]);
}

/// Seed `ROOT` with `dirs` directories of `per_dir` small files (multi
/// writes of 200 creates).
fn seed(rt: &tokio::runtime::Runtime, client: &zk::Client, dirs: usize, per_dir: usize) {
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    rt.block_on(async {
        client.create(ROOT, b"", &opts).await.expect("root");
        client.create(PROBE, b"0", &opts).await.expect("probe");
        client
            .create(&format!("{ROOT}/marker"), b"0", &opts)
            .await
            .expect("marker");
        let mut paths = Vec::new();
        for d in 0..dirs {
            paths.push((format!("{ROOT}/d{d:03}"), Vec::new()));
            for f in 0..per_dir {
                paths.push((
                    format!("{ROOT}/d{d:03}/f{f:03}"),
                    format!("{{\"dir\":{d},\"file\":{f},\"v\":1}}").into_bytes(),
                ));
            }
        }
        for chunk in paths.chunks(200) {
            let mut w = client.new_multi_writer();
            for (p, data) in chunk {
                w.add_create(p, data, &opts).expect("op");
            }
            w.commit().await.expect("seed multi");
        }
    });
}

/// Read every node through mount `m` (listings, file contents, `.data`
/// of none: directories have no data): the mount's cache holds the tree.
fn warm(m: &Path) -> usize {
    let mut nodes = 0;
    let mut stack = vec![m.to_path_buf()];
    while let Some(dir) = stack.pop() {
        nodes += 1;
        for entry in std::fs::read_dir(&dir).expect("ls") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                stack.push(entry.path());
            } else {
                std::fs::read(entry.path()).expect("cat");
                nodes += 1;
            }
        }
    }
    nodes
}

fn run_parallel<T: Send>(
    items: &[PathBuf],
    threads: usize,
    f: impl Fn(&Path) -> T + Sync,
) -> Vec<T> {
    let chunks: Vec<&[PathBuf]> = items.chunks(items.len().div_ceil(threads).max(1)).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|c| s.spawn(|| c.iter().map(|p| f(p)).collect::<Vec<T>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    })
}

struct Row {
    name: String,
    reconnected: usize,
    expired: u64,
    sum: u64,
    max: u64,
    per_1000: f64,
    /// From the event until the ensemble took a write (outside the mounts' tree).
    serving: Duration,
    /// From the event until every affected mount was connected again.
    connected: Duration,
    /// From the event until every mount was connected and resynchronised.
    converge: Duration,
    /// From a change made after that until every mount showed it.
    visible: Duration,
}

/// A write the ensemble must take, on a node outside the mounts' tree (so
/// no mount sees an event for it); retried until it succeeds, each time on
/// a fresh client (the event may have taken the last one's server).
/// Now, in ms since the epoch.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn write_until_taken(rt: &tokio::runtime::Runtime, servers: &str, path: &str, value: &str) {
    rt.block_on(async {
        loop {
            let attempt = async {
                // One round of the servers per attempt: the client's own
                // retries back off by up to seconds and would make the
                // ensemble look back later than it is.
                let c = zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .with_fail_eagerly()
                    .connect(servers)
                    .await?;
                c.set_data(path, value.as_bytes(), None).await?;
                Ok::<_, zk::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(())) => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
}

/// Every counter of every mount, once two reads 0.5 s apart agree (the
/// requests in flight have been answered).
fn settled(fleet: &Fleet) -> Vec<Counters> {
    let requests =
        |f: &Fleet| -> Vec<u64> { f.mounts.iter().map(|m| counters(m).requests).collect() };
    let mut last = requests(fleet);
    wait_for("request counters settle", CONVERGE_DEADLINE, || {
        std::thread::sleep(Duration::from_millis(500));
        let now = requests(fleet);
        let same = now == last;
        last = now;
        same
    });
    fleet.mounts.iter().map(|m| counters(m)).collect()
}

/// Run one scenario: `event` disrupts the ensemble while nothing in the
/// mounts' tree changes; the ensemble is written to (outside the tree)
/// until it takes a write; every mount must then be connected and
/// resynchronised. The requests counted are those of the reconnects alone
/// (nothing changed). Then a marker in the tree is changed and every mount
/// must show it (the re-added watches work).
fn scenario(
    name: &str,
    fleet: &Fleet,
    rt: &tokio::runtime::Runtime,
    servers: &str,
    marker: &mut u64,
    cached: usize,
    event: &dyn Fn(),
) -> Row {
    let before: Vec<Counters> = fleet.mounts.iter().map(|m| counters(m)).collect();
    let start = Instant::now();
    let start_ms = unix_ms();
    event();
    *marker += 1;
    write_until_taken(rt, servers, PROBE, &marker.to_string());
    let serving = start.elapsed();
    let reconnected = |i: usize, now: &Counters| {
        let b = &before[i];
        now.reconnects > b.reconnects || now.expiries > b.expiries
    };
    wait_for(
        &format!("{name}: all mounts connected and resynchronised"),
        CONVERGE_DEADLINE,
        || {
            let mut all = true;
            for (i, m) in fleet.mounts.iter().enumerate() {
                let now = counters(m);
                let connected = bench::xattr(m, "user.zkfs.state") == "connected";
                all &= connected
                    && bench::xattr(m, "user.zkfs.resync_pending") == "0"
                    && (!reconnected(i, &now) || now.resyncs > before[i].resyncs);
            }
            all
        },
    );
    // From the daemons' own clocks: polling 100 mounts one after another
    // on a busy host would add its own delay (seconds, measured).
    let since_start = |m: &Path, key: &str| {
        let at: u64 = bench::xattr(m, key).parse().unwrap_or(0);
        Duration::from_millis(at.saturating_sub(start_ms))
    };
    let after = settled(fleet);
    let affected: Vec<&PathBuf> = fleet
        .mounts
        .iter()
        .enumerate()
        .filter(|(i, _)| reconnected(*i, &after[*i]))
        .map(|(_, m)| m)
        .collect();
    let connected = affected
        .iter()
        .map(|m| since_start(m, "user.zkfs.connected_since"))
        .max()
        .unwrap_or_default();
    let converge = affected
        .iter()
        .map(|m| since_start(m, "user.zkfs.last_resync"))
        .max()
        .unwrap_or_default();
    let (mut count, mut sum, mut max, mut expired) = (0, 0, 0, 0);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if reconnected(i, a) {
            count += 1;
            let d = a.requests - b.requests;
            sum += d;
            max = max.max(d);
        }
        expired += a.expiries - b.expiries;
    }
    let per_1000 = if count == 0 {
        0.0
    } else {
        sum as f64 / count as f64 / (cached as f64 / 1000.0)
    };
    let value = marker.to_string();
    let changed = Instant::now();
    write_until_taken(rt, servers, &format!("{ROOT}/marker"), &value);
    wait_for(
        &format!("{name}: the marker seen by all"),
        CONVERGE_DEADLINE,
        || {
            fleet
                .mounts
                .iter()
                .all(|m| std::fs::read_to_string(m.join("marker")).is_ok_and(|s| s == value))
        },
    );
    let visible = changed.elapsed();
    Row {
        name: name.into(),
        reconnected: count,
        expired,
        sum,
        max,
        per_1000,
        serving,
        connected,
        converge,
        visible,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let servers = args.get(1).expect("SERVERS").clone();
    let zkfs = args.get(2).expect("ZKFS").clone();
    let ens_dir = args.get(3).expect("ENSEMBLE_DIR").clone();
    let base = PathBuf::from(args.get(4).expect("MOUNT_DIR"));
    let n: usize = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(100);
    let nodes: usize = args.get(6).and_then(|s| s.parse().ok()).unwrap_or(2500);
    let per_dir = 50;
    let dirs = nodes.div_ceil(per_dir);
    let addrs: Vec<String> = servers.split(',').map(str::to_string).collect();

    let (rt, client) = bench::connect(&servers, 2, Duration::from_secs(10));
    seed(&rt, &client, dirs, per_dir);
    drop(client);

    let mounts: Vec<PathBuf> = (0..n).map(|i| base.join(format!("m{i:03}"))).collect();
    let t = Instant::now();
    let st = format!("{}s", SESSION_TIMEOUT.as_secs());
    run_parallel(&mounts, 4, |m| {
        bench::mount(
            &zkfs,
            &format!("{servers}{ROOT}"),
            m,
            &[
                "--read-only",
                "--session-timeout",
                &st,
                "--op-timeout",
                "3s",
            ],
        )
    });
    let pids: Vec<String> = mounts
        .iter()
        .map(|m| bench::xattr(m, "user.zkfs.pid"))
        .collect();
    let fleet = Fleet { mounts, pids };
    println!("{n} mounts started in {:.1} s", t.elapsed().as_secs_f64());

    let before: Vec<u64> = fleet.mounts.iter().map(|m| counters(m).requests).collect();
    let t = Instant::now();
    let cached: Vec<usize> = run_parallel(&fleet.mounts, 4, warm);
    let warm_time = t.elapsed();
    let cached_nodes: Vec<usize> = fleet
        .mounts
        .iter()
        .map(|m| {
            bench::xattr(m, "user.zkfs.cached_nodes")
                .parse()
                .unwrap_or(0)
        })
        .collect();
    let warm_requests: Vec<u64> = fleet
        .mounts
        .iter()
        .zip(&before)
        .map(|(m, b)| counters(m).requests - b)
        .collect();
    let per_mount_nodes = cached_nodes.iter().sum::<usize>() / n;
    let rss: u64 = fleet.pids.iter().map(|p| bench::rss_kib(p)).sum();
    println!(
        "tree: {} nodes read per mount ({dirs} directories of {per_dir} files, ~40 B each); \
         cached per mount: {per_mount_nodes} nodes; warm-up of all mounts {:.1} s; \
         daemons' RSS {:.0} MiB in all ({:.1} MiB each)",
        cached[0],
        warm_time.as_secs_f64(),
        rss as f64 / 1024.0,
        rss as f64 / 1024.0 / n as f64
    );
    let warm_sum: u64 = warm_requests.iter().sum();
    let warm_max = warm_requests.iter().max().copied().unwrap_or(0);
    let warm_per_1000 = warm_sum as f64 / n as f64 / (per_mount_nodes as f64 / 1000.0);

    let leader = |addrs: &[String]| -> usize {
        addrs
            .iter()
            .position(|a| mode(a).as_deref() == Some("leader"))
            .expect("a leader")
    };
    let mut marker = 0;
    let mut rows = Vec::new();
    // Every scenario measures the same fleet against the same ensemble.
    let mut run = |name: &str, event: &dyn Fn()| {
        scenario(
            name,
            &fleet,
            &rt,
            &servers,
            &mut marker,
            per_mount_nodes,
            event,
        )
    };
    for name in [
        "(a) leader failover, 1st reconnect",
        "(a) leader failover, 2nd",
    ] {
        let l = leader(&addrs);
        rows.push(run(name, &|| member("stop-one", &ens_dir, l)));
        member("start-one", &ens_dir, l);
    }
    let l = leader(&addrs);
    let follower = (0..addrs.len()).find(|i| *i != l).expect("a follower");
    rows.push(run("(b) follower restart", &|| {
        member("stop-one", &ens_dir, follower);
        member("start-one", &ens_dir, follower);
    }));
    let outage = SESSION_TIMEOUT * 2;
    rows.push(run(
        &format!("(c) ensemble outage {} s", outage.as_secs()),
        &|| {
            zk_script(&["ensemble", "stop", &ens_dir]);
            wait_for("every mount disconnected", CONVERGE_DEADLINE, || {
                fleet
                    .mounts
                    .iter()
                    .all(|m| bench::xattr(m, "user.zkfs.state") != "connected")
            });
            // The outage itself: its length is the scenario, not a wait
            // for a condition.
            std::thread::sleep(outage);
            std::thread::scope(|s| {
                for i in 0..3 {
                    let dir = ens_dir.clone();
                    s.spawn(move || member("start-one", &dir, i));
                }
            });
        },
    ));

    println!();
    println!(
        "fleet: {n} mounts x {per_mount_nodes} cached nodes, session timeout {} s, 3 servers",
        SESSION_TIMEOUT.as_secs()
    );
    println!(
        "{:<38} {:>7} {:>8} {:>8} {:>8} {:>12} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "scenario",
        "reconn",
        "expired",
        "req sum",
        "max/mnt",
        "req/1k nodes",
        "vs cold",
        "zk back",
        "connected",
        "converge",
        "change"
    );
    println!(
        "{:<38} {:>7} {:>8} {:>8} {:>8} {:>12.2} {:>8} {:>8} {:>10} {:>9} {:>8}",
        "cold warm-up (reference)",
        n,
        "-",
        warm_sum,
        warm_max,
        warm_per_1000,
        "1.00",
        "-",
        "-",
        format!("{:.2} s", warm_time.as_secs_f64()),
        "-"
    );
    let secs = |d: Duration| format!("{:.2} s", d.as_secs_f64());
    for r in &rows {
        println!(
            "{:<38} {:>7} {:>8} {:>8} {:>8} {:>12.2} {:>8.3} {:>8} {:>10} {:>9} {:>8}",
            r.name,
            r.reconnected,
            r.expired,
            r.sum,
            r.max,
            r.per_1000,
            r.per_1000 / warm_per_1000,
            secs(r.serving),
            secs(r.connected),
            secs(r.converge),
            format!("{:.0} ms", r.visible.as_secs_f64() * 1000.0)
        );
    }
    println!(
        "(req: the requests the mounts sent (their own counters), per reconnected mount, nothing in the \
         tree having changed; the client adds one SetWatches of its own at each reconnect (counted on \
         the wire in tests/resync.rs); zk back: from the event until the ensemble took a write \
         (a new client every 20 ms, each going once round the servers); connected: until the last \
         affected mount was connected again; converge: until the last affected mount had \
         resynchronised (both from the daemons' own clocks: user.zkfs.connected_since, last_resync); \
         change: a marker changed after that, until all {n} showed it)"
    );

    for m in &fleet.mounts {
        let _ = Command::new(&zkfs).arg("unmount").arg(m).status();
    }
}
