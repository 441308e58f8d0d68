//! The driver-wide metadata lock (QEMU's `s->lock`, a CoMutex): metadata updates of concurrent
//! requests must not interleave, while data I/O runs with the lock released.

use crate::block::executor::Gate;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

#[derive(Default)]
pub struct CoMutex {
    locked: Cell<bool>,
    waiters: RefCell<VecDeque<Rc<Gate>>>,
}

impl CoMutex {
    pub async fn lock(&self) {
        while self.locked.get() {
            let gate = Gate::new();
            self.waiters.borrow_mut().push_back(gate.clone());
            gate.wait().await;
        }
        self.locked.set(true);
    }

    pub fn unlock(&self) {
        self.locked.set(false);
        // Wake waiters in arrival order; each re-checks the flag, so a late locker is harmless.
        let next = self.waiters.borrow_mut().pop_front();
        if let Some(g) = next {
            g.open();
        }
    }
}
