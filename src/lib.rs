//! blockfault's engine: a block layer in the spirit of QEMU's (file, raw, blkdebug, blkverify),
//! the qemu-io command language on top of it, and a qemu-img subset.
//!
//! The engine never prints: every entry point takes an [`output::Sink`] to write to.

pub mod block;
pub mod errno;
pub mod host_bytes;
pub mod img;
pub mod output;
pub mod qemu_io;
