//! Property test (issue 4, "How we will know"): thousands of mutated qcow2 images, all derived
//! from images made by real `qemu-img` (several cluster sizes, v2 and v3, data, zero and
//! compressed clusters, a backing file, vmstate, lazy refcounts), opened through our engine —
//! `qemu-io -r` with reads, and `qemu-img check`. Nothing may panic, each case must finish in
//! bounded time, the process stays under an address-space limit (an unbounded allocation aborts
//! the test), and the image file must be byte-for-byte unchanged afterwards.
//!
//! Needs real qemu-img/qemu-io to make the seed images; without them the test says so and
//! passes vacuously. `QCOW2_FUZZ_CASES=N` changes the number of cases (default 4096).

use blockfault::output::Capture;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A hang detector, not a speed bound: a case that takes this long is stuck. (Far above what
/// a debug build on a loaded two-core machine needs for the slowest case, ~12 s.)
const CASE_LIMIT: Duration = Duration::from_secs(120);
/// Address-space ceiling for the whole test process.
const ADDRESS_SPACE_LIMIT: u64 = 4 << 30;

fn tool(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn sh(prog: &Path, args: &[&str], dir: &Path) {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", prog.display()));
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        prog.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A seed image: its bytes, and the backing file it needs (name, bytes), if any.
struct Seed {
    name: &'static str,
    bytes: Vec<u8>,
    backing: Option<(&'static str, Vec<u8>)>,
}

fn make_seeds(img: &Path, io: &Path) -> Vec<Seed> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = tmp.path();
    let specs: &[(&str, &str, &str, &[&str])] = &[
        (
            "v3-64k.qcow2",
            "cluster_size=65536,compat=1.1",
            "16M",
            &["write -P 1 0 64k", "write -z 1M 64k", "write -P 2 3M 4k"],
        ),
        (
            "v2-64k.qcow2",
            "cluster_size=65536,compat=0.10",
            "16M",
            &["write -P 1 0 64k", "write -P 2 5M 8k"],
        ),
        (
            "v3-512.qcow2",
            "cluster_size=512,compat=1.1",
            "4M",
            &[
                "write -P 3 0 96k",
                "write -c -P 4 1M 4k",
                "write -b -P 5 0 2k",
            ],
        ),
        (
            "v3-4k-compressed.qcow2",
            "cluster_size=4096,compat=1.1",
            "8M",
            &["write -c -P 6 0 64k", "write -P 7 2M 4k", "discard 2M 4k"],
        ),
        (
            "v3-lazy.qcow2",
            "cluster_size=65536,compat=1.1,lazy_refcounts=on",
            "16M",
            &["write -P 8 0 128k"],
        ),
        (
            "v2-1k-vmstate.qcow2",
            "cluster_size=1024,compat=0.10",
            "8M",
            &["write -P 9 0 8k", "write -b -P 10 0 8k"],
        ),
    ];
    let mut seeds = Vec::new();
    for (name, opts, size, cmds) in specs {
        sh(
            img,
            &["create", "-q", "-f", "qcow2", "-o", opts, name, size],
            d,
        );
        let mut args = vec!["-f", "qcow2"];
        for c in *cmds {
            args.push("-c");
            args.push(c);
        }
        args.push(name);
        sh(io, &args, d);
        seeds.push(Seed {
            name,
            bytes: std::fs::read(d.join(name)).expect("read seed"),
            backing: None,
        });
    }
    // an overlay with a backing file
    sh(
        img,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            "base.qcow2",
            "4M",
        ],
        d,
    );
    sh(
        io,
        &["-f", "qcow2", "-c", "write -P 11 0 1M", "base.qcow2"],
        d,
    );
    sh(
        img,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "ov.qcow2",
        ],
        d,
    );
    sh(
        io,
        &["-f", "qcow2", "-c", "write -P 12 6k 1k", "ov.qcow2"],
        d,
    );
    seeds.push(Seed {
        name: "ov.qcow2",
        bytes: std::fs::read(d.join("ov.qcow2")).expect("read overlay"),
        backing: Some(("base.qcow2", std::fs::read(d.join("base.qcow2")).unwrap())),
    });
    seeds
}

fn be64(b: &[u8], off: usize) -> u64 {
    b.get(off..off.saturating_add(8))
        .map(|s| u64::from_be_bytes(s.try_into().unwrap()))
        .unwrap_or(0)
}
fn be32(b: &[u8], off: usize) -> u64 {
    b.get(off..off.saturating_add(4))
        .map(|s| u32::from_be_bytes(s.try_into().unwrap()) as u64)
        .unwrap_or(0)
}

/// Where a mutation lands.
#[derive(Clone, Debug)]
enum Target {
    /// a header field: (offset, width in bytes)
    Header(usize, usize),
    /// entry i of the L1 table
    L1(usize),
    /// entry i of the first L2 table
    L2(usize),
    /// entry i of the refcount table
    Reftable(usize),
    /// entry i (16-bit) of the first refcount block
    Refblock(usize),
    /// any byte of the first 64 KiB (header extensions, backing name, tables of small images)
    Byte(usize),
    /// cut the file at this fraction (per mille) of its length
    Truncate(u16),
}

/// What is written there.
#[derive(Clone, Debug)]
enum Value {
    Zero,
    Ones,
    Flip(u8),
    Add(i64),
    Raw(u64),
    /// set one bit
    Bit(u8),
}

const HEADER_FIELDS: &[(usize, usize)] = &[
    (0, 4),   // magic
    (4, 4),   // version
    (8, 8),   // backing_file_offset
    (16, 4),  // backing_file_size
    (20, 4),  // cluster_bits
    (24, 8),  // size
    (32, 4),  // crypt_method
    (36, 4),  // l1_size
    (40, 8),  // l1_table_offset
    (48, 8),  // refcount_table_offset
    (56, 4),  // refcount_table_clusters
    (60, 4),  // nb_snapshots
    (64, 8),  // snapshots_offset
    (72, 8),  // incompatible_features
    (80, 8),  // compatible_features
    (88, 8),  // autoclear_features
    (96, 4),  // refcount_order
    (100, 4), // header_length
    (104, 1), // compression_type
];

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        4 => prop::sample::select(HEADER_FIELDS).prop_map(|(o, w)| Target::Header(o, w)),
        2 => (0usize..64).prop_map(Target::L1),
        3 => (0usize..128).prop_map(Target::L2),
        2 => (0usize..8).prop_map(Target::Reftable),
        2 => (0usize..64).prop_map(Target::Refblock),
        2 => (0usize..65536).prop_map(Target::Byte),
        1 => (0u16..1000).prop_map(Target::Truncate),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Zero),
        Just(Value::Ones),
        any::<u8>().prop_map(Value::Flip),
        (-4096i64..4096).prop_map(Value::Add),
        prop_oneof![
            Just(1u64 << 63),
            Just(1u64 << 62),
            Just(0x00ff_ffff_ffff_fe00),
            Just(0x8000_0000_0000_0200),
            Just(0x7fff_ffff),
            Just(0x1_0000_0000),
            any::<u64>(),
        ]
        .prop_map(Value::Raw),
        (0u8..64).prop_map(Value::Bit),
    ]
}

fn put(bytes: &mut [u8], off: usize, width: usize, v: &Value) {
    let Some(slot) = bytes.get_mut(off..off.saturating_add(width)) else {
        return;
    };
    let mut cur = 0u64;
    for b in slot.iter() {
        cur = (cur << 8) | *b as u64;
    }
    let mask = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (width * 8)) - 1
    };
    let new = match v {
        Value::Zero => 0,
        Value::Ones => u64::MAX,
        Value::Flip(x) => cur ^ (*x as u64),
        Value::Add(d) => cur.wrapping_add(*d as u64),
        Value::Raw(r) => *r,
        Value::Bit(b) => cur | (1u64 << (b % (width as u8 * 8))),
    } & mask;
    for (i, b) in slot.iter_mut().enumerate() {
        *b = (new >> (8 * (width - 1 - i))) as u8;
    }
}

fn mutate(bytes: &mut Vec<u8>, t: &Target, v: &Value) {
    // table locations come from the (possibly already mutated) header
    let l1 = be64(bytes, 40) as usize;
    let reft = be64(bytes, 48) as usize;
    let l2 = (be64(bytes, l1) & 0x00ff_ffff_ffff_fe00) as usize;
    let refblock = (be64(bytes, reft) & !0x1ff) as usize;
    match t {
        Target::Header(o, w) => put(bytes, *o, *w, v),
        Target::L1(i) => put(bytes, l1.saturating_add(8 * i), 8, v),
        Target::L2(i) if l2 != 0 => put(bytes, l2.saturating_add(8 * i), 8, v),
        Target::L2(_) => {}
        Target::Reftable(i) => put(bytes, reft.saturating_add(8 * i), 8, v),
        Target::Refblock(i) if refblock != 0 => put(bytes, refblock.saturating_add(2 * i), 2, v),
        Target::Refblock(_) => {}
        Target::Byte(o) => put(bytes, *o, 1, v),
        Target::Truncate(pm) => {
            let len = bytes.len() * *pm as usize / 1000;
            bytes.truncate(len);
        }
    }
}

fn limit_address_space() {
    let lim = libc::rlimit {
        rlim_cur: ADDRESS_SPACE_LIMIT as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid, initialised struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    assert_eq!(rc, 0, "setrlimit(RLIMIT_AS)");
}

fn io(args: &[&str], dir: &Path) -> (String, i32) {
    let cap = Rc::new(RefCell::new(Capture::default()));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let status = blockfault::qemu_io::main(&args, dir, cap.clone(), &mut std::io::empty());
    let text = std::mem::take(&mut cap.borrow_mut().combined);
    (text, status)
}

fn img(args: &[&str], dir: &Path) -> (String, i32) {
    let cap = Rc::new(RefCell::new(Capture::default()));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let status = blockfault::img::run(&args, dir, cap.clone());
    let text = std::mem::take(&mut cap.borrow_mut().combined);
    (text, status)
}

/// One case: write the mutated image, open it every way, compare the bytes afterwards.
fn exercise(seed: &Seed, bytes: &[u8], dir: &Path) -> Result<(), TestCaseError> {
    let path = dir.join(seed.name);
    std::fs::write(&path, bytes).expect("write image");
    if let Some((name, base)) = &seed.backing {
        std::fs::write(dir.join(name), base).expect("write backing");
    }
    let start = Instant::now();
    let runs: [(&str, Vec<&str>); 4] = [
        (
            "qemu-io -r",
            vec![
                "-r",
                "-f",
                "qcow2",
                "-c",
                "read 0 64k",
                "-c",
                "read -b 0 4k",
                "-c",
                "read 1M 4k",
                "-c",
                "map",
                seed.name,
            ],
        ),
        (
            "qemu-io -r unprobed",
            vec!["-r", "-c", "read 0 512", seed.name],
        ),
        ("check", vec!["check", "-f", "qcow2", seed.name]),
        (
            "map",
            vec!["map", "--output=json", "-f", "qcow2", seed.name],
        ),
    ];
    for (what, args) in &runs {
        let (out, _status) = if what.starts_with("qemu-io") {
            io(args, dir)
        } else {
            img(args, dir)
        };
        prop_assert!(
            start.elapsed() < CASE_LIMIT,
            "{what} took {:?}; output: {out}",
            start.elapsed()
        );
        let after = std::fs::read(&path).expect("read image back");
        prop_assert!(
            after == bytes,
            "{what} modified the image ({} -> {} bytes); output: {out}",
            bytes.len(),
            after.len()
        );
        if let Some((name, base)) = &seed.backing {
            prop_assert!(
                std::fs::read(dir.join(name)).unwrap() == *base,
                "{what} modified the backing file"
            );
        }
    }
    Ok(())
}

#[test]
fn mutated_images_never_panic_hang_or_get_written() {
    let (Some(qimg), Some(qio)) = (tool("qemu-img", "QEMU_IMG"), tool("qemu-io", "QEMU_IO")) else {
        eprintln!("qcow2_fuzz: real qemu-img/qemu-io not found; no seed images, nothing to do");
        return;
    };
    let seeds = make_seeds(&qimg, &qio);
    limit_address_space();
    let cases = std::env::var("QCOW2_FUZZ_CASES")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        0..seeds.len(),
        prop::collection::vec((target(), value()), 1..6),
    );
    let result = runner.run(&strategy, |(which, muts)| {
        let seed = &seeds[which];
        let mut bytes = seed.bytes.clone();
        for (t, v) in &muts {
            mutate(&mut bytes, t, v);
        }
        exercise(seed, &bytes, &dir)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn unmutated_seeds_open_and_stay_unchanged() {
    // The control: the same harness on the untouched seed images.
    let (Some(qimg), Some(qio)) = (tool("qemu-img", "QEMU_IMG"), tool("qemu-io", "QEMU_IO")) else {
        eprintln!("qcow2_fuzz: real qemu-img/qemu-io not found; skipped");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    for seed in make_seeds(&qimg, &qio) {
        exercise(&seed, &seed.bytes.clone(), tmp.path()).unwrap();
        let (out, status) = img(&["check", "-f", "qcow2", seed.name], tmp.path());
        assert_eq!(
            status, 0,
            "{}: our check of a qemu-img image: {out}",
            seed.name
        );
    }
}

#[test]
fn mutations_hit_what_they_name() {
    let mut b = vec![0u8; 4096];
    b[40..48].copy_from_slice(&1024u64.to_be_bytes()); // l1_table_offset
    b[1024..1032].copy_from_slice(&2048u64.to_be_bytes()); // L1[0] -> L2 at 2048
    mutate(&mut b, &Target::L2(1), &Value::Raw(0x1122_3344_5566_7788));
    assert_eq!(be64(&b, 2056), 0x1122_3344_5566_7788);
    mutate(&mut b, &Target::Header(4, 4), &Value::Add(1));
    assert_eq!(be32(&b, 4), 1);
    mutate(&mut b, &Target::Truncate(500), &Value::Zero);
    assert_eq!(b.len(), 2048);
    // offsets past the end (or near u64::MAX) are ignored, never a panic
    b[40..48].copy_from_slice(&u64::MAX.to_be_bytes());
    mutate(&mut b, &Target::L1(3), &Value::Ones);
    assert_eq!(b.len(), 2048);
}
