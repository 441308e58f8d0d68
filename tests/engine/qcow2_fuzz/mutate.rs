//! Mutations aimed at the fields of a parsed [`Layout`]: a field set to 0, all ones, off by
//! one, pointed at another structure or past the end of the file, a flag bit flipped, a table
//! entry duplicated; the file cut at a structure boundary; a few random bytes. Each mutation
//! ends as concrete byte edits, so a failing case prints as a shell script.

use super::layout::{Field, Kind, Layout, OFFSET_MASK, be};
use super::rng::Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edit {
    Write { off: u64, bytes: Vec<u8> },
    Truncate { len: u64 },
}

#[derive(Clone, Debug)]
pub struct Mutation {
    /// the field class (`l2_entry`, `refcount_table_offset`, ...), `truncate` or `random_bytes`
    pub class: &'static str,
    /// what was done (`zero`, `past_eof`, `flip_copied`, ...)
    pub op: &'static str,
    /// for people: which field, old and new value
    pub what: String,
    pub edits: Vec<Edit>,
}

pub fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        match e {
            Edit::Write { off, bytes: new } => {
                let off = *off as usize;
                if let Some(slot) = bytes.get_mut(off..off + new.len()) {
                    slot.copy_from_slice(new);
                }
            }
            Edit::Truncate { len } => bytes.truncate(*len as usize),
        }
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

fn read(b: &[u8], f: &Field) -> u64 {
    if f.bits < 8 {
        (be(b, f.off, 1) >> f.shift) & mask(f.bits)
    } else {
        be(b, f.off, (f.bits / 8) as usize)
    }
}

/// The edit that stores `value` (truncated to the field's width) in `f`.
fn write(b: &[u8], f: &Field, value: u64) -> Edit {
    let value = value & mask(f.bits);
    if f.bits < 8 {
        let old = be(b, f.off, 1);
        let m = mask(f.bits) << f.shift;
        let byte = (old & !m) | (value << f.shift);
        return Edit::Write {
            off: f.off,
            bytes: vec![byte as u8],
        };
    }
    let n = (f.bits / 8) as usize;
    Edit::Write {
        off: f.off,
        bytes: value.to_be_bytes()[8 - n..].to_vec(),
    }
}

/// Feature bits QEMU knows (dirty, corrupt, external data file, compression type, extended
/// L2; lazy refcounts; bitmaps, raw external data) and a few it does not.
const FLAG_BITS: &[u32] = &[0, 1, 2, 3, 4, 5, 7, 31, 63];

fn field_mutation(b: &[u8], l: &Layout, f: &Field, rng: &mut Rng) -> Mutation {
    let old = read(b, f);
    let cs = l.cluster_size.max(512);
    let eof_cluster = l.file_len.div_ceil(cs) * cs;
    let mut ops: Vec<&'static str> = vec!["zero", "ones", "plus_one", "minus_one", "random"];
    match f.kind {
        Kind::Offset | Kind::Entry => {
            ops.extend(["point_at", "past_eof", "unaligned", "plus_cluster"]);
            if f.kind == Kind::Entry {
                ops.extend([
                    "flip_copied",
                    "flip_compressed",
                    "flip_zero",
                    "reserved_bit",
                    "duplicate",
                    "duplicate",
                ]);
            }
        }
        Kind::Count => ops.extend(["double", "huge", "huge"]),
        Kind::Flags => ops.extend(["flip_bit", "flip_bit", "flip_bit"]),
        Kind::Refcount | Kind::Other => {}
    }
    let op = rng.pick(&ops);
    // an entry keeps its flag bits when only its offset changes
    let with_offset = |off: u64| {
        if f.kind == Kind::Entry {
            (old & !OFFSET_MASK) | (off & OFFSET_MASK)
        } else {
            off
        }
    };
    let new = match op {
        "zero" => 0,
        "ones" => u64::MAX,
        "plus_one" => old.wrapping_add(1),
        "minus_one" => old.wrapping_sub(1),
        "random" => rng.next_u64(),
        "point_at" => {
            let s = &l.structs[rng.below(l.structs.len() as u64) as usize];
            with_offset(s.off)
        }
        "past_eof" => with_offset(match rng.below(4) {
            0 => eof_cluster,
            1 => eof_cluster + cs * rng.range(1, 64),
            2 => 1 << rng.range(32, 55),
            _ => OFFSET_MASK & !(cs - 1),
        }),
        "unaligned" => old.wrapping_add(if f.kind == Kind::Entry { 512 } else { 1 }),
        "plus_cluster" => with_offset((old & OFFSET_MASK).wrapping_add(cs)),
        "flip_copied" => old ^ (1 << 63),
        "flip_compressed" => old ^ (1 << 62),
        "flip_zero" => old ^ 1,
        "reserved_bit" => old ^ (1 << rng.pick(&[1u32, 5, 8, 56, 60, 61])),
        "duplicate" => {
            let siblings: Vec<&Field> = l
                .fields
                .iter()
                .filter(|g| g.table == f.table && g.off != f.off && read(b, g) != 0)
                .collect();
            if siblings.is_empty() {
                old
            } else {
                read(b, siblings[rng.below(siblings.len() as u64) as usize])
            }
        }
        "double" => old.wrapping_mul(2),
        "huge" => rng.pick(&[
            0x7fff_ffff,
            0x8000_0000,
            0xffff_fffe,
            1 << 32,
            1 << 40,
            1 << 62,
        ]),
        "flip_bit" => old ^ (1 << rng.pick(FLAG_BITS)),
        _ => unreachable!("{op}"),
    };
    let edit = write(b, f, new);
    let shown = new & mask(f.bits);
    Mutation {
        class: f.class,
        op,
        what: format!("{} {op}: 0x{old:x} -> 0x{shown:x}", f.name),
        edits: vec![edit],
    }
}

fn truncation(l: &Layout, rng: &mut Rng) -> Mutation {
    let s = &l.structs[rng.below(l.structs.len() as u64) as usize];
    let (len, at) = match rng.below(4) {
        0 => (s.off, "start"),
        1 => ((s.off + s.len).min(l.file_len), "end"),
        2 => ((s.off + s.len / 2).min(l.file_len), "middle"),
        _ => ((s.off + 1).min(l.file_len), "first byte"),
    };
    Mutation {
        class: "truncate",
        op: at,
        what: format!(
            "truncate to {len} ({at} of {} @0x{:x}+{})",
            s.class, s.off, s.len
        ),
        edits: vec![Edit::Truncate { len }],
    }
}

fn random_bytes(l: &Layout, rng: &mut Rng) -> Mutation {
    let s = &l.structs[rng.below(l.structs.len() as u64) as usize];
    let end = (s.off + s.len).min(l.file_len);
    let mut edits = Vec::new();
    for _ in 0..rng.range(1, 4) {
        let off = rng.range(s.off, end.max(s.off + 1) - 1);
        edits.push(Edit::Write {
            off,
            bytes: vec![rng.next_u64() as u8],
        });
    }
    Mutation {
        class: "random_bytes",
        op: s.class,
        what: format!(
            "{} random byte(s) in {} @0x{:x}",
            edits.len(),
            s.class,
            s.off
        ),
        edits,
    }
}

/// One mutation of `b` (the current bytes, laid out as `l`).
pub fn mutation(b: &[u8], l: &Layout, rng: &mut Rng) -> Mutation {
    if l.structs.is_empty() || l.fields.is_empty() {
        return Mutation {
            class: "random_bytes",
            op: "file",
            what: "random byte".into(),
            edits: vec![Edit::Write {
                off: rng.below(b.len().max(1) as u64),
                bytes: vec![rng.next_u64() as u8],
            }],
        };
    }
    match rng.weighted(&[80, 8, 12]) {
        0 => {
            // a class first, so that the thousands of refcounts don't drown the header
            let mut classes: Vec<&'static str> = l.fields.iter().map(|f| f.class).collect();
            classes.sort_unstable();
            classes.dedup();
            let class = rng.pick(&classes);
            let fields: Vec<&Field> = l.fields.iter().filter(|f| f.class == class).collect();
            let f = fields[rng.below(fields.len() as u64) as usize];
            field_mutation(b, l, f, rng)
        }
        1 => truncation(l, rng),
        _ => random_bytes(l, rng),
    }
}
