//! Steps run through blockfault's own engine, in this process.

use blockfault::output::{Capture, SharedSink};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

/// Image formats the engine can create and open. qcow2 joins when the qcow2 issue lands.
const FORMATS: &[&str] = &["raw", "file", "blkdebug", "blkverify", "qcow2"];

/// Whether a `requires:` entry is met: the engine has both tools built in.
pub fn has(requirement: &str) -> bool {
    matches!(requirement, "qemu-io" | "qemu-img") || FORMATS.contains(&requirement)
}

/// One qemu-io process's worth of work; returns the combined output and exit status.
pub fn qemu_io(inv: &blockfault::qemu_io::Invocation, dir: &Path) -> (String, i32) {
    capture(|sink| blockfault::qemu_io::run(inv, dir, sink))
}

/// qemu-img with this argv (no program name).
pub fn qemu_img(args: &[String], dir: &Path) -> (String, i32) {
    capture(|sink| blockfault::img::run(args, dir, sink))
}

fn capture(f: impl FnOnce(SharedSink) -> i32) -> (String, i32) {
    let capture = Rc::new(RefCell::new(Capture::default()));
    let status = f(capture.clone());
    let text = std::mem::take(&mut capture.borrow_mut().combined);
    (text, status)
}
