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

/// What one qemu-io or qemu-img "process" prints to, shared by the interpreter and by the drivers
/// that print (blkdebug's breakpoint lines, blkverify's reports). After [`Console::exit`] the
/// process is gone: later output is dropped, as nothing runs after `exit()` in QEMU.
pub struct Console {
    sink: SharedSink,
    exit_status: std::cell::Cell<Option<i32>>,
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
            exit_status: std::cell::Cell::new(None),
            program,
        })
    }

    /// QEMU's error_report: `<program>: <message>` on stderr.
    pub fn report(&self, message: &str) {
        self.err(&format!("{}: {message}\n", self.program));
    }

    pub fn write(&self, stream: Stream, text: &str) {
        if self.exit_status.get().is_none() {
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

    /// Ends the process with `status` (the first call wins).
    pub fn exit(&self, status: i32) {
        if self.exit_status.get().is_none() {
            self.exit_status.set(Some(status));
        }
    }

    pub fn exited(&self) -> Option<i32> {
        self.exit_status.get()
    }
}
