//! Listing benchmark for registrations (run by `scripts/bench` and
//! `scripts/bench-list`, not a test).
//!
//! Seeds N (default 10,000) ephemeral registrations named like
//! `10.0.x.y:8080` with ~50-byte JSON, then measures in one run, each row
//! against a baseline of the same run (tmpfs with the same files, or a
//! direct client) with the goal from issue 17: cold `ls -l` through a fresh
//! mount (first access: every child's stat), warm `ls -l`, warm `cat` of
//! every child through a writable and a read-only (`--read-only`) mount,
//! cold `cat` (fresh mount, no listing first), and the daemon's RSS after
//! the writable mount's rows, with a breakdown of where it is.
//!
//! Usage: bench_list ZK_CONNECT ZKFS_BINARY [N]

use std::time::Duration;

use zookeeper_client::{Acls, CreateMode};

#[path = "support/bench.rs"]
mod bench;
use bench::{
    Goal, dur, kernel_requests, kernel_requests_per, median_of, mount, note, peak_rss_kib, ratio,
    row, rss_kib, secs, sh_quiet, table, timed, unmount, xattr,
};

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
    let ls = |dir: &str| format!("ls -l '{dir}'");
    let cat = |dir: &str| format!("cd '{dir}' && cat -- *");
    let tmpfs_ls = median_of(5, || sh_quiet(&ls(&tmp)));

    let work = std::env::temp_dir().join(format!("zkfs-bench-list-{}", std::process::id()));
    let (mnt, ro_mnt) = (work.join("rw"), work.join("ro"));
    mount(zkfs, &format!("{zk}{root}"), &mnt, &[]);
    let pid = xattr(&mnt, "user.zkfs.pid");
    let rss_before = rss_kib(&pid);
    let mem_before = bench::memory_breakdown(&pid);
    let mdir = mnt.join("servers").to_string_lossy().into_owned();
    let k0 = kernel_requests(&mnt);
    let cold_ls = timed(|| sh_quiet(&ls(&mdir)));
    let k1 = kernel_requests(&mnt);
    let warm_ls = median_of(5, || sh_quiet(&ls(&mdir)));
    let k2 = kernel_requests(&mnt);
    // One unmeasured run first: it reads every child's data into the page cache.
    sh_quiet(&cat(&mdir));
    let k3 = kernel_requests(&mnt);
    // A read-only mount beside it, warmed the same way; the three `cat`s
    // then alternate, so drift on the machine lands on all alike.
    mount(zkfs, &format!("{zk}{root}"), &ro_mnt, &["--read-only"]);
    let ro_dir = ro_mnt.join("servers").to_string_lossy().into_owned();
    sh_quiet(&ls(&ro_dir));
    sh_quiet(&cat(&ro_dir));
    let (mut t_cat, mut rw_cat, mut ro_cat) = (Vec::new(), Vec::new(), Vec::new());
    let ro_k0 = kernel_requests(&ro_mnt);
    const WARM_RUNS: usize = 5;
    for _ in 0..WARM_RUNS {
        t_cat.push(timed(|| sh_quiet(&cat(&tmp))));
        rw_cat.push(timed(|| sh_quiet(&cat(&mdir))));
        ro_cat.push(timed(|| sh_quiet(&cat(&ro_dir))));
    }
    let k4 = kernel_requests(&mnt);
    let ro_k1 = kernel_requests(&ro_mnt);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (tmpfs_cat, warm_cat, ro_warm_cat) = (median(t_cat), median(rw_cat), median(ro_cat));
    let rss_after = rss_kib(&pid);
    // The daemon hands free heap pages back every 2 s: what it holds after
    // that is its steady footprint.
    std::thread::sleep(Duration::from_secs(3));
    let rss_settled = rss_kib(&pid);
    let mem_settled = bench::memory_breakdown(&pid);
    let rss_peak = peak_rss_kib(&pid);
    let cached_bytes: u64 = xattr(&mnt, "user.zkfs.cached_bytes").parse().unwrap_or(0);
    let requests = xattr(&mnt, "user.zkfs.requests");
    let ro_pid = xattr(&ro_mnt, "user.zkfs.pid");
    let ro_rss_settled = rss_kib(&ro_pid);
    let ro_mem_settled = bench::memory_breakdown(&ro_pid);
    unmount(zkfs, &ro_mnt);

    // Cold cat: a fresh mount, cat every child without listing first.
    unmount(zkfs, &mnt);
    mount(zkfs, &format!("{zk}{root}"), &mnt, &[]);
    let k5 = kernel_requests(&mnt);
    let cold_cat = timed(|| sh_quiet(&cat(&mdir)));
    let k6 = kernel_requests(&mnt);
    unmount(zkfs, &mnt);
    // The same two cold rows on fresh read-only mounts (the kernel opens
    // by itself there, and a listing fills the page cache).
    mount(zkfs, &format!("{zk}{root}"), &ro_mnt, &["--read-only"]);
    let ro_cold_ls = timed(|| sh_quiet(&ls(&ro_dir)));
    unmount(zkfs, &ro_mnt);
    mount(zkfs, &format!("{zk}{root}"), &ro_mnt, &["--read-only"]);
    let ro_k2 = kernel_requests(&ro_mnt);
    let ro_cold_cat = timed(|| sh_quiet(&cat(&ro_dir)));
    let ro_k3 = kernel_requests(&ro_mnt);
    unmount(zkfs, &ro_mnt);

    table(&format!(
        "Listings: {n} registrations (~{} bytes of JSON each; seeded in {})",
        payload(0).len(),
        dur(seed)
    ));
    let tmpfs_ls_base = format!("tmpfs `ls -l` {}", dur(tmpfs_ls));
    row(
        "direct client getChildren + getData of every child, pipelined (context)",
        &dur(direct),
        &tmpfs_ls_base,
        Some(ratio(direct, tmpfs_ls)),
        Goal::none(),
    );
    row(
        "direct client getChildren + multi-reads of 256 (context: the fastest a client reads them)",
        &dur(direct_multi),
        &tmpfs_ls_base,
        Some(ratio(direct_multi, tmpfs_ls)),
        Goal::none(),
    );
    row(
        &format!("`ls -l` of {n}, cold (first access: every child's stat)"),
        &secs(cold_ls),
        &tmpfs_ls_base,
        Some(ratio(cold_ls, tmpfs_ls)),
        Goal::at_most("≤ 0.15 s", cold_ls.as_secs_f64(), 0.15),
    );
    row(
        &format!("`ls -l` of {n}, cold, read-only mount"),
        &secs(ro_cold_ls),
        &tmpfs_ls_base,
        Some(ratio(ro_cold_ls, tmpfs_ls)),
        Goal::at_most("≤ 0.15 s", ro_cold_ls.as_secs_f64(), 0.15),
    );
    row(
        "`ls -l`, warm (median of 5)",
        &dur(warm_ls),
        &tmpfs_ls_base,
        Some(ratio(warm_ls, tmpfs_ls)),
        Goal::at_most("≤ 1× tmpfs", ratio(warm_ls, tmpfs_ls), 1.0),
    );
    let tmpfs_cat_base = format!("tmpfs `cat` {}", dur(tmpfs_cat));
    row(
        &format!("`cat` of {n} files, warm, writable mount (median of 5)"),
        &dur(warm_cat),
        &tmpfs_cat_base,
        Some(ratio(warm_cat, tmpfs_cat)),
        Goal::at_most("≤ 1.2× tmpfs", ratio(warm_cat, tmpfs_cat), 1.2),
    );
    row(
        &format!("`cat` of {n} files, warm, read-only mount (median of 5)"),
        &dur(ro_warm_cat),
        &tmpfs_cat_base,
        Some(ratio(ro_warm_cat, tmpfs_cat)),
        Goal::at_most("≤ 1.2× tmpfs", ratio(ro_warm_cat, tmpfs_cat), 1.2),
    );
    row(
        &format!("`cat` of {n} files, cold (fresh mount, no listing first)"),
        &secs(cold_cat),
        &tmpfs_cat_base,
        Some(ratio(cold_cat, tmpfs_cat)),
        Goal::at_most("≤ 0.5 s", cold_cat.as_secs_f64(), 0.5),
    );
    row(
        &format!("`cat` of {n} files, cold, read-only mount (fresh mount, no listing first)"),
        &secs(ro_cold_cat),
        &tmpfs_cat_base,
        Some(ratio(ro_cold_cat, tmpfs_cat)),
        Goal::at_most("≤ 0.5 s", ro_cold_cat.as_secs_f64(), 0.5),
    );
    let mib = rss_settled as f64 / 1024.0;
    row(
        "daemon RSS after the writable mount's rows above (3 s after: the trimmer runs every 2 s)",
        &format!("{mib:.1} MiB ({rss_settled} KiB)"),
        &format!("{rss_before} KiB after mounting"),
        Some(rss_settled as f64 / rss_before as f64),
        Goal::at_most("≤ 12 MiB", mib, 12.0),
    );
    let ro_mib = ro_rss_settled as f64 / 1024.0;
    row(
        "daemon RSS of the read-only mount after its rows (the same 3 s later)",
        &format!("{ro_mib:.1} MiB ({ro_rss_settled} KiB)"),
        &format!("{rss_before} KiB (the writable mount, after mounting)"),
        Some(ro_rss_settled as f64 / rss_before as f64),
        Goal::at_most("≤ 12 MiB", ro_mib, 12.0),
    );
    let per_child = n as f64;
    note("kernel requests per child (what reached the daemon):");
    note(&format!(
        "  ls -l cold: {}",
        kernel_requests_per(&k0, &k1, per_child)
    ));
    note(&format!(
        "  ls -l warm: {}",
        kernel_requests_per(&k1, &k2, per_child * 5.0)
    ));
    note(&format!(
        "  first cat:  {}",
        kernel_requests_per(&k2, &k3, per_child)
    ));
    note(&format!(
        "  cat warm, writable:  {}",
        kernel_requests_per(&k3, &k4, per_child * WARM_RUNS as f64)
    ));
    note(&format!(
        "  cat warm, read-only: {}",
        kernel_requests_per(&ro_k0, &ro_k1, per_child * WARM_RUNS as f64)
    ));
    note(&format!(
        "  cat cold:   {}",
        kernel_requests_per(&k5, &k6, per_child)
    ));
    note(&format!(
        "  cat cold, read-only: {}",
        kernel_requests_per(&ro_k2, &ro_k3, per_child)
    ));
    note(&format!(
        "daemon RSS: {rss_before} KiB after mount, {rss_after} KiB right after the runs, {rss_settled} KiB 3 s later (peak {rss_peak} KiB); {:.0} bytes per cached node ({cached_bytes} data bytes cached); {} ZooKeeper requests",
        (rss_settled.saturating_sub(rss_before) as f64 * 1024.0) / n as f64,
        requests.trim()
    ));
    note(&format!("memory after mount: {mem_before}"));
    note(&format!("memory 3 s after:   {mem_settled}"));
    note(&format!(
        "read-only mount, 3 s after its rows: {ro_mem_settled}"
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&work);
}
