//! `zkfs status` and `zkfs unmount`: talk to a running mount through its
//! root's `user.zkfs.*` extended attributes and the kernel's umount.
//! Must not depend on the daemon's internals beyond those attribute names.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::StatusFormat;
use crate::daemon::{Failure, ZKFS_FSTYPE, is_mount_point, mounted_fstype, now_ms};

/// How long `status` and `unmount` wait for the mount's daemon to answer
/// (its attributes are requests to it). A stopped or wedged daemon never
/// answers, and the kernel would keep the caller waiting for ever.
const DAEMON_ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// Run `ask` (calls that reach the daemon through the mount) on a thread of
/// its own and wait at most `limit`; `None` when it did not return in time.
/// The thread is left waiting in the kernel; the process's exit ends it
/// (a FUSE request's wait is killable).
fn within<T: Send + 'static>(
    limit: Duration,
    ask: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("zkfs-ask".into())
        .spawn(move || {
            let _ = tx.send(ask());
        })
        .ok()?;
    rx.recv_timeout(limit).ok()
}

fn not_answering(mountpoint: &Path) -> Failure {
    Failure {
        message: format!(
            "{}: the zkfs daemon does not answer (no reply within {DAEMON_ANSWER_LIMIT:?}: \
             stopped or wedged); `zkfs unmount {}` unmounts it anyway",
            mountpoint.display(),
            mountpoint.display()
        ),
        code: 1,
    }
}

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
];

/// The value of the extended attribute `name` of `path` (at most 4 KiB).
pub fn getxattr(path: &Path, name: &str) -> Result<String, std::io::Error> {
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

/// Attributes shown by mounts of older zkfs versions may lack (never fatal).
const OPTIONAL_KEYS: &[&str] = &[
    "reconnects",
    "session_expiries",
    "registrations",
    "registrations_pending",
    "registrations_held_by_others",
    "source",
    "snapshot_time",
    "opens",
    "held_versions",
    "held_bytes",
    "connected_since",
    "last_resync",
];

/// Attributes whose values are plain counts (numbers in JSON).
const NUMERIC_KEYS: &[&str] = &[
    "cached_nodes",
    "cached_bytes",
    "last_contact",
    "requests",
    "pid",
    "reconnects",
    "session_expiries",
    "registrations",
    "snapshot_time",
    "held_versions",
    "held_bytes",
    "connected_since",
    "last_resync",
];

/// `lookup=3 getattr=0 ...` as (operation, count) pairs.
fn kernel_request_counts(summary: &str) -> Vec<(&str, u64)> {
    summary
        .split_whitespace()
        .filter_map(|pair| {
            let (op, count) = pair.split_once('=')?;
            Some((op, count.parse().ok()?))
        })
        .collect()
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The status as Prometheus text exposition format (version 0.0.4), for
/// node_exporter's textfile collector. Every sample carries `mountpoint`.
fn prometheus(mountpoint: &Path, get: &dyn Fn(&str) -> Option<String>, age_ms: u128) -> String {
    let mp = format!(
        "mountpoint=\"{}\"",
        label_escape(&mountpoint.to_string_lossy())
    );
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, String)>| {
        if samples.is_empty() {
            return;
        }
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            out.push_str(&format!("{name}{{{mp}{labels}}} {value}\n"));
        }
    };
    let plain = |key: &str| -> Vec<(String, String)> {
        get(key)
            .filter(|v| v.parse::<u64>().is_ok())
            .map(|v| vec![(String::new(), v)])
            .unwrap_or_default()
    };
    let connected = get("state").as_deref() == Some("connected");
    let state = get("state").unwrap_or_default();
    metric(
        "zkfs_connected",
        "gauge",
        "1 while the ZooKeeper session is connected.",
        vec![(String::new(), u8::from(connected).to_string())],
    );
    metric(
        "zkfs_session_state",
        "gauge",
        "The session's state (1 for the current one).",
        vec![(format!(",state=\"{}\"", label_escape(&state)), "1".into())],
    );
    metric(
        "zkfs_session_expiries_total",
        "counter",
        "Expired ZooKeeper sessions replaced by a new one.",
        plain("session_expiries"),
    );
    metric(
        "zkfs_reconnects_total",
        "counter",
        "Reconnections to ZooKeeper within the same session.",
        plain("reconnects"),
    );
    let seconds = |key: &str| -> Vec<(String, String)> {
        get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(|ms| vec![(String::new(), format!("{:.3}", ms as f64 / 1000.0))])
            .unwrap_or_default()
    };
    metric(
        "zkfs_connected_since_timestamp_seconds",
        "gauge",
        "When the session last became connected (Unix time).",
        seconds("connected_since"),
    );
    metric(
        "zkfs_last_resync_timestamp_seconds",
        "gauge",
        "When the last resync that compared every cached node ended (Unix time).",
        seconds("last_resync"),
    );
    metric(
        "zkfs_cached_nodes",
        "gauge",
        "Nodes in the cache.",
        plain("cached_nodes"),
    );
    metric(
        "zkfs_cached_bytes",
        "gauge",
        "Bytes of node data in the cache.",
        plain("cached_bytes"),
    );
    metric(
        "zkfs_zookeeper_requests_total",
        "counter",
        "Requests sent to ZooKeeper.",
        plain("requests"),
    );
    let kernel = get("kernel_requests").unwrap_or_default();
    metric(
        "zkfs_kernel_requests_total",
        "counter",
        "Requests from the kernel, by operation.",
        kernel_request_counts(&kernel)
            .into_iter()
            .map(|(op, n)| (format!(",op=\"{}\"", label_escape(op)), n.to_string()))
            .collect(),
    );
    metric(
        "zkfs_last_contact_age_seconds",
        "gauge",
        "Seconds since the last contact with ZooKeeper (0 while connected).",
        vec![(String::new(), format!("{:.3}", age_ms as f64 / 1000.0))],
    );
    metric(
        "zkfs_held_versions",
        "gauge",
        "Superseded file versions kept for readers (mounts the kernel opens by itself).",
        plain("held_versions"),
    );
    metric(
        "zkfs_registrations",
        "gauge",
        "Registrations this mount keeps, by state (owned by its current \
         session, pending re-creation, held by another session).",
        [
            ("owned", "registrations"),
            ("pending", "registrations_pending"),
            ("held_by_others", "registrations_held_by_others"),
        ]
        .into_iter()
        .filter_map(|(state, key)| get(key).map(|v| (format!(",state=\"{state}\""), v)))
        .collect(),
    );
    out
}

/// The status attributes of the mount at `mountpoint`, in `STATUS_KEYS`
/// order, then those of `OPTIONAL_KEYS` it has.
fn status_values(mountpoint: &Path) -> Result<Vec<(&'static str, String)>, Failure> {
    let mut values = Vec::new();
    for key in STATUS_KEYS {
        let value = getxattr(mountpoint, &format!("user.zkfs.{key}"))
            .map_err(|e| describe(mountpoint, &e))?;
        values.push((*key, value));
    }
    for key in OPTIONAL_KEYS {
        if let Ok(value) = getxattr(mountpoint, &format!("user.zkfs.{key}")) {
            values.push((*key, value));
        }
    }
    Ok(values)
}

/// `zkfs status`: Ok(true) when connected.
pub fn status(mountpoint: &Path, format: StatusFormat) -> Result<bool, Failure> {
    let asked = mountpoint.to_path_buf();
    let values = within(DAEMON_ANSWER_LIMIT, move || status_values(&asked))
        .ok_or_else(|| not_answering(mountpoint))??;
    let lookup = |k: &str| {
        values
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.clone())
    };
    let get = |k: &str| lookup(k).unwrap_or_default();
    let last_contact: u128 = get("last_contact").parse().unwrap_or(0);
    let age_ms = now_ms().saturating_sub(last_contact);
    let connected = get("state") == "connected";
    match format {
        StatusFormat::Prometheus => print!("{}", prometheus(mountpoint, &lookup, age_ms)),
        StatusFormat::Json => {
            let mut fields: Vec<String> = Vec::new();
            for (k, v) in &values {
                if *k == "kernel_requests" {
                    let counts: Vec<String> = kernel_request_counts(v)
                        .into_iter()
                        .map(|(op, n)| format!("\"{}\":{n}", json_escape(op)))
                        .collect();
                    fields.push(format!("\"{k}\":{{{}}}", counts.join(",")));
                } else if (NUMERIC_KEYS.contains(k) || k.starts_with("registrations"))
                    && v.parse::<u128>().is_ok()
                {
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
        }
        StatusFormat::Text => {
            println!("mountpoint:   {}", mountpoint.display());
            println!("state:        {}", get("state"));
            if let Some(taken) = lookup("snapshot_time").and_then(|t| t.parse::<u128>().ok()) {
                println!(
                    "source:       from cache (--cache-dir snapshot of {:.1} s ago; \
                     resynchronised when ZooKeeper answers)",
                    now_ms().saturating_sub(taken) as f64 / 1000.0
                );
            }
            println!("session:      {}", get("session_id"));
            println!("server:       {}", get("server"));
            println!(
                "cache:        {} nodes, {} bytes of data",
                get("cached_nodes"),
                get("cached_bytes")
            );
            println!("last contact: {:.1} s ago", age_ms as f64 / 1000.0);
            println!("requests:     {} to ZooKeeper", get("requests"));
            if let (Some(r), Some(e)) = (lookup("reconnects"), lookup("session_expiries")) {
                println!("reconnects:   {r} (session expiries: {e})");
            }
            let ago = |key: &str| {
                lookup(key)
                    .and_then(|t| t.parse::<u128>().ok())
                    .filter(|t| *t > 0)
                    .map(|t| now_ms().saturating_sub(t) as f64 / 1000.0)
            };
            if let Some(since) = ago("connected_since").filter(|_| connected) {
                println!("connected:    for {since:.1} s");
            }
            if let Some(last) = ago("last_resync") {
                println!("last resync:  {last:.1} s ago");
            }
            if let Some(r) = lookup("registrations") {
                println!(
                    "registrations: {r} owned, {} pending, {} held by another session",
                    get("registrations_pending"),
                    get("registrations_held_by_others")
                );
            }
            println!("kernel:       {}", get("kernel_requests"));
            println!("daemon pid:   {}", get("pid"));
        }
    }
    Ok(connected)
}

/// The canonical path of mount point `path` without entering the mount:
/// its parent resolved, its own name appended.
fn outside_path(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            parent
                .canonicalize()
                .map(|p| p.join(name))
                .unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
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
/// ZooKeeper session is closed when we return. `lazy`: detach even if busy
/// (MNT_DETACH, `fusermount3 -u -z`); the daemon then exits once the last
/// file on the mount is closed, so it is not waited for.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), Failure> {
    let fail = |message: String| Failure { message, code: 1 };
    // Resolving the path and asking for the daemon's pid reach the daemon;
    // one that does not answer is unmounted all the same, just not waited
    // for.
    let given = mountpoint.to_path_buf();
    let asked = within(DAEMON_ANSWER_LIMIT, move || {
        let canonical = given.canonicalize().unwrap_or(given);
        let pid: Option<i32> = getxattr(&canonical, "user.zkfs.pid")
            .ok()
            .and_then(|p| p.parse().ok());
        (canonical, pid)
    });
    let (canonical, pid, lazy) = match asked {
        Some((canonical, pid)) => (canonical, pid, lazy),
        None => {
            // The thread that asked is still inside the mount, which keeps
            // it busy: only a lazy detach can take it away now.
            eprintln!(
                "zkfs: {}: the daemon does not answer (stopped or wedged); detaching the mount \
                 lazily (gone from the tree now; the daemon keeps it until it exits)",
                mountpoint.display()
            );
            (outside_path(mountpoint), None, true)
        }
    };
    if !is_mount_point(&canonical) {
        return Err(fail(format!("{} is not mounted", mountpoint.display())));
    }
    // Only a zkfs mount: a typo (with --lazy, as root) must not detach /var.
    match mounted_fstype(&canonical) {
        Some(fstype) if fstype == ZKFS_FSTYPE => {}
        other => {
            return Err(fail(format!(
                "{} is not a zkfs mount ({}); not unmounting it",
                mountpoint.display(),
                other.unwrap_or_else(|| "unknown type".into())
            )));
        }
    }
    let cpath = CString::new(canonical.as_os_str().as_bytes())
        .map_err(|_| fail(format!("{}: invalid path", mountpoint.display())))?;
    // SAFETY: a valid C string.
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    let rc = unsafe { libc::umount2(cpath.as_ptr(), flags) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EPERM) => {
                let mut command = std::process::Command::new("fusermount3");
                command.arg("-u");
                if lazy {
                    command.arg("-z");
                }
                let out = command
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
                    "cannot unmount {}: busy (a process has a file or its working directory there; --lazy detaches it anyway)",
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
        // A lazily detached mount that is still busy keeps its daemon until
        // the last file is closed: wait only for the quick, idle case.
        let wait = if lazy {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(10)
        };
        let deadline = Instant::now() + wait;
        while process_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if lazy && process_alive(pid) {
            // Not an error (the mount is gone from the tree), but not the
            // end the help promises either: say what is left.
            eprintln!(
                "zkfs: {} detached; its daemon (pid {pid}) keeps serving the files still open \
                 there and closes its ZooKeeper session when the last one is closed",
                mountpoint.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_label_values_are_escaped() {
        assert_eq!(label_escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let get = |k: &str| match k {
            "state" => Some("connected".to_string()),
            "kernel_requests" => Some("lookup=3 open=1".to_string()),
            "requests" => Some("not a number".to_string()),
            _ => None,
        };
        let text = prometheus(Path::new("/mnt/a \"b\""), &get, 1500);
        assert!(text.contains("zkfs_connected{mountpoint=\"/mnt/a \\\"b\\\"\"} 1\n"));
        assert!(text.contains(
            "zkfs_kernel_requests_total{mountpoint=\"/mnt/a \\\"b\\\"\",op=\"lookup\"} 3\n"
        ));
        assert!(
            text.contains("zkfs_last_contact_age_seconds{mountpoint=\"/mnt/a \\\"b\\\"\"} 1.500\n")
        );
        // A missing or malformed attribute leaves its metric out entirely.
        assert!(!text.contains("zkfs_zookeeper_requests_total"));
        assert!(!text.contains("zkfs_registrations"));
    }
}
