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
    std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
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
