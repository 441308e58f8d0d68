//! Tracked requests and their serialisation (QEMU's BdrvTrackedRequest in block/io.c).
//!
//! Every read, write, discard and truncate registers its byte range on the node it reaches
//! for as long as it runs. A request that must not interleave with overlapping ones — a
//! read-modify-write widened to the alignment, a growing truncate — becomes *serialising*:
//! it waits for every overlapping request, and every request that overlaps it later waits
//! for it, before touching data. Without this, two unaligned writes into the same aligned
//! block would each read the old block and the second write-back would undo the first.

use super::executor::CoQueue;
use super::node::Node;
use std::cell::Cell;
use std::rc::Rc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Discard,
    Truncate,
}

pub struct Tracked {
    pub kind: Kind,
    pub offset: u64,
    pub bytes: u64,
    overlap_offset: Cell<u64>,
    overlap_bytes: Cell<u64>,
    serialising: Cell<bool>,
    /// the request this one waits for: a request already waiting is not waited for, which
    /// breaks the cycles two serialising requests could otherwise form
    waiting: Cell<bool>,
    /// requests waiting for this one to end
    waiters: CoQueue,
}

impl Tracked {
    fn overlaps(&self, offset: u64, bytes: u64) -> bool {
        offset < self.overlap_offset.get() + self.overlap_bytes.get()
            && self.overlap_offset.get() < offset + bytes
    }
}

/// `tracked_request_begin`: newest first in the node's list, as QEMU inserts at the head.
pub fn begin(node: &Node, offset: u64, bytes: u64, kind: Kind) -> Rc<Tracked> {
    let req = Rc::new(Tracked {
        kind,
        offset,
        bytes,
        overlap_offset: Cell::new(offset),
        overlap_bytes: Cell::new(bytes),
        serialising: Cell::new(false),
        waiting: Cell::new(false),
        waiters: CoQueue::new(),
    });
    node.tracked.borrow_mut().insert(0, req.clone());
    req
}

/// `tracked_request_end`: everything that waited for it runs again.
pub fn end(node: &Node, req: &Rc<Tracked>) {
    if req.serialising.get() {
        node.serialising_in_flight
            .set(node.serialising_in_flight.get() - 1);
    }
    node.tracked.borrow_mut().retain(|r| !Rc::ptr_eq(r, req));
    req.waiters.restart_all();
}

fn find_conflict(node: &Node, me: &Rc<Tracked>) -> Option<Rc<Tracked>> {
    node.tracked
        .borrow()
        .iter()
        .find(|r| {
            !Rc::ptr_eq(r, me)
                && (r.serialising.get() || me.serialising.get())
                && r.overlaps(me.overlap_offset.get(), me.overlap_bytes.get())
                && !r.waiting.get()
        })
        .cloned()
}

async fn wait_locked(node: &Node, me: &Rc<Tracked>) {
    while let Some(other) = find_conflict(node, me) {
        me.waiting.set(true);
        other.waiters.wait().await;
        me.waiting.set(false);
    }
}

/// `bdrv_make_request_serialising`: widens the request to `align` and waits for everything
/// it overlaps.
pub async fn make_serialising(node: &Node, me: &Rc<Tracked>, align: u64) {
    let start = me.offset / align * align;
    let end = (me.offset + me.bytes).div_ceil(align) * align;
    if !me.serialising.replace(true) {
        node.serialising_in_flight
            .set(node.serialising_in_flight.get() + 1);
    }
    let old_end = me.overlap_offset.get() + me.overlap_bytes.get();
    let new_start = me.overlap_offset.get().min(start);
    me.overlap_offset.set(new_start);
    me.overlap_bytes.set(old_end.max(end) - new_start);
    wait_locked(node, me).await;
}

/// `bdrv_wait_serialising_requests`: waits for the serialising requests it overlaps.
pub async fn wait_serialising(node: &Node, me: &Rc<Tracked>) {
    if node.serialising_in_flight.get() == 0 {
        return;
    }
    wait_locked(node, me).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::executor::{Executor, pool_job};
    use crate::block::raw::RawDriver;
    use std::cell::RefCell;

    fn node() -> Rc<Node> {
        Node::new(Box::new(RawDriver::whole(false)), Vec::new(), String::new()).into_rc()
    }

    #[test]
    fn an_overlapping_request_waits_for_a_serialising_one() {
        let exec = Executor::new();
        let n = node();
        let log = Rc::new(RefCell::new(Vec::new()));
        let (n1, l1) = (n.clone(), log.clone());
        exec.spawn(async move {
            let req = begin(&n1, 100, 10, Kind::Write);
            make_serialising(&n1, &req, 4096).await;
            l1.borrow_mut().push("rmw starts");
            pool_job().await;
            l1.borrow_mut().push("rmw ends");
            end(&n1, &req);
        });
        let (n2, l2) = (n.clone(), log.clone());
        exec.spawn(async move {
            let req = begin(&n2, 2048, 512, Kind::Write);
            wait_serialising(&n2, &req).await;
            l2.borrow_mut().push("write");
            end(&n2, &req);
        });
        let (n3, l3) = (n.clone(), log.clone());
        exec.spawn(async move {
            // outside the widened range: not held up
            let req = begin(&n3, 4096, 512, Kind::Write);
            wait_serialising(&n3, &req).await;
            l3.borrow_mut().push("elsewhere");
            end(&n3, &req);
        });
        exec.run_until_idle();
        assert_eq!(
            *log.borrow(),
            ["rmw starts", "elsewhere", "rmw ends", "write"]
        );
        assert!(n.tracked.borrow().is_empty());
        assert_eq!(n.serialising_in_flight.get(), 0);
    }

    #[test]
    fn a_serialising_request_waits_for_plain_overlapping_ones() {
        let exec = Executor::new();
        let n = node();
        let log = Rc::new(RefCell::new(Vec::new()));
        let (n1, l1) = (n.clone(), log.clone());
        exec.spawn(async move {
            let req = begin(&n1, 0, 4096, Kind::Read);
            wait_serialising(&n1, &req).await;
            pool_job().await;
            l1.borrow_mut().push("read");
            end(&n1, &req);
        });
        let (n2, l2) = (n.clone(), log.clone());
        exec.spawn(async move {
            let req = begin(&n2, 512, 512, Kind::Write);
            make_serialising(&n2, &req, 4096).await;
            l2.borrow_mut().push("rmw");
            end(&n2, &req);
        });
        exec.run_until_idle();
        assert_eq!(*log.borrow(), ["read", "rmw"]);
    }
}
