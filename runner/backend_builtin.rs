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

/// As [`qemu_io`], also returning blkdebug's trace (kept apart from the output).
pub fn qemu_io_traced(inv: &blockfault::qemu_io::Invocation, dir: &Path) -> (String, i32, String) {
    let capture = Rc::new(RefCell::new(Capture {
        trace: Some(String::new()),
        ..Capture::default()
    }));
    let status = blockfault::qemu_io::run(inv, dir, capture.clone());
    let mut c = capture.borrow_mut();
    let text = std::mem::take(&mut c.combined);
    (text, status, c.trace.take().unwrap_or_default())
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

// A qemu-io step's `trace: true`: blkdebug's trace (every event raised and every request that
// reaches a blkdebug node, with what the rules did), shown on the runner's stderr. It is the
// builtin engine's own aid to writing scenarios: QEMU has nothing like it, so it never enters
// the output that is compared with a golden file.

/// Why a scenario with a traced step is skipped on `--backend qemu`: the trace cannot be had
/// there, and running without it would hide that the author asked for it.
pub const QEMU_HAS_NO_TRACE: &str = "a qemu-io step has `trace: true`, blockfault's own blkdebug trace, which QEMU 10.0.2 does not have: run it on the builtin backend, or drop `trace` to run it on QEMU";

pub fn any_step_traced(s: &crate::scenario::Scenario) -> bool {
    s.steps
        .iter()
        .any(|e| matches!(&e.step, crate::scenario::Step::QemuIo(q) if q.trace))
}

/// Prints one step's trace as one block (jobs run in parallel: one write keeps it whole).
pub fn show_trace(scratch: &Path, step: usize, trace: &str) {
    let scenario = scratch
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    eprint!("--- blkdebug trace of step {step} ({scenario}) ---\n{trace}--- end of trace ---\n");
}
