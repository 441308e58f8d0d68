//! The runner's command line, driven as a user would: the built binary in a temporary project.
//! Scenarios here only `echo`, so their output does not depend on the engine.

use std::path::PathBuf;
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
        let out = Command::new(env!("CARGO_BIN_EXE_blockfault"))
            .args(args)
            .current_dir(self.dir.path())
            .env("NO_COLOR", "1")
            .output()
            .expect("runs");
        Run::from(out)
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
    error: scenarios/top.yaml:2:1: unknown field `step`, expected one of `description`, `matrix`, `files`, `images`, `steps`, `requires`, `skip`, `backends`, `reason`
    error: scenarios/typo.yaml:5:7: steps[0].qemu-io: unknown field `comands`, expected one of `drive`, `format`, `cache`, `image-opts`, `commands`
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
        "description: r\nrequires: [qcow9]\nsteps: []\n",
    );
    let r = p.run(&["scenarios"]);
    assert_eq!(r.code, 0);
    insta::assert_snapshot!(r.stdout, @r"
    skip q: not for the builtin backend: only QEMU does this
    skip r: requires qcow9
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
