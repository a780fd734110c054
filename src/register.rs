//! `zkfs register [--data JSON | --data-file FILE] PATH -- CMD [ARGS...]`:
//! run CMD with a registration at PATH (a file in an `--ephemeral` directory
//! of a zkfs mount) that lives exactly as long as CMD runs.
//!
//! The registration is tied to a descriptor this process keeps open (see
//! doc/SEMANTICS.md, "Held registrations"): the file is created and written,
//! `fsync`ed (so the node exists, complete, before CMD starts), and marked
//! with `fsetxattr(fd, "user.zkfs.hold")`; when the last descriptor of that
//! open file is closed — this process exiting for any reason, `kill -9`
//! included — the kernel's RELEASE tells the daemon, which removes the node.
//! When CMD exits, the registration is removed at once (`unlink`) and the
//! exit status is CMD's (128 + signal number when a signal ended it).
//!
//! Owns only this process's life: spawning and waiting for CMD, forwarding
//! termination signals to it, and the held descriptor (never inherited by
//! CMD, so `kill -9` of this process removes the registration too). It must
//! not talk to ZooKeeper or the daemon other than through the file.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::cli::RegisterArgs;
use crate::daemon::Failure;

/// Signals passed on to CMD (it decides what they mean).
const FORWARDED: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
];

fn fail(message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code: 1,
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in FORWARDED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// The registration's content: `--data`, `--data-file`, or `{"pid": N}`.
fn content(args: &RegisterArgs, pid: u32) -> Result<Vec<u8>, Failure> {
    match (&args.data, &args.data_file) {
        (Some(data), _) => Ok(data.clone().into_bytes()),
        (None, Some(file)) => {
            std::fs::read(file).map_err(|e| fail(format!("data file {}: {e}", file.display())))
        }
        (None, None) => Ok(format!("{{\"pid\": {pid}}}").into_bytes()),
    }
}

/// Whether `dir` is a directory of a zkfs mount (every node there carries
/// `user.zk.version`), so nothing is created on another filesystem.
fn in_zkfs(dir: &Path) -> bool {
    let (Ok(dir), Ok(name)) = (
        CString::new(dir.as_os_str().as_bytes()),
        CString::new("user.zk.version"),
    ) else {
        return false;
    };
    // SAFETY: NUL-terminated path and name; a size-0 query writes nothing.
    unsafe { libc::getxattr(dir.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// The value of extended attribute `name` of `path`, if it has one.
fn xattr(path: &Path, name: &str) -> Option<String> {
    crate::control::getxattr(path, name).ok()
}

/// The session id of the zkfs mount `dir` is in (its root carries it).
fn mount_session(dir: &Path) -> Option<String> {
    dir.ancestors()
        .find_map(|a| xattr(a, "user.zkfs.session_id"))
}

/// Mark `file` as the holder of the registration at `path`.
fn set_hold(file: &File, path: &Path) -> Result<(), String> {
    let name = CString::new("user.zkfs.hold").map_err(|e| e.to_string())?;
    // SAFETY: a valid descriptor, a NUL-terminated name and a 1-byte value.
    let rc =
        unsafe { libc::fsetxattr(file.as_raw_fd(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOTSUP) => format!(
            "{}: not a registration (a file in an --ephemeral directory of a zkfs mount): {e}",
            path.display()
        ),
        Some(libc::EBUSY) => format!(
            "{}: the registration is held by another descriptor (another zkfs register for it is running); left alone",
            path.display()
        ),
        _ => format!("cannot hold {}: {e}", path.display()),
    })
}

/// Create (or overwrite) the registration, send it, and mark the descriptor
/// as its holder. On failure a file created here is removed again.
fn hold(path: &Path, data: &[u8]) -> Result<File, Failure> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !in_zkfs(dir) {
        return Err(fail(format!(
            "{}: not a registration: {} is not a directory of a zkfs mount",
            path.display(),
            dir.display()
        )));
    }
    let (mut file, created) = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            // Only a registration of this very mount may be taken over;
            // another client's node (or a persistent one) is not touched.
            let owner = xattr(path, "user.zk.ephemeral_owner");
            let session = mount_session(dir);
            if owner.is_none() || owner != session {
                return Err(fail(format!(
                    "{} exists and is not a registration of this mount (ephemeral owner {}); left alone",
                    path.display(),
                    owner.as_deref().unwrap_or("unknown")
                )));
            }
            // Held first, then written: a registration another descriptor
            // holds (another wrapper's) is refused before anything changes.
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
            set_hold(&f, path).map_err(fail)?;
            f.set_len(0)
                .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))?;
            (f, false)
        }
        Err(e) => return Err(fail(format!("cannot create {}: {e}", path.display()))),
    };
    let result = (|| -> Result<(), String> {
        file.write_all(data)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        file.sync_all()
            .map_err(|e| format!("cannot register {}: {e}", path.display()))?;
        if created {
            set_hold(&file, path)?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(file),
        Err(message) => {
            drop(file);
            if created {
                let _ = std::fs::remove_file(path);
            }
            Err(fail(message))
        }
    }
}

/// Fork CMD, stopped at a gate (a pipe) before `execvp` until we open it:
/// CMD starts only once the registration exists, and never runs if we fail
/// or die first. Called while this process has one thread (fork-safe).
fn spawn_gated(argv: &[CString]) -> Result<(libc::pid_t, libc::c_int), Failure> {
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: plain pipe creation into a 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(fail(format!(
            "cannot create pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (gate_read, gate_write) = (fds[0], fds[1]);
    // The child's failure lines, made before the fork (it may not allocate):
    // one line as every other error of this program, naming the command.
    let cmd = argv
        .first()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    let not_found = format!("zkfs: cannot run {cmd}: No such file or directory\n");
    let denied = format!("zkfs: cannot run {cmd}: Permission denied\n");
    let other = format!("zkfs: cannot run {cmd}\n");
    // SAFETY: the child only makes async-signal-safe calls before execvp.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing our own descriptors.
        unsafe {
            libc::close(gate_read);
            libc::close(gate_write);
        }
        return Err(fail(format!("cannot fork: {e}")));
    }
    if pid == 0 {
        // SAFETY: async-signal-safe calls only; the child never returns.
        unsafe {
            libc::close(gate_write);
            let mut byte = 0u8;
            let n = libc::read(gate_read, (&mut byte as *mut u8).cast(), 1);
            if n != 1 {
                libc::_exit(125);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execvp(ptrs[0], ptrs.as_ptr());
            let msg = match *libc::__errno_location() {
                libc::ENOENT => not_found.as_bytes(),
                libc::EACCES => denied.as_bytes(),
                _ => other.as_bytes(),
            };
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copy of the child's end.
    unsafe { libc::close(gate_read) };
    Ok((pid, gate_write))
}

/// Wait for `pid`; its exit status as a shell reports it.
fn wait_status(pid: libc::pid_t) -> Result<u8, Failure> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waiting for our own child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status) as u8
            } else if libc::WIFSIGNALED(status) {
                (128 + libc::WTERMSIG(status)).clamp(0, 255) as u8
            } else {
                continue;
            });
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(fail(format!("waiting for the command: {e}")));
        }
    }
}

/// `zkfs register`. Returns the exit status to end with (CMD's).
pub fn register(args: RegisterArgs) -> Result<u8, Failure> {
    if args.command.is_empty() {
        return Err(fail(
            "no command given (zkfs register PATH -- CMD [ARGS...])",
        ));
    }
    let argv: Vec<CString> = args
        .command
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| fail("the command contains a NUL byte"))?;
    let signals = signal_set();
    // Blocked here (a thread forwards them to CMD), unblocked in CMD.
    // SAFETY: changes this thread's mask; threads started later inherit it.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    let (pid, gate) = spawn_gated(&argv)?;
    let path = args.path.clone();
    let held = content(&args, pid as u32).and_then(|data| hold(&path, &data));
    let file = match held {
        Ok(file) => file,
        Err(failure) => {
            // CMD sees EOF at its gate and exits without running.
            // SAFETY: closing our own descriptor.
            unsafe { libc::close(gate) };
            let _ = wait_status(pid);
            return Err(failure);
        }
    };
    std::thread::Builder::new()
        .name("forward-signals".into())
        .spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: waits on the set blocked above.
                if unsafe { libc::sigwait(&signals, &mut sig) } != 0 {
                    return;
                }
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, sig) };
            }
        })
        .map_err(|e| fail(format!("cannot start the signal thread: {e}")))?;
    // Open the gate: CMD runs.
    // SAFETY: writing one byte to, then closing, our own descriptor.
    unsafe {
        if libc::write(gate, b"g".as_ptr().cast(), 1) != 1 {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::close(gate);
    }
    let status = wait_status(pid);
    // Deregister at once (the descriptor's release would too, a moment later).
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != ErrorKind::NotFound
    {
        eprintln!("zkfs: cannot remove registration {}: {e}", path.display());
    }
    drop(file);
    status
}
