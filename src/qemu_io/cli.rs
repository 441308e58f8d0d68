//! qemu-io's own command line (every option QEMU 10.0.2's qemu-io has, read by GNU getopt_long
//! with its messages) and its interactive loop.

use super::Invocation;
use super::getopt::{Getopt, LongOpt};
use super::objects::{Created, Objects};
use super::session::{AioMode, CacheMode, OpenRequest, Session, parse_discard};
use super::trace::{self, TraceSetup};
use crate::block::open::{Options, parse_keyval};
use crate::output::{Console, SharedSink, Termination};
use std::io::BufRead;
use std::path::Path;
use std::rc::Rc;

const OPTSTRING: &str = "hVc:d:f:rsnCmki:t:T:U";

/// `--object` and `--image-opts` have no short form (QEMU numbers them 256 and 257).
const OPT_OBJECT: char = '\u{100}';
const OPT_IMAGE_OPTS: char = '\u{101}';

/// qemu-io's long options, in its table's order (which ambiguity messages list them in).
const LONGOPTS: [LongOpt; 17] = [
    long("help", false, 'h'),
    long("version", false, 'V'),
    long("cmd", true, 'c'),
    long("format", true, 'f'),
    long("read-only", false, 'r'),
    long("snapshot", false, 's'),
    long("nocache", false, 'n'),
    long("copy-on-read", false, 'C'),
    long("misalign", false, 'm'),
    long("native-aio", false, 'k'),
    long("aio", true, 'i'),
    long("discard", true, 'd'),
    long("cache", true, 't'),
    long("trace", true, 'T'),
    long("object", true, OPT_OBJECT),
    long("image-opts", false, OPT_IMAGE_OPTS),
    long("force-share", false, 'U'),
];

const fn long(name: &'static str, takes_arg: bool, val: char) -> LongOpt {
    LongOpt {
        name,
        takes_arg,
        val,
    }
}

/// `qemu-io --help`, on stdout; also printed (exit status 1) for a bad option or more than
/// one image.
pub const USAGE: &str = "\
Usage: qemu-io [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See 'qemu-io -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
";

/// `qemu-io --version`: QEMU's first line with our name where QEMU has its package version.
fn version() -> String {
    format!(
        "qemu-io version 10.0.2 (blockfault {})\n\
         blockfault's own engine, following QEMU 10.0.2's qemu-io\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// What the options build besides the [`Invocation`]: the objects created and the trace setup.
#[derive(Default)]
struct Prepared {
    objects: Objects,
    trace: TraceSetup,
}

/// `qemu-io ARGS`: reads the options in order, acting on each as qemu-io does (a bad value ends
/// the process there), then opens the image and runs the commands.
pub fn main(
    args: &[String],
    base_dir: &Path,
    sink: SharedSink,
    stdin: &mut dyn BufRead,
) -> Termination {
    let console = Console::new(sink);
    match parse(args, base_dir, &console) {
        Ok((inv, prepared)) => execute(&inv, prepared, base_dir, console, stdin),
        Err(status) => end(&console, status),
    }
}

/// The process's end after an early exit(status), unless something ended it already.
fn end(console: &Console, status: i32) -> Termination {
    console.termination().unwrap_or(Termination::Exited(status))
}

/// The getopt loop of qemu-io's main(). Err(status) once the process has ended (help, version,
/// an error, all printed).
fn parse(
    args: &[String],
    base_dir: &Path,
    console: &Console,
) -> Result<(Invocation, Prepared), i32> {
    let argv: Vec<&str> = std::iter::once("qemu-io")
        .chain(args.iter().map(String::as_str))
        .collect();
    let mut inv = Invocation::default();
    let mut prepared = Prepared::default();
    let mut aio = AioMode::default();
    let mut getopt = Getopt::with_long(&argv, OPTSTRING, &LONGOPTS);
    for item in getopt.by_ref() {
        let (c, arg) = match item {
            Ok(option) => option,
            Err(message) => {
                console.err(&format!("{message}\n"));
                console.out(USAGE);
                return Err(1);
            }
        };
        let arg = arg.unwrap_or_default();
        match c {
            's' => inv.snapshot = true,
            'n' => inv.nocache = true,
            'C' => inv.copy_on_read = true,
            'd' => {
                check_discard(&arg, console)?;
                inv.discard = Some(arg);
            }
            'f' => inv.format = Some(arg),
            'c' => inv.commands.push(arg),
            'r' => inv.read_only = true,
            // Misaligned buffers change nothing a command can observe here.
            'm' => {}
            'k' => aio = AioMode::Native,
            'i' => aio = apply_aio(aio, &arg, console)?,
            't' => {
                check_cache(&arg, console)?;
                inv.cache = Some(arg);
                inv.nocache = false;
            }
            'T' => {
                trace::apply(&arg, &mut prepared.trace, console, base_dir)?;
                inv.trace.push(arg);
            }
            'V' => {
                console.out(&version());
                return Err(0);
            }
            'h' => {
                console.out(USAGE);
                return Err(0);
            }
            'U' => inv.force_share = true,
            OPT_OBJECT => {
                create_object(&mut prepared.objects, &arg, console, base_dir)?;
                inv.objects.push(arg);
            }
            OPT_IMAGE_OPTS => inv.image_opts = true,
            other => unreachable!("option '{other}' is in the table but not handled"),
        }
    }
    inv.aio = match aio {
        AioMode::Threads => None,
        AioMode::Native => Some("native".into()),
        AioMode::IoUring => Some("io_uring".into()),
    };
    match getopt.positionals() {
        [] => {}
        [drive] => inv.drive = Some(drive.clone()),
        _ => {
            console.out(USAGE);
            return Err(1);
        }
    }
    Ok((inv, prepared))
}

fn check_cache(mode: &str, console: &Console) -> Result<CacheMode, i32> {
    CacheMode::parse(mode).ok_or_else(|| {
        console.report(&format!("Invalid cache option: {mode}"));
        1
    })
}

fn check_discard(mode: &str, console: &Console) -> Result<bool, i32> {
    parse_discard(mode).ok_or_else(|| {
        console.report(&format!("Invalid discard option: {mode}"));
        1
    })
}

fn apply_aio(aio: AioMode, mode: &str, console: &Console) -> Result<AioMode, i32> {
    aio.apply(mode).ok_or_else(|| {
        console.report(&format!("Invalid aio option: {mode}"));
        1
    })
}

fn create_object(
    objects: &mut Objects,
    text: &str,
    console: &Console,
    base_dir: &Path,
) -> Result<(), i32> {
    match objects.add_from_cmdline(text, base_dir) {
        Ok(Created::Object) => Ok(()),
        Ok(Created::Help(help)) => {
            console.out(&help);
            Err(0)
        }
        // Our own refusals carry their `blockfault:` prefix already.
        Err(message) if message.starts_with("blockfault: ") => {
            console.err(&format!("{message}\n"));
            Err(1)
        }
        Err(message) => {
            console.report(&message);
            Err(1)
        }
    }
}

/// Runs an [`Invocation`] built by a program rather than read from argv (the runner's steps).
pub fn run_invocation(
    inv: &Invocation,
    base_dir: &Path,
    sink: SharedSink,
    stdin: &mut dyn BufRead,
) -> Termination {
    let console = Console::new(sink);
    match prepare(inv, base_dir, &console) {
        Ok(prepared) => execute(inv, prepared, base_dir, console, stdin),
        Err(status) => end(&console, status),
    }
}

/// What [`parse`] does for each option, for an invocation that did not come from argv.
fn prepare(inv: &Invocation, base_dir: &Path, console: &Console) -> Result<Prepared, i32> {
    if let Some(mode) = &inv.cache {
        check_cache(mode, console)?;
    }
    if let Some(mode) = &inv.discard {
        check_discard(mode, console)?;
    }
    if let Some(mode) = &inv.aio {
        apply_aio(AioMode::default(), mode, console)?;
    }
    let mut prepared = Prepared::default();
    for text in &inv.objects {
        create_object(&mut prepared.objects, text, console, base_dir)?;
    }
    for text in &inv.trace {
        trace::apply(text, &mut prepared.trace, console, base_dir)?;
    }
    Ok(prepared)
}

/// The rest of qemu-io's main() once the options are read: open the image, run the commands
/// (or read them from stdin), drain and close.
fn execute(
    inv: &Invocation,
    prepared: Prepared,
    base_dir: &Path,
    console: Rc<Console>,
    stdin: &mut dyn BufRead,
) -> Termination {
    if inv.image_opts && inv.format.is_some() {
        console.report("--image-opts and -f are mutually exclusive");
        return end(&console, 1);
    }
    if let Err(status) = trace::open_log_file(&prepared.trace, &console, base_dir) {
        return end(&console, status);
    }
    // Validated when the options were read.
    let mut cache = inv
        .cache
        .as_deref()
        .and_then(CacheMode::parse)
        .unwrap_or(CacheMode::DEFAULT);
    if inv.nocache {
        cache = cache.nocache();
    }
    let unmap = inv
        .discard
        .as_deref()
        .and_then(parse_discard)
        .unwrap_or(true);
    let aio = inv
        .aio
        .as_deref()
        .and_then(|m| AioMode::default().apply(m))
        .unwrap_or_default();
    let mut session = Session::new(console.clone(), base_dir.to_path_buf());
    session.skip_host_sync = inv.skip_host_sync;
    session.image_opts = inv.image_opts;
    session.objects = prepared.objects;
    if let Some(drive) = &inv.drive {
        let (name, options) = if inv.image_opts {
            match parse_keyval(drive) {
                Ok(o) => {
                    for w in &o.warnings {
                        console.report(w);
                    }
                    (None, o.options)
                }
                Err(e) => {
                    console.report(&e);
                    return end(&console, 1);
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
            read_only: inv.read_only,
            snapshot: inv.snapshot,
            writethrough: cache.writethrough,
            no_flush: cache.no_flush,
            direct: cache.direct,
            unmap,
            image_opts: inv.image_opts,
            aio,
            copy_on_read: inv.copy_on_read,
            force_share: inv.force_share,
        });
        if !opened {
            return end(&console, 1);
        }
    }
    let status = if inv.commands.is_empty() {
        interactive(&mut session, stdin);
        session.finish()
    } else {
        session.run_commands(&inv.commands)
    };
    end(&console, status)
}

/// Reads commands from stdin after a `qemu-io> ` prompt each, as qemu-io does when stdin is
/// not a terminal, until `quit` or end of input (which prints nothing more).
fn interactive(session: &mut Session, stdin: &mut dyn BufRead) {
    while !session.quit && session.console.termination().is_none() {
        session.out("qemu-io> ");
        let Some(line) = fetch_line(stdin) else {
            break;
        };
        if session.command(&line) < 0 {
            session.last_error = true;
        }
    }
}

/// One `fgets` into qemu-io's 1024-byte buffer: up to 1023 bytes, through a newline, which is
/// dropped. The command ends at a NUL byte, as the C string does. None at end of input.
fn fetch_line(stdin: &mut dyn BufRead) -> Option<String> {
    const MAX: usize = 1023;
    let mut line = Vec::new();
    while line.len() < MAX {
        let available = match stdin.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if available.is_empty() {
            break;
        }
        let room = MAX - line.len();
        let chunk = &available[..available.len().min(room)];
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(p) => (p + 1, true),
            None => (chunk.len(), false),
        };
        line.extend_from_slice(&chunk[..take]);
        stdin.consume(take);
        if done {
            break;
        }
    }
    if line.is_empty() {
        return None;
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if let Some(nul) = line.iter().position(|&b| b == 0) {
        line.truncate(nul);
    }
    // Bytes that are not UTF-8 are carried as on the command line (crate::host_bytes). A line
    // that also holds, as UTF-8, a character reserved for that falls back to lossy text.
    Some(
        crate::host_bytes::decode(&line)
            .unwrap_or_else(|_| String::from_utf8_lossy(&line).into_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Capture;
    use std::cell::RefCell;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    /// Runs `qemu-io ARGS` in `dir` with `input` on stdin: (output, termination).
    fn qemu_io(dir: &Path, args: &[&str], input: &str) -> (String, Termination) {
        let sink = Rc::new(RefCell::new(Capture::default()));
        let mut stdin = input.as_bytes();
        let end = main(&strings(args), dir, sink.clone(), &mut stdin);
        let out = sink.borrow().combined.clone();
        (out, end)
    }

    #[test]
    fn snapshot_mode_leaves_the_image_alone_and_the_directory_clean() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.img"), vec![0u8; 65536]).unwrap();
        let (out, end) = qemu_io(
            dir.path(),
            &[
                "-s",
                "-f",
                "raw",
                "-c",
                "write -P 9 0 512",
                "-c",
                "read -P 9 0 512",
                "t.img",
            ],
            "",
        );
        assert_eq!(end, Termination::Exited(0), "{out}");
        assert!(!out.contains("Pattern verification failed"));
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

    #[test]
    fn options_fold_as_qemu_reads_them() {
        let console = Console::new(Rc::new(RefCell::new(Capture::default())));
        let dir = Path::new("/nonexistent");
        let parsed = |args: &[&str]| parse(&strings(args), dir, &console).map(|(inv, _)| inv);
        // -n after the last -t adds O_DIRECT; a -t after -n replaces it.
        let inv = parsed(&["-t", "unsafe", "-n"]).unwrap();
        assert_eq!((inv.cache.as_deref(), inv.nocache), (Some("unsafe"), true));
        let inv = parsed(&["-n", "-t", "writethrough"]).unwrap();
        assert_eq!(
            (inv.cache.as_deref(), inv.nocache),
            (Some("writethrough"), false)
        );
        // aio modes only add flags: native wins, threads changes nothing.
        let inv = parsed(&["-k", "-i", "threads"]).unwrap();
        assert_eq!(inv.aio.as_deref(), Some("native"));
        let inv = parsed(&["-i", "io_uring", "--aio=threads"]).unwrap();
        assert_eq!(inv.aio.as_deref(), Some("io_uring"));
        let inv = parsed(&["-rsCU", "--image-opts", "--dis=off", "--cm", "x", "img"]).unwrap();
        assert!(inv.read_only && inv.snapshot && inv.copy_on_read && inv.force_share);
        assert!(inv.image_opts);
        assert_eq!(inv.discard.as_deref(), Some("off"));
        assert_eq!(inv.commands, ["x"]);
        assert_eq!(inv.drive.as_deref(), Some("img"));
        // Permuted: options after the image, and `--` ending them.
        let inv = parsed(&["img", "-c", "y", "-r"]).unwrap();
        assert_eq!((inv.drive.as_deref(), inv.read_only), (Some("img"), true));
        let inv = parsed(&["-c", "y", "--", "-r"]).unwrap();
        assert_eq!((inv.drive.as_deref(), inv.read_only), (Some("-r"), false));
    }

    #[test]
    fn usage_and_errors() {
        let dir = Path::new("/nonexistent");
        let (out, end) = qemu_io(dir, &["--help"], "");
        assert_eq!((out.as_str(), end), (USAGE, Termination::Exited(0)));
        let (out, end) = qemu_io(dir, &["a", "b"], "");
        assert_eq!((out.as_str(), end), (USAGE, Termination::Exited(1)));
        let (out, end) = qemu_io(dir, &["--c", "x"], "");
        assert_eq!(end, Termination::Exited(1));
        assert_eq!(
            out,
            format!(
                "qemu-io: option '--c' is ambiguous; possibilities: '--cmd' '--copy-on-read' \
                 '--cache'\n{USAGE}"
            )
        );
        let (out, _) = qemu_io(dir, &["-t", "bogus", "--foo"], "");
        assert_eq!(out, "qemu-io: Invalid cache option: bogus\n");
        let (out, end) = qemu_io(dir, &["-f", "raw", "--image-opts"], "");
        assert_eq!(out, "qemu-io: --image-opts and -f are mutually exclusive\n");
        assert_eq!(end, Termination::Exited(1));
    }

    #[test]
    fn version_names_qemu_and_blockfault() {
        let dir = Path::new("/nonexistent");
        for arg in ["-V", "--version", "--v"] {
            let (out, end) = qemu_io(dir, &[arg, "-c", "read 0 1"], "");
            assert_eq!(end, Termination::Exited(0));
            let first = out.lines().next().unwrap();
            assert_eq!(
                first,
                format!(
                    "qemu-io version 10.0.2 (blockfault {})",
                    env!("CARGO_PKG_VERSION")
                )
            );
        }
    }

    #[test]
    fn interactive_prompts_until_end_of_input() {
        let dir = Path::new("/nonexistent");
        let (out, end) = qemu_io(dir, &[], "help quit\n\nhelp q");
        assert_eq!(
            out,
            "qemu-io> quit -- exit the program\nqemu-io> qemu-io> \
             q -- exit the program\nqemu-io> "
        );
        assert_eq!(end, Termination::Exited(0));
        let (out, _) = qemu_io(dir, &[], "quit\nhelp\n");
        assert_eq!(out, "qemu-io> ");
        // A failed command makes the status 1.
        let (_, end) = qemu_io(dir, &[], "nosuchcommand\n");
        assert_eq!(end, Termination::Exited(1));
    }

    #[test]
    fn fgets_splits_long_lines_and_stops_at_nul() {
        let long = format!("{}{}\n", "a".repeat(1023), "bc");
        let mut input = long.as_bytes();
        assert_eq!(fetch_line(&mut input).unwrap().len(), 1023);
        assert_eq!(fetch_line(&mut input).as_deref(), Some("bc"));
        assert_eq!(fetch_line(&mut input), None);
        let mut input = &b"ab\0cd\nx"[..];
        assert_eq!(fetch_line(&mut input).as_deref(), Some("ab"));
        assert_eq!(fetch_line(&mut input).as_deref(), Some("x"));
        assert_eq!(fetch_line(&mut input), None);
    }

    #[test]
    fn stdin_lines_keep_bytes_that_are_not_utf8() {
        let mut input: &[u8] = b"wr\xe9te\n";
        let line = fetch_line(&mut input).unwrap();
        assert_eq!(&*crate::host_bytes::encode(&line), b"wr\xe9te");
    }

    #[test]
    fn sigraise_ends_the_process_by_its_signal() {
        let dir = Path::new("/nonexistent");
        let (out, end) = qemu_io(dir, &["-c", "sigraise 9", "-c", "help quit"], "");
        assert_eq!((out.as_str(), end), ("", Termination::Killed(9)));
        assert_eq!(end.status(), 137);
        // SIGPIPE is ignored by qemu-io, SIGUSR1 blocked: it goes on.
        let (out, end) = qemu_io(
            dir,
            &["-c", "sigraise 13", "-c", "sigraise 10", "-c", "help q"],
            "",
        );
        assert_eq!(out, "q -- exit the program\n");
        assert_eq!(end, Termination::Exited(0));
    }
}
