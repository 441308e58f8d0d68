//! The refcount checker and repairer shared by `qemu-img check` and the driver's repair of a
//! dirty image at open (QEMU's `qcow2_check_refcounts`): count every reference (header, L1/L2
//! tables, data and compressed clusters, snapshot tables, refcount table and blocks) into an
//! in-memory refcount array, compare it with the on-disk refcounts, optionally repair leaks and
//! over-/under-counts, then check `OFLAG_COPIED` — with QEMU's stderr lines and counters.
//!
//! It works on the image file through [`ImageFile`] (an fsck must not trust the driver's
//! caches): qemu-img gives it the file itself, the driver its file node.

use super::cache::{Cache, Lookup};
use super::header::{
    AUTOCLEAR_BITMAPS, Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY, MAX_L1_SIZE, MAX_SNAPSHOTS,
    SNAPSHOT_HEADER_SIZE, be16, be32, be64, c_string, validate_table,
};
use super::image_file::ImageFile;
use super::state::{
    BITMAP_ALL_ZEROES, ClusterType, L1E_OFFSET_MASK, L2E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO,
    REFT_OFFSET_MASK, c_hex, cluster_type, rc_get, rc_set, refcount_max,
};
use crate::errno::strerror;

pub const FIX_LEAKS: u32 = 1;
pub const FIX_ERRORS: u32 = 2;

/// A line the checker prints on stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogLine {
    /// printed as it is (QEMU's fprintf)
    Plain(String),
    /// QEMU's error_report: the program's name goes before it
    Report(String),
}

impl LogLine {
    /// Prints the line on `console`'s stderr.
    pub fn print(&self, console: &crate::output::Console) {
        match self {
            LogLine::Plain(l) => console.err(&format!("{l}\n")),
            LogLine::Report(l) => console.report(l),
        }
    }
}

/// `BdrvCheckResult`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckResult {
    pub corruptions: u64,
    pub leaks: u64,
    pub check_errors: u64,
    pub corruptions_fixed: u64,
    pub leaks_fixed: u64,
    pub image_end_offset: u64,
    pub total_clusters: u64,
    pub allocated_clusters: u64,
    pub fragmented_clusters: u64,
    pub compressed_clusters: u64,
}

/// What QEMU's qcow2_update_header writes besides the header fields the check keeps: the
/// parts only the driver whose open the check runs under knows.
pub struct HeaderRest {
    pub unknown_fields: Vec<u8>,
    pub backing_format: Option<String>,
    pub backing_file: Option<String>,
    /// the external data file's name, when the image has one
    pub data_file: Option<String>,
    /// the extensions after the feature table, in the order they are written
    pub exts: Vec<(u32, Vec<u8>)>,
}

/// A snapshot's L1 table as listed in the snapshot table.
#[derive(Clone, Debug)]
struct Snapshot {
    l1_table_offset: u64,
    l1_size: u32,
    /// as printed (up to the first NUL, as QEMU's C string)
    id: String,
    name: String,
    /// the fixed 40-byte part as read
    header: Vec<u8>,
    /// the known extra data as read (up to [`KNOWN_EXTRA`] bytes)
    extra: Vec<u8>,
    /// extra data past the known part (cut to the maximum when that was dropped)
    unknown_extra: Vec<u8>,
    extra_data_size: u32,
    id_bytes: Vec<u8>,
    name_bytes: Vec<u8>,
}

/// QEMU's QCowSnapshotExtraData: the large VM state size, the disk size and the icount.
const KNOWN_EXTRA: u32 = 24;
/// QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA and QCOW_MAX_SNAPSHOTS_SIZE.
const MAX_SNAPSHOT_EXTRA_DATA: u32 = 1024;
const MAX_SNAPSHOTS_SIZE: u64 = 1024 * 65536;
/// QEMU's QCOW_MAX_REFTABLE_SIZE, compared with a count of refcount blocks when the
/// refcount table would grow.
const MAX_REFTABLE_BLOCKS: u64 = 8 << 20;
/// QEMU's BDRV_MAX_LENGTH: the block layer refuses requests reaching past it.
const BDRV_MAX_LENGTH: u64 = i64::MAX as u64 & !((1 << 30) - 1);

/// A NUL-terminated C string's bytes.
fn c_string_bytes(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

/// The image as the checker sees it: header fields, active L1 and refcount table in memory,
/// refcount blocks read on demand.
pub struct Checker<F: ImageFile> {
    file: F,
    header: Header,
    l1: Vec<u64>,
    reftable: Vec<u64>,
    /// QEMU's refcount block cache (the driver's bookkeeping), which the check reads and
    /// repairs through: write-back, so which changed blocks reach the file (and when a write
    /// is refused as overlapping metadata) follows its size and replacement order
    refcache: Cache,
    snapshots: Vec<Snapshot>,
    snapshots_size: u64,
    /// snapshot table entries whose extra data the check cut (the table must be rewritten)
    extra_data_dropped: u64,
    writable: bool,
    signaled: bool,
    /// `stderr` lines, in order.
    log: Vec<LogLine>,
    /// the bitmaps extension, whose directory, tables and data have refcounts too
    bitmaps: Option<super::header::BitmapsExt>,
    /// QEMU's free_cluster_index: where the next search for free clusters starts (past the
    /// last allocation, lowered by a refcount dropping to 0)
    free_cluster_index: u64,
    /// the rest of a header rewrite; without it (the open's repair of a dirty image) only
    /// the feature bits are written
    header_rest: Option<HeaderRest>,
}

const CHECK_FRAG_INFO: u32 = 2;
/// The refcount block cache's tables with QEMU's default options (MIN_REFCOUNT_CACHE_SIZE:
/// qemu-img check sets no cache size).
const REFCOUNT_CACHE_TABLES: usize = 4;

/// QEMU keeps its in-memory refcounts in one flat array and fails the check with ENOMEM when
/// it cannot grow it (a repair may grow the file to terabytes). How far it gets depends on the
/// host's memory; this is where it stops on a host of 16 to 32 GiB, kept fixed so that the
/// same image always checks the same (ours is paged and never needs that memory).
const QEMU_REF_ARRAY_LIMIT: u128 = 16 << 30;
/// The most memory a rebuilt refcount table may take here (QEMU's is as large as the
/// refcounts it covers need); past it the rebuild fails as QEMU's does when it cannot
/// allocate the table.
const MAX_REBUILT_REFTABLE_BYTES: u64 = 128 << 20;

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn get_refcount(block: &[u8], order: u32, index: u64) -> u64 {
    rc_get(block, order, index as usize)
}
fn set_refcount(block: &mut [u8], order: u32, index: u64, value: u64) {
    rc_set(block, order, index as usize, value)
}

fn table(bytes: &[u8]) -> Vec<u64> {
    bytes.chunks_exact(8).map(|c| be64(c, 0)).collect()
}

impl<F: ImageFile> Checker<F> {
    /// Reads the refcount table, the active L1 table and the snapshot table of an image whose
    /// header was already validated; the error is QEMU's message.
    pub fn new(file: F, header: Header, writable: bool) -> Result<Self, String> {
        let cs = header.cluster_size();
        let overflow = |off: u64, n: u64, esz: u64| {
            n.checked_mul(esz)
                .and_then(|b| off.checked_add(b))
                .is_none_or(|end| end > i64::MAX as u64)
        };
        if overflow(
            header.refcount_table_offset,
            u64::from(header.refcount_table_clusters),
            cs,
        ) {
            return Err("Invalid reference count table offset".into());
        }
        let rt_bytes = header.reftable_entries() * 8;
        let reftable = table(
            &file
                .read_at(header.refcount_table_offset, rt_bytes as usize)
                .map_err(|e| format!("Could not read refcount table: {}", strerror(e)))?,
        );
        if overflow(header.l1_table_offset, u64::from(header.l1_size), 8) {
            return Err("Invalid L1 table offset".into());
        }
        let l1 = table(
            &file
                .read_at(header.l1_table_offset, header.l1_size as usize * 8)
                .map_err(|e| format!("Could not read L1 table: {}", strerror(e)))?,
        );
        let refcache = Cache::new(REFCOUNT_CACHE_TABLES, header.cluster_size() as usize);
        let mut img = Checker {
            file,
            header,
            l1,
            reftable,
            refcache,
            snapshots: Vec::new(),
            snapshots_size: 0,
            extra_data_dropped: 0,
            writable,
            signaled: false,
            log: Vec::new(),
            bitmaps: None,
            free_cluster_index: 0,
            header_rest: None,
        };
        // the bitmaps extension as the open found it (a bad one fails the open first)
        let ext_end = if img.header.backing_file_offset != 0 {
            img.header.backing_file_offset
        } else {
            cs
        };
        let start = u64::from(img.header.header_length);
        img.bitmaps = super::header::read_extensions(
            &img.file,
            &img.header,
            start,
            ext_end,
            super::header::CryptoOpen::Skip,
        )
        .ok()
        .and_then(|ex| ex.bitmaps);
        Ok(img)
    }

    /// Takes the driver's active L1 table and refcount table, read at its open: QEMU's check
    /// works on those in-memory copies, which a header update at the open (clearing unknown
    /// autoclear bits) does not change even where the tables lie over the header.
    pub fn use_opened_tables(&mut self, l1: Vec<u64>, reftable: Vec<u64>) {
        self.l1 = l1;
        self.reftable = reftable;
    }

    /// Lets the check rewrite the whole header where QEMU's does (marking the image corrupt,
    /// clean or consistent), with the parts of it the driver's open knows.
    pub fn use_header_rest(&mut self, rest: HeaderRest) {
        self.header_rest = Some(rest);
    }

    /// QEMU's qcow2_update_header: cluster 0 written anew from the fields as they are now
    /// (no overlap check). Without the driver's parts, only the feature bits of a v3 header.
    fn update_header(&mut self) -> Result<(), i32> {
        let Some(rest) = &self.header_rest else {
            if self.header.version >= 3 {
                self.file
                    .write_at(72, &self.header.incompatible_features.to_be_bytes())?;
            }
            return Ok(());
        };
        let cs = self.cs();
        let h = Header {
            refcount_table_clusters: (self.reftable.len() as u64 * 8 / cs) as u32,
            ..self.header.clone()
        };
        let buf = super::header::build(&super::header::HeaderImage {
            h: &h,
            cluster_size: cs as usize,
            unknown_fields: &rest.unknown_fields,
            backing_format: rest.backing_format.as_deref(),
            backing_file: rest.backing_file.as_deref(),
            data_file: rest.data_file.as_deref(),
            unknown_exts: &rest.exts,
        })
        .ok_or(libc::ENOSPC)?;
        self.file.write_at(0, &buf)
    }

    /// The header fields as they are now (a rebuild moves the refcount table).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The active L1 table as it is now (repairs set or clear `OFLAG_COPIED`).
    pub fn l1(&self) -> &[u64] {
        &self.l1
    }

    /// The refcount table as it is now.
    pub fn reftable(&self) -> &[u64] {
        &self.reftable
    }

    /// `bdrv_pread` on the image file: zeros past its end, EIO for a range the block layer
    /// refuses (past BDRV_MAX_LENGTH).
    fn pread(&self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > BDRV_MAX_LENGTH)
        {
            return Err(libc::EIO);
        }
        self.file.read_at(offset, len)
    }

    /// QEMU's qcow2_check_read_snapshot_table: the snapshot table as the header now names it
    /// (a check's open leaves it alone), into `self.snapshots`, counted in `res`. Too much
    /// extra data and too long a table are dropped under `FIX_ERRORS` (the count in the header
    /// is rewritten at once, the entries when the table is rewritten after the check).
    fn check_read_snapshot_table(&mut self, res: &mut CheckResult, fix: u32) -> Result<(), i32> {
        self.snapshots.clear();
        self.snapshots_size = 0;
        self.extra_data_dropped = 0;
        let pointer = match self.pread(60, 12) {
            Ok(b) => b,
            Err(e) => {
                res.check_errors += 1;
                self.err(format!(
                    "ERROR failed to read the snapshot table pointer from the image header: {}",
                    strerror(e)
                ));
                return Err(e);
            }
        };
        let mut nb = be32(&pointer, 0);
        self.header.nb_snapshots = nb;
        self.header.snapshots_offset = be64(&pointer, 4);
        let mut reduced = 0u32;
        if u64::from(nb) > MAX_SNAPSHOTS && fix & FIX_ERRORS != 0 {
            let over = nb - MAX_SNAPSHOTS as u32;
            self.err(format!("Discarding {over} overhanging snapshots"));
            reduced += over;
            nb = MAX_SNAPSHOTS as u32;
            self.header.nb_snapshots = nb;
        }
        if let Err((msg, e)) = validate_table(
            self.header.snapshots_offset,
            u64::from(nb),
            SNAPSHOT_HEADER_SIZE,
            SNAPSHOT_HEADER_SIZE * MAX_SNAPSHOTS,
            self.cs(),
            "snapshot table",
        ) {
            res.check_errors += 1;
            self.report(format!("ERROR {msg}"));
            if u64::from(nb) > MAX_SNAPSHOTS {
                self.err(format!(
                    "You can force-remove all {} overhanging snapshots with qemu-img check -r all",
                    u64::from(nb) - MAX_SNAPSHOTS
                ));
            }
            self.header.nb_snapshots = 0;
            self.header.snapshots_offset = 0;
            return Err(e);
        }
        match self.read_snapshots(fix & FIX_ERRORS != 0, &mut reduced) {
            Ok(()) => {}
            Err((msg, e)) => {
                res.check_errors += 1;
                self.report(format!("ERROR failed to read the snapshot table: {msg}"));
                self.snapshots.clear();
                self.snapshots_size = 0;
                self.header.nb_snapshots = 0;
                self.header.snapshots_offset = 0;
                return Err(e);
            }
        }
        res.corruptions += u64::from(reduced) + self.extra_data_dropped;
        if reduced != 0 {
            // the count on disk first: the refcount check trusts it (the dropped entries'
            // clusters become leaks it repairs)
            if let Err(e) = self
                .file
                .write_at(60, &self.header.nb_snapshots.to_be_bytes())
            {
                res.check_errors += 1;
                self.err(format!(
                    "ERROR failed to update the snapshot count in the image header: {}",
                    strerror(e)
                ));
                return Err(e);
            }
            res.corruptions_fixed += u64::from(reduced);
            res.corruptions -= u64::from(reduced);
        }
        if self.header.version >= 3 {
            let repairing = fix & FIX_ERRORS != 0;
            for i in 0..self.snapshots.len() {
                if self.snapshots[i].extra_data_size < 16 {
                    res.corruptions += 1;
                    self.err(format!(
                        "{} snapshot table entry {i} is incomplete",
                        if repairing { "Repairing" } else { "ERROR" }
                    ));
                }
            }
        }
        Ok(())
    }

    /// QEMU's qcow2_check_fix_snapshot_table: a snapshot table found broken is rewritten
    /// under `FIX_ERRORS` (once the refcounts are sound).
    fn check_fix_snapshot_table(&mut self, res: &mut CheckResult, fix: u32) -> Result<(), i32> {
        if res.corruptions == 0 || fix & FIX_ERRORS == 0 {
            return Ok(());
        }
        if let Err(e) = self.write_snapshots() {
            res.check_errors += 1;
            self.err(format!(
                "ERROR failed to update snapshot table: {}",
                strerror(e)
            ));
            return Err(e);
        }
        res.corruptions_fixed += res.corruptions;
        res.corruptions = 0;
        Ok(())
    }

    /// QEMU's qcow2_alloc_clusters for the checker: the first run of free clusters (by the
    /// on-disk refcounts) from the start of the image, its refcounts raised (refcount blocks
    /// allocated as `alloc_refblock` can, the search then made again). No overlap
    /// check: the caller makes it after the raised refcounts reach the file, as QEMU does.
    fn alloc_clusters(&mut self, size: u64) -> Result<u64, i32> {
        let cs = self.cs();
        let count = size.div_ceil(cs);
        loop {
            let first = self.alloc_clusters_noref(count)?;
            // a refcount block allocated on the way may sit where the run was
            match self.update_refcount_range(first, count, false) {
                Err(libc::EAGAIN) => continue,
                r => return r.map(|()| first * cs),
            }
        }
    }

    /// QEMU's qcow2_write_snapshots: the snapshot table written anew in fresh clusters (extra
    /// data at least the 16 known bytes), the header pointed at it, the old table freed.
    fn write_snapshots(&mut self) -> Result<(), i32> {
        let disk_size = self.header.size / 512 * 512;
        let mut table = Vec::new();
        for sn in &self.snapshots {
            table.resize(table.len().div_ceil(8) * 8, 0);
            let id = c_string_bytes(&sn.id_bytes);
            let name = c_string_bytes(&sn.name_bytes);
            let extra_len = sn.extra_data_size.max(KNOWN_EXTRA);
            let mut vm_state_size = u64::from(be32(&sn.header, 32));
            if sn.extra.len() >= 8 {
                vm_state_size = be64(&sn.extra, 0);
            }
            let sn_disk_size = if sn.extra.len() >= 16 {
                be64(&sn.extra, 8)
            } else {
                disk_size
            };
            let mut h = sn.header.clone();
            h[12..14].copy_from_slice(&(id.len() as u16).to_be_bytes());
            h[14..16].copy_from_slice(&(name.len() as u16).to_be_bytes());
            let small_state = u32::try_from(vm_state_size).unwrap_or(0);
            h[32..36].copy_from_slice(&small_state.to_be_bytes());
            h[36..40].copy_from_slice(&extra_len.to_be_bytes());
            table.extend_from_slice(&h);
            // no icount recorded: -1
            let icount = if sn.extra.len() >= 24 {
                be64(&sn.extra, 16)
            } else {
                u64::MAX
            };
            table.extend_from_slice(&vm_state_size.to_be_bytes());
            table.extend_from_slice(&sn_disk_size.to_be_bytes());
            table.extend_from_slice(&icount.to_be_bytes());
            table.extend_from_slice(&sn.unknown_extra);
            table.extend_from_slice(id);
            table.extend_from_slice(name);
            if table.len() as u64 > MAX_SNAPSHOTS_SIZE {
                return Err(libc::EFBIG);
            }
        }
        let size = table.len() as u64;
        let offset = self.alloc_clusters(size)?;
        // the new clusters' refcounts (and whatever else the cache holds) reach the file
        // before the overlap check, which a region the refcounts call free can still fail
        let checked = self
            .flush()
            .and_then(|()| match self.overlapped_metadata(offset, size) {
                Some(what) => {
                    self.signal_corruption(&format!(
                        "Preventing invalid write on metadata (overlaps with {what})"
                    ));
                    Err(libc::EIO)
                }
                None => Ok(()),
            });
        if let Err(e) = checked {
            let cs = self.cs();
            let _ = self.update_refcount_range(offset / cs, size.div_ceil(cs), true);
            return Err(e);
        }
        // entries start 8-aligned; the padding between them is not written
        let mut at = 0usize;
        for sn in &self.snapshots {
            at = at.div_ceil(8) * 8;
            let len = 40
                + sn.extra_data_size.max(KNOWN_EXTRA) as usize
                + c_string_bytes(&sn.id_bytes).len()
                + c_string_bytes(&sn.name_bytes).len();
            self.file
                .write_at(offset + at as u64, &table[at..at + len])?;
            at += len;
        }
        // the new table and its refcounts reach the file before the header points at it
        self.flush()?;
        let mut pointer = (self.snapshots.len() as u32).to_be_bytes().to_vec();
        pointer.extend_from_slice(&offset.to_be_bytes());
        self.file.write_at(60, &pointer)?;
        let (old, old_size) = (self.header.snapshots_offset, self.snapshots_size);
        self.header.nb_snapshots = self.snapshots.len() as u32;
        self.header.snapshots_offset = offset;
        self.snapshots_size = size;
        if old_size > 0 {
            let cs = self.cs();
            let (first, last) = (old / cs, (old + old_size - 1) / cs);
            if let Err(e) = self.update_refcount_range(first, last - first + 1, true) {
                self.err(format!("qcow2_free_clusters failed: {}", strerror(e)));
            }
        }
        Ok(())
    }

    /// QEMU's qcow2_do_read_snapshots from a check; Err is the message (its hint lines
    /// included) and errno.
    fn read_snapshots(&mut self, repair: bool, reduced: &mut u32) -> Result<(), (String, i32)> {
        let start = self.header.snapshots_offset;
        let failed = |e: i32| (format!("Failed to read snapshot table: {}", strerror(e)), e);
        let mut off = start;
        let mut table_length = 0u64;
        let nb = self.header.nb_snapshots;
        for i in 0..nb {
            let pre_entry = off;
            table_length = table_length.div_ceil(8) * 8;
            off = off.div_ceil(8) * 8;
            let h = self.pread(off, 40).map_err(failed)?;
            off += 40;
            let mut extra_data_size = be32(&h, 36);
            let id_len = u64::from(be16(&h, 12));
            let name_len = u64::from(be16(&h, 14));
            let mut truncate = false;
            if extra_data_size > MAX_SNAPSHOT_EXTRA_DATA {
                if !repair {
                    return Err((
                        format!(
                            "Too much extra metadata in snapshot table entry {i}\nYou can force-remove this extra metadata with qemu-img check -r all"
                        ),
                        libc::EFBIG,
                    ));
                }
                self.err(format!(
                    "Discarding too much extra metadata in snapshot table entry {i} ({extra_data_size} > {MAX_SNAPSHOT_EXTRA_DATA})"
                ));
                self.extra_data_dropped += 1;
                truncate = true;
            }
            let known = u64::from(extra_data_size.min(KNOWN_EXTRA));
            let extra = self.pread(off, known as usize).map_err(failed)?;
            off += known;
            let mut unknown_extra = Vec::new();
            if extra_data_size > KNOWN_EXTRA {
                let extra_end = off + u64::from(extra_data_size - KNOWN_EXTRA);
                if truncate {
                    extra_data_size = MAX_SNAPSHOT_EXTRA_DATA;
                }
                unknown_extra = self
                    .pread(off, (extra_data_size - KNOWN_EXTRA) as usize)
                    .map_err(failed)?;
                off = extra_end;
            }
            let id = self.pread(off, id_len as usize).map_err(failed)?;
            off += id_len;
            let name = self.pread(off, name_len as usize).map_err(failed)?;
            off += name_len;
            table_length += 40 + u64::from(extra_data_size) + id_len + name_len;
            if table_length > MAX_SNAPSHOTS_SIZE || off - start > i32::MAX as u64 {
                if !repair {
                    return Err((
                        format!(
                            "Snapshot table is too big\nYou can force-remove all {} overhanging snapshots with qemu-img check -r all",
                            nb - i
                        ),
                        libc::EFBIG,
                    ));
                }
                self.err(format!(
                    "Discarding {} overhanging snapshots (snapshot table is too big)",
                    nb - i
                ));
                *reduced += nb - i;
                self.header.nb_snapshots = i;
                off = pre_entry;
                break;
            }
            self.snapshots.push(Snapshot {
                l1_table_offset: be64(&h, 0),
                l1_size: be32(&h, 8),
                id: c_string(&id),
                name: c_string(&name),
                header: h,
                extra,
                unknown_extra,
                extra_data_size,
                id_bytes: id,
                name_bytes: name,
            });
        }
        self.snapshots_size = off - start;
        Ok(())
    }

    /// bdrv_getlength of the file node: whole sectors (a file cut mid-sector counts its
    /// partial sector in full).
    pub fn file_len(&self) -> u64 {
        self.file.file_len().div_ceil(512) * 512
    }

    fn cs(&self) -> u64 {
        self.header.cluster_size()
    }

    fn order(&self) -> u32 {
        self.header.refcount_order
    }

    /// qcow2_cache_get (and put) of the refcount block at `offset`: on a miss the least
    /// recently used table is written back first (a refused write fails the get) and
    /// replaced by a read of the file.
    fn refblock(&mut self, offset: u64) -> Result<&mut [u8], i32> {
        let i = match self.refcache.lookup(offset).expect("a cache with slots") {
            Lookup::Hit(i) => i,
            Lookup::Miss(i) => {
                self.flush_cached(i)?;
                // the slot stays empty if the read fails
                drop(self.refcache.begin_load(i));
                let b = self.file.read_at(offset, self.cs() as usize)?;
                self.refcache.end_load(i, b, offset, true);
                i
            }
        };
        self.refcache.put(i);
        Ok(self.refcache.table_mut(i))
    }

    /// qcow2_cache_entry_flush for the refcount cache: a dirty table is written back after
    /// the overlap check (which ignores refcount blocks); it stays dirty when that fails.
    fn flush_cached(&mut self, i: usize) -> Result<(), i32> {
        let offset = self.refcache.offset(i);
        if !self.refcache.is_dirty(i) || offset == 0 {
            return Ok(());
        }
        if let Some(what) = self.overlapped_metadata_except(offset, self.cs(), "refcount block") {
            self.signal_corruption(&format!(
                "Preventing invalid write on metadata (overlaps with {what})"
            ));
            return Err(libc::EIO);
        }
        self.file.write_at(offset, self.refcache.table(i))?;
        self.refcache.clear_dirty(i);
        Ok(())
    }

    /// `qcow2_get_refcount`; Err is a negative errno.
    fn get_refcount(&mut self, cluster: u64) -> Result<u64, i32> {
        let per_block = self.header.refblock_entries();
        let idx = cluster / per_block;
        let Some(&entry) = self.reftable.get(idx as usize) else {
            return Ok(0);
        };
        let off = entry & REFT_OFFSET_MASK;
        if off == 0 {
            return Ok(0);
        }
        if !off.is_multiple_of(self.cs()) {
            self.signal_corruption(&format!(
                "Refblock offset {} unaligned (reftable index: {})",
                c_hex(off),
                c_hex(idx)
            ));
            return Err(libc::EIO);
        }
        let order = self.order();
        let b = self.refblock(off).map_err(|_| libc::EIO)?;
        Ok(get_refcount(b, order, cluster % per_block))
    }

    /// `qcow2_signal_corruption`: the first event is reported; on a writable image the corrupt
    /// bit is set.
    fn signal_corruption(&mut self, what: &str) {
        if self.signaled {
            return;
        }
        self.signaled = true;
        if self.writable {
            self.err(format!(
                "qcow2: Marking image as corrupt: {what}; further corruption events will be suppressed"
            ));
            // qcow2_mark_corrupt, whose failure QEMU ignores
            self.header.incompatible_features |= INCOMPAT_CORRUPT;
            let _ = self.update_header();
        } else {
            self.err(format!(
                "qcow2: Image is corrupt: {what}; further non-fatal corruption events will be suppressed"
            ));
        }
    }

    /// qcow2_cache_write for the refcount cache: every dirty table in slot order, the first
    /// error kept (ENOSPC before any other).
    fn flush_refblocks(&mut self) -> Result<(), i32> {
        let mut result = Ok(());
        for i in 0..self.refcache.size() {
            if let Err(e) = self.flush_cached(i)
                && result != Err(libc::ENOSPC)
            {
                result = Err(e);
            }
        }
        result
    }

    /// Whether a fatal corruption made the image unusable (QEMU's `bs->drv = NULL`): nothing
    /// more is flushed or closed.
    pub fn is_dead(&self) -> bool {
        self.signaled && self.writable
    }

    /// Every changed refcount block written back (qcow2_cache_write), unless the image is
    /// dead: for a caller that goes on without this checker's cache.
    pub fn write_back(&mut self) -> Result<(), i32> {
        if self.is_dead() {
            return Ok(());
        }
        self.flush_refblocks()
    }

    /// QEMU's bdrv_flush of the qcow2 node (qcow2_write_caches): the refcount tables are
    /// written back unless the dirty bit says refcounts may lag. Nothing on a dead image.
    pub fn flush(&mut self) -> Result<(), i32> {
        if self.is_dead() || !self.writable {
            return Ok(());
        }
        if self.header.incompatible_features & INCOMPAT_DIRTY != 0 {
            return Ok(());
        }
        self.flush_refblocks()
    }

    /// The snapshot table as the check left it: each entry's L1 table, and the table's size
    /// (what the driver's overlap checks and header rewrites need).
    pub fn snapshot_tables(&self) -> (Vec<(u64, u32)>, u64) {
        (
            self.snapshots
                .iter()
                .map(|sn| (sn.l1_table_offset, sn.l1_size))
                .collect(),
            self.snapshots_size,
        )
    }

    /// Changes one cluster's refcount (repair) in the cached refcount block, written back at
    /// the next flush. A cluster whose refcount drops to 0 is discarded at once, as QEMU's
    /// `DISCARD_ALWAYS` does.
    fn update_refcount(&mut self, cluster: u64, diff: u64, decrease: bool) -> Result<(), i32> {
        if self.change_refcount(cluster, diff, decrease)? == 0 {
            self.discard_cluster(cluster);
        }
        Ok(())
    }

    /// QEMU's update_refcount over `count` clusters from `first`, by one: a failure part way
    /// undoes the clusters already changed, and the clusters freed are discarded only when
    /// the whole range succeeded (QEMU drops its queued discards on an error).
    fn update_refcount_range(&mut self, first: u64, count: u64, decrease: bool) -> Result<(), i32> {
        let mut freed = Vec::new();
        for c in first..first + count {
            match self.change_refcount(c, 1, decrease) {
                Ok(0) => freed.push(c),
                Ok(_) => {}
                Err(e) => {
                    for done in first..c {
                        let _ = self.change_refcount(done, 1, !decrease);
                    }
                    return Err(e);
                }
            }
        }
        for c in freed {
            self.discard_cluster(c);
        }
        Ok(())
    }

    /// A cluster whose refcount dropped to 0: a cached table there is dropped and the
    /// cluster discarded in the file (QEMU's `DISCARD_ALWAYS`).
    fn discard_cluster(&mut self, cluster: u64) {
        if let Some(i) = self.refcache.find(cluster * self.cs()) {
            self.refcache.discard(i);
        }
        self.file.discard(cluster * self.cs(), self.cs());
    }

    /// QEMU's alloc_clusters_noref: the first run of `count` free clusters from
    /// `free_cluster_index` on, which moves past it.
    fn alloc_clusters_noref(&mut self, count: u64) -> Result<u64, i32> {
        let mut run = 0u64;
        while run < count {
            let cluster = self.free_cluster_index;
            self.free_cluster_index += 1;
            if self.get_refcount(cluster)? != 0 {
                run = 0;
            } else {
                run += 1;
            }
        }
        Ok(self.free_cluster_index - count)
    }

    /// QEMU's alloc_refcount_block for `cluster`, which no refcount block covers: the first
    /// free cluster becomes its refcount block (counted in its own block or, recursively, in
    /// another), written out zeroed and hooked into the refcount table; the errno the caller
    /// gets is EAGAIN then (the search for free clusters starts over). Growing the refcount
    /// table is modelled only where QEMU's qcow2_refcount_area refuses it at once (more
    /// refcount blocks than a table may list: EFBIG, the new block left allocated); any other
    /// growth fails with EIO before anything is allocated.
    fn alloc_refblock(&mut self, cluster: u64) -> i32 {
        let cs = self.cs();
        let per_block = self.header.refblock_entries();
        let idx = cluster / per_block;
        let grows = idx >= self.reftable.len() as u64;
        if grows && (cluster + 1).div_ceil(per_block) <= MAX_REFTABLE_BLOCKS {
            return libc::EIO;
        }
        let new_block = match self.alloc_clusters_noref(1) {
            Ok(c) => c,
            Err(e) => return e,
        };
        if new_block == 0 {
            self.signal_corruption("Preventing invalid allocation of refcount block at offset 0");
            return libc::EIO;
        }
        let order = self.order();
        let mut block = vec![0u8; cs as usize];
        if new_block / per_block == idx {
            // the block describes itself
            set_refcount(&mut block, order, new_block % per_block, 1);
        } else {
            if let Err(e) = self.change_refcount(new_block, 1, false) {
                return e;
            }
            if let Err(e) = self.flush_refblocks() {
                return e;
            }
        }
        let offset = new_block * cs;
        let i = match self.refcache.lookup(offset).expect("a cache with slots") {
            Lookup::Hit(i) => i,
            Lookup::Miss(i) => {
                if let Err(e) = self.flush_cached(i) {
                    return e;
                }
                i
            }
        };
        drop(self.refcache.begin_load(i));
        self.refcache.end_load(i, block, offset, false);
        self.refcache.mark_dirty(i);
        self.refcache.put(i);
        if let Err(e) = self.flush_refblocks() {
            return e;
        }
        if grows {
            return libc::EFBIG;
        }
        let at = self.header.refcount_table_offset + idx * 8;
        if let Err(e) = self.file.write_at(at, &offset.to_be_bytes()) {
            return e;
        }
        self.reftable[idx as usize] = offset;
        libc::EAGAIN
    }

    /// One cluster's refcount changed in its cached refcount block; Ok(the new refcount).
    fn change_refcount(&mut self, cluster: u64, diff: u64, decrease: bool) -> Result<u64, i32> {
        let per_block = self.header.refblock_entries();
        let idx = cluster / per_block;
        let off = self
            .reftable
            .get(idx as usize)
            .map(|e| e & REFT_OFFSET_MASK)
            .unwrap_or(0);
        if off == 0 {
            return Err(self.alloc_refblock(cluster));
        }
        let order = self.order();
        let b = self.refblock(off).map_err(|_| libc::EIO)?;
        let old = get_refcount(b, order, cluster % per_block);
        let new = if decrease {
            old.checked_sub(diff)
        } else {
            old.checked_add(diff).filter(|v| *v <= refcount_max(order))
        }
        .ok_or(libc::EINVAL)?;
        set_refcount(b, order, cluster % per_block, new);
        let slot = self.refcache.find(off).expect("just used");
        self.refcache.mark_dirty(slot);
        if decrease && new == 0 {
            self.free_cluster_index = self.free_cluster_index.min(cluster);
        }
        Ok(new)
    }

    fn err(&mut self, line: String) {
        self.log.push(LogLine::Plain(line));
    }

    /// A line QEMU prints with error_report (the program's name before it).
    fn report(&mut self, line: String) {
        self.log.push(LogLine::Report(line));
    }

    /// `qcow2_inc_refcounts_imrt`.
    fn inc_refcounts(
        &mut self,
        res: &mut CheckResult,
        rt: &mut RefArray,
        offset: u64,
        size: u64,
    ) -> Result<(), i32> {
        if size == 0 {
            return Ok(());
        }
        let file_len = self.file_len();
        let cs = self.cs();
        // QEMU computes this in int64_t: an offset from 2^63 up wraps negative and passes,
        // and its cluster index then asks for an array no memory holds (ENOMEM below)
        let past_end = (offset as i64)
            .wrapping_add(size as i64)
            .wrapping_sub(file_len as i64);
        if past_end >= cs as i64 {
            self.err(format!(
                "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset {offset:#x} size {size:#x}"
            ));
            res.corruptions += 1;
            return Ok(());
        }
        let start = offset & !(cs - 1);
        let last = offset.wrapping_add(size - 1) & !(cs - 1);
        if last < start {
            res.check_errors += 1;
            return Err(libc::ENOMEM);
        }
        let mut c = start;
        while c <= last {
            let k = c / cs;
            if k >= rt.len && rt.grow(k + 1).is_err() {
                res.check_errors += 1;
                return Err(libc::ENOMEM);
            }
            let r = rt.get(k);
            if r == refcount_max(self.order()) {
                self.err(format!("ERROR: overflow cluster offset={c:#x}"));
                self.err("Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing".into());
                res.corruptions += 1;
            } else {
                rt.set(k, r + 1);
                if rt.over_budget() {
                    res.check_errors += 1;
                    return Err(libc::ENOMEM);
                }
            }
            c += cs;
        }
        Ok(())
    }

    fn l2_entry(&self, l2: &[u8], i: usize) -> (u64, u64) {
        if self.header.extended_l2() {
            (be64(l2, i * 16), be64(l2, i * 16 + 8))
        } else {
            (be64(l2, i * 8), 0)
        }
    }

    /// Splits a compressed L2 entry into host offset and byte count.
    fn compressed(&self, entry: u64) -> (u64, u64) {
        let shift = 62 - (self.header.cluster_bits - 8);
        let mask = (1u64 << (self.header.cluster_bits - 8)) - 1;
        let coffset = entry & ((1u64 << shift) - 1);
        let sectors = ((entry >> shift) & mask) + 1;
        (coffset, sectors * 512 - (coffset & 511))
    }

    /// QEMU's fix_l2_entry_by_zero: an unaligned cluster without data becomes a zero
    /// cluster (its allocated subclusters zero ones); the caller counted the corruption.
    /// Err(true) when the entry would overlap other metadata (the L2 table is then not
    /// checked further).
    fn fix_l2_entry_by_zero(
        &mut self,
        res: &mut CheckResult,
        l2_offset: u64,
        l2: &mut [u8],
        i: usize,
        active: bool,
    ) -> Result<(), bool> {
        let esize = self.header.l2_entry_size() as usize;
        if self.header.extended_l2() {
            let bitmap = be64(l2, i * 16 + 8);
            let zeroes = (bitmap | (bitmap << 32)) & BITMAP_ALL_ZEROES;
            put64(l2, i * 16 + 8, zeroes);
            put64(l2, i * 16, 0);
        } else {
            put64(l2, i * 8, OFLAG_ZERO);
        }
        let at = l2_offset + (i * esize) as u64;
        // the entry lies in an L2 table of its own kind, whose check is left out (inactive
        // L2 tables are never checked, as QEMU's default overlap checks leave them out); the
        // checks after it still apply (a refcount block listed over the same cluster)
        let ignored = if active { "active L2 table" } else { "" };
        if let Some(what) = self.overlapped_metadata_except(at, esize as u64, ignored) {
            self.signal_corruption(&format!(
                "Preventing invalid write on metadata (overlaps with {what})"
            ));
            self.err("ERROR: Overlap check failed".into());
            res.check_errors += 1;
            return Err(true);
        }
        if let Err(e) = self.file.write_at(at, &l2[i * esize..(i + 1) * esize]) {
            self.err(format!(
                "ERROR: Failed to overwrite L2 table entry: {}",
                strerror(e)
            ));
            res.check_errors += 1;
            return Err(false);
        }
        res.corruptions -= 1;
        res.corruptions_fixed += 1;
        Ok(())
    }

    fn check_l2(
        &mut self,
        res: &mut CheckResult,
        rt: &mut RefArray,
        l2_offset: u64,
        flags: u32,
        fix: u32,
        active: bool,
    ) -> Result<(), i32> {
        let cs = self.cs();
        let mut l2 = self.file.read_at(l2_offset, cs as usize).map_err(|_| {
            res.check_errors += 1;
            libc::EIO
        })?;
        let mut next_contiguous = 0u64;
        for i in 0..self.header.l2_entries() as usize {
            let (mut entry, bitmap) = self.l2_entry(&l2, i);
            let ty = l2_cluster_type(entry, &self.header);
            if ty != ClusterType::Compressed && entry & 0x3f00_0000_0000_01fe != 0 {
                self.err(format!(
                    "ERROR found l2 entry with reserved bits set: {entry:x}"
                ));
                res.corruptions += 1;
            }
            match ty {
                ClusterType::Compressed => {
                    if entry & OFLAG_COPIED != 0 {
                        let (coff, _) = self.compressed(entry);
                        self.err(format!(
                            "ERROR: coffset=0x{coff:x}: copied flag must never be set for compressed clusters"
                        ));
                        entry &= !OFLAG_COPIED;
                        res.corruptions += 1;
                    }
                    if has_data_file(&self.header) {
                        self.err(format!(
                            "ERROR compressed cluster {i} with data file, entry=0x{entry:x}"
                        ));
                        res.corruptions += 1;
                        continue;
                    }
                    if bitmap != 0 {
                        self.err(format!(
                            "ERROR compressed cluster {i} with non-zero subcluster allocation bitmap, entry=0x{entry:x}"
                        ));
                        res.corruptions += 1;
                        continue;
                    }
                    let (coff, csize) = self.compressed(entry);
                    self.inc_refcounts(res, rt, coff, csize)?;
                    if flags & CHECK_FRAG_INFO != 0 {
                        res.allocated_clusters += 1;
                        res.compressed_clusters += 1;
                        res.fragmented_clusters += 1;
                    }
                }
                ClusterType::ZeroAlloc | ClusterType::Normal => {
                    let offset = entry & L2E_OFFSET_MASK;
                    if (bitmap >> 32) & bitmap != 0 {
                        res.corruptions += 1;
                        self.err(format!(
                            "ERROR offset={offset:x}: Allocated cluster has corrupted subcluster allocation bitmap"
                        ));
                    }
                    if !offset.is_multiple_of(cs) {
                        res.corruptions += 1;
                        let contains_data = if self.header.extended_l2() {
                            bitmap & 0xffff_ffff != 0
                        } else {
                            entry & OFLAG_ZERO == 0
                        };
                        if contains_data {
                            self.err(format!(
                                "ERROR offset={offset:x}: Data cluster is not properly aligned; L2 entry corrupted."
                            ));
                        } else {
                            let repair = fix & FIX_ERRORS != 0;
                            self.err(format!(
                                "{} offset={offset:x}: Preallocated cluster is not properly aligned; L2 entry corrupted.",
                                if repair { "Repairing" } else { "ERROR" }
                            ));
                            if repair {
                                match self.fix_l2_entry_by_zero(res, l2_offset, &mut l2, i, active)
                                {
                                    // the cluster is unused now
                                    Ok(()) => continue,
                                    Err(true) => return Err(libc::EIO),
                                    // not fixed: the rest of the table is still checked
                                    Err(false) => {}
                                }
                            }
                        }
                    }
                    if flags & CHECK_FRAG_INFO != 0 {
                        res.allocated_clusters += 1;
                        if next_contiguous != 0 && offset != next_contiguous {
                            res.fragmented_clusters += 1;
                        }
                        next_contiguous = offset + cs;
                    }
                    // data file clusters have no refcounts
                    if !has_data_file(&self.header) {
                        self.inc_refcounts(res, rt, offset, cs)?;
                    }
                }
                ClusterType::ZeroPlain => {}
                ClusterType::Unallocated => {
                    if bitmap & 0xffff_ffff != 0 {
                        res.corruptions += 1;
                        self.err(
                            "ERROR: Unallocated cluster has non-zero subcluster allocation map"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn check_l1(
        &mut self,
        res: &mut CheckResult,
        rt: &mut RefArray,
        l1_offset: u64,
        l1_size: u32,
        flags: u32,
        fix: u32,
        active: bool,
    ) -> Result<(), i32> {
        if l1_size == 0 {
            return Ok(());
        }
        let bytes = u64::from(l1_size) * 8;
        self.inc_refcounts(res, rt, l1_offset, bytes)?;
        // read from the file each pass, the active table too: an L1 table over other
        // metadata (the header, say) sees what a rebuild wrote there
        let l1 = match self.file.read_at(l1_offset, bytes as usize) {
            Ok(b) => table(&b),
            Err(_) => {
                self.err("ERROR: I/O error in check_refcounts_l1".into());
                res.check_errors += 1;
                return Err(libc::EIO);
            }
        };
        for e in l1 {
            if e == 0 {
                continue;
            }
            if e & 0x7f00_0000_0000_01ff != 0 {
                self.err(format!(
                    "ERROR found L1 entry with reserved bits set: {e:x}"
                ));
                res.corruptions += 1;
            }
            let l2_offset = e & L1E_OFFSET_MASK;
            self.inc_refcounts(res, rt, l2_offset, self.cs())?;
            if !l2_offset.is_multiple_of(self.cs()) {
                self.err(format!(
                    "ERROR l2_offset={l2_offset:x}: Table is not cluster aligned; L1 entry corrupted"
                ));
                res.corruptions += 1;
            }
            self.check_l2(res, rt, l2_offset, flags, fix, active)?;
        }
        Ok(())
    }

    /// `calculate_refcounts`.
    fn calculate_refcounts(
        &mut self,
        res: &mut CheckResult,
        fix: u32,
        rebuild: &mut bool,
        rt: &mut RefArray,
    ) -> Result<(), i32> {
        let cs = self.cs();
        self.inc_refcounts(res, rt, 0, cs)?;
        let (l1o, l1s) = (self.header.l1_table_offset, self.header.l1_size);
        self.check_l1(res, rt, l1o, l1s, CHECK_FRAG_INFO, fix, true)?;
        if has_data_file(&self.header) && !self.snapshots.is_empty() {
            self.err(format!(
                "ERROR {} snapshots in image with data file",
                self.snapshots.len()
            ));
            res.corruptions += 1;
        }
        for sn in self.snapshots.clone() {
            if sn.l1_table_offset % cs != 0 {
                self.err(format!(
                    "ERROR snapshot {} ({}) l1_offset={:#x}: L1 table is not cluster aligned; snapshot table entry corrupted",
                    sn.id, sn.name, sn.l1_table_offset
                ));
                res.corruptions += 1;
                continue;
            }
            if u64::from(sn.l1_size) > MAX_L1_SIZE / 8 {
                self.err(format!(
                    "ERROR snapshot {} ({}) l1_size={:#x}: L1 table is too large; snapshot table entry corrupted",
                    sn.id, sn.name, sn.l1_size
                ));
                res.corruptions += 1;
                continue;
            }
            self.check_l1(res, rt, sn.l1_table_offset, sn.l1_size, 0, fix, false)?;
        }
        let (so, ss) = (self.header.snapshots_offset, self.snapshots_size);
        self.inc_refcounts(res, rt, so, ss)?;
        let (ro, rs) = (
            self.header.refcount_table_offset,
            self.reftable.len() as u64 * 8,
        );
        self.inc_refcounts(res, rt, ro, rs)?;
        self.check_bitmaps_refcounts(res, rt)?;
        self.check_refblocks(res, fix, rebuild, rt)
    }

    /// `qcow2_check_bitmaps_refcounts`: the bitmap directory, each bitmap's table and the
    /// clusters the tables name.
    fn check_bitmaps_refcounts(
        &mut self,
        res: &mut CheckResult,
        rt: &mut RefArray,
    ) -> Result<(), i32> {
        let Some(ext) = self.bitmaps else {
            return Ok(());
        };
        let cs = self.cs();
        self.inc_refcounts(res, rt, ext.dir_offset, ext.dir_size)?;
        let len = self.header.size / 512 * 512;
        let list = (ext.dir_size != 0 && ext.dir_size <= super::header::MAX_BITMAP_DIRECTORY_SIZE)
            .then(|| {
                self.file
                    .read_at(ext.dir_offset, ext.dir_size as usize)
                    .ok()
            })
            .flatten()
            .and_then(|dir| super::bitmap::parse_directory(&dir, ext.nb_bitmaps, cs, len).ok());
        let Some(list) = list else {
            res.corruptions += 1;
            return Err(libc::EINVAL);
        };
        for e in list {
            self.inc_refcounts(res, rt, e.table_offset, u64::from(e.table_size) * 8)?;
            let Ok(raw) = self.file.read_at(e.table_offset, e.table_size as usize * 8) else {
                res.corruptions += 1;
                return Err(libc::EIO);
            };
            let Ok(table) = super::bitmap::parse_table(&raw, cs) else {
                res.corruptions += 1;
                return Err(libc::EINVAL);
            };
            for entry in table {
                let offset = entry & super::bitmap::TABLE_ENTRY_OFFSET_MASK;
                if offset != 0 {
                    self.inc_refcounts(res, rt, offset, cs)?;
                }
            }
        }
        Ok(())
    }

    fn check_refblocks(
        &mut self,
        res: &mut CheckResult,
        fix: u32,
        rebuild: &mut bool,
        rt: &mut RefArray,
    ) -> Result<(), i32> {
        let cs = self.cs();
        for i in 0..self.reftable.len() {
            let entry = self.reftable[i];
            let offset = entry & REFT_OFFSET_MASK;
            let cluster = offset / cs;
            if entry & 0x1ff != 0 {
                self.err(format!(
                    "ERROR refcount table entry {i} has reserved bits set"
                ));
                res.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if !offset.is_multiple_of(cs) {
                self.err(format!(
                    "ERROR refcount block {i} is not cluster aligned; refcount table entry corrupted"
                ));
                res.corruptions += 1;
                *rebuild = true;
                continue;
            }
            if cluster >= rt.len {
                res.corruptions += 1;
                let repairing = fix & FIX_ERRORS != 0;
                self.err(format!(
                    "{} refcount block {i} is outside image",
                    if repairing { "Repairing" } else { "ERROR" }
                ));
                if repairing {
                    // Grow the file to cover the block, as QEMU does (sparse: the in-memory
                    // refcounts follow what is referenced, not the file's size).
                    let resized = if offset > i64::MAX as u64 - cs {
                        Err(libc::EINVAL)
                    } else {
                        self.file.set_len(offset + cs).inspect_err(|&e| {
                            self.report(format!("Could not resize file: {}", strerror(e)))
                        })
                    };
                    match resized {
                        Ok(()) => {
                            if let Err(e) = rt.grow(self.file_len().div_ceil(cs)) {
                                res.check_errors += 1;
                                return Err(e);
                            }
                            res.corruptions -= 1;
                            res.corruptions_fixed += 1;
                            self.inc_refcounts(res, rt, offset, cs)?;
                            continue;
                        }
                        Err(e) => {
                            *rebuild = true;
                            self.err(format!("ERROR could not resize image: {}", strerror(e)));
                        }
                    }
                }
                continue;
            }
            if offset != 0 {
                self.inc_refcounts(res, rt, offset, cs)?;
                let r = rt.get(cluster);
                if r != 1 {
                    self.err(format!("ERROR refcount block {i} refcount={r}"));
                    res.corruptions += 1;
                    *rebuild = true;
                }
            }
        }
        Ok(())
    }

    /// `compare_refcounts`; returns the highest cluster with any refcount.
    fn compare_refcounts(
        &mut self,
        res: &mut CheckResult,
        fix: u32,
        rebuild: &mut bool,
        rt: &RefArray,
    ) -> u64 {
        let mut highest = 0;
        let per_block = self.header.refblock_entries();
        let mut i = 0;
        // where the next used page of `rt` and the next mapped refcount block start, as last
        // found (both only move forward: the scans stay linear)
        let mut next_used = 0u64;
        let mut next_mapped = 0usize;
        while i < rt.len {
            // clusters no refcount block covers and nothing references agree (both 0)
            let index = (i / per_block) as usize;
            let unmapped = self
                .reftable
                .get(index)
                .is_none_or(|e| e & REFT_OFFSET_MASK == 0);
            if unmapped {
                if next_mapped <= index {
                    next_mapped = index;
                    while next_mapped < self.reftable.len()
                        && self.reftable[next_mapped] & REFT_OFFSET_MASK == 0
                    {
                        next_mapped += 1;
                    }
                }
                let next_block = if next_mapped >= self.reftable.len() {
                    u64::MAX
                } else {
                    next_mapped as u64 * per_block
                };
                if next_used < i {
                    next_used = rt.next_used(i);
                }
                let used = if (next_used / rt.per_page()) == (i / rt.per_page()) {
                    i
                } else {
                    next_used
                };
                let next = used.min(next_block).min(rt.len);
                if next > i {
                    i = next;
                    continue;
                }
            }
            let cluster = i;
            i += 1;
            let i = cluster;
            let r1 = match self.get_refcount(i) {
                Ok(r) => r,
                Err(e) => {
                    self.err(format!(
                        "Can't get refcount for cluster {i}: {}",
                        strerror(e)
                    ));
                    res.check_errors += 1;
                    continue;
                }
            };
            let r2 = rt.get(i);
            if r1 > 0 || r2 > 0 {
                highest = i;
            }
            if r1 == r2 {
                continue;
            }
            #[derive(PartialEq)]
            enum Fix {
                No,
                Leak,
                Corruption,
            }
            let mut how = Fix::No;
            if r1 == 0 {
                *rebuild = true;
            } else if r1 > r2 && fix & FIX_LEAKS != 0 {
                how = Fix::Leak;
            } else if r1 < r2 && fix & FIX_ERRORS != 0 {
                how = Fix::Corruption;
            }
            let word = if how != Fix::No {
                "Repairing"
            } else if r1 < r2 {
                "ERROR"
            } else {
                "Leaked"
            };
            self.err(format!("{word} cluster {i} refcount={r1} reference={r2}"));
            if how != Fix::No && self.writable {
                let ok = self.update_refcount(i, r1.abs_diff(r2), r1 > r2).is_ok();
                if ok {
                    match how {
                        Fix::Leak => res.leaks_fixed += 1,
                        _ => res.corruptions_fixed += 1,
                    }
                    continue;
                }
            }
            if r1 < r2 {
                res.corruptions += 1;
            } else {
                res.leaks += 1;
            }
        }
        highest
    }

    fn check_oflag_copied(&mut self, res: &mut CheckResult, fix: u32) -> Result<(), i32> {
        let repair = if fix & FIX_ERRORS != 0 {
            true
        } else if fix & FIX_LEAKS != 0 {
            res.check_errors == 0 && res.corruptions == 0 && res.leaks == 0
        } else {
            false
        } && self.writable;
        let cs = self.cs();
        for i in 0..self.l1.len() {
            let l1e = self.l1[i];
            let l2_offset = l1e & L1E_OFFSET_MASK;
            if l2_offset == 0 {
                continue;
            }
            let Ok(refcount) = self.get_refcount(l2_offset / cs) else {
                continue;
            };
            if (refcount == 1) != (l1e & OFLAG_COPIED != 0) {
                res.corruptions += 1;
                self.err(format!(
                    "{} OFLAG_COPIED L2 cluster: l1_index={i} l1_entry={l1e:x} refcount={refcount}",
                    if repair { "Repairing" } else { "ERROR" }
                ));
                if repair {
                    let new = if refcount == 1 {
                        l1e | OFLAG_COPIED
                    } else {
                        l1e & !OFLAG_COPIED
                    };
                    self.l1[i] = new;
                    let at = self.header.l1_table_offset + i as u64 * 8;
                    // qcow2_write_l1_entry writes the entry's 512-byte block of the table
                    let block = self.header.l1_table_offset + (i as u64 / 64) * 512;
                    if let Some(what) =
                        self.overlapped_metadata_except(block, 512, "active L1 table")
                    {
                        self.signal_corruption(&format!(
                            "Preventing invalid write on metadata (overlaps with {what})"
                        ));
                        res.check_errors += 1;
                        return Err(libc::EIO);
                    }
                    if self.file.write_at(at, &new.to_be_bytes()).is_err() {
                        res.check_errors += 1;
                        return Err(libc::EIO);
                    }
                    res.corruptions -= 1;
                    res.corruptions_fixed += 1;
                }
            }
            let mut l2 = match self.file.read_at(l2_offset, cs as usize) {
                Ok(b) => b,
                Err(e) => {
                    self.err(format!("ERROR: Could not read L2 table: {}", strerror(e)));
                    res.check_errors += 1;
                    return Err(libc::EIO);
                }
            };
            let mut dirty = 0;
            for j in 0..self.header.l2_entries() as usize {
                let (entry, _) = self.l2_entry(&l2, j);
                let ty = l2_cluster_type(entry, &self.header);
                if !matches!(ty, ClusterType::Normal | ClusterType::ZeroAlloc) {
                    continue;
                }
                let refcount = if has_data_file(&self.header) {
                    1
                } else {
                    match self.get_refcount((entry & L2E_OFFSET_MASK) / cs) {
                        Ok(r) => r,
                        Err(_) => continue,
                    }
                };
                if (refcount == 1) != (entry & OFLAG_COPIED != 0) {
                    res.corruptions += 1;
                    self.err(format!(
                        "{} OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={refcount}",
                        if repair { "Repairing" } else { "ERROR" }
                    ));
                    if repair {
                        let new = if refcount == 1 {
                            entry | OFLAG_COPIED
                        } else {
                            entry & !OFLAG_COPIED
                        };
                        let at = j * self.header.l2_entry_size() as usize;
                        put64(&mut l2, at, new);
                        dirty += 1;
                    }
                }
            }
            if dirty > 0 {
                if let Some(what) =
                    self.overlapped_metadata_except(l2_offset, cs, "active L2 table")
                {
                    self.signal_corruption(&format!(
                        "Preventing invalid write on metadata (overlaps with {what})"
                    ));
                    self.err(format!(
                        "ERROR: Could not write L2 table; metadata overlap check failed: {}",
                        strerror(libc::EIO)
                    ));
                    res.check_errors += 1;
                    return Err(libc::EIO);
                }
                if let Err(e) = self.file.write_at(l2_offset, &l2) {
                    self.err(format!("ERROR: Could not write L2 table: {}", strerror(e)));
                    res.check_errors += 1;
                    return Err(libc::EIO);
                }
                res.corruptions -= dirty;
                res.corruptions_fixed += dirty;
            }
        }
        Ok(())
    }

    /// `qcow2_check_refcounts`; Err is a negative errno (the check failed).
    pub fn check(&mut self, fix: u32) -> (CheckResult, Result<(), i32>) {
        let mut snapshot_res = CheckResult::default();
        if let Err(e) = self.check_read_snapshot_table(&mut snapshot_res, fix) {
            return (snapshot_res, Err(e));
        }
        let mut res = CheckResult::default();
        let r = self.check_inner(&mut res, fix);
        // the changed refcount blocks stay in the cache: QEMU writes them back when the cache
        // replaces them, at a flush (mark_clean, the snapshot table's rewrite) or at close
        if r.is_ok() {
            let r = self.check_fix_snapshot_table(&mut snapshot_res, fix);
            add_check_result(&mut res, &snapshot_res);
            return (res, r);
        }
        add_check_result(&mut res, &snapshot_res);
        (res, r)
    }

    fn check_inner(&mut self, res: &mut CheckResult, fix: u32) -> Result<(), i32> {
        let cs = self.cs();
        let size = self.file_len();
        let nb_clusters = size.div_ceil(cs);
        if nb_clusters > i32::MAX as u64 {
            res.check_errors += 1;
            return Err(libc::EFBIG);
        }
        // QEMU counts the virtual size in whole sectors (bs->total_sectors)
        res.total_clusters = (self.header.size / 512 * 512).div_ceil(cs);
        let mut rt = RefArray::new(self.order(), nb_clusters).inspect_err(|_| {
            res.check_errors += 1;
        })?;
        let mut rebuild = false;
        self.calculate_refcounts(res, fix, &mut rebuild, &mut rt)?;
        let pre_compare = res.clone();
        let mut highest = self.compare_refcounts(res, 0, &mut rebuild, &rt);
        if rebuild && fix & FIX_ERRORS != 0 && self.writable {
            let old = res.clone();
            let mut fresh_leaks = 0;
            self.err("Rebuilding refcount structure".into());
            if let Err((e, msg)) = self.rebuild_refcount_structure(&mut rt) {
                res.check_errors += 1;
                self.report(format!("{msg}: {}", strerror(e)));
                return Err(e);
            }
            res.corruptions = 0;
            res.leaks = 0;
            rebuild = false;
            let mut rt = RefArray::new(self.order(), rt.len).inspect_err(|_| {
                res.check_errors += 1;
            })?;
            self.calculate_refcounts(res, 0, &mut rebuild, &mut rt)?;
            if fix & FIX_LEAKS != 0 {
                let saved = res.clone();
                *res = CheckResult::default();
                highest = self.compare_refcounts(res, FIX_LEAKS, &mut rebuild, &rt);
                if rebuild {
                    self.err("ERROR rebuilt refcount structure is still broken".into());
                }
                fresh_leaks = res.leaks;
                *res = saved;
            }
            if res.corruptions < old.corruptions {
                res.corruptions_fixed += old.corruptions - res.corruptions;
            }
            if res.leaks < old.leaks {
                res.leaks_fixed += old.leaks - res.leaks;
            }
            res.leaks += fresh_leaks;
        } else if fix != 0 {
            if rebuild {
                self.err("ERROR need to rebuild refcount structures".into());
                res.check_errors += 1;
                return Err(libc::EIO);
            }
            if res.leaks != 0 || res.corruptions != 0 {
                *res = pre_compare;
                highest = self.compare_refcounts(res, fix, &mut rebuild, &rt);
            }
        }
        self.check_oflag_copied(res, fix)?;
        res.image_end_offset = (highest + 1) * cs;
        Ok(())
    }

    /// `alloc_clusters_imrt`: `count` contiguous clusters free in the in-memory refcounts,
    /// searched from `*first_free`, appended past the end if need be; marked used.
    fn alloc_clusters_imrt(&self, count: u64, rt: &mut RefArray, first_free: &mut u64) -> u64 {
        let mut cluster = *first_free;
        let mut contiguous = 0;
        let mut first_gap = true;
        while cluster < rt.len && contiguous < count {
            if rt.get(cluster) == 0 {
                contiguous += 1;
                if first_gap {
                    *first_free = cluster;
                    first_gap = false;
                }
            } else {
                contiguous = 0;
            }
            cluster += 1;
        }
        if contiguous < count {
            // QEMU's array grows by a few clusters here; the limit is far off
            let _ = rt.grow(cluster + count - contiguous);
        }
        cluster -= contiguous;
        for i in 0..count {
            rt.set(cluster + i, 1);
        }
        cluster * self.cs()
    }

    /// `rebuild_refcounts_write_refblocks`: Ok(true) if the reftable grew.
    fn write_refblocks(
        &mut self,
        rt: &mut RefArray,
        first: u64,
        end: u64,
        reftable: &mut Vec<u64>,
    ) -> Result<bool, (i32, &'static str)> {
        let cs = self.cs();
        let per_block = self.header.refblock_entries();
        let mut first_free = 0;
        let mut grown = false;
        let mut end = end;
        let mut cluster = first;
        while cluster < end {
            if rt.get(cluster) == 0 {
                cluster = (cluster + 1).max(rt.next_used(cluster).min(end));
                continue;
            }
            let index = cluster / per_block;
            let start = index * per_block;
            let offset = match reftable.get(index as usize) {
                Some(&o) if o != 0 => o,
                _ => {
                    first_free = first_free.max(start);
                    let off = self.alloc_clusters_imrt(1, rt, &mut first_free);
                    if off / cs >= end {
                        end = off / cs + 1;
                    }
                    if reftable.len() as u64 <= index {
                        let entries = ((index + 1) * 8).div_ceil(cs) * cs / 8;
                        if entries * 8 > MAX_REBUILT_REFTABLE_BYTES {
                            return Err((libc::ENOMEM, "ERROR allocating reftable memory"));
                        }
                        reftable.resize(entries as usize, 0);
                        grown = true;
                    }
                    reftable[index as usize] = off;
                    off
                }
            };
            if let Some(what) = self.overlapped_metadata(offset, cs) {
                self.signal_corruption(&format!(
                    "Preventing invalid write on metadata (overlaps with {what})"
                ));
                return Err((libc::EIO, "ERROR writing refblock"));
            }
            let slice = rt.slice(index * cs, cs);
            self.file
                .write_at(offset, &slice)
                .map_err(|_| (libc::EIO, "ERROR writing refblock"))?;
            cluster = start + per_block;
        }
        Ok(grown)
    }

    /// QEMU's qcow2_check_metadata_overlap with its default checks: the first metadata
    /// structure, in QEMU's order and words, that a write of `len` bytes at `offset` would hit
    /// (the range is widened to whole clusters first, as QEMU does).
    fn overlapped_metadata(&self, offset: u64, len: u64) -> Option<&'static str> {
        self.overlapped_metadata_except(offset, len, "")
    }

    /// [`Self::overlapped_metadata`] without the check named `ignored` (QEMU's `ign`).
    fn overlapped_metadata_except(
        &self,
        offset: u64,
        len: u64,
        ignored: &str,
    ) -> Option<&'static str> {
        let cs = self.cs();
        if len == 0 {
            return None;
        }
        if offset < cs {
            return Some("qcow2_header");
        }
        let start = offset & !(cs - 1);
        let end = (offset.saturating_add(len)).div_ceil(cs).saturating_mul(cs);
        let hit = |at: u64, size: u64| size != 0 && at < end && start < at.saturating_add(size);
        let (l1_offset, reftable_offset) = (
            self.header.l1_table_offset,
            self.header.refcount_table_offset,
        );
        let on = |name: &str| name != ignored;
        if on("active L1 table") && hit(l1_offset, self.l1.len() as u64 * 8) {
            return Some("active L1 table");
        }
        if on("refcount table") && hit(reftable_offset, self.reftable.len() as u64 * 8) {
            return Some("refcount table");
        }
        if on("snapshot table") && hit(self.header.snapshots_offset, self.snapshots_size) {
            return Some("snapshot table");
        }
        if on("inactive L1 table")
            && self
                .snapshots
                .iter()
                .any(|sn| hit(sn.l1_table_offset, u64::from(sn.l1_size) * 8))
        {
            return Some("inactive L1 table");
        }
        let hits_table = |e: &u64, mask: u64| e & mask != 0 && hit(e & mask, cs);
        if on("active L2 table") && self.l1.iter().any(|e| hits_table(e, L1E_OFFSET_MASK)) {
            return Some("active L2 table");
        }
        if on("refcount block")
            && self
                .reftable
                .iter()
                .any(|e| hits_table(e, REFT_OFFSET_MASK))
        {
            return Some("refcount block");
        }
        // checked while the autoclear bit is set, even with no directory read (then the
        // empty range at 0, which QEMU's ranges_overlap takes as ending at UINT64_MAX)
        if on("bitmap directory") && self.header.autoclear_features & AUTOCLEAR_BITMAPS != 0 {
            let (at, size) = self.bitmaps.map_or((0, 0), |e| (e.dir_offset, e.dir_size));
            let last = |first: u64, len: u64| first.wrapping_add(len).wrapping_sub(1);
            if !(last(at, size) < start || last(start, end - start) < at) {
                return Some("bitmap directory");
            }
        }
        None
    }

    /// `rebuild_refcount_structure`: new refcount blocks and table from the in-memory refcounts.
    fn rebuild_refcount_structure(&mut self, rt: &mut RefArray) -> Result<(), (i32, &'static str)> {
        let cs = self.cs();
        // qcow2_cache_empty, whose failure QEMU ignores (the tables then stay cached)
        if self.flush_refblocks().is_ok() {
            for i in 0..self.refcache.size() {
                self.refcache.discard(i);
            }
        }
        let mut reftable = Vec::new();
        let end = rt.len;
        self.write_refblocks(rt, 0, end, &mut reftable)?;
        let (mut rt_offset, mut rt_clusters);
        loop {
            let length = reftable.len() as u64 * 8;
            rt_clusters = length.div_ceil(cs);
            let mut first_free = 0;
            rt_offset = self.alloc_clusters_imrt(rt_clusters, rt, &mut first_free);
            let start = rt_offset / cs;
            if !self.write_refblocks(rt, start, start + rt_clusters, &mut reftable)? {
                break;
            }
        }
        if let Some(what) = self.overlapped_metadata(rt_offset, reftable.len() as u64 * 8) {
            self.signal_corruption(&format!(
                "Preventing invalid write on metadata (overlaps with {what})"
            ));
            return Err((libc::EIO, "ERROR writing reftable"));
        }
        // written a piece at a time: no second copy of a table that may take 128 MiB
        const PIECE: usize = 1 << 16;
        for (n, piece) in reftable.chunks(PIECE).enumerate() {
            let bytes: Vec<u8> = piece.iter().flat_map(|e| e.to_be_bytes()).collect();
            self.file
                .write_at(rt_offset + (n * PIECE * 8) as u64, &bytes)
                .map_err(|_| (libc::EIO, "ERROR writing reftable"))?;
        }
        let mut hdr = rt_offset.to_be_bytes().to_vec();
        hdr.extend_from_slice(&(rt_clusters as u32).to_be_bytes());
        self.file
            .write_at(48, &hdr)
            .map_err(|_| (libc::EIO, "ERROR setting reftable"))?;
        self.header.refcount_table_offset = rt_offset;
        self.header.refcount_table_clusters = rt_clusters as u32;
        self.reftable = reftable;
        Ok(())
    }

    /// The stderr lines produced so far (and forget them).
    pub fn take_log(&mut self) -> Vec<LogLine> {
        std::mem::take(&mut self.log)
    }

    /// Clears the dirty and then the corrupt bit after a successful repair
    /// (`qcow2_mark_clean`, `qcow2_mark_consistent`): each one that is set flushes the caches
    /// and rewrites the header.
    pub fn mark_clean(&mut self) -> Result<(), i32> {
        for bit in [INCOMPAT_DIRTY, INCOMPAT_CORRUPT] {
            if self.header.incompatible_features & bit != 0 {
                self.flush_refblocks()?;
                self.header.incompatible_features &= !bit;
                self.update_header()?;
            }
        }
        Ok(())
    }
}

/// QEMU's qcow2_add_check_result without the allocation figures.
fn add_check_result(out: &mut CheckResult, src: &CheckResult) {
    out.corruptions += src.corruptions;
    out.leaks += src.leaks;
    out.check_errors += src.check_errors;
    out.corruptions_fixed += src.corruptions_fixed;
    out.leaks_fixed += src.leaks_fixed;
}

/// `qcow2_get_cluster_type` of the header's image: with extended L2 entries bit 0 is not a
/// zero flag, with an external data file offset 0 is a real offset in a COPIED entry.
pub fn l2_cluster_type(entry: u64, h: &Header) -> ClusterType {
    let ty = if h.extended_l2() {
        cluster_type(entry & !OFLAG_ZERO)
    } else {
        cluster_type(entry)
    };
    if ty == ClusterType::Unallocated && has_data_file(h) && entry & OFLAG_COPIED != 0 {
        return ClusterType::Normal;
    }
    ty
}

fn has_data_file(h: &Header) -> bool {
    h.incompatible_features & super::header::INCOMPAT_DATA_FILE != 0
}

/// The in-memory refcount array: entries of the image's refcount width, so it overflows where
/// QEMU's does. It is kept in pages allocated on first use, so its memory follows the clusters
/// referenced rather than the file's size (a repair may grow the file to a terabyte).
pub struct RefArray {
    order: u32,
    len: u64,
    pages: Vec<Option<Box<[u8]>>>,
    page_count: usize,
}

/// Bytes per page of the in-memory refcount array.
const PAGE_BYTES: usize = 1 << 16;
/// The most memory the in-memory refcount array may take; past it the check fails with ENOMEM
/// (as QEMU's does when its array cannot be allocated).
const MAX_REF_ARRAY_BYTES: usize = 128 << 20;

impl RefArray {
    fn new(order: u32, len: u64) -> Result<Self, i32> {
        let mut a = RefArray {
            order,
            len: 0,
            pages: Vec::new(),
            page_count: 0,
        };
        a.grow(len)?;
        Ok(a)
    }
    /// Entries per page.
    fn per_page(&self) -> u64 {
        (PAGE_BYTES as u64 * 8) >> self.order
    }
    /// Err(ENOMEM) where QEMU's flat array would be too large to allocate.
    fn grow(&mut self, len: u64) -> Result<(), i32> {
        if (u128::from(len) << self.order).div_ceil(8) > QEMU_REF_ARRAY_LIMIT {
            return Err(libc::ENOMEM);
        }
        self.len = self.len.max(len);
        let pages = self.len.div_ceil(self.per_page()) as usize;
        if pages > self.pages.len() {
            self.pages.resize_with(pages, || None);
        }
        Ok(())
    }
    fn get(&self, i: u64) -> u64 {
        let per = self.per_page();
        match self.pages.get((i / per) as usize) {
            Some(Some(p)) => get_refcount(p, self.order, i % per),
            _ => 0,
        }
    }
    fn set(&mut self, i: u64, v: u64) {
        let per = self.per_page();
        let slot = &mut self.pages[(i / per) as usize];
        if slot.is_none() {
            if v == 0 {
                return;
            }
            *slot = Some(vec![0u8; PAGE_BYTES].into_boxed_slice());
            self.page_count += 1;
        }
        set_refcount(slot.as_mut().expect("just made"), self.order, i % per, v)
    }
    /// Whether the memory budget is spent.
    fn over_budget(&self) -> bool {
        self.page_count * PAGE_BYTES > MAX_REF_ARRAY_BYTES
    }
    /// The first entry at or after `i` whose page holds any refcount (`len` if none).
    fn next_used(&self, i: u64) -> u64 {
        let per = self.per_page();
        let mut page = (i / per) as usize;
        while page < self.pages.len() && self.pages[page].is_none() {
            page += 1;
        }
        if page == (i / per) as usize {
            i
        } else {
            (page as u64 * per).min(self.len)
        }
    }
    /// `len` bytes of the packed array from byte `start`, zero past its end.
    fn slice(&self, start: u64, len: u64) -> Vec<u8> {
        let mut out = vec![0u8; len as usize];
        let mut at = start;
        while at < start + len {
            let page = (at / PAGE_BYTES as u64) as usize;
            let within = (at % PAGE_BYTES as u64) as usize;
            let n = ((PAGE_BYTES - within) as u64).min(start + len - at) as usize;
            if let Some(Some(p)) = self.pages.get(page) {
                let o = (at - start) as usize;
                out[o..o + n].copy_from_slice(&p[within..within + n]);
            }
            at += n as u64;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::OFLAG_COMPRESSED;
    use super::*;

    #[test]
    fn cluster_types() {
        let std = Header::default();
        let ext = Header {
            incompatible_features: super::super::header::INCOMPAT_EXTL2,
            ..Header::default()
        };
        let data = Header {
            incompatible_features: super::super::header::INCOMPAT_DATA_FILE,
            ..Header::default()
        };
        assert_eq!(l2_cluster_type(0, &std), ClusterType::Unallocated);
        assert_eq!(l2_cluster_type(1, &std), ClusterType::ZeroPlain);
        assert_eq!(l2_cluster_type(0x50001, &std), ClusterType::ZeroAlloc);
        assert_eq!(
            l2_cluster_type(OFLAG_COPIED, &std),
            ClusterType::Unallocated
        );
        assert_eq!(l2_cluster_type(OFLAG_COPIED, &data), ClusterType::Normal);
        assert_eq!(
            l2_cluster_type(0x50000 | OFLAG_COPIED, &std),
            ClusterType::Normal
        );
        assert_eq!(
            l2_cluster_type(OFLAG_COMPRESSED | 5, &std),
            ClusterType::Compressed
        );
        assert_eq!(l2_cluster_type(1, &ext), ClusterType::Unallocated);
    }

    #[test]
    fn ref_array_grows_and_packs() {
        let mut a = RefArray::new(0, 3).unwrap();
        a.set(2, 1);
        a.grow(100).unwrap();
        assert_eq!(a.get(2), 1);
        assert_eq!(a.get(99), 0);
        assert_eq!(a.len, 100);
    }
}
