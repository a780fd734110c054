//! `zkfs watch [--debounce DURATION] [--initial] PATH... -- CMD [ARGS...]`:
//! run CMD after each change of any PATH inside a zkfs mount, with the
//! changed paths (mount paths, one a line) in `ZKFS_CHANGED`.
//!
//! Learns of changes from the daemon of each mount, through the socket the
//! root's `user.zkfs.events_socket` names (protocol: [`crate::events`]);
//! it must never poll ZooKeeper or the files themselves. Owns the
//! translation of PATHs into paths relative to their mount root, the
//! debouncing ([`debounce`]: changes closer together than the debounce
//! make one run; runs never overlap, changes during a run make one more
//! run after it) and running CMD. Ends (exit status 1) when a mount goes
//! away; never reconnects.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cli::WatchArgs;
use crate::daemon::Failure;

/// The root attribute naming a mount's change notification socket.
pub const SOCKET_XATTR: &str = "user.zkfs.events_socket";
/// The environment variable CMD finds the changed paths in.
pub const CHANGED_ENV: &str = "ZKFS_CHANGED";
/// How long the daemon may take to confirm the subscriptions.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 1,
    }
}

/// What the connections to the daemons report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// These watched paths changed.
    Changed(Vec<PathBuf>),
    /// A mount went away (why): the watch ends.
    Gone(String),
}

/// A steady stream of changes still runs CMD after at most this many
/// debounce periods since the first change waiting.
const MAX_WAIT_FACTOR: u32 = 10;

/// The debouncer: waits for changes, collects them until none came for
/// `debounce` (or [`MAX_WAIT_FACTOR`] × `debounce` passed since the first),
/// then awaits `run` with the collected paths, sorted. Changes arriving
/// during a run wait in `inputs` and make the next run. With `initial`,
/// runs once with those paths first. Returns the failure that ended it: a
/// mount gone, `inputs` closed, or `run`'s own.
pub async fn debounce<R, F>(
    mut inputs: UnboundedReceiver<Input>,
    debounce: Duration,
    initial: Option<BTreeSet<PathBuf>>,
    mut run: R,
) -> Failure
where
    R: FnMut(BTreeSet<PathBuf>) -> F,
    F: Future<Output = Result<(), Failure>>,
{
    if let Some(paths) = initial
        && let Err(failure) = run(paths).await
    {
        return failure;
    }
    let closed = || fail("the change notifications ended");
    loop {
        let mut pending = BTreeSet::new();
        match inputs.recv().await {
            None => return closed(),
            Some(Input::Gone(why)) => return fail(why),
            Some(Input::Changed(paths)) => pending.extend(paths),
        }
        let latest = Instant::now() + debounce * MAX_WAIT_FACTOR;
        let mut quiet_until = Instant::now() + debounce;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(quiet_until.min(latest)) => break,
                input = inputs.recv() => match input {
                    None => return closed(),
                    Some(Input::Gone(why)) => return fail(why),
                    Some(Input::Changed(paths)) => {
                        pending.extend(paths);
                        quiet_until = Instant::now() + debounce;
                    }
                },
            }
        }
        if let Err(failure) = run(pending).await {
            return failure;
        }
    }
}

/// The value of extended attribute `name` of `path`, if it has one.
fn xattr(path: &Path, name: &str) -> Option<String> {
    crate::control::getxattr(path, name).ok()
}

/// `path` made absolute with its existing ancestors canonicalized; the
/// last element is kept as given (a pointer shown as a symlink is watched
/// itself, not its target) and may not exist yet.
fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    let cwd = std::env::current_dir().map_err(|e| fail(format!("current directory: {e}")))?;
    let abs = cwd.join(path);
    let mut clean = PathBuf::new();
    for component in abs.components() {
        match component {
            Component::ParentDir => {
                clean.pop();
            }
            Component::CurDir => {}
            other => clean.push(other),
        }
    }
    let (Some(parent), Some(name)) = (clean.parent(), clean.file_name()) else {
        return Ok(clean);
    };
    let mut missing = Vec::new();
    let mut existing = parent.to_path_buf();
    let canonical = loop {
        match existing.canonicalize() {
            Ok(c) => break c,
            Err(_) => match (existing.file_name(), existing.parent()) {
                (Some(n), Some(p)) => {
                    missing.push(n.to_os_string());
                    existing = p.to_path_buf();
                }
                _ => break existing.clone(),
            },
        }
    };
    let mut out = canonical;
    for element in missing.into_iter().rev() {
        out.push(element);
    }
    out.push(name);
    Ok(out)
}

/// A watched PATH: where it is, in which mount.
#[derive(Debug, Clone)]
struct Target {
    /// The path as reported in `ZKFS_CHANGED` (absolute).
    shown: PathBuf,
    mount_root: PathBuf,
    socket: PathBuf,
    /// Relative to the mount root, starting with `/`.
    relative: String,
}

fn target(path: &Path) -> Result<Target, Failure> {
    let shown = absolute(path)?;
    let mut zkfs_without_socket = None;
    for ancestor in shown.ancestors() {
        if let Some(socket) = xattr(ancestor, SOCKET_XATTR) {
            let rest = shown
                .strip_prefix(ancestor)
                .map_err(|e| fail(e.to_string()))?;
            let mut relative = String::new();
            for element in rest.components() {
                let text = element.as_os_str().to_str().filter(|t| !t.contains('\n'));
                let Some(text) = text else {
                    return Err(fail(format!(
                        "{}: names that are not UTF-8 or contain a newline cannot be watched",
                        path.display()
                    )));
                };
                relative.push('/');
                relative.push_str(text);
            }
            if relative.is_empty() {
                relative.push('/');
            }
            return Ok(Target {
                shown: shown.clone(),
                mount_root: ancestor.to_path_buf(),
                socket: PathBuf::from(socket),
                relative,
            });
        }
        if zkfs_without_socket.is_none() && xattr(ancestor, "user.zkfs.pid").is_some() {
            zkfs_without_socket = Some(ancestor.to_path_buf());
        }
    }
    Err(fail(match zkfs_without_socket {
        Some(root) => format!(
            "{}: the zkfs mount at {} serves no change notifications (its daemon is older, or could not create its socket: see its log)",
            path.display(),
            root.display()
        ),
        None => format!("{} is not inside a zkfs mount", path.display()),
    }))
}

/// Subscribe to `targets` (all of one mount) and forward what the daemon
/// reports to `inputs` from a thread of its own.
fn subscribe(targets: Vec<Target>, inputs: UnboundedSender<Input>) -> Result<(), Failure> {
    let Some(first) = targets.first() else {
        return Ok(());
    };
    let (root, socket) = (first.mount_root.clone(), first.socket.clone());
    let stream = UnixStream::connect(&socket).map_err(|e| {
        fail(format!(
            "cannot connect to the change notifications of {} ({}): {e}",
            root.display(),
            socket.display()
        ))
    })?;
    let mut writer = stream
        .try_clone()
        .map_err(|e| fail(format!("{}: {e}", socket.display())))?;
    let mut request = String::new();
    for t in &targets {
        request.push_str(&format!("watch {}\n", t.relative));
    }
    request.push_str("end\n");
    writer
        .write_all(request.as_bytes())
        .map_err(|e| fail(format!("{}: cannot subscribe: {e}", root.display())))?;
    stream
        .set_read_timeout(Some(READY_TIMEOUT))
        .map_err(|e| fail(e.to_string()))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| {
        fail(format!(
            "{}: no answer to the subscription: {e}",
            root.display()
        ))
    })?;
    if line.trim_end() != "ready" {
        return Err(fail(format!(
            "{}: subscription refused: {}",
            root.display(),
            line.trim_end()
        )));
    }
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(|e| fail(e.to_string()))?;
    std::thread::Builder::new()
        .name("zkfs-watch".into())
        .spawn(move || {
            let gone = format!("the zkfs mount at {} went away", root.display());
            loop {
                let mut line = String::new();
                let input = match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => Input::Gone(gone.clone()),
                    Ok(_) => {
                        let line = line.trim_end_matches('\n');
                        if line == "resync" {
                            debug!(mount = %root.display(), "notifications were lost; all paths count as changed");
                            Input::Changed(targets.iter().map(|t| t.shown.clone()).collect())
                        } else if let Some(relative) = line.strip_prefix("changed ") {
                            Input::Changed(
                                targets
                                    .iter()
                                    .filter(|t| t.relative == relative)
                                    .map(|t| t.shown.clone())
                                    .collect(),
                            )
                        } else {
                            debug!(line, "unknown notification ignored");
                            continue;
                        }
                    }
                };
                let end = matches!(input, Input::Gone(_));
                if inputs.send(input).is_err() || end {
                    return;
                }
            }
        })
        .map_err(|e| fail(format!("cannot start a thread: {e}")))?;
    Ok(())
}

/// Run CMD once with `changed` in the environment; wait for it.
async fn run_command(command: Vec<OsString>, changed: BTreeSet<PathBuf>) -> Result<(), Failure> {
    let mut list = OsString::new();
    for (i, p) in changed.iter().enumerate() {
        if i > 0 {
            list.push("\n");
        }
        list.push(p.as_os_str());
    }
    let (program, args) = command
        .split_first()
        .ok_or_else(|| fail("no command given"))?;
    debug!(changed = changed.len(), "running the command");
    let mut command = std::process::Command::new(program);
    command.args(args).env(CHANGED_ENV, &list);
    // CMD ends with the watcher: a signal that ends `zkfs watch` (SIGTERM
    // from a service manager, `kill`, SIGKILL) sends CMD SIGTERM instead of
    // leaving it running with no parent. The death signal follows the
    // thread that forks, this runtime's only one (`watch` runs it on the
    // main thread), so it fires when the process does. A watcher gone
    // before the call took effect is caught by the parent check.
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| Failure {
        message: format!("cannot run {}: {e}", program.to_string_lossy()),
        code: 127,
    })?;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(|e| fail(format!("waiting for the command: {e}")))?
        .map_err(|e| fail(format!("waiting for the command: {e}")))?;
    if !status.success() {
        warn!(%status, "the command failed; watching on");
    }
    Ok(())
}

/// `zkfs watch`. Returns only with the failure that ended it.
pub fn watch(args: WatchArgs) -> Result<u8, Failure> {
    crate::logging::init(None, &crate::logging::Destination::Stderr, false)?;
    if args.command.is_empty() {
        return Err(fail(
            "no command given (zkfs watch PATH... -- CMD [ARGS...])",
        ));
    }
    let targets: Vec<Target> = args
        .paths
        .iter()
        .map(|p| target(p))
        .collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| fail(format!("cannot start runtime: {e}")))?;
    let (tx, rx) = unbounded_channel();
    let mut mounts: Vec<PathBuf> = targets.iter().map(|t| t.mount_root.clone()).collect();
    mounts.sort();
    mounts.dedup();
    for mount in &mounts {
        let of_mount = targets
            .iter()
            .filter(|t| &t.mount_root == mount)
            .cloned()
            .collect();
        subscribe(of_mount, tx.clone())?;
    }
    drop(tx);
    info!(
        paths = targets.len(),
        mounts = mounts.len(),
        "watching for changes"
    );
    let initial = args
        .initial
        .then(|| targets.iter().map(|t| t.shown.clone()).collect());
    let command = args.command;
    let failure = runtime.block_on(debounce(rx, args.debounce, initial, |changed| {
        run_command(command.clone(), changed)
    }));
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    type Runs = Arc<Mutex<Vec<(Duration, Vec<String>)>>>;
    type Run = std::pin::Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

    /// A runner that records (time since start, paths) and takes `takes`.
    fn recorder(
        start: Instant,
        runs: Runs,
        takes: Duration,
    ) -> impl FnMut(BTreeSet<PathBuf>) -> Run {
        move |paths| {
            let runs = runs.clone();
            Box::pin(async move {
                let names = paths
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                runs.lock().expect("runs").push((start.elapsed(), names));
                tokio::time::sleep(takes).await;
                Ok(())
            })
        }
    }

    fn changed(p: &str) -> Input {
        Input::Changed(vec![PathBuf::from(p)])
    }

    const D: Duration = Duration::from_millis(150);

    #[tokio::test(start_paused = true)]
    async fn spaced_changes_run_once_each_after_the_debounce() {
        let (tx, rx) = unbounded_channel();
        let runs: Runs = Arc::default();
        let start = Instant::now();
        let watcher = tokio::spawn(debounce(
            rx,
            D,
            None,
            recorder(start, runs.clone(), Duration::ZERO),
        ));
        tx.send(changed("/m/a")).expect("send");
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(changed("/m/b")).expect("send");
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(Input::Gone("gone".into())).expect("send");
        let failure = watcher.await.expect("joined");
        assert_eq!(failure.message, "gone");
        assert_eq!(failure.code, 1);
        assert_eq!(
            *runs.lock().expect("runs"),
            vec![
                (Duration::from_millis(150), vec!["/m/a".to_string()]),
                (Duration::from_millis(1150), vec!["/m/b".to_string()]),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_within_the_debounce_runs_once_with_every_path() {
        let (tx, rx) = unbounded_channel();
        let runs: Runs = Arc::default();
        let start = Instant::now();
        let watcher = tokio::spawn(debounce(
            rx,
            D,
            None,
            recorder(start, runs.clone(), Duration::ZERO),
        ));
        for i in 0..10 {
            tx.send(changed(&format!("/m/{}", i % 3))).expect("send");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The last change came at 900 ms; quiet from then on.
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(tx);
        watcher.await.expect("joined");
        assert_eq!(
            *runs.lock().expect("runs"),
            vec![(
                Duration::from_millis(1050),
                vec!["/m/0".into(), "/m/1".into(), "/m/2".into()]
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_endless_stream_still_runs_every_ten_debounce_periods() {
        let (tx, rx) = unbounded_channel();
        let runs: Runs = Arc::default();
        let start = Instant::now();
        let watcher = tokio::spawn(debounce(
            rx,
            D,
            None,
            recorder(start, runs.clone(), Duration::ZERO),
        ));
        // Every 70 ms from 0 to 2730 ms: never quiet for 150 ms.
        for _ in 0..40 {
            tx.send(changed("/m/a")).expect("send");
            tokio::time::sleep(Duration::from_millis(70)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(tx);
        watcher.await.expect("joined");
        let times: Vec<Duration> = runs.lock().expect("runs").iter().map(|r| r.0).collect();
        assert_eq!(
            times,
            // 1500: ten periods after the first change; then the first
            // change after it (1540) waits until the stream stops (2730 + 150).
            vec![Duration::from_millis(1500), Duration::from_millis(2880)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn changes_during_a_run_make_one_more_run_after_it_never_overlapping() {
        let (tx, rx) = unbounded_channel();
        let runs: Runs = Arc::default();
        let start = Instant::now();
        // Each run takes 1 s.
        let watcher = tokio::spawn(debounce(
            rx,
            D,
            Some(BTreeSet::from([
                PathBuf::from("/m/a"),
                PathBuf::from("/m/b"),
            ])),
            recorder(start, runs.clone(), Duration::from_secs(1)),
        ));
        // During the initial run (0..1 s): three changes.
        for p in ["/m/a", "/m/b", "/m/a"] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            tx.send(changed(p)).expect("send");
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(tx);
        watcher.await.expect("joined");
        assert_eq!(
            *runs.lock().expect("runs"),
            vec![
                (Duration::ZERO, vec!["/m/a".into(), "/m/b".into()]),
                // Taken up when the first run ended (1 s), then debounced.
                (
                    Duration::from_millis(1150),
                    vec!["/m/a".into(), "/m/b".into()]
                ),
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_start_of_the_command_ends_the_watch() {
        let (tx, rx) = unbounded_channel();
        tx.send(changed("/m/a")).expect("send");
        let failure = debounce(rx, D, None, |_| async {
            Err(Failure {
                message: "cannot run x".into(),
                code: 127,
            })
        })
        .await;
        assert_eq!(
            (failure.message.as_str(), failure.code),
            ("cannot run x", 127)
        );
    }

    #[test]
    fn paths_are_made_absolute_without_resolving_the_last_element() {
        let dir = std::env::temp_dir().join(format!("zkfs-watch-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real")).expect("mkdir");
        let _ = std::fs::remove_file(dir.join("link"));
        std::os::unix::fs::symlink("real", dir.join("link")).expect("symlink");
        let canonical = dir.canonicalize().expect("canonical");
        assert_eq!(
            absolute(&dir.join("link")).unwrap_or_else(|f| panic!("{}", f.message)),
            canonical.join("link")
        );
        assert_eq!(
            absolute(&dir.join("link/x/./y/../z")).unwrap_or_else(|f| panic!("{}", f.message)),
            canonical.join("real/x/z")
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
