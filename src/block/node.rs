//! A node of the block graph (QEMU's BlockDriverState): a driver, its named children, its limits
//! and the per-node request bookkeeping the generic layer needs.

use super::blkdebug::events::Event;
use super::driver::{BlockDriver, Capabilities, IoResult, Limits, ReqFlags};
use super::executor::Gate;
use super::open::Options;
use super::perms::{Access, Perms};
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

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
    /// permissions never shared on the child (blkdebug's unshare-child-perms)
    pub unshared_perms: Perms,
}

/// QEMU's BdrvChildRole: what a parent uses a child for, which decides the permissions it
/// takes on it, what the child inherits from it and whether its format is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildRole {
    /// a filter's child (raw without offset/size, blkdebug's image, blkverify's raw): the
    /// parent's permissions pass through unchanged; probed as its parent was
    Filtered,
    /// guest data only (blkverify's test): writing it may grow it; probed
    Data,
    /// a format's image file (qcow2's file): data and metadata; a protocol node, never probed
    Image,
    /// a backing file: only ever read; read-only unless told otherwise, probed
    Cow,
}

/// Node-level open flags that change request handling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// qemu-io `-C` (QEMU's BDRV_O_COPY_ON_READ): only the top node has it
    pub copy_on_read: bool,
    /// qemu-img check's open (QEMU's BDRV_O_CHECK): the qcow2 driver leaves the snapshot
    /// table and a dirty image's repair to the check
    pub check: bool,
    /// opened without I/O (QEMU's BDRV_O_NO_IO, qemu-img info): formats take no
    /// CONSISTENT_READ on their files
    pub no_io: bool,
}

/// The `detect-zeroes` option: writes of a zeroed buffer become zero writes (`unmap`: that may
/// unmap), decided per node in QEMU's bdrv_aligned_pwritev.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectZeroes {
    #[default]
    Off,
    On,
    Unmap,
}

pub struct Node {
    pub driver: Box<dyn BlockDriver>,
    pub children: Vec<Child>,
    /// QEMU's bs->bl: set at open, the file's request alignment again by a reopen that
    /// switches O_DIRECT
    limits: Cell<Limits>,
    pub supported_write_flags: ReqFlags,
    pub supported_zero_flags: ReqFlags,
    /// the open flags; `reopen` changes them (see [`Node::flags`])
    flags: Cell<OpenFlags>,
    /// QEMU's `bs->options`: what the node was opened (or last reopened) with, children's
    /// options excluded, with the driver and filename the block layer filled in (nested, or
    /// flat with `a.b` keys: readers flatten them)
    pub(crate) options: RefCell<Options>,
    /// QEMU's `bs->explicit_options`: the part of `options` given for this node itself, which
    /// outranks what a reopen inherits from the parent
    pub(crate) explicit_options: RefCell<Options>,
    /// QEMU's node-name: given with `node-name`, else generated once the drive is open
    pub(crate) node_name: RefCell<String>,
    /// the filename QEMU would show for this node
    pub filename: String,
    /// the `detect-zeroes` option; `reopen` changes it
    pub detect_zeroes: Cell<DetectZeroes>,
    pub(crate) caps: Capabilities,
    /// what the node's parents hold on it and share of it, as of the last refresh
    pub perms: Cell<Access>,
    /// `force-share=on`: its parents share every permission on it whatever they would
    pub force_share: Cell<bool>,
    pub(crate) write_gen: Cell<u64>,
    pub(crate) flushed_gen: Cell<u64>,
    pub(crate) flush_active: Cell<bool>,
    pub(crate) flush_waiters: RefCell<Vec<Rc<Gate>>>,
    /// the node's own `Rc` (see [`Node::into_rc`]), for coroutines that outlive a borrow
    self_ref: Weak<Node>,
    /// the length in sectors the block layer believes (QEMU's `bs->total_sectors`): read
    /// from the driver at open and after a resize, raised by writes that end past it
    pub(crate) total_sectors: Cell<u64>,
    /// requests in flight on this node, newest first (see `tracked`)
    pub(crate) tracked: RefCell<Vec<Rc<super::tracked::Tracked>>>,
    pub(crate) serialising_in_flight: Cell<usize>,
    /// reads here copy what they find below (QEMU's bs->copy_on_read, qemu-io's `-C`)
    pub copy_on_read: Cell<bool>,
}

impl Node {
    pub fn new(driver: Box<dyn BlockDriver>, children: Vec<Child>, filename: String) -> Self {
        let caps = driver.capabilities();
        Self {
            driver,
            children,
            limits: Cell::new(Limits::default()),
            supported_write_flags: ReqFlags::NONE,
            supported_zero_flags: ReqFlags::NONE,
            flags: Cell::new(OpenFlags::default()),
            options: RefCell::new(Options::new()),
            explicit_options: RefCell::new(Options::new()),
            node_name: RefCell::new(String::new()),
            filename,
            detect_zeroes: Cell::new(DetectZeroes::Off),
            caps,
            perms: Cell::new(Access::UNUSED),
            force_share: Cell::new(false),
            write_gen: Cell::new(0),
            flushed_gen: Cell::new(0),
            flush_active: Cell::new(false),
            flush_waiters: RefCell::new(Vec::new()),
            self_ref: Weak::new(),
            total_sectors: Cell::new(0),
            tracked: RefCell::new(Vec::new()),
            serialising_in_flight: Cell::new(0),
            copy_on_read: Cell::new(false),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits.get()
    }

    pub fn set_limits(&self, limits: Limits) {
        self.limits.set(limits);
    }

    /// The open flags in force (QEMU's `bs->open_flags`).
    pub fn flags(&self) -> OpenFlags {
        self.flags.get()
    }

    pub fn set_flags(&self, flags: OpenFlags) {
        self.flags.set(flags);
    }

    /// The name errors give this node (QEMU's `bdrv_get_node_name`).
    pub fn node_name(&self) -> String {
        self.node_name.borrow().clone()
    }

    /// Asks the driver for the length again (QEMU's bdrv_refresh_total_sectors).
    pub fn refresh_total_sectors(&self) -> IoResult<u64> {
        let len = self.driver.getlength(self)?;
        self.total_sectors.set(len.div_ceil(512));
        Ok(len)
    }

    /// Puts a finished node into the graph's `Rc`, remembering it for [`Node::rc`].
    pub fn into_rc(mut self) -> Rc<Node> {
        Rc::new_cyclic(|me| {
            self.self_ref = me.clone();
            self
        })
    }

    /// This node's `Rc`: a request's own coroutines (qcow2's parallel tasks) hold it.
    pub fn rc(&self) -> Rc<Node> {
        self.self_ref
            .upgrade()
            .expect("nodes are created with Node::into_rc")
    }

    /// The driver, when it is a `T`.
    pub fn driver_as<T: 'static>(&self) -> Option<&T> {
        self.driver.as_any().downcast_ref()
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

    /// The length as the block layer sees it: whole sectors (QEMU's bdrv_co_getlength).
    pub fn getlength(&self) -> IoResult<u64> {
        Ok(self.total_sectors.get() * 512)
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
