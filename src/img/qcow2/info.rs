//! The qcow2 parts of `qemu-img info`: the header fields it shows, the snapshot list and the
//! `Format specific information:` block (`ImageInfoSpecificQCow2`).

use crate::block::luks_header::LuksInfo;
use crate::block::qcow2::bitmap::{DirEntry, FLAG_AUTO, FLAG_IN_USE, display_name};
use crate::block::qcow2::header::{
    AUTOCLEAR_DATA_FILE_RAW, Header, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE, be16, be32, be64,
    c_string,
};
use crate::block::qcow2::image_file::ImageFile;

/// One snapshot table entry as `info` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: String,
    pub name: String,
    pub date_sec: u32,
    pub date_nsec: u32,
    pub vm_clock_nsec: u64,
    pub vm_state_size: u64,
    pub icount: Option<u64>,
}

/// Reads the `nb` snapshot entries as the open did (which bounded the table); what lies past
/// the end of the file reads as zeroes, as through QEMU's file protocol.
pub fn snapshots(file: &impl ImageFile, h: &Header) -> Vec<SnapshotInfo> {
    let mut out = Vec::new();
    let mut off = h.snapshots_offset;
    // zeroes past the end of the file (ImageFile::read_at), and where a read fails
    let read = |at: u64, len: u64| {
        file.read_at(at, len as usize)
            .unwrap_or_else(|_| vec![0; len as usize])
    };
    for _ in 0..h.nb_snapshots.min(65536) {
        off = off.div_ceil(8) * 8;
        let hd = read(off, 40);
        let id_len = u64::from(be16(&hd, 12));
        let name_len = u64::from(be16(&hd, 14));
        let extra_len = u64::from(be32(&hd, 36)).min(1024);
        let extra = read(off + 40, extra_len);
        let mut vm_state_size = u64::from(be32(&hd, 32));
        if extra_len >= 8 {
            vm_state_size = be64(&extra, 0);
        }
        let icount = (extra_len >= 24)
            .then(|| be64(&extra, 16))
            .filter(|v| *v != u64::MAX);
        off += 40 + extra_len;
        let id = read(off, id_len);
        off += id_len;
        let name = read(off, name_len);
        off += name_len;
        out.push(SnapshotInfo {
            // C strings: QEMU shows them up to the first NUL
            id: c_string(&id),
            name: c_string(&name),
            date_sec: be32(&hd, 16),
            date_nsec: be32(&hd, 20),
            vm_clock_nsec: be64(&hd, 24),
            vm_state_size,
            icount,
        });
    }
    out
}

/// `Format specific information:` lines (indented by four spaces, each ending in a newline):
/// qemu-img prints the same object as the JSON, as text.
pub fn format_specific(
    h: &Header,
    data_file: Option<&str>,
    bitmaps: &[DirEntry],
    luks: Option<&LuksInfo>,
) -> String {
    crate::img::json::human(&format_specific_json(h, data_file, bitmaps, luks), 1)
}

/// A bitmap's flags as `info` names them.
fn bitmap_flags(e: &DirEntry) -> Vec<&'static str> {
    [(FLAG_IN_USE, "in-use"), (FLAG_AUTO, "auto")]
        .into_iter()
        .filter(|(f, _)| e.flags & f != 0)
        .map(|(_, n)| n)
        .collect()
}

/// `ImageInfoSpecificQCow2` as JSON.
pub fn format_specific_json(
    h: &Header,
    data_file: Option<&str>,
    bitmaps: &[DirEntry],
    luks: Option<&LuksInfo>,
) -> crate::img::json::Json {
    use crate::img::json::{Json, dict};
    let v3 = h.version >= 3;
    let ct = if h.compression_type == 1 {
        "zstd"
    } else {
        "zlib"
    };
    dict(vec![
        (
            "compat",
            Some(Json::Str(if v3 { "1.1" } else { "0.10" }.into())),
        ),
        (
            "data-file",
            data_file.filter(|_| v3).map(|n| Json::Str(n.into())),
        ),
        (
            "data-file-raw",
            (v3 && h.incompatible_features & INCOMPAT_DATA_FILE != 0).then_some(Json::Bool(
                h.autoclear_features & AUTOCLEAR_DATA_FILE_RAW != 0,
            )),
        ),
        ("extended-l2", v3.then_some(Json::Bool(h.extended_l2()))),
        (
            "lazy-refcounts",
            v3.then_some(Json::Bool(h.lazy_refcounts())),
        ),
        (
            "corrupt",
            v3.then_some(Json::Bool(h.incompatible_features & INCOMPAT_CORRUPT != 0)),
        ),
        ("refcount-bits", Some(Json::Int(1i64 << h.refcount_order))),
        (
            "encrypt",
            match (h.crypt_method, luks) {
                (1, _) => Some(dict(vec![("format", Some(Json::Str("aes".into())))])),
                (_, Some(luks)) => Some(luks_json(luks)),
                _ => None,
            },
        ),
        (
            "bitmaps",
            (!bitmaps.is_empty()).then(|| {
                Json::List(
                    bitmaps
                        .iter()
                        .map(|e| {
                            dict(vec![
                                ("name", Some(Json::Str(display_name(&e.name)))),
                                ("granularity", Some(Json::Int(1i64 << e.granularity_bits))),
                                (
                                    "flags",
                                    Some(Json::List(
                                        bitmap_flags(e)
                                            .into_iter()
                                            .map(|f| Json::Str(f.into()))
                                            .collect(),
                                    )),
                                ),
                            ])
                        })
                        .collect(),
                )
            }),
        ),
        ("compression-type", Some(Json::Str(ct.into()))),
    ])
}

/// `encrypt` of qcow2's format-specific information (ImageInfoSpecificQCow2Encryption
/// with its LUKS branch), members in QAPI order.
fn luks_json(luks: &LuksInfo) -> crate::img::json::Json {
    use crate::img::json::{Json, dict};
    let int = |v: u64| Some(Json::Int(v as i64));
    let str = |s: &str| Some(Json::Str(s.into()));
    dict(vec![
        ("format", str("luks")),
        ("cipher-alg", str(luks.cipher_alg)),
        ("cipher-mode", str(luks.cipher_mode)),
        ("ivgen-alg", str(luks.ivgen_alg)),
        ("ivgen-hash-alg", luks.ivgen_hash_alg.and_then(str)),
        ("hash-alg", str(luks.hash_alg)),
        ("detached-header", Some(Json::Bool(false))),
        ("payload-offset", int(luks.payload_offset)),
        ("master-key-iters", int(u64::from(luks.master_key_iters))),
        ("uuid", Some(Json::Str(luks.uuid.clone()))),
        (
            "slots",
            Some(Json::List(
                luks.slots
                    .iter()
                    .map(|s| {
                        dict(vec![
                            ("active", Some(Json::Bool(s.active))),
                            ("iters", s.active.then(|| Json::Int(i64::from(s.iters)))),
                            ("stripes", s.active.then(|| Json::Int(i64::from(s.stripes)))),
                            ("key-offset", int(s.key_offset)),
                        ])
                    })
                    .collect(),
            )),
        ),
    ])
}

/// `bdrv_snapshot_dump` for one entry (no newline), times in the local time zone.
pub fn snapshot_line(sn: &SnapshotInfo) -> String {
    let date = local_date(i64::from(sn.date_sec));
    let secs = sn.vm_clock_nsec / 1_000_000_000;
    let clock = format!(
        "{:04}:{:02}:{:02}.{:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        (sn.vm_clock_nsec / 1_000_000) % 1000
    );
    let icount = sn.icount.map(|v| v.to_string()).unwrap_or_default();
    format!(
        "{:<7} {:<16} {:>8} {:>19} {:>15} {:>10}",
        sn.id,
        sn.name,
        size_to_str(sn.vm_state_size),
        date,
        clock,
        icount
    )
}

pub const SNAPSHOT_HEADER: &str =
    "ID      TAG               VM_SIZE                DATE        VM_CLOCK     ICOUNT";

fn local_date(t: i64) -> String {
    // SAFETY: localtime_r writes into the tm we own; strftime stays within the buffer size.
    unsafe {
        let tt: libc::time_t = t as libc::time_t;
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&tt, &mut tm).is_null() {
            return String::new();
        }
        let mut buf = [0u8; 64];
        let fmt = c"%Y-%m-%d %H:%M:%S";
        let n = libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// QEMU's `size_to_str`: three significant digits and a binary unit (`64 MiB`, `0.977 MiB`,
/// `588 KiB`, `0 B`).
pub fn size_to_str(val: u64) -> String {
    const SUFFIXES: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let x = val as f64 / (1000.0 / 1024.0);
    // frexp exponent: x = m * 2^e with 0.5 <= m < 1.
    let e = if x == 0.0 {
        0
    } else {
        x.log2().floor() as i32 + 1
    };
    let i = ((e - 1).max(0) / 10) as usize;
    let div = (1u64 << (i * 10)) as f64;
    format!("{} {}", c_g3(val as f64 / div), SUFFIXES[i.min(6)])
}

/// C's `%0.3g`.
fn c_g3(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let sci = format!("{v:.2e}");
    let (_, exp) = sci.split_once('e').unwrap_or(("", "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..3).contains(&exp) {
        let (m, _) = sci.split_once('e').unwrap_or(("0", ""));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        return format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let decimals = (2 - exp).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_qemu() {
        assert_eq!(size_to_str(0), "0 B");
        assert_eq!(size_to_str(64 << 20), "64 MiB");
        assert_eq!(size_to_str(1_024_000), "0.977 MiB");
        assert_eq!(size_to_str(588 * 1024), "588 KiB");
        assert_eq!(size_to_str(197120), "192 KiB");
        assert_eq!(size_to_str(1 << 40), "1 TiB");
        assert_eq!(size_to_str(512), "512 B");
        assert_eq!(size_to_str(1000), "0.977 KiB");
    }

    #[test]
    fn format_specific_v2_and_v3() {
        let mut h = Header {
            version: 2,
            refcount_order: 4,
            ..Header::default()
        };
        assert_eq!(
            format_specific(&h, None, &[], None),
            "    compat: 0.10\n    compression type: zlib\n    refcount bits: 16\n"
        );
        h.version = 3;
        h.compatible_features = 1;
        assert!(format_specific(&h, None, &[], None).contains("    lazy refcounts: true\n"));
    }
}
