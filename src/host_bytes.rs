//! Arguments and filenames that are not UTF-8, carried through the String-based engine.
//!
//! QEMU takes any bytes for an argument or a filename and prints them back raw. The engine works
//! on `String`s; rather than make every name an `OsString`, the edges map each byte that is not
//! part of valid UTF-8 to one private-use character (U+10FF80 + byte - 0x80) on the way in and
//! back to the byte on the way out (into a path, onto stdout/stderr). The mapping is reversible
//! as long as no argument holds one of those characters itself: such an argument is refused.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The character standing for byte 0x80; bytes up to 0xFF follow it.
const FIRST: u32 = 0x10_FF80;

fn stands_for(c: char) -> Option<u8> {
    let v = u32::from(c);
    (FIRST..=FIRST + 0x7f)
        .contains(&v)
        .then(|| (v - FIRST + 0x80) as u8)
}

fn standing_for(byte: u8) -> char {
    char::from_u32(FIRST + u32::from(byte - 0x80)).expect("U+10FF80..U+10FFFF are characters")
}

/// `bytes` as engine text; Err(the offending character) when the bytes hold, as UTF-8, one of
/// the characters that stand for raw bytes (it could not be told apart on the way out).
pub fn decode(bytes: &[u8]) -> Result<String, char> {
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        if let Some(c) = chunk.valid().chars().find(|&c| stands_for(c).is_some()) {
            return Err(c);
        }
        text.push_str(chunk.valid());
        // Bytes that are not UTF-8 are all >= 0x80.
        text.extend(chunk.invalid().iter().map(|&b| standing_for(b)));
    }
    Ok(text)
}

/// Bytes read from an image (a name QEMU keeps as a C string and prints raw) as engine text:
/// [`decode`], or — in the unlikely case that the bytes spell one of the reserved
/// characters — a lossy decoding.
pub fn text_of(bytes: &[u8]) -> String {
    decode(bytes).unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

/// [`decode`] for an argument.
pub fn decode_arg(arg: &OsStr) -> Result<String, char> {
    decode(arg.as_bytes())
}

/// The bytes engine text stands for.
pub fn encode(text: &str) -> Cow<'_, [u8]> {
    if !text.chars().any(|c| stands_for(c).is_some()) {
        return Cow::Borrowed(text.as_bytes());
    }
    let mut bytes = Vec::with_capacity(text.len());
    let mut utf8 = [0u8; 4];
    for c in text.chars() {
        match stands_for(c) {
            Some(b) => bytes.push(b),
            None => bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes()),
        }
    }
    Cow::Owned(bytes)
}

/// The host path a filename in engine text names.
pub fn host_path(name: &str) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(&encode(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_utf8_bytes_round_trip() {
        let raw: &[u8] = b"n\xffm\x80.img \xe2\x82 \xc3\xa9";
        let text = decode(raw).unwrap();
        assert_eq!(text.chars().filter(|&c| stands_for(c).is_some()).count(), 4);
        assert!(text.ends_with(" é"));
        assert_eq!(&*encode(&text), raw);
        assert_eq!(host_path(&text).as_os_str().as_bytes(), raw);
    }

    #[test]
    fn utf8_text_is_unchanged() {
        assert_eq!(decode("ça va".as_bytes()).unwrap(), "ça va");
        assert!(matches!(encode("ça va"), Cow::Borrowed(b) if b == "ça va".as_bytes()));
    }

    #[test]
    fn a_character_standing_for_a_byte_is_refused() {
        assert_eq!(decode("a\u{10ffff}".as_bytes()), Err('\u{10ffff}'));
        assert_eq!(decode("a\u{10ff7f}".as_bytes()).unwrap(), "a\u{10ff7f}");
    }
}
