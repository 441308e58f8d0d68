//! The base images every case mutates, made by the real qemu-img and qemu-io once per test run:
//! v2 and v3, cluster sizes 512 B..64 KiB, refcount widths 1..64 bits, data, zero and compressed
//! clusters (zlib and zstd), internal snapshots, vmstate, a backing file, external data files
//! (raw and not), extended L2 entries, lazy refcounts, a persistent bitmap, LUKS encryption
//! (which only `info` opens without the key).

use super::layout::{self, Layout};
use std::path::Path;
use std::process::{Command, Stdio};

/// A recipe: commands run in an empty directory; the image is always `img.qcow2`, other files it
/// needs (a backing file, a data file) sit beside it.
pub struct Spec {
    pub name: &'static str,
    pub steps: &'static [&'static [&'static str]],
}

pub struct Base {
    pub spec: &'static Spec,
    pub bytes: Vec<u8>,
    /// the other files of the recipe's directory: (name, bytes)
    pub aux: Vec<(String, Vec<u8>)>,
    pub layout: Layout,
    pub virtual_size: u64,
}

const IMG: &str = "qemu-img";
const IO: &str = "qemu-io";

pub const SPECS: &[Spec] = &[
    Spec {
        name: "v3-64k-snapshot",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=65536",
                "img.qcow2",
                "16M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 1 0 64k",
                "-c",
                "write -z 1M 64k",
                "-c",
                "write -P 2 3M 4k",
                "-c",
                "write -c -P 3 8M 128k",
                "img.qcow2",
            ],
            &[IMG, "snapshot", "-c", "s1", "img.qcow2"],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 4 0 4k",
                "-c",
                "discard 8M 64k",
                "img.qcow2",
            ],
        ],
    },
    Spec {
        name: "v2-64k-snapshots",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10",
                "img.qcow2",
                "16M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 1 0 64k",
                "-c",
                "write -P 2 5M 8k",
                "img.qcow2",
            ],
            &[IMG, "snapshot", "-c", "s1", "img.qcow2"],
            &[IO, "-f", "qcow2", "-c", "write -P 5 5M 4k", "img.qcow2"],
            &[IMG, "snapshot", "-c", "s2", "img.qcow2"],
        ],
    },
    Spec {
        name: "v2-512-compressed",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "compat=0.10,cluster_size=512",
                "img.qcow2",
                "2M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 1 0 16k",
                "-c",
                "write -c -P 2 64k 2k",
                "-c",
                "write -b -P 3 0 1k",
                "img.qcow2",
            ],
            &[IMG, "snapshot", "-c", "s1", "img.qcow2"],
        ],
    },
    Spec {
        name: "v3-512-rc8",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=512,refcount_bits=8",
                "img.qcow2",
                "4M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 3 0 96k",
                "-c",
                "write -c -P 4 1M 4k",
                "-c",
                "write -b -P 5 0 2k",
                "img.qcow2",
            ],
        ],
    },
    Spec {
        name: "v3-1k-rc1",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=1024,refcount_bits=1",
                "img.qcow2",
                "2M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 8 0 16k",
                "-c",
                "write -c -P 9 1M 2k",
                "img.qcow2",
            ],
        ],
    },
    Spec {
        name: "v3-2k-rc64-snapshot",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=2048,refcount_bits=64",
                "img.qcow2",
                "4M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 9 0 32k",
                "-c",
                "write -c -P 10 1M 8k",
                "img.qcow2",
            ],
            &[IMG, "snapshot", "-c", "s1", "img.qcow2"],
        ],
    },
    Spec {
        name: "v3-4k-rc4-snapshot",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096,refcount_bits=4",
                "img.qcow2",
                "8M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 6 0 64k",
                "-c",
                "write -P 7 2M 4k",
                "-c",
                "discard 2M 4k",
                "img.qcow2",
            ],
            &[IMG, "snapshot", "-c", "s1", "img.qcow2"],
            &[IO, "-f", "qcow2", "-c", "write -P 8 4k 4k", "img.qcow2"],
        ],
    },
    Spec {
        name: "v3-4k-rc8-compressed-snapshot",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096,refcount_bits=8",
                "img.qcow2",
                "8M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -c -P 6 0 64k",
                "-c",
                "write -P 7 2M 4k",
                "img.qcow2",
            ],
            &[IMG, "snapshot", "-c", "s1", "img.qcow2"],
            &[IO, "-f", "qcow2", "-c", "write -c -P 1 4M 8k", "img.qcow2"],
        ],
    },
    Spec {
        name: "v3-32k-rc32-zstd",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=32768,refcount_bits=32,compression_type=zstd",
                "img.qcow2",
                "8M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -c -P 1 0 128k",
                "-c",
                "write -P 2 1M 32k",
                "img.qcow2",
            ],
        ],
    },
    Spec {
        name: "v3-4k-backing",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096",
                "base.qcow2",
                "4M",
            ],
            &[IO, "-f", "qcow2", "-c", "write -P 11 0 1M", "base.qcow2"],
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096",
                "-b",
                "base.qcow2",
                "-F",
                "qcow2",
                "img.qcow2",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 12 6k 1k",
                "-c",
                "write -z 64k 4k",
                "img.qcow2",
            ],
        ],
    },
    Spec {
        name: "v3-64k-data-file-raw",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "data_file=img.data,data_file_raw=on",
                "img.qcow2",
                "4M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 1 0 128k",
                "-c",
                "write -P 2 1M 4k",
                "img.qcow2",
            ],
        ],
    },
    Spec {
        name: "v3-4k-data-file",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096,data_file=img.data",
                "img.qcow2",
                "4M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 1 0 32k",
                "-c",
                "write -z 64k 8k",
                "-c",
                "write -P 3 2M 4k",
                "img.qcow2",
            ],
        ],
    },
    Spec {
        name: "v3-32k-extended-l2-snapshot",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=32768,extended_l2=on",
                "img.qcow2",
                "4M",
            ],
            &[
                IO,
                "-f",
                "qcow2",
                "-c",
                "write -P 1 0 4k",
                "-c",
                "write -P 2 64k 40k",
                "-c",
                "write -c -P 3 1M 32k",
                "-c",
                "write -z 2M 4k",
                "img.qcow2",
            ],
            &[IMG, "snapshot", "-c", "s1", "img.qcow2"],
            &[IO, "-f", "qcow2", "-c", "write -P 4 2k 1k", "img.qcow2"],
        ],
    },
    Spec {
        name: "v3-64k-lazy-bitmap",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "lazy_refcounts=on",
                "img.qcow2",
                "8M",
            ],
            &[IO, "-f", "qcow2", "-c", "write -P 8 0 128k", "img.qcow2"],
            &[IMG, "bitmap", "--add", "img.qcow2", "b0"],
        ],
    },
    Spec {
        name: "v3-4k-luks",
        steps: &[
            &[
                IMG,
                "create",
                "-q",
                "--object",
                "secret,id=s,data=pw",
                "-f",
                "qcow2",
                "-o",
                "cluster_size=4096,encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10",
                "img.qcow2",
                "4M",
            ],
            &[
                IO,
                "--object",
                "secret,id=s,data=pw",
                "--image-opts",
                "-c",
                "write -P 1 0 64k",
                "-c",
                "write -z 1M 64k",
                "driver=qcow2,encrypt.key-secret=s,file.filename=img.qcow2",
            ],
        ],
    },
];

fn run(argv: &[&str], dir: &Path) -> Result<(), String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{argv:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn make(spec: &'static Spec, root: &Path) -> Result<Base, String> {
    let dir = root.join(spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for step in spec.steps {
        run(step, &dir)?;
    }
    let bytes = std::fs::read(dir.join("img.qcow2")).map_err(|e| e.to_string())?;
    let mut aux = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name != "img.qcow2" {
            aux.push((name, std::fs::read(e.path()).map_err(|e| e.to_string())?));
        }
    }
    aux.sort();
    let layout = layout::parse(&bytes);
    Ok(Base {
        spec,
        virtual_size: layout::be(&bytes, 24, 8),
        bytes,
        aux,
        layout,
    })
}

/// All base images, or why they could not be made.
pub fn make_all() -> Result<Vec<Base>, String> {
    let tmp = crate::support::tempdir().map_err(|e| e.to_string())?;
    SPECS.iter().map(|s| make(s, tmp.path())).collect()
}

/// The recipe as shell commands.
pub fn script(spec: &Spec) -> String {
    spec.steps
        .iter()
        .map(|argv| {
            let words: Vec<String> = argv.iter().map(|w| shell_quote(w)).collect();
            let quiet = if argv[0] == IO { " >/dev/null" } else { "" };
            format!("{}{quiet}\n", words.join(" "))
        })
        .collect()
}

pub fn shell_quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,/:+".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', r"'\''"))
    }
}
