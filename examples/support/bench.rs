//! Helpers shared by the benchmark examples (not a test, not an example of
//! its own): timing loops, percentiles, daemon RSS and root xattrs.

#![allow(dead_code)] // each benchmark uses a subset

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use zookeeper_client::Client;

/// A runtime with `workers` threads and a client connected to `zk`.
pub fn connect(
    zk: &str,
    workers: usize,
    session_timeout: Duration,
) -> (tokio::runtime::Runtime, Client) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt
        .block_on(
            Client::connector()
                .with_session_timeout(session_timeout)
                .connect(zk),
        )
        .expect("connect");
    (rt, client)
}

/// Run `f` `n` times and return each duration.
pub fn times<F: FnMut()>(n: usize, mut f: F) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Resident set size of a process, in KiB (0 if unknown).
pub fn rss_kib(pid: &str) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Peak resident set size of a process, in KiB (0 if unknown).
pub fn peak_rss_kib(pid: &str) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

fn proc_status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// An extended attribute read with getfattr (e.g. the root's `user.zkfs.pid`).
pub fn xattr(path: &Path, name: &str) -> String {
    let out = Command::new("getfattr")
        .args(["--only-values", "-n", name])
        .arg(path)
        .output()
        .expect("getfattr");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The daemon's kernel request counts (`user.zkfs.kernel_requests`) by name.
pub fn kernel_requests(mountpoint: &Path) -> Vec<(String, u64)> {
    xattr(mountpoint, "user.zkfs.kernel_requests")
        .split_whitespace()
        .filter_map(|pair| {
            let (name, count) = pair.split_once('=')?;
            Some((name.to_string(), count.parse().ok()?))
        })
        .collect()
}

/// Requests the kernel sent between two snapshots, per `unit` (e.g. per file),
/// nonzero kinds only: `open 1.00, release 1.00`.
pub fn kernel_requests_per(before: &[(String, u64)], after: &[(String, u64)], unit: f64) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(name, count)| {
            let earlier = before
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c)
                .unwrap_or(0);
            let delta = count.saturating_sub(earlier);
            (delta > 0).then(|| format!("{name} {:.2}", delta as f64 / unit))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `zkfs mount [$ZKFS_BENCH_MOUNT_ARGS] EXTRA... SERVERS AT`, creating `AT`;
/// panics if the mount fails.
pub fn mount(zkfs: &str, servers: &str, at: &Path, extra: &[&str]) {
    std::fs::create_dir_all(at).expect("mountpoint");
    let ok = Command::new(zkfs)
        .arg("mount")
        .args(extra_mount_args())
        .args(extra)
        .arg(servers)
        .arg(at)
        .status()
        .expect("run zkfs mount");
    assert!(ok.success(), "zkfs mount failed");
}

/// Extra `zkfs mount` arguments from `ZKFS_BENCH_MOUNT_ARGS` (split at
/// whitespace), to compare settings: e.g. `--busy-poll 0`.
fn extra_mount_args() -> Vec<String> {
    std::env::var("ZKFS_BENCH_MOUNT_ARGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}
