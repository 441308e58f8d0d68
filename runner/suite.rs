//! Running a set of scenarios: validate everything first, run in parallel, report in name order.

use crate::cli::RunArgs;
use crate::discovery::{self, Entry};
use crate::execute::{self, Outcome};
use crate::golden;
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
        Ok(Some(jobs)) => run_and_report(&args, jobs),
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
    if args.list {
        for e in &selected {
            println!("{}", e.name);
        }
        return Ok(None);
    }
    load_all(selected).map(Some)
}

fn roots(args: &RunArgs) -> Vec<PathBuf> {
    if args.paths.is_empty() {
        vec![PathBuf::from("scenarios")]
    } else {
        args.paths.clone()
    }
}

/// Parses and expands every scenario, collecting all errors rather than stopping at the first.
pub fn load_all(entries: Vec<Entry>) -> Result<Vec<Job>, Vec<String>> {
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        let loaded = scenario::load(&entry.path).map_err(|e| e.0).and_then(|s| {
            let cases = matrix::expand(&s).map_err(|m| format!("{}: {m}", entry.path.display()))?;
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

/// Runs one job and judges it against its golden file.
pub fn run_job(job: &Job, backend: BackendKind, bless: bool, keep: bool) -> Record {
    let mut record = Record {
        name: job.entry.name.clone(),
        description: job.scenario.description.clone(),
        golden: job.entry.golden.display().to_string(),
        status: Status::Pass,
        elapsed: Duration::ZERO,
        actual: String::new(),
        kept: Vec::new(),
    };
    match execute::run(&job.scenario, &job.cases, &job.entry.name, backend, keep) {
        Outcome::Skipped(reason) => record.status = Status::Skip(reason),
        Outcome::Ran {
            output,
            elapsed,
            kept,
        } => {
            record.elapsed = elapsed;
            record.kept = kept.iter().map(|k| k.display().to_string()).collect();
            record.status = match golden::judge(&job.entry.golden, &output, bless) {
                Ok(j) => {
                    let new = golden::new_path(&job.entry.golden);
                    Status::from_judgement(j, new.is_file().then(|| new.display().to_string()))
                }
                Err(e) => Status::Error(format!("{}: {e}", job.entry.golden.display())),
            };
            record.actual = output;
        }
    }
    record
}

fn run_and_report(args: &RunArgs, jobs: Vec<Job>) -> i32 {
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
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, Record)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let tx = tx.clone();
            let (jobs, next) = (&jobs, &next);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    if tx
                        .send((i, run_job(job, args.backend, args.bless, args.keep)))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Print in name order as soon as each next record is in, whatever order workers finish.
        let mut printed = 0;
        for (done, (i, record)) in rx.iter().enumerate() {
            totals.add(&record.status);
            records[i] = Some(record);
            if tty {
                let _ = write!(out, "{}", report::CLEAR_PROGRESS);
            }
            while let Some(Some(r)) = records.get(printed) {
                let _ = write!(out, "{}", report::render(r, style));
                printed += 1;
            }
            if tty && done + 1 < jobs.len() {
                let _ = write!(out, "{}", report::progress(done + 1, jobs.len(), &totals));
            }
            let _ = out.flush();
        }
    });
    let records: Vec<Record> = records.into_iter().flatten().collect();
    for orphan in discovery::orphans(&roots(args), args.golden.as_deref()) {
        let _ = writeln!(
            out,
            "orphan golden file (no scenario): {}",
            orphan.display()
        );
    }
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, crate::junit::render(&records, "blockfault"))
    {
        eprintln!("error: {}: {e}", path.display());
        return 2;
    }
    let _ = writeln!(out, "{}", totals.closing_line());
    if totals.failed > 0 { 1 } else { 0 }
}
