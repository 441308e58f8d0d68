//! The iotests output filters (`_filter_qemu_io`, `_filter_testdir`) plus the runner's own
//! normalisation: no `\r`, no trailing whitespace on any line.

use std::path::Path;

/// Everything applied to a step's raw output before it is compared or stored.
pub fn apply(raw: &str, scratch: &Path) -> String {
    let text = testdir(&raw.replace('\r', ""), scratch);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let body = body.replace("qemu-io> ", "");
        out.push_str(stats_line(&body).trim_end());
        out.push_str(nl);
    }
    out
}

/// `_filter_testdir`: the scratch directory's absolute path (also as the OS resolves it, since the
/// temp dir may sit behind a symlink) becomes `TEST_DIR`.
fn testdir(text: &str, scratch: &Path) -> String {
    let mut out = text.to_string();
    let mut paths = vec![scratch.to_path_buf()];
    if let Ok(real) = scratch.canonicalize()
        && real != scratch
    {
        paths.push(real);
    }
    for p in paths {
        out = out.replace(&*p.to_string_lossy(), "TEST_DIR");
    }
    out
}

const STATS: &str = "X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)";

/// `_filter_qemu_io`'s sed expression, first match on the line:
/// `[0-9]* ops; [0-9/:. sec]* ([0-9/.inf]* [EPTGMKiBbytes]*/sec and [0-9/.inf]* ops/sec)`.
pub fn stats_line(line: &str) -> String {
    let b = line.as_bytes();
    let mut from = 0;
    while let Some(rel) = line[from..].find(" ops; ") {
        let at = from + rel;
        let mut start = at;
        while start > 0 && b[start - 1].is_ascii_digit() {
            start -= 1;
        }
        if let Some(end) = match_stats_tail(b, at + " ops; ".len()) {
            return format!("{}{STATS}{}", &line[..start], &line[end..]);
        }
        from = at + 1;
    }
    line.to_string()
}

/// Matches the part after `ops; `; returns the end offset.
fn match_stats_tail(b: &[u8], mut i: usize) -> Option<usize> {
    let span = |i: &mut usize, set: &[u8]| {
        while *i < b.len() && set.contains(&b[*i]) {
            *i += 1;
        }
    };
    let lit = |i: &mut usize, s: &str| -> Option<()> {
        b[*i..].starts_with(s.as_bytes()).then(|| *i += s.len())
    };
    const NUM: &[u8] = b"0123456789/.inf";
    span(&mut i, b"0123456789/:. sec");
    lit(&mut i, "(")?;
    span(&mut i, NUM);
    lit(&mut i, " ")?;
    span(&mut i, b"EPTGMKiBbytes");
    lit(&mut i, "/sec and ")?;
    span(&mut i, NUM);
    lit(&mut i, " ops/sec)")?;
    Some(i)
}

/// Golden comparison ignores trailing whitespace and a missing final newline.
pub fn same(a: &str, b: &str) -> bool {
    let lines = |t: &str| -> Vec<String> {
        let mut v: Vec<String> = t.lines().map(|l| l.trim_end().to_string()).collect();
        while v.last().is_some_and(|l| l.is_empty()) {
            v.pop();
        }
        v
    };
    lines(a) == lines(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_lines_are_filtered() {
        assert_eq!(
            stats_line("4 KiB, 1 ops; 00.00 sec (3.403 MiB/sec and 871.2684 ops/sec)"),
            "4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
        );
        assert_eq!(
            stats_line("512 bytes, 1 ops; 0:37:15.32 (836.191016 bytes/sec and 0.0004 ops/sec)"),
            "512 bytes, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
        );
        assert_eq!(
            stats_line("0 bytes, 1 ops; 00.00 sec (0 bytes/sec and inf ops/sec)"),
            "0 bytes, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
        );
        assert_eq!(
            stats_line("read 512/512 bytes at offset 0"),
            "read 512/512 bytes at offset 0"
        );
    }

    #[test]
    fn testdir_and_whitespace() {
        let out = apply("open /tmp/x/t.img  \r\nqemu-io> done", Path::new("/tmp/x"));
        assert_eq!(out, "open TEST_DIR/t.img\ndone");
    }

    #[test]
    fn comparison_ignores_trailing_whitespace_only() {
        assert!(same("a \nb\n", "a\nb"));
        assert!(!same("a\nb\n", "a\nc\n"));
        assert!(!same(" a\n", "a\n"));
    }
}
