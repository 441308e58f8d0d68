//! `json:` filenames as options: QEMU parses the text with its JSON dialect ([`super::json`]),
//! requires an object and flattens it into dotted keys (`qdict_flatten`); our options are
//! nested, so the flat keys are nested again here. Options given beside the filename win.

use super::blkdebug::config::qdict_order;
use super::json::{self, QObject};
use super::open::Options;
use serde_json::Value;

/// The options a `json:` filename gives: QEMU's JSON dialect, which must be an object, which
/// QEMU then flattens into dotted keys (`qdict_flatten`). We nest them again, as all our options
/// are, rebuilding lists where nothing else was merged into them.
pub fn parse(text: &str) -> Result<Options, String> {
    let value = json::parse(text.as_bytes())
        .map_err(|e| format!("Could not parse the JSON options: {e}"))?;
    let QObject::Dict(entries) = value else {
        return Err("Invalid JSON object given".to_string());
    };
    let mut options = Options::new();
    for (parts, value) in qdict_flatten(entries) {
        insert_in_map(&mut options, &parts, qobject_to_value(value));
    }
    Ok(options)
}

/// One part of a flattened key: a name (a key split at its dots), or a list index.
#[derive(Debug, Clone, PartialEq)]
enum KeyPart {
    Name(String),
    Index(usize),
}

fn name_parts(key: &str) -> impl Iterator<Item = KeyPart> + '_ {
    key.split('.').map(|p| KeyPart::Name(p.to_string()))
}

fn is_nonempty(v: &QObject) -> bool {
    match v {
        QObject::Dict(d) => !d.is_empty(),
        QObject::List(l) => !l.is_empty(),
        _ => false,
    }
}

/// The flat dict QEMU's `qdict_flatten` makes of a parsed object, in insertion order: non-empty
/// objects and lists become `key.sub` and `key.N` entries. The top-level dict is flattened in
/// place, walked in QDict (hash) order, so a nested `{"a": {"b": 1}}` overwrites a dotted
/// `"a.b"` beside it whatever their order; inside nested objects, the key written last in QDict
/// order wins.
fn qdict_flatten(entries: Vec<(String, QObject)>) -> Vec<(Vec<KeyPart>, QObject)> {
    let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    let mut flat = FlatDict::default();
    for (key, value) in entries {
        let parts = name_parts(&key).collect();
        flat.put(key, parts, value);
    }
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for i in qdict_order(&key_refs) {
        let key = &keys[i];
        if flat.get(key).is_some_and(is_nonempty)
            && let Some((parts, value)) = flat.take(key)
        {
            flat.flatten_into(key, &parts, value);
        }
    }
    flat.into_entries()
}

/// An insertion-ordered dict with QDict's put (a new key goes last, an existing one keeps its
/// place and takes the new value).
#[derive(Default)]
struct FlatDict {
    entries: Vec<Option<(String, Vec<KeyPart>, QObject)>>,
    index: std::collections::HashMap<String, usize>,
}

impl FlatDict {
    fn put(&mut self, key: String, parts: Vec<KeyPart>, value: QObject) {
        match self.index.get(&key) {
            Some(&i) => self.entries[i] = Some((key, parts, value)),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push(Some((key, parts, value)));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&QObject> {
        let i = *self.index.get(key)?;
        self.entries[i].as_ref().map(|(_, _, v)| v)
    }

    fn take(&mut self, key: &str) -> Option<(Vec<KeyPart>, QObject)> {
        let i = self.index.remove(key)?;
        self.entries[i].take().map(|(_, parts, v)| (parts, v))
    }

    /// Writes the leaves of a non-empty object (walked in QDict order) or list under `prefix`,
    /// depth first, as QEMU's recursion does (an explicit stack keeps deep nesting off the call
    /// stack).
    fn flatten_into(&mut self, prefix: &str, prefix_parts: &[KeyPart], value: QObject) {
        let mut pending = vec![(prefix.to_string(), prefix_parts.to_vec(), value)];
        while let Some((key, parts, value)) = pending.pop() {
            if !is_nonempty(&value) {
                self.put(key, parts, value);
                continue;
            }
            let children: Vec<(String, KeyPart, QObject)> = match value {
                QObject::Dict(d) => {
                    let keys: Vec<&str> = d.iter().map(|(k, _)| k.as_str()).collect();
                    let order = qdict_order(&keys);
                    let mut slots: Vec<Option<(String, QObject)>> =
                        d.into_iter().map(Some).collect();
                    order
                        .into_iter()
                        .filter_map(|i| slots[i].take())
                        .map(|(k, v)| (k.clone(), KeyPart::Name(k), v))
                        .collect()
                }
                QObject::List(l) => l
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| (i.to_string(), KeyPart::Index(i), v))
                    .collect(),
                _ => Vec::new(),
            };
            // Last pushed, first taken: the children go on in reverse to come off in order.
            for (name, part, child) in children.into_iter().rev() {
                let mut child_parts = parts.clone();
                match part {
                    KeyPart::Name(n) => child_parts.extend(name_parts(&n)),
                    index => child_parts.push(index),
                }
                pending.push((format!("{key}.{name}"), child_parts, child));
            }
        }
    }

    fn into_entries(self) -> Vec<(Vec<KeyPart>, QObject)> {
        self.entries
            .into_iter()
            .flatten()
            .map(|(_, parts, v)| (parts, v))
            .collect()
    }
}

/// Puts `value` at the path `parts` in `map`, making objects (or lists, for indices arriving in
/// order) on the way.
fn insert_in_map(map: &mut Options, parts: &[KeyPart], value: Value) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    let mut node = map.entry(part_key(first)).or_insert(Value::Null);
    for part in rest {
        node = member(node, part);
    }
    *node = value;
}

fn part_key(part: &KeyPart) -> String {
    match part {
        KeyPart::Name(n) => n.clone(),
        KeyPart::Index(i) => i.to_string(),
    }
}

/// The member `part` names in `node`, made if missing.
fn member<'a>(node: &'a mut Value, part: &KeyPart) -> &'a mut Value {
    make_container_for(node, part);
    match (node, part) {
        (Value::Array(items), KeyPart::Index(i)) => {
            if *i >= items.len() {
                items.resize(*i + 1, Value::Null);
            }
            &mut items[*i]
        }
        (Value::Object(map), part) => map.entry(part_key(part)).or_insert(Value::Null),
        (node, _) => node,
    }
}

/// Makes `node` a list or object that `part` can go into. What is in the way gives way, as in
/// [`nest_dotted`](super::open::nest_dotted): a leaf becomes a list (for index 0) or an object,
/// and a list becomes an object unless `part` is one of its indices or the next one.
fn make_container_for(node: &mut Value, part: &KeyPart) {
    match (&*node, part) {
        (Value::Array(items), KeyPart::Index(i)) if *i <= items.len() => {}
        (Value::Object(_), _) => {}
        (Value::Array(_), _) => {
            if let Value::Array(items) = std::mem::take(node) {
                *node = Value::Object(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (i.to_string(), v))
                        .collect(),
                );
            }
        }
        (_, KeyPart::Index(0)) => *node = Value::Array(Vec::new()),
        _ => *node = Value::Object(Options::new()),
    }
}

/// A parsed JSON value as an option value. Numbers keep QEMU's kinds (i64, u64, double); an
/// infinite double, which JSON numbers cannot hold, becomes the text QEMU prints for it.
fn qobject_to_value(v: QObject) -> Value {
    match v {
        QObject::Null => Value::Null,
        QObject::Bool(b) => Value::Bool(b),
        QObject::Int(i) => Value::from(i),
        QObject::UInt(u) => Value::from(u),
        QObject::Double(x) => serde_json::Number::from_f64(x)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(if x > 0.0 { "inf" } else { "-inf" }.into())),
        QObject::Str(s) => Value::String(s),
        QObject::List(l) => Value::Array(l.into_iter().map(qobject_to_value).collect()),
        QObject::Dict(d) => Value::Object(
            d.into_iter()
                .map(|(k, v)| (k, qobject_to_value(v)))
                .collect(),
        ),
    }
}

/// QEMU's `qdict_join` without overwriting: options given directly win over those of a `json:`
/// filename, key by key.
pub fn join(dest: &mut Options, src: Options) {
    for (key, value) in src {
        match dest.get_mut(&key) {
            None => {
                dest.insert(key, value);
            }
            Some(existing) => join_value(existing, value),
        }
    }
}

fn join_value(dest: &mut Value, src: Value) {
    match (dest, src) {
        (Value::Object(d), Value::Object(s)) => join(d, s),
        (Value::Array(d), Value::Array(s)) => {
            for (i, v) in s.into_iter().enumerate() {
                match d.get_mut(i) {
                    Some(existing) => join_value(existing, v),
                    None => d.push(v),
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(text: &str) -> Value {
        Value::Object(parse(text).unwrap_or_else(|e| panic!("{text}: {e}")))
    }

    #[test]
    fn errors_carry_qemus_prefix() {
        assert_eq!(
            parse("{").unwrap_err(),
            "Could not parse the JSON options: JSON parse error, premature EOI"
        );
        assert_eq!(
            parse("").unwrap_err(),
            "Could not parse the JSON options: Expecting a JSON value"
        );
        for not_an_object in ["[1]", "1", "'x'", "null"] {
            assert_eq!(
                parse(not_an_object).unwrap_err(),
                "Invalid JSON object given"
            );
        }
    }

    #[test]
    fn nesting_lists_and_empty_containers_survive() {
        assert_eq!(
            parsed("{'a': [1, {'b': 2}], 'c': {}, 'd': [], 'e': null, 'f': {'g': 'h'}}"),
            json!({"a": [1, {"b": 2}], "c": {}, "d": [], "e": null, "f": {"g": "h"}})
        );
    }

    #[test]
    fn dotted_keys_nest() {
        assert_eq!(
            parsed("{'driver': 'raw', 'file.driver': 'file', 'file.filename': 'x'}"),
            json!({"driver": "raw", "file": {"driver": "file", "filename": "x"}})
        );
        // A dotted key inside an object joins the object's other keys.
        assert_eq!(
            parsed("{'file': {'image.filename': 'x', 'image': {'driver': 'file'}}}"),
            json!({"file": {"image": {"filename": "x", "driver": "file"}}})
        );
    }

    #[test]
    fn at_top_level_the_nested_spelling_wins_in_either_order() {
        for text in [
            "{'file.driver': 'blkdebug', 'file': {'driver': 'file', 'filename': 'x'}}",
            "{'file': {'driver': 'file', 'filename': 'x'}, 'file.driver': 'blkdebug'}",
        ] {
            assert_eq!(parsed(text)["file"]["driver"], "file", "{text}");
        }
    }

    #[test]
    fn inside_an_object_the_key_flattened_last_in_qdict_order_wins() {
        // QEMU reads errno 28 from both spellings (inject-error is walked first).
        for text in [
            "{'file': {'inject-error.0.errno': '28', 'inject-error': [{'event': 'read_aio', 'errno': '5'}]}}",
            "{'file': {'inject-error': [{'event': 'read_aio', 'errno': '5'}], 'inject-error.0.errno': '28'}}",
        ] {
            assert_eq!(
                parsed(text)["file"]["inject-error"]["0"],
                json!({"event": "read_aio", "errno": "28"}),
                "{text}"
            );
        }
    }

    #[test]
    fn a_dotted_key_into_a_list_turns_it_into_an_object() {
        assert_eq!(
            parsed("{'l': [{'event': 'read_aio'}], 'l.0.errno': '28', 'l.1.event': 'x'}"),
            json!({"l": {"0": {"event": "read_aio", "errno": "28"}, "1": {"event": "x"}}})
        );
    }

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(
            parsed("{'a': -0, 'b': 18446744073709551615, 'c': 0.5, 'd': 1e400, 'e': -1e400}"),
            json!({"a": 0, "b": u64::MAX, "c": 0.5, "d": "inf", "e": "-inf"})
        );
    }

    #[test]
    fn direct_options_win_key_by_key() {
        let mut dest = parse("{'driver': 'qcow2', 'file': {'locking': 'off'}}").unwrap();
        join(
            &mut dest,
            parse("{'driver': 'raw', 'file': {'filename': 'x', 'locking': 'on'}}").unwrap(),
        );
        assert_eq!(
            Value::Object(dest),
            json!({"driver": "qcow2", "file": {"locking": "off", "filename": "x"}})
        );
    }

    #[test]
    fn the_deepest_nesting_needs_little_stack() {
        // Parsing, flattening and nesting are iterative: QEMU's 1024 levels fit in a 512 KiB
        // thread even in a debug build.
        let deep = format!("{{'a':{}{}}}", "[".repeat(1023), "]".repeat(1023));
        let parsed = std::thread::Builder::new()
            .stack_size(512 << 10)
            .spawn(move || parse(&deep).map(|options| options.len()))
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(parsed, Ok(1));
    }
}
