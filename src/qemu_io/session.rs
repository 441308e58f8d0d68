//! A qemu-io session: the open drive, the executor its requests run on, and command dispatch.

use super::commands;
use super::commands_table::{self, CommandSpec};
use crate::block::backend::BlockBackend;
use crate::block::executor::Executor;
use crate::block::node::OpenFlags;
use crate::block::open::{OpenContext, Options, open_drive};
use crate::block::perms::{self, Perms};
use crate::output::Console;
use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;

/// Cache modes as `-t` names them (QEMU's bdrv_parse_cache_mode): (writethrough, no_flush).
pub fn parse_cache_mode(mode: &str) -> Option<(bool, bool)> {
    match mode {
        "writethrough" => Some((true, false)),
        "writeback" | "none" | "off" | "directsync" => Some((mode == "directsync", false)),
        "unsafe" => Some((false, true)),
        _ => None,
    }
}

/// Whether a cache mode bypasses the host cache (O_DIRECT).
pub fn cache_mode_direct(mode: &str) -> bool {
    matches!(mode, "none" | "off" | "directsync")
}

pub struct Session {
    pub console: Rc<Console>,
    pub exec: Executor,
    pub blk: Option<Rc<BlockBackend>>,
    pub base_dir: PathBuf,
    /// some command failed: the exit status will be 1
    pub last_error: bool,
    /// `quit` was given
    pub quit: bool,
    /// see [`super::Invocation::skip_host_sync`]
    pub skip_host_sync: bool,
    /// qemu-io was started with `--image-opts` (then `open -o` is refused)
    pub image_opts: bool,
}

/// How a drive is opened (qemu-io's `openfile` parameters).
pub struct OpenRequest<'a> {
    pub name: Option<&'a str>,
    pub options: Options,
    pub read_only: bool,
    /// `-s`: writes go to a temporary overlay, the image stays as it was
    pub snapshot: bool,
    pub writethrough: bool,
    pub no_flush: bool,
    /// cache.direct: O_DIRECT on the image files
    pub nocache: bool,
    /// `discard=unmap` (qemu-io's default; `-d ignore` turns it off)
    pub unmap: bool,
    /// `--image-opts`: errors say `can't open:` with no device name
    pub image_opts: bool,
}

impl Session {
    pub fn new(console: Rc<Console>, base_dir: PathBuf) -> Self {
        Self {
            console,
            exec: Executor::new(),
            blk: None,
            base_dir,
            last_error: false,
            quit: false,
            skip_host_sync: false,
            image_opts: false,
        }
    }

    pub fn out(&self, text: &str) {
        self.console.out(text);
    }

    pub fn err(&self, text: &str) {
        self.console.err(text);
    }

    /// `error_report`: stderr with the program-name prefix.
    pub fn report(&self, text: &str) {
        self.console.report(text);
    }

    /// Opens the drive; false (after printing QEMU's message) on failure.
    pub fn open(&mut self, req: OpenRequest<'_>) -> bool {
        if self.blk.is_some() {
            self.report("file open already, try 'help close'");
            return false;
        }
        let ctx = OpenContext {
            base_dir: self.base_dir.clone(),
            console: self.console.clone(),
            flags: OpenFlags {
                // Under a snapshot overlay the image itself is only read.
                read_only: req.read_only || req.snapshot,
                unmap: req.unmap,
                no_flush: req.no_flush,
                nocache: req.nocache,
            },
            skip_host_sync: self.skip_host_sync,
        };
        // The user takes WRITE unless read-only; the graph must grant it (blk_new_open).
        let held = if req.read_only {
            Perms::NONE
        } else {
            Perms::WRITE
        };
        let opened = open_drive(req.name, req.options, None, &ctx)
            .and_then(|root| {
                if req.snapshot {
                    crate::block::open::open_temp_snapshot(root, &ctx)
                } else {
                    Ok(root)
                }
            })
            .and_then(|root| perms::refresh(&root, held, req.read_only).map(|()| root));
        match opened {
            Ok(root) => {
                self.blk = Some(Rc::new(BlockBackend {
                    root,
                    writethrough: std::cell::Cell::new(req.writethrough),
                    read_only: std::cell::Cell::new(req.read_only),
                    perms: std::cell::Cell::new(held),
                }));
                true
            }
            Err(e) => {
                match (req.image_opts, req.name) {
                    (false, Some(name)) => self.report(&format!("can't open device {name}: {e}")),
                    _ => self.report(&format!("can't open: {e}")),
                }
                false
            }
        }
    }

    /// Runs a request to completion, as qemu-io's synchronous commands poll until theirs is
    /// done. None when it can never finish (it waits at a breakpoint): QEMU would hang there.
    pub fn run_sync<T: 'static>(&mut self, fut: impl Future<Output = T> + 'static) -> Option<T> {
        let slot = Rc::new(RefCell::new(None));
        let out = slot.clone();
        self.exec.spawn(async move {
            *out.borrow_mut() = Some(fut.await);
        });
        self.exec.run_until(|| slot.borrow().is_some());
        let result = slot.take();
        if result.is_none() {
            self.hang();
        }
        result
    }

    /// Ends the session where QEMU would wait forever.
    fn hang(&mut self) {
        let tags = self.suspended_tags();
        let what = if tags.is_empty() {
            "a request can never complete".to_string()
        } else {
            format!(
                "a request is suspended at breakpoint '{}' and nothing will resume it",
                tags.join("', '")
            )
        };
        self.console.err(&format!(
            "blockfault: {what}; qemu-io would hang here forever\n"
        ));
        self.console.exit(1);
    }

    fn suspended_tags(&self) -> Vec<String> {
        self.blk
            .as_ref()
            .and_then(|b| b.root.find_blkdebug())
            .map(|n| {
                n.driver
                    .as_blkdebug()
                    .map(|d| d.suspended_tags())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Submits an aio request: it runs until it first waits, then the command returns.
    pub fn spawn(&self, fut: impl Future<Output = ()> + 'static) {
        self.exec.spawn(fut);
    }

    /// Waits for all in-flight requests (QEMU's drain); false if some can never finish.
    pub fn drain(&mut self) -> bool {
        self.exec.run_until_idle();
        if self.exec.live_tasks() > 0 {
            self.hang();
            return false;
        }
        true
    }

    /// Closes the drive: drain, then the close-time flush (its errors are silent in 10.0.2).
    pub fn close(&mut self) {
        if !self.drain() {
            return;
        }
        if let Some(blk) = self.blk.take() {
            let root = blk.root.clone();
            let _ = self.run_sync(async move {
                let _ = crate::block::io::flush(&root).await;
                close_tree(&root).await;
            });
        }
    }

    /// Runs one command line; returns its result as QEMU's int (negative = failure).
    pub fn command(&mut self, line: &str) -> i32 {
        let argv: Vec<String> = line
            .split(' ')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect();
        let Some(name) = argv.first() else {
            return 0;
        };
        let Some(spec) = commands_table::lookup(name) else {
            self.err(&format!("command \"{name}\" not found\n"));
            return -libc::EINVAL;
        };
        if !spec.global && !spec.nofile_ok && self.blk.is_none() {
            self.err("no file open, try 'help open'\n");
            return -libc::EINVAL;
        }
        let nargs = argv.len() - 1;
        if !commands_table::argc_ok(spec, nargs) {
            self.err(&format!(
                "{}\n",
                commands_table::bad_argc_message(spec, name, nargs)
            ));
            return -libc::EINVAL;
        }
        if !spec.supported {
            self.err(&format!(
                "blockfault: qemu-io command \"{}\" is not supported by this engine\n",
                spec.name
            ));
            return -libc::ENOTSUP;
        }
        if let Err(e) = self.take_perms(spec) {
            self.report(&e);
            return -libc::EPERM;
        }
        commands::dispatch(self, spec, &argv)
    }

    /// Takes, for good, the permissions a command needs (qemu-io's blk_set_perm before the
    /// command runs), checking the whole graph again.
    fn take_perms(&self, spec: &CommandSpec) -> Result<(), String> {
        let Some(b) = &self.blk else {
            return Ok(());
        };
        let wanted = Perms {
            write: spec.needs_write,
            resize: spec.needs_resize,
        };
        let held = b.perms.get();
        if held.contains(wanted) {
            return Ok(());
        }
        let new = held.union(wanted);
        perms::refresh(&b.root, new, b.read_only.get())?;
        b.perms.set(new);
        Ok(())
    }

    pub fn usage(&self, spec: &CommandSpec) {
        self.out(&format!("{}\n", commands_table::usage_line(spec)));
    }

    /// Runs every `-c` command in order (stopping early only at `quit` or a process exit),
    /// then drains and closes. Returns the exit status.
    pub fn run_commands(&mut self, commands: &[String]) -> i32 {
        for c in commands {
            if self.quit || self.console.exited().is_some() {
                break;
            }
            if self.command(c) < 0 {
                self.last_error = true;
            }
        }
        self.finish()
    }

    /// End of the program: drain, close, exit status.
    pub fn finish(&mut self) -> i32 {
        if self.console.exited().is_none() {
            self.close();
        }
        match self.console.exited() {
            Some(status) => status,
            None => i32::from(self.last_error),
        }
    }
}

/// Lets every driver in the tree write back what it caches (children after their parents).
fn close_tree(node: &Rc<crate::block::node::Node>) -> crate::block::driver::BoxFut<'_, ()> {
    Box::pin(async move {
        node.driver.close(node).await;
        for c in &node.children {
            close_tree(&c.node).await;
        }
    })
}
