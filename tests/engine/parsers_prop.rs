//! Property tests for the parsers at the engine's edges: qemu-io command lines (`-c` strings)
//! and drive specifications (filenames, `json:` strings, `--image-opts` strings). Whatever they
//! are given, the engine must not panic and must not hang; a drive either opens or fails with
//! qemu-io's `can't open` message.

use blockfault::output::Capture;
use blockfault::qemu_io::{self, Invocation};
use proptest::prelude::*;
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::Duration;

/// Far more than any generated session needs; reaching it means the engine hangs.
const TIME_LIMIT: Duration = Duration::from_secs(20);

fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let img = std::fs::File::create(dir.path().join("img.raw")).unwrap();
    img.set_len(64 * 1024).unwrap();
    let reference = std::fs::File::create(dir.path().join("ref.raw")).unwrap();
    reference.set_len(64 * 1024).unwrap();
    std::fs::write(dir.path().join("src.bin"), b"some source bytes").unwrap();
    std::fs::write(
        dir.path().join("d.conf"),
        "[inject-error]\nevent = \"read_aio\"\nonce = \"on\"\n",
    )
    .unwrap();
    dir
}

/// Runs an invocation in its own thread (the engine is single-threaded inside) and gives up
/// after [`TIME_LIMIT`]. A panic or a hang fails the property.
fn run_bounded(inv: Invocation) -> Result<(String, i32), TestCaseError> {
    let dir = scratch();
    let base = dir.path().to_path_buf();
    let (tx, rx) = mpsc::channel();
    let shown = format!("{inv:?}");
    std::thread::spawn(move || {
        let result = std::panic::catch_unwind(move || {
            let cap = Rc::new(RefCell::new(Capture::default()));
            let status = qemu_io::run(&inv, Path::new(&base), cap.clone());
            let out = cap.borrow().combined.clone();
            (out, status)
        });
        let _ = tx.send(result.map_err(|_| ()));
    });
    let outcome = match rx.recv_timeout(TIME_LIMIT) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(())) => Err(TestCaseError::fail(format!(
            "the engine panicked on {shown}"
        ))),
        Err(_) => Err(TestCaseError::fail(format!(
            "the engine did not finish within {TIME_LIMIT:?} on {shown}"
        ))),
    };
    drop(dir);
    outcome
}

// ---- qemu-io command lines -------------------------------------------------------------------

/// Every command name and alias except `sleep`, whose argument is a real wait (generated apart).
const COMMANDS: &[&str] = &[
    "abort",
    "aio_flush",
    "aio_read",
    "aio_write",
    "alloc",
    "a",
    "break",
    "close",
    "c",
    "discard",
    "d",
    "flush",
    "f",
    "help",
    "?",
    "info",
    "i",
    "length",
    "l",
    "map",
    "open",
    "o",
    "quit",
    "q",
    "read",
    "r",
    "readv",
    "remove_break",
    "reopen",
    "resume",
    "sigraise",
    "truncate",
    "t",
    "wait_break",
    "write",
    "w",
    "writev",
    "zone_append",
    "zap",
    "zone_close",
    "zc",
    "zone_finish",
    "zf",
    "zone_open",
    "zo",
    "zone_report",
    "zrp",
    "zone_reset",
    "zrs",
    "bogus",
    "",
];

/// Words arguments are made of: flags, numbers in all the accepted and rejected forms (but no
/// valid length big enough to allocate gigabytes), tags, events, paths, option values.
const WORDS: &[&str] = &[
    "-P",
    "-P0x41",
    "-q",
    "-v",
    "-C",
    "-z",
    "-u",
    "-f",
    "-n",
    "-b",
    "-c",
    "-r",
    "-s",
    "-l",
    "-m",
    "-p",
    "-w",
    "-i",
    "-o",
    "-t",
    "-d",
    "-U",
    "-k",
    "-x",
    "-qv",
    "--",
    "-",
    "0",
    "1",
    "512",
    "1k",
    "4k",
    "64k",
    "100",
    "0x200",
    "010",
    "-1",
    "1.5k",
    ".5k",
    "1.5",
    "abc",
    "8E",
    "3G",
    "2147483137",
    "99999999999999999999",
    "63k",
    "65536",
    "65535",
    "0x",
    "+1",
    "1e3",
    "A",
    "B",
    "write_aio",
    "read_aio",
    "pwritev",
    "pwritev_done",
    "flush_to_disk",
    "none",
    "img.raw",
    "nonexist",
    "src.bin",
    "d.conf",
    "off",
    "full",
    "falloc",
    "metadata",
    "bogus",
    "writeback",
    "none",
    "unmap",
    "driver=raw",
    "driver=raw,file.filename=img.raw",
    "15",
    "66",
    "\"",
    "'",
];

/// Mostly well-formed data commands, so that sessions get past argument checking into I/O.
fn data_command() -> impl Strategy<Value = String> {
    let name = prop::sample::select(
        &[
            "read",
            "write",
            "readv",
            "writev",
            "aio_read",
            "aio_write",
            "discard",
            "alloc",
            "aio_flush",
            "flush",
            "map",
        ][..],
    );
    let flag = prop::sample::select(
        &[
            "-q",
            "-v",
            "-C",
            "-z",
            "-P 7",
            "-P 0",
            "-f",
            "-u",
            "-b",
            "-s src.bin",
        ][..],
    );
    let offset = prop::sample::select(&["0", "512", "1k", "100", "63k", "64k", "65535"][..]);
    let len = prop::sample::select(&["0", "1", "512", "1k", "4k", "700"][..]);
    (
        name,
        prop::collection::vec(flag, 0..3),
        offset,
        prop::collection::vec(len, 1..3),
    )
        .prop_map(|(n, f, o, l)| {
            std::iter::once(n)
                .chain(f)
                .chain(std::iter::once(o))
                .chain(l)
                .collect::<Vec<_>>()
                .join(" ")
        })
}

fn command() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => data_command(),
        1 => prop::sample::select(&["break write_aio A", "break read_aio B", "resume A", "resume B", "wait_break A", "remove_break A", "close", "open -o driver=raw img.raw"][..])
            .prop_map(String::from),
        6 => (prop::sample::select(COMMANDS), prop::collection::vec(prop::sample::select(WORDS), 0..6))
            .prop_map(|(c, args)| std::iter::once(c).chain(args).collect::<Vec<_>>().join(" ")),
        1 => prop::sample::select(&["0", "1", "-1", "x", "0x2", ""][..]).prop_map(|a| format!("sleep {a}")),
        // anything printable: a stray "sleep <huge>" is astronomically unlikely
        2 => "[ -~]{0,40}",
    ]
}

fn drive_for_commands() -> impl Strategy<Value = (Option<String>, Option<String>)> {
    prop::sample::select(
        &[
            (Some("raw"), Some("img.raw")),
            (None, Some("img.raw")),
            (Some("raw"), Some("blkdebug::img.raw")),
            (Some("raw"), Some("blkdebug:d.conf:img.raw")),
            (Some("raw"), Some("blkverify:ref.raw:img.raw")),
            (None, None),
        ][..],
    )
    .prop_map(|(f, d)| (f.map(String::from), d.map(String::from)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn command_lines_never_panic_or_hang(
        (format, drive) in drive_for_commands(),
        commands in prop::collection::vec(command(), 1..8),
    ) {
        let inv = Invocation { format, commands, drive, ..Invocation::default() };
        let (_, status) = run_bounded(inv)?;
        // qemu-io's statuses: 0/1, 134 for abort, 128+N for sigraise N
        prop_assert!((0..=255).contains(&status), "exit status {}", status);
    }
}

// ---- drive specifications --------------------------------------------------------------------

fn json_scalar() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    prop_oneof![
        prop::sample::select(
            &[
                "raw",
                "file",
                "blkdebug",
                "blkverify",
                "img.raw",
                "ref.raw",
                "d.conf",
                "nonexist",
                "read_aio",
                "none",
                "write",
                "on",
                "TRUE",
                "4096",
                "abc",
                "",
                "blkdebug::img.raw",
            ][..]
        )
        .prop_map(|s| Value::String(s.into())),
        any::<i64>().prop_map(Value::from),
        prop::sample::select(&[0i64, 1, 3, 512, 4096, -1, 65536][..]).prop_map(Value::from),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        "[ -~]{0,8}".prop_map(Value::String),
    ]
}

/// Keys the block layer knows (so that generated trees often get deep into the open code),
/// plus junk.
const KEYS: &[&str] = &[
    "driver",
    "filename",
    "file",
    "image",
    "raw",
    "test",
    "config",
    "align",
    "max-transfer",
    "opt-write-zero",
    "max-write-zero",
    "opt-discard",
    "max-discard",
    "inject-error",
    "set-state",
    "event",
    "state",
    "new_state",
    "errno",
    "sector",
    "once",
    "immediately",
    "iotype",
    "take-child-perms",
    "unshare-child-perms",
    "x-image",
    "x-raw",
    "read-only",
    "bogus",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_scalar().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Flat `--image-opts` keys, dotted as QEMU's keyval syntax has them.
const FLAT_KEYS: &[&str] = &[
    "driver",
    "filename",
    "file.driver",
    "file.filename",
    "file.image.filename",
    "file.align",
    "file.inject-error.0.event",
    "file.inject-error.event",
    "file.inject-error.1.errno",
    "file.set-state.0.new_state",
    "raw.filename",
    "test.filename",
    "test.driver",
    "image.filename",
    "file.config",
    "file.max-transfer",
    "x",
    "",
];

fn image_opts() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        prop::sample::select(
            &[
                "raw",
                "file",
                "blkdebug",
                "blkverify",
                "img.raw",
                "ref.raw",
                "d.conf",
                "read_aio",
                "4k",
                "3",
                "on",
                ""
            ][..]
        )
        .prop_map(String::from),
        "[ -~]{0,6}",
    ];
    prop_oneof![
        prop::collection::vec((prop::sample::select(FLAT_KEYS), value), 0..6).prop_map(|kv| {
            kv.into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        "[ -~]{0,40}",
    ]
}

fn filename() -> impl Strategy<Value = String> {
    prop_oneof![
        json_value().prop_map(|v| format!("json:{v}")),
        "json:[ -~]{0,30}",
        (
            prop::sample::select(&["blkdebug:", "blkverify:", "file:", "raw:", ""][..]),
            "[a-z.:]{0,20}"
        )
            .prop_map(|(p, rest)| format!("{p}{rest}")),
        prop::sample::select(
            &[
                "img.raw",
                "blkdebug::img.raw",
                "blkdebug:d.conf:img.raw",
                "blkverify:ref.raw:img.raw"
            ][..]
        )
        .prop_map(String::from),
        "[ -~]{0,30}",
    ]
}

/// An open either succeeds, and then `length` prints a size (or `getlength:`), or fails with
/// exit status 1 and a `qemu-io: ` message: `can't open ...` for the open itself, or, for
/// `--image-opts`, the option parser's own error (QEMU prints e.g.
/// `qemu-io: Parameter 'id' expects an identifier` without `can't open`).
fn check_open(out: &str, status: i32) -> Result<(), TestCaseError> {
    let last = out.lines().last().unwrap_or_default();
    if last.ends_with("bytes") || last.ends_with("iB") || last.starts_with("getlength:") {
        prop_assert_eq!(status, 0, "opened and ran `length`: {}", out);
    } else {
        prop_assert_eq!(status, 1, "a failed open exits 1: {}", out);
        prop_assert!(
            out.lines().any(|l| l.starts_with("qemu-io: ")),
            "neither opened nor failed with a qemu-io message: {:?}",
            out
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn filenames_open_or_fail_cleanly(drive in filename(), raw_format in any::<bool>()) {
        let inv = Invocation {
            format: raw_format.then(|| "raw".to_string()),
            commands: vec!["length".into()],
            drive: Some(drive),
            ..Invocation::default()
        };
        let (out, status) = run_bounded(inv)?;
        check_open(&out, status)?;
    }

    #[test]
    fn image_opts_open_or_fail_cleanly(drive in image_opts()) {
        let inv = Invocation {
            image_opts: true,
            commands: vec!["length".into()],
            drive: Some(drive),
            ..Invocation::default()
        };
        let (out, status) = run_bounded(inv)?;
        check_open(&out, status)?;
    }
}

// ---- QEMU's JSON dialect (`json:` filenames) -------------------------------------------------

use blockfault::block::json::{self, QObject};
use serde_json::Value;

/// How [`qemu_text`] writes a value: which quotes, what goes between tokens, and whether every
/// non-ASCII character is written as a `\u` escape.
#[derive(Debug, Clone)]
struct Style {
    quote: char,
    space: &'static str,
    escape_unicode: bool,
}

fn style() -> impl Strategy<Value = Style> {
    (
        prop::sample::select(&['"', '\''][..]),
        prop::sample::select(&["", " ", "\n", "\t\r\n "][..]),
        any::<bool>(),
    )
        .prop_map(|(quote, space, escape_unicode)| Style {
            quote,
            space,
            escape_unicode,
        })
}

/// A value as QEMU's dialect can spell it.
fn qemu_text(v: &Value, style: &Style, out: &mut String) {
    let sp = style.space;
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => quoted(s, style, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                out.push_str(if i == 0 { sp } else { "," });
                out.push_str(sp);
                qemu_text(item, style, out);
                out.push_str(sp);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                out.push_str(if i == 0 { sp } else { "," });
                out.push_str(sp);
                quoted(k, style, out);
                out.push_str(sp);
                out.push(':');
                out.push_str(sp);
                qemu_text(item, style, out);
                out.push_str(sp);
            }
            out.push('}');
        }
    }
}

fn quoted(s: &str, style: &Style, out: &mut String) {
    out.push(style.quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == style.quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (style.escape_unicode && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(style.quote);
}

/// The value QEMU's parser gives for JSON text of `v`.
fn expected(v: &Value) -> QObject {
    match v {
        Value::Null => QObject::Null,
        Value::Bool(b) => QObject::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => QObject::Int(i),
            (_, Some(u)) => QObject::UInt(u),
            _ => QObject::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => QObject::Str(s.clone()),
        Value::Array(items) => QObject::List(items.iter().map(expected).collect()),
        Value::Object(map) => {
            QObject::Dict(map.iter().map(|(k, v)| (k.clone(), expected(v))).collect())
        }
    }
}

/// [`json_value`] with what it lacks for the parser: doubles, large integers, and strings with
/// control characters and any Unicode (but not the noncharacters QEMU rejects).
fn dialect_value() -> impl Strategy<Value = Value> {
    let scalar = prop_oneof![
        json_scalar(),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(Value::from),
        "\\PC{0,6}".prop_map(Value::String),
        "[\\x00-\\x1f\"'\\\\/]{0,6}".prop_map(Value::String),
    ];
    scalar.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("\\PC{0,4}", inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Pieces that make JSON-like text, valid or not.
const PIECES: &[&str] = &[
    "{", "}", "[", "]", ":", ",", "'a'", "\"b\"", "'", "\"", "\\", "1", "-0", "-", "01", "2.5e3",
    "1.", "e", "true", "null", "tru", "%d", " ", "\n", "\t", "\\u12", "\\uD800", "\\u0041", "é",
    "\u{FDD0}", "x", "\u{1}",
];

/// What QEMU may answer to text that is not a JSON object.
fn is_qemu_json_error(e: &str) -> bool {
    e.starts_with("JSON parse error, ")
        || [
            "Expecting a JSON value",
            "Expecting at most one JSON value",
            "JSON nesting depth limit exceeded",
        ]
        .contains(&e)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_dialect_reads_any_spelling_of_a_value(v in dialect_value(), style in style()) {
        let mut text = String::from(style.space);
        qemu_text(&v, &style, &mut text);
        text.push_str(style.space);
        prop_assert_eq!(json::parse(text.as_bytes()), Ok(expected(&v)), "{}", text);
    }

    #[test]
    fn json_filenames_keep_objects_without_dotted_keys(v in json_value(), style in style()) {
        // Flattening and nesting again gives the object back when no key has a dot (object
        // keys may come back in another order: QEMU re-inserts the keys it flattens; objects
        // compare as maps, lists in order).
        let Value::Object(map) = v else { return Ok(()) };
        let mut text = String::new();
        qemu_text(&Value::Object(map.clone()), &style, &mut text);
        let options = blockfault::block::json_filename::parse(&text);
        prop_assert_eq!(options, Ok(map), "{}", text);
    }

    #[test]
    fn any_text_parses_or_fails_with_a_qemu_message(
        pieces in prop::collection::vec(prop::sample::select(PIECES), 0..24),
        bytes in prop::collection::vec(any::<u8>(), 0..24),
    ) {
        for input in [pieces.concat().into_bytes(), bytes] {
            if let Err(e) = json::parse(&input) {
                prop_assert!(is_qemu_json_error(&e), "{:?}: {}", String::from_utf8_lossy(&input), e);
            }
        }
    }
}
