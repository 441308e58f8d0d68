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

/// A string as QEMU's JSON writer quotes it: over its bytes (a name that is not UTF-8 is
/// carried as [`crate::host_bytes`] text), sequence by sequence as [`mod_utf8_codepoint`]
/// reads them, up to the first NUL; what is not a valid character becomes U+FFFD.
fn quote(s: &str, out: &mut String) {
    let bytes = crate::host_bytes::encode(s);
    let mut rest: &[u8] = &bytes;
    out.push('"');
    while rest.first().is_some_and(|&b| b != 0) {
        let (cp, len) = mod_utf8_codepoint(rest);
        rest = &rest[len..];
        match cp.unwrap_or(0xFFFD) {
            0x22 => out.push_str("\\\""),
            0x5C => out.push_str("\\\\"),
            0x08 => out.push_str("\\b"),
            0x0C => out.push_str("\\f"),
            0x0A => out.push_str("\\n"),
            0x0D => out.push_str("\\r"),
            0x09 => out.push_str("\\t"),
            cp if cp > 0xFFFF => {
                let v = cp - 0x10000;
                out.push_str(&format!(
                    "\\u{:04X}\\u{:04X}",
                    0xD800 + (v >> 10),
                    0xDC00 + (v & 0x3FF)
                ));
            }
            cp if !(0x20..0x7F).contains(&cp) => out.push_str(&format!("\\u{cp:04X}")),
            cp => out.push(char::from(cp as u8)),
        }
    }
    out.push('"');
}

/// QEMU's mod_utf8_codepoint on a non-empty byte string not starting with NUL: the code
/// point of the sequence at its start (None: invalid, which includes noncharacters,
/// surrogates and overlong forms other than `C0 80` for NUL) and the bytes it takes.
fn mod_utf8_codepoint(s: &[u8]) -> (Option<u32>, usize) {
    const MIN_CP: [u32; 5] = [0x80, 0x800, 0x10000, 0x20_0000, 0x400_0000];
    let lead = u32::from(s[0]);
    if lead < 0x80 {
        return (Some(lead), 1);
    }
    // impossible bytes, and a continuation byte where a sequence should start
    if lead >= 0xFE || lead & 0x40 == 0 {
        return (None, 1);
    }
    let len = (lead as u8).leading_ones() as usize;
    let mut cp = lead & ((0x80 >> len) - 1);
    for i in 1..len {
        let byte = s.get(i).copied().unwrap_or(0);
        if byte & 0xC0 != 0x80 {
            return (None, i);
        }
        cp = (cp << 6) | u32::from(byte & 0x3F);
    }
    let valid = cp <= 0x10_FFFF
        && !(0xFDD0..=0xFDEF).contains(&cp)
        && cp & 0xFFFE != 0xFFFE
        && !(0xD800..=0xDFFF).contains(&cp)
        && (cp >= MIN_CP[len - 2] || (cp == 0 && len == 2));
    (valid.then_some(cp), len)
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
