//! The blkdebug filter: rule-driven error injection and breakpoints, with QEMU 10.0.2's exact
//! semantics (rule lists newest-first, the active list, state applied after all rules of an
//! event, sticky and `once` rules, breakpoints that suspend requests until resumed).

mod active;
pub mod config;
pub mod events;
pub mod limits;
pub mod rules;
pub mod setup;
pub mod tally;

use super::driver::{BlockDriver, BlockStatus, BoxFut, Capabilities, IoResult, ReqFlags, status};
use super::executor::{TaskId, yield_now};
use super::io;
use super::node::Node;
use crate::output::Console;
use events::Event;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// The kinds of request rule_check distinguishes (QEMU's BlkdebugIOType), as mask bits.
pub mod iotype {
    pub const READ: u8 = 1 << 0;
    pub const WRITE: u8 = 1 << 1;
    pub const WRITE_ZEROES: u8 = 1 << 2;
    pub const DISCARD: u8 = 1 << 3;
    pub const FLUSH: u8 = 1 << 4;
    pub const BLOCK_STATUS: u8 = 1 << 5;
    /// what a rule without `iotype` matches: everything but block-status
    pub const DEFAULT_MASK: u8 = READ | WRITE | WRITE_ZEROES | DISCARD | FLUSH;
}

/// An inject-error rule's parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectError {
    /// QEMU keeps the errno as a C int and returns its negation: 0 lets the request through,
    /// a negative value makes the request "succeed" without reaching the child.
    pub errno: i32,
    /// byte offset at this node (`sector * 512`), or None for any offset
    pub offset: Option<u64>,
    pub once: bool,
    pub immediately: bool,
    pub iotype_mask: u8,
}

#[derive(Clone, Debug)]
enum Action {
    InjectError(InjectError),
    SetState { new_state: i32 },
    Suspend { tag: String },
}

#[derive(Debug)]
struct Rule {
    id: u64,
    /// 0 = any state
    state: i32,
    action: Action,
}

/// How many times a suspended request has been re-entered, and who waits for it.
#[derive(Default)]
struct Resumes {
    granted: Cell<usize>,
    waker: RefCell<Option<Waker>>,
}

struct Suspended {
    tag: String,
    task: Option<TaskId>,
    resumes: Rc<Resumes>,
}

/// The blkdebug state of one node.
pub struct BlkDebug {
    state: Cell<i32>,
    /// per event, head first: QEMU inserts new rules at the head
    rules: RefCell<Vec<Vec<Rc<Rule>>>>,
    /// inject-error rules armed by the last event that had some, in match order
    active: RefCell<active::ActiveRules>,
    /// bumped whenever a rule list changes
    rules_version: Cell<u64>,
    /// per event, how many of its rules are not inject-error rules
    other_rules: RefCell<Vec<usize>>,
    /// head first (most recent)
    suspended: RefCell<Vec<Suspended>>,
    next_id: Cell<u64>,
    console: Rc<Console>,
}

/// The outcome of checking a request against the active rules.
enum Check {
    Pass,
    Fail(i32),
    /// a negative errno: the driver returns a positive value, which callers take as success
    FakeSuccess,
}

impl BlkDebug {
    pub fn new(console: Rc<Console>) -> Self {
        Self {
            state: Cell::new(1),
            rules: RefCell::new(vec![Vec::new(); Event::ALL.len()]),
            active: RefCell::new(active::ActiveRules::default()),
            rules_version: Cell::new(0),
            other_rules: RefCell::new(vec![0; Event::ALL.len()]),
            suspended: RefCell::new(Vec::new()),
            next_id: Cell::new(0),
            console,
        }
    }

    fn add_rule(&self, event: Event, state: i32, action: Action) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        if !matches!(action, Action::InjectError(_)) {
            self.other_rules.borrow_mut()[event.index()] += 1;
        }
        self.rules.borrow_mut()[event.index()].insert(0, Rc::new(Rule { id, state, action }));
        self.rules_version.set(self.rules_version.get() + 1);
    }

    /// Adds an inject-error rule (rules are added in definition order).
    pub fn add_inject_error(&self, event: Event, state: i32, rule: InjectError) {
        self.add_rule(event, state, Action::InjectError(rule));
    }

    /// Adds a set-state rule.
    pub fn add_set_state(&self, event: Event, state: i32, new_state: i32) {
        self.add_rule(event, state, Action::SetState { new_state });
    }

    fn say(&self, text: String) {
        self.console.out(&text);
    }

    fn remove_rule(&self, id: u64) {
        let mut others = self.other_rules.borrow_mut();
        for (event, list) in self.rules.borrow_mut().iter_mut().enumerate() {
            list.retain(|r| {
                let keep = r.id != id;
                if !keep && !matches!(r.action, Action::InjectError(_)) {
                    others[event] -= 1;
                }
                keep
            });
        }
        self.rules_version.set(self.rules_version.get() + 1);
    }

    /// Processes event `event`: returns how many breakpoints suspended the current request.
    fn process_event(&self, event: Event) -> Option<Rc<Resumes>> {
        let rules = self.rules.borrow();
        let list = &rules[event.index()];
        if list.is_empty() {
            return None;
        }
        let old_state = self.state.get();
        let source = (event.index(), old_state, self.rules_version.get());
        // The same event in the same state with the same rules arms the same list again; when
        // that is all the event does, there is nothing to redo.
        if self.other_rules.borrow()[event.index()] == 0
            && self.active.borrow().source() == Some(source)
        {
            return None;
        }
        let mut new_state = old_state;
        // QEMU resets the active list at the first matching inject-error rule of the event and
        // inserts each at the head while walking newest-first: the result is definition order.
        let mut armed: Option<Vec<Rc<Rule>>> = None;
        let mut suspends = Vec::new();
        for rule in list {
            if rule.state != 0 && rule.state != old_state {
                continue;
            }
            match &rule.action {
                Action::InjectError(_) => armed.get_or_insert_with(Vec::new).push(rule.clone()),
                Action::SetState { new_state: n } => new_state = *n,
                Action::Suspend { tag } => suspends.push((rule.id, tag.clone())),
            }
        }
        drop(rules);
        if let Some(mut armed) = armed {
            armed.reverse();
            self.active.borrow_mut().replace(armed, source);
        }
        let suspends: Vec<String> = suspends
            .into_iter()
            .map(|(id, tag)| {
                self.remove_rule(id);
                tag
            })
            .collect();
        self.state.set(new_state);
        if suspends.is_empty() {
            return None;
        }
        let resumes = Rc::new(Resumes::default());
        let task = super::executor::current_task();
        for tag in suspends {
            self.say(format!("blkdebug: Suspended request '{tag}'\n"));
            self.suspended.borrow_mut().insert(
                0,
                Suspended {
                    tag,
                    task,
                    resumes: resumes.clone(),
                },
            );
        }
        Some(resumes)
    }

    fn rule_check(&self, offset: u64, bytes: u64, kind: u8) -> (Check, bool) {
        let mut active = self.active.borrow_mut();
        if active.is_empty() {
            return (Check::Pass, true);
        }
        let Some(pos) = active.first_match(offset, bytes, kind) else {
            return (Check::Pass, true);
        };
        let Action::InjectError(ie) = active.get(pos).action.clone() else {
            unreachable!("the active list holds only inject-error rules")
        };
        if ie.errno == 0 {
            return (Check::Pass, true);
        }
        if ie.once {
            let id = active.remove(pos).id;
            drop(active);
            self.remove_rule(id);
        }
        let check = if ie.errno > 0 {
            Check::Fail(ie.errno)
        } else {
            Check::FakeSuccess
        };
        (check, ie.immediately)
    }

    /// Checks a request; an injected error without `immediately` yields once before failing.
    async fn check(&self, node: &Node, offset: u64, bytes: u64, kind: u8) -> Result<bool, i32> {
        let (check, immediately) = if self.active.borrow().is_empty() {
            (Check::Pass, true)
        } else {
            self.rule_check(offset, bytes, kind)
        };
        if self.console.tracing() {
            self.trace_request(node, offset, bytes, kind, &check, immediately);
        }
        if matches!(check, Check::Pass) {
            return Ok(true);
        }
        if !immediately {
            yield_now().await;
        }
        match check {
            Check::Fail(e) => Err(e),
            _ => Ok(false),
        }
    }

    /// The trace line of a request that reached this node, with what the rules did to it.
    fn trace_request(
        &self,
        node: &Node,
        offset: u64,
        bytes: u64,
        kind: u8,
        check: &Check,
        immediately: bool,
    ) {
        let kind = match kind {
            iotype::READ => "read",
            iotype::WRITE => "write",
            iotype::WRITE_ZEROES => "write-zeroes",
            iotype::DISCARD => "discard",
            iotype::FLUSH => "flush",
            _ => "block-status",
        };
        let verdict = match check {
            Check::Pass => "passes".to_string(),
            Check::Fail(e) => format!(
                "fails: injected errno {e} ({}){}",
                crate::errno::strerror(*e),
                if immediately { ", immediately" } else { "" }
            ),
            Check::FakeSuccess => "completes without reaching the child (negative errno)".into(),
        };
        let at = if kind == "flush" {
            String::new()
        } else {
            format!(" offset={offset} bytes={bytes}")
        };
        self.console.trace(&format!(
            "blkdebug trace: {kind}{at} on {}: {verdict}\n",
            trace_node_name(node)
        ));
    }

    /// The trace line of an event: the state it leaves and the inject-error rules it arms.
    fn trace_event(&self, node: &Node, event: Event, old_state: i32) {
        let mut line = format!(
            "blkdebug trace: event {event} on {}, state {old_state}",
            trace_node_name(node)
        );
        let new_state = self.state.get();
        if new_state != old_state {
            line.push_str(&format!(" -> {new_state}"));
        }
        let active = self.active.borrow();
        if let Some((index, state, _)) = active.source()
            && index == event.index()
            && state == old_state
            && !active.is_empty()
        {
            let n = active.len();
            line.push_str(&format!(
                ", arms {n} inject-error rule{} for the next request",
                if n == 1 { "" } else { "s" }
            ));
        }
        line.push('\n');
        self.console.trace(&line);
    }

    /// `break EVENT TAG`: Err(ENOENT) for an unknown event name.
    pub fn add_breakpoint(&self, event_name: &str, tag: &str) -> IoResult {
        let event = Event::from_name(event_name).ok_or(libc::ENOENT)?;
        self.add_rule(
            event,
            0,
            Action::Suspend {
                tag: tag.to_string(),
            },
        );
        Ok(())
    }

    /// Takes the most recent request suspended with `tag`, printing QEMU's Resuming line; the
    /// caller re-enters the returned task at once, as QEMU's resume enters the coroutine.
    pub fn resume_one(&self, tag: &str) -> Option<Option<TaskId>> {
        let pos = self.suspended.borrow().iter().position(|s| s.tag == tag)?;
        let s = self.suspended.borrow_mut().remove(pos);
        self.say(format!("blkdebug: Resuming request '{tag}'\n"));
        s.resumes.granted.set(s.resumes.granted.get() + 1);
        if s.task.is_none()
            && let Some(w) = s.resumes.waker.borrow_mut().take()
        {
            w.wake();
        }
        Some(s.task)
    }

    /// Deletes every breakpoint with `tag`; true if one existed. (Resuming the requests
    /// suspended with that tag is the caller's part, as it must re-enter each.)
    pub fn remove_breakpoints(&self, tag: &str) -> bool {
        let ids: Vec<u64> = self
            .rules
            .borrow()
            .iter()
            .flatten()
            .filter(|r| matches!(&r.action, Action::Suspend { tag: t } if t == tag))
            .map(|r| r.id)
            .collect();
        for &id in &ids {
            self.remove_rule(id);
        }
        !ids.is_empty()
    }

    pub fn is_suspended(&self, tag: &str) -> bool {
        self.suspended.borrow().iter().any(|s| s.tag == tag)
    }

    /// Tags of requests still suspended (closing with one would hang QEMU).
    pub fn suspended_tags(&self) -> Vec<String> {
        self.suspended
            .borrow()
            .iter()
            .map(|s| s.tag.clone())
            .collect()
    }
}

/// How the trace names a blkdebug node: its node-name (QEMU generates one once the drive is
/// open; before that, while the image is probed and opened, it has none yet).
fn trace_node_name(node: &Node) -> String {
    let name = node.node_name();
    if name.is_empty() {
        "a blkdebug node being opened".to_string()
    } else {
        format!("node '{name}'")
    }
}

/// Waits until a suspended request has been resumed once per breakpoint that stopped it.
struct WaitResumes {
    resumes: Rc<Resumes>,
    needed: usize,
}

impl Future for WaitResumes {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.resumes.granted.get() >= self.needed {
            Poll::Ready(())
        } else {
            *self.resumes.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// The blkdebug driver: one child, `image`.
pub struct BlkDebugDriver {
    pub state: BlkDebug,
}

impl BlockDriver for BlkDebugDriver {
    fn format_name(&self) -> &'static str {
        "blkdebug"
    }
    fn protocol_name(&self) -> Option<&'static str> {
        Some("blkdebug")
    }
    fn is_filter(&self) -> bool {
        true
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pwrite_zeroes: true,
            pdiscard: true,
            flush_to_disk: true,
            block_status: true,
            truncate: true,
            truncate_prealloc: true,
            debug_events: true,
            ..Capabilities::default()
        }
    }

    fn preadv<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            if !self
                .state
                .check(node, offset, buf.len() as u64, iotype::READ)
                .await?
            {
                return Ok(());
            }
            io::preadv(node.file(), offset, buf).await
        })
    }

    fn pwritev<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            if !self
                .state
                .check(node, offset, buf.len() as u64, iotype::WRITE)
                .await?
            {
                return Ok(());
            }
            io::pwritev(node.file(), offset, buf, flags).await
        })
    }

    fn pwrite_zeroes<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        bytes: u64,
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let limits = node.limits();
            let align = limits.request_alignment.max(limits.pwrite_zeroes_alignment);
            // Small requests take the fallback path on purpose, so that it gets tested.
            if bytes < align {
                return Err(libc::ENOTSUP);
            }
            if !self
                .state
                .check(node, offset, bytes, iotype::WRITE_ZEROES)
                .await?
            {
                return Ok(());
            }
            io::pwrite_zeroes(node.file(), offset, bytes, flags).await
        })
    }

    fn pdiscard<'a>(&'a self, node: &'a Node, offset: u64, bytes: u64) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            if bytes < node.limits().request_alignment {
                // QEMU checks such a piece against the discard alignment, dividing by it:
                // without one (no opt-discard, none from the child) that is a division by zero.
                if node.limits().pdiscard_alignment == 0 {
                    self.state.console.err(&format!(
                        "blockfault: discard offset={offset} bytes={bytes} is smaller than blkdebug's align={} with no discard alignment; QEMU 10.0.2 dies of SIGFPE here (division by zero in blkdebug_co_pdiscard)\n",
                        node.limits().request_alignment
                    ));
                    self.state.console.exit(1);
                    return Err(libc::EIO);
                }
                return Err(libc::ENOTSUP);
            }
            if !self
                .state
                .check(node, offset, bytes, iotype::DISCARD)
                .await?
            {
                return Ok(());
            }
            io::pdiscard(node.file(), offset, bytes).await
        })
    }

    fn flush_to_disk<'a>(&'a self, node: &'a Node) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            if !self.state.check(node, 0, 0, iotype::FLUSH).await? {
                return Ok(());
            }
            io::flush(node.file()).await
        })
    }

    fn block_status<'a>(
        &'a self,
        node: &'a Node,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> BoxFut<'a, IoResult<BlockStatus>> {
        Box::pin(async move {
            // A negative errno "succeeds" with a positive return, which QEMU then reads as
            // status bits; report the range as plain data in that odd case.
            let passed = self
                .state
                .check(node, offset, bytes, iotype::BLOCK_STATUS)
                .await?;
            Ok(BlockStatus {
                flags: if passed {
                    status::RAW | status::OFFSET_VALID
                } else {
                    status::DATA
                },
                pnum: bytes,
                map: offset,
                file: passed.then(|| node.file().clone()),
            })
        })
    }

    fn truncate<'a>(&'a self, node: &'a Node, size: u64) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move { io::truncate(node.file(), size).await })
    }

    fn truncate_prealloc<'a>(
        &'a self,
        node: &'a Node,
        size: u64,
        prealloc: &'a str,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move { io::truncate_prealloc(node.file(), size, prealloc).await })
    }

    fn getlength(&self, node: &Node) -> IoResult<u64> {
        node.file().getlength()
    }

    fn debug_event(&self, node: &Node, event: Event) -> Option<BoxFut<'static, ()>> {
        tally::note(event);
        let old_state = self.state.state.get();
        let resumes = self.state.process_event(event);
        if self.state.console.tracing() {
            self.state.trace_event(node, event, old_state);
        }
        let resumes = resumes?;
        let needed = self
            .state
            .suspended
            .borrow()
            .iter()
            .filter(|s| Rc::ptr_eq(&s.resumes, &resumes))
            .count();
        Some(Box::pin(WaitResumes { resumes, needed }))
    }

    fn as_blkdebug(&self) -> Option<&BlkDebug> {
        Some(&self.state)
    }
}
