//! SIGINT and SIGTERM during a run: the run stops between steps, the QEMU children (each in a
//! process group of its own, so a terminal's Ctrl-C reaches only us) are killed, scratch
//! directories go with their owners' unwinding, and the report so far is printed.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that asked the run to stop, 0 while none has.
static SIGNALLED: AtomicI32 = AtomicI32::new(0);

/// Process groups of QEMU children still running (each child leads its own group).
static CHILDREN: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// The signal received, if the run should stop.
pub fn requested() -> Option<i32> {
    match SIGNALLED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    // A second signal while stopping: the user insists, so die of it at once.
    if SIGNALLED.swap(signal, Ordering::SeqCst) != 0 {
        // SAFETY: signal() and raise() are async-signal-safe.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
}

/// Installs the handlers for SIGINT and SIGTERM (the runner only; `io`/`img` keep the defaults).
pub fn install() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only touches an atomic and async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Records a running child (the leader of its own process group). If a stop was already
/// requested, it is killed at once.
pub fn register(pid: u32) {
    let pid = pid as i32;
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(pid);
    if requested().is_some() {
        kill_group(pid);
    }
}

/// Forgets a child that has been waited for.
pub fn unregister(pid: u32) {
    if let Some(set) = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        set.remove(&(pid as i32));
    }
}

/// Kills every registered child's process group.
pub fn kill_children() {
    let guard = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
    for &pid in guard.iter().flatten() {
        kill_group(pid);
    }
}

fn kill_group(pid: i32) {
    // SAFETY: kill(2) on a process group we created; at worst it no longer exists (ESRCH).
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}
