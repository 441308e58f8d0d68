//! Steps run through the real qemu-io and qemu-img, as `stdbuf -oL PROG ... 2>&1` in the scratch
//! directory, so that stdout and stderr interleave in causal order.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// A step that runs longer than this is killed: QEMU hangs forever on some breakpoint misuse.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The program for `tool` (`qemu-io` or `qemu-img`): `$QEMU_IO` / `$QEMU_IMG`, else from PATH.
pub fn program(tool: &str) -> Option<PathBuf> {
    let var = if tool == "qemu-io" {
        "QEMU_IO"
    } else {
        "QEMU_IMG"
    };
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    search_path(tool)
}

fn search_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether a `requires:` entry is met: a tool must be installed, a format known to qemu-img.
pub fn has(requirement: &str) -> bool {
    match requirement {
        "qemu-io" | "qemu-img" => program(requirement).is_some(),
        format => formats().iter().any(|f| f == format),
    }
}

/// The formats qemu-img lists under "Supported formats:" in its help.
fn formats() -> &'static [String] {
    static FORMATS: OnceLock<Vec<String>> = OnceLock::new();
    FORMATS.get_or_init(|| {
        let Some(img) = program("qemu-img") else {
            return Vec::new();
        };
        let Ok(out) = Command::new(img)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
        else {
            return Vec::new();
        };
        parse_formats(&String::from_utf8_lossy(&out.stdout))
    })
}

/// The format list of `qemu-img --help`: older versions print `Supported formats: a b c` on one
/// line, 10.x prints `Supported image formats:` and the names on the indented lines below it.
fn parse_formats(help: &str) -> Vec<String> {
    let mut lines = help.lines();
    let Some(first) = lines.find_map(|l| {
        l.strip_prefix("Supported formats:")
            .or_else(|| l.strip_prefix("Supported image formats:"))
    }) else {
        return Vec::new();
    };
    let mut words: Vec<String> = first.split_whitespace().map(str::to_string).collect();
    // The list goes on over indented lines, possibly after one blank line.
    let first_was_empty = words.is_empty();
    for l in lines.skip_while(|l| l.trim().is_empty() && first_was_empty) {
        if !l.starts_with(' ') || l.trim().is_empty() {
            break;
        }
        words.extend(l.split_whitespace().map(str::to_string));
    }
    words
}

/// Runs `tool args...` in `dir`; returns its combined output and exit status. A missing tool or a
/// timeout is reported in the output, so the scenario fails visibly.
pub fn run(tool: &str, args: &[String], dir: &Path) -> (String, i32) {
    let Some(prog) = program(tool) else {
        return (
            format!(
                "blockfault: {tool} not found (set {} or PATH)\n",
                env_name(tool)
            ),
            127,
        );
    };
    match spawn(&prog, args, dir) {
        // As iotests' _filter_qemu_img: QEMU names itself by argv[0] (`Try '/usr/bin/qemu-img
        // --help'`), our engine by the bare name; one golden serves both.
        Ok((text, status)) => (text.replace(&*prog.to_string_lossy(), tool), status),
        Err(e) => (
            format!("blockfault: cannot run {}: {e}\n", prog.display()),
            127,
        ),
    }
}

fn env_name(tool: &str) -> &'static str {
    if tool == "qemu-io" {
        "QEMU_IO"
    } else {
        "QEMU_IMG"
    }
}

fn spawn(prog: &Path, args: &[String], dir: &Path) -> std::io::Result<(String, i32)> {
    let (mut reader, writer) = std::io::pipe()?;
    let mut cmd = Command::new("stdbuf");
    cmd.arg("-oL")
        .arg(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        // A group of its own: a terminal's Ctrl-C reaches only the runner, which kills the
        // group (crate::interrupt), so no qemu-io outlives an interrupted run.
        .process_group(0);
    cmd.stdout(writer.try_clone()?).stderr(writer);
    let mut child = cmd.spawn()?;
    crate::interrupt::register(child.id());
    // Our copies of the write end must go, or the reader never sees EOF.
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut reader, &mut buf);
        let _ = tx.send(buf);
    });
    let (bytes, timed_out) = match rx.recv_timeout(TIMEOUT) {
        Ok(b) => (b, false),
        Err(_) => {
            let _ = child.kill();
            (rx.recv().unwrap_or_default(), true)
        }
    };
    // Forgotten before it is reaped, so that its pid (then free for reuse) is never killed.
    crate::interrupt::unregister(child.id());
    let status = child.wait()?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if timed_out {
        text.push_str(&format!("[timeout after {}s: killed]\n", TIMEOUT.as_secs()));
    }
    Ok((text, exit_code(status)))
}

/// The shell's convention: a signal N becomes 128+N.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::parse_formats;

    #[test]
    fn both_help_layouts_list_formats() {
        assert_eq!(
            parse_formats("x\nSupported formats: raw qcow2\n"),
            ["raw", "qcow2"]
        );
        let v10 =
            "Supported image formats:\n\n  blkdebug raw\n  qcow2 vmdk\n\nSee <https://qemu.org>\n";
        assert_eq!(parse_formats(v10), ["blkdebug", "raw", "qcow2", "vmdk"]);
    }
}
