//! Write benchmark (run by `scripts/bench` and `scripts/bench-write`, not a
//! test). Measures, in one run against the same ZooKeeper server, each row
//! against a baseline of the same run, with the goal from issue 17:
//! - a whole-process 1 KiB write, `sh -c 'echo … > file'`, through a mount
//!   vs on tmpfs (alternating), and the `setData` requests it cost, counted
//!   as node versions (exactly one per write expected);
//! - the same write in-process, `open(O_TRUNC)` + `write` + `close`, against
//!   a direct `setData` of the same bytes on an open session, and on tmpfs.
//!
//! Usage: bench_write ZK_CONNECT ZKFS_BINARY [ITERATIONS]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use zookeeper_client::{Acls, CreateMode};

#[path = "support/bench.rs"]
mod bench;
use bench::{
    Goal, Stats, kernel_requests, kernel_requests_per, mount, note, row, table, times, unmount,
    xattr,
};

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
    for name in ["direct", "mounted", "shell"] {
        rt.block_on(client.create(&format!("{root}/{name}"), b"x", &options))
            .expect("create");
    }

    let work = std::env::temp_dir().join(format!("zkfs-bench-write-{}", std::process::id()));
    let mnt = work.join("mnt");
    let tmpfs = PathBuf::from("/dev/shm").join(format!("zkfs-bench-write-{}", std::process::id()));
    std::fs::create_dir_all(&tmpfs).expect("mkdir tmpfs dir");
    mount(zkfs, &format!("{zk}{root}"), &mnt, &[]);

    // 1 KiB: 1023 characters and echo's newline.
    let line: String = (0..1023).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let payload = format!("{line}\n").into_bytes();
    let version = |name: &str| {
        rt.block_on(client.get_data(&format!("{root}/{name}")))
            .expect("get")
            .1
            .version
    };
    let requests = || -> u64 { xattr(&mnt, "user.zkfs.requests").parse().unwrap_or(0) };
    // Warm up both paths.
    let direct_path = format!("{root}/direct");
    for _ in 0..20 {
        rt.block_on(client.set_data(&direct_path, &payload, None))
            .expect("set");
        std::fs::write(mnt.join("mounted"), &payload).expect("write");
    }

    // Whole process: the shell's own echo writes the 1 KiB in one write(2).
    let echo = |target: &std::path::Path| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo "$0" > "$1""#)
            .arg(&line)
            .arg(target);
        move || {
            let ok = cmd.status().expect("sh");
            assert!(ok.success());
        }
    };
    let (mut on_tmpfs, mut on_mount) = (Vec::new(), Vec::new());
    let (mut tmpfs_echo, mut mount_echo) = (echo(&tmpfs.join("shell")), echo(&mnt.join("shell")));
    let (shell_v0, shell_r0, shell_k0) = (version("shell"), requests(), kernel_requests(&mnt));
    for _ in 0..n {
        on_tmpfs.extend(times(1, &mut tmpfs_echo));
        on_mount.extend(times(1, &mut mount_echo));
    }
    let (shell_v1, shell_r1, shell_k1) = (version("shell"), requests(), kernel_requests(&mnt));
    assert_eq!(
        std::fs::read(mnt.join("shell")).expect("read back"),
        payload
    );

    // In process.
    let direct = Stats::of(times(n, || {
        rt.block_on(client.set_data(&direct_path, &payload, None))
            .expect("set");
    }));
    let (file, tfile) = (mnt.join("mounted"), tmpfs.join("mounted"));
    let (mut mounted, mut local) = (Vec::new(), Vec::new());
    let (v0, k0) = (version("mounted"), kernel_requests(&mnt));
    for _ in 0..n {
        mounted.extend(times(1, || std::fs::write(&file, &payload).expect("write")));
        local.extend(times(1, || {
            std::fs::write(&tfile, &payload).expect("write")
        }));
    }
    let (v1, k1) = (version("mounted"), kernel_requests(&mnt));
    let (shell_tmpfs, shell_mount) = (Stats::of(on_tmpfs), Stats::of(on_mount));
    let (mounted, local) = (Stats::of(mounted), Stats::of(local));

    table(&format!(
        "Writes of 1 KiB ({n} each, alternating with their baseline; ratio of p50s)"
    ));
    let shell_ratio = shell_mount.ratio(&shell_tmpfs);
    row(
        "whole-process `sh -c 'echo … > file'` through the mount",
        &shell_mount.show(),
        &format!("tmpfs {}", shell_tmpfs.show()),
        Some(shell_ratio),
        Goal::at_most("≤ 2× tmpfs", shell_ratio, 2.0),
    );
    let per_write = (shell_v1 - shell_v0) as f64 / n as f64;
    row(
        "setData per write (node versions made by those writes)",
        &format!(
            "{per_write:.2} ({n} writes → {} versions)",
            shell_v1 - shell_v0
        ),
        "1 per write",
        None,
        Goal::at_most("exactly one setData", (per_write - 1.0).abs(), 0.0),
    );
    row(
        "in-process `open(O_TRUNC)`+`write`+`close` through the mount",
        &mounted.show(),
        &format!("direct setData {}", direct.show()),
        Some(mounted.ratio(&direct)),
        Goal::none(),
    );
    row(
        "the same on tmpfs (context)",
        &local.show(),
        &format!("direct setData {}", direct.show()),
        Some(local.ratio(&direct)),
        Goal::none(),
    );
    note(&format!(
        "in-process: {n} writes made {} versions; the shell writes cost {:.2} ZooKeeper requests each (user.zkfs.requests); the mount adds {} to a setData at the median",
        v1 - v0,
        (shell_r1 - shell_r0) as f64 / n as f64,
        bench::dur(mounted.p50.saturating_sub(direct.p50))
    ));

    note(
        "kernel requests per write (what reached the daemon; reading the counters is a getxattr):",
    );
    note(&format!(
        "  shell:      {}",
        kernel_requests_per(&shell_k0, &shell_k1, n as f64)
    ));
    note(&format!(
        "  in-process: {}",
        kernel_requests_per(&k0, &k1, n as f64)
    ));

    unmount(zkfs, &mnt);
    let _ = std::fs::remove_dir_all(&tmpfs);
    let _ = std::fs::remove_dir_all(&work);
}
