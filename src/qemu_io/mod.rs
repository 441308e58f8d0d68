//! The qemu-io command language.

mod buffers;
pub mod cli;
pub mod commands;
pub mod commands_table;
pub mod format;
pub mod getopt;
pub mod numbers;
pub mod objects;
pub mod session;
pub mod trace;

use crate::output::{SharedSink, Termination};
use std::path::Path;

/// One qemu-io process's worth of work: qemu-io's command line as data. The defaults are
/// qemu-io's with no options, so `Invocation { commands, drive, ..Default::default() }` is
/// `qemu-io -c ... DRIVE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `-f FMT`
    pub format: Option<String>,
    /// `-t CACHE` (the last one)
    pub cache: Option<String>,
    /// `-n` given after the last `-t` (O_DIRECT and writeback on top of `cache`)
    pub nocache: bool,
    /// `--image-opts`
    pub image_opts: bool,
    /// every `-c CMD`, in order
    pub commands: Vec<String>,
    /// the positional filename, if any
    pub drive: Option<String>,
    /// `-r`
    pub read_only: bool,
    /// `-s`: writes go to a temporary overlay
    pub snapshot: bool,
    /// `-C`
    pub copy_on_read: bool,
    /// `-d MODE` (the last one)
    pub discard: Option<String>,
    /// `-i MODE`, with `-k` as `native`: the mode all of them together select
    pub aio: Option<String>,
    /// `-U`
    pub force_share: bool,
    /// every `--object`, in order
    pub objects: Vec<String>,
    /// every `-T`, in order
    pub trace: Vec<String>,
    /// Skip the host's fdatasync for flushes and FUA writes. Every flush event and blkdebug
    /// rule still applies; only durability of the host file is given up, which a scratch
    /// directory that is deleted afterwards does not need.
    pub skip_host_sync: bool,
}

/// Runs an invocation with relative paths resolved against `base_dir` and an empty stdin (as
/// `qemu-io ... </dev/null`: without commands, one prompt); returns qemu-io's exit status
/// (128 + N when it dies of signal N, as a shell reports it). The options take effect in the
/// order qemu-io's getopt would meet them in `-t -d -i --object -T`.
pub fn run(inv: &Invocation, base_dir: &Path, sink: SharedSink) -> i32 {
    cli::run_invocation(inv, base_dir, sink, &mut std::io::empty()).status()
}

/// `blockfault io ARGS...`: qemu-io's own command line (argv without the program name); without
/// `-c`, commands are read from `stdin` as qemu-io's interactive mode does. Returns the exit
/// status, 128 + N for a death by signal N ([`main_process`] tells them apart).
pub fn main(
    args: &[String],
    base_dir: &Path,
    sink: SharedSink,
    stdin: &mut dyn std::io::BufRead,
) -> i32 {
    main_process(args, base_dir, sink, stdin).status()
}

/// As [`main`], saying how the process ended: a process front end dies of the signal
/// (`sigraise`, `abort`) to look the same as qemu-io to a shell.
pub fn main_process(
    args: &[String],
    base_dir: &Path,
    sink: SharedSink,
    stdin: &mut dyn std::io::BufRead,
) -> Termination {
    cli::main(args, base_dir, sink, stdin)
}
