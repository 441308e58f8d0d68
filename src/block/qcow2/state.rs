//! The driver's in-memory state (QEMU's BDRVQcow2State) and the pure helpers on it.

use super::cache::{Cache, CacheKind};
use super::header::Header;

pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
pub const OFLAG_COPIED: u64 = 1 << 63;
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
pub const OFLAG_ZERO: u64 = 1;
/// the largest host offset an L2 entry can hold
pub const MAX_CLUSTER_OFFSET: u64 = (1 << 56) - 1;

/// QEMU's discard types: which frees pass a discard down to the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscardType {
    Never = 0,
    Always = 1,
    Request = 2,
    Snapshot = 3,
    Other = 4,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterType {
    Unallocated,
    ZeroPlain,
    ZeroAlloc,
    Normal,
    Compressed,
}

impl ClusterType {
    pub fn is_allocated(self) -> bool {
        matches!(
            self,
            ClusterType::Normal | ClusterType::ZeroAlloc | ClusterType::Compressed
        )
    }
    pub fn reads_zero(self) -> bool {
        matches!(self, ClusterType::ZeroPlain | ClusterType::ZeroAlloc)
    }
}

pub fn cluster_type(entry: u64) -> ClusterType {
    if entry & OFLAG_COMPRESSED != 0 {
        ClusterType::Compressed
    } else if entry & OFLAG_ZERO != 0 {
        if entry & L2E_OFFSET_MASK != 0 {
            ClusterType::ZeroAlloc
        } else {
            ClusterType::ZeroPlain
        }
    } else if entry & L2E_OFFSET_MASK == 0 {
        ClusterType::Unallocated
    } else {
        ClusterType::Normal
    }
}

/// A cluster allocation between its metadata setup and its L2 link (QEMU's QCowL2Meta).
#[derive(Clone, Debug)]
pub struct L2Meta {
    pub id: u64,
    /// guest offset of the first cluster
    pub offset: u64,
    pub alloc_offset: u64,
    pub nb_clusters: u64,
    pub keep_old: bool,
    pub cow_start: (u64, u64),
    pub cow_end: (u64, u64),
    pub skip_cow: bool,
    /// the guest data is written together with the COW regions
    pub merged: bool,
}

impl L2Meta {
    pub fn cow_start_abs(&self) -> u64 {
        self.offset + self.cow_start.0
    }
    pub fn cow_end_abs(&self) -> u64 {
        self.offset + self.cow_end.0 + self.cow_end.1
    }
}

/// An allocation other requests may have to wait for (QEMU's cluster_allocs list).
pub struct InFlight {
    pub id: u64,
    pub cow_start: u64,
    pub cow_end: u64,
    pub keep_old: bool,
    pub waiters: Vec<std::rc::Rc<crate::block::executor::Gate>>,
}

pub struct State {
    pub hdr: Header,
    pub cluster_bits: u32,
    pub cluster_size: u64,
    pub l2_bits: u32,
    pub l2_size: u64,
    /// entries in an L2 cache entry: a whole table, or a slice of it (`l2-cache-entry-size`)
    pub l2_slice_size: u64,
    pub refcount_order: u32,
    pub refcount_block_bits: u32,
    pub refcount_max: u64,
    pub csize_shift: u32,
    pub csize_mask: u64,
    pub cluster_offset_mask: u64,
    pub size: u64,
    pub l1: super::overlap::PointerTable,
    pub l1_offset: u64,
    pub l1_vm_state_index: u64,
    pub reftable: super::overlap::PointerTable,
    pub reftable_offset: u64,
    pub max_reftable_index: u64,
    pub free_cluster_index: u64,
    pub free_byte_offset: u64,
    pub incompat: u64,
    pub compat: u64,
    pub autoclear: u64,
    pub caches: [Cache; 2],
    /// the runtime options (QEMU sizes the caches again from them after a resize)
    pub runtime: super::runtime::Runtime,
    /// the metadata overlap checks to perform (see `overlap`)
    pub overlap_check: u32,
    /// each internal snapshot's L1 table: (offset, entries)
    pub snapshots: Vec<(u64, u32)>,
    pub snapshots_offset: u64,
    /// bytes of the snapshot table
    pub snapshots_size: u64,
    /// (offset, bytes) of the bitmap directory, when the image has valid bitmaps
    pub bitmap_directory: Option<(u64, u64)>,
    pub allocs: Vec<InFlight>,
    pub next_alloc_id: u64,
    pub discards: super::refcount::DiscardQueue,
    pub cache_discards: bool,
    pub discard_passthrough: [bool; 5],
    pub discard_no_unref: bool,
    pub use_lazy_refcounts: bool,
    pub has_backing: bool,
    pub unknown_fields: Vec<u8>,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub unknown_exts: Vec<(u32, Vec<u8>)>,
    /// a fatal corruption was found: further requests fail (QEMU drops bs->drv)
    pub dead: bool,
    /// corruption events after the first are reported once only
    pub corruption_reported: bool,
}

impl State {
    pub fn cache(&mut self, c: CacheKind) -> &mut Cache {
        &mut self.caches[c.idx()]
    }
    pub fn offset_into_cluster(&self, off: u64) -> u64 {
        off & (self.cluster_size - 1)
    }
    pub fn start_of_cluster(&self, off: u64) -> u64 {
        off & !(self.cluster_size - 1)
    }
    pub fn size_to_clusters(&self, size: u64) -> u64 {
        size.div_ceil(self.cluster_size)
    }
    pub fn l1_index(&self, off: u64) -> u64 {
        off >> (self.l2_bits + self.cluster_bits)
    }
    pub fn l2_index(&self, off: u64) -> usize {
        ((off >> self.cluster_bits) & (self.l2_size - 1)) as usize
    }
    /// The index of a guest offset's entry within its L2 slice.
    pub fn l2_slice_index(&self, off: u64) -> usize {
        ((off >> self.cluster_bits) & (self.l2_slice_size - 1)) as usize
    }
    /// Where in its L2 table the slice holding a guest offset's entry starts, in bytes.
    pub fn l2_slice_start(&self, off: u64) -> u64 {
        8 * (self.l2_index(off) - self.l2_slice_index(off)) as u64
    }
    pub fn refcount_block_size(&self) -> u64 {
        1 << self.refcount_block_bits
    }
    pub fn need_accurate_refcounts(&self) -> bool {
        self.incompat & super::header::INCOMPAT_DIRTY == 0
    }
    pub fn vm_state_offset(&self) -> u64 {
        self.l1_vm_state_index << (self.cluster_bits + self.l2_bits)
    }
    /// (host offset, size in bytes) of a compressed cluster's data
    pub fn parse_compressed(&self, entry: u64) -> (u64, u64) {
        let coffset = entry & self.cluster_offset_mask;
        let nb_csectors = ((entry >> self.csize_shift) & self.csize_mask) + 1;
        (coffset, nb_csectors * 512 - (coffset & 511))
    }
}

/// C's `%#x` (QEMU's `%#" PRIx64`): hex with `0x`, except that zero is plain `0`.
pub fn c_hex<T: std::fmt::LowerHex + PartialEq + Default>(v: T) -> String {
    if v == T::default() {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}

/// Refcount entry access for refcount_order 0..6 (sub-byte widths are LSB first).
pub fn rc_get(data: &[u8], order: u32, idx: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let byte = data[idx / per];
            u64::from((byte >> ((idx % per) * bits)) & ((1u16 << bits) - 1) as u8)
        }
        3 => u64::from(data[idx]),
        4 => u64::from(u16::from_be_bytes([data[idx * 2], data[idx * 2 + 1]])),
        5 => u64::from(u32::from_be_bytes(
            data[idx * 4..idx * 4 + 4].try_into().expect("4 bytes"),
        )),
        _ => u64::from_be_bytes(data[idx * 8..idx * 8 + 8].try_into().expect("8 bytes")),
    }
}

pub fn rc_set(data: &mut [u8], order: u32, idx: usize, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per = 8 / bits;
            let shift = (idx % per) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            let b = &mut data[idx / per];
            *b = (*b & !mask) | (((v as u8) << shift) & mask);
        }
        3 => data[idx] = v as u8,
        4 => data[idx * 2..idx * 2 + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => data[idx * 4..idx * 4 + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => data[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

/// The largest refcount a `1 << order`-bit entry holds.
pub fn refcount_max(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1 << order)) - 1
    }
}

/// QEMU's qcow2_refcount_metadata_size: how many refblocks cover `clusters` clusters plus the
/// refcount structures themselves (with 50 % headroom for the table when `generous`).
pub fn refcount_metadata_blocks(
    mut clusters: u64,
    cluster_size: u64,
    refcount_order: u32,
    mut generous: bool,
) -> u64 {
    let per_table_cluster = cluster_size / 8;
    let per_block = cluster_size * 8 / (1 << refcount_order);
    let (mut table, mut blocks, mut n) = (0u64, 0u64, 0u64);
    loop {
        let last = n;
        blocks = (clusters + table + blocks).div_ceil(per_block);
        table = blocks.div_ceil(per_table_cluster);
        n = clusters + blocks + table;
        if n == last && generous {
            clusters += table.div_ceil(2);
            n = 0;
            generous = false;
            continue;
        }
        if n == last {
            return blocks;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths_round_trip() {
        for order in 0..=6u32 {
            let mut d = vec![0u8; 64];
            let max = if order == 6 {
                u64::MAX
            } else {
                (1u64 << (1 << order)) - 1
            };
            rc_set(&mut d, order, 3, max);
            rc_set(&mut d, order, 4, 1);
            assert_eq!(rc_get(&d, order, 3), max, "order {order}");
            assert_eq!(rc_get(&d, order, 4), 1);
            assert_eq!(rc_get(&d, order, 2), 0);
        }
    }

    #[test]
    fn reftable_growth_size_matches_the_measured_512_byte_case() {
        // §3 (f2): 16640 clusters before the new area -> 66 refblocks
        assert_eq!(refcount_metadata_blocks(16640, 512, 4, true), 66);
        assert_eq!(refcount_metadata_blocks(0, 65536, 4, false), 0);
        assert_eq!(refcount_metadata_blocks(3, 65536, 4, false), 1);
        assert_eq!(refcount_metadata_blocks(32768, 65536, 4, false), 2);
    }

    #[test]
    fn cluster_types() {
        assert_eq!(cluster_type(0), ClusterType::Unallocated);
        assert_eq!(cluster_type(1), ClusterType::ZeroPlain);
        assert_eq!(cluster_type(0x50001), ClusterType::ZeroAlloc);
        assert_eq!(cluster_type(OFLAG_COPIED | 0x50000), ClusterType::Normal);
        assert_eq!(cluster_type(OFLAG_COMPRESSED | 5), ClusterType::Compressed);
    }
}
