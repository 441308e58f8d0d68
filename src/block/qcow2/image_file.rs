//! The image file as the metadata readers outside the request path reach it: opening
//! (QEMU's qcow2_do_open reads the header, extensions and tables with plain `bdrv_pread`s, not
//! through the caches) and the refcount checker (an fsck must not trust the driver's caches).
//! The driver reaches the file through its file node, so blkdebug rules see those reads and
//! writes; qemu-img's `info` and `check` read the host file itself.

use crate::block::driver::ReqFlags;
use crate::block::executor::block_on;
use crate::block::io;
use crate::block::node::Node;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

/// The image file; errors are errno values.
pub trait ImageFile {
    /// `len` bytes at `offset`, zeros past the end of the file (as QEMU's file protocol reads).
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, i32>;
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), i32>;
    fn file_len(&self) -> u64;
    fn set_len(&self, len: u64) -> Result<(), i32>;
    /// Best effort (a freed cluster): failure leaves the bytes in place.
    fn discard(&self, offset: u64, len: u64);
}

/// The image's file node, driven synchronously (open and repair run before any request).
pub struct NodeFile(pub Rc<Node>);

impl ImageFile for NodeFile {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let f = self.0.clone();
        block_on(async move {
            let mut buf = vec![0u8; len];
            io::preadv(&f, offset, &mut buf).await.map(|_| buf)
        })
        .unwrap_or(Err(libc::EIO))
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), i32> {
        let (f, data) = (self.0.clone(), data.to_vec());
        block_on(async move { io::pwritev(&f, offset, &data, ReqFlags::NONE).await })
            .unwrap_or(Err(libc::EIO))
    }

    fn file_len(&self) -> u64 {
        self.0.getlength().unwrap_or(0)
    }

    fn set_len(&self, len: u64) -> Result<(), i32> {
        let f = self.0.clone();
        block_on(async move { io::truncate(&f, len).await })
            .unwrap_or(Err(String::new()))
            .map_err(|_| libc::EIO)
    }

    fn discard(&self, offset: u64, len: u64) {
        let f = self.0.clone();
        let _ = block_on(async move { io::pdiscard(&f, offset, len).await });
    }
}

/// The host file itself, with plain positioned I/O (qemu-img's metadata-only opens). Its
/// length is asked once and then kept up to date here: the checker asks for it per cluster.
pub struct PlainFile {
    file: File,
    len: std::cell::Cell<Option<u64>>,
}

impl PlainFile {
    pub fn new(file: File) -> Self {
        Self {
            file,
            len: std::cell::Cell::new(None),
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl ImageFile for PlainFile {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno_of(&e)),
            }
        }
        Ok(buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), i32> {
        let r = self.file.write_all_at(data, offset);
        // a failed write may have extended the file partly: then ask again next time
        let end = offset + data.len() as u64;
        self.len
            .set(self.len.get().filter(|_| r.is_ok()).map(|l| l.max(end)));
        r.map_err(|e| errno_of(&e))
    }

    fn file_len(&self) -> u64 {
        if let Some(len) = self.len.get() {
            return len;
        }
        let len = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        self.len.set(Some(len));
        len
    }

    fn set_len(&self, len: u64) -> Result<(), i32> {
        self.len.set(None);
        self.file.set_len(len).map_err(|e| errno_of(&e))
    }

    fn discard(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a valid descriptor we own; failure only leaves the bytes in place.
        unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            );
        }
    }
}
