//! The qemu-io command language.

pub mod cli;
pub mod commands;
pub mod commands_table;
pub mod format;
pub mod getopt;
pub mod numbers;
pub mod session;

use crate::output::SharedSink;
use std::path::Path;

/// One qemu-io process's worth of work, as `qemu-io [-f F] [-t C] [--image-opts] -c ... DRIVE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `-f FMT`
    pub format: Option<String>,
    /// `-t CACHE`
    pub cache: Option<String>,
    /// `--image-opts`
    pub image_opts: bool,
    /// every `-c CMD`, in order
    pub commands: Vec<String>,
    /// the positional filename, if any
    pub drive: Option<String>,
    /// Skip the host's fdatasync for flushes and FUA writes. Every flush event and blkdebug
    /// rule still applies; only durability of the host file is given up, which a scratch
    /// directory that is deleted afterwards does not need.
    pub skip_host_sync: bool,
}

/// Runs an invocation with relative paths resolved against `base_dir`; returns qemu-io's exit status.
pub fn run(inv: &Invocation, base_dir: &Path, sink: SharedSink) -> i32 {
    cli::run_invocation(inv, base_dir, sink, None)
}

/// `blockfault io ARGS...`: qemu-io's own command line (argv without the program name); without
/// `-c`, commands are read from `stdin` as qemu-io's interactive mode does.
pub fn main(
    args: &[String],
    base_dir: &Path,
    sink: SharedSink,
    stdin: &mut dyn std::io::BufRead,
) -> i32 {
    cli::main(args, base_dir, sink, stdin)
}
