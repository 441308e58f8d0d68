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

/// An empty directory under the temp dir, named by the test module and case.
pub fn workdir(module: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bf-{module}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
