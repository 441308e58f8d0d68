//! blkdebug's INI config file (`config=` / `blkdebug:<config>:<image>`), parsed as QEMU 10.0.2's
//! `qemu_config_parse` does, plus the QemuOpts/QDict emulation that decides *which* error QEMU
//! reports when a file (or an option tree) has several.
//!
//! How QEMU reads the file, and what this module reproduces:
//!
//! - The file is read with `fgets` into a 1024-byte buffer, so a "line" is at most 1023 bytes; the
//!   rest of a longer line is read as the next line. Each line is then a C string: it ends at the
//!   first NUL byte.
//! - A line whose first byte is `\n` or `#` is skipped (so `\r\n` and whitespace-only lines are
//!   *not* blank: they give `parse error`).
//! - A line starting with `[` is tried as `[%63s "%63[^"]"]` (group with id), then as `[%63[^]]]`
//!   (group). Either starts a new section. A failed `sscanf` may still have written the group
//!   buffer, which matters for the last section (see below).
//! - Any other line (and a `[` line that matched neither) is `" %63s = \"%1023[^\"]\""`, or failing
//!   that `" %63s = \"\""`. `sscanf` reports the first conversion even when the rest mismatches,
//!   so every line with a non-blank token is accepted: an unquoted value reads as `""`, a missing
//!   closing quote keeps the rest of the line (newline included), and `key="v"` is one token.
//!   Only a blank line gives `parse error`. A key before any section gives `no group defined`.
//! - Keys go into a per-section QDict (a repeated key replaces the value in place). The section is
//!   validated only when the *next* section header is read, or at end of file: group name, then
//!   `id`, then every key in QDict iteration order (hash bucket order, see [`qdict_order`]).
//! - An error found at end of file (in the last section) does not stop blkdebug's open at once;
//!   QEMU carries on with it pending. See [`ParsedConfig::pending_error`].

use std::collections::HashSet;

/// The two option groups a blkdebug config file may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    InjectError,
    SetState,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::InjectError => "inject-error",
            Group::SetState => "set-state",
        }
    }

    pub fn from_name(name: &str) -> Option<Group> {
        match name {
            "inject-error" => Some(Group::InjectError),
            "set-state" => Some(Group::SetState),
            _ => None,
        }
    }

    /// The keys QEMU's option list for this group declares, with their types.
    fn keys(self) -> &'static [(&'static str, OptType)] {
        match self {
            Group::InjectError => &[
                ("event", OptType::String),
                ("state", OptType::Number),
                ("iotype", OptType::String),
                ("errno", OptType::Number),
                ("sector", OptType::Number),
                ("once", OptType::Bool),
                ("immediately", OptType::Bool),
            ],
            Group::SetState => &[
                ("event", OptType::String),
                ("state", OptType::Number),
                ("new_state", OptType::Number),
            ],
        }
    }

    /// Whether `key` is one of this group's declared options.
    pub fn has_key(self, key: &str) -> bool {
        self.keys().iter().any(|(k, _)| *k == key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptType {
    String,
    Number,
    Bool,
}

/// One `[group]` / `[group "id"]` section, already validated as QEMU validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub group: Group,
    /// From the header, or from an `id = "..."` line, which overrides it.
    pub id: Option<String>,
    /// Keys in order of first appearance; a repeated key keeps its first position and its last
    /// value. `id` is not included.
    pub entries: Vec<(String, String)>,
}

impl Section {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The result of reading a config file that did not fail outright.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedConfig {
    /// Every section that passed validation, in file order.
    pub sections: Vec<Section>,
    /// The error of the last section, found at end of file. QEMU 10.0.2 does not fail the open
    /// there: it stores the error and goes on (the section itself is dropped). The open then
    /// fails with this message at the end, or at the first later step that reports an error
    /// through a fresh error variable (rule building, child open). A later step that sets an
    /// error *directly* (option-tree sections, alignment limits) trips QEMU's
    /// `assert(*errp == NULL)` and aborts instead; see `rules::OpenFailure::ErrpAssertion`.
    pub pending_error: Option<String>,
}

/// The message QEMU prints after `can't open device X: ` for a file that fails, or the sections.
///
/// An end-of-file error ([`ParsedConfig::pending_error`]) is returned as `Err` too: that is what
/// QEMU reports when the config file is the only source of errors.
pub fn parse(text: &[u8]) -> Result<Vec<Section>, String> {
    let parsed = parse_config(text)?;
    match parsed.pending_error {
        Some(e) => Err(e),
        None => Ok(parsed.sections),
    }
}

/// Like [`parse`], but keeps an end-of-file error apart so that the open sequence can reproduce
/// what QEMU does with it.
pub fn parse_config(text: &[u8]) -> Result<ParsedConfig, String> {
    let mut ids = SectionIds::default();
    let mut sections = Vec::new();
    // QEMU's `group` buffer: written by every sscanf that gets that far, even a failed one.
    let mut group: Vec<u8> = Vec::new();
    let mut prev_group: Vec<u8> = Vec::new();
    let mut current: Option<RawSection> = None;

    for raw_line in fgets_lines(text) {
        if raw_line[0] == b'\n' || raw_line[0] == b'#' {
            continue;
        }
        // sscanf sees a C string.
        let line = match raw_line.iter().position(|&b| b == 0) {
            Some(nul) => &raw_line[..nul],
            None => raw_line,
        };
        if raw_line[0] == b'[' {
            let mut started = None;
            let (g, id) = scan_group_with_id(line);
            if let Some(g) = g {
                group = g;
            }
            if let Some(id) = id {
                let mut s = RawSection::default();
                s.put(b"id", id);
                started = Some(s);
            } else if let Some(g) = scan_group(line) {
                group = g;
                started = Some(RawSection::default());
            }
            if let Some(new) = started {
                if let Some(prev) = current.take() {
                    sections.push(finish_section(&prev_group, prev, &mut ids)?);
                }
                prev_group = group.clone();
                current = Some(new);
                continue;
            }
        }
        let Some((key, value)) = scan_key_value(line) else {
            return Err("parse error".to_string());
        };
        match current.as_mut() {
            Some(s) => s.put(&key, value),
            None => return Err("no group defined".to_string()),
        }
    }
    // At end of file QEMU passes `group`, not `prev_group`: after a stray `[]` line that is "]".
    let pending_error = match current {
        Some(last) => match finish_section(&group, last, &mut ids) {
            Ok(s) => {
                sections.push(s);
                None
            }
            Err(e) => Some(e),
        },
        None => None,
    };
    Ok(ParsedConfig {
        sections,
        pending_error,
    })
}

/// Splits the file as `fgets(buf, 1024, fp)` does: through each `\n`, at most 1023 bytes.
fn fgets_lines(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    const MAX: usize = 1023;
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let limit = rest.len().min(MAX);
        let end = match rest[..limit].iter().position(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None => limit,
        };
        let (line, tail) = rest.split_at(end);
        rest = tail;
        Some(line)
    })
}

/// C `isspace` in the C locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn skip_space(s: &[u8], mut pos: usize) -> usize {
    while pos < s.len() && is_space(s[pos]) {
        pos += 1;
    }
    pos
}

/// `%Ns`: skips blanks, then takes 1..=max non-blank bytes. `None` at end of input.
fn scan_word(s: &[u8], pos: usize, max: usize) -> Option<(Vec<u8>, usize)> {
    let start = skip_space(s, pos);
    let mut end = start;
    while end < s.len() && end - start < max && !is_space(s[end]) {
        end += 1;
    }
    (end > start).then(|| (s[start..end].to_vec(), end))
}

/// `%N[^c]`: takes 1..=max bytes other than `stop`, no blank skipping.
fn scan_until(s: &[u8], pos: usize, max: usize, stop: u8) -> Option<(Vec<u8>, usize)> {
    let mut end = pos;
    while end < s.len() && end - pos < max && s[end] != stop {
        end += 1;
    }
    (end > pos).then(|| (s[pos..end].to_vec(), end))
}

/// `sscanf(line, "[%63s \"%63[^\"]\"]", group, id)`: what it wrote to `group` and `id`.
/// Only both together (a return of 2) make a section header.
fn scan_group_with_id(line: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    if line.first() != Some(&b'[') {
        return (None, None);
    }
    let Some((group, pos)) = scan_word(line, 1, 63) else {
        return (None, None);
    };
    let pos = skip_space(line, pos);
    if line.get(pos) != Some(&b'"') {
        return (Some(group), None);
    }
    // Whatever follows the id (closing quote, `]`) is not checked: the count is already 2.
    let id = scan_until(line, pos + 1, 63, b'"').map(|(id, _)| id);
    (Some(group), id)
}

/// `sscanf(line, "[%63[^]]]", group) == 1`; the closing `]` is not needed for that.
fn scan_group(line: &[u8]) -> Option<Vec<u8>> {
    if line.first() != Some(&b'[') {
        return None;
    }
    scan_until(line, 1, 63, b']').map(|(g, _)| g)
}

/// `" %63s = \"%1023[^\"]\""` (2 conversions) or `" %63s = \"\""` (1 conversion, value "").
fn scan_key_value(line: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (key, pos) = scan_word(line, 0, 63)?;
    let pos = skip_space(line, pos);
    if line.get(pos) != Some(&b'=') {
        return Some((key, Vec::new()));
    }
    let pos = skip_space(line, pos + 1);
    if line.get(pos) != Some(&b'"') {
        return Some((key, Vec::new()));
    }
    let value = scan_until(line, pos + 1, 1023, b'"')
        .map(|(v, _)| v)
        .unwrap_or_default();
    Some((key, value))
}

/// A section's QDict before validation: keys in insertion order, replaced in place.
#[derive(Default)]
struct RawSection {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawSection {
    fn put(&mut self, key: &[u8], value: Vec<u8>) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_vec(), value)),
        }
    }
}

/// Ids already taken, per group (QEMU's option lists are global per group).
#[derive(Default, Debug, Clone)]
pub(crate) struct SectionIds {
    taken: HashSet<(Group, String)>,
}

impl SectionIds {
    /// `qemu_opts_create(list, id, fail_if_exists=1)`: the id checks, in QEMU's order.
    pub(crate) fn claim(&mut self, group: Group, id: &str) -> Result<(), String> {
        if !id_wellformed(id) {
            return Err("Parameter 'id' expects an identifier\n\
                 Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."
                .to_string());
        }
        if !self.taken.insert((group, id.to_string())) {
            return Err(format!("Duplicate ID '{id}' for {}", group.name()));
        }
        Ok(())
    }
}

/// Lossy: QEMU would print the raw bytes, but our messages are `String`s.
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// QEMU's section callback: group lookup, then the id, then each key in QDict order.
fn finish_section(group: &[u8], raw: RawSection, ids: &mut SectionIds) -> Result<Section, String> {
    let group_name = text(group);
    let group = Group::from_name(&group_name)
        .ok_or_else(|| format!("There is no option group '{group_name}'"))?;
    let entries: Vec<(String, String)> = raw
        .entries
        .into_iter()
        .map(|(k, v)| (text(&k), text(&v)))
        .collect();
    let id = entries
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone());
    if let Some(id) = &id {
        ids.claim(group, id)?;
    }
    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    for i in qdict_order(&keys) {
        let (k, v) = &entries[i];
        if k != "id" {
            check_option(group, k, v)?;
        }
    }
    Ok(Section {
        group,
        id,
        entries: entries.into_iter().filter(|(k, _)| k != "id").collect(),
    })
}

/// `qemu_opt_set` for one key of a group: unknown key, then the typed parse of the value.
pub(crate) fn check_option(group: Group, key: &str, value: &str) -> Result<(), String> {
    let Some((_, ty)) = group.keys().iter().find(|(k, _)| *k == key) else {
        return Err(format!("Invalid parameter '{key}'"));
    };
    match ty {
        OptType::String => Ok(()),
        OptType::Number => parse_number(key, value).map(|_| ()),
        OptType::Bool => parse_bool(key, value).map(|_| ()),
    }
}

pub(crate) use crate::block::options::{id_wellformed, parse_bool, parse_number, qdict_order};

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text.as_bytes()).expect_err("expected an error")
    }

    fn ok(text: &str) -> Vec<Section> {
        parse(text.as_bytes()).expect("expected success")
    }

    fn sec(group: Group, id: Option<&str>, entries: &[(&str, &str)]) -> Section {
        Section {
            group,
            id: id.map(str::to_string),
            entries: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn simple_sections() {
        assert_eq!(
            ok(
                "[inject-error]\nevent = \"read_aio\"\nerrno = \"28\"\n\n# c\n[set-state \"s1\"]\n  event = \"write_aio\"\n"
            ),
            vec![
                sec(
                    Group::InjectError,
                    None,
                    &[("event", "read_aio"), ("errno", "28")]
                ),
                sec(Group::SetState, Some("s1"), &[("event", "write_aio")]),
            ]
        );
        assert_eq!(ok(""), vec![]);
        assert_eq!(ok("\n\n# only comments\n"), vec![]);
        assert_eq!(
            ok("[inject-error]\n"),
            vec![sec(Group::InjectError, None, &[])]
        );
    }

    #[test]
    fn line_syntax_quirks() {
        // Tabs are blanks; CRLF is fine after a quoted value or a header.
        assert_eq!(
            ok("[inject-error]\r\n\tevent\t=\t\"read_aio\"\r\n"),
            vec![sec(Group::InjectError, None, &[("event", "read_aio")])]
        );
        // Unquoted value: read as "".
        assert_eq!(
            ok("[inject-error]\nevent = read_aio\n"),
            vec![sec(Group::InjectError, None, &[("event", "")])]
        );
        // No closing quote: the value runs to the end of the line, newline included.
        assert_eq!(
            ok("[inject-error]\nevent = \"read_aio\n"),
            vec![sec(Group::InjectError, None, &[("event", "read_aio\n")])]
        );
        // ...and to the end of the file when there is no newline.
        assert_eq!(
            ok("[inject-error]\nevent = \"read_aio"),
            vec![sec(Group::InjectError, None, &[("event", "read_aio")])]
        );
        // Last key wins, in the first key's position.
        assert_eq!(
            ok("[inject-error]\nevent = \"a\"\nerrno = \"1\"\nevent = \"b\"\n"),
            vec![sec(
                Group::InjectError,
                None,
                &[("event", "b"), ("errno", "1")]
            )]
        );
        // A NUL ends the line for sscanf.
        assert_eq!(
            ok("[inject-error]\0junk\nevent = \"read\0_aio\"\n"),
            vec![sec(Group::InjectError, None, &[("event", "read")])]
        );
        // Anything after the id's closing quote is ignored; so is a missing `]`.
        assert_eq!(
            ok("[inject-error \"id1\" ]\n[set-state \"id2\"\n[ inject-error \"x\"]\n"),
            vec![
                sec(Group::InjectError, Some("id1"), &[]),
                sec(Group::SetState, Some("id2"), &[]),
                sec(Group::InjectError, Some("x"), &[]),
            ]
        );
        // Text after `]` is ignored.
        assert_eq!(
            ok("[inject-error]junk\n"),
            vec![sec(Group::InjectError, None, &[])]
        );
        // An `id` key sets (or overrides) the section id.
        assert_eq!(
            ok("[inject-error \"a\"]\nid = \"b\"\n"),
            vec![sec(Group::InjectError, Some("b"), &[])]
        );
    }

    #[test]
    fn long_lines_are_split_at_1023_bytes() {
        // 1023 bytes then "\n": the "\n" is read as its own, skipped, line.
        let fits = format!("[inject-error]\n#{}\n", "a".repeat(1022));
        assert_eq!(ok(&fits), vec![sec(Group::InjectError, None, &[])]);
        // Longer: the tail of the comment becomes a key line.
        let long = format!("[inject-error]\n#{}\n", "a".repeat(1030));
        assert_eq!(err(&long), "Invalid parameter 'aaaaaaaa'");
        let tab = format!("[inject-error]\n#{}\t#\n", "a".repeat(1022));
        assert_eq!(err(&tab), "Invalid parameter '#'");
    }

    #[test]
    fn error_messages() {
        let cases: &[(&str, &str)] = &[
            ("[bogus]\n", "There is no option group 'bogus'"),
            (
                "[Inject-Error]\n",
                "There is no option group 'Inject-Error'",
            ),
            (
                "[ inject-error]\n",
                "There is no option group ' inject-error'",
            ),
            (
                "[inject-error ]\n",
                "There is no option group 'inject-error '",
            ),
            (
                "[inject-error \"\"]\n",
                "There is no option group 'inject-error \"\"'",
            ),
            ("[\n", "There is no option group '\n'"),
            (
                "[inject-error\nevent = \"x\"\n",
                "There is no option group 'inject-error\n'",
            ),
            // The stray `[]` line is a key of the current section, but the failed sscanf set
            // the group buffer to "]", and that is what is checked at end of file.
            ("[inject-error]\n[]\n", "There is no option group ']'"),
            (
                "[inject-error]\n[]\n[set-state]\n",
                "Invalid parameter '[]'",
            ),
            ("[]\n", "no group defined"),
            ("event = \"read_aio\"\n", "no group defined"),
            ("garbage line\n", "no group defined"),
            ("\t[inject-error]\n", "no group defined"),
            ("[inject-error]\n   \n", "parse error"),
            ("[inject-error]\r\n\r\n", "parse error"),
            ("[inject-error]\n\0abc\n", "parse error"),
            ("\0[inject-error]\n", "parse error"),
            ("[inject-error]\nfoo = \"1\"\n", "Invalid parameter 'foo'"),
            (
                "[inject-error]\nevent=\"read_aio\"\n",
                "Invalid parameter 'event=\"read_aio\"'",
            ),
            (
                "[inject-error]\nevent = \"read_aio\nfoo\"\n",
                "Invalid parameter 'foo\"'",
            ),
            (
                "[set-state]\niotype = \"read\"\n",
                "Invalid parameter 'iotype'",
            ),
            ("[set-state]\nonce = \"on\"\n", "Invalid parameter 'once'"),
            (
                "[inject-error]\nnew_state = \"1\"\n",
                "Invalid parameter 'new_state'",
            ),
            (
                "[inject-error]\nerrno = read_aio\n",
                "Parameter 'errno' expects a number",
            ),
            (
                "[inject-error]\nerrno = \"28 \"\n",
                "Parameter 'errno' expects a number",
            ),
            (
                "[inject-error]\nstate = \"08\"\n",
                "Parameter 'state' expects a number",
            ),
            (
                "[set-state]\nnew_state = \"x\"\n",
                "Parameter 'new_state' expects a number",
            ),
            (
                "[inject-error]\nsector = \"99999999999999999999\"\n",
                "Value '99999999999999999999' is too large for parameter 'sector'",
            ),
            (
                "[inject-error]\nonce = \"TRUE\"\n",
                "Parameter 'once' expects 'on' or 'off'",
            ),
            (
                "[inject-error]\nimmediately = \"1\"\n",
                "Parameter 'immediately' expects 'on' or 'off'",
            ),
            (
                "[inject-error \"id1\"]\n[inject-error \"id1\"]\n",
                "Duplicate ID 'id1' for inject-error",
            ),
            (
                "[inject-error \"id1\"]\n[inject-error]\nid = \"id1\"\n",
                "Duplicate ID 'id1' for inject-error",
            ),
            (
                "[inject-error \"1a\"]\n",
                "Parameter 'id' expects an identifier\n\
                 Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
            ),
            (
                "[inject-error]\nid = \"\"\n",
                "Parameter 'id' expects an identifier\n\
                 Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&err(input), want, "input {input:?}");
        }
        let g70 = "g".repeat(70);
        let g63 = "g".repeat(63);
        assert_eq!(
            err(&format!("[{g70}]\n")),
            format!("There is no option group '{g63}'")
        );
        assert_eq!(
            err(&format!("[{g70} \"id\"]\n")),
            format!("There is no option group '{g63}'")
        );
        assert_eq!(
            err(&format!("[inject-error]\n{g70} = \"x\"\n")),
            format!("Invalid parameter '{g63}'")
        );
    }

    #[test]
    fn same_id_in_different_groups_is_fine() {
        assert_eq!(ok("[inject-error \"id1\"]\n[set-state \"id1\"]\n").len(), 2);
    }

    #[test]
    fn which_error_wins() {
        // Within a section: QDict order, not file order ("bar" hashes before "foo").
        assert_eq!(
            err("[inject-error]\nfoo = \"x\"\nbar = \"y\"\n"),
            "Invalid parameter 'bar'"
        );
        assert_eq!(
            err("[inject-error]\nerrno = \"x\"\nonce = \"x\"\n"),
            "Parameter 'once' expects 'on' or 'off'"
        );
        assert_eq!(
            err("[inject-error]\nonce = \"x\"\nd = \"1\"\n"),
            "Invalid parameter 'd'"
        );
        // Same bucket: the later key is checked first; a repeated key keeps its place.
        assert_eq!(
            err("[inject-error]\nsector = \"x\"\nb = \"1\"\n"),
            "Invalid parameter 'b'"
        );
        assert_eq!(
            err("[inject-error]\nb = \"1\"\nsector = \"x\"\nb = \"2\"\n"),
            "Parameter 'sector' expects a number"
        );
        // The group is checked before anything in the section; the id before the keys.
        assert_eq!(
            err("[bogus \"1x\"]\nfoo = \"1\"\n"),
            "There is no option group 'bogus'"
        );
        assert!(err("[inject-error \"1x\"]\nfoo = \"1\"\n").starts_with("Parameter 'id'"));
        // A section is only checked when the next one starts: a later line error comes first.
        assert_eq!(err("[bogus]\nevent = \"x\"\n   \n"), "parse error");
        assert_eq!(
            err("[bogus]\n[inject-error]\n   \n"),
            "There is no option group 'bogus'"
        );
    }

    #[test]
    fn last_section_error_is_pending() {
        let p = parse_config(b"[inject-error]\nevent = \"read_aio\"\n[set-state]\nfoo = \"1\"\n")
            .unwrap();
        assert_eq!(p.pending_error.as_deref(), Some("Invalid parameter 'foo'"));
        assert_eq!(
            p.sections,
            vec![sec(Group::InjectError, None, &[("event", "read_aio")])]
        );
        // Not the last section: the error is immediate.
        assert_eq!(
            parse_config(b"[set-state]\nfoo = \"1\"\n[inject-error]\n"),
            Err("Invalid parameter 'foo'".to_string())
        );
        let p = parse_config(b"[set-state]\n[inject-error]\n").unwrap();
        assert_eq!(p.pending_error, None);
        assert_eq!(
            parse_config(b"[set-state]\nfoo = \"1\"\n   \n[inject-error]\n"),
            Err("parse error".to_string())
        );
    }

    #[test]
    fn numbers() {
        let n = |s: &str| parse_number("errno", s);
        assert_eq!(n("28"), Ok(28));
        assert_eq!(n("0x1c"), Ok(28));
        assert_eq!(n("0X1C"), Ok(28));
        assert_eq!(n("010"), Ok(8));
        assert_eq!(n("0"), Ok(0));
        assert_eq!(n(" \t28"), Ok(28));
        assert_eq!(n("+28"), Ok(28));
        assert_eq!(n("-5"), Ok(5u64.wrapping_neg()));
        assert_eq!(n("-0x1c"), Ok(28u64.wrapping_neg()));
        assert_eq!(n("18446744073709551615"), Ok(u64::MAX));
        let nan = Err("Parameter 'errno' expects a number".to_string());
        for bad in [
            "", " ", "x", "08", "0x", "0xg", "28 ", "1.5", "--1", "- 1", "1e3",
        ] {
            assert_eq!(n(bad), nan, "{bad:?}");
        }
        assert_eq!(
            n("18446744073709551616"),
            Err("Value '18446744073709551616' is too large for parameter 'errno'".to_string())
        );
        assert_eq!(n("99999999999999999999x"), nan);
        assert_eq!(
            n("-99999999999999999999"),
            Err("Value '-99999999999999999999' is too large for parameter 'errno'".to_string())
        );
    }

    #[test]
    fn bools() {
        for t in ["on", "yes", "true", "y"] {
            assert_eq!(parse_bool("once", t), Ok(true));
        }
        for f in ["off", "no", "false", "n"] {
            assert_eq!(parse_bool("once", f), Ok(false));
        }
        for bad in ["ON", "True", "1", "0", "", " on"] {
            assert_eq!(
                parse_bool("once", bad),
                Err("Parameter 'once' expects 'on' or 'off'".to_string())
            );
        }
    }

    #[test]
    fn ids() {
        assert!(id_wellformed("a"));
        assert!(id_wellformed("inject-error.0"));
        assert!(id_wellformed("A_b-c.9"));
        assert!(!id_wellformed(""));
        assert!(!id_wellformed("1a"));
        assert!(!id_wellformed("a b"));
        assert!(!id_wellformed("_a"));
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn never_panics_on_config_like_text(
                lines in proptest::collection::vec(
                    "(\\[|#|\n| |\t|\"|=|inject-error|set-state|event|errno|once|read_aio|x|\\]|\r|\0){0,12}",
                    0..20,
                )
            ) {
                let text = lines.join("\n");
                let _ = parse(text.as_bytes());
            }
        }
    }
}
