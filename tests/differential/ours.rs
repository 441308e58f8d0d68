//! Where our engine deliberately differs from QEMU 10.0.2: QEMU aborts on an assertion (exit
//! 134, losing its buffered output) or hangs forever, or its output depends on thread timing.
//! Such cases can't be compared, so these trials pin down our own exact output instead.

use crate::harness::{Case, case, filter, populate, run_ours};
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
}

fn expect(case: Case, output: &str, status: i32) -> Expect {
    Expect {
        case,
        output: output.replace("STATS", STATS),
        status,
    }
}

fn hang(tag: &str) -> String {
    format!(
        "blockfault: a request is suspended at breakpoint '{tag}' and nothing will resume it; qemu-io would hang here forever\n"
    )
}

fn cases() -> Vec<Expect> {
    vec![
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
        ),
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
        ),
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
        .map(|e| {
            Trial::test(format!("ours::{}", e.case.name), move || {
                let dir = tempfile::tempdir().unwrap();
                populate(dir.path(), &e.case.files);
                let (out, status) = run_ours(dir.path(), &e.case.args);
                let out = filter(&out, dir.path());
                if out != e.output || status != e.status {
                    return Err(Failed::from(format!(
                        "expected (exit {}):\n{}\ngot (exit {status}):\n{out}",
                        e.status, e.output
                    )));
                }
                Ok(())
            })
        })
        .collect()
}
