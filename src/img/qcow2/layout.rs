//! qcow2 on-disk structures as qemu-img's `create`, `check` and `info` need them: the header,
//! its extensions, table entry masks and refcount entries of every width. Parsing is bounded:
//! a hostile header is an error, never a panic or an allocation sized by the file.

use std::fs::File;
use std::os::unix::fs::FileExt;

// The format's constants are the driver's: one definition for both readers of the format.
pub use crate::block::qcow2::header::{
    COMPAT_LAZY_REFCOUNTS, EXT_BACKING_FORMAT, EXT_BITMAPS, EXT_CRYPTO_HEADER as EXT_CRYPTO,
    EXT_DATA_FILE, EXT_END, EXT_FEATURE_TABLE, FEATURES, INCOMPAT_COMPRESSION, INCOMPAT_CORRUPT,
    INCOMPAT_DATA_FILE, INCOMPAT_DIRTY, INCOMPAT_EXTL2, MAGIC, MAX_CLUSTER_BITS, MAX_L1_SIZE,
    MAX_REFTABLE_SIZE, MIN_CLUSTER_BITS,
};
pub use crate::block::qcow2::state::{
    L1E_OFFSET_MASK, L2E_OFFSET_MASK, MAX_CLUSTER_OFFSET, OFLAG_COMPRESSED, OFLAG_COPIED,
    OFLAG_ZERO, REFT_OFFSET_MASK,
};

pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// Refcount entry `index` of a refcount block of `1 << order`-bit entries (sub-byte widths are
/// packed LSB first, wider ones big-endian).
pub fn get_refcount(block: &[u8], order: u32, index: u64) -> u64 {
    let i = index as usize;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            u64::from((block[i / per_byte] >> shift) & ((1u16 << bits) - 1) as u8)
        }
        3 => u64::from(block[i]),
        4 => u64::from(be16(block, i * 2)),
        5 => u64::from(be32(block, i * 4)),
        _ => be64(block, i * 8),
    }
}

pub fn set_refcount(block: &mut [u8], order: u32, index: u64, value: u64) {
    let i = index as usize;
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let per_byte = 8 / bits;
            let shift = (i % per_byte) * bits;
            let mask = (((1u16 << bits) - 1) as u8) << shift;
            block[i / per_byte] = (block[i / per_byte] & !mask) | (((value as u8) << shift) & mask);
        }
        3 => block[i] = value as u8,
        4 => block[i * 2..i * 2 + 2].copy_from_slice(&(value as u16).to_be_bytes()),
        5 => block[i * 4..i * 4 + 4].copy_from_slice(&(value as u32).to_be_bytes()),
        _ => put64(block, i * 8, value),
    }
}

/// Largest refcount a `1 << order`-bit entry holds.
pub fn refcount_max(order: u32) -> u64 {
    if order >= 6 {
        u64::MAX
    } else {
        (1u64 << (1 << order)) - 1
    }
}

/// One header extension as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extension {
    pub magic: u32,
    pub data: Vec<u8>,
}

/// The parsed header (cluster 0) of a qcow2 image.
#[derive(Clone, Debug, Default)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub crypt_method: u32,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: u8,
    pub extensions: Vec<Extension>,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTL2 != 0
    }
    /// Bytes per L2 entry.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() { 16 } else { 8 }
    }
    /// Entries per L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }
    /// Refcount entries per refcount block.
    pub fn refblock_entries(&self) -> u64 {
        (self.cluster_size() * 8) >> self.refcount_order
    }
    pub fn reftable_entries(&self) -> u64 {
        u64::from(self.refcount_table_clusters) * self.cluster_size() / 8
    }
    pub fn lazy_refcounts(&self) -> bool {
        self.compatible_features & COMPAT_LAZY_REFCOUNTS != 0
    }
}

/// Why an image could not be parsed, as QEMU words it for `qcow2_open` (the caller adds
/// "Could not open '...': ").
#[derive(Debug, PartialEq, Eq)]
pub struct OpenError(pub String);

fn read_exact_at(file: &File, buf: &mut [u8], at: u64) -> Result<(), OpenError> {
    file.read_exact_at(buf, at)
        .map_err(|e| OpenError(format!("Could not read qcow2 header: {}", io_msg(&e))))
}

pub fn io_msg(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => crate::errno::strerror(libc::EIO),
        _ => crate::errno::strerror(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Parses and validates the header the way `qcow2_do_open` does, with its messages.
/// `qcow2_validate_table`.
fn validate_table(
    offset: u64,
    entries: u64,
    entry_len: u64,
    max_bytes: u64,
    cs: u64,
    name: &str,
) -> Result<(), OpenError> {
    if entries > max_bytes / entry_len {
        return Err(OpenError(format!("{name} too large")));
    }
    if (i64::MAX as u64) - entries * entry_len < offset || !offset.is_multiple_of(cs) {
        return Err(OpenError(format!("{name} offset invalid")));
    }
    Ok(())
}

/// Parses and validates the header the way `qcow2_do_open` does, with its messages.
/// `for_check` is QEMU's `BDRV_O_CHECK` (some problems are left for the check to report).
pub fn read_header(file: &File) -> Result<Header, OpenError> {
    read_header_for(file, false)
}

/// [`read_header`]; `for_check` is QEMU's `BDRV_O_CHECK` (some problems are left for the check
/// to report).
pub fn read_header_for(file: &File, for_check: bool) -> Result<Header, OpenError> {
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut fixed = [0u8; 104];
    if file_len < 72 {
        return Err(OpenError("Image is not in qcow2 format".into()));
    }
    let avail = file_len.min(104) as usize;
    read_exact_at(file, &mut fixed[..avail], 0)?;
    if be32(&fixed, 0) != MAGIC {
        return Err(OpenError("Image is not in qcow2 format".into()));
    }
    let version = be32(&fixed, 4);
    if !(2..=3).contains(&version) {
        return Err(OpenError(format!("Unsupported qcow2 version {version}")));
    }
    let mut h = Header {
        version,
        backing_file_offset: be64(&fixed, 8),
        backing_file_size: be32(&fixed, 16),
        cluster_bits: be32(&fixed, 20),
        size: be64(&fixed, 24),
        crypt_method: be32(&fixed, 32),
        l1_size: be32(&fixed, 36),
        l1_table_offset: be64(&fixed, 40),
        refcount_table_offset: be64(&fixed, 48),
        refcount_table_clusters: be32(&fixed, 56),
        nb_snapshots: be32(&fixed, 60),
        snapshots_offset: be64(&fixed, 64),
        refcount_order: 4,
        header_length: 72,
        ..Header::default()
    };
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
        return Err(OpenError(format!(
            "Unsupported cluster size: 2^{}",
            h.cluster_bits
        )));
    }
    let cs = h.cluster_size();
    if version >= 3 {
        if avail < 104 {
            return Err(OpenError(
                "Could not read qcow2 header: Input/output error".into(),
            ));
        }
        h.incompatible_features = be64(&fixed, 72);
        h.compatible_features = be64(&fixed, 80);
        h.autoclear_features = be64(&fixed, 88);
        h.refcount_order = be32(&fixed, 96);
        h.header_length = be32(&fixed, 100);
        if h.header_length < 104 {
            return Err(OpenError("qcow2 header too short".into()));
        }
    }
    if u64::from(h.header_length) > cs {
        return Err(OpenError("qcow2 header exceeds cluster size".into()));
    }
    if h.header_length > 104 {
        let mut b = [0u8; 1];
        if file.read_exact_at(&mut b, 104).is_ok() {
            h.compression_type = b[0];
        }
    }
    // Header extensions, bounded by the first cluster (QEMU reads up to the backing file name
    // or the end of cluster 0).
    let ext_end = if h.backing_file_offset != 0 {
        h.backing_file_offset.min(cs)
    } else {
        cs
    };
    let mut off = u64::from(h.header_length);
    while off + 8 <= ext_end {
        let mut eh = [0u8; 8];
        if file.read_exact_at(&mut eh, off).is_err() {
            break;
        }
        let magic = be32(&eh, 0);
        let len = u64::from(be32(&eh, 4));
        off += 8;
        if magic == EXT_END {
            break;
        }
        if len > ext_end - off {
            return Err(OpenError("Header extension too large".into()));
        }
        let mut data = vec![0u8; len as usize];
        read_exact_at(file, &mut data, off)?;
        if magic == EXT_BACKING_FORMAT {
            h.backing_format = Some(String::from_utf8_lossy(&data).into_owned());
        }
        h.extensions.push(Extension { magic, data });
        off += len.div_ceil(8) * 8;
    }
    if h.backing_file_offset > cs {
        return Err(OpenError("Invalid backing file offset".into()));
    }
    if h.backing_file_offset != 0 {
        if h.backing_file_size > 1023
            || h.backing_file_offset > cs
            || u64::from(h.backing_file_size) > cs - h.backing_file_offset
        {
            return Err(OpenError("Backing file name too long".into()));
        }
        let mut name = vec![0u8; h.backing_file_size as usize];
        read_exact_at(file, &mut name, h.backing_file_offset)?;
        h.backing_file = Some(String::from_utf8_lossy(&name).into_owned());
    }
    if h.refcount_order > 6 {
        return Err(OpenError(
            "Reference count entry width too large; may not exceed 64 bits".into(),
        ));
    }
    let unknown = h.incompatible_features & !(0x1f);
    if unknown != 0 {
        return Err(OpenError(format!(
            "Unsupported qcow2 feature(s): Unknown incompatible feature: {unknown:x}"
        )));
    }
    if h.incompatible_features & INCOMPAT_CORRUPT != 0 {
        // qemu-img check/info open read-only and accept corrupt images.
    }
    let l2_bits = h.cluster_bits - if h.extended_l2() { 4 } else { 3 };
    let shift = h.cluster_bits + l2_bits;
    if h.refcount_table_clusters == 0 && !for_check {
        return Err(OpenError(
            "Image does not contain a reference count table".into(),
        ));
    }
    validate_table(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters),
        cs,
        MAX_REFTABLE_SIZE,
        cs,
        "Reference count table",
    )?;
    if u64::from(h.l1_size) > MAX_L1_SIZE / 8 {
        return Err(OpenError("Active L1 table too large".into()));
    }
    validate_table(
        h.l1_table_offset,
        u64::from(h.l1_size),
        8,
        MAX_L1_SIZE,
        cs,
        "Active L1 table",
    )?;
    if h.size > i64::MAX as u64 {
        return Err(OpenError(
            "Could not refresh total sector count: File too large".into(),
        ));
    }
    let min_l1 = h.size.div_ceil(1u64 << shift);
    if min_l1 > i32::MAX as u64 {
        return Err(OpenError("Image is too big".into()));
    }
    if min_l1 > u64::from(h.l1_size) {
        return Err(OpenError("L1 table is too small".into()));
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcount_widths_round_trip_and_pack_lsb_first() {
        for order in 0..=6u32 {
            let mut block = vec![0u8; 512];
            let max = refcount_max(order);
            let n = (512 * 8) >> order;
            for i in 0..n {
                set_refcount(&mut block, order, i, (i * 7 + 1) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_refcount(&block, order, i),
                    (i * 7 + 1) & max,
                    "order {order}"
                );
            }
        }
        let mut b = vec![0u8; 2];
        set_refcount(&mut b, 0, 1, 1);
        assert_eq!(b[0], 0b10);
        set_refcount(&mut b, 2, 2, 0xa);
        assert_eq!(b[1], 0x0a);
        let mut w = vec![0u8; 4];
        set_refcount(&mut w, 4, 1, 0x1234);
        assert_eq!(w, [0, 0, 0x12, 0x34]);
    }

    #[test]
    fn refcount_max_per_width() {
        assert_eq!(refcount_max(0), 1);
        assert_eq!(refcount_max(4), 0xffff);
        assert_eq!(refcount_max(6), u64::MAX);
    }
}
