//! Pointer nodes as symlinks through a real mount (contract §5).

mod common;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::{Mount, shared_zk, unique_root, wait_until};
use zkops::Other;

const DEADLINE: Duration = Duration::from_secs(10);

fn bank(tag: &str, extra: &[&str]) -> (Other, String, Mount) {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/configs"));
    other.ensure(&format!("{root}/pointers"));
    other.create(&format!("{root}/configs/v1"), b"config one\n");
    other.create(&format!("{root}/configs/v2"), b"config two\n");
    let mount = Mount::start(&format!("{zk}{root}"), extra);
    (other, root, mount)
}

fn data(other: &Other, path: &str) -> Vec<u8> {
    let fut = other.client.get_data(path);
    other
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
        .expect("in time")
        .expect("get_data")
        .0
}

fn sh(script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pointer_set_elsewhere_is_a_symlink_that_follows_changes() {
    let (other, root, mount) = bank("ptr", &[]);
    let m = mount.path();
    other.create(&format!("{root}/pointers/current"), b"/configs/v1");
    let ptr = m.join("pointers/current");
    wait_until("pointer visible", DEADLINE, || {
        ptr.symlink_metadata().is_ok()
    });
    let meta = ptr.symlink_metadata().expect("lstat");
    assert!(meta.file_type().is_symlink());
    assert_eq!(
        fs::read_link(&ptr).expect("readlink").to_string_lossy(),
        "../configs/v1"
    );
    assert_eq!(
        meta.len(),
        "../configs/v1".len() as u64,
        "lstat size = link text length"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o777);
    assert_eq!(fs::read_to_string(&ptr).expect("cat ptr"), "config one\n");

    // Flip the pointer from another client.
    other.set(&format!("{root}/pointers/current"), b"/configs/v2\n");
    wait_until("flipped pointer followed", DEADLINE, || {
        fs::read_to_string(&ptr).is_ok_and(|s| s == "config two\n")
    });
    // Change the target's data.
    other.set(&format!("{root}/configs/v2"), b"config two, edited\n");
    wait_until("target change seen through the pointer", DEADLINE, || {
        fs::read_to_string(&ptr).is_ok_and(|s| s == "config two, edited\n")
    });
    // The target vanishes: the pointer becomes a file with its text.
    other.delete(&format!("{root}/configs/v2"));
    wait_until("dangling pointer is a file", DEADLINE, || {
        ptr.symlink_metadata().is_ok_and(|m| m.is_file())
    });
    assert_eq!(fs::read_to_string(&ptr).expect("text"), "/configs/v2\n");
    // ...and a symlink again when the target reappears.
    other.create(&format!("{root}/configs/v2"), b"back\n");
    wait_until("pointer again", DEADLINE, || {
        ptr.symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    });
    assert_eq!(fs::read_to_string(&ptr).expect("cat"), "back\n");
}

#[test]
fn only_real_paths_inside_the_mount_are_pointers() {
    let (other, root, mount) = bank("ptr-kinds", &[]);
    let m = mount.path();
    other.create(&format!("{root}/logpath"), b"/var/log/app");
    other.create(&format!("{root}/nl"), b"/configs/v1\n");
    let logpath = m.join("logpath");
    assert!(logpath.symlink_metadata().expect("lstat").is_file());
    assert_eq!(fs::read_to_string(&logpath).expect("cat"), "/var/log/app");
    assert!(
        m.join("nl")
            .symlink_metadata()
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_to_string(m.join("nl")).expect("cat"),
        "config one\n"
    );

    // With --root, a pointer to a node outside the subtree is a file.
    let sub = Mount::start(&shared_zk(), &["--root", &format!("{root}/pointers")]);
    other.create(
        &format!("{root}/pointers/outside"),
        format!("{root}/configs/v1").as_bytes(),
    );
    other.create(
        &format!("{root}/pointers/inside"),
        format!("{root}/pointers/outside").as_bytes(),
    );
    wait_until("listed", DEADLINE, || {
        sub.path().join("inside").symlink_metadata().is_ok()
    });
    assert!(
        sub.path()
            .join("outside")
            .symlink_metadata()
            .expect("lstat")
            .is_file()
    );
    assert!(
        sub.path()
            .join("inside")
            .symlink_metadata()
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(sub.path().join("inside"))
            .expect("readlink")
            .to_string_lossy(),
        "outside"
    );
}

#[test]
fn ln_s_and_atomic_flips_write_absolute_paths() {
    let (other, root, mount) = bank("ln", &[]);
    let m = mount.path().display().to_string();
    sh(&format!("cd '{m}/pointers' && ln -s ../configs/v1 current"));
    assert_eq!(
        data(&other, &format!("{root}/pointers/current")),
        b"/configs/v1"
    );
    assert_eq!(
        fs::read_to_string(format!("{m}/pointers/current")).expect("cat"),
        "config one\n"
    );

    sh(&format!(
        "cd '{m}/pointers' && ln -sfn ../configs/v2 current"
    ));
    assert_eq!(
        data(&other, &format!("{root}/pointers/current")),
        b"/configs/v2"
    );

    sh(&format!(
        "cd '{m}/pointers' && ln -s '{m}/configs/v1' tmp && mv -T tmp current"
    ));
    assert_eq!(
        data(&other, &format!("{root}/pointers/current")),
        b"/configs/v1"
    );
    assert!(fs::symlink_metadata(format!("{m}/pointers/tmp")).is_err());
    assert_eq!(
        fs::read_to_string(format!("{m}/pointers/current")).expect("cat"),
        "config one\n"
    );

    // Writing through the link writes the target.
    fs::write(format!("{m}/pointers/current"), b"via link\n").expect("write through");
    assert_eq!(data(&other, &format!("{root}/configs/v1")), b"via link\n");

    // A target outside the mount is refused.
    let err = std::os::unix::fs::symlink("/etc/passwd", format!("{m}/pointers/bad"))
        .expect_err("refused");
    assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
    assert!(mount.log().contains("outside the mount"));
}

#[test]
fn chains_resolve_and_cycles_are_eloop() {
    let (other, root, mount) = bank("cycle", &[]);
    let m = mount.path();
    other.create(&format!("{root}/a"), b"/b");
    other.create(&format!("{root}/b"), b"/a");
    other.create(&format!("{root}/c"), b"/pointers/d");
    other.create(&format!("{root}/pointers/d"), b"/configs/v2");
    assert_eq!(
        fs::read_to_string(m.join("c")).expect("chain"),
        "config two\n"
    );
    let err = fs::read(m.join("a")).expect_err("cycle");
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));
}

/// A link to the mount's root when that is ZooKeeper's root (`/`, or the
/// chroot's root): no pointer data can name it, so `symlink` refuses it
/// before creating anything (it used to create a node with data `/`, a
/// plain file, and then report `EIO`).
#[test]
fn a_link_to_zookeepers_root_is_refused_and_creates_nothing() {
    let (other, root, mount) = bank("ptr-to-root", &[]);
    let m = mount.path();
    for (link, target) in [("configs/up", ".."), ("here", "."), ("abs", "")] {
        let target = if target.is_empty() {
            m.to_string_lossy().into_owned()
        } else {
            target.to_string()
        };
        let err = std::os::unix::fs::symlink(&target, m.join(link)).expect_err("refused");
        assert_eq!(err.raw_os_error(), Some(libc::EXDEV), "{link} -> {target}");
        let (dir, name) = link.rsplit_once('/').unwrap_or(("", link));
        let parent = format!("{root}/{dir}");
        let listed = other.children(parent.trim_end_matches('/'));
        assert!(
            !listed.iter().any(|n| n == name),
            "{link} created: {listed:?}"
        );
    }
    assert!(
        mount
            .log()
            .contains("/configs/up: the target is the root of ZooKeeper"),
        "{}",
        mount.log()
    );
}

/// On a chrooted mount, a pointer whose data does not start with the
/// chroot has one reading only: when its target goes, it is a file with its
/// text, never a symlink to `{chroot}{target}` (a node of that name inside
/// the mount is another node; reading it through the pointer would show
/// that node's data).
#[test]
fn a_pointer_without_the_chroot_prefix_becomes_a_file_when_its_target_goes() {
    let (other, root, mount) = bank("ptr-plain-gone", &[]);
    let m = mount.path();
    other.create(&format!("{root}/pointers/current"), b"/configs/v1");
    // A decoy where the chroot-prefixed reading would point.
    other.ensure(&format!("{root}{root}/configs"));
    other.create(&format!("{root}{root}/configs/v1"), b"decoy\n");
    let ptr = m.join("pointers/current");
    assert_eq!(fs::read_to_string(&ptr).expect("cat"), "config one\n");
    other.delete(&format!("{root}/configs/v1"));
    wait_until("the pointer is a file", DEADLINE, || {
        ptr.symlink_metadata().is_ok_and(|m| m.is_file())
    });
    assert_eq!(fs::read_to_string(&ptr).expect("text"), "/configs/v1");
    // The target back: a symlink again.
    other.create(&format!("{root}/configs/v1"), b"config one again\n");
    wait_until("a symlink again", DEADLINE, || {
        ptr.symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    });
    assert_eq!(fs::read_to_string(&ptr).expect("cat"), "config one again\n");
}

#[test]
fn pointer_data_with_the_chroot_prefix_resolves_inside_the_chroot() {
    // The mount's connection string ends in `{root}` (its chroot); a client
    // without a chroot writes the full path, `{root}/configs/v1`.
    let (other, root, mount) = bank("ptr-chroot", &[]);
    let m = mount.path();
    other.create(
        &format!("{root}/pointers/full"),
        format!("{root}/configs/v1").as_bytes(),
    );
    let full = m.join("pointers/full");
    assert!(
        full.symlink_metadata()
            .expect("lstat")
            .file_type()
            .is_symlink(),
        "{}",
        mount.log()
    );
    assert_eq!(
        fs::read_link(&full).expect("readlink").to_string_lossy(),
        "../configs/v1"
    );
    assert_eq!(fs::read_to_string(&full).expect("cat"), "config one\n");

    // Listed (readdirplus) the same way.
    let listed = fs::read_dir(m.join("pointers"))
        .expect("ls")
        .filter_map(Result::ok)
        .find(|e| e.file_name() == "full")
        .expect("listed");
    assert!(listed.file_type().expect("type").is_symlink());

    // Nothing there inside the chroot: a file with its text, until the
    // node appears.
    let later = m.join("pointers/later");
    other.create(
        &format!("{root}/pointers/later"),
        format!("{root}/configs/v3").as_bytes(),
    );
    // The listing of pointers/ is cached: the new name shows once the
    // watch event arrives.
    wait_until("later visible", DEADLINE, || {
        later.symlink_metadata().is_ok()
    });
    assert!(later.symlink_metadata().expect("lstat").is_file());
    assert_eq!(
        fs::read_to_string(&later).expect("text"),
        format!("{root}/configs/v3")
    );
    other.create(&format!("{root}/configs/v3"), b"config three\n");
    wait_until("pointer to the new node", DEADLINE, || {
        later
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_symlink())
    });
    assert_eq!(fs::read_to_string(&later).expect("cat"), "config three\n");

    // The data as written names a node too (`{root}{root}/configs/v3` for a
    // client without a chroot): the node inside the chroot still wins, and
    // the pointer falls back to the data as written when it goes.
    other.ensure(&format!("{root}{root}/configs"));
    other.create(&format!("{root}{root}/configs/v3"), b"nested\n");
    assert_eq!(fs::read_to_string(&later).expect("cat"), "config three\n");
    other.delete(&format!("{root}/configs/v3"));
    wait_until("pointer to the data as written", DEADLINE, || {
        fs::read_to_string(&later).is_ok_and(|s| s == "nested\n")
    });
    assert_eq!(
        fs::read_link(&later).expect("readlink").to_string_lossy(),
        format!("..{root}/configs/v3")
    );

    // A mount of a subtree inside the chroot: the prefixed path is resolved
    // in the chroot too (and the pointer is no symlink when its target is
    // outside that subtree).
    let sub = Mount::start(&format!("{}{root}", shared_zk()), &["--root", "/pointers"]);
    other.create(
        &format!("{root}/pointers/sibling"),
        format!("{root}/pointers/full").as_bytes(),
    );
    wait_until("sibling listed", DEADLINE, || {
        sub.path().join("sibling").symlink_metadata().is_ok()
    });
    assert!(
        sub.path()
            .join("sibling")
            .symlink_metadata()
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(sub.path().join("sibling"))
            .expect("readlink")
            .to_string_lossy(),
        "full"
    );
}
