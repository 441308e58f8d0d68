//! Golden files: comparing, blessing (atomically), and the `.out.new` kept beside a failure.

use crate::filters;
use std::path::{Path, PathBuf};

/// How actual output compares with the golden file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    Pass,
    /// `expected` is None when there is no golden file yet.
    Fail {
        expected: Option<String>,
    },
    /// `--bless` wrote a new golden file (true) or found it already right (false).
    Blessed(bool),
}

/// `b.out` -> `b.out.new`.
pub fn new_path(golden: &Path) -> PathBuf {
    let mut s = golden.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Compares and keeps the `.out.new` in step; with `bless`, rewrites the golden file instead.
pub fn judge(golden: &Path, actual: &str, bless: bool) -> std::io::Result<Judgement> {
    let expected = std::fs::read_to_string(golden).ok();
    let same = expected
        .as_deref()
        .is_some_and(|e| filters::same(e, actual));
    if bless {
        remove_if_present(&new_path(golden))?;
        if same && expected.as_deref() == Some(actual) {
            return Ok(Judgement::Blessed(false));
        }
        write_atomically(golden, actual)?;
        return Ok(Judgement::Blessed(true));
    }
    if same {
        remove_if_present(&new_path(golden))?;
        Ok(Judgement::Pass)
    } else {
        // Only next to an existing golden folder: without --bless nothing new appears under golden/.
        if golden.parent().is_some_and(Path::is_dir) {
            write_atomically(&new_path(golden), actual)?;
        }
        Ok(Judgement::Fail { expected })
    }
}

fn remove_if_present(p: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Temp file in the same directory, then rename: readers see the old file or the new one, never half.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
