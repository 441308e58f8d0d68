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

use crate::backend_builtin;
use crate::backend_qemu;
use crate::filters;
use crate::scenario::BackendKind;
use crate::sweep_spec::workload;
use crate::sweep_spec::{Crash, EventChoice, Faults, Mode, Sweep, Workload};
use blockfault::block::blkdebug::events::Event;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use workload::{Command, Effect, Model, Status};

/// Runs the sweep in `dir` (files, images and steps done); returns its summary for the golden.
pub fn run(s: &Sweep, dir: &Path, backend: BackendKind) -> String {
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
    problems: Vec<String>,
}

impl Verdict {
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

    /// Puts the pre-workload files back in the point directory.
    fn reset(&self, files: &BTreeMap<PathBuf, Vec<u8>>) -> Result<(), String> {
        let _ = std::fs::remove_dir_all(&self.point);
        for (rel, data) in files {
            let path = self.point.join(rel);
            path.parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&path, data))
                .map_err(|e| format!("writing {}: {e}", rel.display()))?;
        }
        std::fs::create_dir_all(&self.point).map_err(|e| format!("{}: {e}", POINT_DIR))
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
        let (out, _) = self.qemu_io(
            backend,
            &self.wl().image,
            &workload::read_commands(&ranges),
            true,
        );
        workload::parse_dumps(&ranges, &out)
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
                _ => v
                    .problems
                    .push(format!("qemu-img check: exit {status}\n{}", indent(&out))),
            }
        }
        match self.read_back(backend) {
            Ok(found) => {
                let bad = model.mismatches(&found);
                if !bad.is_empty() {
                    v.problems
                        .push(format!("data:\n{}", indent(&(bad.join("\n") + "\n"))));
                }
            }
            Err(e) => v.problems.push(format!("data: {e}")),
        }
        if !self.sweep.checks.is_empty() {
            let (out, status) = self.qemu_io(backend, &wl.image, &self.sweep.checks, false);
            if status != 0 {
                v.problems
                    .push(format!("checks: exit {status}\n{}", indent(&out)));
            }
        }
        v
    }

    /// The fault sweep.
    fn faults(&self, f: &Faults) -> String {
        let mut out = String::new();
        let errnos: Vec<String> = f.errno.iter().map(u32::to_string).collect();
        let modes: Vec<&str> = f.mode.iter().map(|m| m.name()).collect();
        let _ = writeln!(
            out,
            "fault sweep: {} on {} ({}, cache {}); errno {}; {}",
            plural(self.commands.len(), "command"),
            self.wl().image,
            self.wl().format,
            self.wl().cache.as_deref().unwrap_or("writeback"),
            errnos.join(" "),
            modes.join(" ")
        );
        let setup = || -> Result<_, String> {
            self.reset(&self.snapshot)?;
            let old = self.read_back(self.backend)?;
            // Counting: the builtin engine, whichever backend runs the points.
            self.write_rules("")?;
            /// Stops counting even if the workload panics, so the thread's next scenario
            /// does not count.
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
        };
        let (old, counts) = match setup() {
            Ok(x) => x,
            Err(e) => {
                let _ = writeln!(out, "[sweep failed: {e}]");
                return out;
            }
        };
        // The clean run, on the backend under test: what a sentinel run must print too.
        let clean = self.fault_point(&old, "");
        let _ = writeln!(out, "clean run: {}", clean.summary(self));
        let mut failures = Vec::new();
        if !clean.verdict.problems.is_empty() {
            failures.push(("clean run".to_string(), clean.clone_text()));
        }
        let events: Vec<Event> = match &f.events {
            EventChoice::All => Event::ALL.to_vec(),
            EventChoice::List(names) => names
                .iter()
                .map(|n| Event::from_name(n).expect("checked at load"))
                .collect(),
        };
        let (mut tried, mut never) = (0usize, Vec::new());
        for event in events {
            let n = counts[event.index()];
            // The sentinel: occurrence n+1, sticky, must not exist.
            let sentinel = self.fault_point(&old, &rules(event, n + 1, f.errno[0], Mode::Sticky));
            if sentinel.output != clean.output {
                failures.push((
                    format!("{event} occurrence {} (sentinel)", n + 1),
                    format!(
                        "the workload's output differs from the clean run: {} has more than {n} occurrences here\n{}",
                        event,
                        indent(&sentinel.output)
                    ),
                ));
            }
            if n == 0 {
                never.push(event.name());
                continue;
            }
            let mut groups: BTreeMap<String, usize> = BTreeMap::new();
            let mut order = Vec::new();
            for occurrence in 1..=n {
                for &errno in &f.errno {
                    for &mode in &f.mode {
                        tried += 1;
                        let p = self.fault_point(&old, &rules(event, occurrence, errno, mode));
                        let label = format!("{event} #{occurrence} errno {errno} {}", mode.name());
                        if !p.verdict.problems.is_empty() {
                            failures.push((label, p.clone_text()));
                            continue;
                        }
                        let key = p.summary(self);
                        if !groups.contains_key(&key) {
                            order.push(key.clone());
                        }
                        *groups.entry(key).or_default() += 1;
                    }
                }
            }
            let _ = writeln!(out, "{event}: {}", plural(n as usize, "occurrence"));
            for key in order {
                let _ = writeln!(out, "  {}x {key}", groups[&key]);
            }
        }
        if !never.is_empty() {
            let _ = writeln!(out, "never raised: {}", never.join(" "));
        }
        let _ = writeln!(
            out,
            "fault sweep: {} tried, {} failed",
            plural(tried, "point"),
            failures.len()
        );
        for (label, text) in failures {
            let _ = writeln!(out, "FAILED {label}:\n{text}");
        }
        out
    }

    fn write_rules(&self, rules: &str) -> Result<(), String> {
        std::fs::write(self.point.join(RULES), rules).map_err(|e| format!("{RULES}: {e}"))
    }

    /// Runs the workload from a fresh copy with these blkdebug rules, then the checks.
    fn fault_point(&self, old: &BTreeMap<(bool, u64), Vec<u8>>, rules: &str) -> FaultPoint {
        if let Err(e) = self
            .reset(&self.snapshot)
            .and_then(|()| self.write_rules(rules))
        {
            return FaultPoint {
                output: String::new(),
                status: -1,
                attribution: Default::default(),
                verdict: Verdict {
                    leaked: 0,
                    problems: vec![e],
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
        format!("{}; {}", parts.join("; "), self.verdict.image())
    }

    fn clone_text(&self) -> String {
        format!(
            "{}  workload output (exit {}):\n{}",
            self.verdict
                .problems
                .iter()
                .map(|p| format!("  {}\n", p.trim_end()))
                .collect::<String>(),
            self.status,
            indent(&self.output)
        )
    }
}

/// The blkdebug rules failing occurrence `n` of `event`: a set-state chain counting the
/// occurrences (1 -> 2 -> ... -> n+1, so that later occurrences arm nothing) and an
/// inject-error rule limited to state n.
fn rules(event: Event, n: u64, errno: u32, mode: Mode) -> String {
    let once = if mode == Mode::Once { "on" } else { "off" };
    let mut s = format!(
        "[inject-error]\nevent = \"{event}\"\nstate = \"{n}\"\nerrno = \"{errno}\"\nonce = \"{once}\"\n"
    );
    for k in 1..=n {
        let _ = write!(
            s,
            "[set-state]\nevent = \"{event}\"\nstate = \"{k}\"\nnew_state = \"{}\"\n",
            k + 1
        );
    }
    s
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
        let r = rules(Event::from_name("l2_update").unwrap(), 2, 28, Mode::Sticky);
        assert_eq!(
            r,
            "[inject-error]\nevent = \"l2_update\"\nstate = \"2\"\nerrno = \"28\"\nonce = \"off\"\n\
             [set-state]\nevent = \"l2_update\"\nstate = \"1\"\nnew_state = \"2\"\n\
             [set-state]\nevent = \"l2_update\"\nstate = \"2\"\nnew_state = \"3\"\n"
        );
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
