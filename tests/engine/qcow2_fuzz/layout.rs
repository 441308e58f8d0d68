//! The layout of a qcow2 image read from its bytes: every metadata structure (where it is, how
//! long) and every field in it (where, how wide, what kind of value), so that mutations can aim
//! at fields instead of at random bytes. Reads defensively: this parses the unmutated images
//! qemu-img made, but must not panic on anything.

/// What a field holds, which decides the mutations that make sense for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// a file offset of a cluster-aligned structure
    Offset,
    /// a count or a size
    Count,
    /// a bit set of features or flags
    Flags,
    /// an L1, L2 or refcount-table entry: flag bits around an offset
    Entry,
    /// a refcount
    Refcount,
    /// anything else (magic, version, names, dates)
    Other,
}

/// One field: `bits` wide at byte `off` (big-endian), or, for refcounts narrower than a byte,
/// `bits` wide at bit `shift` of byte `off` (qcow2 packs those least significant bit first).
#[derive(Clone, Debug)]
pub struct Field {
    /// the field's class, the same for all fields of one kind (exclusions match on it)
    pub class: &'static str,
    /// where it is, for people: `l2[0x30000] #5`
    pub name: String,
    pub off: u64,
    pub bits: u32,
    pub shift: u32,
    pub kind: Kind,
    /// the table it belongs to (index into [`Layout::structs`]), for entry duplication
    pub table: Option<usize>,
}

/// One structure: a class (`l1`, `l2`, `refblock`, ...) and its byte range.
#[derive(Clone, Debug)]
pub struct Struct {
    pub class: &'static str,
    pub off: u64,
    pub len: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub cluster_size: u64,
    pub file_len: u64,
    pub structs: Vec<Struct>,
    pub fields: Vec<Field>,
}

/// Offset bits of L1/L2/refcount-table entries.
pub const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;

pub fn be(b: &[u8], off: u64, bytes: usize) -> u64 {
    let Ok(off) = usize::try_from(off) else {
        return 0;
    };
    b.get(off..off.saturating_add(bytes))
        .map(|s| s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
        .unwrap_or(0)
}

/// Entries of a table kept as fields: every non-zero one, and the first and last few zero ones
/// (allocating a fresh entry is a mutation too) — a 64 KiB L2 table has 8192 entries.
fn keep_entry(i: u64, n: u64, value: u64) -> bool {
    value != 0 || i < 3 || i + 2 >= n
}

impl Layout {
    fn push_struct(&mut self, class: &'static str, off: u64, len: u64) -> Option<usize> {
        if off == 0 || len == 0 || off >= self.file_len {
            return None;
        }
        // the same table reached twice (snapshots share L2 tables) is listed once
        if let Some(i) = self
            .structs
            .iter()
            .position(|s| s.class == class && s.off == off)
        {
            return Some(i);
        }
        self.structs.push(Struct { class, off, len });
        Some(self.structs.len() - 1)
    }

    fn field(&mut self, class: &'static str, name: String, off: u64, bytes: u32, kind: Kind) {
        if off + u64::from(bytes) <= self.file_len {
            self.fields.push(Field {
                class,
                name,
                off,
                bits: bytes * 8,
                shift: 0,
                kind,
                table: None,
            });
        }
    }

    /// The 8-byte entries of the table at `t`.
    fn entries(&mut self, b: &[u8], t: usize, class: &'static str, stride: u64) -> Vec<u64> {
        let Struct { off, len, .. } = self.structs[t].clone();
        let n = len / stride;
        let mut values = Vec::new();
        for i in 0..n.min(1 << 20) {
            let at = off + i * stride;
            if at + 8 > self.file_len {
                break;
            }
            let v = be(b, at, 8);
            values.push(v);
            if keep_entry(i, n, v) {
                self.fields.push(Field {
                    class,
                    name: format!("{}[0x{off:x}] #{i}", self.structs[t].class),
                    off: at,
                    bits: 64,
                    shift: 0,
                    kind: Kind::Entry,
                    table: Some(t),
                });
            }
        }
        values
    }
}

/// A LUKS header's fields (names by their first bytes; key slots in 48-byte records).
fn luks_header(l: &mut Layout, off: u64) {
    let Some(t) = l.push_struct("luks_header", off, 592) else {
        return;
    };
    let o = l.structs[t].off;
    let fields: &[(&'static str, u64, u32, Kind)] = &[
        ("luks_magic", 0, 4, Kind::Other),
        ("luks_version", 6, 2, Kind::Other),
        ("luks_cipher_name", 8, 4, Kind::Other),
        ("luks_cipher_mode", 40, 8, Kind::Other),
        ("luks_hash_spec", 72, 8, Kind::Other),
        ("luks_payload_offset", 104, 4, Kind::Count),
        ("luks_key_bytes", 108, 4, Kind::Count),
        ("luks_master_key_iters", 164, 4, Kind::Count),
        ("luks_uuid", 168, 8, Kind::Other),
    ];
    for &(class, at, bytes, kind) in fields {
        l.field(class, class.to_string(), o + at, bytes, kind);
    }
    for k in 0..8 {
        let s = o + 208 + 48 * k;
        let name = |f: &str| format!("LUKS key slot {k} {f}");
        l.field("luks_slot_active", name("active"), s, 4, Kind::Flags);
        l.field("luks_slot_iters", name("iterations"), s + 4, 4, Kind::Count);
        l.field(
            "luks_slot_offset",
            name("key offset"),
            s + 40,
            4,
            Kind::Count,
        );
        l.field("luks_slot_stripes", name("stripes"), s + 44, 4, Kind::Count);
    }
}

pub fn parse(b: &[u8]) -> Layout {
    let mut l = Layout {
        file_len: b.len() as u64,
        ..Layout::default()
    };
    let version = be(b, 4, 4);
    let cluster_bits = be(b, 20, 4);
    if !(9..=21).contains(&cluster_bits) {
        return l;
    }
    let cs = 1u64 << cluster_bits;
    l.cluster_size = cs;
    let header_len = if version >= 3 { be(b, 100, 4) } else { 72 };
    l.structs.push(Struct {
        class: "header",
        off: 0,
        len: header_len,
    });
    let header: &[(&'static str, u64, u32, Kind)] = &[
        ("magic", 0, 4, Kind::Other),
        ("version", 4, 4, Kind::Other),
        ("backing_file_offset", 8, 8, Kind::Offset),
        ("backing_file_size", 16, 4, Kind::Count),
        ("cluster_bits", 20, 4, Kind::Count),
        ("size", 24, 8, Kind::Count),
        ("crypt_method", 32, 4, Kind::Other),
        ("l1_size", 36, 4, Kind::Count),
        ("l1_table_offset", 40, 8, Kind::Offset),
        ("refcount_table_offset", 48, 8, Kind::Offset),
        ("refcount_table_clusters", 56, 4, Kind::Count),
        ("nb_snapshots", 60, 4, Kind::Count),
        ("snapshots_offset", 64, 8, Kind::Offset),
        ("incompatible_features", 72, 8, Kind::Flags),
        ("compatible_features", 80, 8, Kind::Flags),
        ("autoclear_features", 88, 8, Kind::Flags),
        ("refcount_order", 96, 4, Kind::Count),
        ("header_length", 100, 4, Kind::Count),
        ("compression_type", 104, 1, Kind::Other),
    ];
    for &(name, off, bytes, kind) in header {
        if off < header_len.max(72) {
            l.field(name, name.to_string(), off, bytes, kind);
        }
    }
    let incompatible = if version >= 3 { be(b, 72, 8) } else { 0 };
    let extended_l2 = incompatible & (1 << 4) != 0;
    let refcount_order = if version >= 3 { be(b, 96, 4) } else { 4 };

    // header extensions, up to the end of the first cluster
    let mut at = header_len.max(72);
    let ext_end = cs.min(l.file_len);
    while at + 8 <= ext_end {
        let ty = be(b, at, 4);
        let len = be(b, at + 4, 4);
        if ty == 0 {
            l.field(
                "ext_end",
                format!("end of extensions @0x{at:x}"),
                at,
                4,
                Kind::Other,
            );
            break;
        }
        l.push_struct("extension", at, 8 + len);
        l.field(
            "ext_type",
            format!("extension 0x{ty:x} type"),
            at,
            4,
            Kind::Other,
        );
        l.field(
            "ext_len",
            format!("extension 0x{ty:x} length"),
            at + 4,
            4,
            Kind::Count,
        );
        if ty == 0x2385_2875 {
            // bitmaps: nb_bitmaps, reserved, directory size, directory offset
            let d = at + 8;
            l.field("bitmaps_nb", "bitmaps nb_bitmaps".into(), d, 4, Kind::Count);
            l.field(
                "bitmaps_dir_size",
                "bitmap directory size".into(),
                d + 8,
                8,
                Kind::Count,
            );
            l.field(
                "bitmaps_dir_offset",
                "bitmap directory offset".into(),
                d + 16,
                8,
                Kind::Offset,
            );
            let dir_off = be(b, d + 16, 8);
            let dir_size = be(b, d + 8, 8);
            if let Some(t) = l.push_struct("bitmap_dir", dir_off, dir_size.min(1 << 20)) {
                let o = l.structs[t].off;
                l.field(
                    "bitmap_table_offset",
                    "bitmap 0 table offset".into(),
                    o,
                    8,
                    Kind::Offset,
                );
                l.field(
                    "bitmap_table_size",
                    "bitmap 0 table size".into(),
                    o + 8,
                    4,
                    Kind::Count,
                );
                l.field(
                    "bitmap_flags",
                    "bitmap 0 flags".into(),
                    o + 12,
                    4,
                    Kind::Flags,
                );
                l.field(
                    "bitmap_granularity",
                    "bitmap 0 granularity".into(),
                    o + 17,
                    1,
                    Kind::Count,
                );
                l.field(
                    "bitmap_name_size",
                    "bitmap 0 name size".into(),
                    o + 18,
                    2,
                    Kind::Count,
                );
                let table = be(b, o, 8);
                let size = be(b, o + 8, 4);
                if let Some(t) = l.push_struct("bitmap_table", table, (size * 8).min(1 << 20)) {
                    l.entries(b, t, "bitmap_table_entry", 8);
                }
            }
        }
        if ty == 0x0537_be77 {
            // CRYPTO header: where the LUKS header is and how long
            let d = at + 8;
            l.field(
                "crypto_offset",
                "crypto header offset".into(),
                d,
                8,
                Kind::Offset,
            );
            l.field(
                "crypto_length",
                "crypto header length".into(),
                d + 8,
                8,
                Kind::Count,
            );
            luks_header(&mut l, be(b, d, 8));
        }
        at = at.saturating_add(8 + len.div_ceil(8) * 8);
    }

    let backing_off = be(b, 8, 8);
    let backing_len = be(b, 16, 4);
    l.push_struct("backing_name", backing_off, backing_len);

    let l1_off = be(b, 40, 8);
    let l1_size = be(b, 36, 4);
    let l2_stride = if extended_l2 { 16 } else { 8 };
    let mut l1_tables = vec![(l1_off, l1_size)];

    // snapshot table
    let nb_snapshots = be(b, 60, 4);
    let mut s = be(b, 64, 8);
    let snap_start = s;
    for k in 0..nb_snapshots.min(64) {
        if s == 0 || s + 40 > l.file_len {
            break;
        }
        let name = |f: &str| format!("snapshot {k} {f}");
        l.field(
            "snap_l1_offset",
            name("l1_table_offset"),
            s,
            8,
            Kind::Offset,
        );
        l.field("snap_l1_size", name("l1_size"), s + 8, 4, Kind::Count);
        l.field("snap_id_size", name("id_str_size"), s + 12, 2, Kind::Count);
        l.field("snap_name_size", name("name_size"), s + 14, 2, Kind::Count);
        l.field(
            "snap_vm_state_size",
            name("vm_state_size"),
            s + 32,
            4,
            Kind::Count,
        );
        l.field(
            "snap_extra_size",
            name("extra_data_size"),
            s + 36,
            4,
            Kind::Count,
        );
        let extra = be(b, s + 36, 4);
        if extra >= 16 {
            l.field(
                "snap_vm_state_large",
                name("vm_state_size_large"),
                s + 40,
                8,
                Kind::Count,
            );
            l.field("snap_disk_size", name("disk_size"), s + 48, 8, Kind::Count);
        }
        l1_tables.push((be(b, s, 8), be(b, s + 8, 4)));
        let len = 40 + extra + be(b, s + 12, 2) + be(b, s + 14, 2);
        s = s.saturating_add(len.div_ceil(8) * 8);
    }
    if nb_snapshots > 0 {
        l.push_struct("snapshot_table", snap_start, s.saturating_sub(snap_start));
    }

    // L1 tables (the active one, then each snapshot's) and the L2 tables they point at
    for (i, &(off, size)) in l1_tables.iter().enumerate() {
        let class = if i == 0 { "l1" } else { "snap_l1" };
        let Some(t) = l.push_struct(class, off, (size * 8).min(1 << 24)) else {
            continue;
        };
        let entry_class = if i == 0 { "l1_entry" } else { "snap_l1_entry" };
        for e in l.entries(b, t, entry_class, 8) {
            let l2 = e & OFFSET_MASK;
            if l2 != 0
                && let Some(t2) = l.push_struct("l2", l2, cs)
                && !l.fields.iter().any(|f| f.table == Some(t2))
            {
                for (j, v) in l
                    .entries(b, t2, "l2_entry", l2_stride)
                    .into_iter()
                    .enumerate()
                {
                    if extended_l2 && v != 0 {
                        let at = l2 + j as u64 * 16 + 8;
                        l.field(
                            "l2_bitmap",
                            format!("l2[0x{l2:x}] #{j} bitmap"),
                            at,
                            8,
                            Kind::Flags,
                        );
                    }
                }
            }
        }
    }

    // refcount table and blocks
    let rt_off = be(b, 48, 8);
    let rt_clusters = be(b, 56, 4);
    if let Some(t) = l.push_struct("reftable", rt_off, (rt_clusters * cs).min(1 << 24)) {
        let bits = 1u64 << refcount_order.min(6);
        for e in l.entries(b, t, "reftable_entry", 8) {
            let rb = e & OFFSET_MASK;
            let Some(tb) = l.push_struct("refblock", rb, cs) else {
                continue;
            };
            let n = cs * 8 / bits;
            for i in 0..n {
                let bit = i * bits;
                let (off, shift) = if bits < 8 {
                    (rb + bit / 8, (bit % 8) as u32)
                } else {
                    (rb + bit / 8, 0)
                };
                if off >= l.file_len {
                    break;
                }
                let byte_len = (bits / 8).max(1) as usize;
                let v = be(b, off, byte_len);
                let v = if bits < 8 {
                    (v >> shift) & ((1 << bits) - 1)
                } else {
                    v
                };
                if keep_entry(i, n, v) {
                    l.fields.push(Field {
                        class: "refcount",
                        name: format!("refblock[0x{rb:x}] #{i}"),
                        off,
                        bits: bits as u32,
                        shift,
                        kind: Kind::Refcount,
                        table: Some(tb),
                    });
                }
            }
        }
    }
    l
}
