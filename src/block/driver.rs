//! The driver interface every node implements, and the request vocabulary shared by all layers.

use super::blkdebug::events::Event;
use super::node::Node;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;

/// What a driver's reopen preparation hands to its commit or abort (each driver its own type).
pub type ReopenState = Box<dyn std::any::Any>;

/// A driver's future: drivers are object-safe, so their async methods return boxed futures.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Result of a block-layer operation: `Err(errno)` carries a positive errno, as `-ret` in QEMU.
pub type IoResult<T = ()> = Result<T, i32>;

/// Request flags (a subset of QEMU's BdrvRequestFlags with the same meaning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReqFlags(pub u32);

impl ReqFlags {
    pub const NONE: Self = Self(0);
    pub const WRITE_UNCHANGED: Self = Self(1 << 0);
    pub const FUA: Self = Self(1 << 1);
    pub const ZERO_WRITE: Self = Self(1 << 2);
    pub const MAY_UNMAP: Self = Self(1 << 3);
    pub const NO_FALLBACK: Self = Self(1 << 4);
    pub const WRITE_COMPRESSED: Self = Self(1 << 5);
    /// copy what the read finds below this node into it (QEMU's BDRV_REQ_COPY_ON_READ)
    pub const COPY_ON_READ: Self = Self(1 << 6);
    /// copy-on-read that needs no data back (QEMU's BDRV_REQ_PREFETCH)
    pub const PREFETCH: Self = Self(1 << 7);

    pub fn has(self, other: Self) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
    pub fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }
    pub fn and(self, mask: Self) -> Self {
        Self(self.0 & mask.0)
    }
}

/// A node's I/O limits (QEMU's BlockLimits, the part the request layer uses). 0 = no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub request_alignment: u64,
    pub max_transfer: u64,
    pub pwrite_zeroes_alignment: u64,
    pub max_pwrite_zeroes: u64,
    pub pdiscard_alignment: u64,
    pub max_pdiscard: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_alignment: 1,
            max_transfer: 0,
            pwrite_zeroes_alignment: 0,
            max_pwrite_zeroes: 0,
            pdiscard_alignment: 0,
            max_pdiscard: 0,
        }
    }
}

/// Block-status bits (QEMU's BDRV_BLOCK_*).
pub mod status {
    pub const DATA: u32 = 0x01;
    pub const ZERO: u32 = 0x02;
    pub const OFFSET_VALID: u32 = 0x04;
    pub const RAW: u32 = 0x08;
    pub const ALLOCATED: u32 = 0x10;
    pub const EOF: u32 = 0x20;
    pub const RECURSE: u32 = 0x40;
    pub const COMPRESSED: u32 = 0x80;
}

/// What a driver reports for the start of a range.
#[derive(Clone)]
pub struct BlockStatus {
    pub flags: u32,
    /// bytes from the queried offset that share this status
    pub pnum: u64,
    /// host offset in `file`, when OFFSET_VALID
    pub map: u64,
    /// the node `map` refers to (QEMU's `*file`); `None` with OFFSET_VALID means the queried
    /// node itself (a protocol node reporting its own offsets)
    pub file: Option<Rc<Node>>,
}

/// Which operations a driver implements; where QEMU checks `drv->bdrv_co_x != NULL`, we check these.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capabilities {
    pub pwrite_zeroes: bool,
    pub pdiscard: bool,
    /// compressed writes (QEMU's bdrv_co_pwritev_compressed_part exists)
    pub pwritev_compressed: bool,
    /// a flush callback covering the whole subtree (QEMU's `bdrv_co_flush`), as blkverify has
    pub flush_all: bool,
    pub flush_to_disk: bool,
    pub flush_to_os: bool,
    pub block_status: bool,
    pub truncate: bool,
    /// `truncate` honours preallocation modes itself (`truncate_prealloc`)
    pub truncate_prealloc: bool,
    /// raises blkdebug events (only blkdebug does)
    pub debug_events: bool,
}

/// A block driver. `node` is the node the driver instance belongs to; children hang off it.
pub trait BlockDriver {
    /// `format name:` in qemu-io's `info`
    fn format_name(&self) -> &'static str;
    /// protocol drivers (file, blkdebug, blkverify) have one
    fn protocol_name(&self) -> Option<&'static str> {
        None
    }
    /// formats with backing files (QEMU's supports_backing): their unallocated areas read as
    /// zero when there is no backing file, or past its end
    fn supports_backing(&self) -> bool {
        false
    }
    /// filters pass block status and truncate through to their filtered child (`file`)
    fn is_filter(&self) -> bool {
        false
    }
    fn capabilities(&self) -> Capabilities;

    /// The driver as `Any`, for code that knows which driver a node has (a format's own
    /// coroutines reaching their driver state through an `Rc<Node>`).
    fn as_any(&self) -> &dyn std::any::Any;

    fn preadv<'a>(&'a self, node: &'a Node, offset: u64, buf: &'a mut [u8])
    -> BoxFut<'a, IoResult>;
    fn pwritev<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult>;
    /// A compressed write (QEMU's bdrv_co_pwritev_compressed); only formats that compress.
    fn pwritev_compressed<'a>(
        &'a self,
        _node: &'a Node,
        _offset: u64,
        _buf: &'a [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async { Err(libc::ENOTSUP) })
    }
    /// VM state write (QEMU's bdrv_co_writev_vmstate): drivers without their own forward it
    /// to their primary child, as QEMU does.
    fn save_vmstate<'a>(&'a self, node: &'a Node, pos: u64, buf: &'a [u8]) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            match node.primary_child() {
                Some(c) => c.driver.save_vmstate(c, pos, buf).await,
                None => Err(libc::ENOTSUP),
            }
        })
    }
    /// VM state read (QEMU's bdrv_co_readv_vmstate), forwarded like `save_vmstate`.
    fn load_vmstate<'a>(
        &'a self,
        node: &'a Node,
        pos: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            match node.primary_child() {
                Some(c) => c.driver.load_vmstate(c, pos, buf).await,
                None => Err(libc::ENOTSUP),
            }
        })
    }
    fn pwrite_zeroes<'a>(
        &'a self,
        _node: &'a Node,
        _offset: u64,
        _bytes: u64,
        _flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async { Err(libc::ENOTSUP) })
    }
    fn pdiscard<'a>(&'a self, _node: &'a Node, _offset: u64, _bytes: u64) -> BoxFut<'a, IoResult> {
        Box::pin(async { Err(libc::ENOTSUP) })
    }
    fn flush_all<'a>(&'a self, _node: &'a Node) -> BoxFut<'a, IoResult> {
        Box::pin(async { Ok(()) })
    }
    fn flush_to_os<'a>(&'a self, _node: &'a Node) -> BoxFut<'a, IoResult> {
        Box::pin(async { Ok(()) })
    }
    fn flush_to_disk<'a>(&'a self, _node: &'a Node) -> BoxFut<'a, IoResult> {
        Box::pin(async { Ok(()) })
    }
    fn block_status<'a>(
        &'a self,
        _node: &'a Node,
        _want_zero: bool,
        _offset: u64,
        _bytes: u64,
    ) -> BoxFut<'a, IoResult<BlockStatus>> {
        Box::pin(async { Err(libc::ENOTSUP) })
    }
    fn truncate<'a>(&'a self, _node: &'a Node, _size: u64) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async { Err("Image format driver does not support resize".to_string()) })
    }
    /// Resize with a preallocation mode (`off`, `metadata`, `falloc`, `full`); only drivers
    /// with the `truncate_prealloc` capability are asked, the others get `truncate`.
    fn truncate_prealloc<'a>(
        &'a self,
        node: &'a Node,
        size: u64,
        _prealloc: &'a str,
    ) -> BoxFut<'a, Result<(), String>> {
        self.truncate(node, size)
    }
    fn getlength(&self, node: &Node) -> IoResult<u64>;

    /// Bytes the node takes on the host (QEMU's bdrv_co_get_allocated_file_size): protocol
    /// drivers without their own answer have none, filters pass the question to their child,
    /// formats sum their storage children.
    fn allocated_file_size(&self, node: &Node) -> IoResult<u64> {
        if self.protocol_name().is_some() {
            Err(libc::ENOTSUP)
        } else if self.is_filter() {
            let c = node.file();
            c.driver.allocated_file_size(c)
        } else {
            let mut sum = 0;
            for c in node.children.iter().filter(|c| c.name != "backing") {
                sum += c.node.driver.allocated_file_size(&c.node)?;
            }
            Ok(sum)
        }
    }

    /// Processes a blkdebug event; returns a future only when the request must suspend.
    fn debug_event(&self, _node: &Node, _event: Event) -> Option<BoxFut<'static, ()>> {
        None
    }

    /// The blkdebug state behind breakpoints, if this driver has it.
    fn as_blkdebug(&self) -> Option<&super::blkdebug::BlkDebug> {
        None
    }

    /// QEMU's bdrv_get_info fails on this driver (no get_info callback, nothing filtered).
    fn info_unsupported(&self) -> bool {
        false
    }
    /// qemu-io `info`: cluster size and format-specific lines (None: `info` has nothing to add).
    fn info(&self, _node: &Node) -> Option<DriverInfo> {
        None
    }

    /// Whether the driver can be reopened at all (QEMU: it has a bdrv_reopen_prepare).
    fn can_reopen(&self) -> bool {
        true
    }

    /// The driver stopped serving the node (QEMU sets `bs->drv` to NULL: qcow2 after a fatal
    /// corruption).
    fn has_stopped(&self) -> bool {
        false
    }

    /// QEMU's bdrv_reopen_prepare: takes the options the driver applies on reopen out of
    /// `opts`, checks them for the node's new `flags`, and returns what commit applies. Options
    /// left in `opts` must be unchanged (the generic layer refuses the others).
    fn reopen_prepare<'a>(
        &'a self,
        _node: &'a Node,
        _opts: &'a mut super::open::Options,
        _flags: super::node::OpenFlags,
    ) -> BoxFut<'a, Result<Option<ReopenState>, String>> {
        Box::pin(async { Ok(None) })
    }

    /// The permission stage of a reopen, after every node is prepared (file-posix opens its
    /// new descriptor here).
    fn reopen_check_perm(
        &self,
        _node: &Node,
        _state: &mut Option<ReopenState>,
        _flags: super::node::OpenFlags,
        _access: super::perms::Access,
    ) -> Result<(), String> {
        Ok(())
    }

    /// A permission refresh reaches the node with what its parents will hold and share
    /// (QEMU's bdrv_check_perm): file-posix may need another descriptor for the node's flags
    /// (outside a reopen), and takes the image locks for `access`, checking nobody else's
    /// conflict with it.
    fn check_perm(&self, _node: &Node, _access: super::perms::Access) -> Result<(), String> {
        Ok(())
    }

    /// The refresh [`BlockDriver::check_perm`] accepted is applied (QEMU's bdrv_set_perm).
    fn set_perm(&self, _node: &Node, _access: super::perms::Access) {}

    /// The refresh [`BlockDriver::check_perm`] accepted is dropped (QEMU's bdrv_abort_perm).
    fn abort_perm(&self, _node: &Node) {}

    /// Applies a prepared reopen (QEMU's bdrv_reopen_commit).
    fn reopen_commit(&self, _node: &Node, _state: Option<ReopenState>) {}

    /// Drops a prepared reopen that will not be applied (QEMU's bdrv_reopen_abort).
    fn reopen_abort(&self, _node: &Node, _state: Option<ReopenState>) {}

    /// The drive is open read-write, or was reopened so: on-disk state the engine does not
    /// keep up to date is brought up to date here (qcow2: persistent dirty bitmaps are marked
    /// in use).
    fn start_writing<'a>(&'a self, _node: &'a Node) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// A write, zero write or discard of `offset..offset + bytes` finished on this node
    /// (QEMU's bdrv_set_dirty on the node's dirty bitmaps).
    fn set_dirty(&self, _offset: u64, _bytes: u64) {}

    /// The node was resized to `size` bytes (QEMU's bdrv_dirty_bitmap_truncate).
    fn resize_dirty(&self, _size: u64) {}

    /// Called once when the drive is closed (caches are written back here).
    fn close<'a>(&'a self, _node: &'a Node) -> BoxFut<'a, ()> {
        Box::pin(async {})
    }
}

/// qemu-io `info` details a format driver provides.
#[derive(Clone, Debug, Default)]
pub struct DriverInfo {
    pub cluster_size: u64,
    /// the allocation unit within a cluster (qcow2's extended L2 entries); 0: the cluster
    pub subcluster_size: u64,
    pub vm_state_offset: u64,
    pub specific: Vec<String>,
}
