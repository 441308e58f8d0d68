//! `qemu-img create -f qcow2`: the image is laid out exactly as QEMU 10.0.2's `qcow2_co_create`
//! leaves it. QEMU writes a bare header and a one-block refcount table, opens the image, allocates
//! clusters 0-2 through its allocator, rewrites the header, and grows the L1 table to the virtual
//! size (which may add refcount blocks and grow the refcount table); a backing file makes it
//! rewrite the header once more. This module replays that allocator on an in-memory model, so
//! where every table lands, which stale bytes stay behind in freed clusters and how long the file
//! is all come out the same, then writes the resulting extents to the file.

use crate::block::qcow2::header::{
    self, COMPAT_LAZY_REFCOUNTS, Header, HeaderImage, INCOMPAT_COMPRESSION, INCOMPAT_DATA_FILE,
    INCOMPAT_EXTL2, MAX_CLUSTER_BITS, MAX_L1_SIZE, MAX_REFTABLE_SIZE, MIN_CLUSTER_BITS,
};
use crate::block::qcow2::state::{
    MAX_CLUSTER_OFFSET, REFT_OFFSET_MASK, rc_get, rc_set, refcount_max, refcount_metadata_blocks,
};
use std::collections::{BTreeMap, HashMap};

/// What `qcow2_co_create` gets after option parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateSpec {
    pub size: u64,
    pub version: u32,
    pub cluster_size: u64,
    pub refcount_bits: u64,
    pub lazy_refcounts: bool,
    pub extended_l2: bool,
    pub zstd: bool,
    pub backing_file: Option<String>,
    pub backing_fmt: Option<String>,
    /// an external data file, by the name the image records
    pub data_file: Option<String>,
}

impl Default for CreateSpec {
    fn default() -> Self {
        CreateSpec {
            size: 0,
            version: 3,
            cluster_size: 65536,
            refcount_bits: 16,
            lazy_refcounts: false,
            extended_l2: false,
            zstd: false,
            backing_file: None,
            backing_fmt: None,
            data_file: None,
        }
    }
}

/// A failure inside the format driver: negative-errno semantics plus QEMU's message.
#[derive(Debug, PartialEq, Eq)]
pub struct CreateError {
    pub errno: i32,
    pub message: String,
}

fn einval(message: &str) -> CreateError {
    CreateError {
        errno: libc::EINVAL,
        message: message.to_string(),
    }
}

/// `qcow2_co_create`'s validation, in its order.
pub fn validate(spec: &CreateSpec) -> Result<(), CreateError> {
    if spec.extended_l2 {
        if spec.version < 3 {
            return Err(einval(
                "Extended L2 entries are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
            ));
        }
        if spec.cluster_size < 16384 {
            return Err(einval(
                "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
            ));
        }
    }
    let cs = spec.cluster_size;
    if !cs.is_power_of_two() || !((1 << MIN_CLUSTER_BITS)..=(1 << MAX_CLUSTER_BITS)).contains(&cs) {
        return Err(einval(
            "Cluster size must be a power of two between 512 and 2048k",
        ));
    }
    if spec.backing_fmt.is_some() && spec.backing_file.is_none() {
        return Err(einval("Backing format cannot be used without backing file"));
    }
    if spec.version < 3 && spec.lazy_refcounts {
        return Err(einval(
            "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    if spec.refcount_bits > 64 || !spec.refcount_bits.is_power_of_two() {
        return Err(einval(
            "Refcount width must be a power of two and may not exceed 64 bits",
        ));
    }
    if spec.version < 3 && spec.refcount_bits != 16 {
        return Err(einval(
            "Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)",
        ));
    }
    if spec.data_file.is_some() && spec.version < 3 {
        return Err(einval(
            "External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    if spec.zstd && spec.version < 3 {
        return Err(einval(
            "Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)",
        ));
    }
    Ok(())
}

/// The file's bytes as a list of writes in order; later writes win, holes read as zeros.
#[derive(Default, Debug)]
pub struct Extents {
    pub writes: Vec<(u64, Vec<u8>)>,
}

impl Extents {
    pub fn len(&self) -> u64 {
        self.writes
            .iter()
            .map(|(o, d)| o + d.len() as u64)
            .max()
            .unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Applies the writes to `file` (already truncated to 0).
    pub fn write_to(&self, file: &std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        for (off, data) in &self.writes {
            file.write_all_at(data, *off)?;
        }
        file.set_len(self.len())
    }
    /// The file as one buffer (tests).
    pub fn flatten(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len() as usize];
        for (off, data) in &self.writes {
            out[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        out
    }
}

#[derive(Debug, PartialEq, Eq)]
enum AllocErr {
    Again,
    Errno(i32),
}

type AResult<T> = Result<T, AllocErr>;

/// QEMU's allocator state for one open image (qcow2-refcount.c).
struct Image {
    bits: u32,
    cs: u64,
    order: u32,
    rb_entries: u64,
    reftable: Vec<u64>,
    reftable_offset: u64,
    refblocks: HashMap<u64, Vec<u8>>,
    free_cluster_index: u64,
    out: Extents,
}

impl Image {
    fn write(&mut self, offset: u64, data: Vec<u8>) {
        self.out.writes.push((offset, data));
    }

    fn get_refcount(&self, cluster: u64) -> u64 {
        let idx = cluster / self.rb_entries;
        let Some(&entry) = self.reftable.get(idx as usize) else {
            return 0;
        };
        let off = entry & REFT_OFFSET_MASK;
        if off == 0 {
            return 0;
        }
        match self.refblocks.get(&off) {
            Some(b) => rc_get(b, self.order, (cluster % self.rb_entries) as usize),
            None => 0,
        }
    }

    fn alloc_clusters_noref(&mut self, size: u64) -> AResult<u64> {
        let n = size.div_ceil(self.cs);
        'retry: loop {
            for _ in 0..n {
                let idx = self.free_cluster_index;
                self.free_cluster_index += 1;
                if self.get_refcount(idx) != 0 {
                    continue 'retry;
                }
            }
            break;
        }
        if self.free_cluster_index > 0
            && self.free_cluster_index - 1 > (MAX_CLUSTER_OFFSET >> self.bits)
        {
            return Err(AllocErr::Errno(libc::EFBIG));
        }
        Ok((self.free_cluster_index - n) << self.bits)
    }

    fn alloc_clusters(&mut self, size: u64) -> AResult<u64> {
        loop {
            let offset = self.alloc_clusters_noref(size)?;
            match self.update_refcount(offset, size, 1, false) {
                Ok(()) => return Ok(offset),
                Err(AllocErr::Again) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn free_clusters(&mut self, offset: u64, size: u64) {
        let _ = self.update_refcount(offset, size, 1, true);
    }

    fn update_refcount(
        &mut self,
        offset: u64,
        length: u64,
        addend: u64,
        decrease: bool,
    ) -> AResult<()> {
        if length == 0 {
            return Ok(());
        }
        let start = offset & !(self.cs - 1);
        let last = (offset + length - 1) & !(self.cs - 1);
        let mut cluster_offset = start;
        let mut old_table_index = u64::MAX;
        let mut block = 0u64;
        let mut result = Ok(());
        while cluster_offset <= last {
            let cluster_index = cluster_offset >> self.bits;
            let table_index = cluster_index / self.rb_entries;
            if table_index != old_table_index {
                match self.alloc_refcount_block(cluster_index) {
                    Ok(b) => block = b,
                    Err(e) => {
                        if e == AllocErr::Again && self.free_cluster_index > (start >> self.bits) {
                            self.free_cluster_index = start >> self.bits;
                        }
                        result = Err(e);
                        break;
                    }
                }
            }
            old_table_index = table_index;
            let order = self.order;
            let bi = cluster_index % self.rb_entries;
            let rb = self.refblocks.get_mut(&block).expect("loaded refblock");
            let refcount = rc_get(rb, order, bi as usize);
            let new = if decrease {
                refcount.checked_sub(addend)
            } else {
                refcount
                    .checked_add(addend)
                    .filter(|v| *v <= refcount_max(order))
            };
            let Some(new) = new else {
                result = Err(AllocErr::Errno(libc::EINVAL));
                break;
            };
            rc_set(rb, order, bi as usize, new);
            if new == 0 && cluster_index < self.free_cluster_index {
                self.free_cluster_index = cluster_index;
            }
            cluster_offset += self.cs;
        }
        if result.is_err() {
            let _ = self.update_refcount(offset, cluster_offset - offset, addend, !decrease);
        }
        result
    }

    /// The refcount block covering `cluster_index`, allocated if missing (then `Again`).
    fn alloc_refcount_block(&mut self, cluster_index: u64) -> AResult<u64> {
        let table_index = cluster_index / self.rb_entries;
        if let Some(&entry) = self.reftable.get(table_index as usize) {
            let off = entry & REFT_OFFSET_MASK;
            if off != 0 {
                self.refblocks
                    .entry(off)
                    .or_insert_with(|| vec![0u8; self.cs as usize]);
                return Ok(off);
            }
        }
        let new_block = self.alloc_clusters_noref(self.cs)?;
        if new_block == 0 {
            return Err(AllocErr::Errno(libc::EIO));
        }
        let new_cluster = new_block >> self.bits;
        if new_cluster / self.rb_entries == table_index {
            let mut b = vec![0u8; self.cs as usize];
            rc_set(
                &mut b,
                self.order,
                (new_cluster % self.rb_entries) as usize,
                1,
            );
            self.refblocks.insert(new_block, b);
        } else {
            self.update_refcount(new_block, self.cs, 1, false)?;
            self.refblocks
                .insert(new_block, vec![0u8; self.cs as usize]);
        }
        if (table_index as usize) < self.reftable.len() {
            self.write(
                self.reftable_offset + table_index * 8,
                new_block.to_be_bytes().to_vec(),
            );
            self.reftable[table_index as usize] = new_block;
            return Err(AllocErr::Again);
        }
        // Grow the refcount table: new self-describing metadata past everything in use.
        let blocks_used = (cluster_index + 1)
            .max(new_cluster + 1)
            .div_ceil(self.rb_entries);
        let meta_offset = blocks_used * self.rb_entries * self.cs;
        self.refcount_area(meta_offset, table_index, new_block)?;
        Err(AllocErr::Again)
    }

    /// `qcow2_refcount_area` with `additional_clusters = 0` and `exact_size = false`.
    fn refcount_area(
        &mut self,
        start_offset: u64,
        new_index: u64,
        new_offset: u64,
    ) -> AResult<u64> {
        let total = refcount_metadata_blocks(start_offset / self.cs, self.cs, self.order, true);
        if total > MAX_REFTABLE_SIZE {
            return Err(AllocErr::Errno(libc::EFBIG));
        }
        let area_index = (start_offset / self.cs) / self.rb_entries;
        let mut table_size = total + total.div_ceil(2);
        let per_cluster = self.cs / 8;
        table_size = table_size.div_ceil(per_cluster) * per_cluster;
        let table_clusters = table_size * 8 / self.cs;
        if table_size > MAX_REFTABLE_SIZE {
            return Err(AllocErr::Errno(libc::EFBIG));
        }
        let mut new_table = vec![0u64; table_size as usize];
        for (i, e) in self.reftable.iter().enumerate() {
            if i < new_table.len() {
                new_table[i] = *e;
            }
        }
        new_table[new_index as usize] = new_offset;
        let additional = (area_index..total)
            .filter(|&i| new_table[i as usize] == 0)
            .count() as u64;
        let table_offset = start_offset + additional * self.cs;
        let end_offset = table_offset + table_clusters * self.cs;
        let mut block_offset = start_offset;
        for i in area_index..total {
            let off = if new_table[i as usize] != 0 {
                let off = new_table[i as usize];
                self.refblocks
                    .entry(off)
                    .or_insert_with(|| vec![0u8; self.cs as usize]);
                off
            } else {
                self.refblocks
                    .insert(block_offset, vec![0u8; self.cs as usize]);
                new_table[i as usize] = block_offset;
                block_offset += self.cs;
                new_table[i as usize]
            };
            let first_covered = i * self.rb_entries * self.cs;
            if first_covered < end_offset {
                let j0 = if first_covered < start_offset {
                    (start_offset - first_covered) / self.cs
                } else {
                    0
                };
                let end_index = ((end_offset - first_covered) / self.cs).min(self.rb_entries);
                let order = self.order;
                let rb = self.refblocks.get_mut(&off).expect("refblock");
                for j in j0..end_index {
                    rc_set(rb, order, j as usize, 1);
                }
            }
        }
        let mut bytes = Vec::with_capacity(table_size as usize * 8);
        for e in &new_table {
            bytes.extend_from_slice(&e.to_be_bytes());
        }
        self.write(table_offset, bytes);
        let mut sw = table_offset.to_be_bytes().to_vec();
        sw.extend_from_slice(&(table_clusters as u32).to_be_bytes());
        self.write(48, sw);
        let old_offset = self.reftable_offset;
        let old_size = self.reftable.len() as u64;
        self.reftable = new_table;
        self.reftable_offset = table_offset;
        self.free_clusters(old_offset, old_size * 8);
        Ok(end_offset)
    }
}

/// `qcow2_update_header`: the whole first cluster, built as the driver rewrites it; the
/// backing file and its format are written once `backing` is set (QEMU adds them after the
/// image is set up).
fn header_cluster(h: &Header, spec: &CreateSpec, backing: bool) -> Result<Vec<u8>, i32> {
    header::build(&HeaderImage {
        h,
        cluster_size: 1 << h.cluster_bits,
        unknown_fields: &[],
        backing_format: spec.backing_fmt.as_deref().filter(|_| backing),
        backing_file: spec.backing_file.as_deref().filter(|_| backing),
        data_file: spec.data_file.as_deref(),
        unknown_exts: &[],
    })
    .ok_or(libc::ENOSPC)
}

/// Lays out a new image. `spec` must have passed [`validate`]; `size` is already rounded up to
/// 512 bytes. Errors carry the errno qemu-img reports (EFBIG becomes "image size is too large").
pub fn build(spec: &CreateSpec) -> Result<Extents, CreateError> {
    let cs = spec.cluster_size;
    let bits = cs.trailing_zeros();
    let order = spec.refcount_bits.trailing_zeros();
    let mut img = Image {
        bits,
        cs,
        order,
        rb_entries: (cs * 8) >> order,
        reftable: vec![0u64; (cs / 8) as usize],
        reftable_offset: cs,
        refblocks: HashMap::new(),
        free_cluster_index: 0,
        out: Extents::default(),
    };
    // The bare header and the refcount table with one (empty) refcount block.
    let mut incompatible_features = 0;
    if spec.zstd {
        incompatible_features |= INCOMPAT_COMPRESSION;
    }
    if spec.extended_l2 {
        incompatible_features |= INCOMPAT_EXTL2;
    }
    if spec.data_file.is_some() {
        incompatible_features |= INCOMPAT_DATA_FILE;
    }
    let mut h = Header {
        version: spec.version,
        cluster_bits: bits,
        refcount_table_offset: cs,
        refcount_table_clusters: 1,
        incompatible_features,
        compatible_features: if spec.lazy_refcounts {
            COMPAT_LAZY_REFCOUNTS
        } else {
            0
        },
        refcount_order: order,
        compression_type: u8::from(spec.zstd),
        ..Header::default()
    };
    img.write(0, vec![0u8; cs as usize]);
    let mut rt = vec![0u8; 2 * cs as usize];
    rt[..8].copy_from_slice(&(2 * cs).to_be_bytes());
    img.write(cs, rt);
    img.reftable[0] = 2 * cs;
    img.refblocks.insert(2 * cs, vec![0u8; cs as usize]);
    let fail = |e: AllocErr| CreateError {
        errno: match e {
            AllocErr::Again => libc::EAGAIN,
            AllocErr::Errno(n) => n,
        },
        message: String::new(),
    };
    img.alloc_clusters(3 * cs).map_err(fail)?;
    let enospc = |errno: i32| CreateError {
        errno,
        message: String::new(),
    };
    img.write(0, header_cluster(&h, spec, false).map_err(enospc)?);

    // Truncate to the virtual size: grow L1 (exactly), then write the size field.
    let l2_bits = bits - if spec.extended_l2 { 4 } else { 3 };
    let shift = bits + l2_bits;
    let l1_size = spec.size.div_ceil(1u64 << shift);
    if l1_size > 0 {
        if l1_size > (i32::MAX as u64) / 8 || l1_size > MAX_L1_SIZE / 8 {
            return Err(CreateError {
                errno: libc::EFBIG,
                message: "Failed to grow the L1 table: File too large".into(),
            });
        }
        let bytes = l1_size * 8;
        let l1_offset = img.alloc_clusters(bytes).map_err(|e| {
            let mut err = fail(e);
            err.message = format!(
                "Failed to grow the L1 table: {}",
                crate::errno::strerror(err.errno)
            );
            err
        })?;
        img.write(l1_offset, vec![0u8; bytes as usize]);
        let mut d = (l1_size as u32).to_be_bytes().to_vec();
        d.extend_from_slice(&l1_offset.to_be_bytes());
        img.write(36, d);
        h.l1_size = l1_size as u32;
        h.l1_table_offset = l1_offset;
    }
    img.write(24, spec.size.to_be_bytes().to_vec());
    h.size = spec.size;
    h.refcount_table_offset = img.reftable_offset;
    h.refcount_table_clusters = (img.reftable.len() as u64 * 8 / cs) as u32;

    // Refcount blocks reach the file when the cache is flushed (at the latest on close).
    let mut blocks: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (off, data) in std::mem::take(&mut img.refblocks) {
        blocks.insert(off, data);
    }
    for (off, data) in blocks {
        img.write(off, data);
    }

    if let Some(name) = &spec.backing_file {
        if crate::host_bytes::encode(name).len() > 1023 {
            return Err(CreateError {
                errno: libc::EINVAL,
                message: String::new(),
            });
        }
        img.write(0, header_cluster(&h, spec, true).map_err(enospc)?);
    }
    Ok(img.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::qcow2::header::{EXT_FEATURE_TABLE, be32, be64};

    fn spec(size: u64, cs: u64, bits: u64) -> CreateSpec {
        CreateSpec {
            size,
            cluster_size: cs,
            refcount_bits: bits,
            ..CreateSpec::default()
        }
    }

    #[test]
    fn default_64m_layout() {
        let img = build(&spec(64 << 20, 65536, 16)).unwrap();
        let f = img.flatten();
        assert_eq!(f.len(), 196616);
        assert_eq!(be64(&f, 0x10000), 0x20000);
        assert_eq!(&f[0x20000..0x20008], &[0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(be64(&f, 40), 0x30000);
        assert_eq!(be32(&f, 36), 1);
        assert_eq!(be32(&f, 0x70), EXT_FEATURE_TABLE);
    }

    #[test]
    fn small_clusters_add_refblocks_after_l1() {
        // 026's image: L1 of 512 clusters at cluster 3, refblocks at 515 and 516.
        let f = build(&spec(1 << 30, 512, 16)).unwrap().flatten();
        assert_eq!(f.len(), 264704);
        assert_eq!(be64(&f, 0x200 + 8), 515 * 512);
        assert_eq!(be64(&f, 0x200 + 16), 516 * 512);
    }

    #[test]
    fn refcount_table_grows_for_large_images() {
        let f = build(&spec(16 << 30, 512, 64)).unwrap().flatten();
        assert_eq!(f.len(), 4264960);
        assert_ne!(be64(&f, 48), 512, "the refcount table moved");
    }

    #[test]
    fn validation_messages() {
        let mut s = spec(0, 1000, 16);
        assert!(
            validate(&s)
                .unwrap_err()
                .message
                .starts_with("Cluster size")
        );
        s.cluster_size = 65536;
        s.version = 2;
        s.lazy_refcounts = true;
        assert!(
            validate(&s)
                .unwrap_err()
                .message
                .starts_with("Lazy refcounts")
        );
        s.lazy_refcounts = false;
        s.refcount_bits = 8;
        assert!(
            validate(&s)
                .unwrap_err()
                .message
                .starts_with("Different refcount")
        );
        s.refcount_bits = 3;
        assert!(
            validate(&s)
                .unwrap_err()
                .message
                .starts_with("Refcount width")
        );
    }
}
