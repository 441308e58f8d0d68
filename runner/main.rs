//! The `blockfault` binary: the scenario runner, plus `io`/`img` front ends to the engine.

mod backend_builtin;
mod backend_qemu;
mod cli;
mod discovery;
mod execute;
mod filters;
mod golden;
mod junit;
mod matrix;
mod report;
mod scenario;
mod schema;
mod suite;

use blockfault::output::{ProcessStreams, Termination};
use clap::Parser;
use std::cell::RefCell;
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let status = match cli.command {
        Some(cli::Command::Io { .. }) => end_process(blockfault::qemu_io::main_process(
            &subcommand_args(),
            Path::new("."),
            streams(),
            &mut std::io::stdin().lock(),
        )),
        Some(cli::Command::Img { .. }) => {
            blockfault::img::run(&subcommand_args(), Path::new("."), streams())
        }
        Some(cli::Command::Schema) => {
            print!("{}", schema::json());
            0
        }
        None => suite::main(cli.run),
    };
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// The arguments after `io`/`img` exactly as given: clap drops a leading `--`, which the
/// programs' own getopt must see (it makes `-c` an image name in `blockfault io -- -c`).
fn subcommand_args() -> Vec<String> {
    std::env::args_os()
        .skip(2)
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

/// Ends like the qemu-io process would have: a death by signal is raised for real, so that a
/// shell reports it ("Killed") as for QEMU; the exit status is returned otherwise.
fn end_process(end: Termination) -> i32 {
    match end {
        Termination::Exited(status) => status,
        Termination::Killed(signal) => {
            // Everything printed is already out: ProcessStreams writes through.
            // SAFETY: plain libc calls on our own process; the default action is restored so
            // that the signal does what it does to qemu-io, unblocked in case it was blocked.
            unsafe {
                libc::signal(signal, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, signal);
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::raise(signal);
            }
            // Only a signal that does not kill gets here.
            end.status()
        }
    }
}

fn streams() -> blockfault::output::SharedSink {
    Rc::new(RefCell::new(ProcessStreams))
}
