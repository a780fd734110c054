//! Service registrations from the shell (contract §6): ephemeral nodes owned
//! by the mount's session, re-created after expiry, live listings.

mod common;
#[path = "support/proxy.rs"]
mod proxy;
#[path = "support/zkops.rs"]
mod zkops;

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Mount, shared_zk, unique_root, wait_until};
use proxy::Proxy;
use zkops::{Other, xattr_string};
use zookeeper_client::CreateMode;

const DEADLINE: Duration = Duration::from_secs(20);

fn stat(other: &Other, path: &str) -> Option<(Vec<u8>, i64)> {
    let fut = other.client.get_data(path);
    match other
        .rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
        .expect("in time")
    {
        Ok((data, stat)) => Some((data, stat.ephemeral_owner)),
        Err(zookeeper_client::Error::NoNode) => None,
        Err(e) => panic!("get_data {path}: {e}"),
    }
}

fn session_of(mount: &Mount) -> i64 {
    let hex = xattr_string(mount.path(), "user.zkfs.session_id");
    i64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex session id")
}

#[test]
fn echo_registers_rm_deregisters_unmount_removes_all() {
    let zk = shared_zk();
    let root = unique_root("reg");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/services/web/servers"));
    let mut mount = Mount::start(
        &format!("{zk}{root}"),
        &["--ephemeral", "services/*/servers"],
    );
    let dir = mount.path().join("services/web/servers");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo '{{\"pid\": 4242}}' > '{}/10.0.0.5:8080'",
            dir.display()
        ))
        .output()
        .expect("sh");
    assert!(out.status.success());
    // The very first read by another client sees the complete JSON.
    let (data, owner) = stat(
        &other,
        &format!("{root}/services/web/servers/10.0.0.5:8080"),
    )
    .expect("registered");
    assert_eq!(data, b"{\"pid\": 4242}\n");
    assert_eq!(owner, session_of(&mount), "owned by the mount's session");
    fs::write(dir.join("10.0.0.6:8080"), b"{\"pid\": 7}").expect("second");
    fs::write(dir.join("10.0.0.7:8080"), b"{\"pid\": 8}").expect("third");
    assert_eq!(xattr_string(mount.path(), "user.zkfs.registrations"), "3");

    fs::remove_file(dir.join("10.0.0.6:8080")).expect("rm");
    assert!(
        stat(
            &other,
            &format!("{root}/services/web/servers/10.0.0.6:8080")
        )
        .is_none()
    );

    mount.unmount();
    for name in ["10.0.0.5:8080", "10.0.0.7:8080"] {
        assert!(
            stat(&other, &format!("{root}/services/web/servers/{name}")).is_none(),
            "{name} vanished at once with the session"
        );
    }
    assert!(
        stat(&other, &format!("{root}/services/web/servers")).is_some(),
        "parents stay"
    );
}

/// Another client deletes a registration while the mount's session lives
/// (a cleanup script, `zkCli delete`): the registration is the mount's
/// desired state until `rm` through the mount, so it is put back, with its
/// data, on the same session (SEMANTICS, "Registrations").
#[test]
fn a_registration_another_client_deletes_is_put_back() {
    let zk = shared_zk();
    let root = unique_root("reg-deleted");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/services/web/servers"));
    let mount = Mount::start(
        &format!("{zk}{root}"),
        &["--ephemeral", "services/*/servers"],
    );
    let dir = mount.path().join("services/web/servers");
    fs::write(dir.join("10.0.0.5:8080"), b"{\"pid\": 5}").expect("register");
    let node = format!("{root}/services/web/servers/10.0.0.5:8080");
    assert!(stat(&other, &node).is_some());
    other.delete(&node);
    wait_until("the registration is back", DEADLINE, || {
        stat(&other, &node)
            .is_some_and(|(data, owner)| data == b"{\"pid\": 5}" && owner == session_of(&mount))
    });
    assert_eq!(xattr_string(mount.path(), "user.zkfs.registrations"), "1");
}

#[test]
fn registrations_come_back_after_session_expiry() {
    let zk = shared_zk();
    let root = unique_root("reg-expiry");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/svc/api/servers"));
    let proxy = Proxy::start(&zk);
    let mount = Mount::start(
        &format!("{}{root}", proxy.address()),
        &[
            "--ephemeral",
            "svc/*/servers",
            "--session-timeout",
            "2s",
            "--op-timeout",
            "1s",
        ],
    );
    let node = format!("{root}/svc/api/servers/10.1.0.1:9000");
    fs::write(
        mount.path().join("svc/api/servers/10.1.0.1:9000"),
        b"{\"pid\": 1}",
    )
    .expect("register");
    let first = session_of(&mount);
    assert_eq!(stat(&other, &node).map(|s| s.1), Some(first));

    proxy.cut();
    // The server expires the session and drops the registration.
    wait_until("registration expired", DEADLINE, || {
        stat(&other, &node).is_none()
    });
    proxy.restore();
    wait_until(
        "re-created by the new session",
        Duration::from_secs(30),
        || {
            stat(&other, &node).is_some_and(|(data, owner)| {
                data == b"{\"pid\": 1}" && owner != first && owner != 0
            })
        },
    );
    assert_eq!(stat(&other, &node).map(|s| s.1), Some(session_of(&mount)));
}

#[test]
fn listings_follow_other_clients_registrations() {
    let zk = shared_zk();
    let root = unique_root("reg-list");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/servers"));
    let mount = Mount::start(&format!("{zk}{root}"), &[]);
    let dir = mount.path().join("servers");
    let listing = || -> BTreeSet<String> {
        fs::read_dir(&dir)
            .expect("readdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(listing().is_empty());
    let registrar = Other::connect(&zk);
    let names: Vec<String> = (0..100)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250))
        .collect();
    for name in &names {
        registrar.create_mode(
            &format!("{root}/servers/{name}"),
            b"{\"pid\": 1}",
            CreateMode::Ephemeral,
        );
    }
    let all: BTreeSet<String> = names.iter().cloned().collect();
    wait_until("100 registrations listed", DEADLINE, || listing() == all);
    for name in names.iter().step_by(2) {
        registrar.delete(&format!("{root}/servers/{name}"));
    }
    let half: BTreeSet<String> = names.iter().skip(1).step_by(2).cloned().collect();
    wait_until("deregistrations listed", DEADLINE, || listing() == half);
    assert!(
        fs::metadata(dir.join(&names[0])).is_err(),
        "vanished registration is ENOENT"
    );

    // An open handle to a registration that vanishes reads its last data
    // and fails writes with ESTALE.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(&names[1]))
        .expect("open");
    drop(registrar); // its session ends: all its registrations vanish
    wait_until("all vanished", DEADLINE, || listing().is_empty());
    let mut content = String::new();
    f.read_to_string(&mut content).expect("read last data");
    assert_eq!(content, "{\"pid\": 1}");
    f.write_all(b"x").expect("buffered");
    assert_eq!(
        f.sync_all().err().and_then(|e| e.raw_os_error()),
        Some(libc::ESTALE)
    );
}

/// The pid of the only child of `parent` (from /proc, not from zkfs).
fn only_child(parent: u32) -> Option<u32> {
    let text = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    let pids: Vec<u32> = text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    match pids.as_slice() {
        [pid] => Some(*pid),
        _ => None,
    }
}

fn kill9(pid: u32) {
    // SAFETY: sending a signal to a process this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// A mount with `svc/*/servers` as registration directories and a wrapper
/// `zkfs register <dir>/<name> -- sleep 60` started on it.
struct Registered {
    other: Other,
    root: String,
    mount: Mount,
    wrapper: std::process::Child,
    sleep_pid: u32,
    node: String,
}

fn start_registered(tag: &str) -> Registered {
    let zk = shared_zk();
    let root = unique_root(tag);
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/svc/api/servers"));
    let mount = Mount::start(&format!("{zk}{root}"), &["--ephemeral", "svc/*/servers"]);
    let file = mount.path().join("svc/api/servers/10.2.0.1:80");
    let wrapper = Command::new(common::zkfs_bin())
        .arg("register")
        .arg(&file)
        .args(["--", "sleep", "60"])
        .spawn()
        .expect("zkfs register");
    let mut sleep_pid = None;
    wait_until("sleep started under the wrapper", DEADLINE, || {
        sleep_pid = only_child(wrapper.id()).filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "sleep\n")
        });
        sleep_pid.is_some()
    });
    let node = format!("{root}/svc/api/servers/10.2.0.1:80");
    let sleep_pid = sleep_pid.unwrap_or_default();
    Registered {
        other,
        root,
        mount,
        wrapper,
        sleep_pid,
        node,
    }
}

#[test]
fn register_holds_while_cmd_runs_and_kill9_of_cmd_removes_it() {
    let mut r = start_registered("register-cmd");
    let expected = format!("{{\"pid\": {}}}", r.sleep_pid);
    // CMD runs only once the registration exists.
    let (data, owner) = stat(&r.other, &r.node).expect("registered while sleep runs");
    assert_eq!(String::from_utf8_lossy(&data), expected);
    assert_eq!(owner, session_of(&r.mount));
    kill9(r.sleep_pid);
    let killed = std::time::Instant::now();
    wait_until(
        "registration gone after kill -9 of CMD",
        Duration::from_secs(1),
        || stat(&r.other, &r.node).is_none(),
    );
    eprintln!("gone {:?} after kill -9", killed.elapsed());
    let status = r.wrapper.wait().expect("wrapper exits");
    assert_eq!(
        status.code(),
        Some(128 + libc::SIGKILL),
        "exit status is CMD's"
    );
    assert_eq!(xattr_string(r.mount.path(), "user.zkfs.registrations"), "0");
    let _ = r.root;
}

/// A second `zkfs register` for a PATH a running wrapper holds is refused
/// before it changes anything: it took the registration over (its data),
/// and deleted it when its own command ended while the first still ran.
#[test]
fn a_second_register_for_a_held_path_is_refused_and_changes_nothing() {
    let mut r = start_registered("register-twice");
    let expected = format!("{{\"pid\": {}}}", r.sleep_pid);
    assert_eq!(
        stat(&r.other, &r.node).map(|(d, _)| d),
        Some(expected.clone().into_bytes())
    );
    let file = r.mount.path().join("svc/api/servers/10.2.0.1:80");
    let out = Command::new(common::zkfs_bin())
        .arg("register")
        .args(["--data", "second"])
        .arg(&file)
        .args(["--", "true"])
        .output()
        .expect("zkfs register");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("held by another descriptor"), "{err}");
    assert_eq!(
        stat(&r.other, &r.node).map(|(d, _)| d),
        Some(expected.into_bytes()),
        "the first wrapper's registration is untouched"
    );
    kill9(r.sleep_pid);
    let _ = r.wrapper.wait();
    wait_until("gone with the first wrapper", DEADLINE, || {
        stat(&r.other, &r.node).is_none()
    });
}

#[test]
fn register_kill9_of_the_wrapper_removes_it() {
    let mut r = start_registered("register-wrapper");
    assert!(stat(&r.other, &r.node).is_some(), "registered");
    kill9(r.wrapper.id());
    let _ = r.wrapper.wait();
    wait_until(
        "registration gone after kill -9 of the wrapper",
        Duration::from_secs(1),
        || stat(&r.other, &r.node).is_none(),
    );
    kill9(r.sleep_pid);
    // Not re-created by the supervisor later either.
    wait_until("the mount counts no registration", DEADLINE, || {
        xattr_string(r.mount.path(), "user.zkfs.registrations") == "0"
    });
    assert!(stat(&r.other, &r.node).is_none());
}

#[test]
fn register_passes_data_and_exit_status_and_refuses_non_registrations() {
    let zk = shared_zk();
    let root = unique_root("register-data");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/svc/api/servers"));
    let mount = Mount::start(&format!("{zk}{root}"), &["--ephemeral", "svc/*/servers"]);
    let file = mount.path().join("svc/api/servers/10.3.0.1:80");
    let node = format!("{root}/svc/api/servers/10.3.0.1:80");
    let probe = format!(
        "{}/probe",
        common::TempDir::new("register").into_path().display()
    );
    // CMD reads the node through another client's eyes: its data file copy.
    let out = Command::new(common::zkfs_bin())
        .arg("register")
        .args(["--data", "{\"port\": 80}"])
        .arg(&file)
        .args(["--", "sh", "-c"])
        .arg(format!("cat '{}' > '{probe}'; exit 3", file.display()))
        .output()
        .expect("zkfs register");
    assert_eq!(out.status.code(), Some(3), "CMD's exit status");
    assert_eq!(fs::read_to_string(&probe).expect("probe"), "{\"port\": 80}");
    assert!(stat(&other, &node).is_none(), "removed when CMD exited");

    // Outside an --ephemeral directory: refused, CMD never runs, nothing left.
    other.ensure(&format!("{root}/plain"));
    let marker = format!("{probe}.ran");
    let out = Command::new(common::zkfs_bin())
        .arg("register")
        .arg(mount.path().join("plain/x"))
        .args(["--", "touch", &marker])
        .output()
        .expect("zkfs register");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a registration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&marker).exists(), "CMD did not run");
    assert!(stat(&other, &format!("{root}/plain/x")).is_none());

    // Another client's registration under that name: refused, not touched.
    let taken = format!("{root}/svc/api/servers/10.3.0.2:80");
    other.create_mode(&taken, b"theirs", CreateMode::Ephemeral);
    let out = Command::new(common::zkfs_bin())
        .arg("register")
        .arg(mount.path().join("svc/api/servers/10.3.0.2:80"))
        .args(["--", "touch", &marker])
        .output()
        .expect("zkfs register");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a registration of this mount"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&marker).exists(), "CMD did not run");
    assert_eq!(
        stat(&other, &taken),
        Some((b"theirs".to_vec(), other.session_id()))
    );

    // A command that cannot be run: one line naming it and why, status 127.
    let out = Command::new(common::zkfs_bin())
        .arg("register")
        .arg(&file)
        .args(["--", "/nonexistent/zkfs-cmd"])
        .output()
        .expect("zkfs register");
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "zkfs: cannot run /nonexistent/zkfs-cmd: No such file or directory\n"
    );
    assert!(stat(&other, &node).is_none(), "removed when CMD failed");

    // Not in a zkfs mount at all: refused before anything is created.
    let local = format!("{probe}.local");
    let out = Command::new(common::zkfs_bin())
        .arg("register")
        .arg(&local)
        .args(["--", "touch", &marker])
        .output()
        .expect("zkfs register");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a directory of a zkfs mount"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!Path::new(&marker).exists(), "CMD did not run");
    assert!(!Path::new(&local).exists(), "nothing created");
}

/// The descriptor mechanism without the wrapper, as doc/SEMANTICS.md shows
/// it for a shell: open, write, `setfattr user.zkfs.hold`, exec the service
/// (which inherits the descriptor). The registration lives while the service
/// runs and goes with it, `kill -9` included.
#[test]
fn held_descriptor_from_a_shell_lives_as_long_as_the_process() {
    let zk = shared_zk();
    let root = unique_root("hold-shell");
    let other = Other::connect(&zk);
    other.ensure(&format!("{root}/svc/api/servers"));
    let mount = Mount::start(&format!("{zk}{root}"), &["--ephemeral", "svc/*/servers"]);
    let file = mount.path().join("svc/api/servers/10.4.0.1:80");
    let node = format!("{root}/svc/api/servers/10.4.0.1:80");
    let script = format!(
        "exec 3>'{f}'; printf '{{\"pid\": %d}}' $$ >&3; \
         setfattr -n user.zkfs.hold -v 1 '{f}' || exit 9; exec sleep 60",
        f = file.display()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .spawn()
        .expect("sh");
    let expected = format!("{{\"pid\": {}}}", child.id());
    wait_until("registered with its data", DEADLINE, || {
        stat(&other, &node).is_some_and(|(d, _)| d == expected.as_bytes())
    });
    wait_until("the service runs, holding the descriptor", DEADLINE, || {
        fs::read_to_string(format!("/proc/{}/comm", child.id())).is_ok_and(|c| c == "sleep\n")
    });
    assert!(stat(&other, &node).is_some(), "still registered");
    // A hold refused: not a registration directory.
    other.ensure(&format!("{root}/plain"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 3>'{f}'; echo x >&3; setfattr -n user.zkfs.hold -v 1 '{f}'",
            f = mount.path().join("plain/x").display()
        ))
        .output()
        .expect("sh");
    assert!(!out.status.success(), "hold outside --ephemeral refused");
    kill9(child.id());
    let _ = child.wait();
    wait_until(
        "registration gone after kill -9 of the holder",
        Duration::from_secs(1),
        || stat(&other, &node).is_none(),
    );
    assert_eq!(xattr_string(mount.path(), "user.zkfs.registrations"), "0");
}
