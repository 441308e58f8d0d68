//! `qemu-img check`: a qcow2 image is opened as `qcow2_do_open` with `BDRV_O_CHECK` opens it
//! and checked by the driver's checker, both on the file itself (an fsck must not trust the
//! driver's caches); other formats have no check, as in QEMU.

use super::json::{Json, dict, pretty};
use super::{Img, output_json};
use crate::block::executor::block_on;
use crate::block::node::Node;
use crate::block::qcow2::Qcow2;
use crate::block::qcow2::check::{CheckResult, Checker, FIX_ERRORS, FIX_LEAKS};
use crate::block::qcow2::header::{MAGIC, be32};
use crate::block::qcow2::image_file::PlainFile;
use crate::block::qcow2::open::open_metadata;
use crate::errno::strerror;
use crate::qemu_io::session::close_tree;
use std::os::unix::fs::FileExt;
use std::rc::Rc;

/// A count as QEMU keeps it: BdrvCheckResult's counters are C ints, so a count past 2^31
/// wraps (and prints negative).
fn ci(v: u64) -> i64 {
    i64::from(v as u32 as i32)
}

/// `dump_human_image_check`.
pub fn human_report(c: &CheckResult) -> String {
    let mut out = String::new();
    if ci(c.corruptions) == 0 && ci(c.leaks) == 0 && ci(c.check_errors) == 0 {
        out.push_str("No errors were found on the image.\n");
    } else {
        if ci(c.corruptions) != 0 {
            out.push_str(&format!(
                "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                ci(c.corruptions)
            ));
        }
        if ci(c.leaks) != 0 {
            out.push_str(&format!(
                "\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n",
                ci(c.leaks)
            ));
        }
        if ci(c.check_errors) != 0 {
            out.push_str(&format!(
                "\n{} internal errors have occurred during the check.\n",
                ci(c.check_errors)
            ));
        }
    }
    if c.total_clusters != 0 && c.allocated_clusters != 0 {
        let a = c.allocated_clusters as f64;
        out.push_str(&format!(
            "{}/{} = {:.2}% allocated, {:.2}% fragmented, {:.2}% compressed clusters\n",
            c.allocated_clusters,
            c.total_clusters,
            a * 100.0 / c.total_clusters as f64,
            c.fragmented_clusters as f64 * 100.0 / a,
            c.compressed_clusters as f64 * 100.0 / a
        ));
    }
    if c.image_end_offset != 0 {
        out.push_str(&format!("Image end offset: {}\n", c.image_end_offset));
    }
    out
}

/// `dump_json_image_check`: QEMU's ImageCheck, members that are zero left out.
pub fn json_report(c: &CheckResult, filename: &str, format: &str) -> String {
    let opt = |v: u64| (ci(v) != 0).then_some(Json::Int(ci(v)));
    let wide = |v: u64| (v != 0).then_some(Json::Int(v as i64));
    let v = dict(vec![
        ("filename", Some(Json::Str(filename.to_string()))),
        ("format", Some(Json::Str(format.to_string()))),
        ("check-errors", Some(Json::Int(ci(c.check_errors)))),
        ("image-end-offset", wide(c.image_end_offset)),
        ("corruptions", opt(c.corruptions)),
        ("leaks", opt(c.leaks)),
        ("corruptions-fixed", opt(c.corruptions_fixed)),
        ("leaks-fixed", opt(c.leaks_fixed)),
        ("total-clusters", wide(c.total_clusters)),
        ("allocated-clusters", wide(c.allocated_clusters)),
        ("fragmented-clusters", wide(c.fragmented_clusters)),
        ("compressed-clusters", wide(c.compressed_clusters)),
    ]);
    format!("{}\n", pretty(&v))
}

/// The version field of a file starting with the qcow magic (zeros past its end, as the
/// format probe reads), None without the magic.
fn qcow_version(path: &std::path::Path) -> Option<u32> {
    let mut m = [0u8; 8];
    let f = std::fs::File::open(path).ok()?;
    let mut done = 0;
    while done < m.len() {
        match f.read_at(&mut m[done..], done as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => done += n,
        }
    }
    (be32(&m, 0) == MAGIC).then(|| be32(&m, 4))
}

/// Whether format probing picks qcow2 (QEMU's qcow2_probe: the magic and version 2 or more).
pub fn is_qcow2(path: &std::path::Path) -> bool {
    qcow_version(path).is_some_and(|v| v >= 2)
}

impl Img<'_> {
    pub(super) fn check(&self, argv: &[String]) -> i32 {
        const LONGS: &[(&str, char, bool)] = &[
            ("help", 'h', false),
            ("format", 'f', true),
            ("repair", 'r', true),
            ("output", '\0', true),
            ("object", '\0', true),
            ("image-opts", '\0', false),
            ("force-share", 'U', false),
        ];
        let Ok(((opts, pos), extra)) = self.subcommand_args(argv, "hf:r:T:qU", LONGS) else {
            return 1;
        };
        self.force_share.set(opts.iter().any(|(c, _)| *c == 'U'));
        let json = output_json(&extra);
        let mut fmt = None;
        let mut fix = 0;
        let mut quiet = false;
        for (c, a) in opts {
            match c {
                'f' => fmt = Some(a),
                'q' => quiet = true,
                'r' => match a.as_str() {
                    "leaks" => fix = FIX_LEAKS,
                    "all" => fix = FIX_LEAKS | FIX_ERRORS,
                    _ => {
                        self.error(&format!("--repair (-r) expects 'leaks' or 'all' not '{a}'"));
                        self.console
                            .err("Try 'qemu-img check --help' for more info\n");
                        return 1;
                    }
                },
                _ => {}
            }
        }
        let Some(name) = pos.first() else {
            self.error("Expecting one image file name");
            self.console
                .err("Try 'qemu-img check --help' for more info\n");
            return 1;
        };
        let path = self.base_dir.join(crate::host_bytes::host_path(name));
        let qcow2 = match fmt.as_deref() {
            Some("qcow2") => true,
            Some(_) => false,
            None => is_qcow2(&path),
        };
        if !qcow2 {
            // probing: version 1 is QEMU's old qcow format (the engine's probe names it),
            // anything else raw
            let probed = match (fmt.as_deref(), qcow_version(&path)) {
                (Some(f), _) => Some(f),
                (None, Some(1) | None) => None,
                // the engine's probe takes any qcow magic for the old format
                (None, Some(_)) => Some("raw"),
            };
            if let Err(s) = self.open(name, probed, true) {
                return s;
            }
            self.error("This image format does not support checks");
            return 63;
        }
        // The whole open as QEMU's check does it (data file and backing chain included, a
        // writable open's header update too); the checker then works on the file itself.
        let node = match self.open_with(name, Some("qcow2"), fix == 0, true) {
            Ok(node) => node,
            Err(s) => return s,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(fix != 0)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                self.error(&format!(
                    "Could not open '{name}': Could not open '{name}': {}",
                    strerror(e.raw_os_error().unwrap_or(libc::EIO))
                ));
                return 1;
            }
        };
        let file = PlainFile::new(file);
        let opened = open_metadata(&file, true, fix != 0, false)
            .map_err(|(msg, _)| msg)
            .and_then(|md| Checker::new(file, md.h, fix != 0));
        let mut img = match opened {
            Ok(i) => i,
            Err(msg) => {
                self.error(&format!("Could not open '{name}': {msg}"));
                return 1;
            }
        };
        if let Some(driver) = node.driver_as::<Qcow2>() {
            let (l1, reftable) = driver.opened_tables();
            img.use_opened_tables(l1, reftable);
            img.use_header_rest(driver.header_rest());
        }
        let say = |text: &str| {
            if !quiet {
                self.console.out(text);
            }
        };
        let (mut result, mut ret) = img.check(fix);
        // the end of QEMU's check with a repair: its failure is the check's
        if ret.is_ok() && fix != 0 && ci(result.check_errors) == 0 && ci(result.corruptions) == 0 {
            ret = img.mark_clean();
        }
        self.flush_log(&mut img);
        if ret.is_ok() && (ci(result.corruptions_fixed) != 0 || ci(result.leaks_fixed) != 0) {
            if !json {
                say(&format!(
                    "The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\nDouble checking the fixed image now...\n",
                    ci(result.leaks_fixed),
                    ci(result.corruptions_fixed)
                ));
            }
            // a fatal corruption left no driver to check with (QEMU's bs->drv = NULL)
            let (again, r) = if img.is_dead() {
                (CheckResult::default(), Err(libc::ENOMEDIUM))
            } else {
                img.check(0)
            };
            self.flush_log(&mut img);
            result = CheckResult {
                leaks_fixed: result.leaks_fixed,
                corruptions_fixed: result.corruptions_fixed,
                ..again
            };
            ret = r;
        }
        if ret.is_ok() {
            if json {
                say(&json_report(&result, name, "qcow2"));
            } else {
                say(&human_report(&result));
            }
        }
        let status = if let Err(e) = ret {
            self.error(&format!("Check failed: {}", strerror(e)));
            1
        } else if ci(result.check_errors) != 0 {
            self.error("Check failed");
            1
        } else if ci(result.corruptions) != 0 {
            2
        } else if ci(result.leaks) != 0 {
            3
        } else {
            0
        };
        self.close_checked(&node, &mut img);
        status
    }

    /// The close at the end of QEMU's img_check: the block layer's flush (the check's changed
    /// refcount blocks written back, a refused write being a fatal corruption), then — unless
    /// a fatal corruption made the image unusable — the driver's close on the image as the
    /// check left it (persistent bitmaps stored). Its failures only print.
    fn close_checked(&self, node: &Rc<Node>, img: &mut Checker<PlainFile>) {
        let _ = img.flush();
        self.flush_log(img);
        if img.is_dead() {
            return;
        }
        let Some(driver) = node.driver_as::<Qcow2>() else {
            return;
        };
        // what the flush left cached (the dirty bit defers refcounts) goes at the close's
        // cache flush; that failing, QEMU's close reports it and leaves the image dirty
        if let Err(e) = img.write_back() {
            self.flush_log(img);
            self.error(&format!(
                "Failed to flush the refcount block table cache: {}",
                strerror(e)
            ));
            return;
        }
        driver.adopt_check(img);
        // QEMU's check writes through the file node, whose length grows with them
        let _ = node.file().refresh_total_sectors();
        let root = node.clone();
        block_on(async move {
            let _ = crate::block::io::flush(&root).await;
            close_tree(&root).await;
        });
    }

    fn flush_log(&self, img: &mut Checker<PlainFile>) {
        for line in img.take_log() {
            line.print(&self.console);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's counters are C ints: 3699889289 discarded snapshots (nb_snapshots 0xdc88d489
    /// with two real ones, seen by the qcow2 fuzzer) print as qemu-img prints them.
    #[test]
    fn counts_wrap_as_c_ints() {
        let c = CheckResult {
            corruptions_fixed: 3_699_889_289,
            leaks: 1 << 32,
            ..CheckResult::default()
        };
        let json = json_report(&c, "t.qcow2", "qcow2");
        assert!(json.contains("\"corruptions-fixed\": -595078007"), "{json}");
        assert!(!json.contains("\"leaks\""), "{json}");
        assert!(human_report(&c).starts_with("No errors were found"));
    }

    #[test]
    fn report_blocks() {
        let clean = CheckResult {
            image_end_offset: 262144,
            ..CheckResult::default()
        };
        assert_eq!(
            human_report(&clean),
            "No errors were found on the image.\nImage end offset: 262144\n"
        );
        let bad = CheckResult {
            corruptions: 3,
            leaks: 1,
            total_clusters: 1024,
            allocated_clusters: 5,
            fragmented_clusters: 1,
            compressed_clusters: 1,
            image_end_offset: 655360,
            ..CheckResult::default()
        };
        assert_eq!(
            human_report(&bad),
            "\n3 errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n\n1 leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n5/1024 = 0.49% allocated, 20.00% fragmented, 20.00% compressed clusters\nImage end offset: 655360\n"
        );
    }
}
