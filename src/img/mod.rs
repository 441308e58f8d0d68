//! The qemu-img subset: `create`, `check`, `compare`, `info` and `map`, with qemu-img's output
//! and exit codes, over the same block layer qemu-io uses.

use crate::block::node::{Node, OpenFlags};
use crate::block::open::{OpenContext, Options, open_drive};
use crate::output::{Console, SharedSink};
use crate::qemu_io::getopt::Getopt;
use std::path::Path;
use std::rc::Rc;

mod check;
mod compare;
mod create;
mod info;
mod map;
pub mod qcow2;

/// `qemu-img ARGS...` (argv without the program name), relative paths resolved against `base_dir`;
/// returns qemu-img's exit status.
pub fn run(args: &[String], base_dir: &Path, sink: SharedSink) -> i32 {
    let console = Console::new(sink);
    let img = Img {
        console: console.clone(),
        base_dir,
    };
    let Some(cmd) = args.first() else {
        img.error("Not enough arguments");
        img.console
            .err("Try 'qemu-img --help' for more information\n");
        return 1;
    };
    let mut argv = vec![cmd.clone()];
    argv.extend_from_slice(&args[1..]);
    let status = match cmd.as_str() {
        "create" => img.create(&argv),
        "check" => img.check(&argv),
        "compare" => img.compare(&argv),
        "info" => img.info(&argv),
        "map" => img.map(&argv),
        other => {
            img.error(&format!("Command not found: {other}"));
            1
        }
    };
    console.exited().unwrap_or(status)
}

/// A subcommand's options (letter, argument) and its positional arguments.
type ParsedArgs = (Vec<(char, String)>, Vec<String>);

struct Img<'a> {
    console: Rc<Console>,
    base_dir: &'a Path,
}

impl Img<'_> {
    fn error(&self, msg: &str) {
        self.console.err(&format!("qemu-img: {msg}\n"));
    }

    /// getopt over a subcommand's argv; Err(status) after qemu-img's message.
    fn opts(&self, argv: &[String], optstring: &str) -> Result<ParsedArgs, i32> {
        let mut g = Getopt::new(argv, optstring);
        let mut opts = Vec::new();
        for item in g.by_ref() {
            match item {
                Ok((c, a)) => opts.push((c, a.unwrap_or_default())),
                Err(msg) => {
                    self.console.err(&format!(
                        "qemu-img {msg}\nTry 'qemu-img {} --help' for more info\n",
                        argv[0]
                    ));
                    return Err(1);
                }
            }
        }
        Ok((opts, g.positionals().to_vec()))
    }

    fn open(&self, name: &str, format: Option<&str>, read_only: bool) -> Result<Rc<Node>, i32> {
        let ctx = OpenContext {
            base_dir: self.base_dir.to_path_buf(),
            console: self.console.clone(),
            flags: OpenFlags {
                read_only,
                unmap: true,
                no_flush: false,
            },
            skip_host_sync: false,
        };
        open_drive(Some(name), Options::new(), format, &ctx).map_err(|e| {
            self.error(&format!("Could not open '{name}': {e}"));
            1
        })
    }
}
