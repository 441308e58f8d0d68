//! Throughput of the runner: N generated scenarios (raw image, blkdebug rules, a few qemu-io
//! commands each) through the builtin backend and through real QEMU, in one run.
//! `cargo bench --bench runner` (BENCH_SCENARIOS=N to change the default of 500).

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

use scenario::BackendKind;
use std::path::Path;
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

fn main() {
    let n: usize = std::env::var("BENCH_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
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
    if backend_qemu::program("qemu-io").is_none() || backend_qemu::program("qemu-img").is_none() {
        println!("qemu: skipped (qemu-io/qemu-img not found)");
        return;
    }
    let qemu = run_all(&scenarios, BackendKind::Qemu);
    println!("qemu:    {n} scenarios, {qemu:.1} scenarios/s");
    println!(
        "ratio:   builtin is {:.1}x the QEMU backend",
        builtin / qemu
    );
}
