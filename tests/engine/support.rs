//! What the engine's test modules share: whether QEMU's tools are here, running a setup script,
//! and a fresh scratch directory.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether `tool --version` runs and succeeds.
pub fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether real qemu-img and qemu-io are installed; says so on stderr when they are not.
pub fn have_qemu() -> bool {
    let ok = have("qemu-img") && have("qemu-io");
    if !ok {
        eprintln!("skipped: qemu-img/qemu-io 10.0.2 not installed (apt-get install qemu-utils)");
    }
    ok
}

/// Runs `script` with sh in `dir`; it must succeed.
pub fn sh(dir: &Path, script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(st.success(), "setup failed: {script}");
}

/// An empty directory under the scratch root, named by the test module and case.
pub fn workdir(module: &str, name: &str) -> PathBuf {
    let d = scratch_root().join(format!("bf-{module}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Where the qcow2 tests' images go: `BLOCKFAULT_SCRATCH` as for the runner if set, else
/// `/dev/shm` (where the runner puts scenarios) when it is
/// a writable tmpfs that takes O_DIRECT, else the system temp dir. These tests run thousands
/// of qemu-io and qemu-img sessions whose writethrough flushes are an fdatasync each: on a
/// disk, that wait was most of their time. (The tests that exercise O_DIRECT's alignment on a
/// disk file system, parsers_prop's random `-n`, keep the system temp dir.)
pub fn scratch_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("BLOCKFAULT_SCRATCH").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        Some(PathBuf::from("/dev/shm"))
            .filter(|d| takes_direct_io(d))
            .unwrap_or_else(std::env::temp_dir)
    })
    .clone()
}

/// A fresh temporary directory under [`scratch_root`].
pub fn tempdir() -> std::io::Result<tempfile::TempDir> {
    tempfile::tempdir_in(scratch_root())
}

fn takes_direct_io(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(format!("bf-direct-probe-{}", std::process::id()));
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
