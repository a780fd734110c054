//! `zkfs status` and `zkfs unmount`: talk to a running mount through its
//! root's `user.zkfs.*` extended attributes and the kernel's umount.
//! Must not depend on the daemon's internals beyond those attribute names.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::daemon::{Failure, is_mount_point, now_ms};

const STATUS_KEYS: &[&str] = &[
    "state",
    "session_id",
    "server",
    "cached_nodes",
    "cached_bytes",
    "last_contact",
    "requests",
    "pid",
    "kernel_requests",
    "registrations",
    "registrations_pending",
    "registrations_held_by_others",
];

fn getxattr(path: &Path, name: &str) -> Result<String, std::io::Error> {
    let cpath = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let cname = CString::new(name).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the stated length.
    let n = unsafe {
        libc::getxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn describe(path: &Path, e: &std::io::Error) -> Failure {
    let message = match e.raw_os_error() {
        Some(libc::ENOTCONN) => format!(
            "{}: the zkfs daemon is gone (transport endpoint not connected); run `zkfs unmount {}`",
            path.display(),
            path.display()
        ),
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => {
            format!("{} is not a zkfs mount", path.display())
        }
        _ => format!("{}: {e}", path.display()),
    };
    Failure { message, code: 1 }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `zkfs status`: Ok(true) when connected.
pub fn status(mountpoint: &Path, json: bool) -> Result<bool, Failure> {
    let mut values = Vec::new();
    for key in STATUS_KEYS {
        let value = getxattr(mountpoint, &format!("user.zkfs.{key}"))
            .map_err(|e| describe(mountpoint, &e))?;
        values.push((*key, value));
    }
    let get = |k: &str| {
        values
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let last_contact: u128 = get("last_contact").parse().unwrap_or(0);
    let age_ms = now_ms().saturating_sub(last_contact);
    let connected = get("state") == "connected";
    if json {
        let mut fields: Vec<String> = Vec::new();
        for (k, v) in &values {
            let numeric = matches!(
                *k,
                "cached_nodes" | "cached_bytes" | "last_contact" | "requests" | "pid"
            ) || k.starts_with("registrations");
            if numeric && v.parse::<u128>().is_ok() {
                fields.push(format!("\"{k}\":{v}"));
            } else {
                fields.push(format!("\"{k}\":\"{}\"", json_escape(v)));
            }
        }
        fields.push(format!("\"last_contact_age_ms\":{age_ms}"));
        fields.push(format!(
            "\"mountpoint\":\"{}\"",
            json_escape(&mountpoint.to_string_lossy())
        ));
        println!("{{{}}}", fields.join(","));
    } else {
        println!("mountpoint:   {}", mountpoint.display());
        println!("state:        {}", get("state"));
        println!("session:      {}", get("session_id"));
        println!("server:       {}", get("server"));
        println!(
            "cache:        {} nodes, {} bytes of data",
            get("cached_nodes"),
            get("cached_bytes")
        );
        println!("last contact: {:.1} s ago", age_ms as f64 / 1000.0);
        println!("requests:     {} to ZooKeeper", get("requests"));
        println!("kernel:       {}", get("kernel_requests"));
        println!("daemon pid:   {}", get("pid"));
        println!(
            "registrations: {} owned, {} pending, {} held by another session",
            get("registrations"),
            get("registrations_pending"),
            get("registrations_held_by_others")
        );
    }
    Ok(connected)
}

/// Whether `pid` is running (a zombie waiting for its parent counts as gone).
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// `zkfs unmount`: unmount, then wait (bounded) for the daemon to exit so its
/// ZooKeeper session is closed when we return.
pub fn unmount(mountpoint: &Path) -> Result<(), Failure> {
    let fail = |message: String| Failure { message, code: 1 };
    let canonical = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    if !is_mount_point(&canonical) {
        return Err(fail(format!("{} is not mounted", mountpoint.display())));
    }
    let pid: Option<i32> = getxattr(&canonical, "user.zkfs.pid")
        .ok()
        .and_then(|p| p.parse().ok());
    let cpath = CString::new(canonical.as_os_str().as_bytes())
        .map_err(|_| fail(format!("{}: invalid path", mountpoint.display())))?;
    // SAFETY: a valid C string.
    let rc = unsafe { libc::umount2(cpath.as_ptr(), 0) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EPERM) => {
                let out = std::process::Command::new("fusermount3")
                    .arg("-u")
                    .arg(&canonical)
                    .output()
                    .map_err(|e| fail(format!("cannot run fusermount3: {e}")))?;
                if !out.status.success() {
                    return Err(fail(format!(
                        "cannot unmount {}: {}",
                        mountpoint.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
            Some(libc::EBUSY) => {
                return Err(fail(format!(
                    "cannot unmount {}: busy (a process has a file or its working directory there)",
                    mountpoint.display()
                )));
            }
            _ => {
                return Err(fail(format!(
                    "cannot unmount {}: {err}",
                    mountpoint.display()
                )));
            }
        }
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}
