//! The qcow2 parts of qemu-img that are qemu-img's own: creating an image (replaying
//! `qcow2_co_create`) and the format-specific part of `info`. The header, its checks and the
//! checker are the driver's (`block::qcow2`), so qemu-img reads images as the driver does.

pub mod create;
pub mod info;
