//! Cache I/O and refcount handling (QEMU's qcow2-cache.c I/O half and qcow2-refcount.c):
//! entry writes with their dependencies, refcount updates that allocate refcount blocks and
//! grow the refcount table, and the cluster allocators. Each function raises the blkdebug
//! events of its QEMU counterpart at the same point.

use super::Qcow2;
use super::cache::{CacheKind, Lookup};
use super::state::c_hex;
use super::state::{DiscardType, REFT_OFFSET_MASK, rc_get, rc_set, refcount_metadata_blocks};
use crate::block::blkdebug::events::Event;
use crate::block::driver::{BoxFut, IoResult, ReqFlags};
use crate::block::io;
use crate::block::node::Node;

/// A failed refcount-block lookup may still hold a cache reference the caller must drop.
pub struct RefblockErr {
    pub errno: i32,
    pub slot: Option<usize>,
}

impl Qcow2 {
    /// Writes one dirty cache entry (QEMU's qcow2_cache_entry_flush).
    fn cache_entry_flush<'a>(
        &'a self,
        node: &'a Node,
        c: CacheKind,
        i: usize,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let (dirty, offset, depends, dof) = {
                let mut st = self.st.borrow_mut();
                let cache = st.cache(c);
                let (dirty, offset) = cache.entry(i).map_or((false, 0), |e| (e.dirty, e.offset));
                (dirty, offset, cache.depends, cache.depends_on_flush)
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
            let data = self.st.borrow_mut().cache(c).table(i).to_vec();
            io::pwritev(node.file(), offset, &data, ReqFlags::NONE).await?;
            self.st.borrow_mut().cache(c).entry_mut(i).dirty = false;
            Ok(())
        })
    }

    /// Writes every dirty entry in slot order; the first error wins unless it is ENOSPC.
    pub fn cache_write<'a>(&'a self, node: &'a Node, c: CacheKind) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let slots = self.st.borrow().caches[c.idx()].used_slots();
            let mut result = Ok(());
            for i in slots {
                if let Err(e) = self.cache_entry_flush(node, c, i).await
                    && result != Err(libc::ENOSPC)
                {
                    result = Err(e);
                }
            }
            result
        })
    }

    /// Cache write plus a flush of the file (QEMU's qcow2_cache_flush).
    pub fn cache_flush<'a>(&'a self, node: &'a Node, c: CacheKind) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            self.cache_write(node, c).await?;
            io::flush(node.file()).await
        })
    }

    async fn flush_dependency(&self, node: &Node, c: CacheKind) -> IoResult {
        let dep = self.st.borrow().caches[c.idx()].depends;
        if let Some(d) = dep {
            self.cache_flush(node, d).await?;
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
        let lookup = self.st.borrow().caches[c.idx()].lookup(offset);
        let i = match lookup {
            Some(Lookup::Hit(i)) => i,
            Some(Lookup::Miss(i)) => {
                self.cache_entry_flush(node, c, i).await?;
                self.st.borrow_mut().cache(c).set_offset(i, 0);
                let mut data = vec![0u8; table_size];
                if read {
                    if c == CacheKind::L2 {
                        node.file().debug_event(Event::L2Load).await;
                    }
                    io::preadv(node.file(), offset, &mut data).await?;
                } else {
                    let mut st = self.st.borrow_mut();
                    let old = st.cache(c).entry_mut(i);
                    if old.data.len() == table_size {
                        // an empty table's old contents are overwritten by the caller anyway
                        data = std::mem::take(&mut old.data);
                    }
                }
                let mut st = self.st.borrow_mut();
                let cache = st.cache(c);
                cache.entry_mut(i).data = data;
                cache.set_offset(i, offset);
                i
            }
            None => return Err(libc::EIO),
        };
        self.st.borrow_mut().cache(c).entry_mut(i).refs += 1;
        Ok(i)
    }

    pub fn cache_put(&self, c: CacheKind, i: usize) {
        self.st.borrow_mut().cache(c).put(i);
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
    fn alloc_refcount_block<'a>(
        &'a self,
        node: &'a Node,
        cluster_index: u64,
    ) -> BoxFut<'a, Result<usize, RefblockErr>> {
        Box::pin(async move {
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
                self.update_refcount(node, new_block, cs, 1, false, DiscardType::Never)
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
                st.reftable[ti as usize] = new_block;
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
                    rc_set(c.table_mut(slot), order, j as usize, 1);
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
        let bytes: Vec<u8> = new_table.iter().flat_map(|e| e.to_be_bytes()).collect();
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
            st.reftable = new_table;
            st.reftable_offset = table_offset;
            st.hdr.refcount_table_offset = table_offset;
            st.hdr.refcount_table_clusters = table_clusters as u32;
            st.max_reftable_index = max_used_index(&st.reftable);
            old
        };
        self.free_clusters(node, old_offset, old_size * 8, DiscardType::Other)
            .await;
        Ok(end_offset)
    }

    /// Changes the refcounts of every cluster in a range (QEMU's update_refcount), undoing
    /// the part already done when it fails.
    pub fn update_refcount<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        length: u64,
        addend: u64,
        decrease: bool,
        dtype: DiscardType,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
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
                            rc_set(c.table_mut(s), order, idx, v);
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
                        update_refcount_discard(&mut st.discards, cluster_offset, cs);
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
            if ret.is_err() {
                let _ = self
                    .update_refcount(
                        node,
                        offset,
                        cluster_offset - offset,
                        addend,
                        !decrease,
                        DiscardType::Never,
                    )
                    .await;
            }
            ret
        })
    }

    /// Passes queued discards of freed clusters to the file (QEMU's qcow2_process_discards).
    pub async fn process_discards(&self, node: &Node, ok: bool) {
        let list = std::mem::take(&mut self.st.borrow_mut().discards);
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

/// Queues a discard, merging it with an adjacent queued region.
pub(crate) fn update_refcount_discard(list: &mut Vec<(u64, u64)>, offset: u64, length: u64) {
    let mut found = None;
    for (i, d) in list.iter_mut().enumerate() {
        let new_start = offset.min(d.0);
        let new_end = (offset + length).max(d.0 + d.1);
        if new_end - new_start <= length + d.1 {
            *d = (new_start, new_end - new_start);
            found = Some(i);
            break;
        }
    }
    let di = match found {
        Some(i) => i,
        None => {
            list.push((offset, length));
            list.len() - 1
        }
    };
    let mut i = 0;
    while i < list.len() {
        let d = list[di.min(list.len() - 1)];
        let p = list[i];
        if i == di || p.0 > d.0 + d.1 || d.0 > p.0 + p.1 {
            i += 1;
            continue;
        }
        let merged = (d.0.min(p.0), d.1 + p.1);
        list[di] = merged;
        list.remove(i);
        // indexes after removal shift; restart the scan (lists are tiny)
        return;
    }
}
