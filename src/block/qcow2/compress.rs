//! Compressed cluster data: raw deflate with QEMU's exact zlib parameters (window 2^12,
//! memLevel 9), so compressed clusters are byte-identical to QEMU's and land at the same
//! offsets; decompression through flate2.

use libz_sys as z;
use std::mem::MaybeUninit;

/// Compresses `input` into at most `max` bytes; None when it does not fit (QEMU then writes
/// the cluster uncompressed).
pub fn compress(input: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; max];
    let mut strm = MaybeUninit::<z::z_stream>::zeroed();
    // SAFETY: a zeroed z_stream (null allocators = zlib's defaults) is what deflateInit2_
    // expects; the buffers outlive the stream, which is ended before returning.
    unsafe {
        let s = strm.as_mut_ptr();
        let ret = z::deflateInit2_(
            s,
            z::Z_DEFAULT_COMPRESSION,
            z::Z_DEFLATED,
            -12,
            9,
            z::Z_DEFAULT_STRATEGY,
            z::zlibVersion(),
            std::mem::size_of::<z::z_stream>() as i32,
        );
        if ret != z::Z_OK {
            return None;
        }
        (*s).next_in = input.as_ptr() as *mut u8;
        (*s).avail_in = input.len() as u32;
        (*s).next_out = out.as_mut_ptr();
        (*s).avail_out = max as u32;
        let ret = z::deflate(s, z::Z_FINISH);
        let left = (*s).avail_out as usize;
        z::deflateEnd(s);
        if ret != z::Z_STREAM_END {
            return None;
        }
        out.truncate(max - left);
    }
    Some(out)
}

/// Inflates a compressed cluster; it must fill exactly `out` (QEMU's check).
pub fn decompress(input: &[u8], out: &mut [u8]) -> bool {
    let mut d = flate2::Decompress::new(false);
    // a stream error still counts when the cluster is complete, as zlib's Z_BUF_ERROR does
    let _ = d.decompress(input, out, flate2::FlushDecompress::Finish);
    d.total_out() as usize == out.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_incompressible_data() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let c = compress(&data, data.len() - 1).expect("compressible");
        let mut out = vec![0u8; 65536];
        assert!(decompress(&c, &mut out));
        assert_eq!(out, data);
        let mut x = 12345u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&noise, noise.len() - 1).is_none());
        // a stream that ends early cannot fill the cluster
        let mut big = vec![0u8; 65536 * 2];
        assert!(!decompress(&c, &mut big));
    }
}
