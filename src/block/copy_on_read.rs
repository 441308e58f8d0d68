//! The `copy-on-read` filter (QEMU's block/copy-on-read.c): every read through it asks its
//! child to copy what the read finds below the child into it; everything else passes through.

use super::driver::{BlockDriver, BoxFut, Capabilities, IoResult, ReqFlags};
use super::io;
use super::node::Node;
use super::options::{OptType, Options, absorb};
use super::perms::Perms;
use std::rc::Rc;

pub struct CopyOnReadDriver;

/// Opens the filter over its file child (QEMU's cor_open).
pub fn open_node(file: Rc<Node>, opts: &mut Options, read_only: bool) -> Result<Node, String> {
    let bottom = absorb(opts, &[("bottom", OptType::String)])?;
    if let Some(b) = bottom.string("bottom") {
        // The filter never stops copying at a bottom node here, so none is ever found.
        return Err(format!("Bottom node '{b}' not found"));
    }
    // the copy reaches into the child, so the filter must be writable
    if read_only {
        return Err("Block node is read-only".into());
    }
    let mut node = super::compress::filter_node(Box::new(CopyOnReadDriver), file);
    // The copies it makes are unchanged writes (QEMU's cor_child_perm).
    node.children[0].extra_perms = Perms::WRITE_UNCHANGED;
    Ok(node)
}

impl BlockDriver for CopyOnReadDriver {
    /// QEMU 10.0.2's filter has no bdrv_reopen_prepare.
    fn can_reopen(&self) -> bool {
        false
    }
    fn format_name(&self) -> &'static str {
        "copy-on-read"
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
            truncate: true,
            ..Capabilities::default()
        }
    }

    fn preadv<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(io::preadv_flags(
            node.file(),
            offset,
            buf,
            ReqFlags::COPY_ON_READ,
        ))
    }

    fn pwritev<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(io::pwritev(node.file(), offset, buf, flags))
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

    fn truncate<'a>(&'a self, node: &'a Node, size: u64) -> BoxFut<'a, Result<(), String>> {
        Box::pin(io::truncate(node.file(), size))
    }

    fn getlength(&self, node: &Node) -> IoResult<u64> {
        node.file().getlength()
    }
}
