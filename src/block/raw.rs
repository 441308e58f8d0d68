//! The `raw` format driver: passes every request to `file`, raising read_aio/write_aio there.

use super::blkdebug::events::Event;
use super::driver::{BlockDriver, BlockStatus, BoxFut, Capabilities, IoResult, ReqFlags, status};
use super::io;
use super::node::Node;

/// Bytes QEMU reads to probe a format; writes over them are checked on a probed raw image.
pub const PROBE_BUF_SIZE: u64 = 512;

pub struct RawDriver {
    /// the format was guessed: writes that would make the image probe as something else fail
    pub probed: bool,
}

/// Whether the first sector of an image would make QEMU's probing pick a format other than raw.
pub fn probes_as_other_format(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"QFI\xfb")
}

impl BlockDriver for RawDriver {
    fn format_name(&self) -> &'static str {
        "raw"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pwrite_zeroes: true,
            pdiscard: true,
            block_status: true,
            truncate: true,
            truncate_prealloc: true,
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
            node.file().debug_event(Event::ReadAio).await;
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
            if self.probed && offset == 0 && probes_as_other_format(buf) {
                return Err(libc::EPERM);
            }
            node.file().debug_event(Event::WriteAio).await;
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
        Box::pin(async move { io::pwrite_zeroes(node.file(), offset, bytes, flags).await })
    }

    fn pdiscard<'a>(&'a self, node: &'a Node, offset: u64, bytes: u64) -> BoxFut<'a, IoResult> {
        Box::pin(async move { io::pdiscard(node.file(), offset, bytes).await })
    }

    fn block_status<'a>(
        &'a self,
        node: &'a Node,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> BoxFut<'a, IoResult<BlockStatus>> {
        Box::pin(async move {
            Ok(BlockStatus {
                flags: status::RAW | status::OFFSET_VALID,
                pnum: bytes,
                map: offset,
                file: Some(node.file().clone()),
            })
        })
    }

    fn truncate<'a>(&'a self, node: &'a Node, size: u64) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move { io::truncate(node.file(), size).await })
    }

    /// The mode goes down with the size: the file below decides against its exact length
    /// (a sector-rounded one would refuse growing a 1000-byte file to 1010 bytes).
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
}
