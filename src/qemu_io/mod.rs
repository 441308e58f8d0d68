//! The qemu-io command language.

pub mod format;
pub mod getopt;
pub mod numbers;
