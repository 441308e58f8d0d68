//! The `raw` format driver: passes every request to `file`, raising read_aio/write_aio there.
//! With `offset` and `size` it shows only that range of its file (QEMU's raw-format.c).

use super::blkdebug::events::Event;
use super::driver::{
    BlockDriver, BlockStatus, BoxFut, Capabilities, IoResult, Limits, ReopenState, ReqFlags, status,
};
use super::io;
use super::node::{Child, ChildRole, Node};
use super::options::{OptType, Options, absorb};
use super::perms::Perms;
use crate::output::Console;
use std::cell::Cell;
use std::rc::Rc;

/// Bytes QEMU reads to probe a format; writes over them are checked on a probed raw image.
pub const PROBE_BUF_SIZE: u64 = 512;

pub struct RawDriver {
    /// the format was guessed: writes that would make the image probe as something else fail
    pub probed: bool,
    /// where the image starts in the file (`offset`); a reopen may move it
    offset: Cell<u64>,
    /// `size` was given: requests beyond it fail, and the image cannot be resized
    has_size: Cell<bool>,
    /// the image's length (QEMU's s->size), kept in step with the file's length
    size: Cell<u64>,
}

impl RawDriver {
    /// A raw image that is all of its file.
    pub fn whole(probed: bool) -> Self {
        Self {
            probed,
            offset: Cell::new(0),
            has_size: Cell::new(false),
            size: Cell::new(0),
        }
    }

    /// QEMU's raw_adjust_offset: the file offset of a request, or why it may not go there.
    fn adjust(&self, offset: u64, bytes: u64, is_write: bool) -> IoResult<u64> {
        let size = self.size.get();
        if self.has_size.get() && (offset > size || bytes > size - offset) {
            return Err(if is_write { libc::ENOSPC } else { libc::EINVAL });
        }
        offset.checked_add(self.offset.get()).ok_or(libc::EINVAL)
    }
}

/// Opens a raw node over its file (QEMU's raw_open): `offset` and `size` are checked against
/// the file, after the WARNING a probed, writable image gets.
pub fn open_node(
    file: Rc<Node>,
    opts: &mut Options,
    probed: bool,
    read_only: bool,
    console: &Console,
) -> Result<(Node, Limits), String> {
    let (offset, size) = read_options(opts)?;
    // QEMU warns only where writes would be restricted.
    if probed && !read_only {
        console.err(&format!(
            "WARNING: Image format was not specified for '{}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions.\n",
            file.filename
        ));
    }
    let (offset, size) = apply_options(&file, offset, size)?;
    let driver = RawDriver {
        probed,
        offset: Cell::new(offset),
        has_size: Cell::new(size.is_some()),
        size: Cell::new(size.unwrap_or(0)),
    };
    // the size of an image without `size` follows its file
    let _ = driver.getlength_of(&file);
    let name = file.filename.clone();
    let mut node = Node::new(
        Box::new(driver),
        vec![Child {
            name: "file",
            node: file.clone(),
            writable: true,
            primary: true,
            // raw passes on what its parents hold, with or without offset and size; with
            // them, its file is its data, which nobody else may resize (QEMU's raw_open picks
            // the data role then, and raw_child_perm keeps only the parents' permissions)
            role: ChildRole::Filtered,
            extra_perms: Perms::NONE,
            unshared_perms: if offset != 0 || size.is_some() {
                Perms::RESIZE
            } else {
                Perms::NONE
            },
        }],
        name,
    );
    node.supported_write_flags =
        ReqFlags::WRITE_UNCHANGED.with(ReqFlags::FUA.and(file.supported_write_flags));
    node.supported_zero_flags = ReqFlags::WRITE_UNCHANGED.with(
        ReqFlags::FUA
            .with(ReqFlags::MAY_UNMAP)
            .with(ReqFlags::NO_FALLBACK)
            .and(file.supported_zero_flags),
    );
    let mut limits = Limits::default();
    // Probed raw images are kept to whole sectors so the first one can be protected.
    if probed {
        limits.request_alignment = 512;
    }
    Ok((node, limits))
}

/// QEMU's raw_read_options: `offset` and `size` (None: not given).
fn read_options(opts: &mut Options) -> Result<(u64, Option<u64>), String> {
    let o = absorb(opts, &[("offset", OptType::Size), ("size", OptType::Size)])?;
    let size = if o.has("size") {
        Some(o.number("size").unwrap_or(0))
    } else {
        None
    };
    Ok((o.number("offset").unwrap_or(0), size))
}

/// QEMU's raw_apply_options: the range must lie within the file.
fn apply_options(
    file: &Node,
    offset: u64,
    size: Option<u64>,
) -> Result<(u64, Option<u64>), String> {
    let real_size = file
        .getlength()
        .map_err(|e| format!("Could not get image size: {}", crate::errno::strerror(e)))?;
    if offset > real_size {
        return Err(format!(
            "Offset ({offset}) cannot be greater than size of the containing file ({real_size})"
        ));
    }
    if let Some(size) = size {
        if real_size - offset < size {
            return Err(format!(
                "The sum of offset ({offset}) and size ({size}) has to be smaller or equal to the  actual size of the containing file ({real_size})"
            ));
        }
        // A whole number of sectors, so that rounding up cannot reach past the given range.
        if !size.is_multiple_of(512) {
            return Err("Specified size is not multiple of 512".into());
        }
    }
    Ok((offset, size))
}

/// A prepared reopen: the new range.
struct Reopen {
    offset: u64,
    size: Option<u64>,
}

/// Whether the first sector of an image would make QEMU's probing pick a format other than raw.
pub fn probes_as_other_format(first_bytes: &[u8]) -> bool {
    first_bytes.starts_with(b"QFI\xfb")
}

impl BlockDriver for RawDriver {
    fn format_name(&self) -> &'static str {
        "raw"
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            pwrite_zeroes: true,
            pdiscard: true,
            block_status: true,
            truncate: true,
            truncate_prealloc: true,
            ..Capabilities::default()
        }
    }

    fn preadv<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a mut [u8],
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let at = self.adjust(offset, buf.len() as u64, false)?;
            node.file().debug_event(Event::ReadAio).await;
            io::preadv(node.file(), at, buf).await
        })
    }

    fn pwritev<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        buf: &'a [u8],
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            if self.probed && offset == 0 && probes_as_other_format(buf) {
                return Err(libc::EPERM);
            }
            let at = self.adjust(offset, buf.len() as u64, true)?;
            node.file().debug_event(Event::WriteAio).await;
            io::pwritev(node.file(), at, buf, flags).await
        })
    }

    fn pwrite_zeroes<'a>(
        &'a self,
        node: &'a Node,
        offset: u64,
        bytes: u64,
        flags: ReqFlags,
    ) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let at = self.adjust(offset, bytes, true)?;
            io::pwrite_zeroes(node.file(), at, bytes, flags).await
        })
    }

    fn pdiscard<'a>(&'a self, node: &'a Node, offset: u64, bytes: u64) -> BoxFut<'a, IoResult> {
        Box::pin(async move {
            let at = self.adjust(offset, bytes, true)?;
            io::pdiscard(node.file(), at, bytes).await
        })
    }

    fn block_status<'a>(
        &'a self,
        node: &'a Node,
        _want_zero: bool,
        offset: u64,
        bytes: u64,
    ) -> BoxFut<'a, IoResult<BlockStatus>> {
        Box::pin(async move {
            Ok(BlockStatus {
                flags: status::RAW | status::OFFSET_VALID,
                pnum: bytes,
                map: offset + self.offset.get(),
                file: Some(node.file().clone()),
            })
        })
    }

    fn truncate<'a>(&'a self, node: &'a Node, size: u64) -> BoxFut<'a, Result<(), String>> {
        self.truncate_prealloc(node, size, "off")
    }

    /// QEMU's raw_co_truncate: only an image without a fixed size grows or shrinks, its file
    /// moving by the offset. The mode goes down with the size: the file below decides against
    /// its exact length (a sector-rounded one would refuse growing a 1000-byte file to 1010).
    fn truncate_prealloc<'a>(
        &'a self,
        node: &'a Node,
        size: u64,
        prealloc: &'a str,
    ) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            if self.has_size.get() {
                return Err("Cannot resize fixed-size raw disks".into());
            }
            let at = size
                .checked_add(self.offset.get())
                .filter(|&v| v <= i64::MAX as u64)
                .ok_or("Disk size too large for the chosen offset")?;
            self.size.set(size);
            io::truncate_prealloc(node.file(), at, prealloc).await
        })
    }

    /// QEMU's raw_co_getlength: the file's length less the offset, at most `size`.
    fn getlength(&self, node: &Node) -> IoResult<u64> {
        self.getlength_of(node.file())
    }

    /// QEMU's raw_reopen_prepare: the range read and checked again as at open.
    fn reopen_prepare<'a>(
        &'a self,
        node: &'a Node,
        opts: &'a mut Options,
        _flags: crate::block::node::OpenFlags,
    ) -> BoxFut<'a, Result<Option<ReopenState>, String>> {
        Box::pin(async move {
            let (offset, size) = read_options(opts)?;
            let (offset, size) = apply_options(node.file(), offset, size)?;
            Ok(Some(Box::new(Reopen { offset, size }) as ReopenState))
        })
    }

    fn reopen_commit(&self, node: &Node, state: Option<ReopenState>) {
        let Some(Ok(r)) = state.map(|s| s.downcast::<Reopen>()) else {
            return;
        };
        self.offset.set(r.offset);
        self.has_size.set(r.size.is_some());
        self.size.set(r.size.unwrap_or(0));
        let _ = self.getlength_of(node.file());
    }
}

impl RawDriver {
    /// QEMU's raw_co_getlength: the file's length less the offset, at most `size`.
    fn getlength_of(&self, file: &Node) -> IoResult<u64> {
        let len = file.getlength()?;
        let size = match len.checked_sub(self.offset.get()) {
            None => 0,
            Some(rest) if self.has_size.get() => self.size.get().min(rest),
            Some(rest) => rest,
        };
        self.size.set(size);
        Ok(size)
    }
}
