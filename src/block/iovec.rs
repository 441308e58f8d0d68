//! The element layout of qemu-io's vectored requests (`readv`, `writev`, `aio_read`,
//! `aio_write`), which the engine otherwise flattens into one buffer.
//!
//! It matters in one place: QEMU 10.0.2 aborts (bdrv_create_padded_qiov) when a node pads a
//! request to its alignment and the part of the vector the request covers has an empty
//! element: qemu_iovec_slice counts it, qemu_iovec_concat_iov leaves it out, and the assertion
//! that the two agree fails. A vector of more than IOV_MAX elements to pad fails an assertion
//! too. Requests hand their buffers down unchanged or as sub-slices, as QEMU hands down the
//! vector with an offset, so a buffer is recognised by address while its request runs.

use crate::output::Console;
use std::cell::RefCell;
use std::rc::Rc;

/// Linux's IOV_MAX.
const IOV_MAX: usize = 1024;

struct Layout {
    id: u64,
    start: usize,
    len: usize,
    elements: Rc<Vec<u64>>,
    console: Rc<Console>,
}

thread_local! {
    static LAYOUTS: RefCell<Vec<Layout>> = const { RefCell::new(Vec::new()) };
    static NEXT_ID: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Keeps a layout known while its request runs; dropping it forgets the layout.
pub struct Registration(u64);

impl Drop for Registration {
    fn drop(&mut self) {
        LAYOUTS.with(|l| l.borrow_mut().retain(|x| x.id != self.0));
    }
}

/// Makes `buf` known as a vector of `elements` (their lengths, summing to `buf.len()`), for
/// as long as the returned registration lives. Only buffers with an empty element can make
/// QEMU fail, or with more elements than IOV_MAX, so only those are kept.
pub fn register(buf: &[u8], elements: &[u64], console: &Rc<Console>) -> Option<Registration> {
    let risky = elements.contains(&0) || elements.len() > IOV_MAX;
    (risky && !buf.is_empty()).then(|| add(buf, Rc::new(elements.to_vec()), console.clone()))
}

/// Gives `copy` the layout `original` has (QEMU's qemu_iovec_clone, as blkverify uses for its
/// second read), if `original` is a registered buffer or a piece of one.
pub fn share(original: &[u8], copy: &[u8]) -> Option<Registration> {
    let (elements, console, offset) = locate(original)?;
    let piece = slice(&elements, offset, original.len() as u64);
    Some(add(copy, Rc::new(piece), console))
}

fn add(buf: &[u8], elements: Rc<Vec<u64>>, console: Rc<Console>) -> Registration {
    let id = NEXT_ID.with(|n| {
        let id = n.get();
        n.set(id + 1);
        id
    });
    LAYOUTS.with(|l| {
        l.borrow_mut().push(Layout {
            id,
            start: buf.as_ptr() as usize,
            len: buf.len(),
            elements,
            console,
        })
    });
    Registration(id)
}

/// The layout of the registered buffer `part` lies in, with `part`'s offset into it.
fn locate(part: &[u8]) -> Option<(Rc<Vec<u64>>, Rc<Console>, u64)> {
    let at = part.as_ptr() as usize;
    LAYOUTS.with(|l| {
        l.borrow()
            .iter()
            .find(|x| at >= x.start && at + part.len() <= x.start + x.len && !part.is_empty())
            .map(|x| (x.elements.clone(), x.console.clone(), (at - x.start) as u64))
    })
}

/// If padding a request over `part` (a registered buffer or a piece of one) with head and tail
/// padding makes QEMU abort, the console to report on and why.
pub fn padding_aborts(part: &[u8], head: bool, tail: bool) -> Option<(Rc<Console>, &'static str)> {
    let (elements, console, offset) = locate(part)?;
    why_padding_aborts(&elements, offset, part.len() as u64, head, tail).map(|why| (console, why))
}

/// The elements QEMU's qemu_iovec_slice takes for `[offset, offset+len)`, the first and the
/// last cut to the range: whole elements are skipped only while the offset reaches past them
/// (so an empty one right at the start is kept), and the slice stops at the element holding
/// the last byte (so empty ones after it are not).
fn slice(elements: &[u64], offset: u64, len: u64) -> Vec<u64> {
    let (mut first, mut head) = (0, offset);
    while head > 0 && first < elements.len() && head >= elements[first] {
        head -= elements[first];
        first += 1;
    }
    let (mut end, mut rest) = (first, head + len);
    while rest > 0 && end < elements.len() && rest >= elements[end] {
        rest -= elements[end];
        end += 1;
    }
    let mut piece = elements[first..].to_vec();
    if rest > 0 && end < elements.len() {
        piece.truncate(end - first + 1);
        *piece.last_mut().expect("the element holding the last byte") = rest;
    } else {
        piece.truncate(end - first);
    }
    if let Some(e) = piece.first_mut() {
        *e -= head.min(*e);
    }
    piece
}

/// QEMU's bdrv_create_padded_qiov, counting elements: qemu_iovec_concat_iov leaves empty ones
/// out of what the slice counted.
fn why_padding_aborts(
    elements: &[u64],
    offset: u64,
    len: u64,
    head: bool,
    tail: bool,
) -> Option<&'static str> {
    let sliced = slice(elements, offset, len);
    if sliced.len() > IOV_MAX {
        return Some("more than IOV_MAX I/O vector elements");
    }
    let padded = usize::from(head) + sliced.len() + usize::from(tail);
    // Past IOV_MAX the first elements are merged into one bounce buffer, empty or not.
    let merged = if padded > IOV_MAX {
        padded - IOV_MAX + 1
    } else {
        0
    };
    sliced[merged..]
        .contains(&0)
        .then_some("an empty I/O vector element")
}

#[cfg(test)]
mod tests {
    use super::{slice, why_padding_aborts as aborts};

    #[test]
    fn slices_cut_the_ends_and_keep_inner_empty_elements() {
        assert_eq!(slice(&[2560, 0, 4096], 0, 6656), [2560, 0, 4096]);
        assert_eq!(slice(&[2560, 0, 4096], 100, 3000), [2460, 0, 540]);
        assert_eq!(slice(&[2560, 0, 4096], 2560, 100), [0, 100]);
        assert_eq!(slice(&[2560, 4096, 0], 0, 6656), [2560, 4096]);
        assert_eq!(slice(&[0, 512], 0, 512), [0, 512]);
        assert_eq!(slice(&[512, 512], 100, 100), [100]);
    }

    #[test]
    fn empty_elements_covered_by_the_slice_abort() {
        // readv 24k 2560 0 4096: the empty element sits between data
        assert!(aborts(&[2560, 0, 4096], 0, 6656, false, true).is_some());
        // a leading empty element is counted when the request starts at offset 0
        assert!(aborts(&[0, 2560, 4096], 0, 6656, false, true).is_some());
        // trailing ones are not: the slice stops at the last byte
        assert!(aborts(&[2560, 4096, 0], 0, 6656, false, true).is_none());
        assert!(aborts(&[2560, 0], 0, 2560, false, true).is_none());
        // a piece starting right at an element's end begins at the empty element after it
        assert!(aborts(&[2560, 0, 4096], 2560, 4096, true, false).is_some());
        // a piece inside one element sees none
        assert!(aborts(&[2560, 0, 4096], 2560 + 100, 1000, true, true).is_none());
    }

    #[test]
    fn iov_max() {
        let mut v = vec![1u64; 1025];
        assert!(aborts(&v, 0, 1025, false, true).is_some());
        // 1 + 1024 + 1 elements: the first three merge, the empty one with them
        v = vec![1u64; 1024];
        v[0] = 0;
        assert!(aborts(&v, 0, 1023, true, true).is_none());
        v[5] = 0;
        v[0] = 1;
        assert!(aborts(&v, 0, 1023, true, true).is_some());
    }
}
