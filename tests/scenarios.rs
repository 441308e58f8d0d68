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
    let args = Arguments::from_args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let entries = discovery::discover(&[root], None).expect("scenarios/ is readable");
    let mut trials = Vec::new();
    for e in entries {
        let (path, golden) = (e.path.clone(), e.golden.clone());
        trials.push(Trial::ignorable_test(e.name.clone(), move || {
            golden_test(&path, &golden)
        }));
        let path = e.path.clone();
        trials.push(Trial::ignorable_test(
            format!("conformance/{}", e.name),
            move || conformance_test(&path),
        ));
    }
    libtest_mimic::run(&args, trials).exit();
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
    Ok(match execute::run(&s, &cases, &name, backend, false) {
        Outcome::Skipped(reason) => Err(reason),
        Outcome::Ran { output, .. } => Ok(output),
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
