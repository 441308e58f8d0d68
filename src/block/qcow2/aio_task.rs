//! QEMU's AioTaskPool (util/aio-task.c) as qcow2 uses it for the chunks of one guest write
//! (`qcow2_co_pwritev_part`, up to `QCOW2_MAX_WORKERS` = 8 in flight), on the deterministic
//! executor.
//!
//! The request's own body ("main") and its chunk tasks are sub-coroutines of the request's
//! task, scheduled here with QEMU's rules:
//!
//! * starting a task enters it at once (`qemu_coroutine_enter`): it runs until it first
//!   suspends, then main continues;
//! * a sub-coroutine that wakes itself (the file driver completes I/O after one executor turn)
//!   goes to the back of the queue, so I/O completions are served in the order they were
//!   issued, one turn later;
//! * a sub-coroutine woken by another one while that one runs (a CoMutex hand-over, a finished
//!   task waking main) runs as soon as the waker suspends or ends, before queued completions
//!   (`aio_co_wake` from coroutine context: the waker's `co_queue_wakeup`).
//!
//! Only entries queued before a turn starts run in that turn; later ones wait for the next
//! executor turn, as separate coroutines would.

use crate::block::driver::IoResult;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// QCOW2_MAX_WORKERS.
pub const MAX_WORKERS: usize = 8;

/// Sub-coroutine id of the request body.
const MAIN: usize = usize::MAX;

type Task<'a> = Pin<Box<dyn Future<Output = IoResult> + 'a>>;

#[derive(Default)]
struct Queues {
    /// completions, served one executor turn later, in order
    ready: VecDeque<usize>,
    /// woken by the running sub-coroutine: served as soon as it suspends
    immediate: VecDeque<usize>,
}

/// Routes a sub-coroutine's wake-ups into the pool's queues and wakes the request's task.
struct SubWaker {
    id: usize,
    queues: Arc<Mutex<Queues>>,
    /// the sub-coroutine being polled right now (usize::MAX - 1 = none)
    running: Arc<Mutex<usize>>,
    outer: Waker,
}

const NONE_RUNNING: usize = usize::MAX - 1;

impl Wake for SubWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let running = *self.running.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            if q.ready.contains(&self.id) || q.immediate.contains(&self.id) {
                return;
            }
            if running != NONE_RUNNING && running != self.id {
                q.immediate.push_back(self.id);
            } else {
                q.ready.push_back(self.id);
            }
        }
        self.outer.wake_by_ref();
    }
}

/// The pool of one request (QEMU's AioTaskPool plus the coroutines it runs).
pub struct TaskPool<'a> {
    tasks: RefCell<Vec<Option<Task<'a>>>>,
    queues: Arc<Mutex<Queues>>,
    running: Arc<Mutex<usize>>,
    outer: RefCell<Option<Waker>>,
    busy: Cell<usize>,
    /// first error of a finished task (aio_task_pool_status)
    status: Cell<IoResult>,
    /// main waits for a free slot or for all tasks
    main_waiting: Cell<bool>,
}

impl<'a> TaskPool<'a> {
    pub fn new() -> Rc<Self> {
        Rc::new(TaskPool {
            tasks: RefCell::new(Vec::new()),
            queues: Arc::default(),
            running: Arc::new(Mutex::new(NONE_RUNNING)),
            outer: RefCell::new(None),
            busy: Cell::new(0),
            status: Cell::new(Ok(())),
            main_waiting: Cell::new(false),
        })
    }

    /// aio_task_pool_status.
    pub fn status(&self) -> IoResult {
        self.status.get()
    }

    fn waker(&self, id: usize) -> Waker {
        let outer = self
            .outer
            .borrow()
            .clone()
            .expect("the pool is driven by run()");
        Waker::from(Arc::new(SubWaker {
            id,
            queues: self.queues.clone(),
            running: self.running.clone(),
            outer,
        }))
    }

    fn set_running(&self, id: usize) -> usize {
        std::mem::replace(
            &mut *self.running.lock().unwrap_or_else(|e| e.into_inner()),
            id,
        )
    }

    /// Polls one sub-coroutine with its own waker.
    fn poll_one<T>(&self, id: usize, fut: Pin<&mut (dyn Future<Output = T> + '_)>) -> Poll<T> {
        let waker = self.waker(id);
        let outer = self.set_running(id);
        let r = fut.poll(&mut Context::from_waker(&waker));
        self.set_running(outer);
        r
    }

    /// Polls task `id` if it is still live; a finished task frees its slot and wakes main.
    fn poll_task(&self, id: usize) {
        let Some(mut fut) = self.tasks.borrow_mut().get_mut(id).and_then(Option::take) else {
            return;
        };
        match self.poll_one(id, fut.as_mut()) {
            Poll::Pending => self.tasks.borrow_mut()[id] = Some(fut),
            Poll::Ready(r) => {
                drop(fut);
                self.busy.set(self.busy.get() - 1);
                if let (Err(e), Ok(())) = (r, self.status.get()) {
                    self.status.set(Err(e));
                }
                if self.main_waiting.replace(false) {
                    // aio_co_wake(main) at the end of the task coroutine
                    let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                    q.immediate.push_back(MAIN);
                }
            }
        }
    }

    /// aio_task_pool_start_task: waits for a free slot, then enters the task at once.
    pub async fn start(&self, task: Task<'a>) {
        std::future::poll_fn(|_| {
            if self.busy.get() < MAX_WORKERS {
                Poll::Ready(())
            } else {
                self.main_waiting.set(true);
                Poll::Pending
            }
        })
        .await;
        self.busy.set(self.busy.get() + 1);
        let id = {
            let mut tasks = self.tasks.borrow_mut();
            tasks.push(Some(task));
            tasks.len() - 1
        };
        // the task runs now, inside main's turn, until it suspends
        self.poll_task(id);
        self.run_immediate();
    }

    /// aio_task_pool_wait_all.
    pub async fn wait_all(&self) {
        std::future::poll_fn(|_| {
            if self.busy.get() == 0 {
                Poll::Ready(())
            } else {
                self.main_waiting.set(true);
                Poll::Pending
            }
        })
        .await;
    }

    /// Runs the sub-coroutines woken by the one that just suspended (except main, which is
    /// polled by `run` only).
    fn run_immediate(&self) {
        loop {
            let next = {
                let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                match q.immediate.front() {
                    Some(&id) if id != MAIN => q.immediate.pop_front(),
                    _ => None,
                }
            };
            match next {
                Some(id) => self.poll_task(id),
                None => return,
            }
        }
    }

    fn pop(&self, from_ready: &mut usize) -> Option<usize> {
        let mut q = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = q.immediate.pop_front() {
            return Some(id);
        }
        if *from_ready == 0 {
            return None;
        }
        *from_ready -= 1;
        q.ready.pop_front()
    }

    /// Drives `main` (the request body, which starts tasks on this pool) and the tasks.
    pub fn run<F>(self: &Rc<Self>, main: F) -> Run<'a, F>
    where
        F: Future<Output = IoResult> + 'a,
    {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ready
            .push_back(MAIN);
        Run {
            pool: self.clone(),
            main: Box::pin(main),
        }
    }
}

/// The request future: main plus its tasks.
pub struct Run<'a, F> {
    pool: Rc<TaskPool<'a>>,
    main: Pin<Box<F>>,
}

impl<'a, F: Future<Output = IoResult> + 'a> Future for Run<'a, F> {
    type Output = IoResult;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<IoResult> {
        let pool = self.pool.clone();
        *pool.outer.borrow_mut() = Some(cx.waker().clone());
        // this turn serves the completions queued before it
        let mut turn = pool
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ready
            .len();
        while let Some(id) = pool.pop(&mut turn) {
            if id == MAIN {
                let main = self.main.as_mut();
                if let Poll::Ready(r) = pool.poll_one(MAIN, main) {
                    return Poll::Ready(r);
                }
            } else {
                pool.poll_task(id);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::executor::{block_on, yield_now};

    fn log_task<'a>(log: &'a RefCell<Vec<String>>, name: &'a str, turns: usize) -> Task<'a> {
        Box::pin(async move {
            for i in 0..turns {
                log.borrow_mut().push(format!("{name}{i}"));
                yield_now().await;
            }
            log.borrow_mut().push(format!("{name}done"));
            Ok(())
        })
    }

    #[test]
    fn tasks_start_at_once_and_complete_in_issue_order() {
        let out = block_on(async {
            let log = RefCell::new(Vec::new());
            let pool = TaskPool::new();
            let p = pool.clone();
            let log_ref = &log;
            let r = pool
                .run(async move {
                    p.start(log_task(log_ref, "a", 2)).await;
                    log_ref.borrow_mut().push("main".into());
                    p.start(log_task(log_ref, "b", 1)).await;
                    yield_now().await;
                    log_ref.borrow_mut().push("main2".into());
                    p.wait_all().await;
                    log_ref.borrow_mut().push("end".into());
                    Ok(())
                })
                .await;
            drop(pool);
            (r, log.into_inner())
        })
        .expect("completes");
        assert_eq!(out.0, Ok(()));
        assert_eq!(
            out.1,
            [
                "a0", "main", "b0", // a and b run until they suspend
                "a1", "bdone", "main2", // completions in the order issued
                "adone", "end" // the last task wakes main at once
            ]
        );
    }

    #[test]
    fn a_full_pool_makes_main_wait_and_errors_are_kept() {
        let out = block_on(async {
            let started = Cell::new(0);
            let pool = TaskPool::new();
            let p = pool.clone();
            let started_ref = &started;
            let r = pool
                .run(async move {
                    for i in 0..(MAX_WORKERS + 1) {
                        p.start(Box::pin(async move {
                            yield_now().await;
                            if i == 1 { Err(libc::EIO) } else { Ok(()) }
                        }))
                        .await;
                        started_ref.set(started_ref.get() + 1);
                        assert!(p.busy.get() <= MAX_WORKERS);
                    }
                    p.wait_all().await;
                    p.status()
                })
                .await;
            drop(pool);
            (r, started.get())
        })
        .expect("completes");
        assert_eq!(out, (Err(libc::EIO), MAX_WORKERS + 1));
    }
}
