//! Cases for copy-on-read (`-C`, `open -C` and the `copy-on-read` filter), the `compress`
//! filter, and file-posix's `host_device`/`host_cdrom` drivers. Images are made by the real
//! qemu-img, so both programs start from the same bytes; the harness compares every file
//! afterwards, so each case also checks what the copy wrote into the overlay.

use crate::harness::{Case, case};
use std::process::Command;

/// The files of a backing chain made by real qemu-img: `b.qcow2` (4 MiB, `55` at 3 MiB) and
/// `w.qcow2` over it (a zero cluster at 1 MiB).
fn chain() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], prog: &str| {
        let st = Command::new(prog)
            .args(args)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("qemu tools run");
        assert!(st.success(), "{prog} {args:?}");
    };
    run(
        &["create", "-q", "-f", "qcow2", "b.qcow2", "4M"],
        "qemu-img",
    );
    run(&["-c", "write -P 55 3M 1k", "b.qcow2"], "qemu-io");
    run(
        &[
            "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "b.qcow2", "w.qcow2",
        ],
        "qemu-img",
    );
    run(
        &["-f", "qcow2", "-c", "write -z -u 1M 64k", "w.qcow2"],
        "qemu-io",
    );
    ["b.qcow2", "w.qcow2"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.path().join(n)).unwrap()))
        .collect()
}

fn empty_qcow2(size: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "c.qcow2", size])
        .current_dir(dir.path())
        .status()
        .expect("qemu-img runs");
    assert!(st.success());
    std::fs::read(dir.path().join("c.qcow2")).unwrap()
}

fn with(mut c: Case, files: Vec<(String, Vec<u8>)>) -> Case {
    c.files.extend(files);
    c
}

fn cmds(args: &[&str], commands: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for c in commands {
        v.push("-c".into());
        v.push(c.to_string());
    }
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn io(name: &str, args: &[&str], commands: &[&str]) -> Case {
    let all = cmds(args, commands);
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    case(name, &refs)
}

/// An overlay with extended L2 entries (`x.qcow2`, 2 KiB subclusters, `aa` in its first one)
/// over an empty `b.qcow2`, made by real qemu-img/qemu-io.
fn subcluster_chain() -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    let run = |prog: &str, args: &[&str]| {
        let st = Command::new(prog)
            .args(args)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("qemu tools run");
        assert!(st.success(), "{prog} {args:?}");
    };
    run(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "b.qcow2", "64k"],
    );
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "extended_l2=on",
            "-F",
            "qcow2",
            "-b",
            "b.qcow2",
            "x.qcow2",
            "64k",
        ],
    );
    run(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0xaa 0 2k", "x.qcow2"],
    );
    ["b.qcow2", "x.qcow2"]
        .iter()
        .map(|n| (n.to_string(), std::fs::read(dir.path().join(n)).unwrap()))
        .collect()
}

pub fn all() -> Vec<Case> {
    vec![
        // null-co / null-aio (iotests 133, 270): writes vanish, reads leave the buffer as it
        // is unless read-zeroes, nothing is allocated, and info fails without a word.
        io(
            "null_co_json",
            &["-f", "null-co", "json:{'driver': 'null-co', 'size': 65536}"],
            &[
                "reopen",
                "info",
                "read -v 0 16",
                "write 0 512",
                "map",
                "length",
            ],
        ),
        io(
            "null_co_read_zeroes_probed",
            &["json:{'driver':'null-co','read-zeroes':true}"],
            &[
                "info",
                "read -P 0 0 512",
                "map",
                "truncate 1M",
                "discard 0 512",
                "flush",
            ],
        ),
        io(
            "null_aio_filename",
            &["-f", "null-aio", "null-aio://x"],
            &["length"],
        ),
        io(
            "null_aio_default_size",
            &["-f", "null-aio", "null-aio://"],
            &["length", "write -z 0 512"],
        ),
        // Copy-on-read widens a request to subclusters, not clusters (QEMU's
        // bdrv_round_to_subclusters): a read that starts after an allocated first subcluster
        // copies up only what it covers.
        with(
            io(
                "cor_widens_to_subclusters",
                &["-f", "qcow2", "-C", "x.qcow2"],
                &[
                    "read -P 0 30k 4k",
                    "read -P 0 2k 62k",
                    "read -P 0xaa 0 2k",
                    "map",
                ],
            ),
            subcluster_chain(),
        ),
        // Issue 10: an endless config file is a parse error at its first 1023-byte line.
        io(
            "blkdebug_config_dev_zero",
            &["-f", "raw", "blkdebug:/dev/zero:img.raw"],
            &["read 0 512"],
        ),
        // -C: what a read finds in the backing file is copied up, whole clusters at a time;
        // zeroes are copied as zero writes.
        with(
            io(
                "cor_reads_copy_up_whole_clusters",
                &["-f", "qcow2", "-C", "w.qcow2"],
                &["read 0 0", "read -P 0 1k 2M", "read -P 55 3M 1k", "map"],
            ),
            chain(),
        ),
        // A read of two clusters, one already allocated: only the other one is copied, so a
        // rule on the allocated one's cor_write never fires...
        with(
            io(
                "cor_skips_allocated_clusters",
                &[],
                &[
                    "open -C -o driver=blkdebug,config=cor.conf,image.driver=qcow2 w.qcow2",
                    "read -P 0 1M 128k",
                    "map",
                ],
            )
            .file(
                "cor.conf",
                "[inject-error]\nevent = \"cor_write\"\nsector = \"2048\"\n",
            ),
            chain(),
        ),
        // ... while one on the copied cluster fails the read, before anything is written.
        with(
            io(
                "cor_write_event_fails_the_read",
                &[],
                &[
                    "open -C -o driver=blkdebug,config=cor.conf,image.driver=qcow2 w.qcow2",
                    "read -P 0 1M 128k",
                    "read -P 0 1M 128k",
                ],
            )
            .file(
                "cor.conf",
                "[inject-error]\nevent = \"cor_write\"\nsector = \"2176\"\n",
            ),
            chain(),
        ),
        with(
            io(
                "cor_refused_read_only",
                &["-f", "qcow2", "-C", "-r", "w.qcow2"],
                &["read 0 512"],
            ),
            chain(),
        ),
        // The copy-on-read filter does the same for reads through it.
        with(
            io(
                "cor_filter_copies_up",
                &[],
                &[
                    "open -o driver=copy-on-read,file.driver=qcow2 w.qcow2",
                    "read -P 55 3M 1k",
                    "read -P 0 64k 64k",
                    "info",
                    "map",
                ],
            ),
            chain(),
        ),
        with(
            io(
                "cor_filter_errors",
                &[],
                &[
                    "open -r -o driver=copy-on-read,file.driver=qcow2 w.qcow2",
                    "open -o driver=copy-on-read,file.driver=qcow2,bottom=x w.qcow2",
                ],
            ),
            chain(),
        ),
        // The compress filter: writes widened to whole clusters and written compressed.
        io(
            "compress_filter_writes_compressed_clusters",
            &[],
            &[
                "open -o driver=compress,file.driver=qcow2 c.qcow2",
                "write -P 0xbb 0 64k",
                "write -P 0xcc 70k 10k",
                "read -P 0xbb 0 64k",
                "read -P 0xcc 70k 10k",
                "read -P 0 64k 6k",
                "map",
                "info",
            ],
        )
        .bytes("c.qcow2", empty_qcow2("2M")),
        io(
            "compress_filter_needs_a_compressing_format",
            &[],
            &[
                "open -o driver=compress,file.driver=raw img.raw",
                "open -o driver=compress,file.driver=file img.raw",
            ],
        ),
        // file-posix's drivers and the kinds of host file they take.
        io(
            "host_file_kinds",
            &[],
            &[
                "open -r -o driver=file,filename=/dev/null,locking=off",
                "open -o driver=host_device,filename=img.raw",
                "open -o driver=host_cdrom,filename=img.raw",
            ],
        ),
        io(
            "host_device_on_a_character_device",
            &[],
            &[
                "open -r -o driver=host_device,filename=/dev/null,locking=off",
                "info",
                "length",
            ],
        ),
        // blkdebug and blkverify take a filename without their prefix as the image's.
        io(
            "filter_filename_without_prefix",
            &[],
            &[
                "open -o driver=blkdebug,image.driver=raw img.raw",
                "read 0 512",
                "close",
                "open -o driver=blkverify,raw.filename=raw.img img.raw",
                "read 0 512",
            ],
        ),
    ]
}
