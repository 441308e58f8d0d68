//! The metadata table caches (QEMU's Qcow2Cache): fixed slots, QEMU's lookup start slot and LRU
//! victim choice, so that evictions (and the writes and events they cause) happen exactly when
//! QEMU's do. The I/O side (entry flush, dependency flush) lives in `refcount.rs`, which owns
//! the driver state; this file is the pure bookkeeping.
//!
//! A cache may have very many slots (`l2-cache-size` up to the whole disk's tables, in 512-byte
//! slices): QEMU allocates them lazily, and so do we. Only slots that were ever used are kept;
//! one never used is an empty slot, as QEMU's zeroed ones are.
//!
//! QEMU scans every slot on each lookup and each cache write; a 1 GiB image with 512-byte
//! clusters has 32768 L2 slots, so those scans dominated metadata-heavy work. Here the same
//! answers come from indexes kept beside the slots, all as sparse as the slots themselves: the
//! slot of each cached offset, the dirty slots, the slots that are not fresh, and the
//! unreferenced slots ordered as QEMU's victim scan would rank them.

use super::state::rc_set;
use crate::block::int_map::IntMap;
use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
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
    /// the bytes of the table that may differ from the file's copy: changed since the table
    /// was read from the file or last handed to it for writing (the whole table when it was
    /// filled without a read)
    unwritten: Option<Range<usize>>,
}

impl Entry {
    /// Taken by nothing and never used since it was emptied: QEMU's scan takes the first of
    /// these it meets as the victim, as nothing has a smaller LRU counter.
    fn is_fresh(&self) -> bool {
        self.refs == 0 && self.lru == 0
    }
}

/// A set of slot numbers, stored by 64-slot word, only the words with a member kept.
#[derive(Default)]
struct SparseSlots {
    words: IntMap<usize, u64>,
    len: usize,
}

impl SparseSlots {
    fn insert(&mut self, i: usize) {
        let w = self.words.entry(i / 64).or_default();
        let bit = 1u64 << (i % 64);
        if *w & bit == 0 {
            *w |= bit;
            self.len += 1;
        }
    }

    fn remove(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(&(i / 64)) {
            let bit = 1u64 << (i % 64);
            if *w & bit != 0 {
                *w &= !bit;
                self.len -= 1;
                if *w == 0 {
                    self.words.remove(&(i / 64));
                }
            }
        }
    }

    /// The smallest non-member in `from..end`. Each word looked at is either absent (the
    /// answer is in it) or holds a member, so this costs at most one look per kept word.
    fn next_absent(&self, from: usize, end: usize) -> Option<usize> {
        let mut i = from;
        while i < end {
            let w = self.words.get(&(i / 64)).copied().unwrap_or(0);
            let free = !w & (u64::MAX << (i % 64));
            if free != 0 {
                let found = (i / 64) * 64 + free.trailing_zeros() as usize;
                return (found < end).then_some(found);
            }
            i = (i / 64 + 1) * 64;
        }
        None
    }
}

pub struct Cache {
    /// the number of slots
    size: usize,
    /// the slots ever used
    entries: IntMap<usize, Entry>,
    pub table_size: usize,
    /// the other cache must be flushed before any entry of this one is written
    pub depends: Option<CacheKind>,
    /// a file flush must precede the next entry write (after COW data reached the file)
    pub depends_on_flush: bool,
    lru_counter: u64,
    /// the slot of every cached (non-zero) offset
    slots: IntMap<u64, usize>,
    /// dirty slots, in slot order as QEMU's write loop visits them
    dirty: BTreeSet<usize>,
    /// slots that are not fresh (referenced, or used since they were created or discarded);
    /// every other slot is the scan's first choice, ties going to the first in scan order
    stale: SparseSlots,
    /// (LRU stamp, slot) of the unreferenced slots with a stamp, oldest first. Stamps only
    /// grow, so a put appends; an entry whose slot was referenced, stamped again or discarded
    /// since is outdated and skipped (and dropped when it reaches the front, or at a compaction).
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
            size,
            entries: IntMap::default(),
            table_size,
            depends: None,
            depends_on_flush: false,
            lru_counter: 0,
            slots: IntMap::default(),
            dirty: BTreeSet::new(),
            stale: SparseSlots::default(),
            by_lru: VecDeque::new(),
            spare: None,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// QEMU's slot for an offset's scan to start at: hits and the choice among equally old
    /// victims depend on it.
    fn start_slot(&self, offset: u64) -> usize {
        ((offset / self.table_size as u64).wrapping_mul(4) % self.size as u64) as usize
    }

    fn slot_offset(&self, i: usize) -> u64 {
        self.entries.get(&i).map_or(0, |e| e.offset)
    }

    /// The first slot in scan order from `start` holding offset 0 (empty).
    fn first_empty(&self, start: usize) -> Option<usize> {
        (start..self.size)
            .chain(0..start)
            .find(|&i| self.slot_offset(i) == 0)
    }

    /// What QEMU's scan from the start slot finds: the slot holding `offset`, else the
    /// unreferenced slot with the oldest LRU stamp (the first in scan order among equals).
    pub fn lookup(&mut self, offset: u64) -> Option<Lookup> {
        if self.size == 0 {
            return None;
        }
        let start = self.start_slot(offset);
        let hit = if offset == 0 {
            // empty slots hold offset 0: the first one in scan order is the hit
            self.first_empty(start)
        } else {
            self.slots.get(&offset).copied()
        };
        if let Some(i) = hit {
            return Some(Lookup::Hit(i));
        }
        let victim = if self.stale.len < self.size {
            self.stale
                .next_absent(start, self.size)
                .or_else(|| self.stale.next_absent(0, start))
        } else {
            None
        };
        victim.or_else(|| self.oldest_stamped()).map(Lookup::Miss)
    }

    fn is_current(&self, (stamp, i): (u64, usize)) -> bool {
        self.entries
            .get(&i)
            .is_some_and(|e| e.refs == 0 && e.lru == stamp)
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

    /// Files slot `i` in the indexes after its references or stamp changed.
    fn relist(&mut self, i: usize) {
        let (fresh, refs, lru) = self
            .entries
            .get(&i)
            .map_or((true, 0, 0), |e| (e.is_fresh(), e.refs, e.lru));
        if fresh {
            self.stale.remove(i);
            return;
        }
        self.stale.insert(i);
        if refs != 0 {
            // a stamped record of the slot goes stale by itself
            return;
        }
        self.by_lru.push_back((lru, i));
        if self.by_lru.len() > 2 * self.entries.len() + 16 {
            // outdated records of busy slots pile up behind an old one: keep the current ones
            let mut queue = std::mem::take(&mut self.by_lru);
            queue.retain(|&r| self.is_current(r));
            self.by_lru = queue;
        }
    }

    fn entry_mut(&mut self, i: usize) -> &mut Entry {
        self.entries.entry(i).or_default()
    }

    /// Takes a reference to slot `i` (it stops being a victim).
    pub fn take_ref(&mut self, i: usize) {
        self.entry_mut(i).refs += 1;
        self.stale.insert(i);
    }

    pub fn put(&mut self, i: usize) {
        let counter = self.lru_counter + 1;
        let e = self.entry_mut(i);
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            e.lru = counter;
            self.lru_counter = counter;
        }
        self.relist(i);
    }

    pub fn offset(&self, i: usize) -> u64 {
        self.slot_offset(i)
    }

    fn set_offset(&mut self, i: usize, offset: u64) {
        let old = std::mem::replace(&mut self.entry_mut(i).offset, offset);
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
        self.dirty.contains(&i)
    }

    pub fn clear_dirty(&mut self, i: usize) {
        self.dirty.remove(&i);
    }

    /// The first dirty slot at or after `from`, as QEMU's slot-order write loop reaches it.
    pub fn next_dirty(&self, from: usize) -> Option<usize> {
        self.dirty.range(from..).next().copied()
    }

    /// The first slot holding `offset` (QEMU's qcow2_cache_is_table_offset).
    pub fn find(&self, offset: u64) -> Option<usize> {
        if offset == 0 {
            return self.first_empty(0);
        }
        self.slots.get(&offset).copied()
    }

    /// Drops a table whose cluster was freed (QEMU's qcow2_cache_discard).
    pub fn discard(&mut self, i: usize) {
        self.set_offset(i, 0);
        let e = self.entry_mut(i);
        e.lru = 0;
        e.unwritten = None;
        self.dirty.remove(&i);
        self.relist(i);
    }

    /// Empties slot `i` for a new table (offset 0 while it loads) and hands out memory for
    /// the table: the slot's own when nothing else holds it, else an earlier victim's.
    /// Contents are unspecified: the caller reads or fills the whole table.
    pub fn begin_load(&mut self, i: usize) -> Vec<u8> {
        self.set_offset(i, 0);
        let own = self
            .entry_mut(i)
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

    /// Installs a loaded table in slot `i` under `offset` (0 when the load failed);
    /// `from_file`: the table was read from the file at `offset` (else the caller fills it).
    pub fn end_load(&mut self, i: usize, table: Vec<u8>, offset: u64, from_file: bool) {
        let full = 0..table.len();
        let e = self.entry_mut(i);
        e.data = Some(Rc::new(table));
        e.unwritten = (!from_file).then_some(full);
        self.set_offset(i, offset);
    }

    /// The table of slot `i`, shared, for writing it out.
    pub fn shared_table(&self, i: usize) -> Option<Table> {
        self.entries.get(&i).and_then(|e| e.data.clone())
    }

    pub fn table(&self, i: usize) -> &[u8] {
        self.entries
            .get(&i)
            .and_then(|e| e.data.as_deref())
            .map_or(&[], |t| t)
    }

    /// The table of slot `i` to change as the caller likes: all of it counts as unwritten.
    pub fn table_mut(&mut self, i: usize) -> &mut [u8] {
        let len = self.table_size;
        self.changing(i, 0..len)
    }

    /// The table of slot `i`, to change only within `range` (which then counts as unwritten).
    fn changing(&mut self, i: usize, range: Range<usize>) -> &mut [u8] {
        let Some(e) = self.entries.get_mut(&i) else {
            return &mut [];
        };
        let Some(t) = e.data.as_mut() else {
            return &mut [];
        };
        widen(&mut e.unwritten, range);
        Rc::make_mut(t).as_mut_slice()
    }

    /// Takes the unwritten range of slot `i` as its table is handed to the file: whatever
    /// changes from here on is unwritten again. None when the file's copy is current.
    pub fn take_unwritten(&mut self, i: usize) -> Option<Range<usize>> {
        self.entries.get_mut(&i).and_then(|e| e.unwritten.take())
    }

    /// Puts back a range taken by [`Cache::take_unwritten`] whose write failed.
    pub fn restore_unwritten(&mut self, i: usize, range: Range<usize>) {
        if let Some(e) = self.entries.get_mut(&i) {
            widen(&mut e.unwritten, range);
        }
    }

    /// Copies the table of slot `from` over the table of slot `to`.
    pub fn copy_table(&mut self, from: usize, to: usize) {
        if let Some(src) = self.shared_table(from) {
            self.table_mut(to).copy_from_slice(&src);
        }
    }

    pub fn be64(&self, i: usize, idx: usize) -> u64 {
        let d = &self.table(i)[idx * 8..idx * 8 + 8];
        u64::from_be_bytes(d.try_into().expect("8 bytes"))
    }

    pub fn set_be64(&mut self, i: usize, idx: usize, v: u64) {
        let at = idx * 8..idx * 8 + 8;
        self.changing(i, at.clone())[at].copy_from_slice(&v.to_be_bytes());
    }

    /// Sets refcount `idx` of the refcount block in slot `i` (entries of `1 << order` bits).
    pub fn set_refcount(&mut self, i: usize, order: u32, idx: usize, v: u64) {
        let bits = 1usize << order;
        // sub-byte entries share their byte with neighbours
        let at = if bits < 8 {
            let byte = idx * bits / 8;
            byte..byte + 1
        } else {
            idx * (bits / 8)..(idx + 1) * (bits / 8)
        };
        rc_set(self.changing(i, at), order, idx, v);
    }
}

/// Grows `unwritten` to cover `range` too.
fn widen(unwritten: &mut Option<Range<usize>>, range: Range<usize>) {
    *unwritten = Some(match unwritten.take() {
        Some(u) => u.start.min(range.start)..u.end.max(range.end),
        None => range,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Loads `offset` into slot `i` as cache_get does on a miss.
    fn load(c: &mut Cache, i: usize, offset: u64) {
        let buf = c.begin_load(i);
        c.end_load(i, buf, offset, true);
    }

    /// Loads `offset` into slot `i` and uses it once (it gets the next LRU stamp).
    fn occupy(c: &mut Cache, i: usize, offset: u64) {
        load(c, i, offset);
        c.take_ref(i);
        c.put(i);
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
            occupy(&mut c, i, off);
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
    fn empty_slots_are_found_from_the_start_slot_on() {
        let mut c = Cache::new(8, 512);
        // offset 1024 -> start (2*4)%8 = 0; slots 0 and 1 taken -> 2
        occupy(&mut c, 0, 4096);
        occupy(&mut c, 1, 4608);
        assert!(matches!(c.lookup(1024), Some(Lookup::Miss(2))));
        // the scan wraps: start 4 (offset 512), slots 4..7 taken -> 2
        for i in 4..8 {
            occupy(&mut c, i, 8192 + 512 * i as u64);
        }
        assert!(matches!(c.lookup(512), Some(Lookup::Miss(2))));
        // a discarded slot is empty again
        c.discard(5);
        assert!(matches!(c.lookup(512), Some(Lookup::Miss(5))));
    }

    #[test]
    fn a_huge_cache_costs_only_what_it_holds() {
        let mut c = Cache::new(1 << 31, 512);
        occupy(&mut c, 0, 512 * 7);
        assert!(matches!(c.lookup(512 * 7), Some(Lookup::Hit(0))));
        assert!(matches!(c.lookup(0x1000_0000), Some(Lookup::Miss(_))));
        assert_eq!(c.entries.len(), 1);
        assert!(c.stale.words.len() <= 1);
    }

    #[test]
    fn unwritten_bytes_are_what_changed_since_the_last_write() {
        let mut c = Cache::new(2, 512);
        load(&mut c, 0, 4096);
        assert_eq!(c.take_unwritten(0), None);
        c.set_be64(0, 3, 7);
        c.set_refcount(0, 4, 40, 1);
        assert_eq!(c.take_unwritten(0), Some(24..82));
        // sub-byte refcounts share a byte
        c.set_refcount(0, 1, 9, 3);
        assert_eq!(c.take_unwritten(0), Some(2..3));
        // a change while the write is in flight is unwritten again; a failed write puts its
        // range back
        let taken = c.take_unwritten(0);
        c.set_be64(0, 60, 1);
        c.restore_unwritten(0, 100..108);
        assert_eq!(taken, None);
        assert_eq!(c.take_unwritten(0), Some(100..488));
        // free-form changes and tables filled without a read count whole
        let _ = c.table_mut(0);
        assert_eq!(c.take_unwritten(0), Some(0..512));
        let buf = c.begin_load(1);
        c.end_load(1, buf, 8192, false);
        assert_eq!(c.take_unwritten(1), Some(0..512));
    }

    #[test]
    fn put_updates_lru_only_when_the_last_reference_goes() {
        let mut c = Cache::new(2, 512);
        c.take_ref(0);
        c.take_ref(0);
        c.put(0);
        assert_eq!(c.entries[&0].lru, 0);
        c.put(0);
        assert_eq!(c.entries[&0].lru, 1);
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

    #[test]
    fn sparse_slots_find_the_first_gap() {
        let mut s = SparseSlots::default();
        for i in (0..130).chain([200]) {
            s.insert(i);
        }
        assert_eq!(s.next_absent(0, 1000), Some(130));
        assert_eq!(s.next_absent(190, 1000), Some(190));
        assert_eq!(s.next_absent(200, 1000), Some(201));
        assert_eq!(s.next_absent(0, 100), None);
        s.remove(64);
        assert_eq!(s.next_absent(0, 100), Some(64));
        assert_eq!(s.len, 130);
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
            3 => (0usize..200).prop_map(Op::Put),
            2 => (0usize..200).prop_map(Op::Dirty),
            1 => (0usize..200).prop_map(Op::Clean),
            1 => (0u64..24).prop_map(Op::Discard),
        ]
    }

    proptest! {
        #[test]
        fn indexes_answer_as_the_full_scan(size in prop_oneof![1usize..8, 60usize..140], ops in proptest::collection::vec(op(), 0..300)) {
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
