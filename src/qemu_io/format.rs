//! qemu-io's text formats: sizes (`cvtstr`), elapsed times (`timestr`), the I/O statistics
//! report and the `-v` hex dump.
//!
//! The numbers go through C `printf` conversions (`%f`, `%.3f`, `%.4f`, `%05.2f`); [`c_fixed`]
//! reproduces them, including glibc's spelling of infinities and NaNs, because a request that
//! takes no measurable time yields `inf` rates.

use std::fmt::Write as _;
use std::time::Duration;

/// C `printf("%.*f", prec, v)` as glibc prints it (`inf`, `-inf`, `nan`, `-nan`).
pub fn c_fixed(v: f64, prec: usize) -> String {
    if v.is_nan() {
        // glibc shows the sign bit of a NaN; x86's 0.0/0.0 produces a negative one.
        return if v.is_sign_negative() { "-nan" } else { "nan" }.to_owned();
    }
    // Rust's fixed-precision formatting is exact and rounds ties to even, like glibc.
    format!("{v:.prec$}")
}

/// The NaN an x86 CPU produces for 0.0/0.0 (sign bit set), so results do not depend on the host.
const X86_DEFAULT_NAN: f64 = f64::from_bits(0xfff8_0000_0000_0000);

/// C's `value / seconds` with x86 semantics for `0/0`.
fn tdiv(value: f64, secs: f64) -> f64 {
    if value == 0.0 && secs == 0.0 {
        X86_DEFAULT_NAN
    } else {
        value / secs
    }
}

/// qemu-io's `cvtstr`: a byte count or rate with a binary unit (`4 KiB`, `1.500 KiB`,
/// `512 bytes`, `836.191016 bytes`).
///
/// The number is printed with `%.3f` (`%f` below 1 KiB) and the *first* `.000` in it is
/// replaced by the unit; without one the unit is appended. So `1.0005` becomes `1 bytes`.
pub fn cvtstr(value: f64) -> String {
    const UNITS: [(i32, &str); 6] = [
        (60, " EiB"),
        (50, " PiB"),
        (40, " TiB"),
        (30, " GiB"),
        (20, " MiB"),
        (10, " KiB"),
    ];
    // C writes into a 64-byte buffer with snprintf limits of 60 (units) or 58 (bytes).
    let (mut s, suffix, limit) = match UNITS.iter().find(|(shift, _)| value >= 2f64.powi(*shift)) {
        Some(&(shift, suffix)) => (c_fixed(value / 2f64.powi(shift), 3), suffix, 59),
        None => (c_fixed(value, 6), " bytes", 57),
    };
    s.truncate(limit);
    match s.find(".000") {
        Some(pos) => s.replace_range(pos.., suffix),
        None => s.push_str(suffix),
    }
    s
}

/// qemu-io's `timestr` from whole seconds and nanoseconds (a `struct timespec`).
///
/// Under one second: `%05.2f sec` of the fraction (`00.00 sec`). From one second on, and always
/// in the `-C` (`compact`) form: `H:MM:SS.ss`, where the seconds field is `%05.2f` and can
/// therefore round up to `60.00`.
pub fn timestr_parts(sec: u64, nsec: u32, compact: bool) -> String {
    let frac = f64::from(nsec) / 1e9;
    if compact || sec != 0 {
        // C casts hours and minutes to unsigned int.
        let hours = (sec / 3600) as u32;
        let minutes = ((sec % 3600) / 60) as u32;
        let seconds = frac + (sec % 60) as f64;
        format!("{hours}:{minutes:02}:{}", c_width(&c_fixed(seconds, 2), 5))
    } else {
        format!("{} sec", c_width(&c_fixed(frac, 2), 5))
    }
}

/// [`timestr_parts`] for a time in seconds.
pub fn timestr(secs: f64, compact: bool) -> String {
    let (sec, nsec) = split_secs(secs);
    timestr_parts(sec, nsec, compact)
}

/// Zero-pads a formatted number to `width` like `%0<width>f` (after any sign; not for inf/nan,
/// which C pads with spaces).
fn c_width(s: &str, width: usize) -> String {
    if s.len() >= width {
        return s.to_owned();
    }
    let pad = width - s.len();
    let (sign, digits) = match s.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", s),
    };
    if digits.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{sign}{}{digits}", "0".repeat(pad))
    } else {
        format!("{}{s}", " ".repeat(pad))
    }
}

fn split_secs(secs: f64) -> (u64, u32) {
    // Negative and NaN times (never measured) count as zero.
    if secs.is_nan() || secs <= 0.0 {
        return (0, 0);
    }
    let whole = secs.trunc();
    let nsec = ((secs - whole) * 1e9).round().min(999_999_999.0) as u32;
    (whole as u64, nsec)
}

/// qemu-io's `print_report` for an elapsed time given as a [`Duration`] (the exact C
/// arithmetic: rates divide by `tv_sec + tv_nsec / 1e9`).
#[allow(clippy::too_many_arguments)]
pub fn report_duration(
    op: &str,
    elapsed: Duration,
    offset: i64,
    count: i64,
    total: i64,
    ops: i32,
    compact: bool,
) -> String {
    let (sec, nsec) = (elapsed.as_secs(), elapsed.subsec_nanos());
    let t = sec as f64 + f64::from(nsec) / 1e9;
    let ts = timestr_parts(sec, nsec, compact);
    let bytes_rate = tdiv(total as f64, t);
    let ops_rate = tdiv(f64::from(ops), t);
    if compact {
        // bytes,ops,time,bytes/sec,ops/sec
        format!(
            "{total},{ops},{ts},{},{}\n",
            c_fixed(bytes_rate, 3),
            c_fixed(ops_rate, 3)
        )
    } else {
        format!(
            "{op} {total}/{count} bytes at offset {offset}\n{}, {ops} ops; {ts} ({}/sec and {} ops/sec)\n",
            cvtstr(total as f64),
            cvtstr(bytes_rate),
            c_fixed(ops_rate, 4)
        )
    }
}

/// qemu-io's `print_report`, with the trailing newline: two lines normally
/// (`wrote 4096/4096 bytes at offset 0` / `4 KiB, 1 ops; 00.00 sec (3.403 MiB/sec and
/// 871.2684 ops/sec)`), one line with `-C` (`512,1,0:00:00.00,4016127.261,7843.999`).
/// `op` is `read`, `wrote` or `discard`; `total` is what was transferred, `count` what was asked.
pub fn report(
    op: &str,
    secs: f64,
    offset: i64,
    count: i64,
    total: i64,
    ops: i32,
    compact: bool,
) -> String {
    let (sec, nsec) = split_secs(secs);
    report_duration(
        op,
        Duration::new(sec, nsec),
        offset,
        count,
        total,
        ops,
        compact,
    )
}

/// The `-v` dump: 16 bytes per line, `%08x` address (the request offset itself, unrounded),
/// hex bytes, then a column where only ASCII letters and digits show (C `isalnum` in the C
/// locale) and everything else is `.`. The last line is not padded.
pub fn dump_buffer(buf: &[u8], offset: u64) -> String {
    let mut out = String::with_capacity(buf.len().div_ceil(16) * 78);
    for (i, chunk) in buf.chunks(16).enumerate() {
        let addr = offset.wrapping_add(i as u64 * 16);
        let _ = write!(out, "{addr:08x}:  ");
        for b in chunk {
            let _ = write!(out, "{b:02x} ");
        }
        out.push(' ');
        out.extend(chunk.iter().map(|&b| {
            if b.is_ascii_alphanumeric() {
                b as char
            } else {
                '.'
            }
        }));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The host libc's `snprintf` with a single double argument, as an oracle.
    fn libc_printf(fmt: &str, v: f64) -> String {
        let cfmt = std::ffi::CString::new(fmt).unwrap();
        let mut buf = vec![0u8; 512];
        // SAFETY: buf is writable for its full length; the format takes exactly one double.
        let n = unsafe {
            libc::snprintf(
                buf.as_mut_ptr().cast(),
                buf.len(),
                cfmt.as_ptr(),
                v as libc::c_double,
            )
        };
        buf.truncate(usize::try_from(n).unwrap().min(511));
        String::from_utf8(buf).unwrap()
    }

    /// Observed via `alloc X 0` (which prints `cvtstr(X)`) on a null-co image, and in reports.
    #[test]
    fn cvtstr_matches_qemu_io() {
        for (v, want) in [
            (0.0, "0 bytes"),
            (1.0, "1 bytes"),
            (512.0, "512 bytes"),
            (1023.0, "1023 bytes"),
            (1024.0, "1 KiB"),
            (1025.0, "1.001 KiB"),
            (1049.0, "1.024 KiB"),
            (1536.0, "1.500 KiB"),
            (4096.0, "4 KiB"),
            (65536.0, "64 KiB"),
            (1048064.0, "1023.500 KiB"),
            (1048575.0, "1023.999 KiB"),
            (1048576.0, "1 MiB"),
            (5000000.0, "4.768 MiB"),
            (123456789.0, "117.738 MiB"),
            (1073741823.0, "1024 MiB"),
            (1099511627775.0, "1024 GiB"),
            (1125899906842623.0, "1024 TiB"),
            (1152921504606846975.0, "1 EiB"),
            (9223372034707292160.0, "8 EiB"),
            (836.191016, "836.191016 bytes"),
            (1.333262, "1.333262 bytes"),
        ] {
            assert_eq!(cvtstr(v), want, "cvtstr({v})");
        }
    }

    #[test]
    fn cvtstr_quirks() {
        // Only the first ".000" is trimmed, even mid-number.
        assert_eq!(cvtstr(1.0005), "1 bytes");
        assert_eq!(cvtstr(0.5), "0.500000 bytes");
        assert_eq!(cvtstr(-5.0), "-5 bytes");
        assert_eq!(cvtstr(f64::INFINITY), "inf EiB");
        assert_eq!(cvtstr(X86_DEFAULT_NAN), "-nan bytes");
        // 2^100 bytes overflows the EiB column; C's buffer limit cuts nothing at this size.
        assert_eq!(cvtstr(2f64.powi(100)), "1099511627776 EiB");
        // A huge value is cut at snprintf's limit (59 characters) before the unit.
        let huge = cvtstr(1e300);
        assert_eq!(huge.len(), 59 + 4);
        assert!(huge.ends_with(" EiB"));
    }

    #[test]
    fn c_fixed_matches_libc() {
        for v in [
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            0.0625,
            0.125,
            1e-7,
            123.4565,
            0.0005,
            0.00049999,
            871.26845,
            1e20,
            1.7976931348623157e308,
            f64::INFINITY,
            -f64::INFINITY,
            X86_DEFAULT_NAN,
            f64::NAN,
        ] {
            for prec in [2, 3, 4, 6] {
                assert_eq!(
                    c_fixed(v, prec),
                    libc_printf(&format!("%.{prec}f"), v),
                    "{v}"
                );
            }
        }
    }

    #[test]
    fn timestr_forms() {
        assert_eq!(timestr(0.0, false), "00.00 sec");
        assert_eq!(timestr(0.004, false), "00.00 sec");
        assert_eq!(timestr(0.006, false), "00.01 sec");
        assert_eq!(timestr(0.5, false), "00.50 sec");
        // Rounds up to "01.00 sec" without switching to the long form.
        assert_eq!(timestr_parts(0, 999_000_000, false), "01.00 sec");
        assert_eq!(timestr(1.1, false), "0:00:01.10");
        assert_eq!(timestr(0.0, true), "0:00:00.00");
        assert_eq!(timestr(0.25, true), "0:00:00.25");
        // From the `aio_write -z` quirk on a machine up for 384 s.
        assert_eq!(timestr_parts(384, 20_000_000, false), "0:06:24.02");
        assert_eq!(timestr_parts(2235, 320_000_000, true), "0:37:15.32");
        assert_eq!(timestr_parts(3600, 0, false), "1:00:00.00");
        assert_eq!(timestr_parts(90061, 500_000_000, true), "25:01:01.50");
        // The seconds field is %05.2f of a sum, so it can show 60.00.
        assert_eq!(timestr_parts(59, 999_000_000, false), "0:00:60.00");
    }

    #[test]
    fn report_forms() {
        let t = Duration::from_micros(1176);
        assert_eq!(
            report_duration("wrote", t, 0, 4096, 4096, 1, false),
            format!(
                "wrote 4096/4096 bytes at offset 0\n4 KiB, 1 ops; 00.00 sec ({}/sec and {} ops/sec)\n",
                cvtstr(4096.0 / 0.001176),
                libc_printf("%.4f", 1.0 / 0.001176)
            )
        );
        assert_eq!(
            report_duration("read", t, 512, 512, 512, 1, true),
            format!(
                "512,1,0:00:00.00,{},{}\n",
                libc_printf("%.3f", 512.0 / 0.001176),
                libc_printf("%.3f", 1.0 / 0.001176)
            )
        );
        // The aio_write -z line observed with 384.02 s of uptime.
        assert_eq!(
            report_duration(
                "wrote",
                Duration::new(384, 20_000_000),
                0,
                512,
                512,
                1,
                false
            ),
            "wrote 512/512 bytes at offset 0\n512 bytes, 1 ops; 0:06:24.02 (1.333264 bytes/sec and 0.0026 ops/sec)\n"
        );
        assert_eq!(
            report_duration(
                "wrote",
                Duration::new(384, 20_000_000),
                0,
                512,
                512,
                1,
                true
            ),
            "512,1,0:06:24.02,1.333,0.003\n"
        );
    }

    #[test]
    fn report_with_zero_time() {
        assert_eq!(
            report("discard", 0.0, 65536, 65536, 65536, 1, false),
            "discard 65536/65536 bytes at offset 65536\n64 KiB, 1 ops; 00.00 sec (inf EiB/sec and inf ops/sec)\n"
        );
        assert_eq!(
            report("read", 0.0, 0, 0, 0, 1, false),
            "read 0/0 bytes at offset 0\n0 bytes, 1 ops; 00.00 sec (-nan bytes/sec and inf ops/sec)\n"
        );
        assert_eq!(
            report("read", 0.0, 0, 512, 512, 1, true),
            "512,1,0:00:00.00,inf,inf\n"
        );
        assert_eq!(
            report("read", 0.0, 0, 0, 0, 1, true),
            "0,1,0:00:00.00,-nan,inf\n"
        );
    }

    #[test]
    fn report_short_read() {
        assert_eq!(
            report("read", 2.0, 8192, 1536, 1024, 1, false),
            "read 1024/1536 bytes at offset 8192\n1 KiB, 1 ops; 0:00:02.00 (512 bytes/sec and 0.5000 ops/sec)\n"
        );
    }

    /// Lines observed from `read -v 0 20` on a 0xab-filled image and `read -v 100 20` on zeros.
    #[test]
    fn dump_matches_qemu_io() {
        assert_eq!(
            dump_buffer(&[0xab; 20], 0),
            "00000000:  ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab ab  ................\n\
             00000010:  ab ab ab ab  ....\n"
        );
        assert_eq!(
            dump_buffer(&[0; 20], 100),
            "00000064:  00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n\
             00000074:  00 00 00 00  ....\n"
        );
        assert_eq!(dump_buffer(&[], 0), "");
        assert_eq!(
            dump_buffer(b"Az09 .-_\x7f\xe9\n", 0x1_0000_0000),
            "100000000:  41 7a 30 39 20 2e 2d 5f 7f e9 0a  Az09.......\n"
        );
    }

    proptest! {
        #[test]
        fn c_fixed_agrees_with_libc(bits in any::<u64>(), prec in 0usize..8) {
            let v = f64::from_bits(bits);
            prop_assert_eq!(c_fixed(v, prec), libc_printf(&format!("%.{prec}f"), v));
        }

        #[test]
        fn time_field_agrees_with_libc(v in 0.0f64..120.0) {
            prop_assert_eq!(c_width(&c_fixed(v, 2), 5), libc_printf("%05.2f", v));
        }

        #[test]
        fn dump_shape(buf in prop::collection::vec(any::<u8>(), 0..100), offset in any::<u64>()) {
            let d = dump_buffer(&buf, offset);
            prop_assert_eq!(d.lines().count(), buf.len().div_ceil(16));
        }
    }
}
