//! `qemu-img check` for qcow2, working on the file directly (an fsck must not trust the driver):
//! the checker itself is the driver's ([`crate::block::qcow2::check`], also used to repair a
//! dirty image at open); this is its qemu-img side — the file, opened as `qcow2_do_open` with
//! `BDRV_O_CHECK` would, and the header as parsed for `check`.

use super::layout::{Header, read_header_for};
use crate::block::qcow2::check::{CheckFile, Checker, Geometry};
use std::fs::File;
use std::os::unix::fs::FileExt;

pub use crate::block::qcow2::check::{CheckResult, FIX_ERRORS, FIX_LEAKS, RefArray};
pub use crate::block::qcow2::state::ClusterType;

/// The image file, read and written with plain positioned I/O.
struct PlainFile(File);

fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl CheckFile for PlainFile {
    fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, i32> {
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match self.0.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(errno_of(&e)),
            }
        }
        Ok(buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), i32> {
        self.0.write_all_at(data, offset).map_err(|e| errno_of(&e))
    }

    fn file_len(&self) -> u64 {
        self.0.metadata().map(|m| m.len()).unwrap_or(0)
    }

    fn set_len(&self, len: u64) -> Result<(), i32> {
        self.0.set_len(len).map_err(|e| errno_of(&e))
    }

    fn discard(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a valid descriptor we own; failure only leaves the bytes in place.
        unsafe {
            libc::fallocate(
                self.0.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            );
        }
    }
}

/// The checker's view of a header parsed by qemu-img.
pub fn geometry(h: &Header) -> Geometry {
    Geometry {
        version: h.version,
        cluster_bits: h.cluster_bits,
        size: h.size,
        l1_table_offset: h.l1_table_offset,
        l1_size: h.l1_size,
        refcount_table_offset: h.refcount_table_offset,
        refcount_table_clusters: h.refcount_table_clusters,
        nb_snapshots: h.nb_snapshots,
        snapshots_offset: h.snapshots_offset,
        incompatible_features: h.incompatible_features,
        refcount_order: h.refcount_order,
    }
}

/// An image opened for `qemu-img check`.
pub struct Image {
    /// the header as read at open
    pub header: Header,
    checker: Checker<PlainFile>,
}

impl Image {
    /// Opens `file` as `qcow2_do_open` would for `qemu-img check`; the error is QEMU's message.
    pub fn open(file: File, writable: bool) -> Result<Image, String> {
        let header = read_header_for(&file, true).map_err(|e| e.0)?;
        let checker = Checker::new(PlainFile(file), geometry(&header), writable)?;
        Ok(Image { header, checker })
    }

    pub fn file_len(&self) -> u64 {
        self.checker.file_len()
    }

    /// `qcow2_check_refcounts`; Err is a negative errno (the check failed).
    pub fn check(&mut self, fix: u32) -> (CheckResult, Result<(), i32>) {
        self.checker.check(fix)
    }

    /// The stderr lines produced so far (and forget them).
    pub fn take_log(&mut self) -> Vec<String> {
        self.checker.take_log()
    }

    /// Clears the dirty and corrupt bits after a successful repair (`qcow2_mark_clean`,
    /// `qcow2_mark_consistent`): only the incompatible-features field changes.
    pub fn mark_clean(&mut self) -> std::io::Result<()> {
        self.checker
            .mark_clean()
            .map_err(std::io::Error::from_raw_os_error)
    }
}

/// `qcow2_get_cluster_type` (no external data file).
pub fn cluster_type(entry: u64, extended_l2: bool) -> ClusterType {
    crate::block::qcow2::check::l2_cluster_type(entry, extended_l2)
}
