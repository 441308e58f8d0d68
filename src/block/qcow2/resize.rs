//! Resizing (QEMU's qcow2_co_truncate and its helpers qcow2_shrink_l1_table,
//! qcow2_shrink_reftable, qcow2_get_last_cluster, preallocate_co): the same steps in the same
//! order, so that the blkdebug events (`l1_grow_*`, `l1_shrink_write_table`,
//! `l1_shrink_free_l2_clusters`, ...), the freed clusters and the resulting image match.

use super::Qcow2;
use super::cache::{Cache, CacheKind};
use super::state::c_hex;
use super::state::{DiscardType, L1E_OFFSET_MASK, REFT_OFFSET_MASK, rc_get};
use crate::block::blkdebug::events::Event;
use crate::block::driver::{IoResult, ReqFlags};
use crate::block::io;
use crate::block::node::Node;
use crate::errno::strerror;

fn with_errno(msg: &str, e: i32) -> String {
    format!("{msg}: {}", strerror(e))
}

impl Qcow2 {
    pub(crate) async fn do_truncate(
        &self,
        node: &Node,
        offset: u64,
        prealloc: &str,
    ) -> Result<(), String> {
        if !["off", "metadata", "falloc", "full"].contains(&prealloc) {
            return Err(format!("Unsupported preallocation mode '{prealloc}'"));
        }
        if !offset.is_multiple_of(512) {
            return Err("The new size must be a multiple of 512".into());
        }
        self.lock.lock().await;
        let r = self.truncate_locked(node, offset, prealloc).await;
        self.lock.unlock();
        r
    }

    async fn truncate_locked(
        &self,
        node: &Node,
        offset: u64,
        prealloc: &str,
    ) -> Result<(), String> {
        let (version, nb_snapshots, cs, old_length, shift) = {
            let st = self.st.borrow();
            (
                st.hdr.version,
                st.hdr.nb_snapshots,
                st.cluster_size,
                st.size / 512 * 512,
                st.cluster_bits + st.l2_bits,
            )
        };
        if nb_snapshots != 0 && version < 3 {
            return Err("Can't resize a v2 image which has snapshots".into());
        }
        self.truncate_bitmaps_check(node).await?;
        let new_l1_size = offset.div_ceil(1u64 << shift);
        // bdrv_co_truncate: growing over a longer backing file must read zeros afterwards
        let mut zero_write = false;
        if offset > old_length
            && let Some(b) = node.child("backing")
        {
            let blen = b
                .getlength()
                .map_err(|e| with_errno("Could not get backing file length", e))?;
            zero_write = blen > old_length;
        }
        if offset < old_length {
            if prealloc != "off" {
                return Err("Preallocation can't be used for shrinking an image".into());
            }
            let start = offset.div_ceil(cs) * cs;
            if start < old_length {
                self.cluster_discard(node, start, old_length - start, DiscardType::Always, true)
                    .await
                    .map_err(|e| with_errno("Failed to discard cropped clusters", e))?;
            }
            self.shrink_l1_table(node, new_l1_size)
                .await
                .map_err(|e| with_errno("Failed to reduce the number of L2 tables", e))?;
            self.shrink_reftable(node)
                .await
                .map_err(|e| with_errno("Failed to discard unused refblocks", e))?;
            let old_file_size = node
                .file()
                .getlength()
                .map_err(|e| with_errno("Failed to inquire current file length", e))?;
            let last = self
                .get_last_cluster(node, old_file_size)
                .await
                .map_err(|e| with_errno("Failed to find the last cluster", e))?;
            if (last + 1) * cs < old_file_size
                && let Err(msg) = io::truncate(node.file(), (last + 1) * cs).await
            {
                self.console.report(&format!(
                    "warning: Failed to truncate the tail of the image: {msg}"
                ));
            }
        } else {
            self.grow_l1_table(node, new_l1_size, true)
                .await
                .map_err(|e| with_errno("Failed to grow the L1 table", e))?;
        }
        let (data_file, raw) = {
            let st = self.st.borrow();
            let raw = st.autoclear & super::header::AUTOCLEAR_DATA_FILE_RAW != 0;
            (st.data_file, raw)
        };
        // a raw data file needs the 1:1 mapping of its new area in the L2 tables too
        let prealloc = if offset >= old_length && raw && prealloc == "off" {
            "metadata"
        } else {
            prealloc
        };
        match prealloc {
            "off" if data_file => {
                io::truncate(self.data_child(node), offset).await?;
            }
            "metadata" => self.preallocate(node, old_length, offset, "off").await?,
            // with a data file only the metadata is preallocated, the data file is grown
            "falloc" | "full" if data_file => {
                self.preallocate(node, old_length, offset, prealloc).await?
            }
            "falloc" | "full" => {
                // the new area reads as zeros already when the file could grow with zeros:
                // the subclusters are then marked allocated and no zeroing follows
                let zeroed = self
                    .preallocate_data(node, old_length, offset, prealloc, zero_write)
                    .await?;
                zero_write &= !zeroed;
            }
            _ => {}
        }
        if zero_write && offset > old_length {
            let scs = self.st.borrow().subcluster_size;
            let zero_start = old_length.div_ceil(scs) * scs;
            if offset > zero_start {
                self.subcluster_zeroize(node, zero_start, offset - zero_start, ReqFlags::NONE)
                    .await
                    .map_err(|e| with_errno("Failed to zero out new clusters", e))?;
            }
            if zero_start > old_length {
                let len = zero_start.min(offset) - old_length;
                let buf = vec![0u8; len as usize];
                self.lock.unlock();
                let r = self.do_pwritev(node, old_length, &buf).await;
                self.lock.lock().await;
                r.map_err(|e| with_errno("Failed to zero out the new area", e))?;
            }
        }
        if prealloc != "off" {
            self.write_caches(node)
                .await
                .map_err(|e| with_errno("Failed to flush the preallocated area to disk", e))?;
        }
        // the new length is in effect even if the header write below fails (QEMU sets
        // total_sectors first)
        {
            let mut st = self.st.borrow_mut();
            st.size = offset;
            st.hdr.size = offset;
        }
        node.total_sectors.set(offset / 512);
        self.pwrite_sync(node, 24, &offset.to_be_bytes())
            .await
            .map_err(|e| with_errno("Failed to update the image size", e))?;
        self.st.borrow_mut().l1_vm_state_index = new_l1_size;
        self.recreate_caches(node).await
    }

    /// qcow2_update_options after a resize: the caches are flushed and replaced by empty
    /// ones sized for the new disk size.
    async fn recreate_caches(&self, node: &Node) -> Result<(), String> {
        self.cache_flush(node, CacheKind::L2)
            .await
            .map_err(|e| with_errno("Failed to flush the L2 table cache", e))?;
        self.cache_flush(node, CacheKind::Refcount)
            .await
            .map_err(|e| with_errno("Failed to flush the refcount block cache", e))?;
        let mut st = self.st.borrow_mut();
        let facts = super::runtime::ImageFacts {
            version: st.hdr.version,
            cluster_size: st.cluster_size,
            disk_size: st.size / 512 * 512,
            lazy_refcounts_bit: st.compat & super::header::COMPAT_LAZY_REFCOUNTS != 0,
            l2_entry_bytes: st.l2_entry_size(),
        };
        let sizes = super::runtime::cache_sizes(&st.runtime.cache, &facts)?;
        st.runtime.sizes = sizes;
        st.l2_slice_size = sizes.l2_entry_size / st.l2_entry_size();
        st.caches = [
            Cache::new(sizes.l2_tables as usize, sizes.l2_entry_size as usize),
            Cache::new(sizes.refcount_tables as usize, st.cluster_size as usize),
        ];
        Ok(())
    }

    /// QEMU's qcow2_shrink_l1_table: zeroes the dropped entries on disk, then frees their
    /// L2 tables. The L1 table keeps its size.
    async fn shrink_l1_table(&self, node: &Node, new_size: u64) -> IoResult {
        let (l1_offset, l1_size) = {
            let st = self.st.borrow();
            (st.l1_offset, st.l1.len() as u64)
        };
        if new_size >= l1_size {
            return Ok(());
        }
        node.file().debug_event(Event::L1ShrinkWriteTable).await;
        let r: IoResult = async {
            io::pwrite_zeroes(
                node.file(),
                l1_offset + new_size * 8,
                (l1_size - new_size) * 8,
                ReqFlags::NONE,
            )
            .await?;
            io::flush(node.file()).await
        }
        .await;
        if let Err(e) = r {
            let mut st = self.st.borrow_mut();
            for i in new_size as usize..st.l1.len() {
                st.l1.set(i, 0);
            }
            return Err(e);
        }
        node.file().debug_event(Event::L1ShrinkFreeL2Clusters).await;
        let cs = self.st.borrow().cluster_size;
        for i in (new_size..l1_size).rev() {
            let l2 = self.st.borrow().l1[i as usize] & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            self.free_clusters(node, l2, cs, DiscardType::Always).await;
            self.st.borrow_mut().l1.set(i as usize, 0);
        }
        Ok(())
    }

    /// QEMU's qcow2_shrink_reftable: refblocks that describe nothing (but maybe themselves)
    /// are dropped from the reftable and freed.
    async fn shrink_reftable(&self, node: &Node) -> IoResult {
        let (table, cs, order, rbs) = {
            let st = self.st.borrow();
            (
                st.reftable.to_vec(),
                st.cluster_size,
                st.refcount_order,
                st.refcount_block_size(),
            )
        };
        let mut tmp = vec![0u64; table.len()];
        for (i, &e) in table.iter().enumerate() {
            let off = e & REFT_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            let slot = self.cache_get(node, CacheKind::Refcount, off, true).await?;
            let unused = {
                let st = self.st.borrow();
                let t = st.caches[CacheKind::Refcount.idx()].table(slot);
                let own = (off / cs) / rbs == i as u64;
                let own_idx = ((off / cs) & (rbs - 1)) as usize;
                (0..rbs as usize).all(|j| (own && j == own_idx) || rc_get(t, order, j) == 0)
            };
            self.cache_put(CacheKind::Refcount, slot);
            tmp[i] = if unused { 0 } else { e };
        }
        let raw = super::state::be64_bytes(&tmp);
        let table_offset = self.st.borrow().reftable_offset;
        let mut ret = self.pwrite_sync(node, table_offset, &raw).await;
        for i in 0..table.len() {
            if table[i] != 0 && tmp[i] == 0 {
                if ret.is_ok() {
                    ret = self
                        .discard_refcount_block(node, table[i] & REFT_OFFSET_MASK)
                        .await;
                }
                self.st.borrow_mut().reftable.set(i, 0);
            }
        }
        if !self.st.borrow().cache_discards {
            self.process_discards(node, ret.is_ok()).await;
        }
        ret
    }

    /// QEMU's qcow2_discard_refcount_block: the freed block's own refcount goes to 0.
    async fn discard_refcount_block(&self, node: &Node, block: u64) -> IoResult {
        let (ci, rbs, order, covering) = {
            let st = self.st.borrow();
            let ci = block >> st.cluster_bits;
            let ti = (ci >> st.refcount_block_bits) as usize;
            let covering = st.reftable.get(ti).map_or(0, |e| e & REFT_OFFSET_MASK);
            (ci, st.refcount_block_size(), st.refcount_order, covering)
        };
        if covering == 0 {
            self.signal_corruption(
                node,
                true,
                &format!(
                    "Refblock at {} is not covered by the refcount structures",
                    c_hex(block)
                ),
            )
            .await;
            return Err(libc::EIO);
        }
        if block == 0 {
            // a refcount table entry with only reserved bits set: its refblock "offset" is 0
            self.qemu_aborts(
                "the image is corrupt: a refcount block at offset 0 is to be discarded",
                "qcow2_discard_refcount_block",
            );
            return Err(libc::EIO);
        }
        let idx = (ci & (rbs - 1)) as usize;
        let slot = self
            .cache_get(node, CacheKind::Refcount, covering, true)
            .await?;
        let rc = rc_get(self.st.borrow().caches[1].table(slot), order, idx);
        if rc != 1 {
            self.cache_put(CacheKind::Refcount, slot);
            let ti = ci >> self.st.borrow().refcount_block_bits;
            self.signal_corruption(
                node,
                true,
                &format!(
                    "Invalid refcount: refblock offset {}, reftable index {ti}, block offset {}, refcount {}", c_hex(covering), c_hex(block), c_hex(rc)
                ),
            )
            .await;
            return Err(libc::EINVAL);
        }
        let mut st = self.st.borrow_mut();
        {
            let c = st.cache(CacheKind::Refcount);
            c.set_refcount(slot, order, idx, 0);
            c.mark_dirty(slot);
            c.put(slot);
        }
        if ci < st.free_cluster_index {
            st.free_cluster_index = ci;
        }
        if let Some(i) = st.caches[1].find(block) {
            st.cache(CacheKind::Refcount).discard(i);
        }
        let len = st.cluster_size;
        st.discards.queue(block, len);
        Ok(())
    }

    /// QEMU's qcow2_get_last_cluster: the highest cluster below `size` with a refcount.
    async fn get_last_cluster(&self, node: &Node, size: u64) -> IoResult<u64> {
        let mut i = self.st.borrow().size_to_clusters(size);
        while i > 0 {
            // Clusters without a refcount block have refcount 0 and cost QEMU no cache lookup:
            // skipping them at once answers the same, in time bounded by the refcount
            // structures rather than by a file a corrupt offset made terabytes long.
            if !self.has_refcount_block(i - 1) {
                // past the table's end at once (2^44 clusters of a far-grown file would still
                // be 2^31 blocks), else to the start of the missing block
                let st = self.st.borrow();
                let bits = st.refcount_block_bits;
                let table_end = (st.reftable.len() as u64) << bits;
                i = if i > table_end {
                    table_end
                } else {
                    ((i - 1) >> bits) << bits
                };
                continue;
            }
            i -= 1;
            match self.get_refcount(node, i).await {
                Ok(0) => {}
                Ok(_) => return Ok(i),
                Err(e) => {
                    self.console.err(&format!(
                        "Can't get refcount for cluster {i}: {}\n",
                        strerror(e)
                    ));
                    return Err(e);
                }
            }
        }
        self.signal_corruption(node, true, "There are no references in the refcount table.")
            .await;
        Err(libc::EIO)
    }

    /// QEMU's preallocate_co for `metadata`: L2 entries for every new cluster, data clusters
    /// allocated but not written; the file is extended to the last allocated cluster.
    async fn preallocate(
        &self,
        node: &Node,
        mut offset: u64,
        new_length: u64,
        mode: &str,
    ) -> Result<(), String> {
        let cs = self.st.borrow().cluster_size;
        let mut bytes = new_length - offset;
        let mut host_offset = 0;
        let mut cur = 0;
        let mut metas = Vec::new();
        let r: Result<(), String> = async {
            while bytes > 0 {
                cur = bytes.min((i32::MAX as u64) / cs * cs);
                let (h, n) = self
                    .alloc_host_offset(node, offset, cur, &mut metas)
                    .await
                    .map_err(|e| with_errno("Allocating clusters failed", e))?;
                host_offset = h;
                cur = n;
                for m in metas.iter_mut() {
                    m.prealloc = true;
                }
                self.handle_l2meta(node, &mut metas, true, &[])
                    .await
                    .map_err(|e| with_errno("Mapping clusters failed", e))?;
                bytes -= cur;
                offset += cur;
            }
            let data = self.data_child(node);
            let file_length = data
                .getlength()
                .map_err(|e| with_errno("Could not get file size", e))?;
            if host_offset + cur > file_length {
                io::truncate_prealloc(data, host_offset + cur, mode).await?;
            }
            Ok(())
        }
        .await;
        let _ = self.handle_l2meta(node, &mut metas, false, &[]).await;
        r
    }

    /// The `falloc`/`full` branch of qcow2_co_truncate: refcount structures for the new
    /// area first, then one contiguous data area at the end of the file, then its L2 entries.
    async fn preallocate_data(
        &self,
        node: &Node,
        old_length: u64,
        offset: u64,
        prealloc: &str,
        zero_write: bool,
    ) -> Result<bool, String> {
        let (cs, slice_size) = {
            let st = self.st.borrow();
            (st.cluster_size, st.l2_slice_size)
        };
        let file_len = node
            .file()
            .getlength()
            .map_err(|e| with_errno("Failed to inquire current file length", e))?;
        let old_file_size = match self.get_last_cluster(node, file_len).await {
            Ok(last) => (last + 1) * cs,
            Err(_) => file_len.div_ceil(cs) * cs,
        };
        let mut nb_new = (offset.div_ceil(cs) * cs - old_length / cs * cs) / cs;
        let entry_size = if self.st.borrow().extended_l2 { 16 } else { 8 };
        let nb_l2 = nb_new.div_ceil(cs / entry_size) + 1;
        let start = self
            .refcount_area(node, old_file_size, nb_new + nb_l2, true, 0, 0)
            .await
            .map_err(|e| with_errno("Failed to resize refcount structures", e))?;
        self.alloc_clusters_at(node, start, nb_new)
            .await
            .map_err(|e| with_errno("Failed to allocate data clusters", e))?;
        let new_file_size = start + nb_new * cs;
        if let Err(msg) = io::truncate_prealloc(node.file(), new_file_size, prealloc).await {
            self.free_clusters(node, start, nb_new * cs, DiscardType::Other)
                .await;
            return Err(format!("Failed to resize underlying file: {msg}"));
        }
        let mut host = start;
        let mut guest = old_length;
        while nb_new > 0 {
            let slice_index = (guest / cs) & (slice_size - 1);
            let n = nb_new.min(slice_size - slice_index);
            let cow_start_len = guest & (cs - 1);
            guest &= !(cs - 1);
            let m = super::state::L2Meta {
                id: u64::MAX,
                offset: guest,
                alloc_offset: host,
                nb_clusters: n,
                keep_old: false,
                cow_start: (0, cow_start_len),
                cow_end: (n * cs, 0),
                skip_cow: false,
                prealloc: !zero_write,
                merged: false,
            };
            if let Err(e) = self.link_l2(node, &m, None).await {
                self.free_clusters(node, host, nb_new * cs, DiscardType::Other)
                    .await;
                return Err(with_errno("Failed to update L2 tables", e));
            }
            guest += n * cs;
            host += n * cs;
            nb_new -= n;
        }
        Ok(zero_write)
    }
}
