//! Where our engine deliberately differs from QEMU 10.0.2: QEMU aborts on an assertion (exit
//! 134, losing its buffered output), dies of a signal or hangs forever, or its output depends on
//! thread timing. Such cases can't be compared, so these trials pin down our own exact output
//! instead, and, where real qemu-io is at hand, that it really dies there as we say.

use crate::cases::{json_dbg_on, qcow2_image};
use crate::harness::{Case, case, filter, missing_tools, populate, run_ours, run_qemu};
use libtest_mimic::{Failed, Trial};

const STATS: &str = "X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)";

const WARNING_IMG_RAW: &str = "WARNING: Image format was not specified for 'img.raw' and probing guessed raw.
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.
         Specify the 'raw' format explicitly to remove the restrictions.
";

struct Expect {
    case: Case,
    output: String,
    status: i32,
    /// the status real qemu-io ends with here (128 + signal), checked where it is installed
    qemu_dies_with: Option<i32>,
    /// `{ALIGN}` in `output` stands for the O_DIRECT alignment QEMU finds for this file in
    /// the scratch directory, which depends on the filesystem
    direct_align_of: Option<&'static str>,
}

fn expect(case: Case, output: &str, status: i32) -> Expect {
    Expect {
        case,
        output: output.replace("STATS", STATS),
        status,
        qemu_dies_with: None,
        direct_align_of: None,
    }
}

/// SIGABRT: a failed assertion.
const ABORT: i32 = 128 + libc::SIGABRT;
/// SIGFPE: a division by zero.
const FPE: i32 = 128 + libc::SIGFPE;
/// SIGSEGV: memory read outside a buffer.
const SEGV: i32 = 128 + libc::SIGSEGV;

impl Expect {
    fn qemu_dies_with(mut self, status: i32) -> Self {
        self.qemu_dies_with = Some(status);
        self
    }

    fn direct_align_of(mut self, file: &'static str) -> Self {
        self.direct_align_of = Some(file);
        self
    }

    /// The expected output, once the scratch directory is populated.
    fn output_in(&self, dir: &std::path::Path) -> String {
        match self.direct_align_of {
            None => self.output.clone(),
            Some(file) => {
                let path = dir.join(file);
                let probe = blockfault::block::file::FileDriver::open(
                    blockfault::block::file::HostKind::File,
                    &path,
                    file,
                    true,
                    false,
                    true,
                )
                .expect("the file opens with O_DIRECT");
                self.output
                    .replace("{ALIGN}", &probe.request_alignment().to_string())
            }
        }
    }
}

fn padding_abort(offset: u64, bytes: u64, align: u64, why: &str) -> String {
    format!(
        "blockfault: padding the request at offset {offset} ({bytes} bytes) to {align}-byte alignment meets {why}; QEMU 10.0.2 aborts on an assertion here (bdrv_create_padded_qiov)\n"
    )
}

const EMPTY_ELEMENT: &str = "an empty I/O vector element";

fn discard_sigfpe(offset: u64, bytes: u64, align: u64) -> String {
    format!(
        "blockfault: discard offset={offset} bytes={bytes} is smaller than blkdebug's align={align} with no discard alignment; QEMU 10.0.2 dies of SIGFPE here (division by zero in blkdebug_co_pdiscard)\n"
    )
}

/// Issue 7.13: where QEMU 10.0.2 crashes, and only there (its neighbours that it survives are
/// differential cases: `padding_*`, `discard_blkdebug_*`).
fn crashes() -> Vec<Expect> {
    let align4k = json_dbg_on(r#""align":4096"#, "img.raw");
    let on = |name: &str, cmds: &[&str], drive: &str| {
        let mut args = Vec::new();
        for c in cmds {
            args.extend(["-c", c]);
        }
        args.push(drive);
        case(name, &args)
    };
    let ones = std::iter::repeat_n("1", 1025).collect::<Vec<_>>().join(" ");
    vec![
        // An empty element between data, in a request blkdebug pads to 4096.
        expect(
            on("padded_readv_empty_element", &["readv 24k 2560 0 4096"], &align4k),
            &padding_abort(24576, 6656, 4096, EMPTY_ELEMENT),
            1,
        )
        .qemu_dies_with(ABORT),
        // A leading empty element counts when the request starts at the vector's start.
        expect(
            on("padded_writev_leading_empty_element", &["writev 1k 0 3k"], &align4k),
            &padding_abort(1024, 3072, 4096, EMPTY_ELEMENT),
            1,
        )
        .qemu_dies_with(ABORT),
        expect(
            on(
                "padded_aio_read_empty_element",
                &["aio_read 1k 0 3k", "aio_flush"],
                &align4k,
            ),
            &padding_abort(1024, 3072, 4096, EMPTY_ELEMENT),
            1,
        )
        .qemu_dies_with(ABORT),
        // A probed raw image pads to 512 by itself.
        expect(
            on("padded_readv_probed_raw", &["readv 100 0 512"], "img.raw"),
            &format!("{WARNING_IMG_RAW}{}", padding_abort(100, 512, 512, EMPTY_ELEMENT)),
            1,
        )
        .qemu_dies_with(ABORT),
        expect(
            on(
                "padded_readv_iov_max",
                &[&format!("readv 1 {ones}")],
                &json_dbg_on(r#""align":512"#, "img.raw"),
            ),
            &padding_abort(1, 1025, 512, "more than IOV_MAX I/O vector elements"),
            1,
        )
        .qemu_dies_with(ABORT),
        // The piece of a qcow2 read that reaches the file node is padded there under O_DIRECT.
        expect(
            {
                let mut c = on(
                    "padded_qcow2_read_nocache",
                    &["write -P 1 0 4k", "readv 100 0 512"],
                    "q.qcow2",
                );
                c.args.splice(0..0, ["-t".to_string(), "none".to_string()]);
                c.bytes("q.qcow2", qcow2_image(1 << 20, 65536))
            },
            &format!(
                "wrote 4096/4096 bytes at offset 0\n4 KiB, STATS\n{}",
                padding_abort(327780, 512, 0, EMPTY_ELEMENT).replace("0-byte", "{ALIGN}-byte")
            ),
            1,
        )
        .direct_align_of("q.qcow2")
        .qemu_dies_with(ABORT),
        // A discard piece below blkdebug's align, with no discard alignment to check it by.
        expect(
            on("discard_blkdebug_align_sigfpe", &["discard 227k 10955"], &align4k),
            &discard_sigfpe(232448, 1024, 4096),
            1,
        )
        .qemu_dies_with(FPE),
        expect(
            on(
                "discard_blkdebug_align_tail_sigfpe",
                &["discard 4k 4k", "discard 4k 4097"],
                &align4k,
            ),
            &format!(
                "discard 4096/4096 bytes at offset 4096\n4 KiB, STATS\n{}",
                discard_sigfpe(8192, 1, 4096)
            ),
            1,
        )
        .qemu_dies_with(FPE),
        // qcow2 discards its 512-byte clusters through blkdebug.
        expect(
            on(
                "discard_qcow2_over_blkdebug_align_sigfpe",
                &["write 0 64k", "discard 1k 1k"],
                r#"json:{"driver":"qcow2","file":{"driver":"blkdebug","align":4096,"image":{"driver":"file","filename":"q.qcow2"}}}"#,
            )
            .bytes("q.qcow2", qcow2_image(1 << 20, 512)),
            &format!(
                "wrote 65536/65536 bytes at offset 0\n64 KiB, STATS\n{}",
                discard_sigfpe(3584, 512, 4096)
            ),
            1,
        )
        .qemu_dies_with(FPE),
        // `read -s -l` whose sum overflows int64 passes QEMU's range check, then the pattern
        // check reads far outside the buffer (issue 10: this was a panic here).
        expect(
            on(
                "read_pattern_range_overflow_sigsegv",
                &["read -s 9223372036854775807 -l 1 -P 1 0 512"],
                "json:{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"img.raw\"}}",
            ),
            "blockfault: read: pattern range -s 9223372036854775807 -l 1 overflows; QEMU 10.0.2 dies of SIGSEGV here (reading outside the buffer)\n",
            1,
        )
        .qemu_dies_with(SEGV),
    ]
}

fn hang(tag: &str) -> String {
    format!(
        "blockfault: a request is suspended at breakpoint '{tag}' and nothing will resume it; qemu-io would hang here forever\n"
    )
}

fn cases() -> Vec<Expect> {
    vec![
        // Issue 10: a config file longer than blockfault holds, valid in its first megabyte
        // (QEMU would read on; /dev/zero is the differential case `blkdebug_config_dev_zero`).
        expect(
            case(
                "blkdebug_config_too_long",
                &["-f", "raw", "-c", "read 0 512", "blkdebug:long.cfg:img.raw"],
            )
            .file("long.cfg", &"# comment\n".repeat(1_700_000)),
            "qemu-io: can't open device blkdebug:long.cfg:img.raw: blockfault: the blkdebug config file is longer than 16777216 bytes, the most blockfault reads\n",
            1,
        ),
        // QEMU: blkverify has supported_zero_flags but no pwrite_zeroes callback, so
        // bdrv_co_do_pwrite_zeroes asserts (exit 134). We fail the request the blkverify way.
        expect(
            case(
                "blkverify_write_zeroes_aborts_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "write -P 1 0 512",
                    "-c",
                    "write -z 0 512",
                    "-c",
                    "read 0 1",
                    "blkverify:raw.img:img.raw",
                ],
            ),
            &format!(
                "{WARNING_IMG_RAW}wrote 512/512 bytes at offset 0\n512 bytes, STATS\nblkverify: write offset=0 bytes=512 zero writes are not supported (QEMU 10.0.2 aborts on an assertion here)\n"
            ),
            1,
        )
        .qemu_dies_with(ABORT),
        // QEMU: a write past the end of the raw child needs RESIZE permission, which blkverify
        // doesn't take: bdrv_co_write_req_prepare asserts (exit 134).
        expect(
            case(
                "blkverify_write_past_raw_end_aborts_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "write 600k 512",
                    "blkverify:half.img:img.raw",
                ],
            ),
            &format!(
                "{WARNING_IMG_RAW}blkverify: write offset=614400 bytes=512 goes past the end of the raw image (QEMU 10.0.2 aborts on an assertion here)\n"
            ),
            1,
        )
        .qemu_dies_with(ABORT),
        // QEMU: blkverify's truncate goes to the raw reference only; bdrv_co_truncate then
        // finishes the request at the node's end (the test image's, unchanged) minus the
        // growth, a negative offset that bdrv_check_qiov_request rejects with &error_abort.
        expect(
            case(
                "blkverify_truncate_past_test_end_aborts_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "truncate 4096",
                    "-c",
                    "length",
                    "blkverify:empty.bin:zero.img",
                ],
            )
            .file("zero.img", ""),
            "WARNING: Image format was not specified for 'zero.img' and probing guessed raw.
         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.
         Specify the 'raw' format explicitly to remove the restrictions.
blockfault: truncating blkverify to 4096 grows it by 4096 bytes past its test image's end (0); QEMU 10.0.2 aborts here (bdrv_check_qiov_request: offset is negative: -4096)
",
            1,
        )
        .qemu_dies_with(ABORT),
        // QEMU: a synchronous request at a breakpoint polls forever.
        expect(
            case(
                "sync_write_at_breakpoint_hangs_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "break write_aio A",
                    "-c",
                    "write 0 512",
                    "-c",
                    "read 0 1",
                    "blkdebug::img.raw",
                ],
            ),
            &format!("blkdebug: Suspended request 'A'\n{}", hang("A")),
            1,
        ),
        // QEMU: reopen drains first, and waits forever for the suspended request.
        expect(
            case(
                "reopen_with_suspended_request_hangs_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "break write_aio A",
                    "-c",
                    "aio_write 0 512",
                    "-c",
                    "reopen -o foo=bar",
                    "-c",
                    "read 0 1",
                    "blkdebug::img.raw",
                ],
            ),
            &format!("blkdebug: Suspended request 'A'\n{}", hang("A")),
            1,
        ),
        // QEMU: aio_flush (a drain) waits forever for the suspended request.
        expect(
            case(
                "aio_flush_with_suspended_request_hangs_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "break write_aio A",
                    "-c",
                    "aio_write 0 512",
                    "-c",
                    "aio_flush",
                    "-c",
                    "read 0 1",
                    "blkdebug::img.raw",
                ],
            ),
            &format!("blkdebug: Suspended request 'A'\n{}", hang("A")),
            1,
        ),
        // QEMU: the drain at exit waits forever.
        expect(
            case(
                "exit_with_suspended_request_hangs_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "break write_aio A",
                    "-c",
                    "aio_write 0 512",
                    "blkdebug::img.raw",
                ],
            ),
            &format!("blkdebug: Suspended request 'A'\n{}", hang("A")),
            1,
        ),
        // QEMU: wait_break without blkdebug in the chain polls forever.
        expect(
            case(
                "wait_break_without_blkdebug_hangs_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "wait_break A",
                    "-c",
                    "read 0 1",
                    "img.raw",
                ],
            ),
            "blockfault: wait_break A: no request can reach that breakpoint; qemu-io would wait here forever\n",
            1,
        ),
        // QEMU: `flush` after a write raises flush_to_disk; the breakpoint suspends it forever.
        expect(
            case(
                "flush_at_breakpoint_hangs_in_qemu",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "break flush_to_disk A",
                    "-c",
                    "write 0 512",
                    "-c",
                    "flush",
                    "blkdebug::img.raw",
                ],
            ),
            &format!(
                "wrote 512/512 bytes at offset 0\n512 bytes, STATS\nblkdebug: Suspended request 'A'\n{}",
                hang("A")
            ),
            1,
        ),
        // QEMU: an aio_write in flight across `truncate 0` makes the length grow back when it
        // completes (the write's end raises bs->total_sectors after the truncate set it), but
        // whether its thread-pool jobs run before or after the truncate's varies: 9 runs in 12
        // print `0 bytes`/`4 KiB` as here, with the file left at 0 bytes or 4 KiB. Ours always
        // follows the usual order.
        expect(
            case(
                "aio_write_across_truncate_grows_the_length_back",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "aio_write -P 7 0 4k",
                    "-c",
                    "truncate 0",
                    "-c",
                    "length",
                    "-c",
                    "aio_flush",
                    "-c",
                    "length",
                    "img.raw",
                ],
            ),
            "0 bytes\nwrote 4096/4096 bytes at offset 0\n4 KiB, STATS\n4 KiB\n",
            0,
        ),
        // QEMU: several aio requests in flight complete in thread-pool order, which varies
        // from run to run. Ours follow QEMU's usual order (9 runs in 10 here): the read needs
        // one thread-pool job, each writethrough write two (the write, then its data sync),
        // and the completion bottom half serves the newest finished job first.
        expect(
            case(
                "concurrent_aio_completes_in_thread_pool_order",
                &[
                    "-f",
                    "raw",
                    "-c",
                    "aio_write -P 1 0 512",
                    "-c",
                    "aio_write -P 2 512 512",
                    "-c",
                    "aio_read -P 0 4k 512",
                    "-c",
                    "aio_flush",
                    "img.raw",
                ],
            ),
            "read 512/512 bytes at offset 4096\n512 bytes, STATS\nwrote 512/512 bytes at offset 0\n512 bytes, STATS\nwrote 512/512 bytes at offset 512\n512 bytes, STATS\n",
            0,
        ),
        // QEMU: after a fatal corruption qcow2 leaves the node without a driver, which reopen
        // dereferences (segmentation fault, exit 139).
        expect(
            {
                let mut c = case(
                    "reopen_after_fatal_corruption_crashes_qemu",
                    &[
                        "-c",
                        "write 64k 64k",
                        "-c",
                        "reopen",
                        "-c",
                        "read 0 512",
                        "c.qcow2",
                    ],
                );
                c.files
                    .push(("c.qcow2".into(), qcow2_without_refcount_table()));
                c
            },
            "qcow2: Marking image as corrupt: Preventing invalid allocation of L2 table at offset 0; further corruption events will be suppressed\nwrite failed: Input/output error\nblockfault: reopen of an image whose driver stopped after a fatal corruption; QEMU 10.0.2 crashes here (segmentation fault)\n",
            1,
        ),
    ]
}

/// A fresh 64 MiB qcow2 image whose refcount table's first entry is zeroed: the first
/// allocation takes cluster 0 for an L2 table, a fatal corruption.
fn qcow2_without_refcount_table() -> Vec<u8> {
    let spec = blockfault::img::qcow2::create::CreateSpec {
        size: 64 << 20,
        ..Default::default()
    };
    let image = blockfault::img::qcow2::create::build(&spec).expect("a plain qcow2 image");
    let file = tempfile::tempfile().unwrap();
    image.write_to(&file).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).unwrap();
    bytes[0x20000..0x20008].fill(0);
    bytes
}

pub fn trials() -> Vec<Trial> {
    cases()
        .into_iter()
        .chain(crashes())
        .map(|e| {
            Trial::test(format!("ours::{}", e.case.name), move || {
                let dir = e.case.scratch();
                populate(dir.path(), &e.case.files);
                let (out, status) = run_ours(dir.path(), &e.case.args);
                let out = filter(&out, dir.path());
                let expected = e.output_in(dir.path());
                if out != expected || status != e.status {
                    return Err(Failed::from(format!(
                        "expected (exit {}):\n{expected}\ngot (exit {status}):\n{out}",
                        e.status
                    )));
                }
                if let (Some(dies), None) = (e.qemu_dies_with, missing_tools()) {
                    let dir = e.case.scratch();
                    populate(dir.path(), &e.case.files);
                    let (qout, qstatus) = run_qemu(dir.path(), &e.case.args);
                    if qstatus != dies {
                        return Err(Failed::from(format!(
                            "real qemu-io was expected to die with status {dies} here but ended with {qstatus}:\n{qout}"
                        )));
                    }
                }
                Ok(())
            })
        })
        .collect()
}
