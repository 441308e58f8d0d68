//! Block-layer options as QEMU handles them. QEMU keeps a node's options in a flat QDict
//! (`file.driver`, `overlap-check.template`); we keep them nested (`{"file": {"driver": ..}}`),
//! and this module gives the flat view where QEMU's behaviour depends on it: a key that is
//! both a value and a prefix (`overlap-check=none` beside `overlap-check.template=all`) keeps
//! its own value under the empty key (`{"overlap-check": {"": "none", "template": "all"}}`).
//!
//! Also here: everything opening needs besides the options ([`OpenContext`]), the `k=v,k=v`
//! text of `--image-opts` and `open -o`, and QemuOpts' typing of option values (bool, number,
//! size) with QEMU's messages, in QDict iteration order where QEMU validates in that order.

use super::node::{ChildRole, Node, OpenFlags};
use crate::output::Console;
use crate::qemu_io::numbers::{NumError, strtosz};
use serde_json::{Map, Number, Value};
use std::path::PathBuf;
use std::rc::Rc;

/// Blockdev options: a JSON object with QEMU's key names, nested (`{"file": {"driver": ...}}`).
pub type Options = Map<String, Value>;

/// Everything opening needs besides the options.
#[derive(Clone)]
pub struct OpenContext {
    /// relative filenames are resolved against this directory
    pub base_dir: PathBuf,
    pub console: Rc<Console>,
    /// the flags qemu-io opens its drive with (QEMU's `flags` argument of bdrv_open)
    pub flags: OpenFlags,
    /// see [`crate::qemu_io::Invocation::skip_host_sync`]
    pub skip_host_sync: bool,
}

impl OpenContext {
    /// For unit tests: names resolve in `dir`, messages are captured, default flags.
    #[cfg(test)]
    pub fn quiet(dir: &std::path::Path) -> Self {
        OpenContext {
            base_dir: dir.to_path_buf(),
            console: Console::new(Rc::new(std::cell::RefCell::new(
                crate::output::Capture::default(),
            ))),
            flags: Default::default(),
            skip_host_sync: true,
        }
    }

    pub fn resolve(&self, name: &str) -> PathBuf {
        let p = crate::host_bytes::host_path(name);
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Opens a node's children for its driver (QEMU's bdrv_open_child): drivers get one, so they
/// need not know how the graph is built.
pub trait OpenChild {
    /// The child `key`: from its options (`key.*`) or a node reference (`key=NAME`) in `opts`,
    /// else from `filename`. Consumes what it used.
    fn open_child(
        &self,
        opts: &mut Options,
        key: &str,
        filename: Option<String>,
        role: ChildRole,
    ) -> Result<Rc<Node>, String>;

    /// The same for a child that may be missing (QEMU's `allow_none`): None when `opts` and
    /// `filename` name no node.
    fn open_optional_child(
        &self,
        opts: &mut Options,
        key: &str,
        filename: Option<String>,
        role: ChildRole,
    ) -> Result<Option<Rc<Node>>, String>;
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
            // A value for a key that is already a prefix: it is the prefix's own value.
            (Some(Value::Object(existing)), v) if !existing.is_empty() => {
                existing.insert(String::new(), v);
            }
            (Some(old), Value::Object(mut new)) if !old.is_object() && !new.is_empty() => {
                new.insert(String::new(), old.take());
                map.insert(key.to_string(), Value::Object(new));
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
                let own = entry.take();
                let mut m = Options::new();
                m.insert(String::new(), own);
                *entry = Value::Object(m);
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
        if key == "id" && !id_wellformed(&value) {
            return Err("Parameter 'id' expects an identifier\nIdentifiers consist of letters, digits, '-', '.', '_', starting with a letter.".into());
        }
        flat.insert(key, Value::String(value));
    }
    parsed.options = nest_dotted(flat);
    Ok(parsed)
}

/// QEMU's `id_wellformed`: a letter, then letters, digits, `-`, `.`, `_`.
pub fn id_wellformed(id: &str) -> bool {
    let mut bytes = id.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

// ---------------------------------------------------------------------------------------------
// The flat view of nested options

/// The value at a flat key (`cache.direct`), if any.
pub fn get_flat<'a>(opts: &'a Options, key: &str) -> Option<&'a Value> {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    match (opts.get(head)?, rest) {
        (Value::Object(m), Some(rest)) => get_flat(m, rest),
        (_, Some(_)) => None,
        // a prefix with its own value (see the module doc)
        (Value::Object(m), None) if m.contains_key("") => m.get(""),
        (v, None) => Some(v),
    }
}

/// Removes the value at a flat key and returns it; objects it leaves empty go too (a key
/// QEMU would have consumed leaves nothing behind).
pub fn take_flat(opts: &mut Options, key: &str) -> Option<Value> {
    let (head, rest) = match key.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (key, None),
    };
    let taken = match (opts.get_mut(head)?, rest) {
        (Value::Object(m), Some(rest)) => take_flat(m, rest)?,
        (_, Some(_)) => return None,
        (Value::Object(m), None) if m.contains_key("") => m.shift_remove("")?,
        (_, None) => return opts.shift_remove(head),
    };
    if matches!(opts.get(head), Some(Value::Object(m)) if m.is_empty()) {
        opts.shift_remove(head);
    }
    Some(taken)
}

/// Sets a flat key (QEMU's qdict_put), keeping what else lives under its prefix.
pub fn put_flat(opts: &mut Options, key: &str, value: Value) {
    // A non-empty container at the key holds only sub-keys (`driver.0`): in QEMU's flat
    // QDict the new key sits beside them, so it becomes the container's own value.
    if let Some(slot) = get_path_mut(opts, key)
        && is_nonempty_container(slot)
    {
        let mut own = match std::mem::take(slot) {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (i.to_string(), v))
                .collect(),
            Value::Object(m) => m,
            _ => unreachable!("is_nonempty_container admits arrays and objects only"),
        };
        own.insert(String::new(), value);
        *slot = Value::Object(own);
        return;
    }
    take_flat(opts, key);
    insert_path(opts, key, value);
}

/// The value stored at a dotted path of nested objects, as held (no flat-view rules).
fn get_path_mut<'a>(opts: &'a mut Options, key: &str) -> Option<&'a mut Value> {
    match key.split_once('.') {
        Some((head, rest)) => match opts.get_mut(head)? {
            Value::Object(m) => get_path_mut(m, rest),
            _ => None,
        },
        None => opts.get_mut(key),
    }
}

/// Sets a flat key unless it is set (QEMU's qdict_set_default_str).
pub fn set_default(opts: &mut Options, key: &str, value: Value) {
    if get_flat(opts, key).is_none() {
        insert_path(opts, key, value);
    }
}

/// Copies a flat key from `from` unless `to` has it (QEMU's qdict_copy_default).
pub fn copy_default(to: &mut Options, from: &Options, key: &str) {
    if let Some(v) = get_flat(from, key) {
        set_default(to, key, v.clone());
    }
}

/// Every flat key of the options, in the order they are held.
pub fn flat_keys(opts: &Options) -> Vec<String> {
    fn walk(prefix: &str, value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let key = match (prefix.is_empty(), k.is_empty()) {
                        (_, true) => prefix.to_string(),
                        (true, false) => k.clone(),
                        (false, false) => format!("{prefix}.{k}"),
                    };
                    walk(&key, v, out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}.{i}"), v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    for (k, v) in opts {
        walk(k, v, &mut out);
    }
    out
}

/// The option QEMU names when it finds options nothing took: the first in QDict order.
pub fn first_leftover(opts: &Options) -> Option<String> {
    let keys = flat_keys(opts);
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    qdict_order(&refs).first().map(|&i| keys[i].clone())
}

// ---------------------------------------------------------------------------------------------
// QemuOpts: typed option values

/// A scalar option as QemuOpts reads it from a QDict: strings as they are, numbers as
/// `qnum_to_string` prints them, booleans as `on`/`off`.
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(qnum_to_string(n)),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

/// A non-empty object or list: what QEMU's flattening turns into `key.sub` options.
pub fn is_nonempty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.keys().any(|k| !k.is_empty()),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

/// The types of QemuOpts options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptType {
    String,
    Bool,
    Number,
    Size,
}

/// A typed option value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptValue {
    String(String),
    Bool(bool),
    Number(u64),
}

/// Options a QemuOptsList took from the options (QEMU's qemu_opts_absorb_qdict), typed.
#[derive(Debug, Default)]
pub struct Absorbed {
    values: Vec<(String, OptValue)>,
}

impl Absorbed {
    pub fn has(&self, key: &str) -> bool {
        self.values.iter().any(|(k, _)| k == key)
    }
    fn get(&self, key: &str) -> Option<&OptValue> {
        self.values.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.get(key) {
            Some(OptValue::String(s)) => Some(s),
            _ => None,
        }
    }
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(OptValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    pub fn number(&self, key: &str) -> Option<u64> {
        match self.get(key) {
            Some(OptValue::Number(n)) => Some(*n),
            _ => None,
        }
    }
}

/// QEMU's qemu_opts_absorb_qdict: takes the options `desc` knows out of `opts`, typed, in QDict
/// iteration order, so the first malformed value QEMU meets is the one reported. Scalars are
/// read as text ([`scalar_string`]); a null or an empty container is taken and ignored; a
/// non-empty container stays (QEMU's flattening made other keys of it).
pub fn absorb(opts: &mut Options, desc: &[(&str, OptType)]) -> Result<Absorbed, String> {
    let keys = flat_keys(opts);
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut absorbed = Absorbed::default();
    for i in qdict_order(&refs) {
        let key = &keys[i];
        let Some(&(_, ty)) = desc.iter().find(|(k, _)| k == key) else {
            continue;
        };
        let Some(value) = take_flat(opts, key) else {
            continue;
        };
        let Some(text) = scalar_string(&value) else {
            continue;
        };
        let typed = match ty {
            OptType::String => OptValue::String(text),
            OptType::Bool => OptValue::Bool(parse_bool(key, &text)?),
            OptType::Number => OptValue::Number(parse_number(key, &text)?),
            OptType::Size => OptValue::Number(parse_size(key, &text)?),
        };
        absorbed.values.push((key.clone(), typed));
    }
    Ok(absorbed)
}

/// A QemuOpts number: `qemu_strtou64(value, NULL, 0)`, i.e. `strtoull` with base 0 (`0x` hex,
/// leading `0` octal, optional sign, negative values wrap) and nothing may follow the digits.
pub fn parse_number(name: &str, value: &str) -> Result<u64, String> {
    let r = crate::qemu_io::numbers::strtoull(value, 0);
    // unparsed text is checked before strtoull's ERANGE
    if r.end == 0 || r.end != value.len() {
        return Err(format!("Parameter '{name}' expects a number"));
    }
    if r.erange {
        return Err(format!(
            "Value '{value}' is too large for parameter '{name}'"
        ));
    }
    Ok(r.value)
}

/// A QemuOpts bool: exactly these lowercase words.
pub fn parse_bool(name: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" | "y" => Ok(true),
        "off" | "no" | "false" | "n" => Ok(false),
        _ => Err(format!("Parameter '{name}' expects 'on' or 'off'")),
    }
}

/// A QemuOpts size value (`qemu_strtosz`), with QEMU's messages. The second line of the
/// syntax-error message is QEMU's hint, printed on its own line.
pub fn parse_size(name: &str, value: &str) -> Result<u64, String> {
    // QemuOpts sizes and qemu-io numbers are the same qemu_strtosz.
    match strtosz(value) {
        Ok(v) => Ok(v),
        Err(NumError::TooLarge) => Err(format!(
            "Value '{value}' is out of range for parameter '{name}'"
        )),
        Err(NumError::Invalid) => Err(format!(
            "Parameter '{name}' expects a non-negative number below 2^64\n\
             Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
             and exabytes, respectively."
        )),
    }
}

/// QEMU's QDict bucket for a key (`tdb_hash(key) % 512`).
pub fn qdict_bucket(key: &str) -> u32 {
    let b = key.as_bytes();
    let mut value: u32 = 0x238F_13AFu32.wrapping_mul(b.len() as u32);
    for (i, &c) in b.iter().enumerate() {
        value = value.wrapping_add(u32::from(c) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345) % 512
}

/// The order in which QEMU iterates a QDict whose keys were inserted in the given order
/// (distinct keys): by hash bucket, and within a bucket newest first. QEMU walks QDicts when it
/// validates options, and reports the first error or leftover key it meets, so this decides
/// which of several errors is shown.
pub fn qdict_order(keys: &[&str]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_by_key(|&i| (qdict_bucket(keys[i]), std::cmp::Reverse(i)));
    order
}

/// QEMU's `qnum_to_string`: integers in decimal, doubles as `%.17g`.
pub fn qnum_to_string(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        format_g17(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// C's `printf("%.17g", x)`.
pub(crate) fn format_g17(x: f64) -> String {
    const P: i32 = 17;
    if x.is_nan() {
        return if x.is_sign_negative() { "-nan" } else { "nan" }.to_string();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-inf" } else { "inf" }.to_string();
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0" } else { "0" }.to_string();
    }
    // Rust rounds exactly, as glibc does: "d.dddddddddddddddde<exp>".
    let sci = format!("{:.*e}", (P - 1) as usize, x);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if negative { "-" } else { "" };
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..P).contains(&exp) {
        let m = trim(format!("{}.{}", &digits[..1], &digits[1..]));
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    } else if exp >= 0 {
        let split = (exp + 1) as usize;
        let s = format!("{}.{}", &digits[..split], &digits[split..]);
        format!("{sign}{}", trim(s))
    } else {
        let zeros = "0".repeat((-exp - 1) as usize);
        format!("{sign}{}", trim(format!("0.{zeros}{digits}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotted_keys_nest_and_merge_with_nested_ones() {
        let flat =
            parse_keyval("driver=raw,file.driver=blkdebug,file.image.filename=a,,b").unwrap();
        assert!(flat.warnings.is_empty());
        assert_eq!(
            Value::Object(flat.options),
            json!({"driver": "raw", "file": {"driver": "blkdebug", "image": {"filename": "a,b"}}})
        );
    }

    #[test]
    fn putting_a_key_keeps_the_sub_keys_under_it() {
        let mut o = json!({"driver": ["raw"]}).as_object().unwrap().clone();
        put_flat(&mut o, "driver", json!("raw"));
        assert_eq!(get_flat(&o, "driver"), Some(&json!("raw")));
        assert_eq!(flat_keys(&o), ["driver.0", "driver"]);
    }

    #[test]
    fn a_key_that_is_also_a_prefix_keeps_its_own_value() {
        for text in [
            "overlap-check=none,overlap-check.template=all",
            "overlap-check.template=all,overlap-check=none",
        ] {
            let mut o = parse_keyval(text).unwrap().options;
            assert_eq!(
                get_flat(&o, "overlap-check"),
                Some(&json!("none")),
                "{text}"
            );
            assert_eq!(get_flat(&o, "overlap-check.template"), Some(&json!("all")));
            let mut keys = flat_keys(&o);
            keys.sort();
            assert_eq!(keys, ["overlap-check", "overlap-check.template"]);
            assert_eq!(take_flat(&mut o, "overlap-check"), Some(json!("none")));
            assert_eq!(
                take_flat(&mut o, "overlap-check.template"),
                Some(json!("all"))
            );
            assert!(o.is_empty());
        }
    }

    #[test]
    fn flat_access_sets_defaults_and_prunes() {
        let mut o = nest_dotted(serde_json::from_value(json!({"cache.direct": true})).unwrap());
        set_default(&mut o, "cache.direct", json!(false));
        set_default(&mut o, "cache.no-flush", json!(false));
        assert_eq!(
            Value::Object(o.clone()),
            json!({"cache": {"direct": true, "no-flush": false}})
        );
        put_flat(&mut o, "cache.direct", json!("off"));
        assert_eq!(get_flat(&o, "cache.direct"), Some(&json!("off")));
        take_flat(&mut o, "cache.direct");
        take_flat(&mut o, "cache.no-flush");
        assert!(o.is_empty());
    }

    #[test]
    fn absorb_types_values_and_leaves_what_it_does_not_know() {
        let mut o = parse_keyval("read-only=on,size=1k,foo=bar,n=0x10")
            .unwrap()
            .options;
        let a = absorb(
            &mut o,
            &[
                ("read-only", OptType::Bool),
                ("size", OptType::Size),
                ("n", OptType::Number),
            ],
        )
        .unwrap();
        assert_eq!(a.bool("read-only"), Some(true));
        assert_eq!(a.number("size"), Some(1024));
        assert_eq!(a.number("n"), Some(16));
        assert_eq!(Value::Object(o), json!({"foo": "bar"}));
        let mut bad = parse_keyval("read-only=x").unwrap().options;
        assert_eq!(
            absorb(&mut bad, &[("read-only", OptType::Bool)]).unwrap_err(),
            "Parameter 'read-only' expects 'on' or 'off'"
        );
    }

    #[test]
    fn bare_keys_are_deprecated_booleans_and_ids_must_be_identifiers() {
        let parsed = parse_keyval("ro,nocache=x,noauto").unwrap();
        assert_eq!(
            Value::Object(parsed.options),
            json!({"ro": "on", "nocache": "x", "auto": "off"})
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
    fn qdict_buckets_match_qemu() {
        // Values computed from QEMU's tdb_hash; the binary's error choice agrees.
        let cases = [
            ("foo", 490),
            ("bar", 254),
            ("event", 361),
            ("errno", 489),
            ("state", 131),
            ("once", 114),
            ("sector", 340),
            ("b", 340),
            ("iotype", 8),
            ("align", 509),
            ("max-transfer", 204),
        ];
        for (k, b) in cases {
            assert_eq!(qdict_bucket(k), b, "{k}");
        }
        // "b" and "sector" share a bucket: the later insertion comes first.
        assert_eq!(qdict_order(&["sector", "b"]), vec![1, 0]);
        assert_eq!(qdict_order(&["b", "sector"]), vec![1, 0]);
        assert_eq!(qdict_order(&["foo", "bar"]), vec![1, 0]);
    }
}
