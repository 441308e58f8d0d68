//! A deterministic model of QEMU's AioContext: coroutines, bottom halves, the thread pool that
//! performs file I/O, and the points where the main loop polls.
//!
//! The order in which qemu-io prints completions is decided by these mechanisms, so they are
//! modelled one by one rather than approximated by a ready queue:
//!
//! * **Coroutines** are tasks. Entering one polls it at once, nested inside whoever entered it
//!   (`qemu_coroutine_enter`). A coroutine woken from inside another coroutine (a CoMutex
//!   hand-over, a CoQueue, a finished aio task waking its pool) goes on the waker's wake-up
//!   queue and runs as soon as the waker yields or ends, depth first (`aio_co_wake` from
//!   coroutine context, `co_queue_wakeup`). A coroutine woken from outside any coroutine (a
//!   bottom half, a qemu-io command) is entered immediately.
//! * **Bottom halves** run only when the main loop polls ([`Executor::aio_poll`]). A poll takes
//!   the list of pending bottom halves and runs it newest first, as QEMU's `aio_bh_poll` does;
//!   bottom halves scheduled meanwhile wait for the next poll.
//! * **The thread pool** (file I/O): a request's system call is made when it is submitted, and
//!   its coroutine waits for the pool's completion bottom half. A job is finished at the first
//!   poll that starts after it was submitted (QEMU's workers are much faster than its main
//!   loop, but never faster than the bottom half that is already running). The completion
//!   bottom half completes finished jobs newest first and starts over after each one, as
//!   `thread_pool_completion_bh` walks its list.
//! * **aio_co_schedule** ([`yield_now`], and a coroutine waking itself): the coroutine runs again
//!   from the context's scheduling bottom half at the next poll, in scheduling order.
//!
//! Nothing here depends on time, so the same commands always print the same way.

use super::int_map::IntMap;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// Identifies a coroutine for as long as the executor lives (ids are never reused).
pub type TaskId = u64;

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

thread_local! {
    /// Executors of this thread by id: wakers carry only ids, so that they are `Send`.
    static EXECUTORS: RefCell<IntMap<u64, Weak<Inner>>> = RefCell::new(IntMap::default());
    static NEXT_EXECUTOR: Cell<u64> = const { Cell::new(0) };
    /// The coroutines being polled, innermost last, with their executors.
    static RUNNING: RefCell<Vec<(Rc<Inner>, TaskId)>> = const { RefCell::new(Vec::new()) };
}

/// The coroutine being polled right now: blkdebug records it when it suspends a request, so
/// that `resume` can re-enter exactly that coroutine.
pub fn current_task() -> Option<TaskId> {
    RUNNING.with(|r| r.borrow().last().map(|(_, id)| *id))
}

/// The executor of the coroutine being polled.
pub fn current() -> Option<Executor> {
    RUNNING.with(|r| {
        r.borrow().last().map(|(inner, _)| Executor {
            inner: inner.clone(),
        })
    })
}

struct TaskWaker {
    executor: u64,
    task: TaskId,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let inner = EXECUTORS.with(|e| e.borrow().get(&self.executor).and_then(Weak::upgrade));
        if let Some(inner) = inner {
            Executor { inner }.wake(self.task);
        }
    }
}

struct Task {
    /// None while the coroutine is being polled
    future: Option<LocalTask>,
    /// coroutines this one woke while running (QEMU's `co_queue_wakeup`)
    wakeups: VecDeque<TaskId>,
    /// woken while it was being polled higher up the stack: poll it again when it yields
    rewake: bool,
    /// waiting in the scheduling bottom half's list
    scheduled: bool,
    waker: Waker,
}

enum BottomHalf {
    Oneshot(Box<dyn FnOnce()>),
    ThreadPool,
    CoSchedule,
}

struct Job {
    waker: Waker,
    /// the poll during which (or before which) it was submitted
    epoch: u64,
    done: Rc<Cell<bool>>,
}

struct Inner {
    id: u64,
    tasks: RefCell<IntMap<TaskId, Task>>,
    next_task: Cell<TaskId>,
    /// pending bottom halves, oldest first
    bhs: RefCell<Vec<BottomHalf>>,
    /// the memory of the last poll's list of bottom halves, for the next one
    bhs_spare: RefCell<Vec<BottomHalf>>,
    pool_bh_pending: Cell<bool>,
    co_bh_pending: Cell<bool>,
    /// thread-pool jobs, newest first (QEMU inserts at the head of its list)
    jobs: RefCell<VecDeque<Job>>,
    /// coroutines for the scheduling bottom half, in scheduling order
    scheduled: RefCell<VecDeque<TaskId>>,
    /// counts polls; a job submitted at epoch e is finished from poll e+1 on
    epoch: Cell<u64>,
    /// freed buffers by size: the process heap, as far as the block layer can observe it
    freed: RefCell<IntMap<usize, Vec<u8>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let id = self.id;
        let _ = EXECUTORS.try_with(|e| e.borrow_mut().remove(&id));
    }
}

/// The executor. Cheap to clone; clones share the same coroutines.
#[derive(Clone)]
pub struct Executor {
    inner: Rc<Inner>,
}

impl Default for Executor {
    fn default() -> Self {
        Self::new()
    }
}

impl Executor {
    pub fn new() -> Self {
        let id = NEXT_EXECUTOR.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        let inner = Rc::new(Inner {
            id,
            tasks: RefCell::new(IntMap::default()),
            next_task: Cell::new(0),
            bhs: RefCell::new(Vec::new()),
            bhs_spare: RefCell::new(Vec::new()),
            pool_bh_pending: Cell::new(false),
            co_bh_pending: Cell::new(false),
            jobs: RefCell::new(VecDeque::new()),
            scheduled: RefCell::new(VecDeque::new()),
            epoch: Cell::new(0),
            freed: RefCell::new(IntMap::default()),
        });
        EXECUTORS.with(|e| e.borrow_mut().insert(id, Rc::downgrade(&inner)));
        Self { inner }
    }

    /// Creates a coroutine and enters it: it runs until it first yields (or ends), nested in
    /// the caller, as `qemu_coroutine_create` + `qemu_coroutine_enter`.
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) -> TaskId {
        let id = self.inner.next_task.get();
        self.inner.next_task.set(id + 1);
        let waker = Waker::from(Arc::new(TaskWaker {
            executor: self.inner.id,
            task: id,
        }));
        self.inner.tasks.borrow_mut().insert(
            id,
            Task {
                future: Some(Box::pin(fut)),
                wakeups: VecDeque::new(),
                rewake: false,
                scheduled: false,
                waker,
            },
        );
        self.enter(id);
        id
    }

    /// True while the coroutine has not finished.
    pub fn is_live(&self, id: TaskId) -> bool {
        self.inner.tasks.borrow().contains_key(&id)
    }

    /// Number of unfinished coroutines.
    pub fn live_tasks(&self) -> usize {
        self.inner.tasks.borrow().len()
    }

    fn running(&self, id: TaskId) -> bool {
        RUNNING.with(|r| {
            r.borrow()
                .iter()
                .any(|(inner, t)| Rc::ptr_eq(inner, &self.inner) && *t == id)
        })
    }

    /// Enters a coroutine now (`qemu_aio_coroutine_enter`): it runs until it yields, then the
    /// coroutines it woke meanwhile run, depth first.
    pub fn enter(&self, id: TaskId) {
        // usually nothing else becomes runnable: the queue then never allocates
        let mut pending = VecDeque::new();
        let mut first = Some(id);
        while let Some(to) = first.take().or_else(|| pending.pop_front()) {
            let (fut, waker) = {
                let mut tasks = self.inner.tasks.borrow_mut();
                let Some(task) = tasks.get_mut(&to) else {
                    continue;
                };
                let Some(fut) = task.future.take() else {
                    // Running further up the stack: it runs again when it yields there.
                    task.rewake = true;
                    continue;
                };
                (fut, task.waker.clone())
            };
            let mut fut = fut;
            RUNNING.with(|r| r.borrow_mut().push((self.inner.clone(), to)));
            let done = fut
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready();
            RUNNING.with(|r| r.borrow_mut().pop());
            let mut tasks = self.inner.tasks.borrow_mut();
            let task = tasks
                .get_mut(&to)
                .expect("a coroutine is removed only here");
            let woken = std::mem::take(&mut task.wakeups);
            let rewake = std::mem::take(&mut task.rewake);
            if done {
                tasks.remove(&to);
            } else {
                task.future = Some(fut);
            }
            drop(tasks);
            if rewake && !done {
                pending.push_front(to);
            }
            for w in woken.into_iter().rev() {
                pending.push_front(w);
            }
        }
    }

    /// `aio_co_wake`: from inside a coroutine the woken one runs when the waker yields; from
    /// outside any coroutine it is entered at once. A coroutine that wakes itself is
    /// rescheduled for the next poll (`aio_co_schedule`), as yielding to the main loop.
    pub fn wake(&self, id: TaskId) {
        let current = RUNNING.with(|r| {
            r.borrow()
                .last()
                .filter(|(inner, _)| Rc::ptr_eq(inner, &self.inner))
                .map(|(_, t)| *t)
        });
        match current {
            Some(cur) if cur == id => self.schedule(id),
            Some(cur) => {
                let mut tasks = self.inner.tasks.borrow_mut();
                if !tasks.contains_key(&id) {
                    return;
                }
                if let Some(t) = tasks.get_mut(&cur)
                    && !t.wakeups.contains(&id)
                {
                    t.wakeups.push_back(id);
                }
            }
            None if self.running(id) => {
                if let Some(t) = self.inner.tasks.borrow_mut().get_mut(&id) {
                    t.rewake = true;
                }
            }
            None => self.enter(id),
        }
    }

    /// `aio_co_schedule`: the coroutine runs from the scheduling bottom half at the next poll.
    pub fn schedule(&self, id: TaskId) {
        {
            let mut tasks = self.inner.tasks.borrow_mut();
            let Some(t) = tasks.get_mut(&id) else { return };
            if t.scheduled {
                return;
            }
            t.scheduled = true;
        }
        self.inner.scheduled.borrow_mut().push_back(id);
        if !self.inner.co_bh_pending.replace(true) {
            self.inner.bhs.borrow_mut().push(BottomHalf::CoSchedule);
        }
    }

    /// Schedules a one-shot bottom half (`aio_bh_schedule_oneshot`).
    pub fn bh_oneshot(&self, f: impl FnOnce() + 'static) {
        self.inner
            .bhs
            .borrow_mut()
            .push(BottomHalf::Oneshot(Box::new(f)));
    }

    fn schedule_pool_bh(&self) {
        if !self.inner.pool_bh_pending.replace(true) {
            self.inner.bhs.borrow_mut().push(BottomHalf::ThreadPool);
        }
    }

    /// Queues a thread-pool job whose work is already done: the submitting coroutine is woken
    /// by the pool's completion bottom half at the next poll.
    fn submit_job(&self, waker: Waker, done: Rc<Cell<bool>>) {
        self.inner.jobs.borrow_mut().push_front(Job {
            waker,
            epoch: self.inner.epoch.get(),
            done,
        });
        self.schedule_pool_bh();
    }

    /// One iteration of the main loop (`aio_poll`): runs the bottom halves pending now, newest
    /// first. Returns false when there was nothing to run: a blocking poll would wait forever.
    pub fn aio_poll(&self) -> bool {
        self.inner.epoch.set(self.inner.epoch.get() + 1);
        let spare = std::mem::take(&mut *self.inner.bhs_spare.borrow_mut());
        let mut slice = std::mem::replace(&mut *self.inner.bhs.borrow_mut(), spare);
        if slice.is_empty() {
            *self.inner.bhs_spare.borrow_mut() = slice;
            return false;
        }
        while let Some(bh) = slice.pop() {
            match bh {
                BottomHalf::Oneshot(f) => f(),
                BottomHalf::ThreadPool => self.pool_completion_bh(),
                BottomHalf::CoSchedule => self.co_schedule_bh(),
            }
        }
        *self.inner.bhs_spare.borrow_mut() = slice;
        true
    }

    fn pool_completion_bh(&self) {
        self.inner.pool_bh_pending.set(false);
        let epoch = self.inner.epoch.get();
        loop {
            let job = {
                let mut jobs = self.inner.jobs.borrow_mut();
                let Some(pos) = jobs.iter().position(|j| j.epoch < epoch) else {
                    break;
                };
                jobs.remove(pos).expect("position is in range")
            };
            job.done.set(true);
            job.waker.wake();
        }
        if !self.inner.jobs.borrow().is_empty() {
            self.schedule_pool_bh();
        }
    }

    fn co_schedule_bh(&self) {
        self.inner.co_bh_pending.set(false);
        let batch = std::mem::take(&mut *self.inner.scheduled.borrow_mut());
        for id in batch {
            if let Some(t) = self.inner.tasks.borrow_mut().get_mut(&id) {
                t.scheduled = false;
            }
            self.enter(id);
        }
    }

    /// The memory the last freed buffer of `len` bytes had, contents and all, as the C heap
    /// hands it out again (see `io::pad_buffer` for why that is observable).
    pub fn take_freed(&self, len: usize) -> Option<Vec<u8>> {
        self.inner.freed.borrow_mut().remove(&len)
    }

    pub fn put_freed(&self, buf: Vec<u8>) {
        self.inner.freed.borrow_mut().insert(buf.len(), buf);
    }

    /// Polls until `done()` holds (`AIO_WAIT_WHILE(!done)`); false if it never will.
    pub fn poll_while(&self, mut done: impl FnMut() -> bool) -> bool {
        while !done() {
            if !self.aio_poll() {
                return done();
            }
        }
        true
    }

    /// Polls until nothing is pending any more.
    pub fn run_until_idle(&self) {
        while self.aio_poll() {}
    }
}

/// Waits for a thread-pool job whose work was just done: completes at the pool's next
/// completion bottom half (QEMU's `thread_pool_submit_co`). Outside an executor it completes
/// at once.
pub fn pool_job() -> PoolJob {
    PoolJob { done: None }
}

pub struct PoolJob {
    done: Option<Rc<Cell<bool>>>,
}

impl Future for PoolJob {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &self.done {
            Some(d) if d.get() => Poll::Ready(()),
            Some(_) => Poll::Pending,
            None => match current() {
                None => Poll::Ready(()),
                Some(exec) => {
                    let done = Rc::new(Cell::new(false));
                    exec.submit_job(cx.waker().clone(), done.clone());
                    self.done = Some(done);
                    Poll::Pending
                }
            },
        }
    }
}

/// Lets the main loop run once before continuing: `aio_co_schedule(self)` and yield.
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
            // a coroutine waking itself is rescheduled for the next poll
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A queue of coroutines waiting for something (QEMU's CoQueue): `next` wakes the oldest
/// waiter, `restart_all` all of them, in order.
#[derive(Default)]
pub struct CoQueue {
    waiters: RefCell<VecDeque<Rc<Waiter>>>,
}

#[derive(Default)]
struct Waiter {
    woken: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Waiter {
    fn wake(&self) {
        self.woken.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

impl CoQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until woken by `next` or `restart_all`.
    pub fn wait(&self) -> CoQueueWait {
        let w = Rc::new(Waiter::default());
        self.waiters.borrow_mut().push_back(w.clone());
        CoQueueWait { waiter: w }
    }

    /// Wakes the oldest waiter; false if there was none.
    pub fn next(&self) -> bool {
        let w = self.waiters.borrow_mut().pop_front();
        match w {
            Some(w) => {
                w.wake();
                true
            }
            None => false,
        }
    }

    /// Wakes every waiter, oldest first.
    pub fn restart_all(&self) {
        let all = std::mem::take(&mut *self.waiters.borrow_mut());
        for w in all {
            w.wake();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waiters.borrow().is_empty()
    }
}

pub struct CoQueueWait {
    waiter: Rc<Waiter>,
}

impl Future for CoQueueWait {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiter.woken.get() {
            Poll::Ready(())
        } else {
            *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// A one-shot gate a coroutine can wait on until someone opens it.
#[derive(Default)]
pub struct Gate {
    waiter: Waiter,
}

impl Gate {
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Opens the gate and wakes the waiter.
    pub fn open(&self) {
        self.waiter.wake();
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
        if self.gate.waiter.woken.get() {
            Poll::Ready(())
        } else {
            *self.gate.waiter.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// Runs a future to completion on a fresh executor, polling as a synchronous QEMU caller does;
/// for qemu-img. Returns None if it can never complete (it waits on something nothing will
/// wake).
pub fn block_on<T: 'static>(fut: impl Future<Output = T> + 'static) -> Option<T> {
    let exec = Executor::new();
    let slot = Rc::new(RefCell::new(None));
    let out = slot.clone();
    exec.spawn(async move {
        *out.borrow_mut() = Some(fut.await);
    });
    exec.poll_while(|| slot.borrow().is_some());
    slot.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log() -> Rc<RefCell<Vec<String>>> {
        Rc::new(RefCell::new(Vec::new()))
    }

    fn push(log: &Rc<RefCell<Vec<String>>>, s: &str) {
        log.borrow_mut().push(s.to_string());
    }

    #[test]
    fn a_new_coroutine_runs_until_it_first_yields() {
        let exec = Executor::new();
        let l = log();
        let l2 = l.clone();
        exec.spawn(async move {
            push(&l2, "a1");
            pool_job().await;
            push(&l2, "a2");
        });
        assert_eq!(*l.borrow(), ["a1"]);
        exec.run_until_idle();
        assert_eq!(*l.borrow(), ["a1", "a2"]);
        assert_eq!(exec.live_tasks(), 0);
    }

    #[test]
    fn jobs_complete_newest_first_and_not_in_the_poll_that_submits_them() {
        let exec = Executor::new();
        let l = log();
        for name in ["a", "b"] {
            let l = l.clone();
            exec.spawn(async move {
                pool_job().await;
                push(&l, &format!("{name}1"));
                // submitted during a poll: finished only at the next one
                pool_job().await;
                push(&l, &format!("{name}2"));
            });
        }
        assert!(exec.aio_poll());
        assert_eq!(*l.borrow(), ["b1", "a1"]);
        assert!(exec.aio_poll());
        // b submitted its second job first, so a's is the newer one
        assert_eq!(*l.borrow(), ["b1", "a1", "a2", "b2"]);
        assert!(!exec.aio_poll());
    }

    #[test]
    fn bottom_halves_run_newest_first_and_later_ones_wait_for_the_next_poll() {
        let exec = Executor::new();
        let l = log();
        for name in ["x", "y"] {
            let l = l.clone();
            let e = exec.clone();
            exec.bh_oneshot(move || {
                push(&l, name);
                let l = l.clone();
                e.bh_oneshot(move || push(&l, "late"));
            });
        }
        assert!(exec.aio_poll());
        assert_eq!(*l.borrow(), ["y", "x"]);
        assert!(exec.aio_poll());
        assert_eq!(*l.borrow(), ["y", "x", "late", "late"]);
    }

    #[test]
    fn a_wake_from_a_coroutine_runs_when_the_waker_yields() {
        let exec = Executor::new();
        let l = log();
        let q = Rc::new(CoQueue::new());
        let (l1, q1) = (l.clone(), q.clone());
        exec.spawn(async move {
            push(&l1, "waiter sleeps");
            q1.wait().await;
            push(&l1, "waiter runs");
        });
        let (l2, q2) = (l.clone(), q.clone());
        exec.spawn(async move {
            q2.next();
            push(&l2, "waker continues");
            pool_job().await;
            push(&l2, "waker done");
        });
        assert_eq!(
            *l.borrow(),
            ["waiter sleeps", "waker continues", "waiter runs"]
        );
        exec.run_until_idle();
        assert_eq!(exec.live_tasks(), 0);
    }

    #[test]
    fn a_wake_from_outside_enters_at_once() {
        let exec = Executor::new();
        let gate = Gate::new();
        let g = gate.clone();
        let l = log();
        let l1 = l.clone();
        let id = exec.spawn(async move {
            g.wait().await;
            push(&l1, "through");
        });
        assert!(exec.is_live(id));
        gate.open();
        assert_eq!(*l.borrow(), ["through"]);
        assert!(!exec.is_live(id));
    }

    #[test]
    fn yield_now_runs_again_at_the_next_poll_in_scheduling_order() {
        let exec = Executor::new();
        let l = log();
        for name in ["a", "b"] {
            let l = l.clone();
            exec.spawn(async move {
                yield_now().await;
                push(&l, name);
            });
        }
        assert!(l.borrow().is_empty());
        assert!(exec.aio_poll());
        assert_eq!(*l.borrow(), ["a", "b"]);
    }

    #[test]
    fn block_on_reports_a_future_that_can_never_finish() {
        assert_eq!(block_on(async { 7 }), Some(7));
        assert_eq!(
            block_on(async {
                pool_job().await;
                8
            }),
            Some(8)
        );
        let gate = Gate::new();
        let g = gate.clone();
        assert_eq!(block_on(async move { g.wait().await }), None);
    }
}
