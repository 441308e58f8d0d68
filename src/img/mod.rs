//! The qemu-img subset: `create`, `check`, `compare`, `info` and `map`, with qemu-img's output
//! and exit codes, over the same block layer qemu-io uses.

use crate::block::node::{Node, OpenFlags};
use crate::block::open::{OpenContext, Options, open_drive};
use crate::block::perms::{self, Access};
use crate::output::{Console, SharedSink};
use crate::qemu_io::getopt::Getopt;
use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;

mod check;
mod compare;
mod create;
mod info;
mod info_graph;
pub mod json;
mod map;
pub mod qcow2;

/// `qemu-img ARGS...` (argv without the program name), relative paths resolved against `base_dir`;
/// returns qemu-img's exit status.
pub fn run(args: &[String], base_dir: &Path, sink: SharedSink) -> i32 {
    let console = Console::for_program(sink, "qemu-img");
    let img = Img {
        console: console.clone(),
        base_dir,
        force_share: Cell::new(false),
        no_io: Cell::new(false),
        node_names: Cell::new(0),
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
            img.console.err("Try 'qemu-img --help' for more info\n");
            1
        }
    };
    console.exited().unwrap_or(status)
}

/// Long options without a short form, as (name, argument).
type LongOnly = Vec<(String, String)>;

/// A subcommand's options (letter, argument) and its positional arguments.
type ParsedArgs = (Vec<(char, String)>, Vec<String>);

/// Whether `--output=json` was given (the last `--output` wins).
fn output_json(extra: &LongOnly) -> bool {
    extra
        .iter()
        .rev()
        .find(|(k, _)| k == "output")
        .is_some_and(|(_, v)| v == "json")
}

struct Img<'a> {
    console: Rc<Console>,
    base_dir: &'a Path,
    /// `-U`: images are opened with force-share=on
    force_share: Cell<bool>,
    /// images are opened without I/O (qemu-img info's BDRV_O_NO_IO)
    no_io: Cell<bool>,
    /// generated node names so far (QEMU's `#block` counter, process-wide: a second image
    /// opened, as by compare, goes on counting)
    node_names: Cell<u64>,
}

impl Img<'_> {
    fn error(&self, msg: &str) {
        self.console.report(msg);
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

    /// getopt_long's long options, before `opts` sees the short ones: each `(name, letter,
    /// takes an argument)` with a letter becomes that short option; those with '\0' are
    /// returned as (name, value). Unique prefixes are accepted, as getopt_long accepts them.
    /// `--output` is checked here, as qemu-img checks it while parsing.
    /// A subcommand's arguments: long options first (qemu-img's getopt_long), then the short
    /// options and positionals, plus the long-only options it saw.
    fn subcommand_args(
        &self,
        argv: &[String],
        optstring: &str,
        longs: &[(&str, char, bool)],
    ) -> Result<(ParsedArgs, LongOnly), i32> {
        let (args, extra) = self.long_opts(argv, optstring, longs)?;
        Ok((self.opts(&args, optstring)?, extra))
    }

    fn long_opts(
        &self,
        argv: &[String],
        optstring: &str,
        longs: &[(&str, char, bool)],
    ) -> Result<(Vec<String>, LongOnly), i32> {
        let cmd = &argv[0];
        let fail = |msg: String| {
            self.console.err(&format!(
                "qemu-img {cmd}: {msg}\nTry 'qemu-img {cmd} --help' for more info\n"
            ));
            Err(1)
        };
        let mut out = vec![cmd.clone()];
        let mut extra = Vec::new();
        let mut i = 1;
        while i < argv.len() {
            let a = &argv[i];
            i += 1;
            if a == "--" {
                out.extend_from_slice(&argv[i - 1..]);
                break;
            }
            if let Some(body) = a.strip_prefix("--") {
                let (key, val) = match body.split_once('=') {
                    Some((k, v)) => (k, Some(v.to_string())),
                    None => (body, None),
                };
                let exact = longs.iter().find(|l| l.0 == key);
                let matches: Vec<_> = longs.iter().filter(|l| l.0.starts_with(key)).collect();
                let opt = match (exact, matches.as_slice()) {
                    (Some(l), _) => l,
                    (None, [l]) => l,
                    (None, []) => return fail(format!("unrecognized option '{a}'")),
                    (None, many) => {
                        let names: Vec<String> =
                            many.iter().map(|l| format!("'--{}'", l.0)).collect();
                        return fail(format!(
                            "option '{a}' is ambiguous; possibilities: {}",
                            names.join(" ")
                        ));
                    }
                };
                let value = if opt.2 {
                    match val.or_else(|| {
                        i += 1;
                        argv.get(i - 1).cloned()
                    }) {
                        Some(v) => v,
                        None => {
                            return fail(format!("option '--{}' requires an argument", opt.0));
                        }
                    }
                } else if val.is_some() {
                    return fail(format!("option '--{}' doesn't allow an argument", opt.0));
                } else {
                    String::new()
                };
                if opt.0 == "output" && value != "human" && value != "json" {
                    self.error(&format!("--output expects 'human' or 'json' not '{value}'"));
                    self.console
                        .err(&format!("Try 'qemu-img {cmd} --help' for more info\n"));
                    return Err(1);
                }
                if opt.1 == '\0' {
                    extra.push((opt.0.to_string(), value));
                } else {
                    out.push(format!("-{}", opt.1));
                    if opt.2 {
                        out.push(value);
                    }
                }
                continue;
            }
            out.push(a.clone());
            // a short option cluster whose last letter takes an argument swallows the next word
            if let Some(cluster) = a.strip_prefix('-') {
                for (k, c) in cluster.char_indices() {
                    if let Some(p) = optstring.find(c)
                        && c != ':'
                        && optstring[p + 1..].starts_with(':')
                    {
                        if k + c.len_utf8() == cluster.len() && i < argv.len() {
                            out.push(argv[i].clone());
                            i += 1;
                        }
                        break;
                    }
                }
            }
        }
        Ok((out, extra))
    }

    fn open(&self, name: &str, format: Option<&str>, read_only: bool) -> Result<Rc<Node>, i32> {
        self.open_with(name, format, read_only, false)
    }

    /// [`Self::open`]; `check`: as qemu-img check opens (QEMU's BDRV_O_CHECK). The image is
    /// then held as qemu-img's BlockBackend holds it (img_open: blk_new_open), with its locks.
    fn open_with(
        &self,
        name: &str,
        format: Option<&str>,
        read_only: bool,
        check: bool,
    ) -> Result<Rc<Node>, i32> {
        self.open_with_options(name, format, read_only, check, Options::new())
    }

    /// [`Self::open_with`] with block options of the caller's (e.g. `"backing": null`).
    fn open_with_options(
        &self,
        name: &str,
        format: Option<&str>,
        read_only: bool,
        check: bool,
        mut options: Options,
    ) -> Result<Rc<Node>, i32> {
        let ctx = OpenContext {
            base_dir: self.base_dir.to_path_buf(),
            console: self.console.clone(),
            flags: OpenFlags {
                read_only,
                unmap: true,
                no_flush: false,
                check,
                no_io: self.no_io.get(),
                ..OpenFlags::default()
            },
            skip_host_sync: false,
        };
        if self.force_share.get() {
            options.insert("force-share".into(), true.into());
        }
        let user = Access::user(!read_only, self.no_io.get());
        let node = open_drive(Some(name), options, format, &ctx)
            .and_then(|node| perms::refresh(&node, user, read_only).map(|()| node))
            .map_err(|e| {
                self.error(&format!("Could not open '{name}': {e}"));
                1
            })?;
        // qemu-img's nodes have no node-name of their own: messages name them by the one QEMU
        // generates (e.g. "Lost persistent bitmaps during inactivation of node '#block100'")
        let mut counter = self.node_names.get();
        crate::block::reopen::assign_node_names(&node, &mut counter);
        self.node_names.set(counter);
        Ok(node)
    }
}
