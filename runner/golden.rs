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
/// Errors name the file they are about. A `.out.new` that cannot be written (a read-only
/// checkout) does not change the verdict: the diff is in the report anyway.
pub fn judge(golden: &Path, actual: &str, bless: bool) -> Result<Judgement, String> {
    let expected = std::fs::read_to_string(golden).ok();
    let same = expected
        .as_deref()
        .is_some_and(|e| filters::same(e, actual));
    let new = new_path(golden);
    if bless {
        remove_if_present(&new).map_err(|e| at(&new, e))?;
        if same && expected.as_deref() == Some(actual) {
            return Ok(Judgement::Blessed(false));
        }
        write_atomically(golden, actual).map_err(|e| at(golden, e))?;
        return Ok(Judgement::Blessed(true));
    }
    if same {
        remove_if_present(&new).map_err(|e| at(&new, e))?;
        Ok(Judgement::Pass)
    } else {
        // Only next to an existing golden folder: without --bless nothing new appears under golden/.
        if golden.parent().is_some_and(Path::is_dir) {
            let _ = write_atomically(&new, actual);
        }
        Ok(Judgement::Fail { expected })
    }
}

fn at(p: &Path, e: std::io::Error) -> String {
    format!("{}: {e}", p.display())
}

/// Removes `p` if it is there; a file that is not there needs no write access to stay absent.
fn remove_if_present(p: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(p).is_err() {
        return Ok(());
    }
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
