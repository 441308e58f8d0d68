//! Cache I/O and refcount handling (QEMU's qcow2-cache.c I/O half and qcow2-refcount.c):
//! entry writes with their dependencies, refcount updates that allocate refcount blocks and
//! grow the refcount table, and the cluster allocators. Each function raises the blkdebug
//! events of its QEMU counterpart at the same point.

use super::Qcow2;
use super::cache::{CacheKind, Lookup};
use super::state::c_hex;
use super::state::{DiscardType, REFT_OFFSET_MASK, rc_get, rc_set, refcount_metadata_blocks};
use crate::block::blkdebug::events::Event;
use crate::block::crash_log;
use crate::block::driver::{BoxFut, IoResult, ReqFlags};
use crate::block::file::FileDriver;
use crate::block::io;
use crate::block::node::DetectZeroes;
use crate::block::node::Node;
use std::collections::BTreeMap;
use std::ops::Range;

/// A failed refcount-block lookup may still hold a cache reference the caller must drop.
pub struct RefblockErr {
    pub errno: i32,
    pub slot: Option<usize>,
}

impl Qcow2 {
    /// Writes one dirty cache entry (QEMU's qcow2_cache_entry_flush). The table goes to the
    /// file as it sits in the cache, shared, not copied.
    async fn cache_entry_flush(&self, node: &Node, c: CacheKind, i: usize) -> IoResult {
        let (dirty, offset, depends, dof) = {
            let st = self.st.borrow();
            let cache = &st.caches[c.idx()];
            (
                cache.is_dirty(i),
                cache.offset(i),
                cache.depends,
                cache.depends_on_flush,
            )
        };
        if !dirty || offset == 0 {
            return Ok(());
        }
        if depends.is_some() {
            self.flush_dependency(node, c).await?;
        } else if dof {
            io::flush(node.file()).await?;
            self.st.borrow_mut().cache(c).depends_on_flush = false;
        }
        let (ign, table_size) = {
            let st = self.st.borrow();
            let ign = match c {
                CacheKind::Refcount => super::overlap::REFCOUNT_BLOCK,
                CacheKind::L2 => super::overlap::ACTIVE_L2,
            };
            (ign, st.caches[c.idx()].table_size as u64)
        };
        self.pre_write_overlap_check(node, ign, offset, table_size)
            .await?;
        let ev = match c {
            CacheKind::Refcount => Event::RefblockUpdatePart,
            CacheKind::L2 => Event::L2Update,
        };
        node.file().debug_event(ev).await;
        let (table, unwritten) = {
            let mut st = self.st.borrow_mut();
            let cache = st.cache(c);
            let table = cache.shared_table(i).expect("a dirty entry holds a table");
            (table, cache.take_unwritten(i))
        };
        let part = self.table_write_part(node, offset, table.len(), unwritten.clone());
        let written = io::pwritev(
            node.file(),
            offset + part.start as u64,
            &table[part],
            ReqFlags::NONE,
        )
        .await;
        if let Err(e) = written {
            if let Some(u) = unwritten {
                self.st.borrow_mut().cache(c).restore_unwritten(i, u);
            }
            return Err(e);
        }
        self.st.borrow_mut().cache(c).clear_dirty(i);
        Ok(())
    }

    /// What part of a table at `offset` an entry write sends to the file. QEMU writes the
    /// whole table; only its unwritten bytes differ from the file's copy, so where nothing can
    /// tell the requests apart the write is cut to those bytes, rounded out to the file's
    /// request alignment (no padding, no read-modify-write), the same bytes ending on disk. It
    /// stays whole when
    /// - the file child is not the file driver itself: a filter between (blkdebug rules and
    ///   breakpoints, blkverify) sees each request's offset and length;
    /// - a crash sweep records the file's writes: it cuts and tears them one by one;
    /// - the table reaches into the file's last sector or past it: the whole write would
    ///   lengthen the file (and the node's idea of its length);
    /// - overlap checks for active L2 tables and refcount blocks are off: on a corrupt image
    ///   a data write may then have landed on the table, and QEMU's whole write overwrites it;
    /// - the file detects zeroes: a zeroed part would become a zero write (maybe unmapping
    ///   pages) where the whole table is a plain write;
    /// - the file splits requests (max-transfer below the table size): each piece is a job.
    ///
    /// A dirty table with nothing unwritten still gets a write (one alignment unit): each
    /// write is a thread-pool job, and the jobs order concurrent requests.
    fn table_write_part(
        &self,
        node: &Node,
        offset: u64,
        table_size: usize,
        unwritten: Option<Range<usize>>,
    ) -> Range<usize> {
        let whole = 0..table_size;
        let file = node.file();
        let align = file.limits().request_alignment.max(1);
        let checks = super::overlap::ACTIVE_L2 | super::overlap::REFCOUNT_BLOCK;
        let max_transfer = file.limits().max_transfer;
        let cuttable = file.driver.as_any().is::<FileDriver>()
            && !crash_log::recording()
            && file.detect_zeroes.get() == DetectZeroes::Off
            && (max_transfer == 0 || max_transfer >= table_size as u64)
            && offset + table_size as u64 + 512 <= file.total_sectors.get() * 512
            && self.st.borrow().overlap_check & checks == checks
            && offset.is_multiple_of(align)
            && (table_size as u64).is_multiple_of(align);
        if !cuttable {
            return whole;
        }
        let u = unwritten.unwrap_or(0..1);
        let align = align as usize;
        let start = u.start / align * align;
        let end = u.end.div_ceil(align) * align;
        start..end.min(table_size)
    }

    /// Writes every dirty entry in slot order (QEMU's qcow2_cache_write, which visits every
    /// slot: clean ones cost nothing there either); the first error wins unless it is ENOSPC.
    /// An entry dirtied meanwhile is written if the walk has not passed its slot yet.
    pub async fn cache_write(&self, node: &Node, c: CacheKind) -> IoResult {
        let mut result = Ok(());
        let mut from = 0;
        loop {
            let next = self.st.borrow().caches[c.idx()].next_dirty(from);
            let Some(i) = next else { break };
            if let Err(e) = self.cache_entry_flush(node, c, i).await
                && result != Err(libc::ENOSPC)
            {
                result = Err(e);
            }
            from = i + 1;
        }
        result
    }

    /// Cache write plus a flush of the file (QEMU's qcow2_cache_flush).
    pub async fn cache_flush(&self, node: &Node, c: CacheKind) -> IoResult {
        self.cache_write(node, c).await?;
        io::flush(node.file()).await
    }

    async fn flush_dependency(&self, node: &Node, c: CacheKind) -> IoResult {
        let dep = self.st.borrow().caches[c.idx()].depends;
        if let Some(d) = dep {
            // boxed: flushing the other cache may flush this one's dependency in turn
            let flush: BoxFut<'_, IoResult> = Box::pin(self.cache_flush(node, d));
            flush.await?;
        }
        let mut st = self.st.borrow_mut();
        let cache = st.cache(c);
        cache.depends = None;
        cache.depends_on_flush = false;
        Ok(())
    }

    /// Makes `c` depend on `dep` (QEMU's qcow2_cache_set_dependency).
    pub async fn set_dependency(&self, node: &Node, c: CacheKind, dep: CacheKind) -> IoResult {
        if self.st.borrow().caches[dep.idx()].depends.is_some() {
            self.flush_dependency(node, dep).await?;
        }
        let cur = self.st.borrow().caches[c.idx()].depends;
        if cur.is_some() && cur != Some(dep) {
            self.flush_dependency(node, c).await?;
        }
        self.st.borrow_mut().cache(c).depends = Some(dep);
        Ok(())
    }

    /// Gets a table into the cache and takes a reference (QEMU's qcow2_cache_do_get).
    pub async fn cache_get(
        &self,
        node: &Node,
        c: CacheKind,
        offset: u64,
        read: bool,
    ) -> IoResult<usize> {
        if offset == 0 {
            // Offset 0 is the header: no path QEMU guards on its own gets here, only a corrupt
            // table pointer it trusts, and then it aborts.
            let name = match c {
                CacheKind::L2 => "an L2 table",
                CacheKind::Refcount => "a refcount block",
            };
            self.qemu_aborts(
                &format!("the image is corrupt: {name} at offset 0 is to be loaded"),
                "qcow2_cache_do_get",
            );
            return Err(libc::EIO);
        }
        let table_size = self.st.borrow().caches[c.idx()].table_size;
        if !offset.is_multiple_of(table_size as u64) {
            let name = match c {
                CacheKind::L2 => "L2 table",
                CacheKind::Refcount => "refcount block",
            };
            self.signal_corruption(
                node,
                true,
                &format!(
                    "Cannot get entry from {name} cache: Offset {} is unaligned",
                    c_hex(offset)
                ),
            )
            .await;
            return Err(libc::EIO);
        }
        let lookup = self.st.borrow_mut().cache(c).lookup(offset);
        let i = match lookup {
            Some(Lookup::Hit(i)) => i,
            Some(Lookup::Miss(i)) => {
                self.cache_entry_flush(node, c, i).await?;
                let mut table = self.st.borrow_mut().cache(c).begin_load(i);
                if read {
                    if c == CacheKind::L2 {
                        node.file().debug_event(Event::L2Load).await;
                    }
                    if let Err(e) = io::preadv(node.file(), offset, &mut table).await {
                        self.st.borrow_mut().cache(c).end_load(i, table, 0, false);
                        return Err(e);
                    }
                }
                // without `read` the caller overwrites the whole table
                self.st
                    .borrow_mut()
                    .cache(c)
                    .end_load(i, table, offset, read);
                i
            }
            None => return Err(libc::EIO),
        };
        self.st.borrow_mut().cache(c).take_ref(i);
        Ok(i)
    }

    /// Where QEMU 10.0.2 aborts on an assertion over a corrupt image: our one line, and the
    /// process ends with status 1.
    pub fn qemu_aborts(&self, what: &str, function: &str) {
        self.console.err(&format!(
            "blockfault: qcow2: {what}; QEMU 10.0.2 aborts on an assertion here ({function})\n"
        ));
        self.console.exit(1);
    }

    pub fn cache_put(&self, c: CacheKind, i: usize) {
        self.st.borrow_mut().cache(c).put(i);
    }

    /// Whether a refcount block covers the cluster. Clusters without one have refcount 0 and
    /// cost QEMU no cache lookup, so loops over the file's clusters (which a corrupt offset can
    /// make terabytes long) skip a missing block's whole range at once and answer the same.
    pub fn has_refcount_block(&self, cluster_index: u64) -> bool {
        let st = self.st.borrow();
        st.reftable
            .get((cluster_index >> st.refcount_block_bits) as usize)
            .is_some_and(|e| e & REFT_OFFSET_MASK != 0)
    }

    /// A cluster's refcount, read through the refcount cache without an event.
    pub async fn get_refcount(&self, node: &Node, cluster_index: u64) -> IoResult<u64> {
        let (ti, off, idx, order) = {
            let st = self.st.borrow();
            let ti = cluster_index >> st.refcount_block_bits;
            if ti >= st.reftable.len() as u64 {
                return Ok(0);
            }
            let off = st.reftable[ti as usize] & REFT_OFFSET_MASK;
            (
                ti,
                off,
                (cluster_index & (st.refcount_block_size() - 1)) as usize,
                st.refcount_order,
            )
        };
        if off == 0 {
            return Ok(0);
        }
        if self.st.borrow().offset_into_cluster(off) != 0 {
            self.signal_corruption(
                node,
                true,
                &format!(
                    "Refblock offset {} unaligned (reftable index: {})",
                    c_hex(off),
                    c_hex(ti)
                ),
            )
            .await;
            return Err(libc::EIO);
        }
        let block_offset = off;
        // A cached block is read as cache_get's hit does (reference taken and dropped, so the
        // LRU stamps move as in QEMU), without building the miss path's future: allocations
        // ask this of every cluster they look at.
        let hit = {
            let mut st = self.st.borrow_mut();
            let c = st.cache(CacheKind::Refcount);
            match c.lookup(block_offset) {
                Some(Lookup::Hit(i)) => {
                    c.take_ref(i);
                    let v = rc_get(c.table(i), order, idx);
                    c.put(i);
                    Some(v)
                }
                _ => None,
            }
        };
        if let Some(v) = hit {
            return Ok(v);
        }
        let slot = self
            .cache_get(node, CacheKind::Refcount, block_offset, true)
            .await?;
        let v = rc_get(self.st.borrow().caches[1].table(slot), order, idx);
        self.cache_put(CacheKind::Refcount, slot);
        Ok(v)
    }

    async fn load_refcount_block(&self, node: &Node, offset: u64) -> IoResult<usize> {
        node.file().debug_event(Event::RefblockLoad).await;
        self.cache_get(node, CacheKind::Refcount, offset, true)
            .await
    }

    /// Finds, or allocates, the refcount block of a cluster (QEMU's alloc_refcount_block).
    /// `Err` with EAGAIN means new metadata was placed: the caller restarts its search.
    async fn alloc_refcount_block(
        &self,
        node: &Node,
        cluster_index: u64,
    ) -> Result<usize, RefblockErr> {
        let plain = |errno| RefblockErr { errno, slot: None };
        node.file().debug_event(Event::RefblockAlloc).await;
        let (ti, existing) = {
            let st = self.st.borrow();
            let ti = cluster_index >> st.refcount_block_bits;
            let off = st
                .reftable
                .get(ti as usize)
                .map_or(0, |e| e & REFT_OFFSET_MASK);
            (ti, off)
        };
        if existing != 0 {
            if self.st.borrow().offset_into_cluster(existing) != 0 {
                self.signal_corruption(
                    node,
                    true,
                    &format!(
                        "Refblock offset {} unaligned (reftable index: {})",
                        c_hex(existing),
                        c_hex(ti)
                    ),
                )
                .await;
                return Err(plain(libc::EIO));
            }
            return self
                .load_refcount_block(node, existing)
                .await
                .map_err(plain);
        }
        // The reftable is about to change: L2 tables must reach the disk first.
        self.cache_flush(node, CacheKind::L2).await.map_err(plain)?;
        let cs = self.st.borrow().cluster_size;
        let new_block = self
            .alloc_clusters_noref(node, cs, u64::MAX)
            .await
            .map_err(plain)?;
        if new_block == 0 {
            self.signal_corruption(
                node,
                true,
                "Preventing invalid allocation of refcount block at offset 0",
            )
            .await;
            return Err(plain(libc::EIO));
        }
        let (same_block, order, self_idx) = {
            let st = self.st.borrow();
            let shift = st.cluster_bits + st.refcount_block_bits;
            (
                new_block >> shift == (cluster_index << st.cluster_bits) >> shift,
                st.refcount_order,
                ((new_block >> st.cluster_bits) & (st.refcount_block_size() - 1)) as usize,
            )
        };
        let slot;
        if same_block {
            slot = self
                .cache_get(node, CacheKind::Refcount, new_block, false)
                .await
                .map_err(plain)?;
            let mut st = self.st.borrow_mut();
            let t = st.cache(CacheKind::Refcount).table_mut(slot);
            t.fill(0);
            rc_set(t, order, self_idx, 1);
        } else {
            self.update_refcount_boxed(node, new_block, cs, 1, false, DiscardType::Never)
                .await
                .map_err(plain)?;
            self.cache_flush(node, CacheKind::Refcount)
                .await
                .map_err(plain)?;
            slot = self
                .cache_get(node, CacheKind::Refcount, new_block, false)
                .await
                .map_err(plain)?;
            self.st
                .borrow_mut()
                .cache(CacheKind::Refcount)
                .table_mut(slot)
                .fill(0);
        }
        let fail = |errno| RefblockErr {
            errno,
            slot: Some(slot),
        };
        node.file().debug_event(Event::RefblockAllocWrite).await;
        self.st
            .borrow_mut()
            .cache(CacheKind::Refcount)
            .mark_dirty(slot);
        if let Err(e) = self.cache_flush(node, CacheKind::Refcount).await {
            self.cache_put(CacheKind::Refcount, slot);
            return Err(plain(e));
        }
        let (table_len, table_offset) = {
            let st = self.st.borrow();
            (st.reftable.len() as u64, st.reftable_offset)
        };
        if ti < table_len {
            node.file().debug_event(Event::RefblockAllocHookup).await;
            if let Err(e) = self
                .pwrite_sync(node, table_offset + ti * 8, &new_block.to_be_bytes())
                .await
            {
                self.cache_put(CacheKind::Refcount, slot);
                return Err(plain(e));
            }
            let mut st = self.st.borrow_mut();
            st.reftable.set(ti as usize, new_block);
            st.max_reftable_index = st.max_reftable_index.max(ti);
            return Err(fail(libc::EAGAIN));
        }
        self.cache_put(CacheKind::Refcount, slot);
        node.file().debug_event(Event::ReftableGrow).await;
        let meta_offset = {
            let st = self.st.borrow();
            let rbs = st.refcount_block_size();
            let used = (cluster_index + 1)
                .max((new_block >> st.cluster_bits) + 1)
                .div_ceil(rbs);
            used * rbs * st.cluster_size
        };
        self.refcount_area(node, meta_offset, 0, false, ti, new_block)
            .await
            .map_err(plain)?;
        let slot = self
            .load_refcount_block(node, new_block)
            .await
            .map_err(plain)?;
        Err(RefblockErr {
            errno: libc::EAGAIN,
            slot: Some(slot),
        })
    }

    /// Writes new self-describing refcount structures at `start_offset` and switches to a new,
    /// larger refcount table (QEMU's qcow2_refcount_area). Returns the end of the new area.
    pub async fn refcount_area(
        &self,
        node: &Node,
        start_offset: u64,
        additional_clusters: u64,
        exact_size: bool,
        new_refblock_index: u64,
        new_refblock_offset: u64,
    ) -> IoResult<u64> {
        let (cs, order, rbs) = {
            let st = self.st.borrow();
            (st.cluster_size, st.refcount_order, st.refcount_block_size())
        };
        let total = refcount_metadata_blocks(
            start_offset / cs + additional_clusters,
            cs,
            order,
            !exact_size,
        );
        if total > super::header::MAX_REFTABLE_SIZE {
            return Err(libc::EFBIG);
        }
        let area_index = (start_offset / cs) / rbs;
        let mut table_size = if exact_size {
            total
        } else {
            total + total.div_ceil(2)
        };
        let per_cluster = cs / 8;
        table_size = table_size.div_ceil(per_cluster) * per_cluster;
        let table_clusters = table_size * 8 / cs;
        if table_size > super::header::MAX_REFTABLE_SIZE {
            return Err(libc::EFBIG);
        }
        if self.st.borrow().reftable.is_empty() {
            // an image opened for a check with refcount_table_clusters 0 has no table at all;
            // QEMU copies its first entry from a NULL table
            self.console.err("blockfault: qcow2: the refcount table is to grow from an empty one (refcount_table_clusters 0); QEMU 10.0.2 crashes here (segmentation fault in qcow2_refcount_area)\n");
            self.console.exit(1);
            return Err(libc::EIO);
        }
        let mut new_table = vec![0u64; table_size as usize];
        {
            let st = self.st.borrow();
            let n = if table_size > st.max_reftable_index {
                (st.max_reftable_index + 1) as usize
            } else {
                table_size as usize
            };
            let n = n.min(st.reftable.len());
            new_table[..n].copy_from_slice(&st.reftable[..n]);
        }
        if new_refblock_offset != 0 {
            new_table[new_refblock_index as usize] = new_refblock_offset;
        }
        let additional = (area_index..total)
            .filter(|&i| new_table[i as usize] == 0)
            .count() as u64;
        let table_offset = start_offset + additional * cs;
        let end_offset = table_offset + table_clusters * cs;
        let mut block_offset = start_offset;
        for i in area_index..total {
            let slot = if new_table[i as usize] != 0 {
                self.cache_get(node, CacheKind::Refcount, new_table[i as usize], true)
                    .await?
            } else {
                let slot = self
                    .cache_get(node, CacheKind::Refcount, block_offset, false)
                    .await?;
                let mut st = self.st.borrow_mut();
                let c = st.cache(CacheKind::Refcount);
                c.table_mut(slot).fill(0);
                c.mark_dirty(slot);
                new_table[i as usize] = block_offset;
                block_offset += cs;
                slot
            };
            let first_covered = i * rbs * cs;
            if first_covered < end_offset {
                let mut j = if first_covered < start_offset {
                    (start_offset - first_covered) / cs
                } else {
                    0
                };
                let end_index = ((end_offset - first_covered) / cs).min(rbs);
                let mut st = self.st.borrow_mut();
                let c = st.cache(CacheKind::Refcount);
                while j < end_index {
                    c.set_refcount(slot, order, j as usize, 1);
                    j += 1;
                }
                c.mark_dirty(slot);
            }
            self.cache_put(CacheKind::Refcount, slot);
        }
        node.file()
            .debug_event(Event::RefblockAllocWriteBlocks)
            .await;
        self.cache_flush(node, CacheKind::Refcount).await?;
        let bytes = super::state::be64_bytes(&new_table);
        node.file()
            .debug_event(Event::RefblockAllocWriteTable)
            .await;
        self.pwrite_sync(node, table_offset, &bytes).await?;
        let mut data = [0u8; 12];
        data[..8].copy_from_slice(&table_offset.to_be_bytes());
        data[8..].copy_from_slice(&(table_clusters as u32).to_be_bytes());
        node.file()
            .debug_event(Event::RefblockAllocSwitchTable)
            .await;
        self.pwrite_sync(node, 48, &data).await?;
        let (old_offset, old_size) = {
            let mut st = self.st.borrow_mut();
            let old = (st.reftable_offset, st.reftable.len() as u64);
            st.reftable = super::overlap::PointerTable::reftable(new_table);
            st.reftable_offset = table_offset;
            st.hdr.refcount_table_offset = table_offset;
            st.hdr.refcount_table_clusters = table_clusters as u32;
            st.max_reftable_index = max_used_index(&st.reftable);
            old
        };
        // boxed: freeing updates refcounts, which may land here again
        let free: BoxFut<'_, ()> =
            Box::pin(self.free_clusters(node, old_offset, old_size * 8, DiscardType::Other));
        free.await;
        Ok(end_offset)
    }

    /// Changes the refcounts of every cluster in a range (QEMU's update_refcount), undoing
    /// the part already done when it fails.
    pub async fn update_refcount(
        &self,
        node: &Node,
        offset: u64,
        length: u64,
        addend: u64,
        decrease: bool,
        dtype: DiscardType,
    ) -> IoResult {
        if length == 0 {
            return Ok(());
        }
        if decrease {
            // best effort as in QEMU, whose return value is ignored here
            let _ = self
                .set_dependency(node, CacheKind::Refcount, CacheKind::L2)
                .await;
        }
        let (start, last, cs) = {
            let st = self.st.borrow();
            (
                st.start_of_cluster(offset),
                st.start_of_cluster(offset + length - 1),
                st.cluster_size,
            )
        };
        let mut slot: Option<usize> = None;
        let mut old_table_index: Option<u64> = None;
        let mut cluster_offset = start;
        let mut ret: IoResult = Ok(());
        while cluster_offset <= last {
            let (cluster_index, table_index) = {
                let st = self.st.borrow();
                let ci = cluster_offset >> st.cluster_bits;
                (ci, ci >> st.refcount_block_bits)
            };
            if old_table_index != Some(table_index) {
                if let Some(s) = slot.take() {
                    self.cache_put(CacheKind::Refcount, s);
                }
                match self.alloc_refcount_block(node, cluster_index).await {
                    Ok(s) => slot = Some(s),
                    Err(e) => {
                        slot = e.slot;
                        if e.errno == libc::EAGAIN {
                            let mut st = self.st.borrow_mut();
                            let si = start >> st.cluster_bits;
                            if st.free_cluster_index > si {
                                st.free_cluster_index = si;
                            }
                        }
                        ret = Err(e.errno);
                        break;
                    }
                }
            }
            old_table_index = Some(table_index);
            let s = slot.expect("a refcount block is loaded");
            let freed_at = {
                let mut st = self.st.borrow_mut();
                let order = st.refcount_order;
                let max = st.refcount_max;
                let idx = (cluster_index & (st.refcount_block_size() - 1)) as usize;
                let c = st.cache(CacheKind::Refcount);
                c.mark_dirty(s);
                let rc = rc_get(c.table(s), order, idx);
                let new = if decrease {
                    rc.checked_sub(addend)
                } else {
                    rc.checked_add(addend).filter(|&v| v <= max)
                };
                match new {
                    None => {
                        ret = Err(libc::EINVAL);
                        break;
                    }
                    Some(v) => {
                        c.set_refcount(s, order, idx, v);
                        if v == 0 && cluster_index < st.free_cluster_index {
                            st.free_cluster_index = cluster_index;
                        }
                        v == 0
                    }
                }
            };
            if freed_at {
                let mut st = self.st.borrow_mut();
                // QEMU looks the freed table up by the start of the whole range.
                if let Some(t) = st.caches[1].find(offset) {
                    st.caches[1].put(s);
                    slot = None;
                    old_table_index = None;
                    st.caches[1].discard(t);
                }
                if let Some(t) = st.caches[0].find(offset) {
                    st.caches[0].discard(t);
                }
                if st.discard_passthrough[dtype as usize] {
                    st.discards.queue(cluster_offset, cs);
                }
            }
            cluster_offset += cs;
        }
        if !self.st.borrow().cache_discards {
            self.process_discards(node, ret.is_ok()).await;
        }
        if let Some(s) = slot {
            self.cache_put(CacheKind::Refcount, s);
        }
        // QEMU's undo length is signed: before the first cluster boundary past an unaligned
        // offset it is negative, and that undo fails at once, changing nothing
        if ret.is_err()
            && let Some(done) = cluster_offset.checked_sub(offset)
        {
            let _ = self
                .update_refcount_boxed(node, offset, done, addend, !decrease, DiscardType::Never)
                .await;
        }
        ret
    }

    /// `update_refcount` where it recurses (the undo of a failed update, a new refcount block
    /// that needs its own refcount): a boxed future breaks the cycle of async calls.
    fn update_refcount_boxed<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        length: u64,
        addend: u64,
        decrease: bool,
        dtype: DiscardType,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(self.update_refcount(node, offset, length, addend, decrease, dtype))
    }

    /// Passes queued discards of freed clusters to the file (QEMU's qcow2_process_discards).
    pub async fn process_discards(&self, node: &Node, ok: bool) {
        let list = self.st.borrow_mut().discards.take();
        if ok {
            for (off, len) in list {
                let _ = io::pdiscard(node.file(), off, len).await;
            }
        }
    }

    /// First fit from the free-cluster index, without touching refcounts.
    pub async fn alloc_clusters_noref(&self, node: &Node, size: u64, max: u64) -> IoResult<u64> {
        if self.st.borrow().cache_discards {
            self.process_discards(node, true).await;
        }
        let nb = self.st.borrow().size_to_clusters(size);
        'retry: loop {
            for _ in 0..nb {
                let idx = {
                    let mut st = self.st.borrow_mut();
                    let i = st.free_cluster_index;
                    st.free_cluster_index += 1;
                    i
                };
                if self.get_refcount(node, idx).await? != 0 {
                    continue 'retry;
                }
            }
            break;
        }
        let st = self.st.borrow();
        let max = max.min(super::state::MAX_CLUSTER_OFFSET);
        if st.free_cluster_index > 0 && st.free_cluster_index - 1 > (max >> st.cluster_bits) {
            return Err(libc::EFBIG);
        }
        Ok((st.free_cluster_index - nb) << st.cluster_bits)
    }

    /// QEMU's qcow2_alloc_clusters.
    pub async fn alloc_clusters(&self, node: &Node, size: u64) -> IoResult<u64> {
        node.file().debug_event(Event::ClusterAlloc).await;
        loop {
            let offset = self.alloc_clusters_noref(node, size, u64::MAX).await?;
            match self
                .update_refcount(node, offset, size, 1, false, DiscardType::Never)
                .await
            {
                Err(libc::EAGAIN) => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(offset),
            }
        }
    }

    /// Allocates as many of the clusters starting at `offset` as are free (no event).
    pub async fn alloc_clusters_at(&self, node: &Node, offset: u64, nb: u64) -> IoResult<u64> {
        if nb == 0 {
            return Ok(0);
        }
        loop {
            let (mut ci, bits) = {
                let st = self.st.borrow();
                (offset >> st.cluster_bits, st.cluster_bits)
            };
            let mut i = 0;
            while i < nb {
                if self.get_refcount(node, ci).await? != 0 {
                    break;
                }
                ci += 1;
                i += 1;
            }
            match self
                .update_refcount(node, offset, i << bits, 1, false, DiscardType::Never)
                .await
            {
                Err(libc::EAGAIN) => continue,
                Err(e) => return Err(e),
                Ok(()) => return Ok(i),
            }
        }
    }

    /// Byte-granular allocation for compressed clusters (QEMU's qcow2_alloc_bytes).
    pub async fn alloc_bytes(&self, node: &Node, size: u64) -> IoResult<u64> {
        node.file().debug_event(Event::ClusterAllocBytes).await;
        let (mut offset, cs, max) = {
            let st = self.st.borrow();
            (st.free_byte_offset, st.cluster_size, st.cluster_offset_mask)
        };
        if offset != 0 {
            let ci = offset >> self.st.borrow().cluster_bits;
            if self.get_refcount(node, ci).await? == self.st.borrow().refcount_max {
                offset = 0;
            }
        }
        let mut free_in_cluster = cs - (offset & (cs - 1));
        loop {
            if offset == 0 || free_in_cluster < size {
                let new_cluster = self.alloc_clusters_noref(node, cs, max).await?;
                if new_cluster == 0 {
                    self.signal_corruption(
                        node,
                        true,
                        "Preventing invalid allocation of compressed cluster at offset 0",
                    )
                    .await;
                    return Err(libc::EIO);
                }
                if offset == 0 || offset.div_ceil(cs) * cs != new_cluster {
                    offset = new_cluster;
                    free_in_cluster = cs;
                } else {
                    free_in_cluster += cs;
                }
            }
            match self
                .update_refcount(node, offset, size, 1, false, DiscardType::Never)
                .await
            {
                Ok(()) => break,
                Err(libc::EAGAIN) => {
                    offset = 0;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        let _ = self
            .set_dependency(node, CacheKind::L2, CacheKind::Refcount)
            .await;
        let mut st = self.st.borrow_mut();
        st.free_byte_offset = offset + size;
        if st.free_byte_offset & (cs - 1) == 0 {
            st.free_byte_offset = 0;
        }
        Ok(offset)
    }

    /// QEMU's qcow2_free_clusters: failures only print (the clusters leak).
    pub async fn free_clusters(&self, node: &Node, offset: u64, size: u64, dtype: DiscardType) {
        node.file().debug_event(Event::ClusterFree).await;
        if let Err(e) = self
            .update_refcount(node, offset, size, 1, true, dtype)
            .await
        {
            self.console.err(&format!(
                "qcow2_free_clusters failed: {}\n",
                crate::errno::strerror(e)
            ));
        }
    }

    /// Frees whatever an L2 entry points to.
    pub async fn free_any_cluster(&self, node: &Node, entry: u64, dtype: DiscardType) {
        use super::state::{ClusterType, L2E_OFFSET_MASK};
        let ty = self.st.borrow().cluster_type(entry);
        match ty {
            ClusterType::Compressed => {
                let (off, len) = self.st.borrow().parse_compressed(entry);
                self.free_clusters(node, off, len, dtype).await;
            }
            ClusterType::Normal | ClusterType::ZeroAlloc => {
                let off = entry & L2E_OFFSET_MASK;
                let (aligned, cs) = {
                    let st = self.st.borrow();
                    (st.offset_into_cluster(off) == 0, st.cluster_size)
                };
                if !aligned {
                    self.signal_corruption(
                        node,
                        false,
                        &format!("Cannot free unaligned cluster {}", c_hex(off)),
                    )
                    .await;
                } else if self.st.borrow().data_file {
                    // data file clusters have no refcounts: only the discard is passed on
                    if self.st.borrow().discard_passthrough[dtype as usize] {
                        let _ = io::pdiscard(self.data_child(node), off, cs).await;
                    }
                } else {
                    self.free_clusters(node, off, cs, dtype).await;
                }
            }
            ClusterType::ZeroPlain | ClusterType::Unallocated => {}
        }
    }

    /// Writes the caches without flushing the file (QEMU's qcow2_write_caches).
    pub async fn write_caches(&self, node: &Node) -> IoResult {
        self.cache_write(node, CacheKind::L2).await?;
        if self.st.borrow().need_accurate_refcounts() {
            self.cache_write(node, CacheKind::Refcount).await?;
        }
        Ok(())
    }

    pub async fn flush_caches(&self, node: &Node) -> IoResult {
        self.write_caches(node).await?;
        io::flush(node.file()).await
    }

    /// bdrv_pwrite_sync: a write followed by a flush of the file node.
    pub async fn pwrite_sync(&self, node: &Node, offset: u64, data: &[u8]) -> IoResult {
        io::pwritev(node.file(), offset, data, ReqFlags::NONE).await?;
        io::flush(node.file()).await
    }
}

pub fn max_used_index(table: &[u64]) -> u64 {
    let mut i = table.len().saturating_sub(1);
    while i > 0 && table[i] & REFT_OFFSET_MASK == 0 {
        i -= 1;
    }
    i as u64
}

/// Freed clusters waiting to be discarded in the file (QEMU's `s->discards` list): regions in
/// list order, a freed range merged into the first adjacent region or appended, and a region
/// the merge made adjacent folded in. QEMU finds neighbours by walking the list, which grows
/// with every gap a large discard leaves; here an index by start offset finds them.
#[derive(Default)]
pub struct DiscardQueue {
    /// (offset, bytes) by list position (positions only grow)
    regions: BTreeMap<u64, (u64, u64)>,
    /// list position by offset
    by_start: BTreeMap<u64, u64>,
    next_pos: u64,
}

impl DiscardQueue {
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions in list order; the queue is left empty.
    pub fn take(&mut self) -> Vec<(u64, u64)> {
        self.by_start.clear();
        std::mem::take(&mut self.regions).into_values().collect()
    }

    fn insert_at(&mut self, pos: u64, region: (u64, u64)) {
        self.regions.insert(pos, region);
        self.by_start.insert(region.0, pos);
    }

    fn remove_at(&mut self, pos: u64) -> (u64, u64) {
        let region = self.regions.remove(&pos).expect("a queued position");
        self.by_start.remove(&region.0);
        region
    }

    /// Queues `length` bytes at `offset` (QEMU's update_refcount_discard).
    pub fn queue(&mut self, offset: u64, length: u64) {
        let end = offset + length;
        let left = self
            .by_start
            .range(..=offset)
            .next_back()
            .map(|(_, &p)| (p, self.regions[&p]));
        let inside = self.by_start.range(offset + 1..end).next().is_some();
        if inside || left.is_some_and(|(_, (o, b))| o + b > offset) {
            // Overlaps cannot happen (a freed cluster is not freed again before the queue is
            // processed); if they did, QEMU's own walk decides.
            return self.queue_by_walking(offset, length);
        }
        let left = left.filter(|&(_, (o, b))| o + b == offset).map(|(p, _)| p);
        let right = self.by_start.get(&end).copied();
        match (left, right) {
            (None, None) => {
                let pos = self.next_pos;
                self.next_pos += 1;
                self.insert_at(pos, (offset, length));
            }
            (Some(l), None) => {
                let (o, b) = self.remove_at(l);
                self.insert_at(l, (o, b + length));
            }
            (None, Some(r)) => {
                let (_, b) = self.remove_at(r);
                self.insert_at(r, (offset, b + length));
            }
            (Some(l), Some(r)) => {
                // the earlier one in the list takes the range, then swallows the other
                let (lo, lb) = self.remove_at(l);
                let (_, rb) = self.remove_at(r);
                self.insert_at(l.min(r), (lo, lb + length + rb));
            }
        }
    }

    /// QEMU's list walk, for the overlapping case only.
    fn queue_by_walking(&mut self, offset: u64, length: u64) {
        let mut list = self.take();
        walk_discard_list(&mut list, offset, length);
        for (pos, region) in list.into_iter().enumerate() {
            self.insert_at(pos as u64, region);
        }
        self.next_pos = self.regions.len() as u64;
    }
}

/// QEMU's update_refcount_discard on a plain list: the first region the range touches takes
/// it (else it is appended), then every region touching the grown one is folded in.
fn walk_discard_list(list: &mut Vec<(u64, u64)>, offset: u64, length: u64) {
    let touching = |d: (u64, u64)| {
        let new_start = offset.min(d.0);
        let new_end = (offset + length).max(d.0 + d.1);
        new_end - new_start <= length + d.1
    };
    let mut di = match list.iter().position(|&d| touching(d)) {
        Some(i) => {
            let d = list[i];
            let start = offset.min(d.0);
            list[i] = (start, (offset + length).max(d.0 + d.1) - start);
            i
        }
        None => {
            list.push((offset, length));
            list.len() - 1
        }
    };
    let mut i = 0;
    while i < list.len() {
        let (d, p) = (list[di], list[i]);
        if i == di || p.0 > d.0 + d.1 || d.0 > p.0 + p.1 {
            i += 1;
            continue;
        }
        list[di] = (d.0.min(p.0), d.1 + p.1);
        list.remove(i);
        if i < di {
            di -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn the_index_queues_as_qemu_walks(clusters in proptest::collection::vec(0u64..64, 0..80)) {
            let mut q = DiscardQueue::default();
            let mut list = Vec::new();
            let mut freed = std::collections::HashSet::new();
            for c in clusters {
                // a cluster is freed once before the queue is processed
                if !freed.insert(c) {
                    continue;
                }
                q.queue(c * 512, 512);
                walk_discard_list(&mut list, c * 512, 512);
            }
            prop_assert_eq!(q.take(), list);
        }
    }

    /// Rewrites the last L2 entry of the first L2 table behind the cache's back, changes
    /// entry 1 through the driver and flushes: the cut write leaves the planted bytes, a
    /// whole-table write replaces them with the cached (zero) entry. Returns both entries as
    /// the file holds them afterwards.
    fn flush_after_planting(filename: &str) -> (u64, u64) {
        use crate::block::open::{OpenContext, Options, open_drive};
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::img::qcow2::create::CreateSpec {
            size: 1 << 30,
            ..Default::default()
        };
        let image = crate::img::qcow2::create::build(&spec).unwrap().flatten();
        let path = dir.path().join("t.qcow2");
        std::fs::write(&path, &image).unwrap();
        let ctx = OpenContext::quiet(dir.path());
        let node = open_drive(Some(filename), Options::new(), Some("qcow2"), &ctx).unwrap();
        let data = vec![0x5au8; 4096];
        // a new L2 table, then data clusters after it: the table lies well inside the file
        crate::block::executor::block_on({
            let node = node.clone();
            let data = data.clone();
            async move {
                io::pwritev(&node, 0, &data, ReqFlags::NONE).await.unwrap();
                io::pwritev(&node, 1 << 20, &data, ReqFlags::NONE)
                    .await
                    .unwrap();
                io::flush(&node).await.unwrap();
            }
        })
        .unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let be64 = |at: u64| {
            let mut b = [0u8; 8];
            file.read_exact_at(&mut b, at).unwrap();
            u64::from_be_bytes(b)
        };
        let l2 = be64(be64(40)) & super::super::state::L1E_OFFSET_MASK;
        let last = l2 + 65536 - 8;
        file.write_all_at(&0xabab_abab_abab_abab_u64.to_be_bytes(), last)
            .unwrap();
        crate::block::executor::block_on({
            let node = node.clone();
            async move {
                io::pwritev(&node, 65536, &data, ReqFlags::NONE)
                    .await
                    .unwrap();
                io::flush(&node).await.unwrap();
                node.driver.close(&node).await;
            }
        })
        .unwrap();
        (be64(l2 + 8), be64(last))
    }

    #[test]
    fn a_partly_changed_table_is_written_in_part_to_a_plain_file_only() {
        let (entry, planted) = flush_after_planting("t.qcow2");
        assert_ne!(entry, 0, "the changed entry reached the file");
        assert_eq!(
            planted, 0xabab_abab_abab_abab,
            "only the changed bytes were written"
        );
        // blkdebug sees every request as QEMU makes it: the whole table
        let (entry, planted) = flush_after_planting("blkdebug::t.qcow2");
        assert_ne!(entry, 0, "the changed entry reached the file");
        assert_eq!(planted, 0, "the whole table was written");
    }

    #[test]
    fn overlaps_fall_back_to_the_walk() {
        let mut q = DiscardQueue::default();
        let mut list = Vec::new();
        for (o, l) in [(0, 1024), (4096, 512), (512, 1024), (2048, 2048)] {
            q.queue(o, l);
            walk_discard_list(&mut list, o, l);
        }
        assert_eq!(q.take(), list);
    }
}
