//! qcow2 interoperability with real QEMU 10.0.2: images our engine writes pass `qemu-img
//! check` and read back identically through qemu-io, and images QEMU makes (every cluster
//! size, v2 and v3, backing chains, compressed clusters) read identically through our
//! engine. Skipped (with a printed reason) when qemu-io or qemu-img is missing.

use crate::support;
use crate::support::{have, sh};
use std::path::Path;
use std::process::Command;

/// Runs qemu-io (`ours` = our engine) and returns its output without timing lines.
fn qemu_io(dir: &Path, ours: bool, cmds: &[String], args: &[&str]) -> String {
    let mut c = if ours {
        let mut c = Command::new(env!("CARGO_BIN_EXE_blockfault"));
        c.arg("io");
        c
    } else {
        Command::new("qemu-io")
    };
    c.current_dir(dir).args(args);
    for x in cmds {
        c.args(["-c", x]);
    }
    let o = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    text.lines()
        .filter(|l| !l.contains(" ops; "))
        .collect::<Vec<_>>()
        .join("\n")
}

fn workdir(name: &str) -> std::path::PathBuf {
    support::workdir("qcow2-interop", name)
}

/// Reads that verify the pattern layout the writers below produce.
fn verify_reads(cs: u64) -> Vec<String> {
    vec![
        "read -P 0x11 0 4k".into(),
        "read -P 0 4k 4k".into(),
        format!("read -P 0x22 {} 8k", 262144 + cs * 3 + 512),
        format!("read -P 0 {} 512", 262144 + cs * 3),
        "read -P 0x33 1M 64k".into(),
        "read -P 0 2M 64k".into(),
        "read -v 1M 32".into(),
    ]
}

fn writes(cs: u64) -> Vec<String> {
    vec![
        "write -P 0x11 0 4k".into(),
        format!("write -P 0x22 {} 8k", 262144 + cs * 3 + 512),
        "write -P 0x33 1M 64k".into(),
        "write -P 0x44 3M 64k".into(),
        "write -z 3M 64k".into(),
        "discard 3M 64k".into(),
    ]
}

#[test]
fn images_written_by_us_pass_qemu_img_check_and_read_back_in_qemu() {
    if !have("qemu-io") || !have("qemu-img") {
        eprintln!("skipped: qemu-io/qemu-img 10.0.2 not installed");
        return;
    }
    for (cs, compat) in [
        (512u64, "1.1"),
        (4096, "0.10"),
        (65536, "1.1"),
        (2 << 20, "1.1"),
    ] {
        let d = workdir(&format!("w{cs}"));
        sh(
            &d,
            &format!(
                "qemu-img create -q -f qcow2 -o cluster_size={cs},compat={compat} t.qcow2 64M"
            ),
        );
        let out = qemu_io(&d, true, &writes(cs), &["-f", "qcow2", "t.qcow2"]);
        assert!(!out.contains("failed"), "our writes failed ({cs}): {out}");
        let chk = Command::new("qemu-img")
            .args(["check", "t.qcow2"])
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(
            chk.status.success(),
            "qemu-img check ({cs}): {}",
            String::from_utf8_lossy(&chk.stdout)
        );
        let theirs = qemu_io(
            &d,
            false,
            &verify_reads(cs),
            &["-f", "qcow2", "-r", "t.qcow2"],
        );
        let ours = qemu_io(
            &d,
            true,
            &verify_reads(cs),
            &["-f", "qcow2", "-r", "t.qcow2"],
        );
        assert!(
            !theirs.contains("failed"),
            "qemu-io read back ({cs}): {theirs}"
        );
        assert_eq!(theirs, ours, "cluster size {cs}");
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn images_made_by_qemu_read_identically() {
    if !have("qemu-io") || !have("qemu-img") {
        eprintln!("skipped: qemu-io/qemu-img 10.0.2 not installed");
        return;
    }
    for cs in [512u64, 1024, 4096, 65536, 262144, 2 << 20] {
        for compat in ["0.10", "1.1"] {
            let d = workdir(&format!("r{cs}-{compat}"));
            let w: Vec<String> = writes(cs).iter().map(|c| format!("-c '{c}'")).collect();
            sh(
                &d,
                &format!(
                    "qemu-img create -q -f qcow2 -o cluster_size={cs},compat={compat} base.qcow2 64M && \
                 qemu-io -f qcow2 {} base.qcow2 >/dev/null && \
                 qemu-img create -q -f qcow2 -o cluster_size={cs},compat={compat} -b base.qcow2 -F qcow2 mid.qcow2 64M && \
                 qemu-io -f qcow2 -c 'write -P 0x55 2M 4k' -c 'write -P 0x66 {} 512' mid.qcow2 >/dev/null && \
                 qemu-img create -q -f qcow2 -b mid.qcow2 -F qcow2 top.qcow2 64M && \
                 qemu-img convert -c -O qcow2 -o cluster_size={cs},compat={compat} mid.qcow2 comp.qcow2",
                    w.join(" "),
                    262144 + cs * 3
                ),
            );
            let mut reads = verify_reads(cs);
            reads.retain(|r| {
                !r.starts_with("read -P 0 2M") && !r.contains(&format!("{} 512", 262144 + cs * 3))
            });
            reads.push("read -v 2M 16".into());
            reads.push(format!("read -v {} 16", 262144 + cs * 3));
            reads.push("read -P 0 5M 1M".into());
            for img in ["base.qcow2", "top.qcow2", "comp.qcow2"] {
                let theirs = qemu_io(&d, false, &reads, &["-f", "qcow2", "-r", img]);
                let ours = qemu_io(&d, true, &reads, &["-f", "qcow2", "-r", img]);
                assert_eq!(theirs, ours, "{img}, cluster size {cs}, compat {compat}");
            }
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}

/// Data that compresses in varied ways: words, runs, noise and a mix, cluster by cluster.
fn varied_data(clusters: usize, cs: usize) -> Vec<u8> {
    let words = [
        "qcow2", "cluster", "refcount", "block ", "zstd", "deflate", "L2 ", "table\n", "0x",
        "snapshot", "data", " ",
    ];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::with_capacity(clusters * cs);
    for c in 0..clusters {
        let start = out.len();
        while out.len() < start + cs {
            let r = next();
            match c % 4 {
                0 => out.extend_from_slice(words[(r % words.len() as u64) as usize].as_bytes()),
                1 => out.extend(std::iter::repeat_n((r >> 8) as u8, (r % 300) as usize)),
                2 => out.extend_from_slice(&r.to_le_bytes()),
                _ if r % 3 == 0 => out.extend_from_slice(&r.to_le_bytes()),
                _ => out.extend_from_slice(words[(r % 5) as usize].as_bytes()),
            }
        }
        out.truncate(start + cs);
    }
    out
}

#[test]
fn compressed_clusters_are_byte_identical_to_qemus() {
    use blockfault::block::qcow2::compress::CompressionType;
    if !have("qemu-img") {
        eprintln!("skipped: qemu-img 10.0.2 not installed");
        return;
    }
    let cs = 65536usize;
    let raw = varied_data(16, cs);
    for (name, codec) in [
        ("zlib", CompressionType::Zlib),
        ("zstd", CompressionType::Zstd),
    ] {
        let d = workdir(&format!("codec-{name}"));
        std::fs::write(d.join("src.raw"), &raw).unwrap();
        sh(
            &d,
            &format!(
                "qemu-img convert -c -f raw -O qcow2 -o compression_type={name} src.raw c.qcow2"
            ),
        );
        let img = std::fs::read(d.join("c.qcow2")).unwrap();
        let be64 = |at: usize| u64::from_be_bytes(img[at..at + 8].try_into().unwrap());
        let l2 = (be64(be64(40) as usize) & 0x00ff_ffff_ffff_fe00) as usize;
        let shift = 62 - (16 - 8);
        let mut compressed = 0;
        for (i, cluster) in raw.chunks(cs).enumerate() {
            let entry = be64(l2 + i * 8);
            let ours = codec.compress(cluster, cs - 1);
            if entry & (1 << 62) == 0 {
                assert!(
                    ours.is_none(),
                    "{name}: cluster {i} is stored uncompressed by QEMU"
                );
                continue;
            }
            compressed += 1;
            let off = (entry & ((1u64 << shift) - 1)) as usize;
            let ours = ours.unwrap_or_else(|| panic!("{name}: cluster {i} compresses in QEMU"));
            let theirs = &img[off..off + ours.len()];
            let first_diff = theirs.iter().zip(&ours).position(|(a, b)| a != b);
            assert_eq!(first_diff, None, "{name}: cluster {i} differs from QEMU's");
            let mut back = vec![0u8; cs];
            let sectors = ((entry >> shift) & 0xff) as usize + 1;
            let stored = &img[off..(off + sectors * 512 - (off & 511)).min(img.len())];
            assert!(codec.decompress(stored, &mut back), "{name}: cluster {i}");
            assert!(back == cluster, "{name}: cluster {i} reads back wrong");
        }
        assert!(
            compressed >= 8,
            "{name}: only {compressed} clusters compressed"
        );
        let o = Command::new(env!("CARGO_BIN_EXE_blockfault"))
            .args(["img", "compare", "src.raw", "c.qcow2"])
            .current_dir(&d)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            "Images are identical.\n"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn subcluster_and_data_file_images_we_write_pass_qemu_img_check() {
    if !have("qemu-io") || !have("qemu-img") {
        eprintln!("skipped: qemu-io/qemu-img 10.0.2 not installed");
        return;
    }
    let cmds: Vec<String> = [
        "write -P 0x11 3k 1k",
        "write -P 0x22 62k 5k",
        "write -z 70k 2k",
        "write -z -u 128k 64k",
        "write -P 0x33 200k 100k",
        "discard 256k 64k",
        "write -z 300k 1k",
        "write -P 0x44 1M 3k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let reads: Vec<String> = [
        "read -P 0x11 3k 1k",
        "read -P 0 0 3k",
        "read -P 0x22 62k 5k",
        "read -P 0 70k 2k",
        "read -P 0 128k 64k",
        "read -P 0x33 200k 56k",
        "read -P 0 256k 64k",
        "read -P 0x44 1M 3k",
        "map",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (name, opts) in [
        ("xl2", "extended_l2=on"),
        ("xl2-16k", "extended_l2=on,cluster_size=16k"),
        ("df", "data_file=t.data"),
        ("df-raw", "data_file=t.data,data_file_raw=on"),
        ("df-xl2", "data_file=t.data,extended_l2=on"),
    ] {
        let d = workdir(&format!("feat-{name}"));
        sh(
            &d,
            &format!("qemu-img create -q -f qcow2 -o {opts} t.qcow2 4M"),
        );
        let out = qemu_io(&d, true, &cmds, &["-f", "qcow2", "t.qcow2"]);
        assert!(!out.contains("failed"), "{name}: {out}");
        let check = Command::new("qemu-img")
            .args(["check", "t.qcow2"])
            .current_dir(&d)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: qemu-img check: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let theirs = qemu_io(&d, false, &reads, &["-f", "qcow2", "-r", "t.qcow2"]);
        let ours = qemu_io(&d, true, &reads, &["-f", "qcow2", "-r", "t.qcow2"]);
        assert_eq!(theirs, ours, "{name}");
        assert!(!theirs.contains("failed"), "{name}: {theirs}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
