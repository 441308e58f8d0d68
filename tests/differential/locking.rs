//! Image locking and qemu-img, run as whole programs: several qemu-io/qemu-img runs in a row,
//! optionally while another process holds the image open, compared with real QEMU byte for
//! byte (output after the iotests filters, exit statuses, files left).
//!
//! With a holder, each script runs three ways: QEMU holds and QEMU opens (the reference), QEMU
//! holds and ours opens, ours holds and QEMU opens. Both programs lock with OFD locks, so each
//! sees the other's locks. Without one, ours runs the script against QEMU's transcript.
//!
//! Arguments are bytes, so that names that are not UTF-8 reach both programs as raw bytes.

use crate::harness::filter;
use libtest_mimic::{Failed, Trial};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Program {
    Qemu,
    Ours,
}

/// One run: `qemu-io`/`qemu-img` (`io`/`img`) and its arguments.
struct Run {
    tool: &'static str,
    args: Vec<Vec<u8>>,
}

struct Script {
    name: &'static str,
    /// `qemu-img create ARGS` runs (real qemu-img) making the images first
    setup: Vec<Vec<Vec<u8>>>,
    /// qemu-io arguments of a process holding an image open meanwhile, and the image file
    holder: Option<(Vec<Vec<u8>>, &'static str)>,
    runs: Vec<Run>,
}

fn words(text: &str) -> Vec<Vec<u8>> {
    text.split(' ').map(|w| w.as_bytes().to_vec()).collect()
}

/// `io`/`img` with arguments split at spaces.
fn run(tool: &'static str, args: &str) -> Run {
    Run {
        tool,
        args: words(args),
    }
}

/// qemu-io with `-c` commands before the image (options first).
fn io(opts: &str, cmds: &[&str], image: &str) -> Run {
    let mut args = if opts.is_empty() { vec![] } else { words(opts) };
    for c in cmds {
        args.push(b"-c".to_vec());
        args.push(c.as_bytes().to_vec());
    }
    args.push(image.as_bytes().to_vec());
    Run { tool: "io", args }
}

fn command(program: Program, tool: &str, args: &[Vec<u8>], dir: &Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c");
    // Line-buffered, as the iotests run QEMU, so that stdout and stderr interleave causally
    // (ours follows stdbuf's setting as glibc does).
    match program {
        Program::Qemu => cmd.arg(format!(
            "exec timeout -s KILL 60 stdbuf -oL qemu-{tool} \"$@\" 2>&1"
        )),
        Program::Ours => cmd
            .arg(format!(
                "exec timeout -s KILL 60 stdbuf -oL \"$BF\" {tool} \"$@\" 2>&1"
            ))
            .env("BF", env!("CARGO_BIN_EXE_blockfault")),
    };
    cmd.arg("sh")
        .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
        .current_dir(dir);
    cmd
}

/// Whether another open file description holds a lock on `byte` of the file.
fn byte_locked(path: &Path, byte: i64) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    // SAFETY: plain data; l_pid must be 0 for OFD locks.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte;
    fl.l_len = 1;
    // SAFETY: F_OFD_GETLK fills the flock we own.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    r == 0 && fl.l_type != libc::F_UNLCK as libc::c_short
}

/// Starts the holder (commands on stdin, none given: it just keeps the image open) and waits
/// until it holds its "consistent read" lock, which every holder here takes.
fn start_holder(
    program: Program,
    args: &[Vec<u8>],
    file: &str,
    dir: &Path,
) -> Result<Child, String> {
    let mut child = command(program, "io", args, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting the holder: {e}"))?;
    let image = dir.join(file);
    let start = Instant::now();
    while !byte_locked(&image, 100) {
        if start.elapsed() > Duration::from_secs(20) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            return Err(format!("the {program:?} holder never locked {image:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Runs the script in a fresh directory: the transcript of every run (its command line, its
/// filtered output, its exit status), then the files left.
fn transcript(script: &Script, holder: Program, opener: Program) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    for args in &script.setup {
        let st = Command::new("qemu-img")
            .arg("create")
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("qemu-img create {args:?} failed"));
        }
    }
    let mut held = match &script.holder {
        Some((args, file)) => Some(start_holder(holder, args, file, dir.path())?),
        None => None,
    };
    let mut text = String::new();
    for r in &script.runs {
        let out = command(opener, r.tool, &r.args, dir.path())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        let shown: Vec<String> = r
            .args
            .iter()
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let output = blockfault::host_bytes::decode(&out.stdout)
            .unwrap_or_else(|_| String::from_utf8_lossy(&out.stdout).into_owned());
        text.push_str(&format!(
            "$ qemu-{} {}\n{}[exit {:?}]\n",
            r.tool,
            shown.join(" "),
            filter(&output, dir.path()),
            out.status.code()
        ));
    }
    if let Some(mut child) = held.take() {
        // End of input: the holder quits.
        drop(child.stdin.take());
        let _ = child.wait();
    }
    for (name, content) in crate::harness::snapshot(dir.path()) {
        text.push_str(&format!(
            "file {:?}: {} bytes, {:016x}\n",
            name,
            content.len(),
            fnv(&content)
        ));
    }
    Ok(text)
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn compare(script: &Script) -> Result<(), Failed> {
    let reference = transcript(script, Program::Qemu, Program::Qemu)?;
    let ways: &[(Program, Program, &str)] = if script.holder.is_some() {
        &[
            (
                Program::Qemu,
                Program::Ours,
                "QEMU holds the image, ours opens it",
            ),
            (
                Program::Ours,
                Program::Qemu,
                "ours holds the image, QEMU opens it",
            ),
        ]
    } else {
        &[(Program::Ours, Program::Ours, "ours")]
    };
    for &(holder, opener, what) in ways {
        let got = transcript(script, holder, opener)?;
        if got != reference {
            let diff = similar::TextDiff::from_lines(&reference, &got)
                .unified_diff()
                .header("qemu", what)
                .to_string();
            return Err(format!("{what}: differs from QEMU\n{diff}").into());
        }
    }
    Ok(())
}

const NESTED: &str = "blkverify:t.img:blkverify:t.img:t.img";

fn scripts() -> Vec<Script> {
    let qcow2 = || vec![words("-f qcow2 t.qcow2 1M")];
    let raw = || vec![words("-f raw t.img 1M")];
    let no_lock =
        r#"json:{"driver":"qcow2","file":{"driver":"file","filename":"t.qcow2","locking":"off"}}"#;
    let nested_no_lock = r#"json:{"driver":"blkverify","raw":{"driver":"file","filename":"t.img"},"test":{"driver":"blkverify","raw":{"driver":"file","filename":"t.img","locking":"off"},"test":{"driver":"file","filename":"t.img","locking":"off"}}}"#;
    let nested_locked = r#"json:{"driver":"blkverify","raw":{"driver":"file","filename":"t.img"},"test":{"driver":"blkverify","raw":{"driver":"file","filename":"t.img"},"test":{"driver":"file","filename":"t.img","locking":"on"}}}"#;
    vec![
        // One process opening one file three times: its own locks conflict.
        Script {
            name: "lock_nested_blkverify",
            setup: raw(),
            holder: None,
            runs: vec![
                io("", &["read 0 512"], NESTED),
                io("", &["read 0 512"], "blkverify:t.img:t.img"),
                io("-r", &["read 0 512"], NESTED),
                io("-r", &["write 0 512"], NESTED),
                io("-U", &["read 0 512"], NESTED),
                io("-U -r", &["read 0 512"], NESTED),
                io("", &["read 0 512"], nested_locked),
                io("", &["read 0 512"], nested_no_lock),
                io(
                    "",
                    &["open -r t.img", "close", "open t.img", "write 0 1"],
                    "t.img",
                ),
            ],
        },
        // A read-write qcow2 user: no second writer, no second reader unless -U.
        Script {
            name: "lock_qcow2_held_read_write",
            setup: qcow2(),
            holder: Some((words("t.qcow2"), "t.qcow2")),
            runs: vec![
                io("", &["read 0 512"], "t.qcow2"),
                io("-r", &["read 0 512"], "t.qcow2"),
                io("-U -r", &["read -P 0 0 512"], "t.qcow2"),
                io("-U", &["read 0 512"], "t.qcow2"),
                io("", &["read 0 512"], no_lock),
                io(
                    "-r",
                    &["open -r -U t.qcow2", "read 0 1", "close", "open -r t.qcow2"],
                    "t.qcow2",
                ),
                run("img", "info t.qcow2"),
                run("img", "info -U t.qcow2"),
                run("img", "info --output=json t.qcow2"),
                run(
                    "img",
                    r#"info json:{"driver":"qcow2","file":{"driver":"file","filename":"t.qcow2"}}"#,
                ),
                run(
                    "img",
                    r#"info -U json:{"driver":"qcow2","file":{"driver":"file","filename":"t.qcow2"}}"#,
                ),
                run("img", "info blkverify:t.qcow2:t.qcow2"),
                run("img", "check t.qcow2"),
                run("img", "check -U t.qcow2"),
                run("img", "check -U -r all t.qcow2"),
                run("img", "map t.qcow2"),
                run("img", "map -U --output=json t.qcow2"),
                run("img", "compare t.qcow2 t.qcow2"),
                run("img", "compare -U t.qcow2 t.qcow2"),
                // creating over it fails before it touches the file; a backing file is only read
                run("img", "create -f qcow2 t.qcow2 1M"),
                run("img", "create -f raw t.qcow2 64k"),
                run("img", "create -f qcow2 -b t.qcow2 -F qcow2 o.qcow2"),
            ],
        },
        // A read-only user: readers share it, writers don't; a reopen for writing fails.
        Script {
            name: "lock_qcow2_held_read_only",
            setup: qcow2(),
            holder: Some((words("-r t.qcow2"), "t.qcow2")),
            runs: vec![
                io("", &["read 0 512"], "t.qcow2"),
                io(
                    "-r",
                    &[
                        "read 0 512",
                        "reopen -w",
                        "write 0 512",
                        "reopen -r",
                        "read 0 1",
                    ],
                    "t.qcow2",
                ),
                io("-U -r", &["reopen -w"], "t.qcow2"),
                run("img", "info t.qcow2"),
                run("img", "check t.qcow2"),
                run("img", "check -r all t.qcow2"),
                run("img", "map t.qcow2"),
            ],
        },
        // A raw user shares everything: everyone else may read, write and resize.
        Script {
            name: "lock_raw_held_read_write",
            setup: raw(),
            holder: Some((words("-f raw t.img"), "t.img")),
            runs: vec![
                io("-f raw", &["write -P 7 0 512", "truncate 2M"], "t.img"),
                io("", &["read -P 7 0 512"], "blkverify:t.img:t.img"),
                io("", &["read 0 512"], NESTED),
                run("img", "info t.img"),
                run("img", "map --output=json t.img"),
                run("img", "create -f raw t.img 2M"),
                // the qcow2 open of the new image fails: the half-made image is deleted
                run("img", "create -f qcow2 t.img 1M"),
            ],
        },
        // raw with a size: its file is its data, which nobody else may resize
        Script {
            name: "lock_raw_with_size_held",
            setup: raw(),
            holder: Some((
                vec![br#"json:{"driver":"raw","size":512,"file":{"driver":"file","filename":"t.img"}}"#.to_vec()],
                "t.img",
            )),
            runs: vec![
                io("-f raw", &["write 0 512", "truncate 2M"], "t.img"),
                io("", &["read 0 512"], r#"json:{"driver":"raw","offset":512,"file":{"driver":"file","filename":"t.img"}}"#),
                run("img", "create -f raw t.img 2M"),
            ],
        },
    ]
}

/// iotests 153's matrix with a qemu-io in place of its guest: the image (over a backing file)
/// held read-write, read-only, or read-only with force-share, then every qemu-io open and
/// every qemu-img command of ours, with and without -U.
fn iotests_153() -> Vec<Script> {
    let holders: [(&'static str, &str); 3] = [
        ("lock_153_held_read_write", "t.qcow2"),
        ("lock_153_held_read_only", "-r t.qcow2"),
        ("lock_153_held_force_share", "-r -U t.qcow2"),
    ];
    holders
        .into_iter()
        .map(|(name, holder)| {
            let mut runs = Vec::new();
            for l in ["", "-U"] {
                let opt = |rest: &str| {
                    if l.is_empty() {
                        rest.to_string()
                    } else {
                        format!("{l} {rest}")
                    }
                };
                runs.push(io(&opt(""), &["read 0 512"], "t.qcow2"));
                runs.push(io(&opt("-r"), &["read 0 512"], "t.qcow2"));
                let open = format!("open {}", opt("t.qcow2"));
                let open_ro = format!("open -r {}", opt("t.qcow2"));
                runs.push(Run {
                    tool: "io",
                    args: [
                        b"-c".to_vec(),
                        open.into_bytes(),
                        b"-c".to_vec(),
                        b"read 0 512".to_vec(),
                    ]
                    .to_vec(),
                });
                runs.push(Run {
                    tool: "io",
                    args: [
                        b"-c".to_vec(),
                        open_ro.into_bytes(),
                        b"-c".to_vec(),
                        b"read 0 512".to_vec(),
                    ]
                    .to_vec(),
                });
                for cmd in ["info", "check", "compare", "map"] {
                    let mut args = vec![cmd.as_bytes().to_vec()];
                    if !l.is_empty() {
                        args.push(l.as_bytes().to_vec());
                    }
                    args.push(b"t.qcow2".to_vec());
                    if cmd == "compare" {
                        args.push(b"t.qcow2".to_vec());
                    }
                    runs.push(Run { tool: "img", args });
                }
                if l.is_empty() {
                    runs.push(run(
                        "img",
                        "create -f qcow2 t.qcow2 -b t.qcow2.base -F qcow2",
                    ));
                }
            }
            Script {
                name,
                setup: vec![
                    words("-f qcow2 t.qcow2.base 32M"),
                    words("-f qcow2 -b t.qcow2.base -F qcow2 t.qcow2"),
                ],
                holder: Some((words(holder), "t.qcow2")),
                runs,
            }
        })
        .collect()
}

/// qemu-img with names that are not UTF-8: the files they name, printed back as raw bytes.
fn non_utf8_img() -> Script {
    let b = |parts: &[&[u8]]| parts.concat();
    let img = |args: Vec<Vec<u8>>| Run { tool: "img", args };
    let base: &[u8] = b"\xff.qcow2";
    let over: &[u8] = b"o\xfe\x80.qcow2";
    let raw: &[u8] = b"r\xe9.img";
    Script {
        name: "img_non_utf8_names",
        setup: vec![],
        holder: None,
        runs: vec![
            img(vec![
                b"create".to_vec(),
                b"-f".to_vec(),
                b"qcow2".to_vec(),
                base.to_vec(),
                b"1M".to_vec(),
            ]),
            img(vec![
                b"create".to_vec(),
                b"-f".to_vec(),
                b"raw".to_vec(),
                raw.to_vec(),
                b"64k".to_vec(),
            ]),
            img(vec![b"info".to_vec(), base.to_vec()]),
            img(vec![
                b"info".to_vec(),
                b"--output=json".to_vec(),
                raw.to_vec(),
            ]),
            img(vec![
                b"create".to_vec(),
                b"-f".to_vec(),
                b"qcow2".to_vec(),
                b"-b".to_vec(),
                base.to_vec(),
                b"-F".to_vec(),
                b"qcow2".to_vec(),
                over.to_vec(),
            ]),
            img(vec![
                b"create".to_vec(),
                b"-f".to_vec(),
                b"qcow2".to_vec(),
                b"-o".to_vec(),
                b(&[b"backing_file=", raw, b",backing_fmt=raw"]),
                b"o2.qcow2".to_vec(),
            ]),
            img(vec![
                b"info".to_vec(),
                b"--backing-chain".to_vec(),
                over.to_vec(),
            ]),
            img(vec![b"info".to_vec(), b"o2.qcow2".to_vec()]),
            img(vec![
                b"info".to_vec(),
                b"--output=json".to_vec(),
                over.to_vec(),
            ]),
            img(vec![b"check".to_vec(), over.to_vec()]),
            img(vec![
                b"check".to_vec(),
                b"--output=json".to_vec(),
                base.to_vec(),
            ]),
            img(vec![b"map".to_vec(), over.to_vec()]),
            img(vec![
                b"map".to_vec(),
                b"--output=json".to_vec(),
                b"o2.qcow2".to_vec(),
            ]),
            img(vec![b"compare".to_vec(), base.to_vec(), over.to_vec()]),
            img(vec![
                b"compare".to_vec(),
                raw.to_vec(),
                b"o2.qcow2".to_vec(),
            ]),
            // errors naming such files
            img(vec![b"info".to_vec(), b"n\xffm.qcow2".to_vec()]),
            img(vec![b"check".to_vec(), b"n\xffm.qcow2".to_vec()]),
            img(vec![
                b"compare".to_vec(),
                base.to_vec(),
                b"n\xffm.qcow2".to_vec(),
            ]),
            img(vec![
                b"create".to_vec(),
                b"-f".to_vec(),
                b"qcow2".to_vec(),
                b"-b".to_vec(),
                b"gone\xff.qcow2".to_vec(),
                b"-F".to_vec(),
                b"qcow2".to_vec(),
                b"x.qcow2".to_vec(),
            ]),
            img(vec![
                b"create".to_vec(),
                b"-f".to_vec(),
                b"qcow2".to_vec(),
                b"-b".to_vec(),
                base.to_vec(),
                base.to_vec(),
            ]),
            Run {
                tool: "io",
                args: vec![b"-c".to_vec(), b"read -P 0 0 512".to_vec(), over.to_vec()],
            },
        ],
    }
}

pub fn trials() -> Vec<Trial> {
    let mut all = scripts();
    all.extend(iotests_153());
    all.push(non_utf8_img());
    all.into_iter()
        .map(|s| Trial::test(format!("diff::{}", s.name), move || compare(&s)))
        .collect()
}
