//! Reopening an image (QEMU's qcow2_reopen_prepare/commit/abort): the runtime options are read
//! again as at open, the metadata caches are written back and replaced by new (empty) ones,
//! and an image going read-only is flushed and marked clean first.

use super::Qcow2;
use super::cache::{Cache, CacheKind};
use super::open::{RuntimeOptions, cache_entries};
use crate::block::driver::ReopenState;
use crate::block::io;
use crate::block::node::{Node, OpenFlags};
use crate::block::open::Options;
use crate::errno::strerror;

/// What commit installs (QEMU's Qcow2ReopenState).
struct Prepared {
    caches: [Cache; 2],
    cache_opts: [Option<u64>; 3],
    use_lazy_refcounts: bool,
    discard_passthrough: [bool; 5],
    discard_no_unref: bool,
}

impl Qcow2 {
    /// QEMU's qcow2_reopen_prepare, with qcow2_update_options_prepare's steps in its order:
    /// option errors, then the old caches written back, then the feature checks.
    pub(super) async fn reopen_prepare_impl(
        &self,
        node: &Node,
        opts: &mut Options,
        flags: OpenFlags,
    ) -> Result<Option<ReopenState>, String> {
        let (cs, size, version, compat, lazy_now) = {
            let st = self.st.borrow();
            (
                st.cluster_size,
                st.size,
                st.hdr.version,
                st.compat,
                st.use_lazy_refcounts,
            )
        };
        let runtime = RuntimeOptions::take(opts, cs).map_err(|(msg, _)| msg)?;
        let (l2_entries, rc_entries) = cache_entries(size, cs, runtime.cache_opts);
        self.cache_flush(node, CacheKind::L2)
            .await
            .map_err(|e| format!("Failed to flush the L2 table cache: {}", strerror(e)))?;
        self.cache_flush(node, CacheKind::Refcount)
            .await
            .map_err(|e| format!("Failed to flush the refcount block cache: {}", strerror(e)))?;
        let use_lazy_refcounts = runtime.lazy_refcounts(version, compat)?;
        // Turning lazy refcounts off needs accurate refcounts on disk first.
        if lazy_now && !use_lazy_refcounts {
            self.mark_clean(node)
                .await
                .map_err(|e| format!("Failed to disable lazy refcounts: {}", strerror(e)))?;
        }
        let discard_no_unref = runtime.discard_no_unref(version)?;
        let prepared = Prepared {
            caches: [
                Cache::new(l2_entries, cs as usize),
                Cache::new(rc_entries, cs as usize),
            ],
            cache_opts: runtime.cache_opts,
            use_lazy_refcounts,
            discard_passthrough: runtime.discard_passthrough(flags.unmap),
            discard_no_unref,
        };
        // Going read-only: everything cached reaches the file and the image is marked clean.
        // QEMU gives no reason of its own when these fail.
        if flags.read_only {
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
        st.cache_opts = p.cache_opts;
        st.use_lazy_refcounts = p.use_lazy_refcounts;
        st.discard_passthrough = p.discard_passthrough;
        st.discard_no_unref = p.discard_no_unref;
    }
}
