//! The metadata table caches (QEMU's Qcow2Cache): fixed slots, QEMU's lookup start slot and LRU
//! victim choice, so that evictions (and the writes and events they cause) happen exactly when
//! QEMU's do. The I/O side (entry flush, dependency flush) lives in `refcount.rs`, which owns
//! the driver state; this file is the pure bookkeeping.
//!
//! QEMU scans every slot on each lookup and each cache write; a 1 GiB image with 512-byte
//! clusters has 32768 L2 slots, so those scans dominated metadata-heavy work. Here the same
//! answers come from indexes kept beside the slots: the slot of each cached offset, the dirty
//! slots, and the unreferenced slots ordered as QEMU's victim scan would rank them.

use crate::block::int_map::IntMap;
use std::collections::VecDeque;
use std::rc::Rc;

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

/// A cached table. Shared (`Rc`) so that an entry write can hand the table to the file
/// without copying it; changing a table while its write is in flight copies it first.
pub type Table = Rc<Vec<u8>>;

#[derive(Default)]
struct Entry {
    /// 0 = empty slot
    offset: u64,
    /// allocated on first use: a 32 MiB L2 cache must not cost 32 MiB up front
    data: Option<Table>,
    refs: u32,
    lru: u64,
}

/// A fixed-size set of slot numbers.
struct SlotSet {
    words: Vec<u64>,
    len: usize,
}

impl SlotSet {
    fn new(n: usize, full: bool) -> Self {
        let mut words = vec![if full { u64::MAX } else { 0 }; n.div_ceil(64)];
        if full && !n.is_multiple_of(64) {
            *words.last_mut().expect("n > 0") = (1u64 << (n % 64)) - 1;
        }
        Self {
            words,
            len: if full { n } else { 0 },
        }
    }

    fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn insert(&mut self, i: usize) {
        if !self.contains(i) {
            self.words[i / 64] |= 1 << (i % 64);
            self.len += 1;
        }
    }

    fn remove(&mut self, i: usize) {
        if self.contains(i) {
            self.words[i / 64] &= !(1 << (i % 64));
            self.len -= 1;
        }
    }

    /// The smallest member in `from..end`.
    fn next_in(&self, from: usize, end: usize) -> Option<usize> {
        if self.len == 0 || from >= end {
            return None;
        }
        let mut w = from / 64;
        let mut bits = self.words[w] & (u64::MAX << (from % 64));
        loop {
            if bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                return (i < end).then_some(i);
            }
            w += 1;
            if w * 64 >= end {
                return None;
            }
            bits = self.words[w];
        }
    }
}

pub struct Cache {
    entries: Vec<Entry>,
    pub table_size: usize,
    /// the other cache must be flushed before any entry of this one is written
    pub depends: Option<CacheKind>,
    /// a file flush must precede the next entry write (after COW data reached the file)
    pub depends_on_flush: bool,
    lru_counter: u64,
    /// the slot of every cached (non-zero) offset
    slots: IntMap<u64, usize>,
    dirty: SlotSet,
    /// unreferenced slots never used since they were created or discarded (LRU stamp 0): the
    /// scan's first choice, ties going to the first one in scan order
    unused: SlotSet,
    /// (LRU stamp, slot) of the other unreferenced slots, oldest first. Stamps only grow, so
    /// a put appends; an entry whose slot was referenced, stamped again or discarded since is
    /// stale and skipped (and dropped when it reaches the front, or at a compaction).
    by_lru: VecDeque<(u64, usize)>,
    /// an evicted table's memory, for the next table read
    spare: Option<Vec<u8>>,
}

/// Where a lookup finished: the slot holding `offset`, or the victim to replace.
pub enum Lookup {
    Hit(usize),
    Miss(usize),
}

impl Cache {
    pub fn new(size: usize, table_size: usize) -> Self {
        Self {
            entries: (0..size).map(|_| Entry::default()).collect(),
            table_size,
            depends: None,
            depends_on_flush: false,
            lru_counter: 0,
            slots: IntMap::default(),
            dirty: SlotSet::new(size, false),
            unused: SlotSet::new(size, true),
            by_lru: VecDeque::new(),
            spare: None,
        }
    }

    /// QEMU's slot for an offset's scan to start at: hits and the choice among equally old
    /// victims depend on it.
    fn start_slot(&self, offset: u64) -> usize {
        ((offset / self.table_size as u64).wrapping_mul(4) % self.entries.len() as u64) as usize
    }

    /// What QEMU's scan from the start slot finds: the slot holding `offset`, else the
    /// unreferenced slot with the oldest LRU stamp (the first in scan order among equals).
    pub fn lookup(&mut self, offset: u64) -> Option<Lookup> {
        let start = self.start_slot(offset);
        let hit = if offset == 0 {
            // empty slots hold offset 0: the first one in scan order is the hit
            let n = self.entries.len();
            (start..n)
                .chain(0..start)
                .find(|&i| self.entries[i].offset == 0)
        } else {
            self.slots.get(&offset).copied()
        };
        if let Some(i) = hit {
            return Some(Lookup::Hit(i));
        }
        let victim = self
            .unused
            .next_in(start, self.entries.len())
            .or_else(|| self.unused.next_in(0, start))
            .or_else(|| self.oldest_stamped());
        victim.map(Lookup::Miss)
    }

    fn is_current(&self, (stamp, i): (u64, usize)) -> bool {
        let e = &self.entries[i];
        e.refs == 0 && e.lru == stamp
    }

    /// The unreferenced slot with the oldest non-zero stamp.
    fn oldest_stamped(&mut self) -> Option<usize> {
        while let Some(&front) = self.by_lru.front() {
            if self.is_current(front) {
                return Some(front.1);
            }
            self.by_lru.pop_front();
        }
        None
    }

    /// Records slot `i` as unreferenced with its stamp, or as unused without one.
    fn relist(&mut self, i: usize) {
        let e = &self.entries[i];
        if e.refs != 0 {
            return;
        }
        if e.lru == 0 {
            self.unused.insert(i);
            return;
        }
        self.by_lru.push_back((e.lru, i));
        if self.by_lru.len() > 2 * self.entries.len() + 16 {
            // stale records of busy slots pile up behind an old one: keep the current ones
            let mut queue = std::mem::take(&mut self.by_lru);
            queue.retain(|&r| self.is_current(r));
            self.by_lru = queue;
        }
    }

    /// Takes a reference to slot `i` (it stops being a victim).
    pub fn take_ref(&mut self, i: usize) {
        // a stamped record of the slot goes stale by itself
        self.unused.remove(i);
        self.entries[i].refs += 1;
    }

    pub fn put(&mut self, i: usize) {
        let e = &mut self.entries[i];
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            self.lru_counter += 1;
            e.lru = self.lru_counter;
            self.unused.remove(i);
        }
        self.relist(i);
    }

    pub fn offset(&self, i: usize) -> u64 {
        self.entries[i].offset
    }

    fn set_offset(&mut self, i: usize, offset: u64) {
        let old = std::mem::replace(&mut self.entries[i].offset, offset);
        if old != 0 && self.slots.get(&old) == Some(&i) {
            self.slots.remove(&old);
        }
        if offset != 0 {
            let prev = self.slots.insert(offset, i);
            debug_assert!(prev.is_none(), "offset {offset:#x} cached twice");
        }
    }

    pub fn mark_dirty(&mut self, i: usize) {
        self.dirty.insert(i);
    }

    pub fn is_dirty(&self, i: usize) -> bool {
        self.dirty.contains(i)
    }

    pub fn clear_dirty(&mut self, i: usize) {
        self.dirty.remove(i);
    }

    /// The first dirty slot at or after `from`, as QEMU's slot-order write loop reaches it.
    pub fn next_dirty(&self, from: usize) -> Option<usize> {
        self.dirty.next_in(from, self.entries.len())
    }

    /// The first slot holding `offset` (QEMU's qcow2_cache_is_table_offset).
    pub fn find(&self, offset: u64) -> Option<usize> {
        if offset == 0 {
            return self.entries.iter().position(|e| e.offset == 0);
        }
        self.slots.get(&offset).copied()
    }

    /// Drops a table whose cluster was freed (QEMU's qcow2_cache_discard).
    pub fn discard(&mut self, i: usize) {
        self.set_offset(i, 0);
        self.entries[i].lru = 0;
        self.dirty.remove(i);
        self.relist(i);
    }

    /// Empties slot `i` for a new table (offset 0 while it loads) and hands out memory for
    /// the table: the slot's own when nothing else holds it, else an earlier victim's.
    /// Contents are unspecified: the caller reads or fills the whole table.
    pub fn begin_load(&mut self, i: usize) -> Vec<u8> {
        self.set_offset(i, 0);
        let own = self.entries[i]
            .data
            .take()
            .and_then(|t| Rc::try_unwrap(t).ok());
        let spare = self.spare.take();
        let (buf, rest) = match own {
            Some(b) if b.len() == self.table_size => (b, spare),
            _ => (spare.unwrap_or_else(|| vec![0u8; self.table_size]), None),
        };
        self.spare = rest;
        buf
    }

    /// Installs a loaded table in slot `i` under `offset` (0 when the load failed).
    pub fn end_load(&mut self, i: usize, table: Vec<u8>, offset: u64) {
        self.entries[i].data = Some(Rc::new(table));
        self.set_offset(i, offset);
    }

    /// The table of slot `i`, shared, for writing it out.
    pub fn shared_table(&self, i: usize) -> Option<Table> {
        self.entries[i].data.clone()
    }

    pub fn table(&self, i: usize) -> &[u8] {
        self.entries[i].data.as_deref().map_or(&[], |t| t)
    }

    pub fn table_mut(&mut self, i: usize) -> &mut [u8] {
        match &mut self.entries[i].data {
            Some(t) => Rc::make_mut(t).as_mut_slice(),
            None => &mut [],
        }
    }

    pub fn be64(&self, i: usize, idx: usize) -> u64 {
        let d = &self.table(i)[idx * 8..idx * 8 + 8];
        u64::from_be_bytes(d.try_into().expect("8 bytes"))
    }

    pub fn set_be64(&mut self, i: usize, idx: usize, v: u64) {
        self.table_mut(i)[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Loads `offset` into slot `i` as cache_get does on a miss.
    fn load(c: &mut Cache, i: usize, offset: u64) {
        let buf = c.begin_load(i);
        c.end_load(i, buf, offset);
    }

    #[test]
    fn lookup_starts_at_the_offset_slot_and_picks_the_oldest_free_victim() {
        let mut c = Cache::new(4, 512);
        // offset 512 -> start slot (1*4)%4 = 0; all unused -> first in scan order
        match c.lookup(512) {
            Some(Lookup::Miss(i)) => assert_eq!(i, 0),
            _ => panic!("expected a miss"),
        }
        // stamps: slot 3 -> 1, slot 1 -> 2, slot 0 -> 3; slot 2 stays referenced
        for (i, off) in [(3, 2048), (1, 4096), (0, 512)] {
            load(&mut c, i, off);
            c.take_ref(i);
            c.put(i);
        }
        load(&mut c, 2, 8192);
        c.take_ref(2);
        match c.lookup(1024) {
            Some(Lookup::Miss(i)) => assert_eq!(i, 3),
            _ => panic!("expected a miss"),
        }
        assert!(matches!(c.lookup(512), Some(Lookup::Hit(0))));
        // a discarded slot is unused again: it goes first
        c.discard(1);
        assert!(matches!(c.lookup(1024), Some(Lookup::Miss(1))));
    }

    #[test]
    fn put_updates_lru_only_when_the_last_reference_goes() {
        let mut c = Cache::new(2, 512);
        c.take_ref(0);
        c.take_ref(0);
        c.put(0);
        assert_eq!(c.entries[0].lru, 0);
        c.put(0);
        assert_eq!(c.entries[0].lru, 1);
    }

    #[test]
    fn dirty_slots_come_in_slot_order() {
        let mut c = Cache::new(130, 512);
        for i in [129, 3, 64, 70] {
            c.mark_dirty(i);
        }
        c.clear_dirty(70);
        let mut seen = Vec::new();
        let mut i = 0;
        while let Some(d) = c.next_dirty(i) {
            seen.push(d);
            i = d + 1;
        }
        assert_eq!(seen, [3, 64, 129]);
    }

    /// QEMU's cache bookkeeping as it is written there: a scan of every slot.
    #[derive(Clone, Default)]
    struct Scan {
        offset: u64,
        refs: u32,
        lru: u64,
        dirty: bool,
    }

    fn scan_lookup(s: &[Scan], offset: u64, table_size: u64) -> Option<(bool, usize)> {
        let n = s.len();
        let start = ((offset / table_size).wrapping_mul(4) % n as u64) as usize;
        let mut victim = None;
        let mut min_lru = u64::MAX;
        for i in (start..n).chain(0..start) {
            if s[i].offset == offset {
                return Some((true, i));
            }
            if s[i].refs == 0 && s[i].lru < min_lru {
                min_lru = s[i].lru;
                victim = Some(i);
            }
        }
        victim.map(|i| (false, i))
    }

    #[derive(Clone, Debug)]
    enum Op {
        Get(u64),
        Put(usize),
        Dirty(usize),
        Clean(usize),
        Discard(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..24).prop_map(Op::Get),
            3 => (0usize..8).prop_map(Op::Put),
            2 => (0usize..8).prop_map(Op::Dirty),
            1 => (0usize..8).prop_map(Op::Clean),
            1 => (0u64..24).prop_map(Op::Discard),
        ]
    }

    proptest! {
        #[test]
        fn indexes_answer_as_the_full_scan(size in 1usize..8, ops in proptest::collection::vec(op(), 0..200)) {
            let ts = 512u64;
            let mut c = Cache::new(size, ts as usize);
            let mut s = vec![Scan::default(); size];
            let mut counter = 0u64;
            for op in ops {
                match op {
                    Op::Get(t) => {
                        let offset = t * ts;
                        let want = scan_lookup(&s, offset, ts);
                        let got = c.lookup(offset).map(|l| match l {
                            Lookup::Hit(i) => (true, i),
                            Lookup::Miss(i) => (false, i),
                        });
                        prop_assert_eq!(got, want);
                        if let Some((hit, i)) = want {
                            if !hit {
                                s[i].offset = offset;
                                load(&mut c, i, offset);
                            }
                            s[i].refs += 1;
                            c.take_ref(i);
                        }
                    }
                    Op::Put(i) => {
                        let i = i % size;
                        s[i].refs = s[i].refs.saturating_sub(1);
                        if s[i].refs == 0 {
                            counter += 1;
                            s[i].lru = counter;
                        }
                        c.put(i);
                    }
                    Op::Dirty(i) => {
                        s[i % size].dirty = true;
                        c.mark_dirty(i % size);
                    }
                    Op::Clean(i) => {
                        s[i % size].dirty = false;
                        c.clear_dirty(i % size);
                    }
                    Op::Discard(t) => {
                        let want = s.iter().position(|e| e.offset == t * ts);
                        prop_assert_eq!(c.find(t * ts), want);
                        if let Some(i) = want {
                            s[i] = Scan { refs: s[i].refs, ..Scan::default() };
                            c.discard(i);
                        }
                    }
                }
                let dirty: Vec<usize> = (0..size).filter(|&i| s[i].dirty).collect();
                let got: Vec<usize> = (0..size).filter(|&i| c.is_dirty(i)).collect();
                prop_assert_eq!(got, dirty);
                prop_assert_eq!(c.next_dirty(0), s.iter().position(|e| e.dirty));
            }
        }
    }
}
