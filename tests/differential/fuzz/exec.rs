//! Running one case: the image is created once with the real `qemu-img create` and copied into
//! a fresh scratch directory for every run; qemu-io runs several times, our engine twice.

use super::case::FuzzCase;
use crate::harness::{filter, run_ours, run_qemu_with_timeout};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// qemu-io is killed after this long; a case runs in milliseconds unless it hangs (hangs are
/// common: a synchronous request at a breakpoint), so this is what a hang costs (once when ours
/// hangs there too, twice otherwise, and a longer confirmation before blaming ours).
const QEMU_TIMEOUT: Duration = Duration::from_millis(1000);
/// Before calling a hang that our engine does not report a difference, QEMU gets this long.
const QEMU_CONFIRM_TIMEOUT: Duration = Duration::from_secs(20);
/// `timeout -s KILL` makes the status 128 + 9.
const KILLED_BY_TIMEOUT: i32 = 137;
/// Extra qemu-io runs a difference must agree with before it is reported.
const CONFIRM_RUNS: usize = 8;
const OURS_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run leaves behind.
#[derive(PartialEq, Clone, Debug)]
pub struct Outcome {
    pub output: String,
    pub status: i32,
    pub files: BTreeMap<String, FileState>,
}

/// A file afterwards: its length and a digest, and its bytes when small enough to keep (a
/// preallocated image can be hundreds of MiB, and a case keeps a dozen outcomes).
#[derive(PartialEq, Clone, Debug)]
pub struct FileState {
    pub len: u64,
    pub digest: u64,
    pub bytes: Option<Vec<u8>>,
}

/// Files up to this size are kept whole, for reporting where they differ.
const KEEP_BYTES: u64 = 4 << 20;

/// Every file of `dir`, read in pieces.
fn snapshot(dir: &Path) -> BTreeMap<String, FileState> {
    use std::hash::Hasher;
    use std::io::{Read, Seek};
    let mut files = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mut f = fs::File::open(e.path()).unwrap();
        let len = f.metadata().unwrap().len();
        // SipHash with fixed keys: the same bytes give the same digest within a run.
        let mut hasher = std::hash::DefaultHasher::new();
        let mut bytes = (len <= KEEP_BYTES).then(Vec::new);
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK];
        let mut buf = vec![0u8; CHUNK];
        let mut pos = 0u64;
        loop {
            // A sparse image (blkverify's raw reference can be gigabytes) is mostly holes:
            // chunks before the next data are zero without reading them.
            if bytes.is_none() {
                let next_data = next_data(&f, pos).unwrap_or(len);
                let skip = (next_data.min(len) - pos) / CHUNK as u64;
                for _ in 0..skip {
                    hasher.write_u8(0);
                }
                pos += skip * CHUNK as u64;
                f.seek(std::io::SeekFrom::Start(pos)).unwrap();
            }
            // Whole chunks, so that the digest does not depend on how reads split the file.
            let mut n = 0;
            while n < CHUNK {
                match f.read(&mut buf[n..]).unwrap() {
                    0 => break,
                    k => n += k,
                }
            }
            if n == 0 {
                break;
            }
            // Big images are mostly zeroes (holes, preallocation): a zero chunk is compared,
            // not hashed, which the unoptimised test build does far faster.
            if buf[..n] == zeros[..n] {
                hasher.write_u8(0);
            } else {
                hasher.write_u8(1);
                hasher.write(&buf[..n]);
            }
            if let Some(b) = &mut bytes {
                b.extend_from_slice(&buf[..n]);
            }
            pos += n as u64;
            if n < CHUNK {
                break;
            }
        }
        files.insert(
            e.file_name().to_string_lossy().into_owned(),
            FileState {
                len,
                digest: hasher.finish(),
                bytes,
            },
        );
    }
    files
}

/// Where the next data at or after `pos` starts (`SEEK_DATA`); None past the last data.
fn next_data(f: &fs::File, pos: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor we own; it only moves the file offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
    (r >= 0).then_some(r as u64)
}

/// How a case ended.
pub enum Verdict {
    /// both engines agree
    Same,
    /// qemu-io gave different results on identical runs: discarded
    QemuUnstable,
    /// qemu-io hung (killed after the timeout) and ours said so as it should
    QemuHang,
    /// qemu-io died by a signal and ours stopped with one clear line as it should
    QemuCrash(i32),
    /// `qemu-img create` refused the image (a generator slip, not a finding)
    SetupFailed(String),
    Differs(Difference),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// output, exit status or files differ
    Differs,
    /// qemu-io hangs, ours carries on or says something else
    HangNotReported,
    /// qemu-io crashes, ours carries on or says something else
    CrashNotReported,
    /// our two runs differ
    OursNondeterministic,
    /// our engine panicked or did not finish
    OursBroken,
}

impl Kind {
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Differs => "differs from qemu-io",
            Kind::HangNotReported => "qemu-io hangs; ours does not stop with the hang line",
            Kind::CrashNotReported => "qemu-io crashes; ours does not stop with one clear line",
            Kind::OursNondeterministic => "our engine gives different results on two runs",
            Kind::OursBroken => "our engine panicked or did not finish",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Difference {
    pub kind: Kind,
    /// what differs, as text (diffs, statuses, files)
    pub details: String,
    /// the first differing line of each side, for grouping findings
    pub first_lines: (String, String),
    pub qemu: Outcome,
    pub ours: Option<Outcome>,
}

/// Runs `case`, with qemu-io `qemu_runs` times (at least 2; once for a hang both agree on) and
/// ours twice. `quick` (for the
/// minimiser) stops after one run of each when they agree.
pub fn execute(case: &FuzzCase, qemu_runs: usize, quick: bool) -> Verdict {
    let origin = tempfile::tempdir().unwrap();
    if let Err(e) = create_images(case, origin.path()) {
        return Verdict::SetupFailed(e);
    }
    for (name, content) in case.files() {
        fs::write(origin.path().join(name), content).unwrap();
    }
    let args = case.args();
    let qemu_once = |timeout: Duration| {
        in_scratch(origin.path(), |d| {
            Ok(run_qemu_with_timeout(d, &args, timeout))
        })
        .expect("qemu-io runs")
    };
    let ours_once = || in_scratch(origin.path(), |d| run_ours_guarded(d, &args));
    let first = qemu_once(QEMU_TIMEOUT);
    let ours = match ours_once() {
        Ok(o) => o,
        Err(e) => return broken(e, first),
    };
    let verdict = compare(&first, &ours);
    if quick && !matches!(verdict, Verdict::Differs(_)) {
        return verdict;
    }
    // A hang costs the whole timeout: one run is enough when ours hangs there too (ours is
    // deterministic; a qemu-io merely slowed down by load past the timeout, where ours wrongly
    // hangs, is the rare miss this buys), else confirm it once.
    let runs = match (&verdict, first.status == KILLED_BY_TIMEOUT) {
        (Verdict::QemuHang, true) => 1,
        (_, true) => 2,
        _ => qemu_runs.max(2),
    };
    for _ in 1..runs {
        if qemu_once(QEMU_TIMEOUT) != first {
            return Verdict::QemuUnstable;
        }
    }
    if !quick {
        match ours_once() {
            Ok(again) if again == ours => {}
            Ok(again) => {
                return Verdict::Differs(Difference {
                    kind: Kind::OursNondeterministic,
                    first_lines: first_difference(&ours.output, &again.output),
                    details: describe_differences(&ours, &again, "first run", "second run"),
                    qemu: first,
                    ours: Some(ours),
                });
            }
            Err(e) => return broken(e, first),
        }
    }
    // QEMU's thread pool makes rare orders (compressed clusters of one write allocated out of
    // order, aio completions) that a few runs agree on by chance: a difference must survive more.
    if !quick
        && let Verdict::Differs(d) = &verdict
        && d.kind == Kind::Differs
    {
        for _ in 0..CONFIRM_RUNS {
            if qemu_once(QEMU_TIMEOUT) != first {
                return Verdict::QemuUnstable;
            }
        }
    }
    if let Verdict::Differs(d) = &verdict
        && d.kind == Kind::HangNotReported
    {
        // A loaded machine can stall qemu-io: give it much longer before blaming ours.
        if qemu_once(QEMU_CONFIRM_TIMEOUT).status != KILLED_BY_TIMEOUT {
            return Verdict::QemuUnstable;
        }
    }
    verdict
}

/// The verdict on one run of each.
fn compare(qemu: &Outcome, ours: &Outcome) -> Verdict {
    let differs = |kind, details| {
        Verdict::Differs(Difference {
            kind,
            first_lines: first_difference(&qemu.output, &ours.output),
            details,
            qemu: qemu.clone(),
            ours: Some(ours.clone()),
        })
    };
    if qemu.status == KILLED_BY_TIMEOUT {
        return match check_stop(qemu, ours, Stop::Hang) {
            Ok(()) => Verdict::QemuHang,
            Err(why) => differs(Kind::HangNotReported, why),
        };
    }
    if is_crash(qemu.status) {
        return match check_stop(qemu, ours, Stop::Crash) {
            Ok(()) => Verdict::QemuCrash(qemu.status - 128),
            Err(why) => differs(Kind::CrashNotReported, why),
        };
    }
    if ours == qemu {
        return Verdict::Same;
    }
    differs(
        Kind::Differs,
        describe_differences(qemu, ours, "qemu-io", "blockfault"),
    )
}

fn broken(why: String, qemu: Outcome) -> Verdict {
    Verdict::Differs(Difference {
        kind: Kind::OursBroken,
        first_lines: (String::new(), why.clone()),
        details: why,
        qemu,
        ours: None,
    })
}

fn create_images(case: &FuzzCase, dir: &Path) -> Result<(), String> {
    for args in case.images() {
        let out = Command::new("qemu-img")
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running qemu-img: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "qemu-img {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Copies `origin`'s files into a fresh directory and runs `run` there.
fn in_scratch(
    origin: &Path,
    run: impl FnOnce(&Path) -> Result<(String, i32), String>,
) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().unwrap();
    for e in fs::read_dir(origin).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let (output, status) = run(dir.path())?;
    Ok(Outcome {
        output: filter(&output, dir.path()),
        status,
        files: snapshot(dir.path()),
    })
}

/// Our engine on a thread of its own, so that a panic or an endless loop is reported instead of
/// taking the whole run down.
fn run_ours_guarded(dir: &Path, args: &[String]) -> Result<(String, i32), String> {
    let (tx, rx) = mpsc::channel();
    let (dir, args) = (dir.to_path_buf(), args.to_vec());
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| run_ours(&dir, &args));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(OURS_TIMEOUT) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("our engine panicked: {msg}"))
        }
        Err(_) => Err(format!(
            "our engine did not finish in {} s",
            OURS_TIMEOUT.as_secs()
        )),
    }
}

/// SIGILL, SIGABRT, SIGBUS, SIGFPE, SIGSEGV.
fn is_crash(status: i32) -> bool {
    [4, 6, 7, 8, 11].map(|s| 128 + s).contains(&status)
}

#[derive(Clone, Copy)]
enum Stop {
    Hang,
    Crash,
}

/// Where qemu-io hangs or crashes, ours must print what QEMU printed up to there, then one
/// `blockfault:` line (`blkverify:` for a crash) and exit 1.
fn check_stop(qemu: &Outcome, ours: &Outcome, stop: Stop) -> Result<(), String> {
    let lines: Vec<&str> = ours.output.lines().collect();
    let last = lines.last().copied().unwrap_or("");
    let stop_line = |l: &str| {
        l.starts_with("blockfault: ") || matches!(stop, Stop::Crash) && l.starts_with("blkverify: ")
    };
    let ok_last = match stop {
        Stop::Hang => {
            last.starts_with("blockfault: ")
                && (last.ends_with("qemu-io would hang here forever")
                    || last.ends_with("qemu-io would wait here forever"))
        }
        Stop::Crash => stop_line(last),
    };
    let what = match stop {
        Stop::Hang => "qemu-io hangs (killed after the timeout)",
        Stop::Crash => "qemu-io dies by a signal",
    };
    if ours.status != 1 || !ok_last || lines.iter().filter(|l| stop_line(l)).count() != 1 {
        return Err(format!(
            "{what} (status {}); ours must end with one {} line and exit 1, but exits {}:\n--- qemu-io\n{}--- blockfault\n{}",
            qemu.status,
            match stop {
                Stop::Hang => "`blockfault: ... qemu-io would hang here forever`",
                Stop::Crash => "`blockfault:`/`blkverify:`",
            },
            ours.status,
            qemu.output,
            ours.output
        ));
    }
    // What was printed before the stop must match, apart from QEMU's dying words: an
    // assertion message, or an &error_abort report (`Unexpected error in F() at FILE:LINE:`
    // and the error on the next line).
    let ours_before = lines[..lines.len() - 1].join("\n");
    let mut qemu_before = Vec::new();
    let mut in_abort_report = false;
    for l in qemu.output.lines() {
        let dying = std::mem::take(&mut in_abort_report)
            || l.starts_with("qemu-io: ") && l.contains("Assertion");
        if l.starts_with("Unexpected error in ") {
            in_abort_report = true;
        } else if !dying {
            qemu_before.push(l);
        }
    }
    let qemu_before = qemu_before.join("\n");
    if ours_before != qemu_before {
        return Err(format!(
            "{what} (status {}); ours stops with the right line, but what comes before differs:\n{}",
            qemu.status,
            unified(&qemu_before, &ours_before, "qemu-io", "blockfault")
        ));
    }
    Ok(())
}

pub fn unified(a: &str, b: &str, an: &str, bn: &str) -> String {
    let (a, b) = (with_newline(a), with_newline(b));
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .header(an, bn)
        .to_string()
}

fn with_newline(s: &str) -> String {
    if s.is_empty() || s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

fn first_difference(a: &str, b: &str) -> (String, String) {
    let (mut x, mut y) = (a.lines(), b.lines());
    loop {
        match (x.next(), y.next()) {
            (None, None) => return (String::new(), String::new()),
            (l, r) if l != r => {
                return (
                    l.unwrap_or("<end>").to_string(),
                    r.unwrap_or("<end>").to_string(),
                );
            }
            _ => {}
        }
    }
}

pub fn describe_differences(a: &Outcome, b: &Outcome, an: &str, bn: &str) -> String {
    let mut s = String::new();
    if a.output != b.output {
        s += &format!("output differs:\n{}", unified(&a.output, &b.output, an, bn));
    }
    if a.status != b.status {
        s += &format!("exit status: {an} {}, {bn} {}\n", a.status, b.status);
    }
    let names: BTreeSet<&String> = a.files.keys().chain(b.files.keys()).collect();
    for name in names {
        let (x, y) = (a.files.get(name), b.files.get(name));
        if x == y {
            continue;
        }
        let describe = |f: Option<&FileState>| match f {
            None => "missing".to_string(),
            Some(f) => format!("{} bytes", f.len),
        };
        let mut line = format!(
            "file {name} differs afterwards: {an} {}, {bn} {}",
            describe(x),
            describe(y)
        );
        match (
            x.and_then(|f| f.bytes.as_ref()),
            y.and_then(|f| f.bytes.as_ref()),
        ) {
            (Some(x), Some(y)) => {
                let differing: Vec<usize> = (0..x.len().max(y.len()))
                    .filter(|&i| x.get(i) != y.get(i))
                    .collect();
                if let (Some(first), Some(last)) = (differing.first(), differing.last()) {
                    line += &format!(
                        "; {} bytes differ, from byte {first} (0x{first:x}) to {last} (0x{last:x})",
                        differing.len()
                    );
                }
            }
            _ if x.is_some() && y.is_some() => {
                line += "; contents differ (too big to compare byte by byte)"
            }
            _ => {}
        }
        s += &line;
        s.push('\n');
    }
    s
}
