//! The cases. Every image starts zeroed (see `harness::populate`): `img.raw`, `raw.img` (1 MiB),
//! `half.img` (512 KiB), `test.img` (1 MiB, byte 700 = 1), `src.bin`, `empty.bin`.
//!
//! Cases whose QEMU output depends on timing (two aio requests in flight whose completions race)
//! or where QEMU aborts are not here: see `ours.rs`.

use crate::harness::{Case, case};

/// `qemu-io -f raw -c CMD... img.raw`
fn raw(name: &str, cmds: &[&str]) -> Case {
    on(name, &["-f", "raw"], cmds, "img.raw")
}

/// `qemu-io OPTS -c CMD... DRIVE`
fn on(name: &str, opts: &[&str], cmds: &[&str], drive: &str) -> Case {
    let mut args: Vec<&str> = opts.to_vec();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(drive);
    case(name, &args)
}

/// `qemu-io -c CMD...` without an image (the commands `open` one)
fn no_drive(name: &str, cmds: &[&str]) -> Case {
    let mut args = Vec::new();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    case(name, &args)
}

/// raw over blkdebug with `d.conf`: `qemu-io -f raw -c CMD... blkdebug:d.conf:img.raw`
fn dbg(name: &str, conf: &str, cmds: &[&str]) -> Case {
    on(name, &["-f", "raw"], cmds, "blkdebug:d.conf:img.raw").file("d.conf", conf)
}

/// raw over blkdebug without config, for breakpoints
fn bp(name: &str, cmds: &[&str]) -> Case {
    on(name, &["-f", "raw"], cmds, "blkdebug::img.raw")
}

/// A rule on event `none` (armed from open on) failing the given iotype, then one request of
/// every kind.
fn iotype_case(iotype: &str) -> Case {
    let conf = format!("[inject-error]\nevent = \"none\"\niotype = \"{iotype}\"\n");
    dbg(
        &format!("blkdebug_iotype_{}", iotype.replace('-', "_")),
        &conf,
        &[
            "read 0 512",
            "write 0 512",
            "write -z 0 4k",
            "discard 0 4k",
            "flush",
            "map",
            "alloc 0 4k",
            "aio_read 0 512",
            "aio_flush",
        ],
    )
}

/// `json:{"driver":"raw","file":{"driver":"blkdebug",<blkdebug>,"image":{"driver":"file","filename":"img.raw"}}}`
fn json_dbg(blkdebug: &str) -> String {
    let sep = if blkdebug.is_empty() { "" } else { "," };
    format!(
        r#"json:{{"driver":"raw","file":{{"driver":"blkdebug"{sep}{blkdebug},"image":{{"driver":"file","filename":"img.raw"}}}}}}"#
    )
}

pub fn all() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(basic());
    v.extend(numbers());
    v.extend(usage());
    v.extend(open_close());
    v.extend(rules());
    v.extend(options());
    v.extend(breakpoints());
    v.extend(blkverify());
    v.extend(open_errors());
    v.extend(command_line());
    v.extend(json_dialect());
    v.extend(permissions());
    v.extend(sector_sizes());
    v.extend(blkverify_resize());
    v.extend(map_errors());
    v.extend(padding_survivors());
    v.extend(direct_io());
    v.extend(open_options());
    v.extend(non_utf8_names());
    v
}

/// Names with bytes that are not UTF-8: QEMU opens the file they name and prints them raw.
/// `t` is the engine's text for them (see `blockfault::host_bytes`); the harness gives qemu-io
/// the bytes.
fn non_utf8_names() -> Vec<Case> {
    let t = |bytes: &[u8]| blockfault::host_bytes::decode(bytes).unwrap();
    let there = t(b"a\xffb\x80.img");
    let missing = t(b"n\xffm.img");
    // probing: QEMU's warning names the file too
    let open_there = format!("open {there}");
    let open_missing = format!("open {missing}");
    let bad_number = t(b"read \xff 1");
    let bad_command = t(b"wr\xe9te");
    vec![
        on(
            "non_utf8_image_read_write",
            &["-f", "raw"],
            &["write -P 0x5a 512 1k", "read -P 0x5a 512 1k", "info"],
            &there,
        )
        .bytes(&there, vec![0; 64 << 10]),
        on(
            "non_utf8_image_missing",
            &["-f", "raw"],
            &["read 0 1"],
            &missing,
        ),
        no_drive(
            "non_utf8_open_command",
            &[&open_there, "read -P 0 0 512", "close", &open_missing],
        )
        .bytes(&there, vec![0; 64 << 10]),
        raw("non_utf8_command_bytes", &[&bad_number, &bad_command]),
    ]
}

fn basic() -> Vec<Case> {
    vec![
        raw(
            "read_write_pattern",
            &[
                "write -P 0xab 0 4k",
                "read -P 0xab 0 4k",
                "read -P 0xcd 512 512",
                "read -v 0 20",
            ],
        ),
        raw(
            "read_pattern_range",
            &[
                "write -P 0xab 0 1k",
                "read -P 0xab -s 100 -l 28 0 512",
                "read -P 0xab -s 600 0 512",
                "read -P 0xab -s 500 -l 13 0 512",
                "read -q -P 0 0 512",
                "read -q -P 1 0 512",
                "read -C 0 512",
            ],
        ),
        raw("read_s_without_p", &["read -s 1 0 512", "read -l 1 0 512"]),
        raw("read_invalid_option_a", &["read -a 0 512", "read -p 0 512"]),
        raw(
            "read_dump_ascii",
            &[
                "write -s src.bin 0 40",
                "read -v 0 40",
                "read -v 3 17",
                "read -v 100 4",
                "read -qv 0 1",
            ],
        ),
        raw(
            "read_vmstate",
            &[
                "read -b 0 512",
                "read -b 1 512",
                "read -b 512 100",
                "read -b -r 0 512",
            ],
        ),
        raw(
            "read_permuted_and_clustered",
            &[
                "read 0 16 -v",
                "write -P0x41 0 16",
                "read -vq 0 16",
                "read -- 0 16",
            ],
        ),
        raw(
            "zero_length",
            &[
                "read 0 0",
                "write 0 0",
                "readv 0 0",
                "writev 0 0",
                "discard 0 0",
            ],
        ),
        raw(
            "past_end",
            &[
                "read 1M 512",
                "read 1020k 8k",
                "write 1M 512",
                "write 1023k 2k",
                "discard 1M 512",
                "readv 1M 1",
                "alloc 1M",
            ],
        ),
        raw(
            "readv_writev",
            &[
                "writev -P 0x22 8k 512 1k",
                "readv -P 0x22 8k 1536",
                "readv -P 0x23 8k 512 512",
                "readv -v 8k 16 16",
                "readv -q 0 512",
                "readv -C 0 512",
                "writev -q -P 1 0 512",
                "writev -f -C -P 2 512 512 512",
                "readv -P 1 0 512",
            ],
        ),
        raw(
            "readv_writev_errors",
            &[
                "readv -b 0 512",
                "writev -z 0 512",
                "writev",
                "readv 0 x",
                "writev 0 1 2x",
            ],
        ),
        raw(
            "write_zeroes",
            &[
                "write -P 1 0 16k",
                "write -z 0 4k",
                "write -z -u 4k 4k",
                "write -z -n 8k 4k",
                "read -P 0 0 12k",
                "read -P 1 12k 4k",
            ],
        ),
        raw(
            "write_flag_conflicts",
            &[
                "write -n 0 512",
                "write -u 0 512",
                "write -b -z 0 512",
                "write -f -b 0 512",
                "write -f -c 0 512",
                "write -z -P 1 0 512",
                "write -P 1 -s src.bin 0 512",
                "write -z -s src.bin 0 512",
                "write -z -r 0 512",
            ],
        ),
        raw(
            "write_unsupported",
            &[
                "write -b 0 512",
                "write -c 0 512",
                "write -f 0 512",
                "read -P 0xcd 0 512",
            ],
        ),
        raw(
            "write_quiet_csv",
            &[
                "write -q -P 3 0 512",
                "write -C -P 4 512 512",
                "read -P 3 0 512",
                "read -P 4 512 512",
            ],
        ),
        raw(
            "write_source_file",
            &[
                "write -s src.bin 0 100",
                "read -v 0 100",
                "write -s nonexist.bin 0 1",
                "write -s empty.bin 0 1",
                "write -s src.bin -q 1k 3",
            ],
        ),
        raw(
            "aio_read_write",
            &[
                "aio_write -P 0x11 0 64k",
                "aio_flush",
                "aio_read -P 0x11 0 64k",
                "aio_flush",
                "aio_read -P 0x12 0 512",
                "aio_flush",
                "aio_read -v 0 16",
                "aio_flush",
                "aio_read -q -P 0x11 0 512",
                "aio_flush",
                "aio_read -C 0 512",
                "aio_flush",
            ],
        ),
        raw(
            "aio_vectors",
            &[
                "aio_write -P 5 0 512 1k",
                "aio_flush",
                "aio_read -P 5 0 1k 512",
                "aio_flush",
                "aio_write -q -C -P 6 2k 512",
                "aio_flush",
            ],
        ),
        raw(
            "aio_write_zeroes",
            &[
                "write -P 9 0 8k",
                "aio_write -z 0 4k",
                "aio_flush",
                "aio_write -z -u 4k 4k",
                "aio_flush",
                "read -P 0 0 8k",
            ],
        ),
        raw(
            "aio_write_errors",
            &[
                "aio_write -z 0 512 512",
                "aio_write -u 0 512",
                "aio_write -z -r 0 512",
                "aio_write -f 0 512",
                "aio_flush",
                "aio_write 1M 512",
                "aio_flush",
                "aio_read 1M 512",
                "aio_flush",
                "aio_read -b 0 512",
                "aio_write 0",
            ],
        ),
        raw(
            "aio_pattern_mismatch_exit_status",
            &["aio_read -P 1 0 512", "aio_flush"],
        ),
        raw(
            "flush_length_info",
            &["flush", "length", "info", "f", "l", "i"],
        ),
        raw(
            "discard_map_alloc",
            &[
                "discard 0 64k",
                "discard -q 0 4k",
                "discard -C 4k 4k",
                "map",
                "alloc 0 4k",
                "alloc 0",
                "alloc 4k 1k",
                "a 1M",
                "alloc 0 2M",
            ],
        ),
        raw(
            "truncate",
            &[
                "truncate 512k",
                "length",
                "map",
                "truncate -m off 2M",
                "length",
                "truncate -m full 3M",
                "length",
                "truncate -m falloc 3M",
                "truncate -m bogus 1M",
                "truncate -m",
                "truncate 1 2 3 4",
                "read -P 0 2M 4k",
            ],
        ),
        raw("truncate_metadata", &["truncate -m metadata 2M", "length"]),
        raw(
            "sleep",
            &[
                "sleep 10",
                "sleep 0",
                "sleep -1",
                "sleep abc",
                "sleep 0x5",
                "sleep 1 2",
            ],
        ),
        raw("help", &["help"]),
        raw(
            "help_commands",
            &[
                "help read",
                "help ?",
                "help write",
                "help aio_write",
                "help map",
                "help open",
                "help bogus",
                "help a b",
                "? q",
            ],
        ),
        raw(
            "help_each",
            &[
                "help truncate",
                "help sigraise",
                "help sleep",
                "help break",
                "help readv",
                "help alloc",
            ],
        ),
        raw(
            "quit_stops",
            &["write -P 1 0 512", "quit", "write -P 2 0 512"],
        ),
        raw("quit_after_failure", &["read 1M 1", "q"]),
        raw(
            "sigraise_term",
            &["write -P 1 0 512", "sigraise 15", "read 0 512"],
        ),
        raw(
            "sigraise_errors",
            &["sigraise 100", "sigraise abc", "sigraise 66", "sigraise"],
        ),
        raw("abort_command", &["read -q 0 512", "abort", "read 0 512"]),
        on(
            "cache_writeback",
            &["-f", "raw", "-t", "writeback"],
            &["write -f -P 8 0 4k", "flush", "read -P 8 0 4k"],
            "img.raw",
        ),
        on(
            "cache_unsafe",
            &["-f", "raw", "-t", "unsafe"],
            &["write -P 8 0 4k", "flush"],
            "img.raw",
        ),
        on(
            "cache_invalid",
            &["-f", "raw", "-t", "bogus"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "probed_raw_warning",
            &[],
            &["write -P 3 0 512", "read -P 3 0 512"],
            "img.raw",
        ),
        on(
            "probed_raw_block0_restricted",
            &[],
            &["write -P 3 0 512", "write -z 0 512", "read -P 0 0 512"],
            "img.raw",
        ),
    ]
}

fn numbers() -> Vec<Case> {
    vec![
        raw(
            "numbers_accepted",
            &[
                "read 010 0x10",
                "read 1.5k .5k",
                "read 1.k 1.b",
                "read +1 0.0001k",
                "read 12.75k 1b",
                "read 0X10 0x0",
            ],
        ),
        raw(
            "numbers_rejected",
            &[
                "read 0 4x",
                "read 0 1.5",
                "read 0 1.9999b",
                "read 0 0x1k",
                "read 0 1e3",
                "read 0 1kb",
                "read 0 1KiB",
                "read 0 0x",
                "read 0 abc",
                "read 0 ''",
            ],
        ),
        raw(
            "numbers_too_large",
            &[
                "read 0 8E",
                "read 0 99999999999999999999",
                "read 0 2G",
                "write 0 1E",
                "write -n 0 3G",
                "discard 0 4G",
                "read 0 2147483136",
                "read 1E 512",
            ],
        ),
        raw(
            "numbers_negative",
            &["read 0 -1", "read -1 1", "read -- -1 1", "write -- 0 -5"],
        ),
        raw(
            "numbers_vectors",
            &[
                "readv 0 3G",
                "readv 0 1G 1G 1G",
                "writev 0 2147483137",
                "aio_read 0 3G",
                "aio_write 0 1G 1G 1G",
            ],
        ),
        raw(
            "numbers_pattern",
            &[
                "read -P 256 0 1",
                "read -P 0x100 0 1",
                "read -P -1 0 1",
                "read -P 010 0 1",
                "read -P 0x 0 1",
                "write -P 1x 0 1",
                "read -P 0377 0 1",
                "write -P 0xff 0 1",
                "read -P 255 0 1",
            ],
        ),
        raw(
            "numbers_alloc_discard",
            &[
                "alloc 1k",
                "alloc x",
                "alloc 0 0",
                "discard x 1",
                "truncate x",
                "truncate 1.5",
            ],
        ),
    ]
}

fn usage() -> Vec<Case> {
    vec![
        raw(
            "argument_counts",
            &[
                "read 0",
                "read",
                "write 0",
                "flush 1",
                "length x",
                "map x",
                "info 1",
                "alloc",
                "alloc 1 2 3",
                "truncate",
                "discard 0",
                "aio_flush x",
                "close x",
                "sleep",
            ],
        ),
        raw(
            "argument_counts_breakpoints",
            &[
                "break A",
                "break",
                "resume",
                "resume A B",
                "remove_break",
                "wait_break",
                "break a b c",
            ],
        ),
        raw(
            "unknown_commands",
            &["bogus", "", "READ 0 1", "write -P 1 0 512"],
        ),
        raw(
            "zone_commands_unsupported",
            &[
                "zone_report 0 1",
                "zrp 2M 0",
                "zone_open 0 512",
                "zone_close 2M 1",
                "zone_finish 0 1M",
                "zone_reset x 1",
                "zrs 0 x",
                "zone_append 0 1 512",
                "zap 0 x 1",
                "zap 0 0 x",
                "zap -p 0 2M 512",
                "zap -x 0 0 1",
                "zap 0 1",
            ],
        ),
        raw(
            "reopen_read_only",
            &[
                "reopen -r",
                "write 0 1",
                "reopen -w",
                "write 0 1",
                "reopen -c none",
                "reopen -c bogus",
                "reopen x",
                "reopen -x",
            ],
        ),
        raw(
            "getopt_errors",
            &[
                "read -x 0 1",
                "read -P",
                "write -Q 0 1",
                "readv -z 0 1",
                "aio_read -z 0 1",
                "discard -v 0 1",
                "truncate -x 1",
                "write -s",
                "aio_write -P",
            ],
        ),
        raw(
            "usage_extra_positional",
            &["read 0 1 2", "write 0 1 2", "discard 0 1 2"],
        ),
        raw(
            "failure_then_success_exit_status",
            &["read 0 x", "read 0 512"],
        ),
        raw("only_success", &["read 0 512", "write 0 512"]),
        on(
            "image_opts_and_format",
            &["-f", "raw", "--image-opts"],
            &["read 0 1"],
            "driver=file,filename=img.raw",
        ),
    ]
}

fn open_close() -> Vec<Case> {
    vec![
        case("no_file", &["-c", "read 0 512", "-c", "length"]),
        case(
            "open_in_c",
            &[
                "-c",
                "open -o driver=raw img.raw",
                "-c",
                "write -P 4 0 512",
                "-c",
                "read -P 4 0 512",
                "-c",
                "close",
                "-c",
                "read 0 512",
            ],
        ),
        raw(
            "open_when_open",
            &[
                "open img.raw",
                "close",
                "open -r -o driver=raw img.raw",
                "write 0 512",
                "read 0 512",
                "close",
                "close",
            ],
        ),
        case(
            "open_errors",
            &[
                "-c",
                "open",
                "-c",
                "open -f raw img.raw",
                "-c",
                "open nonexist.raw",
                "-c",
                "open -o driver=bogus img.raw",
            ],
        ),
        case(
            "open_flags",
            &[
                "-c",
                "open -n -o driver=raw img.raw",
                "-c",
                "write -P 1 0 512",
                "-c",
                "close",
                "-c",
                "open -C -t writeback -d unmap -o driver=raw img.raw",
                "-c",
                "read -P 1 0 512",
            ],
        ),
        case(
            "open_bad_cache_discard",
            &[
                "-c",
                "open -t bogus img.raw",
                "-c",
                "open -d bogus img.raw",
                "-c",
                "open -i bogus img.raw",
            ],
        ),
        case("open_probed", &["-c", "open img.raw", "-c", "info"]),
        case(
            "open_snapshot",
            &[
                "-c",
                "open -s -o driver=raw img.raw",
                "-c",
                "write -P 5 0 512",
                "-c",
                "read -P 5 0 512",
            ],
        ),
        case(
            "open_snapshot_close_reopen",
            &[
                "-c",
                "open -s -o driver=raw img.raw",
                "-c",
                "write -P 7 0 512",
                "-c",
                "close",
                "-c",
                "open -o driver=raw img.raw",
                "-c",
                "read -P 0 0 512",
            ],
        ),
        case(
            "open_probed_read_only",
            &[
                "-c",
                "open -r img.raw",
                "-c",
                "read 0 512",
                "-c",
                "close",
                "-c",
                "open img.raw",
            ],
        ),
        case("open_two_paths", &["-c", "open img.raw raw.img"]),
        on(
            "image_opts_open_o",
            &["--image-opts"],
            &["open -o driver=raw img.raw", "read 0 512"],
            "driver=raw,file.filename=img.raw",
        ),
        on(
            "image_opts_file",
            &["--image-opts"],
            &["write -P 2 0 512", "read -P 2 0 512", "info"],
            "driver=raw,file.driver=file,file.filename=img.raw",
        ),
        raw(
            "close_twice_then_commands",
            &["close", "close", "flush", "help flush"],
        ),
    ]
}

const RD: &str = "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n";
const STATE: &str = "[set-state]\nevent = \"write_aio\"\nstate = \"1\"\nnew_state = \"2\"\n\n[inject-error]\nevent = \"write_aio\"\nstate = \"2\"\nerrno = \"5\"\n";

fn rules() -> Vec<Case> {
    let mut v = vec![
        dbg(
            "blkdebug_read_aio_sticky",
            RD,
            &["read 0 512", "write 0 512", "read 0 512", "flush"],
        ),
        dbg(
            "blkdebug_rule_leaks_after_write",
            RD,
            &["write 0 512", "read 0 512", "write -z 0 4k", "discard 0 4k"],
        ),
        dbg(
            "blkdebug_set_state",
            STATE,
            &["write 0 512", "write 0 512", "read 0 512"],
        ),
        dbg(
            "blkdebug_set_state_chain",
            "[set-state]\nevent = \"write_aio\"\nstate = \"1\"\nnew_state = \"2\"\n[set-state]\nevent = \"write_aio\"\nstate = \"2\"\nnew_state = \"3\"\n[inject-error]\nevent = \"read_aio\"\nstate = \"3\"\nerrno = \"28\"\n",
            &[
                "read 0 512",
                "write 0 512",
                "read 0 512",
                "write 0 512",
                "read 0 512",
                "write 0 512",
                "read 0 512",
            ],
        ),
        dbg(
            "blkdebug_state_applied_after_all_rules",
            "[set-state]\nevent = \"read_aio\"\nstate = \"1\"\nnew_state = \"2\"\n[inject-error]\nevent = \"read_aio\"\nstate = \"2\"\nerrno = \"28\"\n",
            &["read 0 512", "read 0 512", "read 0 512"],
        ),
        dbg(
            "blkdebug_set_state_default_new_state",
            "[set-state]\nevent = \"write_aio\"\n[inject-error]\nevent = \"read_aio\"\nstate = \"1\"\n",
            &["read 0 512", "write 0 512", "read 0 512", "write 0 512"],
        ),
        dbg(
            "blkdebug_state_any",
            "[set-state]\nevent = \"read_aio\"\nnew_state = \"7\"\n[inject-error]\nevent = \"write_aio\"\nstate = \"0\"\nerrno = \"28\"\nonce = \"on\"\n",
            &["write 0 512", "read 0 512", "write 0 512", "write 0 512"],
        ),
        dbg(
            "blkdebug_once",
            "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\nonce = \"on\"\n",
            &["write 0 512", "write 0 512", "write 0 512"],
        ),
        dbg(
            "blkdebug_once_then_sticky",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"28\"\nonce = \"on\"\n[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n",
            &["read 0 512", "read 0 512", "read 0 512"],
        ),
        dbg(
            "blkdebug_sector_boundaries",
            "[inject-error]\nevent = \"read_aio\"\nsector = \"1\"\n",
            &[
                "read 0 512",
                "read 512 512",
                "read 0 513",
                "read 1023 1",
                "read 1024 512",
                "read 511 1",
                "readv 0 256 256",
            ],
        ),
        dbg(
            "blkdebug_sector_first_match_wins",
            "[inject-error]\nevent = \"read_aio\"\nsector = \"0\"\nerrno = \"28\"\n[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n",
            &["read 0 512", "read 512 512", "read 0 1k"],
        ),
        dbg(
            "blkdebug_sector_order_reversed",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n[inject-error]\nevent = \"read_aio\"\nsector = \"0\"\nerrno = \"28\"\n",
            &["read 0 512", "read 512 512"],
        ),
        dbg(
            "blkdebug_errno_zero_shadows",
            "[inject-error]\nevent = \"read_aio\"\nsector = \"0\"\nerrno = \"0\"\n[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\n",
            &["read 0 512", "read 512 512", "read 0 1k"],
        ),
        dbg(
            "blkdebug_errno_negative",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"-5\"\n",
            &["write -P 0x5a 0 512", "read -v 0 32", "read -P 0x5a 0 512"],
        ),
        dbg(
            "blkdebug_errno_values",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"1000\"\nonce = \"on\"\n[inject-error]\nevent = \"read_aio\"\nerrno = \"0x1c\"\nonce = \"on\"\n[inject-error]\nevent = \"read_aio\"\nerrno = \"95\"\n",
            &["read 0 512", "read 0 512", "read 0 512"],
        ),
        dbg(
            "blkdebug_immediately",
            "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\nimmediately = \"on\"\n",
            &["write 0 512", "aio_write 0 512", "aio_flush"],
        ),
        dbg(
            "blkdebug_once_immediately_off",
            "[inject-error]\nevent = \"write_aio\"\nerrno = \"5\"\nimmediately = \"off\"\nonce = \"yes\"\n",
            &[
                "aio_write -P 1 0 512",
                "aio_flush",
                "aio_write -P 2 0 512",
                "aio_flush",
                "read -P 2 0 512",
            ],
        ),
        dbg(
            "blkdebug_comments_and_ids",
            "# a comment\n\n[inject-error \"id1\"]\n  event   =   \"read_aio\"\n\terrno=  \"28\"\n[set-state \"s\"]\nevent = \"none\"\nnew_state = \"1\"\n",
            &["read 0 512"],
        ),
        dbg(
            "blkdebug_pwritev_event",
            "[inject-error]\nevent = \"pwritev\"\nerrno = \"28\"\nonce = \"on\"\n",
            &["write 0 512", "write 0 512", "write -z 0 4k"],
        ),
        dbg(
            "blkdebug_pwritev_zero_event",
            "[inject-error]\nevent = \"pwritev_zero\"\niotype = \"write-zeroes\"\nerrno = \"28\"\n",
            &[
                "write -z 0 4k",
                "write 0 4k",
                "aio_write -z 0 4k",
                "aio_flush",
            ],
        ),
        dbg(
            "blkdebug_flush_to_disk_event",
            "[inject-error]\nevent = \"flush_to_disk\"\niotype = \"flush\"\n",
            &["flush", "write -z 0 4k", "flush", "write 0 512"],
        ),
    ];
    for t in [
        "read",
        "write",
        "write-zeroes",
        "discard",
        "flush",
        "block-status",
    ] {
        v.push(iotype_case(t));
    }
    v
}

fn options() -> Vec<Case> {
    let json = |name: &str, blkdebug: &str, cmds: &[&str]| on(name, &[], cmds, &json_dbg(blkdebug));
    vec![
        json(
            "json_blkdebug_plain",
            "",
            &["write -P 1 0 512", "read -P 1 0 512", "info"],
        ),
        json(
            "json_inject_error",
            r#""inject-error":[{"event":"read_aio","once":true}]"#,
            &["read 0 512", "read 0 512"],
        ),
        json(
            "json_inject_error_all_keys",
            r#""inject-error":[{"event":"read_aio","state":1,"errno":28,"sector":1,"once":false,"immediately":true,"iotype":"read"}]"#,
            &["read 0 512", "read 512 512", "write 512 512"],
        ),
        json(
            "json_set_state",
            r#""inject-error":[{"event":"read_aio","state":2,"errno":"28"}],"set-state":[{"event":"write_aio","state":1,"new_state":2}]"#,
            &["read 0 512", "write 0 512", "read 0 512"],
        ),
        json(
            "json_errno_string",
            r#""inject-error":[{"event":"read_aio","errno":"abc"}]"#,
            &["read 0 1"],
        ),
        json(
            "json_iotype_bogus",
            r#""inject-error":[{"event":"read_aio","iotype":"bogus"}]"#,
            &["read 0 1"],
        ),
        json(
            "json_event_missing",
            r#""inject-error":[{"errno":5}]"#,
            &["read 0 1"],
        ),
        json(
            "json_event_bogus",
            r#""inject-error":[{"event":"bogus"}]"#,
            &["read 0 1"],
        ),
        json(
            "json_rule_unknown_key",
            r#""inject-error":[{"event":"read_aio","foo":1}]"#,
            &["read 0 1"],
        ),
        json(
            "json_once_bad_bool",
            r#""inject-error":[{"event":"read_aio","once":"TRUE"}]"#,
            &["read 0 1"],
        ),
        json("json_align_3", r#""align":3"#, &["read 0 1"]),
        json("json_align_negative", r#""align":-1"#, &["read 0 1"]),
        json("json_unknown_option", r#""bogus":1"#, &["read 0 1"]),
        json(
            "json_take_child_perms_bogus",
            r#""take-child-perms":["bogus"]"#,
            &["read 0 1"],
        ),
        json(
            "json_align_4k_rmw",
            r#""align":4096"#,
            &[
                "write -P 1 100 200",
                "read -P 1 100 200",
                "read -P 0 0 100",
                "map",
            ],
        ),
        json(
            "json_max_transfer_bad",
            r#""align":4096,"max-transfer":1000"#,
            &["read 0 1"],
        ),
        json(
            "json_max_transfer_ok_unaligned",
            r#""max-transfer":1000"#,
            &["write -P 1 0 4k", "read -P 1 0 4k"],
        ),
        json(
            "json_max_transfer_split_once",
            r#""max-transfer":4096,"inject-error":[{"event":"read_aio","sector":8,"once":true}]"#,
            &["read 0 4k", "read 0 16k", "read 0 16k"],
        ),
        json(
            "json_opt_write_zero_bad",
            r#""align":4096,"opt-write-zero":1000"#,
            &["read 0 1"],
        ),
        json(
            "json_max_write_zero_bad",
            r#""opt-write-zero":4096,"max-write-zero":6144"#,
            &["read 0 1"],
        ),
        json(
            "json_opt_write_zero_fallback",
            r#""opt-write-zero":4096,"max-write-zero":8192,"inject-error":[{"event":"none","iotype":"write-zeroes"}]"#,
            &[
                "write -P 1 0 8k",
                "write -z 0 512",
                "write -z 0 4k",
                "write -z 0 16k",
                "read -P 0 0 512",
            ],
        ),
        json(
            "json_opt_discard_bad",
            r#""align":4096,"opt-discard":512"#,
            &["read 0 1"],
        ),
        json(
            "json_max_discard_bad",
            r#""opt-discard":4096,"max-discard":5000"#,
            &["read 0 1"],
        ),
        json(
            "json_discard_limits",
            r#""opt-discard":4096,"max-discard":8192,"inject-error":[{"event":"none","iotype":"discard"}]"#,
            &["discard 0 512", "discard 0 4k", "discard 0 64k"],
        ),
        on(
            "image_opts_inject_error",
            &["--image-opts"],
            &["read 0 512", "read 0 512", "write 0 512"],
            "driver=raw,file.driver=blkdebug,file.inject-error.0.event=read_aio,file.inject-error.0.errno=28,file.inject-error.0.once=on,file.image.driver=file,file.image.filename=img.raw",
        ),
        on(
            "image_opts_inject_error_unindexed",
            &["--image-opts"],
            &["read 0 512", "read 0 512"],
            "driver=raw,file.driver=blkdebug,file.inject-error.event=read_aio,file.image.filename=img.raw",
        ),
        on(
            "image_opts_set_state",
            &["--image-opts"],
            &["read 0 512", "write 0 512", "read 0 512"],
            "driver=raw,file.driver=blkdebug,file.set-state.0.event=write_aio,file.set-state.0.new_state=2,file.inject-error.0.event=read_aio,file.inject-error.0.state=2,file.image.filename=img.raw",
        ),
        on(
            "image_opts_inject_error_mixed",
            &["--image-opts"],
            &["read 0 1"],
            "driver=raw,file.driver=blkdebug,file.inject-error.event=read_aio,file.inject-error.0.event=read_aio,file.image.filename=img.raw",
        ),
        on(
            "image_opts_inject_error_gap",
            &["--image-opts"],
            &["read 0 1"],
            "driver=raw,file.driver=blkdebug,file.inject-error.0.event=read_aio,file.inject-error.2.event=read_aio,file.image.filename=img.raw",
        ),
        on(
            "image_opts_align_limits",
            &["--image-opts"],
            &["write -P 1 100 200", "read -P 1 100 200"],
            "driver=raw,file.driver=blkdebug,file.align=4k,file.max-transfer=64k,file.opt-write-zero=8k,file.max-write-zero=16k,file.opt-discard=8k,file.max-discard=16k,file.image.filename=img.raw",
        ),
        no_drive(
            "open_o_align_limits",
            &[
                "open -o driver=raw,file.align=4k,file.max-discard=12k,file.opt-discard=4k blkdebug::img.raw",
                "discard 0 64k",
                "write -z 100 8k",
                "read -P 0 0 16k",
            ],
        ),
        on(
            "top_level_blkdebug_emits_no_format_events",
            &[],
            &["read 0 512"],
            r#"json:{"driver":"blkdebug","inject-error":[{"event":"read_aio"}],"image":{"driver":"file","filename":"img.raw"}}"#,
        ),
        on(
            "top_level_blkdebug_info",
            &[],
            &["info", "length", "map"],
            "blkdebug::img.raw",
        ),
    ]
}

fn breakpoints() -> Vec<Case> {
    vec![
        bp(
            "break_basic",
            &[
                "break write_aio A",
                "aio_write -P 0x33 0 512",
                "wait_break A",
                "resume A",
                "aio_flush",
                "read -P 0x33 0 512",
            ],
        ),
        bp(
            "break_errors",
            &["break bogus A", "resume X", "remove_break X", "wait_break"],
        ),
        raw(
            "break_without_blkdebug",
            &["break write_aio A", "resume A", "remove_break A"],
        ),
        bp(
            "break_two_on_one_request",
            &[
                "break write_aio A",
                "break write_aio B",
                "aio_write -P 0x33 0 512",
                "wait_break A",
                "resume B",
                "resume A",
                "aio_flush",
            ],
        ),
        bp(
            "break_two_on_one_request_resume_a_first",
            &[
                "break write_aio A",
                "break write_aio B",
                "aio_write -P 0x33 0 512",
                "resume A",
                "resume B",
                "aio_flush",
            ],
        ),
        bp(
            "break_same_tag_twice",
            &[
                "break write_aio A",
                "break write_aio A",
                "aio_write 0 512",
                "resume A",
                "resume A",
                "resume A",
                "aio_flush",
            ],
        ),
        bp(
            "break_event_sequence",
            &[
                "break pwritev A",
                "break pwritev_done B",
                "aio_write 0 512",
                "wait_break A",
                "resume A",
                "wait_break B",
                "resume B",
                "aio_flush",
            ],
        ),
        bp(
            "break_write_aio_then_pwritev",
            &[
                "break pwritev A",
                "break write_aio A",
                "aio_write 0 512",
                "wait_break A",
                "resume A",
                "wait_break A",
                "resume A",
                "aio_flush",
            ],
        ),
        bp(
            "remove_break_pending",
            &[
                "break write_aio A",
                "remove_break A",
                "aio_write 0 512",
                "aio_flush",
                "remove_break A",
            ],
        ),
        bp(
            "remove_break_suspended_only",
            &[
                "break write_aio A",
                "aio_write -P 7 0 512",
                "wait_break A",
                "remove_break A",
                "aio_flush",
                "read -P 7 0 512",
            ],
        ),
        bp(
            "remove_break_rule_and_suspended",
            &[
                "break write_aio A",
                "aio_write 0 512",
                "break pwritev A",
                "remove_break A",
                "aio_flush",
            ],
        ),
        bp(
            "remove_break_two_suspended",
            &[
                "break write_aio A",
                "break write_aio A",
                "aio_write 0 512",
                "remove_break A",
                "aio_flush",
            ],
        ),
        bp(
            "break_sleep",
            &[
                "break write_aio A",
                "aio_write 0 512",
                "sleep 10",
                "resume A",
                "sleep 50",
                "aio_flush",
            ],
        ),
        bp(
            "break_read",
            &[
                "break read_aio R",
                "aio_read -P 0 0 512",
                "wait_break R",
                "resume R",
                "aio_flush",
            ],
        ),
        bp(
            "break_write_zero",
            &[
                "break pwritev_zero Z",
                "aio_write -z 0 4k",
                "wait_break Z",
                "resume Z",
                "aio_flush",
            ],
        ),
        bp(
            "break_flush_to_os",
            &[
                "break flush_to_os F",
                "aio_write -z 0 4k",
                "wait_break F",
                "resume F",
                "aio_flush",
            ],
        ),
        bp(
            "break_events_never_hit",
            &[
                "break flush_to_disk D",
                "break none N",
                "break read_aio R",
                "write 0 512",
                "aio_write 0 512",
                "aio_flush",
                "remove_break D",
                "remove_break N",
                "remove_break R",
            ],
        ),
        bp(
            "break_unaligned_write",
            &[
                "break pwritev A",
                "aio_write -P 2 100 200",
                "wait_break A",
                "resume A",
                "aio_flush",
                "read -P 2 100 200",
            ],
        ),
        bp(
            "break_rearm",
            &[
                "break write_aio A",
                "aio_write -P 1 0 512",
                "wait_break A",
                "resume A",
                "aio_flush",
                "break write_aio A",
                "aio_write -P 2 512 512",
                "wait_break A",
                "resume A",
                "aio_flush",
                "read -P 1 0 512",
                "read -P 2 512 512",
            ],
        ),
        bp(
            "break_wait_twice",
            &[
                "break write_aio A",
                "aio_write 0 512",
                "wait_break A",
                "wait_break A",
                "resume A",
                "resume A",
                "aio_flush",
            ],
        ),
        bp(
            "break_other_request_completes_meanwhile",
            &[
                "break write_aio A",
                "aio_write -P 1 0 512",
                "aio_read -P 0 4k 512",
                "sleep 200",
                "resume A",
                "aio_flush",
            ],
        ),
        bp(
            "break_aio_write_fails_later",
            &["break write_aio A", "aio_write 1M 512", "aio_flush"],
        ),
        on(
            "break_rmw_events_align_4k",
            &[],
            &[
                "break pwritev_rmw_head A",
                "break pwritev_rmw_after_head B",
                "break pwritev_rmw_tail C",
                "break pwritev_rmw_after_tail D",
                "aio_write -P 1 100 200",
                // QEMU raises head and tail before the padding reads complete
                "wait_break A",
                "resume A",
                "wait_break C",
                "resume C",
                "wait_break B",
                "resume B",
                "wait_break D",
                "resume D",
                "aio_flush",
                "read -P 1 100 200",
            ],
            &json_dbg(r#""align":4096"#),
        ),
        on(
            "break_rmw_two_blocks_align_4k",
            &[],
            &[
                "break pwritev_rmw_head A",
                "break pwritev_rmw_tail B",
                "break pwritev C",
                "aio_write -P 1 4000 5000",
                "wait_break A",
                "resume A",
                "wait_break B",
                "resume B",
                "wait_break C",
                "resume C",
                "aio_flush",
                "read -P 1 4000 5000",
                "break pwritev_rmw_head X",
                "write -P 2 0 4k",
                "remove_break X",
            ],
            &json_dbg(r#""align":4096"#),
        ),
    ]
}

fn blkverify() -> Vec<Case> {
    let bv = |name: &str, drive: &str, cmds: &[&str]| on(name, &["-f", "raw"], cmds, drive);
    vec![
        bv(
            "blkverify_match",
            "blkverify:raw.img:img.raw",
            &[
                "write -P 7 0 4k",
                "read -P 7 0 4k",
                "readv 0 512 512",
                "aio_read 0 4k",
                "aio_flush",
            ],
        ),
        bv(
            "blkverify_contents_mismatch",
            "blkverify:raw.img:test.img",
            &["read 0 512", "read 0 4k", "read 0 1"],
        ),
        bv(
            "blkverify_mismatch_offset",
            "blkverify:raw.img:test.img",
            &["read -v 1k 16", "read 512 512"],
        ),
        bv(
            "blkverify_mismatch_readv",
            "blkverify:raw.img:test.img",
            &["readv 600 50 100"],
        ),
        bv(
            "blkverify_mismatch_aio",
            "blkverify:raw.img:test.img",
            &["aio_read 0 1k", "aio_flush", "read 0 1"],
        ),
        bv(
            "blkverify_overwrite_then_match",
            "blkverify:raw.img:test.img",
            &["write -P 0 512 512", "read 0 4k"],
        ),
        bv(
            "blkverify_unaligned_write",
            "blkverify:raw.img:img.raw",
            &["write -P 3 100 1000", "read -P 3 100 1000", "read 0 2k"],
        ),
        bv(
            "blkverify_discard_flush",
            "blkverify:raw.img:img.raw",
            &[
                "write -P 1 0 4k",
                "discard 0 4k",
                "read -P 1 0 4k",
                "flush",
                "length",
            ],
        ),
        bv(
            "blkverify_info_map",
            "blkverify:raw.img:img.raw",
            &["info", "map", "alloc 0 4k"],
        ),
        bv(
            "blkverify_truncate",
            "blkverify:raw.img:img.raw",
            &["truncate 512k", "length", "read 0 4k"],
        ),
        bv(
            "blkverify_raw_shorter",
            "blkverify:half.img:img.raw",
            &["read 600k 512", "read -P 0 1020k 4k", "length"],
        ),
        bv(
            "blkverify_test_shorter",
            "blkverify:raw.img:half.img",
            &["read 600k 512", "length", "read 0 512"],
        ),
        on(
            "blkverify_probed",
            &[],
            &["read 0 512"],
            "blkverify:raw.img:img.raw",
        ),
        bv(
            "blkverify_return_value_mismatch",
            "blkverify:raw.img:blkdebug:wv.conf:img.raw",
            &["write 0 512", "read 0 512"],
        )
        .file(
            "wv.conf",
            "[inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\n",
        ),
        bv(
            "blkverify_read_return_value_mismatch",
            "blkverify:raw.img:blkdebug:rv.conf:img.raw",
            &["write 0 512", "read 0 512"],
        )
        .file("rv.conf", "[inject-error]\nevent = \"read_aio\"\n"),
        bv(
            "blkverify_over_blkdebug_breakpoint",
            "blkverify:raw.img:blkdebug::img.raw",
            &[
                "break read_aio A",
                "aio_read 0 512",
                "aio_flush",
                "resume A",
            ],
        ),
        bv("blkverify_missing_test", "blkverify:raw.img", &["read 0 1"]),
        bv(
            "blkverify_reverse_nesting",
            "blkverify:blkdebug::raw.img:img.raw",
            &["read 0 1"],
        ),
        bv(
            "blkverify_nonexistent",
            "blkverify:raw.img:nonexist.img",
            &["read 0 1"],
        ),
        on(
            "blkverify_json",
            &[],
            &["read 0 512", "read 0 1k"],
            r#"json:{"driver":"blkverify","raw":{"driver":"file","filename":"raw.img"},"test":{"driver":"file","filename":"test.img"}}"#,
        ),
        on(
            "blkverify_json_missing_test",
            &[],
            &["read 0 1"],
            r#"json:{"driver":"blkverify","raw":{"driver":"file","filename":"raw.img"}}"#,
        ),
        on(
            "blkverify_image_opts",
            &["--image-opts"],
            &["write -P 9 0 512", "read -P 9 0 512", "info"],
            "driver=blkverify,raw.driver=file,raw.filename=raw.img,test.driver=file,test.filename=img.raw",
        ),
    ]
}

fn open_errors() -> Vec<Case> {
    let conf = |name: &str, content: &str| dbg(name, content, &["read 0 1"]);
    vec![
        on(
            "open_nonexistent",
            &["-f", "raw"],
            &["read 0 1"],
            "nonexist.raw",
        ),
        on(
            "open_unknown_format",
            &["-f", "bogus"],
            &["read 0 1"],
            "img.raw",
        ),
        on("open_json_bad", &[], &["read 0 1"], "json:{"),
        on("open_json_not_object", &[], &["read 0 1"], "json:[1]"),
        on(
            "open_json_unknown_driver",
            &[],
            &["read 0 1"],
            r#"json:{"driver":"bogus"}"#,
        ),
        on(
            "open_json_file_missing_filename",
            &[],
            &["read 0 1"],
            r#"json:{"driver":"file"}"#,
        ),
        on(
            "open_json_raw_file",
            &[],
            &["write -P 1 0 512", "read -P 1 0 512"],
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        on(
            "open_json_unknown_option",
            &[],
            &["read 0 1"],
            r#"json:{"driver":"raw","bogus":1,"file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        on("image_opts_empty", &["--image-opts"], &["length"], ""),
        on(
            "image_opts_short_form_boolean",
            &["--image-opts"],
            &["length"],
            "driver=raw,file.filename=img.raw,ro",
        ),
        on(
            "image_opts_id",
            &["--image-opts"],
            &["length"],
            "id=x1,driver=raw,file.filename=img.raw",
        ),
        on(
            "image_opts_bad_id",
            &["--image-opts"],
            &["length"],
            "id=1x,driver=raw",
        ),
        on(
            "image_opts_missing_filename",
            &["--image-opts"],
            &["read 0 1"],
            "driver=file",
        ),
        on(
            "image_opts_bad_syntax",
            &["--image-opts"],
            &["read 0 1"],
            "driver=raw,,=x",
        ),
        on(
            "image_opts_unknown_driver",
            &["--image-opts"],
            &["read 0 1"],
            "driver=bogus,filename=img.raw",
        ),
        on("blkdebug_one_colon", &[], &["read 0 1"], "blkdebug:img.raw"),
        on("blkdebug_bare", &[], &["read 0 1"], "blkdebug:"),
        on(
            "blkdebug_probed_warning",
            &[],
            &["read 0 512"],
            "blkdebug::img.raw",
        ),
        on(
            "blkdebug_missing_image",
            &["-f", "raw"],
            &["read 0 1"],
            "blkdebug::nonexist.raw",
        ),
        on(
            "blkdebug_missing_config",
            &["-f", "raw"],
            &["read 0 1"],
            "blkdebug:nonexist.conf:img.raw",
        ),
        conf(
            "config_unknown_event",
            "[inject-error]\nevent = \"bogus\"\n",
        ),
        conf("config_missing_event", "[inject-error]\nerrno = \"5\"\n"),
        conf(
            "config_unquoted_value",
            "[inject-error]\nevent = read_aio\n",
        ),
        conf(
            "config_unquoted_errno",
            "[inject-error]\nevent = \"read_aio\"\nerrno = 28\n",
        ),
        conf(
            "config_unknown_key",
            "[inject-error]\nevent = \"read_aio\"\nfoo = \"1\"\n",
        ),
        conf("config_no_spaces", "[inject-error]\nevent=\"read_aio\"\n"),
        conf("config_unknown_group", "[bogus]\nevent = \"read_aio\"\n"),
        conf("config_no_group", "event = \"read_aio\"\n"),
        conf("config_garbage_line", "garbage line\n"),
        conf(
            "config_whitespace_line",
            "[inject-error]\n   \nevent = \"read_aio\"\n",
        ),
        conf(
            "config_duplicate_id",
            "[inject-error \"id1\"]\nevent = \"read_aio\"\n[inject-error \"id1\"]\nevent = \"write_aio\"\n",
        ),
        conf(
            "config_dotted_event",
            "[inject-error]\nevent = \"l1_grow.alloc_table\"\n",
        ),
        conf(
            "config_bool_uppercase",
            "[inject-error]\nevent = \"read_aio\"\nonce = \"TRUE\"\n",
        ),
        conf(
            "config_errno_not_number",
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"abc\"\n",
        ),
        conf(
            "config_state_not_number",
            "[set-state]\nevent = \"read_aio\"\nstate = \"x\"\n",
        ),
        conf(
            "config_iotype_bogus",
            "[inject-error]\nevent = \"read_aio\"\niotype = \"bogus\"\n",
        ),
        dbg("config_empty_file", "", &["read 0 1"]),
    ]
}

// ==== qemu-io's own command line (every option of QEMU 10.0.2's qemu-io) ========
/// `qemu-io ARGS` exactly as written.
fn argv(name: &str, args: &[&str]) -> Case {
    case(name, args)
}

/// A secret for `--object` tests, and a trace events file.
const EVENTS_FILE: &str = "foo\n\n# comment\nbdrv_open_common\n-baz\nbdrv_*\n  sp  \nlast";

fn command_line() -> Vec<Case> {
    let mut v = vec![
        // --help, usage on errors, getopt_long's messages
        argv("cli_help", &["--help"]),
        argv("cli_help_short", &["-h", "-c", "read 0 1"]),
        argv("cli_help_abbreviated", &["--he"]),
        argv("cli_two_images", &["-c", "read 0 1", "img.raw", "raw.img"]),
        argv("cli_unknown_long", &["--foo"]),
        argv("cli_unknown_long_value", &["--foo=bar", "img.raw"]),
        argv("cli_unknown_short", &["-x"]),
        argv("cli_unknown_in_cluster", &["-rx", "img.raw"]),
        argv("cli_removed_growable", &["-g", "img.raw"]),
        argv("cli_ambiguous_c", &["--c", "x"]),
        argv("cli_ambiguous_n", &["--n"]),
        argv("cli_ambiguous_f", &["--f=raw"]),
        argv("cli_ambiguous_empty_name", &["--=x"]),
        argv("cli_flag_with_value", &["--read-only=1", "img.raw"]),
        argv(
            "cli_long_missing_argument",
            &["-f", "raw", "img.raw", "--cmd"],
        ),
        argv("cli_short_missing_argument", &["img.raw", "-c"]),
        argv("cli_first_error_wins", &["-t", "bogus", "--foo", "-d", "x"]),
        // the forms an option and its argument can take
        argv(
            "cli_iotests_options",
            &[
                "--cache",
                "writeback",
                "--aio",
                "threads",
                "-f",
                "raw",
                "-c",
                "write -P 1 0 4k",
                "-c",
                "read -P 1 0 4k",
                "img.raw",
            ],
        ),
        argv(
            "cli_equals_forms",
            &[
                "--format=raw",
                "--cmd=write -P 2 0 512",
                "--cache=none",
                "--aio=io_uring",
                "--discard=unmap",
                "--cmd=read -P 2 0 512",
                "img.raw",
            ],
        ),
        argv(
            "cli_attached_short_arguments",
            &[
                "-fraw",
                "-twriteback",
                "-iio_uring",
                "-dignore",
                "-cread 0 512",
                "img.raw",
            ],
        ),
        argv(
            "cli_abbreviations",
            &[
                "--form",
                "raw",
                "--cm",
                "read 0 512",
                "--rea",
                "--dis",
                "off",
                "img.raw",
            ],
        ),
        argv(
            "cli_clustered_flags",
            &["-rnm", "-f", "raw", "-c", "read 0 512", "img.raw"],
        ),
        argv(
            "cli_clustered_with_argument",
            &["-rfraw", "-mc", "read -v 0 16", "img.raw"],
        ),
        argv(
            "cli_image_first",
            &["img.raw", "-f", "raw", "-c", "write -P 3 0 1"],
        ),
        argv(
            "cli_double_dash",
            &["-f", "raw", "-c", "read 0 1", "--", "img.raw"],
        ),
        argv(
            "cli_double_dash_dash_image",
            &["-c", "read 0 1", "--", "-r"],
        ),
        argv("cli_empty_command", &["--cmd=", "-f", "raw", "img.raw"]),
        argv("cli_interactive_eof", &["-f", "raw", "img.raw"]),
        argv("cli_interactive_no_image", &[]),
        argv("cli_image_opts_and_format", &["-f", "raw", "--image-opts"]),
        argv(
            "cli_image_opts_abbreviated",
            &["--im", "-c", "read 0 1", "driver=raw,file.filename=img.raw"],
        ),
        // cache modes
        on(
            "cli_cache_bogus",
            &["-t", "bogus"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_cache_off_name",
            &["-t", "off", "-f", "raw"],
            &["write -P 4 0 512", "read -P 4 0 512"],
            "img.raw",
        ),
        on(
            "cli_cache_directsync",
            &["-t", "directsync", "-f", "raw"],
            &["write 0 512", "flush"],
            "img.raw",
        ),
        on(
            "cli_cache_unsafe_nocache",
            &["-t", "unsafe", "-n", "-f", "raw"],
            &["write 0 512", "flush"],
            "img.raw",
        ),
        // discard modes
        on(
            "cli_discard_ignore",
            &["-d", "ignore", "-f", "raw"],
            &["write -P 5 0 64k", "discard 0 64k", "read -P 5 0 64k"],
            "img.raw",
        ),
        on(
            "cli_discard_off",
            &["-d", "off", "-f", "raw"],
            &["write -P 5 0 64k", "discard 0 64k", "read -P 0 0 64k"],
            "img.raw",
        ),
        on(
            "cli_discard_on",
            &["-d", "on", "-f", "raw"],
            &["write -P 5 0 64k", "discard 0 64k", "read -P 0 0 64k"],
            "img.raw",
        ),
        on(
            "cli_discard_last_wins",
            &["-d", "off", "-d", "unmap", "-f", "raw"],
            &["write -P 5 0 64k", "discard 0 64k", "read -P 0 0 64k"],
            "img.raw",
        ),
        on(
            "cli_discard_bogus",
            &["-d", "1", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        // aio modes
        on(
            "cli_aio_native_needs_direct",
            &["-i", "native", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_native_aio_flag",
            &["-k", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_aio_native_direct",
            &["-t", "none", "-i", "native", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_aio_native_nocache",
            &["-n", "-k", "-f", "raw"],
            &["write 0 4k", "read 0 4k"],
            "img.raw",
        ),
        on(
            "cli_aio_threads_keeps_native",
            &["-i", "native", "-i", "threads", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_aio_io_uring",
            &["-i", "io_uring", "-f", "raw"],
            &["write -P 6 0 512", "read -P 6 0 512"],
            "img.raw",
        ),
        on(
            "cli_aio_bogus",
            &["-i", "bogus", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_aio_native_missing_file",
            &["-i", "native", "-f", "raw"],
            &["read 0 1"],
            "nonexistent.raw",
        ),
        on(
            "cli_aio_native_blkdebug",
            &["-k"],
            &["read 0 1"],
            "blkdebug::img.raw",
        ),
        no_drive(
            "cli_open_aio_native",
            &[
                "open -k -o driver=raw img.raw",
                "open -n -i native -o driver=raw img.raw",
                "read 0 1",
            ],
        ),
        // -U, -C, -m, -r, -s
        on(
            "cli_force_share_read_write",
            &["-U", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_force_share_read_only",
            &["-r", "-U", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_force_share_snapshot",
            &["-s", "-U", "-f", "raw"],
            &["write 0 1"],
            "img.raw",
        ),
        on(
            "cli_force_share_conflict",
            &["-r", "-U", "--image-opts"],
            &["read 0 1"],
            "driver=raw,file.filename=img.raw,force-share=off",
        ),
        on(
            "cli_force_share_agrees",
            &["-r", "-U", "--image-opts"],
            &["read 0 1"],
            "driver=raw,file.filename=img.raw,force-share=on",
        ),
        on(
            "cli_force_share_option_yes",
            &["-r", "--image-opts"],
            &["read 0 1"],
            "driver=raw,file.filename=img.raw,force-share=yes",
        ),
        on(
            "cli_force_share_option_bogus",
            &["-r", "--image-opts"],
            &["read 0 1"],
            "driver=raw,file.filename=img.raw,force-share=maybe",
        ),
        on(
            "cli_force_share_option_read_write",
            &["--image-opts"],
            &["read 0 1"],
            "driver=raw,file.filename=img.raw,force-share=on",
        ),
        no_drive(
            "cli_open_force_share",
            &[
                "open -U -o driver=raw img.raw",
                "open -r -U -o driver=raw,force-share=off img.raw",
                "open -r -U -o driver=raw img.raw",
                "read 0 1",
            ],
        ),
        on(
            "cli_copy_on_read",
            &["-C", "-f", "raw"],
            &["write -P 7 0 512", "read -P 7 0 512"],
            "img.raw",
        ),
        on(
            "cli_copy_on_read_read_only",
            &["-C", "-r", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_copy_on_read_snapshot_read_only",
            &["-C", "-s", "-r", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_copy_on_read_missing_file",
            &["-C", "-r", "-f", "raw"],
            &["read 0 1"],
            "nonexistent.raw",
        ),
        on(
            "cli_misalign",
            &["-m", "-f", "raw"],
            &["write -P 8 1 511", "read -v 0 16"],
            "img.raw",
        ),
        on(
            "cli_read_only_write",
            &["-r", "-f", "raw"],
            &["write 0 1", "read 0 1"],
            "img.raw",
        ),
        // -T
        on(
            "cli_trace_unknown_event",
            &["-T", "foo", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_trace_event_names",
            &[
                "-T",
                "bdrv_co_preadv_part_not_really",
                "-T",
                "enable=qcow2_writev_done_req",
                "-f",
                "raw",
            ],
            &["read 0 1"],
            "img.raw",
        ),
        on(
            "cli_trace_pattern",
            &["-T", "foo*", "-T", "-nothing", "-f", "raw"],
            &["read 0 1"],
            "img.raw",
        ),
        argv("cli_trace_help", &["-T", "help", "-c", "read 0 1"]),
        argv(
            "cli_trace_enable_help_after_warning",
            &["-T", "foo", "--trace", "enable=?"],
        ),
        argv("cli_trace_options_help", &["-T", "foo,help"]),
        argv("cli_trace_bad_parameter", &["-T", "bogus=1"]),
        argv("cli_trace_short_form_flag", &["-T", "a,nob"]),
        argv("cli_trace_bad_id", &["-T", "foo,x,id=1"]),
        argv(
            "cli_trace_comma_escape",
            &["-T", "a,,b", "-T", "id=x,enable=y", "-T", ""],
        ),
        argv(
            "cli_trace_missing_events_file",
            &["-T", "foo,events=nonexistent.txt"],
        ),
        argv("cli_trace_empty_events_file_name", &["-T", "events="]),
        argv(
            "cli_trace_empty_log_file_name",
            &["-T", "file=", "-c", "read 0 1"],
        ),
        argv(
            "cli_trace_events_directory",
            &["-T", "events=.", "-c", "read 0 1"],
        ),
        argv(
            "cli_object_secret_empty_file_name",
            &["--object", "secret,id=s,file="],
        ),
        argv(
            "cli_object_secret_directory",
            &["--object", "secret,id=s,file=."],
        ),
        argv(
            "cli_trace_events_file",
            &["-T", "events=ev.txt", "-c", "read 0 1"],
        )
        .file("ev.txt", EVENTS_FILE),
        argv("cli_trace_events_file_help", &["-T", "events=ev.txt"]).file("ev.txt", "help\n"),
        argv(
            "cli_trace_log_file",
            &[
                "-T",
                "file=trace.log",
                "-f",
                "raw",
                "-c",
                "read 0 1",
                "img.raw",
            ],
        ),
        argv(
            "cli_trace_log_file_truncated",
            &["-T", "file=src.bin", "-c", "read 0 1"],
        ),
        argv(
            "cli_trace_log_file_reset",
            &["-T", "file=a.log", "-T", "foo", "-c", "read 0 1"],
        ),
        argv(
            "cli_trace_log_file_bad_dir",
            &["-T", "file=nodir/x.log", "-c", "read 0 1"],
        ),
        argv(
            "cli_trace_log_file_template",
            &["-T", "file=x%s.log", "-c", "read 0 1"],
        ),
        argv(
            "cli_trace_log_file_after_usage",
            &["-T", "file=nodir/x", "a", "b"],
        ),
        // --object
        on(
            "cli_object_secret",
            &[
                "--object",
                "secret,id=sec0,data=hunter0",
                "--object",
                "secret,id=sec1,data=YWJj,format=base64",
                "-f",
                "raw",
            ],
            &["read 0 1"],
            "img.raw",
        ),
        argv(
            "cli_object_secret_file",
            &["--object", "secret,id=s,file=src.bin", "-c", "read 0 1"],
        ),
        argv("cli_object_help", &["--object", "help"]),
        argv("cli_object_type_help", &["--object", "secret,help"]),
        argv("cli_object_unknown_type_help", &["--object", "foo,help"]),
        argv("cli_object_unknown_type", &["--object", "foo"]),
        argv("cli_object_no_type", &["--object", "id=x"]),
        argv("cli_object_no_id", &["--object", "secret,format=foo"]),
        argv("cli_object_no_data", &["--object", "secret,id=x"]),
        argv("cli_object_bad_id", &["--object", "secret,id=0bad,data=1"]),
        argv(
            "cli_object_escaped_comma_in_id",
            &["--object", "secret,id=s,,data=a"],
        ),
        argv(
            "cli_object_unexpected",
            &["--object", "secret,id=s,data=a,bogus=1"],
        ),
        argv(
            "cli_object_unexpected_nested",
            &["--object", "secret,id=s,data=a,a.b=1"],
        ),
        argv(
            "cli_object_inconsistent",
            &["--object", "secret,id=s,data=a,id.x=1"],
        ),
        argv(
            "cli_object_inconsistent_later",
            &["--object", "secret,id=s,data.x=1,data=a"],
        ),
        argv("cli_object_member_as_dict", &["--object", "secret,id.a=1"]),
        argv("cli_object_bad_key", &["--object", "secret,1=2"]),
        argv("cli_object_no_equals", &["--object", "secret,id"]),
        argv("cli_object_empty_key", &["--object", "secret,,id=s"]),
        argv(
            "cli_object_bad_format",
            &["--object", "secret,id=s,data=a,format=foo"],
        ),
        argv(
            "cli_object_bad_base64",
            &["--object", "secret,id=s,data=!!,format=base64"],
        ),
        argv(
            "cli_object_file_and_data",
            &["--object", "secret,id=s,data=a,file=src.bin"],
        ),
        argv(
            "cli_object_missing_file",
            &["--object", "secret,id=s,file=nonexistent.txt"],
        ),
        argv(
            "cli_object_duplicate_id",
            &[
                "--object",
                "secret,id=s,data=a",
                "--object",
                "secret,id=s,data=b",
            ],
        ),
        argv(
            "cli_object_keyid_self",
            &["--object", "secret,id=s,data=a,keyid=s"],
        ),
        argv(
            "cli_object_keyid_missing",
            &["--object", "secret,id=s,data=a,keyid=nope"],
        ),
        argv(
            "cli_object_keyid_short_key",
            &[
                "--object",
                "secret,id=k,data=abc",
                "--object",
                "secret,id=s,data=a,keyid=k",
            ],
        ),
        argv(
            "cli_object_keyid_no_iv",
            &[
                "--object",
                "secret,id=k,data=0123456789abcdef0123456789abcdef",
                "--object",
                "secret,id=s,data=a,keyid=k",
            ],
        ),
        argv(
            "cli_object_keyid_short_iv",
            &[
                "--object",
                "secret,id=k,data=0123456789abcdef0123456789abcdef",
                "--object",
                "secret,id=s,data=a,keyid=k,iv=AAAA",
            ],
        ),
        argv(
            "cli_object_keyid_odd_length",
            &[
                "--object",
                "secret,id=k,data=0123456789abcdef0123456789abcdef",
                "--object",
                "secret,id=s,data=a,keyid=k,iv=AAAAAAAAAAAAAAAAAAAAAA==",
            ],
        ),
        argv(
            "cli_object_last_value_wins",
            &[
                "--object",
                "secret,id=s,data=a,id=t",
                "--object",
                "secret,id=s,data=b",
                "-c",
                "read 0 1",
            ],
        ),
        argv(
            "cli_object_then_bad_cache",
            &["--object", "secret,id=s,data=a", "-t", "bogus"],
        ),
        argv(
            "cli_bad_cache_then_object",
            &["-t", "bogus", "--object", "foo"],
        ),
        // sigraise and abort end the process by their signal
        raw(
            "cli_sigraise_kill",
            &["write -P 1 0 512", "sigraise 9", "read 0 512"],
        ),
        raw(
            "cli_sigraise_ignored",
            &[
                "sigraise 13",
                "sigraise 10",
                "sigraise 14",
                "sigraise 28",
                "sigraise 32",
                "sigraise 65",
                "read 0 512",
            ],
        ),
        raw("cli_sigraise_hup", &["sigraise 1", "read 0 512"]),
        raw("cli_sigraise_realtime", &["sigraise 40", "read 0 512"]),
        raw("cli_abort", &["write -P 1 0 512", "abort"]),
    ];
    // Every option's long name, spelled out in full, on a working command line.
    v.push(argv(
        "cli_every_long_name",
        &[
            "--format",
            "raw",
            "--read-only",
            "--snapshot",
            "--nocache",
            "--misalign",
            "--native-aio",
            "--aio",
            "threads",
            "--discard",
            "unmap",
            "--cache",
            "none",
            "--trace",
            "nothing*",
            "--object",
            "secret,id=s,data=x",
            "--force-share",
            "--cmd",
            "read 0 512",
            "img.raw",
        ],
    ));
    v
}

// ---- json: filenames in QEMU's JSON dialect --------------------------------------------------
// How QEMU parses, flattens and types the options of a `json:` filename: each parser error
// text, the accepted extensions (single quotes, `\'`, whitespace and newlines), which of a dotted
// and a nested spelling wins, and what JSON types QEMU takes where strings are expected.

/// `json:{"driver":"raw","file":{"driver":"file","filename":<filename>}}`
fn json_file(filename: &str) -> String {
    format!(r#"json:{{"driver":"raw","file":{{"driver":"file","filename":{filename}}}}}"#)
}

/// A 1 MiB qcow2 image (no data) whose header names `backing` as its backing file.
fn qcow2_with_backing(backing: &str) -> Vec<u8> {
    use blockfault::img::qcow2::create::{CreateSpec, build};
    let spec = CreateSpec {
        size: 1 << 20,
        backing_file: Some(backing.to_string()),
        ..CreateSpec::default()
    };
    let file = tempfile::tempfile().unwrap();
    build(&spec).unwrap().write_to(&file).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::BufReader::new(&file), &mut bytes).unwrap();
    bytes
}

fn json_dialect() -> Vec<Case> {
    let json = |name: &str, drive: &str| on(name, &[], &["read -P 0 0 512"], drive);
    let mut v = vec![
        // Accepted forms.
        json(
            "jsond_single_quotes",
            "json:{'driver':'raw','file':{'driver':'file','filename':'img.raw'}}",
        ),
        json(
            "jsond_whitespace_and_newlines",
            "json:\n {\t\"driver\" :\r\n'raw' ,\n \"file\": {\"driver\": \"file\",\n  \"filename\": \"img.raw\"}\n}\n\t ",
        ),
        json("jsond_escape_unicode", &json_file(r#""img\u002eraw""#)),
        json("jsond_escape_solidus", &json_file(r#""img\/raw""#)),
        json("jsond_escape_apostrophe", &json_file(r"'img\'.raw'")),
        json("jsond_escape_apostrophe_dq", &json_file(r#""img\'.raw""#)),
        json("jsond_quote_in_single_quotes", &json_file(r#"'im"g.raw'"#)),
        json("jsond_escape_controls", &json_file(r#""a\tb\n\r\b\f""#)),
        json("jsond_escape_pair", &json_file(r#""\uD83D\uDE00\u00e9""#)),
        json("jsond_raw_utf8", &json_file("\"é😀\"")),
        json("jsond_percent", &json_file(r#""100%d""#)),
        // Parse errors, each of QEMU's texts.
        json("jsond_empty", "json:"),
        json("jsond_blank", "json: \n\t"),
        json("jsond_eoi_object", r#"json:{"driver":"raw""#),
        json("jsond_eoi_list", r#"json:{"a":[1,"#),
        json("jsond_eoi_string", r#"json:{"a":"abc"#),
        json(
            "jsond_trailing_garbage",
            &format!("{} x", json_file(r#""img.raw""#)),
        ),
        json("jsond_trailing_brace", r#"json:{"a":1}}"#),
        json("jsond_second_value", r#"json:{} {}"#),
        json("jsond_not_object_list", "json:[1]"),
        json("jsond_not_object_string", "json:'x'"),
        json("jsond_not_object_null", "json:null"),
        json("jsond_stray_char", r#"json:{"a":@}"#),
        json("jsond_stray_capital", r#"json:{"a":True}"#),
        json("jsond_stray_interpolation", r#"json:{"a":%d}"#),
        json("jsond_stray_leading_zero", r#"json:{"a":01}"#),
        json("jsond_stray_sign", r#"json:{"a":-}"#),
        json("jsond_stray_plus", r#"json:{"a":+1}"#),
        json("jsond_stray_point", r#"json:{"a":1.}"#),
        json("jsond_stray_exponent", r#"json:{"a":1e}"#),
        json("jsond_stray_control_in_string", "json:{\"a\":\"a\tb\"}"),
        json("jsond_zero_exponent", r#"json:{"a":[0e5]}"#),
        json("jsond_invalid_keyword", r#"json:{"a":tru}"#),
        json("jsond_missing_colon", r#"json:{"a" 1}"#),
        json("jsond_key_not_string", r#"json:{1:1}"#),
        json("jsond_expected_separator_dict", r#"json:{"a":1 "b":2}"#),
        json("jsond_expected_separator_list", r#"json:{"a":[1 2]}"#),
        json("jsond_expecting_value", r#"json:{"a":[1,]}"#),
        json("jsond_expecting_value_close", "json:}"),
        json("jsond_open_bracket_close_brace", r#"json:{"a":[} 1"#),
        json(
            "jsond_duplicate_key",
            &json_file(r#""img.raw","filename":"x""#),
        ),
        json("jsond_invalid_escape", &json_file(r#""\x""#)),
        json("jsond_short_unicode_escape", &json_file(r#""\u12""#)),
        json("jsond_lone_surrogate", &json_file(r#""\uD800\u0041""#)),
        json("jsond_noncharacter_escape", &json_file(r#""\uFFFE""#)),
        json("jsond_noncharacter_raw", &json_file("\"\u{FDD0}\"")),
        json(
            "jsond_nesting_1024",
            &format!(r#"json:{{"a":{}{}}}"#, "[".repeat(1023), "]".repeat(1023)),
        ),
        json(
            "jsond_nesting_1025",
            &format!(r#"json:{{"a":{}{}}}"#, "[".repeat(1024), "]".repeat(1024)),
        ),
        // Numbers: -0 is the integer 0, doubles print as %.17g, huge ones are doubles.
        json("jsond_align_minus_zero", &json_dbg(r#""align":-0"#)),
        json("jsond_align_double", &json_dbg(r#""align":5.12e2"#)),
        json("jsond_align_fraction", &json_dbg(r#""align":0.1"#)),
        json("jsond_align_infinite", &json_dbg(r#""align":1e400"#)),
        json(
            "jsond_align_above_u64",
            &json_dbg(r#""align":18446744073709551616"#),
        ),
        json(
            "jsond_align_u64_max",
            &json_dbg(r#""align":18446744073709551615"#),
        ),
        json("jsond_align_bool", &json_dbg(r#""align":true"#)),
        json(
            "jsond_errno_double",
            &json_dbg(r#""inject-error":[{"event":"read_aio","errno":2.8e1}]"#),
        ),
        // Flattening: which spelling wins.
        json(
            "jsond_nested_beats_dotted_after",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"},"file.filename":"nonexist"}"#,
        ),
        json(
            "jsond_nested_beats_dotted_before",
            r#"json:{"driver":"raw","file.driver":"blkdebug","file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        json(
            "jsond_dotted_into_list",
            &json_dbg(r#""inject-error":[{"event":"read_aio"}],"inject-error.0.errno":"28""#),
        ),
        json(
            "jsond_dotted_beside_list_hash_order",
            &json_dbg(
                r#""inject-error.0.errno":"28","inject-error":[{"event":"read_aio","errno":"5"}]"#,
            ),
        ),
        json(
            "jsond_dotted_child_keys",
            r#"json:{"driver":"raw","file.driver":"blkdebug","file.inject-error":[{"event":"read_aio"}],"file.image.driver":"file","file.image.filename":"img.raw"}"#,
        ),
        // Unknown options are named by their flat key, the first in QDict order.
        json(
            "jsond_unknown_nested",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"},"foo":{"x":1}}"#,
        ),
        json(
            "jsond_unknown_list",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"},"foo":[1,2]}"#,
        ),
        json(
            "jsond_unknown_hash_order",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"},"bar":1,"foo":2}"#,
        ),
        json(
            "jsond_unknown_empty_object",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"},"foo":{}}"#,
        ),
        // Types where a driver, child or reference is expected.
        json(
            "jsond_driver_number",
            r#"json:{"driver":5,"file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        json(
            "jsond_driver_null",
            r#"json:{"driver":null,"file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        json(
            "jsond_driver_empty_object",
            r#"json:{"driver":{},"file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        json(
            "jsond_driver_list",
            r#"json:{"driver":["raw"],"file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        json(
            "jsond_child_driver_number",
            r#"json:{"driver":"raw","file":{"driver":5,"filename":"img.raw"}}"#,
        ),
        json(
            "jsond_no_driver_file_child",
            r#"json:{"file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        json("jsond_no_driver_filename", r#"json:{"filename":"img.raw"}"#),
        json(
            "jsond_file_empty_object",
            r#"json:{"driver":"raw","file":{}}"#,
        ),
        json("jsond_file_number", r#"json:{"driver":"raw","file":5}"#),
        json("jsond_file_null", r#"json:{"driver":"raw","file":null}"#),
        json(
            "jsond_file_list",
            r#"json:{"driver":"raw","file":[{"driver":"file","filename":"img.raw"}]}"#,
        ),
        json(
            "jsond_image_number",
            r#"json:{"driver":"raw","file":{"driver":"blkdebug","image":5}}"#,
        ),
        json(
            "jsond_blkverify_test_number",
            r#"json:{"driver":"raw","file":{"driver":"blkverify","raw":{"driver":"file","filename":"img.raw"},"test":5}}"#,
        ),
        json(
            "jsond_perms_string",
            &json_dbg(r#""take-child-perms":"resize""#),
        ),
        json("jsond_perms_empty", &json_dbg(r#""take-child-perms":[]"#)),
        json("jsond_perms_number", &json_dbg(r#""take-child-perms":[5]"#)),
        json(
            "jsond_perms_ok",
            &json_dbg(r#""take-child-perms":["resize"]"#),
        ),
        json("jsond_config_null", &json_dbg(r#""config":null"#)),
        json("jsond_config_object", &json_dbg(r#""config":{"a":1}"#)),
        json("jsond_config_number", &json_dbg(r#""config":5"#)),
        json(
            "jsond_filename_number",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":5}}"#,
        ),
        // Options given directly win over the filename's, key by key.
        on(
            "jsond_format_option_wins",
            &["-f", "raw"],
            &["read 0 512"],
            r#"json:{"driver":"bogus","file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        no_drive(
            "jsond_open_options_merge",
            &[
                r#"open -o driver=raw json:{"file.filename":"img.raw"}"#,
                "read 0 512",
            ],
        ),
        no_drive(
            "jsond_open_options_win",
            &[
                r#"open -o driver=raw json:{"driver":"qcow2","file.filename":"img.raw"}"#,
                "read 0 512",
            ],
        ),
        no_drive(
            "jsond_open_child_options_merge",
            &[
                r#"open -o file.driver=blkdebug json:{"driver":"raw","file.image.filename":"img.raw"}"#,
                "read 0 512",
            ],
        ),
    ];
    // Backing file names in an image header are json: filenames too (multi-line ones as well).
    let overlay = |name: &str, backing: &str| {
        on(name, &[], &["read -P 0 0 512"], "ov.qcow2")
            .bytes("ov.qcow2", qcow2_with_backing(backing))
    };
    v.extend([
        overlay(
            "jsond_backing_name",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"}}"#,
        ),
        overlay(
            "jsond_backing_name_multiline",
            "json:{'driver': 'raw',\n    'file': {\n        'driver': 'file',\n        'filename': 'img.raw'}}",
        ),
        overlay("jsond_backing_name_malformed", r#"json:{"driver":"raw""#),
        overlay("jsond_backing_name_not_object", "json:[]"),
        overlay("jsond_backing_name_unknown_protocol", "foo:bar"),
        json(
            "jsond_backing_null",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_backing_empty_string",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":""}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_backing_reference",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":"x"}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("img.raw")),
        json(
            "jsond_backing_number",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":5}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("img.raw")),
        // qcow2's runtime options: JSON scalars become text, then QemuOpts types apply.
        json(
            "jsond_qcow2_bool_word",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null,"lazy-refcounts":"yes","pass-discard-request":true}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_qcow2_bool_number",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null,"lazy-refcounts":1}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_qcow2_bool_null",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null,"lazy-refcounts":null}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_qcow2_size_double",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null,"l2-cache-size":1048576.0}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_qcow2_size_bool",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null,"l2-cache-size":true}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_qcow2_size_negative",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null,"refcount-cache-size":-1}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_qcow2_interval_fraction",
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"ov.qcow2"},"backing":null,"cache-clean-interval":1.5}"#,
        )
        .bytes("ov.qcow2", qcow2_with_backing("nonexist.img")),
        json(
            "jsond_backing_null_on_raw",
            r#"json:{"driver":"raw","file":{"driver":"file","filename":"img.raw"},"backing":null}"#,
        ),
    ]);
    v
}

/// Bytes that are not zero, so that zeroes read past the end of a file show.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 + 1).collect()
}

/// A fresh qcow2 image as `qemu-img create -f qcow2 -o cluster_size=CS` makes it.
pub fn qcow2_image(size: u64, cluster_size: u64) -> Vec<u8> {
    use blockfault::img::qcow2::create::{CreateSpec, build};
    let spec = CreateSpec {
        size,
        cluster_size,
        ..CreateSpec::default()
    };
    build(&spec).expect("a valid qcow2 spec").flatten()
}

/// `json:` for raw over blkdebug (with `blkdebug`'s keys) over the file `image`.
pub fn json_dbg_on(blkdebug: &str, image: &str) -> String {
    format!(
        r#"json:{{"driver":"raw","file":{{"driver":"blkdebug",{blkdebug},"image":{{"driver":"file","filename":"{image}"}}}}}}"#
    )
}

/// Issue 7.9: a node written without the resize permission must have a size its request
/// alignment divides; read-only nodes cannot be written at all.
fn permissions() -> Vec<Case> {
    let five = || vec![0u8; 5120];
    let align = json_dbg_on(r#""align":4096"#, "five.img");
    vec![
        on("perm_unaligned_size_refused", &[], &["read 0 512"], &align).bytes("five.img", five()),
        on(
            "perm_unaligned_size_read_only",
            &["-r"],
            &["read 0 512", "read 4k 1k", "write 0 512", "length"],
            &align,
        )
        .bytes("five.img", five()),
        // The image is only read under the overlay.
        on(
            "perm_unaligned_size_snapshot",
            &["-s"],
            &["write -P 3 0 512", "read -P 3 0 512", "read -P 0 4k 1k"],
            &align,
        )
        .bytes("five.img", five()),
        on(
            "perm_aligned_size",
            &[],
            &["write -P 3 100 100", "read -P 3 100 100", "length"],
            &json_dbg_on(r#""align":4096"#, "img.raw"),
        ),
        // truncate takes RESIZE for good; the padded write then grows the file past the size
        // raw keeps.
        on(
            "perm_truncate_takes_resize",
            &[],
            &[
                "truncate 5120",
                "length",
                "write -P 4 4096 1024",
                "length",
                "read -P 4 4096 1024",
                "truncate 8192",
                "length",
            ],
            &json_dbg_on(r#""align":4096"#, "four.img"),
        )
        .bytes("four.img", vec![0; 4096]),
        on(
            "perm_take_child_perms_write_read_only",
            &["-r"],
            &["read 0 512"],
            &json_dbg_on(r#""take-child-perms":["write"]"#, "img.raw"),
        ),
        on(
            "perm_take_child_perms_write",
            &[],
            &["write 0 512"],
            &json_dbg_on(r#""take-child-perms":["write"]"#, "img.raw"),
        ),
        // RESIZE taken on blkdebug's child lets the inner node's alignment pass...
        on(
            "perm_take_child_perms_resize_inner",
            &[],
            &["write -P 5 0 512", "read -P 5 0 512", "length"],
            r#"json:{"driver":"raw","file":{"driver":"blkdebug","take-child-perms":["resize"],"image":{"driver":"blkdebug","align":4096,"image":{"driver":"file","filename":"five.img"}}}}"#,
        )
        .bytes("five.img", five()),
        // ...but not the blkdebug node's own.
        on(
            "perm_take_child_perms_resize_outer",
            &[],
            &["read 0 512"],
            &json_dbg_on(r#""take-child-perms":["resize"],"align":4096"#, "five.img"),
        )
        .bytes("five.img", five()),
        // qcow2 holds RESIZE on its file, whatever its length.
        on(
            "perm_qcow2_over_aligned_blkdebug",
            &[],
            &["write -P 6 0 1k", "read -P 6 0 1k", "map"],
            r#"json:{"driver":"qcow2","file":{"driver":"blkdebug","align":4096,"image":{"driver":"file","filename":"q.qcow2"}}}"#,
        )
        .bytes("q.qcow2", qcow2_image(1 << 20, 512)),
    ]
}

/// Issue 7.10: sizes in whole sectors. A 1000-byte file is 1 KiB long; its last 24 bytes read
/// as zeroes, and writing them grows the file.
fn sector_sizes() -> Vec<Case> {
    let short = |name: &str, opts: &[&str], cmds: &[&str]| {
        on(name, opts, cmds, "short.img").bytes("short.img", pattern(1000))
    };
    vec![
        short(
            "short_file_sector_rounding",
            &["-f", "raw"],
            &[
                "length",
                "read -v 990 34",
                "write -P 7 1000 24",
                "length",
                "read -P 7 1000 24",
                "map",
                "info",
            ],
        ),
        short(
            "short_file_write_past_last_sector",
            &["-f", "raw"],
            &[
                "write 1000 100",
                "write -P 9 1000 10",
                "length",
                "read -v 1000 24",
            ],
        ),
        short(
            "short_file_probed",
            &[],
            &["write -P 8 1000 24", "read -v 992 32", "length"],
        ),
        short(
            "short_file_truncate",
            &["-f", "raw"],
            &[
                "truncate 1500",
                "length",
                "read -v 1490 40",
                "truncate -m falloc 1510",
                "length",
                "truncate -m falloc 1400",
                "truncate -m full 1536",
                "length",
                "truncate 1000",
                "length",
            ],
        ),
        // iotest 101: reading past the end of a 320-byte file gives zeroes.
        on(
            "short_file_iotest_101",
            &[],
            &["read -P 0 0 512"],
            "tiny.img",
        )
        .bytes("tiny.img", vec![0; 320]),
        // qcow2 over a file with a partial sector at its end.
        on(
            "short_file_under_qcow2",
            &[],
            &[
                "write -P 1 8k 4k",
                "read -P 1 8k 4k",
                "map",
                "truncate 2M",
                "length",
            ],
            "q.qcow2",
        )
        .bytes("q.qcow2", {
            let mut q = qcow2_image(1 << 20, 512);
            q.extend(pattern(100));
            q
        }),
    ]
}

/// Issue 7.11: blkverify's truncate resizes the raw child only; `truncate` takes RESIZE for
/// good, so a write past the raw end is fine afterwards (before it, QEMU aborts: `ours.rs`).
fn blkverify_resize() -> Vec<Case> {
    let bv = |name: &str, drive: &str, cmds: &[&str]| on(name, &["-f", "raw"], cmds, drive);
    vec![
        bv(
            "blkverify_truncate_shrink_then_write_past",
            "blkverify:raw.img:img.raw",
            &[
                "truncate 512k",
                "length",
                "read 600k 512",
                "write -P 5 600k 512",
                "read -P 5 600k 512",
            ],
        ),
        bv(
            "blkverify_truncate_grow",
            "blkverify:raw.img:img.raw",
            &[
                "truncate 2M",
                "length",
                "write -P 5 1020k 4k",
                "read -P 5 1020k 4k",
                "read 1M 512",
            ],
        ),
        bv(
            "blkverify_short_raw_after_truncate",
            "blkverify:half.img:img.raw",
            &["truncate 512k", "write -P 6 600k 512", "read -P 6 600k 512"],
        ),
        // The permission is taken before the command runs, even when it then fails.
        bv(
            "blkverify_failed_truncate_keeps_resize",
            "blkverify:half.img:img.raw",
            &["truncate -m falloc 256k", "write -P 6 600k 512"],
        ),
    ]
}

/// Issue 7.12: `map` prints the extents found before a failing query, then the error.
fn map_errors() -> Vec<Case> {
    // The second L2 table load fails; the first image has its tables on disk, not in a cache.
    let conf = "[set-state]\nevent = \"l2_load\"\nstate = \"1\"\nnew_state = \"2\"\n\n[inject-error]\nevent = \"l2_load\"\nstate = \"2\"\n";
    vec![
        no_drive(
            "map_error_after_extents",
            &[
                "open q.qcow2",
                "write 0 1k",
                "write 64k 1k",
                "write 200k 1k",
                "close",
                "open blkdebug:l2.conf:q.qcow2",
                "map",
                "map",
            ],
        )
        .file("l2.conf", conf)
        .bytes("q.qcow2", qcow2_image(1 << 20, 512)),
    ]
}

/// Issue 7.13, the neighbours of QEMU's crashes that it survives (the crashes: `ours.rs`).
fn padding_survivors() -> Vec<Case> {
    let align4k = json_dbg(r#""align":4096"#);
    let align512 = json_dbg(r#""align":512"#);
    let ones = std::iter::repeat_n("1", 1023).collect::<Vec<_>>().join(" ");
    vec![
        // An empty element after the last byte is not counted; an aligned request is not padded.
        on(
            "padding_trailing_empty_element",
            &[],
            &[
                "readv 24k 2560 4096 0",
                "writev -P 2 24k 2560 4096 0",
                "readv -P 2 24k 0 4096",
                "readv 1k 0",
                "aio_read 1k 1k 0",
                "aio_flush",
            ],
            &align4k,
        ),
        on(
            "padding_aligned_empty_elements",
            &[],
            &["readv 0 0 512", "writev 512 512 0 512", "readv 0 0 0 2048"],
            &align512,
        ),
        on(
            "padding_probed_raw_empty_elements",
            &[],
            &["readv 0 0 512", "readv 100 512 0", "writev 512 0 512"],
            "img.raw",
        ),
        // 1 + 1024 + 1 elements: the first three merge into one, the empty one among them.
        on(
            "padding_iov_max_collapse",
            &[],
            &[&format!("readv 1 0 {ones}")],
            &align512,
        ),
        on(
            "discard_blkdebug_align_with_opt_discard",
            &[],
            &["discard 227k 10955", "discard 4095 1", "discard 4k 4097"],
            &json_dbg(r#""align":4096,"opt-discard":8192"#),
        ),
        on(
            "discard_blkdebug_align_aligned",
            &[],
            &["discard 4k 4k", "discard 0 1M"],
            &align4k,
        ),
        // Over qcow2, blkdebug takes qcow2's cluster size as its discard alignment.
        on(
            "discard_blkdebug_align_over_qcow2",
            &[],
            &["write 0 64k", "discard 1k 1k", "discard 0 8k", "map"],
            r#"json:{"driver":"raw","file":{"driver":"blkdebug","align":4096,"image":{"driver":"qcow2","file":{"driver":"file","filename":"q.qcow2"}}}}"#,
        )
        .bytes("q.qcow2", qcow2_image(1 << 20, 512)),
    ]
}

/// Issue 7.14: cache=none (O_DIRECT). The request alignment is what file-posix probes, which
/// depends on the filesystem and on whether the file's first block holds data; both programs
/// run on the same files in the same kind of directory.
fn direct_io() -> Vec<Case> {
    let cmds: &[&str] = &[
        "write -P 1 100 1000",
        "read -P 1 100 1000",
        "read -v 0 16",
        "write -z 5000 100",
        "discard 0 100",
        "map",
        "length",
    ];
    vec![
        on(
            "nocache_sparse_raw",
            &["-f", "raw", "-t", "none"],
            cmds,
            "img.raw",
        ),
        on(
            "nocache_data_raw",
            &["-f", "raw", "-t", "none"],
            cmds,
            "data.img",
        )
        .bytes("data.img", pattern(64 << 10)),
        on(
            "nocache_short_file",
            &["-f", "raw", "-t", "none"],
            &["length", "write -P 2 1000 24", "length"],
            "short.img",
        )
        .bytes("short.img", pattern(1000)),
        on(
            "nocache_short_file_read_only",
            &["-r", "-f", "raw", "-t", "none"],
            &["length", "read -v 992 32"],
            "short.img",
        )
        .bytes("short.img", pattern(1000)),
        // The padded write grows the file past the size raw keeps.
        on(
            "nocache_truncate_unaligned",
            &["-f", "raw", "-t", "none"],
            &[
                "truncate 3000",
                "length",
                "write -P 3 2900 100",
                "length",
                "read -v 2990 20",
            ],
            "img.raw",
        ),
        // The padded write at qcow2's unaligned end of file decides where the file ends.
        on(
            "nocache_qcow2_padded_end",
            &["-t", "none"],
            &[
                "aio_write 1112064 3310",
                "aio_flush",
                "discard 0 512",
                "write -P 7 0 512",
                "map",
            ],
            "q.qcow2",
        )
        .bytes("q.qcow2", qcow2_image(64 << 20, 512)),
        // In tmpfs any direct read size works, so QEMU takes 4096 whatever the file holds.
        on(
            "nocache_qcow2_padded_end_tmpfs",
            &["-t", "none"],
            &[
                "aio_write 1112064 3310",
                "aio_flush",
                "discard 0 512",
                "write -P 7 0 512",
                "map",
            ],
            "q.qcow2",
        )
        .bytes("q.qcow2", qcow2_image(64 << 20, 512))
        .on_tmpfs(),
        on(
            "nocache_short_file_tmpfs",
            &["-f", "raw", "-t", "none"],
            &["length", "write -P 2 1000 24", "length"],
            "short.img",
        )
        .bytes("short.img", pattern(1000))
        .on_tmpfs(),
        on(
            "nocache_data_raw_tmpfs",
            &["-f", "raw", "-t", "none"],
            cmds,
            "data.img",
        )
        .bytes("data.img", pattern(64 << 10))
        .on_tmpfs(),
        no_drive(
            "nocache_open_command",
            &[
                "open -n img.raw",
                "write -P 4 100 10",
                "close",
                "open -t none -o driver=raw img.raw",
                "write -P 5 200 10",
                "read -v 96 120",
                "close",
                "open -t off -o driver=raw img.raw",
                "read -P 4 100 10",
            ],
        ),
        // blkdebug's limits are checked against its child's O_DIRECT alignment.
        on(
            "nocache_blkdebug_max_transfer",
            &["-t", "none"],
            &["read 0 1"],
            &json_dbg(r#""max-transfer":1000"#),
        ),
    ]
}

// =============================================================================================
// Open options as QEMU 10.0.2 has them (issue 8 item 3): the block layer's own options
// (node-name, read-only, cache.*, discard, detect-zeroes, force-share), file.* and backing.*
// options, json: filenames without a driver, raw's offset and size, and qcow2's runtime
// options (cache sizes and entry size, overlap checks, lazy refcounts, discard passthrough,
// cache-clean-interval). Images come from the real qemu-img and qemu-io.
// =============================================================================================

/// An image made by the real tools: `qemu-img create -f FMT -o OPTS x SIZE`, then each of
/// `prep` run as a shell command with `$I` naming the image (qemu-io, qemu-img snapshot, poke).
pub(crate) fn made(fmt: &str, opts: &str, size: &str, prep: &[&str]) -> Vec<u8> {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.img");
    let mut create = Command::new("qemu-img");
    create.args(["create", "-q", "-f", fmt]);
    if !opts.is_empty() {
        create.args(["-o", opts]);
    }
    // a backing file named relative to the image is not there yet
    if opts.contains("backing_file") {
        create.arg("-u");
    }
    let st = create.arg(&path).arg(size).status().expect("qemu-img runs");
    assert!(st.success(), "qemu-img create -f {fmt} -o {opts} {size}");
    for p in prep {
        let st = Command::new("sh")
            .arg("-c")
            .arg(p)
            .env("I", &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("sh runs");
        assert!(st.success(), "{p}");
    }
    std::fs::read(&path).unwrap()
}

/// Writes `bytes` at `offset` of an image (the iotests' poke_file).
fn poke(mut image: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
    image[offset..offset + bytes.len()].copy_from_slice(bytes);
    image
}

/// `qemu-io ARGS -c CMD... [DRIVE]` with the given images in place (no drive when empty).
fn with_images(
    name: &str,
    args: &[&str],
    cmds: &[&str],
    drive: &str,
    images: Vec<(&str, Vec<u8>)>,
) -> Case {
    let c = if drive.is_empty() {
        let mut all: Vec<&str> = args.to_vec();
        for c in cmds {
            all.extend(["-c", c]);
        }
        case(name, &all)
    } else {
        on(name, args, cmds, drive)
    };
    c.with_files(images)
}

/// Builder steps for the cases of this section.
trait CaseExt {
    /// Binary files (images) next to the standard ones.
    fn with_files(self, files: Vec<(&str, Vec<u8>)>) -> Case;
    /// The drive, after the commands.
    fn drive(self, drive: &str) -> Case;
}

impl CaseExt for Case {
    fn with_files(mut self, files: Vec<(&str, Vec<u8>)>) -> Case {
        for (n, bytes) in files {
            self.files.push((n.to_string(), bytes));
        }
        self
    }

    fn drive(mut self, drive: &str) -> Case {
        self.args.push(drive.to_string());
        self
    }
}

/// A 64 MiB qcow2 image (64 KiB clusters) with data in its first cluster: header at 0,
/// refcount table at 0x10000, refcount block at 0x20000, L1 at 0x30000, L2 at 0x40000, data
/// at 0x50000.
fn written_qcow2() -> Vec<u8> {
    made(
        "qcow2",
        "",
        "64M",
        &["qemu-io -c 'write -P 5 0 64k' \"$I\""],
    )
}

/// An overlay `t.qcow2` over `b.qcow2`, whose first 64 KiB hold pattern 9.
fn chain() -> Vec<(&'static str, Vec<u8>)> {
    let base = made(
        "qcow2",
        "",
        "64M",
        &["qemu-io -c 'write -P 9 0 64k' \"$I\""],
    );
    let top = made(
        "qcow2",
        "backing_file=b.qcow2,backing_fmt=qcow2",
        "64M",
        &[],
    );
    vec![("b.qcow2", base), ("t.qcow2", top)]
}

fn open_options() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(generic_options());
    v.extend(child_options());
    v.extend(raw_offset_size());
    v.extend(qcow2_cache_options());
    v.extend(qcow2_overlap_checks());
    v.extend(qcow2_other_options());
    v
}

fn generic_options() -> Vec<Case> {
    let q = || vec![("t.qcow2", made("qcow2", "", "64M", &[]))];
    let open = |name: &str, o: &str, cmds: &[&str]| {
        let mut all = vec![format!("open -o {o} t.qcow2")];
        all.extend(cmds.iter().map(|c| c.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut c = no_drive(name, &all);
        c.files
            .push(("t.qcow2".into(), made("qcow2", "", "64M", &[])));
        c
    };
    vec![
        open("opt_node_name_invalid", "node-name=1abc", &[]),
        open("opt_node_name_empty", "node-name=", &[]),
        open(
            "opt_node_name_duplicate",
            "node-name=a,file.node-name=a",
            &[],
        ),
        open(
            "opt_node_name_too_long",
            "node-name=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            &[],
        ),
        open(
            "opt_node_name_longest",
            "node-name=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa,file.node-name=b",
            &["read 0 512"],
        ),
        open("opt_detect_zeroes_invalid", "detect-zeroes=foo", &[]),
        open(
            "opt_detect_zeroes_unmap_needs_discard",
            "detect-zeroes=unmap,discard=ignore",
            &[],
        ),
        open("opt_discard_invalid", "discard=foo", &[]),
        open("opt_cache_direct_invalid", "cache.direct=foo", &[]),
        open("opt_cache_no_flush_invalid", "cache.no-flush=bar", &[]),
        open("opt_read_only_invalid", "read-only=foo", &[]),
        open("opt_auto_read_only_invalid", "auto-read-only=qux", &[]),
        open(
            "opt_auto_read_only",
            "auto-read-only=on",
            &["write -P 3 0 512", "read -P 3 0 512"],
        ),
        open("opt_force_share_invalid", "force-share=foo", &[]),
        open("opt_force_share_writable", "force-share=on", &[]),
        with_images(
            "opt_force_share_read_only",
            &[],
            &["open -r -o force-share=on t.qcow2", "read 0 512"],
            "",
            q(),
        ),
        // -r with read-only=off: the node is writable, and qemu-io asks the node.
        no_drive(
            "opt_read_only_off_beats_r",
            &[
                "open -r -o read-only=off t.qcow2",
                "write -P 4 0 512",
                "read -P 4 0 512",
            ],
        )
        .with_files(q()),
        // A zeroed buffer becomes a zero write: the cluster reads as zero without data.
        open(
            "opt_detect_zeroes_on",
            "detect-zeroes=on",
            &["write -P 0 0 64k", "write -P 0 64k 512", "map"],
        ),
        open(
            "opt_detect_zeroes_unmap",
            "detect-zeroes=unmap",
            &["write -P 1 0 128k", "write -P 0 0 64k", "map"],
        ),
        open(
            "opt_detect_zeroes_off",
            "detect-zeroes=off",
            &["write -P 0 0 64k", "map"],
        ),
        open(
            "opt_discard_ignore",
            "discard=ignore",
            &[
                "write -P 1 0 64k",
                "discard 0 64k",
                "map",
                "read -P 1 0 512",
            ],
        ),
        open(
            "opt_discard_unmap",
            "discard=unmap",
            &["write -P 1 0 64k", "discard 0 64k", "map"],
        ),
        // detect-zeroes on a blkdebug node: its zero writes raise pwritev_zero there.
        no_drive(
            "opt_detect_zeroes_event",
            &[
                r#"open -o driver=raw,file.driver=blkdebug,file.detect-zeroes=on,file.inject-error.0.event=pwritev_zero,file.image.filename=img.raw"#,
                "write -P 1 0 512",
                "write -P 0 512 512",
                "write -z 1024 512",
            ],
        ),
        // cache.no-flush: flushes never reach the disk, so a flush_to_disk rule never fires.
        no_drive(
            "opt_cache_no_flush",
            &[
                r#"open -o driver=raw,cache.no-flush=on,file.driver=blkdebug,file.inject-error.0.event=flush_to_disk,file.image.filename=img.raw"#,
                "write 0 512",
                "flush",
            ],
        ),
        no_drive(
            "opt_cache_no_flush_off",
            &[
                r#"open -o driver=raw,cache.no-flush=off,file.driver=blkdebug,file.inject-error.0.event=flush_to_disk,file.image.filename=img.raw"#,
                "write 0 512",
                "flush",
            ],
        ),
    ]
}

fn child_options() -> Vec<Case> {
    let on_chain =
        |name: &str, cmds: &[&str], drive: &str| with_images(name, &[], cmds, drive, chain());
    vec![
        on_chain(
            "opt_backing_driver_raw",
            &[
                "open -o backing.driver=raw t.qcow2",
                "read -P 0x51 0 1",
                "map",
            ],
            "",
        ),
        on_chain(
            "opt_backing_driver_qcow2",
            &["open -o backing.driver=qcow2 t.qcow2", "read -P 9 0 64k"],
            "",
        ),
        on_chain(
            "opt_backing_driver_unknown",
            &["open -o backing.driver=foo t.qcow2"],
            "",
        ),
        on_chain(
            "opt_backing_node_name_invalid",
            &["open -o backing.node-name=1 t.qcow2"],
            "",
        ),
        on_chain(
            "opt_backing_unknown_option",
            &["open -o backing.foo=1 t.qcow2"],
            "",
        ),
        on_chain(
            "opt_backing_file_unknown_option",
            &["open -o backing.file.foo=1 t.qcow2"],
            "",
        ),
        on_chain(
            "opt_backing_empty_string",
            &[
                "open -o backing=,driver=qcow2 t.qcow2",
                "read -P 0 0 512",
                "map",
            ],
            "",
        ),
        on_chain(
            "opt_backing_null",
            &["read -P 0 0 512", "map"],
            r#"json:{"driver":"qcow2","backing":null,"file":{"driver":"file","filename":"t.qcow2"}}"#,
        ),
        with_images(
            "opt_backing_given_file",
            &[],
            &["read -P 3 0 512"],
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"t.qcow2"},"backing":{"driver":"qcow2","file":{"filename":"c.qcow2"}}}"#,
            {
                let mut files = chain();
                files.push((
                    "c.qcow2",
                    made("qcow2", "", "64M", &["qemu-io -c 'write -P 3 0 4k' \"$I\""]),
                ));
                files
            },
        ),
        on_chain(
            "opt_backing_reference",
            &["read -P 0 0 512"],
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"t.qcow2","node-name":"f"},"backing":"f"}"#,
        ),
        on_chain(
            "opt_backing_reference_missing",
            &["read 0 512"],
            r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"t.qcow2"},"backing":"nope"}"#,
        ),
        on_chain(
            "opt_backing_read_only_off",
            &["open -o backing.read-only=off t.qcow2", "read -P 9 0 512"],
            "",
        ),
        with_images(
            "opt_backing_on_raw",
            &[],
            &["open -o backing.driver=raw img.raw"],
            "",
            Vec::new(),
        ),
        with_images(
            "opt_backing_options_without_backing_file",
            &[],
            &["open -o backing.driver=qcow2 t.qcow2"],
            "",
            vec![("t.qcow2", made("qcow2", "", "64M", &[]))],
        ),
        no_drive(
            "opt_file_and_filename",
            &["open -o file.driver=file,file.filename=img.raw img.raw"],
        ),
        no_drive(
            "opt_file_reference_with_filename",
            &["open -o file=abc img.raw"],
        ),
        no_drive("opt_file_unknown_option", &["open -o file.foo=1 img.raw"]),
        no_drive(
            "opt_file_locking",
            &["open -o driver=raw,file.locking=off img.raw", "read 0 512"],
        ),
        no_drive(
            "opt_file_locking_invalid",
            &["open -o file.locking=maybe img.raw"],
        ),
        no_drive("opt_file_aio_invalid", &["open -o file.aio=foo img.raw"]),
        no_drive(
            "opt_file_drop_cache_invalid",
            &["open -o file.drop-cache=x img.raw"],
        ),
        no_drive(
            "opt_file_pr_manager",
            &["open -o file.pr-manager=x img.raw"],
        ),
        no_drive(
            "opt_unknown_protocol_option",
            &["open -o driver=file,foo=1 img.raw"],
        ),
        // json: without a driver probes the format of its file child.
        case(
            "opt_json_probe_raw",
            &[
                "-c",
                "write 0 512",
                r#"json:{"file":{"driver":"file","filename":"img.raw"}}"#,
            ],
        ),
        case(
            "opt_json_probe_blkdebug_child",
            &[
                "-c",
                "write 0 512",
                r#"json:{"file":{"driver":"blkdebug","image":{"driver":"file","filename":"img.raw"}}}"#,
            ],
        ),
        case(
            "opt_json_probe_dotted",
            &["-c", "write 0 512", r#"json:{"file.filename":"img.raw"}"#],
        ),
        case("opt_json_probe_nothing", &["-c", "read 0 512", "json:{}"]),
        case(
            "opt_json_filename_without_driver",
            &["-c", "read 0 512", r#"json:{"filename":"img.raw"}"#],
        ),
        with_images(
            "opt_json_probe_qcow2",
            &[],
            &["read -P 5 0 512", "info"],
            r#"json:{"file":{"driver":"file","filename":"t.qcow2"}}"#,
            vec![("t.qcow2", written_qcow2())],
        ),
        case(
            "opt_json_non_string_driver",
            &[
                "-c",
                "read 0 512",
                r#"json:{"driver":5,"file":{"driver":"file","filename":"img.raw"}}"#,
            ],
        ),
        // A `filename` option names a file, never a protocol.
        case(
            "opt_filename_option_is_a_path",
            &[
                "-c",
                "read 0 512",
                r#"json:{"driver":"raw","file":{"filename":"blkdebug::img.raw"}}"#,
            ],
        ),
    ]
}

fn raw_offset_size() -> Vec<Case> {
    let img = || {
        vec![(
            "r.img",
            made(
                "raw",
                "",
                "4096",
                &["qemu-io -f raw -c 'write -P 0xa 0 4096' \"$I\""],
            ),
        )]
    };
    let raw = |name: &str, opts: &str, cmds: &[&str]| {
        let drive = format!(
            r#"json:{{"driver":"raw",{opts}"file":{{"driver":"file","filename":"r.img"}}}}"#
        );
        with_images(name, &[], cmds, &drive, img())
    };
    vec![
        raw("raw_offset_too_big", r#""offset":"8192","#, &[]),
        raw(
            "raw_offset_and_size_too_big",
            r#""offset":"512","size":"8192","#,
            &[],
        ),
        raw(
            "raw_size_unaligned",
            r#""offset":"512","size":"1000","#,
            &[],
        ),
        raw("raw_offset_invalid", r#""offset":"x","#, &[]),
        raw("raw_size_negative", r#""offset":"512","size":"-1","#, &[]),
        raw(
            "raw_offset_io",
            r#""offset":"512","#,
            &[
                "length",
                "map",
                "read -P 0xa 0 3584",
                "write -P 0xb 3583 1",
                "write 3583 2",
                "write 3584 1",
                "read 3583 2",
                "write -z 0 512",
                "discard 0 512",
                "read -v 0 4",
            ],
        ),
        raw(
            "raw_offset_and_size_io",
            r#""offset":"512","size":"2048","#,
            &[
                "length",
                "map",
                "write -P 0xc 2047 1",
                "write 2047 2",
                "writev 1536 512 512",
                "read 2048 1",
                "write -z 2046 2",
                "discard 2046 2",
                "truncate 4096",
                "info",
            ],
        ),
        raw(
            "raw_misaligned_offset",
            r#""offset":"10","size":"2048","#,
            &[
                "write -P 0xd 0 2048",
                "read -P 0xd 0 2048",
                "write -z 0 512",
                "map",
            ],
        ),
        raw(
            "raw_offset_resize",
            r#""offset":"10","#,
            &["map", "truncate 8192", "map", "length"],
        ),
        // Options beside a probed filename: raw takes them, and still warns.
        with_images(
            "raw_offset_probed",
            &[],
            &["open -o offset=1024 r.img", "length", "read -v 0 4"],
            "",
            img(),
        ),
        with_images(
            "raw_offset_probed_read_only",
            &[],
            &[
                "open -r -o offset=512,size=512 r.img",
                "length",
                "read -P 0xa 0 512",
            ],
            "",
            img(),
        ),
        with_images(
            "raw_offset_protocol_option",
            &[],
            &["open -o driver=raw,file.offset=4 r.img"],
            "",
            img(),
        ),
    ]
}

fn qcow2_cache_options() -> Vec<Case> {
    let q = |name: &str, o: &str, cmds: &[&str]| {
        let mut all = vec![format!("open -o {o} t.qcow2")];
        all.extend(cmds.iter().map(|c| c.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        no_drive(name, &all).with_files(vec![("t.qcow2", written_qcow2())])
    };
    // The third L2 load and every one after it fail: which reads find their table (or slice)
    // in the cache shows how many the cache holds and which it evicts.
    let l2_loads = "[set-state]\nevent = \"l2_load\"\nstate = \"1\"\nnew_state = \"2\"\n\n[set-state]\nevent = \"l2_load\"\nstate = \"2\"\nnew_state = \"3\"\n\n[inject-error]\nevent = \"l2_load\"\nstate = \"3\"\nerrno = \"5\"\nonce = \"off\"\n";
    let spread = || {
        made(
            "qcow2",
            "",
            "1G",
            &[
                "qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 16M 4k' -c 'write -P 3 40M 64k' -c 'write -P 4 600M 64k' -c 'write -P 5 900M 4k' \"$I\"",
            ],
        )
    };
    let evict = |name: &str, o: &str| {
        let sep = if o.is_empty() { "" } else { "," };
        no_drive(
            name,
            &[
                &format!("open -o driver=qcow2{sep}{o} blkdebug:l2.cfg:t.qcow2"),
                "read -P 1 0 512",
                "read -P 2 16M 512",
                "read -P 3 40M 512",
                "read -P 4 600M 512",
                "read -P 1 0 512",
                "read -P 5 900M 512",
                "read -P 1 32k 512",
                "write 1000M 512",
            ],
        )
        .file("l2.cfg", l2_loads)
        .with_files(vec![("t.qcow2", spread())])
    };
    vec![
        q(
            "qcow2_cache_all_three",
            "cache-size=1.25M,l2-cache-size=1M,refcount-cache-size=0.25M",
            &[],
        ),
        q(
            "qcow2_cache_l2_exceeds",
            "cache-size=1M,l2-cache-size=2M",
            &[],
        ),
        q(
            "qcow2_cache_refcount_exceeds",
            "cache-size=1M,refcount-cache-size=2M",
            &[],
        ),
        q(
            "qcow2_cache_all_zero",
            "cache-size=0,l2-cache-size=0,refcount-cache-size=0",
            &[],
        ),
        q("qcow2_cache_entry_256", "l2-cache-entry-size=256", &[]),
        q("qcow2_cache_entry_4242", "l2-cache-entry-size=4242", &[]),
        q("qcow2_cache_entry_128k", "l2-cache-entry-size=128k", &[]),
        q("qcow2_cache_size_invalid", "l2-cache-size=x", &[]),
        q("qcow2_cache_size_negative", "l2-cache-size=-1", &[]),
        q(
            "qcow2_cache_refcount_too_big",
            "refcount-cache-size=256T",
            &[],
        ),
        q(
            "qcow2_cache_l2_huge",
            "l2-cache-size=256T",
            &["read -P 5 0 64k"],
        ),
        q(
            "qcow2_cache_zero",
            "cache-size=0",
            &["read -P 5 0 64k", "write -P 6 0 64k"],
        ),
        q(
            "qcow2_cache_l2_zero",
            "l2-cache-size=0",
            &["read -P 5 0 64k"],
        ),
        q(
            "qcow2_cache_refcount_zero",
            "refcount-cache-size=0",
            &["write 1M 512"],
        ),
        q("qcow2_cache_2m", "cache-size=2M", &["read -P 5 0 64k"]),
        q(
            "qcow2_cache_2m_l2",
            "cache-size=2M,l2-cache-size=1M",
            &["read -P 5 0 64k"],
        ),
        q(
            "qcow2_cache_2m_refcount",
            "cache-size=2M,refcount-cache-size=1M",
            &["read -P 5 0 64k"],
        ),
        q(
            "qcow2_cache_entry_512",
            "l2-cache-entry-size=512",
            &["read -P 5 0 64k", "write 8M 4k", "map"],
        ),
        q(
            "qcow2_cache_entry_16k",
            "l2-cache-entry-size=16k",
            &["read -P 5 0 64k", "write 8M 4k", "map"],
        ),
        // 32 PiB with 256 KiB clusters: its L2 tables in 512-byte slices are too many.
        no_drive(
            "qcow2_cache_l2_too_big",
            &["open -o l2-cache-entry-size=512,l2-cache-size=1T t.qcow2"],
        )
        .with_files(vec![(
            "t.qcow2",
            made("qcow2", "cluster_size=256k", "32P", &[]),
        )]),
        // A new L2 table is allocated slice by slice through the cache.
        no_drive(
            "qcow2_cache_slices_allocate",
            &[
                "open -o l2-cache-entry-size=4k t.qcow2",
                "write -P 7 512M 4k",
                "write -P 8 513M 4k",
                "read -P 7 512M 4k",
                "map",
            ],
        )
        .with_files(vec![("t.qcow2", made("qcow2", "", "1G", &[]))]),
        // COW of an L2 table shared with a snapshot copies every slice.
        no_drive(
            "qcow2_cache_slices_cow",
            &[
                "open -o l2-cache-entry-size=1k t.qcow2",
                "write -P 7 4k 4k",
                "read -P 5 0 4k",
                "read -P 7 4k 4k",
            ],
        )
        .with_files(vec![(
            "t.qcow2",
            made(
                "qcow2",
                "",
                "64M",
                &[
                    "qemu-io -c 'write -P 5 0 64k' \"$I\"",
                    "qemu-img snapshot -c s \"$I\"",
                ],
            ),
        )]),
        evict("qcow2_cache_evict_default", ""),
        evict("qcow2_cache_evict_l2_zero", "l2-cache-size=0"),
        evict(
            "qcow2_cache_evict_512",
            "l2-cache-size=0,l2-cache-entry-size=512",
        ),
        evict("qcow2_cache_evict_combined_zero", "cache-size=0"),
        evict("qcow2_cache_evict_4k", "l2-cache-entry-size=4k"),
        evict(
            "qcow2_cache_evict_8_slices",
            "l2-cache-size=8k,l2-cache-entry-size=1k",
        ),
        evict("qcow2_cache_evict_3_tables", "l2-cache-size=192k"),
        // The cleaning timer runs on the virtual clock, which never runs in qemu-io.
        no_drive(
            "qcow2_cache_clean_interval_sleep",
            &[
                "open -o driver=qcow2,cache-clean-interval=1,l2-cache-size=0 blkdebug:l2.cfg:t.qcow2",
                "read -P 1 0 512",
                "read -P 3 40M 512",
                "sleep 1100",
                "read -P 1 0 512",
                "read -P 3 40M 512",
            ],
        )
        .file("l2.cfg", l2_loads)
        .with_files(vec![("t.qcow2", spread())]),
        q(
            "qcow2_cache_clean_interval_negative",
            "cache-clean-interval=-1",
            &[],
        ),
        q(
            "qcow2_cache_clean_interval_too_big",
            "cache-clean-interval=4294967296",
            &[],
        ),
        q(
            "qcow2_cache_clean_interval_max",
            "cache-clean-interval=4294967295",
            &["read 0 512"],
        ),
        q(
            "qcow2_cache_clean_interval_invalid",
            "cache-clean-interval=1.5",
            &[],
        ),
        q(
            "qcow2_cache_clean_interval_hex",
            "cache-clean-interval=0x10",
            &["read 0 512"],
        ),
    ]
}

fn qcow2_overlap_checks() -> Vec<Case> {
    let q = |name: &str, o: &str, cmds: &[&str]| {
        let mut all = vec![format!("open -o {o} t.qcow2")];
        all.extend(cmds.iter().map(|c| c.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        no_drive(name, &all).with_files(vec![("t.qcow2", written_qcow2())])
    };
    // The first L2 entry pointed (as a COPIED data cluster) at metadata: a write there would
    // overwrite it.
    let aimed = |target: u8| poke(written_qcow2(), 0x40000, &[0x80, 0, 0, 0, 0, target, 0, 0]);
    let hit = |name: &str, target: u8, o: &str| {
        let mut cmds = Vec::new();
        let open = format!("open -o overlap-check={o} t.qcow2");
        cmds.push(open.as_str());
        cmds.extend(["write -P 1 0 512", "read 0 512"]);
        no_drive(name, &cmds).with_files(vec![("t.qcow2", aimed(target))])
    };
    let json = |name: &str, oc: &str, cmds: &[&str]| {
        let drive = format!(
            r#"json:{{"driver":"qcow2","file":{{"driver":"file","filename":"t.qcow2"}},"overlap-check":{oc}}}"#
        );
        with_images(name, &[], cmds, &drive, vec![("t.qcow2", written_qcow2())])
    };
    // 080's images: a snapshot whose L1 table entry is broken, checked only with inactive-l2.
    let snap = |at: usize, bytes: &[u8]| {
        let img = made(
            "qcow2",
            "",
            "64M",
            &[
                "qemu-io -c 'write 0 512' \"$I\"",
                "qemu-img snapshot -c test \"$I\"",
            ],
        );
        poke(img, at, bytes)
    };
    vec![
        q("overlap_mode_invalid", "overlap-check=foo", &[]),
        q(
            "overlap_template_invalid",
            "overlap-check.template=foo",
            &[],
        ),
        q(
            "overlap_conflict",
            "overlap-check=none,overlap-check.template=all",
            &[],
        ),
        q(
            "overlap_agree",
            "overlap-check=all,overlap-check.template=all",
            &["write 0 512"],
        ),
        q("overlap_flag_invalid", "overlap-check.main-header=foo", &[]),
        q("overlap_flag_unknown", "overlap-check.foo=on", &[]),
        q(
            "overlap_bitmap_directory",
            "overlap-check.bitmap-directory=on",
            &["write 0 512"],
        ),
        json(
            "overlap_json_object",
            r#"{"template":"all","main-header":false}"#,
            &["write 0 512"],
        ),
        json("overlap_json_invalid", r#""foo""#, &[]),
        json(
            "overlap_json_template_invalid",
            r#"{"template":"foo"}"#,
            &[],
        ),
        json("overlap_json_flag_invalid", r#"{"main-header":"x"}"#, &[]),
        json("overlap_json_number", "5", &[]),
        hit("overlap_hit_active_l1", 0x03, "cached"),
        hit("overlap_hit_refcount_table", 0x01, "cached"),
        hit("overlap_hit_refcount_block", 0x02, "cached"),
        hit("overlap_hit_active_l2", 0x04, "cached"),
        hit("overlap_hit_active_l1_constant", 0x03, "constant"),
        hit("overlap_miss_refcount_block_constant", 0x02, "constant"),
        hit("overlap_none_lets_it_through", 0x03, "none"),
        // An unaligned data cluster (QEMU prints a zero %#x as plain 0).
        no_drive("corrupt_data_cluster_unaligned", &["write -P 1 0 512"])
            .with_files(vec![(
                "t.qcow2",
                poke(written_qcow2(), 0x40000, &[0x80, 0, 0, 0, 0, 0, 0x02, 0]),
            )])
            .drive("t.qcow2"),
        // A snapshot's L1 table is checked by default (inactive L1).
        no_drive(
            "overlap_hit_inactive_l1",
            &["write -P 1 0 512", "read 0 512"],
        )
        .with_files(vec![("t.qcow2", {
            let img = made(
                "qcow2",
                "",
                "64M",
                &[
                    "qemu-io -c 'write 0 64k' \"$I\"",
                    "qemu-img snapshot -c s \"$I\"",
                ],
            );
            // After the snapshot the data cluster is shared: the write goes to a new
            // cluster. Aim the active L2 entry at the snapshot's L1 table instead, as
            // writable (COPIED).
            let sn_l1 = u64::from_be_bytes(img[0x70000..0x70008].try_into().unwrap());
            let l1 = u64::from_be_bytes(img[0x30000..0x30008].try_into().unwrap())
                & 0x00ff_ffff_ffff_fe00;
            let entry = (sn_l1 | (1 << 63)).to_be_bytes();
            let l1_copied = (l1 | (1 << 63)).to_be_bytes();
            let img = poke(img, 0x30000, &l1_copied);
            poke(img, l1 as usize, &entry)
        })])
        .drive("t.qcow2"),
        // 080: inactive-l2 reads the snapshot's L1 table, which fails the checks themselves.
        no_drive(
            "overlap_inactive_l2_misaligned",
            &["open -o overlap-check.inactive-l2=on t.qcow2", "write 0 4k"],
        )
        .with_files(vec![(
            "t.qcow2",
            snap(0x70000, &[0, 0, 0, 0, 0, 0x40, 0x02, 0]),
        )]),
        no_drive(
            "overlap_inactive_l2_too_large",
            &["open -o overlap-check.inactive-l2=on t.qcow2", "write 0 4k"],
        )
        .with_files(vec![("t.qcow2", snap(0x70008, &[0x10, 0, 0, 0]))]),
        no_drive(
            "overlap_inactive_l2_default_off",
            &["open t.qcow2", "write 0 4k"],
        )
        .with_files(vec![(
            "t.qcow2",
            snap(0x70000, &[0, 0, 0, 0, 0, 0x40, 0x02, 0]),
        )]),
        no_drive(
            "overlap_all",
            &[
                "open -o overlap-check=all t.qcow2",
                "write 0 4k",
                "write 1M 4k",
            ],
        )
        .with_files(vec![("t.qcow2", snap(0x70008, &[0x10, 0, 0, 0]))]),
        no_drive("overlap_snapshot_extra_data_too_big", &["open t.qcow2"])
            .with_files(vec![("t.qcow2", snap(0x70024, &[0, 0, 0x10, 0]))]),
    ]
}

fn qcow2_other_options() -> Vec<Case> {
    let q = |name: &str, fmt_opts: &str, o: &str, cmds: &[&str]| {
        let mut all = vec![format!("open -o {o} t.qcow2")];
        all.extend(cmds.iter().map(|c| c.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let img = made(
            "qcow2",
            fmt_opts,
            "64M",
            &["qemu-io -c 'write -P 5 0 128k' \"$I\""],
        );
        no_drive(name, &all).with_files(vec![("t.qcow2", img)])
    };
    vec![
        q("qcow2_lazy_refcounts_invalid", "", "lazy-refcounts=42", &[]),
        q(
            "qcow2_lazy_refcounts_v2",
            "compat=0.10",
            "lazy-refcounts=on",
            &[],
        ),
        q(
            "qcow2_lazy_refcounts_on",
            "",
            "lazy-refcounts=on",
            &["write -P 6 1M 4k", "sigraise 9"],
        ),
        q(
            "qcow2_lazy_refcounts_off",
            "lazy_refcounts=on",
            "lazy-refcounts=off",
            &["write -P 6 1M 4k", "sigraise 9"],
        ),
        q(
            "qcow2_pass_discard_invalid",
            "",
            "pass-discard-request=x",
            &[],
        ),
        q(
            "qcow2_pass_discard_request_off",
            "",
            "pass-discard-request=off",
            &["discard 0 64k", "map"],
        ),
        q(
            "qcow2_pass_discard_other",
            "",
            "pass-discard-other=on,pass-discard-snapshot=off",
            &["discard 0 128k", "map"],
        ),
        q(
            "qcow2_discard_no_unref_v2",
            "compat=0.10",
            "discard-no-unref=on",
            &[],
        ),
        q(
            "qcow2_discard_no_unref",
            "",
            "discard-no-unref=on",
            &["discard 0 64k", "write -P 7 0 4k", "map"],
        ),
        q(
            "qcow2_encrypt_format_unencrypted",
            "",
            "encrypt.format=luks",
            &[],
        ),
        q(
            "qcow2_encrypt_key_secret_unencrypted",
            "",
            "encrypt.key-secret=x",
            &["read -P 5 0 512"],
        ),
        q(
            "qcow2_runtime_first_error_in_qdict_order",
            "",
            "lazy-refcounts=x,pass-discard-other=y,overlap-check=z",
            &[],
        ),
    ]
}
