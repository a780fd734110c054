//! Listing benchmark for registrations (run by `scripts/bench-list`, not a test).
//!
//! Seeds N (default 10,000) ephemeral registrations named like
//! `10.0.x.y:8080` with ~60-byte JSON, then measures in one run: cold
//! `ls -l` through a fresh zkfs mount (first access: every child's stat),
//! warm `ls -l`, `ls -l` of the same files on tmpfs, a direct client
//! `getChildren` + `getData` of every child (pipelined), and `cat` of every
//! child (warm, mount vs tmpfs), plus the daemon's RSS before and after.
//!
//! Usage: bench_list ZK_CONNECT ZKFS_BINARY [N]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zookeeper_client::{Acls, CreateMode};

#[path = "support/bench.rs"]
mod bench;
use bench::{kernel_requests, kernel_requests_per, mount, peak_rss_kib, rss_kib, xattr};

fn timed<F: FnOnce()>(f: F) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn run_quiet(cmd: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .status()
        .expect("sh");
    assert!(ok.success(), "{cmd}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: bench_list ZK_CONNECT ZKFS_BINARY [N]");
        std::process::exit(2);
    }
    let (zk, zkfs) = (&args[1], &args[2]);
    let n: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let (rt, client) = bench::connect(zk, 2, Duration::from_secs(30));
    let root = format!("/bench-list-{}", std::process::id());
    let dir = format!("{root}/servers");
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    rt.block_on(client.create(&root, b"", &persistent))
        .expect("root");
    rt.block_on(client.create(&dir, b"", &persistent))
        .expect("dir");
    let names: Vec<String> = (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250))
        .collect();
    let payload = |i: usize| {
        format!(
            "{{\"pid\": {}, \"started\": 1795240000, \"zone\": \"a\"}}",
            10_000 + i
        )
    };
    let seed = timed(|| {
        let paths: Vec<String> = names.iter().map(|name| format!("{dir}/{name}")).collect();
        let datas: Vec<String> = (0..n).map(payload).collect();
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let futures: Vec<_> = chunk
                .iter()
                .map(|&i| client.create(&paths[i], datas[i].as_bytes(), &ephemeral))
                .collect();
            for f in futures {
                rt.block_on(f).expect("create");
            }
        }
    });

    // Direct client: list + read every child, pipelined.
    let direct = timed(|| {
        let (children, _) = rt.block_on(client.get_children(&dir)).expect("list");
        let paths: Vec<String> = children.iter().map(|c| format!("{dir}/{c}")).collect();
        let futures: Vec<_> = paths.iter().map(|p| client.get_data(p)).collect();
        for f in futures {
            rt.block_on(f).expect("get");
        }
    });

    // Direct client: list + read every child in multi-reads of 256 (the
    // fastest a client can do; what zkfs does on a cold listing).
    let direct_multi = timed(|| {
        let (children, _) = rt.block_on(client.get_children(&dir)).expect("list");
        let paths: Vec<String> = children.iter().map(|c| format!("{dir}/{c}")).collect();
        let futures: Vec<_> = paths
            .chunks(256)
            .map(|chunk| {
                let mut reader = client.new_multi_reader();
                for p in chunk {
                    reader.add_get_data(p).expect("path");
                }
                reader.commit()
            })
            .collect();
        for f in futures {
            rt.block_on(f).expect("multi-read");
        }
    });

    // tmpfs baseline with the same files.
    let tmp = format!("/dev/shm/zkfs-bench-list-{}", std::process::id());
    std::fs::create_dir_all(&tmp).expect("tmpfs dir");
    for (i, name) in names.iter().enumerate() {
        std::fs::write(format!("{tmp}/{name}"), payload(i)).expect("tmpfs file");
    }
    let tmpfs_ls = median(
        (0..5)
            .map(|_| timed(|| run_quiet(&format!("ls -l '{tmp}'"))))
            .collect(),
    );
    let tmpfs_cat = median(
        (0..5)
            .map(|_| timed(|| run_quiet(&format!("cd '{tmp}' && cat -- *"))))
            .collect(),
    );

    let work = std::env::temp_dir().join(format!("zkfs-bench-list-{}", std::process::id()));
    let mnt = work.join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    mount(zkfs, &format!("{zk}{root}"), &mnt, &[]);
    let pid = xattr(&mnt, "user.zkfs.pid");
    let rss_before = rss_kib(&pid);
    let mem_before = bench::memory_breakdown(&pid);
    let mdir = mnt.join("servers");
    let k0 = kernel_requests(&mnt);
    let cold_ls = timed(|| run_quiet(&format!("ls -l '{}'", mdir.display())));
    let k1 = kernel_requests(&mnt);
    let warm_ls = median(
        (0..5)
            .map(|_| timed(|| run_quiet(&format!("ls -l '{}'", mdir.display()))))
            .collect(),
    );
    let k2 = kernel_requests(&mnt);
    // One unmeasured run first: it reads every child's data into the page cache.
    run_quiet(&format!("cd '{}' && cat -- *", mdir.display()));
    let k3 = kernel_requests(&mnt);
    let warm_cat = median(
        (0..5)
            .map(|_| timed(|| run_quiet(&format!("cd '{}' && cat -- *", mdir.display()))))
            .collect(),
    );
    let k4 = kernel_requests(&mnt);
    let rss_after = rss_kib(&pid);
    // The daemon hands free heap pages back every 2 s; what stays is its
    // steady footprint.
    std::thread::sleep(Duration::from_secs(3));
    let rss_settled = rss_kib(&pid);
    let mem_settled = bench::memory_breakdown(&pid);
    let rss_peak = peak_rss_kib(&pid);
    let cached_bytes: u64 = xattr(&mnt, "user.zkfs.cached_bytes").parse().unwrap_or(0);
    let requests = xattr(&mnt, "user.zkfs.requests");

    // Cold cat: a fresh mount, cat every child without listing first.
    let _ = Command::new(zkfs)
        .args(["unmount", &mnt.to_string_lossy()])
        .status();
    mount(zkfs, &format!("{zk}{root}"), &mnt, &[]);
    let k5 = kernel_requests(&mnt);
    let cold_cat = timed(|| run_quiet(&format!("cd '{}' && cat -- *", mdir.display())));
    let k6 = kernel_requests(&mnt);
    let _ = Command::new(zkfs)
        .args(["unmount", &mnt.to_string_lossy()])
        .status();

    println!(
        "zkfs listing benchmark: {n} registrations (~{} bytes of JSON each)",
        payload(0).len()
    );
    println!(
        "seeding {n} ephemeral nodes (pipelined)          {:>9.1} ms",
        ms(seed)
    );
    println!(
        "direct client getChildren + getData of all (pipelined) {:>9.1} ms",
        ms(direct)
    );
    println!(
        "direct client getChildren + multi-reads of 256    {:>9.1} ms",
        ms(direct_multi)
    );
    println!(
        "tmpfs  ls -l                                     {:>9.1} ms",
        ms(tmpfs_ls)
    );
    println!(
        "zkfs   ls -l cold (first access)                 {:>9.1} ms  ({:.2}x tmpfs, {:.2}x direct pipelined, {:.2}x direct multi-read)",
        ms(cold_ls),
        cold_ls.as_secs_f64() / tmpfs_ls.as_secs_f64(),
        cold_ls.as_secs_f64() / direct.as_secs_f64(),
        cold_ls.as_secs_f64() / direct_multi.as_secs_f64()
    );
    println!(
        "zkfs   ls -l warm (median of 5)                  {:>9.1} ms  ({:.2}x tmpfs)",
        ms(warm_ls),
        warm_ls.as_secs_f64() / tmpfs_ls.as_secs_f64()
    );
    println!(
        "tmpfs  cat of all                                {:>9.1} ms",
        ms(tmpfs_cat)
    );
    println!(
        "zkfs   cat of all warm (median of 5)             {:>9.1} ms  ({:.2}x tmpfs)",
        ms(warm_cat),
        warm_cat.as_secs_f64() / tmpfs_cat.as_secs_f64()
    );
    println!(
        "zkfs   cat of all cold (fresh mount)             {:>9.1} ms  ({:.2}x tmpfs)",
        ms(cold_cat),
        cold_cat.as_secs_f64() / tmpfs_cat.as_secs_f64()
    );
    let per_child = n as f64;
    println!("kernel requests per child (what reached the daemon):");
    println!("  ls -l cold: {}", kernel_requests_per(&k0, &k1, per_child));
    println!(
        "  ls -l warm: {}",
        kernel_requests_per(&k1, &k2, per_child * 5.0)
    );
    println!("  first cat:  {}", kernel_requests_per(&k2, &k3, per_child));
    println!(
        "  cat warm:   {}",
        kernel_requests_per(&k3, &k4, per_child * 5.0)
    );
    println!("  cat cold:   {}", kernel_requests_per(&k5, &k6, per_child));
    println!(
        "daemon RSS: {} KiB after mount, {} KiB right after the runs, {} KiB 3 s later (peak {} KiB); {:.0} bytes per cached node ({} data bytes cached); {} ZooKeeper requests",
        rss_before,
        rss_after,
        rss_settled,
        rss_peak,
        (rss_settled.saturating_sub(rss_before) as f64 * 1024.0) / n as f64,
        cached_bytes,
        requests.trim()
    );
    println!("  after mount: {mem_before}");
    println!("  settled:     {mem_settled}");
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&work);
}
