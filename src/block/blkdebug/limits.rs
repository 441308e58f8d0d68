//! blkdebug's request-limit overrides: `align`, `max-transfer`, `opt-write-zero`,
//! `max-write-zero`, `opt-discard`, `max-discard`.
//!
//! QEMU handles them in two separate steps of blkdebug's open, and the open layer must keep them
//! apart to get the error order right:
//! 1. [`parse_limits`]: the very first step (before the config file is read), when the driver's
//!    runtime options are absorbed. Size syntax errors are reported in QDict order.
//! 2. [`Limits::validate`]: after the rules are built and the child is open, in a fixed order.

use serde_json::{Map, Value};

use super::config;
use super::rules::qnum_to_string;

/// The overrides, in bytes; 0 = not set (QEMU treats 0 and absent alike).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub align: u64,
    pub max_transfer: u64,
    pub opt_write_zero: u64,
    pub max_write_zero: u64,
    pub opt_discard: u64,
    pub max_discard: u64,
}

/// The option names, in the order QEMU validates them.
pub const LIMIT_KEYS: [&str; 6] = [
    "align",
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
];

/// Every limit must stay below this (C `INT_MAX`).
const INT_MAX: u64 = i32::MAX as u64;

impl Limits {
    fn slot(&mut self, key: &str) -> Option<&mut u64> {
        Some(match key {
            "align" => &mut self.align,
            "max-transfer" => &mut self.max_transfer,
            "opt-write-zero" => &mut self.opt_write_zero,
            "max-write-zero" => &mut self.max_write_zero,
            "opt-discard" => &mut self.opt_discard,
            "max-discard" => &mut self.max_discard,
            _ => return None,
        })
    }

    /// QEMU's checks, in its order, against the child's `request_alignment` (1 for a plain file
    /// without O_DIRECT). Messages: `Cannot meet constraints with <option> <value>`.
    pub fn validate(&self, child_request_alignment: u64) -> Result<(), String> {
        let fail = |name: &str, v: u64| Err(format!("Cannot meet constraints with {name} {v}"));
        if self.align != 0 && (self.align >= INT_MAX || !self.align.is_power_of_two()) {
            return fail("align", self.align);
        }
        let a = self.align.max(child_request_alignment);
        let bad = |v: u64, m: u64| v != 0 && (v >= INT_MAX || !v.is_multiple_of(m));
        if bad(self.max_transfer, a) {
            return fail("max-transfer", self.max_transfer);
        }
        if bad(self.opt_write_zero, a) {
            return fail("opt-write-zero", self.opt_write_zero);
        }
        if bad(self.max_write_zero, self.opt_write_zero.max(a)) {
            return fail("max-write-zero", self.max_write_zero);
        }
        if bad(self.opt_discard, a) {
            return fail("opt-discard", self.opt_discard);
        }
        if bad(self.max_discard, self.opt_discard.max(a)) {
            return fail("max-discard", self.max_discard);
        }
        Ok(())
    }
}

/// Reads the six size options from blkdebug's (flat, top-level) options; other keys are ignored.
/// Strings are parsed as QEMU sizes (`4k`, `0x1000`, `1.5M`), JSON numbers and booleans are first
/// turned into option strings as QEMU does (`4096.0` is "4096", `true` is "on"). Other JSON values
/// are skipped, as QEMU skips them.
pub fn parse_limits(opts: &Map<String, Value>) -> Result<Limits, String> {
    let present: Vec<(&str, &Value)> = opts
        .iter()
        .filter(|(k, _)| LIMIT_KEYS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let keys: Vec<&str> = present.iter().map(|(k, _)| *k).collect();
    let mut limits = Limits::default();
    for i in config::qdict_order(&keys) {
        let (key, value) = present[i];
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => qnum_to_string(n),
            Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
            _ => continue,
        };
        let v = parse_size(key, &text)?;
        if let Some(slot) = limits.slot(key) {
            *slot = v;
        }
    }
    Ok(limits)
}

/// [`parse_limits`] then [`Limits::validate`]. Only right when nothing else can fail in between;
/// the open sequence should call the two steps separately.
pub fn limits_from_options(
    opts: &Map<String, Value>,
    child_request_alignment: u64,
) -> Result<Limits, String> {
    let limits = parse_limits(opts)?;
    limits.validate(child_request_alignment)?;
    Ok(limits)
}

pub use crate::block::options::parse_size;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu_io::numbers::{NumError, strtosz};
    use serde_json::json;

    const HINT: &str = "\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n\
                        and exabytes, respectively.";

    fn opts(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn expects(name: &str) -> String {
        format!("Parameter '{name}' expects a non-negative number below 2^64{HINT}")
    }

    #[test]
    fn sizes() {
        let ok: &[(&str, u64)] = &[
            ("0", 0),
            ("512", 512),
            (" 512", 512),
            ("+512", 512),
            ("4k", 4096),
            ("4K", 4096),
            ("4096B", 4096),
            ("1b", 1),
            ("0x1000", 4096),
            ("0X10", 16),
            ("1.5k", 1536),
            ("0.5k", 512),
            (".5k", 512),
            ("1.k", 1024),
            ("1.", 1),
            ("1M", 1 << 20),
            ("1G", 1 << 30),
            ("1E", 1 << 60),
            ("1.5e", 3 << 59),
            ("010", 10),
            ("1e", 1 << 60),
            ("+0x10", 16),
            ("0.99999999999999999999k", 1024),
        ];
        for (s, want) in ok {
            assert_eq!(strtosz(s), Ok(*want), "{s:?}");
        }
        let range = [
            "-1",
            "-0",
            "16E",
            "99999999999999999999",
            "-.5",
            "18446744073709551616",
            "0x10000000000000000",
        ];
        for s in range {
            assert_eq!(strtosz(s), Err(NumError::TooLarge), "{s:?}");
        }
        let invalid = [
            "",
            " ",
            "x",
            "1.5",
            "1.5b",
            "1k5",
            "0x",
            "0x1k",
            "0x1.5",
            "1kk",
            "4096 ",
            "-0x10",
            "-1x",
            "inf.5",
            "nan.",
            "k",
            ".",
            "99999999999999999999x",
            ".5",
            "-.5k",
        ];
        for s in invalid {
            assert_eq!(strtosz(s), Err(NumError::Invalid), "{s:?}");
        }
    }

    #[test]
    fn size_messages() {
        assert_eq!(
            parse_size("align", "-1"),
            Err("Value '-1' is out of range for parameter 'align'".to_string())
        );
        assert_eq!(
            parse_size("align", "16E"),
            Err("Value '16E' is out of range for parameter 'align'".to_string())
        );
        assert_eq!(parse_size("align", "x"), Err(expects("align")));
        assert_eq!(parse_size("max-discard", ""), Err(expects("max-discard")));
    }

    #[test]
    fn parse_order_is_qdict_order() {
        // max-transfer hashes before align, opt-* before max-*.
        assert_eq!(
            parse_limits(&opts(json!({"align": "x", "max-transfer": "y"}))),
            Err(expects("max-transfer"))
        );
        assert_eq!(
            parse_limits(&opts(json!({"max-discard": "y", "opt-discard": "x"}))),
            Err(expects("opt-discard"))
        );
        assert_eq!(
            parse_limits(&opts(json!({"opt-write-zero": "x", "max-write-zero": "y"}))),
            Err(expects("opt-write-zero"))
        );
    }

    #[test]
    fn json_values() {
        assert_eq!(
            parse_limits(&opts(
                json!({"align": 4096.0, "max-transfer": 65536, "config": "x"})
            )),
            Ok(Limits {
                align: 4096,
                max_transfer: 65536,
                ..Limits::default()
            })
        );
        assert_eq!(
            parse_limits(&opts(json!({"align": -1}))),
            Err("Value '-1' is out of range for parameter 'align'".to_string())
        );
        assert_eq!(
            parse_limits(&opts(json!({"align": 1.5}))),
            Err(expects("align"))
        );
        assert_eq!(
            parse_limits(&opts(json!({"align": true}))),
            Err(expects("align"))
        );
        assert_eq!(
            parse_limits(&opts(json!({"align": null, "opt-discard": {}}))),
            Ok(Limits::default())
        );
    }

    #[test]
    fn constraints() {
        let check = |v: Value, child: u64| limits_from_options(&opts(v), child).map(|_| ());
        let cannot = |s: &str| Err(format!("Cannot meet constraints with {s}"));
        assert_eq!(check(json!({"align": "4k"}), 1), Ok(()));
        assert_eq!(check(json!({"align": "0"}), 1), Ok(()));
        assert_eq!(check(json!({"align": "1"}), 1), Ok(()));
        assert_eq!(check(json!({"align": 3}), 1), cannot("align 3"));
        assert_eq!(check(json!({"align": "1.5k"}), 1), cannot("align 1536"));
        assert_eq!(check(json!({"align": "2G"}), 1), cannot("align 2147483648"));
        assert_eq!(
            check(json!({"align": "1E"}), 1),
            cannot("align 1152921504606846976")
        );
        assert_eq!(check(json!({"max-transfer": "1000"}), 1), Ok(()));
        assert_eq!(
            check(json!({"max-transfer": "1000"}), 512),
            cannot("max-transfer 1000")
        );
        assert_eq!(
            check(json!({"align": "4096", "max-transfer": "1000"}), 1),
            cannot("max-transfer 1000")
        );
        assert_eq!(check(json!({"max-transfer": "2147483646"}), 1), Ok(()));
        assert_eq!(
            check(json!({"max-transfer": "2147483647"}), 1),
            cannot("max-transfer 2147483647")
        );
        assert_eq!(
            check(json!({"max-transfer": "2G"}), 1),
            cannot("max-transfer 2147483648")
        );
        assert_eq!(
            check(
                json!({"opt-write-zero": "1024", "max-write-zero": "1536"}),
                1
            ),
            cannot("max-write-zero 1536")
        );
        assert_eq!(
            check(
                json!({"opt-write-zero": "1024", "max-write-zero": "2048"}),
                1
            ),
            Ok(())
        );
        assert_eq!(
            check(json!({"opt-discard": "1024", "max-discard": "1536"}), 1),
            cannot("max-discard 1536")
        );
        assert_eq!(
            check(json!({"align": "512", "opt-discard": "768"}), 1),
            cannot("opt-discard 768")
        );
        assert_eq!(
            check(json!({"align": "512", "opt-write-zero": "768"}), 1),
            cannot("opt-write-zero 768")
        );
        // Fixed check order, whatever the option order.
        assert_eq!(
            check(
                json!({"opt-discard": "1024", "max-discard": "2048", "align": "3"}),
                1
            ),
            cannot("align 3")
        );
        assert_eq!(
            check(json!({"max-discard": "3", "max-transfer": "3"}), 1),
            Ok(())
        );
        assert_eq!(
            check(json!({"max-discard": "3", "max-transfer": "3"}), 2),
            cannot("max-transfer 3")
        );
        // Syntax errors come before constraint errors.
        assert_eq!(
            check(json!({"align": "3", "max-discard": "x"}), 1),
            Err(expects("max-discard"))
        );
    }

    /// Compares with the real qemu-io (raw file child: request alignment 1). Skipped when
    /// qemu-io is not installed.
    #[test]
    fn limits_match_qemu_io() {
        use std::process::Command;
        if Command::new("qemu-io").arg("--version").output().is_err() {
            eprintln!("skipped: qemu-io is not on PATH");
            return;
        }
        let cases: &[&[(&str, &str)]] = &[
            &[("align", "4k")],
            &[("align", "3")],
            &[("align", "-1")],
            &[("align", "x")],
            &[("align", "1.5k")],
            &[("align", "16E")],
            &[("align", "-.5")],
            &[("align", "-.5k")],
            &[("align", "1.5e")],
            &[("align", "x"), ("max-transfer", "y")],
            &[("max-discard", "y"), ("opt-discard", "x")],
            &[("align", "4096"), ("max-transfer", "1000")],
            &[("max-transfer", "2G")],
            &[("opt-write-zero", "1024"), ("max-write-zero", "1536")],
            &[
                ("opt-discard", "1024"),
                ("max-discard", "2048"),
                ("align", "3"),
            ],
            &[("align", "3"), ("max-discard", "x")],
        ];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("img.raw"), vec![0u8; 1 << 20]).unwrap();
        let mut mismatches = Vec::new();
        for case in cases {
            let mut spec = String::from("driver=raw,file.driver=blkdebug");
            let mut map = Map::new();
            for (k, v) in *case {
                spec.push_str(&format!(",file.{k}={v}"));
                map.insert(k.to_string(), Value::from(*v));
            }
            spec.push_str(",file.image.driver=file,file.image.filename=img.raw");
            let out = Command::new("qemu-io")
                .args(["--image-opts", "-c", "read 0 1", &spec])
                .current_dir(dir.path())
                .output()
                .expect("run qemu-io");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let prefix = "qemu-io: can't open: ";
            let theirs = stderr.find(prefix).map(|i| {
                let rest = &stderr[i + prefix.len()..];
                rest.strip_suffix('\n').unwrap_or(rest).to_string()
            });
            let mine = limits_from_options(&map, 1).err();
            if theirs != mine {
                mismatches.push(format!("{spec}: qemu {theirs:?}, ours {mine:?}"));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    mod props {
        use crate::qemu_io::numbers::strtosz;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn strtosz_never_panics(s in "[ +\\-0-9.xXkKmMgGtTpPeEbB]{0,24}") {
                let _ = strtosz(&s);
            }

            #[test]
            fn plain_integers_roundtrip(n in any::<u64>()) {
                prop_assert_eq!(strtosz(&n.to_string()), Ok(n));
            }
        }
    }
}
