//! Every scenario as its own test (builtin backend, against its golden file), plus a conformance
//! test per scenario that runs both backends and requires identical output.

// The runner's modules, compiled into this test crate as they are into the binary. Their unit
// tests come along but do not run here (harness = false), hence the allowances.
#![allow(unused_imports, dead_code)]

#[path = "../runner/backend_builtin.rs"]
mod backend_builtin;
#[path = "../runner/backend_qemu.rs"]
mod backend_qemu;
#[path = "../runner/discovery.rs"]
mod discovery;
#[path = "../runner/execute.rs"]
mod execute;
#[path = "../runner/filters.rs"]
mod filters;
#[path = "../runner/golden.rs"]
mod golden;
#[path = "../runner/interrupt.rs"]
mod interrupt;
#[path = "../runner/matrix.rs"]
mod matrix;
#[path = "../runner/report.rs"]
mod report;
#[path = "../runner/scenario.rs"]
mod scenario;
#[path = "../runner/sweep.rs"]
mod sweep;
#[path = "../runner/sweep_spec.rs"]
mod sweep_spec;

use execute::Outcome;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use scenario::BackendKind;
use std::path::{Path, PathBuf};

fn main() {
    let mut args = Arguments::from_args();
    // A conformance test spends most of its time in short-lived qemu-io and qemu-img
    // processes, about half of it waiting (exec, QEMU's thread pool): twice as many test
    // threads as cores keep the cores busy. `--test-threads` still decides when given.
    if args.test_threads.is_none() {
        args.test_threads = Some(2 * cores());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let entries = discovery::discover(&[root], None).expect("scenarios/ is readable");
    let mut golden_trials = Vec::new();
    let mut conformance_trials = Vec::new();
    for e in entries {
        let (path, golden) = (e.path.clone(), e.golden.clone());
        golden_trials.push(Trial::ignorable_test(e.name.clone(), move || {
            golden_test(&path, &golden)
        }));
        let path = e.path.clone();
        // On QEMU, sweeps take longest (a qemu-io run per point), then the biggest matrices.
        let weight = scenario::load(&e.path).ok().map_or((false, 0), |s| {
            let cases = matrix::expand(&s, matrix::DEFAULT_MAX_CASES).map_or(0, |c| c.len());
            (s.sweep.is_some(), cases)
        });
        conformance_trials.push((
            weight,
            Trial::ignorable_test(format!("conformance/{}", e.name), move || {
                conformance_test(&path)
            }),
        ));
    }
    // The conformance tests first, the longest first: a long one started last would run
    // alone at the end.
    conformance_trials.sort_by_key(|(weight, _)| std::cmp::Reverse(*weight));
    let trials = conformance_trials
        .into_iter()
        .map(|(_, t)| t)
        .chain(golden_trials)
        .collect();
    libtest_mimic::run(&args, trials).exit();
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs a scenario on one backend; Ok(None) when it is skipped there (with the reason).
fn run(path: &Path, backend: BackendKind) -> Result<Result<String, String>, Failed> {
    let s = scenario::load(path).map_err(|e| e.0)?;
    let cases = matrix::expand(&s, matrix::DEFAULT_MAX_CASES)?;
    let name = path
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if let Some(reason) = execute::skip_reason(&s, backend) {
        return Ok(Err(reason));
    }
    // The cases are independent (a scratch directory each): on QEMU a big matrix takes a
    // minute case after case, so they run side by side, as many at a time as there are cores.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ran = std::sync::Mutex::new((0..cases.len()).map(|_| None).collect::<Vec<_>>());
    std::thread::scope(|scope| {
        for _ in 0..cores().min(cases.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    let r = execute::run_one_case(case, &name, backend, false, None);
                    ran.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    let ran: Option<Vec<_>> = ran
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every case ran"))
        .collect();
    let Some(ran) = ran else {
        return Err("interrupted".into());
    };
    Ok(match execute::assemble(&cases, ran) {
        Outcome::Ran { output, .. } => Ok(output),
        Outcome::Skipped(reason) => Err(reason),
        Outcome::Interrupted => return Err("interrupted".into()),
    })
}

fn golden_test(path: &Path, golden: &PathBuf) -> Result<Completion, Failed> {
    let actual = match run(path, BackendKind::Builtin)? {
        Ok(output) => output,
        Err(reason) => return Ok(Completion::ignored_with(reason)),
    };
    let expected = std::fs::read_to_string(golden)
        .map_err(|e| format!("{}: {e}\nactual output:\n{actual}", golden.display()))?;
    if filters::same(&expected, &actual) {
        Ok(Completion::Completed)
    } else {
        let style = report::Style { color: false };
        Err(report::diff(&expected, &actual, &golden.display().to_string(), style).into())
    }
}

fn conformance_test(path: &Path) -> Result<Completion, Failed> {
    if backend_qemu::program("qemu-io").is_none() || backend_qemu::program("qemu-img").is_none() {
        return Ok(Completion::ignored_with(
            "qemu-io/qemu-img not found (set QEMU_IO/QEMU_IMG or install qemu-utils)",
        ));
    }
    let qemu = match run(path, BackendKind::Qemu)? {
        Ok(o) => o,
        Err(reason) => return Ok(Completion::ignored_with(reason)),
    };
    let builtin = match run(path, BackendKind::Builtin)? {
        Ok(o) => o,
        Err(reason) => return Ok(Completion::ignored_with(reason)),
    };
    if filters::same(&qemu, &builtin) {
        Ok(Completion::Completed)
    } else {
        let style = report::Style { color: false };
        Err(format!(
            "builtin output differs from QEMU's:\n{}",
            report::diff(&qemu, &builtin, "qemu", style)
        )
        .into())
    }
}
