//! The qcow2 driver's runtime options (QEMU's qcow2_update_options): the metadata cache sizes
//! (read_cache_sizes), the metadata overlap checks, lazy refcounts, which discards reach the
//! file, and the cache-cleaning interval. Parsed in QEMU's order, with its messages; kept, so
//! that a resize can size the caches again from the same options, as QEMU does.

use super::overlap;
use crate::block::options::{OptType, Options, absorb, take_flat};

/// QEMU's DEFAULT_L2_CACHE_MAX_SIZE.
const DEFAULT_L2_CACHE_MAX_SIZE: u64 = 32 << 20;
/// QEMU's MIN_L2_CACHE_SIZE and MIN_REFCOUNT_CACHE_SIZE, in tables.
const MIN_L2_CACHE_TABLES: u64 = 2;
const MIN_REFCOUNT_CACHE_TABLES: u64 = 4;
const INT_MAX: u64 = i32::MAX as u64;

/// The cache options as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheOptions {
    pub cache_size: Option<u64>,
    pub l2_cache_size: Option<u64>,
    pub l2_cache_entry_size: Option<u64>,
    pub refcount_cache_size: Option<u64>,
}

/// The caches the options give for an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSizes {
    /// tables the L2 cache holds
    pub l2_tables: u64,
    /// bytes of an L2 cache entry: a whole L2 table, or a slice of it
    pub l2_entry_size: u64,
    /// tables the refcount block cache holds
    pub refcount_tables: u64,
}

/// What the options depend on in the image.
#[derive(Clone, Copy, Debug)]
pub struct ImageFacts {
    pub version: u32,
    pub cluster_size: u64,
    /// the guest size in whole sectors, as the block layer has it (bs->total_sectors)
    pub disk_size: u64,
    /// the lazy-refcounts compatible bit of the header
    pub lazy_refcounts_bit: bool,
    /// bytes per L2 entry: 16 with extended L2 entries, else 8
    pub l2_entry_bytes: u64,
}

/// The parsed runtime options.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub cache: CacheOptions,
    pub sizes: CacheSizes,
    pub lazy_refcounts: bool,
    /// the overlap checks to perform (a bit per [`overlap`] section)
    pub overlap_check: u32,
    /// per QEMU discard type (never, always, request, snapshot, other)
    pub discard_passthrough: [bool; 5],
    pub discard_no_unref: bool,
    /// seconds between cache cleanings (0: never). The cleaning runs on QEMU's virtual clock,
    /// which never runs in qemu-io (no guest is started), so it never happens there.
    pub cache_clean_interval: u64,
    /// `encrypt.key-secret` was given: the key to an encrypted image, which this engine
    /// cannot use
    pub encrypt_key_secret: bool,
}

/// QEMU's qcow2_runtime_opts.
fn option_list() -> Vec<(&'static str, OptType)> {
    let mut desc = vec![
        ("lazy-refcounts", OptType::Bool),
        ("pass-discard-request", OptType::Bool),
        ("pass-discard-snapshot", OptType::Bool),
        ("pass-discard-other", OptType::Bool),
        ("discard-no-unref", OptType::Bool),
        ("overlap-check", OptType::String),
        ("overlap-check.template", OptType::String),
    ];
    desc.extend(overlap::OPTION_NAMES.iter().map(|&n| (n, OptType::Bool)));
    desc.extend([
        ("cache-size", OptType::Size),
        ("l2-cache-size", OptType::Size),
        ("l2-cache-entry-size", OptType::Size),
        ("refcount-cache-size", OptType::Size),
        ("cache-clean-interval", OptType::Number),
        ("encrypt.key-secret", OptType::String),
    ]);
    desc
}

/// QEMU's read_cache_sizes and the table counts qcow2_update_options_prepare makes of them.
pub fn cache_sizes(o: &CacheOptions, img: &ImageFacts) -> Result<CacheSizes, String> {
    let cs = img.cluster_size;
    let min_refcount_cache = MIN_REFCOUNT_CACHE_TABLES * cs;
    let max_l2_entries = img.disk_size.div_ceil(cs);
    // An L2 table is always a cluster: the cache covering the disk is whole clusters.
    let max_l2_cache = (max_l2_entries * img.l2_entry_bytes).div_ceil(cs) * cs;
    let combined = o.cache_size.unwrap_or(0);
    let l2_cache_max_setting = o.l2_cache_size.unwrap_or(DEFAULT_L2_CACHE_MAX_SIZE);
    let mut refcount = o.refcount_cache_size.unwrap_or(0);
    let mut entry_size = o.l2_cache_entry_size.unwrap_or(cs);
    let mut l2 = max_l2_cache.min(l2_cache_max_setting);
    if o.cache_size.is_some() {
        if o.l2_cache_size.is_some() && o.refcount_cache_size.is_some() {
            return Err(
                "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
                    .into(),
            );
        } else if o.l2_cache_size.is_some() && l2_cache_max_setting > combined {
            return Err("l2-cache-size may not exceed cache-size".into());
        } else if refcount > combined {
            return Err("refcount-cache-size may not exceed cache-size".into());
        }
        if o.l2_cache_size.is_some() {
            refcount = combined - l2;
        } else if o.refcount_cache_size.is_some() {
            l2 = combined - refcount;
        } else if combined >= max_l2_cache + min_refcount_cache {
            // as much as possible for L2 tables, the rest for refcount blocks
            l2 = max_l2_cache;
            refcount = combined - l2;
        } else {
            refcount = combined.min(min_refcount_cache);
            l2 = combined - refcount;
        }
    }
    // A cache that cannot cover the disk uses small entries unless told otherwise: loads and
    // evictions cost less.
    if l2 < max_l2_cache && o.l2_cache_entry_size.is_none() {
        entry_size = cs.min(4096);
    }
    if entry_size < 512 || entry_size > cs || !entry_size.is_power_of_two() {
        return Err(format!(
            "L2 cache entry size must be a power of two between 512 and the cluster size ({cs})"
        ));
    }
    let l2_tables = (l2 / entry_size).max(MIN_L2_CACHE_TABLES);
    if l2_tables > INT_MAX {
        return Err("L2 cache size too big".into());
    }
    let refcount_tables = (refcount / cs).max(MIN_REFCOUNT_CACHE_TABLES);
    if refcount_tables > INT_MAX {
        return Err("Refcount cache size too big".into());
    }
    Ok(CacheSizes {
        l2_tables,
        l2_entry_size: entry_size,
        refcount_tables,
    })
}

/// QEMU's qcow2_update_options_prepare, as far as the options go. `unmap` is the node's
/// discard mode (the default of `pass-discard-request`); `encrypted` whether the header names
/// an encryption method (the engine refuses those images after the options).
pub fn parse(
    opts: &mut Options,
    img: &ImageFacts,
    unmap: bool,
    encrypted: bool,
) -> Result<Runtime, String> {
    // encrypt.* belongs to the encryption layer, whatever the keys.
    let encrypt = match take_flat(opts, "encrypt") {
        Some(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    let encrypt_format = encrypt
        .get("format")
        .and_then(crate::block::options::scalar_string);
    let o = absorb(opts, &option_list())?;
    let cache = CacheOptions {
        cache_size: o.number("cache-size"),
        l2_cache_size: o.number("l2-cache-size"),
        l2_cache_entry_size: o.number("l2-cache-entry-size"),
        refcount_cache_size: o.number("refcount-cache-size"),
    };
    let sizes = cache_sizes(&cache, img)?;
    let cache_clean_interval = o
        .number("cache-clean-interval")
        .unwrap_or(DEFAULT_CACHE_CLEAN_INTERVAL);
    if cache_clean_interval > u64::from(u32::MAX) {
        return Err("Cache clean interval too big".into());
    }
    let lazy_refcounts = o.bool("lazy-refcounts").unwrap_or(img.lazy_refcounts_bit);
    if lazy_refcounts && img.version < 3 {
        return Err(
            "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level"
                .into(),
        );
    }
    let overlap_check = overlap::parse_options(
        o.string("overlap-check"),
        o.string("overlap-check.template"),
        |name| o.bool(name),
    )?;
    let discard_passthrough = [
        false,
        true,
        o.bool("pass-discard-request").unwrap_or(unmap),
        o.bool("pass-discard-snapshot").unwrap_or(true),
        o.bool("pass-discard-other").unwrap_or(false),
    ];
    let discard_no_unref = o.bool("discard-no-unref").unwrap_or(false);
    if discard_no_unref && img.version < 3 {
        return Err("discard-no-unref is only supported since qcow2 version 3".into());
    }
    if !encrypted && let Some(f) = encrypt_format {
        return Err(format!(
            "No encryption in image header, but options specified format '{f}'"
        ));
    }
    Ok(Runtime {
        cache,
        sizes,
        lazy_refcounts,
        overlap_check,
        discard_passthrough,
        discard_no_unref,
        cache_clean_interval,
        encrypt_key_secret: encrypt.contains_key("key-secret"),
    })
}

/// QEMU's DEFAULT_CACHE_CLEAN_INTERVAL on Linux: ten minutes.
pub const DEFAULT_CACHE_CLEAN_INTERVAL: u64 = 600;

#[cfg(test)]
mod tests {
    use super::*;

    fn img(size: u64, cs: u64) -> ImageFacts {
        ImageFacts {
            version: 3,
            cluster_size: cs,
            disk_size: size,
            lazy_refcounts_bit: false,
            l2_entry_bytes: 8,
        }
    }

    fn sizes(o: CacheOptions, i: &ImageFacts) -> Result<CacheSizes, String> {
        cache_sizes(&o, i)
    }

    #[test]
    fn defaults_cover_the_disk_with_whole_tables() {
        let s = sizes(CacheOptions::default(), &img(64 << 20, 65536)).unwrap();
        assert_eq!(
            s,
            CacheSizes {
                l2_tables: 2,
                l2_entry_size: 65536,
                refcount_tables: 4
            }
        );
        // 1 TiB with 64k clusters needs 128 MiB of L2 tables: 32 MiB of 4k slices instead
        let s = sizes(CacheOptions::default(), &img(1 << 40, 65536)).unwrap();
        assert_eq!((s.l2_tables, s.l2_entry_size), (8192, 4096));
        // extended L2 entries take twice the room: 64 MiB needs two clusters of them
        let ext = ImageFacts {
            l2_entry_bytes: 16,
            ..img(64 << 20, 65536)
        };
        let s = sizes(CacheOptions::default(), &ext).unwrap();
        assert_eq!((s.l2_tables, s.l2_entry_size), (2, 65536));
        let ext = ImageFacts {
            l2_entry_bytes: 16,
            ..img(1 << 40, 65536)
        };
        let s = sizes(CacheOptions::default(), &ext).unwrap();
        assert_eq!((s.l2_tables, s.l2_entry_size), (8192, 4096));
    }

    #[test]
    fn combined_size_and_its_conflicts() {
        let i = img(64 << 20, 65536);
        let mb = |n: u64| Some(n << 20);
        let err = |o| sizes(o, &i).unwrap_err();
        assert_eq!(
            err(CacheOptions {
                cache_size: mb(1),
                l2_cache_size: mb(1),
                refcount_cache_size: Some(0),
                ..Default::default()
            }),
            "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time"
        );
        assert_eq!(
            err(CacheOptions {
                cache_size: mb(1),
                l2_cache_size: mb(2),
                ..Default::default()
            }),
            "l2-cache-size may not exceed cache-size"
        );
        // cache-size=0: the minimum caches, 4k L2 entries (the cache cannot cover the disk)
        let s = sizes(
            CacheOptions {
                cache_size: Some(0),
                ..Default::default()
            },
            &i,
        )
        .unwrap();
        assert_eq!(
            (s.l2_tables, s.l2_entry_size, s.refcount_tables),
            (2, 4096, 4)
        );
        assert!(
            err(CacheOptions {
                l2_cache_entry_size: Some(4242),
                ..Default::default()
            })
            .starts_with("L2 cache entry size must be a power of two between 512")
        );
    }
}
