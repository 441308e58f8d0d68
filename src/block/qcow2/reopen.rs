//! Reopening an image (QEMU's qcow2_reopen_prepare/commit/abort): the runtime options are read
//! again as at open, the metadata caches are written back and replaced by new (empty) ones,
//! and an image going read-only is flushed and marked clean first.

use super::Qcow2;
use super::cache::{Cache, CacheKind};
use super::header::COMPAT_LAZY_REFCOUNTS;
use super::overlap::OPTION_NAMES;
use super::runtime::{self, ImageFacts, Runtime};
use crate::block::driver::ReopenState;
use crate::block::io;
use crate::block::node::{Node, OpenFlags};
use crate::block::open::Options;
use crate::errno::strerror;

/// QEMU's qcow2_join_options, on flat options: a new overlap template replaces every old
/// overlap option (but `bitmap-directory`, which QEMU 10.0.2 leaves out), a new total cache
/// size the old L2 and refcount sizes; after joining, an old total size goes once any cache
/// size is set, so that new partial sizes do not clash with it.
pub fn join_options(options: &mut Options, old: &mut Options) {
    let new_template =
        options.contains_key("overlap-check") || options.contains_key("overlap-check.template");
    let new_total = options.contains_key("cache-size");
    if new_template {
        for key in ["overlap-check", "overlap-check.template"]
            .into_iter()
            .chain(OPTION_NAMES)
            .filter(|k| *k != "overlap-check.bitmap-directory")
        {
            old.shift_remove(key);
        }
    }
    if new_total {
        old.shift_remove("l2-cache-size");
        old.shift_remove("refcount-cache-size");
    }
    crate::block::reopen::join_defaults(options, old);
    let any_cache_size = ["cache-size", "l2-cache-size", "refcount-cache-size"]
        .iter()
        .any(|k| options.contains_key(*k));
    if any_cache_size && !new_total {
        options.shift_remove("cache-size");
    }
}

/// What commit installs (QEMU's Qcow2ReopenState).
struct Prepared {
    caches: [Cache; 2],
    runtime: Runtime,
}

impl Qcow2 {
    /// QEMU's qcow2_reopen_prepare: the runtime options parsed as at open (the same code, so
    /// the same messages), the old caches written back, lazy refcounts turned off where asked
    /// (which needs accurate refcounts on disk first), and an image going read-only flushed
    /// and marked clean.
    pub(super) async fn reopen_prepare_impl(
        &self,
        node: &Node,
        opts: &mut Options,
        flags: OpenFlags,
    ) -> Result<Option<ReopenState>, String> {
        let (facts, encrypted, lazy_now) = {
            let st = self.st.borrow();
            let facts = ImageFacts {
                version: st.hdr.version,
                cluster_size: st.cluster_size,
                disk_size: st.size / 512 * 512,
                lazy_refcounts_bit: st.compat & COMPAT_LAZY_REFCOUNTS != 0,
                l2_entry_bytes: st.l2_entry_size(),
            };
            (facts, st.hdr.crypt_method != 0, st.use_lazy_refcounts)
        };
        let rt = runtime::parse(opts, &facts, flags.unmap, encrypted)?;
        self.cache_flush(node, CacheKind::L2)
            .await
            .map_err(|e| format!("Failed to flush the L2 table cache: {}", strerror(e)))?;
        self.cache_flush(node, CacheKind::Refcount)
            .await
            .map_err(|e| format!("Failed to flush the refcount block cache: {}", strerror(e)))?;
        if lazy_now && !rt.lazy_refcounts {
            self.mark_clean(node)
                .await
                .map_err(|e| format!("Failed to disable lazy refcounts: {}", strerror(e)))?;
        }
        let cs = facts.cluster_size as usize;
        let prepared = Prepared {
            caches: [
                Cache::new(rt.sizes.l2_tables as usize, rt.sizes.l2_entry_size as usize),
                Cache::new(rt.sizes.refcount_tables as usize, cs),
            ],
            runtime: rt,
        };
        // Going read-only: everything cached reaches the file and the image is marked clean.
        // QEMU gives no reason of its own when these fail.
        if flags.read_only {
            // QEMU's qcow2_reopen_bitmaps_ro: the bitmaps are stored and stay, read-only
            self.store_bitmaps(node, false).await?;
            let failed = || format!("failed while preparing to reopen image '{}'", node.filename);
            io::flush(node).await.map_err(|_| failed())?;
            self.mark_clean(node).await.map_err(|_| failed())?;
        }
        Ok(Some(Box::new(prepared)))
    }

    /// QEMU's qcow2_update_options_commit: the old caches (written back at prepare) go.
    pub(super) fn reopen_commit_impl(&self, state: Option<ReopenState>) {
        let Some(Ok(p)) = state.map(|s| s.downcast::<Prepared>()) else {
            return;
        };
        let mut st = self.st.borrow_mut();
        st.caches = p.caches;
        st.l2_slice_size = p.runtime.sizes.l2_entry_size / st.l2_entry_size();
        st.overlap_check = p.runtime.overlap_check;
        st.use_lazy_refcounts = p.runtime.lazy_refcounts;
        st.discard_passthrough = p.runtime.discard_passthrough;
        st.discard_no_unref = p.runtime.discard_no_unref;
        st.runtime = p.runtime;
    }
}
