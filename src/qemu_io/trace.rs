//! qemu-io's `-T`/`--trace [[enable=]PATTERN][,events=FILE][,file=FILE]`.
//!
//! The engine has none of QEMU's trace points, so nothing is ever traced; what is reproduced is
//! everything the option itself does: its QemuOpts syntax and errors, `help` (the list of QEMU
//! 10.0.2 qemu-io's trace events, printed by the real binary into `trace_events.txt`), the
//! "does not exist" warnings for names outside that list, the events file and its line-numbered
//! warnings, and the log file `file=` creates (empty, as nothing is traced).

use crate::output::Console;
use std::path::Path;

/// `qemu-io -T help`'s output: the trace events of QEMU 10.0.2's qemu-io, one per line.
const EVENTS: &str = include_str!("trace_events.txt");

/// What the `-T` options given so far leave for [`open_log_file`].
#[derive(Debug, Default)]
pub struct TraceSetup {
    /// `file=` of the last `-T` (every `-T` replaces it, even one without `file=`)
    log_file: Option<String>,
}

/// A failed QemuOpts parse: `help` was asked for, or an error (message and optional hint).
#[derive(Debug, PartialEq, Eq)]
enum OptsFailure {
    Help,
    Error(String),
}

/// What parsing `k=v,...` printed (warnings, in order) and produced.
#[derive(Debug, PartialEq, Eq)]
struct ParsedOpts {
    warnings: Vec<String>,
    result: Result<Vec<(String, String)>, OptsFailure>,
}

const ID_HINT: &str =
    "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.";

/// QEMU's `id_wellformed`.
pub fn id_wellformed(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// The error QEMU gives for a malformed `id`, with its hint line.
pub fn bad_id_message() -> String {
    format!("Parameter 'id' expects an identifier\n{ID_HINT}")
}

/// One `name=value` or bare element of QemuOpts text, from `text`; returns the name, the value,
/// whether it was a bare flag, and the rest after the separating comma. `implied` names a
/// first element that has no `=`.
fn next_element<'t>(
    text: &'t str,
    implied: Option<&str>,
) -> (String, String, Option<&'t str>, &'t str) {
    let name_len = text.find(['=', ',']).unwrap_or(text.len());
    let (name, value, flag, rest) = if text[name_len..].starts_with('=') {
        let (value, rest) = opt_value(&text[name_len + 1..]);
        (text[..name_len].to_string(), value, None, rest)
    } else if let Some(implied) = implied {
        let (value, rest) = opt_value(text);
        (implied.to_string(), value, None, rest)
    } else {
        let bare = &text[..name_len];
        let rest = &text[name_len..];
        match bare.strip_prefix("no") {
            Some(name) => (name.to_string(), "off".to_string(), Some(bare), rest),
            None => (bare.to_string(), "on".to_string(), Some(bare), rest),
        }
    };
    (name, value, flag, rest.strip_prefix(',').unwrap_or(rest))
}

/// A value up to the first single comma (`,,` is a literal comma), and the text from that comma.
fn opt_value(text: &str) -> (String, &str) {
    let mut value = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == ',' {
            if rest[1..].starts_with(',') {
                value.push(',');
                rest = &rest[2..];
                continue;
            }
            break;
        }
        value.push(c);
        rest = &rest[c.len_utf8()..];
    }
    (value, rest)
}

/// `qemu_opts_parse_noisily` for an option list with only the string options `known`, whose
/// first element may omit its name (`implied`).
fn parse_opts(text: &str, implied: &str, known: &[&str]) -> ParsedOpts {
    let mut warnings = Vec::new();
    // The id is looked for first, every element read as name=value or a flag.
    let mut rest = text;
    while !rest.is_empty() {
        let (name, value, _, next) = next_element(rest, None);
        if name == "id" {
            if !id_wellformed(&value) {
                let result = Err(OptsFailure::Error(bad_id_message()));
                return ParsedOpts { warnings, result };
            }
            break;
        }
        rest = next;
    }
    let mut opts = Vec::new();
    let mut implied = Some(implied);
    let mut rest = text;
    while !rest.is_empty() {
        let (name, value, flag, next) = next_element(rest, implied);
        implied = None;
        rest = next;
        if let Some(bare) = flag {
            if bare == "help" || bare == "?" {
                let result = Err(OptsFailure::Help);
                return ParsedOpts { warnings, result };
            }
            warnings.push(format!("short-form boolean option '{bare}' deprecated"));
            let advice = if name == "delay" {
                format!(
                    "Please use nodelay={} instead",
                    if value == "on" { "off" } else { "on" }
                )
            } else {
                format!("Please use {name}={value} instead")
            };
            warnings.push(advice);
        }
        if name == "id" {
            continue;
        }
        if !known.contains(&name.as_str()) {
            let result = Err(OptsFailure::Error(format!("Invalid parameter '{name}'")));
            return ParsedOpts { warnings, result };
        }
        opts.push((name, value));
    }
    ParsedOpts {
        warnings,
        result: Ok(opts),
    }
}

/// Where a trace message comes from: the command line, or a line of an events file.
enum Location<'a> {
    CommandLine,
    File(&'a str, usize),
}

fn report(console: &Console, loc: &Location, message: &str) {
    match loc {
        Location::CommandLine => console.report(message),
        Location::File(name, 0) => console.err(&format!("qemu-io:{name}: {message}\n")),
        Location::File(name, line) => console.err(&format!("qemu-io:{name}:{line}: {message}\n")),
    }
}

/// `trace_enable_events`: `help` lists the events and ends the process with 0; a name (with
/// an optional leading `-` that disables) that is not a `*` pattern must be a known event.
fn enable_events(console: &Console, loc: &Location, spec: &str) -> Result<(), i32> {
    if spec == "help" || spec == "?" {
        console.out(EVENTS);
        return Err(0);
    }
    let name = spec.strip_prefix('-').unwrap_or(spec);
    if !name.contains('*') && !EVENTS.lines().any(|e| e == name) {
        report(
            console,
            loc,
            &format!("warning: trace event '{name}' does not exist"),
        );
    }
    Ok(())
}

/// `trace_init_events`: each line of the file (as fgets reads it: at most 1023 bytes, through a
/// newline) loses its last character, then is skipped if empty or a `#` comment, else enabled.
fn events_file(console: &Console, name: &str, base_dir: &Path) -> Result<(), i32> {
    let data = match read_named(base_dir, name) {
        Ok(d) => d,
        // A directory opens but reads nothing.
        Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Vec::new(),
        Err(e) => {
            let loc = Location::File(name, 0);
            report(
                console,
                &loc,
                &crate::errno::strerror(e.raw_os_error().unwrap_or(libc::EIO)),
            );
            return Err(1);
        }
    };
    let mut rest = &data[..];
    let mut line_no = 0;
    while !rest.is_empty() {
        let take = rest
            .iter()
            .take(1023)
            .position(|&b| b == b'\n')
            .map_or(rest.len().min(1023), |p| p + 1);
        let (chunk, next) = rest.split_at(take);
        rest = next;
        line_no += 1;
        // The C string ends at the first NUL.
        let line = chunk.split(|&b| b == 0).next().unwrap_or_default();
        if line.len() > 1 {
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            if !line.starts_with('#') {
                enable_events(console, &Location::File(name, line_no), &line)?;
            }
        }
    }
    Ok(())
}

/// Reads a file named on the command line, relative to `base_dir`; an empty name is no file,
/// as for `fopen("")`.
pub fn read_named(base_dir: &Path, name: &str) -> std::io::Result<Vec<u8>> {
    if name.is_empty() {
        return Err(std::io::Error::from_raw_os_error(libc::ENOENT));
    }
    std::fs::read(base_dir.join(crate::host_bytes::host_path(name)))
}

/// Processes one `-T` argument as QEMU's `trace_opt_parse` does, at its place among the
/// options: its warnings and errors are printed then. `Err(status)` ends the process.
pub fn apply(
    arg: &str,
    setup: &mut TraceSetup,
    console: &Console,
    base_dir: &Path,
) -> Result<(), i32> {
    let parsed = parse_opts(arg, "enable", &["enable", "events", "file"]);
    let mut warnings = parsed.warnings.iter();
    while let Some(w) = warnings.next() {
        console.report(&format!("warning: {w}"));
        if let Some(advice) = warnings.next() {
            console.err(&format!("{advice}\n"));
        }
    }
    let opts = match parsed.result {
        Ok(opts) => opts,
        Err(OptsFailure::Help) => {
            console.out("trace options:\n  enable=<str>\n  events=<str>\n  file=<str>\n");
            return Err(1);
        }
        Err(OptsFailure::Error(message)) => {
            console.report(&message);
            return Err(1);
        }
    };
    // The last value of each key counts, and the keys act in this order whatever their order.
    let last = |key: &str| {
        opts.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    };
    if let Some(spec) = last("enable") {
        enable_events(console, &Location::CommandLine, &spec)?;
    }
    if let Some(file) = last("events") {
        events_file(console, &file, base_dir)?;
    }
    setup.log_file = last("file");
    Ok(())
}

/// `trace_init_file`, once all options are read: `file=` is created (or truncated), with a
/// `%d` in its name replaced by the process id.
pub fn open_log_file(setup: &TraceSetup, console: &Console, base_dir: &Path) -> Result<(), i32> {
    let Some(template) = &setup.log_file else {
        return Ok(());
    };
    let name = match template
        .match_indices('%')
        .map(|(i, _)| i)
        .collect::<Vec<_>>()[..]
    {
        [] => template.clone(),
        [at] if template[at + 1..].starts_with('d') => {
            format!(
                "{}{}{}",
                &template[..at],
                std::process::id(),
                &template[at + 2..]
            )
        }
        _ => {
            console.report(&format!("Bad logfile template: {template}"));
            return Err(1);
        }
    };
    let created = if name.is_empty() {
        Err(std::io::Error::from_raw_os_error(libc::ENOENT))
    } else {
        std::fs::File::create(base_dir.join(crate::host_bytes::host_path(&name)))
    };
    match created {
        Ok(_) => Ok(()),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            console.report(&format!(
                "Error opening logfile {name}: {}",
                crate::errno::strerror(errno)
            ));
            Err(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(pairs: &[(&str, &str)]) -> Result<Vec<(String, String)>, OptsFailure> {
        Ok(pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect())
    }

    fn parse(text: &str) -> ParsedOpts {
        parse_opts(text, "enable", &["enable", "events", "file"])
    }

    #[test]
    fn implied_first_name_and_comma_escapes() {
        assert_eq!(parse("foo").result, ok(&[("enable", "foo")]));
        assert_eq!(parse("a,,b").result, ok(&[("enable", "a,b")]));
        assert_eq!(parse("foo,,").result, ok(&[("enable", "foo,")]));
        assert_eq!(parse("foo,").result, ok(&[("enable", "foo")]));
        assert_eq!(
            parse("events=x,enable=y").result,
            ok(&[("events", "x"), ("enable", "y")])
        );
        assert_eq!(parse("").result, ok(&[]));
        assert_eq!(parse("id=x").result, ok(&[]));
    }

    #[test]
    fn flags_warn_then_fail_and_help_wins() {
        let p = parse("foo,nob");
        assert_eq!(
            p.warnings,
            [
                "short-form boolean option 'nob' deprecated",
                "Please use b=off instead"
            ]
        );
        assert_eq!(
            p.result,
            Err(OptsFailure::Error("Invalid parameter 'b'".into()))
        );
        // A bare `enable` is enable=on.
        let p = parse("foo,enable");
        assert_eq!(p.result, ok(&[("enable", "foo"), ("enable", "on")]));
        assert_eq!(parse("foo,help").result, Err(OptsFailure::Help));
        assert_eq!(parse("events=x,?").result, Err(OptsFailure::Help));
        // The first element is the implied value even when it reads `help`.
        assert_eq!(parse("help").result, ok(&[("enable", "help")]));
        // An empty first element is an empty implied value.
        let p = parse(",foo");
        assert_eq!(
            p.result,
            Err(OptsFailure::Error("Invalid parameter 'foo'".into()))
        );
    }

    #[test]
    fn ids_are_checked_before_anything_else() {
        let p = parse("foo,x,id=1");
        assert!(p.warnings.is_empty());
        assert_eq!(p.result, Err(OptsFailure::Error(bad_id_message())));
        assert!(id_wellformed("a.b-c_d9"));
        assert!(!id_wellformed("9a") && !id_wellformed("") && !id_wellformed("a,b"));
    }

    #[test]
    fn the_event_list_is_qemus() {
        assert_eq!(EVENTS.lines().count(), 441);
        assert!(EVENTS.lines().any(|e| e == "bdrv_open_common"));
        assert!(EVENTS.ends_with('\n'));
    }
}
