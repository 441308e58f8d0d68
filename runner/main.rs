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

use blockfault::output::ProcessStreams;
use clap::Parser;
use std::cell::RefCell;
use std::path::Path;
use std::process::ExitCode;
use std::rc::Rc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let status = match cli.command {
        Some(cli::Command::Io { args }) => blockfault::qemu_io::main(
            &args,
            Path::new("."),
            streams(),
            &mut std::io::stdin().lock(),
        ),
        Some(cli::Command::Img { args }) => blockfault::img::run(&args, Path::new("."), streams()),
        Some(cli::Command::Schema) => {
            print!("{}", schema::json());
            0
        }
        None => suite::main(cli.run),
    };
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

fn streams() -> blockfault::output::SharedSink {
    Rc::new(RefCell::new(ProcessStreams))
}
