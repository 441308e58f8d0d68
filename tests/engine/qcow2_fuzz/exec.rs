//! Running one program on a case's files: output captured, wall time measured, killed after a
//! timeout, peak resident memory (sampled from /proc) reported. Ours also
//! runs under an address-space limit, so that a runaway allocation stops early instead of
//! taking the machine with it. No core files.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
}

#[derive(Clone, Debug)]
pub struct Run {
    pub exit: Exit,
    pub stdout: String,
    pub stderr: String,
    pub time: Duration,
    pub max_rss_kib: u64,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        match self.exit {
            Exit::Code(c) => Some(c),
            _ => None,
        }
    }

    pub fn describe_exit(&self) -> String {
        match self.exit {
            Exit::Code(c) => format!("exit {c}"),
            Exit::Signal(s) => format!("signal {s}"),
            Exit::TimedOut => format!("killed after {:.1} s", self.time.as_secs_f64()),
        }
    }
}

/// Runs `program args` in `dir`, killed after `timeout`; `address_space` limits the child's
/// virtual memory (RLIMIT_AS).
pub fn run(
    program: &Path,
    args: &[String],
    dir: &Path,
    timeout: Duration,
    address_space: Option<u64>,
) -> std::io::Result<Run> {
    // output goes to files: pipes would need a reader thread per stream
    let out_dir = crate::support::tempdir()?;
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    // Limits are set by a shell that then execs the program: a `pre_exec` hook would make std
    // fork the whole test process, and the child's peak resident set (`ru_maxrss`) would start
    // at the test process's.
    let mut limits = "ulimit -c 0".to_string();
    if let Some(bytes) = address_space {
        limits += &format!("; ulimit -v {}", bytes >> 10);
    }
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{limits}; exec \"$0\" \"$@\""))
        .arg(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .env("RUST_BACKTRACE", "0");
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut timed_out = false;
    let mut nap = Duration::from_micros(200);
    let status_file = format!("/proc/{pid}/status");
    // the name the kernel gives the process once it runs the program (at most 15 bytes)
    let comm: String = program
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(15).collect())
        .unwrap_or_default();
    let mut max_rss_kib = 0;
    loop {
        // The peak resident set of the program itself: the high-water mark of its address space
        // since exec (the child's `ru_maxrss` would count the pages of the test process it was
        // forked from). Sampled, so the last instants before exit can escape it; the
        // address-space limit backstops those.
        if let Some(hwm) = std::fs::read_to_string(&status_file)
            .ok()
            .and_then(|s| vm_hwm_kib(&s, &comm))
        {
            max_rss_kib = max_rss_kib.max(hwm);
        }
        // SAFETY: pid is our own unreaped child; status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if !timed_out && start.elapsed() >= timeout {
            timed_out = true;
            // SAFETY: the child is not reaped yet, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(10));
    }
    let time = start.elapsed();
    // the child is reaped: `child` must not wait for it again (dropping it does not)
    drop(child);
    let exit = if timed_out {
        Exit::TimedOut
    } else if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    };
    let text =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Ok(Run {
        exit,
        stdout: text(&out_path),
        stderr: text(&err_path),
        time,
        max_rss_kib,
    })
}

/// The peak resident set in a /proc status, once the process runs the program named `comm`:
/// until the shell's exec, the child shares or copies the test process's memory (spawn may
/// use vfork), whose high-water mark is not the program's.
fn vm_hwm_kib(status: &str, comm: &str) -> Option<u64> {
    let name = status.lines().find_map(|l| l.strip_prefix("Name:"))?;
    if name.trim() != comm {
        return None;
    }
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn memory_counts_only_once_the_program_runs() {
    let status = |name: &str| format!("Name:\t{name}\nUmask:\t0022\nVmHWM:\t  262144 kB\n");
    assert_eq!(vm_hwm_kib(&status("engine-0cbbd6b5"), "blockfault"), None);
    assert_eq!(vm_hwm_kib(&status("sh"), "blockfault"), None);
    assert_eq!(
        vm_hwm_kib(&status("blockfault"), "blockfault"),
        Some(262144)
    );
}
