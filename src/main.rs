//! zkfs: a FUSE filesystem presenting a ZooKeeper subtree as a directory.
//!
//! Layers, bottom up: [`zk`] (ZooKeeper session and coherent node cache),
//! [`fs`] (filesystem semantics, no fuser), [`fuse`] (thin fuser adapter),
//! and the process-level pieces: [`cli`], [`daemon`] (`zkfs mount`) and
//! [`control`] (`zkfs status` / `zkfs unmount`), and [`memory`] (allocator
//! settings that keep the daemon's footprint close to its live data).

mod cli;
mod control;
mod daemon;
mod fs;
mod fuse;
mod memory;
mod register;
mod zk;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn main() -> ExitCode {
    memory::limit_arenas();
    let args = cli::expand_mount_options(cli::default_to_mount(std::env::args_os().collect()));
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Mount(args) => daemon::mount(*args),
        Command::Unmount(args) => control::unmount(&args.mountpoint),
        Command::Status(args) => {
            // Like other CLI tools: `zkfs status | head` ends quietly.
            // SAFETY: restoring the default disposition of one signal.
            unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
            match control::status(&args.mountpoint, args.json) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(1),
                Err(e) => Err(e),
            }
        }
        Command::Register(args) => match register::register(args) {
            Ok(code) => return ExitCode::from(code),
            Err(failure) => Err(failure),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("zkfs: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
