//! The qemu-io command language.

pub mod format;
pub mod getopt;
pub mod numbers;

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
}

/// Runs an invocation with relative paths resolved against `base_dir`; returns qemu-io's exit status.
pub fn run(_inv: &Invocation, _base_dir: &Path, sink: SharedSink) -> i32 {
    // Replaced by the interpreter (engine issue); kept only so the runner can build meanwhile.
    sink.borrow_mut().write(
        crate::output::Stream::Stderr,
        "qemu-io: engine not built yet\n",
    );
    1
}

/// `blockfault io ARGS...`: qemu-io's own command line (argv without the program name).
pub fn main(args: &[String], base_dir: &Path, sink: SharedSink) -> i32 {
    let _ = (args, base_dir);
    sink.borrow_mut().write(
        crate::output::Stream::Stderr,
        "qemu-io: engine not built yet\n",
    );
    1
}
