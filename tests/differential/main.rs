//! Differential suite: every case runs through the real `qemu-io` (QEMU 10.0.2) and through our
//! engine, in fresh scratch directories holding the same files, and must give byte-identical
//! output after the iotests filters, the same exit status and the same files afterwards.
//!
//! Environment:
//! - `BLOCKFAULT_QEMU_RUNS=N` runs qemu-io N times per case and fails the case if its output is
//!   not stable (used to vet new cases: a timing-dependent case must not be kept).
//!
//! - `BLOCKFAULT_FUZZ_*`: the random differential fuzzer, see `fuzz.rs`.
//!
//! Cases marked ignored still run: a marked case that differs is reported as ignored with its
//! reason, and one that matches fails, so that stale marks get noticed.

mod cases;
mod drivers;
mod fuzz;
mod harness;
mod locking;
mod no_lost_writes;
mod ours;
mod qcow2_features;
mod reopen;

use harness::{Case, filter, missing_tools, populate, run_ours, run_qemu, snapshot};
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::collections::{BTreeMap, HashSet};

fn main() {
    let mut args = Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(default_test_threads());
    }
    let mut trials = vec![Trial::test("filter_self_check", || {
        harness::filter_self_check();
        Ok(())
    })];
    // Our own expectations where we deliberately differ from QEMU need no qemu-io.
    trials.extend(ours::trials());
    // The random cases; each batch says so and passes if the tools are missing.
    trials.extend(fuzz::trials());
    match missing_tools() {
        Some(why) => eprintln!("differential: skipping the qemu-io comparisons: {why}"),
        None => {
            let mut cases = cases::all();
            cases.extend(no_lost_writes::all());
            cases.extend(qcow2_features::all());
            cases.extend(drivers::all());
            cases.extend(reopen::all());
            let mut names = HashSet::new();
            for c in &cases {
                assert!(
                    names.insert(c.name.clone()),
                    "duplicate case name {}",
                    c.name
                );
            }
            trials.extend(cases.into_iter().map(trial));
            // Whole-program scripts: image locks across processes, qemu-img.
            trials.extend(locking::trials());
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    fuzz::print_summary();
    conclusion.exit();
}

/// Every case waits on qemu-io processes (exec, QEMU's thread pool, its flushes to the disk
/// file system where the cases run) more than it computes: twice as many test threads as
/// cores keep the cores busy. `--test-threads` still decides when given.
pub fn default_test_threads() -> usize {
    2 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn trial(case: Case) -> Trial {
    Trial::ignorable_test(format!("diff::{}", case.name), move || {
        match (compare(&case), &case.ignore) {
            (Ok(()), None) => Ok(Completion::Completed),
            // An unstable case is unusable whether or not it is marked.
            (Err(Mismatch::Unstable(e)), _) => Err(e.into()),
            (Err(Mismatch::Differs(e)), None) => Err(e.into()),
            (Err(Mismatch::Differs(_)), Some(reason)) => Ok(Completion::ignored_with(reason)),
            (Ok(()), Some(reason)) => Err(Failed::from(format!(
                "case is marked ignored ({reason}) but now matches qemu-io: remove the mark"
            ))),
        }
    })
}

/// What one program run leaves: filtered output, exit status, files.
#[derive(PartialEq)]
struct Outcome {
    output: String,
    status: i32,
    files: BTreeMap<String, Vec<u8>>,
}

fn run_in_scratch(case: &Case, run: fn(&std::path::Path, &[String]) -> (String, i32)) -> Outcome {
    let dir = case.scratch();
    populate(dir.path(), &case.files);
    let (output, status) = run(dir.path(), &case.args);
    Outcome {
        output: filter(&output, dir.path()),
        status,
        files: snapshot(dir.path()),
    }
}

enum Mismatch {
    /// qemu-io gave different results on identical runs
    Unstable(String),
    /// our engine differs from qemu-io
    Differs(String),
}

fn compare(case: &Case) -> Result<(), Mismatch> {
    let runs: usize = std::env::var("BLOCKFAULT_QEMU_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let qemu = run_in_scratch(case, run_qemu);
    for _ in 1..runs {
        let again = run_in_scratch(case, run_qemu);
        if again != qemu {
            return Err(Mismatch::Unstable(format!(
                "qemu-io itself is not stable on this case (status {} vs {}):\n{}",
                qemu.status,
                again.status,
                diff(&qemu.output, &again.output, "first run", "later run")
            )));
        }
    }
    let ours = run_in_scratch(case, run_ours);
    let mut problems = String::new();
    if ours.output != qemu.output {
        problems += &format!(
            "output differs:\n{}",
            diff(&qemu.output, &ours.output, "qemu-io", "blockfault")
        );
    }
    if ours.status != qemu.status {
        problems += &format!(
            "exit status: qemu-io {}, blockfault {}\n",
            qemu.status, ours.status
        );
    }
    for name in qemu
        .files
        .keys()
        .chain(ours.files.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (q, o) = (qemu.files.get(name), ours.files.get(name));
        if q != o {
            let describe = |f: Option<&Vec<u8>>| match f {
                None => "missing".to_string(),
                Some(d) => format!("{} bytes", d.len()),
            };
            let first = match (q, o) {
                (Some(q), Some(o)) => q
                    .iter()
                    .zip(o)
                    .position(|(a, b)| a != b)
                    .map(|i| format!(", first difference at byte {i}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            problems += &format!(
                "file {name} differs afterwards: qemu-io {}, blockfault {}{first}\n",
                describe(q),
                describe(o)
            );
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Mismatch::Differs(format!(
            "qemu-io {}\n{problems}",
            shell_words(&case.args)
        )))
    }
}

fn diff(a: &str, b: &str, an: &str, bn: &str) -> String {
    similar::TextDiff::from_lines(a, b)
        .unified_diff()
        .header(an, bn)
        .missing_newline_hint(true)
        .to_string()
}

/// The command line, quoted for pasting into a shell.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_./:=,".contains(&c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
