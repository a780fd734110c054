//! Logging to the local syslog socket (`/dev/log`, which journald also
//! serves): a tracing-subscriber writer that sends each formatted event as
//! one RFC 3164-style datagram `<PRI>Mmm dd hh:mm:ss zkfs[PID]: message`,
//! facility `daemon`, with the event's level mapped to a syslog severity.
//! Owns the wire format and the socket; not what is logged.
//!
//! `ZKFS_SYSLOG_SOCKET` names another socket path (for tests).

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The socket syslog daemons and journald listen on.
pub const DEFAULT_SOCKET: &str = "/dev/log";
/// Overrides [`DEFAULT_SOCKET`] (tests bind their own socket).
pub const SOCKET_ENV: &str = "ZKFS_SYSLOG_SOCKET";
/// The program name in every message.
pub const IDENT: &str = "zkfs";
/// `LOG_DAEMON`.
const FACILITY: u8 = 3;
/// Longest message sent (longer ones are cut; syslog daemons cut anyway).
const MAX_MESSAGE: usize = 8 * 1024;

/// Syslog severity of a tracing level (RFC 5424 table 2).
pub fn severity(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// `<PRI>TIMESTAMP IDENT[PID]: MESSAGE` without a trailing newline.
pub fn format_datagram(severity: u8, timestamp: &str, pid: u32, message: &str) -> Vec<u8> {
    let message = message.trim_end_matches(['\n', '\r']).trim_start();
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "<{}>{timestamp} {IDENT}[{pid}]: {}",
        FACILITY * 8 + severity,
        &message[..end]
    )
    .into_bytes()
}

/// The RFC 3164 timestamp `Mmm dd hh:mm:ss` in local time.
fn timestamp() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time(NULL) and localtime_r into a zeroed local struct.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "Jan  1 00:00:00".to_string();
        }
        tm
    };
    format!(
        "{} {:>2} {:02}:{:02}:{:02}",
        MONTHS[tm.tm_mon.clamp(0, 11) as usize],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// A tracing-subscriber `MakeWriter` sending to the syslog socket. Messages
/// are dropped while no syslog daemon listens (nothing else could take them).
pub struct Syslog {
    socket: Mutex<Option<UnixDatagram>>,
    path: PathBuf,
    pid: u32,
}

impl Syslog {
    /// The socket from `ZKFS_SYSLOG_SOCKET`, else `/dev/log`. Connects lazily.
    pub fn from_env() -> Syslog {
        let path = std::env::var_os(SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
        Syslog {
            socket: Mutex::new(None),
            path,
            pid: std::process::id(),
        }
    }

    fn send(&self, datagram: &[u8]) {
        let mut socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        // Reconnect once if the daemon behind the socket was restarted.
        for _ in 0..2 {
            if socket.is_none() {
                *socket = UnixDatagram::unbound()
                    .and_then(|s| s.connect(&self.path).map(|()| s))
                    .ok();
            }
            match socket.as_ref().map(|s| s.send(datagram)) {
                Some(Ok(_)) | None => return,
                Some(Err(_)) => *socket = None,
            }
        }
    }
}

/// One event: buffered, sent as one datagram when dropped.
pub struct SyslogEvent<'a> {
    syslog: &'a Syslog,
    severity: u8,
    buffer: Vec<u8>,
}

impl Write for SyslogEvent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogEvent<'_> {
    fn drop(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let message = String::from_utf8_lossy(&self.buffer);
        let datagram = format_datagram(self.severity, &timestamp(), self.syslog.pid, &message);
        self.syslog.send(&datagram);
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogEvent {
            syslog: self,
            severity: severity(&Level::INFO),
            buffer: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogEvent {
            syslog: self,
            severity: severity(meta.level()),
            buffer: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_format_and_priorities() {
        // LOG_DAEMON (3) * 8 + LOG_WARNING (4) = 28.
        assert_eq!(
            format_datagram(severity(&Level::WARN), "Dec  1 20:00:11", 42, "disk full\n"),
            b"<28>Dec  1 20:00:11 zkfs[42]: disk full".to_vec()
        );
        assert_eq!(severity(&Level::ERROR), 3);
        assert_eq!(severity(&Level::INFO), 6);
        assert_eq!(severity(&Level::TRACE), 7);
        let long = "é".repeat(MAX_MESSAGE);
        let cut = format_datagram(6, "t", 1, &long);
        assert!(cut.len() <= MAX_MESSAGE + 20);
        assert!(String::from_utf8(cut).is_ok());
    }
}
