//! blkdebug rule specifications, built from config-file sections and from the `inject-error` /
//! `set-state` option trees (json:, --image-opts), with QEMU 10.0.2's messages and error order.
//!
//! QEMU's sequence (`read_config`), which [`read_config`] follows:
//! 1. the config file is parsed and each section validated (unknown keys, typed values, ids);
//! 2. the option trees are split into sections and validated the same way, `inject-error` first;
//! 3. rules are built: every `inject-error` section (config file first, then options), then every
//!    `set-state` section. Only here are event and iotype names checked.
//!
//! The first error wins, except for the config file's end-of-file error (see
//! [`ParsedConfig::pending_error`](super::config::ParsedConfig::pending_error)).

use serde_json::Value;

use super::config::{self, Group, Section, SectionIds, check_option, parse_bool, parse_number};
use super::events::{Event, IoType, IoTypeMask};

/// One rule as QEMU's `add_rule` stores it. The integer types are QEMU's: values are parsed as
/// `u64` and then truncated (`state`, `errno`, `new_state` are C `int`; the sector is `int64_t`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleSpec {
    InjectError {
        event: Event,
        /// 0 = any state. Compared with the node state as an `int`.
        state: i32,
        iotype_mask: IoTypeMask,
        /// The request fails with `-errno`. 0 lets the request through; a negative value (from
        /// `errno=-5`) makes the request return +5, which callers treat as success.
        errno: i32,
        /// Byte offset, `sector * 512` with wrapping multiplication; -1 = any offset.
        offset: i64,
        once: bool,
        immediately: bool,
    },
    SetState {
        event: Event,
        /// 0 = any state.
        state: i32,
        new_state: i32,
    },
}

impl RuleSpec {
    pub fn event(&self) -> Event {
        match self {
            RuleSpec::InjectError { event, .. } | RuleSpec::SetState { event, .. } => *event,
        }
    }
}

/// QEMU's default errno for an inject-error rule (EIO).
pub const DEFAULT_ERRNO: i32 = 5;

/// What QEMU prints (after `<program>: `) when an error is set twice on one error variable; it
/// then aborts (SIGABRT, exit status 134), without the `can't open device` line.
pub const ERRP_ASSERTION: &str = "util/error.c:68: error_setv: Assertion `*errp == NULL' failed.";

/// Why blkdebug's rule setup failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenFailure {
    /// The open fails with this message.
    Error(String),
    /// QEMU hits `assert(*errp == NULL)` (see [`ERRP_ASSERTION`]) and aborts.
    ErrpAssertion,
}

/// The rules, in QEMU's `add_rule` order, and a config-file error still pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSet {
    /// All inject-error rules (config file, then options, each in definition order), then all
    /// set-state rules in the same way. QEMU inserts each rule at the head of its event's list.
    pub rules: Vec<RuleSpec>,
    /// When set, the open must still fail with this message once the remaining open steps have
    /// run, and any of those steps that sets an error itself (alignment limits) must instead be
    /// treated as [`OpenFailure::ErrpAssertion`]. A child-open failure still reports this message.
    pub pending_error: Option<String>,
}

/// Builds rules from config sections (inject-error sections first, then set-state), as QEMU's
/// `add_rule`: `Missing event name for rule`, `invalid parameter value: <name>` for an unknown
/// event or iotype. Values are validated again, for sections not made by `config::parse`.
pub fn rules_from_sections(sections: &[Section]) -> Result<Vec<RuleSpec>, String> {
    for s in sections {
        let keys: Vec<&str> = s.entries.iter().map(|(k, _)| k.as_str()).collect();
        for i in config::qdict_order(&keys) {
            let (k, v) = &s.entries[i];
            check_option(s.group, k, v)?;
        }
    }
    build_rules(sections.iter())
}

/// Rules from the `inject-error` and `set-state` option values alone (no config file).
/// The values are nested as the caller received them: `{"0": {"event": "l2_load"}}`, a JSON array
/// of objects, or `{"event": "l2_load"}` for the un-indexed single-rule form.
///
/// A value that is not a non-empty object or array (a string, `[]`, `{}`) is not consumed by
/// blkdebug at all; see [`option_left_unconsumed`].
pub fn rules_from_options(
    inject_error: Option<&Value>,
    set_state: Option<&Value>,
) -> Result<Vec<RuleSpec>, String> {
    match read_config(None, inject_error, set_state) {
        Ok(set) => Ok(set.rules),
        Err(OpenFailure::Error(e)) => Err(e),
        // Only a pending config-file error can lead to the assertion.
        Err(OpenFailure::ErrpAssertion) => unreachable!("no config file"),
    }
}

/// The option-tree sections, validated as QEMU's `qemu_config_parse_qdict` does.
pub fn sections_from_options(
    inject_error: Option<&Value>,
    set_state: Option<&Value>,
) -> Result<Vec<Section>, String> {
    sections_from_options_with_ids(inject_error, set_state, &mut SectionIds::default())
}

/// True when QEMU leaves the option in place instead of reading rules from it: anything but a
/// non-empty object or array (QEMU only sees the flattened `inject-error.*` keys). The generic
/// open code then fails with `Block protocol 'blkdebug' doesn't support the option 'inject-error'`
/// after the driver's open succeeded.
pub fn option_left_unconsumed(value: &Value) -> bool {
    !is_nonempty_container(value)
}

/// The whole rule setup of blkdebug's open: config file text (already read), then the option
/// trees, then rule building, with QEMU's error precedence.
pub fn read_config(
    config: Option<&[u8]>,
    inject_error: Option<&Value>,
    set_state: Option<&Value>,
) -> Result<RuleSet, OpenFailure> {
    let parsed = match config {
        Some(text) => config::parse_config(text).map_err(OpenFailure::Error)?,
        None => config::ParsedConfig {
            sections: Vec::new(),
            pending_error: None,
        },
    };
    let pending = parsed.pending_error;
    let mut ids = SectionIds::default();
    for s in &parsed.sections {
        if let Some(id) = &s.id {
            // Already unique and well-formed: this only records them for the options' check.
            let _ = ids.claim(s.group, id);
        }
    }
    let opt_sections = match sections_from_options_with_ids(inject_error, set_state, &mut ids) {
        Ok(s) => s,
        // QEMU sets this error on the variable still holding the pending one.
        Err(_) if pending.is_some() => return Err(OpenFailure::ErrpAssertion),
        Err(e) => return Err(OpenFailure::Error(e)),
    };
    // Rule building reports through a fresh error variable that is then dropped in favour of a
    // pending one.
    let rules = build_rules(parsed.sections.iter().chain(opt_sections.iter()))
        .map_err(|e| OpenFailure::Error(pending.clone().unwrap_or(e)))?;
    Ok(RuleSet {
        rules,
        pending_error: pending,
    })
}

fn build_rules<'a>(
    sections: impl Iterator<Item = &'a Section> + Clone,
) -> Result<Vec<RuleSpec>, String> {
    let mut rules = Vec::new();
    for group in [Group::InjectError, Group::SetState] {
        for s in sections.clone().filter(|s| s.group == group) {
            rules.push(add_rule(s)?);
        }
    }
    Ok(rules)
}

/// Numbers were validated with the section, so parsing cannot fail here.
fn number(s: &Section, key: &str, default: u64) -> u64 {
    s.get(key)
        .map_or(Ok(default), |v| parse_number(key, v))
        .unwrap_or(default)
}

fn flag(s: &Section, key: &str) -> bool {
    s.get(key)
        .map_or(Ok(false), |v| parse_bool(key, v))
        .unwrap_or(false)
}

/// QEMU's `add_rule` for one section.
fn add_rule(s: &Section) -> Result<RuleSpec, String> {
    let name = s
        .get("event")
        .ok_or_else(|| "Missing event name for rule".to_string())?;
    let event = Event::from_name(name).ok_or_else(|| format!("invalid parameter value: {name}"))?;
    // C `int` fields: truncation is what QEMU does.
    let state = number(s, "state", 0) as i32;
    match s.group {
        Group::InjectError => {
            let errno = number(s, "errno", DEFAULT_ERRNO as u64) as i32;
            let sector = number(s, "sector", u64::MAX) as i64;
            let offset = if sector == -1 {
                -1
            } else {
                sector.wrapping_mul(512)
            };
            let iotype_mask = match s.get("iotype") {
                None => IoTypeMask::DEFAULT,
                Some(v) => IoTypeMask::only(
                    IoType::from_name(v).ok_or_else(|| format!("invalid parameter value: {v}"))?,
                ),
            };
            Ok(RuleSpec::InjectError {
                event,
                state,
                iotype_mask,
                errno,
                offset,
                once: flag(s, "once"),
                immediately: flag(s, "immediately"),
            })
        }
        Group::SetState => Ok(RuleSpec::SetState {
            event,
            state,
            new_state: number(s, "new_state", 0) as i32,
        }),
    }
}

/// A flattened QDict value. Only scalars become option values; `null` and empty containers are
/// kept (QEMU's flattening leaves them unflattened) and are silently skipped as values.
#[derive(Debug, Clone, PartialEq)]
enum Leaf {
    Scalar(String),
    Null,
    EmptyDict,
    EmptyList,
}

/// A QDict: insertion order is kept so that [`config::qdict_order`] gives QEMU's iteration.
#[derive(Debug, Default, Clone)]
struct QDict {
    entries: Vec<(String, Leaf)>,
}

impl QDict {
    fn put(&mut self, key: String, value: Leaf) {
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn order(&self) -> Vec<usize> {
        let keys: Vec<&str> = self.entries.iter().map(|(k, _)| k.as_str()).collect();
        config::qdict_order(&keys)
    }

    fn first_key(&self) -> Option<&str> {
        self.order().first().map(|&i| self.entries[i].0.as_str())
    }

    fn get(&self, key: &str) -> Option<&Leaf> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn remove(&mut self, key: &str) -> Option<Leaf> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    /// `qdict_extract_subqdict`: moves `prefix*` keys out, in iteration order, prefix stripped.
    fn extract(&mut self, prefix: &str) -> QDict {
        let mut out = QDict::default();
        for i in self.order() {
            let (k, v) = &self.entries[i];
            if let Some(rest) = k.strip_prefix(prefix) {
                out.put(rest.to_string(), v.clone());
            }
        }
        self.entries.retain(|(k, _)| !k.starts_with(prefix));
        out
    }
}

fn is_nonempty_container(v: &Value) -> bool {
    match v {
        Value::Object(m) => !m.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => false,
    }
}

fn leaf(v: &Value) -> Leaf {
    match v {
        Value::String(s) => Leaf::Scalar(s.clone()),
        Value::Number(n) => Leaf::Scalar(qnum_to_string(n)),
        Value::Bool(b) => Leaf::Scalar(if *b { "on" } else { "off" }.to_string()),
        Value::Null => Leaf::Null,
        Value::Object(_) => Leaf::EmptyDict,
        Value::Array(_) => Leaf::EmptyList,
    }
}

/// `qdict_flatten`: non-empty objects and arrays become `prefix.key` entries, objects walked in
/// QDict order (their JSON order taken as insertion order).
fn flatten(v: &Value, prefix: &str, out: &mut QDict) {
    let mut visit = |key: String, child: &Value| {
        if is_nonempty_container(child) {
            flatten(child, &key, out);
        } else {
            out.put(key, leaf(child));
        }
    };
    match v {
        Value::Object(m) => {
            let keys: Vec<&str> = m.keys().map(String::as_str).collect();
            for i in config::qdict_order(&keys) {
                let k = keys[i];
                visit(format!("{prefix}.{k}"), &m[k]);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                visit(format!("{prefix}.{i}"), child);
            }
        }
        _ => {}
    }
}

/// `qemu_opts_absorb_qdict`: takes the group's known keys out of `d` (QDict order), checking
/// each value. Keys with non-scalar values are taken and ignored.
fn absorb(group: Group, d: &mut QDict) -> Result<Vec<(String, String)>, String> {
    let mut taken = Vec::new();
    for i in d.order() {
        let (k, v) = &d.entries[i];
        if !group.has_key(k) {
            continue;
        }
        if let Leaf::Scalar(s) = v {
            check_option(group, k, s)?;
            taken.push((k.clone(), s.clone()));
        }
    }
    d.entries.retain(|(k, _)| !group.has_key(k));
    Ok(taken)
}

fn sections_from_options_with_ids(
    inject_error: Option<&Value>,
    set_state: Option<&Value>,
    ids: &mut SectionIds,
) -> Result<Vec<Section>, String> {
    let mut out = Vec::new();
    for (group, value) in [
        (Group::InjectError, inject_error),
        (Group::SetState, set_state),
    ] {
        let Some(v) = value.filter(|v| is_nonempty_container(v)) else {
            continue;
        };
        // The driver's flat options hold `<group>.<path>` keys; extracting them re-inserts them
        // in QDict order, which can matter for keys sharing a hash bucket.
        let name = group.name();
        let mut flat = QDict::default();
        flatten(v, name, &mut flat);
        let sub = flat.extract(&format!("{name}."));
        out.extend(group_sections(group, sub, ids)?);
    }
    Ok(out)
}

/// QEMU's `config_parse_qdict_section` for one group.
fn group_sections(
    group: Group,
    mut sub: QDict,
    ids: &mut SectionIds,
) -> Result<Vec<Section>, String> {
    let name = group.name();
    let orig = sub.len();
    if orig == 0 {
        return Ok(Vec::new());
    }
    let entries = absorb(group, &mut sub)?;
    if sub.len() == 0 {
        // Un-indexed keys (`inject-error.event=...`): one rule, without an id.
        return Ok(vec![Section {
            group,
            id: None,
            entries,
        }]);
    }
    if sub.len() < orig {
        let key = sub.first_key().unwrap_or_default();
        return Err(format!("Unknown option '{key}' for [{name}]"));
    }
    // `qdict_array_split`: elements 0, 1, ... while exactly one of `N` and `N.*` exists.
    let mut elements = Vec::new();
    for i in 0u32.. {
        let index = i.to_string();
        let prefix = format!("{index}.");
        let single = sub.get(&index).is_some();
        let nested = sub.entries.iter().any(|(k, _)| k.starts_with(&prefix));
        if single == nested {
            break;
        }
        if nested {
            elements.push(Some(sub.extract(&prefix)));
        } else {
            elements.push(match sub.remove(&index) {
                Some(Leaf::EmptyDict) => Some(QDict::default()),
                _ => None,
            });
        }
    }
    if let Some(key) = sub.first_key() {
        return Err(format!("Unused option '{key}' for [{name}]"));
    }
    let mut sections = Vec::new();
    for (i, element) in elements.into_iter().enumerate() {
        let Some(mut d) = element else {
            return Err(format!(
                "[{name}] section (index {i}) does not consist of keys"
            ));
        };
        let id = format!("{name}.{i}");
        ids.claim(group, &id)?;
        let entries = absorb(group, &mut d)?;
        if let Some(key) = d.first_key() {
            return Err(format!(
                "[{name}] section doesn't support the option '{key}'"
            ));
        }
        sections.push(Section {
            group,
            id: Some(id),
            entries,
        });
    }
    Ok(sections)
}

pub(crate) use crate::block::options::qnum_to_string;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::options::format_g17;
    use serde_json::json;

    fn inject(v: Value) -> Result<Vec<RuleSpec>, String> {
        rules_from_options(Some(&v), None)
    }

    fn inject_err(v: Value) -> String {
        inject(v).expect_err("expected an error")
    }

    fn cfg_rules(text: &str) -> Result<Vec<RuleSpec>, String> {
        rules_from_sections(&config::parse(text.as_bytes())?)
    }

    fn ie(event: Event) -> RuleSpec {
        RuleSpec::InjectError {
            event,
            state: 0,
            iotype_mask: IoTypeMask::DEFAULT,
            errno: DEFAULT_ERRNO,
            offset: -1,
            once: false,
            immediately: false,
        }
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(
            cfg_rules("[inject-error]\nevent = \"read_aio\"\n"),
            Ok(vec![ie(Event::ReadAio)])
        );
        assert_eq!(
            cfg_rules(
                "[inject-error]\nevent = \"l2_load\"\nstate = \"2\"\niotype = \"flush\"\n\
                 errno = \"0x1c\"\nsector = \"3\"\nonce = \"on\"\nimmediately = \"yes\"\n"
            ),
            Ok(vec![RuleSpec::InjectError {
                event: Event::L2Load,
                state: 2,
                iotype_mask: IoTypeMask::only(IoType::Flush),
                errno: 28,
                offset: 1536,
                once: true,
                immediately: true,
            }])
        );
        assert_eq!(
            cfg_rules("[set-state]\nevent = \"write_aio\"\nstate = \"1\"\nnew_state = \"2\"\n"),
            Ok(vec![RuleSpec::SetState {
                event: Event::WriteAio,
                state: 1,
                new_state: 2
            }])
        );
        // new_state defaults to 0.
        assert_eq!(
            cfg_rules("[set-state]\nevent = \"none\"\n"),
            Ok(vec![RuleSpec::SetState {
                event: Event::None,
                state: 0,
                new_state: 0
            }])
        );
    }

    #[test]
    fn c_integer_truncation() {
        let one = |text: &str| cfg_rules(text).unwrap().remove(0);
        let RuleSpec::InjectError {
            errno,
            state,
            offset,
            ..
        } = one(
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"-5\"\nstate = \"4294967297\"\n\
             sector = \"36028797018963968\"\n",
        )
        else {
            panic!()
        };
        // Observed: errno=-5 reads succeed, state 2^32+1 matches state 1, sector 2^55 hits 0.
        assert_eq!((errno, state, offset), (-5, 1, 0));
        let RuleSpec::InjectError { errno, offset, .. } =
            one("[inject-error]\nevent = \"read_aio\"\nerrno = \"4294967324\"\nsector = \"-1\"\n")
        else {
            panic!()
        };
        assert_eq!((errno, offset), (28, -1));
        let RuleSpec::InjectError { offset, .. } =
            one("[inject-error]\nevent = \"read_aio\"\nsector = \"-2\"\n")
        else {
            panic!()
        };
        assert_eq!(offset, -1024);
    }

    #[test]
    fn build_errors() {
        let cases: &[(&str, &str)] = &[
            ("[inject-error]\n", "Missing event name for rule"),
            (
                "[set-state]\nstate = \"1\"\n",
                "Missing event name for rule",
            ),
            (
                "[inject-error]\nevent = \"bogus\"\n",
                "invalid parameter value: bogus",
            ),
            (
                "[inject-error]\nevent = read_aio\n",
                "invalid parameter value: ",
            ),
            (
                "[inject-error]\nevent = \"READ_AIO\"\n",
                "invalid parameter value: READ_AIO",
            ),
            (
                "[inject-error]\nevent = \"l1_grow.alloc_table\"\n",
                "invalid parameter value: l1_grow.alloc_table",
            ),
            (
                "[inject-error]\nevent = \"read_aio\n",
                "invalid parameter value: read_aio\n",
            ),
            (
                "[inject-error]\nevent = \"read_aio\"\niotype = \"Read\"\n",
                "invalid parameter value: Read",
            ),
            (
                "[inject-error]\nevent = \"read_aio\"\niotype = \"\"\n",
                "invalid parameter value: ",
            ),
            // Inject-error rules are built before set-state rules, whatever the file order.
            (
                "[set-state]\nevent = \"bad1\"\n[inject-error]\nevent = \"bad2\"\n",
                "invalid parameter value: bad2",
            ),
            // A section's typed values are checked before any rule is built.
            (
                "[inject-error]\nevent = \"bad\"\n[inject-error]\nerrno = \"x\"\n",
                "Parameter 'errno' expects a number",
            ),
            // ... and the event before the iotype.
            (
                "[inject-error]\nevent = \"bad\"\niotype = \"bad2\"\n",
                "invalid parameter value: bad",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(cfg_rules(text).as_ref(), Err(&want.to_string()), "{text:?}");
        }
    }

    #[test]
    fn rule_order() {
        let rules = cfg_rules(
            "[set-state]\nevent = \"write_aio\"\n[inject-error]\nevent = \"read_aio\"\n\
             [inject-error]\nevent = \"l2_load\"\n",
        )
        .unwrap();
        let events: Vec<Event> = rules.iter().map(RuleSpec::event).collect();
        assert_eq!(events, [Event::ReadAio, Event::L2Load, Event::WriteAio]);

        let cfg = b"[inject-error]\nevent = \"read_aio\"\n[set-state]\nevent = \"cow_read\"\n";
        let set = read_config(
            Some(cfg),
            Some(&json!([{"event": "l2_load"}, {"event": "l1_update"}])),
            Some(&json!({"event": "none"})),
        )
        .unwrap();
        let events: Vec<Event> = set.rules.iter().map(RuleSpec::event).collect();
        assert_eq!(
            events,
            [
                Event::ReadAio,
                Event::L2Load,
                Event::L1Update,
                Event::CowRead,
                Event::None
            ]
        );
    }

    #[test]
    fn option_forms() {
        let want = Ok(vec![ie(Event::L2Load)]);
        assert_eq!(inject(json!([{"event": "l2_load"}])), want);
        assert_eq!(inject(json!({"0": {"event": "l2_load"}})), want);
        assert_eq!(inject(json!({"event": "l2_load"})), want);
        // JSON scalars are turned into option strings first.
        let RuleSpec::InjectError { once, errno, .. } =
            inject(json!([{"event": "read_aio", "once": true, "errno": 28.0}])).unwrap()[0]
        else {
            panic!()
        };
        assert_eq!((once, errno), (true, 28));
        let RuleSpec::InjectError { errno, .. } =
            inject(json!([{"event": "read_aio", "errno": -5}])).unwrap()[0]
        else {
            panic!()
        };
        assert_eq!(errno, -5);
        assert_eq!(
            rules_from_options(None, Some(&json!([{"event": "read_aio"}]))),
            Ok(vec![RuleSpec::SetState {
                event: Event::ReadAio,
                state: 0,
                new_state: 0
            }])
        );
        let ids: Vec<Option<String>> =
            sections_from_options(Some(&json!([{"event": "a"}, {"event": "b"}])), None)
                .unwrap()
                .into_iter()
                .map(|s| s.id)
                .collect();
        assert_eq!(
            ids,
            [
                Some("inject-error.0".to_string()),
                Some("inject-error.1".to_string())
            ]
        );
    }

    #[test]
    fn unconsumed_values() {
        for v in [json!([]), json!({}), json!("x"), json!(1), json!(null)] {
            assert!(option_left_unconsumed(&v), "{v}");
            assert_eq!(inject(v), Ok(vec![]));
        }
        assert!(!option_left_unconsumed(&json!([{}])));
        assert!(!option_left_unconsumed(&json!({"event": "x"})));
    }

    #[test]
    fn option_errors() {
        let cases: Vec<(Value, &str)> = vec![
            (
                json!(["x"]),
                "[inject-error] section (index 0) does not consist of keys",
            ),
            (
                json!({"0": "x"}),
                "[inject-error] section (index 0) does not consist of keys",
            ),
            (
                json!({"0": []}),
                "[inject-error] section (index 0) does not consist of keys",
            ),
            (
                json!([{"event": "read_aio"}, "x"]),
                "[inject-error] section (index 1) does not consist of keys",
            ),
            (json!([{}]), "Missing event name for rule"),
            (
                json!({"0": {"event": "read_aio"}, "1": {}}),
                "Missing event name for rule",
            ),
            (json!([{"event": {}}]), "Missing event name for rule"),
            (json!([{"event": null}]), "Missing event name for rule"),
            (json!([{"event": []}]), "Missing event name for rule"),
            (
                json!([{"event": [1]}]),
                "[inject-error] section doesn't support the option 'event.0'",
            ),
            (
                json!([{"event": {"a": 1}}]),
                "[inject-error] section doesn't support the option 'event.a'",
            ),
            (json!([{"event": 5}]), "invalid parameter value: 5"),
            (json!([{"event": true}]), "invalid parameter value: on"),
            (
                json!([{"event": "read_aio", "errno": 28.5}]),
                "Parameter 'errno' expects a number",
            ),
            (
                json!([{"event": "read_aio", "errno": 1e300}]),
                "Parameter 'errno' expects a number",
            ),
            (
                json!([{"event": "read_aio", "errno": 18446744073709551616.0}]),
                "Parameter 'errno' expects a number",
            ),
            (
                json!([{"event": "read_aio", "errno": "abc"}]),
                "Parameter 'errno' expects a number",
            ),
            (
                json!([{"event": "read_aio", "errno": "99999999999999999999"}]),
                "Value '99999999999999999999' is too large for parameter 'errno'",
            ),
            (
                json!([{"event": "read_aio", "once": 1}]),
                "Parameter 'once' expects 'on' or 'off'",
            ),
            (
                json!([{"event": "read_aio", "foo": 1}]),
                "[inject-error] section doesn't support the option 'foo'",
            ),
            (
                json!([{"event": "read_aio", "id": "x"}]),
                "[inject-error] section doesn't support the option 'id'",
            ),
            (
                json!([{"event": "read_aio", "iotype": "bogus"}]),
                "invalid parameter value: bogus",
            ),
            (
                json!([{"event": "read_aio", "iotype": "bogus", "sector": "x"}]),
                "Parameter 'sector' expects a number",
            ),
            (
                json!({"event": "read_aio", "foo": 1}),
                "Unknown option 'foo' for [inject-error]",
            ),
            (json!({"foo": 1}), "Unused option 'foo' for [inject-error]"),
            (
                json!({"0": {"event": "read_aio"}, "2": {"event": "x"}}),
                "Unused option '2.event' for [inject-error]",
            ),
            (
                json!({"0": {"event": "read_aio"}, "event": "x"}),
                "Unknown option '0.event' for [inject-error]",
            ),
            (
                json!({"1": {"event": "read_aio"}}),
                "Unused option '1.event' for [inject-error]",
            ),
        ];
        for (v, want) in cases {
            assert_eq!(inject_err(v.clone()), want, "{v}");
        }
        assert_eq!(
            rules_from_options(None, Some(&json!([{"event": "read_aio", "errno": "5"}]))),
            Err("[set-state] section doesn't support the option 'errno'".to_string())
        );
        assert_eq!(
            rules_from_options(None, Some(&json!({"foo": 1}))),
            Err("Unused option 'foo' for [set-state]".to_string())
        );
        assert_eq!(
            rules_from_options(
                None,
                Some(&json!([{"event": "read_aio", "new_state": "x"}]))
            ),
            Err("Parameter 'new_state' expects a number".to_string())
        );
        // inject-error is parsed and built before set-state.
        assert_eq!(
            rules_from_options(
                Some(&json!([{"event": "bogus2"}])),
                Some(&json!([{"event": "bogus"}]))
            ),
            Err("invalid parameter value: bogus2".to_string())
        );
        assert_eq!(
            rules_from_options(
                Some(&json!([{"event": "bogus2"}])),
                Some(&json!([{"event": "read_aio", "state": "x"}]))
            ),
            Err("Parameter 'state' expects a number".to_string())
        );
    }

    #[test]
    fn config_and_options_together() {
        let run = |cfg: &str, ie: Value| read_config(Some(cfg.as_bytes()), Some(&ie), None);
        let e = |s: &str| Err(OpenFailure::Error(s.to_string()));
        assert_eq!(
            run(
                "[inject-error \"inject-error.0\"]\nevent = \"read_aio\"\n",
                json!([{"event": "read_aio"}])
            ),
            e("Duplicate ID 'inject-error.0' for inject-error")
        );
        assert!(
            read_config(
                Some(b"[inject-error \"set-state.0\"]\nevent = \"read_aio\"\n"),
                None,
                Some(&json!([{"event": "read_aio"}]))
            )
            .is_ok()
        );
        assert_eq!(
            read_config(
                Some(b"[set-state \"set-state.0\"]\nevent = \"read_aio\"\n"),
                None,
                Some(&json!([{"event": "read_aio"}]))
            ),
            e("Duplicate ID 'set-state.0' for set-state")
        );
        assert_eq!(
            read_config(
                Some(b"[set-state]\nevent = \"bogus_cfg\"\n"),
                Some(&json!([{"event": "bogus_opt"}])),
                None
            ),
            e("invalid parameter value: bogus_opt")
        );
        assert_eq!(
            run(
                "[inject-error]\nevent = \"bogus_cfg\"\n",
                json!([{"event": "bogus_opt"}])
            ),
            e("invalid parameter value: bogus_cfg")
        );
        assert_eq!(
            run(
                "[inject-error]\nevent = \"bogus_cfg\"\n",
                json!([{"event": "read_aio", "once": "x"}])
            ),
            e("Parameter 'once' expects 'on' or 'off'")
        );
        // A pending (last-section) error wins over rule-building errors...
        assert_eq!(
            run(
                "[inject-error]\nonce = \"x\"\n",
                json!([{"event": "bogus"}])
            ),
            e("Parameter 'once' expects 'on' or 'off'")
        );
        // ... but an option-section error on top of it makes QEMU abort.
        assert_eq!(
            run(
                "[inject-error]\nonce = \"x\"\n",
                json!([{"event": "read_aio", "errno": "x"}])
            ),
            Err(OpenFailure::ErrpAssertion)
        );
        assert_eq!(
            run("[bogus]\n", json!({"foo": 1})),
            Err(OpenFailure::ErrpAssertion)
        );
        // Without other errors, the pending error is handed on.
        let set = run(
            "[inject-error]\nonce = \"x\"\n",
            json!([{"event": "read_aio"}]),
        )
        .unwrap();
        assert_eq!(
            set.pending_error.as_deref(),
            Some("Parameter 'once' expects 'on' or 'off'")
        );
        assert_eq!(set.rules, vec![ie(Event::ReadAio)]);
        // Immediate config errors come before anything in the options.
        assert_eq!(
            run("[bogus]\n[inject-error]\n", json!({"foo": 1})),
            e("There is no option group 'bogus'")
        );
    }

    #[test]
    fn g17_formatting() {
        let cases: &[(f64, &str)] = &[
            (5.0, "5"),
            (28.5, "28.5"),
            (0.1, "0.10000000000000001"),
            (1e300, "1.0000000000000001e+300"),
            (18446744073709551616.0, "1.8446744073709552e+19"),
            (1e16, "10000000000000000"),
            (1e17, "1e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1.0000000000000001e-05"),
            (-2.5, "-2.5"),
            (-0.0, "-0"),
            (123456.789, "123456.789"),
        ];
        for (x, want) in cases {
            assert_eq!(format_g17(*x), *want, "{x}");
        }
    }

    /// Runs the real qemu-io 10.0.2 on each case and compares its open error (or success) with
    /// ours. Skipped when qemu-io is not installed.
    mod against_qemu {
        use super::super::*;
        use std::path::Path;
        use std::process::Command;

        const CONFIGS: &[&str] = &[
            "[inject-error]\nevent = \"read_aio\"\n",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"0x1c\"\nonce = \"on\"\nsector = \"1\"\n",
            "[set-state]\nevent = \"write_aio\"\nstate = \"1\"\nnew_state = \"2\"\n\n[inject-error]\nevent = \"write_aio\"\nstate = \"2\"\n",
            "",
            "\n\n# only a comment\n",
            "[inject-error]\r\nevent = \"read_aio\"\r\n",
            "[inject-error]\r\n\r\nevent = \"read_aio\"\r\n",
            "[inject-error]\n\tevent\t=\t\"read_aio\"\n",
            "\t[inject-error]\nevent = \"read_aio\"\n",
            "[inject-error]\nevent = \"read_aio",
            "[inject-error]\nevent = \"read_aio\n",
            "[inject-error]\nevent = read_aio\n",
            "[inject-error]\nevent=\"read_aio\"\n",
            "[inject-error]\nevent = \"bogus\"\nevent = \"read_aio\"\n",
            "[inject-error]\nevent = \"read_aio\"\nevent = \"bogus\"\n",
            "[inject-error]\nevent = \"l1_grow.alloc_table\"\n",
            "[inject-error]\n",
            "[bogus]\n",
            "[bogus]\nevent = \"x\"\n   \n",
            "[bogus]\n[inject-error]\n   \n",
            "[]\n",
            "[inject-error]\n[]\n",
            "[inject-error]\n[]\n[set-state]\n",
            "[\n",
            "[inject-error\nevent = \"read_aio\"\n",
            "[inject-error \"\"]\n",
            "[ inject-error]\n",
            "[ inject-error \"x\"]\nevent = \"read_aio\"\n",
            "[inject-error]junk\nevent = \"read_aio\"\n",
            "garbage line\n",
            "event = \"read_aio\"\n",
            "[inject-error]\n   \n",
            "[inject-error]\nfoo = \"x\"\nbar = \"y\"\n",
            "[inject-error]\nsector = \"x\"\nb = \"1\"\n",
            "[inject-error]\nb = \"1\"\nsector = \"x\"\nb = \"2\"\n",
            "[inject-error]\nerrno = \"x\"\nonce = \"x\"\n",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"99999999999999999999\"\n",
            "[inject-error]\nevent = \"read_aio\"\nonce = \"TRUE\"\n",
            "[inject-error]\nevent = \"read_aio\"\niotype = \"Read\"\n",
            "[inject-error]\nevent = \"read_aio\"\niotype = \"block-status\"\n",
            "[set-state]\nevent = \"read_aio\"\niotype = \"read\"\n",
            "[set-state]\nevent = \"bad1\"\n[inject-error]\nevent = \"bad2\"\n",
            "[inject-error \"id1\"]\nevent = \"read_aio\"\n[inject-error \"id1\"]\nevent = \"read_aio\"\n",
            "[inject-error \"id1\"]\nevent = \"read_aio\"\n[set-state \"id1\"]\nevent = \"read_aio\"\n",
            "[inject-error \"1a\"]\nevent = \"read_aio\"\n",
            "[inject-error]\nid = \"\"\nevent = \"read_aio\"\n",
            "[inject-error]\nevent = \"bogus\"\n[inject-error]\nonce = \"x\"\n",
            "[inject-error]\nevent = \"read_aio\"\n[set-state]\nfoo = \"1\"\n",
            "[inject-error]\nevent = \"read_aio\"\n\0abc\n",
            "[inject-error]\nevent = \"read\0_aio\"\n",
        ];

        /// `inject-error` values for json: filenames.
        const OPTIONS: &[&str] = &[
            r#"[{"event":"read_aio"}]"#,
            r#"{"event":"read_aio"}"#,
            r#"{"0":{"event":"read_aio"},"1":{"event":"write_aio","once":true}}"#,
            r#"["x"]"#,
            r#"[{}]"#,
            r#"[{"event":null}]"#,
            r#"[{"event":[1]}]"#,
            r#"[{"event":5}]"#,
            r#"[{"event":"read_aio","errno":28.5}]"#,
            r#"[{"event":"read_aio","errno":1e16}]"#,
            r#"[{"event":"read_aio","once":1}]"#,
            r#"[{"event":"read_aio","foo":1}]"#,
            r#"{"event":"read_aio","foo":1}"#,
            r#"{"foo":1}"#,
            r#"{"0":{"event":"read_aio"},"2":{"event":"x"}}"#,
            r#"{"0":{"event":"read_aio"},"event":"x"}"#,
            r#"[{"event":"read_aio"},"x"]"#,
            r#"[{"event":"read_aio","iotype":"bogus","sector":"x"}]"#,
        ];

        /// What follows `can't open device <name>: ` on stderr, or `None` if the open worked.
        fn qemu_open_error(dir: &Path, name: &str, raw_format: bool) -> Option<String> {
            let mut cmd = Command::new("qemu-io");
            if raw_format {
                cmd.args(["-f", "raw"]);
            }
            let out = cmd
                .args(["-c", "read 0 1", name])
                .current_dir(dir)
                .output()
                .expect("run qemu-io");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains(&format!("qemu-io: {ERRP_ASSERTION}")) {
                return Some("<abort>".to_string());
            }
            let prefix = format!("qemu-io: can't open device {name}: ");
            // error_report adds exactly one newline; the message may end in its own.
            stderr.find(&prefix).map(|i| {
                let rest = &stderr[i + prefix.len()..];
                rest.strip_suffix('\n').unwrap_or(rest).to_string()
            })
        }

        fn ours(config: Option<&[u8]>, inject: Option<&Value>) -> Option<String> {
            match read_config(config, inject, None) {
                Ok(set) => set.pending_error,
                Err(OpenFailure::Error(e)) => Some(e),
                Err(OpenFailure::ErrpAssertion) => Some("<abort>".to_string()),
            }
        }

        fn qemu_io_available() -> bool {
            let found = Command::new("qemu-io").arg("--version").output().is_ok();
            if !found {
                eprintln!("skipped: qemu-io is not on PATH");
            }
            found
        }

        #[test]
        fn config_files_match_qemu_io() {
            if !qemu_io_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("img.raw"), vec![0u8; 1 << 20]).unwrap();
            let mut mismatches = Vec::new();
            for text in CONFIGS {
                std::fs::write(dir.path().join("c.cfg"), text).unwrap();
                let theirs = qemu_open_error(dir.path(), "blkdebug:c.cfg:img.raw", true);
                let mine = ours(Some(text.as_bytes()), None);
                if theirs != mine {
                    mismatches.push(format!("{text:?}: qemu {theirs:?}, ours {mine:?}"));
                }
            }
            assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        }

        #[test]
        fn config_with_options_matches_qemu_io() {
            if !qemu_io_available() {
                return;
            }
            let cases: &[(&str, &str)] = &[
                (
                    "[inject-error \"inject-error.0\"]\nevent = \"read_aio\"\n",
                    r#"[{"event":"read_aio"}]"#,
                ),
                (
                    "[set-state]\nevent = \"bogus_cfg\"\n",
                    r#"[{"event":"bogus_opt"}]"#,
                ),
                (
                    "[inject-error]\nevent = \"bogus_cfg\"\n",
                    r#"[{"event":"bogus_opt"}]"#,
                ),
                ("[inject-error]\nonce = \"x\"\n", r#"[{"event":"bogus"}]"#),
                (
                    "[inject-error]\nonce = \"x\"\n",
                    r#"[{"event":"read_aio","errno":"x"}]"#,
                ),
                ("[bogus]\n", r#"{"foo":1}"#),
                ("[bogus]\n[inject-error]\n", r#"{"foo":1}"#),
                (
                    "[inject-error]\nonce = \"x\"\n",
                    r#"[{"event":"read_aio"}]"#,
                ),
            ];
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("img.raw"), vec![0u8; 1 << 20]).unwrap();
            let mut mismatches = Vec::new();
            for (text, opt) in cases {
                std::fs::write(dir.path().join("c.cfg"), text).unwrap();
                let name = format!(
                    r#"json:{{"driver":"raw","file":{{"driver":"blkdebug","config":"c.cfg","inject-error":{opt},"image":{{"driver":"file","filename":"img.raw"}}}}}}"#
                );
                let theirs = qemu_open_error(dir.path(), &name, false);
                let value: Value = serde_json::from_str(opt).unwrap();
                let mine = ours(Some(text.as_bytes()), Some(&value));
                if theirs != mine {
                    mismatches.push(format!("{text:?} + {opt}: qemu {theirs:?}, ours {mine:?}"));
                }
            }
            assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        }

        #[test]
        fn option_trees_match_qemu_io() {
            if !qemu_io_available() {
                return;
            }
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("img.raw"), vec![0u8; 1 << 20]).unwrap();
            let mut mismatches = Vec::new();
            for opt in OPTIONS {
                let name = format!(
                    r#"json:{{"driver":"raw","file":{{"driver":"blkdebug","inject-error":{opt},"image":{{"driver":"file","filename":"img.raw"}}}}}}"#
                );
                let theirs = qemu_open_error(dir.path(), &name, false);
                let value: Value = serde_json::from_str(opt).unwrap();
                let mine = ours(None, Some(&value));
                if theirs != mine {
                    mismatches.push(format!("{opt}: qemu {theirs:?}, ours {mine:?}"));
                }
            }
            assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
        }
    }

    mod props {
        use super::super::*;
        use crate::block::options::format_g17;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let key = "(0|1|2|event|errno|once|state|iotype|sector|new_state|foo|id|read_aio|x)";
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "(read_aio|l2_load|on|off|0x1c|-5|[a-z0-9 .]{0,6})".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 32, 6, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    proptest::collection::btree_map(key, inner, 0..5)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn never_panics(a in json_value(), b in json_value()) {
                let _ = rules_from_options(Some(&a), Some(&b));
                let _ = read_config(Some(b"[inject-error]\nonce = \"x\"\n"), Some(&a), Some(&b));
            }

            #[test]
            fn g17_is_parseable(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
                let s = format_g17(x);
                let back: f64 = s.parse().unwrap();
                prop_assert_eq!(back, x);
            }
        }
    }
}
