//! Number parsing as qemu-io does it.
//!
//! * [`cvtnum`]: sizes and offsets (`qemu_strtosz` with a default unit of bytes, limited to
//!   `i64`): decimal, `0x` hex, decimal fractions with a binary suffix (`1.5k`), one suffix
//!   letter out of `bBkKmMgGtTpPeE`.
//! * [`strtol`] / [`strtoull`]: C's `strtol`/`strtoull` for the few places qemu-io calls them
//!   directly (`-P` pattern bytes, `sleep`).
//!
//! Every rule here was checked against qemu-io 10.0.2; the tests list the observed cases.

use crate::errno::{EINVAL, ERANGE};

/// Why [`cvtnum`] rejected its argument. QEMU distinguishes only these two (`-EINVAL`/`-ERANGE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumError {
    /// Not a number, or junk after it (`4x`, `1.5` with no unit, `0x1k`, `-5k`, ...).
    Invalid,
    /// Too large for `i64`, or negative without trailing junk (`8E`, `-5`, `-.5`).
    TooLarge,
}

impl NumError {
    /// The line qemu-io prints on stdout (without the newline) for this error on `arg`.
    pub fn message(&self, arg: &str) -> String {
        match self {
            NumError::Invalid => format!(
                "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {arg}"
            ),
            NumError::TooLarge => format!("Parsing error: argument too large -- {arg}"),
        }
    }

    /// The positive errno QEMU uses internally for this error.
    pub fn errno(&self) -> i32 {
        match self {
            NumError::Invalid => EINVAL,
            NumError::TooLarge => ERANGE,
        }
    }
}

/// qemu-io's `cvtnum`: a size in bytes, at most `i64::MAX`.
pub fn cvtnum(arg: &str) -> Result<i64, NumError> {
    let v = strtosz(arg)?;
    i64::try_from(v).map_err(|_| NumError::TooLarge)
}

/// `qemu_strtosz` with the whole string required to be consumed: the unsigned 64-bit size.
///
/// Unusual but faithful details: negative numbers are "too large" unless junk follows them
/// (then they are invalid); a fraction that rounds to 1.0 carries into the integer part, so
/// `0.99999999999999999999` is 1; a fraction with a unit rounds to nearest (`0.0005k` = 1);
/// `e`/`E` after a fraction is the exabyte suffix, never an exponent.
pub fn strtosz(arg: &str) -> Result<u64, NumError> {
    let s = arg.as_bytes();
    // The result before the "whole string consumed" check, and where parsing stopped.
    let (res, end) = strtosz_prefix(s);
    if end < s.len() {
        Err(NumError::Invalid)
    } else {
        res
    }
}

/// Parses as far as QEMU does; the caller rejects trailing junk (which overrides `TooLarge`).
fn strtosz_prefix(s: &[u8]) -> (Result<u64, NumError>, usize) {
    // Like C's NUL terminator: reading past the end sees 0.
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    // The integral part is decimal only, so `010` is ten.
    let int = scan_integer(s, 10);
    let mut end = int.end;
    let mut val = int.magnitude;
    let int_ok = if !int.has_digits {
        false
    } else if int.overflow || int.negative {
        return (Err(NumError::TooLarge), end);
    } else {
        true
    };

    let mut valf: u64 = 0; // fraction as 0.64 fixed point
    if int_ok && val == 0 && matches!(at(end), b'x' | b'X') {
        // Hex: whole number only, no fraction and no unit suffix.
        let hex = scan_integer(s, 16);
        end = hex.end;
        if hex.overflow {
            return (Err(NumError::TooLarge), end);
        }
        val = hex.magnitude;
        if at(end) == b'.' || suffix_mul(at(end)).is_some() {
            return (Err(NumError::Invalid), 0);
        }
    } else if (int_ok && at(end) == b'.') || (!int_ok && s.contains(&b'.')) {
        if int_ok && !at(end + 1).is_ascii_digit() {
            // `1.k` / `1.`: a dot with no fraction digits after a whole number.
            end += 1;
        } else {
            // Without integral digits this starts at the beginning (`.5k`, `+.5k`, ` -.5`).
            match scan_fraction(&s[end..]) {
                None => return (Err(NumError::Invalid), 0),
                Some(frac) => {
                    end += frac.len;
                    if frac.negative {
                        return (Err(NumError::TooLarge), end);
                    }
                    if frac.value == 1.0 {
                        // So many nines that the double rounded up to one.
                        match val.checked_add(1) {
                            Some(v) => val = v,
                            None => return (Err(NumError::TooLarge), end),
                        }
                    } else if frac.nonzero {
                        // Any nonzero fraction must stay nonzero, even if it underflows.
                        valf = ((frac.value * 18446744073709551616.0) as u64).max(1);
                    }
                }
            }
        }
    } else if !int_ok {
        return (Err(NumError::Invalid), 0);
    }

    let mul = match suffix_mul(at(end)) {
        Some(m) => {
            end += 1;
            m
        }
        None => 1,
    };
    if mul == 1 {
        // A fraction of a byte is meaningless: `1.5`, `1.5b`.
        if valf != 0 {
            return (Err(NumError::Invalid), 0);
        }
        return (Ok(val), end);
    }
    // Exact 64.64 fixed-point product, rounding half up.
    let frac_prod = u128::from(valf) * u128::from(mul);
    let total = u128::from(val) * u128::from(mul) + (frac_prod >> 64) + ((frac_prod >> 63) & 1);
    match u64::try_from(total) {
        Ok(v) => (Ok(v), end),
        Err(_) => (Err(NumError::TooLarge), end),
    }
}

/// Unit suffix letters, case-insensitive, powers of 1024.
fn suffix_mul(c: u8) -> Option<u64> {
    let shift = match c.to_ascii_uppercase() {
        b'B' => 0,
        b'K' => 10,
        b'M' => 20,
        b'G' => 30,
        b'T' => 40,
        b'P' => 50,
        b'E' => 60,
        _ => return None,
    };
    Some(1u64 << shift)
}

/// A decimal fraction as C `strtod` reads it from `[ws][sign].digits`, on a copy of the text
/// cut at the first `e`/`E` (QEMU cuts there so `e` stays a suffix).
struct Fraction {
    value: f64,
    negative: bool,
    nonzero: bool,
    len: usize,
}

fn scan_fraction(s: &[u8]) -> Option<Fraction> {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    // Integral digits are impossible here: the caller only gets here with none left to read.
    if s.get(i) != Some(&b'.') {
        return None;
    }
    let digits_start = i + 1;
    let mut j = digits_start;
    while j < s.len() && s[j].is_ascii_digit() {
        j += 1;
    }
    if j == digits_start {
        return None;
    }
    let digits = std::str::from_utf8(&s[digits_start..j]).ok()?;
    // Rust's float parsing is correctly rounded, like glibc's strtod.
    let value: f64 = format!("0.{digits}").parse().ok()?;
    Some(Fraction {
        value,
        negative,
        nonzero: digits.bytes().any(|d| d != b'0'),
        len: j,
    })
}

/// C locale `isspace`.
fn is_c_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// What glibc's strto(u)l scanner sees: whitespace, sign, optional base prefix, digits.
struct IntScan {
    negative: bool,
    has_digits: bool,
    /// Absolute value, valid when `!overflow`.
    magnitude: u64,
    overflow: bool,
    /// Index after the last digit, or 0 if there were no digits (C sets endptr = nptr).
    end: usize,
}

fn digit_value(c: u8) -> Option<u32> {
    (c as char).to_digit(36)
}

/// `base` is 0 (auto: `0x` hex, `0` octal, else decimal) or 2..=36.
fn scan_integer(s: &[u8], base: u32) -> IntScan {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut negative = false;
    if let Some(&c @ (b'+' | b'-')) = s.get(i) {
        negative = c == b'-';
        i += 1;
    }
    let mut base = base;
    let hex_prefix = s.get(i) == Some(&b'0')
        && matches!(s.get(i + 1), Some(b'x' | b'X'))
        && s.get(i + 2)
            .and_then(|&c| digit_value(c))
            .is_some_and(|d| d < 16);
    if (base == 0 || base == 16) && hex_prefix {
        // A bare `0x` is not a prefix: glibc then reads just the `0`.
        base = 16;
        i += 2;
    } else if base == 0 {
        base = if s.get(i) == Some(&b'0') { 8 } else { 10 };
    }
    let start = i;
    let mut magnitude: u64 = 0;
    let mut overflow = false;
    while let Some(d) = s.get(i).and_then(|&c| digit_value(c)).filter(|&d| d < base) {
        match magnitude
            .checked_mul(u64::from(base))
            .and_then(|m| m.checked_add(u64::from(d)))
        {
            Some(m) => magnitude = m,
            None => overflow = true,
        }
        i += 1;
    }
    let has_digits = i > start;
    IntScan {
        negative,
        has_digits,
        magnitude,
        overflow,
        end: if has_digits { i } else { 0 },
    }
}

/// Result of [`strtol`]/[`strtoull`]: the value C returns, its `endptr` as a byte index into the
/// argument, and whether C would set `errno = ERANGE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CInt<T> {
    pub value: T,
    pub end: usize,
    pub erange: bool,
}

/// C `strtol(s, &end, base)` for a 64-bit `long` (glibc semantics; base 0 or 2..=36).
pub fn strtol(s: &str, base: u32) -> CInt<i64> {
    let scan = scan_integer(s.as_bytes(), base);
    let (value, erange) = match (scan.negative, scan.overflow) {
        (false, false) => match i64::try_from(scan.magnitude) {
            Ok(v) => (v, false),
            Err(_) => (i64::MAX, true),
        },
        (false, true) => (i64::MAX, true),
        (true, false) if scan.magnitude <= 1u64 << 63 => {
            ((scan.magnitude as i64).wrapping_neg(), false)
        }
        (true, _) => (i64::MIN, true),
    };
    CInt {
        value,
        end: scan.end,
        erange,
    }
}

/// C `strtoull(s, &end, base)` (a leading `-` negates modulo 2^64, as C does).
pub fn strtoull(s: &str, base: u32) -> CInt<u64> {
    let scan = scan_integer(s.as_bytes(), base);
    let (value, erange) = if scan.overflow {
        (u64::MAX, true)
    } else if scan.negative {
        (scan.magnitude.wrapping_neg(), false)
    } else {
        (scan.magnitude, false)
    };
    CInt {
        value,
        end: scan.end,
        erange,
    }
}

/// A `-P` pattern byte: `strtol` base 0 (so `0x41`, `0101`, `-0` work), 0..=255, no junk.
/// The error is qemu-io's stdout line, without the newline.
pub fn parse_pattern(arg: &str) -> Result<u8, String> {
    let r = strtol(arg, 0);
    match u8::try_from(r.value) {
        Ok(b) if r.end == arg.len() || arg.is_empty() => Ok(b),
        _ => Err(format!("{arg} is not a valid pattern byte")),
    }
}

/// The `sleep` argument in milliseconds: `strtol` base 0, not negative, no junk. Overflow
/// saturates silently (C clamps to `LONG_MAX` and qemu-io does not check `errno`).
pub fn parse_sleep_ms(arg: &str) -> Result<u64, String> {
    let r = strtol(arg, 0);
    match u64::try_from(r.value) {
        Ok(ms) if r.end == arg.len() || arg.is_empty() => Ok(ms),
        _ => Err(format!("{arg} is not a valid number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const E: Result<i64, NumError> = Err(NumError::Invalid);
    const R: Result<i64, NumError> = Err(NumError::TooLarge);

    /// Each case was run as `qemu-io -f raw -c 'read -- ARG 0' img.raw` on QEMU 10.0.2.
    #[test]
    fn cvtnum_matches_qemu_io() {
        let cases: &[(&str, Result<i64, NumError>)] = &[
            ("0", Ok(0)),
            ("010", Ok(10)),
            ("0x10", Ok(16)),
            ("0X10", Ok(16)),
            ("0x0", Ok(0)),
            ("0x10b", Ok(267)),
            ("0x1e", Ok(30)),
            ("0x1E", Ok(30)),
            ("+0x10", Ok(16)),
            ("0x7fffffffffffffff", Ok(i64::MAX)),
            ("0x8000000000000000", R),
            ("0xffffffffffffffff", R),
            ("0xffffffffffffffffff", R),
            ("0xffffffffffffffffffx", E),
            ("1.5k", Ok(1536)),
            ("12.75k", Ok(13056)),
            (".5k", Ok(512)),
            ("+.5k", Ok(512)),
            ("1.k", Ok(1024)),
            ("1.K", Ok(1024)),
            ("1.b", Ok(1)),
            ("0.b", Ok(0)),
            (".0b", Ok(0)),
            ("1.0b", Ok(1)),
            ("1.0", Ok(1)),
            ("1.", Ok(1)),
            ("0.", Ok(0)),
            ("0.0", Ok(0)),
            (".0", Ok(0)),
            ("0.0001k", Ok(0)),
            ("0.0005k", Ok(1)),
            ("0.00048828125k", Ok(1)),
            ("0.000244140625k", Ok(0)),
            ("0.00000000000000000000000000000000000000001k", Ok(0)),
            ("0.99999999999999999999b", Ok(1)),
            ("0.99999999999999999999", Ok(1)),
            ("1.99999999999999999999k", Ok(2048)),
            ("+1", Ok(1)),
            ("\t5", Ok(5)),
            ("\x0b5", Ok(5)),
            ("1e", Ok(1 << 60)),
            ("1E", Ok(1 << 60)),
            ("1.e", Ok(1 << 60)),
            ("0.5e", Ok(1 << 59)),
            ("1.5E", Ok(3 << 59)),
            ("7E", Ok(7 << 60)),
            ("8191P", Ok(8191 << 50)),
            ("9223372036854775807", Ok(i64::MAX)),
            ("9007199254740993", Ok(9007199254740993)),
            ("1.5", E),
            ("1.9999b", E),
            ("1.5b", E),
            ("0.5b", E),
            ("1.0000000001b", E),
            ("1.00000000000000000000000001b", E),
            ("4x", E),
            ("0x1k", E),
            ("0x1.8", E),
            ("0x1.8k", E),
            ("0x1p3", E),
            ("00x10", E),
            ("0b1", E),
            ("1e3", E),
            ("1.e3", E),
            ("1.5e3k", E),
            ("+.5e3", E),
            ("1kb", E),
            ("1.5kb", E),
            ("1KiB", E),
            ("0x", E),
            ("abc", E),
            ("", E),
            ("k", E),
            (".", E),
            (".k", E),
            (".b", E),
            ("+.k", E),
            ("1..k", E),
            ("1.5.5k", E),
            ("++1", E),
            ("5\t", E),
            ("inf", E),
            ("infk", E),
            ("nan", E),
            ("8E", R),
            ("9223372036854775808", R),
            ("18446744073709551615", R),
            ("18446744073709551616", R),
            ("99999999999999999999", R),
            ("4611686018427387904k", R),
            ("7.9999999999999999999999E", R),
            ("15.999999999999999999999E", R),
            ("9223372036854775807.5k", R),
            ("99999999999999999999x", E),
            ("8Ex", E),
            // Negative values: "too large" unless junk follows.
            ("-5", R),
            ("-0", R),
            ("-.5", R),
            ("-.0", R),
            ("\t-5", R),
            ("\t-.5", R),
            ("-99999999999999999999", R),
            ("-5k", E),
            ("-5x", E),
            ("-0.5k", E),
            ("-0.5", E),
            ("-.5k", E),
            ("-.0k", E),
            ("-.k", E),
            ("-", E),
            ("-abc", E),
            ("-0x5", E),
        ];
        for (arg, want) in cases {
            assert_eq!(cvtnum(arg), *want, "cvtnum({arg:?})");
        }
    }

    #[test]
    fn strtosz_keeps_values_above_i64() {
        assert_eq!(strtosz("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(strtosz("15E"), Ok(15 << 60));
        assert_eq!(strtosz("16E"), Err(NumError::TooLarge));
        assert_eq!(strtosz("0xffffffffffffffff"), Ok(u64::MAX));
        // val == u64::MAX plus a fraction that rounds to one overflows.
        assert_eq!(
            strtosz("18446744073709551615.99999999999999999999"),
            Err(NumError::TooLarge)
        );
    }

    #[test]
    fn messages() {
        assert_eq!(
            NumError::Invalid.message("4x"),
            "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- 4x"
        );
        assert_eq!(
            NumError::TooLarge.message("-5"),
            "Parsing error: argument too large -- -5"
        );
        assert_eq!(NumError::Invalid.errno(), 22);
        assert_eq!(NumError::TooLarge.errno(), 34);
    }

    /// Observed with `read -q -PARG 0 0`.
    #[test]
    fn pattern_bytes() {
        for (arg, want) in [
            ("0x41", Some(0x41)),
            ("0101", Some(0o101)),
            ("255", Some(255)),
            ("-0", Some(0)),
            ("+5", Some(5)),
            ("\t5", Some(5)),
            ("0xFF", Some(255)),
            ("", Some(0)),
            ("08", None),
            ("256", None),
            ("-1", None),
            ("5\t", None),
            ("0x", None),
            ("0X1g", None),
            ("99999999999999999999", None),
            ("-99999999999999999999", None),
            ("0x-1", None),
            ("1k", None),
            ("q", None),
            ("--", None),
        ] {
            let got = parse_pattern(arg);
            match want {
                Some(b) => assert_eq!(got, Ok(b), "{arg:?}"),
                None => assert_eq!(got, Err(format!("{arg} is not a valid pattern byte"))),
            }
        }
    }

    /// Observed with `sleep ARG`.
    #[test]
    fn sleep_ms() {
        for (arg, want) in [
            ("0", Some(0)),
            ("10", Some(10)),
            ("-0", Some(0)),
            ("0x10", Some(16)),
            ("010", Some(8)),
            ("\t5", Some(5)),
            ("+3", Some(3)),
            ("99999999999999999999", Some(i64::MAX as u64)),
            ("-1", None),
            ("08", None),
            ("1k", None),
            ("abc", None),
            ("1.5", None),
            ("-99999999999999999999", None),
        ] {
            let got = parse_sleep_ms(arg);
            match want {
                Some(ms) => assert_eq!(got, Ok(ms), "{arg:?}"),
                None => assert_eq!(got, Err(format!("{arg} is not a valid number"))),
            }
        }
    }

    #[test]
    fn c_strtol() {
        assert_eq!(
            strtol("  -0x1fz", 0),
            CInt {
                value: -31,
                end: 7,
                erange: false
            }
        );
        assert_eq!(
            strtol("0x", 0),
            CInt {
                value: 0,
                end: 1,
                erange: false
            }
        );
        assert_eq!(
            strtol("0x", 16),
            CInt {
                value: 0,
                end: 1,
                erange: false
            }
        );
        assert_eq!(
            strtol("x", 0),
            CInt {
                value: 0,
                end: 0,
                erange: false
            }
        );
        assert_eq!(
            strtol("-", 10),
            CInt {
                value: 0,
                end: 0,
                erange: false
            }
        );
        assert_eq!(
            strtol("0777", 0),
            CInt {
                value: 511,
                end: 4,
                erange: false
            }
        );
        assert_eq!(
            strtol("zz", 36),
            CInt {
                value: 1295,
                end: 2,
                erange: false
            }
        );
        assert_eq!(
            strtol("-9223372036854775808", 10),
            CInt {
                value: i64::MIN,
                end: 20,
                erange: false
            }
        );
        assert_eq!(
            strtol("9223372036854775808", 10),
            CInt {
                value: i64::MAX,
                end: 19,
                erange: true
            }
        );
        assert_eq!(
            strtoull("-1", 10),
            CInt {
                value: u64::MAX,
                end: 2,
                erange: false
            }
        );
        assert_eq!(
            strtoull("18446744073709551616", 10),
            CInt {
                value: u64::MAX,
                end: 20,
                erange: true
            }
        );
    }

    /// Our strtol must agree with the host libc's.
    #[test]
    fn strtol_matches_libc() {
        let samples = [
            "0",
            "  12",
            "-12",
            "+0x1F",
            "0x",
            "0X",
            "0xg",
            "077",
            "08",
            "1e5",
            "\t\n 7",
            "-",
            "+",
            "",
            "abc",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "0x7fffffffffffffff1",
            "  +-3",
            "0b101",
        ];
        for s in samples {
            for base in [0, 8, 10, 16, 36] {
                let c = std::ffi::CString::new(s).unwrap();
                let mut endp: *mut libc::c_char = std::ptr::null_mut();
                // SAFETY: c is a valid NUL-terminated string and endp a valid out-pointer.
                let v = unsafe { libc::strtol(c.as_ptr(), &mut endp, base as libc::c_int) };
                // SAFETY: strtol sets endp inside (or at the end of) c's buffer.
                let end = unsafe { endp.offset_from(c.as_ptr()) } as usize;
                let ours = strtol(s, base);
                assert_eq!((ours.value, ours.end), (v, end), "strtol({s:?}, {base})");
            }
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = cvtnum(&s);
            let _ = strtosz(&s);
            let _ = parse_pattern(&s);
            let _ = parse_sleep_ms(&s);
            let _ = strtoull(&s, 0);
        }

        #[test]
        fn never_panics_on_numberish(s in "[ \\t+\\-.0-9a-fxXkKmMgGtTpPeEbB]{0,30}") {
            let _ = cvtnum(&s);
        }

        #[test]
        fn plain_decimals_round_trip(v in 0..=i64::MAX) {
            prop_assert_eq!(cvtnum(&v.to_string()), Ok(v));
            prop_assert_eq!(cvtnum(&format!("{v:#x}")), Ok(v));
        }

        #[test]
        fn suffixes_scale(v in 0u64..=8191, (suffix, shift) in prop::sample::select(
            vec![("b", 0), ("B", 0), ("k", 10), ("K", 10), ("m", 20), ("M", 20), ("g", 30),
                 ("G", 30), ("t", 40), ("T", 40), ("p", 50), ("P", 50), ("e", 60), ("E", 60)])) {
            let want = u128::from(v) << shift;
            let got = cvtnum(&format!("{v}{suffix}"));
            if want <= i64::MAX as u128 {
                prop_assert_eq!(got, Ok(want as i64));
            } else {
                prop_assert_eq!(got, Err(NumError::TooLarge));
            }
        }

        #[test]
        fn halves_are_exact(v in 0u64..=1_000_000) {
            prop_assert_eq!(cvtnum(&format!("{v}.5k")), Ok((v * 1024 + 512) as i64));
        }

        #[test]
        fn strtol_agrees_with_libc(s in "[ \\t+\\-0-9a-zA-Z]{0,24}", base in prop::sample::select(vec![0u32, 2, 8, 10, 16, 36])) {
            let c = std::ffi::CString::new(s.clone()).unwrap();
            let mut endp: *mut libc::c_char = std::ptr::null_mut();
            // SAFETY: c is a valid NUL-terminated string and endp a valid out-pointer.
            let v = unsafe { libc::strtol(c.as_ptr(), &mut endp, base as libc::c_int) };
            // SAFETY: strtol sets endp inside (or at the end of) c's buffer.
            let end = unsafe { endp.offset_from(c.as_ptr()) } as usize;
            let ours = strtol(&s, base);
            prop_assert_eq!((ours.value, ours.end), (v, end));
        }
    }
}
