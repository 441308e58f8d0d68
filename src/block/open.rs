//! Opening a drive, as QEMU's bdrv_open_inherit does it, in one straight walk per node:
//!
//! 1. the filename (`json:{...}` gives options), and what the node inherits from its parent;
//! 2. the driver: named by `driver`, by a filename's protocol prefix (`blkdebug:`), or probed
//!    from what the format's `file` child holds (that child is opened first);
//! 3. the block layer's own options (`node-name`, `read-only`, `cache.*`, `discard`,
//!    `detect-zeroes`, `force-share`), then the driver's open, which takes its own options
//!    and opens further children through [`OpenChild`];
//! 4. the backing file (`backing.*`, `backing: null`), then the check that every option was
//!    taken by someone.
//!
//! Errors are the text after qemu-io's `can't open device X: `.

use super::blkdebug::events::Event;
use super::driver::{Limits, ReqFlags};
use super::file::{FileDriver, HostKind};
use super::json_filename;
use super::node::{Child, ChildRole, DetectZeroes, Node, OpenFlags};
use super::options::{
    OpenChild, OptType, absorb, copy_default, first_leftover, get_flat, put_flat, set_default,
    take_flat,
};
use super::perms::{self, Perms};
use super::raw::{PROBE_BUF_SIZE, probes_as_other_format};
use serde_json::Value;
use std::cell::RefCell;
use std::rc::Rc;

pub use super::options::{Keyval, OpenContext, Options, nest_dotted, parse_keyval};

/// The drivers the engine has, as QEMU's driver table describes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Driver {
    File,
    HostDevice,
    HostCdrom,
    Raw,
    Qcow2,
    Blkdebug,
    Blkverify,
    CopyOnRead,
    Compress,
    NullCo,
    NullAio,
}

impl Driver {
    fn by_name(name: &str) -> Option<Driver> {
        Some(match name {
            "file" => Driver::File,
            "host_device" => Driver::HostDevice,
            "host_cdrom" => Driver::HostCdrom,
            "raw" => Driver::Raw,
            "qcow2" => Driver::Qcow2,
            "blkdebug" => Driver::Blkdebug,
            "blkverify" => Driver::Blkverify,
            "copy-on-read" => Driver::CopyOnRead,
            "compress" => Driver::Compress,
            "null-co" => Driver::NullCo,
            "null-aio" => Driver::NullAio,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Driver::File => "file",
            Driver::HostDevice => "host_device",
            Driver::HostCdrom => "host_cdrom",
            Driver::Raw => "raw",
            Driver::Qcow2 => "qcow2",
            Driver::Blkdebug => "blkdebug",
            Driver::Blkverify => "blkverify",
            Driver::CopyOnRead => "copy-on-read",
            Driver::Compress => "compress",
            Driver::NullCo => "null-co",
            Driver::NullAio => "null-aio",
        }
    }

    /// Opened as a protocol node (QEMU's drivers with bdrv_file_open).
    fn is_protocol(self) -> bool {
        matches!(
            self,
            Driver::File
                | Driver::HostDevice
                | Driver::HostCdrom
                | Driver::Blkdebug
                | Driver::Blkverify
                | Driver::NullCo
                | Driver::NullAio
        )
    }

    /// file-posix's drivers, which need a filename (bdrv_needs_filename).
    fn host_kind(self) -> Option<HostKind> {
        HostKind::from_driver(self.name())
    }

    fn is_format(self) -> bool {
        matches!(self, Driver::Raw | Driver::Qcow2)
    }

    fn supports_backing(self) -> bool {
        self == Driver::Qcow2
    }

    /// QEMU's bdrv_parse_filename: a filename given to a protocol node becomes its options.
    /// Only `file` keeps the `filename` option itself (bdrv_needs_filename).
    fn parse_filename(self, filename: &str, opts: &mut Options) -> Result<(), String> {
        let put = |opts: &mut Options, key: &str, v: &str| {
            put_flat(opts, key, Value::String(v.to_string()));
        };
        match self {
            Driver::File | Driver::HostDevice | Driver::HostCdrom => {
                let prefix = format!("{}:", self.name());
                put(
                    opts,
                    "filename",
                    filename.strip_prefix(&prefix).unwrap_or(filename),
                );
                return Ok(());
            }
            Driver::Blkdebug => match filename.strip_prefix("blkdebug:") {
                None => put(opts, "x-image", filename),
                Some(rest) => {
                    let (config, image) = rest
                        .split_once(':')
                        .ok_or("blkdebug requires both config file and image path")?;
                    if !config.is_empty() {
                        put(opts, "config", config);
                    }
                    put(opts, "x-image", image);
                }
            },
            Driver::Blkverify => match filename.strip_prefix("blkverify:") {
                None => put(opts, "x-image", filename),
                Some(rest) => {
                    let (raw, test) = rest
                        .split_once(':')
                        .ok_or("blkverify requires raw copy and original image path")?;
                    put(opts, "x-raw", raw);
                    put(opts, "x-image", test);
                }
            },
            // the driver's open checks the filename (null_co_parse_filename)
            Driver::Raw
            | Driver::Qcow2
            | Driver::CopyOnRead
            | Driver::Compress
            | Driver::NullCo
            | Driver::NullAio => return Ok(()),
        }
        take_flat(opts, "filename");
        Ok(())
    }
}

/// The driver a protocol node's filename names (QEMU's bdrv_find_protocol): its prefix, when
/// the filename came as one (not as a `filename` option), else `file`.
fn find_protocol(filename: &str, allow_prefix: bool) -> Result<Driver, String> {
    match protocol_of(filename)? {
        Some(name) if allow_prefix => {
            Ok(Driver::by_name(name).expect("protocol_of knows only our drivers"))
        }
        _ => Ok(Driver::File),
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
        "null-co" => Ok(Some("null-co")),
        "null-aio" => Ok(Some("null-aio")),
        other => Err(format!("Unknown protocol '{other}'")),
    }
}

/// QEMU's `path_has_protocol`: a `:` before any `/`.
pub fn has_protocol(name: &str) -> bool {
    name.find([':', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b':')
}

/// The block layer's own options, taken before the driver's (QEMU's bdrv_runtime_opts).
const RUNTIME_OPTS: [(&str, OptType); 9] = [
    ("node-name", OptType::String),
    ("driver", OptType::String),
    ("cache.direct", OptType::Bool),
    ("cache.no-flush", OptType::Bool),
    ("read-only", OptType::Bool),
    ("auto-read-only", OptType::Bool),
    ("detect-zeroes", OptType::String),
    ("discard", OptType::String),
    ("force-share", OptType::Bool),
];

/// A node's open flags while it is being opened (QEMU's `flags`): what requests see, plus
/// whether it is opened as a protocol node (QEMU's BDRV_O_PROTOCOL: no format probing).
#[derive(Clone, Copy, Debug)]
struct Flags {
    node: OpenFlags,
    protocol: bool,
    auto_read_only: bool,
}

/// What a child gets from its parent.
struct Parent<'p> {
    /// the parent's options as given (QEMU's bs->options)
    opts: &'p Options,
    flags: Flags,
    is_format: bool,
    role: ChildRole,
}

/// QEMU's bdrv_inherited_options: the child's defaults from its parent, and its flags.
fn inherit(opts: &mut Options, parent: &Parent) -> Flags {
    let mut flags = parent.flags;
    // A non-format parent's plain data child is probed; every child of a format (but its
    // backing file) is a protocol node.
    if !parent.is_format && parent.role == ChildRole::Data {
        flags.protocol = false;
    }
    if parent.is_format && parent.role != ChildRole::Cow {
        flags.protocol = true;
    }
    for key in ["cache.direct", "cache.no-flush", "force-share"] {
        copy_default(opts, parent.opts, key);
    }
    if parent.role == ChildRole::Cow {
        set_default(opts, "read-only", Value::String("on".into()));
        set_default(opts, "auto-read-only", Value::String("off".into()));
    } else {
        copy_default(opts, parent.opts, "read-only");
        copy_default(opts, parent.opts, "auto-read-only");
    }
    // Discards are the parent's to filter: lower layers always pass them on.
    set_default(opts, "discard", Value::String("unmap".into()));
    flags.node.copy_on_read = false;
    flags
}

/// QEMU's update_options_from_flags: the flags as options, where the options do not say.
fn options_from_flags(opts: &mut Options, flags: &Flags) {
    set_default(opts, "cache.direct", Value::Bool(flags.node.direct));
    set_default(opts, "cache.no-flush", Value::Bool(flags.node.no_flush));
    set_default(opts, "read-only", Value::Bool(flags.node.read_only));
    set_default(opts, "auto-read-only", Value::Bool(flags.auto_read_only));
}

/// QEMU's bdrv_parse_discard_flags: whether discards unmap.
fn parse_discard(mode: &str) -> Option<bool> {
    match mode {
        "off" | "ignore" => Some(false),
        "on" | "unmap" => Some(true),
        _ => None,
    }
}

/// QEMU's node names are at most 31 characters.
const MAX_NODE_NAME: usize = 31;

/// One drive being opened: the graph's node names live as long as the walk.
struct Walk<'a> {
    ctx: &'a OpenContext,
    /// node names taken so far (QEMU's graph_bdrv_states), with the node once it is open
    names: RefCell<Vec<(String, Option<Rc<Node>>)>>,
}

impl Walk<'_> {
    /// QEMU's bdrv_assign_node_name.
    fn assign_name(&self, name: &str) -> Result<(), String> {
        if !super::options::id_wellformed(name) {
            return Err(format!("Invalid node-name: '{name}'"));
        }
        if self.names.borrow().iter().any(|(n, _)| n == name) {
            return Err(format!("Duplicate nodes with node-name='{name}'"));
        }
        if name.len() > MAX_NODE_NAME {
            return Err("Node name too long".into());
        }
        self.names.borrow_mut().push((name.to_string(), None));
        Ok(())
    }

    /// QEMU's bdrv_lookup_bs for a reference (`"file": "NAME"`).
    fn lookup(&self, reference: &str) -> Result<Rc<Node>, String> {
        self.names
            .borrow()
            .iter()
            .find(|(n, _)| n == reference)
            .and_then(|(_, node)| node.clone())
            .ok_or_else(|| format!("Cannot find device='{reference}' nor node-name='{reference}'"))
    }

    /// QEMU's bdrv_open_child_bs: the child `key` from `opts` (its `key.*` options, or a
    /// reference), else `filename`; None when there is neither and `allow_none`.
    fn open_child_bs(
        &self,
        filename: Option<String>,
        opts: &mut Options,
        key: &str,
        parent: Parent,
        allow_none: bool,
    ) -> Result<Option<Rc<Node>>, String> {
        let (child_opts, reference) = match opts.shift_remove(key) {
            Some(Value::Object(mut m)) => {
                let reference = match m.shift_remove("") {
                    Some(Value::String(r)) => Some(r),
                    _ => None,
                };
                (m, reference)
            }
            Some(Value::String(r)) => (Options::new(), Some(r)),
            // a list's elements are options `0`, `1`... once QEMU has flattened it
            Some(Value::Array(items)) => (
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), v))
                    .collect(),
                None,
            ),
            _ => (Options::new(), None),
        };
        if filename.is_none() && reference.is_none() && child_opts.is_empty() {
            if allow_none {
                return Ok(None);
            }
            return Err(format!("A block device must be specified for \"{key}\""));
        }
        self.open(filename, reference, child_opts, Some(parent))
            .map(Some)
    }

    /// QEMU's bdrv_open_inherit: one node and, through its driver, its children.
    fn open(
        &self,
        filename: Option<String>,
        reference: Option<String>,
        mut opts: Options,
        parent: Option<Parent>,
    ) -> Result<Rc<Node>, String> {
        if let Some(r) = reference {
            if filename.is_some() || !opts.is_empty() {
                return Err("Cannot reference an existing block device with additional options or a new filename".into());
            }
            return self.lookup(&r);
        }
        let mut filename = filename;
        // json: options count as given beside the filename, with lower priority.
        if let Some(json) = filename.as_deref().and_then(|f| f.strip_prefix("json:")) {
            json_filename::join(&mut opts, json_filename::parse(json)?);
            filename = None;
        }
        // QEMU's bs->explicit_options: what was given for this node itself.
        let mut explicit = opts.clone();
        let mut flags = match &parent {
            None => Flags {
                node: self.ctx.flags,
                protocol: false,
                auto_read_only: false,
            },
            Some(p) => inherit(&mut opts, p),
        };

        // bdrv_fill_options: the driver, from its name or a protocol prefix.
        let mut driver = match get_flat(&opts, "driver") {
            Some(Value::String(name)) => {
                Some(Driver::by_name(name).ok_or_else(|| format!("Unknown driver '{name}'"))?)
            }
            _ => None,
        };
        if let Some(d) = driver {
            flags.protocol = d.is_protocol();
        }
        options_from_flags(&mut opts, &flags);
        let mut parse_filename = false;
        if flags.protocol
            && let Some(f) = filename.take()
        {
            if get_flat(&opts, "filename").is_some() {
                return Err("Can't specify 'file' and 'filename' options at the same time".into());
            }
            put_flat(&mut opts, "filename", Value::String(f));
            parse_filename = true;
        }
        let given_filename = match get_flat(&opts, "filename") {
            Some(Value::String(f)) => Some(f.clone()),
            _ => None,
        };
        if driver.is_none() && flags.protocol {
            let Some(f) = &given_filename else {
                return Err("Must specify either driver or file".into());
            };
            let d = find_protocol(f, parse_filename)?;
            put_flat(&mut opts, "driver", Value::String(d.name().into()));
            driver = Some(d);
        }
        if let (Some(d), true, Some(f)) = (driver, parse_filename, &given_filename) {
            d.parse_filename(f, &mut opts)?;
        }
        flags.node.read_only = match get_flat(&opts, "read-only") {
            Some(Value::String(s)) => s == "on",
            Some(Value::Bool(b)) => *b,
            _ => false,
        };

        // "backing": null (or the deprecated "") opens no backing file.
        let no_backing = match get_flat(&opts, "backing") {
            Some(Value::Null) => true,
            Some(Value::String(s)) if s.is_empty() => {
                self.ctx.console.report(
                    "warning: Use of \"backing\": \"\" is deprecated; use \"backing\": null instead",
                );
                true
            }
            _ => false,
        };
        if no_backing {
            take_flat(&mut opts, "backing");
        }
        // What children inherit: the options as they are now (QEMU's bs->options).
        let inherited = opts.clone();
        let mut own_options = inherited.clone();

        // A format's file child is opened first: it is what probing reads.
        let file = if flags.protocol {
            None
        } else {
            let parent = Parent {
                opts: &inherited,
                flags,
                is_format: true,
                role: ChildRole::Image,
            };
            self.open_child_bs(filename.take(), &mut opts, "file", parent, true)?
        };
        let probed = driver.is_none();
        let driver = match (driver, &file) {
            (Some(d), _) => d,
            (None, Some(f)) => {
                let d = probe(f)?;
                // A list or object given as `driver` stays beside it, as `driver.0` in QEMU's
                // flat options, for the check of options nothing took.
                if !get_flat(&opts, "driver").is_some_and(super::options::is_nonempty_container) {
                    put_flat(&mut opts, "driver", Value::String(d.name().into()));
                    put_flat(&mut own_options, "driver", Value::String(d.name().into()));
                }
                d
            }
            (None, None) => return Err("Must specify either driver or file".into()),
        };

        // bdrv_open_common: the block layer's own options.
        let common = absorb(&mut opts, &RUNTIME_OPTS)?;
        flags.node.no_flush = common.bool("cache.no-flush").unwrap_or(false);
        flags.node.direct = common.bool("cache.direct").unwrap_or(false);
        flags.node.read_only = common.bool("read-only").unwrap_or(false);
        flags.auto_read_only = common.bool("auto-read-only").unwrap_or(false);
        let force_share = common.bool("force-share") == Some(true);
        if force_share && !flags.node.read_only {
            return Err("force-share=on can only be used with read-only images".into());
        }
        let shown_name = match &file {
            Some(f) => Some(f.filename.clone()),
            None => given_filename,
        };
        if driver.host_kind().is_some() && shown_name.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "The '{}' block driver requires a file name",
                driver.name()
            ));
        }
        if flags.node.copy_on_read && flags.node.read_only {
            return Err("Can't use copy-on-read on read-only device".into());
        }
        if let Some(mode) = common.string("discard") {
            flags.node.unmap = parse_discard(mode).ok_or("Invalid discard option")?;
        }
        let detect_zeroes = match common.string("detect-zeroes") {
            None | Some("off") => DetectZeroes::Off,
            Some("on") => DetectZeroes::On,
            Some("unmap") => DetectZeroes::Unmap,
            Some(other) => return Err(format!("invalid parameter value: {other}")),
        };
        if detect_zeroes == DetectZeroes::Unmap && !flags.node.unmap {
            return Err("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap".into());
        }
        let node_name = common.string("node-name").map(str::to_string);
        if let Some(name) = &node_name {
            self.assign_name(name)?;
        }

        // The driver's open, with its own options and children.
        let nctx = OpenContext {
            flags: flags.node,
            ..self.ctx.clone()
        };
        let children = Children {
            walk: self,
            opts: &inherited,
            flags,
            is_format: driver.is_format(),
        };
        let missing_file = || "A block device must be specified for \"file\"".to_string();
        let (mut node, limits, backing_name) = match driver {
            Driver::File | Driver::HostDevice | Driver::HostCdrom => {
                let kind = driver.host_kind().expect("one of file-posix's drivers");
                let (node, limits) = super::file::open_node(kind, &mut opts, &flags.node, &nctx)?;
                (node, limits, None)
            }
            Driver::NullCo | Driver::NullAio => {
                let node = super::null::open_node(driver.name(), &mut opts)?;
                (node, Limits::default(), None)
            }
            Driver::CopyOnRead => {
                let file = file.ok_or_else(missing_file)?;
                let node = super::copy_on_read::open_node(file, &mut opts, flags.node.read_only)?;
                (node, Limits::default(), None)
            }
            Driver::Compress => {
                let file = file.ok_or_else(missing_file)?;
                let (node, limits) = super::compress::open_node(file)?;
                (node, limits, None)
            }
            Driver::Raw => {
                let file = file.ok_or_else(missing_file)?;
                let (node, limits) = super::raw::open_node(
                    file,
                    &mut opts,
                    probed,
                    flags.node.read_only,
                    &self.ctx.console,
                )?;
                (node, limits, None)
            }
            Driver::Qcow2 => {
                let file = file.ok_or_else(missing_file)?;
                super::qcow2::open::open_node(file, &mut opts, &nctx, Some(&children))?
            }
            Driver::Blkdebug => {
                let (node, limits) =
                    super::blkdebug::setup::open_node(&mut opts, &children, &nctx)?;
                (node, limits, None)
            }
            Driver::Blkverify => {
                let (node, limits) = super::blkverify::open_node(&mut opts, &children, &nctx)?;
                (node, limits, None)
            }
        };
        node.set_flags(flags.node);
        node.force_share.set(force_share);
        if let Some(name) = &node_name {
            *node.node_name.borrow_mut() = name.clone();
        }
        node.detect_zeroes.set(detect_zeroes);

        if !no_backing {
            let parent = Parent {
                opts: &inherited,
                flags,
                is_format: driver.is_format(),
                role: ChildRole::Cow,
            };
            if let Some(b) = self.open_backing(&node, &mut opts, driver, backing_name, parent)? {
                node.children.push(Child {
                    name: "backing",
                    node: b,
                    writable: false,
                    primary: false,
                    role: ChildRole::Cow,
                    extra_perms: Perms::NONE,
                    unshared_perms: Perms::NONE,
                });
            }
        }

        if let Some(key) = first_leftover(&opts) {
            return Err(if flags.protocol {
                format!(
                    "Block protocol '{}' doesn't support the option '{key}'",
                    driver.name()
                )
            } else {
                format!(
                    "Block format '{}' does not support the option '{key}'",
                    driver.name()
                )
            });
        }
        // The node keeps its options without its children's, which a reopen starts from.
        for key in node.children.iter().map(|c| c.name).chain(["backing"]) {
            own_options.shift_remove(key);
            explicit.shift_remove(key);
        }
        *node.options.borrow_mut() = own_options;
        *node.explicit_options.borrow_mut() = explicit;
        let node = finish(node, limits);
        perms::attach_children(&node)?;
        if let Some(name) = node_name
            && let Some(entry) = self.names.borrow_mut().iter_mut().find(|(n, _)| *n == name)
        {
            entry.1 = Some(node.clone());
        }
        if node.capabilities().debug_events {
            // `none` fires once the node is complete, so rules on it are active from the
            // first request.
            let n = node.clone();
            crate::block::executor::block_on(async move {
                n.debug_event(Event::None).await;
            });
        }
        Ok(node)
    }

    /// QEMU's bdrv_open_backing_file: from `backing.*` options or a reference, else the
    /// backing file the image names (in the format its header gives).
    fn open_backing(
        &self,
        node: &Node,
        opts: &mut Options,
        driver: Driver,
        image_backing: super::qcow2::open::BackingName,
        parent: Parent,
    ) -> Result<Option<Rc<Node>>, String> {
        let (mut bopts, reference) = match opts.get("backing") {
            Some(Value::Object(_)) => match opts.shift_remove("backing") {
                Some(Value::Object(mut m)) => {
                    let r = match m.shift_remove("") {
                        Some(Value::String(r)) => Some(r),
                        _ => None,
                    };
                    (m, r)
                }
                _ => unreachable!("just looked"),
            },
            Some(Value::String(r)) => (Options::new(), Some(r.clone())),
            _ => (Options::new(), None),
        };
        let backing_filename = if reference.is_some() || get_flat(&bopts, "file.filename").is_some()
        {
            None
        } else if image_backing.is_none() && bopts.is_empty() {
            return Ok(None);
        } else {
            image_backing.as_ref().map(|(name, _)| {
                // A name with a protocol prefix (`json:{...}` too) is used as it is.
                if name.starts_with('/') || has_protocol(name) {
                    name.clone()
                } else {
                    format!("{}{}", dir_prefix(&bottom_filename(node)), name)
                }
            })
        };
        if !driver.supports_backing() {
            return Err("Driver doesn't support backing files".into());
        }
        if reference.is_none()
            && let Some((_, Some(fmt))) = &image_backing
            && get_flat(&bopts, "driver").is_none()
        {
            put_flat(&mut bopts, "driver", Value::String(fmt.clone()));
        }
        let backing = self
            .open(backing_filename, reference, bopts, Some(parent))
            .map_err(|e| format!("Could not open backing file: {e}"))?;
        opts.shift_remove("backing");
        Ok(Some(backing))
    }
}

/// The children a driver opens (blkdebug's image, blkverify's raw and test, qcow2's data
/// file), through the walk.
struct Children<'w, 'c> {
    walk: &'w Walk<'c>,
    /// the parent's options as given
    opts: &'w Options,
    flags: Flags,
    /// whether the parent is a format driver (its children are then protocol nodes)
    is_format: bool,
}

impl OpenChild for Children<'_, '_> {
    fn open_child(
        &self,
        opts: &mut Options,
        key: &str,
        filename: Option<String>,
        role: ChildRole,
    ) -> Result<Rc<Node>, String> {
        self.open_child_bs(opts, key, filename, role, false)
            .map(|child| child.expect("a child that may not be missing"))
    }

    fn open_optional_child(
        &self,
        opts: &mut Options,
        key: &str,
        filename: Option<String>,
        role: ChildRole,
    ) -> Result<Option<Rc<Node>>, String> {
        self.open_child_bs(opts, key, filename, role, true)
    }
}

impl Children<'_, '_> {
    fn open_child_bs(
        &self,
        opts: &mut Options,
        key: &str,
        filename: Option<String>,
        role: ChildRole,
        allow_none: bool,
    ) -> Result<Option<Rc<Node>>, String> {
        let parent = Parent {
            opts: self.opts,
            flags: self.flags,
            is_format: self.is_format,
            role,
        };
        self.walk
            .open_child_bs(filename, opts, key, parent, allow_none)
    }
}

/// QEMU's find_image_format: an empty image is raw, and a probe read that fails fails the
/// open.
fn probe(file: &Rc<Node>) -> Result<Driver, String> {
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
        return Ok(Driver::Qcow2);
    }
    // The same magic with version 1 is QEMU's old `qcow` format, which we do not have.
    if probes_as_other_format(&head) {
        return Err("qcow (version 1) images are not supported by this engine".into());
    }
    Ok(Driver::Raw)
}

/// QEMU's qcow2_probe: the magic and a version of at least 2 in the first 104 bytes.
fn probes_as_qcow2(head: &[u8]) -> bool {
    head.len() >= 104
        && head.starts_with(b"QFI\xfb")
        && u32::from_be_bytes([head[4], head[5], head[6], head[7]]) >= 2
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
    let walk = Walk {
        ctx,
        names: RefCell::new(Vec::new()),
    };
    let root = walk.open(filename.map(str::to_string), None, options, None)?;
    let r = root.clone();
    crate::block::executor::block_on(async move { start_writing(&r).await })
        .unwrap_or_else(|| Err("blockfault: a header update at open can never complete".into()))?;
    Ok(root)
}

/// Tells every writable node of the tree that it is open for writing (see
/// [`super::driver::BlockDriver::start_writing`]), children first.
pub async fn start_writing(root: &Rc<Node>) -> Result<(), String> {
    fn collect(node: &Rc<Node>, out: &mut Vec<Rc<Node>>) {
        for c in &node.children {
            collect(&c.node, out);
        }
        out.push(node.clone());
    }
    let mut nodes = Vec::new();
    collect(root, &mut nodes);
    for node in nodes.iter().filter(|n| !n.flags().read_only) {
        node.driver.start_writing(node).await?;
    }
    Ok(())
}

/// The end of QEMU's bdrv_open_driver: the node's limits and its length. Some limits default
/// to the children's (QEMU's bdrv_refresh_limits with bdrv_merge_limits: the largest discard
/// alignment, the smallest transfer limit), and the driver's own setting overrides them.
fn finish(node: Node, own: Limits) -> Rc<Node> {
    let mut limits = own;
    let (mut discard_alignment, mut max_transfer) = (0, 0);
    for child in &node.children {
        let l = child.node.limits();
        discard_alignment = discard_alignment.max(l.pdiscard_alignment);
        max_transfer = match (max_transfer, l.max_transfer) {
            (0, m) | (m, 0) => m,
            (a, b) => a.min(b),
        };
    }
    if limits.max_transfer == 0 {
        limits.max_transfer = max_transfer;
    }
    if limits.pdiscard_alignment == 0 {
        limits.pdiscard_alignment = discard_alignment;
    }
    node.set_limits(limits);
    let node = node.into_rc();
    let _ = node.refresh_total_sectors();
    node
}

/// The directory part of a filename as QEMU's path_combine keeps it (up to the last '/').
fn dir_prefix(name: &str) -> &str {
    match name.rfind('/') {
        Some(i) => &name[..=i],
        None => "",
    }
}

/// The filename of the protocol node at the bottom of a chain of primary children.
fn bottom_filename(node: &Node) -> String {
    let mut n = match node.primary_child() {
        Some(c) => c.clone(),
        None => return node.filename.clone(),
    };
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
    let flags = OpenFlags {
        read_only,
        no_flush: true,
        ..ctx.flags
    };
    let octx = OpenContext {
        flags,
        skip_host_sync: true,
        ..ctx.clone()
    };
    // QEMU's overlay inherits cache.direct, but its alignment is invisible in a file that is
    // deleted at close.
    let driver = FileDriver::open(HostKind::File, &path, &name, read_only, false, false)
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
    file.set_flags(OpenFlags {
        copy_on_read: false,
        ..flags
    });
    // The options QEMU opens its overlay with (driver qcow2 on a file), for reopen.
    let named = |pairs: &[(&str, &str)]| -> Options {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect()
    };
    *file.options.borrow_mut() = named(&[("driver", "file"), ("filename", &file.filename)]);
    let file = finish(file, Limits::default());
    let (mut node, limits, _) =
        super::qcow2::open::open_node(file, &mut Options::new(), &octx, None)?;
    node.set_flags(flags);
    *node.options.borrow_mut() = named(&[("driver", "qcow2")]);
    node.children.push(Child {
        name: "backing",
        node: root,
        writable: false,
        primary: false,
        role: ChildRole::Cow,
        extra_perms: Perms::NONE,
        unshared_perms: Perms::NONE,
    });
    Ok(finish(node, limits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow_version_1_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut head = vec![0u8; 4096];
        head[..8].copy_from_slice(b"QFI\xfb\0\0\0\x01");
        std::fs::write(dir.path().join("v1.qcow"), head).unwrap();
        let ctx = OpenContext::quiet(dir.path());
        let err = open_drive(Some("v1.qcow"), Options::new(), None, &ctx).err();
        assert_eq!(
            err.as_deref(),
            Some("qcow (version 1) images are not supported by this engine")
        );
    }

    /// The bitmaps autoclear bit stays, as QEMU keeps it, through a failed open and a
    /// read-write open and close that write nothing.
    #[test]
    fn bitmaps_bit_survives_opens() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::img::qcow2::create::CreateSpec {
            size: 1 << 20,
            ..Default::default()
        };
        let mut image = crate::img::qcow2::create::build(&spec).unwrap().flatten();
        image[95] |= 1;
        let path = dir.path().join("t.qcow2");
        std::fs::write(&path, &image).unwrap();
        let ctx = OpenContext::quiet(dir.path());
        let mut bogus = Options::new();
        bogus.insert("bogus".into(), Value::from(1));
        let err = open_drive(Some("t.qcow2"), bogus, Some("qcow2"), &ctx).err();
        assert_eq!(
            err.as_deref(),
            Some("Block format 'qcow2' does not support the option 'bogus'")
        );
        assert_eq!(std::fs::read(&path).unwrap(), image);
        let node = open_drive(Some("t.qcow2"), Options::new(), Some("qcow2"), &ctx).unwrap();
        drop(node);
        assert_eq!(std::fs::read(&path).unwrap(), image);
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
        assert_eq!(find_protocol("blkdebug::x", false), Ok(Driver::File));
    }
}
