//! The template factory's settings: the `[factory]` table's own keys (or `[factory.template]`
//! under a cache), as JSON.

use plugin_api::PluginError;
use serde::Deserialize;
use std::path::PathBuf;

/// Where the template lives when the settings do not say: on a tmpfs, so its RAM file's pages
/// are memory, not disk.
pub const DEFAULT_PATH: &str = "/dev/shm/sandbox-runtime/template";

/// `path = "/dev/shm/..."`: the template's directory.
#[derive(Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    path: Option<PathBuf>,
}

/// The checked settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The template's directory (absolute; made 0700 when the template is made).
    pub path: PathBuf,
}

impl Settings {
    /// Parses and checks the settings; the error names the key.
    pub fn parse(bytes: &[u8]) -> Result<Settings, PluginError> {
        let trimmed = bytes.trim_ascii();
        let raw: Raw = if trimmed.is_empty() || trimmed == b"null" {
            Raw::default()
        } else {
            plugin_api::settings::parse("template factory settings", trimmed)?
        };
        let path = raw.path.unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        let text = path.to_str().unwrap_or("");
        let bad = |why: &str| Err(PluginError::invalid_input(format!("template factory settings: path = {path:?}: {why}")));
        if !path.is_absolute() {
            return bad("must be an absolute path");
        }
        if !text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b)) {
            return bad("must hold only ASCII letters, digits and / . _ - +");
        }
        if path.parent().is_none() || path.file_name().is_none() || text.ends_with('/') || text.contains("/../") || text.ends_with("/..") {
            return bad("must name a directory below another, without .. or a trailing /");
        }
        if text.len() > 200 {
            return bad("is longer than 200 bytes");
        }
        Ok(Settings { path })
    }

    /// The lock file beside the template's directory (`<path>.lock`).
    pub fn lock_path(&self) -> PathBuf {
        let mut name = self.path.as_os_str().to_owned();
        name.push(".lock");
        PathBuf::from(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        Settings::parse(json.as_bytes()).unwrap_err().message.to_string()
    }

    #[test]
    fn the_path_defaults_to_a_tmpfs_and_is_checked() {
        for empty in ["", "null", "{}"] {
            assert_eq!(Settings::parse(empty.as_bytes()).unwrap().path, PathBuf::from(DEFAULT_PATH));
        }
        let s = Settings::parse(br#"{"path": "/dev/shm/t1"}"#).unwrap();
        assert_eq!((s.path.to_str(), s.lock_path().to_str()), (Some("/dev/shm/t1"), Some("/dev/shm/t1.lock")));
        assert!(error(r#"{"path": "t1"}"#).contains("path = \"t1\": must be an absolute path"));
        assert!(error(r#"{"path": "/dev/shm/a b"}"#).contains("only ASCII"));
        assert!(error(r#"{"path": "/"}"#).contains("below another"));
        assert!(error(r#"{"path": "/dev/shm/../etc"}"#).contains("without .."));
        let e = error(r#"{"path": "/dev/shm/t", "size": 2}"#);
        assert!(e.contains("unknown field `size`"), "{e}");
    }
}
