//! Stored values: `[version 1][crc32 LE][value]`.

use thiserror::Error;

const VERSION: u8 = 1;

/// Why a stored value could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ValueError {
    /// Fewer than the 5 header bytes.
    #[error("{0} bytes, shorter than the 5-byte header")]
    TooShort(usize),
    /// An unknown format version byte.
    #[error("unknown format version {0}")]
    Version(u8),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
}

/// Frames a value for storage.
pub fn encode(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + value.len());
    out.push(VERSION);
    out.extend_from_slice(&crc32fast::hash(value).to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Checks and unframes a stored value.
pub fn decode(stored: &[u8]) -> Result<&[u8], ValueError> {
    if stored.len() < 5 {
        return Err(ValueError::TooShort(stored.len()));
    }
    if stored[0] != VERSION {
        return Err(ValueError::Version(stored[0]));
    }
    let crc = u32::from_le_bytes([stored[1], stored[2], stored[3], stored[4]]);
    let value = &stored[5..];
    if crc32fast::hash(value) != crc {
        return Err(ValueError::Checksum);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        assert_eq!(decode(&encode(b"")), Ok(&b""[..]));
        let mut v = encode(b"hello");
        assert_eq!(decode(&v), Ok(&b"hello"[..]));
        v[6] ^= 1;
        assert_eq!(decode(&v), Err(ValueError::Checksum));
        assert_eq!(decode(b"abc"), Err(ValueError::TooShort(3)));
        assert_eq!(decode(b"garbage"), Err(ValueError::Version(b'g')));
    }
}
