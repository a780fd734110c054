//! Write-latency benchmark (run by `scripts/bench-write`, not a test).
//!
//! Measures, in one run against the same ZooKeeper server:
//! - a direct `setData` on an open session (the baseline),
//! - `open(O_TRUNC)` + `write` + `close` of a small file through a zkfs mount
//!   (what `echo data > file` does, without the shell's fork/exec),
//! - a whole `sh -c 'echo data > file'` through the mount and on tmpfs,
//!   so the shell's own cost can be subtracted.
//!
//! It prints medians, p99s and ratios, plus the number of node versions each
//! mount write produced (must be exactly one).
//!
//! Usage: bench_write ZK_CONNECT ZKFS_BINARY [ITERATIONS]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use zookeeper_client::{Acls, CreateMode};

#[path = "support/bench.rs"]
mod bench;
use bench::{mount, percentile, times as time};

fn summarize(name: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "{name:<44} p50 {:>9.3} ms   p99 {:>9.3} ms   (n={})",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        samples.len()
    );
    (p50, p99)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_write ZK_CONNECT ZKFS_BINARY [ITERATIONS]");
        std::process::exit(2);
    }
    let (zk, zkfs) = (&args[1], &args[2]);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(300);
    let (rt, client) = bench::connect(zk, 1, Duration::from_secs(10));
    let root = format!("/bench-write-{}", std::process::id());
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    rt.block_on(client.create(&root, b"", &options))
        .expect("create root");
    rt.block_on(client.create(&format!("{root}/direct"), b"x", &options))
        .expect("create");
    rt.block_on(client.create(&format!("{root}/mounted"), b"x", &options))
        .expect("create");
    rt.block_on(client.create(&format!("{root}/shell"), b"x", &options))
        .expect("create");

    let work = std::env::temp_dir().join(format!("zkfs-bench-write-{}", std::process::id()));
    let mnt = work.join("mnt");
    let tmpfs = PathBuf::from("/dev/shm").join(format!("zkfs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    std::fs::create_dir_all(&tmpfs).expect("mkdir tmpfs dir");
    mount(zkfs, &format!("{zk}{root}"), &mnt, &[]);

    let payload = b"data 0123456789abcdef\n";
    // Warm up both paths.
    for _ in 0..20 {
        rt.block_on(client.set_data(&format!("{root}/direct"), payload, None))
            .expect("set");
        std::fs::write(mnt.join("mounted"), payload).expect("write");
    }
    let direct_path = format!("{root}/direct");
    let direct = time(n, || {
        rt.block_on(client.set_data(&direct_path, payload, None))
            .expect("set");
    });
    let version_before = rt
        .block_on(client.get_data(&format!("{root}/mounted")))
        .expect("get")
        .1
        .version;
    let file = mnt.join("mounted");
    let mounted = time(n, || std::fs::write(&file, payload).expect("write"));
    let version_after = rt
        .block_on(client.get_data(&format!("{root}/mounted")))
        .expect("get")
        .1
        .version;

    let shell = |target: &Path| {
        let script = format!("echo 'data 0123456789abcdef' > '{}'", target.display());
        time(n / 3, || {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(&script)
                .status()
                .expect("sh");
            assert!(ok.success());
        })
    };
    let shell_tmpfs = shell(&tmpfs.join("shell"));
    let shell_mount = shell(&mnt.join("shell"));

    println!(
        "zkfs write latency ({} iterations, {} bytes per write)",
        n,
        payload.len()
    );
    let (d50, d99) = summarize("direct setData (baseline, open session)", direct);
    let (m50, m99) = summarize("mount: open(O_TRUNC)+write+close", mounted);
    let (t50, _) = summarize("sh -c 'echo data > file' on tmpfs", shell_tmpfs);
    let (s50, _) = summarize("sh -c 'echo data > file' on the mount", shell_mount);
    let added = m50.saturating_sub(d50);
    println!(
        "mount vs direct: p50 {:.2}x, p99 {:.2}x; added p50 {:.3} ms (goal: < max(0.5 ms, 50% of direct = {:.3} ms))",
        m50.as_secs_f64() / d50.as_secs_f64(),
        m99.as_secs_f64() / d99.as_secs_f64(),
        added.as_secs_f64() * 1e3,
        (d50.as_secs_f64() * 0.5).max(0.0005) * 1e3
    );
    println!(
        "shell echo: mount minus tmpfs p50 {:.3} ms (the write itself; fork/exec cancels out)",
        s50.saturating_sub(t50).as_secs_f64() * 1e3
    );
    println!(
        "node versions per mount write: {} writes -> {} versions",
        n,
        version_after - version_before
    );

    let _ = Command::new(zkfs)
        .args(["unmount", &mnt.to_string_lossy()])
        .status();
    let _ = std::fs::remove_dir_all(&tmpfs);
    let _ = std::fs::remove_dir_all(&work);
}
