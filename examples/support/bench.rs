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

/// Where a process's resident memory is, from `/proc/PID/smaps`, in KiB:
/// the heap (`[heap]` and anonymous mappings that are not thread stacks:
/// malloc's large blocks and arenas), thread stacks (anonymous mappings right
/// above a guard page), the executable's own file pages, shared libraries,
/// and the rest; plus the threads by name. One line, for the tables.
pub fn memory_breakdown(pid: &str) -> String {
    let pid = pid.trim();
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return "unknown".into();
    };
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (mut heap, mut stacks, mut binary, mut libs, mut other) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut stack_count, mut prev_guard_end) = (0usize, None::<u64>);
    let mut current: Option<(u64, bool, String, String)> = None; // start, guard, perms, name
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let perms = fields.next().unwrap_or("").to_string();
            let name = fields.nth(3).unwrap_or("").to_string();
            let is_guard = perms.starts_with("---") && name.is_empty();
            let after_guard = prev_guard_end == Some(start);
            prev_guard_end = is_guard.then_some(end);
            current = Some((start, after_guard, perms, name));
            continue;
        }
        if first != "Rss:" {
            continue;
        }
        let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let Some((_, after_guard, perms, name)) = &current else {
            continue;
        };
        if name == "[heap]" {
            heap += kib;
        } else if name.is_empty() && *after_guard && perms.starts_with("rw") {
            stacks += kib;
            stack_count += 1;
        } else if name.is_empty() {
            heap += kib;
        } else if *name == exe {
            binary += kib;
        } else if name.starts_with('/') {
            libs += kib;
        } else {
            other += kib; // [stack] of the main thread, [vdso], ...
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                .map(|c| c.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut threads: Vec<String> = Vec::new();
    let mut i = 0;
    while i < names.len() {
        let same = names[i..].iter().take_while(|n| **n == names[i]).count();
        threads.push(if same > 1 {
            format!("{}x{same}", names[i])
        } else {
            names[i].clone()
        });
        i += same;
    }
    format!(
        "heap {heap} KiB, thread stacks {stacks} KiB ({stack_count} stacks), executable {binary} KiB, libraries {libs} KiB, other {other} KiB; {} threads: {}",
        names.len(),
        threads.join(" ")
    )
}
