//! qcow2 features QEMU 10.0.2 has beyond the basics: zstd compression, extended L2 entries
//! (subclusters) and external data files. Images are made by the real `qemu-img create`;
//! the harness compares qemu-io's output, exit status and every file's bytes afterwards, so
//! each case checks the image (and data file) our engine leaves against QEMU's.

use crate::cases::made as made_by_tools;
use crate::harness::{Case, case};
use crate::no_lost_writes::on_qcow2;
use std::process::Command;

/// `qemu-io -f qcow2 -c CMD... t.qcow2` on a fresh image made with `opts`.
fn io(name: &str, opts: &str, size: &str, cmds: &[&str]) -> Case {
    on_qcow2(name, opts, size, &["-f", "qcow2"], cmds, "t.qcow2")
}

/// `qemu-img create ARGS t.qcow2 SIZE` in a scratch directory holding `files` first (a
/// backing file, say): the bytes of t.qcow2 and of every file it made beside it.
fn made(files: &[(&str, Vec<u8>)], args: &[&str], size: &str) -> Vec<(String, Vec<u8>)> {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .args(args)
        .args(["t.qcow2", size])
        .current_dir(dir.path())
        .status()
        .expect("qemu-img runs");
    assert!(st.success(), "qemu-img create {args:?} t.qcow2 {size}");
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        out.push((name, std::fs::read(e.path()).unwrap()));
    }
    out.sort();
    out
}

/// qemu-io on t.qcow2 made by `qemu-img create ARGS`, next to `files`.
fn io_made(
    name: &str,
    files: &[(&str, Vec<u8>)],
    args: &[&str],
    size: &str,
    cmds: &[&str],
) -> Case {
    let mut all = vec!["-f", "qcow2"];
    for c in cmds {
        all.push("-c");
        all.push(c);
    }
    all.push("t.qcow2");
    let mut c = case(name, &all);
    c.files = made(files, args, size);
    c
}

/// The writes of iotest 271's first test: every subcluster shape, zeroing, unmapping,
/// discard and compression of cluster 0, then a partial write into the compressed cluster.
const SUBCLUSTER_WRITES: &[&str] = &[
    "write -q -P 1 0 1k",
    "write -q -P 2 3k 512",
    "write -q -P 3 5k 1k",
    "write -q -P 4 6k 2k",
    "write -q -P 5 8k 6k",
    "write -q -P 6 15k 4k",
    "write -q -P 7 32k 1k",
    "write -q -P 8 63k 4k",
    "write -q -z 2k 2k",
    "map",
    "write -q -z 0 64k",
    "write -q -P 9 0 64k",
    "write -q -z -u 0 32k",
    "write -q -z -u 0 64k",
    "write -q -P 10 3k 512",
    "map",
    "write -q -P 11 0 64k",
    "discard -q 0 64k",
    "write -q -c -P 12 0 64k",
    "write -q -P 13 3k 512",
    "read -P 13 3k 512",
    "read -v 0 16",
    "map",
];

/// Zero writes of every alignment over unallocated, allocated and compressed clusters
/// (iotest 271's "Writing zeroes" tests), on an image whose size is no multiple of a cluster.
const SUBCLUSTER_ZEROES: &[&str] = &[
    "write -q -z 0 192k",
    "write -q -z 208k 128k",
    "write -q -z 415k 128k",
    "write -q -P 3 576k 576k",
    "write -q -z 576k 192k",
    "write -q -z -u 800k 128k",
    "write -q -z 991k 128k",
    "write -q -c -P 4 1152k 64k",
    "write -q -c -P 5 1216k 64k",
    "write -q -c -P 6 1280k 64k",
    "write -q -c -P 7 1344k 64k",
    "write -q -z 1152k 128k",
    "write -q -z 1232k 128k",
    "write -q -z -u 1951k 8k",
    "write -q -z 2048k 35k",
    "map",
    "read -v 1231k 16",
];

/// qemu-io `cmds` with no drive given (each opens its own), on `files`.
fn sessions(name: &str, files: Vec<(String, Vec<u8>)>, cmds: &[&str]) -> Case {
    let mut args = Vec::new();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    let mut c = case(name, &args);
    c.files = files;
    c
}

/// Extended L2 entries in L2 slices: a slice holds half as many 16-byte entries, and a cache
/// that would cover the disk with standard entries may not with extended ones.
fn extended_l2_slices() -> Vec<Case> {
    // The third L2 load and every one after it fail: how many loads reads need shows whether
    // the cache holds whole tables or slices.
    let l2_loads = "[set-state]\nevent = \"l2_load\"\nstate = \"1\"\nnew_state = \"2\"\n\n[set-state]\nevent = \"l2_load\"\nstate = \"2\"\nnew_state = \"3\"\n\n[inject-error]\nevent = \"l2_load\"\nstate = \"3\"\nerrno = \"5\"\nonce = \"off\"\n";
    // data 20 MiB apart in one L2 table: one load with whole tables, one per 4k slice else
    let spread = |opts: &str| {
        made_by_tools(
            "qcow2",
            opts,
            "8G",
            &[
                "qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 20M 4k' -c 'write -P 3 40M 64k' \"$I\"",
            ],
        )
    };
    let reads = [
        "open -o driver=qcow2,l2-cache-size=1M blkdebug:l2.cfg:t.qcow2",
        "read -P 1 0 512",
        "read -P 2 20M 512",
        "read -P 3 40M 512",
        "read -P 1 32k 512",
    ];
    vec![
        // 1 MiB covers an 8 GiB disk's standard L2 tables, so they are cached whole ...
        sessions(
            "standard_l2_cache_covering_the_disk_keeps_whole_tables",
            vec![("t.qcow2".into(), spread(""))],
            &reads,
        )
        .file("l2.cfg", l2_loads),
        // ... but only half of its extended ones: 4 KiB slices, and the third load fails
        sessions(
            "extended_l2_cache_not_covering_the_disk_uses_slices",
            vec![("t.qcow2".into(), spread("extended_l2=on"))],
            &reads,
        )
        .file("l2.cfg", l2_loads),
        // 1 KiB slices of 64 extended entries: writes, zeroes and discards across the slice
        // ends at 4 MiB and 8 MiB, in subclusters
        sessions(
            "extended_l2_writes_across_l2_slices",
            vec![(
                "t.qcow2".into(),
                made_by_tools("qcow2", "extended_l2=on", "16M", &[]),
            )],
            &[
                "open -o driver=qcow2,l2-cache-entry-size=1k t.qcow2",
                "write -P 1 4094k 4k",
                "write -z 4000k 200k",
                "write -z -u 8190k 4k",
                "write -P 2 1000k 7000k",
                "discard 4032k 128k",
                "write -c -P 3 12M 64k",
                "read -P 2 1000k 3032k",
                "read -P 0 4032k 128k",
                "read -P 3 12M 64k",
                "map",
            ],
        ),
        // COW of an extended L2 table shared with a snapshot copies every slice
        sessions(
            "extended_l2_slices_cow_a_shared_table",
            vec![(
                "t.qcow2".into(),
                made_by_tools(
                    "qcow2",
                    "extended_l2=on",
                    "64M",
                    &[
                        "qemu-io -c 'write -P 5 0 64k' -c 'write -P 6 4M 3k' \"$I\"",
                        "qemu-img snapshot -c s \"$I\"",
                    ],
                ),
            )],
            &[
                "open -o driver=qcow2,l2-cache-entry-size=1k t.qcow2",
                "write -P 7 4k 4k",
                "write -P 8 4M 1k",
                "read -P 5 0 4k",
                "read -P 7 4k 4k",
                "read -P 8 4M 1k",
                "read -P 6 4097k 2k",
                "read -P 0 4099k 1k",
                "map",
            ],
        ),
    ]
}

pub fn all() -> Vec<Case> {
    let base = || vec![("base.raw", vec![0xffu8; 2083 << 10])];
    let backed = ["-o", "extended_l2=on", "-b", "base.raw", "-F", "raw"];
    vec![
        io(
            "extended_l2_subcluster_writes",
            "extended_l2=on",
            "1M",
            SUBCLUSTER_WRITES,
        ),
        io_made(
            "extended_l2_subcluster_writes_over_a_backing_file",
            &base(),
            &backed,
            "1M",
            SUBCLUSTER_WRITES,
        ),
        io(
            "extended_l2_zero_writes",
            "extended_l2=on",
            "2083k",
            SUBCLUSTER_ZEROES,
        ),
        io_made(
            "extended_l2_zero_writes_over_a_backing_file",
            &base(),
            &backed,
            "2083k",
            SUBCLUSTER_ZEROES,
        ),
        // several clusters where only some need COW or new bitmap bits; 16 KiB clusters
        // with 512-byte subclusters; a 2 MiB cluster spanning the whole small image
        io(
            "extended_l2_overwrites_without_cow",
            "extended_l2=on",
            "1M",
            &[
                "write -q -P 1 24k 40k",
                "write -q -P 2 90k 2k",
                "write -q -P 3 156k 2k",
                "write -q -z 156k 2k",
                "write -q -P 4 192k 34k",
                "write -q -P 5 24k 192k",
                "map",
            ],
        ),
        io(
            "extended_l2_small_subclusters",
            "extended_l2=on,cluster_size=16k",
            "4M",
            &[
                "write -q -P 1 700 1000",
                "write -q -z 1536 512",
                "write -q -z -u 16k 8k",
                "write -q -P 2 20k 100k",
                "discard -q 32k 16k",
                "read -v 1k 16",
                "map",
            ],
        ),
        io(
            "extended_l2_2m_clusters",
            "extended_l2=on,cluster_size=2M",
            "3M",
            &[
                "write -q -P 0x11 32k 32k",
                "write -q -P 0x22 960k 32k",
                "write -q -z 2M 64k",
                "write -q -P 0x33 2112k 4k",
                "map",
            ],
        ),
        // a failing subcluster data write aborts its allocation; the next one allocates anew
        on_qcow2(
            "extended_l2_failed_write_aborts_the_allocation",
            "extended_l2=on",
            "1M",
            &[],
            &[
                "write -q -P 1 3k 512",
                "write -q -P 2 70k 1k",
                "write -q -P 1 3k 512",
                "read -P 1 3k 512",
                "read -P 0 0 3k",
            ],
            r#"json:{"driver":"qcow2","file":{"driver":"blkdebug","inject-error":[{"event":"write_aio","once":true}],"image":{"driver":"file","filename":"t.qcow2"}}}"#,
        ),
        // zstd: compressed clusters, reads across cluster ends, and a COW of a compressed
        // cluster through decompression (one cluster per write: QEMU's thread pool finishes
        // parallel compressions in a racy order)
        io(
            "zstd_compressed_writes_and_reads",
            "compression_type=zstd",
            "64M",
            &[
                "write -c -P 0xac 64k 64k",
                "write -c -P 0xab 0 64k",
                "write -c -P 0x11 256k 64k",
                "read -P 0xac 64k 64k",
                "read -v 131070 8",
                "read -v 65534 8",
                "write -P 0x22 68k 4k",
                "read -P 0xac 64k 4k",
                "read -P 0x22 68k 4k",
                "read -P 0x11 256k 64k",
                "info",
            ],
        ),
        io(
            "zstd_small_clusters_share_host_clusters_and_unmap",
            "compression_type=zstd,cluster_size=4k",
            "1M",
            &[
                "write -c -P 0xac 0 4k",
                "write -c -P 0x5a 8k 4k",
                "write -c -P 0x5b 12k 4k",
                "write -z -u 8k 4k",
                "discard 0 4k",
                "read -P 0 8k 4k",
                "read -P 0x5b 12k 4k",
                "read -P 0 0 4k",
            ],
        ),
        // external data files: data I/O goes to t.data at the guest offsets, metadata and
        // blkdebug events to t.qcow2; compressed writes are refused
        io_made(
            "data_file_writes_zeroes_discards",
            &[],
            &["-o", "data_file=t.data"],
            "1M",
            &[
                "write -P 1 0 4k",
                "write -P 2 64k 64k",
                "write -z 128k 64k",
                "write -z -u 64k 64k",
                "discard 0 64k",
                "write -c -P 3 256k 64k",
                "write -P 4 900k 100k",
                "read -P 4 900k 100k",
                "read -P 0 0 64k",
                "map",
                "info",
            ],
        ),
        io_made(
            "data_file_raw_keeps_the_data_file_a_raw_image",
            &[],
            &["-o", "data_file=t.data,data_file_raw=on"],
            "1M",
            &[
                "write -P 1 0 4k",
                "write -P 2 64k 64k",
                "write -z 128k 64k",
                "write -z -u 64k 64k",
                "write -z 200k 1k",
                "discard 0 64k",
                "read -P 0 64k 4k",
                "map",
                "truncate 2M",
                "write -P 5 1536k 4k",
                "truncate 1M",
                "info",
            ],
        ),
        io_made(
            "data_file_with_extended_l2",
            &[],
            &["-o", "data_file=t.data,extended_l2=on"],
            "1M",
            &[
                "write -P 1 3k 1k",
                "write -z 6k 2k",
                "write -P 2 62k 4k",
                "read -P 1 3k 1k",
                "read -P 0 0 3k",
                "map",
            ],
        ),
        {
            let mut c = case(
                "data_file_events_go_to_the_image_file",
                &[
                    "-c",
                    "write -P 1 0 4k",
                    "-c",
                    "write -P 2 64k 4k",
                    "-c",
                    "read -P 2 64k 4k",
                    r#"json:{"driver":"qcow2","file":{"driver":"blkdebug","inject-error":[{"event":"write_aio","once":true}],"image":{"driver":"file","filename":"t.qcow2"}}}"#,
                ],
            );
            c.files = made(&[], &["-o", "data_file=t.data"], "1M");
            c
        },
        {
            let mut c = case(
                "data_file_given_as_an_option",
                &[
                    "-c",
                    r#"open -o data-file.filename=other.data,file.filename=t.qcow2"#,
                    "-c",
                    "write -P 7 4k 4k",
                    "-c",
                    "read -P 7 4k 4k",
                    "-c",
                    r#"open -o file.filename=plain.qcow2,data-file.filename=other.data"#,
                    "-c",
                    r#"open -o file.filename=t.qcow2,data-file.filename=missing.data"#,
                ],
            );
            c.files = made(
                &[("other.data", vec![0u8; 4096])],
                &["-o", "data_file=t.data"],
                "1M",
            );
            c.files.push((
                "plain.qcow2".into(),
                crate::no_lost_writes::qcow2("compat=1.1", "1M"),
            ));
            c
        },
    ]
    .into_iter()
    .chain(extended_l2_slices())
    .chain(bitmaps())
    .collect()
}

/// A 64 MiB image made by qemu-img with bitmap `b1` (64 KiB granularity, recording) and `b2`
/// (128 KiB, disabled), as `qemu-img bitmap --add` leaves them.
fn with_bitmaps() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let st = Command::new("qemu-img")
            .args(args)
            .current_dir(dir.path())
            .status()
            .expect("qemu-img runs");
        assert!(st.success(), "qemu-img {args:?}");
    };
    run(&["create", "-q", "-f", "qcow2", "t.qcow2", "64M"]);
    run(&["bitmap", "--add", "t.qcow2", "b1"]);
    run(&[
        "bitmap",
        "--add",
        "-g",
        "128k",
        "--disable",
        "t.qcow2",
        "b2",
    ]);
    std::fs::read(dir.path().join("t.qcow2")).unwrap()
}

/// A lazy-refcounts image with bitmap `b1` left dirty (and the bitmap in use) by a qemu-io
/// that aborted after two writes.
fn dirty_lazy_with_bitmap() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let run = |prog: &str, args: &[&str]| {
        Command::new(prog)
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("runs")
            .status
    };
    let opts = ["-q", "-f", "qcow2", "-o", "lazy_refcounts=on"];
    assert!(
        run(
            "qemu-img",
            &[&["create"], &opts[..], &["t.qcow2", "64M"]].concat()
        )
        .success()
    );
    assert!(run("qemu-img", &["bitmap", "--add", "t.qcow2", "b1"]).success());
    let cmds = [
        "-c",
        "write 0 64k",
        "-c",
        "write 1M 64k",
        "-c",
        "abort",
        "t.qcow2",
    ];
    assert!(!run("qemu-io", &cmds).success(), "qemu-io aborts");
    std::fs::read(dir.path().join("t.qcow2")).unwrap()
}

/// Where the bitmaps extension's data starts in cluster 0.
fn bitmaps_ext_at(img: &[u8]) -> usize {
    let magic = 0x2385_2875u32.to_be_bytes();
    img.windows(4)
        .position(|w| w == magic)
        .expect("bitmaps extension")
        + 8
}

/// The bitmap directory's offset.
fn bitmap_dir_at(img: &[u8]) -> usize {
    let at = bitmaps_ext_at(img) + 16;
    u64::from_be_bytes(img[at..at + 8].try_into().unwrap()) as usize
}

fn be32_set(img: &mut [u8], at: usize, v: u32) {
    img[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A change to an image's bytes.
type Patch = Box<dyn Fn(&mut Vec<u8>)>;

fn bitmap_case(name: &str, img: Vec<u8>, args: &[&str]) -> Case {
    let mut all = Vec::new();
    for a in args {
        all.push(*a);
    }
    case(name, &all).bytes("t.qcow2", img)
}

/// blkdebug over t.qcow2 failing writes to `sector` of the file once the first L2 update has
/// happened (so at close, where the bitmaps are stored).
fn fail_at_close(sector: u64) -> String {
    format!(
        r#"json:{{"driver":"qcow2","file":{{"driver":"blkdebug","set-state":[{{"event":"l2_update","new_state":2}}],"inject-error":[{{"event":"pwritev","state":2,"errno":5,"sector":{sector}}}],"image":{{"driver":"file","filename":"t.qcow2"}}}}}}"#
    )
}

/// Persistent dirty bitmaps (issue 8): marked in use while open read-write, writes tracked
/// and stored at close through the cluster allocator, QEMU's errors for bad extensions and
/// directories and for failures while storing.
fn bitmaps() -> Vec<Case> {
    let img = with_bitmaps();
    let mut cases = vec![
        bitmap_case(
            "bitmaps_track_writes_zeroes_and_discards",
            img.clone(),
            &[
                "-c",
                "write -P 1 0 1M",
                "-c",
                "write -z 10M 64k",
                "-c",
                "write -z -u 12M 128k",
                "-c",
                "discard 20M 1M",
                "-c",
                "write 63M 512",
                "-c",
                "info",
                "t.qcow2",
            ],
        ),
        bitmap_case(
            "bitmaps_read_only_open_and_reopen",
            img.clone(),
            &[
                "-c",
                "write 64k 64k",
                "-c",
                "reopen -r",
                "-c",
                "info",
                "-c",
                "reopen -w",
                "-c",
                "write 1M 4k",
                "-c",
                "truncate 128M",
                "-c",
                "write 100M 64k",
                "-c",
                "info",
                "t.qcow2",
            ],
        ),
        bitmap_case(
            "bitmaps_opened_read_only_stay_as_they_are",
            img.clone(),
            &[
                "-r",
                "-c",
                "read 0 64k",
                "-c",
                "info",
                "-c",
                "truncate 32M",
                "t.qcow2",
            ],
        ),
    ];
    for sector in [0u64, 1152, 1280, 1408, 1536] {
        let f = fail_at_close(sector);
        cases.push(bitmap_case(
            &format!("bitmaps_store_fails_at_sector_{sector}"),
            img.clone(),
            &["-c", "write 0 64k", "-c", "write 5M 64k", &f],
        ));
    }
    // b1 in use: loaded as inconsistent, never stored, and resizing is refused
    let mut in_use = img.clone();
    let at = bitmap_dir_at(&in_use) + 12;
    be32_set(&mut in_use, at, 3);
    cases.push(bitmap_case(
        "bitmaps_in_use_are_inconsistent",
        in_use,
        &[
            "-c",
            "write 0 64k",
            "-c",
            "truncate 100M",
            "-c",
            "reopen -r",
            "-c",
            "info",
            "t.qcow2",
        ],
    ));
    // the autoclear bit gone: the bitmaps are dropped (the header is rewritten read-write)
    let mut no_bit = img.clone();
    no_bit[95] &= !1;
    cases.push(bitmap_case(
        "bitmaps_without_autoclear_bit_read_only",
        no_bit.clone(),
        &["-r", "-c", "info", "t.qcow2"],
    ));
    cases.push(bitmap_case(
        "bitmaps_without_autoclear_bit_dropped",
        no_bit,
        &["-c", "write 0 64k", "-c", "info", "t.qcow2"],
    ));
    // killed while dirty with lazy refcounts: the repair at open counts the bitmap clusters
    cases.push(bitmap_case(
        "bitmaps_survive_the_repair_of_a_dirty_image",
        dirty_lazy_with_bitmap(),
        &["-c", "write 2M 64k", "-c", "info", "t.qcow2"],
    ));
    // the autoclear bit without an extension: QEMU's overlap check then fails every write
    let mut bit_only = crate::no_lost_writes::qcow2("compat=1.1", "1M");
    bit_only[95] |= 1;
    cases.push(bitmap_case(
        "bitmaps_autoclear_bit_without_extension",
        bit_only,
        &["-c", "write 0 4k", "-c", "read 0 4k", "t.qcow2"],
    ));
    let ext = bitmaps_ext_at(&img);
    let dir = bitmap_dir_at(&img);
    let bad: Vec<(&str, Patch)> = vec![
        (
            "reserved",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, ext + 4, 1)),
        ),
        (
            "zero_bitmaps",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, ext, 0)),
        ),
        (
            "too_many",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, ext, 70000)),
        ),
        (
            "fewer",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, ext, 3)),
        ),
        ("more", Box::new(move |b: &mut Vec<u8>| be32_set(b, ext, 1))),
        (
            "dir_offset",
            Box::new(move |b: &mut Vec<u8>| b[ext + 23] = 8),
        ),
        (
            "dir_size",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, ext + 8, 1)),
        ),
        (
            "dir_size_short",
            Box::new(move |b: &mut Vec<u8>| b[ext + 15] -= 8),
        ),
        (
            "ext_length",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, ext - 4, 16)),
        ),
        (
            "granularity",
            Box::new(move |b: &mut Vec<u8>| b[dir + 17] = 8),
        ),
        ("flags", Box::new(move |b: &mut Vec<u8>| b[dir + 15] |= 4)),
        (
            "table_size",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, dir + 8, 0)),
        ),
        (
            "extra_data",
            Box::new(move |b: &mut Vec<u8>| be32_set(b, dir + 20, 8)),
        ),
        (
            "table_entry",
            Box::new(move |b: &mut Vec<u8>| {
                let t = u64::from_be_bytes(b[dir..dir + 8].try_into().unwrap()) as usize;
                b[t + 7] = 2;
            }),
        ),
        (
            "duplicate_name",
            Box::new(move |b: &mut Vec<u8>| b[dir + 24 + 32 + 1] = b'1'),
        ),
    ];
    for (what, patch) in bad {
        let mut b = img.clone();
        patch(&mut b);
        cases.push(bitmap_case(
            &format!("bitmaps_bad_{what}"),
            b,
            &["-c", "write 0 64k", "-c", "info", "t.qcow2"],
        ));
    }
    cases
}
