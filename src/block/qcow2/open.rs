//! Opening an image (QEMU's qcow2_do_open): the header checks in QEMU's order and words,
//! bounded table sizes, the refcount table, header extensions and the backing file name.
//! Nothing is written unless QEMU would write (clearing unknown autoclear bits).

use super::Qcow2;
use super::cache::Cache;
use super::check::{CheckFile, Checker, FIX_ERRORS, FIX_LEAKS, Geometry};
use super::header::{self, Header, OpenError};
use super::lock::CoMutex;
use super::refcount::max_used_index;
use super::state::State;
use crate::block::blkdebug::config::{parse_bool, parse_number};
use crate::block::blkdebug::events::Event;
use crate::block::blkdebug::limits::parse_size;
use crate::block::driver::ReqFlags;
use crate::block::executor::block_on;
use crate::block::io;
use crate::block::node::Node;
use crate::block::open::{OpenContext, Options, take_string};
use crate::errno::strerror;
use std::cell::RefCell;
use std::rc::Rc;

/// A successfully opened image and what the graph builder needs to finish the node.
pub struct Opened {
    pub driver: Qcow2,
    /// backing file name as stored in the image, and its format (backing format extension)
    pub backing: Option<(String, Option<String>)>,
    pub version: u32,
    pub cluster_size: u64,
}

fn with_errno(msg: &str, e: i32) -> String {
    format!("{msg}: {}", strerror(e))
}

fn read(file: &Rc<Node>, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
    let f = file.clone();
    block_on(async move {
        let mut buf = vec![0u8; len];
        io::preadv(&f, offset, &mut buf).await.map(|_| buf)
    })
    .unwrap_or(Err(libc::EIO))
}

fn event(file: &Rc<Node>, ev: Event) {
    let f = file.clone();
    block_on(async move { f.debug_event(ev).await });
}

/// QEMU's qcow2_validate_table.
fn validate_table(
    offset: u64,
    entries: u64,
    entry_len: u64,
    max: u64,
    cs: u64,
    name: &str,
) -> Result<(), OpenError> {
    if entries > max / entry_len {
        return Err((format!("{name} too large"), libc::EFBIG));
    }
    if (i64::MAX as u64) - entries * entry_len < offset || offset & (cs - 1) != 0 {
        return Err((format!("{name} offset invalid"), libc::EINVAL));
    }
    Ok(())
}

/// Parsed header extensions.
#[derive(Default)]
struct Exts {
    backing_format: Option<String>,
    feature_table: Vec<header::Feature>,
    data_file: bool,
    unknown: Vec<(u32, Vec<u8>)>,
}

/// QEMU's qcow2_read_extensions: one read per extension header, then its data.
fn read_extensions(file: &Rc<Node>, start: u64, end: u64, h: &Header) -> Result<Exts, OpenError> {
    let mut ex = Exts::default();
    let mut offset = start;
    while offset < end {
        let b = read(file, offset, 8).map_err(|e| {
            (
                with_errno(
                    &format!("qcow2_read_extension: ERROR: pread fail from offset {offset}"),
                    e,
                ),
                libc::EINVAL,
            )
        })?;
        let magic = u32::from_be_bytes(b[0..4].try_into().expect("4"));
        let len = u64::from(u32::from_be_bytes(b[4..8].try_into().expect("4")));
        offset += 8;
        if offset > end || len > end - offset {
            return Err(("Header extension too large".into(), libc::EINVAL));
        }
        let data = || {
            read(file, offset, len as usize).map_err(|e| {
                (
                    with_errno("ERROR: ext_read: Failed to read header extension", e),
                    libc::EINVAL,
                )
            })
        };
        match magic {
            header::EXT_END => return Ok(ex),
            header::EXT_BACKING_FORMAT => {
                if len >= 16 {
                    return Err((
                        format!("ERROR: ext_backing_format: len={len} too large (>=16)"),
                        libc::EINVAL,
                    ));
                }
                let d = data()?;
                ex.backing_format = Some(
                    String::from_utf8_lossy(&d)
                        .trim_end_matches('\0')
                        .to_string(),
                );
            }
            header::EXT_FEATURE_TABLE => ex.feature_table = header::parse_feature_table(&data()?),
            header::EXT_CRYPTO_HEADER => {
                if h.crypt_method != 2 {
                    return Err((
                        "CRYPTO header extension only expected with LUKS encryption method".into(),
                        libc::EINVAL,
                    ));
                }
                ex.unknown.push((magic, data()?));
            }
            header::EXT_DATA_FILE => {
                ex.data_file = true;
                ex.unknown.push((magic, data()?));
            }
            _ => ex.unknown.push((magic, data()?)),
        }
        offset += len.div_ceil(8) * 8;
    }
    Ok(ex)
}

fn take_bool(opts: &mut Options, key: &str) -> Result<Option<bool>, String> {
    take_string(opts, key)
        .map(|t| parse_bool(key, &t))
        .transpose()
}

fn take_size(opts: &mut Options, key: &str) -> Result<Option<u64>, String> {
    take_string(opts, key)
        .map(|t| parse_size(key, &t))
        .transpose()
}

/// Opens the qcow2 image in `file`. `opts` holds the qcow2 runtime options (consumed).
pub fn open_image(
    file: &Rc<Node>,
    opts: &mut Options,
    ctx: &OpenContext,
) -> Result<Opened, String> {
    open_inner(file, opts, ctx).map_err(|(m, _)| m)
}

/// The image file node as the refcount checker uses it (synchronous, as the rest of open).
struct NodeFile(Rc<Node>);

impl CheckFile for NodeFile {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        read(&self.0, offset, len)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), i32> {
        let (f, data) = (self.0.clone(), data.to_vec());
        block_on(async move { io::pwritev(&f, offset, &data, ReqFlags::NONE).await })
            .unwrap_or(Err(libc::EIO))
    }

    fn file_len(&self) -> u64 {
        self.0.getlength().unwrap_or(0)
    }

    fn set_len(&self, len: u64) -> Result<(), i32> {
        let f = self.0.clone();
        block_on(async move { io::truncate(&f, len).await })
            .unwrap_or(Err(String::new()))
            .map_err(|_| libc::EIO)
    }

    fn discard(&self, offset: u64, len: u64) {
        let f = self.0.clone();
        let _ = block_on(async move { io::pdiscard(&f, offset, len).await });
    }
}

/// QEMU's "Repair image if dirty" step of qcow2_do_open: `qcow2_check_refcounts` with
/// `BDRV_FIX_ERRORS | BDRV_FIX_LEAKS` (its stderr lines included), then — if no corruption is
/// left — the dirty bit is cleared (the caller rewrites the header). The in-memory header,
/// L1 table and refcount table are refreshed from what the repair wrote. Ok(true) = cleaned.
fn repair_dirty(
    file: &Rc<Node>,
    ctx: &OpenContext,
    h: &mut Header,
    l1: &mut Vec<u64>,
    reftable: &mut Vec<u64>,
) -> Result<bool, OpenError> {
    let failed = |e: i32| (with_errno("Could not repair dirty image", e), e);
    let geo = Geometry {
        version: h.version,
        cluster_bits: h.cluster_bits,
        size: h.size,
        l1_table_offset: h.l1_table_offset,
        l1_size: h.l1_size,
        refcount_table_offset: h.refcount_table_offset,
        refcount_table_clusters: h.refcount_table_clusters,
        nb_snapshots: h.nb_snapshots,
        snapshots_offset: h.snapshots_offset,
        incompatible_features: h.incompatible_features,
        refcount_order: h.refcount_order,
    };
    let mut checker =
        Checker::new(NodeFile(file.clone()), geo, true).map_err(|_| failed(libc::EIO))?;
    let (res, ret) = checker.check(FIX_ERRORS | FIX_LEAKS);
    for line in checker.take_log() {
        ctx.console.err(&format!("{line}\n"));
    }
    if let Err(e) = ret {
        return Err(failed(e));
    }
    if res.check_errors != 0 {
        return Err(failed(libc::EIO));
    }
    let g = checker.geometry();
    h.refcount_table_offset = g.refcount_table_offset;
    h.refcount_table_clusters = g.refcount_table_clusters;
    h.incompatible_features = g.incompatible_features;
    *l1 = checker.l1().to_vec();
    *reftable = checker.reftable().to_vec();
    if res.corruptions != 0 {
        return Ok(false);
    }
    h.incompatible_features &= !header::INCOMPAT_DIRTY;
    Ok(true)
}

fn open_inner(file: &Rc<Node>, opts: &mut Options, ctx: &OpenContext) -> Result<Opened, OpenError> {
    let read_only = ctx.flags.read_only;
    let hb = read(file, 0, header::HEADER_SIZE)
        .map_err(|e| (with_errno("Could not read qcow2 header", e), e))?;
    let h = header::parse(&hb)?;
    let cs = 1u64 << h.cluster_bits;
    let mut unknown_fields = Vec::new();
    if h.header_length as usize > header::HEADER_SIZE {
        unknown_fields = read(
            file,
            header::HEADER_SIZE as u64,
            h.header_length as usize - header::HEADER_SIZE,
        )
        .map_err(|e| {
            (
                with_errno("Could not read unknown qcow2 header fields", e),
                e,
            )
        })?;
    }
    let ext_end = if h.backing_file_offset != 0 {
        h.backing_file_offset
    } else {
        cs
    };
    header::check_compression(&h)?;
    if h.incompatible_features & !header::INCOMPAT_MASK != 0 {
        let ex = read_extensions(file, u64::from(h.header_length), ext_end, &h).unwrap_or_default();
        return Err((
            header::unsupported_features_message(
                &ex.feature_table,
                h.incompatible_features & !header::INCOMPAT_MASK,
            ),
            libc::ENOTSUP,
        ));
    }
    if h.incompatible_features & header::INCOMPAT_CORRUPT != 0 && !read_only {
        return Err((
            "qcow2: Image is corrupt; cannot be opened read/write".into(),
            libc::EACCES,
        ));
    }
    // Features QEMU supports but this engine does not: refused by name, never half-served.
    if h.incompatible_features & header::INCOMPAT_EXTL2 != 0 {
        return Err((
            "qcow2: extended L2 entries are not supported by this engine".into(),
            libc::ENOTSUP,
        ));
    }
    if h.incompatible_features & header::INCOMPAT_DATA_FILE != 0 {
        return Err((
            "qcow2: external data files are not supported by this engine".into(),
            libc::ENOTSUP,
        ));
    }
    if h.refcount_order > 6 {
        return Err((
            "Reference count entry width too large; may not exceed 64 bits".into(),
            libc::EINVAL,
        ));
    }
    if h.crypt_method != 0 {
        return Err((
            "qcow2: encrypted images are not supported by this engine".into(),
            libc::ENOTSUP,
        ));
    }
    let l2_bits = h.cluster_bits - 3;
    // entries per refblock = cluster bits * 8 / refcount bits
    let refcount_block_bits = h.cluster_bits + 3 - h.refcount_order;
    if h.refcount_table_clusters == 0 {
        return Err((
            "Image does not contain a reference count table".into(),
            libc::EINVAL,
        ));
    }
    validate_table(
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters),
        cs,
        header::MAX_REFTABLE_SIZE,
        cs,
        "Reference count table",
    )?;
    validate_table(
        h.snapshots_offset,
        u64::from(h.nb_snapshots),
        header::SNAPSHOT_HEADER_SIZE,
        header::SNAPSHOT_HEADER_SIZE * header::MAX_SNAPSHOTS,
        cs,
        "Snapshot table",
    )?;
    validate_table(
        h.l1_table_offset,
        u64::from(h.l1_size),
        8,
        header::MAX_L1_SIZE,
        cs,
        "Active L1 table",
    )?;
    let shift = h.cluster_bits + l2_bits;
    let l1_vm_state_index =
        ((u128::from(h.size) + (1u128 << shift) - 1) >> shift).min(u128::from(u64::MAX)) as u64;
    if l1_vm_state_index > i32::MAX as u64 {
        return Err(("Image is too big".into(), libc::EFBIG));
    }
    if u64::from(h.l1_size) < l1_vm_state_index {
        return Err(("L1 table is too small".into(), libc::EINVAL));
    }
    let mut l1 = Vec::new();
    if h.l1_size > 0 {
        let raw = read(file, h.l1_table_offset, h.l1_size as usize * 8)
            .map_err(|e| (with_errno("Could not read L1 table", e), e))?;
        l1 = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
            .collect();
    }
    // Runtime options (QEMU's qcow2_update_options).
    let bad = |m: String| (m, libc::EINVAL);
    let lazy = take_bool(opts, "lazy-refcounts").map_err(bad)?;
    let pass_req = take_bool(opts, "pass-discard-request").map_err(bad)?;
    let pass_snap = take_bool(opts, "pass-discard-snapshot").map_err(bad)?;
    let pass_other = take_bool(opts, "pass-discard-other").map_err(bad)?;
    let no_unref = take_bool(opts, "discard-no-unref").map_err(bad)?;
    let cache_size = take_size(opts, "cache-size").map_err(bad)?;
    let l2_cache_size = take_size(opts, "l2-cache-size").map_err(bad)?;
    let rc_cache_size = take_size(opts, "refcount-cache-size").map_err(bad)?;
    if let Some(es) = take_size(opts, "l2-cache-entry-size").map_err(bad)?
        && es != cs
    {
        return Err((
            "l2-cache-entry-size other than the cluster size is not supported by this engine"
                .into(),
            libc::ENOTSUP,
        ));
    }
    if let Some(t) = take_string(opts, "cache-clean-interval") {
        parse_number("cache-clean-interval", &t).map_err(bad)?;
    }
    for k in ["overlap-check", "overlap-check.template"] {
        opts.remove(k);
    }
    let use_lazy = lazy.unwrap_or(h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0);
    if use_lazy && h.version < 3 {
        return Err((
            "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
                .into(),
            libc::EINVAL,
        ));
    }
    if no_unref == Some(true) && h.version < 3 {
        return Err((
            "discard-no-unref is only supported since qcow2 version 3".into(),
            libc::EINVAL,
        ));
    }
    let cache_opts = [cache_size, l2_cache_size, rc_cache_size];
    let (l2_entries, rc_entries) = cache_entries(h.size, cs, cache_opts);
    // refcount init
    let reftable_entries = (u64::from(h.refcount_table_clusters) << (h.cluster_bits - 3)) as usize;
    event(file, Event::ReftableLoad);
    let raw = read(file, h.refcount_table_offset, reftable_entries * 8)
        .map_err(|e| (with_errno("Could not initialize refcount handling", e), e))?;
    let reftable: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
        .collect();
    let ex = read_extensions(file, u64::from(h.header_length), ext_end, &h)?;
    if ex.data_file {
        return Err((
            "qcow2: external data files are not supported by this engine".into(),
            libc::ENOTSUP,
        ));
    }
    let mut backing_file = None;
    if h.backing_file_offset != 0 {
        let len = u64::from(h.backing_file_size);
        if len > 1023u64.min(cs - h.backing_file_offset) || len >= 4096 {
            return Err(("Backing file name too long".into(), libc::EINVAL));
        }
        let b = read(file, h.backing_file_offset, len as usize)
            .map_err(|e| (with_errno("Could not read backing file name", e), e))?;
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        backing_file = Some(String::from_utf8_lossy(&b[..end]).into_owned());
    }
    let mut h = h;
    let mut reftable = reftable;
    // QEMU repairs a dirty image (lazy refcounts) before serving it read-write.
    let cleaned = h.incompatible_features & header::INCOMPAT_DIRTY != 0
        && !read_only
        && repair_dirty(file, ctx, &mut h, &mut l1, &mut reftable)?;
    let incompat = h.incompatible_features;
    let autoclear_known = header::AUTOCLEAR_DATA_FILE_RAW;
    let clear_autoclear = !read_only && h.autoclear_features & !autoclear_known != 0;
    let update_header = clear_autoclear || cleaned;
    let csize_shift = 62 - (h.cluster_bits - 8);
    let max_idx = max_used_index(&reftable);
    let st = State {
        cluster_bits: h.cluster_bits,
        cluster_size: cs,
        l2_bits,
        l2_size: 1 << l2_bits,
        refcount_order: h.refcount_order,
        refcount_block_bits,
        refcount_max: if h.refcount_order == 6 {
            u64::MAX
        } else {
            (1u64 << (1 << h.refcount_order)) - 1
        },
        csize_shift,
        csize_mask: (1 << (h.cluster_bits - 8)) - 1,
        cluster_offset_mask: (1 << csize_shift) - 1,
        size: h.size,
        l1,
        l1_offset: h.l1_table_offset,
        l1_vm_state_index,
        reftable,
        reftable_offset: h.refcount_table_offset,
        max_reftable_index: max_idx,
        free_cluster_index: 0,
        free_byte_offset: 0,
        incompat,
        compat: h.compatible_features,
        autoclear: if clear_autoclear {
            h.autoclear_features & autoclear_known
        } else {
            h.autoclear_features
        },
        caches: [
            Cache::new(l2_entries, cs as usize),
            Cache::new(rc_entries, cs as usize),
        ],
        cache_opts,
        allocs: Vec::new(),
        next_alloc_id: 0,
        discards: Vec::new(),
        cache_discards: false,
        discard_passthrough: [
            false,
            true,
            pass_req.unwrap_or(ctx.flags.unmap),
            pass_snap.unwrap_or(true),
            pass_other.unwrap_or(false),
        ],
        discard_no_unref: no_unref.unwrap_or(false),
        use_lazy_refcounts: use_lazy,
        has_backing: backing_file.is_some(),
        unknown_fields,
        backing_file: backing_file.clone(),
        backing_format: ex.backing_format.clone(),
        unknown_exts: ex.unknown,
        dead: false,
        corruption_reported: false,
        hdr: h.clone(),
    };
    let driver = Qcow2 {
        st: RefCell::new(st),
        lock: CoMutex::default(),
        console: ctx.console.clone(),
        read_only,
        metadata_prealloc: std::cell::Cell::new(None),
    };
    if update_header {
        // the header rewrite goes straight to the file: the node is not built yet
        let buf = {
            let mut st = driver.st.borrow_mut();
            st.hdr.autoclear_features = st.autoclear;
            let exts: Vec<(u32, Vec<u8>)> = st.unknown_exts.iter().rev().cloned().collect();
            header::build(&header::HeaderImage {
                h: &st.hdr,
                cluster_size: cs as usize,
                unknown_fields: &st.unknown_fields,
                backing_format: st.backing_format.as_deref(),
                backing_file: st.backing_file.as_deref(),
                unknown_exts: &exts,
            })
        };
        let buf = buf.ok_or((
            "Could not update qcow2 header: No space left on device".to_string(),
            libc::ENOSPC,
        ))?;
        let f = file.clone();
        block_on(async move { io::pwritev(&f, 0, &buf, ReqFlags::NONE).await })
            .unwrap_or(Err(libc::EIO))
            .map_err(|e| (with_errno("Could not update qcow2 header", e), e))?;
    }
    Ok(Opened {
        driver,
        backing: backing_file.map(|b| (b, ex.backing_format)),
        version: h.version,
        cluster_size: cs,
    })
}

/// Cache sizes in entries from the disk size and the cache options `[cache-size,
/// l2-cache-size, refcount-cache-size]` (QEMU's read_cache_sizes, default entry size).
pub fn cache_entries(size: u64, cs: u64, opts: [Option<u64>; 3]) -> (usize, usize) {
    let [cache_size, l2_cache_size, rc_cache_size] = opts;
    let max_l2_cache = (size.div_ceil(cs) * 8).div_ceil(cs) * cs;
    let (l2_bytes, rc_bytes) = match (cache_size, l2_cache_size, rc_cache_size) {
        (Some(total), l2, rc) => {
            let l2 =
                l2.unwrap_or_else(|| total.saturating_sub(rc.unwrap_or(4 * cs)).min(max_l2_cache));
            (l2, rc.unwrap_or(total.saturating_sub(l2)))
        }
        (None, l2, rc) => (
            l2.unwrap_or(max_l2_cache.min(32 << 20)),
            rc.unwrap_or(4 * cs),
        ),
    };
    // bounded: QEMU's own limits keep a hostile size from costing more than this
    let l2_entries = ((l2_bytes / cs).max(2)).min((32u64 << 20) / cs).max(2) as usize;
    let rc_entries = (rc_bytes / cs).clamp(4, (32u64 << 20) / cs) as usize;
    (l2_entries, rc_entries)
}
