//! A deterministic single-threaded executor, in the role of QEMU's coroutines and AioContext.
//!
//! Every request runs as a task. Tasks are polled in FIFO order of their wake-ups, so the same
//! commands always interleave the same way. A new task runs at once until its first suspension
//! point, as a coroutine entered by `qemu_coroutine_enter` does.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Identifies a task for as long as the executor lives (ids are never reused).
pub type TaskId = u64;

thread_local! {
    static CURRENT_TASK: Cell<Option<TaskId>> = const { Cell::new(None) };
}

/// The task being polled right now: blkdebug records it when it suspends a request, so that
/// `resume` can re-enter exactly that request.
pub fn current_task() -> Option<TaskId> {
    CURRENT_TASK.with(|c| c.get())
}

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

/// Wake-ups arrive through `std::task::Waker`, which must be `Send`; the queue they feed is the
/// only shared state and it is touched from this thread alone.
#[derive(Default)]
struct ReadyQueue {
    ids: Mutex<VecDeque<TaskId>>,
}

struct TaskWaker {
    id: TaskId,
    queue: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut ids = self.queue.ids.lock().unwrap_or_else(|e| e.into_inner());
        if !ids.contains(&self.id) {
            ids.push_back(self.id);
        }
    }
}

#[derive(Default)]
struct Inner {
    tasks: RefCell<Vec<(TaskId, Option<LocalTask>)>>,
    next_id: Cell<TaskId>,
    ready: Arc<ReadyQueue>,
}

/// The executor. Cheap to clone; clones share the same task set.
#[derive(Clone, Default)]
pub struct Executor {
    inner: Rc<Inner>,
}

impl Executor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Creates a task and runs it until it first suspends (or finishes).
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) -> TaskId {
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id + 1);
        self.inner
            .tasks
            .borrow_mut()
            .push((id, Some(Box::pin(fut))));
        self.poll_task(id);
        id
    }

    /// True while the task has not finished.
    pub fn is_live(&self, id: TaskId) -> bool {
        self.inner.tasks.borrow().iter().any(|(t, _)| *t == id)
    }

    /// Number of unfinished tasks.
    pub fn live_tasks(&self) -> usize {
        self.inner.tasks.borrow().len()
    }

    /// Polls one task now, out of queue order: `resume` re-enters a suspended request at once.
    pub fn poll_task(&self, id: TaskId) {
        let taken = {
            let mut tasks = self.inner.tasks.borrow_mut();
            tasks
                .iter_mut()
                .find(|(t, _)| *t == id)
                .and_then(|(_, f)| f.take())
        };
        // A task that is already being polled (re-entrancy) or finished has nothing to do.
        let Some(mut fut) = taken else { return };
        let waker = Waker::from(Arc::new(TaskWaker {
            id,
            queue: self.inner.ready.clone(),
        }));
        let outer = CURRENT_TASK.with(|c| c.replace(Some(id)));
        let done = fut
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        CURRENT_TASK.with(|c| c.set(outer));
        let mut tasks = self.inner.tasks.borrow_mut();
        if let Some(pos) = tasks.iter().position(|(t, _)| *t == id) {
            if done {
                tasks.remove(pos);
            } else {
                tasks[pos].1 = Some(fut);
            }
        }
    }

    fn pop_ready(&self) -> Option<TaskId> {
        let mut ids = self
            .inner
            .ready
            .ids
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ids.pop_front()
    }

    /// Runs one queued wake-up. Returns false when nothing was runnable.
    pub fn run_one(&self) -> bool {
        match self.pop_ready() {
            Some(id) => {
                self.poll_task(id);
                true
            }
            None => false,
        }
    }

    /// Runs until `done()` holds or nothing is runnable any more; returns whether `done()` held.
    pub fn run_until(&self, mut done: impl FnMut() -> bool) -> bool {
        loop {
            if done() {
                return true;
            }
            if !self.run_one() {
                return done();
            }
        }
    }

    /// Runs until no task is runnable.
    pub fn run_until_idle(&self) {
        while self.run_one() {}
    }
}

/// Suspends the current task once, letting every other runnable task go first: QEMU's
/// `aio_co_schedule(self) + qemu_coroutine_yield()`, and the completion of thread-pool I/O.
pub fn yield_now() -> YieldNow {
    YieldNow { yielded: false }
}

pub struct YieldNow {
    yielded: bool,
}

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.yielded {
            Poll::Ready(())
        } else {
            self.yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A one-shot gate a task can wait on until someone opens it (a suspended request's resume).
#[derive(Default)]
pub struct Gate {
    open: Cell<bool>,
    waiter: RefCell<Option<Waker>>,
}

impl Gate {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Opens the gate and wakes the waiter.
    pub fn open(&self) {
        self.open.set(true);
        if let Some(w) = self.waiter.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until the gate is opened.
    pub fn wait(self: &Rc<Self>) -> GateWait {
        GateWait { gate: self.clone() }
    }
}

pub struct GateWait {
    gate: Rc<Gate>,
}

impl Future for GateWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.gate.open.get() {
            Poll::Ready(())
        } else {
            *self.gate.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Runs a future to completion on a fresh executor; for synchronous callers such as qemu-img.
/// Returns None if it can never complete (it waits on something nothing will wake).
pub fn block_on<T: 'static>(fut: impl Future<Output = T> + 'static) -> Option<T> {
    let exec = Executor::new();
    let slot = Rc::new(RefCell::new(None));
    let out = slot.clone();
    exec.spawn(async move {
        *out.borrow_mut() = Some(fut.await);
    });
    exec.run_until(|| slot.borrow().is_some());
    slot.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_interleave_in_fifo_order_of_wakeups() {
        let exec = Executor::new();
        let log = Rc::new(RefCell::new(Vec::new()));
        for name in ["a", "b"] {
            let log = log.clone();
            exec.spawn(async move {
                log.borrow_mut().push(format!("{name}1"));
                yield_now().await;
                log.borrow_mut().push(format!("{name}2"));
            });
        }
        assert_eq!(*log.borrow(), ["a1", "b1"]);
        exec.run_until_idle();
        assert_eq!(*log.borrow(), ["a1", "b1", "a2", "b2"]);
        assert_eq!(exec.live_tasks(), 0);
    }

    #[test]
    fn a_gate_parks_a_task_until_opened() {
        let exec = Executor::new();
        let gate = Gate::new();
        let g = gate.clone();
        let id = exec.spawn(async move { g.wait().await });
        exec.run_until_idle();
        assert!(exec.is_live(id));
        gate.open();
        exec.run_until_idle();
        assert!(!exec.is_live(id));
    }

    #[test]
    fn block_on_reports_a_future_that_can_never_finish() {
        assert_eq!(block_on(async { 7 }), Some(7));
        let gate = Gate::new();
        let g = gate.clone();
        assert_eq!(block_on(async move { g.wait().await }), None);
    }
}
