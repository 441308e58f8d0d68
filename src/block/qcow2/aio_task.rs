//! QEMU's AioTaskPool (util/aio-task.c) as qcow2 uses it for the chunks of one guest request
//! (`qcow2_co_preadv_part`, `qcow2_co_pwritev_part`; up to `QCOW2_MAX_WORKERS` = 8 in
//! flight).
//!
//! Each task is a coroutine of its own on the executor: starting one enters it at once, and
//! the request's coroutine ("main") continues when the task first yields. A task that ends
//! while main waits for a free slot or for all tasks wakes main from coroutine context, so
//! main runs right after the task's last step, as `aio_co_wake` does there.

use crate::block::driver::IoResult;
use crate::block::executor::{self, Gate};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;

/// QCOW2_MAX_WORKERS.
pub const MAX_WORKERS: usize = 8;

/// The pool of one request.
pub struct TaskPool {
    busy: Cell<usize>,
    /// first error of a finished task (aio_task_pool_status)
    status: Cell<IoResult>,
    /// main waits for a task to end
    waiting: RefCell<Option<Rc<Gate>>>,
}

impl TaskPool {
    pub fn new() -> Rc<Self> {
        Rc::new(Self {
            busy: Cell::new(0),
            status: Cell::new(Ok(())),
            waiting: RefCell::new(None),
        })
    }

    /// aio_task_pool_status.
    pub fn status(&self) -> IoResult {
        self.status.get()
    }

    async fn wait_one(&self) {
        let gate = Gate::new();
        *self.waiting.borrow_mut() = Some(gate.clone());
        gate.wait().await;
    }

    /// aio_task_pool_start_task: waits for a free slot, then enters the task at once.
    pub async fn start(self: &Rc<Self>, task: impl Future<Output = IoResult> + 'static) {
        while self.busy.get() >= MAX_WORKERS {
            self.wait_one().await;
        }
        self.busy.set(self.busy.get() + 1);
        let pool = self.clone();
        let exec = executor::current().expect("qcow2 requests run as coroutines");
        exec.spawn(async move {
            let r = task.await;
            pool.busy.set(pool.busy.get() - 1);
            if let (Err(e), Ok(())) = (r, pool.status.get()) {
                pool.status.set(Err(e));
            }
            let main = pool.waiting.borrow_mut().take();
            if let Some(main) = main {
                main.open();
            }
        });
    }

    /// aio_task_pool_wait_all.
    pub async fn wait_all(&self) {
        while self.busy.get() > 0 {
            self.wait_one().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::executor::{Executor, pool_job};

    #[test]
    fn tasks_start_at_once_and_end_in_completion_order() {
        let exec = Executor::new();
        let log = Rc::new(RefCell::new(Vec::<String>::new()));
        let l = log.clone();
        exec.spawn(async move {
            let pool = TaskPool::new();
            for (name, turns) in [("a", 2), ("b", 1)] {
                let lt = l.clone();
                pool.start(async move {
                    for i in 0..turns {
                        lt.borrow_mut().push(format!("{name}{i}"));
                        pool_job().await;
                    }
                    lt.borrow_mut().push(format!("{name}done"));
                    Ok(())
                })
                .await;
                l.borrow_mut().push(format!("main after {name}"));
            }
            pool.wait_all().await;
            l.borrow_mut().push("end".into());
        });
        exec.run_until_idle();
        assert_eq!(
            *log.borrow(),
            [
                "a0",
                "main after a",
                "b0",
                "main after b",
                // the newest job completes first; b's end wakes nobody, a's end wakes main
                "bdone",
                "a1",
                "adone",
                "end"
            ]
        );
    }

    #[test]
    fn a_full_pool_makes_main_wait_and_the_first_error_is_kept() {
        let exec = Executor::new();
        let out = Rc::new(Cell::new(None));
        let o = out.clone();
        exec.spawn(async move {
            let pool = TaskPool::new();
            for i in 0..(MAX_WORKERS + 1) {
                pool.start(async move {
                    pool_job().await;
                    if i == 1 { Err(libc::EIO) } else { Ok(()) }
                })
                .await;
                assert!(pool.busy.get() <= MAX_WORKERS);
            }
            pool.wait_all().await;
            o.set(Some(pool.status()));
        });
        exec.run_until_idle();
        assert_eq!(out.get(), Some(Err(libc::EIO)));
    }
}
