//! The runner's command line, driven as a user would: the built binary in a temporary project.
//! Scenarios here only `echo`, so their output does not depend on the engine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        Project {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn write(&self, rel: &str, text: &str) -> &Project {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
        self
    }

    fn echo(&self, name: &str, line: &str) -> &Project {
        self.write(
            &format!("scenarios/{name}.yaml"),
            &format!("description: says {line}\nsteps:\n  - echo: {line}\n"),
        )
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// The binary in the project folder, with a scratch root of the project's own (so that
    /// what is left behind can be seen) and these extra environment variables.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_blockfault"));
        std::fs::create_dir_all(self.path("scratch")).unwrap();
        c.args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .env("BLOCKFAULT_SCRATCH", self.path("scratch"));
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        Run::from(self.command(args, env).output().expect("runs"))
    }

    /// Scratch directories left in the project's scratch root.
    fn scratch_left(&self) -> Vec<String> {
        std::fs::read_dir(self.path("scratch"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.path(rel)).ok()
    }

    /// Every file under `rel`, relative, sorted.
    fn files(&self, rel: &str) -> Vec<String> {
        let root = self.path(rel);
        let mut v: Vec<String> = walkdir::WalkDir::new(&root)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| {
                e.path()
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// The report with per-scenario times blanked, so that runs can be compared.
fn untimed(report: &str) -> String {
    report
        .lines()
        .map(|l| match l.rfind(" (") {
            Some(i) if l.ends_with("s)") => format!("{} (T)", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn yaml_syntax_error_names_file_line_column_and_exits_2() {
    let p = Project::new();
    p.echo("fine", "ok");
    p.write("scenarios/broken.yaml", "description: x\n  steps: []\n");
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "", "nothing runs when a scenario is malformed");
    insta::assert_snapshot!(r.stderr, @"error: scenarios/broken.yaml:2:8: mapping values are not allowed in this context");
}

#[test]
fn unknown_key_names_file_line_column_and_allowed_keys() {
    let p = Project::new();
    p.write(
        "scenarios/typo.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive: t.img\n      comands: [read 0 1]\n",
    );
    p.write("scenarios/top.yaml", "description: x\nstep: []\n");
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr, @r"
    error: scenarios/top.yaml:2:1: unknown field `step`, expected one of `description`, `matrix`, `files`, `images`, `steps`, `sweep`, `requires`, `skip`, `backends`, `reason`
    error: scenarios/typo.yaml:5:7: steps[0].qemu-io: unknown field `comands`, expected one of `drive`, `format`, `cache`, `image-opts`, `commands`, `trace`
    ");
}

#[test]
fn paths_outside_the_scratch_dir_are_rejected() {
    let p = Project::new();
    p.write(
        "scenarios/escape.yaml",
        "description: x\nfiles: {../evil: x}\nsteps: []\n",
    );
    p.write(
        "scenarios/abs.yaml",
        "description: x\nimages: [{name: /tmp/evil.img, format: raw, size: 1M}]\nsteps: []\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("scenarios/escape.yaml: files: `../evil` must be a relative path"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("scenarios/abs.yaml: images: `/tmp/evil.img` must be a relative path"),
        "{}",
        r.stderr
    );
}

#[test]
fn missing_golden_fails_showing_output_then_bless_makes_it_pass() {
    let p = Project::new();
    p.echo("a/hello", "hello world");
    std::fs::create_dir_all(p.path("golden/a")).unwrap();
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("FAIL a/hello"), "{}", r.stdout);
    assert!(
        r.stdout.contains("no golden file golden/a/hello.out"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("+hello world"),
        "the actual output is shown: {}",
        r.stdout
    );
    assert!(
        r.stdout.ends_with("0 passed, 1 failed, 0 skipped\n"),
        "{}",
        r.stdout
    );
    assert_eq!(
        p.read("golden/a/hello.out.new").as_deref(),
        Some("hello world\n")
    );

    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(
        p.read("golden/a/hello.out").as_deref(),
        Some("hello world\n")
    );
    assert_eq!(
        p.files("golden"),
        ["a/hello.out"],
        "no temp file or .out.new is left behind"
    );

    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("pass a/hello ("), "{}", r.stdout);
    assert!(
        r.stdout.ends_with("\n1 passed, 0 failed, 0 skipped\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn out_new_is_written_on_failure_and_removed_on_pass() {
    let p = Project::new();
    p.echo("s", "new text");
    p.write("golden/s.out", "old text\n");
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stdout.contains("-old text\n") && r.stdout.contains("+new text\n"),
        "{}",
        r.stdout
    );
    assert_eq!(
        p.read("golden/s.out").as_deref(),
        Some("old text\n"),
        "golden untouched without --bless"
    );
    assert_eq!(p.read("golden/s.out.new").as_deref(), Some("new text\n"));

    p.write("golden/s.out", "new text   \n");
    let r = p.run(&["scenarios"]);
    assert_eq!(
        r.code, 0,
        "trailing whitespace is not significant: {}",
        r.stdout
    );
    assert_eq!(p.files("golden"), ["s.out"]);
    assert_eq!(
        p.read("golden/s.out").as_deref(),
        Some("new text   \n"),
        "a pass never rewrites the golden"
    );
}

#[test]
fn reports_do_not_depend_on_jobs() {
    let p = Project::new();
    for i in 0..24 {
        p.echo(&format!("d{}/s{i:02}", i % 3), &format!("line {i}"));
        if i % 5 != 0 {
            p.write(
                &format!("golden/d{}/s{i:02}.out", i % 3),
                &format!("line {i}\n"),
            );
        } else {
            p.write(
                &format!("golden/d{}/s{i:02}.out", i % 3),
                "something else\n",
            );
        }
    }
    let one = p.run(&["-j", "1", "scenarios"]);
    let eight = p.run(&["-j", "8", "scenarios"]);
    assert_eq!(one.code, 1);
    assert_eq!(eight.code, 1);
    assert_eq!(untimed(&one.stdout), untimed(&eight.stdout));
    assert!(
        one.stdout.ends_with("\n19 passed, 5 failed, 0 skipped\n"),
        "{}",
        one.stdout
    );
}

#[test]
fn matrix_cases_get_headers_in_order() {
    let p = Project::new();
    p.write(
        "scenarios/m.yaml",
        "description: m\nmatrix:\n  a: [1, 2]\n  b: [x, y]\nfiles:\n  f-${a}.txt: ${b}\nsteps:\n  - echo: a=${a} b=${b}\n",
    );
    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    insta::assert_snapshot!(p.read("golden/m.out").unwrap(), @r"
    [case a=1 b=x]
    a=1 b=x
    [case a=1 b=y]
    a=1 b=y
    [case a=2 b=x]
    a=2 b=x
    [case a=2 b=y]
    a=2 b=y
    ");
}

#[test]
fn unknown_matrix_name_is_an_input_error() {
    let p = Project::new();
    p.write(
        "scenarios/m.yaml",
        "description: m\nmatrix: {a: [1]}\nsteps:\n  - echo: ${b}\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("`${b}` is not a matrix key"),
        "{}",
        r.stderr
    );
}

#[test]
fn list_filter_and_shards() {
    let p = Project::new();
    for n in [
        "blkdebug/once",
        "blkdebug/sticky",
        "qemu-io/read",
        "qemu-io/write",
    ] {
        p.echo(n, "x");
    }
    let r = p.run(&["--list", "scenarios"]);
    assert_eq!(
        r.stdout,
        "blkdebug/once\nblkdebug/sticky\nqemu-io/read\nqemu-io/write\n"
    );
    assert_eq!(
        p.run(&["--list", "-k", "sti", "scenarios"]).stdout,
        "blkdebug/sticky\n"
    );
    assert_eq!(
        p.run(&["--list", "-k", "*/[rw]*", "scenarios"]).stdout,
        "qemu-io/read\nqemu-io/write\n"
    );
    let a = p.run(&["--list", "--shard", "1/2", "scenarios"]).stdout;
    let b = p.run(&["--list", "--shard", "2/2", "scenarios"]).stdout;
    assert_eq!(a, "blkdebug/once\nqemu-io/read\n");
    assert_eq!(b, "blkdebug/sticky\nqemu-io/write\n");
    assert_eq!(p.run(&["--shard", "3/2", "scenarios"]).code, 2);
}

#[test]
fn skips_say_why_and_count() {
    let p = Project::new();
    p.write(
        "scenarios/s.yaml",
        "description: s\nskip: not today\nsteps: []\n",
    );
    p.write(
        "scenarios/q.yaml",
        "description: q\nbackends: [qemu]\nreason: only QEMU does this\nsteps: []\n",
    );
    p.write(
        "scenarios/r.yaml",
        "description: r\nrequires: [vmdk]\nsteps: []\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 0);
    insta::assert_snapshot!(r.stdout, @r"
    skip q: not for the builtin backend: only QEMU does this
    skip r: requires vmdk
    skip s: not today
    0 passed, 0 failed, 3 skipped
    ");
}

#[test]
fn orphan_goldens_are_listed() {
    let p = Project::new();
    p.echo("here", "x");
    p.write("golden/here.out", "x\n");
    p.write("golden/gone.out", "y\n");
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .contains("orphan golden file (no scenario): golden/gone.out"),
        "{}",
        r.stdout
    );
}

#[test]
fn junit_report() {
    let p = Project::new();
    p.echo("a/ok", "x");
    p.write("golden/a/ok.out", "x\n");
    p.echo("a/bad", "y");
    let r = p.run(&["--junit", "report.xml", "scenarios"]);
    assert_eq!(r.code, 1);
    let xml = p.read("report.xml").unwrap();
    assert!(
        xml.contains(r#"tests="2" failures="1" errors="0" skipped="0""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<testcase classname="a" name="ok""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"<failure message="no golden file">"#),
        "{xml}"
    );
}

#[test]
fn golden_dir_override_and_missing_paths() {
    let p = Project::new();
    p.write("elsewhere/x.yaml", "description: x\nsteps:\n  - echo: x\n");
    assert_eq!(
        p.run(&["elsewhere"]).code,
        2,
        "no scenarios/ ancestor and no --golden"
    );
    let r = p.run(&["--golden", "g", "--bless", "elsewhere"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(p.read("g/x.out").as_deref(), Some("x\n"));
    let r = p.run(&["does-not-exist"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("does-not-exist"), "{}", r.stderr);
}

#[test]
fn schema_is_draft_07() {
    let out = Command::new(env!("CARGO_BIN_EXE_blockfault"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["$schema"], "http://json-schema.org/draft-07/schema#");
    insta::assert_snapshot!("schema", text);
}

#[test]
fn io_and_img_pass_arguments_through() {
    // `--help`-like and dash-leading arguments must reach the engine untouched, not clap.
    let p = Project::new();
    for sub in ["io", "img"] {
        let out = Command::new(env!("CARGO_BIN_EXE_blockfault"))
            .args([sub, "-f", "raw", "--bogus-flag", "-c", "read 0 1"])
            .current_dir(p.dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("Usage: blockfault"),
            "clap must not parse {sub}'s arguments: {stderr}"
        );
    }
}

#[test]
fn io_into_a_pipe_holds_stdout_back_as_qemu_io_does() {
    // ./check pipes qemu-io's stdout and stderr together: stdout is block-buffered there, so
    // an error printed after a command's output comes first; `sigraise` flushes first, and
    // `abort` loses what was held back.
    if Command::new("qemu-io").arg("--version").output().is_err() {
        eprintln!("skipped: qemu-io not installed");
        return;
    }
    let p = Project::new();
    std::fs::write(p.path("t.img"), vec![0u8; 1 << 20]).unwrap();
    let sessions = [
        "-c 'read 0 512' -c 'open -o driver=nope t.img' -c 'read 0 512'",
        "-c 'read 0 512' -c 'sigraise 13' -c 'open -o driver=nope t.img'",
        "-c 'read 0 512' -c abort",
    ];
    let run = |prog: &str, args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{prog} -f raw {args} t.img 2>&1 | cat"))
            .current_dir(p.dir.path())
            .output()
            .unwrap();
        // the timing line varies from run to run
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split(" ops; ").next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let ours = format!("{} io", env!("CARGO_BIN_EXE_blockfault"));
    for s in sessions {
        assert_eq!(run(&ours, s), run("qemu-io", s), "{s}");
    }
    assert_eq!(
        run(&ours, sessions[0])[0],
        "qemu-io: file open already, try 'help close'"
    );
}

#[test]
fn a_panic_fails_its_scenario_only_and_the_run_goes_on() {
    let p = Project::new();
    p.echo("a/boom", "boom");
    p.write("golden/a/boom.out", "boom\n");
    for n in ["b", "c", "d"] {
        p.echo(&format!("a/{n}"), n);
        p.write(&format!("golden/a/{n}.out"), &format!("{n}\n"));
    }
    let r = p.run_with(
        &["-j", "2", "--junit", "report.xml", "scenarios"],
        &[("BLOCKFAULT_TEST_PANIC", "boom")],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let report = untimed(&r.stdout);
    let at = report.find("execute.rs:").expect("the panic's place") + "execute.rs:".len();
    let end = at + report[at..].find(": ").unwrap();
    let report = format!("{}LINE{}", &report[..at], &report[end..]);
    insta::assert_snapshot!(report, @r#"
    pass a/b (T)
    FAIL a/boom (T)
        panicked at runner/execute.rs:LINE: test hook: echo "boom" panics on purpose
    pass a/c (T)
    pass a/d (T)
    3 passed, 1 failed, 0 skipped
    "#);
    assert_eq!(r.stderr, "", "the panic is in the report, not on stderr");
    let xml = p.read("report.xml").expect("the JUnit file is written");
    assert!(xml.contains(r#"tests="4" failures="1""#), "{xml}");
    assert!(p.scratch_left().is_empty(), "{:?}", p.scratch_left());
}

/// SIGINT and SIGTERM stop the run: QEMU's children die with it, scratch directories go, the
/// report so far is printed, and the status is 128 + the signal.
#[test]
fn signals_stop_the_run_kill_children_and_clean_up() {
    for (signal, code, name) in [
        (libc::SIGINT, 130, "SIGINT"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        let p = Project::new();
        p.echo("a/first", "first");
        p.write("golden/a/first.out", "first\n");
        p.write(
            "scenarios/b/hang.yaml",
            "description: a step that never ends\nsteps:\n  - qemu-io:\n      commands: [sleep 1000000]\n",
        );
        p.echo("c/never", "never");
        // A stand-in for qemu-io that says where it is, then waits forever.
        p.write(
            "fake-qemu-io",
            &format!(
                "#!/bin/sh\necho $$ > {}\nexec sleep 1000000\n",
                p.path("child.pid").display()
            ),
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            p.path("fake-qemu-io"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let fake = p.path("fake-qemu-io");
        let child = p
            .command(
                &["-j", "1", "--backend", "qemu", "scenarios"],
                &[("QEMU_IO", fake.to_str().unwrap())],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid_file = p.path("child.pid");
        let mut waited = 0;
        while p.read("child.pid").is_none_or(|t| !t.ends_with('\n')) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            waited += 1;
            assert!(waited < 3000, "the fake qemu-io never started");
        }
        let qemu_pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        unsafe { libc::kill(child.id() as i32, signal) };
        let r = Run::from(child.wait_with_output().unwrap());
        assert_eq!(r.code, code, "{name}: {}{}", r.stdout, r.stderr);
        assert_eq!(
            untimed(&r.stdout),
            format!(
                "pass a/first (T)\n1 passed, 0 failed, 0 skipped\ninterrupted by {name}: 2 of 3 scenarios not run"
            )
        );
        // The child is gone (kill(pid, 0) fails), not reparented to init.
        let alive = unsafe { libc::kill(qemu_pid, 0) } == 0;
        assert!(
            !alive,
            "{name}: the qemu-io stand-in {qemu_pid} outlived the run"
        );
        assert!(
            p.scratch_left().is_empty(),
            "{name}: {:?}",
            p.scratch_left()
        );
        assert!(!p.path("golden/b").exists(), "nothing is judged");
    }
}

#[test]
fn names_and_golden_paths_do_not_depend_on_the_working_directory() {
    let p = Project::new();
    p.echo("mine/x", "hi");
    let inside = |args: &[&str]| {
        let out = p
            .command(args, &[])
            .current_dir(p.path("scenarios/mine"))
            .output()
            .unwrap();
        Run::from(out)
    };
    let r = inside(&["--bless", "."]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        untimed(&r.stdout),
        "bless mine/x (T)\n1 passed, 0 failed, 0 skipped"
    );
    assert_eq!(p.files("golden"), ["mine/x.out"]);
    assert!(!p.path("scenarios/mine/golden").exists());
    let r = inside(&["x.yaml"]);
    assert_eq!(
        untimed(&r.stdout),
        "pass mine/x (T)\n1 passed, 0 failed, 0 skipped"
    );
    let r = p.run(&["scenarios/mine/../mine/./x.yaml", "scenarios"]);
    assert_eq!(
        untimed(&r.stdout),
        "pass mine/x (T)\n1 passed, 0 failed, 0 skipped"
    );
}

/// A checkout whose golden folder is read-only: passing scenarios pass, a failing one shows its
/// diff. Needs a read-only mount (a private mount namespace as root), else chmod (not root).
#[test]
fn a_read_only_golden_folder_fails_only_what_fails() {
    let p = Project::new();
    p.echo("ok", "same");
    p.write("golden/ok.out", "same\n");
    p.echo("bad", "new");
    p.write("golden/bad.out", "old\n");
    let bin = env!("CARGO_BIN_EXE_blockfault");
    let golden = p.path("golden");
    let r = if unsafe { libc::geteuid() } == 0 {
        let probe = Command::new("unshare")
            .args(["-m", "sh", "-c", "mount --bind -o ro \"$0\" \"$0\""])
            .arg(&golden)
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            eprintln!("skipped: no private read-only mount here (unshare -m)");
            return;
        }
        let script = "mount --bind -o ro \"$0\" \"$0\" && shift && exec \"$@\"";
        let c = p.command(&[], &[]);
        let out = Command::new("unshare")
            .args(["-m", "sh", "-c", script])
            .arg(&golden)
            .arg("unused")
            .arg(bin)
            .arg("scenarios")
            .current_dir(p.dir.path())
            .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .output()
            .unwrap();
        Run::from(out)
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&golden, std::fs::Permissions::from_mode(0o555)).unwrap();
        let r = p.run(&["scenarios"]);
        std::fs::set_permissions(&golden, std::fs::Permissions::from_mode(0o755)).unwrap();
        r
    };
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    insta::assert_snapshot!(untimed(&r.stdout), @r"
    FAIL bad (T)
        says new
        first difference at line 1: step 1 (echo)
        --- golden/bad.out
        +++ actual
        @@ -1 +1 @@
        -old
        +new
    pass ok (T)
    1 passed, 1 failed, 0 skipped
    ");
    assert_eq!(p.files("golden"), ["bad.out", "ok.out"]);
}

#[test]
fn typos_in_requires_and_duplicate_keys_are_input_errors() {
    let p = Project::new();
    p.write(
        "scenarios/req.yaml",
        "description: x\nrequires: [qcwo2]\nsteps:\n  - echo: x\n",
    );
    p.write(
        "scenarios/files.yaml",
        "description: x\nfiles:\n  a.cfg: one\n  a.cfg: two\nsteps:\n  - echo: x\n",
    );
    p.write(
        "scenarios/drive.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive: {driver: raw, file: {driver: file, filename: a, filename: b}}\n      commands: [read 0 1]\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!(r.stderr, @r"
    error: scenarios/drive.yaml:4:34: steps[0].qemu-io.drive.file: duplicate key `filename`
    error: scenarios/files.yaml:3:3: files: duplicate key `a.cfg`
    error: scenarios/req.yaml: requires: unknown `qcwo2` (did you mean `qcow2`?): expected `qemu-io`, `qemu-img` or an image format QEMU 10.0.2 knows (`raw`, `qcow2`, ...: see `qemu-img --help`)
    ");
}

#[test]
fn a_filter_that_matches_nothing_is_an_error() {
    let p = Project::new();
    p.echo("a/one", "x");
    let r = p.run(&["-k", "nomatch", "-k", "b/*", "scenarios"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!(r.stderr, @"error: no scenario name matches -k `nomatch`, -k `b/*` (names look like `blkdebug/once`; --list shows them)");
}

#[test]
fn an_unusable_scratch_root_is_one_error_and_nothing_is_written() {
    let p = Project::new();
    p.echo("a", "x");
    p.echo("b", "y");
    p.write("golden/a.out", "x\n");
    let r = p.run_with(&["scenarios"], &[("BLOCKFAULT_SCRATCH", "/nonexistent")]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!(r.stderr, @"error: BLOCKFAULT_SCRATCH=/nonexistent: cannot create a scratch directory there: No such file or directory");
    assert_eq!(p.files("golden"), ["a.out"]);
}

#[test]
fn junit_file_is_the_scenario_path() {
    let p = Project::new();
    p.echo("a/ok", "x");
    p.write("golden/a/ok.out", "x\n");
    let r = p.run(&["--junit", "report.xml", "scenarios"]);
    assert_eq!(r.code, 0);
    let xml = p.read("report.xml").unwrap();
    assert!(
        xml.contains(r#"name="ok" file="scenarios/a/ok.yaml""#),
        "{xml}"
    );
}

/// Hostile YAML is refused at once, before the parser can spend quadratic time on it.
#[test]
fn oversized_and_deeply_nested_yaml_are_clear_errors() {
    let p = Project::new();
    p.write(
        "scenarios/deep.yaml",
        &format!("description: x\nsteps: {}", "[".repeat(1 << 19)),
    );
    p.write(
        "scenarios/deepmap.yaml",
        &format!("description: x\nfiles: {}", "{a: ".repeat(100_000)),
    );
    p.write(
        "scenarios/big.yaml",
        &format!(
            "description: x\nsteps:\n{}",
            "  - echo: x\n".repeat(100_000)
        ),
    );
    // `[` in quotes, comments and words is not nesting.
    p.write(
        "scenarios/fine.yaml",
        &format!(
            "description: \"{}\" # {}\nsteps:\n  - echo: a{}\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        ),
    );
    std::fs::write(
        p.path("scenarios/latin1.yaml"),
        b"description: caf\xe9\nsteps: []\n",
    )
    .unwrap();
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr, @r"
    error: scenarios/big.yaml: larger than 1048576 bytes, the most a scenario file may be
    error: scenarios/deep.yaml:2:72: `[` and `{` nested more than 64 deep
    error: scenarios/deepmap.yaml:2:264: `[` and `{` nested more than 64 deep
    error: scenarios/latin1.yaml:1:17: not UTF-8 text
    ");
}

#[test]
fn matrix_case_count_is_limited_and_the_limit_can_be_raised() {
    let p = Project::new();
    let values: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let list = values.join(", ");
    p.write(
        "scenarios/huge.yaml",
        &format!("description: x\nmatrix:\n  a: [{list}]\n  b: [{list}]\n  c: [{list}]\nsteps:\n  - echo: x\n"),
    );
    p.write(
        "scenarios/small.yaml",
        "description: x\nmatrix:\n  a: [1, 2]\n  b: [1, 2, 3]\nsteps:\n  - echo: ${a}${b}\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr, @"error: scenarios/huge.yaml: matrix: 1000 x 1000 x 1000 values make 1000000000 cases, more than the 10000 allowed (--max-cases N raises it)");
    let r = p.run(&["--max-cases", "5", "scenarios/small.yaml"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr, @"error: scenarios/small.yaml: matrix: 2 x 3 values make 6 cases, more than the 5 allowed (--max-cases N raises it)");
    let r = p.run(&["--max-cases", "6", "--bless", "scenarios/small.yaml"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn if_runs_a_step_only_in_the_matrix_cases_it_names() {
    let p = Project::new();
    p.write(
        "scenarios/m.yaml",
        "description: x\nmatrix:\n  event: [a, b, c]\n  n: [1, 2]\nsteps:\n  - echo: always ${event}${n}\n  - if: {event: b}\n    echo: only b\n  - echo: b or c with 2\n    if: {event: [b, c], n: 2}\n",
    );
    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!(p.read("golden/m.out").unwrap(), @r"
    [case event=a n=1]
    always a1
    [case event=a n=2]
    always a2
    [case event=b n=1]
    always b1
    only b
    [case event=b n=2]
    always b2
    only b
    b or c with 2
    [case event=c n=1]
    always c1
    [case event=c n=2]
    always c2
    b or c with 2
    ");
}

#[test]
fn quiet_runs_a_step_but_keeps_its_output_and_status_out_of_the_golden() {
    let p = Project::new();
    p.write(
        "scenarios/q.yaml",
        "description: x\nimages: [{name: t.img, format: raw, size: 1M}]\nsteps:\n  - quiet: true\n    qemu-io: {drive: t.img, format: raw, commands: [write -P 7 0 512]}\n  - {quiet: true, qemu-img: [info, missing.img]}\n  - {quiet: false, echo: shown}\n  - qemu-io: {drive: t.img, format: raw, commands: [read -P 7 0 512]}\n",
    );
    p.write(
        "scenarios/bad.yaml",
        "description: x\nsteps:\n  - {quiet: yes please, echo: x}\n",
    );
    let r = p.run(&["--bless", "scenarios/q.yaml"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!(p.read("golden/q.out").unwrap(), @r"
    shown
    read 512/512 bytes at offset 0
    512 bytes, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)
    ");
    let r = p.run(&["scenarios/bad.yaml"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr, @r#"error: scenarios/bad.yaml:3:13: steps[0].quiet: invalid type: string "yes please", expected a boolean"#);
}

#[test]
fn if_names_only_matrix_keys_and_values() {
    let p = Project::new();
    p.write(
        "scenarios/key.yaml",
        "description: x\nmatrix: {event: [a, b]}\nsteps:\n  - {if: {evnt: a}, echo: x}\n",
    );
    p.write(
        "scenarios/value.yaml",
        "description: x\nmatrix: {event: [a, b]}\nsteps:\n  - {if: {event: [a, z]}, echo: x}\n",
    );
    p.write(
        "scenarios/nomatrix.yaml",
        "description: x\nsteps:\n  - {if: {event: a}, echo: x}\n",
    );
    p.write(
        "scenarios/two.yaml",
        "description: x\nsteps:\n  - echo: x\n    qemu-img: [info]\n",
    );
    p.write(
        "scenarios/none.yaml",
        "description: x\nmatrix: {e: [a]}\nsteps:\n  - if: {e: a}\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr, @r"
    error: scenarios/key.yaml: steps[0].if: `evnt` is not a matrix key (the matrix has `event`)
    error: scenarios/nomatrix.yaml: steps[0].if: `event` is not a matrix key (the scenario has no matrix)
    error: scenarios/none.yaml:4:5: steps[0]: a step needs one of `echo`, `qemu-io`, `qemu-img`
    error: scenarios/two.yaml:3:5: steps[0]: a step does one thing: `qemu-img` is a second one; start another `- ` item
    error: scenarios/value.yaml: steps[0].if: `event` is never `z` (its values are a, b)
    ");
}

#[test]
fn a_failure_names_the_case_and_step_of_its_first_differing_line() {
    let p = Project::new();
    p.write(
        "scenarios/m.yaml",
        "description: m\nmatrix:\n  e: [a, b]\nsteps:\n  - echo: x ${e}\n  - if: {e: b}\n    echo: only b\n  - echo: tail\n",
    );
    p.write(
        "golden/m.out",
        "[case e=a]\nx a\ntail\n[case e=b]\nx b\nonly b\ntayl\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 1);
    insta::assert_snapshot!(untimed(&r.stdout), @r"
    FAIL m (T)
        m
        first difference at line 7: [case e=b] step 3 (echo)
        --- golden/m.out
        +++ actual
        @@ -4,4 +4,4 @@
         [case e=b]
         x b
         only b
        -tayl
        +tail
        actual output kept in golden/m.out.new
    0 passed, 1 failed, 0 skipped
    ");
}

/// qemu-io takes any bytes for a filename and prints them back raw; so does `blockfault io`.
#[test]
fn io_takes_non_utf8_filenames_and_prints_them_raw() {
    use std::os::unix::ffi::OsStrExt;
    let p = Project::new();
    let io = |args: &[&[u8]]| {
        Command::new(env!("CARGO_BIN_EXE_blockfault"))
            .arg("io")
            .args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a)))
            .current_dir(p.dir.path())
            .output()
            .unwrap()
    };
    let missing = io(&[b"-f", b"raw", b"-c", b"read 0 1", b"n\xffm.img"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(missing.stdout, b"");
    // escaped to be readable: the byte is 0xFF itself, as QEMU prints it
    insta::assert_snapshot!(missing.stderr.escape_ascii().to_string(), @r"qemu-io: can\'t open device n\xffm.img: Could not open \'n\xffm.img\': No such file or directory\n");

    std::fs::write(
        p.dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"n\xffm.img")),
        [0u8; 4096],
    )
    .unwrap();
    let there = io(&[b"-f", b"raw", b"-c", b"write -P 9 0 512", b"n\xffm.img"]);
    assert_eq!(
        there.status.code(),
        Some(0),
        "{}",
        there.stderr.escape_ascii()
    );
    assert!(
        there
            .stdout
            .starts_with(b"wrote 512/512 bytes at offset 0\n")
    );
    let data = std::fs::read(
        p.dir
            .path()
            .join(std::ffi::OsStr::from_bytes(b"n\xffm.img")),
    );
    assert_eq!(data.unwrap()[..512], [9u8; 512]);
}

/// The characters that carry bytes which are not UTF-8 can't be taken as themselves.
#[test]
fn io_refuses_the_characters_it_reserves_with_one_line() {
    let p = Project::new();
    let out = Command::new(env!("CARGO_BIN_EXE_blockfault"))
        .args(["io", "-f", "raw", "-c", "read 0 1", "n\u{10ffff}m.img"])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(out.stdout, b"");
    insta::assert_snapshot!(String::from_utf8_lossy(&out.stderr), @r#"blockfault: argument 5 ("n\u{10ffff}m.img") holds U+10FFFF; `blockfault io` reserves U+10FF80..U+10FFFF to carry bytes that are not UTF-8"#);
}

/// The events table in docs/events.md is `blockfault events` verbatim, so it cannot rot.
#[test]
fn events_doc_is_the_events_command_output() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md"))
        .expect("docs/events.md");
    let begin = "<!-- BEGIN blockfault events -->\n```text\n";
    let start = doc.find(begin).expect("begin marker") + begin.len();
    let end = doc
        .find("```\n<!-- END blockfault events -->")
        .expect("end marker");
    let p = Project::new();
    let r = p.run(&["events"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        doc[start..end] == r.stdout,
        "docs/events.md is out of date: put `blockfault events` output between its markers"
    );
    for e in ["l1_update", "cluster_alloc_space", "none"] {
        assert!(r.stdout.contains(&format!("\n{e}\n  fires: ")) || r.stdout.starts_with(e));
    }
}

#[test]
fn events_json_snapshot() {
    let p = Project::new();
    let r = p.run(&["events", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    insta::assert_snapshot!(r.stdout);
}

#[test]
fn events_for_one_format_lists_only_its_commands() {
    let p = Project::new();
    let r = p.run(&["events", "--format", "raw"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("  raw: write smaller than blkdebug's align=4096")
    );
    assert!(!r.stdout.contains("  qcow2: "));
    // qcow2-only events stay listed, without commands.
    assert!(r.stdout.contains("l2_update\n  fires: "));
}

/// The blkdebug trace of `blockfault io`: on stderr, in order, and nothing else changes.
#[test]
fn io_trace_blkdebug_shows_events_and_requests() {
    let p = Project::new();
    let img = p.path("t.img");
    std::fs::write(&img, vec![0u8; 65536]).unwrap();
    let drive = r#"json:{"driver": "raw", "file": {"driver": "blkdebug", "inject-error": [{"event": "write_aio", "errno": 5, "once": true}], "image": {"driver": "file", "filename": "t.img"}}}"#;
    let args = ["-c", "write 0 512", "-c", "write 512 512", drive];
    let plain = p.run(&[&["io"][..], &args].concat());
    let traced = p.run(&[&["io", "--trace-blkdebug"][..], &args].concat());
    let untimed = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.contains(" ops; "))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(untimed(&plain.stdout), untimed(&traced.stdout));
    assert_eq!(plain.code, traced.code);
    let trace: String = traced
        .stderr
        .lines()
        .filter(|l| l.starts_with("blkdebug trace: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        traced.stderr.replace(&trace, ""),
        plain.stderr,
        "only trace lines are added"
    );
    insta::assert_snapshot!(trace, @r"
    blkdebug trace: event none on a blkdebug node being opened, state 1
    blkdebug trace: event write_aio on node '#block000', state 1, arms 1 inject-error rule for the next request
    blkdebug trace: event pwritev on node '#block000', state 1
    blkdebug trace: write offset=0 bytes=512 on node '#block000': fails: injected errno 5 (Input/output error)
    blkdebug trace: event pwritev_done on node '#block000', state 1
    blkdebug trace: event write_aio on node '#block000', state 1
    blkdebug trace: event pwritev on node '#block000', state 1
    blkdebug trace: write offset=512 bytes=512 on node '#block000': passes
    blkdebug trace: event pwritev_done on node '#block000', state 1
    blkdebug trace: event flush_to_os on node '#block000', state 1
    blkdebug trace: event flush_to_disk on node '#block000', state 1
    blkdebug trace: flush on node '#block000': passes
    ");
}

/// `trace: true` goes to the runner's stderr, never into the golden; QEMU has no such trace,
/// so such a scenario is skipped there, saying why.
#[test]
fn a_traced_step_keeps_the_golden_and_is_skipped_on_qemu() {
    let p = Project::new();
    p.write(
        "scenarios/t.yaml",
        "description: traced\nimages:\n  - {name: t.img, format: raw, size: 64k}\nsteps:\n  - qemu-io:\n      trace: true\n      drive: {driver: raw, file: {driver: blkdebug, image: {driver: file, filename: t.img}}}\n      commands: [read 0 512]\n",
    );
    p.write(
        "golden/t.out",
        "read 512/512 bytes at offset 0\n512 bytes, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("--- blkdebug trace of step 1 ("),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("blkdebug trace: read offset=0 bytes=512 on node '#block000': passes\n"),
        "{}",
        r.stderr
    );
    if which_qemu_io() {
        let r = p.run(&["--backend", "qemu", "scenarios"]);
        assert_eq!(r.code, 0);
        assert!(
            r.stdout
                .contains("skip t: a qemu-io step has `trace: true`"),
            "{}",
            r.stdout
        );
    }
}

fn which_qemu_io() -> bool {
    Command::new("qemu-io").arg("--version").output().is_ok()
}

#[test]
fn unknown_blkdebug_event_or_iotype_in_a_drive_mapping_is_an_input_error() {
    let p = Project::new();
    p.write(
        "scenarios/flow.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive: {driver: raw, file: {driver: blkdebug, inject-error: [{event: l2_updat, errno: 5}], image: {driver: file, filename: t.img}}}\n      commands: [read 0 1]\n",
    );
    p.write(
        "scenarios/block.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive:\n        driver: raw\n        file:\n          driver: blkdebug\n          set-state:\n            - event: bogus\n              new_state: 2\n          image: {driver: file, filename: t.img}\n      commands: [read 0 1]\n",
    );
    p.write(
        "scenarios/flat.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive: {driver: blkdebug, inject-error.0.event: read-aio, image.filename: t.img}\n      commands: [read 0 1]\n",
    );
    p.write(
        "scenarios/iotype.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive: {driver: raw, file: {driver: blkdebug, inject-error: [{event: read_aio, iotype: wirte}], image: {driver: file, filename: t.img}}}\n      commands: [read 0 1]\n",
    );
    p.write(
        "scenarios/iotype-flat.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive: {driver: blkdebug, inject-error.0.event: read_aio, inject-error.0.iotype: any, image.filename: t.img}\n      commands: [read 0 1]\n",
    );
    // A matrix value is checked once substituted, by QEMU; `event` elsewhere is not a rule's.
    p.write(
        "scenarios/fine.yaml",
        "description: x\nmatrix:\n  e: [read_aio]\nsteps:\n  - qemu-io:\n      drive: {driver: raw, file: {driver: blkdebug, inject-error: [{event: \"${e}\"}], image: {driver: file, filename: t.img, event: x, iotype: y}}}\n      commands: [read 0 1]\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    assert_eq!(r.stdout, "");
    insta::assert_snapshot!(r.stderr, @r"
    error: scenarios/block.yaml:9:15: steps[0].qemu-io.drive.file.set-state[0]: unknown blkdebug event `bogus`: `blockfault events` lists the 48 events
    error: scenarios/flat.yaml:4:14: steps[0].qemu-io.drive: unknown blkdebug event `read-aio` (did you mean `read_aio`?): `blockfault events` lists the 48 events
    error: scenarios/flow.yaml:4:68: steps[0].qemu-io.drive.file.inject-error[0]: unknown blkdebug event `l2_updat` (did you mean `l2_update`?): `blockfault events` lists the 48 events
    error: scenarios/iotype.yaml:4:68: steps[0].qemu-io.drive.file.inject-error[0]: unknown blkdebug iotype `wirte` (did you mean `write`?): the iotypes are read, write, write-zeroes, discard, flush, block-status
    error: scenarios/iotype-flat.yaml:4:14: steps[0].qemu-io.drive: unknown blkdebug iotype `any`: the iotypes are read, write, write-zeroes, discard, flush, block-status
    ");
}

/// Validates a YAML file against `blockfault schema` with Python's jsonschema (the reference
/// validator yaml-language-server's rules follow); panics, saying so, if it is not installed.
fn validate_against_schema(p: &Project, rel: &str) {
    let schema = p.run(&["schema"]);
    p.write("schema.json", &schema.stdout);
    let script = "import json,sys,yaml,jsonschema\n\
                  s=json.load(open('schema.json'))\n\
                  errs=[e.message for e in jsonschema.Draft7Validator(s).iter_errors(yaml.safe_load(open(sys.argv[1])))]\n\
                  print('\\n'.join(errs)); sys.exit(1 if errs else 0)\n";
    let out = Command::new("python3")
        .args(["-c", script, rel])
        .current_dir(p.dir.path())
        .output()
        .expect("python3 (with PyYAML and jsonschema) validates scenarios against the schema");
    assert!(
        out.status.success(),
        "{rel} does not validate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn new_writes_a_starter_that_validates_and_runs() {
    let p = Project::new();
    let r = p.run(&["new", "mine/first"]);
    assert_eq!(
        (r.code, r.stdout.as_str(), r.stderr.as_str()),
        (0, "wrote scenarios/mine/first.yaml\n", "")
    );
    assert_eq!(p.files("."), ["scenarios/mine/first.yaml"]);
    let starter = p.read("scenarios/mine/first.yaml").unwrap();
    assert!(starter.starts_with("# yaml-language-server: $schema=../../blockfault.schema.json\n"));
    validate_against_schema(&p, "scenarios/mine/first.yaml");
    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    insta::assert_snapshot!(p.read("golden/mine/first.out").unwrap(), @r"
    === the first write fails, the rule goes (once), the second write succeeds
    write failed: Input/output error
    wrote 4096/4096 bytes at offset 0
    4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)
    read 4096/4096 bytes at offset 0
    4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)
    [exit 1]
    ");
}

#[test]
fn new_refuses_to_overwrite_and_bad_names() {
    let p = Project::new();
    p.write("scenarios/a/b.yaml", "mine\n");
    let mut errors = String::new();
    for name in ["a/b", "b", "a/b.yaml", "a/../b", "a/b c"] {
        let r = p.run(&["new", name]);
        assert_eq!(r.code, 2, "{name}");
        assert_eq!(r.stdout, "");
        errors.push_str(&r.stderr);
    }
    assert_eq!(p.read("scenarios/a/b.yaml").unwrap(), "mine\n");
    assert_eq!(p.files("scenarios"), ["a/b.yaml"]);
    insta::assert_snapshot!(errors, @r"
    blockfault: new: scenarios/a/b.yaml already exists; choose another name (nothing was written)
    blockfault: new: `b`: a scenario lives in a folder: give FOLDER/NAME, e.g. `blkdebug/fail-second-write` (parts of letters, digits, `-`, `_`, `.`; no `.yaml`)
    blockfault: new: `a/b.yaml`: leave out the extension: give FOLDER/NAME, e.g. `blkdebug/fail-second-write` (parts of letters, digits, `-`, `_`, `.`; no `.yaml`)
    blockfault: new: `a/../b`: `..` is not a valid part: give FOLDER/NAME, e.g. `blkdebug/fail-second-write` (parts of letters, digits, `-`, `_`, `.`; no `.yaml`)
    blockfault: new: `a/b c`: `b c` is not a valid part: give FOLDER/NAME, e.g. `blkdebug/fail-second-write` (parts of letters, digits, `-`, `_`, `.`; no `.yaml`)
    ");
}

/// Every example in docs/authoring.md is a scenario under scenarios/guide/ (and its golden),
/// embedded verbatim; every guide scenario is in the guide.
#[test]
fn authoring_guide_examples_are_the_guide_scenarios() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/authoring.md")).expect("docs/authoring.md");
    let mut embedded = Vec::new();
    for (marker, fence) in [
        ("<!-- scenario: ", "```yaml\n"),
        ("<!-- golden: ", "```text\n"),
    ] {
        for (at, _) in guide.match_indices(marker) {
            let rest = &guide[at + marker.len()..];
            let (path, rest) = rest.split_once(" -->\n").expect("marker ends with -->");
            let body = rest
                .strip_prefix(fence)
                .unwrap_or_else(|| panic!("{path}: {fence:?} follows the marker"));
            let end = body
                .find("```\n<!-- end -->")
                .unwrap_or_else(|| panic!("{path}: no end marker"));
            let file =
                std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                body[..end] == file,
                "docs/authoring.md's copy of {path} differs from the file"
            );
            embedded.push(path.to_string());
        }
    }
    let mut scenarios: Vec<String> = std::fs::read_dir(root.join("scenarios/guide"))
        .unwrap()
        .map(|e| {
            format!(
                "scenarios/guide/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    scenarios.sort();
    for s in &scenarios {
        assert!(
            embedded.contains(s),
            "{s} is not shown in docs/authoring.md"
        );
        let golden = s.replace("scenarios/", "golden/").replace(".yaml", ".out");
        assert!(
            embedded.contains(&golden),
            "{golden} is not shown in docs/authoring.md"
        );
    }
    assert!(scenarios.len() >= 8);
}

/// The guide's scenarios (which use rules, matrix values in rule keys, blkverify children)
/// validate against the schema editors get.
#[test]
fn guide_scenarios_validate_against_the_schema() {
    let p = Project::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(root.join("scenarios/guide")).unwrap() {
        let e = e.unwrap();
        let rel = format!("guide/{}", e.file_name().to_string_lossy());
        p.write(&rel, &std::fs::read_to_string(e.path()).unwrap());
        validate_against_schema(&p, &rel);
    }
    // and the schema does flag a typo in an event name
    p.write(
        "typo.yaml",
        "description: x\nsteps:\n  - qemu-io:\n      drive: {driver: raw, file: {driver: blkdebug, inject-error: [{event: write_aoi}], image: t.img}}\n",
    );
    let schema = p.run(&["schema"]);
    p.write("schema.json", &schema.stdout);
    let out = Command::new("python3")
        .args([
            "-c",
            "import json,yaml,jsonschema; jsonschema.validate(yaml.safe_load(open('typo.yaml')), json.load(open('schema.json')))",
        ])
        .current_dir(p.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt event validates");
}

/// A two-write workload on a small raw image: the fault sweep on every pwritev occurrence.
const RAW_SWEEP: &str = "description: sweep
steps: []
images:
  - {name: t.raw, format: raw, size: 64k}
sweep:
  workload:
    image: t.raw
    format: raw
    cache: writethrough
    commands: [write -P 1 0 4k, write -P 2 4k 4k]
  faults:
    events: [pwritev, read_aio]
    errno: [5, 28]
    mode: [once, sticky]
";

#[test]
fn fault_sweep_tries_every_occurrence_and_checks_the_data() {
    let p = Project::new();
    p.write("scenarios/s.yaml", RAW_SWEEP);
    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    insta::assert_snapshot!(p.read("golden/s.out").unwrap(), @r"
    fault sweep: 2 commands on t.raw (raw, cache writethrough); errno 5 28; once sticky
    clean run: exit 0; image clean
    pwritev: 2 occurrences
      pwritev#1/errno=5/once: `write -P 1 0 4k` failed: Input/output error; exit 1; image clean
      pwritev#1/errno=5/sticky: `write -P 1 0 4k` failed: Input/output error; `write -P 2 4k 4k` failed: Input/output error; exit 1; image clean
      pwritev#1/errno=28/once: `write -P 1 0 4k` failed: No space left on device; exit 1; image clean
      pwritev#1/errno=28/sticky: `write -P 1 0 4k` failed: No space left on device; `write -P 2 4k 4k` failed: No space left on device; exit 1; image clean
      pwritev#2/errno=5/once: `write -P 2 4k 4k` failed: Input/output error; exit 1; image clean
      pwritev#2/errno=5/sticky: `write -P 2 4k 4k` failed: Input/output error; exit 1; image clean
      pwritev#2/errno=28/once: `write -P 2 4k 4k` failed: No space left on device; exit 1; image clean
      pwritev#2/errno=28/sticky: `write -P 2 4k 4k` failed: No space left on device; exit 1; image clean
    never raised: read_aio
    fault sweep: 8 points: 0 quiet, 8 error, 0 leak, 0 checks failed, 0 lost data, 0 corrupt
    ");
    // Deterministic: the same sweep passes against what it blessed.
    assert_eq!(p.run(&["scenarios"]).code, 0);
    assert!(p.scratch_left().is_empty());
    // Conformance: the same rule files through real QEMU give the same golden.
    if which("qemu-io") && which("qemu-img") {
        let q = p.run(&["--backend", "qemu", "scenarios"]);
        assert_eq!(q.code, 0, "{}{}", q.stdout, q.stderr);
    }
}

#[test]
fn crash_sweep_replays_every_prefix() {
    let p = Project::new();
    p.write(
        "scenarios/c.yaml",
        &RAW_SWEEP.replace(
            "  faults:\n    events: [pwritev, read_aio]\n    errno: [5, 28]\n    mode: [once, sticky]\n",
            "  crash: {reorder: 1, torn: 2}\nbackends: [builtin]\nreason: the crash model is the builtin file driver's\n",
        ),
    );
    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    insta::assert_snapshot!(p.read("golden/c.out").unwrap(), @r"
    crash sweep: 2 commands on t.raw (raw, cache writethrough); reorder 1, torn 2
    write log: 5 entries (2 writes, 0 zero writes, 0 truncations, 3 flushes)
    crash sweep: 10 states: 10 quiet, 0 error, 0 leak, 0 checks failed, 0 lost data, 0 corrupt
    ");
    let q = p.run(&["--backend", "qemu", "scenarios"]);
    assert!(
        q.stdout
            .contains("not for the qemu backend: the crash model"),
        "{}",
        q.stdout
    );
}

#[test]
fn sweep_input_errors_name_the_place() {
    let p = Project::new();
    p.write(
        "scenarios/a.yaml",
        &RAW_SWEEP.replace("events: [pwritev, read_aio]", "events: [pwritev, red_aio]"),
    );
    p.write(
        "scenarios/b.yaml",
        &RAW_SWEEP.replace(
            "    errno: [5, 28]\n",
            "    errno: [5, 28]\n    sticky: true\n",
        ),
    );
    p.write(
        "scenarios/c.yaml",
        &RAW_SWEEP.replace("write -P 2 4k 4k", "aio_write 4k 4k"),
    );
    p.write(
        "scenarios/d.yaml",
        &RAW_SWEEP.replace("  faults:", "  crash: {}\n  faults:"),
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 2);
    insta::assert_snapshot!(r.stderr, @r"
    error: scenarios/a.yaml: sweep.faults.events: `red_aio` is not a blkdebug event (see QEMU's BlkdebugEvent: l1_update, l2_load, write_aio, ...)
    error: scenarios/b.yaml:14:5: sweep.faults: unknown field `sticky`, expected one of `events`, `errno`, `mode`, `random`
    error: scenarios/c.yaml: sweep.workload.commands[1]: `aio_write` is not a command the sweep can track (write, read, discard, flush; one request each, no aliases)
    error: scenarios/d.yaml: sweep.crash: the crash sweep runs on the builtin engine only (the power-cut model is its file driver's write log): add `backends: [builtin]` and a `reason`
    ");
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[test]
fn a_failing_extra_check_fails_its_point_and_shows_it_in_full() {
    let p = Project::new();
    p.write(
        "scenarios/s.yaml",
        &RAW_SWEEP
            .replace("[pwritev, read_aio]", "[pwritev]")
            .replace("errno: [5, 28]", "errno: [5]")
            .replace(
                "mode: [once, sticky]",
                "mode: [once]\n  checks: [read -P 1 0 4k]",
            ),
    );
    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    insta::assert_snapshot!(p.read("golden/s.out").unwrap(), @r"
    fault sweep: 2 commands on t.raw (raw, cache writethrough); errno 5; once
    clean run: exit 0; image clean
    pwritev: 2 occurrences
      pwritev#1/errno=5/once: `write -P 1 0 4k` failed: Input/output error; exit 1; image clean; checks failed
      pwritev#2/errno=5/once: `write -P 2 4k 4k` failed: Input/output error; exit 1; image clean
    fault sweep: 2 points: 0 quiet, 1 error, 0 leak, 1 checks failed, 0 lost data, 0 corrupt
    FAILED pwritev#1/errno=5/once:
      checks: exit 1
        | Pattern verification failed at offset 0, 4096 bytes
        | read 4096/4096 bytes at offset 0
        | 4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)
      workload output (exit 1):
        | write failed: Input/output error
        | wrote 4096/4096 bytes at offset 4096
        | 4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)
    ");
}

#[test]
fn point_replays_one_fault_point_in_full_and_keeps_its_files() {
    let p = Project::new();
    p.write(
        "scenarios/s.yaml",
        &RAW_SWEEP.replace(
            "mode: [once, sticky]",
            "mode: [once, sticky]\n  checks: [read -P 1 0 4k]",
        ),
    );
    let r = p.run(&[
        "--point",
        "pwritev#1/errno=28/once",
        "--keep",
        "scenarios/s.yaml",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let kept = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("kept: "))
        .and_then(|l| l.split(" (").next())
        .expect("the kept directory is named");
    assert!(Path::new(kept).join("sweep-point/t.raw").is_file());
    let text = r.stdout.replace(kept, "SCRATCH");
    insta::assert_snapshot!(text, @r#"
    point pwritev#1/errno=28/once on t.raw (raw, cache writethrough)
    blkdebug rules (sweep-rules.cfg):
        | [inject-error]
        | event = "pwritev"
        | state = "1"
        | errno = "28"
        | once = "on"
        | [set-state]
        | event = "pwritev"
        | state = "1"
        | new_state = "2"

    workload output (exit 1):
        | write failed: No space left on device
        | wrote 4096/4096 bytes at offset 4096
        | 4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)

    data: as the workload's commands allow
    checks (exit 1):
        | Pattern verification failed at offset 0, 4096 bytes
        | read 4096/4096 bytes at offset 0
        | 4 KiB, X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)

    point pwritev#1/errno=28/once: checks failed
    FAILED pwritev#1/errno=28/once
    kept: SCRATCH (the point's files: SCRATCH/sweep-point)
    "#);
    std::fs::remove_dir_all(kept).unwrap();
    // A passing point exits 0; no golden is read or written.
    let ok = p.run(&["--point", "pwritev#2/errno=5/sticky", "scenarios/s.yaml"]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout
            .contains("point pwritev#2/errno=5/sticky: error\n")
    );
    assert!(p.files("golden").is_empty() && p.scratch_left().is_empty());
    // Ids that name nothing: one clear line each.
    for (id, says) in [
        ("pwritev#0/errno=5/once", "is not a fault id"),
        (
            "pwritv#1/errno=5/once",
            "`pwritv` in `pwritv#1/errno=5/once` is not a blkdebug event",
        ),
        ("crash@3", "this sweep has no `crash`"),
    ] {
        let bad = p.run(&["--point", id, "scenarios/s.yaml"]);
        assert_eq!(bad.code, 2, "{id}: {}{}", bad.stdout, bad.stderr);
        assert!(bad.stdout.contains(says), "{id}: {}", bad.stdout);
    }
}

#[test]
fn point_replays_one_crash_state_with_its_log() {
    let p = Project::new();
    p.write(
        "scenarios/c.yaml",
        &RAW_SWEEP.replace(
            "  faults:\n    events: [pwritev, read_aio]\n    errno: [5, 28]\n    mode: [once, sticky]\n",
            "  crash: {reorder: 1, torn: 2}\nbackends: [builtin]\nreason: the crash model is the builtin file driver's\n",
        ),
    );
    let r = p.run(&["--point", "crash@3/3072", "scenarios/c.yaml"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    insta::assert_snapshot!(r.stdout, @r"
    point crash@3/3072 on t.raw (raw, cache writethrough)
    write log (each entry kept, lost, torn or not issued by the cut):
           0 kept       t.raw write 0 +4096
           1 kept       t.raw flush
           2 torn       t.raw write 4096 +4096 after 3072 bytes
           3 not issued t.raw flush
           4 not issued t.raw flush
    data: as the workload's commands allow
    point crash@3/3072: quiet
    ");
    let bad = p.run(&["--point", "crash@9", "scenarios/c.yaml"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stdout
            .contains("no crash state `crash@9` in this sweep (10 states, @0 to @5"),
        "{}",
        bad.stdout
    );
}

#[test]
fn random_faults_are_drawn_from_the_seed_and_replay_by_id() {
    let p = Project::new();
    p.write(
        "scenarios/r.yaml",
        &RAW_SWEEP.replace(
            "mode: [once, sticky]",
            "mode: [once, sticky]\n    random: {runs: 6, seed: 7, faults: 2}",
        ),
    );
    let r = p.run(&["--bless", "scenarios"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let golden = p.read("golden/r.out").unwrap();
    insta::assert_snapshot!(golden, @r"
    fault sweep: 2 commands on t.raw (raw, cache writethrough); errno 5 28; once sticky
    clean run: exit 0; image clean
    random faults: seed 7, 6 runs, 1 to 2 faults a run, over 1 event raised
      run 0 pwritev#2/errno=28/once+pwritev#1/errno=5/once: `write -P 2 4k 4k` failed: No space left on device; exit 1; image clean
      run 1 pwritev#2/errno=28/sticky+pwritev#1/errno=5/once: `write -P 2 4k 4k` failed: No space left on device; exit 1; image clean
      run 2 pwritev#1/errno=5/once: `write -P 1 0 4k` failed: Input/output error; exit 1; image clean
      run 3 pwritev#1/errno=5/once+pwritev#1/errno=5/once: `write -P 1 0 4k` failed: Input/output error; `write -P 2 4k 4k` failed: Input/output error; exit 1; image clean
      run 4 pwritev#2/errno=28/once+pwritev#1/errno=5/sticky: `write -P 2 4k 4k` failed: No space left on device; exit 1; image clean
      run 5 pwritev#2/errno=28/once+pwritev#2/errno=5/once: `write -P 2 4k 4k` failed: No space left on device; exit 1; image clean
    fault sweep: 6 points: 0 quiet, 6 error, 0 leak, 0 checks failed, 0 lost data, 0 corrupt
    ");
    // The same seed draws the same runs.
    assert_eq!(p.run(&["scenarios"]).code, 0);
    // A run's id replays it alone, to the same summary.
    let line = golden.lines().find(|l| l.starts_with("  run ")).unwrap();
    let id = line
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(':');
    let one = p.run(&["--point", id, "scenarios/r.yaml"]);
    assert!(
        one.stdout.contains(&format!("point {id}: ")),
        "{}",
        one.stdout
    );
    if which("qemu-io") && which("qemu-img") {
        let q = p.run(&["--backend", "qemu", "scenarios"]);
        assert_eq!(q.code, 0, "{}{}", q.stdout, q.stderr);
    }
}
