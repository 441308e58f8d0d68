//! A node of the block graph (QEMU's BlockDriverState): a driver, its named children, its limits
//! and the per-node request bookkeeping the generic layer needs.

use super::blkdebug::events::Event;
use super::driver::{BlockDriver, Capabilities, IoResult, Limits, ReqFlags};
use super::executor::Gate;
use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// A named edge to a child node (`file`, `image`, `raw`, `test`, `backing`).
pub struct Child {
    pub name: &'static str,
    pub node: Rc<Node>,
    /// whether the parent writes through this edge (flushes recurse only into such children)
    pub writable: bool,
    /// QEMU's primary child: `bs->file` of formats and filters; flush events are raised on it
    pub primary: bool,
}

/// Node-level open flags that change request handling.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenFlags {
    pub read_only: bool,
    /// `discard=unmap` (qemu-io's default); without it discards are silently dropped
    pub unmap: bool,
    /// cache=unsafe: flushes never reach the disk
    pub no_flush: bool,
    /// `cache.direct=on` (O_DIRECT). Requests do not depend on it here; opening checks it.
    pub direct: bool,
    /// `aio=native` (qemu-io `-k`, `-i native`), which the file driver refuses without O_DIRECT
    pub native_aio: bool,
}

pub struct Node {
    pub driver: Box<dyn BlockDriver>,
    pub children: Vec<Child>,
    pub limits: Limits,
    pub supported_write_flags: ReqFlags,
    pub supported_zero_flags: ReqFlags,
    pub flags: OpenFlags,
    /// the filename QEMU would show for this node
    pub filename: String,
    pub(crate) caps: Capabilities,
    pub(crate) write_gen: Cell<u64>,
    pub(crate) flushed_gen: Cell<u64>,
    pub(crate) flush_active: Cell<bool>,
    pub(crate) flush_waiters: RefCell<Vec<Rc<Gate>>>,
}

impl Node {
    pub fn new(driver: Box<dyn BlockDriver>, children: Vec<Child>, filename: String) -> Self {
        let caps = driver.capabilities();
        Self {
            driver,
            children,
            limits: Limits::default(),
            supported_write_flags: ReqFlags::NONE,
            supported_zero_flags: ReqFlags::NONE,
            flags: OpenFlags::default(),
            filename,
            caps,
            write_gen: Cell::new(0),
            flushed_gen: Cell::new(0),
            flush_active: Cell::new(false),
            flush_waiters: RefCell::new(Vec::new()),
        }
    }

    pub fn child(&self, name: &str) -> Option<&Rc<Node>> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.node)
    }

    /// The primary child (QEMU's `bs->file`): format drivers and filters send their I/O there.
    pub fn file(&self) -> &Rc<Node> {
        self.primary_child()
            .expect("drivers that use `file` are always opened with a primary child")
    }

    /// QEMU's bdrv_primary_child: flush events are raised on it.
    pub fn primary_child(&self) -> Option<&Rc<Node>> {
        self.children.iter().find(|c| c.primary).map(|c| &c.node)
    }

    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    pub fn getlength(&self) -> IoResult<u64> {
        self.driver.getlength(self)
    }

    /// Raises a blkdebug event on this node (QEMU's bdrv_co_debug_event): only a driver with a
    /// debug-event handler sees it, and nothing walks down the graph.
    pub async fn debug_event(&self, event: Event) {
        if !self.caps.debug_events {
            return;
        }
        if let Some(suspended) = self.driver.debug_event(self, event) {
            suspended.await;
        }
    }

    /// The first node down the chain of primary children whose driver has blkdebug state.
    pub fn find_blkdebug(self: &Rc<Self>) -> Option<Rc<Node>> {
        let mut node = self.clone();
        loop {
            if node.driver.as_blkdebug().is_some() {
                return Some(node);
            }
            node = node.primary_child()?.clone();
        }
    }
}
