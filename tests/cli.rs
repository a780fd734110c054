//! Start conditions and bad input: each refused option or condition gives a
//! one-line error and a non-zero exit, within a bounded time.

mod common;
#[path = "support/zkops.rs"]
mod zkops;

use std::ffi::CString;
use std::time::{Duration, Instant};

use common::{Mount, TempDir, free_port, run_zkfs, shared_zk, unique_root};

/// Run zkfs; return (exit code, stderr).
fn zkfs(args: &[&str]) -> (Option<i32>, String) {
    let out = run_zkfs(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(code: Option<i32>, stderr: &str, expected_code: i32, needle: &str) {
    assert_eq!(code, Some(expected_code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in: {stderr}");
}

#[test]
fn unreachable_zookeeper_fails_after_a_bounded_wait() {
    let dir = TempDir::new("cli-unreach");
    let mp = dir.path().to_string_lossy().into_owned();
    let servers = format!("127.0.0.1:{}", free_port());
    let start = Instant::now();
    let (code, err) = zkfs(&["mount", "--connect-timeout", "2s", &servers, &mp]);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
    assert_one_line_error(code, &err, 1, "cannot connect to ZooKeeper");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Same in the foreground.
    let (code, err) = zkfs(&["mount", "-f", "--connect-timeout", "1s", &servers, &mp]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect to ZooKeeper"), "{err}");
}

/// A host name that does not resolve is named in the one line, not only
/// "no server answered".
#[test]
fn an_unresolvable_host_is_named() {
    let dir = TempDir::new("cli-dns");
    let mp = dir.path().to_string_lossy().into_owned();
    let (code, err) = zkfs(&[
        "mount",
        "--connect-timeout",
        "1s",
        "nosuchhost.invalid:2181",
        &mp,
    ]);
    assert_one_line_error(code, &err, 1, "nosuchhost.invalid:2181 does not resolve");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn missing_or_bad_mount_point() {
    let zk = shared_zk();
    let dir = TempDir::new("cli-mp");
    let missing = dir.path().join("nope").to_string_lossy().into_owned();
    let (code, err) = zkfs(&["mount", &zk, &missing]);
    assert_one_line_error(code, &err, 1, "does not exist");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("write");
    let (code, err) = zkfs(&["mount", &zk, &file.to_string_lossy()]);
    assert_one_line_error(code, &err, 1, "not a directory");
}

#[test]
fn busy_mount_point_is_refused() {
    let zk = shared_zk();
    let mount = Mount::start(&zk, &[]);
    let (code, err) = zkfs(&["mount", &zk, &mount.path().to_string_lossy()]);
    assert_one_line_error(code, &err, 1, "busy");
}

#[test]
fn missing_root_is_refused() {
    let zk = shared_zk();
    let dir = TempDir::new("cli-root");
    let mp = dir.path().to_string_lossy().into_owned();
    let root = unique_root("absent");
    let (code, err) = zkfs(&["mount", "--root", &root, &zk, &mp]);
    assert_one_line_error(code, &err, 1, "does not exist");
    let (code, err) = zkfs(&["mount", &format!("{zk}{root}"), &mp]);
    assert_one_line_error(code, &err, 1, "does not exist");
}

#[test]
fn invalid_options_are_refused_by_the_parser() {
    let zk = shared_zk();
    let dir = TempDir::new("cli-opts");
    let mp = dir.path().to_string_lossy().into_owned();
    for bad in [
        vec!["--session-timeout", "abc"],
        vec!["--op-timeout", "0"],
        vec!["--file-mode", "999"],
        vec!["--dir-mode", "01777"],
        vec!["--cache-size", "lots"],
        vec!["--root", "relative/path"],
        vec!["--data-name", "a/b"],
        vec!["--uid", "-1"],
        vec!["-o", "bogus=1"],
        vec!["-o", "session_timeout=forever"],
    ] {
        let mut args = vec!["mount"];
        args.extend(bad.iter());
        args.push(&zk);
        args.push(&mp);
        let (code, err) = zkfs(&args);
        assert_eq!(code, Some(2), "{bad:?} should be refused; stderr: {err}");
        assert!(err.contains("error"), "{bad:?}: {err}");
    }
    let (code, err) = zkfs(&["mount", "-f", "--log-level", "[[[", &zk, &mp]);
    assert_one_line_error(code, &err, 1, "invalid log filter");
    // A misspelt level would name a module that never logs: every line off.
    let (code, err) = zkfs(&["mount", "-f", "--log-level", "warning", &zk, &mp]);
    assert_one_line_error(code, &err, 1, "'warning' is neither a level");
    let (code, err) = zkfs(&["mount", "-f", "--log-level", "", &zk, &mp]);
    assert_one_line_error(code, &err, 1, "invalid log filter '': empty");
}

#[test]
fn dash_o_options_work_like_long_options() {
    let zk = shared_zk();
    let root = unique_root("dash-o");
    let other = zkops::Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/f"), b"abc");
    let mount = Mount::start(
        &zk,
        &[
            "-o",
            &format!("root={root},file_mode=0600,ro,nodev,session_timeout=4000"),
        ],
    );
    let meta = std::fs::metadata(mount.path().join("f")).expect("stat");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o400);
}

#[test]
fn status_and_unmount_on_something_else() {
    let dir = TempDir::new("cli-status");
    let p = dir.path().to_string_lossy().into_owned();
    let (code, err) = zkfs(&["status", &p]);
    assert_one_line_error(code, &err, 1, "not a zkfs mount");
    let (code, err) = zkfs(&["unmount", &p]);
    assert_one_line_error(code, &err, 1, "not mounted");
    // Another filesystem mounted there is left alone, --lazy or not (it
    // was unmounted: `zkfs unmount` only checked for a mount point).
    let c = CString::new(p.as_bytes()).expect("path");
    // SAFETY: valid C strings; a tmpfs on our own temporary directory.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
    for args in [&["unmount", &p][..], &["unmount", "--lazy", &p]] {
        let (code, err) = zkfs(args);
        assert_one_line_error(code, &err, 1, "is not a zkfs mount (tmpfs)");
        assert!(common::is_mounted(dir.path()), "{args:?} unmounted a tmpfs");
    }
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::umount(c.as_ptr()) }, 0);
}

#[test]
fn unmount_returns_after_the_daemon_closed_its_session() {
    let zk = shared_zk();
    let mut mount = Mount::start(&zk, &[]);
    let pid = mount.pid().expect("daemon pid");
    mount.unmount();
    assert!(!common::is_mounted(mount.path()));
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z")),
        "daemon {pid} still running after unmount"
    );
}
