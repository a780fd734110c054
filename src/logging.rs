//! Where the daemon's tracing output goes: stderr (`--log-file -`, and the
//! foreground default), a file (`--log-file FILE`, reopened on SIGHUP for
//! logrotate), or syslog (the background default; see [`crate::syslog`]).
//! Owns the subscriber set-up and log reopening; not what is logged.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::daemon::Failure;
use crate::syslog::Syslog;

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    File(PathBuf),
    Syslog,
}

impl Destination {
    /// `--log-file` as given (`-` is stderr); without it, syslog in the
    /// background and stderr in the foreground.
    pub fn choose(log_file: Option<&Path>, background: bool) -> Destination {
        match log_file {
            Some(p) if p == Path::new("-") => Destination::Stderr,
            Some(p) => Destination::File(p.to_path_buf()),
            None if background => Destination::Syslog,
            None => Destination::Stderr,
        }
    }
}

fn open_append(path: &Path) -> Result<File, Failure> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Failure::new(format!("log file {}: {e}", path.display())))
}

struct FileState {
    path: PathBuf,
    file: Mutex<File>,
    /// Also point stderr (panics, messages of libraries) at the new file.
    follow_stderr: bool,
}

/// A log file that can be reopened under the same name.
#[derive(Clone)]
struct LogFile(Arc<FileState>);

/// Writes one event while holding the file.
struct LogFileWriter<'a>(MutexGuard<'a, File>);

impl Write for LogFileWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = Unfailing<LogFileWriter<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        Unfailing(LogFileWriter(
            self.0.file.lock().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// A log destination whose failures are not the daemon's: a line that
/// cannot be written (a full disk, stderr a pipe nobody reads any more) is
/// dropped and the daemon goes on serving. Handing the error to the
/// logging library instead made it report the failure on stderr with
/// `eprint!`, which panics when that write fails too: a panic in whatever
/// thread logged, a FUSE request among them (a `mv` that was applied
/// answered `EIO`), and a dying daemon left requests hanging in the
/// kernel.
struct Unfailing<W>(W);

impl<W: Write> Write for Unfailing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.write(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Stderr as a log destination, through [`Unfailing`].
struct UnfailingStderr;

impl<'a> MakeWriter<'a> for UnfailingStderr {
    type Writer = Unfailing<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Unfailing(io::stderr())
    }
}

/// What SIGHUP acts on.
pub struct LogHandle {
    file: Option<LogFile>,
}

impl LogHandle {
    /// Reopen the log file (after logrotate moved it); a no-op for stderr
    /// and syslog. Keeps writing to the old file if the new one cannot be opened.
    pub fn reopen(&self) -> Result<(), String> {
        let Some(LogFile(state)) = &self.file else {
            return Ok(());
        };
        let new = open_append(&state.path).map_err(|f| f.message)?;
        if state.follow_stderr {
            // SAFETY: duplicating a descriptor we own onto stderr.
            unsafe { libc::dup2(new.as_raw_fd(), 2) };
        }
        *state.file.lock().unwrap_or_else(|e| e.into_inner()) = new;
        Ok(())
    }
}

/// Install the global subscriber. `level` overrides `ZKFS_LOG` (default `info`).
/// `stderr_is_file`: stderr already points at the log file (background).
pub fn init(
    level: Option<&str>,
    destination: &Destination,
    stderr_is_file: bool,
) -> Result<LogHandle, Failure> {
    if level.is_some_and(|l| l.trim().is_empty()) {
        return Err(Failure::new(
            "invalid log filter '': empty (give a level, e.g. info, or leave --log-level out)"
                .to_string(),
        ));
    }
    // An empty ZKFS_LOG is as good as unset.
    let spec = level
        .map(str::to_string)
        .or_else(|| {
            std::env::var("ZKFS_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
        })
        .unwrap_or_else(|| "info".to_string());
    let filter = parse_filter(&spec)
        .map_err(|e| Failure::new(format!("invalid log filter '{spec}': {e}")))?;
    // The subscriber's own ceiling is the filter's most verbose level: it
    // is what the `log` crate's callers (fuser logs every request at debug)
    // compare with before building a record at all.
    let builder = tracing_subscriber::fmt().with_max_level(ceiling(&filter));
    let mut handle = LogHandle { file: None };
    match destination {
        Destination::File(path) => {
            let file = LogFile(Arc::new(FileState {
                path: path.clone(),
                file: Mutex::new(open_append(path)?),
                follow_stderr: stderr_is_file,
            }));
            handle.file = Some(file.clone());
            builder
                .with_ansi(false)
                .with_writer(file)
                .finish()
                .with(filter)
                .init();
        }
        Destination::Stderr => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(UnfailingStderr)
            .finish()
            .with(filter)
            .init(),
        // Syslog stamps the time and the priority carries the level.
        Destination::Syslog => builder
            .with_ansi(false)
            .without_time()
            .with_writer(Syslog::from_env())
            .finish()
            .with(filter)
            .init(),
    }
    Ok(handle)
}

/// A log filter: comma-separated directives, each `LEVEL` (the level of
/// every target no other directive names; `error` without one, so a
/// library's errors are never silenced by accident), `TARGET=LEVEL` (a
/// module path and everything under it, e.g. `zkfs::zk`), or a bare
/// `TARGET` (all its levels). Levels are `off`, `error`, `warn`, `info`,
/// `debug`, `trace`.
/// (EnvFilter's span and field filters are not taken: they need a regular
/// expression engine resident in every daemon for a feature operators of
/// this daemon do not use.)
/// The crates whose log lines reach the daemon's log (fuser's through
/// the `log` bridge): a filter's module paths start with one of them.
const LOGGING_CRATES: [&str; 3] = ["zkfs", "zookeeper_client", "fuser"];

fn parse_filter(spec: &str) -> Result<Targets, String> {
    fn level(word: &str) -> Option<LevelFilter> {
        // (`LevelFilter` also takes "" and digits; only names are levels here.)
        let named = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphabetic());
        named.then(|| word.parse().ok()).flatten()
    }
    fn target(word: &str) -> Result<&str, String> {
        let valid = !word.is_empty()
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'));
        if !valid {
            return Err(format!("'{word}' is neither a level nor a module path"));
        }
        // A module path must be one that logs: a misspelt level (`warning`)
        // or crate (`zksf=debug`) otherwise filters out everything, or
        // nothing, without a word.
        let root = word.split("::").next().unwrap_or(word);
        if LOGGING_CRATES.contains(&root) {
            Ok(word)
        } else {
            Err(format!(
                "'{word}' is neither a level (off, error, warn, info, debug, trace) nor a module \
                 path of {}",
                LOGGING_CRATES.join(", ")
            ))
        }
    }
    let mut filter = Targets::new().with_default(LevelFilter::ERROR);
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        filter = match directive.split_once('=') {
            Some((name, lvl)) => {
                let lvl = lvl.trim();
                let lvl = level(lvl).ok_or_else(|| format!("'{lvl}' is not a level"))?;
                filter.with_target(target(name.trim())?, lvl)
            }
            None => match level(directive) {
                Some(lvl) => filter.with_default(lvl),
                None => filter.with_target(target(directive)?, LevelFilter::TRACE),
            },
        };
    }
    Ok(filter)
}

/// The most verbose level `filter` lets through for any module.
fn ceiling(filter: &Targets) -> LevelFilter {
    filter
        .iter()
        .map(|(_, level)| level)
        .chain(filter.default_level())
        .max()
        .unwrap_or(LevelFilter::OFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters() {
        use tracing::Level;
        let f = parse_filter("warn,zkfs=debug, zookeeper_client=off").expect("valid");
        assert!(f.would_enable("zkfs::zk::session", &Level::DEBUG));
        assert!(!f.would_enable("zkfs::zk::session", &Level::TRACE));
        assert!(!f.would_enable("zookeeper_client::session", &Level::ERROR));
        assert!(f.would_enable("fuser", &Level::WARN));
        assert!(!f.would_enable("fuser", &Level::INFO));
        let bare = parse_filter("zkfs::fs").expect("bare target");
        assert!(bare.would_enable("zkfs::fs::core", &Level::TRACE));
        assert!(bare.would_enable("zkfs::zk", &Level::ERROR));
        assert!(!bare.would_enable("zkfs::zk", &Level::WARN));
        assert_eq!(
            ceiling(&parse_filter("info").expect("valid")),
            LevelFilter::INFO
        );
        assert_eq!(ceiling(&f), LevelFilter::DEBUG);
        assert_eq!(ceiling(&bare), LevelFilter::TRACE);
        assert_eq!(
            ceiling(&parse_filter("off").expect("valid")),
            LevelFilter::OFF
        );
        for bad in [
            "[[[",
            "zkfs=loud",
            "=info",
            "zkfs{x}=debug",
            "zkfs=",
            "zkfs=3",
            "warning",
            "warnn",
            "zksf=debug",
            "zkfs,warning",
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn destination_choice() {
        assert_eq!(
            Destination::choose(Some(Path::new("-")), true),
            Destination::Stderr
        );
        assert_eq!(
            Destination::choose(Some(Path::new("/var/log/zkfs.log")), true),
            Destination::File("/var/log/zkfs.log".into())
        );
        assert_eq!(Destination::choose(None, true), Destination::Syslog);
        assert_eq!(Destination::choose(None, false), Destination::Stderr);
    }
}
