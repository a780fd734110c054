//! A 3-server ensemble losing one server at a time (the leader among them):
//! the mount fails over to another server in the connection string, keeps
//! serving reads, accepts writes and sees other clients' changes (§8).

mod common;
#[path = "support/zkops.rs"]
mod zkops;

use std::fs;
use std::io::Write;
use std::time::Duration;

use common::{Ensemble, Mount, unique_root, wait_until};
use zkops::{Other, xattr_string};

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn mount_carries_on_while_each_server_in_turn_is_down() {
    let mut ensemble = Ensemble::start();
    let zk = ensemble.connect_string();
    let root = unique_root("failover");
    let other = Other::connect(&zk);
    other.ensure(&root);
    other.create(&format!("{root}/cfg"), b"v-start");
    let mount = Mount::start(
        &format!("{zk}{root}"),
        &["--session-timeout", "20s", "--op-timeout", "15s"],
    );
    let m = mount.path();
    let session = xattr_string(m, "user.zkfs.session_id");
    assert_eq!(fs::read_to_string(m.join("cfg")).expect("cat"), "v-start");
    let leader = ensemble.leader().expect("a leader");
    eprintln!("leader is server {leader}");

    for i in 0..3 {
        ensemble.server(i).stop();
        // Cached reads go on whatever the connection does.
        assert!(fs::read_to_string(m.join("cfg")).is_ok());
        // A write through the mount is applied once a server takes over.
        let mine = format!("mine-{i}");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join("cfg"))
            .expect("open for write");
        f.write_all(mine.as_bytes()).expect("buffered");
        f.sync_all().expect("write accepted after failover");
        drop(f);
        // Another client's change becomes visible.
        let theirs = format!("theirs-{i}");
        other.set(&format!("{root}/cfg"), theirs.as_bytes());
        wait_until("change visible after failover", DEADLINE, || {
            fs::read_to_string(m.join("cfg")).is_ok_and(|s| s == theirs)
        });
        ensemble.server(i).start_again();
    }
    assert_eq!(
        xattr_string(m, "user.zkfs.session_id"),
        session,
        "the same session throughout"
    );
    assert_eq!(xattr_string(m, "user.zkfs.state"), "connected");
}
