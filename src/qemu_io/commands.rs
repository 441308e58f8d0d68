//! The qemu-io command handlers: option parsing, checks and messages as QEMU 10.0.2 has them.

use super::buffers;
use super::commands_table::{self, CommandSpec};
use super::format::{cvtstr, dump_buffer, report_duration};
use super::getopt::Getopt;
use super::numbers::{NumError, cvtnum, parse_pattern, parse_sleep_ms};
use super::session::{AioMode, CacheMode, OpenRequest, Session, parse_discard};
use crate::block::backend::BlockBackend;
use crate::block::driver::{IoResult, ReqFlags};
use crate::block::io::{self, REQUEST_MAX_BYTES};
use crate::block::iovec;
use crate::block::open::parse_keyval;
use crate::errno::strerror;
use crate::output::Console;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

const EINVAL: i32 = -libc::EINVAL;

pub fn dispatch(s: &mut Session, spec: &'static CommandSpec, argv: &[String]) -> i32 {
    match spec.name {
        "read" => read_f(s, spec, argv),
        "readv" => readv_f(s, spec, argv),
        "write" => write_f(s, spec, argv),
        "writev" => writev_f(s, spec, argv),
        "aio_read" => aio_read_f(s, spec, argv),
        "aio_write" => aio_write_f(s, spec, argv),
        "aio_flush" => {
            s.drain();
            0
        }
        "flush" => flush_f(s),
        "discard" => discard_f(s, spec, argv),
        "truncate" => truncate_f(s, spec, argv),
        "length" => length_f(s),
        "info" => info_f(s),
        "map" => map_f(s),
        "alloc" => alloc_f(s, argv),
        "break" => break_f(s, argv),
        "remove_break" => remove_break_f(s, argv),
        "resume" => resume_f(s, argv),
        "wait_break" => wait_break_f(s, argv),
        "sleep" => sleep_f(s, argv),
        "abort" => {
            s.console.raise(libc::SIGABRT);
            0
        }
        "sigraise" => sigraise_f(s, argv),
        "zone_report" => zone_report_f(s, argv),
        "zone_open" | "zone_close" | "zone_finish" | "zone_reset" => zone_mgmt_f(s, spec, argv),
        "zone_append" => zone_append_f(s, argv),
        "open" => open_f(s, spec, argv),
        "close" => {
            s.close();
            0
        }
        "help" => help_f(s, argv),
        "reopen" => reopen_f(s, spec, argv),
        "quit" => {
            s.quit = true;
            1
        }
        _ => {
            s.err(&format!("command \"{}\" not found\n", argv[0]));
            EINVAL
        }
    }
}

fn blk(s: &Session) -> Rc<BlockBackend> {
    s.blk
        .clone()
        .expect("commands that need a file are only dispatched with one open")
}

/// `cvtnum` with qemu-io's message on failure.
fn num(s: &Session, arg: &str) -> Result<i64, i32> {
    cvtnum(arg).map_err(|e| {
        s.out(&format!("{}\n", e.message(arg)));
        -e.errno()
    })
}

fn pattern(s: &Session, arg: &str) -> Result<u8, i32> {
    parse_pattern(arg).map_err(|m| {
        s.out(&format!("{m}\n"));
        EINVAL
    })
}

/// Parses options with getopt; `Err` after printing getopt's message and the usage line.
fn options<'a>(
    s: &Session,
    spec: &CommandSpec,
    argv: &'a [String],
    optstring: &'a str,
    mut each: impl FnMut(char, Option<String>) -> Result<(), i32>,
) -> Result<Vec<String>, i32> {
    let mut g = Getopt::new(argv, optstring);
    for item in g.by_ref() {
        match item {
            Ok((c, arg)) => each(c, arg)?,
            Err(msg) => {
                s.err(&format!("{msg}\n"));
                s.usage(spec);
                return Err(EINVAL);
            }
        }
    }
    Ok(g.positionals().to_vec())
}

/// What a write writes: a pattern, made into a buffer only once the request passes its
/// checks, or bytes read from a file (`write -s`).
enum Payload {
    Pattern(u8),
    Bytes(Vec<u8>),
}

impl Payload {
    fn into_bytes(self, count: usize) -> Vec<u8> {
        match self {
            Payload::Pattern(p) => buffers::filled(count, p),
            Payload::Bytes(b) => b,
        }
    }
}

/// The end of a synchronous request that only reports: `<name> failed: <err>` and its error, or
/// the statistics (unless `-q`) and 0.
struct Done {
    name: &'static str,
    op: &'static str,
    offset: i64,
    count: i64,
    quiet: bool,
    compact: bool,
}

impl Done {
    /// Runs the request (timed, as qemu-io brackets it with clock_gettime) and reports.
    fn run(
        self,
        s: &mut Session,
        fut: impl std::future::Future<Output = IoResult> + 'static,
    ) -> i32 {
        let t0 = Instant::now();
        let ret = s.run_sync(fut);
        self.report(s, t0, ret)
    }

    /// [`Done::run`] for the commands qemu-io runs as aio requests it waits for (writev).
    fn run_aio(
        self,
        s: &mut Session,
        fut: impl std::future::Future<Output = IoResult> + 'static,
    ) -> i32 {
        let t0 = Instant::now();
        let ret = s.run_aio_sync(fut);
        self.report(s, t0, ret)
    }

    fn report(self, s: &Session, t0: Instant, ret: Option<IoResult>) -> i32 {
        let Some(ret) = ret else {
            return EINVAL;
        };
        let elapsed = t0.elapsed();
        match ret {
            Err(e) => {
                s.out(&format!("{} failed: {}\n", self.name, strerror(e)));
                -e
            }
            Ok(()) => {
                if !self.quiet {
                    report(
                        s,
                        self.op,
                        elapsed,
                        self.offset,
                        self.count,
                        self.count,
                        self.compact,
                    );
                }
                0
            }
        }
    }
}

fn report(s: &Session, op: &str, t: Duration, offset: i64, count: i64, total: i64, compact: bool) {
    s.out(&report_duration(op, t, offset, count, total, 1, compact));
}

fn check_len(s: &Session, count: i64, arg: &str, extra: &str) -> Result<(), i32> {
    if count as u64 > REQUEST_MAX_BYTES {
        s.out(&format!(
            "length cannot exceed {REQUEST_MAX_BYTES}{extra}, given {arg}\n"
        ));
        return Err(EINVAL);
    }
    Ok(())
}

fn sector_aligned(s: &Session, offset: i64, count: i64) -> Result<(), i32> {
    if offset % 512 != 0 {
        s.out(&format!(
            "{offset} is not a sector-aligned value for 'offset'\n"
        ));
        return Err(EINVAL);
    }
    if count % 512 != 0 {
        s.out(&format!(
            "{count} is not a sector-aligned value for 'count'\n"
        ));
        return Err(EINVAL);
    }
    Ok(())
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(code) => return code,
        }
    };
}

fn read_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let (mut compact, mut quiet, mut verbose, mut bflag) = (false, false, false, false);
    let (mut pat, mut soff, mut slen): (Option<u8>, Option<i64>, Option<i64>) = (None, None, None);
    let mut registered = false;
    let pos = tri!(options(s, spec, argv, "bCl:pP:qrs:v", |c, arg| {
        let arg = arg.unwrap_or_default();
        match c {
            'b' => bflag = true,
            'C' => compact = true,
            'l' => slen = Some(num(s, &arg)?),
            'P' => pat = Some(pattern(s, &arg)?),
            'q' => quiet = true,
            'r' => registered = true,
            's' => soff = Some(num(s, &arg)?),
            'v' => verbose = true,
            _ => {}
        }
        Ok(())
    }));
    if pos.len() != 2 {
        s.usage(spec);
        return EINVAL;
    }
    let offset = tri!(num(s, &pos[0]));
    let count = tri!(num(s, &pos[1]));
    tri!(check_len(s, count, &pos[1], ""));
    if pat.is_none() && (slen.is_some() || soff.is_some()) {
        s.usage(spec);
        return EINVAL;
    }
    let pattern_offset = soff.unwrap_or(0);
    let pattern_count = slen.unwrap_or(count - pattern_offset);
    // QEMU adds these as int64_t: a sum that overflows passes its check, then the
    // verification reads far outside the buffer (below).
    if pattern_count < 0 || pattern_count.wrapping_add(pattern_offset) > count {
        s.out("pattern verification range exceeds end of read data\n");
        return EINVAL;
    }
    if bflag {
        tri!(sector_aligned(s, offset, count));
        if registered {
            s.out("I/O buffer registration is not supported when reading from vmstate\n");
            return EINVAL;
        }
    }
    let b = blk(s);
    let buf = Rc::new(RefCell::new(Vec::new()));
    let t0 = Instant::now();
    let ret = {
        let buf = buf.clone();
        s.run_sync(async move {
            if bflag {
                b.check_vmstate(offset as u64, count as u64)?;
            } else {
                b.check(offset as u64, count as u64)?;
            }
            let mut data = buffers::filled(count as usize, 0xab);
            let r = if bflag {
                b.load_vmstate(offset as u64, &mut data).await
            } else {
                b.pread(offset as u64, &mut data).await
            };
            *buf.borrow_mut() = data;
            r
        })
    };
    let elapsed = t0.elapsed();
    let Some(ret) = ret else { return EINVAL };
    if let Err(e) = ret {
        s.out(&format!("read failed: {}\n", strerror(e)));
        return -e;
    }
    let buf = buf.take();
    let mut rc = 0;
    if let Some(p) = pat {
        let Some(end) = pattern_offset.checked_add(pattern_count) else {
            s.err(&format!(
                "blockfault: read: pattern range -s {pattern_offset} -l {pattern_count} overflows; QEMU 10.0.2 dies of SIGSEGV here (reading outside the buffer)\n"
            ));
            s.console.exit(1);
            return EINVAL;
        };
        let range = &buf[pattern_offset as usize..end as usize];
        if !all_bytes_are(range, p) {
            s.out(&format!(
                "Pattern verification failed at offset {}, {} bytes\n",
                offset + pattern_offset,
                pattern_count
            ));
            rc = EINVAL;
        }
    }
    if !quiet {
        if verbose {
            s.out(&dump_buffer(&buf, offset as u64));
        }
        report(s, "read", elapsed, offset, count, count, compact);
    }
    buffers::recycle(buf);
    rc
}

/// Whether every byte of `buf` is `p` (a read's pattern check), a block compare at a time:
/// a byte loop cost as much as the 64 MiB reads it checked.
fn all_bytes_are(buf: &[u8], p: u8) -> bool {
    let block = [p; 4096];
    buf.chunks(block.len()).all(|c| c == &block[..c.len()])
}

/// Builds the buffer of a vectored request from its length arguments (QEMU's create_iovec).
fn iovec_len(s: &Session, args: &[String]) -> Result<i64, i32> {
    let mut total: i64 = 0;
    for arg in args {
        let len = num(s, arg)?;
        if len as u64 > REQUEST_MAX_BYTES {
            s.out(&format!(
                "Argument '{arg}' exceeds maximum size {REQUEST_MAX_BYTES}\n"
            ));
            return Err(EINVAL);
        }
        if total as u64 > REQUEST_MAX_BYTES - len as u64 {
            s.out(&format!(
                "The total number of bytes exceed the maximum size {REQUEST_MAX_BYTES}\n"
            ));
            return Err(EINVAL);
        }
        total += len;
    }
    Ok(total)
}

/// The element lengths of a vector whose arguments `iovec_len` accepted.
fn iovec_elements(args: &[String]) -> Vec<u64> {
    args.iter()
        .map(|a| cvtnum(a).map_or(0, |n| n as u64))
        .collect()
}

/// A vectored read as `readv` and `aio_read` take it: `[-Ciqrv] [-P pattern] off len [len..]`.
struct VectorRead {
    offset: i64,
    count: i64,
    /// the vector's element lengths
    elements: Vec<u64>,
    pattern: Option<u8>,
    compact: bool,
    quiet: bool,
    verbose: bool,
    /// `aio_read -i`: account an invalid request and do nothing
    invalid: bool,
}

fn parse_vector_read(
    s: &Session,
    spec: &CommandSpec,
    argv: &[String],
    optstring: &str,
) -> Result<VectorRead, i32> {
    let (mut compact, mut quiet, mut verbose, mut invalid) = (false, false, false, false);
    let mut pat = None;
    let pos = options(s, spec, argv, optstring, |c, arg| {
        match c {
            'C' => compact = true,
            'P' => pat = Some(pattern(s, &arg.unwrap_or_default())?),
            'i' => invalid = true,
            'q' => quiet = true,
            'v' => verbose = true,
            _ => {}
        }
        Ok(())
    })?;
    if pos.len() < 2 {
        s.usage(spec);
        return Err(EINVAL);
    }
    Ok(VectorRead {
        offset: num(s, &pos[0])?,
        count: iovec_len(s, &pos[1..])?,
        elements: iovec_elements(&pos[1..]),
        pattern: pat,
        compact,
        quiet,
        verbose,
        invalid,
    })
}

impl VectorRead {
    /// Prints what a finished vectored read prints; false when the pattern did not match.
    fn report(&self, console: &Console, buf: &[u8], elapsed: Duration) -> bool {
        let (offset, count) = (self.offset, self.count);
        let matched = self.pattern.is_none_or(|p| all_bytes_are(buf, p));
        if !matched {
            console.out(&format!(
                "Pattern verification failed at offset {offset}, {count} bytes\n"
            ));
        }
        if !self.quiet {
            if self.verbose {
                console.out(&dump_buffer(buf, offset as u64));
            }
            console.out(&report_duration(
                "read",
                elapsed,
                offset,
                count,
                count,
                1,
                self.compact,
            ));
        }
        matched
    }
}

fn readv_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let req = tri!(parse_vector_read(s, spec, argv, "CP:qrv"));
    let (offset, count) = (req.offset, req.count);
    let b = blk(s);
    let console = s.console.clone();
    let elements = req.elements.clone();
    let t0 = Instant::now();
    let Some(ret) = s.run_aio_sync(async move {
        b.check(offset as u64, count as u64)?;
        let mut buf = buffers::filled(count as usize, 0xab);
        let _layout = iovec::register(&buf, &elements, &console);
        b.pread(offset as u64, &mut buf).await.map(|_| buf)
    }) else {
        return EINVAL;
    };
    let elapsed = t0.elapsed();
    match ret {
        Err(e) => {
            s.out(&format!("readv failed: {}\n", strerror(e)));
            -e
        }
        Ok(buf) => {
            let ok = req.report(&s.console, &buf, elapsed);
            buffers::recycle(buf);
            if ok { 0 } else { EINVAL }
        }
    }
}

/// Fills a write buffer cyclically from a file (`write -s`); None after QEMU's message.
fn buffer_from_file(s: &Session, name: &str, len: usize) -> Option<Vec<u8>> {
    let path = s.base_dir.join(crate::host_bytes::host_path(name));
    match std::fs::read(&path) {
        Err(e) => {
            s.err(&format!(
                "{name}: {}\n",
                strerror(e.raw_os_error().unwrap_or(libc::EIO))
            ));
            None
        }
        Ok(data) if data.is_empty() => {
            s.err(&format!("{name}: file is empty\n"));
            None
        }
        Ok(data) => Some(data.iter().copied().cycle().take(len).collect()),
    }
}

fn write_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let (mut bflag, mut compressed, mut compact, mut fua, mut nofallback) =
        (false, false, false, false, false);
    let (mut quiet, mut registered, mut unmap, mut zflag) = (false, false, false, false);
    let mut pat: Option<u8> = None;
    let mut source: Option<String> = None;
    let pos = tri!(options(s, spec, argv, "bcCfnpP:qrs:uz", |c, arg| {
        match c {
            'b' => bflag = true,
            'c' => compressed = true,
            'C' => compact = true,
            'f' => fua = true,
            'n' => nofallback = true,
            'P' => pat = Some(pattern(s, &arg.unwrap_or_default())?),
            'q' => quiet = true,
            'r' => registered = true,
            's' => source = arg,
            'u' => unmap = true,
            'z' => zflag = true,
            _ => {}
        }
        Ok(())
    }));
    if pos.len() != 2 {
        s.usage(spec);
        return EINVAL;
    }
    if bflag && zflag {
        s.out("-b and -z cannot be specified at the same time\n");
        return EINVAL;
    }
    if fua && (bflag || compressed) {
        s.out("-f and -b or -c cannot be specified at the same time\n");
        return EINVAL;
    }
    if nofallback && !zflag {
        s.out("-n requires -z to be specified\n");
        return EINVAL;
    }
    if unmap && !zflag {
        s.out("-u requires -z to be specified\n");
        return EINVAL;
    }
    if u8::from(zflag) + u8::from(pat.is_some()) + u8::from(source.is_some()) > 1 {
        s.out("Only one of -z, -P, and -s can be specified at the same time\n");
        return EINVAL;
    }
    let offset = tri!(num(s, &pos[0]));
    let count = tri!(num(s, &pos[1]));
    if !nofallback {
        tri!(check_len(s, count, &pos[1], " without -n"));
    }
    if bflag || compressed {
        tri!(sector_aligned(s, offset, count));
    }
    let mut flags = ReqFlags::NONE;
    if fua {
        flags = flags.with(ReqFlags::FUA);
    }
    if nofallback {
        flags = flags.with(ReqFlags::NO_FALLBACK);
    }
    if unmap {
        flags = flags.with(ReqFlags::MAY_UNMAP);
    }
    let data = if zflag {
        if registered {
            s.out("cannot combine zero write with registered I/O buffer\n");
            return EINVAL;
        }
        None
    } else if let Some(name) = &source {
        match buffer_from_file(s, name, count as usize) {
            Some(b) => Some(Payload::Bytes(b)),
            None => return EINVAL,
        }
    } else {
        Some(Payload::Pattern(pat.unwrap_or(0xcd)))
    };
    let b = blk(s);
    let done = Done {
        name: "write",
        op: "wrote",
        offset,
        count,
        quiet,
        compact,
    };
    done.run(s, async move {
        let (at, len) = (offset as u64, count as u64);
        let mut pattern = None;
        let data = match data {
            Some(payload) => {
                if bflag {
                    b.check_vmstate(at, len)?;
                } else {
                    b.check(at, len)?;
                }
                if let Payload::Pattern(p) = &payload {
                    pattern = Some(*p);
                }
                Some(payload.into_bytes(count as usize))
            }
            None => None,
        };
        let r = match &data {
            Some(buf) if bflag => b.save_vmstate(offset as u64, buf).await,
            Some(buf) if compressed => b.pwrite_compressed(offset as u64, buf).await,
            _ if bflag || compressed => Err(libc::ENOTSUP),
            None if count as u64 > i32::MAX as u64 && !nofallback => Err(libc::ERANGE),
            None => b.pwrite_zeroes(offset as u64, count as u64, flags).await,
            Some(buf) => b.pwrite(offset as u64, buf, flags).await,
        };
        if let Some(buf) = data {
            match pattern {
                Some(p) => buffers::recycle_filled(buf, p),
                None => buffers::recycle(buf),
            }
        }
        r
    })
}

fn writev_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let (mut compact, mut quiet, mut fua) = (false, false, false);
    let mut pat = 0xcdu8;
    let pos = tri!(options(s, spec, argv, "CfqP:r", |c, arg| {
        match c {
            'C' => compact = true,
            'f' => fua = true,
            'q' => quiet = true,
            'P' => pat = pattern(s, &arg.unwrap_or_default())?,
            _ => {}
        }
        Ok(())
    }));
    if pos.len() < 2 {
        s.usage(spec);
        return EINVAL;
    }
    let offset = tri!(num(s, &pos[0]));
    let count = tri!(iovec_len(s, &pos[1..]));
    let elements = iovec_elements(&pos[1..]);
    let flags = if fua { ReqFlags::FUA } else { ReqFlags::NONE };
    let b = blk(s);
    let console = s.console.clone();
    let done = Done {
        name: "writev",
        op: "wrote",
        offset,
        count,
        quiet,
        compact,
    };
    done.run_aio(s, async move {
        b.check(offset as u64, count as u64)?;
        let buf = buffers::filled(count as usize, pat);
        let layout = iovec::register(&buf, &elements, &console);
        let r = b.pwrite(offset as u64, &buf, flags).await;
        drop(layout);
        buffers::recycle_filled(buf, pat);
        r
    })
}

fn aio_read_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let req = tri!(parse_vector_read(s, spec, argv, "CP:iqrv"));
    if req.invalid {
        s.out("injecting invalid read request\n");
        return 0;
    }
    let b = blk(s);
    let console = s.console.clone();
    let t0 = Instant::now();
    let layout_console = console.clone();
    let elements = req.elements.clone();
    s.submit_aio(
        async move {
            if let Err(e) = b.check(req.offset as u64, req.count as u64) {
                return (Err(e), Vec::new());
            }
            let mut buf = buffers::filled(req.count as usize, 0xab);
            let layout = iovec::register(&buf, &elements, &layout_console);
            let ret = b.pread(req.offset as u64, &mut buf).await;
            drop(layout);
            (ret, buf)
        },
        move |(ret, buf)| {
            let elapsed = t0.elapsed();
            match ret {
                Err(e) => console.out(&format!("readv failed: {}\n", strerror(e))),
                // A pattern mismatch in an aio read does not change the exit status.
                Ok(()) => {
                    req.report(&console, &buf, elapsed);
                    buffers::recycle(buf);
                }
            }
        },
    );
    0
}

fn aio_write_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let (mut compact, mut quiet, mut fua, mut invalid, mut zflag, mut unmap, mut registered) =
        (false, false, false, false, false, false, false);
    let mut pat = 0xcdu8;
    let pos = tri!(options(s, spec, argv, "CfiqrP:uz", |c, arg| {
        match c {
            'C' => compact = true,
            'f' => fua = true,
            'i' => invalid = true,
            'q' => quiet = true,
            'r' => registered = true,
            'P' => pat = pattern(s, &arg.unwrap_or_default())?,
            'u' => unmap = true,
            'z' => zflag = true,
            _ => {}
        }
        Ok(())
    }));
    if pos.len() < 2 {
        s.usage(spec);
        return EINVAL;
    }
    if zflag && pos.len() != 2 {
        s.out("-z supports only a single length parameter\n");
        return EINVAL;
    }
    if unmap && !zflag {
        s.out("-u requires -z to be specified\n");
        return EINVAL;
    }
    if zflag && registered {
        s.out("cannot combine zero write with registered I/O buffer\n");
        return EINVAL;
    }
    let offset = tri!(num(s, &pos[0]));
    let count = if zflag {
        tri!(num(s, &pos[1]))
    } else {
        tri!(iovec_len(s, &pos[1..]))
    };
    if invalid {
        s.out("injecting invalid write request\n");
        return 0;
    }
    let mut flags = if fua { ReqFlags::FUA } else { ReqFlags::NONE };
    if unmap {
        flags = flags.with(ReqFlags::MAY_UNMAP);
    }
    let b = blk(s);
    let console = s.console.clone();
    let t0 = Instant::now();
    let elements = iovec_elements(&pos[1..]);
    let layout_console = console.clone();
    s.submit_aio(
        async move {
            if zflag {
                b.pwrite_zeroes(offset as u64, count as u64, flags).await
            } else {
                b.check(offset as u64, count as u64)?;
                let buf = buffers::filled(count as usize, pat);
                let layout = iovec::register(&buf, &elements, &layout_console);
                let r = b.pwrite(offset as u64, &buf, flags).await;
                drop(layout);
                buffers::recycle_filled(buf, pat);
                r
            }
        },
        move |ret| {
            let elapsed = t0.elapsed();
            if let Err(e) = ret {
                console.out(&format!("aio_write failed: {}\n", strerror(e)));
                return;
            }
            if !quiet {
                console.out(&report_duration(
                    "wrote", elapsed, offset, count, count, 1, compact,
                ));
            }
        },
    );
    0
}

fn flush_f(s: &mut Session) -> i32 {
    let b = blk(s);
    match s.run_sync(async move { b.flush().await }) {
        Some(Ok(())) => 0,
        Some(Err(e)) => -e,
        None => EINVAL,
    }
}

fn discard_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let (mut compact, mut quiet) = (false, false);
    let pos = tri!(options(s, spec, argv, "Cq", |c, _| {
        match c {
            'C' => compact = true,
            'q' => quiet = true,
            _ => {}
        }
        Ok(())
    }));
    if pos.len() != 2 {
        s.usage(spec);
        return EINVAL;
    }
    let offset = tri!(num(s, &pos[0]));
    let bytes = tri!(num(s, &pos[1]));
    tri!(check_len(s, bytes, &pos[1], ""));
    let b = blk(s);
    let done = Done {
        name: "discard",
        op: "discard",
        offset,
        count: bytes,
        quiet,
        compact,
    };
    done.run(
        s,
        async move { b.pdiscard(offset as u64, bytes as u64).await },
    )
}

fn truncate_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let mut prealloc = "off".to_string();
    let pos = tri!(options(s, spec, argv, "m:", |c, arg| {
        if c == 'm' {
            let mode = arg.unwrap_or_default();
            if !["off", "metadata", "falloc", "full"].contains(&mode.as_str()) {
                s.report(&format!("Invalid preallocation mode '{mode}'"));
                return Err(EINVAL);
            }
            prealloc = mode;
        }
        Ok(())
    }));
    if pos.len() != 1 {
        s.usage(spec);
        return EINVAL;
    }
    let size = tri!(num(s, &pos[0]));
    let b = blk(s);
    match s.run_sync(async move { b.truncate_prealloc(size as u64, &prealloc).await }) {
        Some(Ok(())) => 0,
        Some(Err(msg)) => {
            s.report(&msg);
            -libc::EIO
        }
        None => EINVAL,
    }
}

fn length_f(s: &mut Session) -> i32 {
    match blk(s).getlength() {
        Ok(len) => {
            s.out(&format!("{}\n", cvtstr(len as f64)));
            0
        }
        Err(e) => {
            s.out(&format!("getlength: {}\n", strerror(e)));
            -e
        }
    }
}

fn info_f(s: &mut Session) -> i32 {
    let root = blk(s).root.clone();
    s.out(&format!("format name: {}\n", root.driver.format_name()));
    if let Some(p) = root.driver.protocol_name() {
        s.out(&format!("format name: {p}\n"));
    }
    if io::get_info_unsupported(&root) {
        // bdrv_get_info fails with ENOTSUP: qemu-io's info stops there, saying nothing more
        return -libc::ENOTSUP;
    }
    // Filters answer with their filtered child's details (raw and file have none: zeroes),
    // but format-specific information comes only from the node's own driver.
    let own = root.driver.info(&root).is_some();
    let mut info = io::get_info(&root).unwrap_or_default();
    if !own {
        info.specific.clear();
    }
    s.out(&format!(
        "cluster size: {}\n",
        cvtstr(info.cluster_size as f64)
    ));
    s.out(&format!(
        "vm state offset: {}\n",
        cvtstr(info.vm_state_offset as f64)
    ));
    if !info.specific.is_empty() {
        s.out("Format specific information:\n");
        for line in &info.specific {
            s.out(&format!("    {line}\n"));
        }
    }
    0
}

fn map_f(s: &mut Session) -> i32 {
    let b = blk(s);
    let total = match b.getlength() {
        Ok(l) => l,
        Err(e) => {
            s.report(&format!("Failed to query image length: {}", strerror(e)));
            return -e;
        }
    };
    let root = b.root.clone();
    let (mut offset, mut bytes) = (0u64, total);
    // Each line is printed as soon as it is known: an error further on ends the listing
    // after the lines before it, as in qemu-io.
    while bytes > 0 {
        let (allocated, n) = match map_is_allocated(s, &root, offset, bytes) {
            None => return EINVAL,
            Some(Err(e)) => {
                s.report(&format!("Failed to get allocation status: {}", strerror(e)));
                return -e;
            }
            Some(Ok(r)) => r,
        };
        if n == 0 {
            s.report("Unexpected end of image");
            return -libc::EIO;
        }
        let what = if allocated {
            "    allocated"
        } else {
            "not allocated"
        };
        s.out(&format!(
            "{} (0x{n:x}) bytes {what} at offset {} (0x{offset:x})\n",
            cvtstr(n as f64),
            cvtstr(offset as f64)
        ));
        offset += n;
        bytes -= n;
    }
    0
}

/// One run of equal answers from `offset` (qemu-io's map_is_allocated): the first query's
/// error is the run's; a later query that fails or answers differently just ends the run.
/// None when a query can never finish.
fn map_is_allocated(
    s: &mut Session,
    root: &Rc<crate::block::node::Node>,
    offset: u64,
    bytes: u64,
) -> Option<IoResult<(bool, u64)>> {
    let (first, mut n) = match is_allocated(s, root, offset, bytes)? {
        Err(e) => return Some(Err(e)),
        Ok(r) => r,
    };
    let (mut o, mut rest) = (offset + n, bytes - n);
    while rest > 0 {
        match is_allocated(s, root, o, rest)? {
            Ok((a, m)) if a == first && m != 0 => {
                n += m;
                o += m;
                rest -= m;
            }
            _ => break,
        }
    }
    Some(Ok((first, n)))
}

/// One synchronous bdrv_is_allocated, polled to completion as qemu-io does.
fn is_allocated(
    s: &mut Session,
    root: &Rc<crate::block::node::Node>,
    offset: u64,
    bytes: u64,
) -> Option<IoResult<(bool, u64)>> {
    let root = root.clone();
    s.run_sync(async move { io::is_allocated(&root, offset, bytes).await })
}

fn alloc_f(s: &mut Session, argv: &[String]) -> i32 {
    let start = tri!(num(s, &argv[1]));
    let count = if argv.len() == 3 {
        tri!(num(s, &argv[2]))
    } else {
        512
    };
    let root = blk(s).root.clone();
    let Some(result) = s.run_sync(async move {
        let (mut offset, mut remaining, mut count, mut sum) =
            (start as u64, count as u64, count, 0u64);
        while remaining > 0 {
            let (a, n) = io::is_allocated(&root, offset, remaining).await?;
            offset += n;
            remaining -= n;
            if a {
                sum += n;
            }
            if n == 0 {
                count -= remaining as i64;
                remaining = 0;
            }
        }
        Ok::<_, i32>((sum, count))
    }) else {
        return EINVAL;
    };
    match result {
        Err(e) => {
            s.out(&format!("is_allocated failed: {}\n", strerror(e)));
            -e
        }
        Ok((sum, count)) => {
            s.out(&format!(
                "{sum}/{count} bytes allocated at offset {}\n",
                cvtstr(start as f64)
            ));
            0
        }
    }
}

/// The node whose breakpoints the debug commands act on.
fn debug_node(s: &Session) -> Option<Rc<crate::block::node::Node>> {
    blk(s).root.find_blkdebug()
}

fn break_f(s: &mut Session, argv: &[String]) -> i32 {
    let ret = match debug_node(s) {
        None => Err(libc::ENOTSUP),
        Some(n) => n
            .driver
            .as_blkdebug()
            .map_or(Err(libc::ENOTSUP), |d| d.add_breakpoint(&argv[1], &argv[2])),
    };
    match ret {
        Ok(()) => 0,
        Err(e) => {
            s.out(&format!("Could not set breakpoint: {}\n", strerror(e)));
            -e
        }
    }
}

/// Resumes one request suspended with `tag`, re-entering it at once.
fn resume_one(s: &mut Session, node: &crate::block::node::Node, tag: &str) -> bool {
    let Some(d) = node.driver.as_blkdebug() else {
        return false;
    };
    match d.resume_one(tag) {
        None => false,
        Some(task) => {
            if let Some(id) = task {
                s.exec.enter(id);
            }
            true
        }
    }
}

fn resume_f(s: &mut Session, argv: &[String]) -> i32 {
    let ret = match debug_node(s) {
        None => Err(libc::ENOTSUP),
        Some(n) => {
            if resume_one(s, &n, &argv[1]) {
                Ok(())
            } else {
                Err(libc::ENOENT)
            }
        }
    };
    match ret {
        Ok(()) => 0,
        Err(e) => {
            s.out(&format!("Could not resume request: {}\n", strerror(e)));
            -e
        }
    }
}

fn remove_break_f(s: &mut Session, argv: &[String]) -> i32 {
    let ret = match debug_node(s) {
        None => Err(libc::ENOTSUP),
        Some(n) => {
            let removed = n
                .driver
                .as_blkdebug()
                .is_some_and(|d| d.remove_breakpoints(&argv[1]));
            while resume_one(s, &n, &argv[1]) {}
            if removed { Ok(()) } else { Err(libc::ENOENT) }
        }
    };
    match ret {
        Ok(()) => 0,
        Err(e) => {
            s.out(&format!(
                "Could not remove breakpoint {}: {}\n",
                argv[1],
                strerror(e)
            ));
            -e
        }
    }
}

fn wait_break_f(s: &mut Session, argv: &[String]) -> i32 {
    let tag = argv[1].clone();
    let node = debug_node(s);
    let suspended = move || {
        node.as_ref()
            .and_then(|n| n.driver.as_blkdebug().map(|d| d.is_suspended(&tag)))
            .unwrap_or(false)
    };
    if !s.exec.poll_while(suspended) {
        s.err(&format!(
            "blockfault: wait_break {}: no request can reach that breakpoint; qemu-io would wait here forever\n",
            argv[1]
        ));
        s.console.exit(1);
        return EINVAL;
    }
    0
}

fn sleep_f(s: &mut Session, argv: &[String]) -> i32 {
    if let Err(m) = parse_sleep_ms(&argv[1]) {
        s.out(&format!("{m}\n"));
        return EINVAL;
    }
    // Time does not matter to a deterministic executor: sleeping lets everything runnable run.
    s.exec.run_until_idle();
    0
}

fn sigraise_f(s: &mut Session, argv: &[String]) -> i32 {
    let sig = match cvtnum(&argv[1]) {
        Ok(v) => v,
        Err(e) => {
            s.out(&format!("{}\n", NumError::message(&e, &argv[1])));
            return -e.errno();
        }
    };
    if sig > 65 {
        s.out(&format!(
            "signal argument '{}' is too large to be a valid signal\n",
            argv[1]
        ));
        return EINVAL;
    }
    // qemu-io flushes its streams before raising: what stdout held back is not lost.
    s.console.flush();
    // Whether the signal ends the process is the console's to say (output::signal_effect).
    s.console.raise(sig as i32);
    0
}

/// None of our drivers is a zoned device, so every zone operation that gets as far as the block
/// layer fails with ENOTSUP, as QEMU's do on a regular file.
fn zone_failed(s: &Session, what: &str, err: i32) -> i32 {
    s.out(&format!("zone {what} failed: {}\n", strerror(err)));
    -err
}

fn zone_report_f(s: &mut Session, argv: &[String]) -> i32 {
    tri!(num(s, &argv[1]));
    tri!(num(s, &argv[2]));
    zone_failed(s, "report", libc::ENOTSUP)
}

fn zone_mgmt_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let offset = tri!(num(s, &argv[1]));
    let len = tri!(num(s, &argv[2]));
    let what = spec.name.trim_start_matches("zone_");
    // blk_co_zone_mgmt checks the range before asking the driver.
    let size = match blk(s).getlength() {
        Ok(size) => size as i64,
        Err(e) => return zone_failed(s, what, e),
    };
    if offset > size || len > size - offset {
        return zone_failed(s, what, libc::EIO);
    }
    zone_failed(s, what, libc::ENOTSUP)
}

fn zone_append_f(s: &mut Session, argv: &[String]) -> i32 {
    let mut g = Getopt::new(argv, "p");
    for item in g.by_ref() {
        if let Err(msg) = item {
            // 10.0.2 prints getopt's message and carries on: no usage line, no failure
            s.err(&format!("{msg}\n"));
        }
    }
    let pos = g.positionals().to_vec();
    if pos.len() < 2 {
        return EINVAL;
    }
    // QEMU 10.0 steps past the first positional before reading the offset, so `zap A B C...`
    // takes its offset from B and its lengths from C...
    tri!(num(s, &pos[1]));
    tri!(iovec_len(s, &pos[2..]));
    zone_failed(s, "append", libc::ENOTSUP)
}

fn open_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let (mut read_only, mut snapshot, mut unmap) = (false, false, true);
    let (mut copy_on_read, mut force_share) = (false, false);
    let mut cache = CacheMode::DEFAULT;
    let mut aio = AioMode::default();
    let mut opts_text: Option<String> = None;
    let image_opts = s.image_opts;
    // QEMU stops at the first bad option value, from inside its getopt loop.
    let pos = tri!(options(s, spec, argv, "snCro:ki:t:d:U", |c, arg| {
        let value = arg.unwrap_or_default();
        match c {
            'r' => read_only = true,
            's' => snapshot = true,
            'n' => cache = cache.nocache(),
            'C' => copy_on_read = true,
            'U' => force_share = true,
            'k' => aio = AioMode::Native,
            'o' if image_opts => {
                s.out("--image-opts and 'open -o' are mutually exclusive\n");
                return Err(EINVAL);
            }
            'o' => opts_text = Some(value),
            't' => match CacheMode::parse(&value) {
                Some(mode) => cache = mode,
                None => {
                    s.report(&format!("Invalid cache option: {value}"));
                    return Err(EINVAL);
                }
            },
            'd' => match parse_discard(&value) {
                Some(u) => unmap = u,
                None => {
                    s.report(&format!("Invalid discard option: {value}"));
                    return Err(EINVAL);
                }
            },
            'i' => match aio.apply(&value) {
                Some(mode) => aio = mode,
                None => {
                    s.report(&format!("Invalid aio option: {value}"));
                    return Err(EINVAL);
                }
            },
            _ => {}
        }
        Ok(())
    }));
    let options = match opts_text.as_deref().map(parse_keyval).transpose() {
        Ok(o) => {
            let o = o.unwrap_or_default();
            for w in &o.warnings {
                s.report(w);
            }
            o.options
        }
        Err(e) => {
            s.report(&e);
            return EINVAL;
        }
    };
    if pos.len() > 1 {
        s.usage(spec);
        return EINVAL;
    }
    let ok = s.open(OpenRequest {
        name: pos.first().map(String::as_str),
        options,
        read_only,
        snapshot,
        writethrough: cache.writethrough,
        no_flush: cache.no_flush,
        direct: cache.direct,
        unmap,
        image_opts: false,
        aio,
        copy_on_read,
        force_share,
    });
    if ok { 0 } else { EINVAL }
}

fn help_f(s: &mut Session, argv: &[String]) -> i32 {
    match argv.get(1) {
        None => {
            s.out(&commands_table::help_all());
            0
        }
        Some(name) => match commands_table::help_one(name) {
            Ok(text) => {
                s.out(&text);
                0
            }
            Err(msg) => {
                s.out(&format!("{msg}\n"));
                EINVAL
            }
        },
    }
}

fn reopen_f(s: &mut Session, spec: &CommandSpec, argv: &[String]) -> i32 {
    let b = blk(s);
    let current = b.root.flags();
    let (mut read_only, mut mode) = (
        current.read_only,
        CacheMode {
            writethrough: b.writethrough.get(),
            direct: current.direct,
            no_flush: current.no_flush,
        },
    );
    let (mut has_rw_option, mut has_cache_option, mut keep_pending) = (false, false, false);
    // QEMU's reopen_opts list outlives the command: the -c and -r/-w errors below return
    // without emptying it, so the next reopen gets what this one parsed.
    let mut pending = std::mem::take(&mut s.reopen_opts);
    let parsed = {
        let s = &*s;
        options(s, spec, argv, "c:o:rw", |c, arg| {
            let arg = arg.unwrap_or_default();
            match c {
                'c' => {
                    let Some(m) = CacheMode::parse(&arg) else {
                        s.report(&format!("Invalid cache option: {arg}"));
                        keep_pending = true;
                        return Err(EINVAL);
                    };
                    mode = m;
                    has_cache_option = true;
                }
                'o' => match reopen_options(&arg) {
                    Ok(parsed) => {
                        for w in &parsed.warnings {
                            s.report(w);
                        }
                        pending.extend(crate::block::reopen::flatten(&parsed.options));
                    }
                    Err(e) => {
                        s.report(&e);
                        pending.clear();
                        return Err(EINVAL);
                    }
                },
                'r' | 'w' => {
                    if has_rw_option {
                        s.report("Only one -r/-w option may be given");
                        keep_pending = true;
                        return Err(EINVAL);
                    }
                    read_only = c == 'r';
                    has_rw_option = true;
                }
                _ => {}
            }
            Ok(())
        })
    };
    let pos = match parsed {
        Ok(pos) => pos,
        Err(e) => {
            // getopt's own errors (usage printed) and bad -o text empty the list.
            if keep_pending {
                s.reopen_opts = pending;
            }
            return e;
        }
    };
    if !pos.is_empty() {
        s.usage(spec);
        return EINVAL;
    }
    if read_only {
        // qemu-io drains and gives up the write permission before reopening read-only.
        if !s.drain() {
            return EINVAL;
        }
        let held = b.perms.get();
        b.perms.set(crate::block::perms::Access {
            perm: held.perm.without(crate::block::perms::Perms::WRITE),
            ..held
        });
    }
    let mut opts = pending;
    if opts.contains_key("read-only") {
        if has_rw_option {
            s.report("Cannot set both -r/-w and 'read-only'");
            return EINVAL;
        }
    } else {
        opts.insert("read-only".into(), read_only.into());
    }
    if opts.contains_key("cache.direct") || opts.contains_key("cache.no-flush") {
        if has_cache_option {
            s.report("Cannot set both -c and the cache options");
            return EINVAL;
        }
    } else {
        opts.insert("cache.direct".into(), mode.direct.into());
        opts.insert("cache.no-flush".into(), mode.no_flush.into());
    }
    if !s.drain() {
        return EINVAL;
    }
    if crate::block::reopen::stopped_node(&b.root) {
        s.err("blockfault: reopen of an image whose driver stopped after a fatal corruption; QEMU 10.0.2 crashes here (segmentation fault)\n");
        s.console.exit(1);
        return EINVAL;
    }
    let req = crate::block::reopen::Request {
        options: opts,
        blk_perms: b.perms.get(),
        temp_overlay: s.temp_overlay,
    };
    let root = b.root.clone();
    match s.run_sync(async move { crate::block::reopen::reopen(&root, req).await }) {
        Some(Ok(())) => {
            b.writethrough.set(mode.writethrough);
            0
        }
        Some(Err(e)) => {
            s.report(&e);
            EINVAL
        }
        None => EINVAL,
    }
}

/// `reopen -o` text as QEMU's merged reopen_opts list takes it: QemuOpts syntax, and no `id`.
fn reopen_options(text: &str) -> Result<crate::block::open::Keyval, String> {
    let invalid_id = || "Invalid parameter 'id'".to_string();
    match parse_keyval(text) {
        Ok(parsed) if parsed.options.contains_key("id") => Err(invalid_id()),
        Ok(parsed) => Ok(parsed),
        Err(e) if e.starts_with("Parameter 'id'") => Err(invalid_id()),
        Err(e) => Err(e),
    }
}
