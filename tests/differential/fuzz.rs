//! The seeded random differential fuzzer: random qemu-io sessions (raw and qcow2 images made by
//! the real `qemu-img create`, blkdebug rules and breakpoints, alignment and max-transfer, cache
//! modes, every data command) run on the real qemu-io and on our engine, compared as the fixed
//! cases are: filtered output, exit status and every file of the scratch directory afterwards.
//!
//! A case where qemu-io disagrees with itself is discarded. Where qemu-io hangs or dies by a
//! signal, ours must stop with one `blockfault:` line and exit 1 instead. Ours runs twice and
//! must give the same result both times. A differing case is minimised and printed as a shell
//! script that reproduces it by hand.
//!
//! Environment:
//! - `BLOCKFAULT_FUZZ_SEED=S` (decimal or 0x hex): the base seed; case i has seed S+i, and
//!   `BLOCKFAULT_FUZZ_SEED=<case seed> BLOCKFAULT_FUZZ_CASES=1` replays one case. Default: taken
//!   from the clock, and printed.
//! - `BLOCKFAULT_FUZZ_CASES=N`: run N cases (default [`CI_CASES`]).
//! - `BLOCKFAULT_FUZZ_SECS=T`: run for T seconds (and at most N cases if both are set).
//! - `BLOCKFAULT_FUZZ_BATCHES=K`: split the cases into K trials run in parallel (default twice
//!   the cores, as many as the binary's default test threads: the cases wait on processes).
//! - `BLOCKFAULT_FUZZ_ALL=1`: also run the classes in [`exclusions::EXCLUSIONS`].
//! - `BLOCKFAULT_FUZZ_ONLY=NAME`: run only the generated cases that the exclusion NAME would
//!   skip or rewrite, with it off and the others on (to check whether its class is fixed).
//! - `BLOCKFAULT_FUZZ_MINIMISE=N`: candidate runs a minimisation may spend (default
//!   [`MINIMISE_BUDGET`]; 0 reports differences as generated).
//! - `BLOCKFAULT_FUZZ_VERBOSE=1`: print every case's command line as it starts.
//! - `BLOCKFAULT_FUZZ_LOG=FILE`: append every minimised difference to FILE. With this, or with
//!   `BLOCKFAULT_FUZZ_SECS`/`CASES`, the run keeps going after a difference; otherwise the first
//!   one fails the trial.

mod case;
mod exclusions;
mod exec;
mod generate;
mod rng;
use rng::{base_seed, env, env_u64};
mod self_check;
mod shrink;

use case::{FuzzCase, Layer};
use exec::{Difference, Kind, Verdict, execute};
use libtest_mimic::{Failed, Trial};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Cases in a plain `cargo test` run, sized for `cargo test` as a whole to stay within a few
/// minutes on two cores: measured 600 cases in 313 s of wall time on a two-core machine at load
/// 8-12 (most of it qemu-io and qemu-img processes and the timeouts of hanging cases), so 200
/// is about 100 s there and far less on an idle machine. Seeds rotate per run; long runs use
/// `BLOCKFAULT_FUZZ_SECS`.
pub const CI_CASES: u64 = 200;
/// Candidate runs a minimisation may spend.
const MINIMISE_BUDGET: usize = 250;
/// In a long run, differences that look alike (same kind, format and first differing lines)
/// are minimised this many times, then only counted.
const MINIMISE_PER_CLASS: u64 = 6;

struct Config {
    base_seed: u64,
    cases: Option<u64>,
    deadline: Option<Instant>,
    batches: u64,
    all: bool,
    minimise_budget: usize,
    only: Option<String>,
    log: Option<std::path::PathBuf>,
    keep_going: bool,
    verbose: bool,
}

fn config() -> Config {
    let base_seed = base_seed("BLOCKFAULT_FUZZ_SEED");
    let secs = env_u64("BLOCKFAULT_FUZZ_SECS");
    let cases = env_u64("BLOCKFAULT_FUZZ_CASES");
    let log = env("BLOCKFAULT_FUZZ_LOG").map(Into::into);
    Config {
        base_seed,
        keep_going: secs.is_some() || cases.is_some() || log.is_some(),
        cases: cases.or(if secs.is_some() { None } else { Some(CI_CASES) }),
        deadline: secs.map(|s| Instant::now() + Duration::from_secs(s)),
        batches: env_u64("BLOCKFAULT_FUZZ_BATCHES")
            .unwrap_or(crate::default_test_threads() as u64)
            .max(1),
        all: env("BLOCKFAULT_FUZZ_ALL").is_some_and(|v| v != "0"),
        only: env("BLOCKFAULT_FUZZ_ONLY"),
        minimise_budget: env_u64("BLOCKFAULT_FUZZ_MINIMISE")
            .map_or(MINIMISE_BUDGET, |n| n as usize),
        verbose: env("BLOCKFAULT_FUZZ_VERBOSE").is_some_and(|v| v != "0"),
        log,
    }
}

/// Counts over the whole run, printed at the end.
#[derive(Default)]
struct Stats {
    generated: u64,
    /// not in the class `BLOCKFAULT_FUZZ_ONLY` names
    outside_only: u64,
    skipped: BTreeMap<&'static str, u64>,
    narrowed: BTreeMap<&'static str, u64>,
    /// minimisations done per rough class (kind and first differing lines), to stop minimising
    /// the same thing over and over in long runs
    minimised: BTreeMap<String, u64>,
    setup_failed: u64,
    same: u64,
    unstable: u64,
    qemu_hang: u64,
    qemu_crash: BTreeMap<i32, u64>,
    differs: BTreeMap<Kind, u64>,
    /// grouping key of each minimised difference -> (count, seed of the first)
    classes: BTreeMap<String, (u64, u64)>,
}

static STATS: Mutex<Option<Stats>> = Mutex::new(None);
static LOG: Mutex<()> = Mutex::new(());

fn with_stats(f: impl FnOnce(&mut Stats)) {
    f(STATS.lock().unwrap().get_or_insert_with(Stats::default))
}

pub fn trials() -> Vec<Trial> {
    let cfg = std::sync::Arc::new(config());
    let mut trials = vec![Trial::test("fuzz::self_check", || {
        self_check::check().map_err(Failed::from)
    })];
    trials.extend((0..cfg.batches).map(|k| {
        let cfg = cfg.clone();
        Trial::test(format!("fuzz::batch_{k}"), move || batch(&cfg, k))
    }));
    trials
}

/// The summary of the whole run (nothing if no batch ran).
pub fn print_summary() {
    let guard = STATS.lock().unwrap();
    let Some(s) = guard.as_ref() else { return };
    let compared = s.same + s.differs.get(&Kind::Differs).copied().unwrap_or(0);
    let mut out = format!(
        "fuzz summary: {} cases generated, {compared} compared ({} same), {} discarded as qemu-io-nondeterministic, {} qemu-io hangs reported correctly, {} qemu-io crashes reported correctly, {} setup failures",
        s.generated,
        s.same,
        s.unstable,
        s.qemu_hang,
        s.qemu_crash.values().sum::<u64>(),
        s.setup_failed
    );
    if s.outside_only > 0 {
        out += &format!(
            "\n  outside the class BLOCKFAULT_FUZZ_ONLY names: {}",
            s.outside_only
        );
    }
    for (sig, n) in &s.qemu_crash {
        out += &format!("\n  qemu-io died by signal {sig}: {n}");
    }
    for (name, n) in &s.skipped {
        out += &format!(
            "\n  skipped, known difference '{name}': {n} (waits for {})",
            exclusions::waits_for(name)
        );
    }
    for (name, n) in &s.narrowed {
        out += &format!(
            "\n  narrowed, known difference '{name}': {n} (waits for {})",
            exclusions::waits_for(name)
        );
    }
    for (kind, n) in &s.differs {
        out += &format!("\n  {}: {n}", kind.describe());
    }
    for (class, (n, seed)) in &s.classes {
        out += &format!("\n  class x{n} (first seed 0x{seed:x}): {class}");
    }
    eprintln!("{out}");
}

fn qemu_runs(case: &FuzzCase) -> usize {
    // Timing can only show where requests run concurrently: aio, breakpoints, and qcow2's
    // compressed writes (clusters compressed in parallel by the thread pool).
    let timing = case.commands.iter().any(|c| {
        c.is_aio()
            || matches!(c.name, "sleep" | "break" | "resume" | "wait_break")
            || c.args.contains(&case::Tok::Flag("-c"))
    });
    if timing { 3 } else { 2 }
}

fn batch(cfg: &Config, k: u64) -> Result<(), Failed> {
    eprintln!(
        "fuzz::batch_{k}: base seed 0x{:x} (replay with BLOCKFAULT_FUZZ_SEED=0x{:x}{}), cases {k}, {k}+{}, ...",
        cfg.base_seed,
        cfg.base_seed,
        cfg.cases
            .map(|n| format!(" BLOCKFAULT_FUZZ_CASES={n}"))
            .unwrap_or_default(),
        cfg.batches
    );
    if let Some(why) = missing_tools() {
        eprintln!("fuzz::batch_{k}: skipped: {why}");
        return Ok(());
    }
    let mut failures = Vec::new();
    let mut i = k;
    loop {
        if cfg.cases.is_some_and(|n| i >= n) || cfg.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let seed = cfg.base_seed.wrapping_add(i);
        i += cfg.batches;
        let mut case = generate::generate(seed);
        with_stats(|s| s.generated += 1);
        if let Some(only) = &cfg.only {
            let touched = exclusions::touches(only, &case)
                .unwrap_or_else(|| panic!("BLOCKFAULT_FUZZ_ONLY={only}: no such exclusion"));
            if !touched {
                with_stats(|s| s.outside_only += 1);
                continue;
            }
        }
        if !cfg.all {
            match exclusions::apply_except(&mut case, cfg.only.as_deref()) {
                Err(name) => {
                    with_stats(|s| *s.skipped.entry(name).or_default() += 1);
                    continue;
                }
                Ok(narrowed) => with_stats(|s| {
                    for name in narrowed {
                        *s.narrowed.entry(name).or_default() += 1;
                    }
                }),
            }
        }
        if cfg.verbose {
            let images: Vec<String> = case
                .images()
                .iter()
                .map(|a| format!("qemu-img {}; ", case::shell_words(a)))
                .collect();
            eprintln!(
                "fuzz: seed 0x{seed:x}: {}qemu-io {}",
                images.concat(),
                case::shell_words(&case.args())
            );
        }
        match execute(&case, qemu_runs(&case), false) {
            Verdict::Same => with_stats(|s| s.same += 1),
            Verdict::QemuUnstable => with_stats(|s| s.unstable += 1),
            Verdict::QemuHang => with_stats(|s| s.qemu_hang += 1),
            Verdict::QemuCrash(sig) => with_stats(|s| *s.qemu_crash.entry(sig).or_default() += 1),
            Verdict::SetupFailed(e) => {
                eprintln!("fuzz: seed 0x{seed:x}: setup failed: {e}");
                with_stats(|s| s.setup_failed += 1)
            }
            Verdict::Differs(d) => {
                with_stats(|s| *s.differs.entry(d.kind).or_default() += 1);
                let report = report(cfg, &case, &d);
                if !cfg.keep_going {
                    return Err(report.into());
                }
                failures.push(seed);
                if d.kind == Kind::OursBroken {
                    // A stuck engine thread keeps running: stop this batch.
                    break;
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} cases differ (seeds {}); see the reports above{}",
            failures.len(),
            failures
                .iter()
                .map(|s| format!("0x{s:x}"))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.log
                .as_ref()
                .map(|p| format!(" and in {}", p.display()))
                .unwrap_or_default()
        )
        .into())
    }
}

fn missing_tools() -> Option<String> {
    if let Some(why) = crate::harness::missing_tools() {
        return Some(why);
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-img").is_file()))
        .unwrap_or(false);
    (!found).then(|| "`qemu-img` is not in PATH".to_string())
}

/// Minimises a differing case and describes it; logs it when a log file is set.
fn report(cfg: &Config, case: &FuzzCase, d: &Difference) -> String {
    let kind = d.kind;
    let rough = format!(
        "{kind:?} {} {} {} {}",
        case.image.format.name(),
        what_differs(d),
        blur(&d.first_lines.0),
        blur(&d.first_lines.1)
    );
    let seen = {
        let mut n = 0;
        with_stats(|s| {
            let e = s.minimised.entry(rough).or_default();
            n = *e;
            *e += 1;
        });
        n
    };
    // A stuck engine thread can't be run again and again; a rough class minimised several times
    // already is not worth another in a long run.
    let minimise = kind != Kind::OursBroken
        && cfg.minimise_budget > 0
        && (!cfg.keep_going || seen < MINIMISE_PER_CLASS);
    let quick = kind != Kind::OursNondeterministic;
    let (small, tried) = if minimise {
        shrink::minimise(case, cfg.minimise_budget, |c| {
            let fails = (cfg.all || exclusions::untouched_except(c, cfg.only.as_deref()))
                && matches!(execute(c, qemu_runs(c), quick), Verdict::Differs(x) if x.kind == kind);
            if cfg.verbose {
                eprintln!(
                    "fuzz: minimising 0x{:x}: {} {}",
                    case.seed,
                    if fails {
                        "still fails:"
                    } else {
                        "passes:     "
                    },
                    case::shell_words(&c.args())
                );
            }
            fails
        })
    } else {
        (case.clone(), 0)
    };
    // The minimised case's own difference (the original's if it stopped failing meanwhile).
    let (small, d) = match (tried, execute(&small, qemu_runs(&small), false)) {
        (0, _) => (small, d.clone()),
        (_, Verdict::Differs(x)) if x.kind == kind => (small, x),
        _ => (case.clone(), d.clone()),
    };
    let class = class_of(&small, &d);
    with_stats(|s| {
        s.classes.entry(class.clone()).or_insert((0, case.seed)).0 += 1;
    });
    let text = format!(
        "=== fuzz case seed 0x{seed:x}: {what}\n\
         replay the original: BLOCKFAULT_FUZZ_SEED=0x{seed:x} BLOCKFAULT_FUZZ_CASES=1 BLOCKFAULT_FUZZ_ALL=1 cargo test --test differential -- fuzz\n\
         class: {class}\n\
         minimised ({tried} candidate runs, {n} of {m} commands left{narrowed}); reproduce by hand:\n\
         {script}\
         {details}\
         --- qemu-io output (exit {qs})\n{qo}\
         --- blockfault output (exit {os})\n{oo}",
        seed = case.seed,
        what = kind.describe(),
        n = small.commands.len(),
        m = case.commands.len(),
        script = small.script(),
        narrowed = if cfg.all {
            ""
        } else {
            "; known-difference exclusions applied"
        },
        details = d.details,
        qs = d.qemu.status,
        qo = d.qemu.output,
        os = d.ours.as_ref().map(|o| o.status).unwrap_or(-1),
        oo = d.ours.as_ref().map(|o| o.output.as_str()).unwrap_or(""),
    );
    eprintln!("{text}");
    if let Some(path) = &cfg.log {
        let _guard = LOG.lock().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("opening the fuzz log");
        writeln!(f, "{text}").unwrap();
    }
    text
}

/// A grouping key: what kind of case it is and where the outputs part, with numbers blurred.
fn class_of(case: &FuzzCase, d: &Difference) -> String {
    let layer = match &case.layer {
        Layer::Plain => "plain".to_string(),
        Layer::Legacy { config } => {
            format!("blkdebug{}", if config.is_some() { "+rules" } else { "" })
        }
        Layer::Json {
            align,
            max_transfer,
            ..
        } => format!(
            "blkdebug-json{}{}{}",
            if *align != 0 { " align" } else { "" },
            if *max_transfer != 0 {
                " max-transfer"
            } else {
                ""
            },
            if case.layer.rules().is_empty() {
                ""
            } else {
                "+rules"
            }
        ),
    };
    let events: Vec<&str> = case
        .layer
        .rules()
        .iter()
        .map(|r| r.event().name())
        .collect();
    let commands: Vec<&str> = case.commands.iter().map(|c| c.name).collect();
    let what_differs = what_differs(d);
    let layer = if case.blkverify {
        format!("blkverify over {layer}")
    } else {
        layer
    };
    format!(
        "{kind:?} [{what_differs}] {fmt} {layer} cache={cache} events=[{events}] cmds=[{commands}] qemu: {q:?} ours: {o:?}",
        kind = d.kind,
        fmt = case.image.format.name(),
        cache = case.cache.unwrap_or("-"),
        events = events.join(","),
        commands = commands.join(","),
        q = blur(&d.first_lines.0),
        o = blur(&d.first_lines.1),
    )
}

/// `output+status+files`, or the part of it that differs.
fn what_differs(d: &Difference) -> String {
    let mut w = Vec::new();
    if let Some(o) = &d.ours {
        if o.output != d.qemu.output {
            w.push("output");
        }
        if o.status != d.qemu.status {
            w.push("status");
        }
        if o.files != d.qemu.files {
            w.push("files");
        }
    }
    w.join("+")
}

/// `s` with every run of digits replaced by `N`.
fn blur(s: &str) -> String {
    let mut out = String::new();
    let mut prev_digit = false;
    for ch in s.chars() {
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
