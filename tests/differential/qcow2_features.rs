//! qcow2 features QEMU 10.0.2 has beyond the basics: zstd compression, extended L2 entries
//! (subclusters) and external data files. Images are made by the real `qemu-img create`;
//! the harness compares qemu-io's output, exit status and every file's bytes afterwards, so
//! each case checks the image (and data file) our engine leaves against QEMU's.

use crate::harness::Case;
use crate::no_lost_writes::on_qcow2;

/// `qemu-io -f qcow2 -c CMD... t.qcow2` on a fresh image made with `opts`.
fn io(name: &str, opts: &str, size: &str, cmds: &[&str]) -> Case {
    on_qcow2(name, opts, size, &["-f", "qcow2"], cmds, "t.qcow2")
}

pub fn all() -> Vec<Case> {
    vec![
        // zstd: compressed clusters, reads across cluster ends, and a COW of a compressed
        // cluster through decompression (one cluster per write: QEMU's thread pool finishes
        // parallel compressions in a racy order)
        io(
            "zstd_compressed_writes_and_reads",
            "compression_type=zstd",
            "64M",
            &[
                "write -c -P 0xac 64k 64k",
                "write -c -P 0xab 0 64k",
                "write -c -P 0x11 256k 64k",
                "read -P 0xac 64k 64k",
                "read -v 131070 8",
                "read -v 65534 8",
                "write -P 0x22 68k 4k",
                "read -P 0xac 64k 4k",
                "read -P 0x22 68k 4k",
                "read -P 0x11 256k 64k",
                "info",
            ],
        ),
        io(
            "zstd_small_clusters_share_host_clusters_and_unmap",
            "compression_type=zstd,cluster_size=4k",
            "1M",
            &[
                "write -c -P 0xac 0 4k",
                "write -c -P 0x5a 8k 4k",
                "write -c -P 0x5b 12k 4k",
                "write -z -u 8k 4k",
                "discard 0 4k",
                "read -P 0 8k 4k",
                "read -P 0x5b 12k 4k",
                "read -P 0 0 4k",
            ],
        ),
    ]
}
