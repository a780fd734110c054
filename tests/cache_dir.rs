//! `--cache-dir` (issue 16, item 2): a mount persists its cache and a later
//! mount that cannot reach ZooKeeper starts from that snapshot, serves it as
//! last known data, refuses writes, and catches up once ZooKeeper answers.
//! Each test runs its own server, since it stops it.

mod common;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Mount, TempDir, ZkServer, run_zkfs, wait_until};
use zkops::{Other, xattr_string};

const DEADLINE: Duration = Duration::from_secs(30);

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

fn ls(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("ls {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

#[test]
fn cold_start_serves_the_snapshot_then_catches_up() {
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let other = Other::connect(&zk);
    other.ensure("/app/servers");
    other.create("/app/config", b"v1");
    other.create("/app/servers/a", b"10.0.0.1");
    other.create("/app/servers/b", b"10.0.0.2");
    other.ensure("/app/empty");
    let base = TempDir::new("cachedir");
    let dir = base.path().join("zkfs-cache");
    let dir_arg = dir.to_string_lossy().into_owned();

    let mut first = Mount::start(&zk, &["--cache-dir", &dir_arg]);
    let m = first.path();
    assert_eq!(fs::read_to_string(m.join("app/config")).expect("cat"), "v1");
    assert_eq!(ls(&m.join("app/servers")), ["a", "b"]);
    assert_eq!(
        fs::read_to_string(m.join("app/servers/a")).expect("cat a"),
        "10.0.0.1"
    );
    // An empty directory: listed without a list read (its stat says so).
    assert!(ls(&m.join("app/empty")).is_empty());
    first.unmount();

    // The snapshot: a 0700 directory (zkfs created it) with one 0600 file.
    assert_eq!(mode(&dir), 0o700, "cache dir mode");
    let files = files_in(&dir);
    assert_eq!(files.len(), 1, "one snapshot file, no temp file: {files:?}");
    assert_eq!(mode(&files[0]), 0o600, "snapshot file mode");

    // Changes after the snapshot: the snapshot is older than the server.
    other.set("/app/config", b"v2");
    other.create("/app/servers/c", b"10.0.0.3");
    drop(other);
    server.stop();

    let before_start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let mount = Mount::start(
        &zk,
        &[
            "--cache-dir",
            &dir_arg,
            "--connect-timeout",
            "1s",
            "--op-timeout",
            "1s",
        ],
    );
    let m = mount.path();
    // Last known data, with no ZooKeeper at all.
    assert_eq!(
        fs::read_to_string(m.join("app/config")).expect("cat from snapshot"),
        "v1"
    );
    assert_eq!(ls(&m.join("app/servers")), ["a", "b"]);
    assert_eq!(
        fs::read_to_string(m.join("app/servers/b")).expect("cat b from snapshot"),
        "10.0.0.2"
    );
    // The empty directory and the mount root (never listed nor stat'ed by
    // the first mount) are served from the snapshot too; both were EIO.
    assert!(ls(&m.join("app/empty")).is_empty(), "{}", mount.log());
    assert!(
        fs::metadata(m).is_ok_and(|meta| meta.is_dir()),
        "stat of the root: {}",
        mount.log()
    );
    assert_eq!(xattr_string(m, "user.zkfs.state"), "disconnected");
    assert_eq!(xattr_string(m, "user.zkfs.source"), "snapshot");
    let taken: u128 = xattr_string(m, "user.zkfs.snapshot_time")
        .parse()
        .expect("numeric snapshot time");
    assert!(
        taken > 0 && taken <= before_start,
        "snapshot time {taken} is before this mount started ({before_start})"
    );
    let status = run_zkfs(&["status", &m.to_string_lossy()]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(1), "not connected: {text}");
    assert!(text.contains("from cache"), "{text}");
    // Writes fail as while disconnected: the open, after --op-timeout.
    let err = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.join("app/config"))
        .expect_err("open for writing while serving the snapshot");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");

    server.start_again();
    wait_until("the mount caught up with the server", DEADLINE, || {
        xattr_string(m, "user.zkfs.state") == "connected"
            && fs::read_to_string(m.join("app/config")).is_ok_and(|s| s == "v2")
            && ls(&m.join("app/servers")) == ["a", "b", "c"]
    });
    assert_eq!(xattr_string(m, "user.zkfs.source"), "zookeeper");
    // The watch works: later changes arrive.
    let other = Other::connect(&zk);
    other.set("/app/config", b"v3");
    wait_until("change after catch-up", DEADLINE, || {
        fs::read_to_string(m.join("app/config")).is_ok_and(|s| s == "v3")
    });
}

#[test]
fn without_a_usable_snapshot_a_mount_with_the_server_down_fails() {
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let other = Other::connect(&zk);
    other.ensure("/sub");
    other.create("/sub/cfg", b"x");
    drop(other);
    let base = TempDir::new("cachedir");
    let dir = base.path().join("c");
    let dir_arg = dir.to_string_lossy().into_owned();

    // Two mounts (root / and root /sub) of one ensemble: two snapshots.
    let mut whole = Mount::start(&zk, &["--cache-dir", &dir_arg]);
    assert_eq!(
        fs::read_to_string(whole.path().join("sub/cfg")).expect("cat"),
        "x"
    );
    whole.unmount();
    let whole_file = files_in(&dir).pop().expect("snapshot of root /");
    let mut sub = Mount::start(&zk, &["--cache-dir", &dir_arg, "--root", "/sub"]);
    assert_eq!(
        fs::read_to_string(sub.path().join("cfg")).expect("cat"),
        "x"
    );
    sub.unmount();
    let files = files_in(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let sub_file = files
        .into_iter()
        .find(|f| *f != whole_file)
        .expect("snapshot of root /sub");
    // The /sub snapshot replaced by the other mount's; root /'s corrupted.
    fs::copy(&whole_file, &sub_file).expect("copy snapshot");
    let mut bytes = fs::read(&whole_file).expect("read snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&whole_file, &bytes).expect("corrupt snapshot");
    server.stop();

    let down = ["--connect-timeout", "1s"];
    let err = Mount::try_start(&zk, &down)
        .err()
        .expect("no --cache-dir: the mount fails");
    assert!(err.contains("cannot connect to ZooKeeper"), "{err}");

    let err = Mount::try_start(&zk, &["--cache-dir", &dir_arg, "--connect-timeout", "1s"])
        .err()
        .expect("corrupt snapshot: the mount fails");
    assert!(err.contains("cannot connect to ZooKeeper"), "{err}");
    assert_eq!(
        err.matches("ignoring the snapshot").count(),
        1,
        "one warning: {err}"
    );
    assert!(err.contains("checksum"), "{err}");

    let err = Mount::try_start(
        &zk,
        &[
            "--cache-dir",
            &dir_arg,
            "--root",
            "/sub",
            "--connect-timeout",
            "1s",
        ],
    )
    .err()
    .expect("another mount's snapshot: the mount fails");
    assert!(err.contains("cannot connect to ZooKeeper"), "{err}");
    assert!(err.contains("belongs to another mount"), "{err}");
}

#[test]
fn the_snapshot_is_written_while_mounted_and_survives_kill_9() {
    let mut server = ZkServer::start();
    let zk = server.connect_string();
    let other = Other::connect(&zk);
    other.create("/cfg", b"one");
    let base = TempDir::new("cachedir");
    let dir = base.path().join("c");
    let dir_arg = dir.to_string_lossy().into_owned();

    let mut mount = Mount::start(&zk, &["--cache-dir", &dir_arg]);
    let m = mount.path().to_path_buf();
    assert_eq!(fs::read_to_string(m.join("cfg")).expect("cat"), "one");
    // A change the mount learns of from its watch, then written periodically.
    other.set("/cfg", b"two");
    wait_until("the mount sees the change", DEADLINE, || {
        fs::read_to_string(m.join("cfg")).is_ok_and(|s| s == "two")
    });
    // The renamed file, not a temp file still being written.
    wait_until("a snapshot with the change is on disk", DEADLINE, || {
        dir.is_dir()
            && files_in(&dir).iter().any(|f| {
                f.extension().is_some_and(|e| e == "snapshot")
                    && fs::read(f).is_ok_and(|b| b.windows(3).any(|w| w == b"two"))
            })
    });
    // No clean unmount: the periodic write is all there is.
    mount.kill9();
    drop(mount);
    drop(other);
    server.stop();

    let mount = Mount::start(&zk, &["--cache-dir", &dir_arg, "--connect-timeout", "1s"]);
    assert_eq!(
        fs::read_to_string(mount.path().join("cfg")).expect("cat from snapshot"),
        "two"
    );
    assert_eq!(xattr_string(mount.path(), "user.zkfs.source"), "snapshot");
    let status = run_zkfs(&["status", "--json", &mount.path().to_string_lossy()]);
    let json = String::from_utf8_lossy(&status.stdout);
    assert!(json.contains("\"source\":\"snapshot\""), "{json}");
    // A mount that never reached ZooKeeper leaves the snapshot as it was
    // (not even rewritten: a write replaces the file, a new inode).
    let snapshot_files = || -> Vec<(PathBuf, u64, Vec<u8>)> {
        use std::os::unix::fs::MetadataExt;
        files_in(&dir)
            .into_iter()
            .map(|f| {
                let ino = fs::metadata(&f).expect("stat snapshot").ino();
                let bytes = fs::read(&f).expect("read snapshot");
                (f, ino, bytes)
            })
            .collect()
    };
    let before = snapshot_files();
    let mut mount = mount;
    mount.unmount();
    let after = snapshot_files();
    assert!(
        before == after,
        "snapshot unchanged by a mount that only served it"
    );
}
