//! The `file` protocol driver: positional I/O on a host file. Every request completes after
//! one executor turn, as QEMU's thread-pool I/O completes through a bottom half.

use super::driver::{
    BlockDriver, BlockStatus, BoxFut, Capabilities, IoResult, ReopenState, ReqFlags, status,
};
use super::executor::pool_job;
use super::node::{Node, OpenFlags};
use std::cell::{Cell, Ref, RefCell};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
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
    /// whether flushes and FUA writes reach the host disk (fdatasync)
    sync: bool,
    /// a temporary file (a snapshot overlay) that goes away with the node
    temporary: Option<PathBuf>,
}

impl Drop for FileDriver {
    fn drop(&mut self) {
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

/// A prepared reopen: the descriptor the new flags need, when they need another one.
struct Reopen {
    new_file: Option<(File, (bool, bool))>,
}

impl FileDriver {
    /// Opens `path` (already resolved against the caller's directory). The error is QEMU's text.
    pub fn open(
        kind: HostKind,
        path: &Path,
        shown_name: &str,
        read_only: bool,
        sync: bool,
    ) -> Result<Self, String> {
        let file = open_host_file(path, shown_name, !read_only)?;
        let ft = file
            .metadata()
            .map_err(|e| {
                format!(
                    "Could not open '{shown_name}': {}",
                    crate::errno::strerror(errno_of(&e))
                )
            })?
            .file_type();
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
        Ok(Self {
            kind,
            file: RefCell::new(file),
            path: path.to_path_buf(),
            shown_name: shown_name.to_string(),
            mode: Cell::new((!read_only, false)),
            sync,
            temporary: None,
        })
    }

    fn file(&self) -> Ref<'_, File> {
        self.file.borrow()
    }

    /// Records how the descriptor was opened with respect to O_DIRECT (`cache.direct`), which a
    /// reopen compares against.
    pub fn with_direct(self, direct: bool) -> Self {
        self.mode.set((self.mode.get().0, direct));
        self
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
        if !self.sync {
            return Ok(());
        }
        self.file().sync_data().map_err(|e| errno_of(&e))
    }

    fn zero_range(&self, offset: u64, bytes: u64, unmap: bool) -> IoResult {
        let fd = self.file().as_raw_fd();
        let end = offset + bytes;
        let len = self.len()?;
        // Punching a hole keeps the size, so it only serves the part inside the file.
        if unmap && end <= len {
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            // SAFETY: fallocate on an fd we own; offsets are checked by the request layer.
            if unsafe { libc::fallocate(fd, mode, offset as i64, bytes as i64) } == 0 {
                return Ok(());
            }
        }
        // SAFETY: as above.
        if unsafe { libc::fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, offset as i64, bytes as i64) }
            == 0
        {
            return Ok(());
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
            let align = node.limits.request_alignment;
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
    /// again by name, which fails for a temporary file (already unlinked in QEMU).
    fn reopen_check_perm(
        &self,
        _node: &Node,
        state: &mut Option<ReopenState>,
        flags: OpenFlags,
    ) -> Result<(), String> {
        let mode = (!flags.read_only, flags.direct);
        if mode == self.mode.get() {
            return Ok(());
        }
        if self.temporary.is_some() {
            return Err(format!(
                "Could not open '{}': {}",
                self.shown_name,
                crate::errno::strerror(libc::ENOENT)
            ));
        }
        let file = open_host_file(&self.path, &self.shown_name, mode.0)?;
        if let Some(r) = state.as_mut().and_then(|s| s.downcast_mut::<Reopen>()) {
            r.new_file = Some((file, mode));
        }
        Ok(())
    }

    /// A new descriptor brings its mode along. Keeping the old one, QEMU 10.0.2's
    /// raw_reopen_commit still overwrites the recorded open flags with a zeroed value
    /// (read-only, no O_DIRECT): the next reopen of a writable node opens the file by name
    /// again, which only shows for a temporary file.
    fn reopen_commit(&self, _node: &Node, state: Option<ReopenState>) {
        let Some(Ok(r)) = state.map(|s| s.downcast::<Reopen>()) else {
            return;
        };
        match r.new_file {
            Some((file, mode)) => {
                *self.file.borrow_mut() = file;
                self.mode.set(mode);
            }
            None => self.mode.set((false, false)),
        }
    }

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
