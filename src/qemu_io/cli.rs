//! qemu-io's own command line (`-f -t -c --image-opts -r -n ...`) and its interactive loop.

use super::Invocation;
use super::session::{OpenRequest, Session, cache_mode_direct, parse_cache_mode};
use crate::block::open::{Options, parse_keyval};
use crate::output::{Console, SharedSink};
use std::io::BufRead;
use std::path::Path;

/// qemu-io's `-r` and `-s`, which the runner's [`Invocation`] does not carry.
#[derive(Clone, Copy, Debug, Default)]
struct OpenMode {
    read_only: bool,
    snapshot: bool,
}

const USAGE_HINT: &str = "Try 'qemu-io --help' for more information.\n";

/// Parses qemu-io's argv; Err(exit status) after printing QEMU's message.
fn parse_args(args: &[String], console: &Console) -> Result<(Invocation, OpenMode), i32> {
    let mut inv = Invocation::default();
    let mut mode = OpenMode::default();
    let mut it = args.iter().peekable();
    let mut positionals = Vec::new();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String, i32> {
            it.next().cloned().ok_or_else(|| {
                console.err(&format!(
                    "qemu-io: option requires an argument -- '{name}'\n{USAGE_HINT}"
                ));
                1
            })
        };
        match a.as_str() {
            "-c" | "--cmd" => inv.commands.push(value("c")?),
            "-f" | "--format" => inv.format = Some(value("f")?),
            "-t" | "--cache" => inv.cache = Some(value("t")?),
            "--image-opts" => inv.image_opts = true,
            "-r" | "--read-only" => mode.read_only = true,
            "-s" | "--snapshot" => mode.snapshot = true,
            "-n" | "--nocache" => inv.cache = Some("none".into()),
            "--" => positionals.extend(it.by_ref().cloned()),
            s if s.starts_with("-c") && s.len() > 2 => inv.commands.push(s[2..].to_string()),
            s if s.starts_with("-f") && s.len() > 2 => inv.format = Some(s[2..].to_string()),
            s if s.starts_with("-t") && s.len() > 2 => inv.cache = Some(s[2..].to_string()),
            s if s.starts_with("--cache=") => inv.cache = Some(s[8..].to_string()),
            s if s.starts_with("--format=") => inv.format = Some(s[9..].to_string()),
            s if s.starts_with('-') && s.len() > 1 => {
                console.err(&format!("qemu-io: unsupported option '{s}'\n{USAGE_HINT}"));
                return Err(1);
            }
            _ => positionals.push(a.clone()),
        }
    }
    if positionals.len() > 1 {
        console.err(&format!(
            "qemu-io: only one image may be given\n{USAGE_HINT}"
        ));
        return Err(1);
    }
    inv.drive = positionals.pop();
    Ok((inv, mode))
}

pub fn main(args: &[String], base_dir: &Path, sink: SharedSink, stdin: &mut dyn BufRead) -> i32 {
    let console = Console::new(sink.clone());
    match parse_args(args, &console) {
        Err(status) => status,
        Ok((inv, mode)) => run_with(&inv, base_dir, console, mode, Some(stdin)),
    }
}

pub fn run_invocation(
    inv: &Invocation,
    base_dir: &Path,
    sink: SharedSink,
    stdin: Option<&mut dyn BufRead>,
) -> i32 {
    run_with(
        inv,
        base_dir,
        Console::new(sink),
        OpenMode::default(),
        stdin,
    )
}

fn run_with(
    inv: &Invocation,
    base_dir: &Path,
    console: std::rc::Rc<Console>,
    mode: OpenMode,
    stdin: Option<&mut dyn BufRead>,
) -> i32 {
    if inv.image_opts && inv.format.is_some() {
        console.err("qemu-io: --image-opts and -f are mutually exclusive\n");
        return 1;
    }
    let (writethrough, no_flush) = match inv.cache.as_deref().map(|c| (c, parse_cache_mode(c))) {
        None => (true, false),
        Some((_, Some(mode))) => mode,
        Some((bad, None)) => {
            console.err(&format!("qemu-io: Invalid cache option: {bad}\n"));
            return 1;
        }
    };
    let mut session = Session::new(console.clone(), base_dir.to_path_buf());
    session.skip_host_sync = inv.skip_host_sync;
    session.image_opts = inv.image_opts;
    if let Some(drive) = &inv.drive {
        let (name, options) = if inv.image_opts {
            match parse_keyval(drive) {
                Ok(o) => {
                    for w in &o.warnings {
                        console.err(&format!("qemu-io: {w}\n"));
                    }
                    (None, o.options)
                }
                Err(e) => {
                    console.err(&format!("qemu-io: {e}\n"));
                    return 1;
                }
            }
        } else {
            let mut o = Options::new();
            if let Some(f) = &inv.format {
                o.insert("driver".into(), serde_json::Value::String(f.clone()));
            }
            (Some(drive.as_str()), o)
        };
        let opened = session.open(OpenRequest {
            name,
            options,
            read_only: mode.read_only,
            snapshot: mode.snapshot,
            writethrough,
            no_flush,
            nocache: inv.cache.as_deref().is_some_and(cache_mode_direct),
            unmap: true,
            image_opts: inv.image_opts,
        });
        if !opened {
            return console.exited().unwrap_or(1);
        }
    }
    if !inv.commands.is_empty() {
        return session.run_commands(&inv.commands);
    }
    if let Some(stdin) = stdin {
        interactive(&mut session, stdin);
    }
    session.finish()
}

/// Reads commands line by line after a `qemu-io> ` prompt, as qemu-io does when stdin is not
/// a terminal.
fn interactive(session: &mut Session, stdin: &mut dyn BufRead) {
    let mut line = String::new();
    while !session.quit && session.console.exited().is_none() {
        session.out("qemu-io> ");
        line.clear();
        match stdin.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let cmd = line.strip_suffix('\n').unwrap_or(&line);
        if session.command(cmd) < 0 {
            session.last_error = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Capture;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn snapshot_mode_leaves_the_image_alone_and_the_directory_clean() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.img"), vec![0u8; 65536]).unwrap();
        let sink = Rc::new(RefCell::new(Capture::default()));
        let args: Vec<String> = [
            "-s",
            "-f",
            "raw",
            "-c",
            "write -P 9 0 512",
            "-c",
            "read -P 9 0 512",
            "t.img",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let status = main(&args, dir.path(), sink.clone(), &mut std::io::empty());
        assert_eq!(status, 0, "{}", sink.borrow().combined);
        assert!(
            !sink
                .borrow()
                .combined
                .contains("Pattern verification failed")
        );
        assert_eq!(
            std::fs::read(dir.path().join("t.img")).unwrap(),
            vec![0u8; 65536]
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["t.img"], "the overlay is deleted at close");
    }
}
