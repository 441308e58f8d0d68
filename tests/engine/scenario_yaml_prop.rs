//! Property test over scenario YAML (issue 10): whatever text a scenario file holds, reading
//! it and expanding its matrix ends in a scenario or one error, never a panic or a hang, and
//! the cases it makes stay within the matrix limit. Inputs are real scenarios with random
//! edits, and text built from YAML's own punctuation, where parsers break.

use crate::{matrix, scenario};

use proptest::prelude::*;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Far more than any input here needs: reaching it means the parser hangs (or went quadratic).
const TIME_LIMIT: Duration = Duration::from_secs(20);

fn real_scenarios() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut v: Vec<String> = walkdir::WalkDir::new(root)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .collect();
    v.truncate(400);
    v
}

/// Pieces of YAML syntax and of the scenario format.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("\n".to_string()),
        Just("\n  ".to_string()),
        Just("\n    - ".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("#".to_string()),
        Just("&a ".to_string()),
        Just("*a".to_string()),
        Just("!!str ".to_string()),
        Just("|\n  ".to_string()),
        Just("${x}".to_string()),
        Just("${".to_string()),
        Just("matrix:\n  x: [1, 2, 3]\n".to_string()),
        Just("steps:\n  - echo: a\n".to_string()),
        Just("  - qemu-io: {drive: {a: {b: [1, 2]}}, commands: [read 0 1]}\n".to_string()),
        Just("files: {a: b, a: c}\n".to_string()),
        Just("images: [{name: ../x, format: raw, size: 1M}]\n".to_string()),
        Just("requires: [qcwo2]\n".to_string()),
        Just("<<: *a\n".to_string()),
        "[a-z0-9_. -]{0,8}",
        any::<char>().prop_map(String::from),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Repeat(usize, usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), fragment()).prop_map(|(at, f)| Edit::Insert(at, f)),
        (any::<usize>(), 0usize..64).prop_map(|(at, n)| Edit::Delete(at, n)),
        (any::<usize>(), 1usize..16, 1usize..200).prop_map(|(at, n, k)| Edit::Repeat(at, n, k)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len();
        match e {
            Edit::Insert(at, f) => {
                let at = at % (len + 1);
                chars.splice(at..at, f.chars());
            }
            Edit::Delete(at, n) => {
                let at = at % (len + 1);
                let end = (at + n).min(len);
                chars.drain(at..end);
            }
            Edit::Repeat(at, n, k) => {
                let at = at % (len + 1);
                let end = (at + n).min(len);
                let piece: Vec<char> = chars[at..end].to_vec();
                let repeated: Vec<char> = piece
                    .iter()
                    .cycle()
                    .take(piece.len() * k)
                    .copied()
                    .collect();
                chars.splice(at..end, repeated);
            }
        }
    }
    chars.into_iter().collect()
}

/// Parses and expands in a thread of its own; a panic or a hang fails the property.
fn parse_bounded(text: String) -> Result<(), TestCaseError> {
    let (tx, rx) = mpsc::channel();
    let shown: String = text.chars().take(400).collect();
    std::thread::spawn(move || {
        let result =
            std::panic::catch_unwind(|| match scenario::parse(&text, Path::new("p.yaml")) {
                Ok(s) => match matrix::expand(&s, 1000) {
                    Ok(cases) => {
                        assert!(!cases.is_empty() && cases.len() <= 1000);
                        "ok".to_string()
                    }
                    Err(e) => e,
                },
                Err(e) => {
                    assert!(e.0.starts_with("p.yaml"), "error names the file: {}", e.0);
                    assert!(!e.0.contains('\n') || e.0.len() < 10_000);
                    e.0
                }
            });
        let _ = tx.send(result.is_ok());
    });
    match rx.recv_timeout(TIME_LIMIT) {
        Ok(true) => Ok(()),
        Ok(false) => Err(TestCaseError::fail(format!("panicked on {shown:?}"))),
        Err(_) => Err(TestCaseError::fail(format!(
            "no answer within {TIME_LIMIT:?} on {shown:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn edited_real_scenarios_parse_or_fail_cleanly(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let all = real_scenarios();
        let base = &all[pick.index(all.len())];
        parse_bounded(apply(base, &edits))?;
    }

    #[test]
    fn yaml_punctuation_parses_or_fails_cleanly(
        pieces in prop::collection::vec(fragment(), 0..200),
        repeat in 1usize..2000,
    ) {
        let once = pieces.concat();
        let text = if once.len() < 64 { once.repeat(repeat) } else { once };
        parse_bounded(format!("description: x\n{text}"))?;
    }
}
