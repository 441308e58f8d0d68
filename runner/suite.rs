//! Running a set of scenarios: validate everything first, run in parallel, report in name order.

use crate::cli::RunArgs;
use crate::discovery::{self, Entry};
use crate::execute::{self, Outcome};
use crate::golden;
use crate::interrupt;
use crate::matrix::{self, Case};
use crate::report::{self, Record, Status, Style, Totals};
use crate::scenario::{self, BackendKind, Scenario};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// A scenario ready to run: parsed and expanded without error.
pub struct Job {
    pub entry: Entry,
    pub scenario: Scenario,
    pub cases: Vec<Case>,
}

/// `blockfault [OPTIONS] PATHS...`; returns the exit status (0 pass, 1 failures, 2 bad input).
pub fn main(args: RunArgs) -> i32 {
    match prepare(&args) {
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            2
        }
        Ok(None) => 0,
        Ok(Some(jobs)) => match &args.point {
            Some(id) => replay_point(&args, &jobs, id),
            None => run_and_report(&args, jobs),
        },
    }
}

/// `--point ID`: one point of one sweep, its whole account on stdout; 1 if the point fails.
fn replay_point(args: &RunArgs, jobs: &[Job], id: &str) -> i32 {
    let [job] = jobs else {
        eprintln!(
            "error: --point replays a point of one sweep scenario; {} selected (name one file, or narrow with -k)",
            jobs.len()
        );
        return 2;
    };
    if job.scenario.sweep.is_none() {
        eprintln!("error: --point: {} has no `sweep:`", job.entry.name);
        return 2;
    }
    let outcome = execute::run_sweep_point(
        &job.scenario,
        &job.cases,
        &job.entry.name,
        args.backend,
        args.keep,
        Some(id),
    );
    match outcome {
        execute::Outcome::Skipped(reason) => {
            eprintln!("error: --point: {} is skipped: {reason}", job.entry.name);
            2
        }
        execute::Outcome::Interrupted => 130,
        execute::Outcome::Ran { output, kept, .. } => {
            print!("{output}");
            for dir in kept {
                println!(
                    "kept: {} (the point's files: {})",
                    dir.display(),
                    dir.join("sweep-point").display()
                );
            }
            if output.lines().any(|l| l.starts_with("[sweep failed")) {
                2
            } else if output.lines().any(|l| l.starts_with("FAILED")) {
                1
            } else {
                0
            }
        }
    }
}

/// Everything that can be wrong with the input, found before anything runs. `Ok(None)`: `--list` done.
fn prepare(args: &RunArgs) -> Result<Option<Vec<Job>>, Vec<String>> {
    let one = |e: String| vec![e];
    if args.jobs == Some(0) {
        return Err(one("-j expects a number of jobs of at least 1".into()));
    }
    let shard = args
        .shard
        .as_deref()
        .map(discovery::parse_shard)
        .transpose()
        .map_err(one)?;
    let entries = discovery::discover(&roots(args), args.golden.as_deref()).map_err(one)?;
    if entries.is_empty() {
        return Err(one("no scenario files (*.yaml) found".into()));
    }
    let selected = discovery::select(entries, &args.filters, shard);
    if selected.is_empty() && !args.filters.is_empty() {
        let patterns: Vec<String> = args.filters.iter().map(|f| format!("`{f}`")).collect();
        return Err(one(format!(
            "no scenario name matches -k {} (names look like `blkdebug/once`; --list shows them)",
            patterns.join(", -k ")
        )));
    }
    if args.list {
        for e in &selected {
            println!("{}", e.name);
        }
        return Ok(None);
    }
    let jobs = load_all(selected, args.max_cases)?;
    execute::check_scratch_root().map_err(one)?;
    Ok(Some(jobs))
}

fn roots(args: &RunArgs) -> Vec<PathBuf> {
    if args.paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        args.paths.clone()
    }
}

/// Parses and expands every scenario, collecting all errors rather than stopping at the first.
pub fn load_all(entries: Vec<Entry>, max_cases: usize) -> Result<Vec<Job>, Vec<String>> {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let loaded = scenario::load(&entry.path).map_err(|e| e.0).and_then(|s| {
            let cases = matrix::expand(&s, max_cases)
                .map_err(|m| format!("{}: {m}", entry.path.display()))?;
            Ok((s, cases))
        });
        match loaded {
            Ok((scenario, cases)) => jobs.push(Job {
                entry,
                scenario,
                cases,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}

/// Judges what a job's run gave against its golden file; None when a signal stopped it.
pub fn judge(job: &Job, outcome: Outcome, bless: bool) -> Option<Record> {
    let mut record = Record {
        name: job.entry.name.clone(),
        file: job.entry.path.display().to_string(),
        description: job.scenario.description.clone(),
        golden: job.entry.golden.display().to_string(),
        status: Status::Pass,
        elapsed: Duration::ZERO,
        actual: String::new(),
        kept: Vec::new(),
        origins: Vec::new(),
    };
    match outcome {
        Outcome::Interrupted => return None,
        Outcome::Skipped(reason) => record.status = Status::Skip(reason),
        Outcome::Ran {
            output,
            elapsed,
            kept,
            origins,
        } => {
            record.origins = origins;
            record.elapsed = elapsed;
            record.kept = kept.iter().map(|k| k.display().to_string()).collect();
            record.status = match golden::judge(&job.entry.golden, &output, bless) {
                Ok(j) => {
                    let new = golden::new_path(&job.entry.golden);
                    Status::from_judgement(j, new.is_file().then(|| new.display().to_string()))
                }
                Err(e) => Status::Error(e),
            };
            record.actual = output;
        }
    }
    Some(record)
}

/// Catching a panic with its message and place, printed in the report instead of on stderr.
mod panics {
    use std::cell::{Cell, RefCell};

    thread_local! {
        static CATCHING: Cell<bool> = const { Cell::new(false) };
        static MESSAGE: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// Runs `f`; a panic in it becomes `Err("panicked at FILE:LINE:COL: MESSAGE")`.
    pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
        install_hook();
        CATCHING.with(|c| c.set(true));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        CATCHING.with(|c| c.set(false));
        result.map_err(|payload| {
            MESSAGE.with(|m| m.borrow_mut().take()).unwrap_or_else(|| {
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                format!("panicked: {text}")
            })
        })
    }

    fn install_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if !CATCHING.with(Cell::get) {
                    return default(info);
                }
                let text = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".into());
                let place = info
                    .location()
                    .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                MESSAGE.with(|m| *m.borrow_mut() = Some(format!("panicked{place}: {text}")));
            }));
        });
    }
}

/// What a worker does next, for one job.
enum Work {
    /// one case of a job; the worker that finishes its last case judges the job
    Case(usize),
    /// the verdict of a job skipped on this backend (or of one without cases)
    Whole(Outcome),
}

struct Unit {
    job: usize,
    work: Work,
}

/// The cases of one job finished so far.
struct Partial {
    ran: Vec<Option<execute::CaseRun>>,
    left: usize,
    /// the first case (in case order) that panicked, with the panic's message
    panicked: Option<(usize, String)>,
    elapsed: Duration,
}

/// Every case of every job, as units in the order they start: sweeps first, as they are the
/// longest (a crash sweep checks hundreds of states), then the cases of the biggest matrices;
/// name order otherwise. Cases are units of their own so that a big matrix spreads over the
/// workers, and a long case that started last would run alone at the end while they wait.
fn schedule(jobs: &[Job], backend: BackendKind) -> Vec<Unit> {
    let mut units = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let whole = |o| Unit {
            job: j,
            work: Work::Whole(o),
        };
        match execute::skip_reason(&job.scenario, backend) {
            Some(reason) => units.push(whole(Outcome::Skipped(reason))),
            None if job.cases.is_empty() => {
                units.push(whole(execute::assemble(&job.cases, Vec::new())))
            }
            None => units.extend((0..job.cases.len()).map(|c| Unit {
                job: j,
                work: Work::Case(c),
            })),
        }
    }
    let weight = |u: &Unit| {
        let job = &jobs[u.job];
        let sweep = match u.work {
            Work::Case(c) => job.cases[c].sweep.as_ref(),
            Work::Whole(_) => None,
        };
        (
            sweep.is_some_and(|s| s.crash.is_some()),
            sweep.is_some(),
            job.cases.len(),
        )
    };
    units.sort_by_key(|u| std::cmp::Reverse(weight(u)));
    units
}

/// A job whose case `message` panicked: an error for this scenario only.
fn panicked_record(job: &Job, message: String, elapsed: Duration) -> Record {
    Record {
        name: job.entry.name.clone(),
        file: job.entry.path.display().to_string(),
        description: job.scenario.description.clone(),
        golden: job.entry.golden.display().to_string(),
        status: Status::Error(message),
        elapsed,
        actual: String::new(),
        kept: Vec::new(),
        origins: Vec::new(),
    }
}

/// Takes units until none are left or a signal asks to stop. A worker whose case panicked
/// hands its place to a fresh thread: the engine's per-thread state may be left mid-way by the
/// panic.
fn worker<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    shared: &'scope Shared<'scope>,
    tx: mpsc::Sender<(usize, Record)>,
) {
    while interrupt::requested().is_none() {
        let i = shared.next.fetch_add(1, Ordering::Relaxed);
        let Some(unit) = shared.units.get(i) else {
            break;
        };
        let job = &shared.jobs[unit.job];
        let a = shared.args;
        let c = match &unit.work {
            Work::Whole(outcome) => {
                let outcome = match outcome {
                    Outcome::Skipped(r) => Outcome::Skipped(r.clone()),
                    _ => execute::assemble(&job.cases, Vec::new()),
                };
                let record = judge(job, outcome, a.bless);
                if record.is_some_and(|r| tx.send((unit.job, r)).is_ok()) {
                    continue;
                }
                break;
            }
            Work::Case(c) => *c,
        };
        let start = std::time::Instant::now();
        let ran = panics::catch(|| {
            execute::run_one_case(&job.cases[c], &job.entry.name, a.backend, a.keep, None)
        });
        let panicked = ran.is_err();
        let finished = {
            let mut p = shared.partial[unit.job].lock().expect("no panic holds it");
            match ran {
                Ok(None) => break,
                Ok(Some(run)) => {
                    p.elapsed += run.elapsed();
                    p.ran[c] = Some(run);
                }
                Err(message) => {
                    p.elapsed += start.elapsed();
                    if p.panicked.as_ref().is_none_or(|(first, _)| c < *first) {
                        p.panicked = Some((c, message));
                    }
                }
            }
            p.left -= 1;
            (p.left == 0).then(|| (std::mem::take(&mut p.ran), p.panicked.take(), p.elapsed))
        };
        if let Some((ran, panicked, elapsed)) = finished {
            let record = match panicked {
                Some((_, message)) => Some(panicked_record(job, message, elapsed)),
                None => {
                    let ran = ran
                        .into_iter()
                        .map(|r| r.expect("every case ran"))
                        .collect();
                    judge(job, execute::assemble(&job.cases, ran), a.bless)
                }
            };
            if record.is_none_or(|r| tx.send((unit.job, r)).is_err()) {
                break;
            }
        }
        if panicked {
            scope.spawn(move || worker(scope, shared, tx));
            break;
        }
    }
}

struct Shared<'a> {
    jobs: &'a [Job],
    units: Vec<Unit>,
    partial: Vec<std::sync::Mutex<Partial>>,
    next: AtomicUsize,
    args: &'a RunArgs,
}

fn run_and_report(args: &RunArgs, jobs: Vec<Job>) -> i32 {
    interrupt::install();
    let tty = std::io::stdout().is_terminal();
    let style = Style {
        color: tty && std::env::var_os("NO_COLOR").is_none(),
    };
    let workers = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(jobs.len().max(1));
    let mut records: Vec<Option<Record>> = vec![None; jobs.len()];
    let mut totals = Totals::default();
    let mut out = std::io::stdout().lock();
    let shared = Shared {
        jobs: &jobs,
        units: schedule(&jobs, args.backend),
        partial: jobs
            .iter()
            .map(|j| {
                std::sync::Mutex::new(Partial {
                    ran: (0..j.cases.len()).map(|_| None).collect(),
                    left: j.cases.len(),
                    panicked: None,
                    elapsed: Duration::ZERO,
                })
            })
            .collect(),
        next: AtomicUsize::new(0),
        args,
    };
    let (tx, rx) = mpsc::channel::<(usize, Record)>();
    let mut printed = 0;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let shared = &shared;
            scope.spawn(move || worker(scope, shared, tx));
        }
        drop(tx);
        // Print in name order as soon as each next record is in, whatever order workers finish.
        let mut done = 0;
        let mut children_killed = false;
        loop {
            let (i, record) = match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(r) => r,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupt::requested().is_some() && !children_killed {
                        interrupt::kill_children();
                        children_killed = true;
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            done += 1;
            totals.add(&record.status);
            records[i] = Some(record);
            if tty {
                let _ = write!(out, "{}", report::CLEAR_PROGRESS);
            }
            while let Some(Some(r)) = records.get(printed) {
                let _ = write!(out, "{}", report::render(r, style));
                printed += 1;
            }
            if tty && done < jobs.len() {
                let _ = write!(out, "{}", report::progress(done, jobs.len(), &totals));
            }
            let _ = out.flush();
        }
    });
    let signal = interrupt::requested();
    if signal.is_some() {
        if tty {
            let _ = write!(out, "{}", report::CLEAR_PROGRESS);
        }
        // Finished scenarios after a gap left by an interrupted one are still reported.
        for r in records.iter().skip(printed).flatten() {
            let _ = write!(out, "{}", report::render(r, style));
        }
    }
    let records: Vec<Record> = records.into_iter().flatten().collect();
    if signal.is_none() {
        for orphan in discovery::orphans(&roots(args), args.golden.as_deref()) {
            let _ = writeln!(
                out,
                "orphan golden file (no scenario): {}",
                orphan.display()
            );
        }
    }
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, crate::junit::render(&records, "blockfault"))
    {
        eprintln!("error: {}: {e}", path.display());
        return 2;
    }
    let _ = writeln!(out, "{}", totals.closing_line());
    if let Some(signal) = signal {
        let _ = writeln!(
            out,
            "interrupted by {}: {} of {} scenarios not run",
            if signal == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            },
            jobs.len() - records.len(),
            jobs.len()
        );
        return 128 + signal;
    }
    if totals.failed > 0 { 1 } else { 0 }
}
