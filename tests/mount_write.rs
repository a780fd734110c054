//! Writes through a real kernel FUSE mount of a real ZooKeeper server
//! (contract §7): one versioned setData per close, conflicts, create/mkdir/
//! rm/rename with real tools, every refusal's errno, digest ACLs.

mod common;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::io::Write;
use std::os::fd::IntoRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Mount, TempDir, shared_zk, unique_root};
use zkops::{Other, xattr_string};
use zookeeper_client::{Acls, CreateMode};

fn mounted(tag: &str, extra: &[&str]) -> (Other, String, Mount) {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&root);
    let mount = Mount::start(&format!("{zk}{root}"), extra);
    (other, root, mount)
}

fn get(other: &Other, path: &str) -> (Vec<u8>, i32) {
    other.get(path)
}

fn exists(other: &Other, path: &str) -> bool {
    let fut = other.client.check_stat(path);
    other
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
        .expect("check_stat in time")
        .expect("check_stat")
        .is_some()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn errno_of<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn cp_of_900_kib_is_one_version_and_readers_never_see_a_mix() {
    let (other, root, mount) = mounted("cp900", &[]);
    let node = format!("{root}/blob");
    let old = vec![b'o'; 900 * 1024];
    other.create(&node, &old);
    let dir = TempDir::new("cp900-src");
    let src = dir.path().join("new");
    let new: Vec<u8> = (0..900 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    fs::write(&src, &new).expect("write source");

    // A separate client polls the node during the copy.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, node, zk) = (stop.clone(), node.clone(), shared_zk());
        let (old, new) = (old.clone(), new.clone());
        std::thread::spawn(move || {
            let reader = Other::connect(&zk);
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) {
                let (data, _) = get(&reader, &node);
                assert!(
                    data == old || data == new,
                    "a reader saw a mix of old and new content"
                );
                reads += 1;
            }
            reads
        })
    };
    run(Command::new("cp").arg(&src).arg(mount.path().join("blob")));
    stop.store(true, Ordering::SeqCst);
    let reads = poller.join().expect("poller");
    assert!(reads > 0);
    let (data, version) = get(&other, &node);
    assert!(data == new, "node holds the new content");
    assert_eq!(version, 1, "exactly one setData for the whole copy");
    assert_eq!(
        xattr_string(&mount.path().join("blob"), "user.zk.version"),
        "1"
    );
    assert_eq!(fs::read(mount.path().join("blob")).expect("read back"), new);
}

/// A failed send is told to every later `fsync` of the handle, not only to
/// the close that met it: here that close is a child process's (it
/// inherited the descriptor and closed it at exec, which nobody reads, as
/// with any `fork`+`exec` while a file is open), and the owner's `fsync`
/// must still fail instead of saying the content is in ZooKeeper.
#[test]
fn an_fsync_after_a_failure_another_descriptor_met_still_fails() {
    let (other, root, mount) = mounted("fsync-after", &[]);
    other.create(&format!("{root}/cfg"), b"original");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mount.path().join("cfg"))
        .expect("open");
    f.write_all(b"ours").expect("buffered write");
    other.set(&format!("{root}/cfg"), b"theirs");
    // The child's copy of the descriptor is closed at its exec: the kernel
    // sends a flush, whose send fails (the version moved).
    let status = std::process::Command::new("true")
        .status()
        .expect("run true");
    assert!(status.success());
    assert_eq!(errno_of(f.sync_all()), Some(libc::ESTALE));
    assert_eq!(errno_of(f.sync_all()), Some(libc::ESTALE), "and again");
    drop(f);
    assert_eq!(get(&other, &format!("{root}/cfg")).0, b"theirs");
}

/// `cmd > existing` (the shell opens with `O_TRUNC`, moves the descriptor
/// to 1 and closes the original before `cmd` runs): that close leaves the
/// truncation to be sent with what `cmd` writes, and `cmd`'s own `fstat`
/// of its output must not wait for the release of the descriptor it still
/// holds. It waited the whole second such a wait is bounded by, once per
/// rewrite: five rewrites took 5 s (about 10 ms without the wait).
#[test]
fn rewriting_a_file_with_a_redirection_does_not_wait_for_its_own_release() {
    let (other, root, mount) = mounted("redirect-wait", &[]);
    other.create(&format!("{root}/out"), b"old content");
    let m = mount.path();
    let src = TempDir::new("redirect-src");
    let input = src.path().join("in");
    fs::write(&input, b"new content\n").expect("write the input");
    let script = format!(
        "for i in 1 2 3 4 5; do cat '{}' > '{}' || exit 1; done",
        input.display(),
        m.join("out").display()
    );
    let start = std::time::Instant::now();
    let status = Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("run sh");
    let took = start.elapsed();
    assert!(status.success());
    assert_eq!(get(&other, &format!("{root}/out")).0, b"new content\n");
    // Each rewrite is a few milliseconds; the wait was 1 s each.
    assert!(
        took < Duration::from_millis(2500),
        "five rewrites took {took:?}: cat's fstat of its output waited for a release"
    );
}

/// A rename that would overwrite a change made since the renaming process
/// read the target fails with `ESTALE` and one warn line: the kernel asks
/// again after an `ESTALE` (it looks the paths up once more), and the
/// second, identical refusal is not a second failure to log.
#[test]
fn a_refused_rename_is_logged_once() {
    let (other, root, mount) = mounted("rename-once", &[]);
    other.create(&format!("{root}/cfg"), b"original");
    let m = mount.path();
    assert_eq!(
        fs::read(m.join("cfg")).expect("read the target"),
        b"original"
    );
    other.set(&format!("{root}/cfg"), b"theirs");
    fs::write(m.join("cfg.tmp"), b"ours").expect("write the temp file");
    let err = fs::rename(m.join("cfg.tmp"), m.join("cfg")).expect_err("rename over a change");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    assert_eq!(get(&other, &format!("{root}/cfg")).0, b"theirs");
    let log = mount.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("nothing was renamed"))
        .collect();
    assert_eq!(lines.len(), 1, "one failure, one warn line:\n{log}");
}

#[test]
fn concurrent_change_makes_close_fail_with_estale() {
    let (other, root, mount) = mounted("conflict", &[]);
    other.create(&format!("{root}/cfg"), b"original");
    let path = mount.path().join("cfg");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open");
    other.set(&format!("{root}/cfg"), b"theirs");
    f.write_all(b"ours").expect("buffered write");
    let fd = f.into_raw_fd();
    // SAFETY: fd is ours and closed exactly once.
    let rc = unsafe { libc::close(fd) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1, "close must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    assert_eq!(get(&other, &format!("{root}/cfg")).0, b"theirs");
    assert!(
        mount.log().contains("expected version 0"),
        "log names the versions"
    );

    // With --last-writer-wins the same sequence overwrites.
    let (other, root, mount) = mounted("lww", &["--last-writer-wins"]);
    other.create(&format!("{root}/cfg"), b"original");
    let path = mount.path().join("cfg");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .expect("open");
    other.set(&format!("{root}/cfg"), b"theirs");
    f.write_all(b"ours").expect("write");
    f.sync_all().expect("fsync sends");
    drop(f);
    assert_eq!(get(&other, &format!("{root}/cfg")).0, b"ours");
}

#[test]
fn editing_tools_produce_the_expected_content() {
    let (other, root, mount) = mounted("tools", &[]);
    let m = mount.path();
    let node = |n: &str| format!("{root}/{n}");
    other.create(&node("conf"), b"threads=8\nmode=fast\n");

    run(Command::new("sed")
        .args(["-i", "s/threads=8/threads=16/"])
        .arg(m.join("conf")));
    assert_eq!(get(&other, &node("conf")).0, b"threads=16\nmode=fast\n");

    run(Command::new("ex")
        .args(["-s", "-c", "%s/mode=fast/mode=safe/", "-c", "wq"])
        .arg(m.join("conf")));
    assert_eq!(get(&other, &node("conf")).0, b"threads=16\nmode=safe\n");

    run(Command::new("sh")
        .arg("-c")
        .arg(format!("echo extra=1 >> '{}'", m.join("conf").display())));
    assert_eq!(
        get(&other, &node("conf")).0,
        b"threads=16\nmode=safe\nextra=1\n"
    );

    fs::write(m.join("tmp"), b"replacement\n").expect("write tmp");
    run(Command::new("mv")
        .arg("-T")
        .arg(m.join("tmp"))
        .arg(m.join("conf")));
    assert_eq!(get(&other, &node("conf")).0, b"replacement\n");
    assert!(!exists(&other, &node("tmp")));

    run(Command::new("truncate")
        .args(["-s", "0"])
        .arg(m.join("conf")));
    assert_eq!(get(&other, &node("conf")).0, b"");
    assert!(
        fs::metadata(m.join("conf")).expect("stat").is_file(),
        "stays a file"
    );

    run(Command::new("sh")
        .arg("-c")
        .arg(format!("echo hi > '{}'", m.join("fresh").display())));
    assert_eq!(get(&other, &node("fresh")), (b"hi\n".to_vec(), 0));

    run(Command::new("touch").arg(m.join("empty")));
    run(Command::new("touch").arg(m.join("empty")));
    assert!(fs::metadata(m.join("empty")).expect("stat").is_file());
    assert_eq!(get(&other, &node("empty")).0, b"");

    // Nothing left behind by the tools (swap files, sed temp files).
    let mut names: Vec<String> = fs::read_dir(m)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["conf", "empty", "fresh"]);
}

#[test]
fn mkdir_p_then_rm_r_leaves_nothing() {
    let (other, root, mount) = mounted("tree", &[]);
    let m = mount.path();
    run(Command::new("mkdir").arg("-p").arg(m.join("a/b/c")));
    assert!(exists(&other, &format!("{root}/a/b/c")));
    assert!(fs::metadata(m.join("a/b/c")).expect("stat").is_dir());
    fs::write(m.join("a/b/c/leaf"), b"x").expect("write leaf");
    fs::write(m.join("a/.data"), b"a's own data").expect("dir data");
    assert_eq!(get(&other, &format!("{root}/a")).0, b"a's own data");
    run(Command::new("rm").arg("-r").arg(m.join("a")));
    assert!(!exists(&other, &format!("{root}/a")));
    assert_eq!(fs::read_dir(m).expect("ls").count(), 0);
    // rmdir of a non-empty directory.
    fs::create_dir(m.join("d")).expect("mkdir");
    fs::write(m.join("d/f"), b"x").expect("write");
    assert_eq!(errno_of(fs::remove_dir(m.join("d"))), Some(libc::ENOTEMPTY));
}

#[test]
fn every_refusal_has_its_errno() {
    let (other, root, mount) = mounted("refuse", &["--max-data", "100K"]);
    let m = mount.path();
    other.create(&format!("{root}/f"), b"data");
    let f = m.join("f");

    let mut big = fs::File::create(m.join("big")).expect("create");
    assert_eq!(
        errno_of(big.write_all(&vec![b'x'; 200 * 1024])),
        Some(libc::EFBIG)
    );
    drop(big);
    assert_eq!(
        errno_of(fs::write(m.join("bad\u{1}name"), b"x")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(fs::hard_link(&f, m.join("hard"))),
        Some(libc::EPERM)
    );
    let fifo = std::ffi::CString::new(m.join("fifo").to_string_lossy().as_bytes()).expect("cstr");
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(fs::set_permissions(
            &f,
            std::os::unix::fs::PermissionsExt::from_mode(0o600)
        )),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno_of(std::os::unix::fs::chown(&f, Some(12345), None)),
        Some(libc::EPERM)
    );
    // Times are accepted (touch on an existing file).
    run(Command::new("touch").arg(&f));
    assert_eq!(get(&other, &format!("{root}/f")).0, b"data");
    assert!(
        mount.log().contains("exceed the data limit"),
        "EFBIG is logged with the path"
    );

    // A read-only mount refuses everything with EROFS.
    let ro = Mount::start(&format!("{}{root}", shared_zk()), &["--read-only"]);
    let r = ro.path();
    assert_eq!(errno_of(fs::write(r.join("f"), b"x")), Some(libc::EROFS));
    assert_eq!(errno_of(fs::write(r.join("new"), b"x")), Some(libc::EROFS));
    assert_eq!(errno_of(fs::create_dir(r.join("d"))), Some(libc::EROFS));
    assert_eq!(errno_of(fs::remove_file(r.join("f"))), Some(libc::EROFS));
    assert_eq!(fs::metadata(r.join("f")).expect("stat").mode() & 0o222, 0);
}

#[test]
fn digest_acl_needs_the_right_auth_file() {
    let zk = shared_zk();
    let root = unique_root("acl");
    let other = Other::connect(&zk);
    other.ensure(&root);
    // An owner authenticated as alice creates a node only alice may use.
    let owner = Other::connect(&zk);
    owner
        .rt
        .block_on(owner.client.auth("digest", b"alice:secret"))
        .expect("auth");
    let options = CreateMode::Persistent.with_acls(Acls::creator_all());
    let private = format!("{root}/private");
    let fut = owner.client.create(&private, b"top secret", &options);
    owner.rt.block_on(fut).expect("create private");
    // Readable by anyone, writable by alice only.
    let shared_acl = [
        zookeeper_client::Acl::new(
            zookeeper_client::Permission::ALL,
            zookeeper_client::AuthId::new("auth", ""),
        ),
        zookeeper_client::Acl::new(
            zookeeper_client::Permission::READ,
            zookeeper_client::AuthId::new("world", "anyone"),
        ),
    ];
    let options = CreateMode::Persistent.with_acls(Acls::new(&shared_acl));
    let readable = format!("{root}/readable");
    let fut = owner.client.create(&readable, b"public", &options);
    owner.rt.block_on(fut).expect("create readable");

    let dir = TempDir::new("acl-auth");
    let good = dir.path().join("alice");
    fs::write(&good, "alice:secret\n").expect("auth file");
    // zkfs refuses auth files that group or others may read.
    fs::set_permissions(&good, fs::Permissions::from_mode(0o600)).expect("chmod auth file");
    let with = Mount::start(
        &format!("{zk}{root}"),
        &["--auth-file", &good.to_string_lossy()],
    );
    assert_eq!(
        fs::read(with.path().join("private")).expect("read with auth"),
        b"top secret"
    );
    fs::write(with.path().join("private"), b"changed").expect("write with auth");
    let mode = |m: &Mount| {
        fs::metadata(m.path().join("readable"))
            .expect("stat")
            .mode()
            & 0o777
    };
    assert_eq!(mode(&with), 0o644, "alice may write");
    assert!(!with.log().contains("secret"), "credentials never logged");

    let without = Mount::start(&format!("{zk}{root}"), &[]);
    assert_eq!(
        errno_of(fs::read(without.path().join("private"))),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(fs::write(without.path().join("private"), b"x")),
        Some(libc::EACCES)
    );
    assert_eq!(mode(&without), 0o444, "write bits follow the ACL");
    // Through a cold listing too (ACLs of listed nodes are fetched after it).
    let listed = Mount::start(&format!("{zk}{root}"), &[]);
    let names: Vec<_> = fs::read_dir(listed.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(names.iter().any(|n| n == "readable"));
    assert!(
        names.iter().any(|n| n == "private"),
        "an unreadable node is listed, not a failed listing"
    );
    assert_eq!(
        errno_of(fs::read(listed.path().join("private"))),
        Some(libc::EACCES)
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mode(&listed) != 0o444 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(mode(&listed), 0o444, "write bits settle after a listing");
    assert_eq!(
        fs::read(without.path().join("readable")).expect("read"),
        b"public"
    );
    // The refusal surfaces when the content is sent (fsync/close).
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(without.path().join("readable"))
        .expect("open (as root, mode bits are not enforced)");
    f.write_all(b"x").expect("buffered");
    assert_eq!(errno_of(f.sync_all()), Some(libc::EACCES));
    drop(f);
    assert_eq!(get(&other, &readable).0, b"public");
}

#[test]
fn regressions_rename_then_write_efbig_cp_r_and_touch_mv() {
    let (other, root, mount) = mounted("regress", &["--max-data", "100K"]);
    let m = mount.path().display().to_string();
    let node = |n: &str| format!("{root}/{n}");

    // Rename to a new name, then write the new name (ZOOKEEPER-4026 dummy stat).
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("cd '{m}' && echo v1 > s && mv s d && echo v2 > d")));
    assert_eq!(get(&other, &node("d")).0, b"v2\n");
    assert_eq!(fs::read_to_string(format!("{m}/d")).expect("cat"), "v2\n");

    // EFBIG leaves nothing behind: a new file is not created, an existing
    // one keeps its content.
    let dir = TempDir::new("regress-src");
    let big = dir.path().join("big");
    fs::write(&big, vec![b'x'; 300 * 1024]).expect("big source");
    let cp = Command::new("cp")
        .arg(&big)
        .arg(format!("{m}/big"))
        .output()
        .expect("cp");
    assert!(!cp.status.success());
    assert!(!exists(&other, &node("big")), "no truncated node");
    other.create(&node("keep"), b"original");
    let cp = Command::new("cp")
        .arg(&big)
        .arg(format!("{m}/keep"))
        .output()
        .expect("cp");
    assert!(!cp.status.success());
    assert_eq!(get(&other, &node("keep")).0, b"original");

    // cp -r out and back in round-trips a subtree with directory data.
    other.create(&node("tree"), b"tree data");
    other.create(&node("tree/leaf"), b"leaf data");
    let out = dir.path().join("copy");
    run(Command::new("cp")
        .arg("-r")
        .arg(format!("{m}/tree"))
        .arg(&out));
    run(Command::new("cp")
        .arg("-r")
        .arg(&out)
        .arg(format!("{m}/tree2")));
    assert_eq!(get(&other, &node("tree2")).0, b"tree data");
    assert_eq!(get(&other, &node("tree2/leaf")).0, b"leaf data");

    // touch then mv at once (the last close is sent asynchronously).
    for i in 0..10 {
        run(Command::new("sh")
            .arg("-c")
            .arg(format!("cd '{m}' && touch f{i} && mv f{i} g{i}")));
        assert!(exists(&other, &node(&format!("g{i}"))));
    }
}
