//! `qemu-img create`: argument and `-o` option parsing as `img_create`/`bdrv_img_create` do it
//! (QemuOpts semantics: typed values, defaults, the print order of the `Formatting` line),
//! backing-file checks, then the format's own creation (raw here, qcow2 in `qcow2::create`).

use super::Img;
use super::qcow2::create::{CreateError, CreateSpec, build, validate};
use crate::block::perms::{Access, Perms};
use crate::block::qcow2::header::{MAGIC, be32};
use crate::block::qcow2::image_file::PlainFile;
use crate::block::qcow2::open::open_metadata;
use crate::qemu_io::numbers::{strtosz, strtoull};
use std::path::Path;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Str,
    Bool,
    Size,
    Number,
}

/// One option description: name, type, default (QemuOptDesc).
type Desc = (&'static str, Kind, Option<&'static str>);

/// qcow2's create options followed by the file protocol's, in QEMU's print order.
const QCOW2_OPTS: &[Desc] = &[
    ("encryption", Kind::Bool, None),
    ("encrypt.format", Kind::Str, None),
    ("encrypt.key-secret", Kind::Str, None),
    ("encrypt.cipher-alg", Kind::Str, None),
    ("encrypt.cipher-mode", Kind::Str, None),
    ("encrypt.ivgen-alg", Kind::Str, None),
    ("encrypt.ivgen-hash-alg", Kind::Str, None),
    ("encrypt.hash-alg", Kind::Str, None),
    ("encrypt.iter-time", Kind::Number, None),
    ("cluster_size", Kind::Size, Some("65536")),
    ("extended_l2", Kind::Bool, Some("off")),
    ("preallocation", Kind::Str, None),
    ("compression_type", Kind::Str, Some("zlib")),
    ("size", Kind::Size, None),
    ("compat", Kind::Str, None),
    ("backing_file", Kind::Str, None),
    ("backing_fmt", Kind::Str, None),
    ("data_file", Kind::Str, None),
    ("data_file_raw", Kind::Bool, None),
    ("lazy_refcounts", Kind::Bool, Some("off")),
    ("refcount_bits", Kind::Number, Some("16")),
    ("nocow", Kind::Bool, None),
    ("extent_size_hint", Kind::Size, None),
];

const RAW_OPTS: &[Desc] = &[
    ("size", Kind::Size, None),
    ("nocow", Kind::Bool, None),
    ("preallocation", Kind::Str, None),
    ("extent_size_hint", Kind::Size, None),
];

/// A set option: the text as given and, for sizes and numbers, the parsed value.
#[derive(Clone, Debug)]
struct Opt {
    text: String,
    value: u64,
}

struct Opts {
    desc: &'static [Desc],
    set: Vec<(&'static str, Opt)>,
}

impl Opts {
    fn get(&self, name: &str) -> Option<&Opt> {
        self.set
            .iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o)
    }
    fn str(&self, name: &str) -> Option<&str> {
        self.get(name).map(|o| o.text.as_str())
    }
    fn bool(&self, name: &str) -> bool {
        self.get(name).is_some_and(|o| o.value != 0)
    }
    fn set(&mut self, name: &str, text: &str) -> Result<(), String> {
        let Some(&(n, kind, _)) = self.desc.iter().find(|d| d.0 == name) else {
            return Err(format!("Invalid parameter '{name}'"));
        };
        let value = parse_value(n, kind, text)?;
        self.set.retain(|(k, _)| *k != n);
        self.set.push((
            n,
            Opt {
                text: text.to_string(),
                value,
            },
        ));
        Ok(())
    }
    /// `qemu_opts_print(opts, " ")`.
    fn print(&self) -> String {
        let mut parts = Vec::new();
        for &(name, kind, def) in self.desc {
            match self.get(name) {
                Some(o) if matches!(kind, Kind::Size | Kind::Number) => {
                    parts.push(format!("{name}={}", o.value as i64))
                }
                Some(o) if kind == Kind::Str => {
                    parts.push(format!("{name}={}", o.text.replace(',', ",,")))
                }
                Some(o) => parts.push(format!("{name}={}", o.text)),
                None => {
                    if let Some(d) = def {
                        parts.push(format!("{name}={d}"));
                    }
                }
            }
        }
        parts.join(" ")
    }
}

fn parse_value(name: &str, kind: Kind, text: &str) -> Result<u64, String> {
    match kind {
        Kind::Str => Ok(0),
        Kind::Bool => match text {
            "on" | "yes" | "true" | "y" => Ok(1),
            "off" | "no" | "false" | "n" => Ok(0),
            _ => Err(format!("Parameter '{name}' expects 'on' or 'off'")),
        },
        Kind::Size => match strtosz(text) {
            Ok(v) => Ok(v),
            Err(crate::qemu_io::numbers::NumError::TooLarge) if !text.starts_with('-') => Err(
                format!("Value '{text}' is out of range for parameter '{name}'"),
            ),
            Err(_) => Err(format!(
                "Parameter '{name}' expects a non-negative number below 2^64\nOptional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."
            )),
        },
        Kind::Number => {
            let r = strtoull(text, 0);
            if text.is_empty() || r.end != text.len() || r.erange {
                Err(format!("Parameter '{name}' expects a number"))
            } else {
                Ok(r.value)
            }
        }
    }
}

/// Splits a QemuOpts option string: `,,` escapes a comma; a key without `=` is a flag
/// (`key` = on, `nokey` = off).
fn split_options(list: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let b = list.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let mut name = String::new();
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            name.push(b[i] as char);
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            let mut value = Vec::new();
            while i < b.len() {
                if b[i] == b',' {
                    if i + 1 < b.len() && b[i + 1] == b',' {
                        value.push(b',');
                        i += 2;
                        continue;
                    }
                    break;
                }
                value.push(b[i]);
                i += 1;
            }
            out.push((name, String::from_utf8_lossy(&value).into_owned()));
        } else if let Some(stripped) = name.strip_prefix("no") {
            out.push((stripped.to_string(), "off".into()));
        } else {
            out.push((name, "on".into()));
        }
        i += 1;
    }
    out
}

/// `is_valid_option_list`.
fn valid_option_list(s: &str) -> bool {
    if s.is_empty() || s.starts_with(',') {
        return false;
    }
    let trailing = s.len() - s.trim_end_matches(',').len();
    trailing.is_multiple_of(2)
}

/// Where `backing` lives relative to the image `filename` (QEMU's `path_combine`); a name with a
/// protocol prefix (`json:{...}` too) stands as it is.
pub fn backing_path(filename: &str, backing: &str) -> String {
    if backing.starts_with('/') || crate::block::open::has_protocol(backing) {
        return backing.to_string();
    }
    match filename.rfind('/') {
        Some(i) => format!("{}{backing}", &filename[..=i]),
        None => backing.to_string(),
    }
}

impl Img<'_> {
    /// A `json:` or protocol (`blkdebug:...`) backing file, opened through the block layer
    /// (options, format priority and errors as for any such filename): its format and virtual
    /// size, or QEMU's message.
    fn open_backing_node(&self, name: &str, fmt: Option<&str>) -> Result<(String, u64), String> {
        use crate::block::open::{OpenContext, Options, open_drive};
        let ctx = OpenContext {
            base_dir: self.base_dir.to_path_buf(),
            console: self.console.clone(),
            flags: crate::block::node::OpenFlags {
                read_only: true,
                unmap: true,
                ..Default::default()
            },
            skip_host_sync: true,
        };
        let node = open_drive(Some(name), Options::new(), fmt, &ctx)?;
        let size = crate::block::io::getlength(&node).map_err(|e| {
            format!(
                "Could not get size of '{name}': {}",
                crate::errno::strerror(e)
            )
        })?;
        Ok((node.driver.format_name().to_string(), size))
    }
}

/// Opens a backing image as `bdrv_open` would for `qemu-img create`: returns its format and
/// virtual size, or QEMU's message.
pub fn probe_backing(
    base_dir: &Path,
    name: &str,
    fmt: Option<&str>,
) -> Result<(String, u64), String> {
    let path = base_dir.join(crate::host_bytes::host_path(name));
    let file = std::fs::File::open(&path).map_err(|e| {
        format!(
            "Could not open '{name}': {}",
            crate::errno::strerror(e.raw_os_error().unwrap_or(libc::EIO))
        )
    })?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let fmt = match fmt {
        Some(f) => f.to_string(),
        None => {
            let mut m = [0u8; 4];
            use std::os::unix::fs::FileExt;
            if file.read_exact_at(&mut m, 0).is_ok() && be32(&m, 0) == MAGIC {
                "qcow2".into()
            } else {
                "raw".into()
            }
        }
    };
    match fmt.as_str() {
        "raw" | "file" => Ok((fmt, len)),
        "qcow2" => {
            let md =
                open_metadata(&PlainFile::new(file), false, false, true).map_err(|(msg, _)| msg)?;
            Ok((fmt, md.h.size))
        }
        other => Err(format!("Unknown driver '{other}'")),
    }
}

/// QAPI's `BlockdevDriver` names (what `backing-fmt` accepts).
const BLOCKDEV_DRIVERS: &[&str] = &[
    "blkdebug",
    "blklogwrites",
    "blkreplay",
    "blkverify",
    "bochs",
    "cloop",
    "compress",
    "copy-before-write",
    "copy-on-read",
    "dmg",
    "file",
    "snapshot-access",
    "ftp",
    "ftps",
    "gluster",
    "host_cdrom",
    "host_device",
    "http",
    "https",
    "io_uring",
    "iscsi",
    "luks",
    "nbd",
    "nfs",
    "null-aio",
    "null-co",
    "nvme",
    "nvme-io_uring",
    "parallels",
    "preallocate",
    "qcow",
    "qcow2",
    "qed",
    "quorum",
    "raw",
    "rbd",
    "replication",
    "ssh",
    "throttle",
    "vdi",
    "vhdx",
    "virtio-blk-vfio-pci",
    "virtio-blk-vhost-user",
    "virtio-blk-vhost-vdpa",
    "vmdk",
    "vpc",
    "vvfat",
];

impl Img<'_> {
    fn fail_usage(&self, msg: &str) -> i32 {
        self.error(msg);
        self.console
            .err("Try 'qemu-img create --help' for more info\n");
        1
    }

    pub(super) fn create(&self, argv: &[String]) -> i32 {
        let Ok((opts, pos)) = self.opts(argv, "F:b:f:ho:qu") else {
            return 1;
        };
        let mut fmt = "raw".to_string();
        let (mut quiet, mut unsafe_backing) = (false, false);
        let (mut base_file, mut base_fmt) = (None, None);
        let mut options: Option<String> = None;
        for (c, a) in opts {
            match c {
                'f' => fmt = a,
                'q' => quiet = true,
                'u' => unsafe_backing = true,
                'b' => base_file = Some(a),
                'F' => base_fmt = Some(a),
                'o' => {
                    if !valid_option_list(&a) {
                        self.error(&format!("Invalid option list: {a}"));
                        return 1;
                    }
                    options = Some(match options {
                        Some(prev) => format!("{prev},{a}"),
                        None => a,
                    });
                }
                _ => {}
            }
        }
        let Some(filename) = pos.first().cloned() else {
            return self.fail_usage("Expecting image file name");
        };
        let mut img_size: Option<u64> = None;
        if let Some(text) = pos.get(1) {
            match strtosz(text) {
                Ok(v) if v <= i64::MAX as u64 => img_size = Some(v),
                Err(crate::qemu_io::numbers::NumError::Invalid) => {
                    self.error(&format!("Invalid image size specified: '{text}'."));
                    return 1;
                }
                _ => {
                    self.error(
                        "Invalid image size specified. Must be between 0 and 9223372036854775807.",
                    );
                    return 1;
                }
            }
        }
        if let Some(extra) = pos.get(2) {
            return self.fail_usage(&format!("Unexpected argument: {extra}"));
        }
        match self.img_create(
            &filename,
            &fmt,
            base_file,
            base_fmt,
            options,
            img_size,
            unsafe_backing,
            quiet,
        ) {
            Ok(()) => 0,
            Err(msg) => {
                self.console.report(&format!("{filename}: {msg}"));
                1
            }
        }
    }

    /// `bdrv_img_create`; errors are the message after "FILENAME: " (hints on following lines).
    #[allow(clippy::too_many_arguments)]
    fn img_create(
        &self,
        filename: &str,
        fmt: &str,
        base_file: Option<String>,
        base_fmt: Option<String>,
        options: Option<String>,
        img_size: Option<u64>,
        unsafe_backing: bool,
        quiet: bool,
    ) -> Result<(), String> {
        let desc = match fmt {
            "qcow2" => QCOW2_OPTS,
            "raw" => RAW_OPTS,
            _ => return Err(format!("Unknown file format '{fmt}'")),
        };
        let mut opts = Opts {
            desc,
            set: Vec::new(),
        };
        if let Some(list) = &options {
            for (k, v) in split_options(list) {
                opts.set(&k, &v)?;
            }
        }
        if opts.get("size").is_none() {
            if let Some(s) = img_size {
                opts.set("size", &s.to_string())?;
            }
        } else if img_size.is_some() {
            return Err("The image size must be specified only once".into());
        }
        if let Some(b) = &base_file {
            opts.set("backing_file", b)
                .map_err(|_| format!("Backing file not supported for file format '{fmt}'"))?;
        }
        if let Some(f) = &base_fmt {
            opts.set("backing_fmt", f).map_err(|_| {
                format!("Backing file format not supported for file format '{fmt}'")
            })?;
        }
        let backing_file = opts.str("backing_file").map(str::to_string);
        if let Some(b) = &backing_file {
            if b == filename {
                return Err(
                    "Error: Trying to create an image with the same filename as the backing file"
                        .into(),
                );
            }
            if b.is_empty() {
                return Err("Expected backing file name, got empty string".into());
            }
        }
        let backing_fmt = opts.str("backing_fmt").map(str::to_string);
        let mut size = opts.get("size").map(|o| o.value);
        if let Some(b) = &backing_file {
            if !unsafe_backing {
                let full = backing_path(filename, b);
                let probed = if full.starts_with("json:") || crate::block::open::has_protocol(&full)
                {
                    self.open_backing_node(&full, backing_fmt.as_deref())
                } else {
                    probe_backing(self.base_dir, &full, backing_fmt.as_deref())
                };
                let (detected, bsize) =
                    probed.map_err(|m| format!("{m}\nCould not open backing image."))?;
                if backing_fmt.is_none() {
                    return Err(format!(
                        "Backing file specified without backing format\nDetected format of {detected}."
                    ));
                }
                if size.is_none() {
                    opts.set("size", &bsize.to_string())?;
                    size = Some(bsize);
                }
            } else if backing_fmt.is_none() {
                return Err("Backing file specified without backing format".into());
            }
        }
        let Some(size) = size else {
            return Err("Image creation needs a size parameter".into());
        };
        if !quiet {
            self.console.out(&format!(
                "Formatting '{filename}', fmt={fmt} {}\n",
                opts.print()
            ));
        }
        let path = self.base_dir.join(crate::host_bytes::host_path(filename));
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                format!(
                    "Could not create '{filename}': {}",
                    crate::errno::strerror(errno(e))
                )
            })?;
        // file-posix's create writes and resizes the file and lets nobody else resize it; it
        // empties the file only once its locks say nobody else uses it.
        let creating = Access {
            perm: Perms::WRITE.union(Perms::RESIZE),
            shared: Perms::ALL.without(Perms::RESIZE),
        };
        let locks = crate::block::file::lock_image(&file, filename, creating)?;
        file.set_len(0).map_err(|e| {
            format!(
                "Could not resize file: {}",
                crate::errno::strerror(errno(e))
            )
        })?;
        if fmt == "raw" {
            return create_raw_file(&file, size);
        }
        drop(locks);
        // The new image is then opened as qcow2, whose hold on its file lets nobody else write
        // or resize it; if that fails, the half-made image is deleted.
        let formatting = Access {
            perm: Perms::CONSISTENT_READ
                .union(Perms::WRITE)
                .union(Perms::RESIZE),
            shared: Perms::ALL.without(Perms::WRITE.union(Perms::RESIZE)),
        };
        let result = crate::block::file::lock_image(&file, filename, formatting)
            .and_then(|_locks| self.qcow2_create(&opts, size, &file));
        if result.is_err() {
            drop(file);
            let _ = std::fs::remove_file(&path);
        }
        result
    }

    /// `qcow2_co_create_opts` + `qcow2_co_create` after the file exists.
    fn qcow2_create(&self, opts: &Opts, size: u64, file: &std::fs::File) -> Result<(), String> {
        for unsupported in ["encryption", "encrypt.format", "encrypt.key-secret"] {
            if opts.get(unsupported).is_some() {
                return Err("blockfault: qcow2 encryption is not supported".into());
            }
        }
        let data_file = opts.str("data_file").map(str::to_string);
        if opts.bool("data_file_raw") {
            if data_file.is_none() {
                return Err("data-file-raw requires data-file".into());
            }
            if opts.str("backing_file").is_some() {
                return Err(
                    "Backing file and data-file-raw cannot be used at the same time".into(),
                );
            }
            return Err(
                "blockfault: qcow2 data_file_raw is not supported (it needs metadata preallocation)"
                    .into(),
            );
        }
        let version = match opts.str("compat") {
            None | Some("1.1") | Some("v3") => 3,
            Some("0.10") | Some("v2") => 2,
            Some(other) => {
                return Err(format!(
                    "Parameter 'version' does not accept value '{other}'"
                ));
            }
        };
        if let Some(f) = opts.str("backing_fmt")
            && !BLOCKDEV_DRIVERS.contains(&f)
        {
            return Err(format!(
                "Parameter 'backing-fmt' does not accept value '{f}'"
            ));
        }
        match opts.str("preallocation") {
            None | Some("off") => {}
            Some("metadata") | Some("falloc") | Some("full") => {
                return Err("blockfault: qcow2 preallocation is not supported".into());
            }
            Some(other) => {
                return Err(format!(
                    "Parameter 'preallocation' does not accept value '{other}'"
                ));
            }
        }
        let zstd = match opts.str("compression_type") {
            None | Some("zlib") => false,
            Some("zstd") => true,
            Some(other) => {
                return Err(format!(
                    "Parameter 'compression-type' does not accept value '{other}'"
                ));
            }
        };
        let spec = CreateSpec {
            size: size.div_ceil(512).saturating_mul(512),
            version,
            cluster_size: opts.get("cluster_size").map_or(65536, |o| o.value),
            refcount_bits: opts.get("refcount_bits").map_or(16, |o| o.value),
            lazy_refcounts: opts.bool("lazy_refcounts"),
            extended_l2: opts.bool("extended_l2"),
            zstd,
            backing_file: opts.str("backing_file").map(str::to_string),
            backing_fmt: opts.str("backing_fmt").map(str::to_string),
            data_file,
        };
        validate(&spec).map_err(|e| e.message)?;
        if size > i64::MAX as u64 {
            return Err("Could not resize image: Image size cannot be negative".into());
        }
        const BDRV_MAX_LENGTH: u64 = 0x7fff_ffff_c000_0000;
        if spec.size > BDRV_MAX_LENGTH {
            return Err(format!(
                "Could not resize image: offset({}) exceeds maximum({BDRV_MAX_LENGTH})",
                spec.size
            ));
        }
        let image = build(&spec).map_err(|e: CreateError| {
            if e.errno == libc::EFBIG {
                "The image size is too large for file format 'qcow2' (try using a larger cluster size)"
                    .to_string()
            } else if spec.backing_file.is_some() && e.message.is_empty() {
                format!(
                    "Could not assign backing file '{}' with format '{}': {}",
                    spec.backing_file.as_deref().unwrap_or(""),
                    spec.backing_fmt.as_deref().unwrap_or("(null)"),
                    crate::errno::strerror(e.errno)
                )
            } else if e.message.is_empty() {
                format!("Could not create image: {}", crate::errno::strerror(e.errno))
            } else {
                e.message
            }
        })?;
        if let Some(name) = &spec.data_file {
            // the data file is created as a raw file of the virtual size (QEMU creates it,
            // then the qcow2 truncate grows it to the size)
            let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
            std::fs::File::create(self.base_dir.join(crate::host_bytes::host_path(name)))
                .and_then(|f| f.set_len(spec.size))
                .map_err(|e| {
                    format!(
                        "Could not create '{name}': {}",
                        crate::errno::strerror(errno(e))
                    )
                })?;
        }
        image.write_to(file).map_err(|e| {
            format!(
                "Could not write qcow2 header: {}",
                crate::errno::strerror(e.raw_os_error().unwrap_or(libc::EIO))
            )
        })
    }
}

/// file-posix's create for a raw image: the size rounded up to whole sectors (2^63-1 becomes
/// 2^63, which ftruncate refuses with EINVAL), then, as `allocate_first_block` does to help
/// O_DIRECT alignment probing, the first 4 KiB (512 bytes below 4 KiB) written as zeroes.
fn create_raw_file(file: &std::fs::File, size: u64) -> Result<(), String> {
    let resize_error =
        |errno: i32| format!("Could not resize file: {}", crate::errno::strerror(errno));
    let rounded = size.div_ceil(512) * 512;
    if rounded > i64::MAX as u64 {
        return Err(resize_error(libc::EINVAL));
    }
    file.set_len(rounded)
        .map_err(|e| resize_error(e.raw_os_error().unwrap_or(libc::EIO)))?;
    if rounded > 0 {
        let first = if rounded < 4096 { 512 } else { 4096 };
        // An optimisation in QEMU too: its failure is ignored.
        let _ = std::os::unix::fs::FileExt::write_all_at(file, &vec![0u8; first], 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_lists_split_like_qemu_opts() {
        assert_eq!(
            split_options("a=1,,2,lazy,nofoo,b="),
            vec![
                ("a".into(), "1,2".into()),
                ("lazy".into(), "on".into()),
                ("foo".into(), "off".into()),
                ("b".into(), "".into())
            ]
        );
        assert!(valid_option_list("a=1"));
        assert!(valid_option_list("a=1,,"));
        assert!(!valid_option_list(",,"));
        assert!(!valid_option_list("a=1,"));
        assert!(!valid_option_list(""));
    }

    #[test]
    fn formatting_line_uses_print_order_and_defaults() {
        let mut o = Opts {
            desc: QCOW2_OPTS,
            set: Vec::new(),
        };
        o.set("size", "64M").unwrap();
        o.set("refcount_bits", "0x10").unwrap();
        o.set("lazy_refcounts", "yes").unwrap();
        assert_eq!(
            o.print(),
            "cluster_size=65536 extended_l2=off compression_type=zlib size=67108864 lazy_refcounts=yes refcount_bits=16"
        );
        assert_eq!(o.set("x", "1").unwrap_err(), "Invalid parameter 'x'");
        assert_eq!(
            o.set("refcount_bits", "abc").unwrap_err(),
            "Parameter 'refcount_bits' expects a number"
        );
    }

    #[test]
    fn backing_paths_are_relative_to_the_image() {
        assert_eq!(backing_path("d/e.qcow2", "b.img"), "d/b.img");
        assert_eq!(backing_path("e.qcow2", "b.img"), "b.img");
        assert_eq!(backing_path("d/e.qcow2", "/abs"), "/abs");
        assert_eq!(
            backing_path("d/e.qcow2", "json:{'a':'b/c'}"),
            "json:{'a':'b/c'}"
        );
        assert_eq!(backing_path("d/e.qcow2", "x/json:{}"), "d/x/json:{}");
    }
}
