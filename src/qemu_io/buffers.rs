//! qemu-io's request buffers. The cases of a scenario each make the same large buffers (iotest
//! 026 writes 64 MiB per case), and memory the allocator returned to the kernel is faulted in
//! again page by page when the next buffer is filled, which cost more than the requests did.
//! So each thread keeps the largest recently freed buffer (1 to 64 MiB) and hands it out again.

use std::cell::RefCell;

const KEEP_MIN: usize = 1 << 20;
const KEEP_MAX: usize = 64 << 20;

thread_local! {
    static SPARE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `len` bytes of `byte`, as `vec![byte; len]`.
pub fn filled(len: usize, byte: u8) -> Vec<u8> {
    if len >= KEEP_MIN {
        let spare = SPARE.with(|s| {
            let mut s = s.borrow_mut();
            (s.capacity() >= len).then(|| std::mem::take(&mut *s))
        });
        if let Some(mut buf) = spare {
            buf.clear();
            buf.resize(len, byte);
            return buf;
        }
    }
    vec![byte; len]
}

/// Gives a buffer back when its request is over.
pub fn recycle(buf: Vec<u8>) {
    if !(KEEP_MIN..=KEEP_MAX).contains(&buf.capacity()) {
        return;
    }
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if buf.capacity() > s.capacity() {
            *s = buf;
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
}
