//! Opening mutated qcow2 images never panics and never writes: read-only opens of images
//! with random bytes changed in their metadata end in a clear error or in reads, and the
//! file is unchanged afterwards. Seeded; `QCOW2_HOSTILE_RUNS` sets the number of images.

use std::process::Command;

#[test]
fn mutated_images_fail_cleanly_without_writing() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("skipped: qemu-img not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("bf-qcow2-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg("qemu-img create -q -f qcow2 -o cluster_size=512 base.qcow2 4M && qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -c 1M 4k' base.qcow2 >/dev/null")
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(st.success());
    let base = std::fs::read(dir.join("base.qcow2")).unwrap();
    let runs: usize = std::env::var("QCOW2_HOSTILE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for run in 0..runs {
        let mut img = base.clone();
        // metadata lives in the first few KiB: header, reftable, refblock, L1, L2 tables
        let n = 1 + next() % 4;
        for _ in 0..n {
            let at = (next() % 4096) as usize;
            img[at] = next() as u8;
        }
        let p = dir.join("m.qcow2");
        std::fs::write(&p, &img).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_blockfault"))
            .args([
                "io",
                "-r",
                "-f",
                "qcow2",
                "-c",
                "read 0 64k",
                "-c",
                "read 1M 4k",
                "-c",
                "map",
                "-c",
                "info",
            ])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && o.status.code().is_some(),
            "run {run}: engine crashed: {err}"
        );
        assert_eq!(
            std::fs::read(&p).unwrap(),
            img,
            "run {run}: a read-only open wrote"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
