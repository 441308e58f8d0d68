//! The metadata overlap checks (QEMU's qcow2_check_metadata_overlap and
//! qcow2_pre_write_overlap_check): before qcow2 writes data or metadata to its file, it makes
//! sure the write does not land on metadata it knows of. A write that would is refused, the
//! image marked corrupt ("Preventing invalid write on metadata (overlaps with ...)") and the
//! node stops serving requests. Which sections are checked is the `overlap-check` option;
//! QEMU's default, `cached`, checks all but the inactive L2 tables, which must be read first.

use super::Qcow2;
use super::state::{L1E_OFFSET_MASK, REFT_OFFSET_MASK};
use crate::block::driver::IoResult;
use crate::block::node::Node;
use std::collections::BTreeMap;

pub const MAIN_HEADER: u32 = 1 << 0;
pub const ACTIVE_L1: u32 = 1 << 1;
pub const ACTIVE_L2: u32 = 1 << 2;
pub const REFCOUNT_TABLE: u32 = 1 << 3;
pub const REFCOUNT_BLOCK: u32 = 1 << 4;
pub const SNAPSHOT_TABLE: u32 = 1 << 5;
pub const INACTIVE_L1: u32 = 1 << 6;
pub const INACTIVE_L2: u32 = 1 << 7;
pub const BITMAP_DIRECTORY: u32 = 1 << 8;

/// The sections whose place never changes without the driver knowing (`constant`).
pub const CONSTANT: u32 =
    MAIN_HEADER | ACTIVE_L1 | REFCOUNT_TABLE | SNAPSHOT_TABLE | BITMAP_DIRECTORY;
/// What can be checked from memory (`cached`, the default).
pub const CACHED: u32 = CONSTANT | ACTIVE_L2 | REFCOUNT_BLOCK | INACTIVE_L1;
pub const ALL: u32 = CACHED | INACTIVE_L2;

/// The sections' names in messages, by bit.
const NAMES: [&str; 9] = [
    "qcow2_header",
    "active L1 table",
    "active L2 table",
    "refcount table",
    "refcount block",
    "snapshot table",
    "inactive L1 table",
    "inactive L2 table",
    "bitmap directory",
];

/// The boolean options that switch each section on or off, by bit.
pub const OPTION_NAMES: [&str; 9] = [
    "overlap-check.main-header",
    "overlap-check.active-l1",
    "overlap-check.active-l2",
    "overlap-check.refcount-table",
    "overlap-check.refcount-block",
    "overlap-check.snapshot-table",
    "overlap-check.inactive-l1",
    "overlap-check.inactive-l2",
    "overlap-check.bitmap-directory",
];

/// The checks the options ask for: a template (`overlap-check` or `overlap-check.template`,
/// which must agree), each section switched on or off on its own after it.
pub fn parse_options(
    mode: Option<&str>,
    template: Option<&str>,
    flag: impl Fn(&str) -> Option<bool>,
) -> Result<u32, String> {
    if let (Some(m), Some(t)) = (mode, template)
        && m != t
    {
        return Err(format!(
            "Conflicting values for qcow2 options 'overlap-check' ('{m}') and 'overlap-check.template' ('{t}')"
        ));
    }
    let mode = mode.or(template).unwrap_or("cached");
    let template = match mode {
        "none" => 0,
        "constant" => CONSTANT,
        "cached" => CACHED,
        "all" => ALL,
        other => {
            return Err(format!(
                "Unsupported value '{other}' for qcow2 option 'overlap-check'. Allowed are any of the following: none, constant, cached, all"
            ));
        }
    };
    let mut checks = 0;
    for (bit, name) in OPTION_NAMES.iter().enumerate() {
        if flag(name).unwrap_or(template & (1 << bit) != 0) {
            checks |= 1 << bit;
        }
    }
    Ok(checks)
}

/// `[a, a+alen)` and `[b, b+blen)` share a byte (QEMU's ranges_overlap).
fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// A table of cluster offsets held in memory (the active L1 table, the refcount table) that
/// also knows which offsets its entries point at. QEMU's checks for the active L2 tables and
/// the refcount blocks walk the whole table on every metadata write; with 512-byte clusters
/// that walk cost more than all the rest of a shrink. Reads go through the slice (`Deref`);
/// every change goes through a method, which keeps the index right.
#[derive(Clone, Default)]
pub struct PointerTable {
    entries: Vec<u64>,
    /// which bits of an entry are the offset
    mask: u64,
    /// the non-zero offsets the entries hold, with how many entries hold each
    targets: BTreeMap<u64, u32>,
}

impl PointerTable {
    pub fn new(entries: Vec<u64>, mask: u64) -> Self {
        let mut targets = BTreeMap::new();
        for &e in &entries {
            if e & mask != 0 {
                *targets.entry(e & mask).or_insert(0) += 1;
            }
        }
        Self {
            entries,
            mask,
            targets,
        }
    }

    /// An active L1 table.
    pub fn l1(entries: Vec<u64>) -> Self {
        Self::new(entries, L1E_OFFSET_MASK)
    }

    /// A refcount table.
    pub fn reftable(entries: Vec<u64>) -> Self {
        Self::new(entries, REFT_OFFSET_MASK)
    }

    fn forget(&mut self, e: u64) {
        let t = e & self.mask;
        if t != 0
            && let Some(n) = self.targets.get_mut(&t)
        {
            *n -= 1;
            if *n == 0 {
                self.targets.remove(&t);
            }
        }
    }

    pub fn set(&mut self, i: usize, v: u64) {
        let old = std::mem::replace(&mut self.entries[i], v);
        self.forget(old);
        if v & self.mask != 0 {
            *self.targets.entry(v & self.mask).or_insert(0) += 1;
        }
    }

    /// Whether an entry points at a cluster of `cs` bytes that `[offset, offset+size)` touches.
    fn points_into(&self, offset: u64, size: u64, cs: u64) -> bool {
        // overlaps(offset, size, t, cs) holds for t in (offset - cs, offset + size)
        let lo = offset.checked_sub(cs).map_or(0, |x| x + 1);
        let hi = offset.saturating_add(size);
        lo < hi && self.targets.range(lo..hi).next().is_some()
    }
}

impl std::ops::Deref for PointerTable {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        &self.entries
    }
}

impl<'a> IntoIterator for &'a PointerTable {
    type Item = &'a u64;
    type IntoIter = std::slice::Iter<'a, u64>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

impl Qcow2 {
    /// QEMU's qcow2_check_metadata_overlap: the first section (lowest bit) a write of `size`
    /// bytes at `offset` would hit, 0 for none, or the error reading inactive L1 tables.
    pub(crate) async fn check_metadata_overlap(
        &self,
        node: &Node,
        ign: u32,
        offset: u64,
        size: u64,
    ) -> IoResult<u32> {
        let (chk, cs) = {
            let st = self.st.borrow();
            (st.overlap_check & !ign, st.cluster_size)
        };
        if size == 0 {
            return Ok(0);
        }
        if chk & MAIN_HEADER != 0 && offset < cs {
            return Ok(MAIN_HEADER);
        }
        // the range, widened to whole clusters
        let size = ((offset & (cs - 1)) + size).div_ceil(cs) * cs;
        let offset = offset & !(cs - 1);
        let hit = |o: u64, l: u64| overlaps(offset, size, o, l);
        let snapshots = {
            let st = self.st.borrow();
            if chk & ACTIVE_L1 != 0
                && !st.l1.is_empty()
                && hit(st.l1_offset, st.l1.len() as u64 * 8)
            {
                return Ok(ACTIVE_L1);
            }
            if chk & REFCOUNT_TABLE != 0
                && !st.reftable.is_empty()
                && hit(st.reftable_offset, st.reftable.len() as u64 * 8)
            {
                return Ok(REFCOUNT_TABLE);
            }
            if chk & SNAPSHOT_TABLE != 0
                && st.snapshots_size != 0
                && hit(st.snapshots_offset, st.snapshots_size)
            {
                return Ok(SNAPSHOT_TABLE);
            }
            if chk & INACTIVE_L1 != 0
                && st
                    .snapshots
                    .iter()
                    .any(|&(l1, n)| n != 0 && hit(l1, u64::from(n) * 8))
            {
                return Ok(INACTIVE_L1);
            }
            if chk & ACTIVE_L2 != 0 && st.l1.points_into(offset, size, cs) {
                return Ok(ACTIVE_L2);
            }
            // QEMU looks at the entries up to max_reftable_index only; every entry past it is
            // zero (the index is the last non-zero entry, raised whenever one is set), so
            // looking at all of them gives the same answer.
            if chk & REFCOUNT_BLOCK != 0 && st.reftable.points_into(offset, size, cs) {
                return Ok(REFCOUNT_BLOCK);
            }
            if chk & INACTIVE_L2 == 0 {
                Vec::new()
            } else {
                st.snapshots.clone()
            }
        };
        for (l1_offset, l1_size) in snapshots {
            // QEMU validates the table as an L1 table first (qcow2_validate_table).
            let len = u64::from(l1_size) * 8;
            if u64::from(l1_size) > super::header::MAX_L1_SIZE / 8 {
                return Err(libc::EFBIG);
            }
            if (i64::MAX as u64) - len < l1_offset || l1_offset & (cs - 1) != 0 {
                return Err(libc::EINVAL);
            }
            let mut buf = vec![0u8; len as usize];
            crate::block::io::preadv(node.file(), l1_offset, &mut buf).await?;
            if buf.chunks_exact(8).any(|c| {
                let l2 = u64::from_be_bytes(c.try_into().expect("8 bytes")) & L1E_OFFSET_MASK;
                l2 != 0 && hit(l2, cs)
            }) {
                return Ok(INACTIVE_L2);
            }
        }
        let st = self.st.borrow();
        if chk & BITMAP_DIRECTORY != 0
            && let Some((dir_offset, dir_size)) = st.bitmap_directory
            && hit(dir_offset, dir_size)
        {
            return Ok(BITMAP_DIRECTORY);
        }
        Ok(0)
    }

    /// QEMU's qcow2_pre_write_overlap_check: a write that would hit metadata marks the image
    /// corrupt and fails with EIO; an error while checking fails the write with that error.
    pub(crate) async fn pre_write_overlap_check(
        &self,
        node: &Node,
        ign: u32,
        offset: u64,
        size: u64,
    ) -> IoResult {
        let hit = self.check_metadata_overlap(node, ign, offset, size).await?;
        if hit == 0 {
            return Ok(());
        }
        let name = NAMES[hit.trailing_zeros() as usize];
        self.signal_corruption(
            node,
            true,
            &format!("Preventing invalid write on metadata (overlaps with {name})"),
        )
        .await;
        Err(libc::EIO)
    }

    /// The check before guest data (or COW) is written: with an external data file the data
    /// goes there, away from the metadata, and nothing is checked (QEMU's `data_file`
    /// argument).
    pub(crate) async fn pre_write_data_overlap_check(
        &self,
        node: &Node,
        offset: u64,
        size: u64,
    ) -> IoResult {
        if self.st.borrow().data_file {
            return Ok(());
        }
        self.pre_write_overlap_check(node, 0, offset, size).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_and_single_switches() {
        assert_eq!(parse_options(None, None, |_| None), Ok(CACHED));
        assert_eq!(parse_options(Some("none"), Some("none"), |_| None), Ok(0));
        assert_eq!(
            parse_options(Some("none"), None, |n| (n == "overlap-check.inactive-l2")
                .then_some(true)),
            Ok(INACTIVE_L2)
        );
        assert_eq!(
            parse_options(None, Some("all"), |n| (n == "overlap-check.main-header")
                .then_some(false)),
            Ok(ALL & !MAIN_HEADER)
        );
        assert_eq!(
            parse_options(Some("constant"), Some("all"), |_| None).unwrap_err(),
            "Conflicting values for qcow2 options 'overlap-check' ('constant') and 'overlap-check.template' ('all')"
        );
        assert!(
            parse_options(None, Some("blubb"), |_| None)
                .unwrap_err()
                .starts_with("Unsupported value 'blubb' for qcow2 option 'overlap-check'.")
        );
    }

    #[test]
    fn pointer_table_answers_as_the_walk() {
        let cs = 512;
        let walk = |t: &PointerTable, offset: u64, size: u64| {
            t.iter().any(|&e| {
                let o = e & L1E_OFFSET_MASK;
                o != 0 && overlaps(offset, size, o, cs)
            })
        };
        // an unaligned pointer too (corrupt images have them), and flag bits
        let mut t = PointerTable::l1(vec![0, 1024 | (1 << 63), 4096 + 100, 0, 1024]);
        t.set(3, 8192);
        t.set(4, 0);
        for offset in (0..10240).step_by(256) {
            for size in [512, 1024, 4096] {
                assert_eq!(
                    t.points_into(offset, size, cs),
                    walk(&t, offset, size),
                    "{offset} {size}"
                );
            }
        }
        t.set(1, 0);
        assert!(!t.points_into(1024, 512, cs));
        assert!(t.points_into(4096, 512, cs));
    }

    #[test]
    fn ranges() {
        assert!(overlaps(0, 512, 511, 1));
        assert!(!overlaps(0, 512, 512, 1));
        assert!(!overlaps(0, 0, 0, 10));
    }
}
