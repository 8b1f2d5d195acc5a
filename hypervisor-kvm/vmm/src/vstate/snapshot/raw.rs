//! KVM's plain-old-data structs in a state file: each one as a hex string of exactly its size,
//! so a truncated or padded value is refused instead of read as zeros.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// A KVM struct (`kvm_regs`, `kvm_xsave`, ...) serialized as hex of its bytes; compared and
/// cloned byte for byte (not every KVM struct derives `Clone` or `PartialEq`).
pub struct Raw<T>(pub T);

impl<T: IntoBytes + FromBytes + Immutable> Clone for Raw<T> {
    fn clone(&self) -> Self {
        Raw(T::read_from_bytes(self.0.as_bytes()).expect("a struct's own bytes fit it"))
    }
}

impl<T: IntoBytes + Immutable> PartialEq for Raw<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes() == other.0.as_bytes()
    }
}

impl<T: IntoBytes + Immutable> Eq for Raw<T> {}

impl<T: IntoBytes + Immutable> std::fmt::Debug for Raw<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Raw<{}>({} bytes)", std::any::type_name::<T>(), self.0.as_bytes().len())
    }
}

impl<T: IntoBytes + Immutable> Serialize for Raw<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex(self.0.as_bytes()))
    }
}

impl<'de, T: FromBytes> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = unhex(&text).map_err(serde::de::Error::custom)?;
        let want = std::mem::size_of::<T>();
        if bytes.len() != want {
            return Err(serde::de::Error::custom(format!(
                "{} holds {} bytes, {want} expected",
                std::any::type_name::<T>().rsplit("::").next().unwrap_or("a KVM struct"),
                bytes.len()
            )));
        }
        T::read_from_bytes(&bytes).map(Raw).map_err(|_| serde::de::Error::custom("bytes do not fit the struct"))
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("hex of odd length {}", text.len()));
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(format!("{:?} is not a lowercase hex digit", c as char)),
    };
    text.as_bytes().chunks(2).map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::Raw;
    use kvm_bindings::kvm_regs;

    #[test]
    fn round_trips_and_refuses_a_wrong_size() {
        let regs = kvm_regs { rip: 0xffff_ffff_8100_0000, rax: 7, rflags: 2, ..Default::default() };
        let json = serde_json::to_string(&Raw(regs)).unwrap();
        let back: Raw<kvm_regs> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.0, regs);

        let odd = format!("\"{}\"", &json[1..json.len() - 2]);
        let e = serde_json::from_str::<Raw<kvm_regs>>(&odd).unwrap_err().to_string();
        assert!(e.contains("odd length"), "{e}");
        let short = format!("\"{}\"", &json[1..json.len() - 3]);
        let e = serde_json::from_str::<Raw<kvm_regs>>(&short).unwrap_err().to_string();
        assert!(e.contains("kvm_regs holds 143 bytes, 144 expected"), "{e}");
        let e = serde_json::from_str::<Raw<kvm_regs>>("\"zz\"").unwrap_err().to_string();
        assert!(e.contains("not a lowercase hex digit"), "{e}");
    }
}
