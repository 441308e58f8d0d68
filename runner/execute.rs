//! Runs one scenario: each matrix case in a fresh scratch directory, files and images first, then
//! the steps, through the chosen backend. The result is the filtered output of all cases.

use crate::matrix::{Case, CaseStep};
use crate::scenario::{BackendKind, Drive, QemuIoStep, Scenario, Step};
use crate::{backend_builtin, backend_qemu, filters};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What running a scenario produced.
#[derive(Debug)]
pub enum Outcome {
    Skipped(String),
    Ran {
        output: String,
        elapsed: Duration,
        /// Scratch directories left behind by `--keep`.
        kept: Vec<PathBuf>,
        /// For each line of `output`, the case and step that printed it.
        origins: Vec<String>,
    },
    /// A SIGINT or SIGTERM stopped it part-way: its output means nothing.
    Interrupted,
}

/// Why this scenario does not run on `backend`, if it does not.
pub fn skip_reason(s: &Scenario, backend: BackendKind) -> Option<String> {
    if let Some(reason) = &s.skip {
        return Some(reason.clone());
    }
    if let Some(backends) = &s.backends
        && !backends.contains(&backend)
    {
        let reason = s.reason.as_deref().unwrap_or("");
        return Some(format!("not for the {} backend: {reason}", backend.name()));
    }
    let has: fn(&str) -> bool = match backend {
        BackendKind::Builtin => backend_builtin::has,
        BackendKind::Qemu => backend_qemu::has,
    };
    let missing: Vec<&str> = s
        .requires
        .0
        .iter()
        .map(String::as_str)
        .filter(|r| !has(r))
        .collect();
    if !missing.is_empty() {
        return Some(format!("requires {}", missing.join(", ")));
    }
    (backend == BackendKind::Qemu && backend_builtin::any_step_traced(s))
        .then(|| backend_builtin::QEMU_HAS_NO_TRACE.to_string())
}

/// Runs every case (already expanded and checked) unless the scenario is skipped. (The suite
/// runs cases one by one instead; the scenario tests and the bench use this.)
#[allow(dead_code)]
pub fn run(s: &Scenario, cases: &[Case], name: &str, backend: BackendKind, keep: bool) -> Outcome {
    run_sweep_point(s, cases, name, backend, keep, None)
}

/// As [`run`]; with `point`, a sweep runs that one point alone (`--point`).
pub fn run_sweep_point(
    s: &Scenario,
    cases: &[Case],
    name: &str,
    backend: BackendKind,
    keep: bool,
    point: Option<&str>,
) -> Outcome {
    if let Some(reason) = skip_reason(s, backend) {
        return Outcome::Skipped(reason);
    }
    let mut ran = Vec::new();
    for case in cases {
        match run_one_case(case, name, backend, keep, point) {
            Some(r) => ran.push(r),
            None => return Outcome::Interrupted,
        }
    }
    assemble(cases, ran)
}

/// What one case of a scenario printed, step by step, and how long it took. Cases are
/// independent (each has its own scratch directory): the suite runs them on any worker.
#[derive(Debug)]
pub struct CaseRun {
    /// (which step, its filtered output)
    pieces: Vec<(String, String)>,
    elapsed: Duration,
    kept: Option<PathBuf>,
}

impl CaseRun {
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }
}

/// Runs one case of a scenario that is not skipped; None when a signal stopped it.
pub fn run_one_case(
    case: &Case,
    name: &str,
    backend: BackendKind,
    keep: bool,
    point: Option<&str>,
) -> Option<CaseRun> {
    if crate::interrupt::requested().is_some() {
        return None;
    }
    let start = Instant::now();
    let mut pieces = Vec::new();
    let mut kept = None;
    match Scratch::new(name) {
        Ok(dir) => {
            run_case(case, &dir.path, backend, &mut pieces);
            if let Some(sweep) = &case.sweep
                && !pieces.iter().any(|(label, _)| label == "setup")
            {
                let text = crate::sweep::run(sweep, &dir.path, backend, point);
                pieces.push(("sweep".to_string(), text));
            }
            if keep {
                kept = Some(dir.keep());
            }
        }
        Err(e) => pieces.push((
            "setup".to_string(),
            format!("[setup failed: cannot create a scratch directory: {e}]\n"),
        )),
    }
    if crate::interrupt::requested().is_some() {
        return None;
    }
    Some(CaseRun {
        pieces,
        elapsed: start.elapsed(),
        kept,
    })
}

/// The scenario's outcome from its cases' runs, in case order; its time is theirs summed.
pub fn assemble(cases: &[Case], ran: Vec<CaseRun>) -> Outcome {
    let mut output = String::new();
    let mut origins = Vec::new();
    let mut kept = Vec::new();
    let mut elapsed = Duration::ZERO;
    for (case, run) in cases.iter().zip(ran) {
        let case_label = case.header().map(|h| format!("{h} ")).unwrap_or_default();
        if let Some(h) = case.header() {
            output.push_str(&h);
            output.push('\n');
            origins.push(h);
        }
        for (label, text) in run.pieces {
            origins.extend(std::iter::repeat_n(
                format!("{case_label}{label}"),
                text.lines().count(),
            ));
            output.push_str(&text);
        }
        kept.extend(run.kept);
        elapsed += run.elapsed;
    }
    Outcome::Ran {
        output,
        elapsed,
        kept,
        origins,
    }
}

/// Runs one case, adding each step's output to `out` with a label saying which step it was.
fn run_case(case: &Case, dir: &Path, backend: BackendKind, out: &mut Vec<(String, String)>) {
    let setup = |text: String| ("setup".to_string(), text);
    for (name, text) in &case.files {
        let path = dir.join(name);
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&path, text));
        if let Err(e) = written {
            out.push(setup(format!("[setup failed: writing {name}: {e}]\n")));
            return;
        }
    }
    for image in &case.images {
        let mut args: Vec<String> = vec![
            "create".into(),
            "-q".into(),
            "-f".into(),
            image.format.clone(),
        ];
        if let Some(o) = &image.options {
            args.extend(["-o".to_string(), o.clone()]);
        }
        args.extend([image.name.clone(), image.size.0.clone()]);
        let (text, status) = tool(backend, "qemu-img", &args, dir);
        if status != 0 {
            out.push(setup(format!("[setup failed: creating {}]\n", image.name)));
            out.push(setup(step_output(&text, status, dir)));
            return;
        }
    }
    for CaseStep {
        number,
        quiet,
        step,
    } in &case.steps
    {
        if crate::interrupt::requested().is_some() {
            break;
        }
        let (kind, text) = match step {
            Step::Echo(text) => {
                panic_on_purpose(text);
                ("echo", format!("{text}\n"))
            }
            Step::QemuImg(args) => {
                let args: Vec<String> = args.iter().map(|a| a.0.clone()).collect();
                let (text, status) = tool(backend, "qemu-img", &args, dir);
                ("qemu-img", step_output(&text, status, dir))
            }
            Step::QemuIo(q) => {
                let (text, status) = match backend {
                    BackendKind::Builtin if q.trace => {
                        let (text, status, trace) =
                            backend_builtin::qemu_io_traced(&invocation(q), dir);
                        backend_builtin::show_trace(dir, *number, &trace);
                        (text, status)
                    }
                    BackendKind::Builtin => backend_builtin::qemu_io(&invocation(q), dir),
                    BackendKind::Qemu => backend_qemu::run("qemu-io", &qemu_io_args(q), dir),
                };
                ("qemu-io", step_output(&text, status, dir))
            }
        };
        if !quiet {
            out.push((format!("step {number} ({kind})"), text));
        }
    }
}

/// The test hook proving that a panic fails only its own scenario: with
/// `BLOCKFAULT_TEST_PANIC=TEXT` set, an `echo: TEXT` step panics.
fn panic_on_purpose(text: &str) {
    if std::env::var_os("BLOCKFAULT_TEST_PANIC").is_some_and(|t| t == text) {
        panic!("test hook: echo {text:?} panics on purpose");
    }
}

fn tool(backend: BackendKind, tool: &str, args: &[String], dir: &Path) -> (String, i32) {
    match backend {
        BackendKind::Builtin => backend_builtin::qemu_img(args, dir),
        BackendKind::Qemu => backend_qemu::run(tool, args, dir),
    }
}

/// Filtered output, ending in a newline, then `[exit N]` when the status is not 0.
fn step_output(raw: &str, status: i32, dir: &Path) -> String {
    let mut text = filters::apply(raw, dir);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    if status != 0 {
        text.push_str(&format!("[exit {status}]\n"));
    }
    text
}

/// The drive as qemu-io takes it on its command line.
pub fn drive_string(d: &Drive) -> String {
    match d {
        Drive::Filename(f) => f.clone(),
        // preserve_order keeps the mapping's key order, so the name matches what the author wrote.
        Drive::Json(m) => format!("json:{}", serde_json::Value::Object(m.clone())),
    }
}

fn invocation(q: &QemuIoStep) -> blockfault::qemu_io::Invocation {
    blockfault::qemu_io::Invocation {
        format: q.format.clone(),
        cache: q.cache.clone(),
        image_opts: q.image_opts,
        commands: q.commands.clone(),
        drive: q.drive.as_ref().map(drive_string),
        // Scratch directories are deleted afterwards: their durability is not worth a sync.
        skip_host_sync: true,
        ..Default::default()
    }
}

/// The same invocation as qemu-io's argv.
pub fn qemu_io_args(q: &QemuIoStep) -> Vec<String> {
    let mut a = Vec::new();
    if let Some(f) = &q.format {
        a.extend(["-f".to_string(), f.clone()]);
    }
    if let Some(c) = &q.cache {
        a.extend(["-t".to_string(), c.clone()]);
    }
    if q.image_opts {
        a.push("--image-opts".to_string());
    }
    for c in &q.commands {
        a.extend(["-c".to_string(), c.clone()]);
    }
    a.extend(q.drive.as_ref().map(drive_string));
    a
}

/// A scratch directory under the system temp dir, removed on drop unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

/// Where scratch directories go: `BLOCKFAULT_SCRATCH` if set, else `/dev/shm` where it is a
/// writable directory (creating and deleting small sparse images on a disk file system costs
/// more than running a whole scenario on the builtin engine), else the system temp dir.
fn scratch_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BLOCKFAULT_SCRATCH").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        let shm = Path::new("/dev/shm");
        let probe = shm.join(format!("blockfault-probe-{}", std::process::id()));
        let writable = std::fs::create_dir(&probe)
            .and_then(|()| std::fs::remove_dir(&probe))
            .is_ok();
        if writable {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        }
    })
    .clone()
}

/// Whether scratch directories can be made, checked once before anything runs: an unusable
/// `BLOCKFAULT_SCRATCH` is one error about the environment, not a failure of every scenario.
pub fn check_scratch_root() -> Result<(), String> {
    let probe = Scratch::new("probe").map_err(|e| {
        let root = scratch_root();
        let e = blockfault::errno::strerror(e.raw_os_error().unwrap_or(libc::EIO));
        match std::env::var_os("BLOCKFAULT_SCRATCH").filter(|d| !d.is_empty()) {
            Some(_) => format!(
                "BLOCKFAULT_SCRATCH={}: cannot create a scratch directory there: {e}",
                root.display()
            ),
            None => format!(
                "cannot create a scratch directory in {}: {e} (set BLOCKFAULT_SCRATCH=DIR)",
                root.display()
            ),
        }
    })?;
    drop(probe);
    Ok(())
}

impl Scratch {
    fn new(name: &str) -> std::io::Result<Scratch> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = scratch_root().join(format!("blockfault-{}-{n}-{tag}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Scratch { path, keep: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
