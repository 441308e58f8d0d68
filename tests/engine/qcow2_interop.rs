//! qcow2 interoperability with real QEMU 10.0.2: images our engine writes pass `qemu-img
//! check` and read back identically through qemu-io, and images QEMU makes (every cluster
//! size, v2 and v3, backing chains, compressed clusters) read identically through our
//! engine. Skipped (with a printed reason) when qemu-io or qemu-img is missing.

use std::path::Path;
use std::process::Command;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "setup failed: {script}");
}

/// Runs qemu-io (`ours` = our engine) and returns its output without timing lines.
fn qemu_io(dir: &Path, ours: bool, cmds: &[String], args: &[&str]) -> String {
    let mut c = if ours {
        let mut c = Command::new(env!("CARGO_BIN_EXE_blockfault"));
        c.arg("io");
        c
    } else {
        Command::new("qemu-io")
    };
    c.current_dir(dir).args(args);
    for x in cmds {
        c.args(["-c", x]);
    }
    let o = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines()
        .filter(|l| !l.contains(" ops; "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn workdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("bf-qcow2-interop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Reads that verify the pattern layout the writers below produce.
fn verify_reads(cs: u64) -> Vec<String> {
    vec![
        "read -P 0x11 0 4k".into(),
        "read -P 0 4k 4k".into(),
        format!("read -P 0x22 {} 8k", 262144 + cs * 3 + 512),
        format!("read -P 0 {} 512", 262144 + cs * 3),
        "read -P 0x33 1M 64k".into(),
        "read -P 0 2M 64k".into(),
        "read -v 1M 32".into(),
    ]
}

fn writes(cs: u64) -> Vec<String> {
    vec![
        "write -P 0x11 0 4k".into(),
        format!("write -P 0x22 {} 8k", 262144 + cs * 3 + 512),
        "write -P 0x33 1M 64k".into(),
        "write -P 0x44 3M 64k".into(),
        "write -z 3M 64k".into(),
        "discard 3M 64k".into(),
    ]
}

#[test]
fn images_written_by_us_pass_qemu_img_check_and_read_back_in_qemu() {
    if !have("qemu-io") || !have("qemu-img") {
        eprintln!("skipped: qemu-io/qemu-img 10.0.2 not installed");
        return;
    }
    for (cs, compat) in [
        (512u64, "1.1"),
        (4096, "0.10"),
        (65536, "1.1"),
        (2 << 20, "1.1"),
    ] {
        let d = workdir(&format!("w{cs}"));
        sh(
            &d,
            &format!(
                "qemu-img create -q -f qcow2 -o cluster_size={cs},compat={compat} t.qcow2 64M"
            ),
        );
        let out = qemu_io(&d, true, &writes(cs), &["-f", "qcow2", "t.qcow2"]);
        assert!(!out.contains("failed"), "our writes failed ({cs}): {out}");
        let chk = Command::new("qemu-img")
            .args(["check", "t.qcow2"])
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(
            chk.status.success(),
            "qemu-img check ({cs}): {}",
            String::from_utf8_lossy(&chk.stdout)
        );
        let theirs = qemu_io(
            &d,
            false,
            &verify_reads(cs),
            &["-f", "qcow2", "-r", "t.qcow2"],
        );
        let ours = qemu_io(
            &d,
            true,
            &verify_reads(cs),
            &["-f", "qcow2", "-r", "t.qcow2"],
        );
        assert!(
            !theirs.contains("failed"),
            "qemu-io read back ({cs}): {theirs}"
        );
        assert_eq!(theirs, ours, "cluster size {cs}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn images_made_by_qemu_read_identically() {
    if !have("qemu-io") || !have("qemu-img") {
        eprintln!("skipped: qemu-io/qemu-img 10.0.2 not installed");
        return;
    }
    for cs in [512u64, 1024, 4096, 65536, 262144, 2 << 20] {
        for compat in ["0.10", "1.1"] {
            let d = workdir(&format!("r{cs}-{compat}"));
            let w: Vec<String> = writes(cs).iter().map(|c| format!("-c '{c}'")).collect();
            sh(
                &d,
                &format!(
                    "qemu-img create -q -f qcow2 -o cluster_size={cs},compat={compat} base.qcow2 64M && \
                 qemu-io -f qcow2 {} base.qcow2 >/dev/null && \
                 qemu-img create -q -f qcow2 -o cluster_size={cs},compat={compat} -b base.qcow2 -F qcow2 mid.qcow2 64M && \
                 qemu-io -f qcow2 -c 'write -P 0x55 2M 4k' -c 'write -P 0x66 {} 512' mid.qcow2 >/dev/null && \
                 qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 64M && \
                 qemu-img convert -c -O qcow2 -o cluster_size={cs},compat={compat} mid.qcow2 comp.qcow2",
                    w.join(" "),
                    262144 + cs * 3
                ),
            );
            let mut reads = verify_reads(cs);
            reads.retain(|r| {
                !r.starts_with("read -P 0 2M") && !r.contains(&format!("{} 512", 262144 + cs * 3))
            });
            reads.push("read -v 2M 16".into());
            reads.push(format!("read -v {} 16", 262144 + cs * 3));
            reads.push("read -P 0 5M 1M".into());
            for img in ["base.qcow2", "top.qcow2", "comp.qcow2"] {
                let theirs = qemu_io(&d, false, &reads, &["-f", "qcow2", "-r", img]);
                let ours = qemu_io(&d, true, &reads, &["-f", "qcow2", "-r", img]);
                assert_eq!(theirs, ours, "{img}, cluster size {cs}, compat {compat}");
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}
