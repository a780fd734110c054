//! Per-node owner, group and mode (`--attrs`, `-o attrs=`) and the chmod
//! policy (`--chmod ignore|refuse`) through real mounts: what `stat` shows,
//! what the kernel lets an unprivileged user read with `--allow-other`, and
//! `rsync -a` into the mount.

mod common;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mount, TempDir, run_zkfs, shared_zk, unique_root, wait_until};
use zkops::Other;

const DEADLINE: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

/// A tree with public config and secrets under a fresh chroot.
fn tree(tag: &str) -> (Other, String, String) {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/public"));
    other.ensure(&format!("{root}/secrets/sub"));
    other.create(&format!("{root}/public/app.json"), b"{\"public\": 1}\n");
    other.create(&format!("{root}/secrets/db"), b"dbpass\n");
    other.create(&format!("{root}/secrets/api"), b"apikey\n");
    other.create(&format!("{root}/secrets/sub/deep"), b"deep\n");
    let servers = format!("{zk}{root}");
    (other, root, servers)
}

/// (uid, gid, permission bits) of `path`, not following symlinks.
fn owner(path: &Path) -> (u32, u32, u32) {
    let meta = path
        .symlink_metadata()
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

/// `cat path` as user nobody: Ok(content) or Err(stderr).
fn cat_as_nobody(path: &Path) -> Result<String, String> {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "cat",
        ])
        .arg(path)
        .output()
        .expect("run setpriv");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The numeric id of a user or group name, from getent (not from zkfs).
fn getent(database: &str, name: &str) -> u32 {
    let out = Command::new("getent")
        .args([database, name])
        .output()
        .expect("getent");
    assert!(out.status.success(), "getent {database} {name}");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':')
        .nth(2)
        .and_then(|id| id.trim().parse().ok())
        .unwrap_or_else(|| panic!("getent {database} {name}: {line}"))
}

#[test]
fn attrs_rules_set_owner_group_mode_and_the_kernel_enforces_them() {
    let (_other, _root, servers) = tree("attrs");
    // SAFETY: getgid cannot fail.
    let my_gid = unsafe { libc::getgid() };
    let mount = Mount::start(
        &servers,
        &[
            "--allow-other",
            "--attrs",
            "secrets/**/*=0:0:0400",
            "--attrs",
            "secrets/api=nobody:nogroup:0440",
            "--attrs",
            "public/*=1234::0644",
        ],
    );
    let m = mount.path();
    let (nobody, nogroup) = (getent("passwd", "nobody"), getent("group", "nogroup"));
    assert_eq!(owner(&m.join("secrets/db")), (0, 0, 0o400));
    assert_eq!(
        owner(&m.join("secrets/api")),
        (nobody, nogroup, 0o440),
        "the later rule wins"
    );
    assert_eq!(owner(&m.join("secrets/sub/deep")), (0, 0, 0o400));
    assert_eq!(
        owner(&m.join("secrets/sub")),
        (0, 0, 0o500),
        "a directory gets x where r is set"
    );
    assert_eq!(
        owner(&m.join("secrets")).2,
        0o755,
        "secrets/**/* does not match secrets itself"
    );
    assert_eq!(
        owner(&m.join("public/app.json")),
        (1234, my_gid, 0o644),
        "an empty GROUP keeps the mount-wide group"
    );
    assert_eq!(owner(&m.join("public")).2, 0o755);

    // The kernel enforces them (--allow-other turns on default_permissions).
    let denied = cat_as_nobody(&m.join("secrets/db")).expect_err("0400 root file");
    assert!(denied.contains("Permission denied"), "{denied}");
    assert_eq!(
        cat_as_nobody(&m.join("secrets/api")).as_deref(),
        Ok("apikey\n")
    );
    assert_eq!(
        cat_as_nobody(&m.join("public/app.json")).as_deref(),
        Ok("{\"public\": 1}\n")
    );
    let denied = cat_as_nobody(&m.join("secrets/sub/deep")).expect_err("0500 root dir");
    assert!(denied.contains("Permission denied"), "{denied}");

    // A file created in a matching directory shows the rule at once.
    fs::write(m.join("secrets/new"), b"fresh\n").expect("create");
    assert_eq!(owner(&m.join("secrets/new")), (0, 0, 0o400));
}

#[test]
fn dash_o_attrs_repeat_and_write_bits_still_drop_on_a_read_only_mount() {
    let (_other, _root, servers) = tree("attrs-o");
    let mount = Mount::start(
        &servers,
        &[
            "-o",
            "ro,attrs=public/*=::0664,attrs=secrets/*=4321:4322:0600",
        ],
    );
    let m = mount.path();
    // SAFETY: getuid/getgid cannot fail.
    let (my_uid, my_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    assert_eq!(owner(&m.join("public/app.json")), (my_uid, my_gid, 0o444));
    assert_eq!(owner(&m.join("secrets/db")), (4321, 4322, 0o400));
    assert_eq!(
        owner(&m.join("secrets/sub")),
        (4321, 4322, 0o500),
        "directory: r gives x, write bits dropped"
    );
    assert_eq!(owner(&m.join("secrets/sub/deep")).2, 0o444);
}

#[test]
fn bad_attrs_rules_are_refused_with_a_precise_message() {
    let dir = TempDir::new("attrs-bad");
    let mp = dir.path().to_string_lossy().into_owned();
    let zk = shared_zk();
    for (rule, needle) in [
        (
            "secrets/*=no-such-user-zkfs::0400",
            "unknown user 'no-such-user-zkfs'",
        ),
        (
            "secrets/*=:no-such-group-zkfs:0400",
            "unknown group 'no-such-group-zkfs'",
        ),
        ("secrets/*=0:0:0999", "invalid mode '0999'"),
        ("secrets/*", "GLOB=USER:GROUP:MODE"),
        ("=0:0:0400", "empty --attrs pattern"),
        ("a/../b=0:0:0400", "invalid --attrs pattern"),
        ("a=0:0", "GLOB=USER:GROUP:MODE"),
    ] {
        let out = run_zkfs(&["mount", "--attrs", rule, &zk, &mp]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rule}: {err}");
        assert!(err.contains(needle), "{rule}: expected '{needle}' in {err}");
    }
    let out = run_zkfs(&["mount", "--chmod", "allow", &zk, &mp]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ignore") && err.contains("refuse"), "{err}");
}

/// A local tree for rsync: two files, one in a subdirectory, with modes
/// rsync -a would copy.
fn source_tree(dir: &Path) {
    fs::create_dir(dir.join("conf.d")).expect("mkdir");
    fs::write(dir.join("app.json"), b"{\"threads\": 4}\n").expect("write");
    fs::write(dir.join("conf.d/extra.conf"), b"extra=1\n").expect("write");
    for (p, mode) in [("app.json", 0o600), ("conf.d/extra.conf", 0o640)] {
        let c = std::ffi::CString::new(dir.join(p).to_string_lossy().into_owned()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::chmod(c.as_ptr(), mode) }, 0);
    }
}

fn rsync(src: &Path, dst: &Path) -> std::process::Output {
    Command::new("rsync")
        .arg("-a")
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("run rsync")
}

#[test]
fn rsync_a_works_with_chmod_ignore_and_fails_with_refuse() {
    let src = TempDir::new("rsync-src");
    source_tree(src.path());

    let (other, root, servers) = tree("rsync-ignore");
    let mount = Mount::start(&servers, &["--chmod", "ignore"]);
    let dst = mount.path().join("deploy");
    fs::create_dir(&dst).expect("mkdir deploy");
    let out = rsync(src.path(), &dst);
    assert!(
        out.status.success(),
        "rsync -a with --chmod ignore: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mount.log()
    );
    let data = |p: &str| {
        let fut = other.client.get_data(p);
        other
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
            .expect("in time")
            .expect("get_data")
            .0
    };
    assert_eq!(
        data(&format!("{root}/deploy/app.json")),
        b"{\"threads\": 4}\n"
    );
    assert_eq!(
        data(&format!("{root}/deploy/conf.d/extra.conf")),
        b"extra=1\n"
    );
    // chmod/chown succeeded and changed nothing.
    // SAFETY: getuid cannot fail.
    let my_uid = unsafe { libc::getuid() };
    assert_eq!(owner(&dst.join("app.json")), (my_uid, owner(&dst).1, 0o644));
    let st = Command::new("chmod")
        .arg("0600")
        .arg(dst.join("app.json"))
        .status()
        .expect("chmod");
    assert!(st.success());
    let st = Command::new("chown")
        .arg("4321:4321")
        .arg(dst.join("app.json"))
        .status()
        .expect("chown");
    assert!(st.success());
    assert_eq!(owner(&dst.join("app.json")).2, 0o644);
    assert_eq!(owner(&dst.join("app.json")).0, my_uid);
    // A second run has nothing to do but succeeds as well.
    let again = rsync(src.path(), &dst);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // cp -a and tar x preserve modes too.
    let cp = Command::new("cp")
        .arg("-a")
        .arg(src.path())
        .arg(mount.path().join("copied"))
        .output()
        .expect("cp -a");
    assert!(
        cp.status.success(),
        "{}",
        String::from_utf8_lossy(&cp.stderr)
    );
    assert_eq!(
        data(&format!("{root}/copied/conf.d/extra.conf")),
        b"extra=1\n"
    );
    fs::create_dir(mount.path().join("untarred")).expect("mkdir");
    let tar = Command::new("sh")
        .arg("-c")
        .arg("tar cf - -C \"$1\" . | tar xf - -C \"$2\"")
        .arg("sh")
        .arg(src.path())
        .arg(mount.path().join("untarred"))
        .output()
        .expect("tar");
    assert!(
        tar.status.success(),
        "{}",
        String::from_utf8_lossy(&tar.stderr)
    );
    assert_eq!(
        data(&format!("{root}/untarred/app.json")),
        b"{\"threads\": 4}\n"
    );

    // The default (refuse): rsync -a fails (exit 23, chmod refused with EPERM).
    let (_other2, _root2, servers2) = tree("rsync-refuse");
    let refusing = Mount::start(&servers2, &[]);
    let dst2 = refusing.path().join("deploy");
    fs::create_dir(&dst2).expect("mkdir deploy");
    let out = rsync(src.path(), &dst2);
    assert_eq!(
        out.status.code(),
        Some(23),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cp = Command::new("cp")
        .arg("-a")
        .arg(src.path())
        .arg(refusing.path().join("copied"))
        .output()
        .expect("cp -a");
    assert!(!cp.status.success(), "cp -a preserves modes: refused");
    let err = Command::new("chmod")
        .arg("0600")
        .arg(refusing.path().join("public/app.json"))
        .output()
        .expect("chmod");
    assert!(!err.status.success());
    wait_until("the refusal is logged", DEADLINE, || {
        refusing.log().contains("chmod")
    });
}
