//! Finding scenario files, naming them, pairing them with golden files, and selecting which run.

use std::path::{Component, Path, PathBuf};

/// A scenario file and where its golden output lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Path as found (relative to the working directory when given so).
    pub path: PathBuf,
    /// Path relative to its `scenarios/` folder (or the given root), without `.yaml`.
    pub name: String,
    pub golden: PathBuf,
}

/// Scenario files under `roots`, sorted by name. `golden_dir` overrides `golden/` beside the
/// nearest ancestor folder named `scenarios`. Names and golden paths are worked out on absolute
/// paths, so they do not depend on the working directory (`cd scenarios/a && blockfault .`).
pub fn discover(roots: &[PathBuf], golden_dir: Option<&Path>) -> Result<Vec<Entry>, String> {
    let mut out: Vec<Entry> = Vec::new();
    let golden_dir = golden_dir.map(absolute);
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let files: Vec<PathBuf> = if meta.is_dir() {
            walkdir::WalkDir::new(root)
                .sort_by_file_name()
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| {
                    e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "yaml")
                })
                .map(|e| e.into_path())
                .collect()
        } else {
            vec![root.clone()]
        };
        let root_abs = absolute(root);
        let base_default = if meta.is_dir() {
            root_abs.clone()
        } else {
            root_abs.parent().unwrap_or(Path::new("/")).to_path_buf()
        };
        for path in files {
            let abs = absolute(&path);
            let layout = layout(&abs, &base_default, golden_dir.as_deref(), &path)?;
            let rel = abs
                .strip_prefix(&layout.scenarios)
                .unwrap_or(&abs)
                .with_extension("");
            let name = rel.to_string_lossy().replace('\\', "/");
            let golden = shown(&layout.golden.join(&rel).with_extension("out"));
            if !out.iter().any(|e| absolute(&e.path) == abs) {
                out.push(Entry { path, name, golden });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name).then(a.path.cmp(&b.path)));
    Ok(out)
}

/// `path` made absolute and with `.` and `..` resolved lexically.
pub fn absolute(path: &Path) -> PathBuf {
    let joined = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// How a path is shown: relative to the working directory when it lies under it.
fn shown(abs: &Path) -> PathBuf {
    match std::env::current_dir() {
        Ok(cwd) => abs
            .strip_prefix(&cwd)
            .map_or(abs.to_path_buf(), Path::to_path_buf),
        Err(_) => abs.to_path_buf(),
    }
}

/// Where names are measured from, and the folder of golden files that mirrors it (absolute).
#[derive(Debug)]
struct Layout {
    scenarios: PathBuf,
    golden: PathBuf,
}

/// `abs` is the scenario's absolute path; `given` how the user spelled it, for the message.
fn layout(
    abs: &Path,
    base_default: &Path,
    golden_dir: Option<&Path>,
    given: &Path,
) -> Result<Layout, String> {
    let scenarios = abs
        .ancestors()
        .skip(1)
        .find(|a| a.file_name().is_some_and(|n| n == "scenarios"))
        .map(Path::to_path_buf);
    match (scenarios, golden_dir) {
        (Some(s), Some(g)) => Ok(Layout {
            scenarios: s,
            golden: g.to_path_buf(),
        }),
        (None, Some(g)) => Ok(Layout {
            scenarios: base_default.to_path_buf(),
            golden: g.to_path_buf(),
        }),
        (Some(s), None) => {
            let golden = s.parent().unwrap_or(Path::new("/")).join("golden");
            Ok(Layout {
                scenarios: s,
                golden,
            })
        }
        (None, None) => Err(format!(
            "{}: not inside a folder named `scenarios`, so there is no `golden/` beside it; pass --golden DIR",
            given.display()
        )),
    }
}

/// Golden files under the folders mirroring directory `roots` that no scenario file matches.
pub fn orphans(roots: &[PathBuf], golden_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let golden_dir = golden_dir.map(absolute);
    for root in roots.iter().filter(|r| r.is_dir()) {
        let root = absolute(root);
        let Ok(layout) = layout(&root.join("x.yaml"), &root, golden_dir.as_deref(), &root) else {
            continue;
        };
        let sub = root
            .strip_prefix(&layout.scenarios)
            .unwrap_or(Path::new(""));
        let dir = layout.golden.join(sub);
        for e in walkdir::WalkDir::new(&dir)
            .sort_by_file_name()
            .into_iter()
            .filter_map(Result::ok)
        {
            let p = e.path();
            if !e.file_type().is_file() || p.extension().is_none_or(|x| x != "out") {
                continue;
            }
            let rel = p.strip_prefix(&layout.golden).unwrap_or(p);
            let shown = shown(p);
            if !layout.scenarios.join(rel).with_extension("yaml").is_file() && !out.contains(&shown)
            {
                out.push(shown);
            }
        }
    }
    out
}

/// Whether `name` is selected by `pattern`: a glob when it has `*`, `?` or `[`, else a substring.
pub fn matches(pattern: &str, name: &str) -> bool {
    if pattern.contains(['*', '?', '[']) {
        glob(pattern.as_bytes(), name.as_bytes())
    } else {
        name.contains(pattern)
    }
}

/// A small glob: `*` any run (also across `/`), `?` one character, `[abc]`/`[a-z]`/`[!a]` a class.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some(b'*') => (0..=s.len()).any(|i| glob(&p[1..], &s[i..])),
        Some(b'?') => !s.is_empty() && glob(&p[1..], &s[1..]),
        Some(b'[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == b']').map(|i| i + 2) else {
                return s.first() == Some(&b'[') && glob(&p[1..], &s[1..]);
            };
            let Some(&c) = s.first() else { return false };
            let (negate, class) = match p[1] {
                b'!' | b'^' => (true, &p[2..close]),
                _ => (false, &p[1..close]),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && glob(&p[close + 1..], &s[1..])
        }
        Some(&c) => s.first() == Some(&c) && glob(&p[1..], &s[1..]),
    }
}

/// `K/N`, 1-based: keeps every N-th entry starting at the K-th.
pub fn parse_shard(text: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--shard expects K/N with 1 <= K <= N, got `{text}`");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let (k, n): (usize, usize) = (k.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
    if k == 0 || n == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The entries that run: those matching any filter (all when none), then this shard's share.
pub fn select(
    entries: Vec<Entry>,
    filters: &[String],
    shard: Option<(usize, usize)>,
) -> Vec<Entry> {
    let picked = entries
        .into_iter()
        .filter(|e| filters.is_empty() || filters.iter().any(|f| matches(f, &e.name)));
    match shard {
        None => picked.collect(),
        Some((k, n)) => picked
            .enumerate()
            .filter(|(i, _)| i % n == k - 1)
            .map(|(_, e)| e)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_substrings_or_globs() {
        assert!(matches("state", "blkdebug/set-state"));
        assert!(matches("blkdebug/*", "blkdebug/set-state"));
        assert!(!matches("blkdebug/*", "blkverify/match"));
        assert!(matches("*/[a-m]*", "qemu-io/help"));
        assert!(!matches("*/[!a-m]*", "qemu-io/help"));
        assert!(matches("qemu-io/rea?", "qemu-io/read"));
    }

    #[test]
    fn shards_partition_the_list() {
        assert_eq!(parse_shard("2/3"), Ok((2, 3)));
        assert!(
            parse_shard("0/3").is_err() && parse_shard("4/3").is_err() && parse_shard("x").is_err()
        );
        let entries: Vec<Entry> = (0..7)
            .map(|i| Entry {
                path: format!("{i}").into(),
                name: format!("{i}"),
                golden: PathBuf::new(),
            })
            .collect();
        let mut all: Vec<String> = (1..=3)
            .flat_map(|k| select(entries.clone(), &[], Some((k, 3))))
            .map(|e| e.name)
            .collect();
        all.sort();
        assert_eq!(all, ["0", "1", "2", "3", "4", "5", "6"]);
    }
}
