//! zkfs: a FUSE filesystem presenting a ZooKeeper subtree as a directory.
//!
//! Layers, bottom up: [`zk`] (ZooKeeper session and coherent node cache),
//! [`fs`] (filesystem semantics, no fuser), [`fuse`] (thin fuser adapter),
//! and the process-level pieces: [`cli`], [`daemon`] (`zkfs mount`),
//! [`control`] (`zkfs status` / `zkfs unmount`), [`watch`] (`zkfs watch`,
//! fed by the daemon's [`events`] socket), [`logging`] and
//! [`syslog`] (where logs go), [`notify`] (systemd readiness), and
//! [`memory`] (allocator settings that keep the daemon's footprint close to
//! its live data). Run as `mount.zkfs` (a link to this binary), it is
//! mount(8)'s helper for `mount -t zkfs`.

mod cli;
mod control;
mod daemon;
mod events;
mod fs;
mod fuse;
mod logging;
mod memory;
mod notify;
mod persist;
mod register;
mod syslog;
mod watch;
mod zk;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

/// The argv to parse: `mount.zkfs` calls translated to `zkfs mount`, a
/// missing subcommand (mount.fuse3) defaulted to `mount`, `-o` expanded.
/// `None`: nothing to do (mount(8)'s `-f`, fake).
fn command_line(raw: Vec<OsString>) -> Result<Option<Vec<OsString>>, String> {
    if let Some(argv0) = raw.first()
        && cli::is_mount_helper(argv0)
    {
        let call = cli::mount_helper_args(raw).map_err(|e| format!("mount.zkfs: {e}"))?;
        if call.fake {
            return Ok(None);
        }
        cli::check_mount_options(&call.args, call.sloppy)
            .map_err(|e| format!("mount.zkfs: {e}"))?;
        let known = call.sloppy.then(cli::mount_long_options);
        return Ok(Some(cli::expand_mount_options_with(
            call.args,
            known.as_deref(),
        )));
    }
    let args = cli::default_to_mount(raw);
    // A usage error, worded as clap words its own (exit status 2).
    cli::check_mount_options(&args, false).map_err(|e| format!("error: {e}"))?;
    Ok(Some(cli::expand_mount_options(args)))
}

fn main() -> ExitCode {
    memory::limit_arenas();
    let args = match command_line(std::env::args_os().collect()) {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            // Not `eprintln!`: it panics when stderr is gone (exit 101).
            let _ = writeln!(std::io::stderr(), "{message}");
            // mount(8)'s "incorrect invocation"; a usage error otherwise,
            // as clap's.
            return ExitCode::from(if message.starts_with("mount.zkfs:") {
                1
            } else {
                2
            });
        }
    };
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Mount(mount) => daemon::mount(*mount, args),
        Command::Unmount(unmount) => control::unmount(&unmount.mountpoint, unmount.lazy),
        Command::Status(status) => {
            // Like other CLI tools: `zkfs status | head` ends quietly.
            // SAFETY: restoring the default disposition of one signal.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            match control::status(&status.mountpoint, status.output()) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Command::Completions(completions) => {
            let mut command = Cli::command();
            clap_complete::generate(
                completions.shell,
                &mut command,
                "zkfs",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Register(args) => match register::register(args) {
            Ok(code) => return ExitCode::from(code),
            Err(failure) => Err(failure),
        },
        Command::Watch(args) => match watch::watch(args) {
            Ok(code) => return ExitCode::from(code),
            Err(failure) => Err(failure),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let _ = writeln!(std::io::stderr(), "zkfs: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
