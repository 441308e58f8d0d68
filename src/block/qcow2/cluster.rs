//! L1/L2 lookup and allocation (QEMU's qcow2-cluster.c): host offsets for reads, L2 table
//! allocation, L1 growth, and the cluster allocation of a write (handle_copied/handle_alloc)
//! with the L2Meta records that link or abort it.

use super::Qcow2;
use super::cache::CacheKind;
use super::overlap;
use super::state::c_hex;
use super::state::{
    BITMAP_ALL_ALLOC, ClusterType, DiscardType, L1E_OFFSET_MASK, L2E_OFFSET_MASK, L2Meta,
    OFLAG_COPIED, State, SubclusterType, sub_alloc_range, sub_zero_range,
};
use crate::block::blkdebug::events::Event;
use crate::block::driver::IoResult;
use crate::block::io;
use crate::block::node::Node;

/// QEMU's INV_OFFSET: no host offset required yet.
pub const INV_OFFSET: u64 = u64::MAX;
const REQUEST_MAX_BYTES: u64 = 0x7fff_fe00;

impl Qcow2 {
    /// Where `bytes` at guest `offset` live: (bytes sharing the answer, host offset or the
    /// compressed L2 entry, subcluster type). QEMU's qcow2_get_host_offset; called with the
    /// lock held.
    pub async fn get_host_offset(
        &self,
        node: &Node,
        offset: u64,
        bytes: u64,
    ) -> IoResult<(u64, u64, SubclusterType)> {
        let (oic, needed, l1_index, l2_index, slice_start, sc_index) = {
            let st = self.st.borrow();
            let oic = st.offset_into_cluster(offset);
            let avail = (st.l2_slice_size - st.l2_slice_index(offset) as u64) << st.cluster_bits;
            (
                oic,
                (bytes + oic).min(avail),
                st.l1_index(offset),
                st.l2_slice_index(offset),
                st.l2_slice_start(offset),
                st.sc_index(offset),
            )
        };
        let l2_offset = {
            let st = self.st.borrow();
            st.l1
                .get(l1_index as usize)
                .map_or(0, |e| e & L1E_OFFSET_MASK)
        };
        if l2_offset == 0 {
            return Ok((needed - oic, 0, SubclusterType::UnallocatedPlain));
        }
        if self.st.borrow().offset_into_cluster(l2_offset) != 0 {
            self.signal_corruption(
                node,
                true,
                &format!(
                    "L2 table offset {} unaligned (L1 index: {})",
                    c_hex(l2_offset),
                    c_hex(l1_index)
                ),
            )
            .await;
            return Err(libc::EIO);
        }
        let slot = self
            .cache_get(node, CacheKind::L2, l2_offset + slice_start, true)
            .await?;
        let (entry, bitmap, version, nb_clusters) = {
            let st = self.st.borrow();
            (
                st.l2_entry(slot, l2_index),
                st.l2_bitmap(slot, l2_index),
                st.hdr.version,
                st.size_to_clusters(needed),
            )
        };
        let ty = self.st.borrow().subcluster_type(entry, bitmap, sc_index);
        let mut host = 0;
        let fail = |msg: String| async move {
            self.cache_put(CacheKind::L2, slot);
            self.signal_corruption(node, true, &msg).await;
            Err(libc::EIO)
        };
        if version < 3 && ty.reads_zero() {
            return fail(format!(
                "Zero cluster entry found in pre-v3 image (L2 offset: {}, L2 index: {})",
                c_hex(l2_offset),
                c_hex(l2_index)
            ))
            .await;
        }
        let data_file = self.st.borrow().data_file;
        match ty {
            SubclusterType::Compressed => {
                if data_file {
                    return fail(format!(
                        "Compressed cluster entry found in image with external data file (L2 offset: {}, L2 index: {})", c_hex(l2_offset), c_hex(l2_index)
                    ))
                    .await;
                }
                host = entry;
            }
            _ if ty.has_host_offset() => {
                let hc = entry & L2E_OFFSET_MASK;
                host = hc + oic;
                if self.st.borrow().offset_into_cluster(hc) != 0 {
                    return fail(format!(
                        "Cluster allocation offset {} unaligned (L2 offset: {}, L2 index: {})",
                        c_hex(hc),
                        c_hex(l2_offset),
                        c_hex(l2_index)
                    ))
                    .await;
                }
                if data_file && host != offset {
                    return fail(format!(
                        "External data file host cluster offset {} does not match guest cluster offset: {}, L2 index: {})",
                        c_hex(hc),
                        c_hex(offset - oic),
                        c_hex(l2_index)
                    ))
                    .await;
                }
            }
            _ => {}
        }
        let count = {
            let st = self.st.borrow();
            count_contiguous_subclusters(&st, slot, l2_index, nb_clusters, sc_index)
        };
        let sc = match count {
            Ok(n) => n,
            Err(bad) => {
                return fail(format!(
                    "Invalid cluster entry found  (L2 offset: {}, L2 index: {})",
                    c_hex(l2_offset),
                    c_hex(bad)
                ))
                .await;
            }
        };
        self.cache_put(CacheKind::L2, slot);
        let sc_bits = self.st.borrow().subcluster_bits;
        let avail = (sc + u64::from(sc_index)) << sc_bits;
        Ok((avail.min(needed) - oic, host, ty))
    }

    /// Writes the L1 entry (padded to the file's alignment) with a sync write.
    pub async fn write_l1_entry(&self, node: &Node, l1_index: u64) -> IoResult {
        let (offset, buf) = {
            let st = self.st.borrow();
            let align = node.file().limits().request_alignment.min(st.cluster_size);
            let bufsize = align.max(8);
            let n = bufsize / 8;
            let start = l1_index / n * n;
            let mut buf = vec![0u8; bufsize as usize];
            for i in 0..n.min(st.l1.len() as u64 - start) {
                let e = st.l1[(start + i) as usize];
                buf[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_be_bytes());
            }
            (st.l1_offset + 8 * start, buf)
        };
        self.pre_write_overlap_check(node, overlap::ACTIVE_L1, offset, buf.len() as u64)
            .await?;
        node.file().debug_event(Event::L1Update).await;
        self.pwrite_sync(node, offset, &buf).await
    }

    /// Grows the L1 table to at least `min_size` entries (QEMU's qcow2_grow_l1_table).
    pub async fn grow_l1_table(&self, node: &Node, min_size: u64, exact: bool) -> IoResult {
        let cur = self.st.borrow().l1.len() as u64;
        if min_size <= cur {
            return Ok(());
        }
        if min_size > (i32::MAX as u64) / 8 {
            return Err(libc::EFBIG);
        }
        let new_size = if exact {
            min_size
        } else {
            let mut n = cur.max(1);
            while min_size > n {
                n = (n * 3).div_ceil(2);
            }
            n
        };
        if new_size > super::header::MAX_L1_SIZE / 8 {
            return Err(libc::EFBIG);
        }
        let mut table = self.st.borrow().l1.to_vec();
        table.resize(new_size as usize, 0);
        let bytes2 = new_size * 8;
        node.file().debug_event(Event::L1GrowAllocTable).await;
        let new_offset = self.alloc_clusters(node, bytes2).await?;
        let r: IoResult = async {
            self.cache_flush(node, CacheKind::Refcount).await?;
            // the new table is not in use yet: its clusters must be free of metadata
            self.pre_write_overlap_check(node, 0, new_offset, bytes2)
                .await?;
            node.file().debug_event(Event::L1GrowWriteTable).await;
            let raw = super::state::be64_bytes(&table);
            self.pwrite_sync(node, new_offset, &raw).await?;
            node.file().debug_event(Event::L1GrowActivateTable).await;
            let mut data = [0u8; 12];
            data[..4].copy_from_slice(&(new_size as u32).to_be_bytes());
            data[4..].copy_from_slice(&new_offset.to_be_bytes());
            self.pwrite_sync(node, 36, &data).await
        }
        .await;
        if let Err(e) = r {
            self.free_clusters(node, new_offset, bytes2, DiscardType::Other)
                .await;
            return Err(e);
        }
        let (old_offset, old_size) = {
            let mut st = self.st.borrow_mut();
            let old = (st.l1_offset, st.l1.len() as u64);
            st.l1 = super::overlap::PointerTable::l1(table);
            st.l1_offset = new_offset;
            st.hdr.l1_size = new_size as u32;
            st.hdr.l1_table_offset = new_offset;
            old
        };
        self.free_clusters(node, old_offset, old_size * 8, DiscardType::Other)
            .await;
        Ok(())
    }

    /// Allocates a new L2 table for `l1_index`, copying the old one if there was one, slice
    /// by slice through the L2 cache (QEMU's l2_allocate).
    async fn l2_allocate(&self, node: &Node, l1_index: u64) -> IoResult {
        let (old, cs, slice_bytes) = {
            let st = self.st.borrow();
            (
                st.l1[l1_index as usize],
                st.cluster_size,
                st.l2_slice_size * st.l2_entry_size(),
            )
        };
        let l2_offset = self.alloc_clusters(node, cs).await?;
        let mut held: Option<usize> = None;
        let r: IoResult = async {
            if l2_offset == 0 {
                self.signal_corruption(
                    node,
                    true,
                    "Preventing invalid allocation of L2 table at offset 0",
                )
                .await;
                return Err(libc::EIO);
            }
            self.cache_flush(node, CacheKind::Refcount).await?;
            for slice in 0..cs / slice_bytes {
                let slot = self
                    .cache_get(node, CacheKind::L2, l2_offset + slice * slice_bytes, false)
                    .await?;
                held = Some(slot);
                if old & L1E_OFFSET_MASK == 0 {
                    self.st
                        .borrow_mut()
                        .cache(CacheKind::L2)
                        .table_mut(slot)
                        .fill(0);
                } else {
                    node.file().debug_event(Event::L2AllocCowRead).await;
                    let old_slice = (old & L1E_OFFSET_MASK) + slice * slice_bytes;
                    let os = self.cache_get(node, CacheKind::L2, old_slice, true).await?;
                    let mut st = self.st.borrow_mut();
                    let c = st.cache(CacheKind::L2);
                    c.copy_table(os, slot);
                    c.put(os);
                }
                node.file().debug_event(Event::L2AllocWrite).await;
                {
                    let mut st = self.st.borrow_mut();
                    let c = st.cache(CacheKind::L2);
                    c.mark_dirty(slot);
                    c.put(slot);
                }
                held = None;
            }
            self.cache_flush(node, CacheKind::L2).await?;
            self.st
                .borrow_mut()
                .l1
                .set(l1_index as usize, l2_offset | OFLAG_COPIED);
            self.write_l1_entry(node, l1_index).await
        }
        .await;
        if let Err(e) = r {
            if let Some(s) = held {
                self.cache_put(CacheKind::L2, s);
            }
            self.st.borrow_mut().l1.set(l1_index as usize, old);
            // offset 0 was refused above: the header is not the table's to free
            if l2_offset != 0 {
                self.free_clusters(node, l2_offset, cs, DiscardType::Always)
                    .await;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Loads (allocating if needed) the L2 slice of a guest offset: (cache slot, index in
    /// the slice).
    pub async fn get_cluster_table(&self, node: &Node, offset: u64) -> IoResult<(usize, usize)> {
        let (l1_index, l2_index, slice_start, l1_len) = {
            let st = self.st.borrow();
            (
                st.l1_index(offset),
                st.l2_slice_index(offset),
                st.l2_slice_start(offset),
                st.l1.len() as u64,
            )
        };
        if l1_index >= l1_len {
            self.grow_l1_table(node, l1_index + 1, false).await?;
        }
        let (entry, cs) = {
            let st = self.st.borrow();
            (st.l1[l1_index as usize], st.cluster_size)
        };
        let mut l2_offset = entry & L1E_OFFSET_MASK;
        if l2_offset & (cs - 1) != 0 {
            self.signal_corruption(
                node,
                true,
                &format!(
                    "L2 table offset {} unaligned (L1 index: {})",
                    c_hex(l2_offset),
                    c_hex(l1_index)
                ),
            )
            .await;
            return Err(libc::EIO);
        }
        if entry & OFLAG_COPIED == 0 {
            self.l2_allocate(node, l1_index).await?;
            if l2_offset != 0 {
                self.free_clusters(node, l2_offset, cs, DiscardType::Other)
                    .await;
            }
            l2_offset = self.st.borrow().l1[l1_index as usize] & L1E_OFFSET_MASK;
        } else if l2_offset + slice_start == 0 {
            self.qemu_aborts(
                &format!(
                    "the image is corrupt: L1 entry {l1_index} is marked COPIED but has no L2 table (offset 0)"
                ),
                "qcow2_cache_do_get",
            );
            return Err(libc::EIO);
        }
        let slot = self
            .cache_get(node, CacheKind::L2, l2_offset + slice_start, true)
            .await?;
        Ok((slot, l2_index))
    }

    /// Records an allocation's COW regions (QEMU's calculate_l2_meta); None when no metadata
    /// change or COW is needed. With extended L2 entries the COW covers only the subclusters
    /// that hold data.
    async fn calculate_l2_meta(
        &self,
        node: &Node,
        host_cluster: u64,
        guest_offset: u64,
        bytes: u64,
        slot: usize,
        keep_old: bool,
    ) -> IoResult<Option<L2Meta>> {
        let plan = {
            let st = self.st.borrow();
            plan_cow(&st, host_cluster, guest_offset, bytes, slot, keep_old)
        };
        let m = match plan {
            Err(bad) => {
                let l2_offset = {
                    let st = self.st.borrow();
                    st.l1[st.l1_index(guest_offset) as usize] & L1E_OFFSET_MASK
                };
                self.signal_corruption(
                    node,
                    true,
                    &format!(
                        "Invalid cluster entry found (L2 offset: {}, L2 index: {})",
                        c_hex(l2_offset),
                        c_hex(bad)
                    ),
                )
                .await;
                return Err(libc::EIO);
            }
            Ok(None) => return Ok(None),
            Ok(Some(m)) => m,
        };
        let mut st = self.st.borrow_mut();
        let id = st.next_alloc_id;
        st.next_alloc_id += 1;
        let m = L2Meta { id, ..m };
        st.allocs.insert(
            0,
            super::state::InFlight {
                id,
                cow_start: m.cow_start_abs(),
                cow_end: m.cow_end_abs(),
                keep_old,
                waiters: Vec::new(),
            },
        );
        Ok(Some(m))
    }

    /// Waits for an overlapping in-flight allocation (QEMU's handle_dependencies): Ok(None)
    /// means it waited and the caller must start over; Ok(Some(n)) the usable byte count.
    async fn handle_dependencies(
        &self,
        guest_offset: u64,
        bytes: u64,
        have_meta: bool,
    ) -> Option<u64> {
        let mut bytes = bytes;
        let gate = {
            let mut st = self.st.borrow_mut();
            let cs = st.cluster_size;
            let mut gate = None;
            for a in st.allocs.iter_mut() {
                let start = guest_offset;
                let end = start + bytes;
                let old_start = a.cow_start & !(cs - 1);
                let old_end = a.cow_end.div_ceil(cs) * cs;
                if end <= old_start || start >= old_end {
                    continue;
                }
                if a.keep_old && (end <= a.cow_start || start >= a.cow_end) {
                    continue;
                }
                bytes = old_start.saturating_sub(start);
                if bytes == 0 && have_meta {
                    return Some(0);
                }
                if bytes == 0 {
                    let g = crate::block::executor::Gate::new();
                    a.waiters.push(g.clone());
                    gate = Some(g);
                    break;
                }
            }
            gate
        };
        match gate {
            Some(g) => {
                self.lock.unlock();
                g.wait().await;
                self.lock.lock().await;
                None
            }
            None => Some(bytes),
        }
    }

    /// In-place writable clusters at `guest_offset` (QEMU's handle_copied).
    async fn handle_copied(
        &self,
        node: &Node,
        guest_offset: u64,
        host_offset: &mut u64,
        bytes: &mut u64,
        metas: &mut Vec<L2Meta>,
    ) -> IoResult<bool> {
        let (nb, cs) = {
            let st = self.st.borrow();
            let nb = st
                .size_to_clusters(st.offset_into_cluster(guest_offset) + *bytes)
                .min(st.l2_slice_size - st.l2_slice_index(guest_offset) as u64)
                .min(REQUEST_MAX_BYTES >> st.cluster_bits);
            (nb, st.cluster_size)
        };
        let (slot, l2_index) = self.get_cluster_table(node, guest_offset).await?;
        let entry = self.st.borrow().l2_entry(slot, l2_index);
        let cluster_offset = entry & L2E_OFFSET_MASK;
        let oic = guest_offset & (cs - 1);
        let mut ret = Ok(false);
        if !needs_new_alloc(&self.st.borrow(), entry) {
            if cluster_offset & (cs - 1) != 0 {
                let what = if entry & 1 != 0 {
                    "Preallocated zero"
                } else {
                    "Data"
                };
                self.signal_corruption(
                    node,
                    true,
                    &format!(
                        "{what} cluster offset {} unaligned (guest offset: {})",
                        c_hex(cluster_offset),
                        c_hex(guest_offset)
                    ),
                )
                .await;
                ret = Err(libc::EIO);
            } else if *host_offset != INV_OFFSET && cluster_offset != *host_offset {
                *bytes = 0;
            } else {
                let keep = count_single_write(&self.st.borrow(), slot, l2_index, nb, false);
                *bytes = (*bytes).min(keep * cs - oic);
                ret = match self
                    .calculate_l2_meta(node, cluster_offset, guest_offset, *bytes, slot, true)
                    .await
                {
                    Ok(m) => {
                        metas.extend(m);
                        Ok(true)
                    }
                    Err(e) => Err(e),
                };
            }
        }
        self.cache_put(CacheKind::L2, slot);
        if ret == Ok(true) {
            *host_offset = cluster_offset + oic;
        }
        ret
    }

    /// New clusters for the rest of a write (QEMU's handle_alloc).
    async fn handle_alloc(
        &self,
        node: &Node,
        guest_offset: u64,
        host_offset: &mut u64,
        bytes: &mut u64,
        metas: &mut Vec<L2Meta>,
    ) -> IoResult<bool> {
        let (nb, cs, bits) = {
            let st = self.st.borrow();
            let nb = st
                .size_to_clusters(st.offset_into_cluster(guest_offset) + *bytes)
                .min(st.l2_slice_size - st.l2_slice_index(guest_offset) as u64)
                .min(REQUEST_MAX_BYTES >> st.cluster_bits);
            (nb, st.cluster_size, st.cluster_bits)
        };
        let (slot, l2_index) = self.get_cluster_table(node, guest_offset).await?;
        let mut nb = count_single_write(&self.st.borrow(), slot, l2_index, nb, true);
        let r: IoResult<bool> = async {
            let alloc = if self.st.borrow().data_file {
                // an external data file maps guest offsets 1:1: nothing to allocate
                guest_offset & !(cs - 1)
            } else if *host_offset == INV_OFFSET {
                self.alloc_clusters(node, nb * cs).await?
            } else {
                let at = *host_offset & !(cs - 1);
                nb = self.alloc_clusters_at(node, at, nb).await?;
                at
            };
            if nb == 0 {
                *bytes = 0;
                return Ok(false);
            }
            let oic = guest_offset & (cs - 1);
            let requested = *bytes + oic;
            let avail = nb << bits;
            let nb_bytes = requested.min(avail);
            *host_offset = alloc + oic;
            *bytes = (*bytes).min(nb_bytes - oic);
            let m = self
                .calculate_l2_meta(node, alloc, guest_offset, *bytes, slot, false)
                .await?;
            metas.extend(m);
            Ok(true)
        }
        .await;
        self.cache_put(CacheKind::L2, slot);
        r
    }

    /// Maps (allocating as needed) the start of a write: (host offset, bytes mapped
    /// contiguously). QEMU's qcow2_alloc_host_offset; lock held.
    pub async fn alloc_host_offset(
        &self,
        node: &Node,
        offset: u64,
        bytes: u64,
        metas: &mut Vec<L2Meta>,
    ) -> IoResult<(u64, u64)> {
        'again: loop {
            let mut start = offset;
            let mut remaining = bytes;
            let mut cluster_offset = INV_OFFSET;
            let mut host_offset = INV_OFFSET;
            let mut cur = 0u64;
            loop {
                if host_offset == INV_OFFSET && cluster_offset != INV_OFFSET {
                    host_offset = cluster_offset;
                }
                start += cur;
                remaining -= cur;
                if cluster_offset != INV_OFFSET {
                    cluster_offset += cur;
                }
                if remaining == 0 {
                    break;
                }
                cur = remaining;
                match self
                    .handle_dependencies(start, cur, !metas.is_empty())
                    .await
                {
                    None => continue 'again,
                    Some(0) => break,
                    Some(n) => cur = n,
                }
                if self
                    .handle_copied(node, start, &mut cluster_offset, &mut cur, metas)
                    .await?
                {
                    continue;
                } else if cur == 0 {
                    break;
                }
                if self
                    .handle_alloc(node, start, &mut cluster_offset, &mut cur, metas)
                    .await?
                {
                    continue;
                }
                break;
            }
            return Ok((host_offset, bytes - remaining));
        }
    }

    /// Copies the untouched parts of newly allocated clusters (QEMU's perform_cow); with
    /// `data` the guest data goes out in the same write. Lock held on entry and exit.
    async fn perform_cow(&self, node: &Node, m: &L2Meta, data: Option<&[u8]>) -> IoResult {
        let (start, end) = (m.cow_start, m.cow_end);
        if (start.1 == 0 && end.1 == 0) || m.skip_cow {
            return Ok(());
        }
        let data_bytes = end.0 - (start.0 + start.1);
        let merge_reads = start.1 != 0 && end.1 != 0 && data_bytes <= 16384;
        self.lock.unlock();
        let r: IoResult = async {
            let (start_buf, end_buf) = if merge_reads {
                let mut b = vec![0u8; (start.1 + data_bytes + end.1) as usize];
                self.cow_read(node, m.offset + start.0, &mut b).await?;
                let e = b[(start.1 + data_bytes) as usize..].to_vec();
                b.truncate(start.1 as usize);
                (b, e)
            } else {
                let mut s = vec![0u8; start.1 as usize];
                self.cow_read(node, m.offset + start.0, &mut s).await?;
                let mut e = vec![0u8; end.1 as usize];
                self.cow_read(node, m.offset + end.0, &mut e).await?;
                (s, e)
            };
            match data {
                Some(d) => {
                    let mut all = start_buf;
                    all.extend_from_slice(d);
                    all.extend_from_slice(&end_buf);
                    node.file().debug_event(Event::WriteAio).await;
                    self.cow_write(node, m.alloc_offset + start.0, &all).await
                }
                None => {
                    self.cow_write(node, m.alloc_offset + start.0, &start_buf)
                        .await?;
                    self.cow_write(node, m.alloc_offset + end.0, &end_buf).await
                }
            }
        }
        .await;
        self.lock.lock().await;
        if r.is_ok() {
            self.st.borrow_mut().cache(CacheKind::L2).depends_on_flush = true;
        }
        r
    }

    async fn cow_read(&self, node: &Node, offset: u64, buf: &mut [u8]) -> IoResult {
        if buf.is_empty() {
            return Ok(());
        }
        node.file().debug_event(Event::CowRead).await;
        self.do_preadv(node, offset, buf).await
    }

    async fn cow_write(&self, node: &Node, offset: u64, buf: &[u8]) -> IoResult {
        if buf.is_empty() {
            return Ok(());
        }
        self.pre_write_data_overlap_check(node, offset, buf.len() as u64)
            .await?;
        node.file().debug_event(Event::CowWrite).await;
        io::pwritev(
            self.data_child(node),
            offset,
            buf,
            crate::block::driver::ReqFlags::NONE,
        )
        .await
    }

    /// Points the L2 entries at the new clusters (QEMU's qcow2_alloc_cluster_link_l2).
    pub async fn link_l2(&self, node: &Node, m: &L2Meta, data: Option<&[u8]>) -> IoResult {
        self.perform_cow(node, m, data).await?;
        if self.st.borrow().use_lazy_refcounts {
            let _ = self.mark_dirty(node).await;
        }
        if self.st.borrow().need_accurate_refcounts() {
            let _ = self
                .set_dependency(node, CacheKind::L2, CacheKind::Refcount)
                .await;
        }
        let (slot, l2_index) = self.get_cluster_table(node, m.offset).await?;
        let old = {
            let mut st = self.st.borrow_mut();
            let cs = st.cluster_size;
            st.cache(CacheKind::L2).mark_dirty(slot);
            let mut old = Vec::new();
            for i in 0..m.nb_clusters {
                let idx = l2_index + i as usize;
                let e = st.l2_entry(slot, idx);
                if e != 0 {
                    old.push(e);
                }
                st.set_l2_entry(slot, idx, (m.alloc_offset + i * cs) | OFLAG_COPIED);
                if st.extended_l2 && !m.prealloc {
                    // the subclusters just written (data and COW) are now allocated
                    let from = m.cow_start.0.max(i * cs);
                    let to = (m.cow_end.0 + m.cow_end.1).min((i + 1) * cs);
                    let (first, last) = (st.sc_index(from), st.sc_index(to - 1));
                    let bitmap = (st.l2_bitmap(slot, idx) | sub_alloc_range(first, last + 1))
                        & !sub_zero_range(first, last + 1);
                    st.set_l2_bitmap(slot, idx, bitmap);
                }
            }
            st.cache(CacheKind::L2).put(slot);
            old
        };
        if !m.keep_old {
            for e in old {
                self.free_any_cluster(node, e, DiscardType::Never).await;
            }
        }
        Ok(())
    }

    /// Frees the clusters of an allocation that will not be linked.
    pub async fn alloc_cluster_abort(&self, node: &Node, m: &L2Meta) {
        if !self.st.borrow().data_file && !m.keep_old {
            let bits = self.st.borrow().cluster_bits;
            self.free_clusters(
                node,
                m.alloc_offset,
                m.nb_clusters << bits,
                DiscardType::Never,
            )
            .await;
        }
    }

    /// Links (or aborts) allocations newest first, as QEMU walks its list; on a link failure
    /// the failed and remaining ones stay in `metas`.
    pub async fn handle_l2meta(
        &self,
        node: &Node,
        metas: &mut Vec<L2Meta>,
        link: bool,
        data: &[u8],
    ) -> IoResult {
        while let Some(m) = metas.last().cloned() {
            if link {
                let d = m.merged.then_some(data);
                self.link_l2(node, &m, d).await?;
            } else {
                self.alloc_cluster_abort(node, &m).await;
            }
            metas.pop();
            let waiters = {
                let mut st = self.st.borrow_mut();
                match st.allocs.iter().position(|a| a.id == m.id) {
                    Some(p) => st.allocs.remove(p).waiters,
                    None => Vec::new(),
                }
            };
            for g in waiters {
                g.open();
            }
        }
        Ok(())
    }
}

/// QEMU's cluster_needs_new_alloc.
pub fn needs_new_alloc(st: &State, entry: u64) -> bool {
    match st.cluster_type(entry) {
        ClusterType::Normal | ClusterType::ZeroAlloc => entry & OFLAG_COPIED == 0,
        _ => true,
    }
}

/// QEMU's count_single_write_clusters.
fn count_single_write(st: &State, slot: usize, l2_index: usize, nb: u64, new_alloc: bool) -> u64 {
    let mut expected = st.l2_entry(slot, l2_index) & L2E_OFFSET_MASK;
    let mut i = 0;
    while i < nb {
        let e = st.l2_entry(slot, l2_index + i as usize);
        if needs_new_alloc(st, e) != new_alloc {
            break;
        }
        if !new_alloc {
            if expected != e & L2E_OFFSET_MASK {
                break;
            }
            expected += st.cluster_size;
        }
        i += 1;
    }
    i
}

/// QEMU's count_contiguous_subclusters: subclusters of the same type from subcluster
/// `sc_index` of entry `l2_index`, over at most `nb_clusters` entries, allocated ones
/// contiguous in the file; compressed clusters count alone. Err(index of the invalid entry).
fn count_contiguous_subclusters(
    st: &State,
    slot: usize,
    l2_index: usize,
    nb_clusters: u64,
    sc_index: u32,
) -> Result<u64, usize> {
    let mut count = 0u64;
    let mut expected_type = SubclusterType::Normal;
    let mut expected_offset = 0;
    let mut check_offset = false;
    for i in 0..nb_clusters as usize {
        let first_sc = if i == 0 { sc_index } else { 0 };
        let entry = st.l2_entry(slot, l2_index + i);
        let bitmap = st.l2_bitmap(slot, l2_index + i);
        let Some((ty, n)) = st.subcluster_range_type(entry, bitmap, first_sc) else {
            return Err(l2_index + i);
        };
        if i == 0 {
            if ty == SubclusterType::Compressed {
                return Ok(u64::from(n));
            }
            expected_type = ty;
            expected_offset = entry & L2E_OFFSET_MASK;
            check_offset = ty.has_host_offset();
        } else if ty != expected_type {
            break;
        } else if check_offset {
            expected_offset += st.cluster_size;
            if expected_offset != entry & L2E_OFFSET_MASK {
                break;
            }
        }
        count += u64::from(n);
        if first_sc + n < st.subclusters_per_cluster {
            break;
        }
    }
    Ok(count)
}

/// The pure part of QEMU's calculate_l2_meta: the COW regions of a write of `bytes` at
/// `guest_offset` into the clusters of L2 slot `slot`. Ok(None) when overwriting in place
/// needs neither COW nor an L2 change; Err(L2 index) for an invalid entry.
fn plan_cow(
    st: &State,
    host_cluster: u64,
    guest_offset: u64,
    bytes: u64,
    slot: usize,
    keep_old: bool,
) -> Result<Option<L2Meta>, usize> {
    let l2_index = st.l2_slice_index(guest_offset);
    let cow_start_to = st.offset_into_cluster(guest_offset);
    let cow_end_from = cow_start_to + bytes;
    let nb = st.size_to_clusters(cow_end_from);
    let cs = st.cluster_size;
    let mut skip_cow = keep_old;
    for i in 0..nb {
        let idx = l2_index + i as usize;
        let (entry, bitmap) = (st.l2_entry(slot, idx), st.l2_bitmap(slot, idx));
        let ty = if skip_cow {
            let from = cow_start_to.max(i * cs);
            let to = cow_end_from.min((i + 1) * cs);
            let (first_sc, last_sc) = (st.sc_index(from), st.sc_index(to - 1));
            let (ty, cnt) = st
                .subcluster_range_type(entry, bitmap, first_sc)
                .unwrap_or((SubclusterType::Invalid, 0));
            if ty != SubclusterType::Normal || first_sc + cnt <= last_sc {
                skip_cow = false;
            }
            ty
        } else {
            st.subcluster_type(entry, bitmap, 0)
        };
        if ty == SubclusterType::Invalid {
            return Err(idx);
        }
    }
    if skip_cow {
        return Ok(None);
    }
    let sc_bits = st.subcluster_bits;
    let per = st.subclusters_per_cluster;
    let (entry, bitmap) = (st.l2_entry(slot, l2_index), st.l2_bitmap(slot, l2_index));
    let sc = st.sc_index(guest_offset);
    let cow_start_from = match (keep_old, st.subcluster_type(entry, bitmap, sc)) {
        (false, SubclusterType::Compressed) => 0,
        (false, SubclusterType::Normal | SubclusterType::ZeroAlloc)
        | (false, SubclusterType::UnallocatedAlloc) => {
            if st.extended_l2 {
                // skip the leading subclusters that hold no data
                let first_alloc = ((bitmap & BITMAP_ALL_ALLOC) as u32).trailing_zeros();
                u64::from(sc.min(first_alloc)) << sc_bits
            } else {
                0
            }
        }
        (true, SubclusterType::Normal) => cow_start_to,
        _ => u64::from(sc) << sc_bits,
    };
    let last = l2_index + nb as usize - 1;
    let (entry, bitmap) = (st.l2_entry(slot, last), st.l2_bitmap(slot, last));
    let sc = st.sc_index(guest_offset + bytes - 1);
    let cow_end_to = match (keep_old, st.subcluster_type(entry, bitmap, sc)) {
        (false, SubclusterType::Compressed) => cow_end_from.div_ceil(cs) * cs,
        (false, SubclusterType::Normal | SubclusterType::ZeroAlloc)
        | (false, SubclusterType::UnallocatedAlloc) => {
            let mut to = cow_end_from.div_ceil(cs) * cs;
            if st.extended_l2 {
                // skip the trailing subclusters that hold no data
                let last_alloc = ((bitmap & BITMAP_ALL_ALLOC) as u32).leading_zeros();
                to -= u64::from((per - sc - 1).min(last_alloc)) << sc_bits;
            }
            to
        }
        (true, SubclusterType::Normal) => cow_end_from,
        _ => cow_end_from.div_ceil(st.subcluster_size) * st.subcluster_size,
    };
    Ok(Some(L2Meta {
        id: 0,
        offset: guest_offset & !(cs - 1),
        alloc_offset: host_cluster,
        nb_clusters: nb,
        keep_old,
        cow_start: (cow_start_from, cow_start_to - cow_start_from),
        cow_end: (cow_end_from, cow_end_to - cow_end_from),
        skip_cow: false,
        prealloc: false,
        merged: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::qcow2::state::tests::state;

    #[test]
    fn cow_covers_only_the_subclusters_that_hold_data() {
        // iotest 271: cluster 0 has data in subclusters 0-9; a write into subcluster 16 of a
        // new cluster copies nothing past subcluster 9, and nothing before 0
        let mut st = state(true, false);
        st.set_l2_entry(0, 0, 0x50000 | OFLAG_COPIED);
        st.set_l2_bitmap(0, 0, sub_alloc_range(0, 10));
        let m = plan_cow(&st, 0x60000, 32 * 1024 + 100, 1024, 0, true)
            .unwrap()
            .unwrap();
        // in place over an unallocated subcluster: COW of that subcluster only
        assert_eq!(m.cow_start, (32 * 1024, 100));
        assert_eq!(m.cow_end, (32 * 1024 + 1124, 2048 - 1124));
        // a fresh allocation of an unallocated cluster starts and ends at subclusters
        let m = plan_cow(&st, 0x60000, 65536 + 3 * 1024, 512, 0, false)
            .unwrap()
            .unwrap();
        assert_eq!(m.offset, 65536);
        assert_eq!(m.cow_start, (2048, 1024));
        assert_eq!(m.cow_end, (3584, 512));
        // COW of a shared (not COPIED) cluster: from its first to its last data subcluster
        st.set_l2_entry(0, 2, 0x80000);
        st.set_l2_bitmap(0, 2, sub_alloc_range(4, 8));
        let m = plan_cow(&st, 0x90000, 2 * 65536 + 20 * 2048, 100, 0, false)
            .unwrap()
            .unwrap();
        assert_eq!(m.cow_start, (4 * 2048, 16 * 2048));
        assert_eq!(m.cow_end, (20 * 2048 + 100, 2048 - 100));
        // overwriting allocated data in place needs nothing
        assert!(
            plan_cow(&st, 0x50000, 1024, 4096, 0, true)
                .unwrap()
                .is_none()
        );
        // an invalid bitmap is reported with its L2 index
        st.set_l2_bitmap(0, 1, 1 << 31);
        assert_eq!(plan_cow(&st, 0, 65536, 512, 0, false).unwrap_err(), 1);
    }

    #[test]
    fn contiguous_subclusters_stop_at_a_type_change() {
        let mut st = state(true, false);
        st.set_l2_entry(0, 0, 0x50000 | OFLAG_COPIED);
        st.set_l2_bitmap(0, 0, BITMAP_ALL_ALLOC);
        st.set_l2_entry(0, 1, 0x60000 | OFLAG_COPIED);
        st.set_l2_bitmap(0, 1, sub_alloc_range(0, 3));
        assert_eq!(count_contiguous_subclusters(&st, 0, 0, 2, 30), Ok(2 + 3));
        // not contiguous in the file
        st.set_l2_entry(0, 1, 0x70000 | OFLAG_COPIED);
        assert_eq!(count_contiguous_subclusters(&st, 0, 0, 2, 30), Ok(2));
        st.set_l2_bitmap(0, 1, (1 << 32) | 1);
        assert_eq!(count_contiguous_subclusters(&st, 0, 1, 1, 0), Err(1));
    }
}
