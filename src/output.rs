//! Output sinks. The engine writes every byte of user-visible output through a [`Sink`], tagged
//! with the stream QEMU would have used, in causal order (what `stdbuf -oL qemu-io ... 2>&1` shows).

use crate::host_bytes::encode;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;

/// The stream a piece of output belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where engine output goes.
pub trait Sink {
    fn write(&mut self, stream: Stream, text: &str);

    /// `fflush(stdout)`: whatever stdout holds back goes out now.
    fn flush(&mut self) {}

    /// Whether this sink takes blockfault's blkdebug trace (`blockfault io --trace-blkdebug`,
    /// a step's `trace: true`). The trace is ours, not QEMU's: it never joins the output.
    fn traces_blkdebug(&self) -> bool {
        false
    }

    /// One line of the blkdebug trace (see [`Sink::traces_blkdebug`]).
    fn trace(&mut self, _text: &str) {}
}

/// A shared handle to a sink: aio completions print from inside the executor.
pub type SharedSink = Rc<RefCell<dyn Sink>>;

/// Collects both streams interleaved in causal order, as `2>&1` with a line-buffered stdout does.
#[derive(Default, Debug, Clone)]
pub struct Capture {
    pub combined: String,
    /// the blkdebug trace, kept apart from the output; None: not traced
    pub trace: Option<String>,
}

impl Sink for Capture {
    fn write(&mut self, _stream: Stream, text: &str) {
        self.combined.push_str(text);
    }

    fn traces_blkdebug(&self) -> bool {
        self.trace.is_some()
    }

    fn trace(&mut self, text: &str) {
        if let Some(t) = &mut self.trace {
            t.push_str(text);
        }
    }
}

/// The process's own stdout and stderr, buffered as a C program's stdio buffers them, so that
/// the two streams interleave as they do for qemu-io: stderr is written at once; stdout on a
/// terminal (or under `stdbuf -oL`) line by line, i.e. in causal order, but into a pipe or a
/// file in whole blocks, held until the block is full or the process exits (`./check` pipes
/// qemu-io's output, so its expected output has stdout lines after later stderr ones).
#[derive(Debug)]
pub struct ProcessStreams {
    stdout: Buffering,
    pending: Vec<u8>,
    /// `blockfault io --trace-blkdebug`: the trace goes to stderr as it happens
    pub trace_blkdebug: bool,
}

/// How stdout is buffered (glibc's `_IONBF`, `_IOLBF`, `_IOFBF` with a block size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffering {
    Unbuffered,
    Line,
    Full(usize),
}

impl Buffering {
    /// What glibc picks for stdout: `stdbuf`'s `-o` setting (its `_STDBUF_O` variable) if
    /// any, line buffering on a terminal, else full buffering in blocks of the file's
    /// `st_blksize`.
    pub fn of_stdout() -> Buffering {
        use std::io::IsTerminal;
        if let Some(mode) = std::env::var_os("_STDBUF_O")
            && let Some(b) = Self::from_stdbuf(&mode.to_string_lossy())
        {
            return b;
        }
        if std::io::stdout().is_terminal() {
            return Buffering::Line;
        }
        // SAFETY: fstat on our own stdout into a zeroed struct we own.
        let blksize = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(1, &mut st) == 0 {
                st.st_blksize
            } else {
                0
            }
        };
        Buffering::Full(
            usize::try_from(blksize)
                .ok()
                .filter(|&b| b > 0)
                .unwrap_or(8192),
        )
    }

    /// `stdbuf -o MODE`: `0`, `L`, or a size with an optional K/M/G suffix.
    fn from_stdbuf(mode: &str) -> Option<Buffering> {
        match mode {
            "0" => Some(Buffering::Unbuffered),
            "L" => Some(Buffering::Line),
            _ => {
                let digits = mode.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let scale: usize = match &mode[digits.len()..] {
                    "" => 1,
                    "K" | "KiB" => 1 << 10,
                    "KB" => 1000,
                    "M" | "MiB" => 1 << 20,
                    "MB" => 1_000_000,
                    "G" | "GiB" => 1 << 30,
                    _ => return None,
                };
                let n: usize = digits.parse().ok()?;
                n.checked_mul(scale).filter(|&n| n > 0).map(Buffering::Full)
            }
        }
    }
}

impl ProcessStreams {
    pub fn new(stdout: Buffering) -> Self {
        ProcessStreams {
            stdout,
            pending: Vec::new(),
            trace_blkdebug: false,
        }
    }

    /// Stdout as glibc's fully buffered stream writes it.
    fn put_full(&mut self, data: &[u8], block: usize) {
        put_blocks(&mut self.pending, data, block, |chunk| {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(chunk).and_then(|_| out.flush());
        });
    }
}

/// glibc's fully buffered output: `pending` holds at most one block; a full block goes out
/// (through `emit`) when more output arrives, so the stream is written in whole blocks.
fn put_blocks(pending: &mut Vec<u8>, mut data: &[u8], block: usize, mut emit: impl FnMut(&[u8])) {
    while pending.len() + data.len() > block {
        let take = block - pending.len();
        pending.extend_from_slice(&data[..take]);
        data = &data[take..];
        emit(pending);
        pending.clear();
    }
    pending.extend_from_slice(data);
}

impl Sink for ProcessStreams {
    fn write(&mut self, stream: Stream, text: &str) {
        // A closed pipe must not turn into a panic; there is nobody left to tell.
        match (stream, self.stdout) {
            (Stream::Stdout, Buffering::Full(block)) => self.put_full(&encode(text), block),
            // Line mode writes through: glibc also empties a line-buffered stdout before it
            // reads a terminal, so an interactive prompt is never held back.
            (Stream::Stdout, _) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&encode(text)).and_then(|_| out.flush());
            }
            (Stream::Stderr, _) => {
                let _ = std::io::stderr().lock().write_all(&encode(text));
            }
        }
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&self.pending).and_then(|_| out.flush());
            self.pending.clear();
        }
    }

    fn traces_blkdebug(&self) -> bool {
        self.trace_blkdebug
    }

    fn trace(&mut self, text: &str) {
        if self.trace_blkdebug {
            let _ = std::io::stderr().lock().write_all(&encode(text));
        }
    }
}

/// How a qemu-io or qemu-img "process" ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    /// `exit(status)`
    Exited(i32),
    /// Killed by this signal (qemu-io's `sigraise N`, `abort`).
    Killed(i32),
}

impl Termination {
    /// The status a shell reports: the exit status, or 128 + the signal number.
    pub fn status(self) -> i32 {
        match self {
            Termination::Exited(status) => status,
            Termination::Killed(signal) => 128 + signal,
        }
    }
}

/// What `raise(signal)` does to a qemu-io process: which signals end it, given the dispositions
/// QEMU 10.0.2 leaves in place (SIGPIPE ignored; SIGBUS, SIGUSR1, SIGALRM and SIGIO blocked by its
/// main loop) and the default action of the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalEffect {
    /// The process dies of it.
    Kills,
    /// Nothing happens: ignored, blocked, or a number `raise` rejects (0, glibc's 32 and 33, > 64).
    Nothing,
    /// The process stops (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) and waits for a SIGCONT nobody sends.
    Stops,
}

pub fn signal_effect(signal: i64) -> SignalEffect {
    const NOTHING: [i64; 12] = [
        0,
        libc::SIGBUS as i64,
        libc::SIGUSR1 as i64,
        libc::SIGPIPE as i64,
        libc::SIGALRM as i64,
        libc::SIGCHLD as i64,
        libc::SIGCONT as i64,
        libc::SIGURG as i64,
        libc::SIGWINCH as i64,
        libc::SIGIO as i64,
        // glibc keeps these two for itself: raise() fails with EINVAL
        32,
        33,
    ];
    const STOPS: [i64; 4] = [
        libc::SIGSTOP as i64,
        libc::SIGTSTP as i64,
        libc::SIGTTIN as i64,
        libc::SIGTTOU as i64,
    ];
    if NOTHING.contains(&signal) || !(1..=64).contains(&signal) {
        SignalEffect::Nothing
    } else if STOPS.contains(&signal) {
        SignalEffect::Stops
    } else {
        SignalEffect::Kills
    }
}

/// What one qemu-io or qemu-img "process" prints to, shared by the interpreter and by the drivers
/// that print (blkdebug's breakpoint lines, blkverify's reports). After [`Console::exit`] or a
/// fatal [`Console::raise`] the process is gone: later output is dropped, as nothing runs after
/// `exit()` in QEMU.
pub struct Console {
    sink: SharedSink,
    end: std::cell::Cell<Option<Termination>>,
    /// the program name QEMU's error_report puts before its messages
    program: &'static str,
}

impl Console {
    /// A console for qemu-io.
    pub fn new(sink: SharedSink) -> Rc<Self> {
        Self::for_program(sink, "qemu-io")
    }

    /// A console for `program` (`qemu-io`, `qemu-img`).
    pub fn for_program(sink: SharedSink, program: &'static str) -> Rc<Self> {
        Rc::new(Self {
            sink,
            end: std::cell::Cell::new(None),
            program,
        })
    }

    /// QEMU's error_report: `<program>: <message>` on stderr.
    pub fn report(&self, message: &str) {
        self.err(&format!("{}: {message}\n", self.program));
    }

    pub fn write(&self, stream: Stream, text: &str) {
        if self.end.get().is_none() {
            self.sink.borrow_mut().write(stream, text);
        }
    }

    /// stdout, as printf
    pub fn out(&self, text: &str) {
        self.write(Stream::Stdout, text);
    }

    /// stderr, as fprintf(stderr)
    pub fn err(&self, text: &str) {
        self.write(Stream::Stderr, text);
    }

    /// Whether the sink takes the blkdebug trace: callers skip building trace lines otherwise.
    pub fn tracing(&self) -> bool {
        self.end.get().is_none() && self.sink.borrow().traces_blkdebug()
    }

    /// One line of blockfault's blkdebug trace (never part of QEMU's output).
    pub fn trace(&self, text: &str) {
        if self.end.get().is_none() {
            self.sink.borrow_mut().trace(text);
        }
    }

    /// `fflush(stdout)`, where QEMU calls it.
    pub fn flush(&self) {
        if self.end.get().is_none() {
            self.sink.borrow_mut().flush();
        }
    }

    /// Ends the process with `status` (the first end wins).
    pub fn exit(&self, status: i32) {
        self.end_with(Termination::Exited(status));
    }

    /// `raise(signal)`: ends the process if the signal kills it (see [`signal_effect`]). A
    /// signal that would stop it ends it instead with one line and status 1: QEMU would wait
    /// there forever. The process front end (`blockfault io`) then dies of the same signal, so
    /// that a shell reports it as for QEMU ("Killed"); in-process callers see 128 + signal.
    pub fn raise(&self, signal: i32) {
        match signal_effect(i64::from(signal)) {
            SignalEffect::Nothing => {}
            SignalEffect::Kills => self.end_with(Termination::Killed(signal)),
            SignalEffect::Stops => {
                self.err(&format!(
                    "blockfault: signal {signal} stops the process; qemu-io would wait here forever\n"
                ));
                self.exit(1);
            }
        }
    }

    fn end_with(&self, end: Termination) {
        if self.end.get().is_none() {
            self.end.set(Some(end));
        }
    }

    /// How the process ended, if it has.
    pub fn termination(&self) -> Option<Termination> {
        self.end.get()
    }

    /// The status the process ended with, if it has (128 + signal for a signal).
    pub fn exited(&self) -> Option<i32> {
        self.end.get().map(Termination::status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(writes: &[&str], block: usize) -> (Vec<String>, String) {
        let mut pending = Vec::new();
        let mut out = Vec::new();
        for w in writes {
            put_blocks(&mut pending, w.as_bytes(), block, |c| {
                out.push(String::from_utf8(c.to_vec()).unwrap())
            });
        }
        (out, String::from_utf8(pending).unwrap())
    }

    #[test]
    fn full_buffering_writes_whole_blocks_once_more_output_arrives() {
        assert_eq!(blocks(&["ab", "cd"], 4), (vec![], "abcd".into()));
        assert_eq!(
            blocks(&["ab", "cd", "e"], 4),
            (vec!["abcd".into()], "e".into())
        );
        assert_eq!(
            blocks(&["abcdefghij"], 4),
            (vec!["abcd".into(), "efgh".into()], "ij".into())
        );
        assert_eq!(
            blocks(&["a", "bcdefgh"], 4),
            (vec!["abcd".into()], "efgh".into())
        );
    }

    #[test]
    fn stdbuf_settings_read_as_stdbuf_gives_them() {
        assert_eq!(Buffering::from_stdbuf("L"), Some(Buffering::Line));
        assert_eq!(Buffering::from_stdbuf("0"), Some(Buffering::Unbuffered));
        assert_eq!(Buffering::from_stdbuf("4096"), Some(Buffering::Full(4096)));
        assert_eq!(Buffering::from_stdbuf("1K"), Some(Buffering::Full(1024)));
        assert_eq!(Buffering::from_stdbuf("x"), None);
    }
}
