//! Compressed cluster data, as QEMU's qcow2-threads.c makes it: raw deflate with QEMU's exact
//! zlib parameters (window 2^12, memLevel 9), or one zstd frame made by a single
//! `ZSTD_compressStream2(.., ZSTD_e_end)` at the default level, so compressed clusters are
//! byte-identical to QEMU's and land at the same offsets. zstd data is read back as a stream:
//! the L2 entry only knows the size in whole sectors, so whatever follows the frame(s) is
//! ignored once the cluster is full.

use libz_sys as z;
use std::mem::MaybeUninit;
use zstd::zstd_safe::{self, InBuffer, OutBuffer, zstd_sys::ZSTD_EndDirective};

/// The image's compression type (header byte 104).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionType {
    Zlib,
    Zstd,
}

impl CompressionType {
    pub fn from_header(byte: u8) -> Self {
        if byte == 1 { Self::Zstd } else { Self::Zlib }
    }
    /// The name `qemu-img info` and qemu-io's `info` print.
    pub fn name(self) -> &'static str {
        match self {
            Self::Zlib => "zlib",
            Self::Zstd => "zstd",
        }
    }
    /// QEMU's qcow2_co_compress: None when the data does not fit in `max` bytes (QEMU then
    /// writes the cluster uncompressed).
    pub fn compress(self, input: &[u8], max: usize) -> Option<Vec<u8>> {
        match self {
            Self::Zlib => compress(input, max),
            Self::Zstd => zstd_compress(input, max),
        }
    }
    /// QEMU's qcow2_co_decompress: true when `out` was filled exactly.
    pub fn decompress(self, input: &[u8], out: &mut [u8]) -> bool {
        match self {
            Self::Zlib => decompress(input, out),
            Self::Zstd => zstd_decompress(input, out),
        }
    }
}

/// qcow2_zstd_compress: one streamed call that must end the frame; anything left to flush
/// means the output did not fit.
fn zstd_compress(input: &[u8], max: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; max];
    let mut cctx = zstd_safe::CCtx::create();
    let mut output = OutBuffer::around(&mut out[..]);
    let mut inbuf = InBuffer::around(input);
    let left = cctx
        .compress_stream2(&mut output, &mut inbuf, ZSTD_EndDirective::ZSTD_e_end)
        .ok()?;
    if left != 0 {
        return None;
    }
    let n = output.pos();
    out.truncate(n);
    Some(out)
}

/// qcow2_zstd_decompress: frames are decoded until the cluster is full; a call that makes
/// no progress, a decoding error or a frame not finished when the cluster is full fail.
fn zstd_decompress(input: &[u8], out: &mut [u8]) -> bool {
    let mut dctx = zstd_safe::DCtx::create();
    let size = out.len();
    let mut output = OutBuffer::around(out);
    let mut inbuf = InBuffer::around(input);
    let mut last = 0usize;
    while output.pos() < size {
        let (in_before, out_before) = (inbuf.pos(), output.pos());
        match dctx.decompress_stream(&mut output, &mut inbuf) {
            Ok(hint) => last = hint,
            Err(_) => return false,
        }
        if in_before >= inbuf.pos() && out_before >= output.pos() {
            return false;
        }
    }
    last == 0
}

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

    #[test]
    fn zstd_round_trip_ignores_what_follows_the_frame() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 13) as u8).collect();
        let mut c = CompressionType::Zstd
            .compress(&data, data.len() - 1)
            .expect("compressible");
        // QEMU's own frame for a cluster of 0xac: magic, single-segment header, size 65536
        let ac = CompressionType::Zstd
            .compress(&[0xac; 65536], 65535)
            .unwrap();
        assert_eq!(&ac[..7], &[0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0xff]);
        c.extend_from_slice(&[0u8; 300]);
        let mut out = vec![0u8; 65536];
        assert!(CompressionType::Zstd.decompress(&c, &mut out));
        assert_eq!(out, data);
        // a frame cut short cannot fill the cluster
        let mut out = vec![0u8; 65536];
        assert!(!CompressionType::Zstd.decompress(&c[..c.len() / 2 - 150], &mut out));
        // garbage is an error, not a hang
        assert!(!CompressionType::Zstd.decompress(&[0u8; 512], &mut out));
    }
}
