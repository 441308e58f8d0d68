//! Opening a drive: QEMU filenames (plain paths, `blkdebug:CONFIG:IMAGE`, `blkverify:RAW:TEST`,
//! `json:{...}`), structured blockdev options with QEMU's key names, format probing and its
//! WARNING, and QEMU's error messages. Builds the node graph.

use super::blkdebug::config::qdict_order;
use super::blkdebug::rules::qnum_to_string;
use super::blkdebug::{BlkDebug, BlkDebugDriver};
use super::blkverify::BlkVerifyDriver;
use super::driver::{Limits, ReqFlags};
use super::file::{FileDriver, HostKind};
use super::json_filename;
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

/// blkdebug's `take-child-perms`/`unshare-child-perms`: a non-empty list of permission names.
fn check_permissions(v: &Value) -> Result<(), String> {
    const PERMS: [&str; 4] = ["consistent-read", "write", "write-unchanged", "resize"];
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        // `take-child-perms.0=write` as --image-opts gives it.
        Value::Object(m) => m.values().collect(),
        other => vec![other],
    };
    for (i, item) in items.into_iter().enumerate() {
        let Value::String(name) = item else {
            return Err(format!(
                "Invalid parameter type for '[{i}]', expected: string"
            ));
        };
        if !PERMS.contains(&name.as_str()) {
            // QEMU's list visitor has no name for the element, hence 'null'.
            return Err(format!("Parameter 'null' does not accept value '{name}'"));
        }
    }
    Ok(())
}

/// A scalar option as QEMU sees it after converting JSON scalars to strings.
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(qnum_to_string(n)),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

/// Takes a QemuOpts option as text: a JSON scalar is converted (see [`scalar_string`]), while
/// null and empty objects or lists are taken and dropped unread, as qemu_opts_absorb_qdict
/// does. A non-empty object or list stays: QEMU flattened it into keys nothing takes.
pub(crate) fn take_string(opts: &mut Options, key: &str) -> Option<String> {
    match opts.remove(key)? {
        v if is_nonempty_value(&v) => {
            opts.insert(key.to_string(), v);
            None
        }
        v => scalar_string(&v),
    }
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
    let root = open_node(filename.map(str::to_string), options, true, ctx)?;
    check_unique_names(&root)?;
    Ok(root)
}

/// QEMU's bdrv_open: `probe` is false for children opened in the protocol role. The node
/// keeps the options it was opened with, as `reopen` compares against them.
fn open_node(
    filename: Option<String>,
    mut opts: Options,
    probe: bool,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let mut filename = filename;
    if let Some(json) = filename.as_deref().and_then(|f| f.strip_prefix("json:")) {
        json_filename::join(&mut opts, json_filename::parse(json)?);
        filename = None;
    }
    let mut explicit = opts.clone();
    let node_name = match opts.remove("node-name") {
        Some(v) => Some(check_node_name(v)?),
        None => None,
    };
    let node = open_node_as(filename.clone(), opts, probe, ctx)?;
    for c in &node.children {
        explicit.shift_remove(c.name);
    }
    explicit.shift_remove("backing");
    let mut effective = explicit.clone();
    if !effective.contains_key("driver") {
        effective.insert("driver".into(), node.driver.format_name().into());
    }
    if let Some(f) = &filename {
        for (k, v) in filename_options(node.driver.format_name(), f) {
            effective.entry(k).or_insert(v);
        }
    }
    *node.options.borrow_mut() = effective;
    *node.explicit_options.borrow_mut() = explicit;
    if let Some(name) = node_name {
        *node.node_name.borrow_mut() = name;
    }
    Ok(node)
}

/// QEMU's bdrv_assign_node_name checks.
fn check_node_name(v: Value) -> Result<String, String> {
    let name = scalar_string(&v).ok_or("Parameter 'node-name' expects a string")?;
    if !is_identifier(&name) {
        return Err(format!("Invalid node-name: '{name}'"));
    }
    if name.len() >= 32 {
        return Err("Node name too long".into());
    }
    Ok(name)
}

/// The options QEMU derives from a protocol filename (bdrv_fill_options and the drivers'
/// parse_filename), which become part of the node's options.
fn filename_options(driver: &str, filename: &str) -> Options {
    let mut o = Options::new();
    let mut put = |k: &str, v: &str| {
        o.insert(k.into(), Value::String(v.into()));
    };
    match driver {
        "file" => put(
            "filename",
            filename.strip_prefix("file:").unwrap_or(filename),
        ),
        "blkdebug" => {
            if let Some((config, image)) = filename
                .strip_prefix("blkdebug:")
                .and_then(|f| f.split_once(':'))
            {
                if !config.is_empty() {
                    put("config", config);
                }
                put("x-image", image);
            }
        }
        "blkverify" => {
            if let Some((raw, test)) = filename
                .strip_prefix("blkverify:")
                .and_then(|f| f.split_once(':'))
            {
                put("x-raw", raw);
                put("x-image", test);
            }
        }
        _ => {}
    }
    o
}

/// Every node-name in the tree must be unique (QEMU checks as it names each node).
fn check_unique_names(root: &Rc<Node>) -> Result<(), String> {
    fn walk(node: &Rc<Node>, seen: &mut Vec<String>) -> Result<(), String> {
        for c in &node.children {
            walk(&c.node, seen)?;
        }
        let name = node.node_name();
        if !name.is_empty() {
            if seen.contains(&name) {
                return Err(format!("Duplicate nodes with node-name='{name}'"));
            }
            seen.push(name);
        }
        Ok(())
    }
    walk(root, &mut Vec::new())
}

/// open_node once the json: filename is merged into the options.
fn open_node_as(
    mut filename: Option<String>,
    mut opts: Options,
    probe: bool,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    if filename.is_none()
        && !probe
        && let Some(Value::String(f)) = opts.get("filename")
    {
        filename = Some(f.clone());
    }
    // Only a string names a driver. QEMU ignores any other value, except that a non-empty
    // object or list stays behind as options nothing takes (`driver.0`).
    let driver = match opts.remove("driver") {
        Some(Value::String(s)) => Some(s),
        Some(v) if is_nonempty_value(&v) => {
            opts.insert("driver".into(), v);
            None
        }
        _ => None,
    };
    if let Some(other) = driver.as_deref().filter(|d| !DRIVERS.contains(d)) {
        return Err(format!("Unknown driver '{other}'"));
    }
    // `"backing": null` (or the deprecated "") means no backing file, whatever the driver.
    if opts.get("backing").and_then(Value::as_str) == Some("") {
        ctx.console.report(
            "warning: Use of \"backing\": \"\" is deprecated; use \"backing\": null instead",
        );
        opts.insert("backing".into(), Value::Null);
    }
    let may_have_backing = driver.as_deref() == Some("qcow2") || (driver.is_none() && probe);
    if !may_have_backing && opts.get("backing") == Some(&Value::Null) {
        opts.remove("backing");
    }
    match driver.as_deref() {
        Some("raw") => open_format_raw(filename, opts, false, ctx),
        Some("qcow2") => open_qcow2(filename, opts, ctx),
        Some(f @ ("copy-on-read" | "compress")) => open_filter(f, filename, opts, ctx),
        Some(d @ ("file" | "host_device" | "host_cdrom")) => {
            let kind = HostKind::from_driver(d).expect("one of file-posix's drivers");
            open_file(kind, filename, opts, ctx)
        }
        Some("blkdebug") => open_blkdebug(filename, opts, ctx),
        Some("blkverify") => open_blkverify(filename, opts, ctx),
        Some(other) => Err(format!("Unknown driver '{other}'")),
        None if probe => open_probed(filename, opts, ctx),
        None => {
            if let Some(Value::String(f)) = opts.remove("filename") {
                filename = Some(f);
            }
            if filename.is_none() {
                return Err("Must specify either driver or file".into());
            }
            open_protocol(filename, opts, ctx)
        }
    }
}

/// The drivers the engine has.
const DRIVERS: [&str; 9] = [
    "raw",
    "qcow2",
    "file",
    "host_device",
    "host_cdrom",
    "blkdebug",
    "blkverify",
    "copy-on-read",
    "compress",
];

/// A non-empty object or list: what QEMU's flattening turns into `key.sub` options.
fn is_nonempty_value(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// A child's options given as an object, or as a list, whose elements QEMU's flattening turns
/// into options `0`, `1`, ...
fn child_options(v: Value) -> Options {
    match v {
        Value::Object(m) => m,
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i.to_string(), v))
            .collect(),
        _ => Options::new(),
    }
}

/// QEMU's `path_has_protocol`: a `:` before any `/`.
pub fn has_protocol(name: &str) -> bool {
    name.find([':', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b':')
}

/// A format node without a driver: QEMU opens its file child (from the `file` options, else
/// the filename) and probes what it holds; the remaining options are the probed format's.
fn open_probed(
    filename: Option<String>,
    mut opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    opts.remove("filename");
    let file_opt = opts.remove("file");
    let names_a_child = filename.is_some()
        || file_opt
            .as_ref()
            .is_some_and(|v| v.is_string() || is_nonempty_value(v));
    if !names_a_child {
        return Err("Must specify either driver or file".into());
    }
    let file = open_child(file_opt, filename, "file", false, ctx)?;
    // QEMU's find_image_format: an empty image is raw, and a probe read that fails fails the
    // open.
    let mut head = vec![0u8; PROBE_BUF_SIZE as usize];
    if file.getlength().unwrap_or(0) > 0 {
        let n = file.clone();
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
        let backing = opts.remove("backing");
        return qcow2_on(file, opts, backing, ctx);
    }
    // The same magic with version 1 is QEMU's old `qcow` format, which we do not have.
    if probes_as_other_format(&head) {
        return Err("qcow (version 1) images are not supported by this engine".into());
    }
    // QEMU warns only where writes would be restricted.
    if !ctx.flags.read_only {
        ctx.console.err(&format!(
            "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.\n",
            file.filename
        ));
    }
    if opts.get("backing") == Some(&Value::Null) {
        opts.remove("backing");
    }
    reject_unknown(&opts, "format", "raw")?;
    wrap_raw(file, true, ctx)
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
        Some(_) => open_file(
            HostKind::File,
            name.strip_prefix("file:").map(str::to_string),
            opts,
            ctx,
        ),
        None => open_file(HostKind::File, filename, opts, ctx),
    }
}

/// Fails on the options nothing took. QEMU's options are flat (`a.b`, `a.0`), and it names the
/// first one its QDict iterates.
fn reject_unknown(opts: &Options, kind: &str, name: &str) -> Result<(), String> {
    let mut keys = Vec::new();
    for (k, v) in opts {
        flat_keys(k, v, &mut keys);
    }
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    match qdict_order(&refs).first().map(|&i| refs[i]) {
        None => Ok(()),
        Some(k) if kind == "format" => Err(format!(
            "Block format '{name}' does not support the option '{k}'"
        )),
        Some(k) => Err(format!(
            "Block protocol '{name}' doesn't support the option '{k}'"
        )),
    }
}

/// The flat keys of an option: itself, or for a non-empty object or list its members'.
fn flat_keys(key: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                flat_keys(&format!("{key}.{k}"), v, out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                flat_keys(&format!("{key}.{i}"), v, out);
            }
        }
        _ => out.push(key.to_string()),
    }
}

fn finish(mut node: Node, ctx: &OpenContext, own: Limits) -> Rc<Node> {
    node.set_flags(ctx.flags);
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
    kind: HostKind,
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
        kind,
        &ctx.resolve(&name),
        &name,
        ctx.flags.read_only,
        !ctx.skip_host_sync,
    )?
    .with_direct(ctx.flags.direct);
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
        Some(Value::String(reference)) => Err(format!(
            "Cannot find device='{reference}' nor node-name='{reference}'"
        )),
        // A filename given beside the child's options is the child's own (`-o file.align=4k`).
        Some(v) if is_nonempty_value(&v) => open_node(filename, child_options(v), probe, ctx),
        // Anything else (null, a number, `{}`) is neither options nor a reference.
        _ => match filename {
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

/// The `copy-on-read` and `compress` filters: one `file` child, which they pass everything
/// to (with their one change).
fn open_filter(
    driver: &str,
    filename: Option<String>,
    mut opts: Options,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let file_opt = opts.remove("file");
    opts.remove("filename");
    let bottom = take_string(&mut opts, "bottom");
    let file = open_child(file_opt, filename, "file", false, ctx)?;
    reject_unknown(&opts, "format", driver)?;
    let mut limits = Limits::default();
    let node_driver: Box<dyn super::driver::BlockDriver> = if driver == "compress" {
        if !file.capabilities().pwritev_compressed {
            return Err(format!(
                "Compression is not supported for underlying format: {}",
                file.driver.format_name()
            ));
        }
        // whole clusters: the generic layer pads writes before they are compressed
        if let Some(info) = super::io::get_info(&file)
            && info.cluster_size != 0
        {
            limits.request_alignment = info.cluster_size;
        }
        Box::new(super::compress::CompressDriver)
    } else {
        // the copy reaches into the child, so the filter must be writable
        if ctx.flags.read_only {
            return Err("Block node is read-only".into());
        }
        if let Some(b) = bottom {
            // nodes have no names here, so no node can be the bottom one
            return Err(format!("Bottom node '{b}' not found"));
        }
        Box::new(super::copy_on_read::CopyOnReadDriver)
    };
    let mut node = Node::new(
        node_driver,
        vec![Child {
            name: "file",
            node: file.clone(),
            writable: true,
            primary: true,
        }],
        file.filename.clone(),
    );
    node.supported_write_flags =
        ReqFlags::WRITE_UNCHANGED.with(ReqFlags::FUA.and(file.supported_write_flags));
    node.supported_zero_flags = ReqFlags::WRITE_UNCHANGED.with(
        ReqFlags::FUA
            .with(ReqFlags::MAY_UNMAP)
            .with(ReqFlags::NO_FALLBACK)
            .and(file.supported_zero_flags),
    );
    Ok(finish(node, ctx, limits))
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
/// `read_only` (`-r`) makes the overlay read-only too.
pub fn open_temp_snapshot(
    root: Rc<Node>,
    read_only: bool,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
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
            read_only,
            no_flush: true,
            ..ctx.flags
        },
        skip_host_sync: true,
    };
    let driver = FileDriver::open(HostKind::File, &path, &name, read_only, false)
        .map(|d| {
            d.with_direct(ctx.flags.direct)
                .delete_on_close(path.clone())
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&path);
        })?;
    let mut file = Node::new(Box::new(driver), Vec::new(), name);
    file.supported_write_flags = ReqFlags::FUA;
    file.supported_zero_flags = ReqFlags::MAY_UNMAP.with(ReqFlags::NO_FALLBACK);
    let file = finish(file, &octx, Limits::default());
    let mut opts = Options::new();
    let opened = super::qcow2::open_image(&file, &mut opts, &octx)?;
    // The options QEMU opens its overlay with (driver qcow2 on a file), for reopen.
    let named = |pairs: &[(&str, &str)]| -> Options {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    };
    *file.options.borrow_mut() = named(&[("driver", "file"), ("filename", &file.filename)]);
    let overlay = qcow2_assemble(file, opened, Some(root), &octx)?;
    *overlay.options.borrow_mut() = named(&[("driver", "qcow2")]);
    Ok(overlay)
}

/// Opens qcow2 on top of an opened file node, then its backing file (read-only).
fn qcow2_on(
    file: Rc<Node>,
    mut opts: Options,
    backing_opt: Option<Value>,
    ctx: &OpenContext,
) -> Result<Rc<Node>, String> {
    let opened = super::qcow2::open_image(&file, &mut opts, ctx)?;
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
        Some(Value::String(r)) => {
            return Err(format!(
                "Could not open backing file: Cannot find device='{r}' nor node-name='{r}'"
            ));
        }
        v => {
            // Anything but a non-empty object or list (`{}`, a number) is no option.
            let given = v.filter(is_nonempty_value).map(child_options);
            // QEMU's bdrv_open_backing_file: `backing.*` options apply to the backing file
            // the image names, unless they name a file themselves.
            let names_file = given.as_ref().is_some_and(|m| {
                m.contains_key("filename")
                    || matches!(m.get("file"), Some(Value::Object(f)) if f.contains_key("filename"))
            });
            match (&opened.backing, given) {
                (None, None) => None,
                (None, Some(m)) => Some(
                    open_node(None, m, true, &bctx)
                        .map_err(|e| format!("Could not open backing file: {e}"))?,
                ),
                (Some((name, fmt)), given) => {
                    // A name with a protocol prefix (`json:{...}` too) is used as it is.
                    let path = (!names_file).then(|| {
                        if name.starts_with('/') || has_protocol(name) {
                            name.clone()
                        } else {
                            format!("{}{}", dir_prefix(&bottom_filename(&file)), name)
                        }
                    });
                    let mut o = given.unwrap_or_default();
                    if let Some(f) = fmt {
                        o.entry("driver").or_insert(Value::String(f.clone()));
                    }
                    Some(
                        open_node(path, o, true, &bctx)
                            .map_err(|e| format!("Could not open backing file: {e}"))?,
                    )
                }
            }
        }
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
    if let Some(b) = backing {
        children.push(Child {
            name: "backing",
            node: b,
            writable: false,
            primary: false,
        });
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
        pwrite_zeroes_alignment: cs,
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
    if let Some(f) = filename.as_deref() {
        match f.strip_prefix("blkdebug:") {
            Some(f) => {
                let (config, image) = f
                    .split_once(':')
                    .ok_or("blkdebug requires both config file and image path")?;
                if !config.is_empty() {
                    opts.entry("config")
                        .or_insert(Value::String(config.to_string()));
                }
                image_name = Some(image.to_string());
            }
            // Without the prefix the whole filename is the image's (QEMU's x-image).
            None => image_name = Some(f.to_string()),
        }
    }
    if let Some(x) = take_string(&mut opts, "x-image") {
        image_name = Some(x);
    }
    let config = take_string(&mut opts, "config");
    let state = BlkDebug::new(ctx.console.clone());
    let setup = super::blkdebug::setup::configure(&state, config.as_deref(), &mut opts, ctx)?;
    let image = open_child(opts.remove("image"), image_name, "image", false, ctx)?;
    for k in ["take-child-perms", "unshare-child-perms"] {
        // Only a non-empty list is read; anything else is left over as an unknown option.
        if opts.get(k).is_some_and(is_nonempty_value)
            && let Some(v) = opts.remove(k)
        {
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
    if let Some(f) = filename.as_deref() {
        match f.strip_prefix("blkverify:") {
            Some(f) => {
                let (raw, test) = f
                    .split_once(':')
                    .ok_or("blkverify requires raw copy and original image path")?;
                raw_name = Some(raw.to_string());
                test_name = Some(test.to_string());
            }
            // Without the prefix the whole filename is the test image's (QEMU's x-image).
            None => test_name = Some(f.to_string()),
        }
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
    fn path_has_protocol() {
        assert!(has_protocol("json:{'a': 'b/c'}"));
        assert!(has_protocol("foo:bar"));
        assert!(!has_protocol("a/json:{}"));
        assert!(!has_protocol("plain.img"));
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
