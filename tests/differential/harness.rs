//! The machinery of the differential suite: setting up a scratch directory, running the real
//! qemu-io and our engine on it, and the iotests output filter.

use blockfault::host_bytes::{self, host_path};
use blockfault::output::Capture;
use blockfault::qemu_io::{self, Invocation};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::rc::Rc;

/// Size of every standard image: small enough to write quickly, big enough for `map` to be
/// interesting.
pub const IMG_SIZE: u64 = 1 << 20;

/// Byte offset at which `test.img` differs from `raw.img` (blkverify's contents mismatch).
pub const TEST_IMG_DIFF_AT: u64 = 700;

/// One command sequence, run with the same arguments through qemu-io and through our engine.
pub struct Case {
    pub name: String,
    /// qemu-io's argv without the program name
    pub args: Vec<String>,
    /// extra files (blkdebug configs, ...) written next to the standard images
    pub files: Vec<(String, Vec<u8>)>,
    /// why the case is currently expected to fail (it is then reported as ignored)
    pub ignore: Option<String>,
    /// run in a scratch directory under this folder, where it exists (default: the system's
    /// temp folder)
    pub scratch_parent: Option<&'static str>,
}

/// `case("name", &["-f", "raw", "-c", "read 0 512", "img.raw"])`
pub fn case(name: &str, args: &[&str]) -> Case {
    Case {
        name: name.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        files: Vec::new(),
        ignore: None,
        scratch_parent: None,
    }
}

impl Case {
    pub fn file(self, name: &str, content: &str) -> Self {
        self.bytes(name, content.as_bytes().to_vec())
    }

    /// An extra file with binary contents (an image).
    pub fn bytes(mut self, name: &str, content: Vec<u8>) -> Self {
        self.files.push((name.to_string(), content));
        self
    }

    /// Runs in tmpfs (`/dev/shm`, where scenarios run) when the machine has it: O_DIRECT
    /// behaves differently there than on a disk filesystem.
    pub fn on_tmpfs(mut self) -> Self {
        self.scratch_parent = Some("/dev/shm");
        self
    }

    /// A fresh scratch directory for this case.
    pub fn scratch(&self) -> tempfile::TempDir {
        match self.scratch_parent {
            Some(parent) if std::path::Path::new(parent).is_dir() => {
                tempfile::tempdir_in(parent).unwrap()
            }
            _ => tempfile::tempdir().unwrap(),
        }
    }

    /// Marks a known difference while it is being fixed (no case carries one today).
    #[allow(dead_code)]
    pub fn ignore(mut self, reason: &str) -> Self {
        self.ignore = Some(reason.to_string());
        self
    }
}

/// Writes the files every case starts with. The images are sparse and zeroed, like
/// `qemu-img create -f raw`, so every run starts from the same data.
pub fn populate(dir: &Path, extra: &[(String, Vec<u8>)]) {
    let sized = |name: &str, size: u64| {
        let f = fs::File::create(dir.join(name)).unwrap();
        f.set_len(size).unwrap();
    };
    // The image most cases use, and blkverify's raw reference.
    sized("img.raw", IMG_SIZE);
    sized("raw.img", IMG_SIZE);
    // A reference shorter than the test image: reads past its end see zeroes.
    sized("half.img", IMG_SIZE / 2);
    // blkverify's test image: equal to raw.img except for one byte.
    let mut test = vec![0u8; IMG_SIZE as usize];
    test[TEST_IMG_DIFF_AT as usize] = 1;
    fs::write(dir.join("test.img"), test).unwrap();
    // `write -s` sources: printable and non-printable bytes, for the -v ASCII column too.
    fs::write(
        dir.join("src.bin"),
        b"blockfault write -s source\x01\x7f~Z9\n",
    )
    .unwrap();
    fs::write(dir.join("empty.bin"), b"").unwrap();
    for (name, content) in extra {
        fs::write(dir.join(host_path(name)), content).unwrap();
    }
}

/// Contents of every file of a scratch directory, to check both programs left the same data.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                host_bytes::decode_arg(&e.file_name()).expect("a file name the cases made"),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// Why the real programs can't be run, if they can't.
pub fn missing_tools() -> Option<String> {
    for tool in ["qemu-io", "qemu-img", "stdbuf", "timeout"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` is not in PATH"));
        }
    }
    None
}

/// Runs the real qemu-io as the iotests do (`stdbuf -oL qemu-io ARGS 2>&1`, stdin null) in `dir`;
/// returns the combined output and the exit status (128 + signal for a signal death, like a shell).
pub fn run_qemu(dir: &Path, args: &[String]) -> (String, i32) {
    run_qemu_with_timeout(dir, args, std::time::Duration::from_secs(60))
}

/// [`run_qemu`], killing qemu-io with SIGKILL after `timeout` (the status is then 137).
pub fn run_qemu_with_timeout(
    dir: &Path,
    args: &[String],
    timeout: std::time::Duration,
) -> (String, i32) {
    let secs = timeout.as_secs_f64();
    // stdbuf makes stdout line-buffered so that the interleaving with stderr is causal, which is
    // what our engine models; `timeout` keeps a case that hangs from hanging the suite.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec timeout -s KILL {secs} stdbuf -oL qemu-io \"$@\" 2>&1"
        ))
        .arg("sh")
        // our engine's text for bytes that are not UTF-8 (an image name) back to those bytes
        .args(args.iter().map(|a| host_path(a)))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("running qemu-io");
    use std::os::unix::process::ExitStatusExt;
    let status = out
        .status
        .code()
        .or_else(|| out.status.signal().map(|s| 128 + s))
        .unwrap();
    // QEMU's raw bytes as our engine's text carries them, so that comparing the texts compares
    // the bytes; a reserved character in it means the case gave qemu-io our text, not bytes
    let text = host_bytes::decode(&out.stdout).expect("qemu-io printed a reserved character");
    (text, status)
}

/// A case's argv as an [`Invocation`], when it is written in the plain forms (`-f X`, `-r`,
/// `--object X`, ..., one image) that the runner's API spells out; None otherwise (clustered
/// or abbreviated options, errors, `--help`...). Options that can fail must come in the order
/// [`qemu_io::run`] applies them (`-t -d -i --object -T`).
pub fn invocation(args: &[String]) -> Option<Invocation> {
    use blockfault::qemu_io::session::AioMode;
    let mut inv = Invocation::default();
    let mut aio = AioMode::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned();
        match a.as_str() {
            "-f" => inv.format = Some(value()?),
            "-t" => {
                inv.cache = Some(value()?);
                inv.nocache = false;
            }
            "-c" => inv.commands.push(value()?),
            "--image-opts" => inv.image_opts = true,
            "-r" => inv.read_only = true,
            "-s" => inv.snapshot = true,
            "-n" => inv.nocache = true,
            "-C" => inv.copy_on_read = true,
            "-U" => inv.force_share = true,
            "-m" => {}
            "-d" => inv.discard = Some(value()?),
            "-k" => aio = AioMode::Native,
            "-i" => aio = aio.apply(&value()?)?,
            "-T" => inv.trace.push(value()?),
            "--object" => inv.objects.push(value()?),
            _ if a.starts_with('-') || inv.drive.is_some() => return None,
            _ => inv.drive = Some(a.clone()),
        }
    }
    inv.aio = match aio {
        AioMode::Threads => None,
        AioMode::Native => Some("native".into()),
        AioMode::IoUring => Some("io_uring".into()),
    };
    Some(inv)
}

/// Runs our engine in-process on `dir` as `qemu-io ARGS </dev/null`. Where the runner's API
/// can express the arguments, it runs them that way too, in a copy of `dir` made first, and the
/// two must agree: the API and the command line are the same qemu-io.
pub fn run_ours(dir: &Path, args: &[String]) -> (String, i32) {
    let twin = invocation(args).map(|inv| {
        // beside the original: the filesystem decides O_DIRECT's alignment
        let copy = match dir.parent() {
            Some(parent) => tempfile::tempdir_in(parent).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        for (name, data) in snapshot(dir) {
            fs::write(copy.path().join(host_path(&name)), data).unwrap();
        }
        (inv, copy)
    });
    let cap = Rc::new(RefCell::new(Capture::default()));
    let status = qemu_io::main(args, dir, cap.clone(), &mut std::io::empty());
    let out = cap.borrow().combined.clone();
    if let Some((inv, copy)) = twin {
        let cap = Rc::new(RefCell::new(Capture::default()));
        let api_status = qemu_io::run(&inv, copy.path(), cap.clone());
        let api_out = filter(&cap.borrow().combined, copy.path());
        assert_eq!(
            (filter(&out, dir), status),
            (api_out, api_status),
            "the command line (left) and qemu_io::run on {inv:?} (right) differ"
        );
    }
    (out, status)
}

/// `_filter_qemu_io` and `_filter_testdir`, plus one addition of ours for the `-C` one-line
/// report, which has timings too (the iotests never use `-C`).
pub fn filter(text: &str, test_dir: &Path) -> String {
    let text = text
        .replace('\r', "")
        .replace(&*test_dir.to_string_lossy(), "TEST_DIR");
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        let body = body.replace("qemu-io> ", "");
        let body = filter_stats(&body).unwrap_or_else(|| filter_csv(&body).unwrap_or(body));
        let body = filter_node_names(&body);
        out.push_str(&body);
        out.push_str(nl);
    }
    out
}

/// QEMU's generated node names (`#block`, a counter, two random digits): the random digits go,
/// the counter stays compared.
fn filter_node_names(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("#block") {
        let (head, tail) = rest.split_at(i + "#block".len());
        out.push_str(head);
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits >= 3 {
            out.push_str(&tail[..digits - 2]);
            out.push_str("RR");
        } else {
            out.push_str(&tail[..digits]);
        }
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// The first stats match, as sed's
/// `s/[0-9]* ops\; [0-9/:. sec]* ([0-9/.inf]* [EPTGMKiBbytes]*\/sec and [0-9/.inf]* ops\/sec)/X ops\; XX:XX:XX.X (XXX YYY\/sec and XXX ops\/sec)/`.
/// Every character class is followed by a character outside it, so greedy scanning without
/// backtracking matches exactly what the regex matches.
fn filter_stats(line: &str) -> Option<String> {
    let b = line.as_bytes();
    let mut search = 0;
    while let Some(rel) = line[search..].find(" ops; ") {
        let ops = search + rel;
        search = ops + 1;
        let mut start = ops;
        while start > 0 && b[start - 1].is_ascii_digit() {
            start -= 1;
        }
        let span = |from: usize, class: &dyn Fn(u8) -> bool| {
            let mut i = from;
            while i < b.len() && class(b[i]) {
                i += 1;
            }
            i
        };
        let num = |c: u8| c.is_ascii_digit() || b"/.inf".contains(&c);
        let lit = |at: usize, s: &str| line[at..].starts_with(s).then_some(at + s.len());
        let i = span(ops + 6, &|c| c.is_ascii_digit() || b"/:. sec".contains(&c));
        let Some(i) = lit(i, "(") else { continue };
        let i = span(i, &num);
        let Some(i) = lit(i, " ") else { continue };
        let i = span(i, &|c| b"EPTGMKiBbytes".contains(&c));
        let Some(i) = lit(i, "/sec and ") else {
            continue;
        };
        let i = span(i, &num);
        let Some(end) = lit(i, " ops/sec)") else {
            continue;
        };
        return Some(format!(
            "{}X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec){}",
            &line[..start],
            &line[end..]
        ));
    }
    None
}

/// `-C` reports: `<total>,<count>,<H:MM:SS.ss>,<bytes/sec>,<ops/sec>`; keep the first two.
fn filter_csv(line: &str) -> Option<String> {
    let f: Vec<&str> = line.split(',').collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let rate = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_digit() || b".inf-".contains(&c))
    };
    let time =
        |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit() || b":.".contains(&c));
    (f.len() == 5 && digits(f[0]) && digits(f[1]) && time(f[2]) && rate(f[3]) && rate(f[4]))
        .then(|| format!("{},{},X:XX:XX.XX,XXX,XXX", f[0], f[1]))
}

/// The filter's own examples (run as a trial of the suite, which has no libtest harness).
pub fn filter_self_check() {
    assert_eq!(
        filter_node_names("node '#block123' and '#block1045' and #block7"),
        "node '#block1RR' and '#block10RR' and #block7"
    );
    let d = Path::new("/tmp/x");
    assert_eq!(
        filter(
            "4 KiB, 1 ops; 00.00 sec (3.403 MiB/sec and 871.2684 ops/sec)\n",
            d
        ),
        "4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)\n"
    );
    assert_eq!(
        filter(
            "512 bytes, 1 ops; 0:37:15.32 (1.832397 bytes/sec and 0.0004 ops/sec)",
            d
        ),
        "512 bytes, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)"
    );
    assert_eq!(
        filter(
            "0 bytes, 1 ops; 00.00 sec (0 bytes/sec and inf ops/sec)\n",
            d
        ),
        "0 bytes, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)\n"
    );
    assert_eq!(
        filter("512,1,0:00:00.00,8056141.234,15734.651\n", d),
        "512,1,X:XX:XX.XX,XXX,XXX\n"
    );
    assert_eq!(filter("qemu-io> open /tmp/x/a\n", d), "open TEST_DIR/a\n");
    // Not a stats line: left alone.
    assert_eq!(
        filter("read 512/512 bytes at offset 0\n", d),
        "read 512/512 bytes at offset 0\n"
    );
}
