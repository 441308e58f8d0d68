//! The block layer: drivers, the node graph, the generic request layer and the executor.

pub mod backend;
pub mod blkdebug;
pub mod blkverify;
pub mod compress;
pub mod copy_on_read;
pub mod crash_log;
pub mod driver;
pub mod executor;
pub mod file;
pub mod int_map;
pub mod io;
pub mod iovec;
pub mod json;
pub mod json_filename;
pub mod luks_header;
pub mod node;
pub mod null;
pub mod open;
pub mod options;
pub mod perms;
pub mod qcow2;
pub mod raw;
pub mod reopen;
pub mod tracked;
