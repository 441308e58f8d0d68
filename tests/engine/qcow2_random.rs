//! Seeded random qcow2 test (issue 4, "How we will know"): each run creates a qcow2 image with
//! our engine (random cluster size 512 B..64 KiB, v2 or v3), writes random data at random
//! offsets under random blkdebug rules on random qcow2 events through our qemu-io, then checks
//! the image with our `qemu-img check` and, when installed, with real `qemu-img check`.
//! Corruption must always be 0 and both checks must print the same report with the same exit
//! status.
//!
//! `QCOW2_RANDOM_RUNS=N` runs seeds 0..N (default 500); `QCOW2_RANDOM_SEED=S` replays one seed.
//! `QCOW2_RANDOM_LOOSE=1` ignores the `allocated/fragmented` and `Image end offset` lines when
//! comparing with QEMU (to tell a layout difference from a refcount difference).
//! `QCOW2_RANDOM_ON_QEMU=1` runs the same plans through real qemu-img/qemu-io instead of our
//! engine and only asks real `qemu-img check` for corruption: a check of the generator itself.

use blockfault::output::{Sink, Stream};
use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

const DEFAULT_RUNS: u64 = 500;

/// Events qcow2 (and the block layer below it) raise on a blkdebug node during reads, writes,
/// zero writes, discards, compressed and vmstate writes and flushes.
const EVENTS: &[&str] = &[
    "reftable_load",
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_alloc_write",
    "l2_update_compressed",
    "refblock_load",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_write",
    "refblock_alloc_hookup",
    "reftable_grow",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "cluster_alloc_space",
    "write_aio",
    "cow_read",
    "cow_write",
    "read_aio",
    "read_compressed",
    "write_compressed",
    "vmstate_save",
    "vmstate_load",
    "flush_to_os",
    "flush_to_disk",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
];

/// splitmix64: tiny, good enough, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One generated run: everything needed to reproduce it by hand.
#[derive(Debug)]
struct Plan {
    cluster_size: u64,
    compat: &'static str,
    size: u64,
    cache: &'static str,
    rules: String,
    /// run first, without blkdebug: compressed clusters for the perturbed run to overwrite
    setup: Vec<String>,
    commands: Vec<String>,
}

fn plan(seed: u64) -> Plan {
    let mut rng = Rng(seed ^ SALT);
    let cluster_bits = 9 + rng.below(8); // 512 B .. 64 KiB
    let cluster_size = 1u64 << cluster_bits;
    let compat = if rng.chance(50) { "1.1" } else { "0.10" };
    let size = (1u64 << (20 + rng.below(7))) + rng.below(4) * cluster_size; // 1M..64M+
    let cache = *rng.pick(&["writethrough", "writeback", "writethrough", "unsafe"]);

    let mut rules = String::new();
    for _ in 0..1 + rng.below(3) {
        let event = rng.pick(EVENTS);
        if rng.chance(30) {
            let state = 1 + rng.below(3);
            let _ = writeln!(
                rules,
                "[set-state]\nevent = \"{event}\"\nstate = \"{state}\"\nnew_state = \"{}\"\n",
                state + 1
            );
        } else {
            let errno = rng.pick(&[5u32, 28, 5, 28, 1, 22, 122]);
            let once = if rng.chance(50) { "on" } else { "off" };
            let state = if rng.chance(60) { 0 } else { 1 + rng.below(3) };
            let _ = writeln!(
                rules,
                "[inject-error]\nevent = \"{event}\"\nerrno = \"{errno}\"\nonce = \"{once}\"\nstate = \"{state}\"\n"
            );
        }
    }

    // Compressed writes happen only here, unperturbed: QEMU 10.0.2 does not roll back the L2
    // entry of a failed compressed write, which leaves a corrupt image (see the scenario
    // qcow2/compressed-write-failure), so a failing one cannot satisfy "corruption is 0".
    let mut setup = Vec::new();
    for _ in 0..rng.below(4) {
        let n = 1 + rng.below(4);
        let coff = rng.below(size / cluster_size - n + 1) * cluster_size;
        let pat = rng.below(256);
        setup.push(format!("write -c -P {pat} {coff} {}", n * cluster_size));
    }

    let mut commands = Vec::new();
    for _ in 0..1 + rng.below(10) {
        // offsets and lengths: mostly sector-aligned, sometimes byte-granular
        let align = if rng.chance(80) { 512 } else { 1 };
        let len = ((1 + rng.below(256 * 1024)) / align).max(1) * align;
        let len = len.min(size);
        let off = rng.below(size - len + 1) / align * align;
        let pat = rng.below(256);
        let cmd = match rng.below(100) {
            0..=49 => format!("write -P {pat} {off} {len}"),
            50..=59 => format!("write -z {off} {len}"),
            60..=64 => format!("write -z -u {off} {len}"),
            65..=79 => format!("discard {off} {len}"),
            80..=84 => format!(
                "write -b -P {pat} {} {}",
                off / 512 * 512,
                len.max(512) / 512 * 512
            ),
            85..=94 => format!("read {off} {len}"),
            _ => "flush".to_string(),
        };
        commands.push(cmd);
    }
    Plan {
        cluster_size,
        compat,
        size,
        cache,
        rules,
        setup,
        commands,
    }
}

/// Mixed into every seed, so that seed 0 is not splitmix64's all-zero start.
const SALT: u64 = 0x5eed_0f0c_0ff2_2025;

/// Keeps stdout and stderr apart, as a real process would print them.
#[derive(Default)]
struct Split {
    out: String,
    err: String,
}

impl Sink for Split {
    fn write(&mut self, stream: Stream, text: &str) {
        match stream {
            Stream::Stdout => self.out.push_str(text),
            Stream::Stderr => self.err.push_str(text),
        }
    }
}

fn img(args: &[&str], dir: &Path) -> (String, String, i32) {
    let sink = Rc::new(RefCell::new(Split::default()));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let status = blockfault::img::run(&args, dir, sink.clone());
    let s = sink.borrow();
    (s.out.clone(), s.err.clone(), status)
}

fn real_qemu_img() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QEMU_IMG") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("qemu-img"))
        .find(|p| p.is_file())
}

/// Whether a check report counts corruptions ("N errors were found", "ERROR cluster ...").
fn corrupt(report: &str) -> bool {
    report.lines().any(|l| {
        (l.ends_with("errors were found on the image.") && !l.starts_with("No errors"))
            || l.starts_with("ERROR")
    })
}

fn loose(text: &str) -> String {
    text.lines()
        .filter(|l| !l.contains("% allocated,") && !l.starts_with("Image end offset:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The plan through real qemu-img and qemu-io; real check must find no corruption.
fn run_seed_on_qemu(seed: u64, qemu_img: &Path) -> Result<(), String> {
    let p = plan(seed);
    let tmp = crate::support::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let dir = tmp.path();
    std::fs::write(dir.join("rules.cfg"), &p.rules).map_err(|e| e.to_string())?;
    let opts = format!("cluster_size={},compat={}", p.cluster_size, p.compat);
    let run = |prog: &Path, args: &[String]| {
        Command::new(prog)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", prog.display()))
    };
    let create = run(
        qemu_img,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &opts,
            "t.qcow2",
            &p.size.to_string(),
        ]
        .map(String::from),
    )?;
    if !create.status.success() {
        return Err(format!(
            "qemu-img create: {}",
            String::from_utf8_lossy(&create.stderr)
        ));
    }
    let qemu_io = qemu_img.with_file_name("qemu-io");
    if !p.setup.is_empty() {
        let mut args: Vec<String> = ["-f", "qcow2", "-t", p.cache].map(String::from).to_vec();
        for c in &p.setup {
            args.push("-c".into());
            args.push(c.clone());
        }
        args.push("t.qcow2".into());
        // may fail: write -c onto an allocated cluster is EIO
        run(&qemu_io, &args)?;
    }
    let mut args: Vec<String> = ["-f", "qcow2", "-t", p.cache].map(String::from).to_vec();
    for c in &p.commands {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push("blkdebug:rules.cfg:t.qcow2".into());
    let io = run(&qemu_io, &args)?;
    let check = run(
        qemu_img,
        &["check", "-f", "qcow2", "t.qcow2"].map(String::from),
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stderr),
        String::from_utf8_lossy(&check.stdout)
    );
    let code = check.status.code().unwrap_or(-1);
    if code == 2 || code == 1 || corrupt(&text) || io.status.code().is_none() {
        return Err(format!(
            "plan: {p:#?}\nqemu-io: {}{}\ncheck (exit {code}):\n{text}",
            String::from_utf8_lossy(&io.stdout),
            String::from_utf8_lossy(&io.stderr)
        ));
    }
    Ok(())
}

/// Runs one seed; returns a description of what went wrong, if anything.
fn run_seed(seed: u64, qemu_img: Option<&Path>, loose_compare: bool) -> Result<(), String> {
    let p = plan(seed);
    let tmp = crate::support::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let dir = tmp.path();
    std::fs::write(dir.join("rules.cfg"), &p.rules).map_err(|e| e.to_string())?;

    let opts = format!("cluster_size={},compat={}", p.cluster_size, p.compat);
    let size = p.size.to_string();
    let (out, err, status) = img(
        &["create", "-q", "-f", "qcow2", "-o", &opts, "t.qcow2", &size],
        dir,
    );
    if status != 0 {
        return Err(format!("our qemu-img create failed ({status}): {out}{err}"));
    }

    if !p.setup.is_empty() {
        let setup = blockfault::qemu_io::Invocation {
            format: Some("qcow2".into()),
            cache: Some(p.cache.into()),
            image_opts: false,
            commands: p.setup.clone(),
            drive: Some("t.qcow2".into()),
            skip_host_sync: true,
            ..Default::default()
        };
        // may fail: write -c onto an allocated cluster is EIO in QEMU too
        let sink = Rc::new(RefCell::new(Split::default()));
        let _ = blockfault::qemu_io::run(&setup, dir, sink);
    }

    let io_sink = Rc::new(RefCell::new(Split::default()));
    let inv = blockfault::qemu_io::Invocation {
        format: Some("qcow2".into()),
        cache: Some(p.cache.into()),
        image_opts: false,
        commands: p.commands.clone(),
        drive: Some("blkdebug:rules.cfg:t.qcow2".into()),
        skip_host_sync: true,
        ..Default::default()
    };
    let _ = blockfault::qemu_io::run(&inv, dir, io_sink.clone());
    let io_out = {
        let s = io_sink.borrow();
        format!("{}{}", s.out, s.err)
    };

    let (ours_out, ours_err, ours_status) = img(&["check", "-f", "qcow2", "t.qcow2"], dir);
    let ours = format!("{ours_err}{ours_out}");
    let context = || {
        format!("plan: {p:#?}\nqemu-io output:\n{io_out}\nour check (exit {ours_status}):\n{ours}")
    };
    if ours_status == 2 || corrupt(&ours) {
        return Err(format!("our check reports corruption\n{}", context()));
    }
    if ours_status != 0 && ours_status != 3 {
        return Err(format!(
            "our check exits {ours_status} (want 0 or 3)\n{}",
            context()
        ));
    }

    if let Some(q) = qemu_img {
        let out = Command::new(q)
            .args(["check", "-f", "qcow2", "t.qcow2"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", q.display()))?;
        let theirs = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        let theirs_status = out.status.code().unwrap_or(-1);
        if theirs_status == 2 || corrupt(&theirs) {
            return Err(format!(
                "real qemu-img check reports corruption on our image\n{}\nreal check (exit {theirs_status}):\n{theirs}",
                context()
            ));
        }
        let (a, b) = if loose_compare {
            (loose(&ours), loose(&theirs))
        } else {
            (ours.clone(), theirs.clone())
        };
        if a != b || ours_status != theirs_status {
            return Err(format!(
                "our check and real qemu-img check disagree\n{}\nreal check (exit {theirs_status}):\n{theirs}",
                context()
            ));
        }
    }
    Ok(())
}

#[test]
fn qcow2_random() {
    let qemu_img = real_qemu_img();
    if qemu_img.is_none() {
        eprintln!("qcow2_random: real qemu-img not found; checking our own check only");
    }
    let loose_compare = std::env::var_os("QCOW2_RANDOM_LOOSE").is_some();
    let seeds: Vec<u64> = match std::env::var("QCOW2_RANDOM_SEED") {
        Ok(s) => vec![
            s.trim()
                .parse()
                .expect("QCOW2_RANDOM_SEED must be an integer"),
        ],
        Err(_) => {
            let runs = std::env::var("QCOW2_RANDOM_RUNS")
                .ok()
                .map(|s| {
                    s.trim()
                        .parse()
                        .expect("QCOW2_RANDOM_RUNS must be an integer")
                })
                .unwrap_or(DEFAULT_RUNS);
            (0..runs).collect()
        }
    };
    let mut failures = Vec::new();
    for &seed in &seeds {
        let result = match (&qemu_img, std::env::var_os("QCOW2_RANDOM_ON_QEMU")) {
            (Some(q), Some(_)) => run_seed_on_qemu(seed, q),
            _ => run_seed(seed, qemu_img.as_deref(), loose_compare),
        };
        if let Err(why) = result {
            eprintln!(
                "\n=== seed {seed} failed; replay with:\n    QCOW2_RANDOM_SEED={seed} cargo test --test engine qcow2_random -- --nocapture\n{why}"
            );
            failures.push(seed);
            if failures.len() >= 5 {
                eprintln!("(stopping after 5 failing seeds)");
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed: {failures:?} (replay one with QCOW2_RANDOM_SEED=N)",
        failures.len(),
        seeds.len()
    );
}

#[test]
fn corruption_is_recognised() {
    assert!(!corrupt(
        "No errors were found on the image.\nImage end offset: 262144\n"
    ));
    assert!(corrupt(
        "\n3 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n"
    ));
    assert!(corrupt("ERROR cluster 5 refcount=0 reference=1\n"));
    assert!(!corrupt(
        "Leaked cluster 67 refcount=1 reference=0\n\n1 leaked clusters were found on the image.\n"
    ));
}

#[test]
fn plans_are_reproducible_and_varied() {
    // The replay promise: a seed always means the same run.
    assert_eq!(format!("{:?}", plan(42)), format!("{:?}", plan(42)));
    let plans: Vec<Plan> = (0..200).map(plan).collect();
    let sizes: std::collections::BTreeSet<u64> = plans.iter().map(|p| p.cluster_size).collect();
    assert_eq!(sizes.len(), 8, "every cluster size 512..64k is drawn");
    assert!(plans.iter().any(|p| p.compat == "0.10") && plans.iter().any(|p| p.compat == "1.1"));
    assert!(plans.iter().any(|p| p.rules.contains("once = \"off\"")));
    assert!(plans.iter().any(|p| p.rules.contains("[set-state]")));
    assert!(plans.iter().any(|p| !p.setup.is_empty()));
    assert!(
        plans
            .iter()
            .all(|p| p.commands.iter().all(|c| !c.contains("-c"))),
        "no compressed write runs under blkdebug rules"
    );
    for p in &plans {
        for c in &p.commands {
            // every generated request stays inside the image
            let nums: Vec<u64> = c
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            if let [.., off, len] = nums[..]
                && !c.starts_with("flush")
                && !c.contains(" -b ")
            {
                assert!(off + len <= p.size, "{c} exceeds {}", p.size);
            }
        }
    }
}
