//! JSON as qemu-img prints it: QAPI objects become QDicts, whose keys come out in hash-table
//! order (512 buckets, the tdb hash, newest entry first within a bucket), pretty-printed with
//! four-space indents and `\uXXXX` escapes.

/// A QObject.
#[derive(Clone, Debug, PartialEq)]
pub enum Json {
    Int(i64),
    Bool(bool),
    Str(String),
    /// keys in insertion (QAPI field) order
    Dict(Vec<(String, Json)>),
    List(Vec<Json>),
}

const BUCKETS: u32 = 512;

/// QDict's key hash.
fn tdb_hash(name: &str) -> u32 {
    let mut value = 0x238F_13AFu32.wrapping_mul(name.len() as u32);
    for (i, b) in name.bytes().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i as u32 * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

/// A dict's entries in the order QDict iterates them.
fn qdict_order(entries: &[(String, Json)]) -> Vec<&(String, Json)> {
    let mut order: Vec<(u32, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (tdb_hash(k) % BUCKETS, i))
        .collect();
    // buckets in order; a bucket lists its newest entry first
    order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    order.into_iter().map(|(_, i)| &entries[i]).collect()
}

/// QEMU's to_json of a QString: the bytes the text stands for, decoded as QEMU's modified
/// UTF-8 (a sequence that is not valid prints as U+FFFD), up to the first NUL (a C string).
fn quote(s: &str, out: &mut String) {
    out.push('"');
    let bytes = crate::host_bytes::encode(s);
    let mut rest = &bytes[..];
    while let Some(&first) = rest.first() {
        if first == 0 {
            break;
        }
        let (cp, len) = crate::block::json::mod_utf8_codepoint(rest);
        rest = &rest[len.max(1)..];
        let c = cp.and_then(char::from_u32).unwrap_or('\u{FFFD}');
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) > 0xFFFF => {
                let v = c as u32 - 0x10000;
                out.push_str(&format!(
                    "\\u{:04X}\\u{:04X}",
                    0xD800 + (v >> 10),
                    0xDC00 + (v & 0x3FF)
                ));
            }
            c if (c as u32) < 0x20 || (c as u32) >= 0x7F => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn newline(level: usize, out: &mut String) {
    out.push('\n');
    out.push_str(&" ".repeat(level * 4));
}

fn write(v: &Json, level: usize, out: &mut String) {
    match v {
        Json::Int(n) => out.push_str(&n.to_string()),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Str(s) => quote(s, out),
        Json::Dict(entries) => {
            out.push('{');
            for (i, (k, v)) in qdict_order(entries).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(level + 1, out);
                quote(k, out);
                out.push_str(": ");
                write(v, level + 1, out);
            }
            newline(level, out);
            out.push('}');
        }
        Json::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(level + 1, out);
                write(v, level + 1, out);
            }
            newline(level, out);
            out.push(']');
        }
    }
}

fn write_compact(v: &Json, out: &mut String) {
    match v {
        Json::Dict(entries) => {
            out.push('{');
            for (i, (k, v)) in qdict_order(entries).into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                quote(k, out);
                out.push_str(": ");
                write_compact(v, out);
            }
            out.push('}');
        }
        Json::List(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_compact(v, out);
            }
            out.push(']');
        }
        scalar => write(scalar, 0, out),
    }
}

/// qobject_to_json: one line, `, ` and `: ` between items (as in `json:` filenames).
pub fn compact(v: &Json) -> String {
    let mut out = String::new();
    write_compact(v, &mut out);
    out
}

/// qobject_to_json_pretty.
pub fn pretty(v: &Json) -> String {
    let mut out = String::new();
    write(v, 0, &mut out);
    out
}

/// The text qemu-img prints for a QObject under `Format specific information:` (its
/// dump_qobject): a dict's keys in QDict order with dashes shown as spaces, a list's items as
/// `[i]:`, each level indented four more spaces; a composite value starts on its own line.
pub fn human(v: &Json, level: usize) -> String {
    let mut out = String::new();
    dump(v, level, &mut out);
    out
}

fn dump(v: &Json, level: usize, out: &mut String) {
    let composite = |v: &Json| matches!(v, Json::Dict(_) | Json::List(_));
    let pad = " ".repeat(level * 4);
    match v {
        Json::Int(n) => out.push_str(&format!("{n}\n")),
        Json::Bool(b) => out.push_str(&format!("{b}\n")),
        Json::Str(s) => {
            out.push_str(s.split('\0').next().unwrap_or_default());
            out.push('\n');
        }
        Json::Dict(entries) => {
            for (k, v) in qdict_order(entries) {
                let sep = if composite(v) { '\n' } else { ' ' };
                out.push_str(&format!("{pad}{}:{sep}", k.replace('-', " ")));
                dump(v, level + 1, out);
            }
        }
        Json::List(items) => {
            for (i, v) in items.iter().enumerate() {
                let sep = if composite(v) { '\n' } else { ' ' };
                out.push_str(&format!("{pad}[{i}]:{sep}"));
                dump(v, level + 1, out);
            }
        }
    }
}

/// Builds a dict from (key, value) pairs, skipping absent optional members.
pub fn dict(entries: Vec<(&str, Option<Json>)>) -> Json {
    Json::Dict(
        entries
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What qemu-img info --output=json printed for these file names.
    #[test]
    fn bytes_that_are_not_characters_quote_as_qemu_does() {
        let quoted = |raw: &[u8]| {
            let mut out = String::new();
            quote(&crate::host_bytes::decode(raw).unwrap(), &mut out);
            out
        };
        assert_eq!(quoted(b"r\xe9.img"), r#""r\uFFFD.img""#);
        assert_eq!(quoted(b"o\xfe\x80.q"), r#""o\uFFFD\uFFFD.q""#);
        assert_eq!(quoted(b"a\xe2\x82b.img"), r#""a\uFFFDb.img""#);
        assert_eq!(quoted(b"c\xed\xa0\x80.img"), r#""c\uFFFD.img""#);
        assert_eq!(quoted(b"d\xf4\x90\x80\x80.img"), r#""d\uFFFD.img""#);
        assert_eq!(quoted(b"e\xc0\x80.img"), r#""e\u0000.img""#);
        assert_eq!(
            quoted("\u{fdd0}é😀".as_bytes()),
            r#""\uFFFD\u00E9\uD83D\uDE00""#
        );
    }

    #[test]
    fn check_keys_come_out_in_qdict_order() {
        let keys = [
            "filename",
            "format",
            "check-errors",
            "image-end-offset",
            "corruptions",
            "leaks",
            "corruptions-fixed",
            "leaks-fixed",
            "total-clusters",
            "allocated-clusters",
            "fragmented-clusters",
            "compressed-clusters",
        ];
        let d = Json::Dict(keys.iter().map(|k| (k.to_string(), Json::Int(0))).collect());
        let order: Vec<&str> = qdict_order(match &d {
            Json::Dict(e) => e,
            _ => unreachable!(),
        })
        .into_iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            [
                "image-end-offset",
                "compressed-clusters",
                "total-clusters",
                "check-errors",
                "allocated-clusters",
                "filename",
                "format",
                "fragmented-clusters",
            ]
            .contains(k)
        })
        .collect();
        // as qemu-img check --output=json prints them
        assert_eq!(
            order,
            [
                "image-end-offset",
                "compressed-clusters",
                "total-clusters",
                "check-errors",
                "allocated-clusters",
                "filename",
                "format",
                "fragmented-clusters"
            ]
        );
    }

    #[test]
    fn empty_containers_and_escapes() {
        let v = dict(vec![
            ("data", Some(Json::Dict(vec![]))),
            ("children", Some(Json::List(vec![]))),
            ("name", Some(Json::Str("a\"b\u{1}é".into()))),
            ("skipped", None),
        ]);
        let s = pretty(&v);
        assert!(s.contains("\"data\": {\n    }"), "{s}");
        assert!(s.contains("\"children\": [\n    ]"), "{s}");
        assert!(s.contains("\"a\\\"b\\u0001\\u00E9\""), "{s}");
        assert!(!s.contains("skipped"));
    }
}
