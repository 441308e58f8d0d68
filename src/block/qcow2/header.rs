//! The qcow2 header (cluster 0): parsing with QEMU's validation order and messages, and the
//! whole-cluster rewrite QEMU's qcow2_update_header does.

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

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
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

/// QEMU's validate_compression_type; zstd is refused here because we do not implement it.
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
            Err((
                "qcow2: zstd compression is not supported by this engine".into(),
                libc::ENOTSUP,
            ))
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
                name: String::from_utf8_lossy(&raw[..end]).into_owned(),
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
    b.extend_from_slice(&h.size.to_be_bytes());
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
        ext_add(&mut b, EXT_BACKING_FORMAT, fmt.as_bytes());
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
        let off = b.len() as u64;
        b.extend_from_slice(name.as_bytes());
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
            unknown_exts: &[],
        })
        .unwrap();
        assert_eq!(be32(&b, 0x70), EXT_FEATURE_TABLE);
        assert_eq!(be32(&b, 0x74), 384);
        assert_eq!(be32(&b, 0x1f8), 0);
        assert_eq!(b.len(), 65536);
    }
}
