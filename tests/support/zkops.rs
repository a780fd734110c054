#![allow(dead_code)] // each test binary uses a subset
//! Small synchronous wrappers used by the integration tests: a separate
//! ZooKeeper client driven from plain test threads, shell-tool helpers and
//! xattr reads through the kernel.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use zookeeper_client::{Acls, Client, CreateMode};

use super::common;

/// A separate ZooKeeper client ("another client") with its own runtime.
pub struct Other {
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
}

impl Other {
    pub fn connect(connect: &str) -> Other {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = rt.block_on(common::client(connect));
        Other { rt, client }
    }

    pub fn ensure(&self, path: &str) {
        self.rt.block_on(common::ensure_path(&self.client, path));
    }

    pub fn create(&self, path: &str, data: &[u8]) {
        self.create_mode(path, data, CreateMode::Persistent);
    }

    pub fn create_mode(&self, path: &str, data: &[u8], mode: CreateMode) {
        let options = mode.with_acls(Acls::anyone_all());
        let fut = self.client.create(path, data, &options);
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
            .unwrap_or_else(|_| panic!("create {path}: timed out"))
            .unwrap_or_else(|e| panic!("create {path}: {e}"));
    }

    pub fn set(&self, path: &str, data: &[u8]) {
        let fut = self.client.set_data(path, data, None);
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
            .unwrap_or_else(|_| panic!("set {path}: timed out"))
            .unwrap_or_else(|e| panic!("set {path}: {e}"));
    }

    /// The node's data and version; panics if it cannot be read in 20 s.
    pub fn get(&self, path: &str) -> (Vec<u8>, i32) {
        let fut = self.client.get_data(path);
        let (data, stat) = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
            .unwrap_or_else(|_| panic!("get {path}: timed out"))
            .unwrap_or_else(|e| panic!("get {path}: {e}"));
        (data, stat.version)
    }

    /// The node's children, sorted; panics if they cannot be read in 20 s.
    pub fn children(&self, path: &str) -> Vec<String> {
        let fut = self.client.list_children(path);
        let mut children = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
            .unwrap_or_else(|_| panic!("children of {path}: timed out"))
            .unwrap_or_else(|e| panic!("children of {path}: {e}"));
        children.sort();
        children
    }

    pub fn delete(&self, path: &str) {
        let fut = self.client.delete(path, None);
        self.rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(20), fut).await })
            .unwrap_or_else(|_| panic!("delete {path}: timed out"))
            .unwrap_or_else(|e| panic!("delete {path}: {e}"));
    }

    pub fn session_id(&self) -> i64 {
        self.client.session_id().0
    }
}

/// Run a shell tool and return its stdout; panics with stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Read an extended attribute through the kernel (getxattr(2)).
pub fn xattr(path: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    let n = CString::new(name).expect("name without NUL");
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid C strings and a buffer of the stated size.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(len as usize);
    Ok(buf)
}

pub fn xattr_string(path: &Path, name: &str) -> String {
    String::from_utf8_lossy(
        &xattr(path, name).unwrap_or_else(|e| panic!("getxattr {name} on {}: {e}", path.display())),
    )
    .into_owned()
}

/// ZooKeeper requests the mount has sent so far (root xattr).
pub fn requests(mountpoint: &Path) -> u64 {
    xattr_string(mountpoint, "user.zkfs.requests")
        .parse()
        .expect("numeric request counter")
}
