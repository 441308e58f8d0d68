//! Sweeps: a workload written once, run again failing each occurrence of each blkdebug event
//! (the fault sweep, on either backend) or cut off at each point of its disk writes (the crash
//! sweep, builtin engine only), with the image checked after every point.
//!
//! Fault sweep: the workload runs once on the builtin engine with every blkdebug event counted
//! (`blkdebug::tally`). Its n-th occurrence of event E is then failed with plain blkdebug rules,
//! so that QEMU runs the same file: a `set-state` chain on E (state k -> k+1 for k = 1..=n) and
//! an `inject-error` rule on E limited to state n. A sentinel run per event puts a sticky error
//! on occurrence count+1, which must change nothing: on QEMU, that is what shows our count is
//! not short (a too-long count shows as a point whose error never comes).
//!
//! Both sweeps know what the image must hold from the workload's own commands
//! ([`workload`]): acknowledged writes read back, failed or unflushed ones leave each sector
//! old or new.

#[path = "sweep/crash.rs"]
mod crash;
#[path = "sweep/point.rs"]
mod point;

use crate::backend_builtin;
use crate::backend_qemu;
use crate::filters;
use crate::scenario::BackendKind;
use crate::sweep_spec::workload;
use crate::sweep_spec::{Crash, EventChoice, Faults, Mode, Random, Sweep, Workload};
use blockfault::block::blkdebug::events::Event;
use point::{Fault, Point, Rng, faults_id, rules};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use workload::{Command, Effect, Model, SECTOR, Status};

/// Runs the sweep in `dir` (files, images and steps done); returns its summary for the golden,
/// or with `only` (a point id, see [`point`]) that one point's full account.
pub fn run(s: &Sweep, dir: &Path, backend: BackendKind, only: Option<&str>) -> String {
    let commands: Vec<Command> = s
        .workload
        .commands
        .iter()
        .map(|c| workload::parse(c).expect("checked at load"))
        .collect();
    let snapshot = match read_tree(dir) {
        Ok(files) => files,
        Err(e) => return format!("[sweep failed: {e}]\n"),
    };
    let ctx = Ctx {
        sweep: s,
        commands,
        point: dir.join(POINT_DIR),
        snapshot,
        backend,
    };
    if let Some(id) = only {
        return match point::parse(id) {
            Err(e) => format!("[sweep failed: --point: {e}]\n"),
            Ok(Point::Faults(_)) if s.faults.is_none() => {
                "[sweep failed: --point: this sweep has no `faults`, only crash points (crash@...)]\n".into()
            }
            Ok(Point::Faults(faults)) => ctx.replay_faults(&faults),
            Ok(Point::Crash(label)) => match &s.crash {
                None => "[sweep failed: --point: this sweep has no `crash`]\n".into(),
                Some(c) => crash::replay(&ctx, c, &label),
            },
        };
    }
    let mut out = String::new();
    if let Some(f) = &s.faults {
        out.push_str(&ctx.faults(f));
    }
    if let Some(c) = &s.crash {
        out.push_str(&crash::run(&ctx, c));
    }
    out
}

/// Where each point runs, inside the scenario's scratch directory.
const POINT_DIR: &str = "sweep-point";
/// The blkdebug rules of a point, beside the image copies.
const RULES: &str = "sweep-rules.cfg";
/// The largest set of files a sweep copies for every point.
const MAX_TREE_BYTES: u64 = 256 << 20;

struct Ctx<'a> {
    sweep: &'a Sweep,
    commands: Vec<Command>,
    point: PathBuf,
    /// the scratch directory's files before the workload (relative path -> contents)
    snapshot: BTreeMap<PathBuf, Vec<u8>>,
    backend: BackendKind,
}

/// What the checks found at one point.
#[derive(Debug, Default)]
struct Verdict {
    leaked: u64,
    /// corruption, data that should not be there, a failing extra check: each in full
    problems: Vec<(Class, String)>,
    /// `qemu-img check`'s status and whole output, for a replay
    check: Option<(i32, String)>,
    /// the extra checks' status and whole output, for a replay
    checks: Option<(i32, String)>,
}

impl Verdict {
    fn class(&self) -> Class {
        let worst = self.problems.iter().map(|(c, _)| *c).max();
        let leak = if self.leaked > 0 {
            Class::Leak
        } else {
            Class::Quiet
        };
        worst.map_or(leak, |w| w.max(leak))
    }

    /// Everything the checks printed, for `--point`.
    fn full(&self) -> String {
        let mut out = String::new();
        if let Some((status, text)) = &self.check {
            let _ = writeln!(out, "qemu-img check (exit {status}):\n{}", indent_all(text));
        }
        let data: Vec<&String> = self
            .problems
            .iter()
            .filter(|(c, _)| *c == Class::LostData)
            .map(|(_, t)| t)
            .collect();
        if data.is_empty() {
            let _ = writeln!(out, "data: as the workload's commands allow");
        } else {
            for t in data {
                let _ = writeln!(out, "{}", t.trim_end());
            }
        }
        if let Some((status, text)) = &self.checks {
            let _ = writeln!(out, "checks (exit {status}):\n{}", indent_all(text));
        }
        out
    }

    fn image(&self) -> String {
        match self.leaked {
            0 => "image clean".to_string(),
            1 => "1 leaked cluster".to_string(),
            n => format!("{n} leaked clusters"),
        }
    }
}

impl Ctx<'_> {
    fn wl(&self) -> &Workload {
        &self.sweep.workload
    }

    fn writethrough(&self) -> bool {
        matches!(
            self.wl().cache.as_deref(),
            Some("writethrough" | "directsync")
        )
    }

    /// Puts `files` (and nothing else) in the point directory. Files already there are
    /// overwritten in place rather than deleted and written anew: on tmpfs, freeing and
    /// allocating the pages of a whole image for each of hundreds of points was most of a
    /// crash sweep's time. The result is the same: every file holds exactly `files`' bytes.
    fn reset(&self, files: &BTreeMap<PathBuf, Vec<u8>>) -> Result<(), String> {
        use std::os::unix::fs::FileExt;
        std::fs::create_dir_all(&self.point).map_err(|e| format!("{}: {e}", POINT_DIR))?;
        let wanted = |rel: &Path, is_dir: bool| {
            if is_dir {
                files.keys().any(|k| k.starts_with(rel))
            } else {
                files.contains_key(rel)
            }
        };
        let mut pending = vec![self.point.clone()];
        while let Some(d) = pending.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            for entry in entries {
                let path = entry.map_err(|e| e.to_string())?.path();
                let rel = path.strip_prefix(&self.point).unwrap_or(&path);
                // not followed: a link is removed like any file that is not wanted
                let meta = std::fs::symlink_metadata(&path).map_err(|e| e.to_string())?;
                let removed = match (meta.is_dir(), wanted(rel, meta.is_dir())) {
                    (true, true) => {
                        pending.push(path.clone());
                        Ok(())
                    }
                    (true, false) => std::fs::remove_dir_all(&path),
                    (false, wanted) if wanted && meta.is_file() => Ok(()),
                    (false, _) => std::fs::remove_file(&path),
                };
                removed.map_err(|e| format!("{}: {e}", rel.display()))?;
            }
        }
        for (rel, data) in files {
            let path = self.point.join(rel);
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)?;
                    f.write_all_at(data, 0)?;
                    f.set_len(data.len() as u64)
                })
                .map_err(|e| format!("writing {}: {e}", rel.display()))?;
        }
        Ok(())
    }

    /// One qemu-io run in the point directory: filtered output and exit status.
    fn qemu_io(
        &self,
        backend: BackendKind,
        drive: &str,
        commands: &[String],
        read_only: bool,
    ) -> (String, i32) {
        let wl = self.wl();
        let (raw, status) = match backend {
            BackendKind::Builtin => {
                let inv = blockfault::qemu_io::Invocation {
                    format: Some(wl.format.clone()),
                    cache: wl.cache.clone(),
                    commands: commands.to_vec(),
                    drive: Some(drive.to_string()),
                    read_only,
                    skip_host_sync: true,
                    ..Default::default()
                };
                backend_builtin::qemu_io(&inv, &self.point)
            }
            BackendKind::Qemu => {
                let mut args = vec!["-f".to_string(), wl.format.clone()];
                if let Some(c) = &wl.cache {
                    args.extend(["-t".to_string(), c.clone()]);
                }
                if read_only {
                    args.push("-r".into());
                }
                for c in commands {
                    args.extend(["-c".to_string(), c.clone()]);
                }
                args.push(drive.to_string());
                backend_qemu::run("qemu-io", &args, &self.point)
            }
        };
        // Timing lines and scratch paths out, as in any golden (the dumps need no filtering).
        if commands.iter().all(|c| c.starts_with("read -v")) {
            return (raw, status);
        }
        (filters::apply(&raw, &self.point), status)
    }

    fn qemu_img(&self, backend: BackendKind, args: &[String]) -> (String, i32) {
        let (raw, status) = match backend {
            BackendKind::Builtin => backend_builtin::qemu_img(args, &self.point),
            BackendKind::Qemu => backend_qemu::run("qemu-img", args, &self.point),
        };
        (filters::apply(&raw, &self.point), status)
    }

    fn blkdebug_drive(&self) -> String {
        format!("blkdebug:{RULES}:{}", self.wl().image)
    }

    /// The sectors the workload touches, as the image holds them now (in the point directory).
    fn read_back(&self, backend: BackendKind) -> Result<BTreeMap<(bool, u64), Vec<u8>>, String> {
        let ranges = Model::ranges(&self.commands);
        if ranges.is_empty() {
            return Ok(BTreeMap::new());
        }
        if backend == BackendKind::Builtin {
            return self.read_back_in_process(&ranges);
        }
        let (out, _) = self.qemu_io(
            backend,
            &self.wl().image,
            &workload::read_commands(&ranges),
            true,
        );
        workload::parse_dumps(&ranges, &out)
    }

    /// The read-back on the builtin engine, through the library rather than qemu-io's `read
    /// -v` (whose hex dump, printed and parsed again, was most of a crash state's cost): the
    /// image opened read-only as qemu-io would open it, each range read as `read` / `read -b`.
    fn read_back_in_process(&self, ranges: &[(bool, u64, u64)]) -> Result<OldData, String> {
        use blockfault::block::{executor, io, node::OpenFlags, open};
        let wl = self.wl();
        let ctx = open::OpenContext {
            base_dir: self.point.clone(),
            console: blockfault::output::Console::new(Rc::new(RefCell::new(
                blockfault::output::Capture::default(),
            ))),
            flags: OpenFlags {
                read_only: true,
                unmap: true,
                ..OpenFlags::default()
            },
            skip_host_sync: true,
        };
        let root = open::open_drive(
            Some(&wl.image),
            open::Options::new(),
            Some(&wl.format),
            &ctx,
        )
        .map_err(|e| format!("reading back failed: can't open {}: {e}", wl.image))?;
        let ranges = ranges.to_vec();
        let read = executor::block_on(async move {
            let mut out = BTreeMap::new();
            for (vm, offset, len) in ranges {
                let mut buf = vec![0u8; len as usize];
                let r = if vm {
                    root.driver.load_vmstate(&root, offset, &mut buf).await
                } else {
                    io::preadv(&root, offset, &mut buf).await
                };
                r.map_err(|e| format!("reading back failed: {}", blockfault::errno::strerror(e)))?;
                for (i, sector) in buf.chunks(SECTOR as usize).enumerate() {
                    out.insert((vm, offset / SECTOR + i as u64), sector.to_vec());
                }
            }
            Ok(out)
        });
        read.unwrap_or_else(|| Err("reading back failed: the read never completed".into()))
    }

    /// The built-in checks and the scenario's own, on the image as the point left it.
    fn verify(&self, backend: BackendKind, model: &Model) -> Verdict {
        let mut v = Verdict::default();
        let wl = self.wl();
        if wl.format != "raw" {
            let args: Vec<String> = ["check", "-f", &wl.format, &wl.image]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let (out, status) = self.qemu_img(backend, &args);
            match status {
                0 => {}
                3 => v.leaked = leaked_clusters(&out),
                _ => v.problems.push((
                    Class::Corrupt,
                    format!("qemu-img check: exit {status}\n{}", indent(&out)),
                )),
            }
            v.check = Some((status, out));
        }
        match self.read_back(backend) {
            Ok(found) => {
                let bad = model.mismatches(&found);
                if !bad.is_empty() {
                    v.problems.push((
                        Class::LostData,
                        format!("data:\n{}", indent(&(bad.join("\n") + "\n"))),
                    ));
                }
            }
            Err(e) => v.problems.push((Class::LostData, format!("data: {e}"))),
        }
        if !self.sweep.checks.is_empty() {
            let (out, status) = self.qemu_io(backend, &wl.image, &self.sweep.checks, false);
            if status != 0 {
                v.problems.push((
                    Class::Checks,
                    format!("checks: exit {status}\n{}", indent(&out)),
                ));
            }
            v.checks = Some((status, out));
        }
        v
    }

    /// The clean image's data and each event's count (the builtin engine counts, whichever
    /// backend runs the points).
    fn fault_setup(&self) -> Result<(OldData, Vec<u64>), String> {
        self.reset(&self.snapshot)?;
        let old = self.read_back(self.backend)?;
        self.write_rules("")?;
        /// Stops counting even if the workload panics, so the thread's next scenario does
        /// not count.
        struct Counting;
        impl Drop for Counting {
            fn drop(&mut self) {
                blockfault::block::blkdebug::tally::finish();
            }
        }
        blockfault::block::blkdebug::tally::start();
        let counting = Counting;
        self.qemu_io(
            BackendKind::Builtin,
            &self.blkdebug_drive(),
            &self.wl().commands,
            false,
        );
        let counts = blockfault::block::blkdebug::tally::finish();
        drop(counting);
        Ok((old, counts))
    }

    fn header(&self, f: &Faults) -> String {
        let errnos: Vec<String> = f.errno.iter().map(u32::to_string).collect();
        let modes: Vec<&str> = f.mode.iter().map(|m| m.name()).collect();
        format!(
            "fault sweep: {} on {} ({}, cache {}); errno {}; {}",
            plural(self.commands.len(), "command"),
            self.wl().image,
            self.wl().format,
            self.wl().cache.as_deref().unwrap_or("writeback"),
            errnos.join(" "),
            modes.join(" ")
        )
    }

    fn events(f: &Faults) -> Vec<Event> {
        match &f.events {
            EventChoice::All => Event::ALL.to_vec(),
            EventChoice::List(names) => names
                .iter()
                .map(|n| Event::from_name(n).expect("checked at load"))
                .collect(),
        }
    }

    /// The fault sweep: every point one at a time, or seeded random runs.
    fn faults(&self, f: &Faults) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.header(f));
        let (old, counts) = match self.fault_setup() {
            Ok(x) => x,
            Err(e) => {
                let _ = writeln!(out, "[sweep failed: {e}]");
                return out;
            }
        };
        // The clean run, on the backend under test: what a sentinel run must print too.
        let clean = self.fault_point(&old, &[]);
        let _ = writeln!(out, "clean run: {}", clean.summary(self));
        let mut tally = Tally::default();
        if clean.class(&clean.output) >= Class::Leak {
            tally.fail("clean".into(), clean.details());
        }
        match &f.random {
            None => self.every_point(f, &old, &counts, &clean, &mut tally, &mut out),
            Some(r) => self.random_runs(f, r, &old, &counts, &clean, &mut tally, &mut out),
        }
        let _ = writeln!(out, "fault sweep: {}", tally.summary("point"));
        out.push_str(&tally.failures);
        out
    }

    fn every_point(
        &self,
        f: &Faults,
        old: &OldData,
        counts: &[u64],
        clean: &FaultPoint,
        tally: &mut Tally,
        out: &mut String,
    ) {
        let mut never = Vec::new();
        for event in Self::events(f) {
            let n = counts[event.index()];
            // The sentinel: occurrence n+1, sticky, must not exist.
            let sentinel = Fault {
                event,
                occurrence: n + 1,
                errno: f.errno[0],
                mode: Mode::Sticky,
            };
            let p = self.fault_point(old, &[sentinel]);
            if p.output != clean.output {
                tally.fail(
                    format!("{} (sentinel)", sentinel.id()),
                    format!(
                        "  the workload's output differs from the clean run: {event} has more than {n} occurrences here\n{}",
                        indent(&p.output)
                    ),
                );
            }
            if n == 0 {
                never.push(event.name());
                continue;
            }
            let _ = writeln!(out, "{event}: {}", plural(n as usize, "occurrence"));
            for occurrence in 1..=n {
                for &errno in &f.errno {
                    for &mode in &f.mode {
                        let fault = Fault {
                            event,
                            occurrence,
                            errno,
                            mode,
                        };
                        let p = self.fault_point(old, &[fault]);
                        tally.point(&fault.id(), &p, clean, self, out);
                    }
                }
            }
        }
        if !never.is_empty() {
            let _ = writeln!(out, "never raised: {}", never.join(" "));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn random_runs(
        &self,
        f: &Faults,
        r: &Random,
        old: &OldData,
        counts: &[u64],
        clean: &FaultPoint,
        tally: &mut Tally,
        out: &mut String,
    ) {
        let raised: Vec<Event> = Self::events(f)
            .into_iter()
            .filter(|e| counts[e.index()] > 0)
            .collect();
        let _ = writeln!(
            out,
            "random faults: seed {}, {}, 1 to {} faults a run, over {} raised",
            r.seed,
            plural(r.runs, "run"),
            r.faults,
            plural(raised.len(), "event")
        );
        if raised.is_empty() {
            return;
        }
        for run in 0..r.runs {
            let faults = draw(f, r, run, &raised, counts);
            let p = self.fault_point(old, &faults);
            tally.point(
                &format!("run {run} {}", faults_id(&faults)),
                &p,
                clean,
                self,
                out,
            );
        }
    }

    /// `--point ID`: that point alone, with everything it printed and everything the checks
    /// found, in full.
    fn replay_faults(&self, faults: &[Fault]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "point {} on {} ({}, cache {})",
            faults_id(faults),
            self.wl().image,
            self.wl().format,
            self.wl().cache.as_deref().unwrap_or("writeback")
        );
        let old = match self
            .reset(&self.snapshot)
            .and_then(|()| self.read_back(self.backend))
        {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(out, "[sweep failed: {e}]");
                return out;
            }
        };
        let clean = (!faults.is_empty()).then(|| self.fault_point(&old, &[]));
        let p = self.fault_point(&old, faults);
        let _ = writeln!(
            out,
            "blkdebug rules ({RULES}):\n{}",
            indent_all(&rules(faults))
        );
        let _ = writeln!(
            out,
            "workload output (exit {}):\n{}",
            p.status,
            indent_all(&p.output)
        );
        out.push_str(&p.verdict.full());
        let class = p.class(clean.as_ref().map_or(&p.output, |c| &c.output));
        let _ = writeln!(out, "point {}: {}", faults_id(faults), class.name());
        if class >= Class::Leak {
            let _ = writeln!(out, "FAILED {}", faults_id(faults));
        }
        out
    }

    fn write_rules(&self, rules: &str) -> Result<(), String> {
        std::fs::write(self.point.join(RULES), rules).map_err(|e| format!("{RULES}: {e}"))
    }

    /// Runs the workload from a fresh copy with these faults, then the checks.
    fn fault_point(&self, old: &OldData, faults: &[Fault]) -> FaultPoint {
        if let Err(e) = self
            .reset(&self.snapshot)
            .and_then(|()| self.write_rules(&rules(faults)))
        {
            return FaultPoint {
                output: String::new(),
                status: -1,
                attribution: Default::default(),
                verdict: Verdict {
                    problems: vec![(Class::Corrupt, e)],
                    ..Default::default()
                },
            };
        }
        let (output, status) = self.qemu_io(
            self.backend,
            &self.blkdebug_drive(),
            &self.wl().commands,
            false,
        );
        let attribution = workload::attribute(&self.commands, &output);
        let mut model = Model::new(old);
        for (i, c) in self.commands.iter().enumerate() {
            let clean_after = !attribution
                .stray
                .iter()
                .any(|(after, _)| after.is_some_and(|j| j >= i));
            let effect = match attribution.status[i] {
                Status::Done if self.writethrough() || clean_after => Effect::Applied,
                _ => Effect::Maybe,
            };
            model.apply(c, effect);
        }
        let verdict = self.verify(self.backend, &model);
        FaultPoint {
            output,
            status,
            attribution,
            verdict,
        }
    }
}

/// The sectors the workload touches, as they were before it: (vmstate?, sector) -> data.
type OldData = BTreeMap<(bool, u64), Vec<u8>>;

/// Run `run`'s faults: 1 to `r.faults` of them, each an event the workload raises, one of its
/// occurrences (counted, for the second fault on, from the previous fault), an errno and a mode.
fn draw(f: &Faults, r: &Random, run: usize, raised: &[Event], counts: &[u64]) -> Vec<Fault> {
    let mut rng = Rng::for_run(r.seed, run);
    let n = 1 + rng.below(r.faults as u64);
    (0..n)
        .map(|_| {
            let event = raised[rng.below(raised.len() as u64) as usize];
            Fault {
                event,
                occurrence: 1 + rng.below(counts[event.index()]),
                errno: f.errno[rng.below(f.errno.len() as u64) as usize],
                mode: f.mode[rng.below(f.mode.len() as u64) as usize],
            }
        })
        .collect()
}

/// What a point did, worst last: the class a point counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// printed what the clean run printed; image clean, data as promised
    Quiet,
    /// an error surfaced (the output differs from the clean run); image clean
    Error,
    /// `qemu-img check` found leaked clusters only (not a failure: leaks are harmless)
    Leak,
    /// the scenario's own checks failed
    Checks,
    /// a sector holds neither its old data nor what a command wrote, or an acknowledged write
    /// is missing
    LostData,
    /// `qemu-img check` found corruption (or the point could not run)
    Corrupt,
}

impl Class {
    const ALL: [Class; 6] = [
        Class::Quiet,
        Class::Error,
        Class::Leak,
        Class::Checks,
        Class::LostData,
        Class::Corrupt,
    ];

    fn name(self) -> &'static str {
        match self {
            Class::Quiet => "quiet",
            Class::Error => "error",
            Class::Leak => "leak",
            Class::Checks => "checks failed",
            Class::LostData => "lost data",
            Class::Corrupt => "corrupt",
        }
    }

    fn is_failure(self) -> bool {
        self > Class::Leak
    }
}

/// Counts per class, and each failure in full.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<Class, usize>,
    failures: String,
}

impl Tally {
    /// Counts a fault point and prints its line unless it was quiet.
    fn point(&mut self, id: &str, p: &FaultPoint, clean: &FaultPoint, ctx: &Ctx, out: &mut String) {
        let class = p.class(&clean.output);
        *self.counts.entry(class).or_default() += 1;
        if class != Class::Quiet {
            let _ = writeln!(out, "  {id}: {}", p.summary(ctx));
        }
        if class.is_failure() {
            self.add_failure(id, p.details());
        }
    }

    /// A failure outside the points (the clean run, a sentinel).
    fn fail(&mut self, id: String, text: String) {
        self.add_failure(&id, text);
    }

    fn add_failure(&mut self, id: &str, text: String) {
        let _ = writeln!(self.failures, "FAILED {id}:\n{text}");
    }

    /// `120 points: 10 quiet, 100 error, ...`: every class, so that a golden shows the zeros.
    fn summary(&self, what: &str) -> String {
        let total: usize = self.counts.values().sum();
        let per: Vec<String> = Class::ALL
            .iter()
            .map(|c| format!("{} {}", self.counts.get(c).copied().unwrap_or(0), c.name()))
            .collect();
        format!("{}: {}", plural(total, what), per.join(", "))
    }
}

struct FaultPoint {
    output: String,
    status: i32,
    attribution: workload::Attribution,
    verdict: Verdict,
}

impl FaultPoint {
    /// One line: what the workload reported, how the image came out.
    fn summary(&self, ctx: &Ctx) -> String {
        let mut parts = Vec::new();
        for (i, s) in self.attribution.status.iter().enumerate() {
            if let Status::Failed(e) = s {
                parts.push(format!("`{}` failed: {e}", ctx.wl().commands[i]));
            }
        }
        if !self.attribution.stray.is_empty() {
            parts.push(format!(
                "{} more",
                plural(self.attribution.stray.len(), "line")
            ));
        }
        parts.push(format!("exit {}", self.status));
        let mut line = format!("{}; {}", parts.join("; "), self.verdict.image());
        for (class, _) in &self.verdict.problems {
            let _ = write!(line, "; {}", class.name());
        }
        line
    }

    /// Its class, against what the clean run printed.
    fn class(&self, clean_output: &str) -> Class {
        self.verdict.class().max(if self.output == clean_output {
            Class::Quiet
        } else {
            Class::Error
        })
    }

    /// What a failure shows in the golden: the problems and the workload's output.
    fn details(&self) -> String {
        format!(
            "{}  workload output (exit {}):\n{}",
            self.verdict
                .problems
                .iter()
                .map(|(_, p)| format!("  {}\n", p.trim_end()))
                .collect::<String>(),
            self.status,
            indent(&self.output)
        )
    }
}

/// `N leaked clusters were found on the image.`
fn leaked_clusters(check: &str) -> u64 {
    check
        .lines()
        .find_map(|l| l.strip_suffix(" leaked clusters were found on the image."))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// The most lines of a program's output a failure shows (a check of a badly broken image lists
/// every cluster).
const MAX_SHOWN_LINES: usize = 16;

fn indent(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: String = lines
        .iter()
        .take(MAX_SHOWN_LINES)
        .map(|l| format!("    | {l}\n"))
        .collect();
    if lines.len() > MAX_SHOWN_LINES {
        let rest = &lines[MAX_SHOWN_LINES..];
        let _ = writeln!(
            out,
            "    | ... {} more, the last:",
            plural(rest.len(), "line")
        );
        for l in &rest[rest.len().saturating_sub(4)..] {
            let _ = writeln!(out, "    | {l}");
        }
    }
    out
}

/// All of `text`, indented, for a replay.
fn indent_all(text: &str) -> String {
    text.lines().map(|l| format!("    | {l}\n")).collect()
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Every regular file under `dir`, relative path -> contents.
fn read_tree(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>, String> {
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let path = entry.path();
            let ft = entry.file_type().map_err(|e| e.to_string())?;
            if ft.is_dir() {
                pending.push(path);
            } else if ft.is_file() {
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                total += entry.metadata().map_err(|e| e.to_string())?.len();
                if total > MAX_TREE_BYTES {
                    return Err(format!(
                        "the scratch directory holds more than {} MiB: a sweep copies it for every point (use smaller or sparser images)",
                        MAX_TREE_BYTES >> 20
                    ));
                }
                let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", rel.display()))?;
                out.insert(rel, data);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_count_occurrences_with_a_chain() {
        let r = rules(&[Fault {
            event: Event::from_name("l2_update").unwrap(),
            occurrence: 2,
            errno: 28,
            mode: Mode::Sticky,
        }]);
        assert_eq!(
            r,
            "[inject-error]\nevent = \"l2_update\"\nstate = \"2\"\nerrno = \"28\"\nonce = \"off\"\n\
             [set-state]\nevent = \"l2_update\"\nstate = \"1\"\nnew_state = \"2\"\n\
             [set-state]\nevent = \"l2_update\"\nstate = \"2\"\nnew_state = \"3\"\n"
        );
    }

    #[test]
    fn classes_order_by_harm_and_every_one_is_counted() {
        let mut t = Tally::default();
        *t.counts.entry(Class::Leak).or_default() += 2;
        *t.counts.entry(Class::Corrupt).or_default() += 1;
        assert_eq!(
            t.summary("point"),
            "3 points: 0 quiet, 0 error, 2 leak, 0 checks failed, 0 lost data, 1 corrupt"
        );
        let v = Verdict {
            leaked: 3,
            problems: vec![(Class::LostData, String::new())],
            ..Default::default()
        };
        assert_eq!(v.class(), Class::LostData);
        assert!(!Class::Leak.is_failure() && Class::Checks.is_failure());
    }

    #[test]
    fn long_output_is_cut_keeping_its_end() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let shown = indent(&text);
        assert!(shown.contains("| line 16\n    | ... 14 lines more, the last:\n    | line 27\n"));
        assert!(shown.ends_with("| line 30\n") && !shown.contains("line 17\n"));
    }

    #[test]
    fn leaks_are_read_from_check_output() {
        assert_eq!(
            leaked_clusters(
                "Leaked cluster 3 refcount=1 reference=0\n\n2 leaked clusters were found on the image.\n"
            ),
            2
        );
        assert_eq!(leaked_clusters("No errors were found on the image.\n"), 0);
    }
}
