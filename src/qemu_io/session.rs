//! A qemu-io session: the open drive, the executor its requests run on, and command dispatch.

use super::commands;
use super::commands_table::{self, CommandSpec};
use crate::block::backend::BlockBackend;
use crate::block::executor::Executor;
use crate::block::node::OpenFlags;
use crate::block::open::{OpenContext, Options, open_drive};
use crate::block::perms::{self, Access, Perms};
use crate::output::Console;
use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;

/// A cache mode (`-t`, `-n`, `open -t`): QEMU's `bdrv_parse_cache_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheMode {
    /// every write is FUA (the BlockBackend's write cache is off)
    pub writethrough: bool,
    /// `cache.direct`: the file is opened with O_DIRECT
    pub direct: bool,
    /// `cache.no-flush`: flushes never reach the disk
    pub no_flush: bool,
}

impl CacheMode {
    /// qemu-io's default: writethrough, through the host's page cache.
    pub const DEFAULT: CacheMode = CacheMode {
        writethrough: true,
        direct: false,
        no_flush: false,
    };

    pub fn parse(mode: &str) -> Option<CacheMode> {
        let (writethrough, direct, no_flush) = match mode {
            "none" | "off" => (false, true, false),
            "directsync" => (true, true, false),
            "writeback" => (false, false, false),
            "unsafe" => (false, false, true),
            "writethrough" => (true, false, false),
            _ => return None,
        };
        Some(CacheMode {
            writethrough,
            direct,
            no_flush,
        })
    }

    /// `-n` after this mode: O_DIRECT and writeback, `no_flush` kept.
    pub fn nocache(self) -> CacheMode {
        CacheMode {
            writethrough: false,
            direct: true,
            ..self
        }
    }
}

/// QEMU's `bdrv_parse_discard_flags`: whether discards unmap (`-d`).
pub fn parse_discard(mode: &str) -> Option<bool> {
    match mode {
        "off" | "ignore" => Some(false),
        "on" | "unmap" => Some(true),
        _ => None,
    }
}

/// How the file driver submits I/O (`-i`, `-k`). Only `native` is visible here: it needs
/// O_DIRECT, and opening fails without it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AioMode {
    #[default]
    Threads,
    Native,
    IoUring,
}

impl AioMode {
    /// QEMU's `bdrv_parse_aio`, which only ever adds a flag: `threads` changes nothing, and
    /// `native` wins over `io_uring` whatever their order.
    pub fn apply(self, mode: &str) -> Option<AioMode> {
        match (self, mode) {
            (_, "threads") => Some(self),
            (_, "native") => Some(AioMode::Native),
            (AioMode::Native, "io_uring") => Some(AioMode::Native),
            (_, "io_uring") => Some(AioMode::IoUring),
            _ => None,
        }
    }
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
    /// aio requests submitted and not yet reported (QEMU's BlockBackend in_flight)
    in_flight: Rc<std::cell::Cell<usize>>,
    /// the `--object`s created at startup (secrets, for encrypted images)
    pub objects: super::objects::Objects,
    /// generated node names so far (QEMU's `#block` counter, process-wide)
    node_names: u64,
    /// the open drive is `-s`'s temporary overlay (its backing node is not its own)
    pub temp_overlay: bool,
    /// `reopen -o` options kept from a `reopen` that failed before using them (QEMU's
    /// reopen_opts list, which some of its errors leave filled)
    pub reopen_opts: crate::block::open::Options,
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
    /// `cache.direct` (`-n`, `-t none`): O_DIRECT
    pub direct: bool,
    /// `discard=unmap` (qemu-io's default; `-d ignore` turns it off)
    pub unmap: bool,
    /// `--image-opts`: errors say `can't open:` with no device name
    pub image_opts: bool,
    pub aio: AioMode,
    /// `-C`: reads copy what they find in backing files into the top image
    pub copy_on_read: bool,
    /// `-U`: `force-share=on`: the image is shared whatever other users hold
    pub force_share: bool,
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
            in_flight: Rc::default(),
            objects: Default::default(),
            node_names: 0,
            temp_overlay: false,
            reopen_opts: Default::default(),
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
    pub fn open(&mut self, mut req: OpenRequest<'_>) -> bool {
        if self.blk.is_some() {
            self.report("file open already, try 'help close'");
            return false;
        }
        // qemu-io's openfile: -U asks for force-share=on, which the options must not contradict.
        if req.force_share {
            match req.options.get("force-share") {
                Some(serde_json::Value::String(v)) if v != "on" => {
                    self.report("-U conflicts with image options");
                    return false;
                }
                _ => {}
            }
        }
        if req.force_share {
            req.options
                .insert("force-share".into(), serde_json::Value::Bool(true));
        }
        // The user reads, and writes unless read-only; the graph must grant it (blk_new_open).
        let held = Access::user(!req.read_only, false);
        let opened = self.open_tree(&req).and_then(|root| {
            // qemu-io asks the node: `-r` with `read-only=off` is writable.
            let read_only = root.flags().read_only;
            perms::refresh(&root, held, read_only).map(|()| root)
        });
        match opened {
            Ok(root) => {
                // bdrv_enable_copy_on_read on the top node only: children never copy
                root.copy_on_read.set(req.copy_on_read);
                crate::block::reopen::assign_node_names(&root, &mut self.node_names);
                self.temp_overlay = req.snapshot;
                self.blk = Some(Rc::new(BlockBackend {
                    root,
                    writethrough: std::cell::Cell::new(req.writethrough),
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

    fn open_tree(&self, req: &OpenRequest<'_>) -> Result<Rc<crate::block::node::Node>, String> {
        let ctx = OpenContext {
            base_dir: self.base_dir.clone(),
            console: self.console.clone(),
            flags: OpenFlags {
                // Under a snapshot overlay the image itself is only read.
                read_only: req.read_only || req.snapshot,
                unmap: req.unmap,
                no_flush: req.no_flush,
                direct: req.direct,
                native_aio: req.aio == AioMode::Native,
                // Under -s the overlay has copy-on-read, not the image (QEMU's
                // bdrv_temp_snapshot_options).
                copy_on_read: req.copy_on_read && !req.snapshot,
                check: false,
                no_io: false,
            },
            skip_host_sync: self.skip_host_sync,
        };
        let root = open_drive(req.name, req.options.clone(), None, &ctx)?;
        // Under -s, copy-on-read is the overlay's, which -r makes read-only too.
        if req.snapshot && req.copy_on_read && req.read_only {
            return Err("Can't use copy-on-read on read-only device".into());
        }
        if req.snapshot {
            crate::block::open::open_temp_snapshot(root, req.read_only, &ctx)
        } else {
            Ok(root)
        }
    }

    /// Runs a request to completion as QEMU's synchronous wrappers do: the request's coroutine
    /// is entered, and the main loop polls only if it yielded (`bdrv_poll_co`). None when it
    /// can never finish (it waits at a breakpoint): QEMU would hang there.
    pub fn run_sync<T: 'static>(&mut self, fut: impl Future<Output = T> + 'static) -> Option<T> {
        let slot = Rc::new(RefCell::new(None));
        let out = slot.clone();
        self.exec.spawn(async move {
            *out.borrow_mut() = Some(fut.await);
        });
        if !self.exec.poll_while(|| slot.borrow().is_some()) {
            self.hang();
            return None;
        }
        slot.take()
    }

    /// Runs a request as qemu-io's readv and writev do (`do_aio_readv`): submitted as an aio
    /// request, then whole main-loop iterations until its callback has run. So bottom halves
    /// pending from earlier aio requests run (and print) before the command reports, even when
    /// the request itself needed no I/O. None when it can never finish, as in [`run_sync`].
    ///
    /// [`run_sync`]: Session::run_sync
    pub fn run_aio_sync<T: 'static>(
        &mut self,
        fut: impl Future<Output = T> + 'static,
    ) -> Option<T> {
        let slot = Rc::new(RefCell::new(None));
        let out = slot.clone();
        self.submit_aio(fut, move |r| *out.borrow_mut() = Some(r));
        if !self.exec.poll_while(|| slot.borrow().is_some()) {
            self.hang();
            return None;
        }
        slot.take()
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

    /// Submits an aio request (QEMU's `blk_aio_prwv`): its coroutine runs until it first
    /// yields. `done` reports the result: at the end of the coroutine, or, when the request
    /// finished before submission returned, from a bottom half at the next poll.
    pub fn submit_aio<T: 'static>(
        &self,
        request: impl Future<Output = T> + 'static,
        done: impl FnOnce(T) + 'static,
    ) {
        type Report<T> = Box<dyn FnOnce(T)>;
        struct Aio<T> {
            has_returned: std::cell::Cell<bool>,
            result: RefCell<Option<T>>,
            done: RefCell<Option<Report<T>>>,
        }
        let aio = Rc::new(Aio {
            has_returned: std::cell::Cell::new(false),
            result: RefCell::new(None),
            done: RefCell::new(Some(Box::new(done))),
        });
        let in_flight = self.in_flight.clone();
        in_flight.set(in_flight.get() + 1);
        let complete = {
            let (aio, in_flight) = (aio.clone(), in_flight.clone());
            move |r: T| {
                let done = aio.done.borrow_mut().take();
                if let Some(done) = done {
                    done(r);
                }
                in_flight.set(in_flight.get() - 1);
            }
        };
        let a = aio.clone();
        let complete_in_co = complete.clone();
        self.exec.spawn(async move {
            let r = request.await;
            if a.has_returned.get() {
                complete_in_co(r);
            } else {
                *a.result.borrow_mut() = Some(r);
            }
        });
        aio.has_returned.set(true);
        let finished = aio.result.borrow_mut().take();
        if let Some(r) = finished {
            self.exec.bh_oneshot(move || complete(r));
        }
    }

    /// Waits for all in-flight aio requests (QEMU's drain); false if some can never finish.
    pub fn drain(&mut self) -> bool {
        let in_flight = self.in_flight.clone();
        if !self.exec.poll_while(|| in_flight.get() == 0) {
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
        let mut wanted = Perms::NONE;
        if spec.needs_write {
            wanted = wanted.union(Perms::WRITE);
        }
        if spec.needs_resize {
            wanted = wanted.union(Perms::RESIZE);
        }
        let held = b.perms.get();
        if held.perm.contains(wanted) {
            return Ok(());
        }
        let new = Access {
            perm: held.perm.union(wanted),
            ..held
        };
        perms::refresh(&b.root, new, b.root.flags().read_only)?;
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
pub(crate) fn close_tree(
    node: &Rc<crate::block::node::Node>,
) -> crate::block::driver::BoxFut<'_, ()> {
    Box::pin(async move {
        node.driver.close(node).await;
        for c in &node.children {
            close_tree(&c.node).await;
        }
    })
}
