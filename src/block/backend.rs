//! The block backend (QEMU's BlockBackend): what a user of the block layer holds. It checks
//! requests against the device size and adds FUA in writethrough mode.

use super::driver::{IoResult, ReqFlags};
use super::io;
use super::node::Node;
use std::rc::Rc;

pub struct BlockBackend {
    pub root: Rc<Node>,
    /// cache mode writethrough: every write is FUA (`reopen -c` changes it)
    pub writethrough: std::cell::Cell<bool>,
    /// what the user holds on the root (QEMU's BLK_PERM_*): WRITE from a read-write open, the
    /// rest as commands took them; `reopen -r` drops WRITE
    pub perms: std::cell::Cell<super::perms::Access>,
}

impl BlockBackend {
    /// QEMU's blk_check_byte_request: the range must lie within the device. Callers check
    /// before they allocate a buffer, so a request that fails here costs nothing.
    pub fn check(&self, offset: u64, bytes: u64) -> IoResult {
        let len = self.root.getlength()?;
        if offset > len || len - offset < bytes {
            return Err(libc::EIO);
        }
        Ok(())
    }

    fn write_flags(&self, flags: ReqFlags) -> ReqFlags {
        if self.writethrough.get() {
            flags.with(ReqFlags::FUA)
        } else {
            flags
        }
    }

    pub fn getlength(&self) -> IoResult<u64> {
        self.root.getlength()
    }

    pub async fn pread(&self, offset: u64, buf: &mut [u8]) -> IoResult {
        self.check(offset, buf.len() as u64)?;
        io::preadv(&self.root, offset, buf).await
    }

    pub async fn pwrite(&self, offset: u64, buf: &[u8], flags: ReqFlags) -> IoResult {
        self.check(offset, buf.len() as u64)?;
        io::pwritev(&self.root, offset, buf, self.write_flags(flags)).await
    }

    /// qemu-io `write -c` (QEMU's blk_pwrite_compressed): no FUA emulation for these.
    pub async fn pwrite_compressed(&self, offset: u64, buf: &[u8]) -> IoResult {
        self.check(offset, buf.len() as u64)?;
        let flags = self.write_flags(ReqFlags::WRITE_COMPRESSED);
        io::pwritev(&self.root, offset, buf, flags).await
    }

    /// The checks of a VM state request (positions past the disk are fine).
    pub fn check_vmstate(&self, pos: u64, bytes: u64) -> IoResult {
        if pos > io::MAX_LENGTH || bytes > io::REQUEST_MAX_BYTES {
            return Err(libc::EIO);
        }
        Ok(())
    }

    /// qemu-io `write -b` (QEMU's blk_save_vmstate): past the disk, flushed in writethrough.
    pub async fn save_vmstate(&self, pos: u64, buf: &[u8]) -> IoResult {
        self.check_vmstate(pos, buf.len() as u64)?;
        self.root.driver.save_vmstate(&self.root, pos, buf).await?;
        if self.writethrough.get() {
            io::flush(&self.root).await?;
        }
        Ok(())
    }

    /// qemu-io `read -b` (QEMU's blk_load_vmstate).
    pub async fn load_vmstate(&self, pos: u64, buf: &mut [u8]) -> IoResult {
        self.check_vmstate(pos, buf.len() as u64)?;
        self.root.driver.load_vmstate(&self.root, pos, buf).await
    }

    pub async fn pwrite_zeroes(&self, offset: u64, bytes: u64, flags: ReqFlags) -> IoResult {
        self.check(offset, bytes)?;
        io::pwrite_zeroes(&self.root, offset, bytes, self.write_flags(flags)).await
    }

    pub async fn pdiscard(&self, offset: u64, bytes: u64) -> IoResult {
        self.check(offset, bytes)?;
        io::pdiscard(&self.root, offset, bytes).await
    }

    pub async fn flush(&self) -> IoResult {
        io::flush(&self.root).await
    }

    pub async fn truncate(&self, size: u64) -> Result<(), String> {
        io::truncate(&self.root, size).await
    }

    /// Truncate with a preallocation mode (`off`, `metadata`, `falloc`, `full`): the drivers
    /// pass it down to the one that implements it (qcow2, or file-posix at the bottom).
    pub async fn truncate_prealloc(&self, size: u64, prealloc: &str) -> Result<(), String> {
        io::truncate_prealloc(&self.root, size, prealloc).await
    }
}
