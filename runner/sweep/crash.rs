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

use super::{Class, Crash, Ctx, Tally, plural};
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

/// The recorded workload and what it promised, ready for its states to be checked.
struct Recording {
    old: BTreeMap<(bool, u64), Vec<u8>>,
    attribution: workload::Attribution,
    /// each command's acknowledgement, as a log position
    ack: Vec<Option<usize>>,
    log: Vec<Entry>,
}

impl Recording {
    fn new(ctx: &Ctx) -> Result<Recording, String> {
        let (old, capture, log) = record(ctx)?;
        let attribution = workload::attribute(&ctx.commands, &capture.text);
        let ack = attribution
            .at
            .iter()
            .map(|at| at.map(|o| capture.position_at(o)))
            .collect();
        Ok(Recording {
            old,
            attribution,
            ack,
            log,
        })
    }

    /// Rebuilds the files as the cut `state` left them and checks them.
    fn check(&self, ctx: &Ctx, state: &CrashState) -> super::Verdict {
        let model = expected(
            &ctx.commands,
            ctx.writethrough(),
            &self.old,
            &self.attribution,
            &self.ack,
            state,
            self.log.len(),
        );
        match rebuild(ctx, &self.log, state) {
            Ok(()) => ctx.verify(BackendKind::Builtin, &model),
            Err(e) => super::Verdict {
                problems: vec![(Class::Corrupt, e)],
                ..Default::default()
            },
        }
    }
}

fn skipped(ctx: &Ctx) -> Option<String> {
    // The scenario check makes crash sweeps builtin-only; this is the backstop.
    (ctx.backend != BackendKind::Builtin).then(|| {
        format!(
            "crash sweep: skipped on the {} backend (the power-cut model is the builtin file driver's write log)\n",
            ctx.backend.name()
        )
    })
}

pub fn run(ctx: &Ctx, c: &Crash) -> String {
    if let Some(text) = skipped(ctx) {
        return text;
    }
    let mut out = String::new();
    let rec = match Recording::new(ctx) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(out, "[sweep failed: {e}]");
            return out;
        }
    };
    let log = &rec.log;
    let count = |f: fn(&Op) -> bool| log.iter().filter(|e| f(&e.op)).count();
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
        .zip(&rec.attribution.status)
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
    let mut tally = Tally::default();
    for state in crash_log::crash_states(log, bounds(c)) {
        let verdict = rec.check(ctx, &state);
        let class = verdict.class();
        *tally.counts.entry(class).or_default() += 1;
        let id = format!("crash{}", state.label());
        if class != Class::Quiet {
            let mut line = verdict.image();
            for (class, _) in &verdict.problems {
                let _ = write!(line, "; {}", class.name());
            }
            let _ = writeln!(out, "  {id}: {line}");
        }
        if class.is_failure() {
            let text: String = verdict
                .problems
                .iter()
                .map(|(_, p)| format!("  {}\n", p.trim_end()))
                .collect();
            let _ = writeln!(tally.failures, "FAILED {id}:\n{text}");
        }
    }
    let _ = writeln!(out, "crash sweep: {}", tally.summary("state"));
    out.push_str(&tally.failures);
    out
}

fn bounds(c: &Crash) -> Bounds {
    Bounds {
        reorder: c.reorder,
        torn: c.torn,
    }
}

/// `--point crash@LABEL`: that state alone, with the log around it and everything the checks
/// printed.
pub fn replay(ctx: &Ctx, c: &Crash, label: &str) -> String {
    if let Some(text) = skipped(ctx) {
        return text;
    }
    let mut out = String::new();
    let rec = match Recording::new(ctx) {
        Ok(r) => r,
        Err(e) => return format!("[sweep failed: {e}]\n"),
    };
    let states = crash_log::crash_states(&rec.log, bounds(c));
    let Some(state) = states.iter().find(|s| s.label() == label) else {
        return format!(
            "[sweep failed: --point: no crash state `crash{label}` in this sweep ({} states, @0 to @{}; reorder {}, torn {})]\n",
            states.len(),
            rec.log.len(),
            c.reorder,
            c.torn
        );
    };
    let _ = writeln!(
        out,
        "point crash{label} on {} ({}, cache {})",
        ctx.wl().image,
        ctx.wl().format,
        ctx.wl().cache.as_deref().unwrap_or("writeback")
    );
    let _ = writeln!(
        out,
        "write log (each entry kept, lost, torn or not issued by the cut):"
    );
    for (i, e) in rec.log.iter().enumerate() {
        let fate = if i >= state.point {
            "not issued"
        } else if state.dropped.contains(&i) {
            "lost"
        } else if i + 1 == state.point && state.torn.is_some() {
            "torn"
        } else {
            "kept"
        };
        let what = match &e.op {
            Op::Write { offset, data } => format!("write {offset} +{}", data.len()),
            Op::Zero { offset, len } => format!("zero {offset} +{len}"),
            Op::Truncate { size } => format!("truncate {size}"),
            Op::Flush => "flush".to_string(),
        };
        let torn = match (fate, state.torn) {
            ("torn", Some(t)) => format!(" after {t} bytes"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "    {i:>4} {fate:<10} {} {what}{torn}",
            e.path.display()
        );
    }
    let verdict = rec.check(ctx, state);
    out.push_str(&verdict.full());
    let class = verdict.class();
    let _ = writeln!(out, "point crash{label}: {}", class.name());
    if class.is_failure() {
        let _ = writeln!(out, "FAILED crash{label}");
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
