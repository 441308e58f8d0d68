//! The driver-wide metadata lock (QEMU's `s->lock`, a CoMutex): metadata updates of concurrent
//! requests must not interleave, while data I/O runs with the lock released.
//!
//! Unlocking with waiters hands the lock to the oldest waiter, which runs as soon as the
//! unlocking coroutine yields: nobody can take the lock in between, as with QEMU's CoMutex.

use crate::block::executor::CoQueue;
use std::cell::Cell;

#[derive(Default)]
pub struct CoMutex {
    locked: Cell<bool>,
    /// waiters that were handed the lock but have not run yet
    handed: Cell<usize>,
    waiters: CoQueue,
    waiting: Cell<usize>,
}

impl CoMutex {
    pub async fn lock(&self) {
        if !self.locked.get() {
            self.locked.set(true);
            return;
        }
        self.waiting.set(self.waiting.get() + 1);
        self.waiters.wait().await;
        // the unlocker kept `locked` set for us
        self.handed.set(self.handed.get() - 1);
    }

    pub fn unlock(&self) {
        debug_assert!(self.locked.get(), "unlocking a CoMutex that is not locked");
        if self.waiting.get() > 0 {
            self.waiting.set(self.waiting.get() - 1);
            self.handed.set(self.handed.get() + 1);
            self.waiters.next();
        } else {
            self.locked.set(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::executor::{Executor, pool_job};
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn unlock_hands_the_lock_to_the_oldest_waiter() {
        let exec = Executor::new();
        let m = Rc::new(CoMutex::default());
        let log = Rc::new(RefCell::new(Vec::new()));
        for name in ["a", "b", "c"] {
            let (m, log) = (m.clone(), log.clone());
            exec.spawn(async move {
                m.lock().await;
                log.borrow_mut().push(format!("{name} locked"));
                pool_job().await;
                m.unlock();
                log.borrow_mut().push(format!("{name} unlocked"));
            });
        }
        exec.run_until_idle();
        assert_eq!(
            *log.borrow(),
            [
                "a locked",
                "a unlocked",
                "b locked",
                "b unlocked",
                "c locked",
                "c unlocked"
            ]
        );
        assert!(!m.locked.get());
    }
}
