//! The record file format.
//!
//! ```text
//! magic    8 bytes  "SBXREC1\n"
//! key_len  u32 LE
//! val_len  u64 LE
//! crc32    u32 LE   over key and value
//! key      key_len bytes (UTF-8)
//! value    val_len bytes
//! ```

use thiserror::Error;

const MAGIC: &[u8; 8] = b"SBXREC1\n";
const HEADER: usize = 8 + 4 + 8 + 4;

/// Why a record file could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// The file is shorter than its header says.
    #[error("truncated: {found} bytes, the header needs {expected}")]
    Truncated {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// The file is longer than its header says.
    #[error("{extra} unexpected bytes after the record")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// The file does not start with the record magic.
    #[error("not a record file (bad magic)")]
    BadMagic,
    /// The checksum does not match.
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the content.
        computed: u32,
    },
    /// The key is not UTF-8.
    #[error("the stored key is not UTF-8")]
    KeyNotUtf8,
}

/// Encodes a record.
pub fn encode(key: &str, value: &[u8]) -> Vec<u8> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key.as_bytes());
    crc.update(value);
    let mut out = Vec::with_capacity(HEADER + key.len() + value.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    out
}

/// Decodes a record into its key and value, checking length and checksum.
pub fn decode(bytes: &[u8]) -> Result<(&str, &[u8]), RecordError> {
    let found = bytes.len() as u64;
    if bytes.len() < HEADER {
        if !MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
            return Err(RecordError::BadMagic);
        }
        return Err(RecordError::Truncated { expected: HEADER as u64, found });
    }
    if &bytes[..8] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    let key_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default()) as u64;
    let val_len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    let stored = u32::from_le_bytes(bytes[20..24].try_into().unwrap_or_default());
    let expected = (HEADER as u64).saturating_add(key_len).saturating_add(val_len);
    if found < expected {
        return Err(RecordError::Truncated { expected, found });
    }
    if found > expected {
        return Err(RecordError::TrailingBytes { extra: found - expected });
    }
    let (key, value) = bytes[HEADER..].split_at(key_len as usize);
    let computed = crc32fast::hash(&bytes[HEADER..]);
    if computed != stored {
        return Err(RecordError::Checksum { stored, computed });
    }
    let key = std::str::from_utf8(key).map_err(|_| RecordError::KeyNotUtf8)?;
    Ok((key, value))
}

/// Decodes only the key, for listing hashed names (still checks the whole record).
pub fn key_of(bytes: &[u8]) -> Result<String, RecordError> {
    decode(bytes).map(|(k, _)| k.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_detected() {
        let rec = encode("a/b", b"hello");
        assert_eq!(decode(&rec), Ok(("a/b", &b"hello"[..])));
        for len in 0..rec.len() {
            let err = decode(&rec[..len]).unwrap_err();
            assert!(matches!(err, RecordError::Truncated { .. }), "len {len}: {err}");
        }
    }

    #[test]
    fn flipped_bits_and_garbage_are_detected() {
        let rec = encode("k", b"value");
        for i in 24..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(matches!(decode(&bad), Err(RecordError::Checksum { .. })), "byte {i}");
        }
        assert_eq!(decode(b"garbage that is long enough to have a header"), Err(RecordError::BadMagic));
        let mut long = rec.clone();
        long.push(0);
        assert_eq!(decode(&long), Err(RecordError::TrailingBytes { extra: 1 }));
    }

    #[test]
    fn a_huge_length_in_the_header_is_an_error_not_an_allocation() {
        let mut rec = encode("k", b"v");
        rec[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&rec), Err(RecordError::Truncated { .. })));
    }
}
