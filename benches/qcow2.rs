//! qcow2 beside real QEMU, in the same run, on the same scratch file system (`/dev/shm` where
//! it is writable, else the temp dir; `BLOCKFAULT_SCRATCH` overrides, as for the runner).
//!
//! Data rows (writeback): sequential 64 KiB writes then reads over a 1 GiB image and random
//! 4 KiB writes, as throughput; ours runs in this process, QEMU as `qemu-img bench -d 1` (the
//! sequential rows) or one qemu-io process with the same seeded `write -q` commands (the random
//! row), so QEMU's figures include its start-up there. Target: ours/QEMU >= 1. The last
//! column compares CPU time (QEMU's over ours: ours is this process's during the requests,
//! QEMU's the child's), steadier than throughput when other work shares the machine.
//!
//! Metadata rows: the same qemu-io command line through `blockfault io` and through `qemu-io`,
//! both as processes from the same prepared image (preparation untimed), rounds interleaved,
//! the best round of each kept. Both figures include process start-up (opening the image
//! included); the last column subtracts each program's own start-up, measured the same way (the
//! same command line without commands). Wall time on a machine shared with other work is noisy;
//! CPU time (user + system, from the kernel's accounting of the child) is the steadier
//! comparison. The first round also checks that both programs leave byte-identical images.
//! Target: QEMU/ours >= 5.
//!
//! `cargo bench --bench qcow2` (BENCH_QCOW2_MIB: data per sequential row, default 1024;
//! BENCH_QCOW2_RANDOM: random writeback writes, default 4096; BENCH_QCOW2_ROUNDS: rounds per
//! metadata row, default 3; BENCH_QCOW2_ONLY: run only rows whose name contains this text).

use blockfault::block::backend::BlockBackend;
use blockfault::block::executor::block_on;
use blockfault::block::node::OpenFlags;
use blockfault::block::open::{OpenContext, Options, open_drive};
use blockfault::output::{Capture, Console};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Instant;

const IMAGE: u64 = 1 << 30;
const OURS: &str = env!("CARGO_BIN_EXE_blockfault");

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("BLOCKFAULT_SCRATCH")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            let shm = Path::new("/dev/shm");
            tempfile::tempdir_in(shm).ok().map(|_| shm.to_path_buf())
        })
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).expect("scratch dir")
}

fn qemu_img(dir: &Path, args: &[&str]) {
    let ok = Command::new("qemu-img")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "qemu-img {args:?}");
}

fn create(dir: &Path, opts: &str, size: &str) {
    let _ = std::fs::remove_file(dir.join("t.qcow2"));
    qemu_img(
        dir,
        &["create", "-q", "-f", "qcow2", "-o", opts, "t.qcow2", size],
    );
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
        perms: Cell::new(blockfault::block::perms::Access::user(true, false)),
    })
}

/// CPU time (user + system) this process has used so far.
fn own_cpu() -> f64 {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: writes only the local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Runs our requests in this process, and the close-time flush; returns what it cost.
fn in_process(dir: &Path, write: bool, size: usize, offsets: Vec<u64>) -> Cost {
    let blk = open(dir);
    let cpu0 = own_cpu();
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
    Cost {
        wall: t0.elapsed().as_secs_f64(),
        cpu: own_cpu() - cpu0,
    }
}

/// What one process cost: wall time, and the CPU time the kernel accounted to it.
#[derive(Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
}

impl Cost {
    fn best(a: Option<Cost>, b: Cost) -> Cost {
        a.map_or(b, |a| Cost {
            wall: a.wall.min(b.wall),
            cpu: a.cpu.min(b.cpu),
        })
    }
}

fn measure(cmd: &mut Command) -> Option<Cost> {
    let t0 = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing only the two locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = t0.elapsed().as_secs_f64();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let ok = pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    ok.then(|| Cost {
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
    })
}

fn data_row(name: &str, bytes: u64, ours: Cost, qemu: Option<Cost>) {
    let mib = |secs: f64| bytes as f64 / 1048576.0 / secs;
    match qemu {
        Some(q) => println!(
            "{name:<44} {:>10.1} {:>10.1} {:>8.2} {:>9.2}",
            mib(ours.wall),
            mib(q.wall),
            mib(ours.wall) / mib(q.wall),
            q.cpu / ours.cpu
        ),
        None => println!("{name:<44} {:>10.1} {:>10} {:>8}", mib(ours.wall), "-", "-"),
    }
}

fn data_rows(d: &Path, seq_bytes: u64, random: u64) {
    let size = 64 << 10;
    let count = seq_bytes / size as u64;
    let seq: Vec<u64> = (0..count).map(|i| i * size as u64).collect();
    let rand = lcg_offsets(random, IMAGE / 4096, 4096);
    println!(
        "{:<44} {:>10} {:>10} {:>8} {:>9}",
        "data rows (qcow2, writeback)", "ours MiB/s", "QEMU MiB/s", "ours/QEMU", "×cpu"
    );
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
    create(d, "cluster_size=65536", "1G");
    let w_ours = in_process(d, true, size, seq.clone());
    create(d, "cluster_size=65536", "1G");
    let w_qemu = measure(&mut bench(&["-w"]));
    let r_ours = in_process(d, false, size, seq);
    let r_qemu = measure(&mut bench(&[]));
    data_row("sequential 64 KiB writes", seq_bytes, w_ours, w_qemu);
    data_row("sequential 64 KiB reads", seq_bytes, r_ours, r_qemu);

    create(d, "cluster_size=65536", "1G");
    let rw_ours = in_process(d, true, 4096, rand.clone());
    create(d, "cluster_size=65536", "1G");
    let mut io = Command::new("qemu-io");
    io.current_dir(d).args(["-f", "qcow2", "-t", "writeback"]);
    for off in &rand {
        io.arg("-c").arg(format!("write -q {off} 4k"));
    }
    io.arg("t.qcow2");
    let rw_qemu = measure(&mut io);
    data_row(
        "random 4 KiB writes (QEMU: one process)",
        random * 4096,
        rw_ours,
        rw_qemu,
    );
}

/// A small LCG: the same offsets on every run and for both engines.
fn lcg_offsets(n: u64, slots: u64, unit: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 11) % slots * unit
        })
        .collect()
}

/// A metadata-heavy qemu-io command line and the image it starts from.
struct Workload {
    name: String,
    /// prepares `t.qcow2` in the directory (untimed)
    setup: Box<dyn Fn(&Path)>,
    /// options before the commands (`-f qcow2`, `-t ...`)
    options: Vec<String>,
    commands: Vec<String>,
}

impl Workload {
    fn command(&self, program: &str, dir: &Path, with_commands: bool) -> Command {
        let mut c = if program == "qemu-io" {
            Command::new("qemu-io")
        } else {
            let mut c = Command::new(OURS);
            c.arg("io");
            c
        };
        c.current_dir(dir).args(&self.options);
        if with_commands {
            for cmd in &self.commands {
                c.arg("-c").arg(cmd);
            }
        }
        c.arg("t.qcow2");
        c
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (Ok(fa), Ok(fb)) = (std::fs::File::open(a), std::fs::File::open(b)) else {
        return false;
    };
    if fa.metadata().map(|m| m.len()).ok() != fb.metadata().map(|m| m.len()).ok() {
        return false;
    }
    let (mut ra, mut rb) = (
        std::io::BufReader::with_capacity(1 << 20, fa),
        std::io::BufReader::with_capacity(1 << 20, fb),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = ra.read(&mut ba).unwrap_or(0);
        let mut m = 0;
        while m < n {
            match rb.read(&mut bb[m..n]) {
                Ok(0) | Err(_) => return false,
                Ok(k) => m += k,
            }
        }
        if n == 0 {
            return rb.read(&mut bb).is_ok_and(|k| k == 0);
        }
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn metadata_rows(d: &Path, rounds: u64, only: Option<&str>) {
    let ours_dir = d.join("ours");
    let qemu_dir = d.join("qemu");
    std::fs::create_dir_all(&ours_dir).expect("dir");
    std::fs::create_dir_all(&qemu_dir).expect("dir");
    // a fully allocated image to discard, made once
    let full = d.join("full.qcow2");
    let template = d.to_path_buf();
    let workloads = metadata_workloads(&template);
    println!();
    println!(
        "{:<52} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9}",
        "metadata rows (both as processes)",
        "ours s",
        "QEMU s",
        "×wall",
        "ours cpu",
        "QEMU cpu",
        "×cpu",
        "×cpu-net"
    );
    for w in workloads {
        if only.is_some_and(|o| !w.name.contains(o)) {
            continue;
        }
        if w.name.contains("discard") && !full.exists() {
            create(d, "cluster_size=512", "128M");
            let ok = Command::new("qemu-io")
                .current_dir(d)
                .args(["-f", "qcow2", "-c", "write -q 0 128M", "t.qcow2"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "filling the image to discard");
            std::fs::rename(d.join("t.qcow2"), &full).expect("template");
        }
        let (mut ours, mut qemu) = (None, None);
        let (mut ours_start, mut qemu_start) = (None, None);
        let mut identical = true;
        for round in 0..rounds {
            for (prog, dir) in [("blockfault", &ours_dir), ("qemu-io", &qemu_dir)] {
                (w.setup)(dir);
                let start = measure(&mut w.command(prog, dir, false));
                (w.setup)(dir);
                let cost = measure(&mut w.command(prog, dir, true));
                let (slot, start_slot) = if prog == "qemu-io" {
                    (&mut qemu, &mut qemu_start)
                } else {
                    (&mut ours, &mut ours_start)
                };
                match cost {
                    Some(c) => *slot = Some(Cost::best(*slot, c)),
                    None => println!("{}: {prog} failed", w.name),
                }
                if let Some(s) = start {
                    *start_slot = Some(Cost::best(*start_slot, s));
                }
            }
            if round == 0 {
                identical = same_file(&ours_dir.join("t.qcow2"), &qemu_dir.join("t.qcow2"));
            }
        }
        let (Some(o), Some(q)) = (ours, qemu) else {
            continue;
        };
        let net = match (ours_start, qemu_start) {
            (Some(os), Some(qs)) => {
                let (on, qn) = (o.cpu - os.cpu, q.cpu - qs.cpu);
                if on > 0.0 {
                    format!("{:.1}", qn / on)
                } else {
                    "-".into()
                }
            }
            _ => "-".into(),
        };
        println!(
            "{:<52} {:>9.3} {:>9.3} {:>7.1} {:>9.3} {:>9.3} {:>7.1} {:>9}{}",
            w.name,
            o.wall,
            q.wall,
            q.wall / o.wall,
            o.cpu,
            q.cpu,
            q.cpu / o.cpu,
            net,
            if identical { "" } else { "  (images differ!)" }
        );
        if let (Some(os), Some(qs)) = (ours_start, qemu_start) {
            println!(
                "{:<52} {:>9.3} {:>9.3} {:>7} {:>9.3} {:>9.3}",
                "  start-up (same command line, no commands)", os.wall, qs.wall, "", os.cpu, qs.cpu
            );
        }
    }
    println!(
        "×: QEMU's time over ours (higher: ours faster); ×cpu-net subtracts each program's start-up."
    );
}

fn metadata_workloads(d: &Path) -> Vec<Workload> {
    let random = env_u64("BENCH_QCOW2_WT_RANDOM", 2000);
    let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let full = d.join("full.qcow2");
    let random_writes = lcg_offsets(random, IMAGE / 4096, 4096)
        .into_iter()
        .map(|off| format!("write -q {off} 4k"))
        .collect::<Vec<_>>();
    vec![
        Workload {
            name: "shrink 1 GiB -> 600 MiB (512 B clusters, new image)".into(),
            setup: Box::new(|dir| create(dir, "cluster_size=512", "1G")),
            options: opts(&["-f", "qcow2"]),
            commands: vec!["truncate 600M".into()],
        },
        Workload {
            name: "026 refcount-table growth (write 64M, wt, 512 B)".into(),
            setup: Box::new(|dir| create(dir, "cluster_size=512", "1G")),
            options: opts(&["-f", "qcow2", "-t", "writethrough"]),
            commands: vec!["write 0 64M".into()],
        },
        Workload {
            name: "L1 growth (1 -> 256 MiB in 1 MiB truncates, 512 B)".into(),
            setup: Box::new(|dir| create(dir, "cluster_size=512", "1M")),
            options: opts(&["-f", "qcow2"]),
            commands: (2..=256).map(|m| format!("truncate {m}M")).collect(),
        },
        Workload {
            name: format!("{random} random 4 KiB writes, writethrough, 512 B"),
            setup: Box::new(|dir| create(dir, "cluster_size=512", "1G")),
            options: opts(&["-f", "qcow2", "-t", "writethrough"]),
            commands: random_writes.clone(),
        },
        Workload {
            name: format!("{random} random 4 KiB writes, writethrough, 64 KiB"),
            setup: Box::new(|dir| create(dir, "cluster_size=65536", "1G")),
            options: opts(&["-f", "qcow2", "-t", "writethrough"]),
            commands: random_writes,
        },
        Workload {
            name: "discard all of a full 128 MiB image (512 B clusters)".into(),
            setup: Box::new(move |dir| {
                std::fs::copy(&full, dir.join("t.qcow2")).expect("copy the full image");
            }),
            options: opts(&["-f", "qcow2"]),
            commands: vec!["discard 0 128M".into()],
        },
    ]
}

fn main() {
    let seq_bytes = env_u64("BENCH_QCOW2_MIB", 1024).min(1024) << 20;
    let random = env_u64("BENCH_QCOW2_RANDOM", 4096);
    let rounds = env_u64("BENCH_QCOW2_ROUNDS", 3).max(1);
    let only = std::env::var("BENCH_QCOW2_ONLY").ok();
    let dir = scratch();
    let d = dir.path();
    println!("scratch: {}", d.display());
    if only.is_none() {
        data_rows(d, seq_bytes, random);
    }
    metadata_rows(d, rounds, only.as_deref());
}
