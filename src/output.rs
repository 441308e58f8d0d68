//! Output sinks. The engine writes every byte of user-visible output through a [`Sink`], tagged
//! with the stream QEMU would have used, in causal order (what `stdbuf -oL qemu-io ... 2>&1` shows).

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
}

/// A shared handle to a sink: aio completions print from inside the executor.
pub type SharedSink = Rc<RefCell<dyn Sink>>;

/// Collects both streams interleaved in causal order, as `2>&1` with a line-buffered stdout does.
#[derive(Default, Debug, Clone)]
pub struct Capture {
    pub combined: String,
}

impl Sink for Capture {
    fn write(&mut self, _stream: Stream, text: &str) {
        self.combined.push_str(text);
    }
}

/// The process's own stdout and stderr. Stdout is flushed after every write so that the two
/// streams interleave in causal order, as `stdbuf -oL` makes qemu-io do.
#[derive(Default, Debug)]
pub struct ProcessStreams;

impl Sink for ProcessStreams {
    fn write(&mut self, stream: Stream, text: &str) {
        // A closed pipe must not turn into a panic; there is nobody left to tell.
        let _ = match stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes()).and_then(|_| out.flush())
            }
            Stream::Stderr => std::io::stderr().lock().write_all(text.as_bytes()),
        };
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
