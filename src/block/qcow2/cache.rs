//! The metadata table caches (QEMU's Qcow2Cache): fixed slots, QEMU's lookup start slot and LRU
//! victim choice, so that evictions (and the writes and events they cause) happen exactly when
//! QEMU's do. The I/O side (entry flush, dependency flush) lives in `refcount.rs`, which owns
//! the driver state; this file is the pure bookkeeping.

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

pub struct Cache {
    pub entries: Vec<Entry>,
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
            entries: (0..size).map(|_| Entry::default()).collect(),
            table_size,
            depends: None,
            depends_on_flush: false,
            lru_counter: 0,
        }
    }

    /// QEMU starts the scan at a slot derived from the offset, so hits and the choice among
    /// equally old victims depend on it.
    pub fn lookup(&self, offset: u64) -> Option<Lookup> {
        let n = self.entries.len();
        let start = ((offset / self.table_size as u64).wrapping_mul(4) % n as u64) as usize;
        let mut i = start;
        let mut min_lru = u64::MAX;
        let mut victim = None;
        loop {
            let e = &self.entries[i];
            if e.offset == offset {
                return Some(Lookup::Hit(i));
            }
            if e.refs == 0 && e.lru < min_lru {
                min_lru = e.lru;
                victim = Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
            if i == start {
                break;
            }
        }
        victim.map(Lookup::Miss)
    }

    pub fn put(&mut self, i: usize) {
        let e = &mut self.entries[i];
        e.refs = e.refs.saturating_sub(1);
        if e.refs == 0 {
            self.lru_counter += 1;
            e.lru = self.lru_counter;
        }
    }

    pub fn mark_dirty(&mut self, i: usize) {
        self.entries[i].dirty = true;
    }

    pub fn find(&self, offset: u64) -> Option<usize> {
        self.entries.iter().position(|e| e.offset == offset)
    }

    /// Drops a table whose cluster was freed (QEMU's qcow2_cache_discard).
    pub fn discard(&mut self, i: usize) {
        let e = &mut self.entries[i];
        e.offset = 0;
        e.lru = 0;
        e.dirty = false;
    }

    pub fn table(&self, i: usize) -> &[u8] {
        &self.entries[i].data
    }

    pub fn table_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.entries[i].data
    }

    pub fn be64(&self, i: usize, idx: usize) -> u64 {
        let d = &self.entries[i].data[idx * 8..idx * 8 + 8];
        u64::from_be_bytes(d.try_into().expect("8 bytes"))
    }

    pub fn set_be64(&mut self, i: usize, idx: usize, v: u64) {
        self.entries[i].data[idx * 8..idx * 8 + 8].copy_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_starts_at_the_offset_slot_and_picks_the_oldest_free_victim() {
        let mut c = Cache::new(4, 512);
        // offset 512 -> start slot (1*4)%4 = 0; all lru 0 -> first in scan order
        match c.lookup(512) {
            Some(Lookup::Miss(i)) => assert_eq!(i, 0),
            _ => panic!("expected a miss"),
        }
        c.entries[0].offset = 512;
        c.entries[0].lru = 5;
        c.entries[1].lru = 3;
        c.entries[2].refs = 1;
        c.entries[3].lru = 4;
        match c.lookup(1024) {
            Some(Lookup::Miss(i)) => assert_eq!(i, 1),
            _ => panic!("expected a miss"),
        }
        assert!(matches!(c.lookup(512), Some(Lookup::Hit(0))));
    }

    #[test]
    fn put_updates_lru_only_when_the_last_reference_goes() {
        let mut c = Cache::new(2, 512);
        c.entries[0].refs = 2;
        c.put(0);
        assert_eq!(c.entries[0].lru, 0);
        c.put(0);
        assert_eq!(c.entries[0].lru, 1);
    }
}
