//! The LUKS (version 1) header of an encrypted qcow2 image, read and checked as QEMU's crypto
//! layer does on an open that does no I/O (`qemu-img info`): no key is needed, the header's
//! algorithm names are resolved to QEMU's names and its key slots are checked for damage. The
//! result is what `info` shows under `encrypt:`.

use crate::block::qcow2::header::{be16, be32};

/// The on-disk header without the key material: magic, version, three names, offsets, digest,
/// salt, iterations, UUID and eight 48-byte key slots.
pub const HEADER_LEN: usize = 592;
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const SLOTS: usize = 8;
const SLOT_ENABLED: u32 = 0x00AC_71F3;
const SLOT_DISABLED: u32 = 0x0000_DEAD;
const SECTOR: u64 = 512;
const NAME_LEN: usize = 32;
/// Every key slot QEMU accepts splits its key into this many anti-forensic stripes.
const STRIPES: u32 = 4000;
/// The key slots start after the first 4 KiB: key material is laid out in units of it.
const HEADER_SECTORS: u64 = 4096 / SECTOR;

/// One key slot as `info` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub active: bool,
    pub iters: u32,
    pub stripes: u32,
    /// in bytes
    pub key_offset: u64,
}

/// A LUKS header that opened: QEMU's names for what it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuksInfo {
    pub cipher_alg: &'static str,
    pub cipher_mode: &'static str,
    pub ivgen_alg: &'static str,
    /// shown only for the essiv generator
    pub ivgen_hash_alg: Option<&'static str>,
    pub hash_alg: &'static str,
    /// in bytes
    pub payload_offset: u64,
    pub master_key_iters: u32,
    /// host bytes (see crate::host_bytes), up to the first NUL of the 40-byte field
    pub uuid: String,
    pub slots: Vec<Slot>,
}

/// QEMU's cipher algorithms LUKS can name: (LUKS name, [(key bytes, QEMU name)]).
const CIPHERS: &[(&str, &[(u32, &str)])] = &[
    ("aes", &[(16, "aes-128"), (24, "aes-192"), (32, "aes-256")]),
    ("cast5", &[(16, "cast5-128")]),
    (
        "serpent",
        &[
            (16, "serpent-128"),
            (24, "serpent-192"),
            (32, "serpent-256"),
        ],
    ),
    (
        "twofish",
        &[
            (16, "twofish-128"),
            (24, "twofish-192"),
            (32, "twofish-256"),
        ],
    ),
];
const MODES: &[&str] = &["ecb", "cbc", "xts", "ctr"];
const IVGENS: &[&str] = &["plain", "plain64", "essiv"];
/// Hash algorithms with their digest lengths.
const HASHES: &[(&str, u64)] = &[
    ("md5", 16),
    ("sha1", 20),
    ("sha224", 28),
    ("sha256", 32),
    ("sha384", 48),
    ("sha512", 64),
    ("ripemd160", 20),
    ("sm3", 32),
];

/// A name field (32 bytes, checked to hold a NUL) up to its NUL.
fn c_str(h: &[u8], at: usize) -> &[u8] {
    let field = &h[at..at + NAME_LEN];
    &field[..field.iter().position(|&c| c == 0).unwrap_or(NAME_LEN)]
}

fn shown(name: &[u8]) -> String {
    crate::host_bytes::text_of(name)
}

fn lookup(name: &[u8], table: &[&'static str], what: &str) -> Result<&'static str, String> {
    table
        .iter()
        .find(|t| t.as_bytes() == name)
        .copied()
        .ok_or_else(|| format!("{what} '{}' not supported", shown(name)))
}

fn hash_lookup(name: &[u8]) -> Result<(&'static str, u64), String> {
    HASHES
        .iter()
        .find(|(n, _)| n.as_bytes() == name)
        .copied()
        .ok_or_else(|| format!("Hash algorithm '{}' not supported", shown(name)))
}

/// The key bytes of a cipher QEMU names.
fn key_len(alg: &str) -> u64 {
    alg.rsplit('-')
        .next()
        .and_then(|b| b.parse::<u64>().ok())
        .map_or(0, |bits| bits / 8)
}

/// The cipher ESSIV uses: dm-crypt keys it with the hash's digest, so its key size follows
/// the digest length rather than the data cipher's.
fn essiv_cipher(cipher: &'static str, digest_len: u64) -> Result<&'static str, String> {
    if key_len(cipher) == digest_len {
        return Ok(cipher);
    }
    let (family, label) = match cipher.split('-').next() {
        Some("aes") => ("aes", "AES"),
        Some("serpent") => ("serpent", "Serpent"),
        Some("twofish") => ("twofish", "Twofish"),
        _ => return Err(format!("Cipher {cipher} not supported with essiv")),
    };
    CIPHERS
        .iter()
        .find(|(n, _)| *n == family)
        .and_then(|(_, sizes)| sizes.iter().find(|(k, _)| u64::from(*k) == digest_len))
        .map(|(_, n)| *n)
        .ok_or_else(|| format!("No {label} cipher with key size {digest_len} available"))
}

/// Sectors of key material a slot with `stripes` stripes takes, as cryptsetup lays it out
/// (the product wraps as the C does in 32 bits).
fn key_material_sectors(key_bytes: u32, stripes: u32) -> u32 {
    let split = u64::from(key_bytes.wrapping_mul(stripes));
    (split.div_ceil(SECTOR).div_ceil(HEADER_SECTORS) * HEADER_SECTORS) as u32
}

/// Checks a header (`HEADER_LEN` bytes) as QEMU's load, check and parse steps do, in their
/// order, with their messages.
pub fn parse(h: &[u8]) -> Result<LuksInfo, String> {
    assert_eq!(h.len(), HEADER_LEN, "the caller reads the whole header");
    if &h[..6] != MAGIC {
        return Err("Volume is not in LUKS format".into());
    }
    let version = be16(h, 6);
    if version != 1 {
        return Err(format!("LUKS version {version} is not supported"));
    }
    for (at, what) in [(8, "cipher name"), (40, "cipher mode"), (72, "hash spec")] {
        if !h[at..at + NAME_LEN].contains(&0) {
            return Err(format!("LUKS header {what} is not NUL terminated"));
        }
    }
    let payload_sector = be32(h, 104);
    if u64::from(payload_sector) < HEADER_SECTORS {
        return Err("LUKS payload is overlapping with the header".into());
    }
    let key_bytes = be32(h, 108);
    if be32(h, 164) == 0 {
        return Err("LUKS key iteration count is zero".into());
    }
    let slots: Vec<(u32, u32, u32, u32)> = (0..SLOTS)
        .map(|i| {
            let s = 208 + 48 * i;
            (be32(h, s), be32(h, s + 4), be32(h, s + 40), be32(h, s + 44))
        })
        .collect();
    // QEMU's ranges_overlap on sector ranges, in 64 bits
    let overlap = |s1: u32, l1: u32, s2: u32, l2: u32| {
        let last = |s: u32, l: u32| (u64::from(s) + u64::from(l)).wrapping_sub(1);
        !(last(s2, l2) < u64::from(s1) || last(s1, l1) < u64::from(s2))
    };
    for (i, &(active, iters, start1, stripes1)) in slots.iter().enumerate() {
        let len1 = key_material_sectors(key_bytes, stripes1);
        if stripes1 != STRIPES {
            return Err(format!(
                "Keyslot {i} is corrupted (stripes {} != {STRIPES})",
                stripes1 as i32
            ));
        }
        if active != SLOT_DISABLED && active != SLOT_ENABLED {
            return Err(format!("Keyslot {i} state (active/disable) is corrupted"));
        }
        if active == SLOT_ENABLED && iters == 0 {
            return Err(format!("Keyslot {i} iteration count is zero"));
        }
        if u64::from(start1) < HEADER_SECTORS {
            return Err(format!("Keyslot {i} is overlapping with the LUKS header"));
        }
        if start1.wrapping_add(len1) > payload_sector {
            return Err(format!(
                "Keyslot {i} is overlapping with the encrypted payload"
            ));
        }
        for (j, &(_, _, start2, stripes2)) in slots.iter().enumerate().skip(i + 1) {
            let len2 = key_material_sectors(key_bytes, stripes2);
            if overlap(start1, len1, start2, len2) {
                return Err(format!(
                    "Keyslots {i} and {j} are overlapping in the header"
                ));
            }
        }
    }
    // cipher_mode is "<mode>-<ivgen>[:<ivhash>]"
    let mode_spec = c_str(h, 40);
    let Some(dash) = mode_spec.iter().position(|&c| c == b'-') else {
        return Err(format!(
            "Unexpected cipher mode string format '{}'",
            shown(mode_spec)
        ));
    };
    let (mode_name, ivgen_spec) = (&mode_spec[..dash], &mode_spec[dash + 1..]);
    let (ivgen_name, ivhash) = match ivgen_spec.iter().position(|&c| c == b':') {
        Some(colon) => (
            &ivgen_spec[..colon],
            Some(hash_lookup(&ivgen_spec[colon + 1..])?),
        ),
        None => (ivgen_spec, None),
    };
    let cipher_mode = lookup(mode_name, MODES, "Cipher mode")?;
    let cipher_name = c_str(h, 8);
    let per_cipher_key = if cipher_mode == "xts" {
        key_bytes / 2
    } else {
        key_bytes
    };
    let cipher_alg = CIPHERS
        .iter()
        .filter(|(n, _)| n.as_bytes() == cipher_name)
        .flat_map(|(_, sizes)| sizes.iter())
        .find(|(k, _)| *k == per_cipher_key)
        .map(|(_, n)| *n)
        .ok_or_else(|| {
            format!(
                "Algorithm '{}' with key size {} bytes not supported",
                shown(cipher_name),
                per_cipher_key as i32
            )
        })?;
    let (hash_alg, _) = hash_lookup(c_str(h, 72))?;
    let ivgen_alg = lookup(ivgen_name, IVGENS, "IV generator")?;
    if ivgen_alg == "essiv" {
        let Some((_, digest_len)) = ivhash else {
            return Err("Missing IV generator hash specification".into());
        };
        essiv_cipher(cipher_alg, digest_len)?;
    }
    let uuid = &h[168..208];
    let uuid = &uuid[..uuid.iter().position(|&c| c == 0).unwrap_or(uuid.len())];
    Ok(LuksInfo {
        cipher_alg,
        cipher_mode,
        ivgen_alg,
        ivgen_hash_alg: ivhash.filter(|_| ivgen_alg == "essiv").map(|(n, _)| n),
        hash_alg,
        payload_offset: u64::from(payload_sector) * SECTOR,
        master_key_iters: be32(h, 164),
        uuid: shown(uuid),
        slots: slots
            .iter()
            .map(|&(active, iters, key_offset, stripes)| Slot {
                active: active == SLOT_ENABLED,
                iters,
                stripes,
                key_offset: u64::from(key_offset) * SECTOR,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as `qemu-img create -o encrypt.format=luks` lays it out (aes-256 xts-plain64
    /// sha256, one active slot).
    fn header() -> Vec<u8> {
        let mut h = vec![0u8; HEADER_LEN];
        h[..6].copy_from_slice(MAGIC);
        h[6..8].copy_from_slice(&1u16.to_be_bytes());
        h[8..11].copy_from_slice(b"aes");
        h[40..52].copy_from_slice(b"xts-plain64\0");
        h[72..78].copy_from_slice(b"sha256");
        h[104..108].copy_from_slice(&4040u32.to_be_bytes());
        h[108..112].copy_from_slice(&64u32.to_be_bytes());
        h[164..168].copy_from_slice(&1000u32.to_be_bytes());
        h[168..172].copy_from_slice(b"abcd");
        for i in 0..SLOTS {
            let s = 208 + 48 * i;
            let active = if i == 0 { SLOT_ENABLED } else { SLOT_DISABLED };
            h[s..s + 4].copy_from_slice(&active.to_be_bytes());
            h[s + 4..s + 8].copy_from_slice(&1000u32.to_be_bytes());
            h[s + 40..s + 44].copy_from_slice(&(8 + 504 * i as u32).to_be_bytes());
            h[s + 44..s + 48].copy_from_slice(&4000u32.to_be_bytes());
        }
        h
    }

    #[test]
    fn a_default_header_resolves_to_qemus_names() {
        let info = parse(&header()).unwrap();
        assert_eq!(
            (
                info.cipher_alg,
                info.cipher_mode,
                info.ivgen_alg,
                info.hash_alg
            ),
            ("aes-256", "xts", "plain64", "sha256")
        );
        assert_eq!(info.payload_offset, 4040 * 512);
        assert_eq!(info.slots[1].key_offset, 512 * 512);
        assert_eq!(info.uuid, "abcd");
    }

    #[test]
    fn damage_is_named_in_qemus_order() {
        let with = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut h = header();
            f(&mut h);
            parse(&h).unwrap_err()
        };
        assert_eq!(with(&|h| h[0] = b'l'), "Volume is not in LUKS format");
        assert_eq!(with(&|h| h[7] = 2), "LUKS version 2 is not supported");
        assert_eq!(
            with(&|h| h[208 + 48 + 3] = 0),
            "Keyslot 1 state (active/disable) is corrupted"
        );
        assert_eq!(
            with(&|h| h[208 + 48 * 2 + 44..208 + 48 * 2 + 48].fill(0)),
            "Keyslot 2 is corrupted (stripes 0 != 4000)"
        );
        assert_eq!(
            with(&|h| h[208 + 43] = 200),
            "Keyslots 0 and 1 are overlapping in the header"
        );
        assert_eq!(
            with(&|h| h[104..108].fill(0)),
            "LUKS payload is overlapping with the header"
        );
        assert_eq!(
            with(&|h| h[106..108].copy_from_slice(&[0x0f, 0])),
            "Keyslot 7 is overlapping with the encrypted payload"
        );
        assert_eq!(
            with(&|h| h[208 + 40..208 + 44].fill(0)),
            "Keyslot 0 is overlapping with the LUKS header"
        );
        assert_eq!(
            with(&|h| h[8..40].fill(b'a')),
            "LUKS header cipher name is not NUL terminated"
        );
        assert_eq!(
            with(&|h| h[43] = b'_'),
            "Unexpected cipher mode string format 'xts_plain64'"
        );
        assert_eq!(
            with(&|h| h[111] = 40),
            "Algorithm 'aes' with key size 20 bytes not supported"
        );
        assert_eq!(
            with(&|h| h[44..52].copy_from_slice(b"essiv\0\0\0")),
            "Missing IV generator hash specification"
        );
        assert_eq!(
            with(&|h| h[40..55].copy_from_slice(b"cbc-essiv:sha1\0")),
            "Algorithm 'aes' with key size 64 bytes not supported"
        );
    }

    #[test]
    fn essiv_keys_its_cipher_by_the_digest_length() {
        assert_eq!(essiv_cipher("aes-128", 32), Ok("aes-256"));
        assert_eq!(
            essiv_cipher("twofish-192", 20).unwrap_err(),
            "No Twofish cipher with key size 20 available"
        );
        assert_eq!(
            essiv_cipher("cast5-128", 32).unwrap_err(),
            "Cipher cast5-128 not supported with essiv"
        );
        assert_eq!(essiv_cipher("cast5-128", 16), Ok("cast5-128"));
    }
}
