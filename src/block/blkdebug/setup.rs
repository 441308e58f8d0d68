//! Applying parsed configuration to a blkdebug node at open time, in QEMU's order: the config
//! file's rules, then the option rules, then (once the image child is open) the I/O limits.

use super::limits::{LIMIT_KEYS, limits_from_options};
use super::rules::{OpenFailure, RuleSpec, option_left_unconsumed, read_config};
use super::{BlkDebug, BlkDebugDriver, InjectError};
use crate::block::driver::{Limits, ReqFlags};
use crate::block::node::ChildRole;
use crate::block::node::{Child, Node};
use crate::block::options::{
    OpenChild, OpenContext, Options, is_nonempty_container, qdict_bucket, qdict_order,
    scalar_string,
};
use crate::block::perms::Perms;
use serde_json::Value;
use std::rc::Rc;

/// Opens a blkdebug node (QEMU's blkdebug_open): the rules, then the `image` child, then the
/// permission options and the limits. `x-image` and `config` come from a `blkdebug:` filename.
pub fn open_node(
    opts: &mut Options,
    children: &dyn OpenChild,
    ctx: &OpenContext,
) -> Result<(Node, Limits), String> {
    let strong = strong_runtime_options(opts);
    let image_name = take_text(opts, "x-image");
    let config = take_text(opts, "config");
    let state = BlkDebug::new(ctx.console.clone());
    let setup = configure(&state, config.as_deref(), opts, ctx)?;
    let image = children.open_child(opts, "image", image_name, ChildRole::Filtered)?;
    let (mut taken, mut unshared) = (Perms::NONE, Perms::NONE);
    for k in ["take-child-perms", "unshare-child-perms"] {
        // Only a non-empty list is read; anything else is left over as an unknown option.
        if opts.get(k).is_some_and(is_nonempty_container)
            && let Some(v) = opts.shift_remove(k)
        {
            let perms = parse_permissions(&v)?;
            if k == "take-child-perms" {
                taken = perms;
            } else {
                unshared = perms;
            }
        }
    }
    let limits = setup.limits(&image)?;
    let name = json_filename(&strong, &image).unwrap_or_else(|| {
        format!(
            "blkdebug:{}:{}",
            config.as_deref().unwrap_or(""),
            image.filename
        )
    });
    let mut node = Node::new(
        Box::new(BlkDebugDriver { state }),
        vec![Child {
            name: "image",
            node: image.clone(),
            writable: true,
            primary: true,
            role: ChildRole::Filtered,
            extra_perms: taken,
            unshared_perms: unshared,
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
    Ok((node, limits))
}

/// blkdebug's strong runtime options (those that change what the node does, which its filename
/// must keep), flat as in QEMU's `bs->options`, with `driver`, in the order that makes the
/// filename list keys sharing a QDict bucket as QEMU does: QEMU flattens the whole `json:`
/// object (each dict walked in QDict order), extracts the child's `file.` keys walking that in
/// QDict order, and copies the strong ones; so within a bucket the keys come out in the order
/// of their `file.`-prefixed keys in the flattened dict (the usual case: blkdebug as `file`),
/// `driver` last.
fn strong_runtime_options(opts: &Options) -> Vec<(String, Value)> {
    const STRONG: [&str; 9] = [
        "config",
        "inject-error.",
        "set-state.",
        "align",
        "max-transfer",
        "opt-write-zero",
        "max-write-zero",
        "opt-discard",
        "max-discard",
    ];
    let mut with_driver = Options::new();
    if !opts.contains_key("driver") {
        with_driver.insert("driver".into(), Value::String("blkdebug".into()));
    }
    with_driver.extend(opts.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut flat = Vec::new();
    flatten_in_qdict_order("", &Value::Object(with_driver.clone()), &mut flat);
    let mut strong: Vec<(usize, String)> = flat
        .into_iter()
        .enumerate()
        .filter(|(_, k)| k == "driver" || STRONG.iter().any(|s| k.starts_with(s)))
        .collect();
    // the walk of the flattened dict: by bucket of the full key, newest first; `driver` is put
    // into the child's options again after the extraction, so it comes last
    strong.sort_by_key(|(i, k)| {
        (
            k == "driver",
            qdict_bucket(&format!("file.{k}")),
            std::cmp::Reverse(*i),
        )
    });
    // the filename's dict lists a bucket newest first: insert in the reverse of that walk
    strong
        .into_iter()
        .rev()
        .map(|(_, k)| {
            let v = flat_value(&with_driver, &k).cloned().unwrap_or(Value::Null);
            (k, v)
        })
        .collect()
}

/// QEMU's qdict_flatten: the flat keys in the order they are inserted (each dict walked in
/// QDict order, lists in index order).
fn flatten_in_qdict_order(prefix: &str, v: &Value, out: &mut Vec<String>) {
    let join = |k: &str| match (prefix.is_empty(), k.is_empty()) {
        (_, true) => prefix.to_string(),
        (true, false) => k.to_string(),
        (false, false) => format!("{prefix}.{k}"),
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
            for i in qdict_order(&keys) {
                flatten_in_qdict_order(&join(keys[i]), &m[keys[i]], out);
            }
        }
        Value::Array(a) if !a.is_empty() => {
            for (i, item) in a.iter().enumerate() {
                flatten_in_qdict_order(&join(&i.to_string()), item, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// The value at a flat key, through objects and lists (`inject-error.0.event`).
fn flat_value<'a>(opts: &'a Options, key: &str) -> Option<&'a Value> {
    let (head, rest) = key.split_once('.').unwrap_or((key, ""));
    let mut v = opts.get(head)?;
    for part in rest.split('.').filter(|p| !p.is_empty()) {
        v = match v {
            Value::Object(m) => m.get(part)?,
            Value::Array(a) => a.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The `json:` filename QEMU's bdrv_refresh_filename gives the node when it has options beyond
/// `config` (blkdebug_refresh_filename keeps `blkdebug:CONFIG:IMAGE` only without them): its
/// strong options and the image child's, as one-line JSON in QDict order. None where the
/// legacy name stands, or where the image is not a plain file (not modelled).
fn json_filename(strong: &[(String, Value)], image: &Node) -> Option<String> {
    use crate::img::json::{Json, compact};
    if strong.iter().all(|(k, _)| k == "config" || k == "driver") {
        return None;
    }
    if image.driver.format_name() != "file" || image.filename.starts_with("json:") {
        return None;
    }
    let mut entries = Vec::new();
    for (k, v) in strong {
        let value = match v {
            Value::String(s) => Json::Str(s.clone()),
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Int(n.as_i64()?),
            _ => return None,
        };
        entries.push((k.clone(), value));
    }
    entries.push((
        "image".into(),
        Json::Dict(vec![
            ("driver".into(), Json::Str("file".into())),
            ("filename".into(), Json::Str(image.filename.clone())),
        ]),
    ));
    Some(format!("json:{}", compact(&Json::Dict(entries))))
}

/// A string option as QemuOpts takes it; a non-empty container stays for the unknown-option
/// check, anything else that is no scalar is dropped.
fn take_text(opts: &mut Options, key: &str) -> Option<String> {
    match opts.get(key) {
        Some(v) if is_nonempty_container(v) => None,
        _ => opts.shift_remove(key).as_ref().and_then(scalar_string),
    }
}

/// `take-child-perms`/`unshare-child-perms`: a non-empty list of permission names.
fn parse_permissions(v: &Value) -> Result<Perms, String> {
    let items: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        // `take-child-perms.0=write` as --image-opts gives it.
        Value::Object(m) => m.values().collect(),
        other => vec![other],
    };
    let mut perms = Perms::NONE;
    for (i, item) in items.into_iter().enumerate() {
        let Value::String(name) = item else {
            return Err(format!(
                "Invalid parameter type for '[{i}]', expected: string"
            ));
        };
        let Some(perm) = Perms::by_option_name(name) else {
            // QEMU's list visitor has no name for the element, hence 'null'.
            return Err(format!("Parameter 'null' does not accept value '{name}'"));
        };
        perms = perms.union(perm);
    }
    Ok(perms)
}

/// Why QEMU would abort (an error set twice on one error variable): we fail the open instead.
const DOUBLE_ERROR: &str =
    "blkdebug: two errors at once while opening (QEMU 10.0.2 aborts on an assertion here)";

/// The longest blkdebug config file read: generated rule files (a set-state chain per event)
/// reach megabytes; /dev/zero is endless.
const CONFIG_MAX: usize = 16 << 20;

enum Bounded {
    Whole(Vec<u8>),
    /// The first lines of a longer file, cut where one of QEMU's `fgets` lines ends.
    TooLong(Vec<u8>),
}

fn read_bounded(path: &std::path::Path) -> std::io::Result<Bounded> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(path)?
        .take(CONFIG_MAX as u64 + 1)
        .read_to_end(&mut text)?;
    if text.len() <= CONFIG_MAX {
        return Ok(Bounded::Whole(text));
    }
    text.truncate(CONFIG_MAX);
    // fgets lines end after each `\n`, or every 1023 bytes of a file without one.
    let cut = match text.iter().rposition(|&b| b == b'\n') {
        Some(nl) => nl + 1,
        None => CONFIG_MAX / 1023 * 1023,
    };
    text.truncate(cut);
    Ok(Bounded::TooLong(text))
}

/// What is left to do once the image child is open.
pub struct Setup {
    limit_options: Options,
    /// a config-file error QEMU reports only after the rest of the open has run
    pending_error: Option<String>,
}

/// Reads the config file and the rule options and adds the rules; removes what it consumed
/// from `opts`.
pub fn configure(
    state: &BlkDebug,
    config: Option<&str>,
    opts: &mut Options,
    ctx: &OpenContext,
) -> Result<Setup, String> {
    let text = match config {
        None => None,
        Some(path) => match read_bounded(&ctx.resolve(path)) {
            Ok(Bounded::Whole(t)) => Some(t),
            Ok(Bounded::TooLong(prefix)) => {
                // QEMU reads on until a line fails to parse (at once for /dev/zero); a file
                // too long to hold has that error within its first megabyte, or gets ours.
                super::config::parse_config(&prefix)?;
                return Err(format!(
                    "blockfault: the blkdebug config file is longer than {CONFIG_MAX} bytes, the most blockfault reads"
                ));
            }
            Err(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                return Err(format!(
                    "Could not read blkdebug config file: {}",
                    crate::errno::strerror(errno)
                ));
            }
        },
    };
    // Values blkdebug does not take as rules stay behind, for the unknown-option check.
    let mut take = |key: &str| match opts.get(key) {
        Some(v) if !option_left_unconsumed(v) => opts.remove(key),
        _ => None,
    };
    let inject = take("inject-error");
    let set_state = take("set-state");
    let set =
        read_config(text.as_deref(), inject.as_ref(), set_state.as_ref()).map_err(|f| match f {
            OpenFailure::Error(e) => e,
            OpenFailure::ErrpAssertion => DOUBLE_ERROR.to_string(),
        })?;
    for rule in set.rules {
        match rule {
            RuleSpec::InjectError {
                event,
                state: s,
                iotype_mask,
                errno,
                offset,
                once,
                immediately,
            } => state.add_inject_error(
                event,
                s,
                InjectError {
                    errno,
                    offset: (offset != -1).then_some(offset as u64),
                    once,
                    immediately,
                    iotype_mask: iotype_mask.0,
                },
            ),
            RuleSpec::SetState {
                event,
                state: s,
                new_state,
            } => state.add_set_state(event, s, new_state),
        }
    }
    let mut limit_options = Options::new();
    for k in LIMIT_KEYS {
        if let Some(v) = opts.remove(k) {
            limit_options.insert(k.to_string(), v);
        }
    }
    Ok(Setup {
        limit_options,
        pending_error: set.pending_error,
    })
}

impl Setup {
    /// The node's limits, validated against the image child's alignment.
    pub fn limits(&self, image: &Rc<Node>) -> Result<Limits, String> {
        let parsed = limits_from_options(&self.limit_options, image.limits().request_alignment);
        match (&self.pending_error, parsed) {
            (Some(_), Err(_)) => Err(DOUBLE_ERROR.to_string()),
            (Some(pending), Ok(_)) => Err(pending.clone()),
            (None, Err(e)) => Err(e),
            (None, Ok(l)) => Ok(Limits {
                request_alignment: if l.align == 0 { 1 } else { l.align },
                max_transfer: l.max_transfer,
                pwrite_zeroes_alignment: l.opt_write_zero,
                max_pwrite_zeroes: l.max_write_zero,
                pdiscard_alignment: l.opt_discard,
                max_pdiscard: l.max_discard,
            }),
        }
    }
}
