//! What the plugins' own configs (the JSON object the host gives `new_hypervisor`) share:
//! empty input or `null` for all defaults, and the checks of the keys every plugin has
//! (`run_dir`, `agent_ports`, `stop_timeout_ms`, the VMM program).

use crate::agent::MAX_AGENT_PORTS;
use crate::spec::option_safe_path;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// The longest `stop_timeout_ms`.
pub const MAX_STOP_TIMEOUT_MS: u64 = 600_000;

/// Why a plugin config is invalid.
#[derive(Debug, thiserror::Error)]
pub enum PluginConfigError {
    /// The JSON did not parse (an unknown key, a wrong type, a bad enum value).
    #[error("{config}: {message}")]
    Malformed {
        /// Which config (`kvm plugin config`).
        config: &'static str,
        /// serde_json's message, which names the key, without its position in the JSON.
        message: String,
    },
    /// A key has a value out of its range.
    #[error("{config}: {key} = {value}: {why}")]
    BadValue {
        /// Which config.
        config: &'static str,
        /// The key.
        key: &'static str,
        /// The value, as given.
        value: String,
        /// What is allowed.
        why: &'static str,
    },
}

/// Parses and checks a plugin config; its errors start with the config's name
/// (`hypervisor-qemu config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigCheck(pub &'static str);

impl ConfigCheck {
    /// Parses the JSON. Empty input and `null` mean all defaults.
    pub fn parse<T: Default + DeserializeOwned>(self, bytes: &[u8]) -> Result<T, PluginConfigError> {
        let trimmed = bytes.trim_ascii();
        if trimmed.is_empty() || trimmed == b"null" {
            return Ok(T::default());
        }
        serde_json::from_slice(trimmed)
            .map_err(|e| PluginConfigError::Malformed { config: self.0, message: plugin_api::settings::json_message(&e) })
    }

    /// The error for `key = value`, which is not `why`.
    pub fn bad(self, key: &'static str, value: String, why: &'static str) -> PluginConfigError {
        PluginConfigError::BadValue { config: self.0, key, value, why }
    }

    /// The VMM program (`key`): a non-empty name or path without NUL.
    pub fn program(self, key: &'static str, program: &str) -> Result<(), PluginConfigError> {
        if program.is_empty() || program.contains('\0') {
            return Err(self.bad(key, format!("{program:?}"), "must be a non-empty program name or path"));
        }
        Ok(())
    }

    /// `agent_ports`: 1 to [`MAX_AGENT_PORTS`].
    pub fn agent_ports(self, agent_ports: u32) -> Result<(), PluginConfigError> {
        if !(1..=MAX_AGENT_PORTS).contains(&agent_ports) {
            return Err(self.bad("agent_ports", agent_ports.to_string(), "must be 1 to 8"));
        }
        Ok(())
    }

    /// `stop_timeout_ms`: 1 to [`MAX_STOP_TIMEOUT_MS`].
    pub fn stop_timeout_ms(self, stop_timeout_ms: u64) -> Result<(), PluginConfigError> {
        if stop_timeout_ms == 0 || stop_timeout_ms > MAX_STOP_TIMEOUT_MS {
            return Err(self.bad("stop_timeout_ms", stop_timeout_ms.to_string(), "must be 1 to 600000"));
        }
        Ok(())
    }

    /// `run_dir`, made absolute against the current directory (the VMM runs from `/`) and
    /// safe to put in option strings.
    pub fn run_dir(self, run_dir: &Path) -> Result<PathBuf, PluginConfigError> {
        if run_dir.as_os_str().is_empty() {
            return Err(self.bad("run_dir", "\"\"".into(), "must be a directory path"));
        }
        let run_dir = if run_dir.is_relative() {
            let cwd = std::env::current_dir()
                .map_err(|_| self.bad("run_dir", format!("{run_dir:?}"), "is relative and the current directory is unknown"))?;
            cwd.join(run_dir)
        } else {
            run_dir.to_owned()
        };
        if !option_safe_path(&run_dir) {
            return Err(self.bad("run_dir", format!("{run_dir:?}"), "must be UTF-8 without ',' or control characters"));
        }
        Ok(run_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: ConfigCheck = ConfigCheck("test config");

    #[derive(serde::Deserialize, Debug, Default, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Config {
        n: u32,
    }

    #[test]
    fn defaults_and_malformed_json() {
        for input in [&b""[..], b"null", b" \n", b"{}"] {
            assert_eq!(CHECK.parse::<Config>(input).unwrap(), Config::default(), "{input:?}");
        }
        assert_eq!(CHECK.parse::<Config>(br#"{"n": 3}"#).unwrap(), Config { n: 3 });
        let e = CHECK.parse::<Config>(br#"{"m": 3}"#).unwrap_err();
        let e = error_report::chain(&e);
        assert_eq!(e, "test config: unknown field `m`, expected `n`", "the key, once, and no position in the JSON the user never wrote");
    }

    #[test]
    fn the_common_keys() {
        let error = |r: Result<(), PluginConfigError>| r.unwrap_err().to_string();
        CHECK.program("vmm", "/opt/vmm").unwrap();
        assert_eq!(error(CHECK.program("vmm", "")), "test config: vmm = \"\": must be a non-empty program name or path");
        assert!(error(CHECK.program("qemu", "a\0b")).starts_with("test config: qemu = "));
        CHECK.agent_ports(8).unwrap();
        assert_eq!(error(CHECK.agent_ports(0)), "test config: agent_ports = 0: must be 1 to 8");
        CHECK.stop_timeout_ms(600_000).unwrap();
        assert!(error(CHECK.stop_timeout_ms(600_001)).contains("stop_timeout_ms = 600001"));
        assert_eq!(CHECK.run_dir(Path::new("/tmp/r")).unwrap(), PathBuf::from("/tmp/r"));
        let relative = CHECK.run_dir(Path::new("vms")).unwrap();
        assert!(relative.is_absolute() && relative.ends_with("vms"), "{relative:?}");
        assert!(CHECK.run_dir(Path::new("")).unwrap_err().to_string().contains("run_dir = \"\""));
        assert!(CHECK.run_dir(Path::new("/tmp/a,b")).unwrap_err().to_string().contains("a,b"));
    }
}
