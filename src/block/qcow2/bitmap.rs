//! Persistent dirty bitmaps (QEMU's block/qcow2-bitmap.c with the parts of its in-memory
//! dirty bitmaps that qcow2 uses): the bitmap directory read and checked at open, bitmaps
//! marked in use on disk while the image is writable, every write, zero write and discard
//! recorded at each bitmap's granularity, and the bitmaps stored back at close (or when the
//! image goes read-only) through the normal cluster allocator, with QEMU's messages.

use super::Qcow2;
use super::header::{self, AUTOCLEAR_BITMAPS, BitmapsExt, MAX_BITMAP_DIRECTORY_SIZE, MAX_BITMAPS};
use super::image_file::ImageFile;
use super::overlap::BITMAP_DIRECTORY;
use super::state::DiscardType;
use crate::block::driver::{IoResult, ReqFlags};
use crate::block::io;
use crate::block::node::Node;

const MAX_TABLE_SIZE: u64 = 0x800_0000;
/// the largest bitmap QEMU keeps in memory
const MAX_PHYS_SIZE: u64 = 0x2000_0000;
const MAX_GRANULARITY_BITS: u8 = 31;
const MIN_GRANULARITY_BITS: u8 = 9;
const MAX_NAME_SIZE: usize = 1023;
const RESERVED_FLAGS: u32 = 0xffff_fffc;
pub const FLAG_IN_USE: u32 = 1;
pub const FLAG_AUTO: u32 = 2;
const TABLE_ENTRY_RESERVED_MASK: u64 = 0xff00_0000_0000_01fe;
pub const TABLE_ENTRY_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const TABLE_ENTRY_ALL_ONES: u64 = 1;
/// the only bitmap type there is: dirty tracking
const TYPE_DIRTY_TRACKING: u8 = 1;
const ENTRY_HEADER: usize = 24;

/// One bitmap directory entry (QEMU's Qcow2Bitmap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub table_offset: u64,
    pub table_size: u32,
    pub flags: u32,
    pub granularity_bits: u8,
    pub name: Vec<u8>,
}

fn entry_size(name_len: usize, extra: usize) -> usize {
    (ENTRY_HEADER + name_len + extra).div_ceil(8) * 8
}

/// QEMU's check_dir_entry, on an entry as stored (its type and name length as stored);
/// `len` is the image length.
fn entry_ok(e: &DirEntry, ty: u8, name_len: usize, cluster_size: u64, len: u64) -> bool {
    if e.table_size == 0
        || e.table_offset == 0
        || !e.table_offset.is_multiple_of(cluster_size)
        || u64::from(e.table_size) > MAX_TABLE_SIZE
        || !(MIN_GRANULARITY_BITS..=MAX_GRANULARITY_BITS).contains(&e.granularity_bits)
        || e.flags & RESERVED_FLAGS != 0
        || name_len > MAX_NAME_SIZE
        || ty != TYPE_DIRTY_TRACKING
    {
        return false;
    }
    let phys = u64::from(e.table_size) * cluster_size;
    if phys > MAX_PHYS_SIZE {
        return false;
    }
    // a consistent bitmap must cover the whole image
    e.flags & FLAG_IN_USE != 0 || u128::from(len) <= (u128::from(phys) * 8) << e.granularity_bits
}

/// What `name` prints as (QEMU prints the C string: bytes up to the first NUL).
pub fn display_name(name: &[u8]) -> String {
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    crate::host_bytes::text_of(&name[..end])
}

/// QEMU's bitmap_list_load once the directory is read: the entries, or its error.
pub fn parse_directory(
    dir: &[u8],
    nb_bitmaps: u32,
    cluster_size: u64,
    len: u64,
) -> Result<Vec<DirEntry>, String> {
    const BROKEN: &str = "Broken bitmap directory";
    let be32 = |at: usize| u32::from_be_bytes(dir[at..at + 4].try_into().expect("4"));
    let mut list = Vec::new();
    let mut pos = 0usize;
    while pos < dir.len() {
        if pos + ENTRY_HEADER > dir.len() {
            return Err(BROKEN.into());
        }
        if list.len() as u32 >= nb_bitmaps {
            return Err("More bitmaps found than specified in header extension".into());
        }
        let table_offset = u64::from_be_bytes(dir[pos..pos + 8].try_into().expect("8"));
        let table_size = be32(pos + 8);
        let flags = be32(pos + 12);
        let ty = dir[pos + 16];
        let granularity_bits = dir[pos + 17];
        let name_len = usize::from(u16::from_be_bytes([dir[pos + 18], dir[pos + 19]]));
        let extra = be32(pos + 20) as usize;
        let next = pos + entry_size(name_len, extra);
        if next > dir.len() {
            return Err(BROKEN.into());
        }
        if extra != 0 {
            return Err("Bitmap extra data is not supported".into());
        }
        let name = dir[pos + ENTRY_HEADER..pos + ENTRY_HEADER + name_len].to_vec();
        // the name as QEMU keeps it (g_strndup stops at a NUL)
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let e = DirEntry {
            table_offset,
            table_size,
            flags,
            granularity_bits,
            name: name[..end].to_vec(),
        };
        if !entry_ok(&e, ty, name_len, cluster_size, len) {
            return Err(format!(
                "Bitmap '{}' doesn't satisfy the constraints",
                display_name(&name)
            ));
        }
        list.push(e);
        pos = next;
    }
    if list.len() as u32 != nb_bitmaps {
        return Err("Less bitmaps found than specified in header extension".into());
    }
    Ok(list)
}

/// QEMU's bitmap_list_store before the write: the directory's bytes, or EINVAL when an entry
/// breaks the constraints.
fn build_directory(list: &[DirEntry], cluster_size: u64, len: u64) -> IoResult<Vec<u8>> {
    let size: usize = list.iter().map(|e| entry_size(e.name.len(), 0)).sum();
    if size == 0 || size as u64 > MAX_BITMAP_DIRECTORY_SIZE {
        return Err(libc::EINVAL);
    }
    let mut dir = Vec::with_capacity(size);
    for e in list {
        if !entry_ok(e, TYPE_DIRTY_TRACKING, e.name.len(), cluster_size, len) {
            return Err(libc::EINVAL);
        }
        let start = dir.len();
        dir.extend_from_slice(&e.table_offset.to_be_bytes());
        dir.extend_from_slice(&e.table_size.to_be_bytes());
        dir.extend_from_slice(&e.flags.to_be_bytes());
        dir.push(TYPE_DIRTY_TRACKING);
        dir.push(e.granularity_bits);
        dir.extend_from_slice(&(e.name.len() as u16).to_be_bytes());
        dir.extend_from_slice(&0u32.to_be_bytes());
        dir.extend_from_slice(&e.name);
        dir.resize(start + entry_size(e.name.len(), 0), 0);
    }
    Ok(dir)
}

/// QEMU's check_table_entry.
fn table_entry_ok(entry: u64, cluster_size: u64) -> bool {
    if entry & TABLE_ENTRY_RESERVED_MASK != 0 {
        return false;
    }
    let offset = entry & TABLE_ENTRY_OFFSET_MASK;
    offset == 0 || (entry & TABLE_ENTRY_ALL_ONES == 0 && offset.is_multiple_of(cluster_size))
}

pub fn parse_table(raw: &[u8], cluster_size: u64) -> IoResult<Vec<u64>> {
    let table: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
        .collect();
    if table.iter().all(|&e| table_entry_ok(e, cluster_size)) {
        Ok(table)
    } else {
        Err(libc::EINVAL)
    }
}

/// An in-memory dirty bitmap (QEMU's BdrvDirtyBitmap over its HBitmap): one bit per
/// `granularity` bytes of an image `size` bytes long.
#[derive(Clone, Debug)]
pub struct DirtyBitmap {
    pub name: Vec<u8>,
    pub granularity_bits: u8,
    pub size: u64,
    words: Vec<u64>,
    /// records writes (the AUTO flag)
    pub enabled: bool,
    /// loaded while the image was read-only: not to be written back
    pub readonly: bool,
    /// it was in use on disk when loaded: its data is unusable and it is never stored
    pub inconsistent: bool,
}

impl DirtyBitmap {
    fn new(name: Vec<u8>, granularity_bits: u8, size: u64) -> Self {
        let bits = size.div_ceil(1 << granularity_bits);
        DirtyBitmap {
            name,
            granularity_bits,
            size,
            words: vec![0; bits.div_ceil(64) as usize],
            enabled: true,
            readonly: false,
            inconsistent: false,
        }
    }

    fn nb_bits(&self) -> u64 {
        self.size.div_ceil(1 << self.granularity_bits)
    }

    /// Marks `offset..offset + bytes` dirty (hbitmap_set, clipped to the bitmap).
    fn set(&mut self, offset: u64, bytes: u64) {
        let nb = self.nb_bits();
        if bytes == 0 || nb == 0 {
            return;
        }
        let first = offset >> self.granularity_bits;
        let last = ((offset + bytes - 1) >> self.granularity_bits).min(nb - 1);
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        let low = u64::MAX << (first % 64);
        let high = u64::MAX >> (63 - last % 64);
        if fw == lw {
            self.words[fw] |= low & high;
        } else {
            self.words[fw] |= low;
            self.words[fw + 1..lw].fill(u64::MAX);
            self.words[lw] |= high;
        }
    }

    /// bdrv_dirty_bitmap_truncate: new bits are clean, bits past the end go.
    fn resize(&mut self, size: u64) {
        self.size = size;
        let nb = self.nb_bits();
        self.words.resize(nb.div_ceil(64) as usize, 0);
        if !nb.is_multiple_of(64) {
            let last = self.words.len() - 1;
            self.words[last] &= (1 << (nb % 64)) - 1;
        }
    }

    /// The serialised bitmap (QEMU's little-endian words, bit 0 first).
    fn bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// Bytes of image one cluster of serialised bitmap covers.
    fn cluster_coverage(&self, cluster_size: u64) -> u64 {
        (cluster_size * 8) << self.granularity_bits
    }

    /// Number of bitmap table entries the bitmap needs.
    fn table_size(&self, cluster_size: u64) -> u64 {
        (self.words.len() as u64 * 8).div_ceil(cluster_size)
    }

    fn load_cluster(&mut self, index: u64, data: Option<&[u8]>, cluster_size: u64) {
        let words_per_cluster = (cluster_size / 8) as usize;
        let first = index as usize * words_per_cluster;
        let end = (first + words_per_cluster).min(self.words.len());
        for (i, w) in self.words[first..end].iter_mut().enumerate() {
            *w = match data {
                Some(d) => u64::from_le_bytes(d[i * 8..i * 8 + 8].try_into().expect("8")),
                None => u64::MAX,
            };
        }
        self.resize(self.size);
    }

    /// Whether any bit of `from_bit..to_bit` is set; both are multiples of 64 (a cluster of
    /// serialised bitmap holds whole words).
    fn is_dirty_in(&self, from_bit: u64, to_bit: u64) -> bool {
        let end = ((to_bit / 64) as usize).min(self.words.len());
        let start = ((from_bit / 64) as usize).min(end);
        self.words[start..end].iter().any(|&w| w != 0)
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// The driver's bitmaps: the extension as the header has it, the directory as on disk, and
/// the bitmaps in memory in QEMU's list order (newest first).
#[derive(Default)]
pub struct Bitmaps {
    pub ext: Option<BitmapsExt>,
    pub dir: Vec<DirEntry>,
    pub list: Vec<DirtyBitmap>,
    /// the image was opened read-write: the bitmaps are to be marked in use on disk before
    /// anything is written (see `start_writing`)
    pub open_rw_pending: bool,
}

/// QEMU's qcow2_load_dirty_bitmaps as far as it reads: the directory and the data of every
/// bitmap not in use, with QEMU's errors. Bitmaps in use on disk are loaded as inconsistent.
pub fn load(
    file: &impl ImageFile,
    ext: BitmapsExt,
    cluster_size: u64,
    len: u64,
) -> Result<Bitmaps, String> {
    if ext.dir_size == 0 {
        return Err("Requested bitmap directory size is zero".into());
    }
    if ext.dir_size > MAX_BITMAP_DIRECTORY_SIZE {
        return Err("Requested bitmap directory size is too big".into());
    }
    let raw = file
        .read_at(ext.dir_offset, ext.dir_size as usize)
        .map_err(|e| header::with_errno("Failed to read bitmap directory", e))?;
    let dir = parse_directory(&raw, ext.nb_bitmaps, cluster_size, len)?;
    let mut list: Vec<DirtyBitmap> = Vec::new();
    for e in &dir {
        if list.iter().any(|b| b.name == e.name) {
            return Err(format!("Bitmap already exists: {}", display_name(&e.name)));
        }
        let mut bm = DirtyBitmap::new(e.name.clone(), e.granularity_bits, len);
        if e.flags & FLAG_IN_USE != 0 {
            bm.inconsistent = true;
            bm.enabled = false;
        } else {
            let name = display_name(&e.name);
            let raw = file
                .read_at(e.table_offset, e.table_size as usize * 8)
                .and_then(|t| parse_table(&t, cluster_size))
                .map_err(|err| {
                    header::with_errno(
                        &format!(
                            "Could not read bitmap_table table from image for bitmap '{name}'"
                        ),
                        err,
                    )
                })?;
            let data_err = |err| {
                header::with_errno(&format!("Could not read bitmap '{name}' from image"), err)
            };
            if bm.table_size(cluster_size) != u64::from(e.table_size) {
                return Err(data_err(libc::EINVAL));
            }
            for (i, &entry) in raw.iter().enumerate() {
                let off = entry & TABLE_ENTRY_OFFSET_MASK;
                if off != 0 {
                    let data = file.read_at(off, cluster_size as usize).map_err(data_err)?;
                    bm.load_cluster(i as u64, Some(&data), cluster_size);
                } else if entry & TABLE_ENTRY_ALL_ONES != 0 {
                    bm.load_cluster(i as u64, None, cluster_size);
                }
            }
            bm.enabled = e.flags & FLAG_AUTO != 0;
        }
        // QEMU lists a node's bitmaps newest first
        list.insert(0, bm);
    }
    Ok(Bitmaps {
        ext: Some(ext),
        dir,
        list,
        open_rw_pending: false,
    })
}

impl Qcow2 {
    /// Keeps the overlap check's view of the directory in step (QEMU checks it while the
    /// autoclear bit is set).
    pub(crate) fn sync_bitmap_directory(&self) {
        let ext = self.bitmaps.borrow().ext;
        let mut st = self.st.borrow_mut();
        st.bitmap_directory = match ext {
            _ if st.autoclear & AUTOCLEAR_BITMAPS == 0 => None,
            Some(e) => Some((e.dir_offset, e.dir_size)),
            // QEMU checks the empty range at 0 as ending at UINT64_MAX: with the bit set and
            // no directory, every metadata write "overlaps" it
            None => Some((0, u64::MAX)),
        };
    }

    /// The extension as the header rewrite writes it.
    pub(crate) fn bitmaps_ext(&self) -> Option<BitmapsExt> {
        self.bitmaps.borrow().ext.filter(|e| e.nb_bitmaps > 0)
    }

    /// bdrv_getlength: whole sectors (qcow2 sets total_sectors from the size, rounding down).
    fn image_length(&self) -> u64 {
        self.st.borrow().size / 512 * 512
    }

    /// update_header_sync: the header, then a flush of the file.
    async fn update_header_sync(&self, node: &Node) -> IoResult {
        self.update_header(node).await?;
        io::flush(node.file()).await
    }

    /// bitmap_list_load on the directory the header names (a read through the file node).
    async fn read_directory(&self, node: &Node) -> Result<Vec<DirEntry>, String> {
        let Some(ext) = self.bitmaps.borrow().ext else {
            return Ok(Vec::new());
        };
        if ext.dir_size == 0 {
            return Err("Requested bitmap directory size is zero".into());
        }
        if ext.dir_size > MAX_BITMAP_DIRECTORY_SIZE {
            return Err("Requested bitmap directory size is too big".into());
        }
        let mut raw = vec![0u8; ext.dir_size as usize];
        io::preadv(node.file(), ext.dir_offset, &mut raw)
            .await
            .map_err(|e| header::with_errno("Failed to read bitmap directory", e))?;
        let (cs, len) = (self.st.borrow().cluster_size, self.image_length());
        parse_directory(&raw, ext.nb_bitmaps, cs, len)
    }

    /// Writes the directory at `offset` (bitmap_list_store's overlap check and write).
    async fn write_directory(&self, node: &Node, dir: &[u8], offset: u64, ign: u32) -> IoResult {
        self.pre_write_overlap_check(node, ign, offset, dir.len() as u64)
            .await?;
        io::pwritev(node.file(), offset, dir, ReqFlags::NONE).await
    }

    /// QEMU's update_ext_header_and_dir_in_place: with the autoclear bit off, the directory is
    /// rewritten where it is, then the bit is set again; each step is synced.
    async fn update_dir_in_place(&self, node: &Node, list: &[DirEntry]) -> IoResult {
        let nb = self.bitmaps.borrow().ext.map_or(0, |e| e.nb_bitmaps);
        if self.st.borrow().autoclear & AUTOCLEAR_BITMAPS == 0
            || list.is_empty()
            || list.len() as u32 != nb
        {
            return Err(libc::EINVAL);
        }
        self.st.borrow_mut().autoclear &= !AUTOCLEAR_BITMAPS;
        self.sync_bitmap_directory();
        self.update_header_sync(node).await?;
        let (cs, len) = (self.st.borrow().cluster_size, self.image_length());
        let dir = build_directory(list, cs, len)?;
        let ext = self.bitmaps.borrow().ext.expect("bitmaps");
        if dir.len() as u64 != ext.dir_size || ext.dir_offset == 0 {
            return Err(libc::EINVAL);
        }
        self.write_directory(node, &dir, ext.dir_offset, BITMAP_DIRECTORY)
            .await?;
        self.bitmaps.borrow_mut().dir = list.to_vec();
        self.update_header_sync(node).await?;
        self.st.borrow_mut().autoclear |= AUTOCLEAR_BITMAPS;
        self.sync_bitmap_directory();
        self.update_header_sync(node).await
    }

    /// QEMU's update_ext_header_and_dir: a new directory (none for an empty list) replaces
    /// the old, which is freed once the header points at the new one.
    async fn update_dir(&self, node: &Node, list: &[DirEntry]) -> IoResult {
        let old_ext = self.bitmaps.borrow().ext;
        let old_autoclear = self.st.borrow().autoclear;
        let mut new_ext = None;
        if !list.is_empty() {
            if list.len() as u32 > MAX_BITMAPS {
                return Err(libc::EINVAL);
            }
            let (cs, len) = (self.st.borrow().cluster_size, self.image_length());
            let dir = build_directory(list, cs, len)?;
            let offset = self.alloc_clusters(node, dir.len() as u64).await?;
            if let Err(e) = self.write_directory(node, &dir, offset, 0).await {
                self.free_clusters(node, offset, dir.len() as u64, DiscardType::Other)
                    .await;
                return Err(e);
            }
            let ext = BitmapsExt {
                nb_bitmaps: list.len() as u32,
                dir_size: dir.len() as u64,
                dir_offset: offset,
            };
            new_ext = Some(ext);
            if let Err(e) = self.flush_caches(node).await {
                self.free_clusters(node, offset, ext.dir_size, DiscardType::Other)
                    .await;
                return Err(e);
            }
            self.st.borrow_mut().autoclear |= AUTOCLEAR_BITMAPS;
        } else {
            self.st.borrow_mut().autoclear &= !AUTOCLEAR_BITMAPS;
        }
        self.bitmaps.borrow_mut().ext = new_ext;
        self.sync_bitmap_directory();
        if let Err(e) = self.update_header_sync(node).await {
            if let Some(ext) = new_ext {
                self.free_clusters(node, ext.dir_offset, ext.dir_size, DiscardType::Other)
                    .await;
            }
            self.bitmaps.borrow_mut().ext = old_ext;
            self.st.borrow_mut().autoclear = old_autoclear;
            self.sync_bitmap_directory();
            return Err(e);
        }
        self.bitmaps.borrow_mut().dir = list.to_vec();
        if let Some(old) = old_ext.filter(|e| e.dir_size > 0) {
            self.free_clusters(node, old.dir_offset, old.dir_size, DiscardType::Other)
                .await;
        }
        Ok(())
    }

    /// QEMU's qcow2_reopen_bitmaps_rw, which also finishes a read-write open (the in-use
    /// marking of qcow2_load_dirty_bitmaps): bitmaps loaded read-only become writable and are
    /// marked in use on disk.
    pub(crate) async fn bitmaps_rw(&self, node: &Node) -> Result<(), String> {
        if self.bitmaps.borrow().ext.is_none() {
            return Ok(());
        }
        let mut list = self.read_directory(node).await?;
        let mut need_update = false;
        {
            let bitmaps = self.bitmaps.borrow();
            for e in &mut list {
                let name = display_name(&e.name);
                let Some(bm) = bitmaps.list.iter().find(|b| b.name == e.name) else {
                    return Err(format!(
                        "Unexpected bitmap '{name}' in image '{}'",
                        node.filename
                    ));
                };
                if e.flags & FLAG_IN_USE == 0 {
                    if !bm.readonly {
                        return Err(format!(
                            "Corruption: bitmap '{name}' is not marked IN_USE in the image '{}' and not marked readonly in RAM",
                            node.filename
                        ));
                    }
                    if bm.inconsistent {
                        return Err(format!(
                            "Corruption: bitmap '{name}' is inconsistent but is not marked IN_USE in the image '{}'",
                            node.filename
                        ));
                    }
                    e.flags |= FLAG_IN_USE;
                    need_update = true;
                } else if bm.readonly && !bm.inconsistent {
                    return Err(format!(
                        "Corruption: bitmap '{name}' is marked IN_USE in the image '{}' but it is readonly and consistent in RAM",
                        node.filename
                    ));
                }
            }
        }
        if need_update {
            self.update_dir_in_place(node, &list)
                .await
                .map_err(|e| header::with_errno("Cannot update bitmap directory", e))?;
        }
        for bm in self.bitmaps.borrow_mut().list.iter_mut() {
            bm.readonly = false;
        }
        Ok(())
    }

    /// The end of a read-write open: QEMU marks the loaded bitmaps in use while opening, and
    /// a failure fails the open.
    pub(crate) async fn bitmaps_open_rw(&self, node: &Node) -> Result<(), String> {
        if !std::mem::take(&mut self.bitmaps.borrow_mut().open_rw_pending) {
            return Ok(());
        }
        self.bitmaps_rw(node).await.map_err(|m| {
            m.replace(
                "Cannot update bitmap directory",
                "Can't update bitmap directory",
            )
        })
    }

    /// QEMU's free_bitmap_clusters: the table is read back and every cluster it names freed.
    async fn free_bitmap_clusters(&self, node: &Node, offset: u64, size: u32) -> IoResult {
        let cs = self.st.borrow().cluster_size;
        let mut raw = vec![0u8; size as usize * 8];
        io::preadv(node.file(), offset, &mut raw).await?;
        let table = parse_table(&raw, cs)?;
        self.clear_bitmap_table(node, &table).await;
        self.free_clusters(node, offset, u64::from(size) * 8, DiscardType::Other)
            .await;
        Ok(())
    }

    async fn clear_bitmap_table(&self, node: &Node, table: &[u64]) {
        let cs = self.st.borrow().cluster_size;
        for &entry in table {
            let addr = entry & TABLE_ENTRY_OFFSET_MASK;
            if addr != 0 {
                self.free_clusters(node, addr, cs, DiscardType::Always)
                    .await;
            }
        }
    }

    /// QEMU's store_bitmap_data and store_bitmap: the dirty clusters of the bitmap, then its
    /// table; on failure everything allocated is freed again.
    async fn store_bitmap(&self, node: &Node, bm: &DirtyBitmap) -> Result<(u64, u32), String> {
        let name = display_name(&bm.name);
        let cs = self.st.borrow().cluster_size;
        let tb_size = bm.table_size(cs);
        if tb_size > MAX_TABLE_SIZE || tb_size * cs > MAX_PHYS_SIZE {
            return Err(format!("Bitmap '{name}' is too big"));
        }
        let bytes = bm.bytes();
        let limit = bm.cluster_coverage(cs);
        let bits_per_cluster = cs * 8;
        let mut table = vec![0u64; tb_size as usize];
        for i in 0..tb_size {
            if !bm.is_dirty_in(i * bits_per_cluster, (i + 1) * bits_per_cluster) {
                continue;
            }
            debug_assert!(i * limit < bm.size);
            let fail = |table: Vec<u64>, msg: String| async move {
                self.clear_bitmap_table(node, &table).await;
                Err(msg)
            };
            let off = match self.alloc_clusters(node, cs).await {
                Ok(o) => o,
                Err(e) => {
                    let msg = header::with_errno(
                        &format!("Failed to allocate clusters for bitmap '{name}'"),
                        e,
                    );
                    return fail(table, msg).await;
                }
            };
            table[i as usize] = off;
            let from = (i * cs) as usize;
            let mut buf = vec![0u8; cs as usize];
            let to = bytes.len().min(from + cs as usize);
            buf[..to - from].copy_from_slice(&bytes[from..to]);
            if let Err(e) = self.pre_write_overlap_check(node, 0, off, cs).await {
                return fail(table, header::with_errno("Qcow2 overlap check failed", e)).await;
            }
            if let Err(e) = io::pwritev(node.file(), off, &buf, ReqFlags::NONE).await {
                let msg =
                    header::with_errno(&format!("Failed to write bitmap '{name}' to file"), e);
                return fail(table, msg).await;
            }
        }
        let tb_bytes = tb_size * 8;
        let result = async {
            let off = self.alloc_clusters(node, tb_bytes).await.map_err(|e| {
                (
                    0,
                    header::with_errno(
                        &format!("Failed to allocate clusters for bitmap '{name}'"),
                        e,
                    ),
                )
            })?;
            self.pre_write_overlap_check(node, 0, off, tb_bytes)
                .await
                .map_err(|e| (off, header::with_errno("Qcow2 overlap check failed", e)))?;
            let raw: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
            io::pwritev(node.file(), off, &raw, ReqFlags::NONE)
                .await
                .map_err(|e| {
                    (
                        off,
                        header::with_errno(&format!("Failed to write bitmap '{name}' to file"), e),
                    )
                })?;
            Ok(off)
        }
        .await;
        match result {
            Ok(off) => Ok((off, tb_size as u32)),
            Err((off, msg)) => {
                self.clear_bitmap_table(node, &table).await;
                if off > 0 {
                    self.free_clusters(node, off, tb_bytes, DiscardType::Other)
                        .await;
                }
                Err(msg)
            }
        }
    }

    /// QEMU's check_constraints_on_bitmap for a bitmap about to be stored.
    fn bitmap_constraints(&self, bm: &DirtyBitmap) -> Result<(), String> {
        let (cs, len) = (self.st.borrow().cluster_size, self.image_length());
        if bm.granularity_bits > MAX_GRANULARITY_BITS {
            return Err(format!(
                "Granularity exceeds maximum ({} bytes)",
                1u64 << MAX_GRANULARITY_BITS
            ));
        }
        if bm.granularity_bits < MIN_GRANULARITY_BITS {
            return Err(format!(
                "Granularity is under minimum ({} bytes)",
                1u64 << MIN_GRANULARITY_BITS
            ));
        }
        let bitmap_bytes = len.div_ceil(1 << bm.granularity_bits).div_ceil(8);
        if bitmap_bytes > MAX_PHYS_SIZE || bitmap_bytes > MAX_TABLE_SIZE * cs {
            return Err(
                "Too much space will be occupied by the bitmap. Use larger granularity".into(),
            );
        }
        if display_name(&bm.name).len() > MAX_NAME_SIZE {
            return Err(format!(
                "Name length exceeds maximum ({MAX_NAME_SIZE} characters)"
            ));
        }
        Ok(())
    }

    /// QEMU's qcow2_store_persistent_dirty_bitmaps: every writable, consistent bitmap is
    /// written to new clusters and a new directory replaces the old; the old tables are freed
    /// last. `release`: the bitmaps leave memory (close), else they stay, read-only.
    pub(crate) async fn store_bitmaps(&self, node: &Node, release: bool) -> Result<(), String> {
        let mut list = self.read_directory(node).await?;
        let mut drop_tables = Vec::new();
        let mut to_store: Vec<(usize, DirtyBitmap)> = Vec::new();
        let mut need_write = false;
        let bitmaps: Vec<DirtyBitmap> = self.bitmaps.borrow().list.clone();
        for bm in &bitmaps {
            if bm.inconsistent || bm.readonly {
                continue;
            }
            need_write = true;
            let name = display_name(&bm.name);
            self.bitmap_constraints(bm)
                .map_err(|m| format!("Bitmap '{name}' doesn't satisfy the constraints: {m}"))?;
            let i = match list.iter().position(|e| e.name == bm.name) {
                Some(i) => {
                    let e = &mut list[i];
                    if e.flags & FLAG_IN_USE == 0 {
                        return Err(format!("Bitmap '{name}' already exists in the image"));
                    }
                    drop_tables.push((e.table_offset, e.table_size));
                    e.table_offset = 0;
                    e.table_size = 0;
                    i
                }
                None => {
                    list.push(DirEntry {
                        table_offset: 0,
                        table_size: 0,
                        flags: 0,
                        granularity_bits: 0,
                        name: bm.name.clone(),
                    });
                    list.len() - 1
                }
            };
            list[i].flags = if bm.enabled { FLAG_AUTO } else { 0 };
            list[i].granularity_bits = bm.granularity_bits;
            to_store.push((i, bm.clone()));
        }
        if need_write {
            if node.flags().read_only {
                return Err("No write access".into());
            }
            to_store.sort_by_key(|(i, _)| *i);
            let mut stored: Vec<usize> = Vec::new();
            let mut failure = None;
            for (i, bm) in &to_store {
                match self.store_bitmap(node, bm).await {
                    Ok((off, size)) => {
                        list[*i].table_offset = off;
                        list[*i].table_size = size;
                        stored.push(*i);
                    }
                    Err(m) => {
                        failure = Some(m);
                        break;
                    }
                }
            }
            if failure.is_none()
                && let Err(e) = self.update_dir(node, &list).await
            {
                failure = Some(header::with_errno("Failed to update bitmap extension", e));
            }
            if let Some(msg) = failure {
                for i in stored {
                    let e = &list[i];
                    let _ = self
                        .free_bitmap_clusters(node, e.table_offset, e.table_size)
                        .await;
                }
                return Err(msg);
            }
            for (offset, size) in drop_tables {
                let _ = self.free_bitmap_clusters(node, offset, size).await;
            }
        }
        let mut b = self.bitmaps.borrow_mut();
        if release {
            b.list.clear();
        } else {
            for bm in b.list.iter_mut() {
                bm.readonly = true;
            }
        }
        Ok(())
    }

    /// QEMU's qcow2_truncate_bitmaps_check: bitmaps are resized in memory, so each on disk
    /// must be loaded and usable.
    pub(crate) async fn truncate_bitmaps_check(&self, node: &Node) -> Result<(), String> {
        if self.bitmaps.borrow().ext.is_none() {
            return Ok(());
        }
        let list = self.read_directory(node).await?;
        let bitmaps = self.bitmaps.borrow();
        for e in &list {
            let name = display_name(&e.name);
            let Some(bm) = bitmaps.list.iter().find(|b| b.name == e.name) else {
                return Err(
                    "Cannot resize qcow2 with persistent bitmaps that were not loaded into memory"
                        .into(),
                );
            };
            if bm.inconsistent {
                return Err(format!(
                    "Bitmap '{name}' is inconsistent and cannot be used\nTry block-dirty-bitmap-remove to delete this bitmap from disk"
                ));
            }
            if bm.readonly {
                return Err(format!(
                    "Bitmap '{name}' is readonly and cannot be modified"
                ));
            }
        }
        Ok(())
    }

    /// bdrv_set_dirty: a write, zero write or discard reached the node.
    pub(crate) fn bitmaps_set_dirty(&self, offset: u64, bytes: u64) {
        for bm in self.bitmaps.borrow_mut().list.iter_mut() {
            if bm.enabled && !bm.readonly {
                bm.set(offset, bytes);
            }
        }
    }

    /// bdrv_dirty_bitmap_truncate: the node is now `size` bytes long.
    pub(crate) fn bitmaps_resize(&self, size: u64) {
        for bm in self.bitmaps.borrow_mut().list.iter_mut() {
            bm.resize(size);
        }
    }

    /// The `bitmaps:` part of the format-specific information (from the directory on disk).
    pub(crate) fn bitmap_info_lines(&self) -> Vec<String> {
        let b = self.bitmaps.borrow();
        if b.ext.is_none() || b.dir.is_empty() {
            return Vec::new();
        }
        let mut lines = vec!["bitmaps:".to_string()];
        for (i, e) in b.dir.iter().enumerate() {
            lines.push(format!("    [{i}]:"));
            lines.push("        flags:".into());
            let mut n = 0;
            for (flag, word) in [(FLAG_IN_USE, "in-use"), (FLAG_AUTO, "auto")] {
                if e.flags & flag != 0 {
                    lines.push(format!("            [{n}]: {word}"));
                    n += 1;
                }
            }
            lines.push(format!("        name: {}", display_name(&e.name)));
            lines.push(format!(
                "        granularity: {}",
                1u64 << e.granularity_bits
            ));
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &[u8], flags: u32, table_offset: u64) -> DirEntry {
        DirEntry {
            table_offset,
            table_size: 1,
            flags,
            granularity_bits: 16,
            name: name.to_vec(),
        }
    }

    #[test]
    fn directory_round_trips_and_counts_are_checked() {
        let list = vec![entry(b"a", FLAG_AUTO, 0x10000), entry(b"bee", 0, 0x20000)];
        let dir = build_directory(&list, 0x10000, 1 << 30).unwrap();
        assert_eq!(dir.len(), 64);
        assert_eq!(parse_directory(&dir, 2, 0x10000, 1 << 30).unwrap(), list);
        assert_eq!(
            parse_directory(&dir, 1, 0x10000, 1 << 30).unwrap_err(),
            "More bitmaps found than specified in header extension"
        );
        assert_eq!(
            parse_directory(&dir, 3, 0x10000, 1 << 30).unwrap_err(),
            "Less bitmaps found than specified in header extension"
        );
        assert_eq!(
            parse_directory(&dir[..40], 2, 0x10000, 1 << 30).unwrap_err(),
            "Broken bitmap directory"
        );
    }

    #[test]
    fn a_consistent_bitmap_must_cover_the_image() {
        // one 64 KiB cluster of bits at 64 KiB granularity covers 32 GiB
        let list = vec![entry(b"x", 0, 0x10000)];
        let dir = build_directory(&list, 0x10000, 32 << 30).unwrap();
        assert_eq!(
            parse_directory(&dir, 1, 0x10000, (32 << 30) + 512).unwrap_err(),
            "Bitmap 'x' doesn't satisfy the constraints"
        );
        let list = vec![entry(b"x", FLAG_IN_USE, 0x10000)];
        let dir = build_directory(&list, 0x10000, 1 << 30).unwrap();
        assert!(parse_directory(&dir, 1, 0x10000, 64 << 30).is_ok());
    }

    #[test]
    fn dirty_bits_follow_the_granularity_and_resize() {
        let mut bm = DirtyBitmap::new(b"b".to_vec(), 16, 1 << 20);
        bm.set(65535, 2);
        assert_eq!(bm.count(), 2);
        bm.set(0, 1 << 20);
        assert_eq!(bm.count(), 16);
        bm.resize(3 << 16);
        assert_eq!(bm.count(), 3);
        bm.resize(1 << 20);
        assert_eq!(bm.count(), 3);
        assert_eq!(bm.bytes()[..2], [0b111, 0]);
        // ranges within one word and across several
        let mut bm = DirtyBitmap::new(b"c".to_vec(), 9, 1 << 20);
        bm.set(63 * 512, 2 * 512);
        assert_eq!(bm.count(), 2);
        assert!(bm.is_dirty_in(0, 64) && bm.is_dirty_in(64, 128) && !bm.is_dirty_in(128, 2048));
        bm.set(100 * 512, 300 * 512);
        assert_eq!(bm.count(), 302);
        bm.set(5 * 512, 1);
        assert_eq!(bm.count(), 303);
    }
}
