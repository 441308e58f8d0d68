//! Reopening a drive with new options, as QEMU 10.0.2's bdrv_reopen does it: every node of the
//! tree that its parent opened is queued with its new options (the ones given, then its own
//! earlier ones, then what it inherits from its parent, then everything it had), all of them
//! are flushed, then each is prepared (the block layer's own options, the driver's, and a
//! refusal of any other option that changed), the permissions are checked, and only then is
//! every node committed — or, on the first error, every prepared node aborted.

use super::driver::ReopenState;
use super::io;
use super::node::{DetectZeroes, Node, OpenFlags};
use super::open::{Options, nest_dotted};
use super::perms::{self, Access, Planned};
use crate::errno::strerror;
use serde_json::Value;
use std::rc::Rc;

/// What the caller (qemu-io's `reopen`) asks for.
pub struct Request {
    /// the options for the top node, `child.key` for its children (nested or dotted), with the
    /// `read-only`, `cache.direct` and `cache.no-flush` qemu-io adds
    pub options: Options,
    /// what the BlockBackend holds on the top node and shares (with WRITE, it must stay
    /// writable)
    pub blk_perms: Access,
    /// the top node is the temporary overlay of `-s`, whose backing node it did not open
    pub temp_overlay: bool,
}

/// A child's role, for what it inherits (QEMU's BDRV_CHILD_COW or not).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Backing,
    Other,
}

/// One node of the reopen queue (QEMU's BDRVReopenState).
struct Entry {
    node: Rc<Node>,
    /// everything the node is reopened with, flat (`a.b` keys)
    options: Options,
    /// the part given for this node itself (kept as its explicit options)
    explicit: Options,
    flags: OpenFlags,
    /// what the driver's prepare returned, and the new detect-zeroes mode; Some once the node
    /// is prepared
    prepared: Option<(Option<ReopenState>, DetectZeroes)>,
}

/// Reopens the tree under `root` (QEMU's bdrv_reopen with keep_old_opts). The caller drains
/// first. On error nothing changed except what QEMU also leaves behind (flushed data, a
/// qcow2 image marked clean on its way to read-only).
pub async fn reopen(root: &Rc<Node>, req: Request) -> Result<(), String> {
    let mut queue = Vec::new();
    queue_node(&mut queue, root, flatten(&req.options), None, &req);
    for e in &queue {
        io::flush(&e.node)
            .await
            .map_err(|err| format!("Error flushing drive: {}", strerror(err)))?;
    }
    for i in 0..queue.len() {
        match prepare(&queue[i], root).await {
            Ok(state) => queue[i].prepared = Some(state),
            Err(msg) => {
                abort(queue);
                return Err(msg);
            }
        }
    }
    let new_perms = match check_permissions(&mut queue, &req) {
        Ok(p) => p,
        Err(msg) => {
            abort(queue);
            return Err(msg);
        }
    };
    // Nothing fails from here on.
    // Commit children first, as QEMU walks its queue backwards.
    for e in queue.into_iter().rev() {
        let (state, detect_zeroes) = e.prepared.expect("every queued node is prepared");
        e.node.driver.reopen_commit(&e.node, state);
        e.node.set_flags(e.flags);
        e.node.detect_zeroes.set(detect_zeroes);
        let mut options = e.options;
        let mut explicit = e.explicit;
        for c in &e.node.children {
            options.shift_remove(c.name);
            explicit.shift_remove(c.name);
        }
        options.shift_remove("backing");
        explicit.shift_remove("backing");
        // Kept flat: `a=x` and `a.b=y` may both be options, which nesting would merge.
        *e.node.options.borrow_mut() = options;
        *e.node.explicit_options.borrow_mut() = explicit;
        let _ = e.node.refresh_total_sectors();
    }
    for p in &new_perms {
        p.node.driver.set_perm(&p.node, p.access);
    }
    perms::apply(new_perms);
    super::open::start_writing(root).await
}

fn abort(queue: Vec<Entry>) {
    for e in queue {
        if let Some((state, _)) = e.prepared {
            e.node.driver.reopen_abort(&e.node, state);
        }
    }
}

/// QEMU's bdrv_reopen_queue_child: queues `node`, then the children it opened, in QEMU's
/// order (a node's children newest first).
fn queue_node(
    queue: &mut Vec<Entry>,
    node: &Rc<Node>,
    given: Options,
    parent: Option<(&Options, OpenFlags, Role)>,
    req: &Request,
) {
    let mut options = given;
    join_options(node, &mut options, flatten(&node.explicit_options.borrow()));
    let mut explicit = options.clone();
    let mut flags = node.flags();
    if let Some((parent_options, parent_flags, role)) = parent {
        // QEMU's bdrv_inherited_options.
        for key in ["cache.direct", "cache.no-flush", "force-share"] {
            copy_default(&mut options, parent_options, key);
        }
        if role == Role::Backing {
            set_default(&mut options, "read-only", "on");
            set_default(&mut options, "auto-read-only", "off");
        } else {
            copy_default(&mut options, parent_options, "read-only");
            copy_default(&mut options, parent_options, "auto-read-only");
        }
        set_default(&mut options, "discard", "unmap");
        flags = OpenFlags {
            native_aio: flags.native_aio,
            copy_on_read: flags.copy_on_read,
            ..parent_flags
        };
    }
    join_options(node, &mut options, flatten(&node.options.borrow()));
    flags_from_options(&mut flags, &options);
    let index = queue.len();
    queue.push(Entry {
        node: node.clone(),
        options: Options::new(),
        explicit: Options::new(),
        flags,
        prepared: None,
    });
    for child in node.children.iter().rev() {
        if parent.is_none() && req.temp_overlay && child.name == "backing" {
            continue;
        }
        let child_options = match options.get(child.name) {
            // A reference to the current child reopens it with its own options; any other
            // value is for the prepare stage to judge, and the child is left alone.
            Some(Value::String(r)) if *r == child.node.node_name() => Options::new(),
            Some(_) => continue,
            None => {
                let prefix = format!("{}.", child.name);
                explicit.retain(|k, _| !k.starts_with(&prefix));
                let mut taken = Options::new();
                options.retain(|k, v| match k.strip_prefix(&prefix) {
                    Some(rest) => {
                        taken.insert(rest.to_string(), v.clone());
                        false
                    }
                    None => true,
                });
                taken
            }
        };
        let role = if child.name == "backing" {
            Role::Backing
        } else {
            Role::Other
        };
        queue_node(
            queue,
            &child.node,
            child_options,
            Some((&options, flags, role)),
            req,
        );
    }
    queue[index].options = options;
    queue[index].explicit = explicit;
}

/// The flags a node's options ask for (QEMU's update_flags_from_options and the discard
/// option). QEMU keeps these options in every node's option set from open on; here a node
/// that lacks one keeps the flag it had (or inherited). Bad values are left to the prepare
/// stage, which reports them.
fn flags_from_options(flags: &mut OpenFlags, options: &Options) {
    let get = |key: &str| options.get(key).and_then(|v| parse_bool(key, v).ok());
    flags.read_only = get("read-only").unwrap_or(flags.read_only);
    flags.direct = get("cache.direct").unwrap_or(flags.direct);
    flags.no_flush = get("cache.no-flush").unwrap_or(flags.no_flush);
    if let Some(unmap) = options.get("discard").and_then(parse_discard) {
        flags.unmap = unmap;
    }
}

/// QEMU's bdrv_reopen_prepare for one node.
async fn prepare(
    e: &Entry,
    root: &Rc<Node>,
) -> Result<(Option<ReopenState>, DetectZeroes), String> {
    let node = &e.node;
    let mut options = e.options.clone();
    // The block layer's own options (bdrv_runtime_opts), in the order QEMU's dictionary
    // holds them.
    for key in qdict_order(&options) {
        if GENERIC_BOOLS.contains(&key.as_str()) || key == "force-share" {
            parse_bool(&key, &options[&key])?;
        }
    }
    for key in GENERIC_BOOLS {
        options.shift_remove(key);
    }
    if let Some(v) = options.shift_remove("discard") {
        scalar(&v)
            .as_deref()
            .and_then(parse_discard_str)
            .ok_or("Invalid discard option")?;
    }
    let detect_zeroes = parse_detect_zeroes(options.shift_remove("detect-zeroes"), e.flags.unmap)?;
    if e.flags.read_only && node.copy_on_read.get() {
        return Err(format!(
            "Can't set node '{}' to r/o with copy-on-read enabled",
            node.node_name()
        ));
    }
    if !node.driver.can_reopen() {
        return Err(format!(
            "Block format '{}' used by node '{}' does not support reopening files",
            node.driver.format_name(),
            node.node_name()
        ));
    }
    let mut driver_options = nest_dotted(options);
    let state = node
        .driver
        .reopen_prepare(node, &mut driver_options, e.flags)
        .await?;
    let checked = unchanged_options(node, root, flatten(&driver_options));
    if let Err(msg) = checked {
        node.driver.reopen_abort(node, state);
        return Err(msg);
    }
    Ok((state, detect_zeroes))
}

/// The options QEMU's bdrv_reopen_prepare absorbs as booleans and applies as flags.
const GENERIC_BOOLS: [&str; 4] = [
    "read-only",
    "auto-read-only",
    "cache.direct",
    "cache.no-flush",
];

/// The rest of bdrv_reopen_prepare: `backing`/`file` may only name the current child, and
/// every other option left must be what the node already has.
fn unchanged_options(node: &Node, root: &Rc<Node>, mut left: Options) -> Result<(), String> {
    for key in ["backing", "file"] {
        if let Some(v) = left.shift_remove(key) {
            check_child_reference(node, root, key, &v)?;
        }
    }
    let old = flatten(&node.options.borrow());
    for key in qdict_order(&left) {
        let new = &left[&key];
        if let Value::String(r) = new
            && node
                .children
                .iter()
                .any(|c| c.name == key && c.node.node_name() == *r)
        {
            continue;
        }
        let same = match key.as_str() {
            // QEMU compares the value it parsed back to text: on/off, whatever the spelling.
            "force-share" => {
                let as_bool = |v: Option<&Value>| v.map(|v| parse_bool(&key, v).unwrap_or(false));
                as_bool(Some(new)) == as_bool(old.get(&key)).or(Some(false))
            }
            _ => old.get(&key) == Some(new),
        };
        if !same {
            return Err(format!("Cannot change the option '{key}'"));
        }
    }
    Ok(())
}

/// QEMU's bdrv_reopen_parse_file_or_backing, for what this engine can do: naming the current
/// child keeps it; replacing a child by another node is not supported.
fn check_child_reference(node: &Node, root: &Rc<Node>, key: &str, v: &Value) -> Result<(), String> {
    let current = if key == "file" {
        node.primary_child()
    } else {
        node.child(key)
    };
    let name = match v {
        Value::String(s) => s.clone(),
        Value::Null if key == "backing" && current.is_none() => return Ok(()),
        _ => {
            return Err(format!(
                "blockfault: reopen -o {key}=... with a value other than a node name is not supported by this engine"
            ));
        }
    };
    if current.is_some_and(|c| c.node_name() == name) {
        return Ok(());
    }
    if find_node(root, &name).is_none() {
        return Err(format!("Cannot find device='' nor node-name='{name}'"));
    }
    Err(format!(
        "blockfault: replacing the '{key}' child of a node on reopen is not supported by this engine"
    ))
}

/// A node under `root` whose driver stopped: QEMU 10.0.2's reopen dereferences its missing
/// driver (a segmentation fault).
pub fn stopped_node(root: &Rc<Node>) -> bool {
    root.driver.has_stopped() || root.children.iter().any(|c| stopped_node(&c.node))
}

/// The node named `name` in the tree under `root`.
pub fn find_node(root: &Rc<Node>, name: &str) -> Option<Rc<Node>> {
    if root.node_name() == name {
        return Some(root.clone());
    }
    root.children.iter().find_map(|c| find_node(&c.node, name))
}

/// bdrv_list_refresh_perms: a read-only node must have no parent that writes to it (the
/// BlockBackend on the top node, a writable format on its `file`, and through filters), the
/// rest of the permission checks pass with the new flags, then the file driver gets the
/// descriptors the new flags need. Returns the permissions each node gets at commit.
fn check_permissions(queue: &mut [Entry], req: &Request) -> Result<Vec<Planned>, String> {
    let new_flags = |node: &Rc<Node>| {
        queue
            .iter()
            .find(|e| Rc::ptr_eq(&e.node, node))
            .map_or(node.flags(), |e| e.flags)
    };
    let mut writers = vec![(queue[0].node.clone(), req.blk_perms.perm.writes())];
    while let Some((node, written)) = writers.pop() {
        let flags = new_flags(&node);
        if written && flags.read_only {
            return Err(format!(
                "Read-only block node '{}' cannot support read-write users",
                node.node_name()
            ));
        }
        let format = node.driver.protocol_name().is_none() && node.driver.supports_backing();
        for c in node.children.iter().rev() {
            let child_written = match c.name {
                "backing" => false,
                // A format's metadata child is written whenever the format is writable.
                _ if format => !flags.read_only,
                _ => written,
            };
            writers.push((c.node.clone(), child_written));
        }
    }
    let root = queue[0].node.clone();
    let own_read_only = |node: &Node| {
        queue
            .iter()
            .find(|e| std::ptr::eq(Rc::as_ptr(&e.node), node))
            .map_or(node.flags(), |e| e.flags)
            .read_only
    };
    let root_read_only = own_read_only(&root);
    let planned = perms::plan(&root, req.blk_perms, Some(root_read_only), &own_read_only);
    for p in &planned {
        perms::check(&p.node, p.access.perm, p.read_only)?;
    }
    for (i, p) in planned.iter().enumerate() {
        let entry = queue.iter_mut().find(|e| Rc::ptr_eq(&e.node, &p.node));
        let checked = match entry.and_then(|e| e.prepared.as_mut().map(|(s, _)| (s, e.flags))) {
            Some((state, flags)) => p
                .node
                .driver
                .reopen_check_perm(&p.node, state, flags, p.access),
            None => p.node.driver.check_perm(&p.node, p.access),
        };
        if let Err(e) = checked {
            perms::abort(&planned[..i]);
            return Err(e);
        }
    }
    Ok(planned)
}

/// QEMU's boolean option parsing (qapi_bool_parse), with its message.
pub fn parse_bool(key: &str, v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.as_str() {
            "on" | "yes" | "true" | "y" => Ok(true),
            "off" | "no" | "false" | "n" => Ok(false),
            _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
        },
        _ => Err(format!(
            "Invalid parameter type for '{key}', expected: boolean"
        )),
    }
}

fn parse_discard(v: &Value) -> Option<bool> {
    scalar(v).as_deref().and_then(parse_discard_str)
}

/// QEMU's bdrv_parse_discard_flags.
fn parse_discard_str(mode: &str) -> Option<bool> {
    match mode {
        "off" | "ignore" => Some(false),
        "on" | "unmap" => Some(true),
        _ => None,
    }
}

/// QEMU's bdrv_parse_detect_zeroes: off unless given.
fn parse_detect_zeroes(v: Option<Value>, unmap: bool) -> Result<DetectZeroes, String> {
    let mode = match v.as_ref().and_then(scalar) {
        None => return Ok(DetectZeroes::Off),
        Some(m) => m,
    };
    let parsed = match mode.as_str() {
        "off" => DetectZeroes::Off,
        "on" => DetectZeroes::On,
        "unmap" => DetectZeroes::Unmap,
        other => return Err(format!("invalid parameter value: {other}")),
    };
    if parsed == DetectZeroes::Unmap && !unmap {
        return Err(
            "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap"
                .into(),
        );
    }
    Ok(parsed)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Nested options as QEMU's qdict_flatten has them: `a.b` keys, list items as `a.0.b`, and a
/// prefix's own value (kept under the empty key, see [`super::options`]) as `a`.
pub fn flatten(options: &Options) -> Options {
    fn walk(prefix: &str, v: &Value, out: &mut Options) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k.is_empty() {
                        walk(prefix, v, out);
                    } else {
                        walk(&format!("{prefix}{k}."), v, out);
                    }
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}{i}."), v, out);
                }
            }
            scalar => {
                out.insert(prefix.trim_end_matches('.').to_string(), scalar.clone());
            }
        }
    }
    let mut out = Options::new();
    for (k, v) in options {
        match v {
            // An empty dictionary or list has no leaves but is still an option.
            Value::Object(m) if m.is_empty() => {
                out.insert(k.clone(), v.clone());
            }
            Value::Array(a) if a.is_empty() => {
                out.insert(k.clone(), v.clone());
            }
            _ => walk(&format!("{k}."), v, &mut out),
        }
    }
    out
}

/// Adds every option of `old` that `options` lacks (QEMU's bdrv_join_options), as the node's
/// driver joins them: qcow2 drops old options that new ones override as a group.
fn join_options(node: &Node, options: &mut Options, mut old: Options) {
    if node.driver.format_name() == "qcow2" {
        super::qcow2::reopen::join_options(options, &mut old);
    } else {
        join_defaults(options, &old);
    }
}

/// Adds every option of `defaults` that `options` lacks (QEMU's qdict_join).
pub(crate) fn join_defaults(options: &mut Options, defaults: &Options) {
    for (k, v) in defaults {
        if !options.contains_key(k) {
            options.insert(k.clone(), v.clone());
        }
    }
}

fn copy_default(options: &mut Options, from: &Options, key: &str) {
    if !options.contains_key(key)
        && let Some(v) = from.get(key)
    {
        options.insert(key.to_string(), v.clone());
    }
}

fn set_default(options: &mut Options, key: &str, value: &str) {
    if !options.contains_key(key) {
        options.insert(key.to_string(), Value::String(value.to_string()));
    }
}

/// The keys in the order QEMU's QDict iterates them, which decides which of several bad
/// options it reports.
fn qdict_order(options: &Options) -> Vec<String> {
    let keys: Vec<&str> = options.keys().map(String::as_str).collect();
    super::blkdebug::config::qdict_order(&keys)
        .into_iter()
        .map(|i| keys[i].to_string())
        .collect()
}

/// Gives every node without a name one of QEMU's generated names, `#block` and a number, in
/// the order QEMU names nodes as it opens them: a format after its file, before its backing
/// file; a protocol or filter before its children. QEMU ends the name with two random digits;
/// here they are `00`, so the output stays the same from run to run.
pub fn assign_node_names(root: &Rc<Node>, counter: &mut u64) {
    let mut name = |node: &Rc<Node>| {
        if node.node_name.borrow().is_empty() {
            *node.node_name.borrow_mut() = format!("#block{counter}00");
            *counter += 1;
        }
    };
    fn walk(node: &Rc<Node>, name: &mut dyn FnMut(&Rc<Node>)) {
        if node.driver.protocol_name().is_none() {
            if let Some(file) = node.children.iter().find(|c| c.primary) {
                walk(&file.node, name);
            }
            name(node);
            for c in node.children.iter().filter(|c| !c.primary) {
                walk(&c.node, name);
            }
        } else {
            name(node);
            for c in &node.children {
                walk(&c.node, name);
            }
        }
    }
    walk(root, &mut name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(v: Value) -> Options {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flatten_names_keys_as_qemu_does() {
        let o = opts(json!({"a": {"b": "1", "c": [{"d": 2}]}, "e": true, "f": {}}));
        let flat = flatten(&o);
        assert_eq!(
            flat.keys().collect::<Vec<_>>(),
            ["a.b", "a.c.0.d", "e", "f"]
        );
        let own = flatten(&opts(json!({"o": {"": "none", "t": "all"}})));
        assert_eq!(own, opts(json!({"o": "none", "o.t": "all"})));
        assert_eq!(
            nest_dotted(flatten(&opts(json!({"x": {"y": "z"}})))),
            opts(json!({"x": {"y": "z"}}))
        );
    }

    #[test]
    fn qdict_order_follows_qemus_hash_buckets() {
        // Measured with qemu-io: `reopen -o zz=1,aa=2` and `-o foo=1,x=2` report aa and x.
        let o = opts(json!({"zz": "1", "aa": "2", "foo": "3", "x": "4", "c": "5", "a": "6"}));
        assert_eq!(qdict_order(&o), ["aa", "x", "a", "zz", "c", "foo"]);
    }

    #[test]
    fn booleans_take_qemus_spellings() {
        assert_eq!(parse_bool("k", &json!("yes")), Ok(true));
        assert_eq!(parse_bool("k", &json!("n")), Ok(false));
        assert_eq!(parse_bool("k", &json!(true)), Ok(true));
        assert_eq!(
            parse_bool("read-only", &json!("foo")),
            Err("Parameter 'read-only' expects 'on' or 'off'".into())
        );
    }
}
