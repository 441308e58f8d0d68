//! The qemu-img subset: `create`, `check`, `compare`, `info` and `map`, with qemu-img's output
//! and exit codes, over the same block layer qemu-io uses.

use crate::block::driver::status;
use crate::block::executor::block_on;
use crate::block::node::{Node, OpenFlags};
use crate::block::open::{OpenContext, Options, open_drive};
use crate::output::{Console, SharedSink};
use crate::qemu_io::getopt::Getopt;
use std::path::Path;
use std::rc::Rc;

mod check;
mod create;
mod info;
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

    fn read_all(node: &Rc<Node>) -> Result<Vec<u8>, i32> {
        let n = node.clone();
        block_on(async move {
            let len = n.getlength()?;
            let mut buf = vec![0u8; len as usize];
            crate::block::io::preadv(&n, 0, &mut buf).await?;
            Ok(buf)
        })
        .unwrap_or(Err(libc::EIO))
    }

    fn compare(&self, argv: &[String]) -> i32 {
        let Ok((opts, pos)) = self.opts(argv, "hf:F:T:pqsU") else {
            return 1;
        };
        let f1 = opts
            .iter()
            .find(|(c, _)| *c == 'f')
            .map(|(_, a)| a.as_str());
        let quiet = opts.iter().any(|(c, _)| *c == 'q');
        let say = |text: &str| {
            if !quiet {
                self.console.out(text);
            }
        };
        let f2 = opts
            .iter()
            .find(|(c, _)| *c == 'F')
            .map(|(_, a)| a.as_str());
        if pos.len() != 2 {
            self.error("Expecting two image file names");
            return 1;
        }
        let (a, b) = match (
            self.open(&pos[0], f1.or(Some("raw")), true),
            self.open(&pos[1], f2.or(Some("raw")), true),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return 2,
        };
        let (Ok(da), Ok(db)) = (Self::read_all(&a), Self::read_all(&b)) else {
            self.error("Error while reading");
            return 2;
        };
        let common = da.len().min(db.len());
        // qemu-img compares sector by sector and names the first differing sector.
        let sector = |i: usize| i / 512 * 512;
        if let Some(i) = da[..common]
            .iter()
            .zip(&db[..common])
            .position(|(x, y)| x != y)
        {
            say(&format!("Content mismatch at offset {}!\n", sector(i)));
            return 1;
        }
        if da.len() != db.len() {
            say("Warning: Image size mismatch!\n");
            let longer = if da.len() > db.len() { &da } else { &db };
            if let Some(i) = longer[common..].iter().position(|&x| x != 0) {
                say(&format!(
                    "Content mismatch at offset {}!\n",
                    sector(common + i)
                ));
                return 1;
            }
        }
        say("Images are identical.\n");
        0
    }

    fn map(&self, argv: &[String]) -> i32 {
        let mut json = false;
        let mut args = Vec::new();
        for a in argv {
            match a.as_str() {
                "--output=json" => json = true,
                "--output=human" => json = false,
                _ => args.push(a.clone()),
            }
        }
        let Ok((opts, pos)) = self.opts(&args, "f:hU") else {
            return 1;
        };
        let fmt = opts
            .iter()
            .find(|(c, _)| *c == 'f')
            .map(|(_, a)| a.as_str());
        let Some(name) = pos.first() else {
            self.error("Expecting one image file name");
            return 1;
        };
        let node = match self.open(name, fmt, true) {
            Ok(n) => n,
            Err(s) => return s,
        };
        let n = node.clone();
        let extents = block_on(async move {
            let total = n.getlength()?;
            let mut out: Vec<(u64, u64, u32, u64)> = Vec::new();
            let mut offset = 0;
            while offset < total {
                let st = crate::block::io::block_status(&n, true, offset, total - offset).await?;
                if st.pnum == 0 {
                    break;
                }
                let flags = st.flags & (status::DATA | status::ZERO);
                match out.last_mut() {
                    Some(last)
                        if last.2 == flags
                            && last.0 + last.1 == offset
                            && last.3 + last.1 == st.map =>
                    {
                        last.1 += st.pnum
                    }
                    _ => out.push((offset, st.pnum, flags, st.map)),
                }
                offset += st.pnum;
            }
            Ok::<_, i32>(out)
        });
        let extents = match extents {
            Some(Ok(e)) => e,
            _ => {
                self.error("Failed to get block status");
                return 1;
            }
        };
        if json {
            let rows: Vec<String> = extents
                .iter()
                .map(|(start, len, flags, map)| {
                    format!(
                        "{{ \"start\": {start}, \"length\": {len}, \"depth\": 0, \"present\": true, \"zero\": {}, \"data\": {}, \"compressed\": false, \"offset\": {map}}}",
                        flags & status::ZERO != 0,
                        flags & status::DATA != 0
                    )
                })
                .collect();
            self.console.out(&format!("[{}]\n", rows.join(",\n")));
        } else {
            self.console.out(&format!(
                "{:<16}{:<16}{:<16}{}\n",
                "Offset", "Length", "Mapped to", "File"
            ));
            for (start, len, flags, map) in extents {
                if flags & status::DATA != 0 {
                    self.console.out(&format!(
                        "{:<16}{:<16}{:<16}{name}\n",
                        hex(start),
                        hex(len),
                        hex(map)
                    ));
                }
            }
        }
        0
    }
}

/// C's `%#x`: `0x` prefix except for zero.
fn hex(v: u64) -> String {
    if v == 0 {
        "0".into()
    } else {
        format!("{v:#x}")
    }
}
