//! qemu-io's request buffers. The cases of a scenario each make the same large buffers (iotest
//! 026 writes 64 MiB per case), and memory the allocator returned to the kernel is faulted in
//! again page by page when the next buffer is filled, which cost more than the requests did.
//! So each thread keeps the largest recently freed buffer (1 to 64 MiB) and hands it out again.

use std::cell::RefCell;

const KEEP_MIN: usize = 1 << 20;
const KEEP_MAX: usize = 64 << 20;

/// The kept buffer, and the byte all of it holds if that is known (a write buffer comes
/// back as it was filled: a request never changes what it writes).
struct Spare {
    buf: Vec<u8>,
    filled_with: Option<u8>,
}

thread_local! {
    static SPARE: RefCell<Spare> = const {
        RefCell::new(Spare {
            buf: Vec::new(),
            filled_with: None,
        })
    };
}

/// `len` bytes of `byte`, as `vec![byte; len]`.
pub fn filled(len: usize, byte: u8) -> Vec<u8> {
    if len >= KEEP_MIN {
        let spare = SPARE.with(|s| {
            let mut s = s.borrow_mut();
            (s.buf.capacity() >= len).then(|| (std::mem::take(&mut s.buf), s.filled_with.take()))
        });
        if let Some((mut buf, filled_with)) = spare {
            if filled_with == Some(byte) {
                // already the right bytes: only a longer tail is written
                buf.truncate(len);
            } else {
                buf.clear();
            }
            buf.resize(len, byte);
            return buf;
        }
    }
    vec![byte; len]
}

/// Gives a buffer back when its request is over.
pub fn recycle(buf: Vec<u8>) {
    keep(buf, None);
}

/// Gives back a write buffer made by `filled(_, byte)`, unchanged since.
pub fn recycle_filled(buf: Vec<u8>, byte: u8) {
    keep(buf, Some(byte));
}

fn keep(buf: Vec<u8>, filled_with: Option<u8>) {
    if !(KEEP_MIN..=KEEP_MAX).contains(&buf.capacity()) {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if buf.capacity() > s.buf.capacity()
            || (buf.capacity() == s.buf.capacity() && filled_with.is_some())
        {
            *s = Spare { buf, filled_with };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_buffer_comes_back_filled_as_asked() {
        let mut a = filled(2 << 20, 0x11);
        a[5] = 0;
        let ptr = a.as_ptr();
        recycle(a);
        let b = filled(1 << 20, 0x22);
        assert_eq!(b.as_ptr(), ptr);
        assert_eq!(b.len(), 1 << 20);
        assert!(b.iter().all(|&x| x == 0x22));
        // small buffers are not kept
        recycle(vec![0u8; 4096]);
        let small = filled(4096, 0);
        assert_ne!(small.as_ptr(), b.as_ptr());
    }

    #[test]
    fn a_recycled_write_buffer_keeps_its_bytes_only_for_the_same_pattern() {
        let a = filled(2 << 20, 0x33);
        recycle_filled(a, 0x33);
        let b = filled(3 << 19, 0x33);
        assert_eq!(b.len(), 3 << 19);
        assert!(b.iter().all(|&x| x == 0x33));
        recycle_filled(b, 0x33);
        // longer again: the tail is filled
        let c = filled(2 << 20, 0x33);
        assert!(c.iter().all(|&x| x == 0x33));
        recycle_filled(c, 0x33);
        let d = filled(2 << 20, 0x44);
        assert!(d.iter().all(|&x| x == 0x44));
        recycle(d);
        let e = filled(2 << 20, 0x44);
        assert!(e.iter().all(|&x| x == 0x44));
    }
}
