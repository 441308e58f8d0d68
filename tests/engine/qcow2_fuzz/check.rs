//! Running a case: real qemu-img/qemu-io and ours on the mutated image, each step in its own
//! copy of the files, and what went wrong on our side.

use super::case::Case;
use super::exec::{self, Exit, Run};
use super::seeds::Base;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Peak resident memory allowed to one run of ours.
pub const MEMORY_LIMIT_KIB: u64 = 256 << 10;
/// Address space given to ours: a backstop that stops a runaway allocation early (virtual
/// mappings — thread stacks, malloc arenas — count, so it sits well above the resident limit).
const ADDRESS_SPACE: u64 = 1 << 30;
/// Ours may take 10 times as long as QEMU did, but never less than this (process start-up on a
/// loaded machine dwarfs QEMU's few milliseconds).
pub const DEFAULT_TIME_FLOOR: Duration = Duration::from_secs(3);
/// QEMU itself is given this long.
const QEMU_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// exit 101 or a Rust panic message
    Panic,
    /// killed by a signal (not an allocation failure)
    Crash,
    /// over 10x QEMU's time (or the floor)
    Time,
    /// over the memory limit, or an allocation failed at the address-space backstop
    Memory,
    /// a read-only step changed the image or a file beside it
    WroteReadOnly,
    /// `check`: exit code or error/leak counts differ from qemu-img's
    CheckDisagrees,
    /// `check -r`: exit code or counts differ, or qemu-img check of the repaired images differs
    RepairDisagrees,
    /// `info`: exit code or JSON differs
    InfoDisagrees,
    /// QEMU died of a signal and ours did not stop as the README says it stops there (one
    /// `blockfault: ` line on stderr, exit 1)
    CrashPolicy,
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: Kind,
    /// which step: `check`, `check -r all`, `check after -r leaks`, `info`, `io -r`, `io`
    pub step: &'static str,
    pub detail: String,
    /// the step's argument list, for the repro script (`qemu-img` or `qemu-io`)
    pub program: &'static str,
    pub args: Vec<String>,
    pub qemu: Option<Run>,
    pub ours: Run,
}

/// What a case did, besides failures: the comparisons made.
#[derive(Default, Debug)]
pub struct Outcome {
    pub failures: Vec<Failure>,
    /// (step, agreed) per comparison made
    pub compared: Vec<(&'static str, bool)>,
    /// qemu-img/qemu-io crashed or hung at a step
    pub qemu_trouble: Vec<String>,
}

pub struct Tools {
    pub qemu_img: PathBuf,
    pub qemu_io: PathBuf,
    pub ours: PathBuf,
    pub time_floor: Duration,
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn write_files(dir: &Path, image: &[u8], base: &Base) {
    std::fs::create_dir_all(dir).expect("case dir");
    std::fs::write(dir.join("img.qcow2"), image).expect("write image");
    for (name, bytes) in &base.aux {
        std::fs::write(dir.join(name), bytes).expect("write aux file");
    }
}

fn files_unchanged(dir: &Path, image: &[u8], base: &Base) -> Result<(), String> {
    let same = |name: &str, want: &[u8]| {
        let got = std::fs::read(dir.join(name)).unwrap_or_default();
        if got == want {
            Ok(())
        } else {
            Err(format!(
                "{name} changed ({} -> {} bytes)",
                want.len(),
                got.len()
            ))
        }
    };
    same("img.qcow2", image)?;
    for (name, bytes) in &base.aux {
        same(name, bytes)?;
    }
    Ok(())
}

/// The counts `qemu-img check --output=json` reports (absent = 0).
pub fn check_counts(json: &str) -> Option<[i64; 5]> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_i64()).unwrap_or(0);
    Some([
        n("corruptions"),
        n("leaks"),
        n("check-errors"),
        n("corruptions-fixed"),
        n("leaks-fixed"),
    ])
}

fn counts_text(c: Option<[i64; 5]>) -> String {
    match c {
        Some([c, l, e, cf, lf]) => format!(
            "corruptions {c}, leaks {l}, check-errors {e}, corruptions-fixed {cf}, leaks-fixed {lf}"
        ),
        None => "no JSON".into(),
    }
}

struct Ctx<'a> {
    tools: &'a Tools,
    out: Outcome,
}

impl Ctx<'_> {
    fn qemu(&mut self, program: &'static str, step: &'static str, a: &[String], dir: &Path) -> Run {
        let prog = if program == "qemu-io" {
            &self.tools.qemu_io
        } else {
            &self.tools.qemu_img
        };
        let r = exec::run(prog, a, dir, QEMU_LIMIT, None).expect("running QEMU");
        if !matches!(r.exit, Exit::Code(_)) {
            self.out
                .qemu_trouble
                .push(format!("{program} at {step}: {}", r.describe_exit()));
        }
        r
    }

    /// Runs ours as `program` (qemu-img or qemu-io) and records a panic, crash, timeout or
    /// memory failure; `qemu` is the same step's QEMU run (its time sets the limit).
    fn ours(
        &mut self,
        program: &'static str,
        step: &'static str,
        a: &[String],
        dir: &Path,
        qemu: &Run,
    ) -> Run {
        let qemu_time = if matches!(qemu.exit, Exit::Code(_)) {
            qemu.time
        } else {
            Duration::ZERO
        };
        let limit = (qemu_time * 10).max(self.tools.time_floor);
        let mut full = vec![if program == "qemu-io" { "io" } else { "img" }.to_string()];
        full.extend_from_slice(a);
        let r = exec::run(&self.tools.ours, &full, dir, limit, Some(ADDRESS_SPACE))
            .expect("running blockfault");
        let alloc_failed = r.stderr.contains("memory allocation of");
        let problem = match r.exit {
            _ if alloc_failed => Some((
                Kind::Memory,
                "an allocation failed under the address-space backstop".to_string(),
            )),
            Exit::Code(101) => Some((Kind::Panic, "exit 101".to_string())),
            _ if r.stderr.contains("panicked at") => {
                Some((Kind::Panic, "panic message".to_string()))
            }
            Exit::Signal(s) => Some((Kind::Crash, format!("signal {s}"))),
            Exit::TimedOut => Some((
                Kind::Time,
                format!(
                    "killed after {:.1} s (QEMU took {:.3} s, {})",
                    r.time.as_secs_f64(),
                    qemu.time.as_secs_f64(),
                    qemu.describe_exit()
                ),
            )),
            Exit::Code(_) if r.max_rss_kib > MEMORY_LIMIT_KIB => Some((
                Kind::Memory,
                format!("peak resident memory {} MiB", r.max_rss_kib >> 10),
            )),
            Exit::Code(c) if matches!(qemu.exit, Exit::Signal(_)) && !stops_by_policy(c, &r) => {
                Some((
                    Kind::CrashPolicy,
                    format!(
                        "QEMU: {}; ours: exit {c} without one 'blockfault: ' line",
                        qemu.describe_exit()
                    ),
                ))
            }
            Exit::Code(_) => None,
        };
        if let Some((kind, detail)) = problem {
            self.fail(kind, step, detail, program, a, Some(qemu), &r);
        }
        r
    }

    #[allow(clippy::too_many_arguments)]
    fn fail(
        &mut self,
        kind: Kind,
        step: &'static str,
        detail: String,
        program: &'static str,
        a: &[String],
        qemu: Option<&Run>,
        ours: &Run,
    ) {
        self.out.failures.push(Failure {
            kind,
            step,
            detail,
            program,
            args: a.to_vec(),
            qemu: qemu.cloned(),
            ours: ours.clone(),
        });
    }

    /// Both ran to an exit code: compare exit codes and, where both printed JSON, the counts.
    fn compare_check(&mut self, kind: Kind, step: &'static str, a: &[String], q: &Run, o: &Run) {
        let (Some(qc), Some(oc)) = (q.code(), o.code()) else {
            return;
        };
        if oc == 101 {
            return;
        }
        let (qn, on) = (check_counts(&q.stdout), check_counts(&o.stdout));
        let agreed = qc == oc && (qn.is_none() || on.is_none() || qn == on);
        self.out.compared.push((step, agreed));
        if !agreed {
            let detail = format!(
                "qemu-img: exit {qc}, {}; ours: exit {oc}, {}",
                counts_text(qn),
                counts_text(on)
            );
            self.fail(kind, step, detail, "qemu-img", a, Some(q), o);
        }
    }
}

/// Where QEMU crashes, ours stops with exit 1 and exactly one `blockfault: ` line on stderr.
fn stops_by_policy(code: i32, r: &Run) -> bool {
    code == 1
        && r.stderr
            .lines()
            .filter(|l| l.starts_with("blockfault: "))
            .count()
            == 1
}

pub fn execute(case: &Case, bases: &[Base], tools: &Tools) -> Outcome {
    let base = &bases[case.base];
    let image = case.image(bases);
    let tmp = crate::support::tempdir().expect("tempdir");
    let mut cx = Ctx {
        tools,
        out: Outcome::default(),
    };
    let fresh = |name: &str| {
        let d = tmp.path().join(name);
        write_files(&d, &image, base);
        d
    };

    // read-only steps, all on one copy that must not change
    let ro = fresh("ro");
    let check = args(&["check", "--output=json", "-f", "qcow2", "img.qcow2"]);
    let q = cx.qemu("qemu-img", "check", &check, &ro);
    let o = cx.ours("qemu-img", "check", &check, &ro, &q);
    cx.compare_check(Kind::CheckDisagrees, "check", &check, &q, &o);

    let info = args(&["info", "--output=json", "-f", "qcow2", "img.qcow2"]);
    let q = cx.qemu("qemu-img", "info", &info, &ro);
    let o = cx.ours("qemu-img", "info", &info, &ro, &q);
    if let (Some(qc), Some(oc)) = (q.code(), o.code())
        && oc != 101
    {
        let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
        let agreed = qc == oc && (qc != 0 || json(&q.stdout) == json(&o.stdout));
        cx.out.compared.push(("info", agreed));
        if !agreed {
            let detail = if qc == oc {
                json_difference(&q.stdout, &o.stdout)
            } else {
                format!("qemu-img exit {qc}, ours exit {oc}")
            };
            cx.fail(
                Kind::InfoDisagrees,
                "info",
                detail,
                "qemu-img",
                &info,
                Some(&q),
                &o,
            );
        }
    }

    let read_only = args(&[
        "-r",
        "-f",
        "qcow2",
        "-c",
        "read 0 64k",
        "-c",
        "read -b 0 4k",
        "-c",
        "map",
        "img.qcow2",
    ]);
    let q = cx.qemu("qemu-io", "io -r", &read_only, &ro);
    let o = cx.ours("qemu-io", "io -r", &read_only, &ro, &q);
    if let Err(what) = files_unchanged(&ro, &image, base) {
        cx.fail(
            Kind::WroteReadOnly,
            "io -r",
            format!("after check, info and io -r on the same files: {what}"),
            "qemu-io",
            &read_only,
            None,
            &o,
        );
    }

    // repair, then the real qemu-img's verdict on both repaired images
    let (step, after): (&'static str, &'static str) = match case.repair {
        "leaks" => ("check -r leaks", "check after -r leaks"),
        _ => ("check -r all", "check after -r all"),
    };
    let repair = args(&[
        "check",
        "-r",
        case.repair,
        "--output=json",
        "-f",
        "qcow2",
        "img.qcow2",
    ]);
    let (qd, od) = (fresh("repair-q"), fresh("repair-o"));
    let q = cx.qemu("qemu-img", step, &repair, &qd);
    let o = cx.ours("qemu-img", step, &repair, &od, &q);
    let failures_before = cx.out.failures.len();
    cx.compare_check(Kind::RepairDisagrees, step, &repair, &q, &o);
    // the repaired images are compared only where the repairs agreed (else that is the finding)
    if q.code().is_some()
        && o.code().is_some_and(|c| c != 101)
        && cx.out.failures.len() == failures_before
    {
        let q2 = cx.qemu("qemu-img", after, &check, &qd);
        let o2 = cx.qemu("qemu-img", after, &check, &od);
        cx.compare_check(Kind::RepairDisagrees, after, &repair, &q2, &o2);
    }

    // a read-write session
    let mut session = args(&["-f", "qcow2"]);
    for c in &case.session {
        session.push("-c".into());
        session.push(c.clone());
    }
    session.push("img.qcow2".into());
    let (qd, od) = (fresh("io-q"), fresh("io-o"));
    let q = cx.qemu("qemu-io", "io", &session, &qd);
    cx.ours("qemu-io", "io", &session, &od, &q);
    cx.out
}

/// The top-level keys whose values differ between two `info --output=json` texts.
fn json_difference(qemu: &str, ours: &str) -> String {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    let (q, o) = (parse(qemu), parse(ours));
    let empty = serde_json::Map::new();
    let (qm, om) = (
        q.as_object().unwrap_or(&empty),
        o.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = qm.keys().chain(om.keys()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| qm.get(*k) != om.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| {
                let mut t = v.map_or("absent".into(), |v| v.to_string());
                if t.len() > 300 {
                    let mut end = 300;
                    while !t.is_char_boundary(end) {
                        end -= 1;
                    }
                    t.truncate(end);
                    t += "...";
                }
                t
            };
            format!("{k}: qemu-img {} ours {}", show(qm.get(k)), show(om.get(k)))
        })
        .collect();
    format!("the JSON differs: {}", diffs.join("; "))
}
