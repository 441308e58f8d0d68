//! blkdebug's event and I/O-type enumerations (QAPI `BlkdebugEvent` and `BlkdebugIOType`).
//!
//! The declaration order is the QAPI order, which is also QEMU's internal index: rule lists are
//! kept per event index, and nothing else may reorder them.

use std::fmt;

/// Declares `Event` together with its name table, so that the order is written once.
macro_rules! events {
    ($($variant:ident = $name:literal,)*) => {
        /// A blkdebug event (`BlkdebugEvent`), in QAPI order: `L1Update` is 0, `None` is 47.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Event {
            $($variant,)*
        }

        impl Event {
            /// Every event, indexed by [`Event::index`].
            pub const ALL: [Event; Event::COUNT] = [$(Event::$variant,)*];
            const NAMES: [&'static str; Event::COUNT] = [$($name,)*];
        }
    };
}

events! {
    L1Update = "l1_update",
    L1GrowAllocTable = "l1_grow_alloc_table",
    L1GrowWriteTable = "l1_grow_write_table",
    L1GrowActivateTable = "l1_grow_activate_table",
    L2Load = "l2_load",
    L2Update = "l2_update",
    L2UpdateCompressed = "l2_update_compressed",
    L2AllocCowRead = "l2_alloc_cow_read",
    L2AllocWrite = "l2_alloc_write",
    ReadAio = "read_aio",
    ReadBackingAio = "read_backing_aio",
    ReadCompressed = "read_compressed",
    WriteAio = "write_aio",
    WriteCompressed = "write_compressed",
    VmstateLoad = "vmstate_load",
    VmstateSave = "vmstate_save",
    CowRead = "cow_read",
    CowWrite = "cow_write",
    ReftableLoad = "reftable_load",
    ReftableGrow = "reftable_grow",
    ReftableUpdate = "reftable_update",
    RefblockLoad = "refblock_load",
    RefblockUpdate = "refblock_update",
    RefblockUpdatePart = "refblock_update_part",
    RefblockAlloc = "refblock_alloc",
    RefblockAllocHookup = "refblock_alloc_hookup",
    RefblockAllocWrite = "refblock_alloc_write",
    RefblockAllocWriteBlocks = "refblock_alloc_write_blocks",
    RefblockAllocWriteTable = "refblock_alloc_write_table",
    RefblockAllocSwitchTable = "refblock_alloc_switch_table",
    ClusterAlloc = "cluster_alloc",
    ClusterAllocBytes = "cluster_alloc_bytes",
    ClusterFree = "cluster_free",
    FlushToOs = "flush_to_os",
    FlushToDisk = "flush_to_disk",
    PwritevRmwHead = "pwritev_rmw_head",
    PwritevRmwAfterHead = "pwritev_rmw_after_head",
    PwritevRmwTail = "pwritev_rmw_tail",
    PwritevRmwAfterTail = "pwritev_rmw_after_tail",
    Pwritev = "pwritev",
    PwritevZero = "pwritev_zero",
    PwritevDone = "pwritev_done",
    EmptyImagePrepare = "empty_image_prepare",
    L1ShrinkWriteTable = "l1_shrink_write_table",
    L1ShrinkFreeL2Clusters = "l1_shrink_free_l2_clusters",
    CorWrite = "cor_write",
    ClusterAllocSpace = "cluster_alloc_space",
    None = "none",
}

impl Event {
    /// Number of events (QEMU's `BLKDBG__MAX`).
    pub const COUNT: usize = 48;

    /// The QAPI name, e.g. `"read_aio"`.
    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// Exact, case-sensitive lookup by QAPI name. The pre-QAPI dotted names
    /// (`l1_grow.alloc_table`) are not accepted, as in QEMU since 2.x.
    pub fn from_name(name: &str) -> Option<Event> {
        Self::NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| Self::ALL[i])
    }

    /// The QAPI index (0..48).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of request a rule can match (`BlkdebugIOType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IoType {
    Read,
    Write,
    WriteZeroes,
    Discard,
    Flush,
    BlockStatus,
}

impl IoType {
    /// Every I/O type, indexed by [`IoType::index`].
    pub const ALL: [IoType; 6] = [
        IoType::Read,
        IoType::Write,
        IoType::WriteZeroes,
        IoType::Discard,
        IoType::Flush,
        IoType::BlockStatus,
    ];

    /// The QAPI name, e.g. `"write-zeroes"`.
    pub fn name(self) -> &'static str {
        match self {
            IoType::Read => "read",
            IoType::Write => "write",
            IoType::WriteZeroes => "write-zeroes",
            IoType::Discard => "discard",
            IoType::Flush => "flush",
            IoType::BlockStatus => "block-status",
        }
    }

    /// Exact, case-sensitive lookup by QAPI name.
    pub fn from_name(name: &str) -> Option<IoType> {
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// The QAPI index, which is also the bit number in an [`IoTypeMask`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for IoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`IoType`]s, bit `IoType::index()` per type, as QEMU's `iotype_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IoTypeMask(pub u8);

impl IoTypeMask {
    /// The mask of a rule without `iotype`: every type except `block-status`
    /// (block-status matching was added later and is opt-in).
    pub const DEFAULT: IoTypeMask = IoTypeMask(0b01_1111);
    /// Every I/O type.
    pub const ALL: IoTypeMask = IoTypeMask(0b11_1111);
    /// No I/O type.
    pub const EMPTY: IoTypeMask = IoTypeMask(0);

    /// The mask holding just `t` (what an explicit `iotype=` gives).
    pub fn only(t: IoType) -> IoTypeMask {
        IoTypeMask(1 << t.index())
    }

    pub fn contains(self, t: IoType) -> bool {
        self.0 & (1 << t.index()) != 0
    }

    pub fn insert(&mut self, t: IoType) {
        self.0 |= 1 << t.index();
    }
}

impl Default for IoTypeMask {
    fn default() -> Self {
        IoTypeMask::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qapi_order_and_indices() {
        assert_eq!(Event::ALL.len(), 48);
        assert_eq!(Event::L1Update.index(), 0);
        assert_eq!(Event::L2Load.index(), 4);
        assert_eq!(Event::ReadAio.index(), 9);
        assert_eq!(Event::WriteAio.index(), 12);
        assert_eq!(Event::ClusterAlloc.index(), 30);
        assert_eq!(Event::FlushToDisk.index(), 34);
        assert_eq!(Event::EmptyImagePrepare.index(), 42);
        assert_eq!(Event::ClusterAllocSpace.index(), 46);
        assert_eq!(Event::None.index(), 47);
        for (i, e) in Event::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
            assert_eq!(Event::from_name(e.name()), Some(*e));
        }
    }

    #[test]
    fn names_are_the_qapi_spellings() {
        let names: Vec<&str> = Event::ALL.iter().map(|e| e.name()).collect();
        assert_eq!(
            names.join(" "),
            "l1_update l1_grow_alloc_table l1_grow_write_table l1_grow_activate_table \
             l2_load l2_update l2_update_compressed l2_alloc_cow_read l2_alloc_write \
             read_aio read_backing_aio read_compressed write_aio write_compressed \
             vmstate_load vmstate_save cow_read cow_write reftable_load reftable_grow \
             reftable_update refblock_load refblock_update refblock_update_part \
             refblock_alloc refblock_alloc_hookup refblock_alloc_write \
             refblock_alloc_write_blocks refblock_alloc_write_table \
             refblock_alloc_switch_table cluster_alloc cluster_alloc_bytes cluster_free \
             flush_to_os flush_to_disk pwritev_rmw_head pwritev_rmw_after_head \
             pwritev_rmw_tail pwritev_rmw_after_tail pwritev pwritev_zero pwritev_done \
             empty_image_prepare l1_shrink_write_table l1_shrink_free_l2_clusters \
             cor_write cluster_alloc_space none"
        );
    }

    #[test]
    fn lookup_is_exact() {
        assert_eq!(Event::from_name("l1_grow.alloc_table"), None);
        assert_eq!(Event::from_name("READ_AIO"), None);
        assert_eq!(Event::from_name("read_aio "), None);
        assert_eq!(Event::from_name(""), None);
    }

    #[test]
    fn iotypes() {
        let names: Vec<&str> = IoType::ALL.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            [
                "read",
                "write",
                "write-zeroes",
                "discard",
                "flush",
                "block-status"
            ]
        );
        for (i, t) in IoType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
            assert_eq!(IoType::from_name(t.name()), Some(*t));
        }
        assert_eq!(IoType::from_name("write_zeroes"), None);
        assert_eq!(IoType::from_name("Read"), None);
    }

    #[test]
    fn default_mask_excludes_block_status() {
        let m = IoTypeMask::default();
        for t in IoType::ALL {
            assert_eq!(m.contains(t), t != IoType::BlockStatus, "{t}");
        }
        let only = IoTypeMask::only(IoType::Flush);
        assert!(only.contains(IoType::Flush));
        assert!(!only.contains(IoType::Read));
        let mut m = IoTypeMask::EMPTY;
        m.insert(IoType::BlockStatus);
        assert_eq!(m, IoTypeMask::only(IoType::BlockStatus));
    }
}
