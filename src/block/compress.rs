//! The `compress` filter (QEMU's block/compress.c): every write through it is a compressed
//! write to its child, and its request alignment is the child's cluster size, so the generic
//! layer widens writes to whole clusters first.

use super::driver::{BlockDriver, BoxFut, Capabilities, IoResult, ReqFlags};
use super::io;
use super::node::Node;

pub struct CompressDriver;

impl BlockDriver for CompressDriver {
    /// QEMU 10.0.2's filter has no bdrv_reopen_prepare.
    fn can_reopen(&self) -> bool {
        false
    }
    fn format_name(&self) -> &'static str {
        "compress"
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
            pwritev_compressed: true,
            ..Capabilities::default()
        }
    }

    fn preadv<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(io::preadv(node.file(), offset, buf))
    }

    fn pwritev<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(io::pwritev(
            node.file(),
            offset,
            buf,
            flags.with(ReqFlags::WRITE_COMPRESSED),
        ))
    }

    fn pwritev_compressed<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(io::pwritev(
            node.file(),
            offset,
            buf,
            ReqFlags::WRITE_COMPRESSED,
        ))
    }

    fn pwrite_zeroes<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        bytes: u64,
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(io::pwrite_zeroes(node.file(), offset, bytes, flags))
    }

    fn pdiscard<'a>(&'a self, node: &'a Node, offset: u64, bytes: u64) -> BoxFut<'a, IoResult> {
        Box::pin(io::pdiscard(node.file(), offset, bytes))
    }

    fn getlength(&self, node: &Node) -> IoResult<u64> {
        node.file().getlength()
    }
}
