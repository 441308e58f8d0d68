//! Throughput of the runner: N generated scenarios (raw image, blkdebug rules, a few qemu-io
//! commands each) through the builtin backend and through real QEMU, in one run; then the real
//! suite (`scenarios/`) through the `blockfault` binary with each backend, in the same run,
//! as wall time and as CPU time (the runner's and every program it started). Target for the
//! suite: builtin at least 20x QEMU.
//! The suite row is timed on the same scenarios for both backends: those QEMU runs. The ones
//! it skips (crash sweeps and `trace: true` steps, builtin-only by design) are work QEMU does
//! not do, so counting them on the builtin side only would compare unequal work; they are
//! passed to neither run, and the builtin time of the whole suite is printed beside the ratio.
//! `cargo bench --bench runner` (BENCH_SCENARIOS=N to change the default of 500, 0 skips the
//! generated rows; BENCH_SUITE_ROUNDS=N suite rounds per backend, alternating, best kept,
//! default 1; BENCH_SUITE=0 skips the suite row). The suite row alone:
//! `BENCH_SWEEPS=0 BENCH_SCENARIOS=0 cargo bench --bench runner`.
//! Sweep rows first: one fault-sweep point of iotest 026's 128 kB write, builtin vs real QEMU
//! (target: builtin at least 50x), and crash states checked per second on the same write
//! (target: at least 1,000/s). BENCH_SWEEPS=0 skips them.

#![allow(unused_imports, dead_code)]

#[path = "../runner/backend_builtin.rs"]
mod backend_builtin;
#[path = "../runner/backend_qemu.rs"]
mod backend_qemu;
#[path = "../runner/execute.rs"]
mod execute;
#[path = "../runner/filters.rs"]
mod filters;
#[path = "../runner/interrupt.rs"]
mod interrupt;
#[path = "../runner/matrix.rs"]
mod matrix;
#[path = "../runner/scenario.rs"]
mod scenario;
#[path = "../runner/sweep.rs"]
mod sweep;
#[path = "../runner/sweep_spec.rs"]
mod sweep_spec;

use scenario::BackendKind;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const EVENTS: &[&str] = &["read_aio", "write_aio"];
const ERRNOS: &[u32] = &[5, 28, 0];

/// Scenario `i`: a varying rule and a varying command mix, deterministic.
fn generate(i: usize) -> String {
    let event = EVENTS[i % EVENTS.len()];
    let errno = ERRNOS[(i / 2) % ERRNOS.len()];
    let once = if (i / 6).is_multiple_of(2) {
        "on"
    } else {
        "off"
    };
    let off = (i % 8) * 512;
    format!(
        "description: generated {i}\nfiles:\n  rules.cfg: |\n    [inject-error]\n    event = \"{event}\"\n    errno = \"{errno}\"\n    once = \"{once}\"\n    sector = \"{}\"\nimages:\n  - {{name: t.img, format: raw, size: 1M}}\nsteps:\n  - qemu-io:\n      drive: \"blkdebug:rules.cfg:t.img\"\n      format: raw\n      commands: [write -P {} {off} 4k, read -P {} {off} 4k, read 0 512, write 64k 512]\n",
        off / 512 + 1,
        i % 256,
        i % 256
    )
}

fn run_all(scenarios: &[(scenario::Scenario, Vec<matrix::Case>)], backend: BackendKind) -> f64 {
    let start = Instant::now();
    for (s, cases) in scenarios {
        match execute::run(s, cases, "bench", backend, false) {
            execute::Outcome::Ran { output, .. } => assert!(!output.is_empty()),
            execute::Outcome::Skipped(r) => panic!("generated scenario skipped: {r}"),
            execute::Outcome::Interrupted => panic!("no signal is sent here"),
        }
    }
    scenarios.len() as f64 / start.elapsed().as_secs_f64()
}

/// Wall and CPU seconds of one run of the blockfault binary over `files` (paths relative to
/// the project), children included (the kernel adds a process's waited-for children to what
/// wait4 reports).
fn suite_run(backend: &str, files: &[String]) -> Option<(f64, f64)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let t0 = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_blockfault"))
        .current_dir(root)
        .args(["--backend", backend])
        .args(files)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing only the two locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t0.elapsed().as_secs_f64();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    if pid <= 0 || !libc::WIFEXITED(status) {
        return None;
    }
    if libc::WEXITSTATUS(status) != 0 {
        println!(
            "suite ({backend}): some scenarios failed (exit {})",
            libc::WEXITSTATUS(status)
        );
    }
    Some((wall, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

/// The suite's scenario files (relative paths, sorted), split into those QEMU runs and those
/// it skips (builtin-only by design).
fn suite_files() -> (Vec<String>, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = walkdir::WalkDir::new(root.join("scenarios"))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.path().extension().is_some_and(|x| x == "yaml"))
        .filter_map(|e| {
            let rel = e.path().strip_prefix(root).ok()?;
            Some(rel.to_string_lossy().into_owned())
        })
        .collect();
    files.sort();
    files
        .into_iter()
        .partition(|f| execute::skip_reason(&load(f).0, BackendKind::Qemu).is_none())
}

fn suite_row(rounds: usize) {
    let best = |a: Option<(f64, f64)>, b: Option<(f64, f64)>| match (a, b) {
        (Some(a), Some(b)) => Some((a.0.min(b.0), a.1.min(b.1))),
        (a, b) => a.or(b),
    };
    let (both, builtin_only) = suite_files();
    let (mut builtin, mut qemu, mut whole) = (None, None, None);
    for _ in 0..rounds {
        builtin = best(builtin, suite_run("builtin", &both));
        qemu = best(qemu, suite_run("qemu", &both));
        whole = best(whole, suite_run("builtin", &["scenarios/".to_string()]));
    }
    let (Some(b), Some(q), Some(w)) = (builtin, qemu, whole) else {
        println!("suite: a run did not finish");
        return;
    };
    println!(
        "suite scenarios/, the {} both backends run: builtin {:.2} s ({:.2} s cpu), qemu {:.2} s ({:.2} s cpu): builtin is {:.1}x wall, {:.1}x cpu",
        both.len(),
        b.0,
        b.1,
        q.0,
        q.1,
        q.0 / b.0,
        q.1 / b.1
    );
    println!(
        "suite scenarios/, all {} on builtin (with the {} QEMU skips: {}): {:.2} s ({:.2} s cpu)",
        both.len() + builtin_only.len(),
        builtin_only.len(),
        if builtin_only.is_empty() {
            "none".to_string()
        } else {
            builtin_only.join(", ")
        },
        w.0,
        w.1
    );
}

/// A scenario of the project's own, loaded and expanded.
fn load(rel: &str) -> (scenario::Scenario, Vec<matrix::Case>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path).expect("the scenario exists");
    let s = scenario::parse(&text, &path).unwrap_or_else(|e| panic!("{rel}: {e:?}"));
    let cases = matrix::expand(&s, matrix::DEFAULT_MAX_CASES).expect("it expands");
    (s, cases)
}

/// Seconds for one run of a sweep scenario, and the number in its summary line
/// (`<kind> sweep: N <unit>s: ...`).
fn sweep_run(
    s: &(scenario::Scenario, Vec<matrix::Case>),
    backend: BackendKind,
    unit: &str,
) -> (f64, usize) {
    let t0 = Instant::now();
    let output = match execute::run(&s.0, &s.1, "bench", backend, false) {
        execute::Outcome::Ran { output, .. } => output,
        other => panic!("the sweep did not run: {other:?}"),
    };
    let secs = t0.elapsed().as_secs_f64();
    let count = output
        .lines()
        .find_map(|l| {
            let rest = l.split_once(" sweep: ")?.1;
            let (n, tail) = rest.split_once(' ')?;
            tail.starts_with(unit).then(|| n.parse().ok())?
        })
        .expect("the sweep prints its count");
    (secs, count)
}

fn sweep_rows() {
    let faults = load("scenarios/sweeps/026-write-128k.yaml");
    let (b, points) = sweep_run(&faults, BackendKind::Builtin, "point");
    println!(
        "fault sweep 026-write-128k: {points} points, builtin {b:.2} s ({:.2} ms/point)",
        b * 1e3 / points as f64
    );
    if backend_qemu::program("qemu-io").is_some() && backend_qemu::program("qemu-img").is_some() {
        let (q, _) = sweep_run(&faults, BackendKind::Qemu, "point");
        println!(
            "fault sweep 026-write-128k: qemu {q:.2} s ({:.2} ms/point): builtin is {:.1}x per point",
            q * 1e3 / points as f64,
            q / b
        );
    }
    let crash = load("scenarios/sweeps/026-write-128k-crash.yaml");
    // Several rounds: one is a few milliseconds.
    let (mut secs, mut states) = (0.0, 0);
    while secs < 2.0 {
        let (t, n) = sweep_run(&crash, BackendKind::Builtin, "state");
        secs += t;
        states += n;
    }
    println!(
        "crash sweep 026-write-128k-crash: {states} states in {secs:.2} s, {:.0} states/s",
        states as f64 / secs
    );
}

/// The generated scenarios through both backends, in process.
fn generated_rows(n: usize, have_qemu: bool) {
    let scenarios: Vec<_> = (0..n)
        .map(|i| {
            let s = scenario::parse(&generate(i), Path::new("generated.yaml"))
                .expect("generated scenarios parse");
            let cases = matrix::expand(&s, matrix::DEFAULT_MAX_CASES).expect("no matrix");
            (s, cases)
        })
        .collect();
    let builtin = run_all(&scenarios, BackendKind::Builtin);
    println!("builtin: {n} scenarios, {builtin:.1} scenarios/s");
    if !have_qemu {
        return;
    }
    let qemu = run_all(&scenarios, BackendKind::Qemu);
    println!("qemu:    {n} scenarios, {qemu:.1} scenarios/s");
    println!(
        "ratio:   builtin is {:.1}x the QEMU backend",
        builtin / qemu
    );
}

fn main() {
    if !std::env::var("BENCH_SWEEPS").is_ok_and(|v| v == "0") {
        sweep_rows();
    }
    let n: usize = std::env::var("BENCH_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let have_qemu =
        backend_qemu::program("qemu-io").is_some() && backend_qemu::program("qemu-img").is_some();
    if n > 0 {
        generated_rows(n, have_qemu);
    }
    if !have_qemu {
        println!("qemu: skipped (qemu-io/qemu-img not found)");
        return;
    }
    if std::env::var("BENCH_SUITE").is_ok_and(|v| v == "0") {
        return;
    }
    let rounds = std::env::var("BENCH_SUITE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    suite_row(rounds);
}
