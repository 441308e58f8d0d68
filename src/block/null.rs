//! QEMU's `null-co` and `null-aio` protocol drivers (block/null.c): a device of a given size
//! that drops every write and leaves a read's buffer as it is (or zeroes it with
//! `read-zeroes`). QEMU's tests use it as a cheap data file or backing node.

use super::driver::{BlockDriver, BlockStatus, BoxFut, Capabilities, IoResult, ReqFlags, status};
use super::node::Node;
use super::options::{OptType, Options, absorb};

pub struct NullDriver {
    name: &'static str,
    size: u64,
    read_zeroes: bool,
}

/// QEMU's null_file_open: `size` (1 GiB by default), `latency-ns`, `read-zeroes`; a filename
/// must be the driver's own `NAME://`.
pub fn open_node(name: &'static str, opts: &mut Options) -> Result<Node, String> {
    let own = format!("{name}://");
    if let Some(serde_json::Value::String(f)) = super::options::take_flat(opts, "filename")
        && f != own
    {
        return Err(format!(
            "The only allowed filename for this driver is '{own}'"
        ));
    }
    let o = absorb(
        opts,
        &[
            ("size", OptType::Size),
            ("latency-ns", OptType::Number),
            ("read-zeroes", OptType::Bool),
        ],
    )?;
    let driver = NullDriver {
        name,
        size: o.number("size").unwrap_or(1 << 30),
        read_zeroes: o.bool("read-zeroes").unwrap_or(false),
    };
    Ok(Node::new(Box::new(driver), Vec::new(), own))
}

impl BlockDriver for NullDriver {
    fn format_name(&self) -> &'static str {
        self.name
    }
    fn protocol_name(&self) -> Option<&'static str> {
        Some(self.name)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    /// block/null.c has no get_info
    fn info_unsupported(&self) -> bool {
        true
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_status: true,
            ..Capabilities::default()
        }
    }

    fn preadv<'a>(
        &'a self,
        _node: &'a Node,
        _offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        if self.read_zeroes {
            buf.fill(0);
        }
        Box::pin(async { Ok(()) })
    }

    fn pwritev<'a>(
        &'a self,
        _node: &'a Node,
        _offset: u64,
        _buf: &'a [u8],
        _flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async { Ok(()) })
    }

    /// Nothing is stored, so nothing is data; `read-zeroes` makes it read as zeroes.
    fn block_status<'a>(
        &'a self,
        _node: &'a Node,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> BoxFut<'a, IoResult<BlockStatus>> {
        let zero = if self.read_zeroes { status::ZERO } else { 0 };
        Box::pin(async move {
            Ok(BlockStatus {
                flags: status::OFFSET_VALID | zero,
                pnum: bytes,
                map: offset,
                file: None,
            })
        })
    }

    fn getlength(&self, _node: &Node) -> IoResult<u64> {
        Ok(self.size)
    }

    fn allocated_file_size(&self, _node: &Node) -> IoResult<u64> {
        Ok(0)
    }
}
