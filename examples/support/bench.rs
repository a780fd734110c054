//! Helpers shared by the benchmark examples (not a test, not an example of
//! its own): timing loops, percentiles, the one table format every
//! benchmark prints (each row against a baseline measured in the same run,
//! with the goal from issue 17 and whether this run met it), daemon RSS
//! and root xattrs.

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

/// Time one call of `f`.
pub fn timed<F: FnOnce()>(f: F) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Median of `runs` timed calls of `f`.
pub fn median_of<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    let mut v = times(runs, &mut f);
    v.sort();
    v[v.len() / 2]
}

/// Run `sh -c CMD` with stdout discarded; panics if it fails.
pub fn sh_quiet(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("sh");
    assert!(ok.success(), "{cmd}");
}

/// Run a command with stdout discarded; panics if it fails.
pub fn quiet(cmd: &mut Command) {
    let ok = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .expect("spawn");
    assert!(ok.success(), "{cmd:?}");
}

/// Median and 99th percentile of samples.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub p50: Duration,
    pub p99: Duration,
}

impl Stats {
    pub fn of(mut samples: Vec<Duration>) -> Stats {
        samples.sort();
        Stats {
            p50: percentile(&samples, 0.5),
            p99: percentile(&samples, 0.99),
        }
    }

    /// `p50 12.3 µs, p99 45.6 µs`.
    pub fn show(&self) -> String {
        format!("p50 {}, p99 {}", dur(self.p50), dur(self.p99))
    }

    /// p50 over the baseline's p50.
    pub fn ratio(&self, base: &Stats) -> f64 {
        ratio(self.p50, base.p50)
    }
}

/// `a / b`.
pub fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// A duration in the unit that suits it: `12.3 µs`, `4.56 ms`, `1.234 s`.
pub fn dur(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.3} s")
    }
}

/// A duration in seconds (for goals stated in seconds).
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The goal of a row and whether this run's measurement met it, computed
/// from the measurement.
pub struct Goal {
    text: String,
    met: Option<bool>,
}

impl Goal {
    /// No goal for this row (context, or a baseline).
    pub fn none() -> Goal {
        Goal {
            text: String::new(),
            met: None,
        }
    }

    /// `text` (e.g. `≤ 1.5× tmpfs`) is met when `measured <= limit`.
    pub fn at_most(text: &str, measured: f64, limit: f64) -> Goal {
        Goal {
            text: text.into(),
            met: Some(measured <= limit),
        }
    }

    /// `text` is met when every part is.
    pub fn all(text: &str, parts: &[bool]) -> Goal {
        Goal {
            text: text.into(),
            met: Some(parts.iter().all(|p| *p)),
        }
    }
}

/// Start a table: a title line and the header every benchmark shares.
pub fn table(title: &str) {
    println!();
    println!("### {title}");
    println!();
    println!("| Measurement | Value | Baseline (same run) | Ratio | Goal (issue 17) | Result |");
    println!("|---|---|---|---|---|---|");
}

/// One row. `ratio` is value over baseline, computed by the caller from
/// this run's samples; `baseline` names what it is relative to.
pub fn row(name: &str, value: &str, baseline: &str, ratio: Option<f64>, goal: Goal) {
    let ratio = ratio.map(|r| format!("{r:.2}×")).unwrap_or_default();
    let result = match goal.met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "",
    };
    println!(
        "| {name} | {value} | {baseline} | {ratio} | {} | {result} |",
        goal.text
    );
}

/// A line of context under a table.
pub fn note(text: &str) {
    println!("  {text}");
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

/// `zkfs unmount AT` (errors ignored: the benchmark is ending or remounting).
pub fn unmount(zkfs: &str, at: &Path) {
    let _ = Command::new(zkfs).arg("unmount").arg(at).status();
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
/// the heap (`[heap]` and anonymous mappings that are not stacks:
/// malloc's large blocks and arenas), thread and signal stacks (anonymous
/// mappings right above a guard page), the executable's own file pages, shared libraries,
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
    // Pages no other process maps (a second mount's daemon shares the
    // executable's and the libraries' pages with the first).
    let private: u64 = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("Private_Clean:") || l.starts_with("Private_Dirty:"))
        .filter_map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum();
    format!(
        "heap {heap} KiB, thread and signal stacks {stacks} KiB ({stack_count} mappings), executable {binary} KiB, libraries {libs} KiB, other {other} KiB (private to the process: {private} KiB); {} threads: {}",
        names.len(),
        threads.join(" ")
    )
}
