//! The qcow2 format driver: QEMU 10.0.2's allocation strategy, metadata caches and blkdebug
//! event points, so that fault-injection scenarios mean the same thing on this engine and on
//! QEMU and the images it leaves pass real `qemu-img check`.
//!
//! Files: `header` (cluster 0), `state` (in-memory state), `cache` (table caches),
//! `refcount` (cache I/O, refcounts, allocators), `cluster` (L1/L2 and write allocation),
//! `write` (guest writes, zero writes, discard, compression), `read` (guest reads),
//! `open` (opening with QEMU's checks, repairing a dirty image), `check` (the refcount
//! checker/repairer, shared with `qemu-img check`), `image_file` (the file as open and the
//! checker reach it), `aio_task` (the parallel chunk tasks of one write), `compress` (zlib
//! and zstd),
//! `resize` (truncate: growing, shrinking, preallocation), `bitmap` (persistent dirty
//! bitmaps: loaded at open, marked in use while writable, stored at close).

mod aio_task;
pub mod bitmap;
pub mod cache;
pub mod check;
pub mod cluster;
pub mod compress;
pub mod header;
pub mod image_file;
mod lock;
pub mod open;
mod overlap;
mod read;
pub mod refcount;
pub(crate) mod reopen;
mod resize;
pub mod runtime;
pub mod state;
mod write;

use crate::block::blkdebug::events::Event;
use crate::block::driver::{
    BlockDriver, BlockStatus, BoxFut, Capabilities, DriverInfo, IoResult, ReqFlags, status,
};
use crate::block::io;
use crate::block::node::Node;
use crate::output::Console;
use cache::CacheKind;
use header::{HeaderImage, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use lock::CoMutex;
use state::State;
use std::cell::RefCell;
use std::rc::Rc;

pub use open::open_image;

pub struct Qcow2 {
    pub(crate) st: RefCell<State>,
    pub(crate) lock: CoMutex,
    pub(crate) console: Rc<Console>,
    /// QEMU's metadata_preallocation, decided at the first block-status query
    pub(crate) metadata_prealloc: std::cell::Cell<Option<bool>>,
    /// (de)compression jobs in the thread pool, and who waits for a free one
    pub(crate) threads: std::cell::Cell<usize>,
    pub(crate) thread_queue: crate::block::executor::CoQueue,
    /// persistent dirty bitmaps (`bitmap`)
    pub(crate) bitmaps: RefCell<bitmap::Bitmaps>,
}

/// QCOW2_MAX_THREADS: (de)compression jobs one image runs at once.
const MAX_THREADS: usize = 4;

impl Qcow2 {
    /// QEMU's qcow2_co_process: (de)compression runs as a thread-pool job, at most
    /// `MAX_THREADS` at once, counted under the metadata lock.
    pub(crate) async fn in_thread<T>(&self, work: impl FnOnce() -> T) -> T {
        self.lock.lock().await;
        while self.threads.get() >= MAX_THREADS {
            let woken = self.thread_queue.wait();
            self.lock.unlock();
            woken.await;
            self.lock.lock().await;
        }
        self.threads.set(self.threads.get() + 1);
        self.lock.unlock();
        let out = work();
        crate::block::executor::pool_job().await;
        self.lock.lock().await;
        self.threads.set(self.threads.get() - 1);
        self.thread_queue.next();
        self.lock.unlock();
        out
    }

    /// Where guest data lives (QEMU's s->data_file): the external data file's node, or the
    /// image file. Metadata and blkdebug events always go to `node.file()`.
    pub(crate) fn data_child<'a>(&self, node: &'a Node) -> &'a std::rc::Rc<Node> {
        node.child("data-file").unwrap_or_else(|| node.file())
    }

    fn check_alive(&self) -> IoResult {
        if self.st.borrow().dead {
            return Err(libc::ENOMEDIUM);
        }
        Ok(())
    }

    /// QEMU's qcow2_signal_corruption: report, and for fatal ones on a writable image set
    /// the corrupt bit and stop serving requests.
    pub async fn signal_corruption(&self, node: &Node, fatal: bool, msg: &str) {
        let fatal = fatal && !node.flags().read_only;
        {
            let st = self.st.borrow();
            if st.corruption_reported && (!fatal || st.incompat & INCOMPAT_CORRUPT != 0) {
                return;
            }
        }
        if fatal {
            self.console.err(&format!(
                "qcow2: Marking image as corrupt: {msg}; further corruption events will be suppressed\n"
            ));
            let v = {
                let mut st = self.st.borrow_mut();
                st.incompat |= INCOMPAT_CORRUPT;
                st.hdr.incompatible_features = st.incompat;
                st.incompat
            };
            let _ = self.pwrite_sync(node, 72, &v.to_be_bytes()).await;
            self.st.borrow_mut().dead = true;
        } else {
            self.console.err(&format!(
                "qcow2: Image is corrupt: {msg}; further non-fatal corruption events will be suppressed\n"
            ));
        }
        self.st.borrow_mut().corruption_reported = true;
    }

    /// Sets the dirty bit before the first refcount-less L2 update (lazy refcounts).
    pub async fn mark_dirty(&self, node: &Node) -> IoResult {
        let v = {
            let st = self.st.borrow();
            if st.incompat & INCOMPAT_DIRTY != 0 {
                return Ok(());
            }
            st.incompat | INCOMPAT_DIRTY
        };
        self.pwrite_sync(node, 72, &v.to_be_bytes()).await?;
        let mut st = self.st.borrow_mut();
        st.incompat |= INCOMPAT_DIRTY;
        st.hdr.incompatible_features = st.incompat;
        Ok(())
    }

    async fn mark_clean(&self, node: &Node) -> IoResult {
        if self.st.borrow().incompat & INCOMPAT_DIRTY == 0 {
            return Ok(());
        }
        {
            let mut st = self.st.borrow_mut();
            st.incompat &= !INCOMPAT_DIRTY;
            st.hdr.incompatible_features = st.incompat;
        }
        self.flush_caches(node).await?;
        self.update_header(node).await
    }

    /// The extensions qcow2_update_header writes after the feature table: the bitmaps
    /// extension, then the unknown ones (QEMU keeps them in a list it prepends to while
    /// reading).
    pub(crate) fn trailing_exts(&self) -> Vec<(u32, Vec<u8>)> {
        let st = self.st.borrow();
        self.bitmaps_ext()
            .map(|e| (header::EXT_BITMAPS, e.to_bytes()))
            .into_iter()
            .chain(st.unknown_exts.iter().rev().cloned())
            .collect()
    }

    /// What a check under this open needs to rewrite the header as [`Self::update_header`]
    /// does: the parts besides the fixed fields.
    pub fn header_rest(&self) -> check::HeaderRest {
        let exts = self.trailing_exts();
        let st = self.st.borrow();
        check::HeaderRest {
            unknown_fields: st.unknown_fields.clone(),
            backing_format: st.backing_format.clone(),
            backing_file: st.backing_file.clone(),
            data_file: st.data_file_name.clone().filter(|_| st.data_file),
            exts,
        }
    }

    /// Rewrites cluster 0 (QEMU's qcow2_update_header).
    pub async fn update_header(&self, node: &Node) -> IoResult {
        let exts = self.trailing_exts();
        let buf = {
            let mut st = self.st.borrow_mut();
            st.hdr.incompatible_features = st.incompat;
            st.hdr.compatible_features = st.compat;
            st.hdr.autoclear_features = st.autoclear;
            let st = &*st;
            header::build(&HeaderImage {
                h: &st.hdr,
                cluster_size: st.cluster_size as usize,
                unknown_fields: &st.unknown_fields,
                backing_format: st.backing_format.as_deref(),
                backing_file: st.backing_file.as_deref(),
                data_file: st.data_file_name.as_deref().filter(|_| st.data_file),
                unknown_exts: &exts,
            })
        };
        let buf = buf.ok_or(libc::ENOSPC)?;
        io::pwritev(node.file(), 0, &buf, ReqFlags::NONE).await
    }

    /// Close-time write-back with QEMU's messages (qcow2_inactivate).
    async fn inactivate(&self, node: &Node) {
        if self.st.borrow().dead {
            return;
        }
        let mut ok = true;
        if let Err(m) = self.store_bitmaps(node, true).await {
            ok = false;
            self.console.report(&format!(
                "Lost persistent bitmaps during inactivation of node '{}': {m}",
                node.node_name()
            ));
        }
        if node.flags().read_only {
            return;
        }
        if let Err(e) = self.cache_flush(node, CacheKind::L2).await {
            ok = false;
            self.console.report(&format!(
                "Failed to flush the L2 table cache: {}",
                crate::errno::strerror(e)
            ));
        }
        if let Err(e) = self.cache_flush(node, CacheKind::Refcount).await {
            ok = false;
            self.console.report(&format!(
                "Failed to flush the refcount block cache: {}",
                crate::errno::strerror(e)
            ));
        }
        if ok {
            let _ = self.mark_clean(node).await;
        }
    }

    pub fn cluster_size(&self) -> u64 {
        self.st.borrow().cluster_size
    }

    async fn save_vmstate_impl(&self, node: &Node, pos: u64, buf: &[u8]) -> IoResult {
        node.file().debug_event(Event::VmstateSave).await;
        let off = self.st.borrow().vm_state_offset();
        self.do_pwritev(node, off + pos, buf).await
    }

    async fn load_vmstate_impl(&self, node: &Node, pos: u64, buf: &mut [u8]) -> IoResult {
        node.file().debug_event(Event::VmstateLoad).await;
        let off = self.st.borrow().vm_state_offset();
        self.do_preadv(node, off + pos, buf).await
    }

    fn specific_info(&self) -> Vec<String> {
        let st = self.st.borrow();
        let compression = format!("compression type: {}", st.compression.name());
        let mut data_file = Vec::new();
        if let Some(name) = &st.data_file_name {
            data_file.push(format!("data file: {name}"));
        }
        if st.data_file {
            let raw = st.autoclear & header::AUTOCLEAR_DATA_FILE_RAW != 0;
            data_file.push(format!("data file raw: {raw}"));
        }
        if st.hdr.version == 2 {
            return vec![
                "compat: 0.10".into(),
                compression,
                format!("refcount bits: {}", 1u32 << st.refcount_order),
            ];
        }
        vec![
            "compat: 1.1".into(),
            compression,
            format!(
                "lazy refcounts: {}",
                st.compat & header::COMPAT_LAZY_REFCOUNTS != 0
            ),
        ]
        .into_iter()
        .chain(self.bitmap_info_lines())
        .chain([format!("refcount bits: {}", 1u32 << st.refcount_order)])
        .chain(data_file)
        .chain([
            format!("corrupt: {}", st.incompat & INCOMPAT_CORRUPT != 0),
            format!("extended l2: {}", st.extended_l2),
        ])
        .collect()
    }
}

impl BlockDriver for Qcow2 {
    fn format_name(&self) -> &'static str {
        "qcow2"
    }

    fn supports_backing(&self) -> bool {
        true
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pwritev_compressed: true,
            pwrite_zeroes: true,
            pdiscard: true,
            flush_to_os: true,
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
        Box::pin(async move { self.do_preadv(node, offset, buf).await })
    }

    fn pwritev<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
        _flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move { self.do_pwritev(node, offset, buf).await })
    }

    fn pwritev_compressed<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move { self.do_pwritev_compressed(node, offset, buf).await })
    }

    fn pwrite_zeroes<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        bytes: u64,
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move { self.do_pwrite_zeroes(node, offset, bytes, flags).await })
    }

    fn pdiscard<'a>(&'a self, node: &'a Node, offset: u64, bytes: u64) -> BoxFut<'a, IoResult> {
        Box::pin(async move { self.do_pdiscard(node, offset, bytes).await })
    }

    fn flush_to_os<'a>(&'a self, node: &'a Node) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            self.check_alive()?;
            self.lock.lock().await;
            let r = self.write_caches(node).await;
            self.lock.unlock();
            r
        })
    }

    fn block_status<'a>(
        &'a self,
        node: &'a Node,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> BoxFut<'a, IoResult<BlockStatus>> {
        Box::pin(async move {
            let (flags, pnum, map) = self.driver_status(node, offset, bytes).await?;
            if flags & (status::DATA | status::ZERO) == 0 && self.st.borrow().dead {
                // The query itself found a fatal corruption (the metadata-preallocation scan
                // reading a bad refcount block): QEMU's generic block status then asks the
                // stopped node's driver whether it supports backing files, through NULL.
                self.console.err(
                    "blockfault: qcow2: block status of an unallocated range after the query stopped the driver on a fatal corruption; QEMU 10.0.2 crashes here (segmentation fault in bdrv_co_block_status)\n",
                );
                self.console.exit(1);
                return Err(libc::ENOMEDIUM);
            }
            let file = (flags & status::OFFSET_VALID != 0).then(|| self.data_child(node).clone());
            Ok(BlockStatus {
                flags,
                pnum,
                map,
                file,
            })
        })
    }

    fn truncate<'a>(&'a self, node: &'a Node, size: u64) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move { self.do_truncate(node, size, "off").await })
    }

    fn truncate_prealloc<'a>(
        &'a self,
        node: &'a Node,
        size: u64,
        prealloc: &'a str,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move { self.do_truncate(node, size, prealloc).await })
    }

    fn getlength(&self, _node: &Node) -> IoResult<u64> {
        Ok(self.st.borrow().size)
    }

    fn save_vmstate<'a>(&'a self, node: &'a Node, pos: u64, buf: &'a [u8]) -> BoxFut<'a, IoResult> {
        Box::pin(async move { self.save_vmstate_impl(node, pos, buf).await })
    }

    fn load_vmstate<'a>(
        &'a self,
        node: &'a Node,
        pos: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move { self.load_vmstate_impl(node, pos, buf).await })
    }

    fn info(&self, _node: &Node) -> Option<DriverInfo> {
        let st = self.st.borrow();
        Some(DriverInfo {
            cluster_size: st.cluster_size,
            subcluster_size: st.subcluster_size,
            vm_state_offset: st.vm_state_offset(),
            specific: {
                drop(st);
                self.specific_info()
            },
        })
    }

    fn reopen_prepare<'a>(
        &'a self,
        node: &'a Node,
        opts: &'a mut crate::block::open::Options,
        flags: crate::block::node::OpenFlags,
    ) -> BoxFut<'a, Result<Option<crate::block::driver::ReopenState>, String>> {
        Box::pin(async move { self.reopen_prepare_impl(node, opts, flags).await })
    }

    /// Persistent dirty bitmaps go writable: marked in use on disk (at open, a failure fails
    /// the open; after a reopen QEMU only reports it).
    fn start_writing<'a>(&'a self, node: &'a Node) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            if self.st.borrow().dead {
                return Ok(());
            }
            if self.bitmaps.borrow().open_rw_pending {
                return self.bitmaps_open_rw(node).await;
            }
            if let Err(m) = self.bitmaps_rw(node).await {
                self.console.report(&format!(
                    "{}: Failed to make dirty bitmaps writable: {m}",
                    node.node_name()
                ));
            }
            Ok(())
        })
    }

    fn set_dirty(&self, offset: u64, bytes: u64) {
        self.bitmaps_set_dirty(offset, bytes);
    }

    fn resize_dirty(&self, size: u64) {
        self.bitmaps_resize(size);
    }

    fn has_stopped(&self) -> bool {
        self.st.borrow().dead
    }

    fn reopen_commit(&self, _node: &Node, state: Option<crate::block::driver::ReopenState>) {
        self.reopen_commit_impl(state);
    }

    fn close<'a>(&'a self, node: &'a Node) -> BoxFut<'a, ()> {
        Box::pin(async move { self.inactivate(node).await })
    }
}
