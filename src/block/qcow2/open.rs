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
use super::runtime;
use super::state::{State, refcount_max};
use crate::block::blkdebug::events::Event;
use crate::block::driver::{Limits, ReqFlags};
use crate::block::executor::block_on;
use crate::block::io;
use crate::block::node::{Child, ChildRole, Node};
use crate::block::options::{OpenChild, OpenContext, Options};
use crate::block::perms::Perms;
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

/// The backing file an image names, and its format (backing format extension).
pub type BackingName = Option<(String, Option<String>)>;

/// Opens a qcow2 node over its file (QEMU's qcow2_open): the node, whose backing child is the
/// caller's to add, its limits and the backing file the image names. `children` opens the
/// external data file (None: the image may have none).
pub fn open_node(
    file: Rc<Node>,
    opts: &mut Options,
    ctx: &OpenContext,
    children: Option<&dyn OpenChild>,
) -> Result<(Node, Limits, BackingName), String> {
    // QEMU opens the data file child in the middle of qcow2_do_open, so its errors come
    // between those of the runtime options and those of the backing file name
    let mut data_opts = Options::new();
    if let Some(v) = opts.shift_remove("data-file") {
        data_opts.insert("data-file".into(), v);
    }
    let mut open_data_file = |name: Option<&str>| -> Result<Option<Rc<Node>>, String> {
        let Some(children) = children else {
            return Ok(None);
        };
        let filename = name.map(str::to_string);
        if filename.is_some() {
            children
                .open_child(&mut data_opts, "data-file", filename, ChildRole::Data)
                .map(Some)
        } else {
            children.open_optional_child(&mut data_opts, "data-file", None, ChildRole::Data)
        }
    };
    let opened = open_image(&file, opts, ctx, &mut open_data_file)?;
    let mut children = vec![Child {
        name: "file",
        node: file.clone(),
        writable: !ctx.flags.read_only,
        primary: true,
        role: ChildRole::Image,
        extra_perms: Perms::NONE,
        unshared_perms: Perms::NONE,
    }];
    if let Some(d) = opened.data_file.clone() {
        // QEMU lists children newest first: flushes reach the data file before the image file
        children.insert(
            0,
            Child {
                name: "data-file",
                node: d,
                writable: !ctx.flags.read_only,
                primary: false,
                role: ChildRole::Data,
                extra_perms: Perms::NONE,
                unshared_perms: Perms::NONE,
            },
        );
    }
    let cs = opened.cluster_size;
    let v3 = opened.version >= 3;
    let mut node = Node::new(Box::new(opened.driver), children, file.filename.clone());
    node.supported_zero_flags = if v3 {
        ReqFlags::MAY_UNMAP.with(ReqFlags::NO_FALLBACK)
    } else {
        ReqFlags::NONE
    };
    let limits = Limits {
        pwrite_zeroes_alignment: opened.subcluster_size,
        pdiscard_alignment: cs,
        ..Limits::default()
    };
    Ok((node, limits, opened.backing))
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
    /// the bitmap directory (the open loads every bitmap, as QEMU's does)
    pub bitmaps: Vec<super::bitmap::DirEntry>,
    /// the LUKS header of a LUKS image (a keyless open reads it)
    pub luks: Option<crate::block::luks_header::LuksInfo>,
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
    no_io: bool,
) -> Result<Metadata, OpenError> {
    let mode = OpenMode { check, writable };
    let o = header::read(file, mode)?;
    header::check_encryption(&o.h)?;
    let crypto = if no_io {
        header::CryptoOpen::Keyless
    } else {
        header::CryptoOpen::Keyed { key_given: false }
    };
    let ex = header::read_extensions(file, &o.h, u64::from(o.h.header_length), o.ext_end, crypto)?;
    header::open_encryption(&o.h, ex.crypto_header, crypto)?;
    let backing_file = header::read_backing_name(file, &o.h)?;
    // as qcow2_do_open: a broken snapshot table fails every open but a check's
    if !check {
        read_snapshots(file, &o.h)?;
    }
    let bitmaps = match ex.bitmaps {
        Some(ext) => {
            super::bitmap::load(file, ext, o.h.cluster_size(), o.h.size / 512 * 512)
                .map_err(|m| (m, libc::EINVAL))?
                .dir
        }
        None => Vec::new(),
    };
    header::check_total_sectors(o.h.size)?;
    Ok(Metadata {
        h: o.h,
        backing: header::backing_of(backing_file.as_deref(), ex.backing_format.as_deref()),
        data_file: ex.data_file,
        bitmaps,
        luks: ex.luks,
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
    // the driver goes on with its own cache: the checker's changed refcount blocks go first
    let ret = ret.and_then(|()| checker.write_back());
    for line in checker.take_log() {
        line.print(&ctx.console);
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
        check: ctx.flags.check,
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
    let facts = runtime::ImageFacts {
        version: h.version,
        cluster_size: cs,
        disk_size: h.size / 512 * 512,
        lazy_refcounts_bit: h.compatible_features & header::COMPAT_LAZY_REFCOUNTS != 0,
        l2_entry_bytes: h.l2_entry_size(),
    };
    let rt = runtime::parse(opts, &facts, ctx.flags.unmap, h.crypt_method != 0)
        .map_err(|m| (m, libc::EINVAL))?;
    header::check_encryption(&h)?;
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
    let crypto = header::CryptoOpen::Keyed {
        key_given: rt.encrypt_key_secret,
    };
    let ex = header::read_extensions(&node_file, &h, u64::from(h.header_length), ext_end, crypto)?;
    if ex.bitmaps_dropped {
        ctx.console.report(if h.version < 3 {
            "warning: This qcow2 v2 image contains bitmaps, but they may have been modified by a program without persistent bitmap support; so now they must all be considered inconsistent"
        } else {
            "warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent"
        });
        ctx.console
            .err("Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.");
    }
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
    // the driver's opens all do I/O
    header::open_encryption(&h, ex.crypto_header, crypto)?;
    let backing_file = header::read_backing_name(&node_file, &h)?;
    let backing = header::backing_of(backing_file.as_deref(), ex.backing_format.as_deref());
    // A check reads the snapshot table itself (a broken table is what it reports).
    let (snapshots, snapshots_size) = if ctx.flags.check {
        (Vec::new(), 0)
    } else {
        read_snapshots(&node_file, &h)?
    };
    let mut h = h;
    let mut reftable = reftable;
    // QEMU repairs a dirty image (lazy refcounts) before serving it read-write, unless the
    // open is a check's.
    let cleaned = h.incompatible_features & header::INCOMPAT_DIRTY != 0
        && !read_only
        && !ctx.flags.check
        && repair_dirty(file, ctx, &mut h, &mut l1, &mut reftable)?;
    let incompat = h.incompatible_features;
    // The bitmaps bit is QEMU's to keep; this engine drops it only once the drive is open
    // (see start_writing).
    let autoclear_known = header::AUTOCLEAR_DATA_FILE_RAW | header::AUTOCLEAR_BITMAPS;
    let clear_autoclear = !read_only && h.autoclear_features & !autoclear_known != 0;
    // QEMU's qcow2_load_dirty_bitmaps: a read-write open marks the consistent bitmaps in use
    // (once the node is up: start_writing), and that rewrites the header anyway
    let mut bitmaps = match ex.bitmaps {
        Some(ext) => super::bitmap::load(&node_file, ext, cs, h.size / 512 * 512)
            .map_err(|m| (m, libc::EINVAL))?,
        None => super::bitmap::Bitmaps::default(),
    };
    for bm in &mut bitmaps.list {
        bm.readonly = true;
    }
    bitmaps.open_rw_pending = !read_only && bitmaps.ext.is_some();
    let header_by_bitmaps = !read_only && bitmaps.list.iter().any(|b| !b.inconsistent);
    let update_header =
        ((clear_autoclear || (ex.bitmaps_dropped && !read_only)) && !header_by_bitmaps) || cleaned;
    let csize_shift = 62 - (h.cluster_bits - 8);
    let max_idx = max_used_index(&reftable);
    let st = State {
        cluster_bits: h.cluster_bits,
        cluster_size: cs,
        l2_bits,
        l2_size: 1 << l2_bits,
        l2_slice_size: rt.sizes.l2_entry_size / h.l2_entry_size(),
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
        l1: super::overlap::PointerTable::l1(l1),
        l1_offset: h.l1_table_offset,
        l1_vm_state_index,
        reftable: super::overlap::PointerTable::reftable(reftable),
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
            Cache::new(rt.sizes.l2_tables as usize, rt.sizes.l2_entry_size as usize),
            Cache::new(rt.sizes.refcount_tables as usize, cs as usize),
        ],
        overlap_check: rt.overlap_check,
        snapshots,
        snapshots_offset: if ctx.flags.check {
            0
        } else {
            h.snapshots_offset
        },
        snapshots_size,
        bitmap_directory: None,
        allocs: Vec::new(),
        next_alloc_id: 0,
        discards: Default::default(),
        cache_discards: false,
        discard_passthrough: rt.discard_passthrough,
        discard_no_unref: rt.discard_no_unref,
        use_lazy_refcounts: rt.lazy_refcounts,
        runtime: rt,
        has_backing: backing.is_some(),
        unknown_fields,
        backing_file,
        backing_format: ex.backing_format,
        unknown_exts: ex.unknown,
        dead: false,
        corruption_reported: false,
        // QEMU's check open leaves the snapshot fields unset (the check reads the table
        // itself), so a header update on that open writes no snapshot table
        hdr: if ctx.flags.check {
            header::Header {
                nb_snapshots: 0,
                snapshots_offset: 0,
                ..h.clone()
            }
        } else {
            h.clone()
        },
    };
    let driver = Qcow2 {
        st: RefCell::new(st),
        lock: CoMutex::default(),
        console: ctx.console.clone(),
        metadata_prealloc: std::cell::Cell::new(None),
        threads: std::cell::Cell::new(0),
        thread_queue: crate::block::executor::CoQueue::new(),
        bitmaps: RefCell::new(bitmaps),
    };
    driver.sync_bitmap_directory();
    if update_header {
        // the header rewrite goes straight to the file: the node is not built yet
        let exts = driver.trailing_exts();
        let buf = {
            let mut st = driver.st.borrow_mut();
            st.hdr.autoclear_features = st.autoclear;
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

/// QEMU's qcow2_read_snapshots, as far as the driver needs the table: each snapshot's L1
/// table, and the table's size. Reads past the end of the file read zeroes.
fn read_snapshots(file: &impl ImageFile, h: &Header) -> Result<(Vec<(u64, u32)>, u64), OpenError> {
    /// QEMU's QCOW_MAX_SNAPSHOT_EXTRA_DATA and QCOW_MAX_SNAPSHOTS_SIZE.
    const MAX_EXTRA_DATA: u64 = 1024;
    const MAX_TABLE_SIZE: u64 = 1024 * 65536;
    let failed = |e: i32| (with_errno("Failed to read snapshot table", e), e);
    let mut snapshots = Vec::new();
    let mut offset = h.snapshots_offset;
    for i in 0..h.nb_snapshots {
        offset = offset.div_ceil(8) * 8;
        let head = file.read_at(offset, 40).map_err(failed)?;
        let be32 = |at: usize| u32::from_be_bytes(head[at..at + 4].try_into().expect("4"));
        let be16 = |at: usize| u16::from_be_bytes(head[at..at + 2].try_into().expect("2"));
        let l1_offset = u64::from_be_bytes(head[..8].try_into().expect("8"));
        let l1_size = be32(8);
        let (id_len, name_len) = (u64::from(be16(12)), u64::from(be16(14)));
        let extra = u64::from(be32(36));
        if extra > MAX_EXTRA_DATA {
            return Err((
                format!(
                    "Too much extra metadata in snapshot table entry {i}\nYou can force-remove this extra metadata with qemu-img check -r all"
                ),
                libc::EFBIG,
            ));
        }
        offset += 40 + extra + id_len + name_len;
        snapshots.push((l1_offset, l1_size));
        if offset - h.snapshots_offset > MAX_TABLE_SIZE {
            return Err((
                format!(
                    "Snapshot table is too big\nYou can force-remove all {} overhanging snapshots with qemu-img check -r all",
                    h.nb_snapshots - i
                ),
                libc::EFBIG,
            ));
        }
    }
    Ok((snapshots, offset - h.snapshots_offset))
}

impl Qcow2 {
    /// The active L1 table and the refcount table as the open read them, before any header
    /// update of the open could change them in the file: what QEMU's check works with.
    pub fn opened_tables(&self) -> (Vec<u64>, Vec<u64>) {
        let st = self.st.borrow();
        (st.l1.to_vec(), st.reftable.to_vec())
    }

    /// After `qemu-img check` ran its checker on the file under this open node: the driver
    /// takes up what the check read and changed, as QEMU's check and close share one
    /// BDRVQcow2State — the refcount table (a rebuild moves it), the active L1 table
    /// (`OFLAG_COPIED` repairs), the feature bits (the corrupt and dirty bits) and the
    /// snapshot table the check read — so that the close (persistent bitmaps stored, header
    /// rewritten) works on the image as the check left it. The caches start empty: the
    /// checker wrote its changed tables back first.
    pub fn adopt_check<F: ImageFile>(&self, checker: &Checker<F>) {
        let h = checker.header();
        let (snapshots, snapshots_size) = checker.snapshot_tables();
        let mut st = self.st.borrow_mut();
        st.l1 = super::overlap::PointerTable::l1(checker.l1().to_vec());
        st.reftable = super::overlap::PointerTable::reftable(checker.reftable().to_vec());
        st.reftable_offset = h.refcount_table_offset;
        st.max_reftable_index = max_used_index(checker.reftable());
        st.free_cluster_index = 0;
        st.incompat = h.incompatible_features;
        st.snapshots = snapshots;
        st.snapshots_offset = h.snapshots_offset;
        st.snapshots_size = snapshots_size;
        st.hdr.refcount_table_offset = h.refcount_table_offset;
        st.hdr.refcount_table_clusters = h.refcount_table_clusters;
        st.hdr.incompatible_features = h.incompatible_features;
        st.hdr.nb_snapshots = h.nb_snapshots;
        st.hdr.snapshots_offset = h.snapshots_offset;
        let sizes = &st.runtime.sizes;
        let caches = [
            Cache::new(sizes.l2_tables as usize, sizes.l2_entry_size as usize),
            Cache::new(sizes.refcount_tables as usize, st.cluster_size as usize),
        ];
        st.caches = caches;
    }

    /// A check's fatal corruption left the image unusable (QEMU's `bs->drv = NULL`): the
    /// close writes nothing.
    pub fn stop(&self) {
        self.st.borrow_mut().dead = true;
    }
}
