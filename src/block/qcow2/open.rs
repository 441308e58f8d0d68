//! Opening an image (QEMU's qcow2_do_open): the header as `header` reads and checks it, the L1
//! and refcount tables, the runtime options, the repair of a dirty image and the header
//! rewrite. Nothing is written unless QEMU would write (clearing unknown autoclear bits, a
//! repair). qemu-img's `info` and `check` open the same way without serving I/O
//! ([`open_metadata`]).

use super::Qcow2;
use super::cache::Cache;
use super::check::{Checker, FIX_ERRORS, FIX_LEAKS};
use super::header::{self, Header, OpenError, OpenMode, with_errno};
use super::image_file::{ImageFile, NodeFile};
use super::lock::CoMutex;
use super::refcount::max_used_index;
use super::state::{State, refcount_max};
use crate::block::blkdebug::events::Event;
use crate::block::driver::ReqFlags;
use crate::block::executor::block_on;
use crate::block::io;
use crate::block::node::Node;
use crate::block::open::{OpenContext, Options};
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;

/// A successfully opened image and what the graph builder needs to finish the node.
pub struct Opened {
    pub driver: Qcow2,
    /// backing file name as stored in the image, and its format (backing format extension)
    pub backing: Option<(String, Option<String>)>,
    pub version: u32,
    pub cluster_size: u64,
    /// QEMU's pwrite_zeroes_alignment
    pub subcluster_size: u64,
    /// the external data file's node (QEMU's s->data_file when it is not bs->file)
    pub data_file: Option<Rc<Node>>,
}

fn event(file: &Rc<Node>, ev: Event) {
    let f = file.clone();
    block_on(async move { f.debug_event(ev).await });
}

fn take_bool(opts: &mut Options, key: &str) -> Result<Option<bool>, String> {
    match opts.remove(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s == "on" || s == "true" => Ok(Some(true)),
        Some(Value::String(s)) if s == "off" || s == "false" => Ok(Some(false)),
        Some(_) => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

fn take_size(opts: &mut Options, key: &str) -> Result<Option<u64>, String> {
    let v = match opts.remove(key) {
        None => return Ok(None),
        Some(Value::Number(n)) => {
            return n.as_u64().map(Some).ok_or(format!(
                "Parameter '{key}' expects a non-negative number below 2^64"
            ));
        }
        Some(Value::String(s)) => s,
        Some(_) => return Err(format!("Parameter '{key}' expects a size")),
    };
    let (num, mult) = match v.chars().last() {
        Some('k' | 'K') => (&v[..v.len() - 1], 1u64 << 10),
        Some('M') => (&v[..v.len() - 1], 1 << 20),
        Some('G') => (&v[..v.len() - 1], 1 << 30),
        Some('T') => (&v[..v.len() - 1], 1 << 40),
        _ => (v.as_str(), 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Some)
        .ok_or(format!("Parameter '{key}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.\n"))
}

/// How the graph builder opens the external data file (QEMU's bdrv_open_child for
/// "data-file"): with None, from the `data-file` option if one was given (Ok(None) if not);
/// with a name, that file (the name stored in the image).
pub type DataFileOpener<'a> = &'a mut dyn FnMut(Option<&str>) -> Result<Option<Rc<Node>>, String>;

/// Opens the qcow2 image in `file`. `opts` holds the qcow2 runtime options (consumed).
pub fn open_image(
    file: &Rc<Node>,
    opts: &mut Options,
    ctx: &OpenContext,
    data_file: DataFileOpener<'_>,
) -> Result<Opened, String> {
    open_inner(file, opts, ctx, data_file).map_err(|(m, _)| m)
}

/// What a metadata-only open (qemu-img's `info` and `check`, and `create`'s look at a backing
/// image) learns from qcow2_do_open.
pub struct Metadata {
    pub h: Header,
    /// the backing file name as stored in the image, and its format, if any
    pub backing: Option<(String, Option<String>)>,
    /// the external data file's name as stored in the image
    pub data_file: Option<String>,
}

/// qcow2_do_open for qemu-img, which only reads metadata: the same reads and checks as
/// [`open_image`], in the same order, up to the backing file name, then the block layer's
/// size check. The L1 and refcount tables are not read here (only an I/O error could fail
/// there, and the checker reads its own copies); nothing needed to serve I/O is set up. Not
/// yet as QEMU: a writable open (`check -r`) does not rewrite the header to clear unknown
/// autoclear bits.
pub fn open_metadata(
    file: &impl ImageFile,
    check: bool,
    writable: bool,
) -> Result<Metadata, OpenError> {
    let mode = OpenMode { check, writable };
    let o = header::read(file, mode)?;
    header::check_encryption(&o.h)?;
    let ex = header::read_extensions(file, &o.h, u64::from(o.h.header_length), o.ext_end)?;
    let backing_file = header::read_backing_name(file, &o.h)?;
    header::check_total_sectors(o.h.size)?;
    Ok(Metadata {
        h: o.h,
        backing: header::backing_of(backing_file.as_deref(), ex.backing_format.as_deref()),
        data_file: ex.data_file,
    })
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
    let mut checker =
        Checker::new(NodeFile(file.clone()), h.clone(), true).map_err(|_| failed(libc::EIO))?;
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
    *h = checker.header().clone();
    *l1 = checker.l1().to_vec();
    *reftable = checker.reftable().to_vec();
    if res.corruptions != 0 {
        return Ok(false);
    }
    h.incompatible_features &= !header::INCOMPAT_DIRTY;
    Ok(true)
}

fn open_inner(
    file: &Rc<Node>,
    opts: &mut Options,
    ctx: &OpenContext,
    open_data_file: DataFileOpener<'_>,
) -> Result<Opened, OpenError> {
    let read_only = ctx.flags.read_only;
    let node_file = NodeFile(file.clone());
    let mode = OpenMode {
        check: false,
        writable: !read_only,
    };
    let header::Opening {
        h,
        unknown_fields,
        ext_end,
        l1_vm_state_index,
    } = header::read(&node_file, mode)?;
    let cs = h.cluster_size();
    let extended_l2 = h.extended_l2();
    let l2_bits = h.cluster_bits - if extended_l2 { 4 } else { 3 };
    let subclusters = if extended_l2 {
        super::state::SUBCLUSTERS
    } else {
        1
    };
    let subcluster_size = cs / u64::from(subclusters);
    // entries per refblock = cluster bits * 8 / refcount bits
    let refcount_block_bits = h.cluster_bits + 3 - h.refcount_order;
    let mut l1 = Vec::new();
    if h.l1_size > 0 {
        let raw = node_file
            .read_at(h.l1_table_offset, h.l1_size as usize * 8)
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
    for k in [
        "cache-clean-interval",
        "overlap-check",
        "overlap-check.template",
    ] {
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
    header::check_encryption(&h)?;
    let cache_opts = [cache_size, l2_cache_size, rc_cache_size];
    let (l2_entries, rc_entries) = cache_entries(h.size, cs, h.l2_entry_size(), cache_opts);
    // refcount init
    let reftable_entries = (u64::from(h.refcount_table_clusters) << (h.cluster_bits - 3)) as usize;
    event(file, Event::ReftableLoad);
    let raw = node_file
        .read_at(h.refcount_table_offset, reftable_entries * 8)
        .map_err(|e| (with_errno("Could not initialize refcount handling", e), e))?;
    let reftable: Vec<u64> = raw
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
        .collect();
    let ex = header::read_extensions(&node_file, &h, u64::from(h.header_length), ext_end)?;
    let bad = |m: String| (m, libc::EINVAL);
    let data_node = if h.incompatible_features & header::INCOMPAT_DATA_FILE != 0 {
        let mut n = open_data_file(None).map_err(bad)?;
        if let (None, Some(name)) = (&n, &ex.data_file) {
            n = open_data_file(Some(name)).map_err(bad)?;
        }
        Some(n.ok_or_else(|| bad("'data-file' is required for this image".into()))?)
    } else {
        if open_data_file(None).map_err(bad)?.is_some() {
            return Err(bad(
                "'data-file' can only be set for images with an external data file".into(),
            ));
        }
        if h.autoclear_features & header::AUTOCLEAR_DATA_FILE_RAW != 0 {
            return Err(bad("data-file-raw requires a data file".into()));
        }
        None
    };
    let backing_file = header::read_backing_name(&node_file, &h)?;
    let backing = header::backing_of(backing_file.as_deref(), ex.backing_format.as_deref());
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
        refcount_max: refcount_max(h.refcount_order),
        csize_shift,
        csize_mask: (1 << (h.cluster_bits - 8)) - 1,
        cluster_offset_mask: (1 << csize_shift) - 1,
        compression: super::compress::CompressionType::from_header(h.compression_type),
        extended_l2,
        subclusters_per_cluster: subclusters,
        subcluster_bits: subcluster_size.trailing_zeros(),
        subcluster_size,
        data_file: data_node.is_some(),
        data_file_name: ex.data_file,
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
        has_backing: backing.is_some(),
        unknown_fields,
        backing_file,
        backing_format: ex.backing_format,
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
        threads: std::cell::Cell::new(0),
        thread_queue: crate::block::executor::CoQueue::new(),
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
                data_file: st.data_file_name.as_deref().filter(|_| st.data_file),
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
    header::check_total_sectors(h.size)?;
    Ok(Opened {
        driver,
        backing,
        version: h.version,
        cluster_size: cs,
        subcluster_size,
        data_file: data_node,
    })
}

/// Cache sizes in entries from the disk size and the cache options `[cache-size,
/// l2-cache-size, refcount-cache-size]` (QEMU's read_cache_sizes, default entry size).
pub fn cache_entries(
    size: u64,
    cs: u64,
    l2_entry_size: u64,
    opts: [Option<u64>; 3],
) -> (usize, usize) {
    let [cache_size, l2_cache_size, rc_cache_size] = opts;
    let max_l2_cache = (size.div_ceil(cs) * l2_entry_size).div_ceil(cs) * cs;
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
