//! The `file` protocol driver: positional I/O on a host file. Every request completes after
//! one executor turn, as QEMU's thread-pool I/O completes through a bottom half.

use super::crash_log;
use super::driver::{
    BlockDriver, BlockStatus, BoxFut, Capabilities, IoResult, Limits, ReopenState, ReqFlags, status,
};
use super::executor::pool_job;
use super::node::{Node, OpenFlags};
use super::options::{OpenContext, OptType, Options, absorb};
use super::perms::{Access, Perms};
use std::cell::{Cell, Ref, RefCell};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Which of file-posix's drivers a node is: they differ in the kind of host file they take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostKind {
    File,
    HostDevice,
    HostCdrom,
}

impl HostKind {
    pub fn from_driver(name: &str) -> Option<Self> {
        match name {
            "file" => Some(Self::File),
            "host_device" => Some(Self::HostDevice),
            "host_cdrom" => Some(Self::HostCdrom),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::HostDevice => "host_device",
            Self::HostCdrom => "host_cdrom",
        }
    }
}

pub struct FileDriver {
    kind: HostKind,
    /// the descriptor; a reopen that changes the access mode or O_DIRECT replaces it
    file: RefCell<File>,
    /// where the file is (for a reopen), and its name as QEMU shows it
    path: PathBuf,
    shown_name: String,
    /// how the descriptor is open: (writable, O_DIRECT)
    mode: Cell<(bool, bool)>,
    /// the descriptor a permission refresh opened, installed when it is applied
    perm_change: RefCell<Option<NewFile>>,
    /// whether flushes and FUA writes reach the host disk (fdatasync)
    sync: bool,
    /// a temporary file (a snapshot overlay) that goes away with the node
    temporary: Option<PathBuf>,
    /// what file-posix learns about the host file system as zero writes fail: whether
    /// FALLOC_FL_ZERO_RANGE, hole punching and plain fallocate are worth trying again
    has_write_zeroes: Cell<bool>,
    has_discard: Cell<bool>,
    has_fallocate: Cell<bool>,
    /// see [`FileDriver::request_alignment`]
    request_alignment: u64,
    /// `locking=on|auto` (off: no image locks at all)
    use_lock: bool,
    /// what the node's parents hold and share as of the last refresh, and the lock bytes
    /// the descriptor holds (see [`locks`])
    locks: Cell<LockState>,
}

/// Takes the image locks `access` needs on `file` (named `shown_name`) and checks that nobody
/// else conflicts with them, as a file node does when its parent attaches it; the locks last
/// as long as the descriptor. For readers of an image that do not go through a node
/// (qemu-img info reading a qcow2 header). The locks go with the guard returned.
pub fn lock_image(file: &File, shown_name: &str, access: Access) -> Result<ImageLock, String> {
    let guard = ImageLock(
        file.try_clone()
            .map_err(|e| format!("Could not open '{shown_name}': {e}"))?,
    );
    let fd = guard.0.as_raw_fd();
    let mut locked = (Perms::NONE, Perms::NONE);
    locks::apply(
        fd,
        access.perm,
        access.shared.complement(),
        false,
        &mut locked,
    )?;
    locks::check(fd, access.perm, access.shared)
        .map_err(|e| format!("{e}\nIs another process using the image [{shown_name}]?"))?;
    Ok(guard)
}

/// The image locks [`lock_image`] took, held until it is dropped.
pub struct ImageLock(File);

impl Drop for ImageLock {
    fn drop(&mut self) {
        locks::release_all(self.0.as_raw_fd());
    }
}

/// file-posix's permission state: what is granted, and which bytes are locked.
#[derive(Clone, Copy)]
struct LockState {
    access: Access,
    /// bytes 100 + bit held (read locks)
    locked_perm: Perms,
    /// bytes 200 + bit held: permissions not shared
    locked_unshared: Perms,
}

impl Default for LockState {
    fn default() -> Self {
        Self {
            access: Access::UNUSED,
            locked_perm: Perms::NONE,
            locked_unshared: Perms::NONE,
        }
    }
}

/// Image locking as file-posix does it, with open file description (OFD) byte-range locks
/// (so that two descriptors of one process conflict as two processes do, and QEMU's own
/// processes see ours): a shared lock on byte 100 + bit for each permission held, on byte
/// 200 + bit for each one not shared. A permission is available when nobody else locks its
/// "not shared" byte; not sharing one is possible when nobody else locks its "held" byte.
mod locks {
    use super::Perms;
    use std::os::fd::RawFd;

    const PERM_BASE: i64 = 100;
    const SHARED_BASE: i64 = 200;

    fn flock(kind: i32, start: i64) -> libc::flock {
        // SAFETY: flock is plain data; zero is a valid value for every field (l_pid must be 0
        // for OFD locks).
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = kind as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = start;
        fl.l_len = 1;
        fl
    }

    /// QEMU's qemu_lock_fd (shared) / qemu_unlock_fd on one byte; Err(errno).
    fn set(fd: RawFd, start: i64, lock: bool) -> Result<(), i32> {
        let mut fl = flock(if lock { libc::F_RDLCK } else { libc::F_UNLCK }, start);
        // SAFETY: fcntl with a valid flock for F_OFD_SETLK.
        if unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &mut fl) } == -1 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        Ok(())
    }

    /// QEMU's qemu_lock_fd_test (exclusive): whether another open file description locks
    /// the byte (EAGAIN), or the test itself failed.
    fn test(fd: RawFd, start: i64) -> Result<(), i32> {
        let mut fl = flock(libc::F_WRLCK, start);
        // SAFETY: fcntl with a valid flock for F_OFD_GETLK, which fills it in.
        if unsafe { libc::fcntl(fd, libc::F_OFD_GETLK, &mut fl) } == -1 {
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO));
        }
        if fl.l_type == libc::F_UNLCK as libc::c_short {
            Ok(())
        } else {
            Err(libc::EAGAIN)
        }
    }

    /// QEMU's raw_lock_error_setg_errno: a conflict is just the message.
    fn lock_error(errno: i32, msg: String) -> String {
        if errno == libc::EAGAIN {
            msg
        } else {
            format!("{msg}: {}", crate::errno::strerror(errno))
        }
    }

    /// QEMU's raw_apply_lock_bytes: locks the bytes of `perm` and `unshared` that `locked`
    /// does not hold yet; with `unlock`, unlocks those it holds and are not wanted. `locked`
    /// follows what succeeded.
    pub fn apply(
        fd: RawFd,
        perm: Perms,
        unshared: Perms,
        unlock: bool,
        locked: &mut (Perms, Perms),
    ) -> Result<(), String> {
        for (base, want, held) in [
            (PERM_BASE, perm, &mut locked.0),
            (SHARED_BASE, unshared, &mut locked.1),
        ] {
            for (bit, _) in Perms::ALL.each() {
                let p = Perms::of_bit(bit);
                let off = base + bit as i64;
                if want.contains(p) && !held.contains(p) {
                    set(fd, off, true)
                        .map_err(|e| lock_error(e, format!("Failed to lock byte {off}")))?;
                    *held = held.union(p);
                } else if unlock && held.contains(p) && !want.contains(p) {
                    set(fd, off, false).map_err(|e| {
                        format!("Failed to unlock byte {off}: {}", crate::errno::strerror(e))
                    })?;
                    *held = held.without(p);
                }
            }
        }
        Ok(())
    }

    /// Unlocks every lock byte of the open file description. Closing the descriptor would do
    /// that too, but only once no other process shares the description: a child forked by
    /// another thread keeps it (and its locks) until it execs.
    pub fn release_all(fd: RawFd) {
        for base in [PERM_BASE, SHARED_BASE] {
            for bit in 0..4 {
                let _ = set(fd, base + bit, false);
            }
        }
    }

    /// QEMU's raw_check_lock_bytes: nobody else may refuse to share what we take, or hold
    /// what we refuse to share.
    pub fn check(fd: RawFd, perm: Perms, shared: Perms) -> Result<(), String> {
        for (bit, name) in perm.each() {
            test(fd, SHARED_BASE + bit as i64)
                .map_err(|e| lock_error(e, format!("Failed to get \"{name}\" lock")))?;
        }
        for (bit, name) in shared.complement().each() {
            test(fd, PERM_BASE + bit as i64)
                .map_err(|e| lock_error(e, format!("Failed to get shared \"{name}\" lock")))?;
        }
        Ok(())
    }
}

/// file-posix's raw_probe_alignment for a descriptor opened with O_DIRECT. Our I/O itself goes
/// through an ordinary descriptor (the data are the same); only the alignment QEMU would work
/// with is taken from here. It depends on the filesystem and even on the file: on ext4 a
/// one-byte direct read at a hole succeeds (so QEMU settles on 4096) while on data it fails
/// (512); tmpfs takes any size (4096). None where no size works at all.
fn probe_direct_alignment(file: &File) -> Option<u64> {
    let fd = file.as_raw_fd();
    // NFS does direct I/O at byte granularity (QEMU's dio_byte_aligned).
    // SAFETY: fstatfs fills the struct we pass.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut fs) } == 0 && fs.f_type == libc::NFS_SUPER_MAGIC {
        return Some(1);
    }
    let mut align: u64 = 0;
    // Block devices know their logical sector size.
    let mut sector_size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int.
    if unsafe { libc::ioctl(fd, libc::BLKSSZGET, &mut sector_size) } >= 0 {
        align = sector_size as u64;
    }
    // XFS_IOC_DIOINFO (_IOR('X', 30, struct dioattr)): its minimum I/O size.
    #[repr(C)]
    struct DioAttr {
        mem: u32,
        miniosz: u32,
        maxiosz: u32,
    }
    let mut dio = DioAttr {
        mem: 0,
        miniosz: 0,
        maxiosz: 0,
    };
    const XFS_IOC_DIOINFO: libc::Ioctl = ((2 << 30) | (12 << 16) | (0x58 << 8) | 30) as libc::Ioctl;
    // SAFETY: the ioctl writes at most the three u32 of DioAttr.
    if unsafe { libc::ioctl(fd, XFS_IOC_DIOINFO, &mut dio) } >= 0 {
        align = dio.miniosz as u64;
    }
    if align != 0 {
        return Some(align);
    }
    // Otherwise the smallest read at offset 0 the kernel accepts; one byte means "any", for
    // which QEMU takes the safe page-sized value.
    let page = page_size();
    let max_align = page.max(4096);
    let layout = std::alloc::Layout::from_size_align(max_align, max_align).ok()?;
    // SAFETY: a non-zero size; freed below with the same layout.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return None;
    }
    let mut found = None;
    for size in [1usize, 512, 1024, 2048, 4096] {
        // SAFETY: `buf` holds max_align >= size bytes.
        let r = unsafe { libc::pread(fd, buf.cast(), size, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            found = Some(if size == 1 {
                max_align as u64
            } else {
                size as u64
            });
            break;
        }
    }
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    found
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

impl Drop for FileDriver {
    fn drop(&mut self) {
        if self.use_lock {
            locks::release_all(self.file().as_raw_fd());
        }
        if let Some(path) = &self.temporary {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Opens the host file as file-posix does, with QEMU's message on failure.
fn open_host_file(path: &Path, shown_name: &str, writable: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| {
            format!(
                "Could not open '{shown_name}': {}",
                crate::errno::strerror(errno_of(&e))
            )
        })
}

/// A descriptor opened for new flags, with its mode (writable, O_DIRECT) and the request
/// alignment that mode gives.
type NewFile = (File, (bool, bool), u64);

/// The request alignment QEMU finds for the file under O_DIRECT (see [`probe_direct_alignment`]),
/// with its messages when there is none.
fn direct_alignment(path: &Path, shown_name: &str, writable: bool) -> Result<u64, String> {
    let direct_file = open_direct(path, shown_name, writable)?;
    probe_direct_alignment(&direct_file)
        .ok_or_else(|| "Could not find working O_DIRECT alignment\nTry cache.direct=off".into())
}

/// The file opened with O_DIRECT, with QEMU's messages when that fails.
fn open_direct(path: &Path, shown_name: &str, writable: bool) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(writable)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| {
            if errno_of(&e) == libc::EINVAL {
                format!("Could not open '{shown_name}': filesystem does not support O_DIRECT")
            } else {
                format!(
                    "Could not open '{shown_name}': {}",
                    crate::errno::strerror(errno_of(&e))
                )
            }
        })
}

/// A prepared reopen: the descriptor the new flags need, when they need another one.
struct Reopen {
    new_file: Option<NewFile>,
}

/// The options of the `file` driver (QEMU's raw_runtime_opts in file-posix).
const RUNTIME_OPTS: [(&str, OptType); 7] = [
    ("filename", OptType::String),
    ("aio", OptType::String),
    ("aio-max-batch", OptType::Number),
    ("locking", OptType::String),
    ("pr-manager", OptType::String),
    ("drop-cache", OptType::Bool),
    ("x-check-cache-dropped", OptType::Bool),
];

/// Opens a file-posix node (`file`, `host_device`, `host_cdrom`) from its options (QEMU's
/// raw_open_common): `filename` is there, the generic layer checked that it is not empty.
/// The limits give file-posix's request alignment.
pub fn open_node(
    kind: HostKind,
    opts: &mut Options,
    flags: &OpenFlags,
    ctx: &OpenContext,
) -> Result<(Node, Limits), String> {
    let o = absorb(opts, &RUNTIME_OPTS)?;
    let name = o.string("filename").unwrap_or_default().to_string();
    // aio=native (an option, or the flag qemu-io's -k/-i give) needs O_DIRECT.
    let native_aio = match o.string("aio") {
        None => flags.native_aio,
        Some("native") => true,
        Some("threads" | "io_uring") => false,
        Some(other) => return Err(format!("invalid parameter value: {other}")),
    };
    // OFD locks are always there on Linux, so `auto` is `on`.
    let use_lock = match o.string("locking") {
        None | Some("on" | "auto") => true,
        Some("off") => false,
        Some(mode) => return Err(format!("invalid parameter value: {mode}")),
    };
    if let Some(id) = o.string("pr-manager") {
        return Err(format!("No persistent reservation manager with id '{id}'"));
    }
    let driver = FileDriver::open(
        kind,
        &ctx.resolve(&name),
        &name,
        flags.read_only,
        !ctx.skip_host_sync,
        flags.direct,
    )?
    .with_locking(use_lock);
    if native_aio && !flags.direct {
        return Err(
            "aio=native was specified, but it requires cache.direct=on, which was not specified."
                .into(),
        );
    }
    let limits = Limits {
        request_alignment: driver.request_alignment(),
        ..Limits::default()
    };
    let mut node = Node::new(Box::new(driver), Vec::new(), name);
    node.supported_write_flags = ReqFlags::FUA;
    node.supported_zero_flags = ReqFlags::MAY_UNMAP.with(ReqFlags::NO_FALLBACK);
    Ok((node, limits))
}

impl FileDriver {
    /// Opens `path` (already resolved against the caller's directory). The error is QEMU's text.
    /// `direct` is cache.direct (O_DIRECT): the request alignment is then probed as QEMU does.
    pub fn open(
        kind: HostKind,
        path: &Path,
        shown_name: &str,
        read_only: bool,
        sync: bool,
        direct: bool,
    ) -> Result<Self, String> {
        let open = |flags: i32| {
            OpenOptions::new()
                .read(true)
                .write(!read_only)
                .custom_flags(flags)
                .open(path)
        };
        let could_not = |e: &io::Error| {
            format!(
                "Could not open '{shown_name}': {}",
                crate::errno::strerror(errno_of(e))
            )
        };
        let file = open(0).map_err(|e| could_not(&e))?;
        let ft = file.metadata().map_err(|e| could_not(&e))?.file_type();
        use std::os::unix::fs::FileTypeExt;
        match kind {
            HostKind::File if !ft.is_file() => {
                return Err(format!(
                    "'file' driver requires '{shown_name}' to be a regular file"
                ));
            }
            HostKind::HostDevice | HostKind::HostCdrom
                if !ft.is_block_device() && !ft.is_char_device() =>
            {
                return Err(format!(
                    "'{}' driver requires '{shown_name}' to be either a character or block device",
                    kind.name()
                ));
            }
            _ => {}
        }
        let request_alignment = if direct {
            direct_alignment(path, shown_name, !read_only)?
        } else {
            1
        };
        Ok(Self {
            kind,
            file: RefCell::new(file),
            path: path.to_path_buf(),
            shown_name: shown_name.to_string(),
            mode: Cell::new((!read_only, direct)),
            sync,
            temporary: None,
            has_write_zeroes: Cell::new(true),
            has_discard: Cell::new(true),
            has_fallocate: Cell::new(true),
            perm_change: RefCell::new(None),
            request_alignment,
            use_lock: true,
            locks: Cell::new(LockState::default()),
        })
    }

    /// `locking=off` turns the image locks off.
    pub fn with_locking(mut self, use_lock: bool) -> Self {
        self.use_lock = use_lock;
        self
    }

    /// QEMU's raw_handle_perm_lock(RAW_PL_PREPARE): locks what the old and the new access
    /// need together, then checks that nobody else conflicts with the new one; on a
    /// conflict, back to the old locks.
    fn lock_prepare(&self, node: &Node, new: Access) -> Result<(), String> {
        let state = self.locks.get();
        let old = state.access;
        if !self.use_lock || (old.perm.contains(new.perm) && new.shared.contains(old.shared)) {
            return Ok(());
        }
        let fd = self.file().as_raw_fd();
        let mut locked = (state.locked_perm, state.locked_unshared);
        let mut result = locks::apply(
            fd,
            old.perm.union(new.perm),
            old.shared.complement().union(new.shared.complement()),
            false,
            &mut locked,
        );
        if result.is_ok() {
            result = locks::check(fd, new.perm, new.shared).map_err(|e| {
                format!(
                    "{e}\nIs another process using the image [{}]?",
                    node.filename
                )
            });
        }
        self.set_locked(locked);
        if result.is_err() {
            self.lock_abort();
        }
        result
    }

    /// RAW_PL_ABORT: back to the locks the granted access needs. Only unlocking happens
    /// here, which cannot conflict.
    fn lock_abort(&self) {
        if !self.use_lock {
            return;
        }
        let old = self.locks.get().access;
        self.relock(old);
    }

    /// RAW_PL_COMMIT: exactly the locks `new` needs, which is granted from now on.
    fn lock_commit(&self, new: Access) {
        if self.use_lock {
            self.relock(new);
        }
        let state = self.locks.get();
        self.locks.set(LockState {
            access: new,
            ..state
        });
    }

    fn relock(&self, access: Access) {
        let state = self.locks.get();
        let mut locked = (state.locked_perm, state.locked_unshared);
        let fd = self.file().as_raw_fd();
        // QEMU only warns here: unlocking does not fail on a local file system.
        let _ = locks::apply(
            fd,
            access.perm,
            access.shared.complement(),
            true,
            &mut locked,
        );
        self.set_locked(locked);
    }

    fn set_locked(&self, (locked_perm, locked_unshared): (Perms, Perms)) {
        let state = self.locks.get();
        self.locks.set(LockState {
            locked_perm,
            locked_unshared,
            ..state
        });
    }

    fn file(&self) -> Ref<'_, File> {
        self.file.borrow()
    }

    /// Records the descriptor as opened with `cache.direct` (which a reopen compares against)
    /// where the engine opened it without probing the alignment.
    pub fn with_direct(self, direct: bool) -> Self {
        self.mode.set((self.mode.get().0, direct));
        self
    }

    /// The request alignment file-posix gives the node: 1, or under O_DIRECT what the probe found.
    pub fn request_alignment(&self) -> u64 {
        self.request_alignment
    }

    /// QEMU's raw_reconfigure_getfd: the descriptor `flags` need when it is not the one open
    /// (None: the current one does).
    fn reconfigure(&self, flags: OpenFlags) -> Result<Option<NewFile>, String> {
        let mode = (!flags.read_only, flags.direct);
        if mode == self.mode.get() {
            return Ok(None);
        }
        if self.temporary.is_some() {
            return Err(format!(
                "Could not open '{}': {}",
                self.shown_name,
                crate::errno::strerror(libc::ENOENT)
            ));
        }
        let file = open_host_file(&self.path, &self.shown_name, mode.0)?;
        // QEMU 10.0.2 probes the alignment on the descriptor still in use, not the new one
        // (a one-byte read works there: a page, unless the host says otherwise).
        let align = if mode.1 {
            open_direct(&self.path, &self.shown_name, mode.0)?;
            probe_direct_alignment(&self.file())
                .ok_or("Could not find working O_DIRECT alignment\nTry cache.direct=off")?
        } else {
            1
        };
        Ok(Some((file, mode, align)))
    }

    /// A new descriptor replaces the old, with its mode and the node's request alignment
    /// (QEMU's raw_refresh_limits).
    fn install(&self, node: &Node, (file, mode, align): NewFile) {
        if self.use_lock {
            locks::release_all(self.file().as_raw_fd());
        }
        *self.file.borrow_mut() = file;
        // The old descriptor's locks went with it; the commit that follows locks the new one.
        self.set_locked((Perms::NONE, Perms::NONE));
        self.mode.set(mode);
        node.set_limits(Limits {
            request_alignment: align,
            ..node.limits()
        });
    }

    /// Deletes the file when the node is dropped (QEMU's BDRV_O_TEMPORARY).
    pub fn delete_on_close(mut self, path: std::path::PathBuf) -> Self {
        self.temporary = Some(path);
        self
    }

    /// The host file's size (the node keeps the block layer's own idea of the length).
    fn len(&self) -> IoResult<u64> {
        self.file()
            .metadata()
            .map(|m| m.len())
            .map_err(|e| errno_of(&e))
    }

    fn read_full(&self, offset: u64, buf: &mut [u8]) -> IoResult {
        let mut done = 0;
        while done < buf.len() {
            match self.file().read_at(&mut buf[done..], offset + done as u64) {
                // Past the end of the file reads as zeroes, as file-posix pads short reads.
                Ok(0) => {
                    buf[done..].fill(0);
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno_of(&e)),
            }
        }
        Ok(())
    }

    fn fdatasync(&self) -> IoResult {
        if self.sync {
            self.file().sync_data().map_err(|e| errno_of(&e))?;
        }
        // Durable from here on in the crash model, whether or not the host was asked to sync.
        self.log(crash_log::Op::Flush);
        Ok(())
    }

    /// Adds a change or flush of this file to the crash log, when one is being recorded.
    fn log(&self, op: crash_log::Op) {
        crash_log::record(&self.path, op);
    }

    fn fallocate(&self, mode: i32, offset: u64, bytes: u64) -> IoResult {
        // SAFETY: fallocate on an fd we own; offsets are checked by the request layer.
        let r =
            unsafe { libc::fallocate(self.file().as_raw_fd(), mode, offset as i64, bytes as i64) };
        if r == 0 {
            return Ok(());
        }
        // file-posix's translate_err: "not supported here" in all its spellings is ENOTSUP
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENODEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOTTY) | None => {
                Err(libc::ENOTSUP)
            }
            Some(e) => Err(e),
        }
    }

    /// Zeroes a range as file-posix's handle_aiocb_write_zeroes does: FALLOC_FL_ZERO_RANGE,
    /// else a punched hole made allocated again, else (past the end) a plain fallocate;
    /// whatever the host file system refuses as unsupported is not tried again.
    fn zero_range(&self, offset: u64, bytes: u64, unmap: bool) -> IoResult {
        let end = offset + bytes;
        // Punching a hole keeps the size, so it only serves the part inside the file.
        if unmap && end <= self.len()? {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            if self.fallocate(mode, offset, bytes).is_ok() {
                return Ok(());
            }
        }
        if self.has_write_zeroes.get() {
            match self.fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, bytes) {
                Err(libc::ENOTSUP) => self.has_write_zeroes.set(false),
                // some file systems refuse unaligned ranges: the fallbacks may still do
                Err(libc::EINVAL) => {}
                r => return r,
            }
        }
        if self.has_discard.get() && self.has_fallocate.get() {
            let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match self.fallocate(punch, offset, bytes) {
                Ok(()) => match self.fallocate(0, offset, bytes) {
                    Err(libc::ENOTSUP) => self.has_fallocate.set(false),
                    r => return r,
                },
                Err(libc::EINVAL) => {}
                Err(libc::ENOTSUP) => self.has_discard.set(false),
                Err(e) => return Err(e),
            }
        }
        if self.has_fallocate.get() && offset >= self.len()? {
            match self.fallocate(0, offset, bytes) {
                Err(libc::ENOTSUP) => self.has_fallocate.set(false),
                r => return r,
            }
        }
        Err(libc::ENOTSUP)
    }
}

impl BlockDriver for FileDriver {
    fn format_name(&self) -> &'static str {
        self.kind.name()
    }
    fn protocol_name(&self) -> Option<&'static str> {
        Some(self.kind.name())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pwrite_zeroes: true,
            pdiscard: true,
            flush_to_disk: true,
            block_status: true,
            truncate: true,
            truncate_prealloc: true,
            ..Capabilities::default()
        }
    }

    fn preadv<'a>(
        &'a self,
        _node: &'a Node,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let ret = self.read_full(offset, buf);
            pool_job().await;
            ret
        })
    }

    fn pwritev<'a>(
        &'a self,
        _node: &'a Node,
        offset: u64,
        buf: &'a [u8],
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let ret = self
                .file()
                .write_all_at(buf, offset)
                .map_err(|e| errno_of(&e));
            if ret.is_ok() && crash_log::recording() {
                self.log(crash_log::Op::Write {
                    offset,
                    data: buf.to_vec(),
                });
            }
            pool_job().await;
            // FUA as file-posix does it with thread-pool I/O: a second job, a data sync.
            if ret.is_ok() && flags.has(ReqFlags::FUA) {
                let ret = self.fdatasync();
                pool_job().await;
                return ret;
            }
            ret
        })
    }

    fn pwrite_zeroes<'a>(
        &'a self,
        _node: &'a Node,
        offset: u64,
        bytes: u64,
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let ret = self.zero_range(offset, bytes, flags.has(ReqFlags::MAY_UNMAP));
            if ret.is_ok() {
                self.log(crash_log::Op::Zero { offset, len: bytes });
            }
            pool_job().await;
            ret
        })
    }

    fn pdiscard<'a>(&'a self, _node: &'a Node, offset: u64, bytes: u64) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on an fd we own.
            let r = unsafe {
                libc::fallocate(self.file().as_raw_fd(), mode, offset as i64, bytes as i64)
            };
            if r == 0 {
                self.log(crash_log::Op::Zero { offset, len: bytes });
            }
            pool_job().await;
            // Discard is advisory: a host that cannot punch holes just keeps the data.
            if r == 0 { Ok(()) } else { Err(libc::ENOTSUP) }
        })
    }

    fn flush_to_disk<'a>(&'a self, _node: &'a Node) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let ret = self.fdatasync();
            pool_job().await;
            ret
        })
    }

    fn block_status<'a>(
        &'a self,
        node: &'a Node,
        want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> BoxFut<'a, IoResult<BlockStatus>> {
        Box::pin(async move {
            // Callers that only ask "allocated?" get one answer for the whole range, as
            // file-posix gives without want_zero.
            if !want_zero {
                return Ok(BlockStatus {
                    flags: status::DATA | status::OFFSET_VALID,
                    pnum: bytes,
                    map: offset,
                    file: None,
                });
            }
            let fd = self.file().as_raw_fd();
            // SAFETY: lseek on an fd we own; it does not touch memory.
            let data = unsafe { libc::lseek(fd, offset as i64, libc::SEEK_DATA) };
            let (flags, pnum) = if data < 0 || data as u64 > offset {
                // A hole (or everything past here is one) up to the next data.
                let end = if data < 0 {
                    offset + bytes
                } else {
                    data as u64
                };
                (status::ZERO, (end - offset).min(bytes))
            } else {
                // SAFETY: as above.
                let hole = unsafe { libc::lseek(fd, offset as i64, libc::SEEK_HOLE) };
                let end = if hole < 0 {
                    offset + bytes
                } else {
                    hole as u64
                };
                (status::DATA, (end - offset).clamp(1, bytes))
            };
            let align = node.limits().request_alignment;
            let pnum = if pnum < bytes {
                (pnum / align * align).max(align)
            } else {
                pnum
            };
            Ok(BlockStatus {
                flags: flags | status::OFFSET_VALID,
                pnum,
                map: offset,
                file: None,
            })
        })
    }

    fn truncate<'a>(&'a self, _node: &'a Node, size: u64) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let ret = self.file().set_len(size).map_err(|e| {
                format!(
                    "Failed to resize file: {}",
                    crate::errno::strerror(errno_of(&e))
                )
            });
            if ret.is_ok() {
                self.log(crash_log::Op::Truncate { size });
            }
            pool_job().await;
            ret
        })
    }

    /// QEMU's raw_regular_truncate: `falloc` reserves the new range, `full` writes zeros.
    fn truncate_prealloc<'a>(
        &'a self,
        node: &'a Node,
        size: u64,
        prealloc: &'a str,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            if prealloc == "off" {
                return self.truncate(node, size).await;
            }
            let current = self.len().map_err(crate::errno::strerror)?;
            if current > size {
                return Err("Cannot use preallocation for shrinking files".into());
            }
            let fail = |msg: &str, e: i32| format!("{msg}: {}", crate::errno::strerror(e));
            let r = match prealloc {
                "falloc" => {
                    if size == current {
                        Ok(())
                    } else {
                        // SAFETY: plain syscall on our own descriptor.
                        let e = unsafe {
                            libc::posix_fallocate(
                                self.file().as_raw_fd(),
                                current as libc::off_t,
                                (size - current) as libc::off_t,
                            )
                        };
                        if e == 0 {
                            Ok(())
                        } else {
                            Err(fail("Could not preallocate new data", e))
                        }
                    }
                }
                "full" => (|| {
                    let file = self.file();
                    file.set_len(size)
                        .map_err(|e| fail("Could not resize file", errno_of(&e)))?;
                    // file-posix writes the zeroes from a plain malloc'ed buffer, which
                    // O_DIRECT refuses: the file gets its old length back.
                    if node.flags().direct && size > current {
                        let _ = file.set_len(current);
                        return Err(fail(
                            "Could not write zeros for preallocation",
                            libc::EINVAL,
                        ));
                    }
                    let zeros = vec![0u8; 65536];
                    let mut off = current;
                    while off < size {
                        let n = (size - off).min(zeros.len() as u64) as usize;
                        file.write_all_at(&zeros[..n], off).map_err(|e| {
                            fail("Could not write zeros for preallocation", errno_of(&e))
                        })?;
                        off += n as u64;
                    }
                    file.sync_all()
                        .map_err(|e| fail("Could not flush file to disk", errno_of(&e)))
                })(),
                _ => Err(format!("Unsupported preallocation mode: {prealloc}")),
            };
            if r.is_ok() {
                // Whatever was reserved or written reads as zeros and (`full`) was synced.
                self.log(crash_log::Op::Truncate { size });
            }
            pool_job().await;
            r
        })
    }

    /// file-posix's reopen takes `drop-cache` and `x-check-cache-dropped` (page-cache
    /// details with nothing to do here); `filename`, `aio`, `locking` and the rest cannot change.
    fn reopen_prepare<'a>(
        &'a self,
        _node: &'a Node,
        opts: &'a mut crate::block::open::Options,
        _flags: OpenFlags,
    ) -> BoxFut<'a, Result<Option<ReopenState>, String>> {
        Box::pin(async move {
            for key in ["drop-cache", "x-check-cache-dropped"] {
                if let Some(v) = opts.remove(key) {
                    crate::block::reopen::parse_bool(key, &v)?;
                }
            }
            Ok(Some(Box::new(Reopen { new_file: None }) as ReopenState))
        })
    }

    /// QEMU's raw_reconfigure_getfd: a new access mode or O_DIRECT setting needs the file opened
    /// again by name, which fails for a temporary file (already unlinked in QEMU); then the
    /// locks for the new access (raw_check_perm).
    fn reopen_check_perm(
        &self,
        node: &Node,
        state: &mut Option<ReopenState>,
        flags: OpenFlags,
        access: Access,
    ) -> Result<(), String> {
        if let Some(file) = self.reconfigure(flags)?
            && let Some(r) = state.as_mut().and_then(|s| s.downcast_mut::<Reopen>())
        {
            r.new_file = Some(file);
        }
        self.lock_prepare(node, access)
    }

    /// raw_check_perm: the node's flags against the recorded mode, which a reopen may have
    /// zeroed (see reopen_commit), then the locks for the new access.
    fn check_perm(&self, node: &Node, access: Access) -> Result<(), String> {
        let new_file = self.reconfigure(node.flags())?;
        self.lock_prepare(node, access)?;
        *self.perm_change.borrow_mut() = new_file;
        Ok(())
    }

    /// raw_set_perm: the new descriptor, if one was needed, replaces the old; the locks become
    /// exactly what `access` needs.
    fn set_perm(&self, node: &Node, access: Access) {
        if let Some(new) = self.perm_change.borrow_mut().take() {
            self.install(node, new);
        }
        self.lock_commit(access);
    }

    /// raw_abort_perm.
    fn abort_perm(&self, _node: &Node) {
        self.perm_change.borrow_mut().take();
        self.lock_abort();
    }

    /// A new descriptor brings its mode along. Keeping the old one, QEMU 10.0.2's
    /// raw_reopen_commit still overwrites the recorded open flags with a zeroed value
    /// (read-only, no O_DIRECT): the next reopen of a writable node opens the file by name
    /// again, which only shows for a temporary file.
    fn reopen_commit(&self, node: &Node, state: Option<ReopenState>) {
        let Some(Ok(r)) = state.map(|s| s.downcast::<Reopen>()) else {
            return;
        };
        match r.new_file {
            Some(new) => self.install(node, new),
            None => self.mode.set((false, false)),
        }
    }

    /// The exact size, asked of the host afresh as file-posix does; the node keeps it in whole
    /// sectors.
    fn getlength(&self, _node: &Node) -> IoResult<u64> {
        self.len()
    }

    fn allocated_file_size(&self, _node: &Node) -> IoResult<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file()
            .metadata()
            .map(|m| m.blocks() * 512)
            .map_err(|e| errno_of(&e))
    }
}
