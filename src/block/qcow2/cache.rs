//! The metadata table caches (QEMU's Qcow2Cache): fixed slots, QEMU's lookup start slot and LRU
//! victim choice, so that evictions (and the writes and events they cause) happen exactly when
//! QEMU's do. The I/O side (entry flush, dependency flush) lives in `refcount.rs`, which owns
//! the driver state; this file is the pure bookkeeping.
//!
//! A cache may have very many slots (`l2-cache-size` up to the whole disk's tables, in 512-byte
//! slices): QEMU allocates them lazily, and so do we. Only slots that were ever used are kept;
//! one never used is an empty slot, as QEMU's zeroed ones are.

use std::collections::{BTreeMap, HashMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKind {
    L2 = 0,
    Refcount = 1,
}

impl CacheKind {
    pub fn other(self) -> Self {
        match self {
            CacheKind::L2 => CacheKind::Refcount,
            CacheKind::Refcount => CacheKind::L2,
        }
    }
    pub fn idx(self) -> usize {
        self as usize
    }
}

#[derive(Default)]
pub struct Entry {
    /// 0 = empty slot
    pub offset: u64,
    /// allocated on first use: a 32 MiB L2 cache must not cost 32 MiB up front
    pub data: Vec<u8>,
    pub dirty: bool,
    pub refs: u32,
    pub lru: u64,
}

impl Entry {
    /// Taken by nothing and never used since it was emptied: QEMU's scan takes the first of
    /// these it meets as the victim, as nothing has a smaller LRU counter.
    fn is_fresh(&self) -> bool {
        self.refs == 0 && self.lru == 0
    }
}

pub struct Cache {
    /// the number of slots
    size: usize,
    /// the slots ever used, by index
    slots: BTreeMap<usize, Entry>,
    /// which slot holds a table offset
    by_offset: HashMap<u64, usize>,
    pub table_size: usize,
    /// the other cache must be flushed before any entry of this one is written
    pub depends: Option<CacheKind>,
    /// a file flush must precede the next entry write (after COW data reached the file)
    pub depends_on_flush: bool,
    pub lru_counter: u64,
}

/// Where a lookup finished: the slot holding `offset`, or the victim to replace.
pub enum Lookup {
    Hit(usize),
    Miss(usize),
}

impl Cache {
    pub fn new(size: usize, table_size: usize) -> Self {
        Self {
            size,
            slots: BTreeMap::new(),
            by_offset: HashMap::new(),
            table_size,
            depends: None,
            depends_on_flush: false,
            lru_counter: 0,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// QEMU starts the scan at a slot derived from the offset, so hits and the choice among
    /// equally old victims depend on it.
    pub fn lookup(&self, offset: u64) -> Option<Lookup> {
        if let Some(&i) = self.by_offset.get(&offset) {
            return Some(Lookup::Hit(i));
        }
        let n = self.size;
        let start = ((offset / self.table_size as u64).wrapping_mul(4) % n as u64) as usize;
        // The first fresh slot from `start` on wins outright; slots never used are fresh.
        let cyclic = self.slots.range(start..).chain(self.slots.range(..start));
        let mut expected = start;
        for (&i, e) in cyclic.clone() {
            if i != expected {
                return Some(Lookup::Miss(expected));
            }
            if e.is_fresh() {
                return Some(Lookup::Miss(i));
            }
            expected = if i + 1 == n { 0 } else { i + 1 };
        }
        if self.slots.len() < n {
            return Some(Lookup::Miss(expected));
        }
        // Every slot in use: the least recently used one nobody holds, first in scan order.
        let mut victim: Option<(u64, usize)> = None;
        for (&i, e) in cyclic {
            if e.refs == 0 && victim.is_none_or(|(lru, _)| e.lru < lru) {
                victim = Some((e.lru, i));
            }
        }
        victim.map(|(_, i)| Lookup::Miss(i))
    }

    /// The slot, created empty if it was never used.
    pub fn entry_mut(&mut self, i: usize) -> &mut Entry {
        self.slots.entry(i).or_default()
    }

    pub fn entry(&self, i: usize) -> Option<&Entry> {
        self.slots.get(&i)
    }

    /// Points slot `i` at a table offset (0: empty).
    pub fn set_offset(&mut self, i: usize, offset: u64) {
        let e = self.slots.entry(i).or_default();
        let old = std::mem::replace(&mut e.offset, offset);
        if old != 0 && self.by_offset.get(&old) == Some(&i) {
            self.by_offset.remove(&old);
        }
        if offset != 0 {
            self.by_offset.insert(offset, i);
        }
    }

    /// The slots that may be dirty, in slot order (QEMU walks all of them).
    pub fn used_slots(&self) -> Vec<usize> {
        self.slots.keys().copied().collect()
    }

    pub fn put(&mut self, i: usize) {
        let e = self.slots.entry(i).or_default();
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            self.lru_counter += 1;
            e.lru = self.lru_counter;
        }
    }

    pub fn mark_dirty(&mut self, i: usize) {
        self.entry_mut(i).dirty = true;
    }

    pub fn find(&self, offset: u64) -> Option<usize> {
        self.by_offset.get(&offset).copied()
    }

    /// Drops a table whose cluster was freed (QEMU's qcow2_cache_discard).
    pub fn discard(&mut self, i: usize) {
        self.set_offset(i, 0);
        let e = self.entry_mut(i);
        e.lru = 0;
        e.dirty = false;
    }

    pub fn table(&self, i: usize) -> &[u8] {
        &self.slots[&i].data
    }

    pub fn table_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.entry_mut(i).data
    }

    pub fn be64(&self, i: usize, idx: usize) -> u64 {
        let d = &self.slots[&i].data[idx * 8..idx * 8 + 8];
        u64::from_be_bytes(d.try_into().expect("8 bytes"))
    }

    pub fn set_be64(&mut self, i: usize, idx: usize, v: u64) {
        self.entry_mut(i).data[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occupy(c: &mut Cache, i: usize, offset: u64, lru: u64, refs: u32) {
        c.set_offset(i, offset);
        let e = c.entry_mut(i);
        e.lru = lru;
        e.refs = refs;
    }

    #[test]
    fn lookup_starts_at_the_offset_slot_and_picks_the_oldest_free_victim() {
        let mut c = Cache::new(4, 512);
        // offset 512 -> start slot (1*4)%4 = 0; all lru 0 -> first in scan order
        match c.lookup(512) {
            Some(Lookup::Miss(i)) => assert_eq!(i, 0),
            _ => panic!("expected a miss"),
        }
        occupy(&mut c, 0, 512, 5, 0);
        occupy(&mut c, 1, 2048, 3, 0);
        occupy(&mut c, 2, 2560, 6, 1);
        occupy(&mut c, 3, 3072, 4, 0);
        match c.lookup(1024) {
            Some(Lookup::Miss(i)) => assert_eq!(i, 1),
            _ => panic!("expected a miss"),
        }
        assert!(matches!(c.lookup(512), Some(Lookup::Hit(0))));
    }

    #[test]
    fn empty_slots_are_found_from_the_start_slot_on() {
        let mut c = Cache::new(8, 512);
        // offset 1024 -> start (2*4)%8 = 0; slots 0 and 1 taken -> 2
        occupy(&mut c, 0, 4096, 1, 0);
        occupy(&mut c, 1, 4608, 2, 0);
        assert!(matches!(c.lookup(1024), Some(Lookup::Miss(2))));
        // the scan wraps: start 4 (offset 512), slots 4..7 taken -> 2
        for i in 4..8 {
            occupy(&mut c, i, 8192 + 512 * i as u64, 3, 0);
        }
        assert!(matches!(c.lookup(512), Some(Lookup::Miss(2))));
        // a discarded slot is empty again
        c.discard(5);
        assert!(matches!(c.lookup(512), Some(Lookup::Miss(5))));
    }

    #[test]
    fn a_huge_cache_costs_only_what_it_holds() {
        let mut c = Cache::new(1 << 31, 512);
        occupy(&mut c, 0, 512 * 7, 1, 0);
        assert!(matches!(c.lookup(512 * 7), Some(Lookup::Hit(0))));
        assert!(matches!(c.lookup(0x1000_0000), Some(Lookup::Miss(_))));
        assert_eq!(c.used_slots(), vec![0]);
    }

    #[test]
    fn put_updates_lru_only_when_the_last_reference_goes() {
        let mut c = Cache::new(2, 512);
        c.entry_mut(0).refs = 2;
        c.put(0);
        assert_eq!(c.entry(0).unwrap().lru, 0);
        c.put(0);
        assert_eq!(c.entry(0).unwrap().lru, 1);
    }
}
