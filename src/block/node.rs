//! A node of the block graph (QEMU's BlockDriverState): a driver, its named children, its limits
//! and the per-node request bookkeeping the generic layer needs.

use super::blkdebug::events::Event;
use super::driver::{BlockDriver, Capabilities, IoResult, Limits, ReqFlags};
use super::executor::Gate;
use super::perms::Perms;
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
    /// what the parent uses the child for, which decides the permissions it takes on it
    pub role: ChildRole,
    /// permissions taken on the child whatever the parent's own (blkdebug's take-child-perms)
    pub extra_perms: Perms,
}

/// QEMU's BdrvChildRole, as far as permissions and limits go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildRole {
    /// a filter's child (raw without offset/size, blkdebug, blkverify's raw): the parent's
    /// permissions pass through unchanged
    Filtered,
    /// guest data only (blkverify's test): writing it may grow it
    Data,
    /// a format's image file (qcow2's file): data and metadata
    Image,
    /// a backing file: only ever read
    Cow,
}

/// Node-level open flags that change request handling.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenFlags {
    pub read_only: bool,
    /// `discard=unmap` (qemu-io's default); without it discards are silently dropped
    pub unmap: bool,
    /// cache=unsafe: flushes never reach the disk
    pub no_flush: bool,
    /// cache.direct (cache=none/directsync): file nodes use O_DIRECT and its alignment
    pub nocache: bool,
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
    /// the permissions the node's parents hold on it, as of the last refresh
    pub perms: Cell<Perms>,
    /// QEMU's total_sectors: the node's size in whole sectors, as the block layer keeps it
    /// (asked of the driver once, then grown by writes and set again by truncate)
    total_sectors: Cell<Option<u64>>,
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
            perms: Cell::new(Perms::NONE),
            total_sectors: Cell::new(None),
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

    /// The size as the block layer sees it (QEMU's bdrv_co_getlength): whole sectors, the
    /// partial one at the end of a file rounded up.
    pub fn getlength(&self) -> IoResult<u64> {
        let sectors = match self.total_sectors.get() {
            Some(s) => s,
            None => self.refresh_length()?,
        };
        Ok(sectors * 512)
    }

    /// Asks the driver for the size again (QEMU's bdrv_co_refresh_total_sectors), as after
    /// a resize. Returns the size in sectors.
    pub fn refresh_length(&self) -> IoResult<u64> {
        let sectors = self.driver.getlength(self)?.div_ceil(512);
        self.total_sectors.set(Some(sectors));
        Ok(sectors)
    }

    /// A write that ended at `end` succeeded: the node is at least that long now (QEMU's
    /// bdrv_co_write_req_finish). Only this node: its parents keep the size they had.
    pub fn note_write_end(&self, end: u64) {
        if let Some(sectors) = self.total_sectors.get() {
            self.total_sectors.set(Some(sectors.max(end.div_ceil(512))));
        }
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
