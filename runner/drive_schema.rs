//! What editors are told about the values of a scenario (formats, cache modes, block options and
//! blkdebug's rules with their event and iotype names), so that yaml-language-server completes
//! them and flags a typo before anything runs; and the load-time check of a rule's event and iotype names.

use super::{KNOWN_REQUIREMENTS, edit_distance};
use blockfault::block::blkdebug::events::{Event, IoType};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value, json};
use std::borrow::Cow;

/// A value that is one of `names`, or a `${matrix}` reference (substituted before it is used).
fn one_of(description: &str, names: Vec<&str>) -> Schema {
    json_schema!({
        "description": description,
        "anyOf": [
            {"type": "string", "enum": names},
            {"type": "string", "pattern": "\\$\\{[^}]+\\}", "description": "a matrix value"},
        ],
    })
}

fn formats() -> Vec<&'static str> {
    KNOWN_REQUIREMENTS
        .iter()
        .copied()
        .filter(|n| !n.starts_with("qemu-"))
        .collect()
}

/// An image format or block driver name QEMU 10.0.2 knows.
pub struct FormatName;

impl JsonSchema for FormatName {
    fn schema_name() -> Cow<'static, str> {
        "FormatName".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        one_of(
            "An image format (block driver) QEMU 10.0.2 knows.",
            formats(),
        )
    }
}

/// qemu-io's `-t` cache modes.
pub struct CacheMode;

impl JsonSchema for CacheMode {
    fn schema_name() -> Cow<'static, str> {
        "CacheMode".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        one_of(
            "A cache mode, as qemu-io's -t takes it.",
            vec!["none", "writeback", "writethrough", "directsync", "unsafe"],
        )
    }
}

fn event_names() -> Vec<&'static str> {
    Event::ALL.iter().map(|e| e.name()).collect()
}

/// A number or a string holding one: json: options take either.
fn integer(description: &str) -> Value {
    json!({"description": description, "type": ["integer", "string"]})
}

fn boolean(description: &str) -> Value {
    json!({"description": description, "type": ["boolean", "string"]})
}

/// The json: block options of a drive (any node: format, protocol or filter). Only the common
/// keys and blkdebug's are described; others are allowed and passed to QEMU as written.
pub struct BlockOptions;

impl JsonSchema for BlockOptions {
    fn schema_name() -> Cow<'static, str> {
        "BlockOptions".into()
    }
    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let child = json!({
            "anyOf": [
                g.subschema_for::<BlockOptions>(),
                {"type": "string", "description": "a filename, or the node-name of another node"},
            ],
        });
        let event = one_of(
            "The blkdebug event the rule is on (`blockfault events` says when each fires).",
            event_names(),
        );
        let state = integer("Only in this state (default: any state; the state starts at 1).");
        let inject_error = json!({
            "type": "object",
            "description": "An inject-error rule: once its event fires (in its state), the next matching request on this blkdebug node fails.",
            "required": ["event"],
            "additionalProperties": false,
            "properties": {
                "event": event,
                "state": state,
                "iotype": one_of(
                    "Only requests of this type (default: all but block-status).",
                    IoType::ALL.iter().map(|t| t.name()).collect(),
                ),
                "errno": integer("The error (default 5, EIO); 28 is ENOSPC."),
                "sector": integer("Only requests covering this 512-byte sector (default: any)."),
                "once": boolean("Remove the rule after it fails one request (default: the rule stays and keeps failing)."),
                "immediately": boolean("Fail without yielding first (default: the request yields once, then fails)."),
            },
        });
        let set_state = json!({
            "type": "object",
            "description": "A set-state rule: when its event fires in `state`, the state becomes `new_state`.",
            "required": ["event", "new_state"],
            "additionalProperties": false,
            "properties": {
                "event": event,
                "state": state,
                "new_state": integer("The state after the event."),
            },
        });
        let mut schema = json_schema!({
            "type": "object",
            "description": "json: block options, as QEMU takes them in a json: filename.",
            "properties": {
                "driver": one_of("The block driver of this node.", formats()),
                "filename": {"type": "string"},
                "node-name": {"type": "string"},
                "file": child.clone(),
                "image": {
                    "description": "blkdebug's (and blkverify's) child.",
                    "anyOf": child["anyOf"].clone(),
                },
                "test": {
                    "description": "blkverify's image under test.",
                    "anyOf": child["anyOf"].clone(),
                },
                "raw": {
                    "description": "blkverify's raw reference image.",
                    "anyOf": child["anyOf"].clone(),
                },
                "backing": {
                    "description": "The backing node (null: none).",
                    "anyOf": [g.subschema_for::<BlockOptions>(), {"type": ["string", "null"]}],
                },
                "inject-error": {"type": "array", "items": inject_error},
                "set-state": {"type": "array", "items": set_state},
                "config": {"type": "string", "description": "blkdebug's rule file (INI-style [inject-error] and [set-state] sections)."},
                "align": integer("blkdebug: the request alignment it imposes."),
                "max-transfer": integer("blkdebug: the largest request."),
                "opt-write-zero": integer("blkdebug: the preferred write-zeroes alignment."),
                "max-write-zero": integer("blkdebug: the largest write-zeroes."),
                "opt-discard": integer("blkdebug: the preferred discard alignment."),
                "max-discard": integer("blkdebug: the largest discard."),
                "read-only": boolean("Open read-only."),
                "discard": one_of("What discards do.", vec!["ignore", "off", "unmap", "on"]),
                "detect-zeroes": one_of("Turn writes of zeroes into write-zeroes.", vec!["off", "on", "unmap"]),
                "cache": {
                    "type": "object",
                    "properties": {"direct": boolean("O_DIRECT."), "no-flush": boolean("Ignore flushes.")},
                },
            },
        });
        // Other drivers' options are QEMU's to judge: an editor completes, the run decides.
        schema.insert("additionalProperties".into(), Value::Bool(true));
        schema
    }
}

/// Where in a drive mapping a value sits, for the event check.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub enum Within {
    #[default]
    Other,
    /// the list under `inject-error` or `set-state`
    RuleList,
    /// one rule of it
    Rule,
}

impl Within {
    pub fn element(self) -> Within {
        if self == Within::RuleList {
            Within::Rule
        } else {
            Within::Other
        }
    }

    pub fn value_of(self, key: &str) -> Within {
        if matches!(key, "inject-error" | "set-state") {
            Within::RuleList
        } else {
            Within::Other
        }
    }
}

/// A rule's `event` and `iotype` (also flat, `inject-error.0.event`) must name a blkdebug event
/// and request type: QEMU would only say so when the drive is opened, as "Invalid parameter"
/// without the scenario's position.
pub fn check_rule_value(within: Within, key: &str, value: &Value) -> Result<(), String> {
    let Some(name) = value.as_str().filter(|n| !n.contains("${")) else {
        return Ok(());
    };
    if is_rule_key(within, key, "event") && Event::from_name(name).is_none() {
        let names = Event::ALL.iter().map(|e| e.name());
        return Err(format!(
            "unknown blkdebug event `{name}`{}: `blockfault events` lists the {} events",
            did_you_mean(name, names),
            Event::COUNT
        ));
    }
    if is_rule_key(within, key, "iotype") && IoType::from_name(name).is_none() {
        let names = IoType::ALL.iter().map(|t| t.name());
        return Err(format!(
            "unknown blkdebug iotype `{name}`{}: the iotypes are {}",
            did_you_mean(name, names.clone()),
            names.collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// Whether `key` is a rule's `field`, nested (`event` inside a rule) or flat
/// (`inject-error.N.event`, `set-state.N.event`).
fn is_rule_key(within: Within, key: &str, field: &str) -> bool {
    let flat = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(field))
            .and_then(|r| r.strip_suffix('.'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    (within == Within::Rule && key == field) || flat("inject-error.") || flat("set-state.")
}

fn did_you_mean<'a>(name: &str, names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| (edit_distance(name, n), n))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default()
}
