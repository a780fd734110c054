//! systemd readiness notification (`sd_notify`): `READY=1` once the mount
//! serves and `STOPPING=1` when it shuts down, sent as one datagram each to
//! the unix socket named by `NOTIFY_SOCKET` (a path, or `@name` for an
//! abstract socket). Owns nothing but that protocol; without `NOTIFY_SOCKET`
//! every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{debug, warn};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where notifications go, read once from the environment.
pub struct Notifier {
    addr: Option<SocketAddr>,
    /// STOPPING=1 goes out once, whichever of the signal thread and the
    /// end of the session loop gets there first.
    stopping_sent: AtomicBool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`; a malformed value is logged and ignored.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os(NOTIFY_SOCKET_ENV) else {
            return Notifier::with(None);
        };
        let text = value.to_string_lossy().into_owned();
        let addr = match text.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None if text.starts_with('/') => SocketAddr::from_pathname(&text),
            None => {
                warn!(socket = %text, "NOTIFY_SOCKET is neither a path nor @abstract; not notifying");
                return Notifier::with(None);
            }
        };
        match addr {
            Ok(addr) => Notifier::with(Some(addr)),
            Err(e) => {
                warn!(socket = %text, error = %e, "unusable NOTIFY_SOCKET; not notifying");
                Notifier::with(None)
            }
        }
    }

    fn with(addr: Option<SocketAddr>) -> Notifier {
        Notifier {
            addr,
            stopping_sent: AtomicBool::new(false),
        }
    }

    /// Send `state` (newline-separated `KEY=VALUE` lines). Failures are
    /// logged: a lost notification must not stop the mount.
    pub fn send(&self, state: &str) {
        let Some(addr) = &self.addr else {
            return;
        };
        let result = UnixDatagram::unbound().and_then(|s| s.send_to_addr(state.as_bytes(), addr));
        match result {
            Ok(_) => debug!(state = %state.replace('\n', " "), "notified systemd"),
            Err(e) => warn!(error = %e, "cannot notify systemd"),
        }
    }

    pub fn ready(&self) {
        self.send(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    pub fn stopping(&self) {
        if !self.stopping_sent.swap(true, Ordering::SeqCst) {
            self.send("STOPPING=1");
        }
    }
}
