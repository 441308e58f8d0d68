//! What a person sees: one line per scenario, a diff for each failure, a closing count.

use crate::golden::Judgement;
use std::fmt::Write as _;
use std::time::Duration;

/// The result of one scenario, as reported.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    /// The scenario file, as found (JUnit's `file=`).
    pub file: String,
    /// The scenario's one-line description, shown with a failure.
    pub description: String,
    pub golden: String,
    pub status: Status,
    pub elapsed: Duration,
    /// For failures: the actual output.
    pub actual: String,
    /// Scratch directories kept by `--keep`.
    pub kept: Vec<String>,
    /// For each line of `actual`, the matrix case and step that printed it.
    pub origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// A golden file was written by `--bless`.
    Blessed,
    Fail {
        expected: Option<String>,
        new_file: Option<String>,
    },
    Skip(String),
    /// The run itself went wrong (for example the golden file could not be written).
    Error(String),
}

impl Status {
    pub fn from_judgement(j: Judgement, new_file: Option<String>) -> Status {
        match j {
            Judgement::Pass | Judgement::Blessed(false) => Status::Pass,
            Judgement::Blessed(true) => Status::Blessed,
            Judgement::Fail { expected } => Status::Fail { expected, new_file },
        }
    }
}

/// ANSI colours, used only when writing to a terminal.
#[derive(Clone, Copy)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// The report block for one scenario: its status line, then details for failures.
pub fn render(r: &Record, style: Style) -> String {
    let secs = format!("({:.2}s)", r.elapsed.as_secs_f64());
    let mut out = match &r.status {
        Status::Pass => format!("{} {} {secs}\n", style.paint("32", "pass"), r.name),
        Status::Blessed => format!("{} {} {secs}\n", style.paint("36", "bless"), r.name),
        Status::Skip(reason) => format!("{} {}: {reason}\n", style.paint("33", "skip"), r.name),
        Status::Error(msg) => format!(
            "{} {} {secs}\n    {msg}\n",
            style.paint("1;31", "FAIL"),
            r.name
        ),
        Status::Fail { expected, new_file } => {
            let mut s = format!(
                "{} {} {secs}\n    {}\n",
                style.paint("1;31", "FAIL"),
                r.name,
                r.description
            );
            match expected {
                Some(e) => {
                    if let Some(w) = first_difference(e, &r.actual, &r.origins) {
                        let _ = writeln!(s, "    {w}");
                    }
                    s.push_str(&diff(e, &r.actual, &r.golden, style));
                }
                None => {
                    let _ = writeln!(
                        s,
                        "    no golden file {} (run with --bless to create it); actual output:",
                        r.golden
                    );
                    s.push_str(&diff("", &r.actual, &r.golden, style));
                }
            }
            if let Some(n) = new_file {
                let _ = writeln!(s, "    actual output kept in {n}");
            }
            s
        }
    };
    for k in &r.kept {
        let _ = writeln!(out, "    scratch directory kept: {k}");
    }
    out
}

/// Where the first differing line comes from: `first difference at line N: [case ...] step K
/// (qemu-io)`. A diff's context can show the next case's header, so it is said in so many words.
pub fn first_difference(expected: &str, actual: &str, origins: &[String]) -> Option<String> {
    let e: Vec<&str> = expected.lines().map(str::trim_end).collect();
    let a: Vec<&str> = actual.lines().map(str::trim_end).collect();
    let at = (0..e.len().max(a.len())).find(|&i| e.get(i) != a.get(i))?;
    let line = at + 1;
    Some(match origins.get(at) {
        Some(origin) => format!("first difference at line {line}: {origin}"),
        None => match origins.last() {
            Some(last) => format!(
                "first difference at line {line}: the actual output ends there (last line from {last})"
            ),
            None => format!("first difference at line {line}: the actual output is empty"),
        },
    })
}

/// A unified diff, golden on the minus side; trailing whitespace is not part of the comparison.
pub fn diff(expected: &str, actual: &str, golden: &str, style: Style) -> String {
    let norm = |t: &str| -> String { t.lines().map(|l| format!("{}\n", l.trim_end())).collect() };
    let (e, a) = (norm(expected), norm(actual));
    let udiff = similar::TextDiff::from_lines(&e, &a)
        .unified_diff()
        .context_radius(3)
        .header(golden, "actual")
        .to_string();
    let mut out = String::new();
    for line in udiff.lines() {
        let painted = match line.as_bytes().first() {
            Some(b'+') if !line.starts_with("+++") => style.paint("32", line),
            Some(b'-') if !line.starts_with("---") => style.paint("31", line),
            Some(b'@') => style.paint("36", line),
            _ => line.to_string(),
        };
        let _ = writeln!(out, "    {painted}");
    }
    out
}

/// Counts for the closing line.
#[derive(Default, Debug, Clone, Copy)]
pub struct Totals {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Totals {
    pub fn add(&mut self, s: &Status) {
        match s {
            Status::Pass | Status::Blessed => self.passed += 1,
            Status::Skip(_) => self.skipped += 1,
            Status::Fail { .. } | Status::Error(_) => self.failed += 1,
        }
    }

    pub fn closing_line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// The line redrawn on a terminal while scenarios run.
pub fn progress(done: usize, total: usize, t: &Totals) -> String {
    format!(
        "\r\x1b[K[{done}/{total}] {} passed, {} failed, {} skipped",
        t.passed, t.failed, t.skipped
    )
}

/// Erases the progress line before a report line is printed over it.
pub const CLEAR_PROGRESS: &str = "\r\x1b[K";
