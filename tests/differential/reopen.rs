//! `reopen` as QEMU 10.0.2 does it: option and flag errors, switching between read-only and
//! read-write, the flush before anything changes (and what its failure leaves), qcow2's
//! metadata caches dropped and reloaded, lazy refcounts and the dirty bit, cache modes,
//! children's options, and the transaction: an error anywhere leaves every node as it was.
//! Events are observed through blkdebug rules: a `set-state` ladder counts an event, and a rule
//! armed at one state of the ladder shows whether exactly that many happened.

use crate::harness::{Case, case};
use crate::no_lost_writes::qcow2;
use std::process::Command;

/// `qemu-io ARGS -c CMD... DRIVE`
fn io(name: &str, args: &[&str], cmds: &[&str], drive: &str) -> Case {
    let mut all: Vec<&str> = args.to_vec();
    for c in cmds {
        all.push("-c");
        all.push(c);
    }
    all.push(drive);
    case(name, &all)
}

/// On a fresh 64 MiB qcow2 image `t.qcow2` made by qemu-img with `opts`.
fn on_qcow2(name: &str, opts: &str, args: &[&str], cmds: &[&str], drive: &str) -> Case {
    let mut c = io(name, args, cmds, drive);
    c.files.push(("t.qcow2".into(), qcow2(opts, "64M")));
    c
}

/// The qcow2 image `opts` describes after real qemu-io wrote one cluster and was killed: lazy
/// refcounts leave it dirty, with the cluster's refcount never written.
fn dirty_qcow2() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.qcow2");
    std::fs::write(&path, qcow2("lazy_refcounts=on", "64M")).unwrap();
    let _ = Command::new("qemu-io")
        .args(["-c", "write -P 7 0 512", "-c", "sigraise 9"])
        .arg(&path)
        .output()
        .expect("qemu-io runs");
    std::fs::read(&path).unwrap()
}

/// `b.qcow2` and `t.qcow2` over it, made by qemu-img.
fn backing_chain() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let img = |args: &[&str]| {
        let st = Command::new("qemu-img")
            .current_dir(dir.path())
            .args(args)
            .status()
            .expect("qemu-img runs");
        assert!(st.success(), "qemu-img {args:?}");
    };
    img(&["create", "-q", "-f", "qcow2", "b.qcow2", "64M"]);
    img(&[
        "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2",
    ]);
    ["b.qcow2", "t.qcow2"]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(dir.path().join(f)).unwrap()))
        .collect()
}

/// A `set-state` ladder on `event` (state 1 -> 2 -> ... -> 16), then `rule` (armed at a
/// state of the ladder).
fn ladder(event: &str, rule: &str) -> String {
    let mut conf = String::new();
    for i in 1..16 {
        conf.push_str(&format!(
            "[set-state]\nevent = \"{event}\"\nstate = \"{i}\"\nnew_state = \"{}\"\n\n",
            i + 1
        ));
    }
    conf + rule
}

/// Reads fail at state `k` of the ladder: the read after `cmds` fails iff `event` happened
/// exactly k-1 times before it.
fn count_events(name: &str, event: &str, k: u32, cmds: &[&str], qcow: bool) -> Case {
    let rule = format!("[inject-error]\nevent = \"read_aio\"\nstate = \"{k}\"\n");
    let mut all: Vec<&str> = cmds.to_vec();
    all.push("read 0 512");
    let c = if qcow {
        on_qcow2(name, "compat=1.1", &[], &all, "blkdebug:d.conf:t.qcow2")
    } else {
        io(name, &["-f", "raw"], &all, "blkdebug:d.conf:img.raw")
    };
    c.file("d.conf", &ladder(event, &rule))
}

pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(errors());
    v.extend(read_only());
    v.extend(flushes());
    v.extend(qcow2_state());
    v.extend(children());
    v.extend(joins_and_modes());
    v
}

fn errors() -> Vec<Case> {
    let each = |name: &str, cmd: &str| {
        on_qcow2(
            name,
            "compat=1.1",
            &[],
            &[cmd, "write -P 3 0 512", "read -P 3 0 512"],
            "t.qcow2",
        )
    };
    vec![
        each("reopen_unknown_option", "reopen -o foo=bar"),
        each("reopen_driver_cannot_change", "reopen -o driver=raw"),
        each("reopen_same_driver", "reopen -o driver=qcow2"),
        each("reopen_child_unknown_option", "reopen -o file.foo=1"),
        each("reopen_file_aio_cannot_change", "reopen -o file.aio=native"),
        each(
            "reopen_file_locking_cannot_change",
            "reopen -o file.locking=off",
        ),
        each("reopen_filename_cannot_change", "reopen -o file.filename=x"),
        each("reopen_same_file_driver", "reopen -o file.driver=file"),
        each("reopen_node_name_cannot_change", "reopen -o node-name=foo"),
        each(
            "reopen_force_share_cannot_change",
            "reopen -o force-share=on",
        ),
        // QEMU reports the option its dictionary holds first: `aa` before `zz`.
        each(
            "reopen_first_bad_option_in_qdict_order",
            "reopen -o zz=1,aa=2",
        ),
        each(
            "reopen_qcow2_bool_error_first",
            "reopen -o foo=1,lazy-refcounts=42",
        ),
        each("reopen_read_only_not_bool", "reopen -o read-only=foo"),
        each("reopen_no_flush_not_bool", "reopen -o cache.no-flush=bar"),
        each("reopen_direct_not_bool", "reopen -o cache.direct=baz"),
        each(
            "reopen_auto_read_only_not_bool",
            "reopen -o auto-read-only=qux",
        ),
        each(
            "reopen_bool_spellings",
            "reopen -o read-only=n,cache.direct=false",
        ),
        each("reopen_bad_discard", "reopen -o discard=foo"),
        each("reopen_bad_detect_zeroes", "reopen -o detect-zeroes=foo"),
        each("reopen_id_refused", "reopen -o id=abc"),
        each("reopen_short_form_boolean", "reopen -o foo"),
        each("reopen_invalid_cache_mode", "reopen -c bogus"),
        each("reopen_r_and_w", "reopen -r -w"),
        each("reopen_r_and_read_only_option", "reopen -r -o read-only=on"),
        each("reopen_w_and_read_only_option", "reopen -w -o read-only=on"),
        each(
            "reopen_c_and_cache_direct",
            "reopen -c none -o cache.direct=on",
        ),
        each(
            "reopen_c_and_no_flush",
            "reopen -c directsync -o cache.no-flush=on",
        ),
        each("reopen_extra_argument", "reopen x"),
        each("reopen_unknown_flag", "reopen -x"),
        // Two -o merge, the later value winning.
        each("reopen_two_o_merge", "reopen -o lazy-refcounts=on -o foo=1"),
        // QEMU keeps what -o parsed when -c or -r/-w then fails: the next reopen gets it.
        on_qcow2(
            "reopen_options_left_by_a_failed_reopen",
            "compat=1.1",
            &[],
            &[
                "reopen -o foo=bar -c bogus",
                "reopen",
                "reopen",
                "reopen -o x=1 -r -w",
                "reopen",
            ],
            "t.qcow2",
        ),
        // ...but not when the parse itself fails.
        on_qcow2(
            "reopen_options_dropped_by_bad_usage",
            "compat=1.1",
            &[],
            &[
                "reopen -o foo=bar -x",
                "reopen",
                "reopen -o id=a,foo=1",
                "reopen",
            ],
            "t.qcow2",
        ),
        // blkverify cannot be reopened at all.
        io(
            "reopen_blkverify_unsupported",
            &["-f", "raw"],
            &["reopen", "reopen -r", "read 0 512"],
            "blkverify:raw.img:img.raw",
        ),
        // Nor can the copy-on-read and compress filters.
        io(
            "reopen_filters_unsupported",
            &[],
            &["reopen", "reopen -r", "write 0 512"],
            r#"json:{"driver":"copy-on-read","file":{"driver":"raw","file":{"driver":"file","filename":"img.raw"}}}"#,
        ),
        on_qcow2(
            "reopen_compress_filter_unsupported",
            "compat=1.1",
            &[],
            &["reopen -o foo=1", "write 0 64k"],
            r#"json:{"driver":"compress","file":{"driver":"qcow2","file":{"driver":"file","filename":"t.qcow2"}}}"#,
        ),
        io(
            "reopen_copy_on_read_refuses_read_only",
            &["-f", "raw", "-C"],
            &["reopen -r", "read 0 512"],
            "img.raw",
        ),
    ]
}

fn read_only() -> Vec<Case> {
    vec![
        // iotest 187 on qcow2 and raw.
        on_qcow2(
            "reopen_read_write_from_read_only",
            "compat=1.1",
            &["-r"],
            &[
                "write 0 64k",
                "reopen -w",
                "write -P 5 0 64k",
                "reopen -r",
                "write 0 64k",
                "read -P 5 0 64k",
            ],
            "t.qcow2",
        ),
        on_qcow2(
            "reopen_read_only_then_writable_again",
            "compat=1.1",
            &[],
            &[
                "write -P 1 0 64k",
                "reopen -r",
                "write 0 64k",
                "reopen -w",
                "write -P 2 64k 64k",
                "read -P 2 64k 64k",
            ],
            "t.qcow2",
        ),
        io(
            "reopen_raw_read_only_and_back",
            &["-f", "raw"],
            &[
                "reopen -r",
                "write 0 512",
                "reopen -w",
                "write -P 9 0 512",
                "read -P 9 0 512",
            ],
            "img.raw",
        ),
        // The BlockBackend still wants to write: the node may not become read-only.
        on_qcow2(
            "reopen_read_only_option_with_a_writer",
            "compat=1.1",
            &[],
            &["reopen -o read-only=on", "write 0 512"],
            "t.qcow2",
        ),
        // A writable qcow2 node writes to its file, which may not become read-only.
        on_qcow2(
            "reopen_file_read_only_under_writable_format",
            "compat=1.1",
            &[],
            &["reopen -o file.read-only=on", "write 0 512"],
            "t.qcow2",
        ),
        on_qcow2(
            "reopen_file_writable_under_read_only_format",
            "compat=1.1",
            &[],
            &[
                "reopen -r -o file.read-only=off",
                "write 0 512",
                "read 0 512",
            ],
            "t.qcow2",
        ),
        // After a failed `reopen -r` the BlockBackend has given up writing, so the read-only
        // option alone succeeds; a write then takes the permission back.
        io(
            "reopen_failed_read_only_drops_the_write_permission",
            &["-f", "raw", "-t", "writeback"],
            &[
                "write 0 512",
                "reopen -r",
                "reopen -o read-only=on",
                "write 0 512",
                "reopen -w",
                "write 0 512",
            ],
            "blkdebug:d.conf:img.raw",
        )
        .file(
            "d.conf",
            "[inject-error]\nevent = \"flush_to_disk\"\niotype = \"flush\"\nonce = \"on\"\n",
        ),
        // In-flight requests finish (and report) before the reopen.
        io(
            "reopen_drains_aio_first",
            &["-f", "raw"],
            &[
                "aio_write -P 4 0 512",
                "reopen -o foo=bar",
                "read -P 4 0 512",
            ],
            "img.raw",
        ),
        io(
            "reopen_read_only_drains_aio_first",
            &["-f", "raw"],
            &["aio_write -P 4 0 512", "reopen -r", "read -P 4 0 512"],
            "img.raw",
        ),
        // -s: the overlay is reopened, not the image under it, whose options stay foreign.
        // (Only the first successful reopen: after it QEMU opens its deleted temporary file
        // again, whose name differs; see ours.rs.)
        on_qcow2(
            "reopen_snapshot_overlay",
            "compat=1.1",
            &["-s"],
            &[
                "write -P 6 0 512",
                "reopen -o backing.read-only=off",
                "reopen -o driver=qcow2",
                "read -P 6 0 512",
            ],
            "t.qcow2",
        ),
    ]
}

fn flushes() -> Vec<Case> {
    let flush_fails = "[inject-error]\nevent = \"none\"\niotype = \"flush\"\n";
    vec![
        // The differential fuzzer's case: the flush fails, the node stays read-write.
        io(
            "reopen_flush_error_keeps_the_node",
            &["-f", "raw", "-t", "writeback"],
            &[
                "write 0 512",
                "reopen -r",
                "write -P 8 0 512",
                "read -P 8 0 512",
            ],
            "blkdebug:d.conf:img.raw",
        )
        .file("d.conf", flush_fails),
        io(
            "reopen_flush_error_on_any_reopen",
            &["-f", "raw", "-t", "writeback"],
            &["write 0 512", "reopen -c writethrough", "write 0 512"],
            "blkdebug:d.conf:img.raw",
        )
        .file("d.conf", flush_fails),
        // Nothing written since the last flush: nothing reaches the disk, nothing fails.
        io(
            "reopen_nothing_to_flush",
            &["-f", "raw", "-t", "writeback"],
            &["reopen -r", "write 0 512", "read 0 512"],
            "blkdebug:d.conf:img.raw",
        )
        .file("d.conf", flush_fails),
        // The fuzzer's qcow2 case: a failed allocating write leaves a dirty L2 table whose
        // write-back fails at reopen and again at close.
        on_qcow2(
            "reopen_qcow2_flush_error_after_failed_allocation",
            "compat=1.1",
            &[],
            &["write 0 512", "reopen -r", "write 0 512", "read 0 512"],
            "blkdebug:d.conf:t.qcow2",
        )
        .file("d.conf", "[inject-error]\nevent = \"l1_update\"\n"),
        // -c unsafe is -t unsafe: no flush reaches the disk, so none fails; writeback again
        // brings the failures back.
        io(
            "reopen_cache_unsafe_skips_disk_flushes",
            &["-f", "raw", "-t", "writeback"],
            &[
                "reopen -c unsafe",
                "write 0 512",
                "flush",
                "reopen -c writeback",
                "write 0 512",
                "flush",
            ],
            "blkdebug:d.conf:img.raw",
        )
        .file("d.conf", flush_fails),
        // Event counts, each checked one above and at the count QEMU gives.
        count_events(
            "reopen_events_raw_flush_to_os_1",
            "flush_to_os",
            2,
            &["write 0 512", "reopen -r"],
            false,
        ),
        count_events(
            "reopen_events_raw_flush_to_os_not_2",
            "flush_to_os",
            3,
            &["write 0 512", "reopen -r"],
            false,
        ),
        count_events(
            "reopen_events_raw_flush_to_disk_1",
            "flush_to_disk",
            2,
            &["write 0 512", "reopen -r"],
            false,
        ),
        count_events(
            "reopen_events_qcow2_read_only_flush_to_os_3",
            "flush_to_os",
            4,
            &["write 0 512", "reopen -r"],
            true,
        ),
        count_events(
            "reopen_events_qcow2_read_only_flush_to_os_not_4",
            "flush_to_os",
            5,
            &["write 0 512", "reopen -r"],
            true,
        ),
        count_events(
            "reopen_events_qcow2_flush_to_os_2",
            "flush_to_os",
            3,
            &["write 0 512", "reopen"],
            true,
        ),
        count_events(
            "reopen_events_qcow2_flush_to_disk_1",
            "flush_to_disk",
            2,
            &["write 0 512", "reopen -r"],
            true,
        ),
        count_events(
            "reopen_events_qcow2_sequence_flush_to_os_6",
            "flush_to_os",
            7,
            &[
                "write 0 512",
                "reopen -r",
                "reopen -w",
                "write 0 512",
                "reopen -c unsafe",
                "reopen -o lazy-refcounts=on",
            ],
            true,
        ),
        count_events(
            "reopen_events_qcow2_sequence_flush_to_disk_2",
            "flush_to_disk",
            3,
            &[
                "write 0 512",
                "reopen -r",
                "reopen -w",
                "write 0 512",
                "reopen -c unsafe",
                "reopen -o lazy-refcounts=on",
            ],
            true,
        ),
        // writethrough again after writeback: writes are FUA, flushed by qcow2's emulation.
        count_events(
            "reopen_events_writethrough_again",
            "flush_to_os",
            4,
            &[
                "reopen -c writeback",
                "write 0 512",
                "reopen -c writethrough",
                "write 0 512",
            ],
            true,
        ),
    ]
}

fn qcow2_state() -> Vec<Case> {
    let l2_after_flush = "[set-state]\nevent = \"flush_to_os\"\nstate = \"1\"\nnew_state = \"2\"\n\n[inject-error]\nevent = \"l2_load\"\nstate = \"2\"\n";
    vec![
        // The caches are dropped at reopen: the L2 table is loaded again (and fails here)...
        on_qcow2(
            "reopen_reloads_l2_tables",
            "compat=1.1",
            &[],
            &["write 0 512", "reopen", "read 0 512"],
            "blkdebug:d.conf:t.qcow2",
        )
        .file("d.conf", l2_after_flush),
        // ...where a flush alone keeps it cached.
        on_qcow2(
            "reopen_flush_keeps_l2_tables",
            "compat=1.1",
            &[],
            &["write 0 512", "flush", "read 0 512"],
            "blkdebug:d.conf:t.qcow2",
        )
        .file("d.conf", l2_after_flush),
        // A failed reopen keeps the old caches.
        on_qcow2(
            "reopen_failed_keeps_l2_tables",
            "compat=1.1",
            &[],
            &["write 0 512", "reopen -o foo=bar", "read 0 512"],
            "blkdebug:d.conf:t.qcow2",
        )
        .file("d.conf", l2_after_flush),
        // New cache sizes apply from the reopen on (a one-table L2 cache evicts on every
        // other table; the image's bytes must end the same).
        on_qcow2(
            "reopen_new_l2_cache_size",
            "cluster_size=512",
            &[],
            &[
                "reopen -o l2-cache-size=1k",
                "write -P 1 0 512",
                "write -P 2 64k 512",
                "write -P 3 0 512",
                "read -P 2 64k 512",
            ],
            "t.qcow2",
        ),
        // iotest 039: lazy refcounts switched on at runtime leave the image dirty when killed...
        on_qcow2(
            "reopen_lazy_refcounts_on_then_killed",
            "compat=1.1,lazy_refcounts=off",
            &[],
            &[
                "reopen -o lazy-refcounts=on",
                "write -P 0x5a 0 512",
                "sigraise 9",
            ],
            "t.qcow2",
        ),
        // ...and switched off, clean.
        on_qcow2(
            "reopen_lazy_refcounts_off_then_killed",
            "compat=1.1,lazy_refcounts=on",
            &[],
            &[
                "reopen -o lazy-refcounts=off",
                "write -P 0x5a 0 512",
                "sigraise 9",
            ],
            "t.qcow2",
        ),
        // iotest 137's transaction: a later error undoes the lazy-refcounts change.
        on_qcow2(
            "reopen_failed_reopen_changes_nothing",
            "compat=1.1",
            &[],
            &[
                "reopen -o lazy-refcounts=on,foo=bar",
                "write -P 0x5a 0 512",
                "sigraise 9",
            ],
            "t.qcow2",
        ),
        on_qcow2(
            "reopen_lazy_refcounts_on_v2_image",
            "compat=0.10",
            &[],
            &["reopen -o lazy-refcounts=on", "write 0 512"],
            "t.qcow2",
        ),
        // Going read-only marks a dirty image clean...
        on_qcow2(
            "reopen_read_only_marks_clean",
            "lazy_refcounts=on",
            &[],
            &["write -P 1 0 512", "reopen -r", "sigraise 9"],
            "t.qcow2",
        ),
        // ...and turning lazy refcounts off does too.
        on_qcow2(
            "reopen_lazy_off_marks_clean",
            "lazy_refcounts=on",
            &[],
            &[
                "write -P 1 0 512",
                "reopen -o lazy-refcounts=off",
                "sigraise 9",
            ],
            "t.qcow2",
        ),
        // A dirty image opened read-only is not repaired when it becomes writable: QEMU
        // reuses the cluster whose refcount was lost (and says so nowhere).
        {
            let mut c = io(
                "reopen_dirty_image_writable_without_repair",
                &["-r"],
                &["reopen -w", "write -P 2 64k 512", "read -P 7 0 512"],
                "t.qcow2",
            );
            c.files.push(("t.qcow2".into(), dirty_qcow2()));
            c
        },
        on_qcow2(
            "reopen_discard_no_unref_on_v2_image",
            "compat=0.10",
            &[],
            &["reopen -o discard-no-unref=on", "write 0 512"],
            "t.qcow2",
        ),
    ]
}

fn children() -> Vec<Case> {
    let with_backing = |name: &str, cmds: &[&str]| {
        let mut c = io(name, &[], cmds, "t.qcow2");
        c.files.extend(backing_chain());
        c
    };
    vec![
        // The backing node comes before the file node in QEMU's queue.
        with_backing(
            "reopen_backing_before_file",
            &["reopen -o file.foo=1,backing.bar=2"],
        ),
        with_backing(
            "reopen_backing_before_its_file",
            &["reopen -o backing.file.bar=2,backing.foo=1"],
        ),
        with_backing(
            "reopen_backing_driver_cannot_change",
            &["reopen -o backing.driver=file"],
        ),
        with_backing(
            "reopen_backing_same_driver",
            &["reopen -o backing.driver=qcow2", "read 0 512"],
        ),
        with_backing(
            "reopen_backing_writable",
            &[
                "reopen -o backing.read-only=off",
                "reopen -o backing.lazy-refcounts=on",
                "write 0 512",
            ],
        ),
        with_backing(
            "reopen_unknown_node_reference",
            &["reopen -o backing=foo", "reopen -o file=foo"],
        ),
        // iotest 133: node names given at open may be repeated, not changed.
        with_backing(
            "reopen_node_names",
            &[
                "close",
                "open -o node-name=foo,file.node-name=bar,backing.node-name=baz t.qcow2",
                "reopen -o node-name=foo",
                "reopen -o file.node-name=bar",
                "reopen -o backing.node-name=baz",
                "reopen",
                "reopen -o file=bar",
                "reopen -o node-name=other",
                "reopen -o backing.file.node-name=x",
            ],
        ),
        on_qcow2(
            "reopen_node_name_errors_at_open",
            "compat=1.1",
            &[],
            &[
                "close",
                "open -o node-name=1x t.qcow2",
                "open -o node-name=a,file.node-name=a t.qcow2",
                "open -o node-name=abcdefghijklmnopqrstuvwxyz0123456 t.qcow2",
            ],
            "t.qcow2",
        ),
        // Options of a probed image are the format's; file.* are its file's.
        io(
            "reopen_probed_format_options",
            &[],
            &[
                "close",
                "open -o locking=off img.raw",
                "open -o file.locking=off img.raw",
                "reopen -o file.locking=off",
                "reopen -o file.locking=on",
            ],
            "img.raw",
        ),
        // blkdebug: rules and limits cannot change, repeating them is fine; the image child's
        // options as well.
        io(
            "reopen_blkdebug_options",
            &["-f", "raw"],
            &[
                "reopen",
                "read 0 512",
                "reopen -o file.config=d.conf",
                "reopen -o file.align=4096",
                "reopen -o file.config=x.conf",
                "reopen -o file.image.driver=file",
                "reopen -o file.image.filename=img.raw",
                "reopen -o file.image.filename=./img.raw",
                "read 0 512",
            ],
            "blkdebug:d.conf:img.raw",
        )
        .file(
            "d.conf",
            "[inject-error]\nevent = \"read_aio\"\nonce = \"on\"\n",
        ),
        // json: values keep their types: the number 4096 is not the text "4096".
        io(
            "reopen_json_typed_values",
            &[],
            &[
                "reopen -o file.image.filename=img.raw",
                "reopen -o file.align=4096",
            ],
            r#"json:{"driver":"raw","file":{"driver":"blkdebug","align":4096,"image":{"driver":"file","filename":"img.raw"}}}"#,
        ),
        // discard=unmap given on reopen makes the raw node pass discards down again.
        io(
            "reopen_discard_unmap",
            &["-f", "raw", "-d", "ignore"],
            &[
                "write -P 1 0 64k",
                "discard 0 64k",
                "read -P 1 0 64k",
                "reopen -o discard=unmap",
                "discard 0 64k",
                "read -P 0 0 64k",
            ],
            "img.raw",
        ),
        io(
            "reopen_detect_zeroes_unmap_needs_discard",
            &["-f", "raw", "-d", "ignore"],
            &[
                "reopen -o detect-zeroes=unmap",
                "reopen -o detect-zeroes=off",
            ],
            "img.raw",
        ),
    ]
}

fn joins_and_modes() -> Vec<Case> {
    let zero_writes_fail = "[inject-error]\niotype = \"write-zeroes\"\n";
    vec![
        // qcow2 joins old and new options its own way (iotest 137): a new overlap template
        // replaces every old overlap option...
        on_qcow2(
            "reopen_qcow2_new_overlap_template_replaces_old",
            "compat=1.1",
            &[],
            &[
                "reopen -o overlap-check=constant",
                "reopen -o overlap-check.template=all",
                "reopen -o overlap-check.main-header=off",
                "reopen -o overlap-check=none,overlap-check.template=all",
                "write 0 512",
            ],
            "t.qcow2",
        ),
        // ...and a new total cache size the old partial sizes, while an old total size goes
        // once partial sizes are given.
        on_qcow2(
            "reopen_qcow2_cache_size_join",
            "compat=1.1",
            &[],
            &[
                "reopen -o cache-size=1M",
                "reopen -o l2-cache-size=512k",
                "reopen -o refcount-cache-size=256k",
                "reopen -o cache-size=128k",
                "reopen -o cache-size=2M,l2-cache-size=4M",
                "reopen -o cache-size=1M,l2-cache-size=512k,refcount-cache-size=64k",
                "write 0 512",
            ],
            "t.qcow2",
        ),
        // detect-zeroes may change on reopen: zeroed writes become zero writes, and back.
        io(
            "reopen_detect_zeroes_switches",
            &["-f", "raw"],
            &[
                "write -P 0 0 4k",
                "reopen -o detect-zeroes=on",
                "write -P 0 0 4k",
                "write -P 1 0 4k",
                "reopen -o detect-zeroes=off",
                "write -P 0 0 4k",
            ],
            "blkdebug:d.conf:img.raw",
        )
        .file("d.conf", zero_writes_fail),
        io(
            "reopen_detect_zeroes_errors",
            &["-f", "raw"],
            &[
                "reopen -o detect-zeroes=bogus",
                "reopen -o discard=ignore,detect-zeroes=unmap",
                "reopen -o detect-zeroes=unmap",
                "write -P 0 0 4k",
            ],
            "blkdebug:d.conf:img.raw",
        )
        .file("d.conf", zero_writes_fail),
        // raw takes a new offset and size on reopen, checked as at open.
        io(
            "reopen_raw_offset_and_size",
            &["-f", "raw"],
            &[
                "write -P 7 0 1k",
                "reopen -o offset=512",
                "read -P 7 0 512",
                "read -P 0 512 512",
                "reopen -o size=4096",
                "read 0 512",
                "read 4096 1",
                "reopen -o size=1000",
                "reopen -o offset=2M",
                "reopen -o size=1M",
                "reopen -o offset=foo",
                "truncate 8192",
                "reopen -o offset=0",
                "length",
                "write -P 5 0 512",
                "map",
            ],
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        // Switching O_DIRECT on gives the file the alignment QEMU probes (on its old
        // descriptor: a page), which a size of 1 MiB + 512 does not fit once a writer needs it.
        io(
            "reopen_direct_realigns_the_file",
            &["-f", "raw"],
            &[
                "reopen -c none",
                "write -P 1 0 512",
                "reopen -c writeback",
                "write -P 2 0 512",
                "truncate 1M",
                "reopen -c writeback",
                "write -P 3 0 512",
            ],
            "odd.img",
        )
        .bytes("odd.img", vec![0; (1 << 20) + 512]),
        io(
            "reopen_direct_off_aligns_to_bytes",
            &["-f", "raw", "-t", "none"],
            &[
                "reopen -c writeback",
                "write -P 1 0 512",
                "reopen -c none",
                "write -P 2 0 512",
            ],
            "odd.img",
        )
        .bytes("odd.img", vec![0; (1 << 20) + 512]),
    ]
}
