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
