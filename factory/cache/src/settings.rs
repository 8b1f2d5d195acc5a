//! The cache's settings: the `[factory]` table's own keys, as JSON.

use plugin_api::PluginError;
use serde::Deserialize;

/// The largest pool.
pub const MAX_SIZE: u32 = 64;

/// `size = N`: how many VMs the pool keeps booted to agent-ready.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How many VMs the pool keeps ready (1 to [`MAX_SIZE`]).
    pub size: u32,
}

impl Settings {
    /// Parses and checks the settings; the error names the key.
    pub fn parse(bytes: &[u8]) -> Result<Settings, PluginError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() || trimmed == b"null" || trimmed == b"{}" {
            return Err(PluginError::invalid_input("cache factory settings: missing key `size` (how many VMs to keep ready, 1 to 64)"));
        }
        let settings: Settings = plugin_api::settings::parse("cache factory settings", trimmed)?;
        if !(1..=MAX_SIZE).contains(&settings.size) {
            return Err(PluginError::invalid_input(format!("cache factory settings: size = {}: must be 1 to {MAX_SIZE}", settings.size)));
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        Settings::parse(json.as_bytes()).unwrap_err().message.to_string()
    }

    #[test]
    fn size_is_required_and_bounded_and_nothing_else_is_taken() {
        assert_eq!(Settings::parse(br#"{"size": 2}"#).unwrap(), Settings { size: 2 });
        assert!(error("{}").contains("missing key `size`"));
        assert!(error("").contains("missing key `size`"));
        assert_eq!(error(r#"{"size": 0}"#), "cache factory settings: size = 0: must be 1 to 64");
        assert!(error(r#"{"size": 65}"#).contains("size = 65"));
        let e = error(r#"{"size": 2, "sise": 3}"#);
        assert!(e.contains("unknown field `sise`") && !e.contains("column"), "{e}");
        assert!(error(r#"{"size": "two"}"#).contains("invalid type"));
    }
}
