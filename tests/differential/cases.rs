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
    v
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
