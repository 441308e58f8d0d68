//! `blockfault new FOLDER/NAME`: a commented starter scenario, as `cargo new` starts a crate.

use std::path::{Path, PathBuf};

/// Checks the name and writes `scenarios/FOLDER/NAME.yaml` under `root`; returns its path.
pub fn create(root: &Path, name: &str) -> Result<PathBuf, String> {
    check_name(name)?;
    let rel = format!("scenarios/{name}.yaml");
    let path = root.join(&rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    // create_new: never overwrite, not even a file that appears meanwhile.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                format!("{rel} already exists; choose another name (nothing was written)")
            }
            _ => format!("cannot create {rel}: {e}"),
        })?;
    use std::io::Write;
    file.write_all(starter(name).as_bytes())
        .map_err(|e| format!("writing {rel}: {e}"))?;
    Ok(PathBuf::from(rel))
}

/// `FOLDER/NAME` (more folders allowed), each part letters, digits, `-`, `_` or `.`, not
/// starting with `.` or `-`, without `.yaml`.
fn check_name(name: &str) -> Result<(), String> {
    const FORM: &str = "give FOLDER/NAME, e.g. `blkdebug/fail-second-write` (parts of letters, digits, `-`, `_`, `.`; no `.yaml`)";
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        return Err(format!("`{name}`: leave out the extension: {FORM}"));
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.len() < 2 {
        return Err(format!("`{name}`: a scenario lives in a folder: {FORM}"));
    }
    for part in parts {
        let ok = !part.is_empty()
            && !part.starts_with(['.', '-'])
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            return Err(format!("`{name}`: `{part}` is not a valid part: {FORM}"));
        }
    }
    Ok(())
}

fn starter(name: &str) -> String {
    let up = "../".repeat(name.matches('/').count() + 1);
    format!(
        r#"# yaml-language-server: $schema={up}blockfault.schema.json
# A blockfault scenario (README "The scenario format"; rules and recipes: docs/authoring.md;
# which blkdebug event fires for which command: `blockfault events`).
# 1. Make the steps show one behaviour and say it in `description`.
# 2. Bless on real QEMU: blockfault --backend qemu --bless scenarios/{name}.yaml
# 3. Read golden/{name}.out, then run the engine: blockfault scenarios/{name}.yaml
# (In a checkout of blockfault, `cargo run --release --` runs `blockfault`.)
description: "A write fails once with EIO: an inject-error rule on write_aio fails the next request"
images:
  - {{name: t.img, format: raw, size: 1M}}
steps:
  - echo: "=== the first write fails, the rule goes (once), the second write succeeds"
  - qemu-io:
      # blkdebug between the format (raw) and the file sees raw's requests to its file.
      drive:
        driver: raw
        file:
          driver: blkdebug
          inject-error:
            # raw raises write_aio before each write; the next request on this node fails.
            - {{event: write_aio, errno: 5, once: true}}
          image: {{driver: file, filename: t.img}}
      commands:
        - write -P 0xa5 0 4k
        - write -P 0xa5 0 4k
        - read -P 0xa5 0 4k
"#
    )
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names() {
        assert!(check_name("blkdebug/x-1_b.c").is_ok());
        assert!(check_name("a/b/c").is_ok());
        for bad in [
            "x", "a/", "/a", "a//b", "a/../b", "a/.b", "a/-b", "a/b c", "a/b.yaml", "",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
