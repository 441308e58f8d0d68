//! The driver's in-memory state (QEMU's BDRVQcow2State) and the pure helpers on it, among
//! them the one model of L2 entries: standard (64-bit) or extended (entry + 32-subcluster
//! allocation/zero bitmap), with an external data file or not. Every code path reads and
//! writes entries through `l2_entry`/`l2_bitmap`/`set_l2_*` and classifies them with
//! `cluster_type`/`subcluster_type`/`subcluster_range_type`.

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

/// What one subcluster of a cluster is (QEMU's QCow2SubclusterType). Images with standard L2
/// entries have one subcluster per cluster, so it maps 1:1 to the cluster type there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubclusterType {
    UnallocatedPlain,
    /// unallocated inside an allocated cluster (extended L2 entries only)
    UnallocatedAlloc,
    ZeroPlain,
    ZeroAlloc,
    Normal,
    Compressed,
    /// an impossible L2 entry/bitmap combination: the image is corrupt
    Invalid,
}

impl SubclusterType {
    pub fn reads_zero(self) -> bool {
        matches!(self, Self::ZeroPlain | Self::ZeroAlloc)
    }
    pub fn is_unallocated(self) -> bool {
        matches!(self, Self::UnallocatedPlain | Self::UnallocatedAlloc)
    }
    /// The data lives at a host offset of the (data) file.
    pub fn has_host_offset(self) -> bool {
        matches!(
            self,
            Self::Normal | Self::ZeroAlloc | Self::UnallocatedAlloc
        )
    }
}

/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;
/// the allocation half of an extended L2 bitmap (the zero half is the upper 32 bits)
pub const BITMAP_ALL_ALLOC: u64 = 0xffff_ffff;
pub const BITMAP_ALL_ZEROES: u64 = 0xffff_ffff << 32;

/// Allocation bits of subclusters `from..to` (QCOW_OFLAG_SUB_ALLOC_RANGE).
pub fn sub_alloc_range(from: u32, to: u32) -> u64 {
    (1u64 << to) - (1u64 << from)
}

/// Zero bits of subclusters `from..to` (QCOW_OFLAG_SUB_ZERO_RANGE).
pub fn sub_zero_range(from: u32, to: u32) -> u64 {
    sub_alloc_range(from, to) << 32
}

/// The cluster type of a standard L2 entry (no extended L2, no external data file).
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
    /// a preallocation: no subcluster is marked allocated by the link
    pub prealloc: bool,
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
    /// how compressed clusters are (de)compressed
    pub compression: super::compress::CompressionType,
    /// extended L2 entries: 128 bits each, with a 32-subcluster allocation/zero bitmap
    pub extended_l2: bool,
    pub subclusters_per_cluster: u32,
    pub subcluster_bits: u32,
    pub subcluster_size: u64,
    /// the data lives in an external data file (QEMU's has_data_file)
    pub data_file: bool,
    /// the data file's name as the image stores it (QEMU's image_data_file)
    pub data_file_name: Option<String>,
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

    /// QEMU's qcow2_get_cluster_type: with extended L2 entries bit 0 is no zero flag, and
    /// with an external data file offset 0 is a real offset when the entry is COPIED.
    pub fn cluster_type(&self, entry: u64) -> ClusterType {
        if entry & OFLAG_COMPRESSED != 0 {
            ClusterType::Compressed
        } else if entry & OFLAG_ZERO != 0 && !self.extended_l2 {
            if entry & L2E_OFFSET_MASK != 0 {
                ClusterType::ZeroAlloc
            } else {
                ClusterType::ZeroPlain
            }
        } else if entry & L2E_OFFSET_MASK == 0 {
            if self.data_file && entry & OFLAG_COPIED != 0 {
                ClusterType::Normal
            } else {
                ClusterType::Unallocated
            }
        } else {
            ClusterType::Normal
        }
    }

    /// QEMU's qcow2_get_subcluster_type (the whole entry and bitmap are checked).
    pub fn subcluster_type(&self, entry: u64, bitmap: u64, sc: u32) -> SubclusterType {
        let ty = self.cluster_type(entry);
        if !self.extended_l2 {
            return match ty {
                ClusterType::Compressed => SubclusterType::Compressed,
                ClusterType::ZeroPlain => SubclusterType::ZeroPlain,
                ClusterType::ZeroAlloc => SubclusterType::ZeroAlloc,
                ClusterType::Normal => SubclusterType::Normal,
                ClusterType::Unallocated => SubclusterType::UnallocatedPlain,
            };
        }
        match ty {
            ClusterType::Compressed => SubclusterType::Compressed,
            ClusterType::Normal => {
                if (bitmap >> 32) & bitmap != 0 {
                    SubclusterType::Invalid
                } else if bitmap & (1 << (32 + sc)) != 0 {
                    SubclusterType::ZeroAlloc
                } else if bitmap & (1 << sc) != 0 {
                    SubclusterType::Normal
                } else {
                    SubclusterType::UnallocatedAlloc
                }
            }
            _ => {
                if bitmap & BITMAP_ALL_ALLOC != 0 {
                    SubclusterType::Invalid
                } else if bitmap & (1 << (32 + sc)) != 0 {
                    SubclusterType::ZeroPlain
                } else {
                    SubclusterType::UnallocatedPlain
                }
            }
        }
    }

    /// QEMU's qcow2_get_subcluster_range_type: the type of subcluster `from` and how many
    /// subclusters from it share that type (to the end of the cluster for standard entries and
    /// compressed clusters). None for an invalid entry.
    pub fn subcluster_range_type(
        &self,
        entry: u64,
        bitmap: u64,
        from: u32,
    ) -> Option<(SubclusterType, u32)> {
        let ty = self.subcluster_type(entry, bitmap, from);
        let below = sub_alloc_range(0, from);
        let n = match ty {
            SubclusterType::Invalid => return None,
            _ if !self.extended_l2 || ty == SubclusterType::Compressed => {
                self.subclusters_per_cluster - from
            }
            SubclusterType::Normal => ((bitmap | below) as u32).trailing_ones() - from,
            SubclusterType::ZeroPlain | SubclusterType::ZeroAlloc => {
                (((bitmap >> 32) | below) as u32).trailing_ones() - from
            }
            _ => ((((bitmap >> 32) | bitmap) & !below) as u32).trailing_zeros() - from,
        };
        Some((ty, n))
    }

    /// The L2 entry `i` of an L2 cache slot (the first word of an extended entry).
    pub fn l2_entry(&self, slot: usize, i: usize) -> u64 {
        self.caches[0].be64(slot, i * self.l2_words())
    }

    /// The subcluster bitmap of entry `i`; 0 for standard entries.
    pub fn l2_bitmap(&self, slot: usize, i: usize) -> u64 {
        if self.extended_l2 {
            self.caches[0].be64(slot, i * 2 + 1)
        } else {
            0
        }
    }

    pub fn set_l2_entry(&mut self, slot: usize, i: usize, entry: u64) {
        let w = self.l2_words();
        self.caches[0].set_be64(slot, i * w, entry);
    }

    pub fn set_l2_bitmap(&mut self, slot: usize, i: usize, bitmap: u64) {
        debug_assert!(
            self.extended_l2,
            "bitmaps exist with extended L2 entries only"
        );
        self.caches[0].set_be64(slot, i * 2 + 1, bitmap);
    }

    /// 8-byte words per L2 entry.
    fn l2_words(&self) -> usize {
        if self.extended_l2 { 2 } else { 1 }
    }

    /// Bytes per L2 entry: 16 when extended.
    pub fn l2_entry_size(&self) -> u64 {
        8 * self.l2_words() as u64
    }

    pub fn offset_into_subcluster(&self, off: u64) -> u64 {
        off & (self.subcluster_size - 1)
    }
    pub fn size_to_subclusters(&self, size: u64) -> u64 {
        size.div_ceil(self.subcluster_size)
    }
    /// The subcluster index of a guest offset inside its cluster.
    pub fn sc_index(&self, off: u64) -> u32 {
        ((off >> self.subcluster_bits) & u64::from(self.subclusters_per_cluster - 1)) as u32
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
        self.l2_entry_size() * (self.l2_index(off) - self.l2_slice_index(off)) as u64
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

/// A table of 64-bit entries as the file holds it (big-endian).
pub fn be64_bytes(entries: &[u64]) -> Vec<u8> {
    let mut raw = vec![0u8; entries.len() * 8];
    for (d, e) in raw.chunks_exact_mut(8).zip(entries) {
        d.copy_from_slice(&e.to_be_bytes());
    }
    raw
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
pub(crate) mod tests {
    use super::*;

    /// A driver state for 64 KiB clusters with one L2 table in cache slot 0.
    pub(crate) fn state(extended_l2: bool, data_file: bool) -> State {
        let cs = 65536u64;
        let (l2_bits, per) = if extended_l2 {
            (12, SUBCLUSTERS)
        } else {
            (13, 1)
        };
        let mut caches = [Cache::new(2, cs as usize), Cache::new(4, cs as usize)];
        let table = caches[0].begin_load(0);
        caches[0].end_load(0, vec![0; table.len()], 0x40000, false);
        State {
            hdr: Header::default(),
            cluster_bits: 16,
            cluster_size: cs,
            l2_bits,
            l2_size: 1 << l2_bits,
            l2_slice_size: 1 << l2_bits,
            refcount_order: 4,
            refcount_block_bits: 15,
            refcount_max: 0xffff,
            csize_shift: 54,
            csize_mask: 0xff,
            cluster_offset_mask: (1 << 54) - 1,
            compression: super::super::compress::CompressionType::Zlib,
            extended_l2,
            subclusters_per_cluster: per,
            subcluster_bits: 16 - per.trailing_zeros(),
            subcluster_size: cs / u64::from(per),
            data_file,
            data_file_name: None,
            size: 1 << 30,
            l1: super::super::overlap::PointerTable::l1(vec![0x40000 | OFLAG_COPIED]),
            l1_offset: 0x30000,
            l1_vm_state_index: 1,
            reftable: super::super::overlap::PointerTable::reftable(Vec::new()),
            reftable_offset: 0x10000,
            max_reftable_index: 0,
            free_cluster_index: 0,
            free_byte_offset: 0,
            incompat: 0,
            compat: 0,
            autoclear: 0,
            caches,
            runtime: super::super::runtime::Runtime {
                cache: Default::default(),
                sizes: super::super::runtime::CacheSizes {
                    l2_tables: 2,
                    l2_entry_size: cs,
                    refcount_tables: 4,
                },
                lazy_refcounts: false,
                overlap_check: 0,
                discard_passthrough: [false; 5],
                discard_no_unref: false,
                cache_clean_interval: 0,
                encrypt_key_secret: false,
            },
            overlap_check: 0,
            snapshots: Vec::new(),
            snapshots_offset: 0,
            snapshots_size: 0,
            bitmap_directory: None,
            allocs: Vec::new(),
            next_alloc_id: 0,
            discards: Default::default(),
            cache_discards: false,
            discard_passthrough: [false; 5],
            discard_no_unref: false,
            use_lazy_refcounts: false,
            has_backing: false,
            unknown_fields: Vec::new(),
            backing_file: None,
            backing_format: None,
            unknown_exts: Vec::new(),
            dead: false,
            corruption_reported: false,
        }
    }

    #[test]
    fn subcluster_types_follow_the_bitmap() {
        let st = state(true, false);
        let normal = 0x50000 | OFLAG_COPIED;
        // subclusters 0-3 data, 4-5 zero, the rest unallocated
        let bitmap = sub_alloc_range(0, 4) | sub_zero_range(4, 6);
        assert_eq!(
            st.subcluster_range_type(normal, bitmap, 1),
            Some((SubclusterType::Normal, 3))
        );
        assert_eq!(
            st.subcluster_range_type(normal, bitmap, 4),
            Some((SubclusterType::ZeroAlloc, 2))
        );
        assert_eq!(
            st.subcluster_range_type(normal, bitmap, 6),
            Some((SubclusterType::UnallocatedAlloc, 26))
        );
        // unallocated cluster: zero bits only
        assert_eq!(
            st.subcluster_range_type(0, sub_zero_range(0, 16), 3),
            Some((SubclusterType::ZeroPlain, 13))
        );
        assert_eq!(
            st.subcluster_range_type(0, sub_zero_range(0, 16), 16),
            Some((SubclusterType::UnallocatedPlain, 16))
        );
        // bit 0 is no zero flag with extended entries; the bitmap of a compressed
        // cluster is ignored
        assert_eq!(st.cluster_type(1), ClusterType::Unallocated);
        assert_eq!(
            st.subcluster_range_type(OFLAG_COMPRESSED | 0x50000, u64::MAX, 5),
            Some((SubclusterType::Compressed, 27))
        );
        // a subcluster both allocated and zero, or allocated in an unallocated cluster
        assert_eq!(st.subcluster_range_type(normal, 1 | (1 << 32), 7), None);
        assert_eq!(st.subcluster_range_type(0, 1 << 31, 0), None);
    }

    #[test]
    fn standard_entries_have_one_subcluster_and_data_files_offset_zero() {
        let st = state(false, false);
        assert_eq!(
            st.subcluster_range_type(0x50001, 0, 0),
            Some((SubclusterType::ZeroAlloc, 1))
        );
        assert_eq!(st.cluster_type(OFLAG_COPIED), ClusterType::Unallocated);
        let st = state(false, true);
        assert_eq!(st.cluster_type(OFLAG_COPIED), ClusterType::Normal);
        assert_eq!(st.cluster_type(0), ClusterType::Unallocated);
    }

    #[test]
    fn extended_entries_are_two_words_wide() {
        let mut st = state(true, false);
        st.set_l2_entry(0, 3, 0x70000 | OFLAG_COPIED);
        st.set_l2_bitmap(0, 3, 0xff);
        assert_eq!(st.caches[0].be64(0, 6), 0x70000 | OFLAG_COPIED);
        assert_eq!(st.caches[0].be64(0, 7), 0xff);
        assert_eq!(st.l2_bitmap(0, 3), 0xff);
        assert_eq!(st.sc_index(3 * 65536 + 5 * 2048 + 100), 5);
        assert_eq!(c_hex(0u64), "0");
        assert_eq!(c_hex(0x40000u64), "0x40000");
    }

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
