//! `--junit FILE`: the report as JUnit XML, one testcase per scenario.

use crate::report::{Record, Status, Totals};
use std::fmt::Write as _;

pub fn render(records: &[Record], suite: &str) -> String {
    let mut t = Totals::default();
    records.iter().for_each(|r| t.add(&r.status));
    let time: f64 = records.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites><testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"{}\" time=\"{time:.3}\">",
        esc(suite),
        records.len(),
        t.failed,
        t.skipped
    );
    for r in records {
        let (class, name) = match r.name.rsplit_once('/') {
            Some((dir, base)) => (dir.replace('/', "."), base),
            None => (String::new(), r.name.as_str()),
        };
        let _ = write!(
            x,
            "  <testcase classname=\"{}\" name=\"{}\" file=\"{}\" time=\"{:.3}\"",
            esc(&class),
            esc(name),
            esc(&r.file),
            r.elapsed.as_secs_f64()
        );
        match &r.status {
            Status::Pass | Status::Blessed => x.push_str("/>\n"),
            Status::Skip(reason) => {
                let _ = writeln!(x, "><skipped message=\"{}\"/></testcase>", esc(reason));
            }
            Status::Error(msg) => {
                let _ = writeln!(x, "><failure message=\"{}\"/></testcase>", esc(msg));
            }
            Status::Fail { expected, .. } => {
                let message = if expected.is_some() {
                    "output differs from golden file"
                } else {
                    "no golden file"
                };
                let style = crate::report::Style { color: false };
                let body = crate::report::diff(
                    expected.as_deref().unwrap_or(""),
                    &r.actual,
                    &r.golden,
                    style,
                );
                let _ = writeln!(
                    x,
                    "><failure message=\"{message}\">{}</failure></testcase>",
                    esc(&body)
                );
            }
        }
    }
    x.push_str("</testsuite></testsuites>\n");
    x
}

/// XML escaping; control characters other than tab and newline are not allowed in XML 1.0.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\x{:02x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}
