//! `qemu-img info` (human output): qcow2 images are described from their header (format
//! specific block, snapshots, backing file), other formats through the block layer.

use super::Img;
use super::check::is_qcow2;
use super::create::backing_path;
use super::qcow2::info::{SNAPSHOT_HEADER, format_specific, size_to_str, snapshot_line, snapshots};
use super::qcow2::layout::{INCOMPAT_DIRTY, read_header};
use crate::errno::strerror;
use std::os::unix::fs::MetadataExt;

impl Img<'_> {
    pub(super) fn info(&self, argv: &[String]) -> i32 {
        let mut chain = false;
        let mut args = Vec::new();
        for a in argv {
            match a.as_str() {
                "--backing-chain" => chain = true,
                "--output=human" => {}
                "--output=json" => {
                    self.error("blockfault: --output=json is not supported for info");
                    return 1;
                }
                _ => args.push(a.clone()),
            }
        }
        let Ok((opts, pos)) = self.opts(&args, "f:hU") else {
            return 1;
        };
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
        let (mut name, mut fmt) = (name, fmt);
        loop {
            match self.describe(&name, fmt.as_deref()) {
                Ok((block, backing)) => {
                    text.push_str(&block);
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
        self.console.out(&text);
        0
    }

    /// One image's block of output and, for a chain, its backing image (path, format).
    #[allow(clippy::type_complexity)]
    fn describe(
        &self,
        name: &str,
        fmt: Option<&str>,
    ) -> Result<(String, Option<(String, Option<String>)>), ()> {
        let path = self.base_dir.join(name);
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
            let len = node.getlength().unwrap_or(0);
            return Ok((
                format!(
                    "image: {name}\nfile format: {}\nvirtual size: {} ({len} bytes)\ndisk size: {}\n{child}",
                    node.driver.format_name(),
                    size_to_str(len),
                    size_to_str(disk),
                ),
                None,
            ));
        }
        let file = std::fs::File::open(&path).map_err(|e| {
            self.error(&format!(
                "Could not open '{name}': Could not open '{name}': {}",
                strerror(e.raw_os_error().unwrap_or(libc::EIO))
            ));
        })?;
        let h = read_header(&file).map_err(|e| {
            self.error(&format!("Could not open '{name}': {}", e.0));
        })?;
        let mut s = format!(
            "image: {name}\nfile format: qcow2\nvirtual size: {} ({} bytes)\ndisk size: {}\ncluster_size: {}\n",
            size_to_str(h.size),
            h.size,
            size_to_str(disk),
            h.cluster_size()
        );
        if h.incompatible_features & INCOMPAT_DIRTY != 0 {
            s.push_str("cleanly shut down: no\n");
        }
        let mut backing = None;
        if let Some(b) = &h.backing_file {
            let full = backing_path(name, b);
            s.push_str(&format!("backing file: {b}"));
            if &full != b {
                s.push_str(&format!(" (actual path: {full})"));
            }
            s.push('\n');
            if let Some(f) = &h.backing_format {
                s.push_str(&format!("backing file format: {f}\n"));
            }
            backing = Some((full, h.backing_format.clone()));
        }
        let sns = snapshots(&file, &h);
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
        s.push_str(&format_specific(&h));
        s.push_str(&child);
        Ok((s, backing))
    }
}
