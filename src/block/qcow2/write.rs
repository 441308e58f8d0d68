//! Guest writes (QEMU's qcow2_co_pwritev_part and its task), zero writes, discards and
//! compressed writes, and the zero-fill shortcut for COW regions that read as zero anyway.

use super::Qcow2;
use super::aio_task::TaskPool;
use super::cache::CacheKind;
use super::state::{
    BITMAP_ALL_ZEROES, ClusterType, DiscardType, L2E_OFFSET_MASK, L2Meta, OFLAG_COMPRESSED,
    OFLAG_ZERO, SubclusterType, sub_alloc_range, sub_zero_range,
};
use crate::block::blkdebug::events::Event;
use crate::block::driver::{IoResult, ReqFlags, status};
use crate::block::io;
use crate::block::node::Node;
use std::rc::Rc;

impl Qcow2 {
    /// QEMU's qcow2_co_pwritev_part: each chunk the allocator maps (at most one L2 slice) is
    /// written by its own task; when the request needs more than one chunk the tasks run in
    /// parallel (an AioTaskPool of up to 8), started in order while the next chunk is being
    /// mapped, and no new chunk starts once a task has failed.
    pub async fn do_pwritev(&self, node: &Node, mut offset: u64, buf: &[u8]) -> IoResult {
        self.check_alive()?;
        let mut pool: Option<Rc<TaskPool>> = None;
        let mut pos = 0usize;
        let mut ret = Ok(());
        while pos < buf.len() && pool.as_ref().map_or(Ok(()), |p| p.status()).is_ok() {
            let want = ((buf.len() - pos) as u64).min(i32::MAX as u64);
            let mut metas = Vec::new();
            self.lock.lock().await;
            let mapped = match self.alloc_host_offset(node, offset, want, &mut metas).await {
                Ok((host, cur)) => self
                    .pre_write_data_overlap_check(node, host, cur)
                    .await
                    .map(|()| (host, cur)),
                Err(e) => Err(e),
            };
            let (host, cur) = match mapped {
                Ok(v) => v,
                Err(e) => {
                    let _ = self.handle_l2meta(node, &mut metas, false, &[]).await;
                    self.lock.unlock();
                    ret = Err(e);
                    break;
                }
            };
            self.lock.unlock();
            let data = &buf[pos..pos + cur as usize];
            if pool.is_none() && cur as usize != buf.len() - pos {
                pool = Some(TaskPool::new());
            }
            match &pool {
                // a single chunk runs in the request's own coroutine
                None => self.pwritev_task(node, host, offset, data, metas).await?,
                Some(pool) => {
                    let (node, data) = (node.rc(), data.to_vec());
                    pool.start(async move {
                        let q: &Qcow2 = node.driver_as().expect("a qcow2 node");
                        q.pwritev_task(&node, host, offset, &data, metas).await
                    })
                    .await;
                }
            }
            pos += cur as usize;
            offset += cur;
        }
        if ret.is_ok() {
            // the (empty) l2meta hand-back under the lock, as QEMU's out_locked path
            self.lock.lock().await;
            self.lock.unlock();
        }
        match pool {
            Some(pool) => {
                pool.wait_all().await;
                ret.and(pool.status())
            }
            None => ret,
        }
    }

    /// One mapped chunk of a write: zero-fill or COW, the data, then the L2 link.
    async fn pwritev_task(
        &self,
        node: &Node,
        host: u64,
        offset: u64,
        data: &[u8],
        mut metas: Vec<L2Meta>,
    ) -> IoResult {
        let mut r = self.handle_alloc_space(node, &mut metas).await;
        if r.is_ok() && !merge_cow(offset, data.len() as u64, &mut metas) {
            node.file().debug_event(Event::WriteAio).await;
            r = io::pwritev(self.data_child(node), host, data, ReqFlags::NONE).await;
        }
        self.lock.lock().await;
        if r.is_ok() {
            r = self.handle_l2meta(node, &mut metas, true, data).await;
        }
        let _ = self.handle_l2meta(node, &mut metas, false, data).await;
        self.lock.unlock();
        r
    }

    /// Zero-fills whole new clusters whose COW regions read as zero (QEMU's
    /// handle_alloc_space), so no COW is needed.
    async fn handle_alloc_space(&self, node: &Node, metas: &mut [L2Meta]) -> IoResult {
        if !self
            .data_child(node)
            .supported_zero_flags
            .has(ReqFlags::NO_FALLBACK)
        {
            return Ok(());
        }
        for i in (0..metas.len()).rev() {
            let m = metas[i].clone();
            if m.cow_start.1 == 0 && m.cow_end.1 == 0 {
                continue;
            }
            if !self
                .is_zero_fast(node, m.offset + m.cow_start.0, m.cow_start.1)
                .await
                || !self
                    .is_zero_fast(node, m.offset + m.cow_end.0, m.cow_end.1)
                    .await
            {
                continue;
            }
            let start = m.alloc_offset + m.cow_start.0;
            let nb = m.cow_end.0 + m.cow_end.1 - m.cow_start.0;
            self.pre_write_data_overlap_check(node, start, nb).await?;
            node.file().debug_event(Event::ClusterAllocSpace).await;
            match io::pwrite_zeroes(self.data_child(node), start, nb, ReqFlags::NO_FALLBACK).await {
                Ok(()) => metas[i].skip_cow = true,
                Err(libc::ENOTSUP) | Err(libc::EAGAIN) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads as zero by block status alone (QEMU's bdrv_co_is_zero_fast, used by
    /// is_zero_cow): false negatives are fine, it only picks the cheaper path.
    async fn is_zero_fast(&self, node: &Node, offset: u64, bytes: u64) -> bool {
        if bytes == 0 {
            return true;
        }
        match self.block_status_above(node, false, offset, bytes).await {
            Ok((flags, pnum)) => flags & status::ZERO != 0 && pnum == bytes,
            Err(_) => false,
        }
    }

    /// Block status through the backing chain (QEMU's bdrv_co_common_block_status_above
    /// with no base): (flags, bytes).
    pub async fn block_status_above(
        &self,
        node: &Node,
        want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> IoResult<(u32, u64)> {
        let (st, _) = io::block_status_above(node, None, want_zero, offset, bytes).await?;
        Ok((st.flags, st.pnum))
    }

    /// QEMU's qcow2_co_block_status: (flags, bytes, host offset).
    pub async fn driver_status(
        &self,
        node: &Node,
        offset: u64,
        bytes: u64,
    ) -> IoResult<(u32, u64, u64)> {
        self.check_alive()?;
        self.lock.lock().await;
        if self.metadata_prealloc.get().is_none() {
            let found = self.detect_metadata_preallocation(node).await;
            self.metadata_prealloc.set(Some(found == Ok(true)));
        }
        let r = self
            .get_host_offset(node, offset, bytes.min(i32::MAX as u64))
            .await;
        self.lock.unlock();
        let (n, host, ty) = r?;
        let mut flags = 0;
        if ty.has_host_offset() {
            flags |= status::OFFSET_VALID;
        }
        if ty.reads_zero() {
            flags |= status::ZERO;
        } else if !ty.is_unallocated() {
            flags |= status::DATA;
        }
        let data_at = status::DATA | status::OFFSET_VALID;
        if self.metadata_prealloc.get() == Some(true) && flags & data_at == data_at {
            flags |= status::RECURSE;
        }
        if ty == SubclusterType::Compressed {
            flags |= status::COMPRESSED;
        }
        Ok((flags, n, host))
    }

    /// Whether the image looks metadata-preallocated (QEMU's
    /// qcow2_detect_metadata_preallocation): more clusters in use than the file has blocks
    /// for. Block status then asks the file whether data clusters read as zero.
    async fn detect_metadata_preallocation(&self, node: &Node) -> IoResult<bool> {
        let file = node.file();
        let file_length = io::getlength(file)?;
        let real_clusters = file.driver.allocated_file_size(file)? / self.st.borrow().cluster_size;
        let threshold = (real_clusters * 10 / 9).max(real_clusters + 2);
        let end_cluster = self.st.borrow().size_to_clusters(file_length);
        let mut count = 0;
        let mut i = 0;
        while i < end_cluster && count < threshold {
            // QEMU asks every cluster up to the file's end, which a far L2 entry written on
            // tmpfs (a sparse file 2^56 bytes long) makes a loop of days; clusters no refcount
            // block covers count 0, so ours steps over them, and stops past the table's end.
            if !self.has_refcount_block(i) {
                let st = self.st.borrow();
                let next_block = (i >> st.refcount_block_bits) + 1;
                if next_block >= st.reftable.len() as u64 {
                    break;
                }
                i = next_block << st.refcount_block_bits;
                continue;
            }
            if self.get_refcount(node, i).await? != 0 {
                count += 1;
            }
            i += 1;
        }
        Ok(count >= threshold)
    }

    /// Whether a range reads as zero through the whole chain (QEMU's is_zero in qcow2.c).
    async fn is_zero(&self, node: &Node, mut offset: u64, mut bytes: u64) -> bool {
        let total = self.st.borrow().size;
        if offset + bytes > total {
            bytes = total.saturating_sub(offset);
        }
        if bytes == 0 {
            return true;
        }
        loop {
            match self.block_status_above(node, true, offset, bytes).await {
                Ok((flags, nr)) => {
                    offset += nr;
                    bytes -= nr;
                    if flags & status::ZERO == 0 {
                        return false;
                    }
                    if nr == 0 || bytes == 0 {
                        return bytes == 0;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// QEMU's qcow2_co_pwrite_zeroes: ENOTSUP makes the generic layer write zero buffers.
    pub async fn do_pwrite_zeroes(
        &self,
        node: &Node,
        mut offset: u64,
        mut bytes: u64,
        flags: ReqFlags,
    ) -> IoResult {
        self.check_alive()?;
        let (scs, total) = {
            let st = self.st.borrow();
            (st.subcluster_size, st.size)
        };
        let head = offset & (scs - 1);
        let mut tail = (offset + bytes).div_ceil(scs) * scs - (offset + bytes);
        if offset + bytes == total {
            tail = 0;
        }
        if head != 0 || tail != 0 {
            if !(self.is_zero(node, offset - head, head).await
                && self.is_zero(node, offset + bytes, tail).await)
            {
                return Err(libc::ENOTSUP);
            }
            self.lock.lock().await;
            offset -= head;
            bytes = scs;
            let r = self.get_host_offset(node, offset, scs).await;
            match r {
                Ok((_, _, ty)) if ty.is_unallocated() || ty.reads_zero() => {}
                Ok(_) => {
                    self.lock.unlock();
                    return Err(libc::ENOTSUP);
                }
                Err(e) => {
                    self.lock.unlock();
                    return Err(e);
                }
            }
        } else {
            self.lock.lock().await;
        }
        let r = self.subcluster_zeroize(node, offset, bytes, flags).await;
        self.lock.unlock();
        r
    }

    /// QEMU's qcow2_subcluster_zeroize: whole clusters get zero entries (or all-zero
    /// bitmaps), a subcluster-aligned head and tail get their zero bits.
    pub(crate) async fn subcluster_zeroize(
        &self,
        node: &Node,
        mut offset: u64,
        bytes: u64,
        flags: ReqFlags,
    ) -> IoResult {
        let (version, cs, total, raw) = {
            let st = self.st.borrow();
            let raw = st.autoclear & super::header::AUTOCLEAR_DATA_FILE_RAW != 0;
            (st.hdr.version, st.cluster_size, st.size, raw)
        };
        if raw {
            // a raw data file must read the same without the metadata
            io::pwrite_zeroes(self.data_child(node), offset, bytes, flags).await?;
        }
        if version < 3 {
            if node.child("backing").is_none() {
                return self
                    .cluster_discard(node, offset, bytes, DiscardType::Request, false)
                    .await;
            }
            return Err(libc::ENOTSUP);
        }
        let mut end = offset + bytes;
        let head = end.min(offset.div_ceil(cs) * cs) - offset;
        offset += head;
        let tail = if end >= total {
            0
        } else {
            end - offset.max(end & !(cs - 1))
        };
        end -= tail;
        self.st.borrow_mut().cache_discards = true;
        let r: IoResult = async {
            if head != 0 {
                let n = self.st.borrow().size_to_subclusters(head);
                self.zero_l2_subclusters(node, offset - head, n).await?;
            }
            let mut nb = (end - offset).div_ceil(cs);
            while nb > 0 {
                let n = self.zero_in_l2_slice(node, offset, nb, flags).await?;
                nb -= n;
                offset += n * cs;
            }
            if tail != 0 {
                let n = self.st.borrow().size_to_subclusters(tail);
                self.zero_l2_subclusters(node, end, n).await?;
            }
            Ok(())
        }
        .await;
        self.st.borrow_mut().cache_discards = false;
        self.process_discards(node, r.is_ok()).await;
        r
    }

    /// QEMU's zero_l2_subclusters: sets the zero bits of part of one cluster; a compressed
    /// cluster cannot be partly zeroed (ENOTSUP: the caller writes zeros instead).
    async fn zero_l2_subclusters(&self, node: &Node, offset: u64, nb: u64) -> IoResult {
        let (slot, l2_index) = self.get_cluster_table(node, offset).await?;
        let r = {
            let mut st = self.st.borrow_mut();
            let entry = st.l2_entry(slot, l2_index);
            if st.cluster_type(entry) == ClusterType::Compressed {
                Err(libc::ENOTSUP)
            } else {
                let sc = st.sc_index(offset);
                let end = sc + nb as u32;
                let old = st.l2_bitmap(slot, l2_index);
                let new = (old | sub_zero_range(sc, end)) & !sub_alloc_range(sc, end);
                if new != old {
                    st.set_l2_bitmap(slot, l2_index, new);
                    st.cache(CacheKind::L2).mark_dirty(slot);
                }
                Ok(())
            }
        };
        self.cache_put(CacheKind::L2, slot);
        r
    }

    /// Applies `per_slice` to `nb` clusters from `offset`, one L2 slice at a time (it returns
    /// how many clusters it handled), with the discards it queues sent in one batch at the end,
    /// as QEMU's cluster zeroize and discard loops do. The first error stops the walk.
    async fn over_l2_slices(
        &self,
        node: &Node,
        mut offset: u64,
        mut nb: u64,
        mut per_slice: impl AsyncFnMut(u64, u64) -> IoResult<u64>,
    ) -> IoResult {
        let cs = self.st.borrow().cluster_size;
        self.st.borrow_mut().cache_discards = true;
        let mut ret = Ok(());
        while nb > 0 {
            match per_slice(offset, nb).await {
                Ok(n) => {
                    nb -= n;
                    offset += n * cs;
                }
                Err(e) => {
                    ret = Err(e);
                    break;
                }
            }
        }
        self.st.borrow_mut().cache_discards = false;
        self.process_discards(node, ret.is_ok()).await;
        ret
    }

    async fn zero_in_l2_slice(
        &self,
        node: &Node,
        offset: u64,
        nb: u64,
        flags: ReqFlags,
    ) -> IoResult<u64> {
        let (slot, l2_index) = self.get_cluster_table(node, offset).await?;
        let nb = nb.min(self.st.borrow().l2_slice_size - l2_index as u64);
        for i in 0..nb as usize {
            let (old, ty, unmap, keep_ref, changed) = {
                let mut st = self.st.borrow_mut();
                let old = st.l2_entry(slot, l2_index + i);
                let old_bitmap = st.l2_bitmap(slot, l2_index + i);
                let ty = st.cluster_type(old);
                let unmap = ty == ClusterType::Compressed
                    || (flags.has(ReqFlags::MAY_UNMAP) && ty.is_allocated());
                let keep_ref = st.discard_no_unref && ty != ClusterType::Compressed;
                let mut new = old;
                if unmap && !keep_ref {
                    new = 0;
                }
                let mut new_bitmap = old_bitmap;
                if st.extended_l2 {
                    new_bitmap = BITMAP_ALL_ZEROES;
                } else {
                    new |= OFLAG_ZERO;
                }
                let changed = old != new || old_bitmap != new_bitmap;
                if changed {
                    st.cache(CacheKind::L2).mark_dirty(slot);
                    st.set_l2_entry(slot, l2_index + i, new);
                    if st.extended_l2 {
                        st.set_l2_bitmap(slot, l2_index + i, new_bitmap);
                    }
                }
                (old, ty, unmap, keep_ref, changed)
            };
            if !changed || !unmap {
                continue;
            }
            if !keep_ref {
                self.free_any_cluster(node, old, DiscardType::Request).await;
            } else if self.st.borrow().discard_passthrough[DiscardType::Request as usize]
                && matches!(ty, ClusterType::Normal | ClusterType::ZeroAlloc)
            {
                let cs = self.st.borrow().cluster_size;
                let _ = io::pdiscard(self.data_child(node), old & L2E_OFFSET_MASK, cs).await;
            }
        }
        self.cache_put(CacheKind::L2, slot);
        Ok(nb)
    }

    /// QEMU's qcow2_cluster_discard.
    pub async fn cluster_discard(
        &self,
        node: &Node,
        offset: u64,
        bytes: u64,
        dtype: DiscardType,
        full: bool,
    ) -> IoResult {
        let nb = bytes.div_ceil(self.st.borrow().cluster_size);
        self.over_l2_slices(node, offset, nb, async |off, n| {
            self.discard_in_l2_slice(node, off, n, dtype, full).await
        })
        .await
    }

    async fn discard_in_l2_slice(
        &self,
        node: &Node,
        offset: u64,
        nb: u64,
        dtype: DiscardType,
        full: bool,
    ) -> IoResult<u64> {
        let (slot, l2_index) = self.get_cluster_table(node, offset).await?;
        let has_backing = node.child("backing").is_some();
        let nb = nb.min(self.st.borrow().l2_slice_size - l2_index as u64);
        for i in 0..nb as usize {
            let (old, ty, keep_ref, changed) = {
                let mut st = self.st.borrow_mut();
                let old = st.l2_entry(slot, l2_index + i);
                let old_bitmap = st.l2_bitmap(slot, l2_index + i);
                let ty = st.cluster_type(old);
                let keep_ref = ty != ClusterType::Compressed
                    && !full
                    && st.discard_no_unref
                    && dtype == DiscardType::Request;
                let (mut new, mut new_bitmap) = (old, old_bitmap);
                if full {
                    (new, new_bitmap) = (0, 0);
                } else if has_backing || ty.is_allocated() {
                    if st.extended_l2 {
                        new = if keep_ref { old } else { 0 };
                        new_bitmap = BITMAP_ALL_ZEROES;
                    } else if st.hdr.version >= 3 {
                        new = if keep_ref {
                            old | OFLAG_ZERO
                        } else {
                            OFLAG_ZERO
                        };
                    } else {
                        new = 0;
                    }
                }
                let changed = old != new || old_bitmap != new_bitmap;
                if changed {
                    st.cache(CacheKind::L2).mark_dirty(slot);
                    st.set_l2_entry(slot, l2_index + i, new);
                    if st.extended_l2 {
                        st.set_l2_bitmap(slot, l2_index + i, new_bitmap);
                    }
                }
                (old, ty, keep_ref, changed)
            };
            if !changed {
                continue;
            }
            if !keep_ref {
                self.free_any_cluster(node, old, dtype).await;
            } else if self.st.borrow().discard_passthrough[dtype as usize]
                && matches!(ty, ClusterType::Normal | ClusterType::ZeroAlloc)
            {
                let cs = self.st.borrow().cluster_size;
                let _ = io::pdiscard(self.data_child(node), old & L2E_OFFSET_MASK, cs).await;
            }
        }
        self.cache_put(CacheKind::L2, slot);
        Ok(nb)
    }

    /// QEMU's qcow2_co_pdiscard: partial clusters are not discarded, and a v2 image with a
    /// backing file discards nothing (without the zero flag the backing data would show).
    /// Both refusals are `-ENOTSUP`, which the generic layer reports as success.
    pub async fn do_pdiscard(&self, node: &Node, offset: u64, bytes: u64) -> IoResult {
        self.check_alive()?;
        let (cs, total, version) = {
            let st = self.st.borrow();
            (st.cluster_size, st.size, st.hdr.version)
        };
        if version < 3 && node.child("backing").is_some() {
            return Err(libc::ENOTSUP);
        }
        if !(offset | bytes).is_multiple_of(cs)
            && (!offset.is_multiple_of(cs) || offset + bytes != total)
        {
            return Err(libc::ENOTSUP);
        }
        self.lock.lock().await;
        let r = self
            .cluster_discard(node, offset, bytes, DiscardType::Request, false)
            .await;
        self.lock.unlock();
        r
    }

    /// QEMU's qcow2_co_pwritev_compressed_part: one task per cluster, in parallel when there
    /// is more than one, so a failing cluster does not keep the others from being written.
    pub async fn do_pwritev_compressed(&self, node: &Node, offset: u64, buf: &[u8]) -> IoResult {
        self.check_alive()?;
        if self.st.borrow().data_file {
            return Err(libc::ENOTSUP);
        }
        let (cs, total) = {
            let st = self.st.borrow();
            (st.cluster_size, st.size)
        };
        if buf.is_empty() {
            // QEMU's way to end a compressed image: its file is padded to whole sectors.
            let len = io::getlength(node.file())?;
            return io::truncate(node.file(), len).await.map_err(|_| libc::EIO);
        }
        let bytes = buf.len() as u64;
        if offset & (cs - 1) != 0 {
            return Err(libc::EINVAL);
        }
        if bytes & (cs - 1) != 0 && offset + bytes != total {
            return Err(libc::EINVAL);
        }
        let mut pool: Option<Rc<TaskPool>> = None;
        let mut pos = 0u64;
        let mut ret = Ok(());
        while pos < bytes && pool.as_ref().map_or(Ok(()), |p| p.status()).is_ok() {
            let chunk = (bytes - pos).min(cs);
            let data = &buf[pos as usize..(pos + chunk) as usize];
            if pool.is_none() && chunk != bytes - pos {
                pool = Some(TaskPool::new());
            }
            match &pool {
                None => {
                    ret = self.compressed_task(node, offset + pos, data).await;
                    if ret.is_err() {
                        break;
                    }
                }
                Some(pool) => {
                    let (node, data, at) = (node.rc(), data.to_vec(), offset + pos);
                    pool.start(async move {
                        let q: &Qcow2 = node.driver_as().expect("a qcow2 node");
                        q.compressed_task(&node, at, &data).await
                    })
                    .await;
                }
            }
            pos += chunk;
        }
        match pool {
            Some(pool) => {
                pool.wait_all().await;
                ret.and(pool.status())
            }
            None => ret,
        }
    }

    async fn compressed_task(&self, node: &Node, offset: u64, data: &[u8]) -> IoResult {
        let (cs, codec) = {
            let st = self.st.borrow();
            (st.cluster_size as usize, st.compression)
        };
        let mut input = vec![0u8; cs];
        input[..data.len()].copy_from_slice(data);
        let compressed = self.in_thread(|| codec.compress(&input, cs - 1)).await;
        let Some(out) = compressed else {
            // does not shrink: written as a normal cluster
            return self.do_pwritev(node, offset, data).await;
        };
        self.lock.lock().await;
        let mut r = self
            .alloc_compressed_cluster_offset(node, offset, out.len() as u64)
            .await;
        if let Ok(host) = r {
            r = self
                .pre_write_data_overlap_check(node, host, out.len() as u64)
                .await
                .map(|()| host);
        }
        self.lock.unlock();
        let host = r?;
        node.file().debug_event(Event::WriteCompressed).await;
        io::pwritev(node.file(), host, &out, ReqFlags::NONE).await
    }

    /// QEMU's qcow2_alloc_compressed_cluster_offset.
    async fn alloc_compressed_cluster_offset(
        &self,
        node: &Node,
        offset: u64,
        size: u64,
    ) -> IoResult<u64> {
        let (slot, l2_index) = self.get_cluster_table(node, offset).await?;
        if self.st.borrow().l2_entry(slot, l2_index) & L2E_OFFSET_MASK != 0 {
            self.cache_put(CacheKind::L2, slot);
            return Err(libc::EIO);
        }
        let host = match self.alloc_bytes(node, size).await {
            Ok(h) => h,
            Err(e) => {
                self.cache_put(CacheKind::L2, slot);
                return Err(e);
            }
        };
        let entry = {
            let st = self.st.borrow();
            let nb_csectors = (host + size - 1) / 512 - host / 512;
            host | OFLAG_COMPRESSED | (nb_csectors << st.csize_shift)
        };
        node.file().debug_event(Event::L2UpdateCompressed).await;
        {
            let mut st = self.st.borrow_mut();
            st.cache(CacheKind::L2).mark_dirty(slot);
            st.set_l2_entry(slot, l2_index, entry);
            if st.extended_l2 {
                st.set_l2_bitmap(slot, l2_index, 0);
            }
            st.cache(CacheKind::L2).put(slot);
        }
        Ok(host)
    }
}

/// Lets the guest data go out with the COW regions in one write when they are adjacent.
fn merge_cow(offset: u64, bytes: u64, metas: &mut [L2Meta]) -> bool {
    for m in metas.iter_mut().rev() {
        if m.cow_start.1 == 0 && m.cow_end.1 == 0 {
            continue;
        }
        if m.skip_cow {
            continue;
        }
        if m.cow_start_abs() + m.cow_start.1 != offset {
            continue;
        }
        if m.offset + m.cow_end.0 != offset + bytes {
            continue;
        }
        m.merged = true;
        return true;
    }
    false
}
