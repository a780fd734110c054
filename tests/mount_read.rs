//! Reads through a real kernel FUSE mount of a real ZooKeeper server:
//! mapping, attributes, xattrs, coherence with another client's changes,
//! cache hits without round trips, status.

mod common;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{Mount, shared_zk, unique_root, wait_until};
use zkops::{Other, requests, sh, xattr, xattr_string};

const DEADLINE: Duration = Duration::from_secs(10);

/// A seeded subtree under a unique root, mounted with that root as chroot.
fn seeded(tag: &str) -> (Other, String, Mount) {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/config"), b"");
    other.create(&format!("{root}/config/app.json"), b"{\"threads\": 8}\n");
    other.create(&format!("{root}/services"), b"{\"team\":\"payments\"}");
    other.create(&format!("{root}/services/web"), b"");
    other.create(
        &format!("{root}/services/web/10.0.0.5:8080"),
        b"{\"pid\": 4242}",
    );
    other.create(&format!("{root}/empty"), b"");
    let mount = Mount::start(&format!("{zk}{root}"), &[]);
    (other, root, mount)
}

#[test]
fn data_kinds_attributes_and_data_file() {
    let (_other, _root, mount) = seeded("kinds");
    let m = mount.path();

    assert_eq!(
        fs::read_to_string(m.join("config/app.json")).expect("cat"),
        "{\"threads\": 8}\n"
    );
    let meta = fs::metadata(m.join("config/app.json")).expect("stat");
    assert!(meta.is_file());
    assert_eq!(meta.len(), 15);
    assert_eq!(meta.mode() & 0o777, 0o644);

    assert!(fs::metadata(m.join("config")).expect("stat").is_dir());
    assert!(fs::metadata(m.join("empty")).expect("empty node").is_dir());
    let mut names: Vec<String> = fs::read_dir(m.join("services"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [".data", "web"]);
    assert_eq!(
        fs::read_to_string(m.join("services/.data")).expect(".data"),
        "{\"team\":\"payments\"}"
    );
    // .data of a directory without data: neither listed nor found.
    assert_eq!(
        fs::read(m.join("config/.data")).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::NotFound)
    );
    assert!(fs::metadata(m.join("nope")).is_err());

    // Real shell tools.
    let ls = sh("ls", &["-l", &m.join("services/web").to_string_lossy()]);
    assert!(ls.contains("10.0.0.5:8080"), "{ls}");
    assert!(
        ls.lines()
            .any(|l| l.starts_with("-rw-r--r--") && l.contains(" 13 ")),
        "{ls}"
    );
    let cat = sh(
        "cat",
        &[&m.join("services/web/10.0.0.5:8080").to_string_lossy()],
    );
    assert_eq!(cat, "{\"pid\": 4242}");
    let stat = sh(
        "stat",
        &["-c", "%F %s", &m.join("config/app.json").to_string_lossy()],
    );
    assert_eq!(stat.trim(), "regular file 15");
    let version = sh(
        "getfattr",
        &[
            "--only-values",
            "-n",
            "user.zk.version",
            &m.join("config/app.json").to_string_lossy(),
        ],
    );
    assert_eq!(version, "0");
}

#[test]
fn extended_attributes() {
    let (other, root, mount) = seeded("xattr");
    let m = mount.path();
    other.set(&format!("{root}/config/app.json"), b"{}");
    wait_until("new size visible", DEADLINE, || {
        fs::metadata(m.join("config/app.json")).is_ok_and(|x| x.len() == 2)
    });
    let f = m.join("config/app.json");
    assert_eq!(xattr_string(&f, "user.zk.version"), "1");
    assert_eq!(xattr_string(&f, "user.zk.data_length"), "2");
    assert_eq!(xattr_string(&f, "user.zk.num_children"), "0");
    assert_eq!(xattr_string(&f, "user.zk.ephemeral_owner"), "0x0");
    assert_eq!(xattr_string(&f, "user.zk.acl"), "world:anyone:cdrwa");
    for name in [
        "user.zk.cversion",
        "user.zk.aversion",
        "user.zk.czxid",
        "user.zk.mzxid",
        "user.zk.pzxid",
        "user.zk.ctime",
        "user.zk.mtime",
    ] {
        assert!(!xattr_string(&f, name).is_empty(), "{name}");
    }
    assert_eq!(
        xattr_string(&m.join("services"), "user.zk.data"),
        "{\"team\":\"payments\"}"
    );
    assert_eq!(
        xattr(&f, "user.zk.bogus").map_err(|e| e.raw_os_error()),
        Err(Some(libc::ENODATA))
    );
    // Namespaces zkfs does not have answer ENOTSUP, so ls -l stops asking.
    for name in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        assert_eq!(
            xattr(&f, name).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EOPNOTSUPP)),
            "{name}"
        );
    }
    assert_eq!(xattr_string(m, "user.zkfs.state"), "connected");
    assert!(xattr_string(m, "user.zkfs.session_id").starts_with("0x"));
    let dump = sh("getfattr", &["-d", "-m", "-", &f.to_string_lossy()]);
    assert!(dump.contains("user.zk.mzxid="), "{dump}");
}

#[test]
fn another_clients_changes_become_visible() {
    let (other, root, mount) = seeded("coherent");
    let m = mount.path();
    let app = m.join("config/app.json");
    assert_eq!(fs::read_to_string(&app).expect("cat"), "{\"threads\": 8}\n");

    // setData → cat shows it.
    other.set(&format!("{root}/config/app.json"), b"{\"threads\": 16}\n");
    wait_until("setData visible through cat", DEADLINE, || {
        fs::read_to_string(&app).is_ok_and(|s| s == "{\"threads\": 16}\n")
    });

    // create → ls shows it.
    assert_eq!(fs::read_dir(m.join("services/web")).expect("ls").count(), 1);
    other.create(
        &format!("{root}/services/web/10.0.0.6:8080"),
        b"{\"pid\": 7}",
    );
    wait_until("new child in ls", DEADLINE, || {
        fs::read_dir(m.join("services/web")).is_ok_and(|d| d.count() == 2)
    });
    assert_eq!(
        fs::read_to_string(m.join("services/web/10.0.0.6:8080")).expect("cat new"),
        "{\"pid\": 7}"
    );

    // delete → ENOENT.
    other.delete(&format!("{root}/services/web/10.0.0.5:8080"));
    wait_until("deleted node is ENOENT", DEADLINE, || {
        fs::metadata(m.join("services/web/10.0.0.5:8080"))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    });
    let ls = sh("ls", &[&m.join("services/web").to_string_lossy()]);
    assert_eq!(ls.trim(), "10.0.0.6:8080");

    // A child added to a file node turns it into a directory with .data.
    assert!(fs::metadata(&app).expect("file").is_file());
    other.create(&format!("{root}/config/app.json/override"), b"x");
    wait_until("file became a directory", DEADLINE, || {
        fs::metadata(&app).is_ok_and(|x| x.is_dir())
    });
    assert_eq!(
        fs::read_to_string(app.join(".data")).expect(".data"),
        "{\"threads\": 16}\n"
    );
    assert_eq!(
        fs::read_to_string(app.join("override")).expect("child"),
        "x"
    );
}

#[test]
fn mtime_strictly_increases_with_every_change() {
    let (other, root, mount) = seeded("mtime");
    let f = mount.path().join("config/app.json");
    let mut last = fs::metadata(&f).expect("stat").modified().expect("mtime");
    for i in 0..20 {
        let value = format!("v{i}");
        other.set(&format!("{root}/config/app.json"), value.as_bytes());
        wait_until("change visible", DEADLINE, || {
            fs::read_to_string(&f).is_ok_and(|s| s == value)
        });
        let now = fs::metadata(&f).expect("stat").modified().expect("mtime");
        assert!(now > last, "change {i}: mtime {now:?} must exceed {last:?}");
        last = now;
    }
}

#[test]
fn cached_reads_do_not_contact_zookeeper() {
    let (_other, _root, mount) = seeded("hits");
    let m = mount.path();
    let app = m.join("config/app.json");
    fs::read(&app).expect("first read loads");
    fs::read_dir(m.join("services/web")).expect("ls").count();
    // A listing fetches the children's ACLs in the background: let that
    // finish (the counter stays put for 100 ms) before counting cache hits.
    let mut before = requests(m);
    wait_until("background loads settle", DEADLINE, || {
        std::thread::sleep(Duration::from_millis(100));
        let now = requests(m);
        let settled = now == before;
        before = now;
        settled
    });
    for _ in 0..50 {
        assert_eq!(fs::read(&app).expect("cat").len(), 15);
        fs::metadata(&app).expect("stat");
        fs::read_dir(m.join("services/web")).expect("ls").count();
        sh("cat", &[&app.to_string_lossy()]);
    }
    assert_eq!(
        requests(m),
        before,
        "cache hits must not send ZooKeeper requests"
    );
}

#[test]
fn status_reports_the_session() {
    let (other, _root, mount) = seeded("status");
    let mp = mount.path().to_string_lossy().into_owned();
    let out = common::run_zkfs(&["status", &mp]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("state:        connected"), "{text}");
    let json = common::run_zkfs(&["status", "--json", &mp]);
    assert!(json.status.success());
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(json.contains("\"state\":\"connected\""), "{json}");
    assert!(json.contains("\"cached_nodes\":"), "{json}");
    assert!(json.contains("\"last_contact_age_ms\":"), "{json}");
    let keys = top_level_keys(&json);
    let mut unique = keys.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "a key twice in {json}");
    assert!(keys.iter().any(|k| k == "registrations"), "{json}");
    // The session id is a real one: it differs from the other client's.
    let id = xattr_string(mount.path(), "user.zkfs.session_id");
    assert_ne!(id, format!("{:#x}", other.session_id()));
}

/// The keys of a JSON object's top level, in order (strings skipped
/// whole, nested objects' keys not counted).
fn top_level_keys(json: &str) -> Vec<String> {
    let (mut keys, mut depth, mut chars) = (Vec::new(), 0, json.chars().peekable());
    let mut expect_key = false;
    while let Some(c) = chars.next() {
        match c {
            '{' => {
                depth += 1;
                expect_key = depth == 1;
            }
            '}' => depth -= 1,
            ',' if depth == 1 => expect_key = true,
            '"' => {
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        c => s.push(c),
                    }
                }
                if expect_key {
                    keys.push(s);
                    expect_key = false;
                }
            }
            _ => {}
        }
    }
    keys
}

#[test]
fn root_option_presents_a_subtree() {
    let zk = shared_zk();
    let root = unique_root("rootopt");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/a/b"));
    other.create(&format!("{root}/a/b/leaf"), b"leaf");
    let mount = Mount::start(&zk, &["--root", &format!("{root}/a")]);
    assert_eq!(
        fs::read_to_string(mount.path().join("b/leaf")).expect("cat"),
        "leaf"
    );
    other.set(&format!("{root}/a/b/leaf"), b"leaf2");
    wait_until("change under --root visible", DEADLINE, || {
        fs::read_to_string(mount.path().join("b/leaf")).is_ok_and(|s| s == "leaf2")
    });
}

/// Whether the daemon's `/dev/fuse` descriptor is in non-blocking (polling)
/// mode, from `/proc/PID/fdinfo`.
fn device_polling(pid: u32) -> bool {
    device_state(pid).unwrap_or_else(|| panic!("daemon {pid} has no /dev/fuse descriptor"))
}

/// `None` while the daemon holds no `/dev/fuse` descriptor yet: with
/// `fusermount3` (auto_unmount) the mount appears before the helper has
/// passed the descriptor to the daemon.
fn device_state(pid: u32) -> Option<bool> {
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir");
    for fd in fds.flatten() {
        if fs::read_link(fd.path()).is_ok_and(|t| t == std::path::Path::new("/dev/fuse")) {
            let info = fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .expect("fdinfo");
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                .expect("flags line");
            return Some(flags & libc::O_NONBLOCK as u32 != 0);
        }
    }
    None
}

/// CPU time the process has used, in clock ticks (utime + stime).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which is in parentheses).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn the_device_is_polled_during_bursts_only() {
    let (_other, root, mount) = seeded("poll");
    let app = mount.path().join("config/app.json");
    let pid = mount.pid().expect("daemon pid");
    wait_until("the daemon holds the device", DEADLINE, || {
        device_state(pid).is_some()
    });
    assert!(!device_polling(pid), "a fresh mount sleeps on the device");
    // While reads keep coming the device is polled.
    let burst = {
        let app = app.clone();
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + Duration::from_millis(500);
            while std::time::Instant::now() < until {
                assert_eq!(fs::read(&app).expect("read").len(), 15);
            }
        })
    };
    wait_until("polling during a burst", DEADLINE, || device_polling(pid));
    burst.join().expect("burst");
    // Once they stop, it goes back to sleeping and costs no CPU.
    wait_until("sleeping after the burst", DEADLINE, || {
        !device_polling(pid)
    });
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - before;
    assert!(
        used <= 10,
        "an idle mount used {used} clock ticks in one second"
    );

    // With polling off the device is never polled; reads are the same.
    let zk = shared_zk();
    let quiet = Mount::start(&format!("{zk}{root}"), &["--busy-poll", "0"]);
    let qpid = quiet.pid().expect("daemon pid");
    wait_until("the daemon holds the device", DEADLINE, || {
        device_state(qpid).is_some()
    });
    for _ in 0..2000 {
        assert_eq!(
            fs::read(quiet.path().join("config/app.json"))
                .expect("read")
                .len(),
            15
        );
        assert!(!device_polling(qpid));
    }
}

/// The daemon's FUSE worker threads (`fuser-N`).
fn fuse_workers(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("fuser-"))
        })
        .count()
}

/// 500 ms of `getxattr` on one file of `m` (daemon `pid`): whether the
/// device was seen polled meanwhile.
fn getxattr_burst_polled(m: &Mount, pid: u32) -> bool {
    let f = m.path().join("config/app.json");
    let until = std::time::Instant::now() + Duration::from_millis(500);
    let mut polled = false;
    while std::time::Instant::now() < until {
        assert_eq!(xattr_string(&f, "user.zk.version"), "0");
        polled |= device_polling(pid);
    }
    polled
}

/// A read-only mount does not poll its device unless asked to, and one
/// worker serves it: a burst of requests that reach the daemon (`getxattr`
/// always does) leaves the device blocking throughout. The same burst on a
/// read-only mount with `--busy-poll 200us` is polled (so the check can see
/// polling at all).
#[test]
fn a_read_only_mount_is_not_polled_unless_asked() {
    let (_other, root, _mount) = seeded("poll-ro");
    let zk = shared_zk();
    let plain = Mount::start(&format!("{zk}{root}"), &["--read-only"]);
    let pid = plain.pid().expect("daemon pid");
    wait_until("the daemon holds the device", DEADLINE, || {
        device_state(pid).is_some()
    });
    // The device is opened before the worker thread is started and named:
    // a request answered shows it runs (fuser starts its workers together).
    fs::metadata(plain.path().join("config/app.json")).expect("stat through the mount");
    wait_until("the FUSE worker runs", DEADLINE, || fuse_workers(pid) >= 1);
    assert_eq!(fuse_workers(pid), 1, "one worker on a read-only mount");
    assert!(
        !getxattr_burst_polled(&plain, pid),
        "a read-only mount polled its device without --busy-poll"
    );
    let polled = Mount::start(
        &format!("{zk}{root}"),
        &["--read-only", "--busy-poll", "200us"],
    );
    let ppid = polled.pid().expect("daemon pid");
    wait_until("the daemon holds the device", DEADLINE, || {
        device_state(ppid).is_some()
    });
    assert!(
        getxattr_burst_polled(&polled, ppid),
        "--busy-poll 200us: the burst is polled"
    );
}

/// The mount root node deleted by another client: the mount point answers
/// `ENOENT` (nothing to show) while the session is fine, and one warn line
/// says why; created again, it is served again.
#[test]
fn a_deleted_mount_root_is_said_and_served_again_once_created() {
    let zk = shared_zk();
    let root = unique_root("root-gone");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/f"), b"x");
    let mount = Mount::start(&format!("{zk}{root}"), &[]);
    let m = mount.path();
    assert_eq!(fs::read(m.join("f")).expect("cat f"), b"x");
    other.delete(&format!("{root}/f"));
    other.delete(&root);
    wait_until("the mount point answers ENOENT", DEADLINE, || {
        fs::metadata(m).is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
    });
    assert_eq!(xattr_string(m, "user.zkfs.state"), "connected");
    let log = mount.log();
    let warned = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("the mount root node was deleted"))
        .count();
    assert_eq!(warned, 1, "{log}");
    other.ensure(&root);
    other.create(&format!("{root}/g"), b"y");
    wait_until("served again", DEADLINE, || {
        fs::read(m.join("g")).is_ok_and(|d| d == b"y")
    });
}
