//! `--object TYPE,id=ID,...`: QEMU's user-creatable objects, as qemu-io 10.0.2 takes them.
//!
//! The text is parsed as QEMU's keyval syntax (the first element may omit `qom-type=`), checked
//! as the QAPI `ObjectOptions` union is, and the object created. Only `secret` objects exist in
//! this engine (the passwords of encrypted images); the other types qemu-io knows are accepted by
//! name and then refused with one clear line.

use super::trace::{bad_id_message, id_wellformed};
use std::path::Path;

/// What `--object help` lists: the types QEMU 10.0.2's qemu-io can create.
const CREATABLE: [&str; 12] = [
    "authz-list",
    "authz-list-file",
    "authz-simple",
    "main-loop",
    "pr-manager-helper",
    "secret",
    "secret_keyring",
    "thread-context",
    "throttle-group",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
];

/// A `secret` object: its id and its bytes (decoded, when given in base64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    pub id: String,
    pub data: Vec<u8>,
}

/// The objects created by `--object`, in order. Ids are unique.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    secrets: Vec<Secret>,
}

/// What processing one `--object` did short of an error.
#[derive(Debug, PartialEq, Eq)]
pub enum Created {
    /// The object now exists.
    Object,
    /// Help was asked for: print this on stdout and end the process with 0.
    Help(String),
}

impl Objects {
    /// QEMU's `qcrypto_secret_lookup`.
    pub fn secret(&self, id: &str) -> Result<&[u8], String> {
        self.secrets
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.data.as_slice())
            .ok_or_else(|| format!("No secret with id '{id}'"))
    }

    /// Processes one `--object` argument (`user_creatable_process_cmdline`); Err is QEMU's
    /// message (possibly with a hint line), after which qemu-io exits with 1. Files named by
    /// `file=` are resolved against `base_dir`.
    pub fn add_from_cmdline(&mut self, text: &str, base_dir: &Path) -> Result<Created, String> {
        let (args, help) = parse_keyval(text, "qom-type")?;
        let qom_type = match get(&args, "qom-type") {
            Some(Kv::Str(t)) => Some(t.as_str()),
            _ => None,
        };
        if help {
            return Ok(Created::Help(match qom_type {
                Some("secret") => "secret options:\n  data=<string>\n  file=<string>\n  \
                     format=<QCryptoSecretFormat>\n  iv=<string>\n  keyid=<string>\n"
                    .to_string(),
                Some(t) if CREATABLE.contains(&t) => return Err(unsupported(t)),
                _ => {
                    let mut list = "List of user creatable objects:\n".to_string();
                    for t in CREATABLE {
                        list.push_str(&format!("  {t}\n"));
                    }
                    list
                }
            }));
        }
        let mut visit = Visit { args: &args };
        let qom_type = visit.required_str("qom-type")?;
        if !CREATABLE.contains(&qom_type) {
            return Err(format!(
                "Parameter 'qom-type' does not accept value '{qom_type}'"
            ));
        }
        let id = visit.required_str("id")?;
        if qom_type != "secret" {
            return Err(unsupported(qom_type));
        }
        let format = match visit.optional_str("format")? {
            None | Some("raw") => SecretFormat::Raw,
            Some("base64") => SecretFormat::Base64,
            Some(other) => {
                return Err(format!(
                    "Parameter 'format' does not accept value '{other}'"
                ));
            }
        };
        let keyid = visit.optional_str("keyid")?;
        let iv = visit.optional_str("iv")?;
        let data = visit.optional_str("data")?;
        let file = visit.optional_str("file")?;
        visit.no_other_keys(&["qom-type", "id", "format", "keyid", "iv", "data", "file"])?;
        if !id_wellformed(id) {
            return Err(bad_id_message());
        }
        if self.secrets.iter().any(|s| s.id == id) {
            return Err(format!(
                "attempt to add duplicate property '{id}' to object (type 'container')"
            ));
        }
        let input = match (file, data) {
            (Some(_), Some(_)) => return Err("'file' and 'data' are mutually exclusive".into()),
            (Some(name), None) => read_secret_file(name, base_dir)?,
            (None, Some(data)) => data.as_bytes().to_vec(),
            (None, None) => return Err("Either 'file' or 'data' must be provided".into()),
        };
        let data = match keyid {
            // The object is already registered when it completes: its own id names a secret
            // with no data yet.
            Some(key) if key == id => return Err(format!("Secret with id '{id}' has no data")),
            Some(key) => self.decrypt(key, iv, format, &input)?,
            None if format == SecretFormat::Base64 => base64_decode(&input, true)?,
            None => input,
        };
        self.secrets.push(Secret {
            id: id.to_string(),
            data,
        });
        Ok(Created::Object)
    }

    /// `qcrypto_secret_decrypt` up to the decryption itself, which this engine does not do.
    fn decrypt(
        &self,
        keyid: &str,
        iv: Option<&str>,
        format: SecretFormat,
        input: &[u8],
    ) -> Result<Vec<u8>, String> {
        if self.secret(keyid)?.len() != 32 {
            return Err("Key should be 32 bytes in length".into());
        }
        let iv = iv.ok_or("IV is required to decrypt secret")?;
        let iv = base64_decode(iv.as_bytes(), false)?;
        if iv.len() != 16 {
            return Err(format!("IV should be 16 bytes in length not {}", iv.len()));
        }
        let ciphertext = match format {
            SecretFormat::Base64 => base64_decode(input, true)?,
            SecretFormat::Raw => input.to_vec(),
        };
        if ciphertext.len() % 16 != 0 {
            return Err(format!(
                "Length {} must be a multiple of block size 16",
                ciphertext.len()
            ));
        }
        Err(format!(
            "blockfault: secret '{keyid}': decrypting a secret (keyid=) is not supported by this engine"
        ))
    }
}

fn unsupported(qom_type: &str) -> String {
    format!(
        "blockfault: --object {qom_type}: this engine has no '{qom_type}' objects (only 'secret')"
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SecretFormat {
    Raw,
    Base64,
}

/// `g_file_get_contents` with GLib's messages, as the secret's `file=` reads it.
fn read_secret_file(name: &str, base_dir: &Path) -> Result<Vec<u8>, String> {
    let unable = |what: &str, e: std::io::Error| {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        format!(
            "Unable to read {name}: {what} file “{name}”: {}",
            crate::errno::strerror(errno)
        )
    };
    if name.is_empty() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        return Err(unable("Failed to open", e));
    }
    let mut f = std::fs::File::open(base_dir.join(crate::host_bytes::host_path(name)))
        .map_err(|e| unable("Failed to open", e))?;
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut data).map_err(|e| unable("Error reading", e))?;
    Ok(data)
}

/// `qbase64_decode`: the text must be base64 characters only (and, when it comes with a
/// length, hold no NUL), then GLib decodes it leniently.
fn base64_decode(input: &[u8], sized: bool) -> Result<Vec<u8>, String> {
    let input = if sized {
        if input.contains(&0) {
            return Err("Base64 data contains embedded NUL characters".into());
        }
        input
    } else {
        input.split(|&b| b == 0).next().unwrap_or_default()
    };
    let valid = |b: &u8| b.is_ascii_alphanumeric() || b"+/=\n".contains(b);
    if !input.iter().all(valid) {
        return Err("Base64 data contains invalid characters".into());
    }
    Ok(glib_base64_decode(input))
}

/// `g_base64_decode`: characters outside the alphabet are skipped, `=` counts as a zero that
/// drops the output bytes it pads, and a trailing incomplete group is ignored.
fn glib_base64_decode(input: &[u8]) -> Vec<u8> {
    let rank = |c: u8| -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            b'=' => Some(0),
            _ => None,
        }
    };
    let mut out = Vec::new();
    let (mut value, mut count) = (0u32, 0);
    let mut last = [0u8; 2];
    for &c in input {
        let Some(r) = rank(c) else { continue };
        last = [c, last[0]];
        value = (value << 6) | r;
        count += 1;
        if count == 4 {
            out.push((value >> 16) as u8);
            if last[1] != b'=' {
                out.push((value >> 8) as u8);
            }
            if last[0] != b'=' {
                out.push(value as u8);
            }
            count = 0;
        }
    }
    out
}

/// A keyval value: a string, or the members under a dotted key prefix, in input order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kv {
    Str(String),
    Dict(Vec<(String, Kv)>),
}

fn get<'k>(dict: &'k [(String, Kv)], key: &str) -> Option<&'k Kv> {
    dict.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// QEMU's `parse_qapi_name` on a key fragment: the length of the name it starts with.
fn qapi_name_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    if b.first() == Some(&b'_') {
        // a downstream `__RFQDN_` prefix
        if b.get(1) != Some(&b'_') {
            return 0;
        }
        i = 2;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'.') {
            i += 1;
        }
        if b.get(i) != Some(&b'_') {
            return 0;
        }
        i += 1;
    }
    if !b.get(i).is_some_and(|c| c.is_ascii_alphabetic()) {
        return 0;
    }
    i += 1;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-' || b[i] == b'_') {
        i += 1;
    }
    i
}

/// QEMU's `keyval_parse`: `key=value` elements separated by `,` (`,,` is a literal comma in a
/// value), dotted keys building nested members, a bare first element standing for
/// `implied=element`, and a bare `help` or `?` anywhere asking for help.
fn parse_keyval(text: &str, implied: &str) -> Result<(Vec<(String, Kv)>, bool), String> {
    let mut root = Vec::new();
    let mut help = false;
    let mut implied = Some(implied);
    let mut rest = text;
    while !rest.is_empty() {
        let len = rest.find(['=', ',']).unwrap_or(rest.len());
        let bare = !rest[len..].starts_with('=');
        if len > 0 && bare && (&rest[..len] == "help" || &rest[..len] == "?") {
            help = true;
            rest = rest[len..].strip_prefix(',').unwrap_or(&rest[len..]);
            implied = None;
            continue;
        }
        if let (true, true, Some(key)) = (len > 0, bare, implied) {
            put(&mut root, &[key], key, Kv::Str(rest[..len].to_string()))?;
            rest = rest[len..].strip_prefix(',').unwrap_or(&rest[len..]);
            implied = None;
            continue;
        }
        implied = None;
        let key = &rest[..len];
        let mut fragments = Vec::new();
        let mut s = 0;
        loop {
            let frag = &key[s..];
            let flen = if s > 0 && frag.starts_with(|c: char| c.is_ascii_digit()) {
                frag.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(frag.len())
            } else {
                qapi_name_len(frag)
            };
            if flen == 0 || (flen < frag.len() && !frag[flen..].starts_with('.')) {
                return Err(format!("Invalid parameter '{key}'"));
            }
            if flen >= 128 {
                let what = if fragments.is_empty() && flen == frag.len() {
                    "Parameter"
                } else {
                    "Parameter fragment"
                };
                return Err(format!("{what} '{}' is too long", &frag[..flen]));
            }
            fragments.push(&frag[..flen]);
            s += flen;
            if s >= key.len() {
                break;
            }
            s += 1;
        }
        if bare {
            return Err(format!("Expected '=' after parameter '{key}'"));
        }
        let mut value = String::new();
        let mut chars = rest[len + 1..].char_indices();
        let mut consumed = rest.len() - len - 1;
        while let Some((i, c)) = chars.next() {
            if c == ',' {
                if rest[len + 1 + i + 1..].starts_with(',') {
                    chars.next();
                    value.push(',');
                    continue;
                }
                consumed = i + 1;
                break;
            }
            value.push(c);
        }
        put(&mut root, &fragments, key, Kv::Str(value))?;
        rest = &rest[len + 1 + consumed..];
    }
    Ok((root, help))
}

/// Stores `value` under the key path `fragments` (the whole key is `key`, for messages).
fn put(
    dict: &mut Vec<(String, Kv)>,
    fragments: &[&str],
    key: &str,
    value: Kv,
) -> Result<(), String> {
    let (first, rest) = fragments.split_first().expect("a key has a fragment");
    let pos = dict.iter().position(|(k, _)| k == first);
    if rest.is_empty() {
        match pos {
            Some(i) if matches!(dict[i].1, Kv::Dict(_)) => {
                Err(format!("Parameters '{key}.*' used inconsistently"))
            }
            Some(i) => {
                dict[i].1 = value;
                Ok(())
            }
            None => {
                dict.push((first.to_string(), value));
                Ok(())
            }
        }
    } else {
        let i = match pos {
            Some(i) => i,
            None => {
                dict.push((first.to_string(), Kv::Dict(Vec::new())));
                dict.len() - 1
            }
        };
        match &mut dict[i].1 {
            Kv::Dict(sub) => put(sub, rest, key, value),
            Kv::Str(_) => {
                // The message names the key up to this fragment.
                let upto = key.len() - rest.iter().map(|f| f.len() + 1).sum::<usize>();
                Err(format!(
                    "Parameters '{}.*' used inconsistently",
                    &key[..upto]
                ))
            }
        }
    }
}

/// The QAPI input visitor over parsed keyval members, with its messages.
struct Visit<'a> {
    args: &'a [(String, Kv)],
}

impl<'a> Visit<'a> {
    fn optional_str(&mut self, name: &str) -> Result<Option<&'a str>, String> {
        match get(self.args, name) {
            None => Ok(None),
            Some(Kv::Str(s)) => Ok(Some(s.as_str())),
            Some(Kv::Dict(_)) => Err(format!("Parameters '{name}.*' are unexpected")),
        }
    }

    fn required_str(&mut self, name: &str) -> Result<&'a str, String> {
        self.optional_str(name)?
            .ok_or_else(|| format!("Parameter '{name}' is missing"))
    }

    fn no_other_keys(&self, members: &[&str]) -> Result<(), String> {
        match self
            .args
            .iter()
            .find(|(k, _)| !members.contains(&k.as_str()))
        {
            Some((k, _)) => Err(format!("Parameter '{k}' is unexpected")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(objects: &mut Objects, text: &str) -> Result<Created, String> {
        objects.add_from_cmdline(text, Path::new("/nonexistent-base"))
    }

    #[test]
    fn secrets_raw_and_base64() {
        let mut o = Objects::default();
        assert_eq!(
            add(&mut o, "secret,id=sec0,data=hunter0"),
            Ok(Created::Object)
        );
        assert_eq!(
            add(&mut o, "secret,id=b,data=YWJj,format=base64"),
            Ok(Created::Object)
        );
        assert_eq!(
            add(&mut o, "qom-type=secret,id=c,data=a,,b"),
            Ok(Created::Object)
        );
        assert_eq!(o.secret("sec0"), Ok(&b"hunter0"[..]));
        assert_eq!(o.secret("b"), Ok(&b"abc"[..]));
        assert_eq!(o.secret("c"), Ok(&b"a,b"[..]));
        assert_eq!(o.secret("x"), Err("No secret with id 'x'".into()));
        assert_eq!(
            add(&mut o, "secret,id=b,data=x"),
            Err("attempt to add duplicate property 'b' to object (type 'container')".into())
        );
    }

    #[test]
    fn messages_as_qemu_prints_them() {
        let mut o = Objects::default();
        let cases = [
            ("foo", "Parameter 'qom-type' does not accept value 'foo'"),
            ("secret", "Parameter 'id' is missing"),
            ("", "Parameter 'qom-type' is missing"),
            ("id=x", "Parameter 'qom-type' is missing"),
            ("secret,id=x", "Either 'file' or 'data' must be provided"),
            ("secret,=x", "Invalid parameter ''"),
            ("secret,id", "Expected '=' after parameter 'id'"),
            ("secret,1=2", "Invalid parameter '1'"),
            (
                "secret,id=s,data=a,bogus=1",
                "Parameter 'bogus' is unexpected",
            ),
            ("secret,id=s,data=a,a.b=1", "Parameter 'a' is unexpected"),
            (
                "secret,id=s,data=a,id.x=1",
                "Parameters 'id.*' used inconsistently",
            ),
            ("secret,id.a=1", "Parameters 'id.*' are unexpected"),
            (
                "secret,id=s,data=a,format=foo",
                "Parameter 'format' does not accept value 'foo'",
            ),
            (
                "secret,id=s,data=!!,format=base64",
                "Base64 data contains invalid characters",
            ),
            (
                "secret,id=s,data=a,file=/dev/null",
                "'file' and 'data' are mutually exclusive",
            ),
            (
                "secret,id=s,data=a,keyid=s",
                "Secret with id 's' has no data",
            ),
            ("secret,id=s,data=a,keyid=nope", "No secret with id 'nope'"),
            ("secret,id=s,data=a,_x=1", "Invalid parameter '_x'"),
            (
                "secret,id=s,data=a,__a.b_c=1",
                "Parameter '__a.b_c' is unexpected",
            ),
            ("help,secret", "Expected '=' after parameter 'secret'"),
        ];
        for (text, want) in cases {
            assert_eq!(add(&mut o, text), Err(want.to_string()), "{text}");
        }
        assert_eq!(add(&mut o, "secret,id=0bad,data=1"), Err(bad_id_message()));
    }

    #[test]
    fn help() {
        let mut o = Objects::default();
        for text in ["help", "?", "foo,help", "id=x,help"] {
            match add(&mut o, text) {
                Ok(Created::Help(h)) => {
                    assert!(h.starts_with("List of user creatable objects:\n  authz-list\n"))
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(
            matches!(add(&mut o, "secret,help"), Ok(Created::Help(h)) if h.starts_with("secret options:\n"))
        );
    }

    #[test]
    fn glib_base64_is_lenient() {
        assert_eq!(glib_base64_decode(b"YWJj"), b"abc");
        assert_eq!(glib_base64_decode(b"YQ=="), b"a");
        assert_eq!(glib_base64_decode(b"YWI="), b"ab");
        assert_eq!(glib_base64_decode(b"a"), b"");
        assert_eq!(glib_base64_decode(b"YW\nJj"), b"abc");
    }
}
