//! The `compress` filter (QEMU's block/compress.c): every write through it is a compressed
//! write to its child, and its request alignment is the child's cluster size, so the generic
//! layer widens writes to whole clusters first.

use super::driver::{BlockDriver, BoxFut, Capabilities, IoResult, Limits, ReqFlags};
use super::io;
use super::node::{Child, ChildRole, Node};
use super::perms::Perms;
use std::rc::Rc;

pub struct CompressDriver;

/// Opens the filter over its file child (QEMU's compress_open): the child must compress, and
/// the filter's alignment is its cluster size.
pub fn open_node(file: Rc<Node>) -> Result<(Node, Limits), String> {
    if !file.capabilities().pwritev_compressed {
        return Err(format!(
            "Compression is not supported for underlying format: {}",
            file.driver.format_name()
        ));
    }
    let mut limits = Limits::default();
    // whole clusters: the generic layer pads writes before they are compressed
    if let Some(info) = io::get_info(&file)
        && info.cluster_size != 0
    {
        limits.request_alignment = info.cluster_size;
    }
    Ok((filter_node(Box::new(CompressDriver), file), limits))
}

/// A filter node over `file`, passing it the request flags it supports.
pub(crate) fn filter_node(driver: Box<dyn BlockDriver>, file: Rc<Node>) -> Node {
    let mut node = Node::new(
        driver,
        vec![Child {
            name: "file",
            node: file.clone(),
            writable: true,
            primary: true,
            role: ChildRole::Filtered,
            extra_perms: Perms::NONE,
            unshared_perms: Perms::NONE,
        }],
        file.filename.clone(),
    );
    node.supported_write_flags =
        ReqFlags::WRITE_UNCHANGED.with(ReqFlags::FUA.and(file.supported_write_flags));
    node.supported_zero_flags = ReqFlags::WRITE_UNCHANGED.with(
        ReqFlags::FUA
            .with(ReqFlags::MAY_UNMAP)
            .with(ReqFlags::NO_FALLBACK)
            .and(file.supported_zero_flags),
    );
    node
}

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
