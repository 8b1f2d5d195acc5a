//! Record file names: an injective, file-system-safe encoding of keys.
//!
//! Bytes `A-Z a-z 0-9 - _` and `.` (except as the first character) stay as they are; every
//! other byte, `/`, `%` and NUL among them, becomes `%XX`. So no name is `.` or `..`, none
//! holds a separator, none starts with `.` (the store's own files do), and two keys never
//! share a name. A name longer than [`MAX_PLAIN`] bytes is replaced by `~` and the SHA-256 of
//! the key; the record inside still holds the key, which `list` reads back.

use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// The longest encoded name used as it is (file systems allow 255 bytes).
pub const MAX_PLAIN: usize = 200;

/// The file name of `key`.
pub fn encode(key: &str) -> String {
    let mut name = String::with_capacity(key.len());
    for (i, b) in key.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if keep {
            name.push(b as char);
        } else {
            let _ = write!(name, "%{b:02X}");
        }
    }
    if name.len() > MAX_PLAIN {
        let digest = Sha256::digest(key.as_bytes());
        name.clear();
        name.push('~');
        for b in digest {
            let _ = write!(name, "{b:02x}");
        }
    }
    name
}

/// Whether `name` is a hashed name, whose key must be read from the record.
pub fn is_hashed(name: &str) -> bool {
    name.starts_with('~')
}

/// The key of a plain (not hashed) name; `None` for anything [`encode`] cannot produce.
pub fn decode(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let key = String::from_utf8(out).ok()?;
    (encode(&key) == name).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangerous_keys_become_flat_safe_names() {
        for (key, name) in [
            ("..", "%2E."),
            (".", "%2E"),
            ("../etc/passwd", "%2E.%2Fetc%2Fpasswd"),
            ("/abs", "%2Fabs"),
            ("a%2Fb", "a%252Fb"),
            ("sandbox/1/config", "sandbox%2F1%2Fconfig"),
            ("v1.2", "v1.2"),
        ] {
            assert_eq!(encode(key), name);
            assert_eq!(decode(name).as_deref(), Some(key));
        }
    }

    #[test]
    fn encoding_is_injective_on_lookalikes() {
        let keys = ["a/b", "a%2Fb", "a%2fb", "A/b", "a_2Fb", "ü", "%C3%BC"];
        let names: std::collections::HashSet<_> = keys.iter().map(|k| encode(k)).collect();
        assert_eq!(names.len(), keys.len());
    }

    #[test]
    fn long_keys_are_hashed_and_names_stay_short() {
        let key = "/".repeat(1024);
        let name = encode(&key);
        assert!(is_hashed(&name) && name.len() == 65, "{name}");
        assert!(decode(&name).is_none());
    }

    #[test]
    fn non_canonical_names_do_not_decode() {
        for name in ["%2f", "%zz", "%", ".x", "a%2", "%FF"] {
            assert_eq!(decode(name), None, "{name}");
        }
    }
}
