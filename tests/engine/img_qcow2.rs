//! Differential tests of `blockfault img` against the real qemu-img 10.0.2 for qcow2: create
//! (bytes of the image, the Formatting line, errors), check (reports, stderr lines, exit codes,
//! repaired images), info, and hostile headers. Skipped, saying so, without qemu-img.

use crate::support::have_qemu;
use blockfault::output::{Sink, Stream};
use std::cell::RefCell;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

#[derive(Default)]
struct Split {
    out: String,
    err: String,
}

impl Sink for Split {
    fn write(&mut self, stream: Stream, text: &str) {
        match stream {
            Stream::Stdout => self.out.push_str(text),
            Stream::Stderr => self.err.push_str(text),
        }
    }
}

type Outcome = (String, String, i32);

fn ours(args: &[&str], dir: &Path) -> Outcome {
    let sink = Rc::new(RefCell::new(Split::default()));
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let rc = blockfault::img::run(&argv, dir, sink.clone());
    let s = sink.borrow();
    (s.out.clone(), s.err.clone(), rc)
}

fn tool(prog: &str, args: &[&str], dir: &Path) -> Outcome {
    let o = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tool");
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        o.status.code().unwrap_or(-1),
    )
}

/// `qemu-io ARGS` on our engine: stdout and stderr as one stream, and the exit status.
fn qemu_io(args: &[&str], dir: &Path) -> (String, i32) {
    let cap = Rc::new(RefCell::new(blockfault::output::Capture::default()));
    let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let rc = blockfault::qemu_io::main(&argv, dir, cap.clone(), &mut std::io::empty());
    let text = std::mem::take(&mut cap.borrow_mut().combined);
    (text, rc)
}

fn poke(path: &Path, offset: u64, width: usize, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let bytes = value.to_be_bytes();
    f.write_all_at(&bytes[8 - width..], offset).unwrap();
}

/// Runs `qemu-img create -f qcow2 ARGS` and ours on the same name; outputs, status, and the image
/// bytes (or its absence) must be identical.
fn create_case(dir: &Path, args: &[&str]) -> Option<String> {
    let img = dir.join("q.img");
    let mut full = vec!["create", "-f", "qcow2"];
    full.extend_from_slice(args);
    let _ = std::fs::remove_file(&img);
    let theirs = tool("qemu-img", &full, dir);
    let their_img = std::fs::read(&img).ok();
    let _ = std::fs::remove_file(&img);
    let mine = ours(&full, dir);
    let my_img = std::fs::read(&img).ok();
    let _ = std::fs::remove_file(&img);
    if theirs != mine {
        return Some(format!("{args:?}: qemu-img {theirs:?}\n  ours {mine:?}"));
    }
    if their_img != my_img {
        return Some(format!(
            "{args:?}: images differ (lengths {:?} / {:?})",
            their_img.map(|v| v.len()),
            my_img.map(|v| v.len())
        ));
    }
    None
}

fn assert_all(failures: Vec<String>, total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {total} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn create_geometry_matrix_is_byte_identical() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut total = 0;
    for cs in ["512", "1024", "4096", "65536", "2M"] {
        for rb in ["1", "4", "16", "64"] {
            for size in ["0", "1M", "1G", "100G"] {
                // 512-byte clusters at 100G take seconds in QEMU too: one width is enough.
                if cs == "512" && size == "100G" && rb != "16" {
                    continue;
                }
                let o = format!("cluster_size={cs},refcount_bits={rb}");
                total += 1;
                failures.extend(create_case(dir.path(), &["-o", &o, "q.img", size]));
            }
        }
    }
    // Several TB, and L1/refcount-table growth limits.
    for (o, size) in [
        ("cluster_size=2M", "4P"),
        ("cluster_size=2M", "4E"),
        ("cluster_size=512", "128G"),
        ("cluster_size=512", "129G"),
        ("cluster_size=512,refcount_bits=64", "16G"),
        ("cluster_size=65536", "8T"),
    ] {
        total += 1;
        failures.extend(create_case(dir.path(), &["-o", o, "q.img", size]));
    }
    assert_all(failures, total);
}

#[test]
fn create_options_and_errors_match() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(
        tool(
            "qemu-img",
            &["create", "-q", "-f", "raw", "base.raw", "5M"],
            d
        )
        .2,
        0
    );
    assert_eq!(
        tool(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "base.qcow2", "7M"],
            d
        )
        .2,
        0
    );
    let cases: &[&[&str]] = &[
        &["q.img", "64M"],
        &["-q", "q.img", "64M"],
        &["-o", "compat=0.10", "q.img", "64M"],
        &["-o", "compat=v2", "q.img", "1G"],
        &["-o", "compat=1.1,lazy_refcounts=on", "q.img", "64M"],
        &["-o", "compat=0.10,lazy_refcounts=on", "q.img", "64M"],
        &["-o", "compat=0.10,refcount_bits=8", "q.img", "64M"],
        &["-o", "extended_l2=on", "q.img", "64M"],
        &["-o", "extended_l2=on,cluster_size=4k", "q.img", "64M"],
        &["-o", "compression_type=zstd", "q.img", "64M"],
        &["-o", "compression_type=foo", "q.img", "64M"],
        &["-o", "data_file=d.data", "q.img", "64M"],
        &["-o", "data_file=d.data,extended_l2=on", "q.img", "1G"],
        &["-o", "data_file=d.data,compat=0.10", "q.img", "64M"],
        &["-o", "data_file_raw=on", "q.img", "64M"],
        &["-o", "preallocation=off,nocow=on", "q.img", "64M"],
        &["-o", "preallocation=bogus", "q.img", "64M"],
        &["-o", "compat=9", "q.img", "64M"],
        &["-o", "x=1", "q.img", "64M"],
        &["-o", "cluster_size=1000", "q.img", "64M"],
        &["-o", "cluster_size=abc", "q.img", "64M"],
        &["-o", "refcount_bits=3", "q.img", "64M"],
        &[
            "-o",
            "refcount_bits=0x10,lazy_refcounts=yes",
            "q.img",
            "64M",
        ],
        &["-o", "lazy_refcounts=maybe", "q.img", "64M"],
        &["-o", "nolazy_refcounts", "q.img", "64M"],
        &["-o", "size=1G", "q.img", "1M"],
        &["-o", "size=1.5k", "q.img"],
        &["-o", "size=20E", "q.img"],
        &[
            "-o",
            "cluster_size=4k",
            "-o",
            "cluster_size=8k",
            "q.img",
            "1M",
        ],
        &["-o", ",,", "q.img", "1M"],
        &["q.img", "1000"],
        &["q.img", "9E"],
        &["q.img", "10E"],
        &["q.img", "1Q"],
        &["q.img", "9223372036854775296"],
        &["q.img", "1M", "2M"],
        &["q.img"],
        &[],
        &["-b", "base.raw", "-F", "raw", "q.img"],
        &["-b", "base.qcow2", "-F", "qcow2", "q.img"],
        &[
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "-o",
            "cluster_size=512",
            "q.img",
            "1G",
        ],
        &[
            "-b",
            "base.qcow2",
            "-F",
            "qcow2",
            "-o",
            "compat=0.10",
            "q.img",
        ],
        &["-b", "base.raw", "q.img"],
        &["-b", "base.raw", "-F", "qcow2", "q.img"],
        &["-b", "nonexist", "-F", "raw", "q.img"],
        &["-u", "-b", "nonexist", "-F", "raw", "q.img", "1M"],
        &["-u", "-b", "nonexist", "q.img", "1M"],
        &["-u", "-b", "nonexist", "-F", "raw", "q.img"],
        &["-b", "q.img", "-F", "raw", "q.img"],
        &["-F", "raw", "q.img", "1M"],
        &["-b", "base.qcow2", "-F", "foo", "q.img"],
        &["-u", "-b", "base.qcow2", "-F", "foo", "q.img", "1M"],
        &[
            "-u",
            "-o",
            "cluster_size=512",
            "-b",
            &"x".repeat(400),
            "-F",
            "raw",
            "q.img",
            "1M",
        ],
    ];
    let mut failures = Vec::new();
    for c in cases {
        failures.extend(create_case(d, c));
    }
    // A failing create deletes a file that was there before, as QEMU does.
    std::fs::write(d.join("q.img"), b"old").unwrap();
    let r = ours(
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "compat=0.10,refcount_bits=8",
            "q.img",
            "1M",
        ],
        d,
    );
    assert_eq!(r.2, 1);
    assert!(!d.join("q.img").exists());
    assert_all(failures, cases.len());
}

/// qemu-img check and ours on copies of `img` (with `args`); also compares the images after.
fn check_case(dir: &Path, img: &str, args: &[&str]) -> Option<String> {
    let (a, b) = (format!("q-{img}"), format!("b-{img}"));
    std::fs::copy(dir.join(img), dir.join(&a)).unwrap();
    std::fs::copy(dir.join(img), dir.join(&b)).unwrap();
    let mut qa = vec!["check"];
    qa.extend_from_slice(args);
    let mut ba = qa.clone();
    qa.push(&a);
    ba.push(&b);
    let (o1, e1, r1) = tool("qemu-img", &qa, dir);
    let (o2, e2, r2) = ours(&ba, dir);
    let theirs = (o1.replace(&a, "IMG"), e1.replace(&a, "IMG"), r1);
    let mine = (o2.replace(&b, "IMG"), e2.replace(&b, "IMG"), r2);
    let same_img = std::fs::read(dir.join(&a)).unwrap() == std::fs::read(dir.join(&b)).unwrap();
    if theirs != mine {
        return Some(format!(
            "{img} {args:?}:\n  qemu-img {theirs:?}\n  ours     {mine:?}"
        ));
    }
    if !same_img {
        return Some(format!("{img} {args:?}: repaired images differ"));
    }
    None
}

#[test]
fn check_reports_and_repairs_match() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    let q = |args: &[&str]| assert_eq!(tool("qemu-img", args, d).2, 0, "{args:?}");
    q(&["create", "-q", "-f", "qcow2", "d.qcow2", "64M"]);
    let io = tool(
        "qemu-io",
        &[
            "-c",
            "write -P 1 0 200k",
            "-c",
            "write -c 1M 64k",
            "-c",
            "write -z 2M 64k",
            "-c",
            "write 3M 512",
            "d.qcow2",
        ],
        d,
    );
    assert_eq!(io.2, 0, "{io:?}");
    // d.qcow2: header 0, reftable 0x10000, refblock 0x20000, L1 0x30000, L2 0x40000, data 0x50000..
    let variants: &[&[(u64, usize, u64)]] = &[
        &[],
        &[(0x40000, 8, 0)],                     // data cluster leaked
        &[(0x2000a, 2, 0)],                     // referenced cluster with refcount 0 (rebuild)
        &[(0x2000a, 2, 2)],                     // refcount 2: leak + OFLAG_COPIED
        &[(0x20008, 2, 2)],                     // L2 refcount 2
        &[(0x40000, 8, 0x50000)],               // COPIED missing
        &[(0x30000, 8, 0x8000_0000_00f0_0000)], // L2 table past EOF
        &[(0x40000, 8, 0x8100_0000_0005_0000)], // reserved bits in an L2 entry
        &[(0x10000, 8, 0x20001)],               // reserved bits in a reftable entry
        &[(0x10000, 8, 0x20200)],               // unaligned refcount block
        &[(0x40000, 8, 0x8000_0000_0005_0200)], // unaligned data cluster
        &[(0x20100, 2, 1)],                     // refcount past EOF: no leak
        &[(0x40000, 8, 0x8000_0000_0100_0000)], // data past EOF
        &[(0x30000, 8, 0x8000_0000_0004_0200)], // unaligned L2 table
        &[(0x10008, 8, 0x700_0000)],            // refcount block outside the image
        &[(0x2000c, 2, 0xffff)],                // maximal refcount
        &[(0x20000, 2, 0)],                     // header refcount 0
        &[(0x20006, 2, 0), (0x2000a, 2, 0), (0x2000c, 2, 0)],
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    for (i, pokes) in variants.iter().enumerate() {
        let name = format!("v{i}.qcow2");
        std::fs::copy(d.join("d.qcow2"), d.join(&name)).unwrap();
        for &(off, w, v) in pokes.iter() {
            poke(&d.join(&name), off, w, v);
        }
        for args in [
            &[][..],
            &["-r", "leaks"],
            &["-r", "all"],
            &["-q"],
            &["--output=json"],
            &["--output=json", "-r", "leaks"],
            &["--output", "json", "-r", "all"],
        ] {
            total += 1;
            failures.extend(check_case(d, &name, args));
        }
    }
    // Other geometries, snapshots, v2.
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=512,refcount_bits=4",
        "e.qcow2",
        "1G",
    ]);
    tool(
        "qemu-io",
        &["-c", "write 0 300k", "-c", "write -c 500M 1k", "e.qcow2"],
        d,
    );
    std::fs::copy(d.join("d.qcow2"), d.join("s.qcow2")).unwrap();
    q(&["snapshot", "-c", "s1", "s.qcow2"]);
    tool("qemu-io", &["-c", "write -P 2 0 64k", "s.qcow2"], d);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "v2.qcow2",
        "1G",
    ]);
    tool(
        "qemu-io",
        &["-c", "write 0 1M", "-c", "write 100M 10k", "v2.qcow2"],
        d,
    );
    for img in ["e.qcow2", "s.qcow2", "v2.qcow2"] {
        for args in [&[][..], &["-r", "all"]] {
            total += 1;
            failures.extend(check_case(d, img, args));
        }
    }
    std::fs::copy(d.join("e.qcow2"), d.join("e1.qcow2")).unwrap();
    poke(&d.join("e1.qcow2"), 0x208, 8, 0);
    for args in [&[][..], &["-r", "leaks"], &["-r", "all"]] {
        total += 1;
        failures.extend(check_case(d, "e1.qcow2", args));
    }
    for args in [&["-r", "foo"][..], &["-f", "raw"]] {
        total += 1;
        failures.extend(check_case(d, "d.qcow2", args));
    }
    assert_all(failures, total);
}

#[test]
fn info_matches() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    let q = |args: &[&str]| assert_eq!(tool("qemu-img", args, d).2, 0, "{args:?}");
    q(&["create", "-q", "-f", "qcow2", "d.qcow2", "64M"]);
    tool("qemu-io", &["-c", "write 0 200k", "d.qcow2"], d);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        "-b",
        "d.qcow2",
        "-F",
        "qcow2",
        "o.qcow2",
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on,refcount_bits=1,extended_l2=on,compression_type=zstd",
        "z.qcow2",
        "1T",
    ]);
    std::fs::create_dir(d.join("sub")).unwrap();
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "../d.qcow2",
        "-F",
        "qcow2",
        "sub/x.qcow2",
    ]);
    q(&["create", "-q", "-f", "raw", "r.raw", "1000k"]);
    std::fs::copy(d.join("d.qcow2"), d.join("dirty.qcow2")).unwrap();
    poke(&d.join("dirty.qcow2"), 72, 8, 1);
    let cases: &[&[&str]] = &[
        &["d.qcow2"],
        &["o.qcow2"],
        &["--backing-chain", "o.qcow2"],
        &["z.qcow2"],
        &["sub/x.qcow2"],
        &["--backing-chain", "sub/x.qcow2"],
        &["dirty.qcow2"],
        &["r.raw"],
        &["-f", "qcow2", "r.raw"],
        &["nonexist"],
    ];
    info_cases_agree(d, cases);
}

/// `qemu-img info ARGS` for each case, on real qemu-img and ours: the same stdout, stderr and
/// exit status.
fn info_cases_agree<C: AsRef<[&'static str]>>(d: &Path, cases: &[C]) {
    let mut failures = Vec::new();
    for c in cases {
        let c = c.as_ref();
        let mut a = vec!["info"];
        a.extend_from_slice(c);
        let (theirs, mine) = (tool("qemu-img", &a, d), ours(&a, d));
        if theirs != mine {
            failures.push(format!(
                "{c:?}:\n  qemu-img {theirs:?}\n  ours     {mine:?}"
            ));
        }
    }
    assert_all(failures, cases.len());
}

/// Filenames the block layer parses (`blkdebug:`, `blkverify:`, `json:`, `null-co://`) are
/// described as qemu-img opens them: the node graph, each node with its children, in text and
/// JSON, with and without `--backing-chain`.
#[test]
fn info_of_protocol_filenames_shows_the_node_graph() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let q = |a: &[&str]| assert_eq!(tool("qemu-img", a, d).2, 0, "{a:?}");
    q(&["create", "-q", "-f", "raw", "r.img", "1M"]);
    q(&["create", "-q", "-f", "qcow2", "q.qcow2", "1M"]);
    q(&[
        "create", "-q", "-f", "qcow2", "-b", "q.qcow2", "-F", "qcow2", "ov.qcow2",
    ]);
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=dd.data",
        "dq.qcow2",
        "1M",
    ]);
    std::fs::write(d.join("b.cfg"), "[inject-error]\nevent = \"read_aio\"\n").unwrap();
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "blkdebug:b.cfg:r.img",
        "-F",
        "raw",
        "ob.qcow2",
    ]);
    tool("qemu-io", &["-c", "write 0 64k", "q.qcow2"], d);
    let json_qcow2 = r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"q.qcow2"}}"#;
    let names = [
        "blkdebug:b.cfg:q.qcow2",
        "blkdebug:b.cfg:r.img",
        "blkdebug:b.cfg:ov.qcow2",
        "blkdebug:b.cfg:dq.qcow2",
        "blkverify:r.img:q.qcow2",
        "blkverify:r.img:ov.qcow2",
        "blkverify:r.img:dq.qcow2",
        json_qcow2,
        "file:r.img",
        "null-co://",
        "ob.qcow2",
        "blkdebug:nope.cfg:q.qcow2",
    ];
    let mut cases: Vec<Vec<&str>> = Vec::new();
    for n in names {
        cases.push(vec![n]);
        cases.push(vec!["--output=json", n]);
        cases.push(vec!["--backing-chain", n]);
    }
    cases.push(vec!["-f", "raw", "blkdebug:b.cfg:q.qcow2"]);
    cases.push(vec![
        "--backing-chain",
        "--output=json",
        "blkdebug:b.cfg:ov.qcow2",
    ]);
    info_cases_agree(d, &cases);
}

/// A LUKS image made by the real qemu-img, copies naming other ciphers, modes, IV generators
/// and hashes (what qemu-img writes for them; made by rewriting the names rather than by
/// qemu-img, whose key derivation takes a second or more per image), and copies with one
/// field of the LUKS header or of the CRYPTO header extension damaged: `info` (text and JSON,
/// also as a backing file) opens them without a key and shows or refuses them as qemu-img
/// does; `check` and qemu-io ask for the key as QEMU's do.
#[test]
fn info_of_luks_images_matches_qemu_img() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    let made = tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "--object",
            "secret,id=s,data=pw",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10",
            "l.qcow2",
            "4M",
        ],
        d,
    );
    assert_eq!(made.2, 0, "{made:?}");
    let image = std::fs::read(d.join("l.qcow2")).unwrap();
    // the CRYPTO header extension (magic 0x0537be77) and the LUKS header it points at
    let ext = (104..4096)
        .step_by(8)
        .find(|&at| image[at..at + 4] == [0x05, 0x37, 0xbe, 0x77])
        .expect("a CRYPTO header extension") as u64;
    let hdr = u64::from_be_bytes(
        image[ext as usize + 8..ext as usize + 16]
            .try_into()
            .unwrap(),
    );
    let slot = |i: u64| hdr + 208 + 48 * i;
    let mutations: &[(&str, u64, &[u8])] = &[
        ("magic", hdr, b"LUKZ"),
        ("version", hdr + 6, &[0, 2]),
        ("slot-state", slot(1), &[0, 0, 0, 1]),
        ("slot-stripes", slot(2) + 44, &[0, 0, 0, 0]),
        ("slots-overlap", slot(3) + 40, &[0, 0, 0, 9]),
        ("payload", hdr + 104, &[0, 0, 1, 0]),
        ("payload-in-header", hdr + 104, &[0, 0, 0, 7]),
        ("master-key-iters", hdr + 164, &[0, 0, 0, 0]),
        ("slot-iters", slot(0) + 4, &[0, 0, 0, 0]),
        ("slot-in-header", slot(0) + 40, &[0, 0, 0, 7]),
        ("mode-full", hdr + 40, &[b'x'; 32]),
        ("hash-full", hdr + 72, &[b's'; 32]),
        ("mode-format", hdr + 40, b"xts_plain64"),
        ("mode-name", hdr + 40, b"gcm-plain64"),
        ("ivgen-name", hdr + 44, b"plain65"),
        ("ivgen-hash", hdr + 40, b"xts-plain64:sha9\0"),
        ("essiv-no-hash", hdr + 40, b"xts-essiv\0"),
        ("essiv-digest", hdr + 40, b"xts-essiv:sha1\0"),
        ("essiv-cast5", hdr + 8, b"cast5\0"),
        ("hash-name", hdr + 72, b"sha257"),
        ("key-bytes", hdr + 108, &[0, 0, 0, 40]),
        ("cipher-name", hdr + 8, b"des\0"),
        ("cipher-name-full", hdr + 8, &[b'a'; 32]),
        ("uuid-full", hdr + 168, &[b'7'; 40]),
        ("ext-length", ext + 16, &[0, 0, 0, 0, 0, 0, 2, 0x4f]),
        ("ext-offset", ext + 8, &[0, 0, 0, 0, 0x10, 0, 0, 0]),
        ("ext-size", ext + 4, &[0, 0, 0, 8]),
    ];
    // (cipher name, mode spec, hash, key bytes) as qemu-img writes them for other choices
    type Names = (
        &'static str,
        &'static [u8],
        &'static [u8],
        &'static [u8],
        u8,
    );
    let variants: &[Names] = &[
        ("essiv", b"aes", b"cbc-essiv:sha256", b"sha256", 16),
        ("cast5", b"cast5", b"cbc-plain", b"sha256", 16),
        ("cast5-essiv", b"cast5", b"cbc-essiv:sha256", b"sha256", 16),
        ("serpent", b"serpent", b"ecb-plain64", b"sha512", 24),
        ("twofish", b"twofish", b"ctr-plain64", b"sm3", 32),
        (
            "plain-ivhash",
            b"aes",
            b"xts-plain64:sha1",
            b"ripemd160",
            32,
        ),
    ];
    let mut named: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, cipher, mode, hash, key_bytes) in variants {
        let mut b = image.clone();
        for (at, field) in [(8, cipher), (40, mode), (72, hash)] {
            let at = (hdr + at) as usize;
            b[at..at + 32].fill(0);
            b[at..at + field.len()].copy_from_slice(field);
        }
        b[(hdr + 111) as usize] = *key_bytes;
        named.push((name.to_string(), b));
    }
    for (name, at, bytes) in mutations {
        let mut b = image.clone();
        b[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
        named.push((name.to_string(), b));
    }
    let mut names = vec!["l.qcow2"];
    for (name, b) in named {
        let file = format!("{name}.qcow2");
        std::fs::write(d.join(&file), b).unwrap();
        names.push(Box::leak(file.into_boxed_str()));
    }
    let over = tool(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", "l.qcow2", "-F", "qcow2", "o.qcow2",
        ],
        d,
    );
    assert_eq!(over.2, 0, "{over:?}");
    let mut cases: Vec<Vec<&'static str>> = Vec::new();
    for n in &names {
        cases.push(vec![n]);
        cases.push(vec!["--output=json", n]);
    }
    cases.push(vec!["--backing-chain", "o.qcow2"]);
    cases.push(vec!["--backing-chain", "--output=json", "o.qcow2"]);
    info_cases_agree(d, &cases);
    let mut failures = Vec::new();
    for n in ["l.qcow2", "magic.qcow2", "o.qcow2"] {
        let (theirs, mine) = (tool("qemu-img", &["check", n], d), ours(&["check", n], d));
        if theirs != mine {
            failures.push(format!(
                "check {n}:\n  qemu-img {theirs:?}\n  ours     {mine:?}"
            ));
        }
        let theirs = tool("qemu-io", &["-c", "read 0 4k", n], d);
        let mine = qemu_io(&["-c", "read 0 4k", n], d);
        if (format!("{}{}", theirs.0, theirs.1), theirs.2) != mine {
            failures.push(format!(
                "qemu-io {n}:\n  qemu-io {theirs:?}\n  ours    {mine:?}"
            ));
        }
    }
    assert_all(failures, 6);
    // with its key, QEMU reads the image; this engine says plainly that it cannot
    let keyed = "driver=qcow2,encrypt.key-secret=s,file.filename=l.qcow2";
    let args = [
        "--object",
        "secret,id=s,data=pw",
        "--image-opts",
        "-c",
        "read 0 4k",
        keyed,
    ];
    assert_eq!(tool("qemu-io", &args, d).2, 0);
    let (text, rc) = qemu_io(&args, d);
    assert_eq!(
        (text.as_str(), rc),
        (
            "qemu-io: can't open: blockfault: reading or writing an encrypted qcow2 image is not supported by this engine (img info shows it)\n",
            1
        )
    );
}

#[test]
fn hostile_headers_error_like_qemu_and_never_panic() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(
        tool(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "d.qcow2", "64M"],
            d
        )
        .2,
        0
    );
    tool("qemu-io", &["-c", "write 0 200k", "d.qcow2"], d);
    let fields: &[(u64, usize, u64)] = &[
        (4, 4, 4),
        (20, 4, 8),
        (20, 4, 30),
        (36, 4, 0xffff_ffff),
        (36, 4, 0x40_0000),
        (40, 8, 0x123),
        (48, 8, 0x123),
        (56, 4, 0),
        (56, 4, 0x10000),
        (24, 8, u64::MAX),
        (24, 8, 0x7fff_ffff_ffff_ff00),
        (96, 4, 7),
        (72, 8, 0x100),
        (100, 4, 50),
        (100, 4, 0x20000),
        (40, 8, 0x7fff_0000_0000_0000),
        (48, 8, 0x0fff_ffff_ffff_0000),
        // sizes QEMU's size_to_l1 wraps (refused by the block layer after the open) or not
        (24, 8, 1 << 63),
        (24, 8, u64::MAX - (1 << 20)),
        (32, 4, 3),
        (32, 4, 0xffff_ffff),
        (104, 1, 2),
    ];
    let mut failures = Vec::new();
    let mut total = 0;
    let mut compare = |name: &str, what: &str| {
        for cmd in ["check", "info"] {
            total += 1;
            let (theirs, mine) = (tool("qemu-img", &[cmd, name], d), ours(&[cmd, name], d));
            if theirs != mine {
                failures.push(format!(
                    "{cmd} {what}:\n  qemu-img {theirs:?}\n  ours     {mine:?}"
                ));
            }
        }
        // the driver reads the header with the same code
        total += 1;
        let args = ["-r", "-c", "length", name];
        let (out, err, rc) = tool("qemu-io", &args, d);
        let theirs = (format!("{out}{err}"), rc);
        let mine = qemu_io(&args, d);
        if theirs != mine {
            failures.push(format!(
                "qemu-io {what}:\n  qemu-io {theirs:?}\n  ours    {mine:?}"
            ));
        }
    };
    for (i, &(off, w, v)) in fields.iter().enumerate() {
        let name = format!("h{i}.qcow2");
        std::fs::copy(d.join("d.qcow2"), d.join(&name)).unwrap();
        poke(&d.join(&name), off, w, v);
        compare(&name, &format!("{off}={v:#x}"));
    }
    // Files cut inside the header read as zeros past their end, as QEMU's file protocol reads.
    let orig = std::fs::read(d.join("d.qcow2")).unwrap();
    for len in [60, 80, 100, 108] {
        let name = format!("cut{len}.qcow2");
        std::fs::write(d.join(&name), &orig[..len]).unwrap();
        compare(&name, &format!("cut to {len} bytes"));
    }
    // Random header bytes: any answer but a panic (a panic fails the test).
    let orig = std::fs::read(d.join("d.qcow2")).unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..300 {
        let mut img = orig.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % 0x210) as usize;
            img[at] = (seed >> 32) as u8;
        }
        std::fs::write(d.join("m.qcow2"), &img).unwrap();
        let _ = ours(&["check", "m.qcow2"], d);
        let _ = ours(&["info", "m.qcow2"], d);
    }
    assert_all(failures, total);
}

#[test]
fn map_matches_for_qcow2() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", "b.qcow2", "64M"],
        d,
    );
    tool(
        "qemu-io",
        &[
            "-c",
            "write 0 200k",
            "-c",
            "write -c 1M 64k",
            "-c",
            "write -z 2M 64k",
            "b.qcow2",
        ],
        d,
    );
    tool(
        "qemu-img",
        &[
            "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2",
        ],
        d,
    );
    tool("qemu-io", &["-c", "write 64k 64k", "t.qcow2"], d);
    settle(d, &["b.qcow2", "t.qcow2"]);
    for args in [
        &["map", "b.qcow2"][..],
        &["map", "--output=json", "b.qcow2"],
        &["map", "t.qcow2"],
        &["map", "--output=json", "t.qcow2"],
        &["compare", "b.qcow2", "t.qcow2"],
    ] {
        assert_eq!(tool("qemu-img", args, d), ours(args, d), "{args:?}");
    }
}

/// Writes the files' dirty pages back, so that SEEK_DATA/SEEK_HOLE (which block status asks)
/// give qemu-img and us the same answer: ext4 reports unwritten extents differently before
/// and after writeback.
fn settle(dir: &Path, names: &[&str]) {
    for n in names {
        if let Ok(f) = std::fs::File::open(dir.join(n)) {
            let _ = f.sync_all();
        }
    }
}

/// Runs qemu-io with `cmds` on `img` (format probed), output discarded.
fn qio(dir: &Path, img: &str, cmds: &[&str]) {
    let mut args = Vec::new();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(img);
    let o = tool("qemu-io", &args, dir);
    assert_eq!(o.2, 0, "qemu-io {cmds:?} {img}: {o:?}");
}

fn qimg(dir: &Path, args: &[&str]) {
    let o = tool("qemu-img", args, dir);
    assert_eq!(o.2, 0, "qemu-img {args:?}: {o:?}");
}

/// Images made by the real tools: every cluster type (normal, compressed, zero plain and
/// allocated, unallocated), discards, backing chains of two and three layers of different
/// sizes, v2 and v3, 512 B to 2 MiB clusters, and raw images with holes. Returns the names
/// to look at.
fn map_corpus(d: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for (compat, cs) in [
        ("0.10", "512"),
        ("1.1", "512"),
        ("1.1", "4096"),
        ("0.10", "65536"),
        ("1.1", "65536"),
        ("1.1", "2M"),
    ] {
        let base = format!("base-{compat}-{cs}.qcow2");
        let mid = format!("mid-{compat}-{cs}.qcow2");
        let top = format!("top-{compat}-{cs}.qcow2");
        let o = format!("compat={compat},cluster_size={cs}");
        qimg(d, &["create", "-q", "-f", "qcow2", "-o", &o, &base, "8M"]);
        let v3 = compat == "1.1";
        let mut cmds = vec![
            "write -P 1 0 200k",
            "write -P 2 1M 3k",
            "write -c -P 3 2M 2M",
            "write -P 4 5M 128k",
        ];
        if v3 {
            cmds.extend(["write -z 5M 64k", "write -z -u 6M 64k", "discard 5184k 32k"]);
        }
        qio(d, &base, &cmds);
        qimg(
            d,
            &[
                "create", "-q", "-f", "qcow2", "-o", &o, "-b", &base, "-F", "qcow2", &mid, "6M",
            ],
        );
        qio(
            d,
            &mid,
            &["write -P 5 64k 64k", "write -P 6 3M 4k", "write -c 4M 2M"],
        );
        qimg(
            d,
            &[
                "create", "-q", "-f", "qcow2", "-o", &o, "-b", &mid, "-F", "qcow2", &top, "12M",
            ],
        );
        let mut cmds = vec![
            "write -P 7 100k 10k",
            "write -P 8 2100k 1k",
            "write -P 9 9M 64k",
        ];
        if v3 {
            cmds.extend(["write -z 0 64k", "discard 3M 64k"]);
        }
        qio(d, &top, &cmds);
        names.extend([base, mid, top]);
    }
    // raw: holes, data, an unaligned length; and a qcow2 on a raw backing file
    qimg(d, &["create", "-q", "-f", "raw", "r.img", "3M"]);
    qio(d, "r.img", &["write -P 1 64k 64k", "write -P 2 1M 1k"]);
    std::fs::write(d.join("odd.img"), vec![7u8; 1000]).unwrap();
    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            "r.img",
            "-F",
            "raw",
            "over-raw.qcow2",
        ],
    );
    qio(d, "over-raw.qcow2", &["write -P 3 0 4k"]);
    qimg(d, &["create", "-q", "-f", "qcow2", "empty.qcow2", "0"]);
    names.extend(["r.img", "odd.img", "over-raw.qcow2", "empty.qcow2"].map(String::from));
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    settle(d, &refs);
    names
}

#[test]
fn map_info_check_json_match_across_images() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    let names = map_corpus(d);
    // snapshots, and a dirty image (for info only: check would repair it)
    qimg(
        d,
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "lazy_refcounts=on",
            "snap.qcow2",
            "4M",
        ],
    );
    qimg(d, &["snapshot", "-c", "first", "snap.qcow2"]);
    qio(d, "snap.qcow2", &["write -P 1 0 64k"]);
    qimg(d, &["snapshot", "-c", "sec\"ond", "snap.qcow2"]);
    std::fs::copy(d.join("snap.qcow2"), d.join("dirty.qcow2")).unwrap();
    poke(&d.join("dirty.qcow2"), 79, 1, 1);
    settle(d, &["snap.qcow2", "dirty.qcow2"]);
    let mut failures = Vec::new();
    let mut total = 0;
    let mut seen = String::new();
    for args in [
        &["info", "--output=json", "dirty.qcow2"][..],
        &["info", "dirty.qcow2"],
        &["map", "--output=json", "dirty.qcow2"],
    ] {
        total += 1;
        let theirs = tool("qemu-img", args, d);
        seen.push_str(&theirs.0);
        if theirs != ours(args, d) {
            failures.push(format!(
                "{args:?}: qemu-img {theirs:?}\n  ours {:?}",
                ours(args, d)
            ));
        }
    }
    for n in names.iter().map(String::as_str).chain(["snap.qcow2"]) {
        let qcow2 = n.ends_with(".qcow2");
        let mut cases: Vec<Vec<&str>> = vec![
            vec!["map", n],
            vec!["map", "--output=json", n],
            vec!["map", "--output=json", "-s", "1M", "-l", "1500k", n],
            vec!["info", "--output=json", n],
        ];
        if qcow2 {
            cases.extend([
                vec!["info", "--output=json", "--backing-chain", n],
                vec!["check", "--output=json", n],
                vec!["map", "--output", "json", "-f", "qcow2", n],
            ]);
        }
        for args in cases {
            total += 1;
            let theirs = tool("qemu-img", &args, d);
            let mine = ours(&args, d);
            seen.push_str(&theirs.0);
            seen.push_str(&theirs.1);
            if theirs != mine {
                failures.push(format!(
                    "{args:?}:\n--- qemu-img\n{}{}[{}]\n--- ours\n{}{}[{}]",
                    theirs.0, theirs.1, theirs.2, mine.0, mine.1, mine.2
                ));
            }
        }
    }
    assert_all(failures, total);
    // the corpus shows what it is meant to show
    for want in [
        "\"depth\": 2",
        "\"compressed\": true",
        "\"present\": false",
        // data clusters over holes of the file read as zero (BDRV_BLOCK_RECURSE)
        "\"zero\": true, \"data\": true",
        "\"zero\": true, \"data\": false, \"compressed\": false, \"offset\"",
        "File contains external, encrypted or compressed clusters.",
        "\"snapshots\": [",
        "\"dirty-flag\": true",
        "\"backing-filename-format\": \"raw\"",
        "\"compat\": \"0.10\"",
        "base-1.1-4096.qcow2\n",
        "\"fragmented-clusters\"",
    ] {
        assert!(seen.contains(want), "no qemu-img output shows {want}");
    }
}

#[test]
fn map_and_json_option_errors_match() {
    if !have_qemu() {
        return;
    }
    let dir = crate::support::tempdir().unwrap();
    let d = dir.path();
    qimg(d, &["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    let cases: &[&[&str]] = &[
        &["map"],
        &["map", "a.qcow2", "b"],
        &["map", "--output=xml", "a.qcow2"],
        &["map", "--output"],
        &["map", "--f", "qcow2", "a.qcow2"],
        &["map", "--bogus", "a.qcow2"],
        &["map", "--outp=json", "a.qcow2"],
        &["map", "-s", "abc", "a.qcow2"],
        &["map", "-s", "-5", "a.qcow2"],
        &["map", "-l", "99999999999999999999", "a.qcow2"],
        &["map", "--start-offset=512k", "--max-length=100k", "a.qcow2"],
        &["map", "-s", "2M", "--output=json", "a.qcow2"],
        &["map", "missing.qcow2"],
        &["map", "--output=json", "-f", "raw", "a.qcow2"],
        &["check", "--output=xml", "a.qcow2"],
        &["check", "--output=json", "-q", "a.qcow2"],
        &["check", "--output=json", "--output=human", "a.qcow2"],
        &["info", "--output=xml", "a.qcow2"],
        &["info", "--output=json", "missing.qcow2"],
        &["info", "--output=json", "-f", "raw", "a.qcow2"],
    ];
    let mut failures = Vec::new();
    for args in cases {
        let theirs = tool("qemu-img", args, d);
        let mine = ours(args, d);
        if theirs != mine {
            failures.push(format!("{args:?}: qemu-img {theirs:?}\n  ours {mine:?}"));
        }
    }
    assert_all(failures, cases.len());
}
