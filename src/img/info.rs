//! `qemu-img info` (human output): qcow2 images are described from their header (format
//! specific block, snapshots, backing file), other formats through the block layer.

use super::check::is_qcow2;
use super::create::backing_path;
use super::json::{Json, dict, pretty};
use super::qcow2::info::{
    SNAPSHOT_HEADER, format_specific, format_specific_json, size_to_str, snapshot_line, snapshots,
};
use super::{Img, output_json};
use crate::block::perms::{Access, Perms};
use crate::block::qcow2::header::{INCOMPAT_DATA_FILE, INCOMPAT_DIRTY};
use crate::block::qcow2::image_file::{ImageFile, PlainFile};
use crate::block::qcow2::open::open_metadata;
use crate::errno::strerror;
use std::os::unix::fs::MetadataExt;

impl Img<'_> {
    pub(super) fn info(&self, argv: &[String]) -> i32 {
        const LONGS: &[(&str, char, bool)] = &[
            ("help", 'h', false),
            ("format", 'f', true),
            ("output", '\0', true),
            ("backing-chain", '\0', false),
            ("object", '\0', true),
            ("image-opts", '\0', false),
            ("force-share", 'U', false),
        ];
        let Ok(((opts, pos), extra)) = self.subcommand_args(argv, "f:hU", LONGS) else {
            return 1;
        };
        self.force_share.set(opts.iter().any(|(c, _)| *c == 'U'));
        // qemu-img info opens without I/O (BDRV_O_NO_IO): it takes no permission at all.
        self.no_io.set(true);
        let json = output_json(&extra);
        let chain = extra.iter().any(|(k, _)| k == "backing-chain");
        let fmt = opts
            .iter()
            .rev()
            .find(|(c, _)| *c == 'f')
            .map(|(_, a)| a.clone());
        let Some(name) = pos.first().cloned() else {
            self.error("Expecting one image file name");
            return 1;
        };
        let mut text = String::new();
        let mut infos = Vec::new();
        let (mut name, mut fmt) = (name, fmt);
        loop {
            match self.describe(&name, fmt.as_deref()) {
                Ok((block, info, backing)) => {
                    text.push_str(&block);
                    infos.push(info);
                    match backing {
                        Some((b, bfmt)) if chain => {
                            text.push('\n');
                            name = b;
                            fmt = bfmt;
                        }
                        _ => break,
                    }
                }
                Err(()) => return 1,
            }
        }
        if json {
            let v = if chain {
                Json::List(infos)
            } else {
                infos.swap_remove(0)
            };
            text = format!("{}\n", pretty(&v));
        }
        self.console.out(&text);
        0
    }

    /// One image's block of human output, its JSON (BlockGraphInfo) and, for a chain, its
    /// backing image (path, format).
    #[allow(clippy::type_complexity)]
    fn describe(
        &self,
        name: &str,
        fmt: Option<&str>,
    ) -> Result<(String, Json, Option<(String, Option<String>)>), ()> {
        // a filename the block layer parses (protocol prefix, json:) is described through the
        // node graph; a plain path from the file itself
        if crate::block::open::has_protocol(name) {
            return self.describe_graph(name, fmt);
        }
        // a backing file name read from an image stands for its bytes
        let path = self.base_dir.join(crate::host_bytes::host_path(name));
        let qcow2 = match fmt {
            Some(f) => f == "qcow2",
            None => is_qcow2(&path),
        };
        let meta = std::fs::metadata(&path);
        let disk = meta.as_ref().map(|m| m.blocks() * 512).unwrap_or(0);
        // bdrv_getlength counts whole sectors.
        let file_len = meta
            .as_ref()
            .map(|m| m.len().div_ceil(512) * 512)
            .unwrap_or(0);
        let child_json = Json::List(vec![dict(vec![
            ("name", Some(Json::Str("file".into()))),
            (
                "info",
                Some(dict(vec![
                    ("filename", Some(Json::Str(name.to_string()))),
                    ("format", Some(Json::Str("file".into()))),
                    ("dirty-flag", Some(Json::Bool(false))),
                    ("actual-size", Some(Json::Int(disk as i64))),
                    ("virtual-size", Some(Json::Int(file_len as i64))),
                    (
                        "format-specific",
                        Some(dict(vec![
                            ("type", Some(Json::Str("file".into()))),
                            ("data", Some(Json::Dict(vec![]))),
                        ])),
                    ),
                    ("children", Some(Json::List(vec![]))),
                ])),
            ),
        ])]);
        let child = format!(
            "Child node '/file':\n    filename: {name}\n    protocol type: file\n    file length: {} ({file_len} bytes)\n    disk size: {}\n",
            size_to_str(file_len),
            size_to_str(disk)
        );
        if !qcow2 {
            // Read-only opens of a probed raw image print no warning in qemu-img.
            let node = self
                .open(name, Some(fmt.unwrap_or("raw")), true)
                .map_err(|_| ())?;
            let len = crate::block::io::getlength(&node).unwrap_or(0);
            let info = dict(vec![
                ("filename", Some(Json::Str(name.to_string()))),
                ("format", Some(Json::Str(node.driver.format_name().into()))),
                ("dirty-flag", Some(Json::Bool(false))),
                ("actual-size", Some(Json::Int(disk as i64))),
                ("virtual-size", Some(Json::Int(len as i64))),
                ("children", Some(child_json)),
            ]);
            return Ok((
                format!(
                    "image: {name}\nfile format: {}\nvirtual size: {} ({len} bytes)\ndisk size: {}\n{child}",
                    node.driver.format_name(),
                    size_to_str(len),
                    size_to_str(disk),
                ),
                info,
                None,
            ));
        }
        let file = std::fs::File::open(&path).map_err(|e| {
            self.error(&format!(
                "Could not open '{name}': Could not open '{name}': {}",
                strerror(e.raw_os_error().unwrap_or(libc::EIO))
            ));
        })?;
        // The qcow2 node's hold on its file (opened without I/O): it takes nothing, and shares
        // neither writing nor resizing unless -U.
        let held = if self.force_share.get() {
            Access::UNUSED
        } else {
            Access {
                perm: Perms::NONE,
                shared: Perms::ALL.without(Perms::WRITE.union(Perms::RESIZE)),
            }
        };
        let _locks = crate::block::file::lock_image(&file, name, held).map_err(|e| {
            self.error(&format!("Could not open '{name}': {e}"));
        })?;
        let (mut text, info, backing) =
            self.describe_qcow2(name, &PlainFile::new(file), Some(disk))?;
        text.push_str(&child);
        let Json::Dict(mut fields) = info else {
            unreachable!("describe_qcow2 answers a dict")
        };
        fields.push(("children".into(), child_json));
        Ok((text, Json::Dict(fields), backing))
    }

    /// A qcow2 node's own block of human output (no children) and its JSON (no `children`),
    /// read from its image file; `disk`: its allocated size, None when unavailable.
    #[allow(clippy::type_complexity)]
    pub(super) fn describe_qcow2(
        &self,
        name: &str,
        file: &impl ImageFile,
        disk: Option<u64>,
    ) -> Result<(String, Json, Option<(String, Option<String>)>), ()> {
        let md = open_metadata(file, false, false, true).map_err(|(msg, _)| {
            self.error(&format!("Could not open '{name}': {msg}"));
        })?;
        let h = &md.h;
        // the block layer counts the virtual size in whole sectors (bs->total_sectors)
        let virtual_size = h.size / 512 * 512;
        // only an AES image opens without its key (the open made sure)
        let encrypted = h.crypt_method != 0;
        let mut s = format!(
            "image: {name}\nfile format: qcow2\nvirtual size: {} ({} bytes)\ndisk size: {}\n{}cluster_size: {}\n",
            size_to_str(virtual_size),
            virtual_size,
            disk_size_str(disk),
            if encrypted { "encrypted: yes\n" } else { "" },
            h.cluster_size()
        );
        if h.incompatible_features & INCOMPAT_DIRTY != 0 {
            s.push_str("cleanly shut down: no\n");
        }
        let mut backing = None;
        if let Some((b, bfmt)) = &md.backing {
            let full = backing_path(name, b);
            s.push_str(&format!("backing file: {b}"));
            if &full != b {
                s.push_str(&format!(" (actual path: {full})"));
            }
            s.push('\n');
            if let Some(f) = bfmt {
                s.push_str(&format!("backing file format: {f}\n"));
            }
            backing = Some((full, bfmt.clone()));
        }
        // qcow2_snapshot_list answers ENOTSUP for an image with an external data file
        let sns = if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            Vec::new()
        } else {
            snapshots(file, h)
        };
        if !sns.is_empty() {
            s.push_str("Snapshot list:\n");
            s.push_str(SNAPSHOT_HEADER);
            s.push('\n');
            for sn in &sns {
                s.push_str(&snapshot_line(sn));
                s.push('\n');
            }
        }
        s.push_str("Format specific information:\n");
        s.push_str(&format_specific(
            h,
            md.data_file.as_deref(),
            &md.bitmaps,
            md.luks.as_ref(),
        ));
        let str_ = |v: &str| Some(Json::Str(v.to_string()));
        let backing_file = md.backing.as_ref().map(|(b, _)| b.as_str());
        let backing_format = md.backing.as_ref().and_then(|(_, f)| f.as_deref());
        let full_backing = backing_file.map(|b| backing_path(name, b));
        let snapshot_list = sns
            .iter()
            .map(|sn| {
                dict(vec![
                    ("id", str_(&sn.id)),
                    ("name", str_(&sn.name)),
                    ("vm-state-size", Some(Json::Int(sn.vm_state_size as i64))),
                    ("date-sec", Some(Json::Int(i64::from(sn.date_sec)))),
                    ("date-nsec", Some(Json::Int(i64::from(sn.date_nsec)))),
                    (
                        "vm-clock-sec",
                        Some(Json::Int((sn.vm_clock_nsec / 1_000_000_000) as i64)),
                    ),
                    (
                        "vm-clock-nsec",
                        Some(Json::Int((sn.vm_clock_nsec % 1_000_000_000) as i64)),
                    ),
                    ("icount", sn.icount.map(|i| Json::Int(i as i64))),
                ])
            })
            .collect::<Vec<_>>();
        let info = dict(vec![
            ("filename", str_(name)),
            ("format", str_("qcow2")),
            (
                "dirty-flag",
                Some(Json::Bool(h.incompatible_features & INCOMPAT_DIRTY != 0)),
            ),
            ("actual-size", disk.map(|d| Json::Int(d as i64))),
            ("virtual-size", Some(Json::Int(virtual_size as i64))),
            ("cluster-size", Some(Json::Int(h.cluster_size() as i64))),
            ("encrypted", encrypted.then_some(Json::Bool(true))),
            ("backing-filename", backing_file.and_then(str_)),
            (
                "full-backing-filename",
                full_backing.as_deref().and_then(str_),
            ),
            ("backing-filename-format", backing_format.and_then(str_)),
            (
                "snapshots",
                (!snapshot_list.is_empty()).then_some(Json::List(snapshot_list)),
            ),
            (
                "format-specific",
                Some(dict(vec![
                    ("type", str_("qcow2")),
                    (
                        "data",
                        Some(format_specific_json(
                            h,
                            md.data_file.as_deref(),
                            &md.bitmaps,
                            md.luks.as_ref(),
                        )),
                    ),
                ])),
            ),
        ]);
        Ok((s, info, backing))
    }
}

/// `disk size:` as qemu-img prints it: unavailable where the node cannot say.
pub(super) fn disk_size_str(disk: Option<u64>) -> String {
    disk.map_or_else(|| "unavailable".to_string(), size_to_str)
}
