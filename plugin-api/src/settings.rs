//! A plugin's own settings: the JSON object the host hands `new_storage` or `new_hypervisor`,
//! made from the plugin's table of the runtime config (`[storage]`, `[hypervisor]`) less the
//! keys the core reads itself.
//!
//! ```
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct MyConfig { path: String }
//!
//! let e = plugin_api::settings::parse::<MyConfig>("my-store config", br#"{"pth": "/x"}"#).err().unwrap();
//! assert_eq!(e.message.as_str(), "my-store config: unknown field `pth`, expected `path`");
//! ```

use crate::error::PluginError;
use serde::de::DeserializeOwned;

/// Parses a plugin's settings. The error ([`ErrorKind::INVALID_INPUT`](crate::error::ErrorKind))
/// starts with `what` (`"storage-fs config"`) and names the key at fault, without serde_json's
/// position in the JSON text: the user wrote a TOML table, not that JSON, and the host adds
/// which table of which file. Refuse unknown keys with `#[serde(deny_unknown_fields)]`.
pub fn parse<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, PluginError> {
    serde_json::from_slice(bytes).map_err(|e| PluginError::invalid_input(format!("{what}: {}", json_message(&e))))
}

/// serde_json's message without its trailing ` at line L column C`.
pub fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    text.strip_suffix(&position).unwrap_or(&text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        path: String,
        #[serde(default)]
        ports: u32,
    }

    #[test]
    fn errors_name_the_key_not_the_json_position() {
        let e = |json: &str| parse::<Config>("test config", json.as_bytes()).expect_err(json).message.to_string();
        assert_eq!(e(r#"{"path": "/x", "colour": 1}"#), "test config: unknown field `colour`, expected `path` or `ports`");
        assert_eq!(e(r#"{"path": "/x", "ports": "four"}"#), "test config: invalid type: string \"four\", expected u32");
        assert_eq!(e("{}"), "test config: missing field `path`");
        assert!(parse::<Config>("test config", br#"{"path": "/x"}"#).is_ok());
    }
}
