//! The crash sweep: the workload runs once on the builtin engine with the file driver's write
//! log on (`blockfault::block::crash_log`); then every crash state of that log is rebuilt from
//! the pre-workload files and checked.
//!
//! What must survive a cut at log position p: a command acknowledged (its result line printed)
//! at or before p, when the cache is writethrough or directsync (the block layer flushed before
//! acknowledging it); with a writeback cache only the complete log (the close flushed
//! everything) promises anything. A command that may have been under way (anything after the
//! previous acknowledgement) leaves each sector old or new; a command not yet started leaves
//! its sectors alone. The image must pass `qemu-img check` (leaks are counted, not errors).

use super::{Crash, Ctx, plural};
use crate::scenario::BackendKind;
use crate::sweep_spec::workload::{self, Effect, Model, Status};
use blockfault::block::crash_log::{self, Bounds, CrashState, Entry, Op};
use blockfault::output::{Sink, Stream};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::rc::Rc;

/// Captures qemu-io's output and, for each piece, how long the crash log was when it was
/// printed: that ties each command's acknowledgement to a log position.
#[derive(Default)]
struct MarkingCapture {
    text: String,
    /// (byte offset in `text`, log position)
    marks: Vec<(usize, usize)>,
}

impl Sink for MarkingCapture {
    fn write(&mut self, _stream: Stream, text: &str) {
        self.marks.push((self.text.len(), crash_log::position()));
        self.text.push_str(text);
    }
}

impl MarkingCapture {
    /// The log position when the byte at `offset` was printed.
    fn position_at(&self, offset: usize) -> usize {
        self.marks
            .iter()
            .rev()
            .find(|(start, _)| *start <= offset)
            .map_or(0, |(_, p)| *p)
    }
}

pub fn run(ctx: &Ctx, c: &Crash) -> String {
    let mut out = String::new();
    if ctx.backend != BackendKind::Builtin {
        // The scenario check makes crash sweeps builtin-only; this is the backstop.
        let _ = writeln!(
            out,
            "crash sweep: skipped on the {} backend (the power-cut model is the builtin file driver's write log)",
            ctx.backend.name()
        );
        return out;
    }
    let recorded = record(ctx);
    let (old, capture, log) = match recorded {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(out, "[sweep failed: {e}]");
            return out;
        }
    };
    let attribution = workload::attribute(&ctx.commands, &capture.text);
    let ack: Vec<Option<usize>> = attribution
        .at
        .iter()
        .map(|at| at.map(|o| capture.position_at(o)))
        .collect();
    let count = |f: fn(&Op) -> bool| log.iter().filter(|e| f(&e.op)).count();
    let bounds = Bounds {
        reorder: c.reorder,
        torn: c.torn,
    };
    let _ = writeln!(
        out,
        "crash sweep: {} on {} ({}, cache {}); reorder {}, torn {}",
        plural(ctx.commands.len(), "command"),
        ctx.wl().image,
        ctx.wl().format,
        ctx.wl().cache.as_deref().unwrap_or("writeback"),
        c.reorder,
        c.torn
    );
    let _ = writeln!(
        out,
        "write log: {} ({} writes, {} zero writes, {} truncations, {} flushes)",
        plural(log.len(), "entry").replace("entrys", "entries"),
        count(|o| matches!(o, Op::Write { .. })),
        count(|o| matches!(o, Op::Zero { .. })),
        count(|o| matches!(o, Op::Truncate { .. })),
        count(|o| matches!(o, Op::Flush)),
    );
    let failed: Vec<&str> = ctx
        .wl()
        .commands
        .iter()
        .zip(&attribution.status)
        .filter(|(_, s)| matches!(s, Status::Failed(_)))
        .map(|(c, _)| c.as_str())
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            out,
            "workload: failed without a fault: {}",
            failed.join(", ")
        );
    }
    let states = crash_log::crash_states(&log, bounds);
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for state in &states {
        let model = expected(
            &ctx.commands,
            ctx.writethrough(),
            &old,
            &attribution,
            &ack,
            state,
            log.len(),
        );
        let verdict = match rebuild(ctx, &log, state) {
            Ok(()) => ctx.verify(BackendKind::Builtin, &model),
            Err(e) => super::Verdict {
                leaked: 0,
                problems: vec![e],
            },
        };
        if verdict.problems.is_empty() {
            *groups.entry(verdict.image()).or_default() += 1;
        } else {
            failures.push((state.label(), verdict.problems));
        }
    }
    let _ = writeln!(
        out,
        "crash sweep: {} tried, {} failed",
        plural(states.len(), "state"),
        failures.len()
    );
    for (image, n) in &groups {
        let _ = writeln!(out, "  {n}x {image}");
    }
    for (label, problems) in failures {
        let _ = writeln!(out, "FAILED crash {label}:");
        for p in problems {
            let _ = writeln!(out, "  {p}");
        }
    }
    out
}

type Recorded = (BTreeMap<(bool, u64), Vec<u8>>, MarkingCapture, Vec<Entry>);

/// Runs the workload once with the write log on; the paths in the log become relative to the
/// point directory (changes to files elsewhere are not the sweep's to undo: an error).
fn record(ctx: &Ctx) -> Result<Recorded, String> {
    ctx.reset(&ctx.snapshot)?;
    let old = ctx.read_back(BackendKind::Builtin)?;
    let wl = ctx.wl();
    let inv = blockfault::qemu_io::Invocation {
        format: Some(wl.format.clone()),
        cache: wl.cache.clone(),
        commands: wl.commands.clone(),
        drive: Some(wl.image.clone()),
        skip_host_sync: true,
        ..Default::default()
    };
    let capture = Rc::new(RefCell::new(MarkingCapture::default()));
    /// Stops the recording even if the workload panics, so the thread's next scenario does
    /// not record.
    struct Recording;
    impl Drop for Recording {
        fn drop(&mut self) {
            crash_log::finish();
        }
    }
    crash_log::start();
    let recording = Recording;
    blockfault::qemu_io::run(&inv, &ctx.point, capture.clone());
    let log = crash_log::finish();
    drop(recording);
    let capture = Rc::try_unwrap(capture)
        .map_err(|_| "the workload's output is still in use".to_string())?
        .into_inner();
    let roots = [
        ctx.point.clone(),
        ctx.point.canonicalize().unwrap_or(ctx.point.clone()),
    ];
    let log = log
        .into_iter()
        .map(|e| {
            let rel = roots
                .iter()
                .find_map(|r| e.path.strip_prefix(r).ok())
                .map(PathBuf::from)
                .ok_or_else(|| {
                    format!(
                        "the workload wrote {}, outside the scratch directory",
                        e.path.display()
                    )
                })?;
            Ok(Entry { path: rel, ..e })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((old, capture, log))
}

/// The files as the cut left them, in the point directory.
fn rebuild(ctx: &Ctx, log: &[Entry], state: &CrashState) -> Result<(), String> {
    let mut files = ctx.snapshot.clone();
    state.apply(log, &mut files);
    ctx.reset(&files)
}

/// What must be found after the cut `state` (see the module comment).
fn expected(
    commands: &[workload::Command],
    writethrough: bool,
    old: &BTreeMap<(bool, u64), Vec<u8>>,
    attribution: &workload::Attribution,
    ack: &[Option<usize>],
    state: &CrashState,
    log_len: usize,
) -> Model {
    let complete = state.point == log_len && state.dropped.is_empty() && state.torn.is_none();
    let mut model = Model::new(old);
    let mut started_at = 0;
    for (i, c) in commands.iter().enumerate() {
        let started = state.point > started_at || complete;
        let acked = ack[i].is_some_and(|p| p <= state.point);
        let clean_after = !attribution
            .stray
            .iter()
            .any(|(after, _)| after.is_some_and(|j| j >= i));
        let effect = match attribution.status[i] {
            _ if !started => Effect::None,
            Status::Done if acked && writethrough => Effect::Applied,
            Status::Done if complete && clean_after => Effect::Applied,
            _ => Effect::Maybe,
        };
        model.apply(c, effect);
        if let Some(p) = ack[i] {
            started_at = p;
        }
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two one-sector writes acknowledged at log positions 2 and 4 of a 5-entry log.
    fn model_at(point: usize, writethrough: bool) -> (Model, BTreeMap<(bool, u64), Vec<u8>>) {
        let commands = [
            workload::parse("write -P 1 0 512").unwrap(),
            workload::parse("write -P 2 512 512").unwrap(),
        ];
        let old = BTreeMap::from([((false, 0), vec![0u8; 512]), ((false, 1), vec![0u8; 512])]);
        let attribution = workload::Attribution {
            status: vec![Status::Done, Status::Done],
            at: vec![Some(0), Some(100)],
            stray: Vec::new(),
        };
        let state = CrashState {
            point,
            dropped: Vec::new(),
            torn: None,
        };
        let m = expected(
            &commands,
            writethrough,
            &old,
            &attribution,
            &[Some(2), Some(4)],
            &state,
            5,
        );
        (m, old)
    }

    fn holds(m: &Model, first: u8, second: u8) -> bool {
        let found = BTreeMap::from([
            ((false, 0), vec![first; 512]),
            ((false, 1), vec![second; 512]),
        ]);
        m.mismatches(&found).is_empty()
    }

    #[test]
    fn writethrough_promises_what_was_acknowledged() {
        let (m, _) = model_at(0, true);
        assert!(holds(&m, 0, 0) && !holds(&m, 1, 0));
        let (m, _) = model_at(1, true);
        assert!(holds(&m, 0, 0) && holds(&m, 1, 0) && !holds(&m, 1, 2));
        let (m, _) = model_at(2, true);
        assert!(!holds(&m, 0, 0) && holds(&m, 1, 0) && !holds(&m, 1, 2));
        let (m, _) = model_at(3, true);
        assert!(holds(&m, 1, 0) && holds(&m, 1, 2) && !holds(&m, 0, 2));
        let (m, _) = model_at(4, true);
        assert!(!holds(&m, 1, 0) && holds(&m, 1, 2));
    }

    #[test]
    fn writeback_promises_only_the_complete_log() {
        let (m, _) = model_at(4, false);
        assert!(holds(&m, 0, 0) && holds(&m, 1, 2) && holds(&m, 0, 2));
        let (m, _) = model_at(5, false);
        assert!(!holds(&m, 0, 0) && !holds(&m, 1, 0) && holds(&m, 1, 2));
    }
}
