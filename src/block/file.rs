//! The `file` protocol driver: positional I/O on a host file. Every request completes after
//! one executor turn, as QEMU's thread-pool I/O completes through a bottom half.

use super::driver::{BlockDriver, BlockStatus, BoxFut, Capabilities, IoResult, ReqFlags, status};
use super::executor::pool_job;
use super::node::{Node, OpenFlags};
use super::options::{OpenContext, OptType, Options, absorb};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct FileDriver {
    file: File,
    /// whether flushes and FUA writes reach the host disk (fdatasync)
    sync: bool,
    /// a temporary file (a snapshot overlay) that goes away with the node
    temporary: Option<std::path::PathBuf>,
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

/// Opens a `file` node from its options (QEMU's raw_open_common): `filename` is there, the
/// generic layer checked that it is not empty.
pub fn open_node(opts: &mut Options, flags: &OpenFlags, ctx: &OpenContext) -> Result<Node, String> {
    let o = absorb(opts, &RUNTIME_OPTS)?;
    let name = o.string("filename").unwrap_or_default().to_string();
    // aio=native (an option, or the flag qemu-io's -k/-i give) needs O_DIRECT.
    let native_aio = match o.string("aio") {
        None => flags.native_aio,
        Some("native") => true,
        Some("threads" | "io_uring") => false,
        Some(other) => return Err(format!("invalid parameter value: {other}")),
    };
    if let Some(mode) = o.string("locking")
        && !matches!(mode, "on" | "off" | "auto")
    {
        return Err(format!("invalid parameter value: {mode}"));
    }
    if let Some(id) = o.string("pr-manager") {
        return Err(format!("No persistent reservation manager with id '{id}'"));
    }
    let driver = FileDriver::open(
        &ctx.resolve(&name),
        &name,
        flags.read_only,
        !ctx.skip_host_sync,
    )?;
    if native_aio && !flags.direct {
        return Err(
            "aio=native was specified, but it requires cache.direct=on, which was not specified."
                .into(),
        );
    }
    let mut node = Node::new(Box::new(driver), Vec::new(), name);
    node.supported_write_flags = ReqFlags::FUA;
    node.supported_zero_flags = ReqFlags::MAY_UNMAP.with(ReqFlags::NO_FALLBACK);
    Ok(node)
}

impl FileDriver {
    /// Opens `path` (already resolved against the caller's directory). The error is QEMU's text.
    pub fn open(
        path: &Path,
        shown_name: &str,
        read_only: bool,
        sync: bool,
    ) -> Result<Self, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| {
                format!(
                    "Could not open '{shown_name}': {}",
                    crate::errno::strerror(errno_of(&e))
                )
            })?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(format!("'{shown_name}' is a directory"));
        }
        Ok(Self {
            file,
            sync,
            temporary: None,
        })
    }

    /// Deletes the file when the node is dropped (QEMU's BDRV_O_TEMPORARY).
    pub fn delete_on_close(mut self, path: std::path::PathBuf) -> Self {
        self.temporary = Some(path);
        self
    }

    /// The host file's size (the node keeps the block layer's own idea of the length).
    fn len(&self) -> IoResult<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| errno_of(&e))
    }

    fn read_full(&self, offset: u64, buf: &mut [u8]) -> IoResult {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
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
        self.file.sync_data().map_err(|e| errno_of(&e))
    }

    fn zero_range(&self, offset: u64, bytes: u64, unmap: bool) -> IoResult {
        let fd = self.file.as_raw_fd();
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
        "file"
    }
    fn protocol_name(&self) -> Option<&'static str> {
        Some("file")
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
                .file
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
                libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, bytes as i64)
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
            let fd = self.file.as_raw_fd();
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
            let ret = self.file.set_len(size).map_err(|e| {
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
                                self.file.as_raw_fd(),
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
                    self.file
                        .set_len(size)
                        .map_err(|e| fail("Could not resize file", errno_of(&e)))?;
                    let zeros = vec![0u8; 65536];
                    let mut off = current;
                    while off < size {
                        let n = (size - off).min(zeros.len() as u64) as usize;
                        self.file.write_all_at(&zeros[..n], off).map_err(|e| {
                            fail("Could not write zeros for preallocation", errno_of(&e))
                        })?;
                        off += n as u64;
                    }
                    self.file
                        .sync_all()
                        .map_err(|e| fail("Could not flush file to disk", errno_of(&e)))
                })(),
                _ => Err(format!("Unsupported preallocation mode: {prealloc}")),
            };
            pool_job().await;
            r
        })
    }

    fn getlength(&self, _node: &Node) -> IoResult<u64> {
        self.len()
    }

    fn allocated_file_size(&self, _node: &Node) -> IoResult<u64> {
        use std::os::unix::fs::MetadataExt;
        self.file
            .metadata()
            .map(|m| m.blocks() * 512)
            .map_err(|e| errno_of(&e))
    }
}
