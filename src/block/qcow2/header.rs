//! The qcow2 header (cluster 0): reading it as QEMU's qcow2_do_open does — the fixed fields,
//! the checks on them in QEMU's order and words, the header extensions and the backing file
//! name — and the whole-cluster rewrite qcow2_update_header does. The driver's open and
//! qemu-img's metadata-only opens (`info`, `check`, `create`'s backing probe) both read it here,
//! so a format bug has one place to be fixed.

use super::image_file::ImageFile;
use crate::block::luks_header::{self, HEADER_LEN, LuksInfo};
use crate::errno::strerror;
use crate::host_bytes::encode;

pub const MAGIC: u32 = 0x5146_49fb;
pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// QEMU's sizeof(QCowHeader): v3 fields plus compression_type and padding
pub const HEADER_SIZE: usize = 112;
pub const V2_HEADER_SIZE: usize = 72;
pub const MAX_REFTABLE_SIZE: u64 = 8 << 20;
pub const MAX_L1_SIZE: u64 = 32 << 20;
pub const MAX_SNAPSHOTS: u64 = 65536;
pub const SNAPSHOT_HEADER_SIZE: u64 = 40;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// the incompatible bits QEMU 10.0.2 knows (others make it refuse the image)
pub const INCOMPAT_MASK: u64 = 0x1f;
pub const COMPAT_LAZY_REFCOUNTS: u64 = 1 << 0;
pub const AUTOCLEAR_BITMAPS: u64 = 1 << 0;
pub const AUTOCLEAR_DATA_FILE_RAW: u64 = 1 << 1;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
pub const EXT_CRYPTO_HEADER: u32 = 0x0537_be77;
pub const EXT_BITMAPS: u32 = 0x2385_2875;
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// The fixed header fields (v2 defaults filled in for v2 images).
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

/// Big-endian fields, as every qcow2 structure stores them.
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An open failure: QEMU's message and the errno it returns.
pub type OpenError = (String, i32);

/// Parses the first HEADER_SIZE bytes; the checks and messages are QEMU's, in its order, up
/// to the point where more of the file is needed.
pub fn parse(b: &[u8]) -> Result<Header, OpenError> {
    let magic = be32(b, 0);
    if magic != MAGIC {
        return Err(("Image is not in qcow2 format".into(), libc::EINVAL));
    }
    let version = be32(b, 4);
    if !(2..=3).contains(&version) {
        return Err((
            format!("Unsupported qcow2 version {version}"),
            libc::ENOTSUP,
        ));
    }
    let cluster_bits = be32(b, 20);
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
        return Err((
            format!("Unsupported cluster size: 2^{cluster_bits}"),
            libc::EINVAL,
        ));
    }
    let mut h = Header {
        version,
        backing_file_offset: be64(b, 8),
        backing_file_size: be32(b, 16),
        cluster_bits,
        size: be64(b, 24),
        crypt_method: be32(b, 32),
        l1_size: be32(b, 36),
        l1_table_offset: be64(b, 40),
        refcount_table_offset: be64(b, 48),
        refcount_table_clusters: be32(b, 56),
        nb_snapshots: be32(b, 60),
        snapshots_offset: be64(b, 64),
        ..Header::default()
    };
    if version == 2 {
        h.refcount_order = 4;
        h.header_length = V2_HEADER_SIZE as u32;
    } else {
        h.incompatible_features = be64(b, 72);
        h.compatible_features = be64(b, 80);
        h.autoclear_features = be64(b, 88);
        h.refcount_order = be32(b, 96);
        h.header_length = be32(b, 100);
        if h.header_length < 104 {
            return Err(("qcow2 header too short".into(), libc::EINVAL));
        }
    }
    let cluster_size = 1u64 << cluster_bits;
    if u64::from(h.header_length) > cluster_size {
        return Err(("qcow2 header exceeds cluster size".into(), libc::EINVAL));
    }
    if h.backing_file_offset > cluster_size {
        return Err(("Invalid backing file offset".into(), libc::EINVAL));
    }
    if h.header_length as usize > 104 {
        h.compression_type = b[104];
    }
    Ok(h)
}

/// QEMU's validate_compression_type (a QEMU built with zstd, as 10.0.2 in Debian is).
pub fn check_compression(h: &Header) -> Result<(), OpenError> {
    match h.compression_type {
        0 => {
            if h.incompatible_features & INCOMPAT_COMPRESSION != 0 {
                return Err((
                    "qcow2: Compression type incompatible feature bit must not be set".into(),
                    libc::EINVAL,
                ));
            }
            Ok(())
        }
        1 => {
            if h.incompatible_features & INCOMPAT_COMPRESSION == 0 {
                return Err((
                    "qcow2: Compression type incompatible feature bit must be set".into(),
                    libc::EINVAL,
                ));
            }
            Ok(())
        }
        t => Err((
            format!("qcow2: unknown compression type: {t}"),
            libc::ENOTSUP,
        )),
    }
}

/// One entry of a feature-name table extension.
#[derive(Clone, Debug)]
pub struct Feature {
    pub kind: u8,
    pub bit: u8,
    pub name: String,
}

pub fn parse_feature_table(data: &[u8]) -> Vec<Feature> {
    data.chunks_exact(48)
        .map(|c| {
            let raw = &c[2..48];
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            Feature {
                kind: c[0],
                bit: c[1],
                name: crate::host_bytes::text_of(&raw[..end]),
            }
        })
        .collect()
}

/// QEMU's report_unsupported_feature.
pub fn unsupported_features_message(table: &[Feature], mut mask: u64) -> String {
    let mut parts: Vec<String> = Vec::new();
    for f in table {
        if f.name.is_empty() {
            break;
        }
        if f.kind == 0 && f.bit < 64 && mask & (1u64 << f.bit) != 0 {
            parts.push(f.name.chars().take(46).collect());
            mask &= !(1u64 << f.bit);
        }
    }
    if mask != 0 {
        parts.push(format!("Unknown incompatible feature: {mask:x}"));
    }
    format!("Unsupported qcow2 feature(s): {}", parts.join(", "))
}

/// The open flags that change what qcow2_do_open accepts.
#[derive(Clone, Copy, Debug)]
pub struct OpenMode {
    /// QEMU's BDRV_O_CHECK (`qemu-img check`): what the check reports is not refused at open
    pub check: bool,
    /// QEMU's BDRV_O_RDWR
    pub writable: bool,
}

/// The header as qcow2_do_open knows it once the L1 table's size is checked.
pub struct Opening {
    pub h: Header,
    /// the header fields past QEMU's sizeof(QCowHeader), kept for the rewrite
    pub unknown_fields: Vec<u8>,
    /// where the extensions end: at the backing file name, else at the end of cluster 0
    pub ext_end: u64,
    /// QEMU's l1_vm_state_index: the L1 entries the virtual size needs
    pub l1_vm_state_index: u64,
}

/// QEMU's error_setg_errno: the message, then the errno's text.
pub fn with_errno(msg: &str, e: i32) -> String {
    format!("{msg}: {}", strerror(e))
}

/// QEMU's qcow2_validate_table.
pub fn validate_table(
    offset: u64,
    entries: u64,
    entry_len: u64,
    max: u64,
    cs: u64,
    name: &str,
) -> Result<(), OpenError> {
    if entries > max / entry_len {
        return Err((format!("{name} too large"), libc::EFBIG));
    }
    if (i64::MAX as u64) - entries * entry_len < offset || offset & (cs - 1) != 0 {
        return Err((format!("{name} offset invalid"), libc::EINVAL));
    }
    Ok(())
}

/// qcow2_do_open from reading the header to checking the L1 table's size: every check on the
/// header fields, in QEMU's order and words.
pub fn read(file: &impl ImageFile, mode: OpenMode) -> Result<Opening, OpenError> {
    let hb = file
        .read_at(0, HEADER_SIZE)
        .map_err(|e| (with_errno("Could not read qcow2 header", e), e))?;
    let h = parse(&hb)?;
    let cs = h.cluster_size();
    let mut unknown_fields = Vec::new();
    if h.header_length as usize > HEADER_SIZE {
        unknown_fields = file
            .read_at(HEADER_SIZE as u64, h.header_length as usize - HEADER_SIZE)
            .map_err(|e| {
                (
                    with_errno("Could not read unknown qcow2 header fields", e),
                    e,
                )
            })?;
    }
    let ext_end = if h.backing_file_offset != 0 {
        h.backing_file_offset
    } else {
        cs
    };
    check_compression(&h)?;
    if h.incompatible_features & !INCOMPAT_MASK != 0 {
        let ex = read_extensions(
            file,
            &h,
            u64::from(h.header_length),
            ext_end,
            CryptoOpen::Skip,
        )
        .unwrap_or_default();
        return Err((
            unsupported_features_message(
                &ex.feature_table,
                h.incompatible_features & !INCOMPAT_MASK,
            ),
            libc::ENOTSUP,
        ));
    }
    if h.incompatible_features & INCOMPAT_CORRUPT != 0 && mode.writable && !mode.check {
        return Err((
            "qcow2: Image is corrupt; cannot be opened read/write".into(),
            libc::EACCES,
        ));
    }
    // 32 subclusters per cluster with extended L2 entries, each at least 512 bytes
    if h.extended_l2() && cs / 32 < 1 << MIN_CLUSTER_BITS {
        return Err((
            format!("Unsupported subcluster size: {}", cs / 32),
            libc::EINVAL,
        ));
    }
    if h.refcount_order > 6 {
        return Err((
            "Reference count entry width too large; may not exceed 64 bits".into(),
            libc::EINVAL,
        ));
    }
    if h.refcount_table_clusters == 0 && !mode.check {
        return Err((
            "Image does not contain a reference count table".into(),
            libc::EINVAL,
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
    // A check does not read the snapshot table at open (it checks it itself).
    if !mode.check {
        validate_table(
            h.snapshots_offset,
            u64::from(h.nb_snapshots),
            SNAPSHOT_HEADER_SIZE,
            SNAPSHOT_HEADER_SIZE * MAX_SNAPSHOTS,
            cs,
            "Snapshot table",
        )?;
    }
    validate_table(
        h.l1_table_offset,
        u64::from(h.l1_size),
        8,
        MAX_L1_SIZE,
        cs,
        "Active L1 table",
    )?;
    let l2_bits = h.cluster_bits - if h.extended_l2() { 4 } else { 3 };
    let shift = h.cluster_bits + l2_bits;
    // QEMU's size_to_l1 adds in unsigned 64 bits: a size within one L1 entry of 2^64 wraps to
    // 0 here and is refused after the open instead ([`check_total_sectors`]).
    let l1_vm_state_index = h.size.wrapping_add((1 << shift) - 1) >> shift;
    if l1_vm_state_index > i32::MAX as u64 {
        return Err(("Image is too big".into(), libc::EFBIG));
    }
    if u64::from(h.l1_size) < l1_vm_state_index {
        return Err(("L1 table is too small".into(), libc::EINVAL));
    }
    Ok(Opening {
        h,
        unknown_fields,
        ext_end,
        l1_vm_state_index,
    })
}

/// The encryption method, checked where QEMU sets encryption up (with the runtime options,
/// once the L1 table is read): an unknown method is QEMU's error. AES and LUKS images open
/// without a key only for `info` (see [`open_encryption`]).
pub fn check_encryption(h: &Header) -> Result<(), OpenError> {
    match h.crypt_method {
        0..=2 => Ok(()),
        m => Err((
            format!("Unsupported encryption method {}", m as i32),
            libc::EINVAL,
        )),
    }
}

/// QEMU's opening of the encryption layer once the extensions are read. An open that does no
/// I/O (`qemu-img info`, QEMU's BDRV_O_NO_IO) opens an AES image without its key; any other
/// needs the key, which this engine is never given (as `qemu-img`/`qemu-io` without
/// `--object secret`). A LUKS image was opened where its CRYPTO header extension was read;
/// without that extension it cannot open.
pub fn open_encryption(
    h: &Header,
    crypto_header: Option<(u64, u64)>,
    crypto: CryptoOpen,
) -> Result<(), OpenError> {
    match (h.crypt_method, crypto_header) {
        (1, _) => match crypto {
            CryptoOpen::Keyed { key_given } => Err(no_key(key_given)),
            _ => Ok(()),
        },
        (2, None) => Err((
            "Missing CRYPTO header for crypt method 2".into(),
            libc::EINVAL,
        )),
        _ => Ok(()),
    }
}

/// What reading the CRYPTO header extension does with the LUKS header it points at: QEMU
/// opens the encryption layer right there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CryptoOpen {
    /// a pass that only looks for other extensions (the feature table, the bitmaps)
    Skip,
    /// an open that does no I/O (`qemu-img info`): the header is read and checked, no key
    Keyless,
    /// an open that serves I/O needs the key; this engine cannot use one (`key_given`: the
    /// options named one)
    Keyed { key_given: bool },
}

/// The LUKS header behind a CRYPTO header extension, opened as `crypto` says.
fn open_luks(
    file: &impl ImageFile,
    offset: u64,
    length: u64,
    crypto: CryptoOpen,
) -> Result<Option<LuksInfo>, OpenError> {
    match crypto {
        CryptoOpen::Skip => return Ok(None),
        CryptoOpen::Keyed { key_given } => return Err(no_key(key_given)),
        CryptoOpen::Keyless => {}
    }
    let einval = |m: String| (m, libc::EINVAL);
    if (HEADER_LEN as u64) > length {
        return Err(einval(
            "Request for data outside of extension header".into(),
        ));
    }
    let raw = file
        .read_at(offset, HEADER_LEN)
        .map_err(|e| einval(with_errno("Could not read encryption header", e)))?;
    luks_header::parse(&raw).map(Some).map_err(einval)
}

/// An open that needs the key: QEMU's error without one; with one, this engine's limit.
fn no_key(key_given: bool) -> OpenError {
    let message = if key_given {
        "blockfault: reading or writing an encrypted qcow2 image is not supported by this engine (img info shows it)"
    } else {
        "Parameter 'encrypt.key-secret' is required for cipher"
    };
    (message.to_string(), libc::EINVAL)
}

/// The header extensions as qcow2_read_extensions keeps them.
#[derive(Default)]
pub struct Extensions {
    pub backing_format: Option<String>,
    pub feature_table: Vec<Feature>,
    /// the external data file's name (QEMU's image_data_file)
    pub data_file: Option<String>,
    /// extensions the rewrite keeps as they are, in the order found
    pub unknown: Vec<(u32, Vec<u8>)>,
    /// the bitmaps extension, when the autoclear bit vouches for it
    pub bitmaps: Option<BitmapsExt>,
    /// a bitmaps extension without its autoclear bit: ignored, and dropped by a writable open
    /// (QEMU warns once the extensions are read)
    pub bitmaps_dropped: bool,
    /// the CRYPTO header extension of a LUKS image: where the LUKS header is, its length
    pub crypto_header: Option<(u64, u64)>,
    /// the LUKS header it points at, when a keyless open read it
    pub luks: Option<LuksInfo>,
}

/// The bitmaps extension: where the bitmap directory is and how many entries it holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BitmapsExt {
    pub nb_bitmaps: u32,
    pub dir_size: u64,
    pub dir_offset: u64,
}

/// QCOW2_MAX_BITMAPS and QCOW2_MAX_BITMAP_DIRECTORY_SIZE.
pub const MAX_BITMAPS: u32 = 65535;
pub const MAX_BITMAP_DIRECTORY_SIZE: u64 = 1024 * MAX_BITMAPS as u64;

impl BitmapsExt {
    /// The extension's data as qcow2_update_header writes it.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(24);
        b.extend_from_slice(&self.nb_bitmaps.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&self.dir_size.to_be_bytes());
        b.extend_from_slice(&self.dir_offset.to_be_bytes());
        b
    }
}

/// qcow2_read_extensions' checks on a bitmaps extension the autoclear bit vouches for.
fn parse_bitmaps_ext(b: &[u8], cluster_size: u64) -> Result<BitmapsExt, OpenError> {
    let bad = |m: String| Err((m, libc::EINVAL));
    if be32(b, 4) != 0 {
        return bad("bitmaps_ext: Reserved field is not zero".into());
    }
    let ext = BitmapsExt {
        nb_bitmaps: be32(b, 0),
        dir_size: be64(b, 8),
        dir_offset: be64(b, 16),
    };
    if ext.nb_bitmaps > MAX_BITMAPS {
        return bad(format!(
            "bitmaps_ext: Image has {} bitmaps, exceeding the QEMU supported maximum of {MAX_BITMAPS}",
            ext.nb_bitmaps
        ));
    }
    if ext.nb_bitmaps == 0 {
        return bad("found bitmaps extension with zero bitmaps".into());
    }
    if !ext.dir_offset.is_multiple_of(cluster_size) {
        return bad("bitmaps_ext: invalid bitmap directory offset".into());
    }
    if ext.dir_size > MAX_BITMAP_DIRECTORY_SIZE {
        return bad(format!(
            "bitmaps_ext: bitmap directory size ({}) exceeds the maximum supported size ({MAX_BITMAP_DIRECTORY_SIZE})",
            ext.dir_size
        ));
    }
    Ok(ext)
}

/// QEMU's qcow2_read_extensions over `start..end`: one read per extension header, then its
/// data.
pub fn read_extensions(
    file: &impl ImageFile,
    h: &Header,
    start: u64,
    end: u64,
    crypto: CryptoOpen,
) -> Result<Extensions, OpenError> {
    let mut ex = Extensions::default();
    let mut offset = start;
    while offset < end {
        let b = file.read_at(offset, 8).map_err(|e| {
            (
                with_errno(
                    &format!("qcow2_read_extension: ERROR: pread fail from offset {offset}"),
                    e,
                ),
                libc::EINVAL,
            )
        })?;
        let magic = be32(&b, 0);
        let len = u64::from(be32(&b, 4));
        offset += 8;
        if offset > end || len > end - offset {
            return Err(("Header extension too large".into(), libc::EINVAL));
        }
        let data = || {
            file.read_at(offset, len as usize).map_err(|e| {
                (
                    with_errno("ERROR: ext_read: Failed to read header extension", e),
                    libc::EINVAL,
                )
            })
        };
        match magic {
            EXT_END => return Ok(ex),
            EXT_BACKING_FORMAT => {
                if len >= 16 {
                    return Err((
                        format!("ERROR: ext_backing_format: len={len} too large (>=16)"),
                        libc::EINVAL,
                    ));
                }
                ex.backing_format = Some(c_string(&data()?));
            }
            EXT_FEATURE_TABLE => ex.feature_table = parse_feature_table(&data()?),
            EXT_CRYPTO_HEADER => {
                if h.crypt_method != 2 {
                    return Err((
                        "CRYPTO header extension only expected with LUKS encryption method".into(),
                        libc::EINVAL,
                    ));
                }
                if len != 16 {
                    return Err((
                        format!("CRYPTO header extension size {len}, but expected size 16"),
                        libc::EINVAL,
                    ));
                }
                let b = data()?;
                let (offset, length) = (be64(&b, 0), be64(&b, 8));
                if offset % h.cluster_size() != 0 {
                    return Err((
                        format!(
                            "Encryption header offset '{offset}' is not a multiple of cluster size '{}'",
                            h.cluster_size()
                        ),
                        libc::EINVAL,
                    ));
                }
                ex.crypto_header = Some((offset, length));
                ex.unknown.push((magic, b));
                ex.luks = open_luks(file, offset, length, crypto)?;
            }
            EXT_BITMAPS => {
                if len != 24 {
                    return Err(("bitmaps_ext: Invalid extension length".into(), libc::EINVAL));
                }
                if h.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
                    ex.bitmaps_dropped = true;
                } else {
                    let b = file.read_at(offset, 24).map_err(|e| {
                        (with_errno("bitmaps_ext: Could not read ext header", e), e)
                    })?;
                    ex.bitmaps = Some(parse_bitmaps_ext(&b, h.cluster_size())?);
                }
            }
            EXT_DATA_FILE => {
                let name = file.read_at(offset, len as usize).map_err(|e| {
                    (
                        with_errno("ERROR: Could not read data file name", e),
                        libc::EINVAL,
                    )
                })?;
                ex.data_file = Some(c_string(&name));
            }
            _ => ex.unknown.push((magic, data()?)),
        }
        offset += len.div_ceil(8) * 8;
    }
    Ok(ex)
}

/// Bytes up to the first NUL, as C reads a name stored without its terminator; bytes that are
/// not UTF-8 are kept as [`crate::host_bytes`] text, so the name means the same file.
pub fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    crate::host_bytes::text_of(&b[..end])
}

/// qcow2_do_open's "read the backing file name" step.
pub fn read_backing_name(file: &impl ImageFile, h: &Header) -> Result<Option<String>, OpenError> {
    if h.backing_file_offset == 0 {
        return Ok(None);
    }
    let len = u64::from(h.backing_file_size);
    if len > 1023u64.min(h.cluster_size() - h.backing_file_offset) || len >= 4096 {
        return Err(("Backing file name too long".into(), libc::EINVAL));
    }
    let b = file
        .read_at(h.backing_file_offset, len as usize)
        .map_err(|e| (with_errno("Could not read backing file name", e), e))?;
    Ok(Some(c_string(&b)))
}

/// The backing file and its format as the block layer uses them (QEMU's C strings
/// bs->backing_file and bs->backing_format): an empty name means no backing file, an empty
/// format means probing it. The header rewrite keeps what was read, empty or not.
pub fn backing_of(file: Option<&str>, format: Option<&str>) -> Option<(String, Option<String>)> {
    let file = file.filter(|f| !f.is_empty())?;
    let format = format.filter(|f| !f.is_empty());
    Some((file.to_string(), format.map(str::to_string)))
}

/// The block layer's check once the driver has opened the image (QEMU's
/// bdrv_refresh_total_sectors): the virtual size, in whole sectors, may not exceed
/// BDRV_MAX_LENGTH (INT64_MAX aligned down to 1 GiB).
pub fn check_total_sectors(size: u64) -> Result<(), OpenError> {
    const BDRV_MAX_LENGTH: u64 = i64::MAX as u64 & !((1 << 30) - 1);
    if size / 512 * 512 > BDRV_MAX_LENGTH {
        return Err((
            with_errno("Could not refresh total sector count", libc::EFBIG),
            libc::EFBIG,
        ));
    }
    Ok(())
}

/// QEMU 10.0.2's own feature table, written into v3 headers of images with clusters > 4 KiB.
pub const FEATURES: [(u8, u8, &str); 8] = [
    (0, 0, "dirty bit"),
    (0, 1, "corrupt bit"),
    (0, 2, "external data file"),
    (0, 3, "compression type"),
    (0, 4, "extended L2 entries"),
    (1, 0, "lazy refcounts"),
    (2, 0, "bitmaps"),
    (2, 1, "raw external data"),
];

/// What the header rewrite needs besides the fixed fields.
pub struct HeaderImage<'a> {
    pub h: &'a Header,
    pub cluster_size: usize,
    pub unknown_fields: &'a [u8],
    pub backing_format: Option<&'a str>,
    pub backing_file: Option<&'a str>,
    /// the external data file's name, when the image has one
    pub data_file: Option<&'a str>,
    /// unknown extensions in the order QEMU keeps them (it prepends while reading)
    pub unknown_exts: &'a [(u32, Vec<u8>)],
}

fn ext_add(buf: &mut Vec<u8>, magic: u32, data: &[u8]) {
    buf.extend_from_slice(&magic.to_be_bytes());
    buf.extend_from_slice(&(data.len() as u32).to_be_bytes());
    buf.extend_from_slice(data);
    let pad = (8 - data.len() % 8) % 8;
    buf.extend(std::iter::repeat_n(0u8, pad));
}

/// Builds the complete cluster 0 as qcow2_update_header writes it; None when it does not fit
/// (QEMU's -ENOSPC).
pub fn build(img: &HeaderImage<'_>) -> Option<Vec<u8>> {
    let h = img.h;
    let mut b = Vec::with_capacity(img.cluster_size);
    b.extend_from_slice(&MAGIC.to_be_bytes());
    b.extend_from_slice(&h.version.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&h.cluster_bits.to_be_bytes());
    // QEMU writes its sector count (the size as opened, rounded down to whole sectors)
    b.extend_from_slice(&(h.size / 512 * 512).to_be_bytes());
    b.extend_from_slice(&h.crypt_method.to_be_bytes());
    b.extend_from_slice(&h.l1_size.to_be_bytes());
    b.extend_from_slice(&h.l1_table_offset.to_be_bytes());
    b.extend_from_slice(&h.refcount_table_offset.to_be_bytes());
    b.extend_from_slice(&h.refcount_table_clusters.to_be_bytes());
    b.extend_from_slice(&h.nb_snapshots.to_be_bytes());
    b.extend_from_slice(&h.snapshots_offset.to_be_bytes());
    if h.version >= 3 {
        b.extend_from_slice(&h.incompatible_features.to_be_bytes());
        b.extend_from_slice(&h.compatible_features.to_be_bytes());
        b.extend_from_slice(&h.autoclear_features.to_be_bytes());
        b.extend_from_slice(&h.refcount_order.to_be_bytes());
        let len = (HEADER_SIZE + img.unknown_fields.len()) as u32;
        b.extend_from_slice(&len.to_be_bytes());
        b.push(h.compression_type);
        b.extend_from_slice(&[0u8; 7]);
        b.extend_from_slice(img.unknown_fields);
    }
    if let Some(fmt) = img.backing_format {
        ext_add(&mut b, EXT_BACKING_FORMAT, &encode(fmt));
    }
    if let Some(name) = img.data_file {
        ext_add(&mut b, EXT_DATA_FILE, &encode(name));
    }
    if h.version >= 3 && img.cluster_size > 4096 {
        let mut t = Vec::with_capacity(FEATURES.len() * 48);
        for (kind, bit, name) in FEATURES {
            t.push(kind);
            t.push(bit);
            let mut n = [0u8; 46];
            n[..name.len()].copy_from_slice(name.as_bytes());
            t.extend_from_slice(&n);
        }
        ext_add(&mut b, EXT_FEATURE_TABLE, &t);
    }
    for (magic, data) in img.unknown_exts {
        ext_add(&mut b, *magic, data);
    }
    ext_add(&mut b, EXT_END, &[]);
    if let Some(name) = img.backing_file {
        // the bytes the name stands for (names read from an image need not be UTF-8)
        let name = encode(name);
        let off = b.len() as u64;
        b.extend_from_slice(&name);
        b[8..16].copy_from_slice(&off.to_be_bytes());
        b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
    }
    if b.len() > img.cluster_size {
        return None;
    }
    b.resize(img.cluster_size, 0);
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v3(cluster_bits: u32) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&cluster_bits.to_be_bytes());
        b[96..100].copy_from_slice(&4u32.to_be_bytes());
        b[100..104].copy_from_slice(&112u32.to_be_bytes());
        b
    }

    #[test]
    fn rejects_bad_magic_version_and_cluster_bits_with_qemus_words() {
        let mut b = v3(16);
        b[0] = 0;
        assert_eq!(parse(&b).unwrap_err().0, "Image is not in qcow2 format");
        let mut b = v3(16);
        b[7] = 4;
        assert_eq!(parse(&b).unwrap_err().0, "Unsupported qcow2 version 4");
        assert_eq!(
            parse(&v3(22)).unwrap_err().0,
            "Unsupported cluster size: 2^22"
        );
        let mut b = v3(9);
        b[100..104].copy_from_slice(&1024u32.to_be_bytes());
        assert_eq!(
            parse(&b).unwrap_err().0,
            "qcow2 header exceeds cluster size"
        );
    }

    /// An image file in memory, read as QEMU's file protocol reads (zeros past the end).
    struct Mem(Vec<u8>);

    impl ImageFile for Mem {
        fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
            let mut out = vec![0u8; len];
            let start = (offset as usize).min(self.0.len());
            let end = (offset as usize).saturating_add(len).min(self.0.len());
            out[..end - start].copy_from_slice(&self.0[start..end]);
            Ok(out)
        }
        fn write_at(&self, _: u64, _: &[u8]) -> Result<(), i32> {
            Err(libc::EROFS)
        }
        fn file_len(&self) -> u64 {
            self.0.len() as u64
        }
        fn set_len(&self, _: u64) -> Result<(), i32> {
            Err(libc::EROFS)
        }
        fn discard(&self, _: u64, _: u64) {}
    }

    const METADATA: OpenMode = OpenMode {
        check: false,
        writable: false,
    };
    const WRITABLE: OpenMode = OpenMode {
        writable: true,
        ..METADATA
    };

    /// A v3 image with 64 KiB clusters: reftable at cluster 1, `size` bytes, L1 as needed.
    fn image(size: u64) -> Vec<u8> {
        let mut b = v3(16);
        b.resize(1 << 16, 0);
        b[24..32].copy_from_slice(&size.to_be_bytes());
        let l1 = size.div_ceil(1 << 29).min(1 << 20) as u32;
        b[36..40].copy_from_slice(&l1.to_be_bytes());
        b[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        b[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        b[56..60].copy_from_slice(&1u32.to_be_bytes());
        b
    }

    fn read_err(b: Vec<u8>, mode: OpenMode) -> String {
        match read(&Mem(b), mode) {
            Ok(_) => "opened".into(),
            Err((msg, _)) => msg,
        }
    }

    #[test]
    fn a_header_cut_short_reads_as_zeros() {
        let mut b = image(1 << 20);
        b.truncate(80);
        assert_eq!(read_err(b, METADATA), "qcow2 header too short");
    }

    #[test]
    fn the_l1_size_check_wraps_as_qemus_size_to_l1_does() {
        assert_eq!(read_err(image(1 << 63), METADATA), "Image is too big");
        // within one L1 entry of 2^64 the sum wraps: the block layer refuses the size later
        let o = read(&Mem(image(u64::MAX)), METADATA).unwrap();
        assert_eq!(o.l1_vm_state_index, 0);
        assert_eq!(
            check_total_sectors(o.h.size).unwrap_err().0,
            "Could not refresh total sector count: File too large"
        );
        assert!(check_total_sectors(1 << 40).is_ok());
    }

    #[test]
    fn feature_bits_are_checked_as_qemu_does() {
        let mut b = image(1 << 20);
        b[72..80].copy_from_slice(&(INCOMPAT_EXTL2 | INCOMPAT_COMPRESSION).to_be_bytes());
        b[104] = 1;
        assert_eq!(read_err(b.clone(), METADATA), "opened");
        assert_eq!(read_err(b, WRITABLE), "opened");
        // zstd needs the compression type bit, and zlib must not have it
        let mut b = image(1 << 20);
        b[104] = 1;
        assert_eq!(
            read_err(b.clone(), WRITABLE),
            "qcow2: Compression type incompatible feature bit must be set"
        );
        b[72..80].copy_from_slice(&INCOMPAT_COMPRESSION.to_be_bytes());
        assert_eq!(read_err(b, WRITABLE), "opened");
        // extended L2 entries need 32 subclusters of at least 512 bytes
        let mut b = image(1 << 20);
        b[20..24].copy_from_slice(&13u32.to_be_bytes());
        b[72..80].copy_from_slice(&INCOMPAT_EXTL2.to_be_bytes());
        assert_eq!(read_err(b, METADATA), "Unsupported subcluster size: 256");
    }

    #[test]
    fn encryption_opens_as_qemus_without_a_key() {
        let mut h = parse(&v3(16)).unwrap();
        h.crypt_method = 0xffff_ffff;
        assert_eq!(
            check_encryption(&h).unwrap_err().0,
            "Unsupported encryption method -1"
        );
        h.crypt_method = 1;
        assert!(check_encryption(&h).is_ok());
        let keyed = CryptoOpen::Keyed { key_given: false };
        assert!(open_encryption(&h, None, CryptoOpen::Keyless).is_ok());
        let no_key = "Parameter 'encrypt.key-secret' is required for cipher";
        assert_eq!(open_encryption(&h, None, keyed).unwrap_err().0, no_key);
        let given = CryptoOpen::Keyed { key_given: true };
        assert!(
            open_encryption(&h, None, given)
                .unwrap_err()
                .0
                .starts_with("blockfault: ")
        );
        h.crypt_method = 2;
        assert_eq!(
            open_encryption(&h, None, CryptoOpen::Keyless)
                .unwrap_err()
                .0,
            "Missing CRYPTO header for crypt method 2"
        );
        // a LUKS header is opened where its extension is read
        assert!(open_encryption(&h, Some((0, 0)), keyed).is_ok());
        let f = Mem(vec![0; 4096]);
        assert_eq!(open_luks(&f, 0, 0, keyed).unwrap_err().0, no_key);
        assert!(
            open_luks(&f, 0, 0, given)
                .unwrap_err()
                .0
                .starts_with("blockfault: ")
        );
        assert_eq!(open_luks(&f, 0, 0, CryptoOpen::Skip).unwrap(), None);
        assert_eq!(
            open_luks(&f, 0, 591, CryptoOpen::Keyless).unwrap_err().0,
            "Request for data outside of extension header"
        );
        assert_eq!(
            open_luks(&f, 0, 592, CryptoOpen::Keyless).unwrap_err().0,
            "Volume is not in LUKS format"
        );
    }

    #[test]
    fn extensions_and_backing_name_stop_at_nul_and_empty_means_none() {
        let mut b = image(1 << 20);
        b[112..116].copy_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
        b[116..120].copy_from_slice(&6u32.to_be_bytes());
        b[120..126].copy_from_slice(b"raw\0xy");
        b[8..16].copy_from_slice(&0x200u64.to_be_bytes());
        b[16..20].copy_from_slice(&4u32.to_be_bytes());
        b[0x200..0x204].copy_from_slice(b"b\0cd");
        let f = Mem(b);
        let o = read(&f, METADATA).unwrap();
        let ex = read_extensions(&f, &o.h, 112, o.ext_end, CryptoOpen::Skip).unwrap();
        assert_eq!(ex.backing_format.as_deref(), Some("raw"));
        assert_eq!(read_backing_name(&f, &o.h).unwrap().as_deref(), Some("b"));
        assert_eq!(backing_of(Some(""), Some("raw")), None);
        assert_eq!(
            backing_of(Some("b"), Some("")),
            Some(("b".to_string(), None))
        );
    }

    #[test]
    fn unsupported_feature_names_come_from_the_table() {
        let t = vec![Feature {
            kind: 0,
            bit: 5,
            name: "future thing".into(),
        }];
        assert_eq!(
            unsupported_features_message(&t, (1 << 5) | (1 << 9)),
            "Unsupported qcow2 feature(s): future thing, Unknown incompatible feature: 200"
        );
    }

    #[test]
    fn rewrite_puts_the_feature_table_at_0x70_for_64k_clusters() {
        let h = parse(&v3(16)).unwrap();
        let b = build(&HeaderImage {
            h: &h,
            cluster_size: 65536,
            unknown_fields: &[],
            backing_format: None,
            backing_file: None,
            data_file: None,
            unknown_exts: &[],
        })
        .unwrap();
        assert_eq!(be32(&b, 0x70), EXT_FEATURE_TABLE);
        assert_eq!(be32(&b, 0x74), 384);
        assert_eq!(be32(&b, 0x1f8), 0);
        assert_eq!(b.len(), 65536);
    }
}
