//! Fleet benchmark (issue 17, Deliver 3, simulated on one host): N read-only
//! mounts, each its own zkfs daemon and ZooKeeper session, against a
//! 3-server ensemble, each caching the same seeded tree. For (a) a leader
//! failover (twice: the first reconnect after mounting has no resync
//! baselines yet, the second has), (b) a follower's restart and (c) an
//! ensemble-wide outage longer than the session timeout it measures the
//! ZooKeeper requests the mounts send (from each daemon's own counter) and
//! the time until every mount has converged: connected, no resync pending,
//! every reconnected mount resynchronised, and a change made after the
//! event visible through every mount. The reference, measured in the same
//! run, is a mount's cold warm-up (reading every node once).
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
    converge: Duration,
    /// From the event until the ensemble took the marker write.
    serving: Duration,
}

/// Run one scenario: `event` disrupts the ensemble; then a new marker value
/// is written (retried until the ensemble takes it) and every mount must
/// converge. Requests are counted once every counter has settled.
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
    event();
    *marker += 1;
    let value = marker.to_string();
    // A fresh client each time: the event may have taken the old one's server.
    rt.block_on(async {
        loop {
            let attempt = async {
                let c = zk::Client::connector()
                    .with_session_timeout(Duration::from_secs(10))
                    .connect(servers)
                    .await?;
                c.set_data(&format!("{ROOT}/marker"), value.as_bytes(), None)
                    .await?;
                Ok::<_, zk::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(())) => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let serving = start.elapsed();
    let converged = |i: usize, m: &Path| {
        let now = counters(m);
        let b = &before[i];
        let reconnected = now.reconnects > b.reconnects || now.expiries > b.expiries;
        bench::xattr(m, "user.zkfs.state") == "connected"
            && bench::xattr(m, "user.zkfs.resync_pending") == "0"
            && (!reconnected || now.resyncs > b.resyncs)
            && std::fs::read_to_string(m.join("marker")).is_ok_and(|s| s == value)
    };
    wait_for(
        &format!("{name}: all mounts converged"),
        CONVERGE_DEADLINE,
        || {
            fleet
                .mounts
                .iter()
                .enumerate()
                .all(|(i, m)| converged(i, m))
        },
    );
    let converge = start.elapsed();
    // Counters settle: two reads 0.5 s apart agree (in-flight refreshes done).
    let mut last: Vec<u64> = fleet.mounts.iter().map(|m| counters(m).requests).collect();
    wait_for("request counters settle", CONVERGE_DEADLINE, || {
        std::thread::sleep(Duration::from_millis(500));
        let now: Vec<u64> = fleet.mounts.iter().map(|m| counters(m).requests).collect();
        let same = now == last;
        last = now;
        same
    });
    let after: Vec<Counters> = fleet.mounts.iter().map(|m| counters(m)).collect();
    let mut reconnected = 0;
    let (mut sum, mut max, mut expired) = (0, 0, 0);
    for (b, a) in before.iter().zip(&after) {
        if a.reconnects > b.reconnects || a.expiries > b.expiries {
            reconnected += 1;
            // Includes the marker's refresh (one getData) when the watch
            // event, not the resync, brought it.
            let d = a.requests - b.requests;
            sum += d;
            max = max.max(d);
        }
        expired += a.expiries - b.expiries;
    }
    let per_1000 = if reconnected == 0 {
        0.0
    } else {
        sum as f64 / reconnected as f64 / (cached as f64 / 1000.0)
    };
    Row {
        name: name.into(),
        reconnected,
        expired,
        sum,
        max,
        per_1000,
        converge,
        serving,
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
        "{:<38} {:>8} {:>8} {:>9} {:>8} {:>12} {:>9} {:>10} {:>10}",
        "scenario",
        "reconn",
        "expired",
        "req sum",
        "max/mnt",
        "req/1k nodes",
        "vs cold",
        "zk back",
        "converge"
    );
    println!(
        "{:<38} {:>8} {:>8} {:>9} {:>8} {:>12.2} {:>9} {:>10} {:>10}",
        "cold warm-up (reference)",
        n,
        "-",
        warm_sum,
        warm_max,
        warm_per_1000,
        "1.00",
        "-",
        format!("{:.2} s", warm_time.as_secs_f64())
    );
    for r in &rows {
        println!(
            "{:<38} {:>8} {:>8} {:>9} {:>8} {:>12.2} {:>9.3} {:>10} {:>10}",
            r.name,
            r.reconnected,
            r.expired,
            r.sum,
            r.max,
            r.per_1000,
            r.per_1000 / warm_per_1000,
            format!("{:.2} s", r.serving.as_secs_f64()),
            format!("{:.2} s", r.converge.as_secs_f64())
        );
    }
    println!(
        "(req/1k nodes: per reconnected mount, including the marker's refresh when its event brought \
         it; zk back: from the event until the ensemble took a write; converge: from the event until \
         all {n} mounts are connected, resynchronised and show that write)"
    );

    for m in &fleet.mounts {
        let _ = Command::new(&zkfs).arg("unmount").arg(m).status();
    }
}
