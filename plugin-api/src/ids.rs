//! The ids the runtime hands to plugins (sandbox, container and process ids) and the one rule
//! they follow. Every id a plugin receives from the runtime passes [`is_valid_id`], so a plugin
//! may use one as a file name or a command-line argument as it is.

/// The longest id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The rule of [`is_valid_id`] in words, for error messages.
pub const ID_RULE: &str = "1 to 64 characters of A-Z, a-z, 0-9, '_', '.' and '-', not starting with '.' or '-'";

/// Whether `id` follows the rule: 1 to [`MAX_ID_LEN`] bytes of `A-Z a-z 0-9 _ . -`, not
/// starting with `.` (no hidden or relative file names) or `-` (nothing a command line takes
/// for an option).
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && !id.starts_with(['.', '-']) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["a", "web-1", "A.b_c", &"x".repeat(MAX_ID_LEN)] {
            assert!(is_valid_id(good), "{good:?}");
        }
        for bad in ["", ".", "..", ".hidden", "-rf", "a/b", "a b", "é", &"x".repeat(MAX_ID_LEN + 1)] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
