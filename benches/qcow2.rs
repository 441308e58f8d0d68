//! qcow2 data-path benchmark beside QEMU in the same run and cache mode (writeback): sequential
//! 64 KiB writes then reads over a 1 GiB image, and random 4 KiB writes, printing our/QEMU
//! throughput ratios (the qcow2 issue targets ≥ 1.0 on every row).
//!
//! QEMU's side: `qemu-img bench -d 1` for the sequential rows; one qemu-io process with the same
//! seeded `write -q` commands as ours for the random row (qemu-img bench has no random mode).
//! `cargo bench --bench qcow2` (BENCH_QCOW2_MIB: data per sequential row, default 1024;
//! BENCH_QCOW2_RANDOM: random writes, default 4096).

use blockfault::block::backend::BlockBackend;
use blockfault::block::executor::block_on;
use blockfault::block::node::OpenFlags;
use blockfault::block::open::{OpenContext, Options, open_drive};
use blockfault::output::{Capture, Console};
use std::cell::{Cell, RefCell};
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

const IMAGE: u64 = 1 << 30;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn create(dir: &Path) {
    let ok = Command::new("qemu-img")
        .current_dir(dir)
        .args(["create", "-q", "-f", "qcow2", "t.qcow2", "1G"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "qemu-img create");
}

fn open(dir: &Path) -> Rc<BlockBackend> {
    let ctx = OpenContext {
        base_dir: dir.to_path_buf(),
        console: Console::new(Rc::new(RefCell::new(Capture::default()))),
        flags: OpenFlags {
            read_only: false,
            unmap: true,
            no_flush: false,
            ..OpenFlags::default()
        },
        skip_host_sync: false,
    };
    let root = open_drive(Some("t.qcow2"), Options::new(), Some("qcow2"), &ctx).expect("open");
    Rc::new(BlockBackend {
        root,
        writethrough: Cell::new(false),
        read_only: Cell::new(false),
        perms: Cell::new(blockfault::block::perms::Perms::WRITE),
    })
}

/// Runs our requests and the close-time flush; returns the elapsed time.
fn ours(dir: &Path, write: bool, size: usize, offsets: Vec<u64>) -> Duration {
    let blk = open(dir);
    let t0 = Instant::now();
    block_on(async move {
        let mut buf = vec![0x5au8; size];
        for off in offsets {
            if write {
                blk.pwrite(off, &buf, Default::default())
                    .await
                    .expect("write");
            } else {
                blk.pread(off, &mut buf).await.expect("read");
            }
        }
        blk.flush().await.expect("flush");
        let root = blk.root.clone();
        root.driver.close(&root).await;
    })
    .expect("benchmark requests complete");
    t0.elapsed()
}

fn timed(cmd: &mut Command) -> Option<Duration> {
    let t0 = Instant::now();
    let ok = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success();
    ok.then(|| t0.elapsed())
}

fn row(name: &str, bytes: u64, ours: Duration, qemu: Option<Duration>) {
    let mib = |d: Duration| bytes as f64 / 1048576.0 / d.as_secs_f64();
    match qemu {
        Some(q) => println!(
            "{name:<28} {:>10.1} {:>10.1} {:>8.2}",
            mib(ours),
            mib(q),
            mib(ours) / mib(q)
        ),
        None => println!("{name:<28} {:>10.1} {:>10} {:>8}", mib(ours), "-", "-"),
    }
}

fn main() {
    let seq_bytes = env_u64("BENCH_QCOW2_MIB", 1024).min(1024) << 20;
    let random = env_u64("BENCH_QCOW2_RANDOM", 4096);
    let size = 64 << 10;
    let count = seq_bytes / size as u64;
    let seq: Vec<u64> = (0..count).map(|i| i * size as u64).collect();
    // A small LCG: the same offsets on every run and for both engines.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let rand: Vec<u64> = (0..random)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 11) % (IMAGE / 4096) * 4096
        })
        .collect();
    println!(
        "{:<28} {:>10} {:>10} {:>8}",
        "qcow2, writeback", "ours MiB/s", "QEMU MiB/s", "ours/QEMU"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let bench = |extra: &[&str]| {
        let mut c = Command::new("qemu-img");
        c.current_dir(d).args([
            "bench",
            "-f",
            "qcow2",
            "-t",
            "writeback",
            "-d",
            "1",
            "-c",
            &count.to_string(),
            "-s",
            "64k",
            "-S",
            "64k",
        ]);
        c.args(extra).arg("t.qcow2");
        c
    };
    create(d);
    let w_ours = ours(d, true, size, seq.clone());
    create(d);
    let w_qemu = timed(&mut bench(&["-w"]));
    let r_ours = ours(d, false, size, seq);
    let r_qemu = timed(&mut bench(&[]));
    row("sequential 64 KiB writes", seq_bytes, w_ours, w_qemu);
    row("sequential 64 KiB reads", seq_bytes, r_ours, r_qemu);

    create(d);
    let rw_ours = ours(d, true, 4096, rand.clone());
    create(d);
    let mut io = Command::new("qemu-io");
    io.current_dir(d).args(["-f", "qcow2", "-t", "writeback"]);
    for off in &rand {
        io.arg("-c").arg(format!("write -q {off} 4k"));
    }
    io.arg("t.qcow2");
    let rw_qemu = timed(&mut io);
    row("random 4 KiB writes", random * 4096, rw_ours, rw_qemu);
}
