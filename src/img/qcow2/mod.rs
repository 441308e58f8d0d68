//! qcow2 on-disk work that qemu-img does without the format driver: creating an image, checking
//! it (an fsck must not trust the driver), and the format-specific part of `info`.

pub mod check;
pub mod create;
pub mod info;
pub mod layout;
