//! The qemu-img subset.

use crate::output::SharedSink;
use std::path::Path;

/// `qemu-img ARGS...` (argv without the program name), relative paths resolved against `base_dir`;
/// returns qemu-img's exit status.
pub fn run(args: &[String], base_dir: &Path, sink: SharedSink) -> i32 {
    let _ = (args, base_dir);
    sink.borrow_mut().write(
        crate::output::Stream::Stderr,
        "qemu-img: engine not built yet\n",
    );
    1
}
