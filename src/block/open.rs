//! Opening a drive: QEMU filenames (plain paths, `blkdebug:CONFIG:IMAGE`, `blkverify:RAW:TEST`,
//! `json:{...}`), structured blockdev options with QEMU's key names, format probing and its
//! WARNING, and QEMU's error messages. Builds the node graph.

use super::blkdebug::{BlkDebug, BlkDebugDriver};
use super::blkverify::BlkVerifyDriver;
use super::driver::{Limits, ReqFlags};
use super::file::FileDriver;
use super::node::{Child, Node, OpenFlags};
use super::raw::{PROBE_BUF_SIZE, RawDriver, probes_as_other_format};
use crate::output::Console;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Blockdev options: a JSON object with QEMU's key names, nested (`{"file": {"driver": ...}}`).
pub type Options = Map<String, Value>;

/// Everything opening needs besides the options.
pub struct OpenContext {
    /// relative filenames are resolved against this directory
    pub base_dir: PathBuf,
    pub console: Rc<Console>,
    pub flags: OpenFlags,
    /// see [`crate::qemu_io::Invocation::skip_host_sync`]
    pub skip_host_sync: bool,
}

impl OpenContext {
    pub fn resolve(&self, name: &str) -> PathBuf {
        let p = Path::new(name);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Turns `a.b.c=v` keys into nested objects, as QEMU's option parsing accepts both spellings.
pub fn nest_dotted(flat: Options) -> Options {
    let mut out = Options::new();
    for (key, value) in flat {
        let value = match value {
            Value::Object(m) => Value::Object(nest_dotted(m)),
            v => v,
        };
        insert_path(&mut out, &key, value);
    }
    out
}

fn insert_path(map: &mut Options, key: &str, value: Value) {
    match key.split_once('.') {
        None => match (map.get_mut(key), value) {
            (Some(Value::Object(existing)), Value::Object(new)) => {
                for (k, v) in new {
                    insert_path(existing, &k, v);
                }
            }
            (_, value) => {
                map.insert(key.to_string(), value);
            }
        },
        Some((head, rest)) => {
            let entry = map
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Options::new()));
            if !entry.is_object() {
                *entry = Value::Object(Options::new());
            }
            if let Value::Object(m) = entry {
                insert_path(m, rest, value);
            }
        }
    }
}

/// Options parsed from `k=v,k=v` text, with the deprecation warnings QEMU prints for them.
#[derive(Debug, Default, PartialEq)]
pub struct Keyval {
    pub options: Options,
    /// lines to print on stderr (after the program-name prefix), in order
    pub warnings: Vec<String>,
}

/// Parses `k=v,k=v` as `--image-opts` and `open -o` take it (QEMU's QemuOpts syntax): `,,` is
/// a literal comma, a bare `key` is a deprecated short form of `key=on` (`nokey`: `key=off`),
/// and `id` must be an identifier.
pub fn parse_keyval(text: &str) -> Result<Keyval, String> {
    let mut parsed = Keyval::default();
    let mut flat = Options::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        let value = if chars.peek() == Some(&'=') {
            chars.next();
            let mut value = String::new();
            while let Some(c) = chars.next() {
                if c == ',' {
                    if chars.peek() == Some(&',') {
                        chars.next();
                        value.push(',');
                        continue;
                    }
                    break;
                }
                value.push(c);
            }
            value
        } else {
            chars.next();
            let (name, value) = match key.strip_prefix("no") {
                Some(rest) => (rest.to_string(), "off"),
                None => (key.clone(), "on"),
            };
            parsed.warnings.push(format!(
                "warning: short-form boolean option '{key}' deprecated\nPlease use {name}={value} instead"
            ));
            key = name;
            value.to_string()
        };
        // QemuOpts checks the id's form; the id itself then reaches the driver like any option.
        if key == "id" && !is_identifier(&value) {
            return Err("Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.".into());
        }
        flat.insert(key, Value::String(value));
    }
    parsed.options = nest_dotted(flat);
    Ok(parsed)
}

/// QEMU's id_wellformed: a letter, then letters, digits, `-`, `.` or `_`.
fn is_identifier(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

/// blkdebug's `take-child-perms`/`unshare-child-perms`: a list of permission names.
fn check_permissions(v: &Value) -> Result<(), String> {
    const PERMS: [&str; 4] = ["consistent-read", "write", "write-unchanged", "resize"];
    let items = match v {
        Value::Array(a) => a.clone(),
        other => vec![other.clone()],
    };
    for item in items {
        let name = scalar_string(&item).unwrap_or_default();
        if !PERMS.contains(&name.as_str()) {
            // QEMU's list visitor has no name for the element, hence 'null'.
            return Err(format!("Parameter 'null' does not accept value '{name}'"));
        }
    }
    Ok(())
}

fn parse_json_filename(text: &str) -> Result<Options, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        // QEMU's own JSON lexer words its errors differently; the common case is input that
        // ends early.
        let why = if e.is_eof() {
            "premature EOI".to_string()
        } else {
            e.to_string()
        };
        format!("Could not parse the JSON options: JSON parse error, {why}")
    })?;
    match value {
        Value::Object(m) => Ok(nest_dotted(m)),
        _ => Err("Invalid JSON object given".to_string()),
    }
}

/// A scalar option as QEMU sees it after converting JSON scalars to strings.
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

fn take_string(opts: &mut Options, key: &str) -> Option<String> {
    opts.remove(key).and_then(|v| scalar_string(&v))
}

/// The protocol a filename names by its prefix (`blkdebug:`, `blkverify:`), or None for a path.
fn protocol_of(filename: &str) -> Result<Option<&'static str>, String> {
    let Some(colon) = filename.find(':') else {
        return Ok(None);
    };
    // A ':' after a '/' is part of a path, as QEMU's path_has_protocol decides.
    if filename[..colon].contains('/') {
        return Ok(None);
    }
    match &filename[..colon] {
        "blkdebug" => Ok(Some("blkdebug")),
        "blkverify" => Ok(Some("blkverify")),
        "file" => Ok(Some("file")),
        other => Err(format!("Unknown protocol '{other}'")),
    }
}

/// Opens the top node of a drive as qemu-io does: `filename` (may be a json: filename) plus
/// `options`; `format` is `-f`. Errors are the text after `can't open device X: `.
pub fn open_drive(
    filename: Option<&str>,
    mut options: Options,
    format: Option<&str>,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    if let Some(fmt) = format {
        options.insert("driver".into(), Value::String(fmt.to_string()));
    }
    open_node(filename.map(str::to_string), options, true, ctx)
}

/// QEMU's bdrv_open: `probe` is false for children opened in the protocol role.
fn open_node(
    filename: Option<String>,
    mut opts: Options,
    probe: bool,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let mut filename = filename;
    if let Some(json) = filename.as_deref().and_then(|f| f.strip_prefix("json:")) {
        let parsed = parse_json_filename(json)?;
        for (k, v) in parsed {
            opts.entry(k).or_insert(v);
        }
        filename = None;
    }
    if filename.is_none()
        && let Some(Value::String(f)) = opts.get("filename")
        && (!opts.contains_key("driver") || !probe)
    {
        filename = Some(f.clone());
    }
    let driver = match opts.remove("driver") {
        Some(v) => Some(scalar_string(&v).ok_or("Parameter 'driver' expects a string")?),
        None => None,
    };
    match driver.as_deref() {
        Some("raw") => open_format_raw(filename, opts, false, ctx),
        Some("qcow2") => open_qcow2(filename, opts, ctx),
        Some("file") => open_file(filename, opts, ctx),
        Some("blkdebug") => open_blkdebug(filename, opts, ctx),
        Some("blkverify") => open_blkverify(filename, opts, ctx),
        Some(other) => Err(format!("Unknown driver '{other}'")),
        None => {
            if let Some(Value::String(f)) = opts.remove("filename") {
                filename = Some(f);
            }
            if filename.is_none() {
                // no filename but a `file` child: open it, then probe the format from it,
                // which gets the remaining options (`-o file.filename=...,data-file...`)
                let Some(file_opt) = opts.remove("file") else {
                    return Err("Must specify either driver or file".into());
                };
                let proto_node = open_child(Some(file_opt), None, "file", false, ctx)?;
                let name = bottom_filename(&proto_node);
                return open_probed(proto_node, name, opts, ctx);
            }
            let name = filename.clone().unwrap_or_default();
            let proto_node = open_protocol(filename.clone(), opts, ctx)?;
            if !probe {
                return Ok(proto_node);
            }
            open_probed(proto_node, name, Options::new(), ctx)
        }
    }
}

/// Probes the format of what `proto_node` holds (QEMU's find_image_format) and opens it with
/// `fmt_opts`: an empty image is raw, and a probe read that fails fails the open.
fn open_probed(
    proto_node: Rc<Node>,
    name: String,
    mut fmt_opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let mut head = vec![0u8; PROBE_BUF_SIZE as usize];
    if proto_node.getlength().unwrap_or(0) > 0 {
        let n = proto_node.clone();
        let read = crate::block::executor::block_on(async move {
            let mut buf = vec![0u8; PROBE_BUF_SIZE as usize];
            super::io::preadv(&n, 0, &mut buf).await.map(|()| buf)
        });
        match read {
            Some(Ok(buf)) => head = buf,
            Some(Err(e)) => {
                return Err(format!(
                    "Could not read image for determining its format: {}",
                    crate::errno::strerror(e)
                ));
            }
            None => {
                return Err(
                    "the format probe read can never complete; QEMU would hang here".into(),
                );
            }
        }
    }
    if probes_as_qcow2(&head) {
        let backing_opt = fmt_opts.remove("backing");
        return qcow2_on(proto_node, fmt_opts, backing_opt, ctx);
    }
    // The same magic with version 1 is QEMU's old `qcow` format, which we do not have.
    if probes_as_other_format(&head) {
        return Err("qcow (version 1) images are not supported by this engine".into());
    }
    reject_unknown(&fmt_opts, "format", "raw")?;
    // QEMU warns only where writes would be restricted.
    if !ctx.flags.read_only {
        ctx.console.err(&format!(
            "WARNING: Image format was not specified for '{name}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.\n"
        ));
    }
    wrap_raw(proto_node, true, ctx)
}

/// Opens the node a filename's protocol prefix names, with no format probing.
fn open_protocol(
    filename: Option<String>,
    opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let name = filename.clone().unwrap_or_default();
    match protocol_of(&name)? {
        Some("blkdebug") => open_blkdebug(filename, opts, ctx),
        Some("blkverify") => open_blkverify(filename, opts, ctx),
        Some(_) => open_file(name.strip_prefix("file:").map(str::to_string), opts, ctx),
        None => open_file(filename, opts, ctx),
    }
}

fn reject_unknown(opts: &Options, kind: &str, name: &str) -> Result<(), String> {
    match opts.keys().next() {
        None => Ok(()),
        Some(k) if kind == "format" => Err(format!(
            "Block format '{name}' does not support the option '{k}'"
        )),
        Some(k) => Err(format!(
            "Block protocol '{name}' doesn't support the option '{k}'"
        )),
    }
}

fn finish(mut node: Node, ctx: &OpenContext, own: Limits) -> Rc<Node> {
    node.flags = ctx.flags;
    // Some limits default to the primary child's (QEMU's bdrv_refresh_limits).
    let mut limits = own;
    if let Some(file) = node.primary_child() {
        // The driver's own setting overrides the inherited one.
        if limits.max_transfer == 0 {
            limits.max_transfer = file.limits.max_transfer;
        }
    }
    node.limits = limits;
    let node = node.into_rc();
    let _ = node.refresh_total_sectors();
    node
}

fn open_file(
    filename: Option<String>,
    mut opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let explicit = opts.remove("filename");
    let name = match (explicit, filename) {
        (Some(Value::String(s)), _) => s,
        (Some(_), _) => return Err("The 'file' block driver requires a file name".into()),
        (None, Some(f)) => f,
        (None, None) => return Err("The 'file' block driver requires a file name".into()),
    };
    if name.is_empty() {
        return Err("The 'file' block driver requires a file name".into());
    }
    // aio=native (an option, or the flag qemu-io's -k/-i give) needs O_DIRECT.
    let native_aio = match opts.remove("aio") {
        Some(Value::String(mode)) => mode == "native",
        _ => ctx.flags.native_aio,
    };
    for k in ["locking", "cache.direct", "cache.no-flush", "discard"] {
        opts.remove(k);
    }
    reject_unknown(&opts, "protocol", "file")?;
    let driver = FileDriver::open(
        &ctx.resolve(&name),
        &name,
        ctx.flags.read_only,
        !ctx.skip_host_sync,
    )?;
    if native_aio && !ctx.flags.direct {
        return Err(
            "aio=native was specified, but it requires cache.direct=on, which was not \
                    specified."
                .into(),
        );
    }
    let mut node = Node::new(Box::new(driver), Vec::new(), name);
    node.supported_write_flags = ReqFlags::FUA;
    node.supported_zero_flags = ReqFlags::MAY_UNMAP.with(ReqFlags::NO_FALLBACK);
    Ok(finish(node, ctx, Limits::default()))
}

/// Opens a child given by a nested options object or a filename, in the protocol role unless
/// `probe` (blkverify's test child is probed).
fn open_child(
    value: Option<Value>,
    filename: Option<String>,
    child: &str,
    probe: bool,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    match value {
        // A filename given beside the child's options is the child's own (`-o file.align=4k`).
        Some(Value::Object(m)) => open_node(filename, m, probe, ctx),
        Some(Value::String(reference)) => Err(format!(
            "Cannot find device='{reference}' nor node-name='{reference}'"
        )),
        Some(_) => Err(format!("Invalid type for option '{child}'")),
        None => match filename {
            Some(f) => open_node(Some(f), Options::new(), probe, ctx),
            None => Err(format!("A block device must be specified for \"{child}\"")),
        },
    }
}

fn wrap_raw(file: Rc<Node>, probed: bool, ctx: &OpenContext) -> Result<Rc<Node>, String> {
    let name = file.filename.clone();
    let mut node = Node::new(
        Box::new(RawDriver { probed }),
        vec![Child {
            name: "file",
            node: file.clone(),
            writable: true,
            primary: true,
        }],
        name,
    );
    node.supported_write_flags =
        ReqFlags::WRITE_UNCHANGED.with(ReqFlags::FUA.and(file.supported_write_flags));
    node.supported_zero_flags = ReqFlags::WRITE_UNCHANGED.with(
        ReqFlags::FUA
            .with(ReqFlags::MAY_UNMAP)
            .with(ReqFlags::NO_FALLBACK)
            .and(file.supported_zero_flags),
    );
    let mut limits = Limits::default();
    // Probed raw images are kept to whole sectors so the first one can be protected.
    if probed {
        limits.request_alignment = 512;
    }
    Ok(finish(node, ctx, limits))
}

fn open_format_raw(
    filename: Option<String>,
    mut opts: Options,
    probed: bool,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let file_opt = opts.remove("file");
    opts.remove("filename");
    let file = open_child(file_opt, filename, "file", false, ctx)?;
    reject_unknown(&opts, "format", "raw")?;
    wrap_raw(file, probed, ctx)
}

/// QEMU's qcow2_probe: the magic and a version of at least 2 in the first 104 bytes.
fn probes_as_qcow2(head: &[u8]) -> bool {
    head.len() >= 104
        && head.starts_with(b"QFI\xfb")
        && u32::from_be_bytes([head[4], head[5], head[6], head[7]]) >= 2
}

fn open_qcow2(
    filename: Option<String>,
    mut opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let file_opt = opts.remove("file");
    opts.remove("filename");
    let backing_opt = opts.remove("backing");
    let file = open_child(file_opt, filename, "file", false, ctx)?;
    qcow2_on(file, opts, backing_opt, ctx)
}

/// The directory part of a filename as QEMU's path_combine keeps it (up to the last '/').
fn dir_prefix(name: &str) -> &str {
    match name.rfind('/') {
        Some(i) => &name[..=i],
        None => "",
    }
}

/// The filename of the protocol node at the bottom of a chain of primary children.
fn bottom_filename(node: &Rc<Node>) -> String {
    let mut n = node.clone();
    while let Some(c) = n.primary_child().cloned() {
        n = c;
    }
    n.filename.clone()
}

/// `-s` (QEMU's BDRV_O_SNAPSHOT): the drive opened read-only under a temporary qcow2 overlay
/// that takes every write and is deleted at close. QEMU puts it in the host's temp directory;
/// we keep it beside the image's directory (`base_dir`), so nothing is written elsewhere.
pub fn open_temp_snapshot(root: Rc<Node>, ctx: &OpenContext) -> Result<Rc<Node>, String> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let size = root
        .getlength()
        .map_err(|e| format!("Could not get image size: {}", crate::errno::strerror(e)))?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!(".blockfault-snapshot-{}-{n}.qcow2", std::process::id());
    let path = ctx.resolve(&name);
    let spec = crate::img::qcow2::create::CreateSpec {
        size,
        ..Default::default()
    };
    let image = crate::img::qcow2::create::build(&spec)
        .map_err(|e| format!("Could not create temporary overlay: {e:?}"))?;
    std::fs::File::create(&path)
        .and_then(|f| image.write_to(&f))
        .map_err(|e| format!("Could not create temporary overlay: {e}"))?;
    // The overlay is scratch space: QEMU opens it with cache.no-flush.
    let octx = OpenContext {
        base_dir: ctx.base_dir.clone(),
        console: ctx.console.clone(),
        flags: OpenFlags {
            read_only: false,
            no_flush: true,
            ..ctx.flags
        },
        skip_host_sync: true,
    };
    let driver = FileDriver::open(&path, &name, false, false)
        .map(|d| d.delete_on_close(path.clone()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
    let mut file = Node::new(Box::new(driver), Vec::new(), name);
    file.supported_write_flags = ReqFlags::FUA;
    file.supported_zero_flags = ReqFlags::MAY_UNMAP.with(ReqFlags::NO_FALLBACK);
    let file = finish(file, &octx, Limits::default());
    let mut opts = Options::new();
    let opened = super::qcow2::open_image(&file, &mut opts, &octx, &mut |_| Ok(None))?;
    qcow2_assemble(file, opened, Some(root), &octx)
}

/// Opens qcow2 on top of an opened file node, then its backing file (read-only).
fn qcow2_on(
    file: Rc<Node>,
    mut opts: Options,
    backing_opt: Option<Value>,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    // QEMU opens the data file child in the middle of qcow2_do_open, so its errors come
    // before those of the backing file name and the dirty-image repair
    let mut data_file_opt = opts.remove("data-file");
    let mut open_data_file = |name: Option<&str>| -> Result<Option<Rc<Node>>, String> {
        match (name, data_file_opt.take()) {
            (None, None) => Ok(None),
            (None, Some(v)) => open_child(Some(v), None, "data-file", false, ctx).map(Some),
            (Some(name), v) => {
                open_child(v, Some(name.to_string()), "data-file", false, ctx).map(Some)
            }
        }
    };
    let opened = super::qcow2::open_image(&file, &mut opts, ctx, &mut open_data_file)?;
    reject_unknown(&opts, "format", "qcow2")?;
    let bctx = OpenContext {
        base_dir: ctx.base_dir.clone(),
        console: ctx.console.clone(),
        flags: OpenFlags {
            read_only: true,
            ..ctx.flags
        },
        skip_host_sync: ctx.skip_host_sync,
    };
    let backing = match backing_opt {
        Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::Object(m)) => Some(
            open_node(None, m, true, &bctx)
                .map_err(|e| format!("Could not open backing file: {e}"))?,
        ),
        Some(Value::String(r)) => {
            return Err(format!("Cannot find device='{r}' nor node-name='{r}'"));
        }
        Some(_) => return Err("Invalid type for option 'backing'".into()),
        None => match &opened.backing {
            None => None,
            Some((name, fmt)) => {
                let path = if name.starts_with('/') || protocol_of(name).ok().flatten().is_some() {
                    name.clone()
                } else {
                    format!("{}{}", dir_prefix(&bottom_filename(&file)), name)
                };
                let mut o = Options::new();
                if let Some(f) = fmt {
                    o.insert("driver".into(), Value::String(f.clone()));
                }
                Some(
                    open_node(Some(path), o, true, &bctx)
                        .map_err(|e| format!("Could not open backing file: {e}"))?,
                )
            }
        },
    };
    qcow2_assemble(file, opened, backing, ctx)
}

/// The qcow2 node over its file and, if any, its backing node.
fn qcow2_assemble(
    file: Rc<Node>,
    opened: super::qcow2::open::Opened,
    backing: Option<Rc<Node>>,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let mut children = vec![Child {
        name: "file",
        node: file.clone(),
        writable: !ctx.flags.read_only,
        primary: true,
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
            },
        );
    }
    if let Some(b) = backing {
        children.push(Child {
            name: "backing",
            node: b,
            writable: false,
            primary: false,
        });
    }
    let cs = opened.cluster_size;
    let subcluster_size = opened.subcluster_size;
    let v3 = opened.version >= 3;
    let mut node = Node::new(Box::new(opened.driver), children, file.filename.clone());
    node.supported_zero_flags = if v3 {
        ReqFlags::MAY_UNMAP.with(ReqFlags::NO_FALLBACK)
    } else {
        ReqFlags::NONE
    };
    let limits = Limits {
        pwrite_zeroes_alignment: subcluster_size,
        pdiscard_alignment: cs,
        ..Limits::default()
    };
    Ok(finish(node, ctx, limits))
}

fn open_blkdebug(
    filename: Option<String>,
    mut opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let mut image_name = None;
    if let Some(f) = filename
        .as_deref()
        .and_then(|f| f.strip_prefix("blkdebug:"))
    {
        let (config, image) = f
            .split_once(':')
            .ok_or("blkdebug requires both config file and image path")?;
        if !config.is_empty() {
            opts.entry("config")
                .or_insert(Value::String(config.to_string()));
        }
        image_name = Some(image.to_string());
    }
    if let Some(x) = take_string(&mut opts, "x-image") {
        image_name = Some(x);
    }
    let config = match opts.remove("config") {
        Some(v) => Some(scalar_string(&v).ok_or("Parameter 'config' expects a string")?),
        None => None,
    };
    let state = BlkDebug::new(ctx.console.clone());
    let setup = super::blkdebug::setup::configure(&state, config.as_deref(), &mut opts, ctx)?;
    let image = open_child(opts.remove("image"), image_name, "image", false, ctx)?;
    for k in ["take-child-perms", "unshare-child-perms"] {
        if let Some(v) = opts.remove(k) {
            check_permissions(&v)?;
        }
    }
    let limits = setup.limits(&image)?;
    reject_unknown(&opts, "protocol", "blkdebug")?;
    let name = format!(
        "blkdebug:{}:{}",
        config.as_deref().unwrap_or(""),
        image.filename
    );
    let mut node = Node::new(
        Box::new(BlkDebugDriver { state }),
        vec![Child {
            name: "image",
            node: image.clone(),
            writable: true,
            primary: true,
        }],
        name,
    );
    node.supported_write_flags =
        ReqFlags::WRITE_UNCHANGED.with(ReqFlags::FUA.and(image.supported_write_flags));
    node.supported_zero_flags = ReqFlags::WRITE_UNCHANGED.with(
        ReqFlags::FUA
            .with(ReqFlags::MAY_UNMAP)
            .with(ReqFlags::NO_FALLBACK)
            .and(image.supported_zero_flags),
    );
    let node = finish(node, ctx, limits);
    // `none` fires once the node is complete, so rules on it are active from the first request.
    let n = node.clone();
    crate::block::executor::block_on(async move {
        n.debug_event(super::blkdebug::events::Event::None).await;
    });
    Ok(node)
}

fn open_blkverify(
    filename: Option<String>,
    mut opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let (mut raw_name, mut test_name) = (None, None);
    if let Some(f) = filename
        .as_deref()
        .and_then(|f| f.strip_prefix("blkverify:"))
    {
        let (raw, test) = f
            .split_once(':')
            .ok_or("blkverify requires raw copy and original image path")?;
        raw_name = Some(raw.to_string());
        test_name = Some(test.to_string());
    }
    if let Some(x) = take_string(&mut opts, "x-raw") {
        raw_name = Some(x);
    }
    if let Some(x) = take_string(&mut opts, "x-image") {
        test_name = Some(x);
    }
    let raw = open_child(opts.remove("raw"), raw_name, "raw", false, ctx)?;
    let test = open_child(opts.remove("test"), test_name, "test", true, ctx)?;
    reject_unknown(&opts, "protocol", "blkverify")?;
    let name = format!("blkverify:{}:{}", raw.filename, test.filename);
    let mut node = Node::new(
        Box::new(BlkVerifyDriver {
            console: ctx.console.clone(),
        }),
        vec![
            Child {
                name: "raw",
                node: raw,
                writable: true,
                primary: true,
            },
            Child {
                name: "test",
                node: test,
                writable: true,
                primary: false,
            },
        ],
        name,
    );
    node.supported_write_flags = ReqFlags::WRITE_UNCHANGED;
    node.supported_zero_flags = ReqFlags::WRITE_UNCHANGED;
    Ok(finish(node, ctx, Limits::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_nest_and_merge_with_nested_ones() {
        let flat =
            parse_keyval("driver=raw,file.driver=blkdebug,file.image.filename=a,,b").unwrap();
        assert!(flat.warnings.is_empty());
        assert_eq!(
            Value::Object(flat.options),
            serde_json::json!({"driver": "raw", "file": {"driver": "blkdebug", "image": {"filename": "a,b"}}})
        );
    }

    #[test]
    fn bare_keys_are_deprecated_booleans_and_ids_must_be_identifiers() {
        let parsed = parse_keyval("ro,nocache=x,noauto").unwrap();
        assert_eq!(
            Value::Object(parsed.options),
            serde_json::json!({"ro": "on", "nocache": "x", "auto": "off"})
        );
        assert_eq!(
            parsed.warnings,
            [
                "warning: short-form boolean option 'ro' deprecated\nPlease use ro=on instead",
                "warning: short-form boolean option 'noauto' deprecated\nPlease use auto=off instead",
            ]
        );
        assert!(
            parse_keyval("id=1x")
                .unwrap_err()
                .starts_with("Parameter 'id' expects an identifier")
        );
        assert!(parse_keyval("id=x1").is_ok());
    }

    #[test]
    fn qcow_version_1_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = vec![0u8; 4096];
        head[..8].copy_from_slice(b"QFI\xfb\0\0\0\x01");
        std::fs::write(dir.path().join("v1.qcow"), head).unwrap();
        let ctx = OpenContext {
            base_dir: dir.path().to_path_buf(),
            console: Console::new(std::rc::Rc::new(std::cell::RefCell::new(
                crate::output::Capture::default(),
            ))),
            flags: OpenFlags::default(),
            skip_host_sync: true,
        };
        let err = open_drive(Some("v1.qcow"), Options::new(), None, &ctx).err();
        assert_eq!(
            err.as_deref(),
            Some("qcow (version 1) images are not supported by this engine")
        );
    }

    #[test]
    fn protocol_prefixes() {
        assert_eq!(protocol_of("a/b:c"), Ok(None));
        assert_eq!(protocol_of("blkdebug::x"), Ok(Some("blkdebug")));
        assert_eq!(
            protocol_of("bogus:x"),
            Err("Unknown protocol 'bogus'".to_string())
        );
    }
}
