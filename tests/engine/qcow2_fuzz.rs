//! The structure-aware qcow2 mutation fuzzer (issue 13): hostile images never make ours panic,
//! crash, hang or balloon, and `blockfault img check` agrees with `qemu-img check`.
//!
//! Base images are made by the real qemu-img/qemu-io once per run ([`seeds`]); each case parses
//! one ([`layout`]: header, extensions, L1/L2 tables, refcount table and blocks, snapshot table,
//! bitmap directory), mutates one to three of its fields or structures ([`mutate`]) and runs, on
//! copies of the files ([`check`]): `check`, `info`, a read-only qemu-io session (the files must
//! not change), `check -r leaks|all` (and the real qemu-img's check of both repaired images),
//! and a read-write qemu-io session (reads, writes, zero and compressed writes, discard,
//! truncate, flush, map). Real QEMU runs every step first, for reference and for time. Ours
//! runs as a child process under an address-space backstop and fails the case on: a panic,
//! a signal, more than max(10x QEMU's time, a floor), a peak resident set above 256 MiB, a
//! read-only step that wrote, or a `check`/`check -r`/`info` result (exit code, and error and
//! leak counts where both print JSON) unlike qemu-img's. A failing case is minimised (mutations
//! dropped while it still fails) and printed as a shell script that rebuilds it by hand.
//!
//! Environment:
//! - `BLOCKFAULT_QCOW2_FUZZ_SEED=S` (decimal or 0x hex): the base seed; case i has seed S+i, so
//!   `BLOCKFAULT_QCOW2_FUZZ_SEED=<case seed> BLOCKFAULT_QCOW2_FUZZ_CASES=1` replays one case.
//!   Default: from the clock, printed.
//! - `BLOCKFAULT_QCOW2_FUZZ_CASES=N`: run N cases (default [`CI_CASES`]).
//! - `BLOCKFAULT_QCOW2_FUZZ_SECS=T`: run for T seconds (the long mode; at most N cases if both).
//! - `BLOCKFAULT_QCOW2_FUZZ_JOBS=K`: cases run on K threads (default 2).
//! - `BLOCKFAULT_QCOW2_FUZZ_ALL=1`: count the classes in [`exclusions::EXCLUSIONS`] as failures.
//! - `BLOCKFAULT_QCOW2_FUZZ_ONLY=NAME`: run only the cases of the excluded class NAME, with its
//!   exclusion off (to check whether it is fixed).
//! - `BLOCKFAULT_QCOW2_FUZZ_LOG=FILE`: append each failure report to FILE.
//! - `BLOCKFAULT_QCOW2_FUZZ_TIME_FLOOR=SECS`: the least time ours is given per step (default 3).
//!
//! Needs real qemu-img and qemu-io in PATH; without them the tests say so and pass vacuously.

mod case;
mod check;
mod exclusions;
mod exec;
mod layout;
mod mutate;
#[allow(dead_code)]
#[path = "../differential/fuzz/rng.rs"]
mod rng;
use rng::{base_seed, env, env_u64};
mod seeds;

use case::Case;
use check::{Failure, Kind, Tools};
use seeds::Base;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Cases in a plain `cargo test`: about 11 short processes each, ~0.2 s of wall time per case on
/// an idle machine and 2 threads, so well under a minute on two busy cores.
pub const CI_CASES: u64 = 48;
/// Failures of one class reported (minimised, with a script) in full; the rest are counted.
const REPORTS_PER_CLASS: u64 = 2;

struct Config {
    base_seed: u64,
    cases: Option<u64>,
    deadline: Option<Instant>,
    jobs: u64,
    all: bool,
    only: Option<&'static exclusions::Exclusion>,
    log: Option<PathBuf>,
}

fn config() -> Config {
    let base_seed = base_seed("BLOCKFAULT_QCOW2_FUZZ_SEED");
    let secs = env_u64("BLOCKFAULT_QCOW2_FUZZ_SECS");
    let cases = env_u64("BLOCKFAULT_QCOW2_FUZZ_CASES");
    Config {
        base_seed,
        cases: cases.or(if secs.is_some() { None } else { Some(CI_CASES) }),
        deadline: secs.map(|s| Instant::now() + Duration::from_secs(s)),
        jobs: env_u64("BLOCKFAULT_QCOW2_FUZZ_JOBS").unwrap_or(2).max(1),
        all: env("BLOCKFAULT_QCOW2_FUZZ_ALL").is_some_and(|v| v != "0"),
        only: env("BLOCKFAULT_QCOW2_FUZZ_ONLY").map(|n| {
            exclusions::named(&n)
                .unwrap_or_else(|| panic!("BLOCKFAULT_QCOW2_FUZZ_ONLY={n}: no such exclusion"))
        }),
        log: env("BLOCKFAULT_QCOW2_FUZZ_LOG").map(Into::into),
    }
}

fn tools() -> Option<Tools> {
    let path = std::env::var_os("PATH")?;
    let find = |name: &str| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    let floor = env_u64("BLOCKFAULT_QCOW2_FUZZ_TIME_FLOOR")
        .map(Duration::from_secs)
        .unwrap_or(check::DEFAULT_TIME_FLOOR);
    Some(Tools {
        qemu_img: find("qemu-img")?,
        qemu_io: find("qemu-io")?,
        ours: PathBuf::from(env!("CARGO_BIN_EXE_blockfault")),
        time_floor: floor,
    })
}

/// The base images, made once per test run.
fn bases() -> &'static Result<Vec<Base>, String> {
    static BASES: OnceLock<Result<Vec<Base>, String>> = OnceLock::new();
    BASES.get_or_init(seeds::make_all)
}

#[derive(Default)]
struct Stats {
    cases: u64,
    outside_only: u64,
    /// step -> (compared, agreed)
    compared: BTreeMap<&'static str, (u64, u64)>,
    failures: BTreeMap<Kind, u64>,
    /// class -> (count, first seed)
    classes: BTreeMap<String, (u64, u64)>,
    excluded: BTreeMap<&'static str, u64>,
    /// what QEMU itself did (crash, hang) -> (count, first seed)
    qemu_trouble: BTreeMap<String, (u64, u64)>,
    /// seeds of cases with unexcluded failures
    failing_seeds: Vec<u64>,
}

impl Stats {
    fn summary(&self, cfg: &Config) -> String {
        let mut s = format!(
            "qcow2 fuzz summary (base seed 0x{:x}): {} images tried",
            cfg.base_seed, self.cases
        );
        if self.outside_only > 0 {
            s += &format!(
                " ({} more skipped: outside the class BLOCKFAULT_QCOW2_FUZZ_ONLY names)",
                self.outside_only
            );
        }
        for (step, (n, agreed)) in &self.compared {
            s += &format!(
                "\n  {step}: {agreed}/{n} agree with qemu-img ({:.1}%)",
                100.0 * *agreed as f64 / (*n).max(1) as f64
            );
        }
        for (kind, n) in &self.failures {
            s += &format!("\n  failures {kind:?}: {n}");
        }
        for (class, (n, seed)) in &self.classes {
            s += &format!("\n  class x{n} (first seed 0x{seed:x}): {class}");
        }
        for (name, n) in &self.excluded {
            s += &format!(
                "\n  excluded, known class '{name}': {n} (waits for {})",
                exclusions::named(name).map_or("", |e| e.waits_for)
            );
        }
        for (what, (n, seed)) in &self.qemu_trouble {
            s += &format!("\n  QEMU itself: {what}: {n} (first seed 0x{seed:x})");
        }
        s
    }
}

/// A grouping key: what failed where and the first telling line each program printed, numbers
/// blurred (the mutation that led there varies within one class).
fn class_of(f: &Failure) -> String {
    let exits = match f.kind {
        Kind::CheckDisagrees | Kind::RepairDisagrees | Kind::InfoDisagrees | Kind::CrashPolicy => {
            format!(
                " qemu {} ours {}",
                f.qemu.as_ref().map_or("-".into(), |q| q.describe_exit()),
                f.ours.describe_exit()
            )
        }
        _ => String::new(),
    };
    // which info keys differ
    let keys: Vec<&str> = f
        .detail
        .strip_prefix("the JSON differs: ")
        .map(|d| d.split("; ").filter_map(|p| p.split(':').next()).collect())
        .unwrap_or_default();
    let keys = if keys.is_empty() {
        String::new()
    } else {
        format!(" keys [{}]", keys.join(","))
    };
    format!(
        "{:?} at '{}'{exits}{keys}: qemu «{}» ours «{}»",
        f.kind,
        f.step,
        f.qemu
            .as_ref()
            .map_or(String::new(), |q| signature(&q.stderr)),
        signature(&f.ours.stderr)
    )
}

/// The first line of `stderr` that says what went wrong (a panic's place and message, an open
/// failure, a check error), digits blurred, without the line numbers of a panic's place.
pub fn signature(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let line = if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        let place = lines[i]
            .split("panicked at ")
            .nth(1)
            .unwrap_or("")
            .split(':')
            .next()
            .unwrap_or("");
        format!("panic at {place}: {}", lines.get(i + 1).unwrap_or(&""))
    } else {
        lines
            .iter()
            .find(|l| {
                l.starts_with("qemu-img:")
                    || l.starts_with("qemu-io:")
                    || l.starts_with("blockfault:")
                    || l.starts_with("ERROR")
                    || l.contains("failed")
                    || l.contains("Assertion")
            })
            .unwrap_or(&"")
            .to_string()
    };
    let mut out = String::new();
    let mut prev_digit = false;
    for ch in line.chars().take(110) {
        if ch.is_ascii_digit() {
            if !prev_digit {
                out.push('N');
            }
            prev_digit = true;
        } else {
            out.push(ch);
            prev_digit = false;
        }
    }
    out
}

fn excluded<'a>(cfg: &Config, case: &Case, f: &Failure) -> Option<&'a exclusions::Exclusion> {
    if cfg.all {
        return None;
    }
    exclusions::covering(case, f, cfg.only.map(|e| e.name))
}

/// Drops mutations (and, for a session's failure, session commands) while the case still fails
/// the same way at the same step.
fn minimise(
    cfg: &Config,
    case: &Case,
    f: &Failure,
    bases: &[Base],
    tools: &Tools,
) -> (Case, Failure) {
    let mut best = (case.clone(), f.clone());
    let still_fails = |candidate: &Case| {
        check::execute(candidate, bases, tools)
            .failures
            .into_iter()
            .find(|g| g.kind == f.kind && g.step == f.step && excluded(cfg, candidate, g).is_none())
    };
    let mut j = 0;
    while j < best.0.mutations.len() && best.0.mutations.len() > 1 {
        let mut candidate = best.0.clone();
        candidate.mutations.remove(j);
        match still_fails(&candidate) {
            Some(g) => best = (candidate, g),
            None => j += 1,
        }
    }
    let mut j = 0;
    while f.step == "io" && j < best.0.session.len() && best.0.session.len() > 1 {
        let mut candidate = best.0.clone();
        candidate.session.remove(j);
        match still_fails(&candidate) {
            Some(g) => best = (candidate, g),
            None => j += 1,
        }
    }
    best
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(3000);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn report(case: &Case, f: &Failure, bases: &[Base]) -> String {
    let mut steps = vec![(f.program, f.args.clone())];
    let after = f.step.starts_with("check after");
    if after {
        steps.truncate(1);
    }
    let script = case.script(bases, &steps, after);
    let mutations: String = case
        .mutations
        .iter()
        .map(|m| format!("  - {}\n", m.what))
        .collect();
    let run = |who: &str, r: &exec::Run| {
        format!(
            "--- {who} ({}, {:.3} s, peak {} KiB)\n{}{}",
            r.describe_exit(),
            r.time.as_secs_f64(),
            r.max_rss_kib,
            clip(&r.stdout),
            clip(&r.stderr)
        )
    };
    format!(
        "=== qcow2 fuzz: {kind:?} at '{step}' (seed 0x{seed:x}, base {base}): {detail}\n\
         replay: BLOCKFAULT_QCOW2_FUZZ_SEED=0x{seed:x} BLOCKFAULT_QCOW2_FUZZ_CASES=1 BLOCKFAULT_QCOW2_FUZZ_ALL=1 \
         cargo test --test engine qcow2_fuzz::mutated -- --nocapture\n\
         mutations:\n{mutations}reproduce by hand:\n{script}{qemu}{ours}",
        kind = f.kind,
        step = f.step,
        seed = case.seed,
        base = bases[case.base].spec.name,
        detail = f.detail,
        qemu = f.qemu.as_ref().map(|q| run("QEMU", q)).unwrap_or_default(),
        ours = run(
            if after {
                "QEMU on our repaired image"
            } else {
                "ours"
            },
            &f.ours
        ),
    )
}

fn worker(cfg: &Config, k: u64, bases: &[Base], tools: &Tools, stats: &Mutex<Stats>) {
    let mut i = k;
    loop {
        if cfg.cases.is_some_and(|n| i >= n) || cfg.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let seed = cfg.base_seed.wrapping_add(i);
        i += cfg.jobs;
        let case = Case::generate(seed, bases);
        if let Some(only) = cfg.only
            && !(only.case)(&case)
        {
            stats.lock().unwrap().outside_only += 1;
            continue;
        }
        let outcome = check::execute(&case, bases, tools);
        let mut to_report = Vec::new();
        {
            let mut s = stats.lock().unwrap();
            s.cases += 1;
            for (step, agreed) in &outcome.compared {
                let e = s.compared.entry(step).or_default();
                e.0 += 1;
                e.1 += u64::from(*agreed);
            }
            for t in &outcome.qemu_trouble {
                let e = s.qemu_trouble.entry(t.clone()).or_insert((0, seed));
                e.0 += 1;
            }
            let mut failed = false;
            for f in &outcome.failures {
                if let Some(e) = excluded(cfg, &case, f) {
                    *s.excluded.entry(e.name).or_default() += 1;
                    continue;
                }
                failed = true;
                *s.failures.entry(f.kind).or_default() += 1;
                let class = s.classes.entry(class_of(f)).or_insert((0, seed));
                class.0 += 1;
                if class.0 <= REPORTS_PER_CLASS {
                    to_report.push(f.clone());
                }
            }
            if failed {
                s.failing_seeds.push(seed);
            }
        }
        for f in to_report {
            let (small, g) = minimise(cfg, &case, &f, bases, tools);
            let text = report(&small, &g, bases);
            eprintln!("{text}");
            if let Some(path) = &cfg.log {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("opening the fuzz log");
                writeln!(file, "{text}").unwrap();
            }
        }
    }
}

#[test]
fn mutated_images() {
    let Some(tools) = tools() else {
        eprintln!("qcow2_fuzz: real qemu-img/qemu-io not in PATH; nothing to do");
        return;
    };
    let bases = bases().as_ref().expect("making the base images");
    let cfg = config();
    eprintln!(
        "qcow2_fuzz: base seed 0x{:x} (replay with BLOCKFAULT_QCOW2_FUZZ_SEED=0x{:x}{}), {} base images, {} threads",
        cfg.base_seed,
        cfg.base_seed,
        cfg.cases
            .map(|n| format!(" BLOCKFAULT_QCOW2_FUZZ_CASES={n}"))
            .unwrap_or_default(),
        bases.len(),
        cfg.jobs
    );
    let stats = Mutex::new(Stats::default());
    std::thread::scope(|s| {
        for k in 0..cfg.jobs {
            let (cfg, stats, tools) = (&cfg, &stats, &tools);
            s.spawn(move || worker(cfg, k, bases, tools, stats));
        }
    });
    let stats = stats.into_inner().unwrap();
    let summary = stats.summary(&cfg);
    eprintln!("{summary}");
    if let Some(path) = &cfg.log {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("opening the fuzz log");
        writeln!(file, "{summary}").unwrap();
    }
    let mut seeds = stats.failing_seeds.clone();
    seeds.sort_unstable();
    assert!(
        seeds.is_empty(),
        "{} cases failed (seeds {}); see the reports above\n{summary}",
        seeds.len(),
        seeds
            .iter()
            .map(|s| format!("0x{s:x}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn unmutated_bases_pass_every_step() {
    // The control: the harness on the images as qemu-img made them finds nothing.
    let Some(tools) = tools() else {
        eprintln!("qcow2_fuzz: real qemu-img/qemu-io not in PATH; nothing to do");
        return;
    };
    let bases = bases().as_ref().expect("making the base images");
    for (i, b) in bases.iter().enumerate() {
        // a session drawn for this base image (its size), then no mutation
        let mut case = (0..)
            .map(|seed| Case::generate(seed, bases))
            .find(|c| c.base == i)
            .unwrap();
        case.mutations.clear();
        let outcome = check::execute(&case, bases, &tools);
        let failures: Vec<String> = outcome
            .failures
            .iter()
            .filter(|f| exclusions::covering(&case, f, None).is_none())
            .map(|f| report(&case, f, bases))
            .collect();
        assert!(
            failures.is_empty(),
            "{}: {}",
            b.spec.name,
            failures.join("\n")
        );
        assert!(
            outcome.compared.len() >= 3,
            "{}: {:?}",
            b.spec.name,
            outcome.compared
        );
    }
}

#[test]
fn layout_and_mutations_hit_what_they_name() {
    // A hand-made v3 image: 512-byte clusters, L1 at 0x400 -> L2 at 0x600, reftable at 0x800
    // -> refblock at 0xa00 with 4-bit refcounts.
    let mut b = vec![0u8; 0xc00];
    b[0..4].copy_from_slice(b"QFI\xfb");
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    b[20..24].copy_from_slice(&9u32.to_be_bytes());
    b[24..32].copy_from_slice(&(1u64 << 20).to_be_bytes());
    b[36..40].copy_from_slice(&1u32.to_be_bytes());
    b[40..48].copy_from_slice(&0x400u64.to_be_bytes());
    b[48..56].copy_from_slice(&0x800u64.to_be_bytes());
    b[56..60].copy_from_slice(&1u32.to_be_bytes());
    b[96..100].copy_from_slice(&2u32.to_be_bytes());
    b[100..104].copy_from_slice(&104u32.to_be_bytes());
    b[0x400..0x408].copy_from_slice(&(0x600u64 | 1 << 63).to_be_bytes());
    b[0x608..0x610].copy_from_slice(&0x1000u64.to_be_bytes());
    b[0x800..0x808].copy_from_slice(&0xa00u64.to_be_bytes());
    b[0xa00] = 0x21; // refcounts of clusters 0 and 1: 1 and 2
    let l = layout::parse(&b);
    let classes: Vec<&str> = l.structs.iter().map(|s| s.class).collect();
    assert_eq!(classes, ["header", "l1", "l2", "reftable", "refblock"]);
    let field = |class: &str, off: u64| {
        l.fields
            .iter()
            .find(|f| f.class == class && f.off == off)
            .unwrap_or_else(|| panic!("no {class} at {off:#x}"))
    };
    assert_eq!(field("l2_entry", 0x608).table, Some(2));
    let second_refcount = l
        .fields
        .iter()
        .find(|f| f.class == "refcount" && f.shift == 4)
        .unwrap();
    assert_eq!((second_refcount.off, second_refcount.bits), (0xa00, 4));
    // every mutation of every field stays inside the file and is replayable from its seed
    for seed in 0..2000 {
        let mut r = rng::Rng::new(seed);
        let m = mutate::mutation(&b, &l, &mut r);
        let m2 = mutate::mutation(&b, &l, &mut rng::Rng::new(seed));
        assert_eq!(m.edits, m2.edits);
        let mut c = b.clone();
        mutate::apply(&mut c, &m.edits);
        assert!(c.len() <= b.len());
        if m.class == "refcount" && m.what.starts_with("refblock[0xa00] #1 zero") {
            assert_eq!(c[0xa00], 0x01, "{}", m.what);
        }
    }
}
