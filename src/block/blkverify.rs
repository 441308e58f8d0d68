//! The blkverify filter: every request goes to a `test` child and a `raw` reference; reads are
//! compared and the first difference ends the process, as QEMU's blkverify does with exit(1).

use super::driver::{BlockDriver, BoxFut, Capabilities, IoResult, Limits, ReqFlags};
use super::io;
use super::node::ChildRole;
use super::node::{Child, Node};
use super::options::{OpenChild, OpenContext, Options, is_nonempty_container, scalar_string};
use super::perms::Perms;
use crate::output::Console;
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::Poll;

pub struct BlkVerifyDriver {
    pub console: Rc<Console>,
}

/// Opens a blkverify node (QEMU's blkverify_open): the `raw` child, then the `test` child,
/// which is probed. `x-raw` and `x-image` come from a `blkverify:` filename.
pub fn open_node(
    opts: &mut Options,
    children: &dyn OpenChild,
    ctx: &OpenContext,
) -> Result<(Node, Limits), String> {
    let mut take = |key: &str| match opts.get(key) {
        Some(v) if is_nonempty_container(v) => None,
        _ => opts.shift_remove(key).as_ref().and_then(scalar_string),
    };
    let (raw_name, test_name) = (take("x-raw"), take("x-image"));
    let raw = children.open_child(opts, "raw", raw_name, ChildRole::Filtered)?;
    let test = children.open_child(opts, "test", test_name, ChildRole::Data)?;
    let name = format!("blkverify:{}:{}", raw.filename, test.filename);
    let mut node = Node::new(
        Box::new(BlkVerifyDriver {
            console: ctx.console.clone(),
        }),
        vec![
            Child {
                name: "raw",
                node: raw,
                writable: true,
                primary: true,
                role: ChildRole::Filtered,
                extra_perms: Perms::NONE,
                unshared_perms: Perms::NONE,
            },
            Child {
                name: "test",
                node: test,
                writable: true,
                primary: false,
                role: ChildRole::Data,
                extra_perms: Perms::NONE,
                unshared_perms: Perms::NONE,
            },
        ],
        name,
    );
    node.supported_write_flags = ReqFlags::WRITE_UNCHANGED;
    node.supported_zero_flags = ReqFlags::WRITE_UNCHANGED;
    Ok((node, Limits::default()))
}

/// Runs two futures concurrently in one task, polling `a` before `b` each time, as QEMU enters
/// the test coroutine before the raw one.
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    let mut ra = None;
    let mut rb = None;
    std::future::poll_fn(move |cx| {
        if ra.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            ra = Some(v);
        }
        if rb.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            rb = Some(v);
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// QEMU's return value for a result: 0 or -errno.
fn ret_of(r: &IoResult) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => -e,
    }
}

impl BlkVerifyDriver {
    fn raw<'a>(&self, node: &'a Node) -> &'a Rc<Node> {
        node.child("raw")
            .expect("blkverify is opened with a raw child")
    }
    fn test<'a>(&self, node: &'a Node) -> &'a Rc<Node> {
        node.child("test")
            .expect("blkverify is opened with a test child")
    }

    /// Reports a failed verification and ends the process.
    fn fail(&self, write: bool, offset: u64, bytes: u64, what: &str) -> i32 {
        let op = if write { "write" } else { "read" };
        self.console.err(&format!(
            "blkverify: {op} offset={offset} bytes={bytes} {what}\n"
        ));
        self.console.exit(1);
        libc::EIO
    }
}

impl BlockDriver for BlkVerifyDriver {
    /// QEMU's blkverify has no bdrv_reopen_prepare.
    fn can_reopen(&self) -> bool {
        false
    }
    fn format_name(&self) -> &'static str {
        "blkverify"
    }
    fn protocol_name(&self) -> Option<&'static str> {
        Some("blkverify")
    }
    fn is_filter(&self) -> bool {
        true
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            flush_all: true,
            // QEMU has no callback here and asserts; we stop with a clear message instead.
            pwrite_zeroes: true,
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
            let bytes = buf.len() as u64;
            let mut raw_buf = buf.to_vec();
            // QEMU clones the caller's I/O vector for the raw read, element by element.
            let _layout = super::iovec::share(buf, &raw_buf);
            let (t, r) = join2(
                io::preadv(self.test(node), offset, buf),
                io::preadv(self.raw(node), offset, &mut raw_buf),
            )
            .await;
            if ret_of(&t) != ret_of(&r) {
                let what = format!("return value mismatch {} != {}", ret_of(&t), ret_of(&r));
                return Err(self.fail(false, offset, bytes, &what));
            }
            if t.is_ok()
                && let Some(i) = buf.iter().zip(&raw_buf).position(|(a, b)| a != b)
            {
                let what = format!("contents mismatch at offset {}", offset + i as u64);
                return Err(self.fail(false, offset, bytes, &what));
            }
            t
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
            let bytes = buf.len() as u64;
            let raw = self.raw(node);
            // Writing past the end of a node needs RESIZE (an assertion in QEMU's
            // bdrv_co_write_req_prepare). qemu-io only takes it for `truncate`, and keeps it.
            if offset + bytes > io::getlength(raw)? && !raw.perms.get().perm.contains(Perms::RESIZE)
            {
                let what =
                    "goes past the end of the raw image (QEMU 10.0.2 aborts on an assertion here)";
                return Err(self.fail(true, offset, bytes, what));
            }
            let (t, r) = join2(
                io::pwritev(self.test(node), offset, buf, flags),
                io::pwritev(raw, offset, buf, flags),
            )
            .await;
            if ret_of(&t) != ret_of(&r) {
                let what = format!("return value mismatch {} != {}", ret_of(&t), ret_of(&r));
                return Err(self.fail(true, offset, bytes, &what));
            }
            t
        })
    }

    fn pwrite_zeroes<'a>(
        &'a self,
        _node: &'a Node,
        offset: u64,
        bytes: u64,
        _flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let what = "zero writes are not supported (QEMU 10.0.2 aborts on an assertion here)";
            Err(self.fail(true, offset, bytes, what))
        })
    }

    fn flush_all<'a>(&'a self, node: &'a Node) -> BoxFut<'a, IoResult> {
        Box::pin(async move { io::flush(self.test(node)).await })
    }

    fn getlength(&self, node: &Node) -> IoResult<u64> {
        self.test(node).getlength()
    }

    /// The truncate goes to the raw reference only (blkverify is a filter without a truncate
    /// of its own). QEMU's bdrv_co_truncate then finishes the request at the node's end, which
    /// is the test image's and did not move, minus the growth: below zero it aborts.
    fn truncate_prealloc<'a>(
        &'a self,
        node: &'a Node,
        size: u64,
        prealloc: &'a str,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            // the test image's length: the truncate does not change it
            let end = io::getlength(node).map_err(|e| {
                format!(
                    "Could not get current image size: {}",
                    crate::errno::strerror(e)
                )
            })?;
            let old = end;
            io::truncate_prealloc(self.raw(node), size, prealloc).await?;
            let growth = size.saturating_sub(old);
            if growth > end {
                self.console.err(&format!(
                    "blockfault: truncating blkverify to {size} grows it by {growth} bytes past its test image's end ({end}); QEMU 10.0.2 aborts here (bdrv_check_qiov_request: offset is negative: -{})\n",
                    growth - end
                ));
                self.console.exit(1);
            }
            Ok(())
        })
    }
}
