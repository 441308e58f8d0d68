//! The `blockfault` binary: the scenario runner, plus `io`/`img` front ends to the engine.

mod backend_builtin;
mod backend_qemu;
mod cli;
mod discovery;
mod events;
mod execute;
mod filters;
mod golden;
mod interrupt;
mod junit;
mod matrix;
mod new;
mod report;
mod scenario;
mod schema;
mod suite;
mod sweep;
mod sweep_spec;

use blockfault::output::{Buffering, ProcessStreams, Sink, Termination};
use clap::Parser;
use std::cell::RefCell;
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;

fn main() -> ExitCode {
    if let Some(message) = non_utf8_subcommand_argument() {
        eprintln!("{message}");
        return ExitCode::from(1);
    }
    let cli = cli::Cli::parse();
    let status = match cli.command {
        Some(cli::Command::Io { .. }) => {
            let streams = streams();
            let mut args = subcommand_args();
            // Ours, not qemu-io's: taken only in front of qemu-io's own arguments, so that
            // qemu-io's getopt never sees it.
            if args.first().is_some_and(|a| a == TRACE_BLKDEBUG) {
                args.remove(0);
                streams.borrow_mut().trace_blkdebug = true;
            }
            let end = blockfault::qemu_io::main_process(
                &args,
                Path::new("."),
                streams.clone(),
                &mut std::io::stdin().lock(),
            );
            end_process(end, &streams)
        }
        Some(cli::Command::Img { .. }) => {
            let streams = streams();
            let status = blockfault::img::run(&subcommand_args(), Path::new("."), streams.clone());
            streams.borrow_mut().flush();
            status
        }
        Some(cli::Command::Events { format, json }) => match events::report(format) {
            Ok(r) => {
                print!(
                    "{}",
                    if json {
                        events::json(&r)
                    } else {
                        events::text(&r)
                    }
                );
                0
            }
            Err(e) => {
                eprintln!("blockfault: events: {e}");
                1
            }
        },
        Some(cli::Command::New { name }) => match new::create(Path::new("."), &name) {
            Ok(path) => {
                println!("wrote {}", path.display());
                0
            }
            Err(e) => {
                eprintln!("blockfault: new: {e}");
                2
            }
        },
        Some(cli::Command::Schema) => {
            print!("{}", schema::json());
            0
        }
        None => suite::main(cli.run),
    };
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// `blockfault io --trace-blkdebug ARGS`: print every blkdebug event and request on stderr.
const TRACE_BLKDEBUG: &str = "--trace-blkdebug";

/// An argument of `io`/`img` the engine cannot take, as one clear line (rather than clap's usage
/// text). `io` and `img` take any bytes, as qemu-io and qemu-img do, carried as
/// [`blockfault::host_bytes`] text, short of the few characters that mapping reserves.
fn non_utf8_subcommand_argument() -> Option<String> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let sub = args.get(1)?.to_str()?;
    if sub != "io" && sub != "img" {
        return None;
    }
    args.iter().enumerate().skip(2).find_map(|(n, a)| {
        let n = n - 1;
        blockfault::host_bytes::decode_arg(a).err().map(|c| {
            format!(
                "blockfault: argument {n} ({a:?}) holds U+{:X}; `blockfault {sub}` reserves U+10FF80..U+10FFFF to carry bytes that are not UTF-8",
                u32::from(c)
            )
        })
    })
}

/// The arguments after `io`/`img` exactly as given: clap drops a leading `--`, which the
/// programs' own getopt must see (it makes `-c` an image name in `blockfault io -- -c`).
/// Bytes that are not UTF-8 are carried as [`blockfault::host_bytes`] text (checked above).
fn subcommand_args() -> Vec<String> {
    std::env::args_os()
        .skip(2)
        .map(|a| {
            blockfault::host_bytes::decode_arg(&a)
                .unwrap_or_else(|_| a.to_string_lossy().into_owned())
        })
        .collect()
}

/// Ends like the qemu-io process would have: exit flushes stdout; a death by signal is raised
/// for real, so that a shell reports it ("Killed") as for QEMU, and what stdout still held is
/// lost as it is for qemu-io (`sigraise` flushed it already; `abort` does not).
fn end_process(end: Termination, streams: &Rc<RefCell<ProcessStreams>>) -> i32 {
    match end {
        Termination::Exited(status) => {
            streams.borrow_mut().flush();
            status
        }
        Termination::Killed(signal) => {
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
            streams.borrow_mut().flush();
            end.status()
        }
    }
}

fn streams() -> Rc<RefCell<ProcessStreams>> {
    Rc::new(RefCell::new(ProcessStreams::new(Buffering::of_stdout())))
}
