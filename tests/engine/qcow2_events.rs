//! qcow2 blkdebug event order, measured the same way on real qemu-io and on our engine.
//!
//! Position tracer (shared/reference/qcow2-events.md §6): the blkdebug config counts events
//! with set-state rules (every event moves state s to s+1) and arms, for one probed position
//! i, an inject-error rule per event with a distinct errno. The first error text in the
//! output names the event at position i. Comparing the named sequences of both engines
//! position by position checks that every event fires at the same point and in the same
//! order. Skipped (with a printed reason) when qemu-io or qemu-img is missing.
//!
//! `QCOW2_EVENTS_PRINT=1` prints both sequences of every case.

use crate::support::have;
use std::path::{Path, PathBuf};
use std::process::Command;

const EVENTS: [&str; 48] = [
    "l1_update",
    "l1_grow_alloc_table",
    "l1_grow_write_table",
    "l1_grow_activate_table",
    "l2_load",
    "l2_update",
    "l2_update_compressed",
    "l2_alloc_cow_read",
    "l2_alloc_write",
    "read_aio",
    "read_backing_aio",
    "read_compressed",
    "write_aio",
    "write_compressed",
    "vmstate_load",
    "vmstate_save",
    "cow_read",
    "cow_write",
    "reftable_load",
    "reftable_grow",
    "reftable_update",
    "refblock_load",
    "refblock_update",
    "refblock_update_part",
    "refblock_alloc",
    "refblock_alloc_hookup",
    "refblock_alloc_write",
    "refblock_alloc_write_blocks",
    "refblock_alloc_write_table",
    "refblock_alloc_switch_table",
    "cluster_alloc",
    "cluster_alloc_bytes",
    "cluster_free",
    "flush_to_os",
    "flush_to_disk",
    "pwritev_rmw_head",
    "pwritev_rmw_after_head",
    "pwritev_rmw_tail",
    "pwritev_rmw_after_tail",
    "pwritev",
    "pwritev_zero",
    "pwritev_done",
    "empty_image_prepare",
    "l1_shrink_write_table",
    "l1_shrink_free_l2_clusters",
    "cor_write",
    "cluster_alloc_space",
    "none",
];

/// Distinct errnos nobody else produces: 60..=94 and 96..=108 (95 is ENOTSUP).
fn errno_of(i: usize) -> i32 {
    let e = 60 + i as i32;
    if e >= 95 { e + 1 } else { e }
}

fn strerror(e: i32) -> String {
    // SAFETY: strerror returns a pointer to a static or thread-local NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(e)) }
        .to_string_lossy()
        .into_owned()
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().expect("run");
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn config(k: usize, probe: usize) -> String {
    let mut c = String::new();
    for (i, e) in EVENTS.iter().enumerate() {
        c.push_str(&format!(
            "[inject-error]\nevent = \"{e}\"\nstate = \"{probe}\"\nonce = \"off\"\nerrno = \"{}\"\n\n",
            errno_of(i)
        ));
    }
    for s in 1..=k {
        for e in EVENTS {
            c.push_str(&format!(
                "[set-state]\nevent = \"{e}\"\nstate = \"{s}\"\nnew_state = \"{}\"\n\n",
                s + 1
            ));
        }
    }
    c
}

/// Which event the first error message of a run names.
fn first_event(out: &str, texts: &[String]) -> Option<&'static str> {
    let mut best: Option<(usize, usize, usize)> = None;
    for (i, t) in texts.iter().enumerate() {
        if let Some(p) = out.find(t.as_str()) {
            let cand = (p, usize::MAX - t.len(), i);
            if best.is_none_or(|b| cand < b) {
                best = Some(cand);
            }
        }
    }
    best.map(|b| EVENTS[b.2])
}

struct Case {
    name: &'static str,
    /// shell commands that prepare the images in the case directory (real qemu-img/qemu-io)
    setup: &'static str,
    /// the image opened through blkdebug
    image: &'static str,
    commands: &'static [&'static str],
    cache: &'static str,
    /// how many event positions to probe at most
    max_events: usize,
}

enum Engine {
    Qemu,
    Ours,
}

/// The event at position `probe` in one run of `case` on `engine`; `attempt` tells apart runs
/// of the same position at the same time.
fn probe_at(
    engine: &Engine,
    case: &Case,
    work: &Path,
    texts: &[String],
    probe: usize,
    attempt: usize,
) -> Option<&'static str> {
    let golden = work.join("golden");
    // QEMU's trace and ours run at the same time: a directory of each engine's own.
    let who = match engine {
        Engine::Qemu => "qemu",
        Engine::Ours => "ours",
    };
    let dir = work.join(format!("{who}-p{probe}-{attempt}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(&golden).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    // State-changing rules past `probe` cannot bring the state back to `probe`: the first
    // error is the same without them, and a config a few times shorter is parsed a few times
    // faster by both programs.
    std::fs::write(dir.join("t.conf"), config(probe, probe)).unwrap();
    let mut cmd = match engine {
        Engine::Qemu => Command::new("qemu-io"),
        Engine::Ours => {
            let mut c = Command::new(env!("CARGO_BIN_EXE_blockfault"));
            c.arg("io");
            c
        }
    };
    cmd.current_dir(&dir)
        .args(["--cache", case.cache, "-f", "qcow2"]);
    for c in case.commands {
        cmd.args(["-c", c]);
    }
    cmd.arg(format!("blkdebug:t.conf:{}", case.image));
    let out = run(&mut cmd);
    let _ = std::fs::remove_dir_all(&dir);
    first_event(&out, texts)
}

/// How many positions of one trace are probed at once: a trace is sequential only in where it
/// stops (after 4 silent positions), so the few probes past the end cost less than waiting.
const WINDOW: usize = 4;

fn trace(engine: &Engine, case: &Case, work: &Path, texts: &[String]) -> Vec<Option<&'static str>> {
    let mut seq = Vec::new();
    let mut silent = 0;
    let mut next = 1;
    'probing: while next <= case.max_events {
        let window: Vec<usize> = (next..=case.max_events).take(WINDOW).collect();
        next += window.len();
        let found = parallel(WINDOW, &window, |&probe| {
            probe_at(engine, case, work, texts, probe, 0)
        });
        for ev in found {
            seq.push(ev);
            if ev.is_none() {
                silent += 1;
                if silent >= 4 {
                    break 'probing;
                }
            } else {
                silent = 0;
            }
        }
    }
    while seq.last() == Some(&None) {
        seq.pop();
    }
    seq
}

/// How often QEMU is asked again at a position where it and ours differ.
const QEMU_RETRIES: usize = 6;

/// The case's directory, with its images made by the setup script in `golden/`.
fn prepare(case: &Case) -> PathBuf {
    let work = crate::support::scratch_root().join(format!(
        "bf-qcow2-events-{}-{}",
        case.name,
        std::process::id()
    ));
    let golden = work.join("golden");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&golden).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(case.setup)
        .current_dir(&golden)
        .status()
        .unwrap();
    assert!(st.success(), "setup of {} failed", case.name);
    work
}

fn texts() -> Vec<String> {
    (0..EVENTS.len()).map(|i| strerror(errno_of(i))).collect()
}

/// Compares the two traces of `case` (QEMU asked again where they differ).
fn check(
    case: &Case,
    work: &Path,
    mut q: Vec<Option<&'static str>>,
    o: Vec<Option<&'static str>>,
) -> Result<(), String> {
    let texts = texts();
    // Where concurrent requests race in QEMU's thread pool, its order can depend on how
    // busy the machine is. A position where ours differs is asked again: if QEMU's own
    // answers vary there and ours is among them, the position is QEMU's race, not our bug.
    let mut raced = Vec::new();
    let n = q.len().max(o.len());
    q.resize(n, None);
    let differing: Vec<usize> = (0..n)
        .filter(|&p| q[p] != o.get(p).copied().flatten())
        .collect();
    // Every retry is its own process: all of them at once.
    let retries: Vec<(usize, usize)> = differing
        .iter()
        .flat_map(|&p| (1..=QEMU_RETRIES).map(move |a| (p, a)))
        .collect();
    let answers = parallel(threads(), &retries, |&(p, attempt)| {
        probe_at(&Engine::Qemu, case, work, &texts, p + 1, attempt)
    });
    for (k, &p) in differing.iter().enumerate() {
        let oe = o.get(p).copied().flatten();
        let answers = &answers[k * QEMU_RETRIES..(k + 1) * QEMU_RETRIES];
        // the first run already gave another answer, so any agreement means QEMU varies
        if answers.contains(&oe) {
            raced.push(format!("{} ({:?})", p + 1, answers));
            q[p] = oe;
        }
    }
    if !raced.is_empty() {
        eprintln!(
            "{}: QEMU's order varies from run to run at positions {}",
            case.name,
            raced.join(", ")
        );
    }
    while q.last() == Some(&None) {
        q.pop();
    }
    let _ = std::fs::remove_dir_all(work);
    let fmt = |s: &[Option<&str>]| {
        s.iter()
            .enumerate()
            .map(|(i, e)| format!("{} {}", i + 1, e.unwrap_or("-")))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if std::env::var_os("QCOW2_EVENTS_PRINT").is_some() {
        eprintln!(
            "{} qemu: {}\n{} ours: {}",
            case.name,
            fmt(&q),
            case.name,
            fmt(&o)
        );
    }
    if q != o {
        let first = q
            .iter()
            .zip(o.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(q.len().min(o.len()));
        return Err(format!(
            "{}: sequences differ from position {}\n qemu: {}\n ours: {}",
            case.name,
            first + 1,
            fmt(&q),
            fmt(&o)
        ));
    }
    Ok(())
}

const BASE64K: &str =
    "qemu-img create -q -f qcow2 -o cluster_size=65536,refcount_bits=16,compat=1.1 s.qcow2 64M";
const PLUS4K: &str = "qemu-img create -q -f qcow2 -o cluster_size=65536,refcount_bits=16,compat=1.1 s.qcow2 64M && qemu-io -f qcow2 -c 'write -P 0x11 0 4k' s.qcow2 >/dev/null";

const CASES: &[Case] = &[
    Case {
        name: "a_first_write",
        setup: BASE64K,
        image: "s.qcow2",
        commands: &["write -P 0xaa 0 4k", "read -P 0xaa 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "a2_full_cluster",
        setup: BASE64K,
        image: "s.qcow2",
        commands: &["write 0 64k", "read 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "b_same_cluster",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["write -P 0xbb 4k 4k", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "c_new_cluster",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["write -P 0xcc 64k 4k", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "d_reads",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["read 0 4k", "read 1M 4k", "read 0 128k", "write 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "e_writeback_flush",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["write 64k 4k", "flush", "read -P 0x11 0 4k"],
        cache: "writeback",
        max_events: 90,
    },
    Case {
        name: "e_writethrough_flush",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["write 64k 4k", "flush", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "g_backing_cow",
        setup: "qemu-img create -q -f qcow2 base.qcow2 64M && qemu-io -f qcow2 -c 'write -P 0x55 0 1M' base.qcow2 >/dev/null && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 ov.qcow2 64M",
        image: "ov.qcow2",
        commands: &[
            "write -P 0xdd 4k 4k",
            "write 1052672 4k",
            "read -P 0x55 0 4k",
            "read -P 0xdd 4k 4k",
        ],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "h_zero_writes",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &[
            "write -z 0 64k",
            "write -z 64k 64k",
            "write -z 4k 4k",
            "write -z 132k 4k",
            "read 0 4k",
        ],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "h_zero_unmap",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["write -z -u 0 64k", "write 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "h_discard",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["discard 0 64k", "discard 0 4k", "write 128k 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "i_compressed",
        setup: BASE64K,
        image: "s.qcow2",
        commands: &[
            "write -c 64k 64k",
            "read 64k 4k",
            "write 64k 4k",
            "read 64k 4k",
        ],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "j_lazy_refcounts",
        setup: "qemu-img create -q -f qcow2 -o lazy_refcounts=on s.qcow2 64M",
        image: "s.qcow2",
        commands: &["write -P 0xaa 0 4k", "read 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "vmstate_l1_growth_1k",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=1024 s.qcow2 1G",
        image: "s.qcow2",
        commands: &["write -b 0 64k", "read -b 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "write_128k_1k_clusters",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=1024 s.qcow2 1G && qemu-io -f qcow2 -c 'write 0 512' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &["write 0 128k", "read 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "f1_refblock_alloc_512",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=512 s.qcow2 64M && qemu-io -f qcow2 -c 'write 0 96k' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &["write 96k 32k", "read 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    // One guest write spanning 8 L2 slices: 8 chunks run as parallel aio tasks, their
    // events interleave (the data writes of earlier chunks complete while later chunks
    // allocate their L2 tables).
    Case {
        name: "parallel_write_1m_1k_clusters",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=1024 s.qcow2 1G",
        image: "s.qcow2",
        commands: &["write 0 1M", "read 0 4k"],
        cache: "writethrough",
        max_events: 400,
    },
    // The same write within one L2 slice: a single chunk, no task pool.
    Case {
        name: "parallel_write_1m_64k_clusters",
        setup: BASE64K,
        image: "s.qcow2",
        commands: &["write 0 1M", "read 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    // 026's l2_update case with -b: the vmstate write splits into 2 chunks (the existing
    // cluster extended in place, then a new allocation) that run as parallel tasks.
    Case {
        name: "parallel_vmstate_write_128k_after_512",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=1024 s.qcow2 1G && qemu-io -f qcow2 -c 'write -b 0 512' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &["write -b 0 128k", "read -b 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "parallel_vmstate_write_128k_after_plain_512",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=1024 s.qcow2 1G && qemu-io -f qcow2 -c 'write 0 512' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &["write -b 0 128k", "read -b 0 4k"],
        cache: "writethrough",
        max_events: 120,
    },
    // Resize. Growing past the L1 table: l1_grow_* with an exact-size table, the header's
    // size field, then the caches are flushed and replaced (the sentinel read loads L2 again).
    Case {
        name: "resize_grow_l1",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["truncate 1G", "read -P 0x11 0 4k", "write 600M 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "resize_grow_within_l1",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["truncate 100M", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    // Shrinking: discard of the cropped clusters, l1_shrink_write_table (write-zeroes of the
    // dropped L1 entries), l1_shrink_free_l2_clusters (their L2 tables freed), the reftable
    // rewrite, the size field.
    Case {
        name: "resize_shrink_l1",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=65536,refcount_bits=16,compat=1.1 s.qcow2 2G && qemu-io -f qcow2 -c 'write -P 0x11 0 4k' -c 'write -P 0x22 1G 128k' -c 'write 1536M 64k' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &["truncate 64M", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "resize_shrink_within_l2",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["write 1M 64k", "truncate 512k", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "resize_shrink_1k_clusters",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=1024 s.qcow2 64M && qemu-io -f qcow2 -c 'write 0 1M' -c 'write 32M 2M' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &["truncate 512k", "read 0 4k"],
        cache: "writethrough",
        max_events: 200,
    },
    Case {
        name: "resize_prealloc_metadata",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["truncate -m metadata 66M", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "resize_prealloc_full",
        setup: PLUS4K,
        image: "s.qcow2",
        commands: &["truncate -m full 65M", "read -P 0x11 0 4k"],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "resize_prealloc_falloc_l1_growth",
        setup: "qemu-img create -q -f qcow2 -o cluster_size=1024 s.qcow2 1M && qemu-io -f qcow2 -c 'write 0 4k' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &["truncate -m falloc 2M", "read 0 4k"],
        cache: "writethrough",
        max_events: 200,
    },
    // subcluster allocation inside an allocated cluster, subcluster zeroing, a new cluster
    // with a partial subcluster
    Case {
        name: "feature_extended_l2_subclusters",
        setup: "qemu-img create -q -f qcow2 -o extended_l2=on s.qcow2 1M && qemu-io -f qcow2 -c 'write -P 0x11 0 1k' s.qcow2 >/dev/null",
        image: "s.qcow2",
        commands: &[
            "write -P 1 3k 512",
            "write -z 8k 2k",
            "write -P 2 70k 1k",
            "read -P 1 3k 512",
        ],
        cache: "writethrough",
        max_events: 90,
    },
    // data I/O on the data file, metadata and events on the image file
    Case {
        name: "feature_data_file",
        setup: "qemu-img create -q -f qcow2 -o data_file=s.data s.qcow2 1M",
        image: "s.qcow2",
        commands: &[
            "write -P 1 0 4k",
            "write -z -u 0 64k",
            "write -P 2 64k 4k",
            "discard 64k 64k",
            "read -P 0 64k 4k",
        ],
        cache: "writethrough",
        max_events: 90,
    },
    Case {
        name: "feature_zstd",
        setup: "qemu-img create -q -f qcow2 -o compression_type=zstd s.qcow2 1M",
        image: "s.qcow2",
        commands: &[
            "write -c -P 1 64k 64k",
            "write -P 2 64k 4k",
            "read -P 1 68k 4k",
        ],
        cache: "writethrough",
        max_events: 90,
    },
];

#[test]
fn qcow2_event_positions_match_qemu() {
    if !have("qemu-io") || !have("qemu-img") {
        eprintln!("skipped: qemu-io/qemu-img 10.0.2 not installed");
        return;
    }
    let only = std::env::var("QCOW2_EVENTS_CASE").ok();
    let mut cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| only.as_deref().is_none_or(|o| c.name.contains(o)))
        .collect();
    // The longest traces first, so that none is left running alone at the end.
    cases.sort_by_key(|c| std::cmp::Reverse(c.max_events));
    let works: Vec<PathBuf> = cases.iter().map(|c| prepare(c)).collect();
    // The two traces of every case, QEMU's and ours, are independent jobs.
    let threads = threads();
    let engines = [Engine::Qemu, Engine::Ours];
    let jobs: Vec<(usize, &Engine)> = (0..cases.len())
        .flat_map(|i| engines.iter().map(move |e| (i, e)))
        .collect();
    let texts = texts();
    let traces = parallel(threads, &jobs, |&(i, engine)| {
        trace(engine, cases[i], &works[i], &texts)
    });
    let mut traces = traces.into_iter();
    let pairs: Vec<_> = (0..cases.len())
        .map(|i| {
            let q = traces.next().unwrap();
            let o = traces.next().unwrap();
            (i, q, o)
        })
        .collect();
    let results = parallel(threads, &pairs, |(i, q, o)| {
        check(cases[*i], &works[*i], q.clone(), o.clone())
    });
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Each probe is one short-lived process that spends about half its time waiting (exec, its
/// thread pool): twice as many threads as there are cores keep them busy.
fn threads() -> usize {
    2 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// `f` over `items` on `threads` threads, results in the items' order.
fn parallel<T: Sync, R: Send>(threads: usize, items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new((0..items.len()).map(|_| None).collect::<Vec<_>>());
    std::thread::scope(|s| {
        for _ in 0..threads.min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    results.lock().unwrap()[i] = Some(r);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

#[allow(dead_code)]
fn unused(_: PathBuf) {}
