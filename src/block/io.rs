//! The generic request layer (the role of QEMU's block/io.c): request checks, alignment with
//! read-modify-write, max-transfer splitting, write-zeroes fallback, FUA emulation, the write
//! generation that decides whether a flush reaches the disk, and the events io.c raises on the
//! node that receives a request.

use super::blkdebug::events::Event;
use super::driver::{BlockStatus, IoResult, ReqFlags, status};
use super::executor::{self, Gate};
use super::node::{DetectZeroes, Node};
use super::tracked::{self, Kind, Tracked};
use std::rc::Rc;

/// Largest single request (QEMU's BDRV_REQUEST_MAX_BYTES).
pub const REQUEST_MAX_BYTES: u64 = 0x7fff_fe00;
/// Largest offset or length anywhere (QEMU's BDRV_MAX_LENGTH).
pub const MAX_LENGTH: u64 = 0x7fff_ffff_ffff_fe00 & !0x1ff;
/// Largest bounce buffer for zero writes that fall back to plain writes.
const MAX_BOUNCE_BUFFER: u64 = 32768 << 9;
const INT_MAX: u64 = i32::MAX as u64;

fn check_request(offset: u64, bytes: u64) -> IoResult {
    if bytes > MAX_LENGTH || offset > MAX_LENGTH || offset > MAX_LENGTH - bytes {
        return Err(libc::EIO);
    }
    Ok(())
}

fn check_request32(offset: u64, bytes: u64) -> IoResult {
    check_request(offset, bytes)?;
    if bytes > REQUEST_MAX_BYTES {
        return Err(libc::EIO);
    }
    Ok(())
}

fn align_down(v: u64, a: u64) -> u64 {
    v / a * a
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

fn min_non_zero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, b) => b,
        (a, 0) => a,
        (a, b) => a.min(b),
    }
}

fn max_transfer(node: &Node, align: u64) -> u64 {
    align_down(min_non_zero(node.limits().max_transfer, INT_MAX), align)
}

/// Head and tail padding needed to align `[offset, offset+bytes)` to `align`.
struct Padding {
    head: u64,
    tail: u64,
}

impl Padding {
    fn of(offset: u64, bytes: u64, align: u64) -> Option<Self> {
        let head = offset % align;
        let tail = match (offset + bytes) % align {
            0 => 0,
            t => align - t,
        };
        (head != 0 || tail != 0).then_some(Self { head, tail })
    }

    /// One buffer covers head and tail when the padded request spans a single alignment unit
    /// (or just head+tail of two): then one read serves both (QEMU's merge_reads).
    fn buf_len(&self, bytes: u64, align: u64) -> u64 {
        let sum = self.head + bytes + self.tail;
        if sum > align && self.head != 0 && self.tail != 0 {
            2 * align
        } else {
            align
        }
    }
}

/// Reads `buf.len()` bytes at `offset` from `node` (QEMU's bdrv_co_preadv_part).
pub async fn preadv(node: &Node, offset: u64, buf: &mut [u8]) -> IoResult {
    preadv_flags(node, offset, buf, ReqFlags::NONE).await
}

/// A read with request flags (copy-on-read, prefetch).
pub async fn preadv_flags(
    node: &Node,
    offset: u64,
    buf: &mut [u8],
    mut flags: ReqFlags,
) -> IoResult {
    let bytes = buf.len() as u64;
    check_request32(offset, bytes)?;
    let align = node.limits().request_alignment;
    if bytes == 0 && !offset.is_multiple_of(align) {
        return Ok(());
    }
    if node.copy_on_read.get() {
        flags = flags.with(ReqFlags::COPY_ON_READ);
    }
    match Padding::of(offset, bytes, align) {
        None => {
            let req = tracked::begin(node, offset, bytes, Kind::Read);
            let r = aligned_preadv(node, &req, offset, buf, align, flags).await;
            tracked::end(node, &req);
            r
        }
        Some(pad) => {
            if padding_aborts_in_qemu(offset, buf, &pad, align) {
                return Err(libc::EIO);
            }
            let start = offset - pad.head;
            let (h, t) = (pad.head as usize, pad.tail as usize);
            let mut padded = vec![0u8; h + buf.len() + t];
            let req = tracked::begin(node, start, padded.len() as u64, Kind::Read);
            let r = aligned_preadv(node, &req, start, &mut padded, align, flags).await;
            tracked::end(node, &req);
            // QEMU reads head and tail into its padding buffer, the rest into the caller's.
            let mut padbuf = pad_buffer(pad.buf_len(bytes, align) as usize);
            if r.is_ok() {
                let n = padbuf.len();
                padbuf[..h].copy_from_slice(&padded[..h]);
                padbuf[n - t..].copy_from_slice(&padded[h + buf.len()..]);
                buf.copy_from_slice(&padded[h..h + buf.len()]);
            }
            free_pad_buffer(padbuf);
            r
        }
    }
}

/// A padding buffer as QEMU's `qemu_blockalign` returns it: the allocator hands back the
/// memory the last padding buffer of that size had, contents and all. A padding read that
/// fails leaves those contents to be written back, so they must be what QEMU's would be.
fn pad_buffer(len: usize) -> Vec<u8> {
    executor::current()
        .and_then(|e| e.take_freed(len))
        .unwrap_or_else(|| vec![0u8; len])
}

fn free_pad_buffer(buf: Vec<u8>) {
    if let Some(e) = executor::current() {
        e.put_freed(buf);
    }
}

/// Where QEMU 10.0.2 aborts padding a vectored request (see `iovec`): one line saying so, and
/// the process ends.
fn padding_aborts_in_qemu(offset: u64, buf: &[u8], pad: &Padding, align: u64) -> bool {
    let Some((console, why)) = super::iovec::padding_aborts(buf, pad.head != 0, pad.tail != 0)
    else {
        return false;
    };
    console.err(&format!(
        "blockfault: padding the request at offset {offset} ({} bytes) to {align}-byte alignment meets {why}; QEMU 10.0.2 aborts on an assertion here (bdrv_create_padded_qiov)\n",
        buf.len()
    ));
    console.exit(1);
    true
}

/// Forwards an aligned read to the driver, splitting at max-transfer and zero-filling past EOF
/// (QEMU's bdrv_aligned_preadv).
async fn aligned_preadv(
    node: &Node,
    req: &Rc<Tracked>,
    offset: u64,
    buf: &mut [u8],
    align: u64,
    flags: ReqFlags,
) -> IoResult {
    let bytes = buf.len() as u64;
    if flags.has(ReqFlags::COPY_ON_READ) {
        // Touching the same cluster counts as an overlap: the copy's read and write must not
        // interleave with other writes there.
        tracked::make_serialising(node, req, cluster_size(node)).await;
        let (allocated, pnum) = is_allocated(node, offset, bytes).await?;
        if !allocated || pnum != bytes {
            return copy_on_readv(node, offset, buf, flags).await;
        }
        if flags.has(ReqFlags::PREFETCH) {
            return Ok(());
        }
    } else {
        tracked::wait_serialising(node, req).await;
    }
    let total = node.getlength()?;
    let max_xfer = max_transfer(node, align);
    let mut max_bytes = align_up(total.saturating_sub(offset), align);
    if bytes <= max_bytes && bytes <= max_xfer {
        return node.driver.preadv(node, offset, buf).await;
    }
    let mut done = 0u64;
    while done < bytes {
        let rest = &mut buf[done as usize..];
        if max_bytes > 0 {
            let num = (bytes - done).min(max_bytes).min(max_xfer);
            node.driver
                .preadv(node, offset + done, &mut rest[..num as usize])
                .await?;
            max_bytes -= num;
            done += num;
        } else {
            rest.fill(0);
            done = bytes;
        }
    }
    Ok(())
}

/// QEMU's bdrv_get_info: a driver's own answer, else its filtered child's.
pub fn get_info(node: &Node) -> Option<super::driver::DriverInfo> {
    let mut node = node;
    loop {
        if let Some(i) = node.driver.info(node) {
            return Some(i);
        }
        match (node.driver.is_filter(), node.primary_child()) {
            (true, Some(c)) => node = c,
            _ => return None,
        }
    }
}

/// Whether QEMU's bdrv_get_info fails (ENOTSUP) for the node: the question passes through
/// drivers without an answer of their own (filters; raw asks its file) to one that has none.
pub fn get_info_unsupported(node: &Node) -> bool {
    node.driver.info_unsupported()
        || (node.driver.info(node).is_none()
            && node
                .primary_child()
                .is_some_and(|c| get_info_unsupported(c)))
}

/// QEMU's bdrv_get_cluster_size: the format's cluster, else the request alignment.
fn cluster_size(node: &Node) -> u64 {
    get_info(node)
        .map(|i| i.cluster_size)
        .filter(|&c| c != 0)
        .unwrap_or(node.limits().request_alignment)
}

/// The unit copy-on-read widens requests to (QEMU's bdrv_round_to_subclusters): the format's
/// subcluster, which is its cluster unless the format says otherwise; no format: unchanged.
fn subcluster_size(node: &Node) -> u64 {
    get_info(node)
        .map(|i| {
            if i.subcluster_size != 0 {
                i.subcluster_size
            } else {
                i.cluster_size
            }
        })
        .filter(|&c| c != 0)
        .unwrap_or(1)
}

/// Copy-on-read (QEMU's bdrv_co_do_copy_on_readv): the range, widened to whole subclusters, is
/// read piece by piece; what is not allocated here is read from below and written into this
/// node (zeroes as a zero write) before the caller gets its part.
async fn copy_on_readv(node: &Node, offset: u64, buf: &mut [u8], flags: ReqFlags) -> IoResult {
    let bytes = buf.len() as u64;
    let max_xfer = min_non_zero(node.limits().max_transfer, REQUEST_MAX_BYTES);
    let cs = subcluster_size(node);
    let mut align_offset = align_down(offset, cs);
    let mut align_bytes = align_up(offset + bytes, cs) - align_offset;
    let mut skip = offset - align_offset;
    let mut progress = 0u64;
    let mut bounce: Vec<u8> = Vec::new();
    while align_bytes > 0 {
        let want = align_bytes.min(max_xfer);
        let (allocated, mut pnum) = match is_allocated(node, align_offset, want).await {
            Ok(v) => v,
            // treated as unallocated: the read will fail with a better errno if it must
            Err(_) => (false, want),
        };
        if !allocated && pnum == 0 {
            // the image ends inside the cluster
            break;
        }
        if !allocated {
            pnum = pnum.min(MAX_BOUNCE_BUFFER);
            if bounce.is_empty() {
                let need = pnum.max(align_bytes - pnum);
                bounce = vec![0u8; need.min(max_xfer.min(MAX_BOUNCE_BUFFER)) as usize];
            }
            let data = &mut bounce[..pnum as usize];
            node.driver.preadv(node, align_offset, data).await?;
            node.debug_event(Event::CorWrite).await;
            let data = &bounce[..pnum as usize];
            if node.caps.pwrite_zeroes && data.iter().all(|&b| b == 0) {
                do_pwrite_zeroes(node, align_offset, pnum, ReqFlags::WRITE_UNCHANGED).await?;
            } else {
                // not new data: no flush needed even in writethrough mode
                driver_pwritev(node, align_offset, data, ReqFlags::WRITE_UNCHANGED).await?;
            }
            if !flags.has(ReqFlags::PREFETCH) {
                let n = (pnum - skip).min(bytes - progress) as usize;
                let at = progress as usize;
                buf[at..at + n].copy_from_slice(&bounce[skip as usize..skip as usize + n]);
            }
        } else if !flags.has(ReqFlags::PREFETCH) {
            let n = (pnum - skip).min(bytes - progress) as usize;
            let at = progress as usize;
            node.driver
                .preadv(node, offset + progress, &mut buf[at..at + n])
                .await?;
        }
        align_offset += pnum;
        align_bytes -= pnum;
        progress += pnum - skip;
        skip = 0;
    }
    Ok(())
}

/// The data of a write: a buffer, or zeroes (write-zeroes requests carry no buffer).
#[derive(Clone, Copy)]
pub enum WriteData<'a> {
    Buf(&'a [u8]),
    Zeroes(u64),
}

impl WriteData<'_> {
    fn len(&self) -> u64 {
        match self {
            WriteData::Buf(b) => b.len() as u64,
            WriteData::Zeroes(n) => *n,
        }
    }
}

/// Writes `buf` at `offset` to `node`.
pub async fn pwritev(node: &Node, offset: u64, buf: &[u8], flags: ReqFlags) -> IoResult {
    write_request(node, offset, WriteData::Buf(buf), flags).await
}

/// Writes zeroes (QEMU's bdrv_co_pwrite_zeroes).
pub async fn pwrite_zeroes(node: &Node, offset: u64, bytes: u64, mut flags: ReqFlags) -> IoResult {
    if !node.flags().unmap {
        flags = flags.without(ReqFlags::MAY_UNMAP);
    }
    write_request(
        node,
        offset,
        WriteData::Zeroes(bytes),
        flags.with(ReqFlags::ZERO_WRITE),
    )
    .await
}

async fn write_request(node: &Node, offset: u64, data: WriteData<'_>, flags: ReqFlags) -> IoResult {
    let bytes = data.len();
    let zero = flags.has(ReqFlags::ZERO_WRITE);
    if zero {
        check_request(offset, bytes)?;
    } else {
        check_request32(offset, bytes)?;
    }
    let align = node.limits().request_alignment;
    if flags.has(ReqFlags::NO_FALLBACK) && !(offset | bytes).is_multiple_of(align) {
        return Err(libc::ENOTSUP);
    }
    if bytes == 0 && !offset.is_multiple_of(align) {
        return Ok(());
    }
    if zero {
        let req = tracked::begin(node, offset, bytes, Kind::Write);
        let r = zero_pwritev(node, &req, offset, bytes, flags).await;
        tracked::end(node, &req);
        return r;
    }
    let WriteData::Buf(buf) = data else {
        unreachable!("only zero writes come without a buffer")
    };
    match Padding::of(offset, bytes, align) {
        None => {
            let req = tracked::begin(node, offset, bytes, Kind::Write);
            let r = aligned_pwritev(node, &req, offset, WriteData::Buf(buf), flags, align).await;
            tracked::end(node, &req);
            r
        }
        Some(pad) => {
            if padding_aborts_in_qemu(offset, buf, &pad, align) {
                return Err(libc::EIO);
            }
            let start = offset - pad.head;
            let (h, t) = (pad.head as usize, pad.tail as usize);
            let req = tracked::begin(node, start, (h + buf.len() + t) as u64, Kind::Write);
            // The widened range is read, then written back: nothing may overlap meanwhile.
            tracked::make_serialising(node, &req, align).await;
            let padbuf = rmw_read(node, &req, start, &pad, bytes, align).await;
            let mut padded = Vec::with_capacity(h + buf.len() + t);
            padded.extend_from_slice(&padbuf[..h]);
            padded.extend_from_slice(buf);
            padded.extend_from_slice(&padbuf[padbuf.len() - t..]);
            let r = aligned_pwritev(node, &req, start, WriteData::Buf(&padded), flags, align).await;
            free_pad_buffer(padbuf);
            tracked::end(node, &req);
            r
        }
    }
}

/// Reads the head and tail alignment units around an unaligned write into one padding buffer
/// (one unit, or two when head and tail fall in different units), raising the RMW events.
/// Like QEMU, a failed padding read does not fail the write: the padding buffer keeps what it
/// held before (see `pad_buffer`).
async fn rmw_read(
    node: &Node,
    req: &Rc<Tracked>,
    start: u64,
    pad: &Padding,
    bytes: u64,
    align: u64,
) -> Vec<u8> {
    let buf_len = pad.buf_len(bytes, align);
    let merge_reads = pad.head + bytes + pad.tail == buf_len;
    let mut buf = pad_buffer(buf_len as usize);
    let a = align as usize;
    if pad.head != 0 || merge_reads {
        let n = if merge_reads { buf_len as usize } else { a };
        if pad.head != 0 {
            node.debug_event(Event::PwritevRmwHead).await;
        }
        if merge_reads && pad.tail != 0 {
            node.debug_event(Event::PwritevRmwTail).await;
        }
        let mut unit = vec![0u8; n];
        if aligned_preadv(node, req, start, &mut unit, align, ReqFlags::NONE)
            .await
            .is_err()
        {
            return buf;
        }
        buf[..n].copy_from_slice(&unit);
        if pad.head != 0 {
            node.debug_event(Event::PwritevRmwAfterHead).await;
        }
        if merge_reads && pad.tail != 0 {
            node.debug_event(Event::PwritevRmwAfterTail).await;
        }
        if merge_reads {
            return buf;
        }
    }
    if pad.tail != 0 {
        node.debug_event(Event::PwritevRmwTail).await;
        let tail_unit = start + pad.head + bytes + pad.tail - align;
        let mut unit = vec![0u8; a];
        if aligned_preadv(node, req, tail_unit, &mut unit, align, ReqFlags::NONE)
            .await
            .is_ok()
        {
            let at = buf.len() - a;
            buf[at..].copy_from_slice(&unit);
            node.debug_event(Event::PwritevRmwAfterTail).await;
        }
    }
    buf
}

/// Zero writes align themselves: unaligned head and tail become plain RMW writes of zeroes
/// (QEMU's bdrv_co_do_zero_pwritev).
async fn zero_pwritev(
    node: &Node,
    req: &Rc<Tracked>,
    mut offset: u64,
    mut bytes: u64,
    flags: ReqFlags,
) -> IoResult {
    let align = node.limits().request_alignment;
    let plain = flags.without(ReqFlags::ZERO_WRITE);
    let mut padbuf: Option<Vec<u8>> = None;
    let mut ret = Ok(());
    if let Some(pad) = Padding::of(offset, bytes, align) {
        tracked::make_serialising(node, req, align).await;
        let start = offset - pad.head;
        let buf_len = pad.buf_len(bytes, align);
        let merge_reads = pad.head + bytes + pad.tail == buf_len;
        let mut buf = rmw_read(node, req, start, &pad, bytes, align).await;
        buf[pad.head as usize..(buf_len - pad.tail) as usize].fill(0);
        if pad.head != 0 || merge_reads {
            let n = if merge_reads { buf_len } else { align };
            let data = WriteData::Buf(&buf[..n as usize]);
            ret = aligned_pwritev(node, req, start, data, plain, align).await;
            if ret.is_ok() && !merge_reads {
                offset += n - pad.head;
                bytes -= n - pad.head;
            } else {
                bytes = 0;
            }
        }
        padbuf = Some(buf);
    }
    if ret.is_ok() && bytes >= align {
        let aligned = bytes / align * align;
        ret = aligned_pwritev(node, req, offset, WriteData::Zeroes(aligned), flags, align).await;
        bytes -= aligned;
        offset += aligned;
    }
    if ret.is_ok() && bytes != 0 {
        let buf = padbuf
            .as_ref()
            .expect("an unaligned end always has tail padding");
        let tail = &buf[buf.len() - align as usize..];
        ret = aligned_pwritev(node, req, offset, WriteData::Buf(tail), plain, align).await;
    }
    if let Some(buf) = padbuf {
        free_pad_buffer(buf);
    }
    ret
}

/// Forwards an aligned write to the driver (QEMU's bdrv_aligned_pwritev).
async fn aligned_pwritev(
    node: &Node,
    req: &Rc<Tracked>,
    offset: u64,
    data: WriteData<'_>,
    flags: ReqFlags,
    align: u64,
) -> IoResult {
    let bytes = data.len();
    let max_xfer = max_transfer(node, align);
    let ret = if node.flags().read_only {
        Err(libc::EPERM)
    } else {
        tracked::wait_serialising(node, req).await;
        let (data, flags) = detect_zeroes(node, data, flags);
        match data {
            WriteData::Zeroes(_) => {
                node.debug_event(Event::PwritevZero).await;
                do_pwrite_zeroes(node, offset, bytes, flags).await
            }
            WriteData::Buf(buf) if flags.has(ReqFlags::WRITE_COMPRESSED) => {
                node.driver.pwritev_compressed(node, offset, buf).await
            }
            WriteData::Buf(buf) => {
                node.debug_event(Event::Pwritev).await;
                let mut ret = Ok(());
                let mut done = 0u64;
                while done < bytes || (bytes == 0 && done == 0) {
                    let num = (bytes - done).min(max_xfer);
                    let mut local = flags;
                    // FUA emulated by a flush is needed only once, after the last fragment.
                    if num < bytes - done
                        && flags.has(ReqFlags::FUA)
                        && !node.supported_write_flags.has(ReqFlags::FUA)
                    {
                        local = local.without(ReqFlags::FUA);
                    }
                    let chunk = &buf[done as usize..(done + num) as usize];
                    ret = driver_pwritev(node, offset + done, chunk, local).await;
                    if ret.is_err() || bytes == 0 {
                        break;
                    }
                    done += num;
                }
                ret
            }
        }
    };
    node.debug_event(Event::PwritevDone).await;
    write_req_finish(node, req.kind, offset, bytes, ret.is_ok());
    ret
}

/// `detect-zeroes`: a buffer of zeroes is written as zeroes, where the driver can write them
/// (`unmap`: and may unmap them), as QEMU's bdrv_aligned_pwritev decides.
fn detect_zeroes<'a>(
    node: &Node,
    data: WriteData<'a>,
    flags: ReqFlags,
) -> (WriteData<'a>, ReqFlags) {
    match data {
        WriteData::Buf(buf)
            if node.detect_zeroes.get() != DetectZeroes::Off
                && node.caps.pwrite_zeroes
                && buf.iter().all(|&b| b == 0) =>
        {
            let mut flags = flags.with(ReqFlags::ZERO_WRITE);
            if node.detect_zeroes.get() == DetectZeroes::Unmap {
                flags = flags.with(ReqFlags::MAY_UNMAP);
            }
            (WriteData::Zeroes(buf.len() as u64), flags)
        }
        data => (data, flags),
    }
}

/// After a write, discard or resize (QEMU's bdrv_co_write_req_finish): the write generation
/// moves on, and a successful write past the end makes the node that much longer.
fn write_req_finish(node: &Node, kind: Kind, offset: u64, bytes: u64, ok: bool) {
    node.write_gen.set(node.write_gen.get() + 1);
    let end_sector = (offset + bytes).div_ceil(512);
    if ok
        && (kind == Kind::Truncate || end_sector > node.total_sectors.get())
        && kind != Kind::Discard
    {
        node.total_sectors.set(end_sector);
        node.driver.resize_dirty(end_sector * 512);
    }
    // the node's dirty bitmaps record the request, failed or not
    if bytes > 0 && matches!(kind, Kind::Write | Kind::Discard) {
        node.driver.set_dirty(offset, bytes);
    }
}

/// Calls the driver's write, emulating FUA with a flush where the driver lacks it.
async fn driver_pwritev(node: &Node, offset: u64, buf: &[u8], mut flags: ReqFlags) -> IoResult {
    // cache=unsafe: a FUA write is a plain write (QEMU's bdrv_driver_pwritev)
    if node.flags().no_flush {
        flags = flags.without(ReqFlags::FUA);
    }
    let emulate_fua = flags.has(ReqFlags::FUA) && !node.supported_write_flags.has(ReqFlags::FUA);
    let flags = flags
        .without(ReqFlags::FUA.and(if emulate_fua {
            ReqFlags::FUA
        } else {
            ReqFlags::NONE
        }))
        .and(node.supported_write_flags);
    node.driver.pwritev(node, offset, buf, flags).await?;
    if emulate_fua {
        flush(node).await?;
    }
    Ok(())
}

/// Writes zeroes through the driver, falling back to writing a zeroed buffer (QEMU's
/// bdrv_co_do_pwrite_zeroes).
async fn do_pwrite_zeroes(
    node: &Node,
    mut offset: u64,
    mut bytes: u64,
    flags: ReqFlags,
) -> IoResult {
    let l = node.limits();
    let alignment = l.pwrite_zeroes_alignment.max(l.request_alignment);
    let max_xfer = min_non_zero(l.max_transfer, MAX_BOUNCE_BUFFER);
    let max_write_zeroes = align_down(
        min_non_zero(l.max_pwrite_zeroes, i64::MAX as u64),
        alignment,
    );
    if flags
        .without(node.supported_zero_flags)
        .has(ReqFlags::NO_FALLBACK)
    {
        return Err(libc::ENOTSUP);
    }
    let mut head = offset % alignment;
    let tail = (offset + bytes) % alignment;
    let mut need_flush = false;
    let mut ret: IoResult = Ok(());
    while bytes > 0 && ret.is_ok() {
        let mut num = bytes;
        if head != 0 {
            num = bytes.min(max_xfer).min(alignment - head);
            head = (head + num) % alignment;
        } else if tail != 0 && num > alignment {
            num -= tail;
        }
        num = num.min(max_write_zeroes);
        ret = Err(libc::ENOTSUP);
        if node.caps.pwrite_zeroes {
            ret = node
                .driver
                .pwrite_zeroes(node, offset, num, flags.and(node.supported_zero_flags))
                .await;
            if ret != Err(libc::ENOTSUP)
                && flags.has(ReqFlags::FUA)
                && !node.supported_zero_flags.has(ReqFlags::FUA)
            {
                need_flush = true;
            }
        } else if node.supported_zero_flags != ReqFlags::NONE {
            // QEMU asserts here (blkverify in 10.0.2 aborts on `write -z`); we fail the request.
            return Err(libc::ENOTSUP);
        }
        if ret == Err(libc::ENOTSUP) && !flags.has(ReqFlags::NO_FALLBACK) {
            let mut write_flags = flags.without(ReqFlags::ZERO_WRITE);
            if flags.has(ReqFlags::FUA) && !node.supported_write_flags.has(ReqFlags::FUA) {
                write_flags = write_flags.without(ReqFlags::FUA);
                need_flush = true;
            }
            num = num.min(max_xfer);
            let zeroes = vec![0u8; num as usize];
            ret = driver_pwritev(node, offset, &zeroes, write_flags).await;
        }
        offset += num;
        bytes -= num;
    }
    if ret.is_ok() && need_flush {
        ret = flush(node).await;
    }
    ret
}

/// Discards a range (QEMU's bdrv_co_pdiscard): advisory, so unsupported parts are skipped.
pub async fn pdiscard(node: &Node, offset: u64, bytes: u64) -> IoResult {
    check_request(offset, bytes)?;
    if !node.flags().unmap || !node.caps.pdiscard {
        return Ok(());
    }
    let req = tracked::begin(node, offset, bytes, Kind::Discard);
    let ret = if node.flags().read_only {
        Err(libc::EPERM)
    } else {
        tracked::wait_serialising(node, &req).await;
        discard_pieces(node, offset, bytes).await
    };
    write_req_finish(node, Kind::Discard, offset, bytes, ret.is_ok());
    tracked::end(node, &req);
    ret
}

/// The discard loop: pieces aligned as the driver wants them.
async fn discard_pieces(node: &Node, mut offset: u64, mut bytes: u64) -> IoResult {
    let l = node.limits();
    let ra = l.request_alignment;
    let align = l.pdiscard_alignment.max(ra);
    let mut head = offset % align;
    let mut tail = (offset + bytes) % align;
    let max_pdiscard = align_down(min_non_zero(l.max_pdiscard, i64::MAX as u64), align);
    let mut ret = Ok(());
    while bytes > 0 {
        let mut num = bytes;
        if head != 0 {
            num = bytes.min(align - head);
            if !num.is_multiple_of(ra) {
                num %= ra;
            }
            head = (head + num) % align;
        } else if tail != 0 {
            if num > align {
                num -= tail;
            } else if !tail.is_multiple_of(ra) && tail > ra {
                tail %= ra;
                num -= tail;
            }
        }
        num = num.min(max_pdiscard);
        match node.driver.pdiscard(node, offset, num).await {
            Ok(()) | Err(libc::ENOTSUP) => {}
            Err(e) => {
                ret = Err(e);
                break;
            }
        }
        offset += num;
        bytes -= num;
    }
    ret
}

/// Flushes a node and, unless its driver flushes the whole subtree itself, its writable
/// children (QEMU's bdrv_co_flush).
pub fn flush(node: &Node) -> super::driver::BoxFut<'_, IoResult> {
    Box::pin(async move {
        if node.flags().read_only {
            return Ok(());
        }
        let current_gen = node.write_gen.get();
        // Flushes are serialised per node, in the order they arrive.
        while node.flush_active.get() {
            let gate = Gate::new();
            node.flush_waiters.borrow_mut().push(gate.clone());
            gate.wait().await;
        }
        node.flush_active.set(true);
        let ret = flush_locked(node, current_gen).await;
        if ret.is_ok() {
            node.flushed_gen.set(current_gen);
        }
        node.flush_active.set(false);
        let next = {
            let mut waiters = node.flush_waiters.borrow_mut();
            (!waiters.is_empty()).then(|| waiters.remove(0))
        };
        if let Some(gate) = next {
            gate.open();
        }
        ret
    })
}

async fn flush_locked(node: &Node, current_gen: u64) -> IoResult {
    if node.caps.flush_all {
        return node.driver.flush_all(node).await;
    }
    let primary = node.primary_child().cloned();
    if let Some(p) = &primary {
        p.debug_event(Event::FlushToOs).await;
    }
    if node.caps.flush_to_os {
        node.driver.flush_to_os(node).await?;
    }
    if !node.flags().no_flush && node.flushed_gen.get() != current_gen {
        if let Some(p) = &primary {
            p.debug_event(Event::FlushToDisk).await;
        }
        if node.caps.flush_to_disk {
            node.driver.flush_to_disk(node).await?;
        }
    }
    let mut ret = Ok(());
    for child in node.children.iter().filter(|c| c.writable) {
        let r = flush(&child.node).await;
        if ret.is_ok() {
            ret = r;
        }
    }
    ret
}

/// A node's length as the block layer sees it (QEMU's bdrv_co_getlength): whole sectors.
pub fn getlength(node: &Node) -> IoResult<u64> {
    node.getlength().map(|l| align_up(l, 512))
}

/// The next node down a backing chain (QEMU's bdrv_filter_or_cow_bs): a filter's child or a
/// format's backing file.
pub fn filter_or_cow(node: &Node) -> Option<&Rc<Node>> {
    if node.driver.is_filter() {
        node.primary_child()
    } else if node.driver.supports_backing() {
        node.child("backing")
    } else {
        None
    }
}

/// Block status of `[offset, offset+bytes)` on one node (QEMU's bdrv_co_block_status), following
/// RAW answers down to the node that really knows, and RECURSE answers to the file for zeroes.
pub fn block_status(
    node: &Node,
    want_zero: bool,
    offset: u64,
    bytes: u64,
) -> super::driver::BoxFut<'_, IoResult<BlockStatus>> {
    Box::pin(async move {
        let total = getlength(node)?;
        let mut st = BlockStatus {
            flags: 0,
            pnum: 0,
            map: 0,
            file: None,
        };
        if offset >= total {
            st.flags = status::EOF;
            return Ok(st);
        }
        if bytes == 0 {
            return Ok(st);
        }
        let bytes = bytes.min(total - offset);
        let caps = node.capabilities();
        if !caps.block_status && !node.driver.is_filter() {
            st.pnum = bytes;
            st.flags = status::DATA | status::ALLOCATED;
            if offset + bytes == total {
                st.flags |= status::EOF;
            }
            if node.driver.protocol_name().is_some() {
                st.flags |= status::OFFSET_VALID;
                st.map = offset;
            }
            return Ok(st);
        }
        let align = node.limits().request_alignment;
        let aligned_offset = align_down(offset, align);
        let aligned_bytes = align_up(offset + bytes, align) - aligned_offset;
        let mut r = if caps.block_status {
            node.driver
                .block_status(node, want_zero, aligned_offset, aligned_bytes)
                .await?
        } else {
            BlockStatus {
                flags: status::RAW | status::OFFSET_VALID,
                pnum: aligned_bytes,
                map: aligned_offset,
                file: Some(node.file().clone()),
            }
        };
        r.pnum = (r.pnum - (offset - aligned_offset)).min(bytes);
        if r.flags & status::OFFSET_VALID != 0 {
            r.map += offset - aligned_offset;
        }
        if r.flags & status::RAW != 0 {
            let file = r.file.clone().expect("RAW status names the node to ask");
            let mut inner = block_status(&file, want_zero, r.map, r.pnum).await?;
            if inner.flags & status::OFFSET_VALID != 0 && inner.file.is_none() {
                inner.file = Some(file);
            }
            if offset + inner.pnum == total {
                inner.flags |= status::EOF;
            }
            return Ok(inner);
        }
        if r.flags & (status::DATA | status::ZERO) != 0 {
            r.flags |= status::ALLOCATED;
        } else if node.driver.supports_backing() {
            // unallocated without a backing file (or past its end) reads as zero
            match node.child("backing") {
                None => r.flags |= status::ZERO,
                Some(b) if want_zero => {
                    if getlength(b).is_ok_and(|len| offset >= len) {
                        r.flags |= status::ZERO;
                    }
                }
                Some(_) => {}
            }
        }
        let recurse = status::RECURSE | status::DATA | status::OFFSET_VALID;
        let file = r.file.clone().filter(|f| !std::ptr::eq(&**f, node));
        if want_zero
            && r.flags & (recurse | status::ZERO) == recurse
            && let Some(file) = file
            // Only extra information: errors are ignored.
            && let Ok(f) = block_status(&file, want_zero, r.map, r.pnum).await
        {
            if f.flags & status::EOF != 0 && (f.pnum == 0 || f.flags & status::ZERO != 0) {
                // a format may read past the end of its file: that reads as zero
                r.flags |= status::ZERO;
            } else {
                r.pnum = f.pnum;
                r.flags |= f.flags & status::ZERO;
            }
        }
        if offset + r.pnum == total {
            r.flags |= status::EOF;
        }
        Ok(r)
    })
}

/// Block status through the backing chain down to (not including) `base`, or to its end
/// (QEMU's bdrv_co_common_block_status_above without include_base): the status and the
/// depth of the layer that answered (1 = `node` itself).
pub async fn block_status_above(
    node: &Node,
    base: Option<&Node>,
    want_zero: bool,
    offset: u64,
    bytes: u64,
) -> IoResult<(BlockStatus, u32)> {
    let is_base = |n: &Node| base.is_some_and(|b| std::ptr::eq(b, n));
    if is_base(node) {
        let st = BlockStatus {
            flags: 0,
            pnum: bytes,
            map: 0,
            file: None,
        };
        return Ok((st, 0));
    }
    let mut st = block_status(node, want_zero, offset, bytes).await?;
    let mut depth = 1;
    if st.pnum == 0 || st.flags & status::ALLOCATED != 0 {
        return Ok((st, depth));
    }
    let eof = (st.flags & status::EOF != 0).then_some(offset + st.pnum);
    let mut bytes = st.pnum;
    let mut p = filter_or_cow(node).cloned();
    while let Some(layer) = p {
        if is_base(&layer) {
            break;
        }
        let mut s = block_status(&layer, want_zero, offset, bytes).await?;
        depth += 1;
        if s.flags & status::OFFSET_VALID != 0 && s.file.is_none() {
            s.file = Some(layer.clone());
        }
        if s.pnum == 0 {
            // a short layer: the zeroes past its end count as allocated here
            st = BlockStatus {
                flags: status::ZERO | status::ALLOCATED,
                pnum: bytes,
                map: s.map,
                file: Some(layer.clone()),
            };
            break;
        }
        st = s;
        if st.flags & status::ALLOCATED != 0 {
            st.flags &= !status::EOF;
            break;
        }
        bytes = st.pnum;
        p = filter_or_cow(&layer).cloned();
    }
    if Some(offset + st.pnum) == eof {
        st.flags |= status::EOF;
    }
    Ok((st, depth))
}

/// Whether `[offset, offset+bytes)` is allocated at this node (QEMU's bdrv_is_allocated): the
/// answer and how many bytes share it.
pub async fn is_allocated(node: &Node, offset: u64, bytes: u64) -> IoResult<(bool, u64)> {
    let st = block_status(node, false, offset, bytes).await?;
    Ok((st.flags & status::ALLOCATED != 0, st.pnum))
}

/// Resizes a node (QEMU's bdrv_co_truncate): filters without their own callback pass it on.
pub fn truncate(node: &Node, size: u64) -> super::driver::BoxFut<'_, Result<(), String>> {
    truncate_prealloc(node, size, "off")
}

/// `truncate` with a preallocation mode, for drivers that implement the modes themselves
/// (QEMU's bdrv_co_truncate): growth serialises against requests into the new area, and the
/// node's length is read again from the driver afterwards.
pub fn truncate_prealloc<'a>(
    node: &'a Node,
    size: u64,
    prealloc: &'a str,
) -> super::driver::BoxFut<'a, Result<(), String>> {
    Box::pin(async move {
        // a driver stopped on a fatal corruption is QEMU's missing bs->drv
        if node.driver.has_stopped() {
            return Err("No medium inserted".into());
        }
        if size > MAX_LENGTH {
            return Err(
                "Required too big image size, it must be not greater than 9223372035781033984"
                    .into(),
            );
        }
        let old_size = getlength(node).map_err(|e| {
            format!(
                "Could not get current image size: {}",
                crate::errno::strerror(e)
            )
        })?;
        if node.flags().read_only {
            return Err("Image is read-only".into());
        }
        let new_bytes = size.saturating_sub(old_size);
        let req = tracked::begin(node, size - new_bytes, new_bytes, Kind::Truncate);
        if new_bytes > 0 {
            tracked::make_serialising(node, &req, 1).await;
        }
        tracked::wait_serialising(node, &req).await;
        let ret = if node.caps.truncate {
            if node.caps.truncate_prealloc {
                node.driver.truncate_prealloc(node, size, prealloc).await
            } else {
                node.driver.truncate(node, size).await
            }
        } else if node.driver.is_filter() {
            truncate_prealloc(node.file(), size, prealloc).await
        } else {
            Err("Image format driver does not support resize".into())
        };
        let ret = ret.and_then(|()| {
            node.refresh_total_sectors().map_err(|e| {
                format!(
                    "Could not refresh total sector count: {}",
                    crate::errno::strerror(e)
                )
            })?;
            let end = node.total_sectors.get() * 512;
            write_req_finish(
                node,
                Kind::Truncate,
                end - new_bytes.min(end),
                new_bytes.min(end),
                true,
            );
            Ok(())
        });
        tracked::end(node, &req);
        ret
    })
}
