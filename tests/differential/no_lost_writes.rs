//! Cases for what used to lose writes or corrupt images, and for when aio completions are
//! reported: concurrent requests, breakpoints on qcow2, request serialisation under
//! `align=`, errors during read-modify-write, parallel qcow2 tasks, and QEMU's bottom halves
//! and thread-pool completions. The harness compares output, exit status and every file's
//! bytes afterwards with real qemu-io, so each case also checks the image QEMU leaves.
//!
//! qcow2 images are made by the real `qemu-img create` when the cases are built, so both
//! programs start from the same bytes.

use crate::harness::{Case, case};
use std::process::Command;

/// The bytes of `qemu-img create -f qcow2 -o OPTS x SIZE`.
pub fn qcow2(opts: &str, size: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", opts])
        .arg(&path)
        .arg(size)
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img create -o {opts} {size}");
    std::fs::read(&path).unwrap()
}

/// `qemu-io ARGS -c CMD...` on `t.qcow2` made with `opts`/`size`.
pub(crate) fn on_qcow2(
    name: &str,
    opts: &str,
    size: &str,
    args: &[&str],
    cmds: &[&str],
    drive: &str,
) -> Case {
    let mut all: Vec<&str> = args.to_vec();
    for c in cmds {
        all.push("-c");
        all.push(c);
    }
    all.push(drive);
    let mut c = case(name, &all);
    c.files.push(("t.qcow2".into(), qcow2(opts, size)));
    c
}

/// qcow2 on blkdebug with `align` and an optional inline rule list.
fn aligned(align: u32, rules: &str) -> String {
    format!(
        r#"json:{{"driver":"qcow2","file":{{"driver":"blkdebug","align":{align}{rules},"image":{{"driver":"file","filename":"t.qcow2"}}}}}}"#
    )
}

fn raw_aligned(align: u32) -> String {
    format!(
        r#"json:{{"driver":"raw","file":{{"driver":"blkdebug","align":{align},"image":{{"driver":"file","filename":"img.raw"}}}}}}"#
    )
}

/// `qemu-io -f raw -c CMD... DRIVE` with the standard zeroed raw images.
fn raw_on(name: &str, cmds: &[&str], drive: &str) -> Case {
    let mut all = vec!["-f", "raw"];
    for c in cmds {
        all.push("-c");
        all.push(c);
    }
    all.push(drive);
    case(name, &all)
}

pub fn all() -> Vec<Case> {
    let mut v = vec![
        // 1. Parallel chunk tasks of one qcow2 write land in the same 4 KiB host block: the
        //    read-modify-writes must serialise, or one task's data is lost.
        on_qcow2(
            "lost_writes_512_byte_clusters_under_align_4k",
            "cluster_size=512",
            "64M",
            &[],
            &[
                "write -P 17 0 512",
                "write -P 0xcd 54196736 4k",
                "read -P 0xcd 54196736 4k",
            ],
            &aligned(4096, ""),
        ),
        // 2. The padding read of the L2 table write fails once; QEMU writes the padding
        //    buffer back anyway, with what its allocator left in it.
        on_qcow2(
            "rmw_read_error_during_l2_alloc",
            "cluster_size=512,lazy_refcounts=off",
            "1M",
            &[],
            &["write -P 91 442368 1536", "read -P 91 442368 1536"],
            &aligned(
                4096,
                r#","inject-error":[{"event":"l2_alloc_write","once":true}]"#,
            ),
        ),
        on_qcow2(
            "rmw_read_error_during_l2_alloc_lazy_refcounts",
            "cluster_size=512,lazy_refcounts=on",
            "1M",
            &[],
            &["write -P 91 442368 1536", "read -P 91 442368 1536"],
            &aligned(
                4096,
                r#","inject-error":[{"event":"l2_alloc_write","once":true}]"#,
            ),
        ),
        // 3. A failing probe read fails the open instead of guessing raw.
        on_qcow2(
            "failed_probe_fails_the_open",
            "cluster_size=65536",
            "1M",
            &[],
            &["write -P 1 0 512"],
            "blkdebug:rules.cfg:t.qcow2",
        )
        .file(
            "rules.cfg",
            "[inject-error]\nevent = \"none\"\nerrno = \"27\"\nonce = \"on\"\n",
        ),
        // 4. iotest 077's core: a second write into the block whose RMW is suspended waits
        //    for it, so resuming the first cannot undo the second.
        raw_on(
            "overlapping_rmw_waits_for_the_suspended_one",
            &[
                "break pwritev_rmw_after_head A",
                "aio_write -P 1 9000 512",
                "wait_break A",
                "aio_write -P 2 9216 512",
                "resume A",
                "aio_flush",
                "read -P 1 9000 216",
                "read -P 2 9216 512",
            ],
            &raw_aligned(4096),
        ),
        // 6. One cluster of a compressed write fails (it is allocated already); the others
        //    are written, as QEMU's per-cluster tasks run in parallel.
        on_qcow2(
            "compressed_write_one_cluster_fails_the_others_land",
            "cluster_size=65536",
            "1M",
            &["-f", "qcow2"],
            &[
                "write -P 1 0 512",
                "write -c -P 2 0 128k",
                "read -P 2 64k 64k",
                "read -P 1 0 512",
            ],
            "t.qcow2",
        ),
        // 7. Completions of requests that need no I/O come from a bottom half at the next
        //    poll, newest first; commands that do not poll print first.
        on_qcow2(
            "aio_completion_waits_for_a_poll",
            "cluster_size=65536",
            "1M",
            &["-f", "qcow2"],
            &[
                "aio_read 0 512",
                "length",
                "aio_read 512 512",
                "aio_read 1024 512",
                "info",
                "aio_flush",
            ],
            "t.qcow2",
        ),
        // ... and an allocating aio_write is not visible to a synchronous read issued before
        //    its data write completed; the read's completion comes before the write's.
        on_qcow2(
            "allocating_aio_write_not_yet_visible",
            "cluster_size=65536",
            "1M",
            &["-f", "qcow2"],
            &[
                "aio_read 0 512",
                "length",
                "aio_write -P 5 0 512",
                "length",
                "aio_read -P 0 0 512",
                "aio_read 512 512",
                "read -P 0 0 512",
                "aio_flush",
                "read -P 5 0 512",
            ],
            "t.qcow2",
        ),
        raw_on(
            "aio_write_then_read_completes_after_it",
            &["aio_write -P 1 0 512", "read -P 1 0 512", "aio_flush"],
            "img.raw",
        ),
        // 8. (aio_write across `truncate 0`) races in QEMU itself: see ours.rs.
    ];
    // 5. A qcow2 write stopped at a breakpoint and resumed completes, wherever it stopped.
    for event in [
        "write_aio",
        "pwritev",
        "cluster_alloc",
        "l2_update",
        "refblock_alloc",
    ] {
        v.push(on_qcow2(
            &format!("qcow2_write_resumed_at_{event}_completes"),
            "cluster_size=65536",
            "1M",
            &["-f", "qcow2", "-t", "writeback"],
            &[
                &format!("break {event} A"),
                "aio_write -P 0x33 0 4k",
                "wait_break A",
                "resume A",
                "aio_flush",
                "read -P 0x33 0 4k",
            ],
            "blkdebug::t.qcow2",
        ));
    }
    // 046's pattern: two allocating writes into one cluster, the first held at a breakpoint;
    // the second waits for the first's allocation.
    v.push(on_qcow2(
        "qcow2_overlapping_allocations_wait_for_each_other",
        "cluster_size=65536",
        "1M",
        &["-f", "qcow2"],
        &[
            "break write_aio A",
            "aio_write -P 0x80 0 4k",
            "wait_break A",
            "aio_write -P 0x81 4k 4k",
            "resume A",
            "aio_flush",
            "read -P 0x80 0 4k",
            "read -P 0x81 4k 4k",
            "read -P 0 8k 56k",
        ],
        "blkdebug::t.qcow2",
    ));
    v.extend(found_by_the_fuzzer());
    v
}

/// Classes the differential fuzzer found beyond the issue's list, one case each.
fn found_by_the_fuzzer() -> Vec<Case> {
    vec![
        // A zero-length compressed write pads the image file to whole sectors.
        on_qcow2(
            "fuzz_zero_length_compressed_write_pads_the_file",
            "cluster_size=1024",
            "1M",
            &["-f", "qcow2"],
            &["write -c 0 0"],
            "t.qcow2",
        ),
        // cache=unsafe: a FUA write is a plain write, no flush (and no flush_to_os event).
        on_qcow2(
            "fuzz_unsafe_fua_write_does_not_flush",
            "cluster_size=65536",
            "1M",
            &["-f", "qcow2", "-t", "unsafe"],
            &["write 0 512", "write -f 0 512", "write 4096 512"],
            "blkdebug:rules.cfg:t.qcow2",
        )
        .file("rules.cfg", "[inject-error]\nevent = \"flush_to_os\"\n"),
        // A truncate qcow2 refuses writes nothing, so the next flush has nothing to flush.
        on_qcow2(
            "fuzz_refused_truncate_is_not_a_write",
            "cluster_size=65536",
            "8315188",
            &["-f", "qcow2"],
            &["truncate 1000", "flush", "write 0 512"],
            "blkdebug:rules.cfg:t.qcow2",
        )
        .file("rules.cfg", "[inject-error]\nevent = \"flush_to_disk\"\n"),
        // A parallel write over several L2 slices whose first and last chunks fail: the middle
        // chunks still land.
        on_qcow2(
            "fuzz_parallel_chunks_land_beside_failing_ones",
            "cluster_size=512",
            "16M",
            &["-f", "qcow2"],
            &["write -P 65 1 131072", "map"],
            "blkdebug:rules.cfg:t.qcow2",
        )
        .file(
            "rules.cfg",
            "[inject-error]\nevent = \"none\"\niotype = \"write-zeroes\"\n",
        ),
        // readv and writev are aio requests qemu-io waits for in whole main-loop iterations:
        // completions of earlier aio requests pending in bottom halves print first, even when
        // the readv itself needs no I/O (unallocated qcow2 clusters).
        on_qcow2(
            "fuzz_readv_reports_after_pending_aio_completions",
            "cluster_size=65536",
            "254244",
            &["-f", "qcow2"],
            &[
                "aio_read 1732917 1024",
                "readv 63487 65536 4095",
                "aio_read 0 1024",
                "readv 0 512",
            ],
            "t.qcow2",
        ),
        on_qcow2(
            "fuzz_writev_reports_after_pending_aio_completions",
            "cluster_size=65536",
            "1M",
            &["-f", "qcow2"],
            &[
                "aio_read 0 1024",
                "writev -P 5 0 512",
                "aio_read 2M 512",
                "writev -P 6 4096 512 512",
                "read -P 6 4096 1024",
            ],
            "t.qcow2",
        ),
        // A probed raw image warns with its file's filename: blkdebug with options beyond
        // `config` is named by a json: filename (its strong options in QDict order).
        case(
            "fuzz_probed_raw_names_blkdebug_by_its_json_filename",
            &[
                "-c",
                "write -P 1 512 512",
                r#"json:{"file":{"inject-error":[{"event":"none","iotype":"flush"},{"event":"read_aio","errno":5,"once":true,"sector":3,"state":1,"immediately":true},{"event":"l2_load","errno":28}],"set-state":[{"event":"write_aio","state":2,"new_state":3},{"event":"flush_to_os","new_state":2}],"driver":"blkdebug","align":4096,"max-transfer":65536,"image":{"driver":"file","filename":"img.raw"}}}"#,
            ],
        ),
        // `truncate -m full` under O_DIRECT fails as file-posix's unaligned zero buffer does.
        case(
            "fuzz_full_preallocation_under_o_direct_fails",
            &[
                "-f",
                "raw",
                "-t",
                "none",
                "-c",
                "truncate -m full 2M",
                "-c",
                "length",
                "img.raw",
            ],
        ),
    ]
}
