//! The plugin's own config (the JSON object the host gives `new_hypervisor`), and finding the
//! `vmm` binary.

use serde::{Deserialize, Deserializer};
use std::path::PathBuf;
use hypervisor_framework::config::ConfigCheck;
pub use hypervisor_framework::config::PluginConfigError;

/// The name of the VMM binary this crate builds.
pub const VMM_BINARY: &str = "vmm";
/// Where VM directories go by default.
pub const DEFAULT_RUN_DIR: &str = "/run/sandbox-runtime/kvm";
/// The most serial agent ports a VM may have.
pub const MAX_AGENT_PORTS: u32 = hypervisor_framework::agent::MAX_AGENT_PORTS;
/// The longest Linux interface name (`IFNAMSIZ` less its NUL).
pub const MAX_TAP_NAME: usize = 15;
/// Checks this config; its errors start with `kvm plugin config`.
const CHECK: ConfigCheck = ConfigCheck("kvm plugin config");

/// The guest's network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// No NIC.
    #[default]
    None,
    /// A virtio-net NIC on an existing host tap device (`"tap:<name>"`).
    Tap(String),
}

/// As the config writes it (`"none"`, `"tap:<name>"`): a template's descriptor records it.
impl serde::Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Network::None => s.serialize_str("none"),
            Network::Tap(name) => s.serialize_str(&format!("tap:{name}")),
        }
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = |why: &str| serde::de::Error::custom(format!("network {text:?}: {why}"));
        if text == "none" {
            return Ok(Network::None);
        }
        let Some(name) = text.strip_prefix("tap:") else {
            return Err(bad("expected \"none\" or \"tap:<name>\""));
        };
        let ok = !name.is_empty()
            && name.len() <= MAX_TAP_NAME
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(bad(
                "the tap name must be 1 to 15 characters of A-Z, a-z, 0-9, '_', '.' and '-'",
            ));
        }
        Ok(Network::Tap(name.to_owned()))
    }
}

/// The plugin config, every key optional:
/// `{"vmm": "/usr/libexec/vmm", "run_dir": "/run/sandbox-runtime/kvm", "agent_ports": 4,
/// "vsock": true, "network": "none", "stop_timeout_ms": 10000}`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KvmConfig {
    /// The `vmm` binary: a path, or a name looked up in `PATH`. `None`: `vmm` next to the
    /// current executable, then in `PATH`.
    pub vmm: Option<String>,
    /// The directory under which each VM gets `<run_dir>/<sandbox_id>/`.
    pub run_dir: PathBuf,
    /// How many serial agent ports (`agent.0` ...) each VM has.
    pub agent_ports: u32,
    /// Whether each VM gets a virtio-vsock device (hybrid vsock: `<dir>/vsock.sock`).
    pub vsock: bool,
    /// The guest's network.
    pub network: Network,
    /// How long `stop_vm` waits for the vmm to quit before killing it.
    pub stop_timeout_ms: u64,
}

impl Default for KvmConfig {
    fn default() -> Self {
        KvmConfig {
            vmm: None,
            run_dir: DEFAULT_RUN_DIR.into(),
            agent_ports: 4,
            vsock: true,
            network: Network::None,
            stop_timeout_ms: 10_000,
        }
    }
}

impl KvmConfig {
    /// Parses and checks the config. Empty input and `null` mean all defaults. A relative
    /// `run_dir` is made absolute against the current directory (the vmm runs from `/`).
    pub fn parse(bytes: &[u8]) -> Result<KvmConfig, PluginConfigError> {
        let mut config: KvmConfig = CHECK.parse(bytes)?;
        if let Some(vmm) = &config.vmm {
            CHECK.program("vmm", vmm)?;
        }
        CHECK.agent_ports(config.agent_ports)?;
        CHECK.stop_timeout_ms(config.stop_timeout_ms)?;
        config.run_dir = CHECK.run_dir(&config.run_dir)?;
        Ok(config)
    }

    /// Finds the `vmm` binary. Returns the places it looked when it is nowhere.
    pub fn find_vmm(&self) -> Result<PathBuf, Vec<PathBuf>> {
        if let Some(vmm) = &self.vmm {
            return hypervisor_framework::find_program(vmm).ok_or_else(|| vec![PathBuf::from(vmm)]);
        }
        let beside_exe = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(VMM_BINARY)));
        let candidates: Vec<PathBuf> = beside_exe
            .into_iter()
            .chain(
                hypervisor_framework::path_dirs()
                    .into_iter()
                    .map(|d| d.join(VMM_BINARY)),
            )
            .collect();
        match candidates.iter().find(|p| hypervisor_framework::is_executable(p)) {
            Some(found) => Ok(found.clone()),
            None => Err(candidates),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_object_empty_input_and_null() {
        for input in [&b"{}"[..], b"", b"null", b"  \n"] {
            assert_eq!(
                KvmConfig::parse(input).unwrap(),
                KvmConfig::default(),
                "{input:?}"
            );
        }
        let c = KvmConfig::default();
        assert_eq!(
            (c.vmm, c.agent_ports, c.vsock, c.network, c.stop_timeout_ms),
            (None, 4, true, Network::None, 10_000)
        );
        assert_eq!(c.run_dir, PathBuf::from("/run/sandbox-runtime/kvm"));
    }

    #[test]
    fn every_key() {
        let json = br#"{"vmm": "/opt/vmm", "run_dir": "/tmp/r", "agent_ports": 8, "vsock": false,
            "network": "tap:tap0", "stop_timeout_ms": 500}"#;
        let c = KvmConfig::parse(json).unwrap();
        assert_eq!(c.vmm.as_deref(), Some("/opt/vmm"));
        assert_eq!(c.run_dir, PathBuf::from("/tmp/r"));
        assert_eq!((c.agent_ports, c.vsock, c.stop_timeout_ms), (8, false, 500));
        assert_eq!(c.network, Network::Tap("tap0".into()));
        assert_eq!(
            KvmConfig::parse(br#"{"network": "none"}"#).unwrap().network,
            Network::None
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = error_report::chain(&KvmConfig::parse(br#"{"qemu": "x"}"#).unwrap_err());
        assert!(e.contains("unknown field `qemu`"), "{e}");
        for (json, want) in [
            (&br#"{"network": "user"}"#[..], "\"user\""),
            (br#"{"network": "tap:"}"#, "tap name"),
            (br#"{"network": "tap:a/b"}"#, "tap name"),
            (br#"{"network": "tap:sixteen-chars-xy"}"#, "1 to 15"),
            (br#"{"agent_ports": 0}"#, "agent_ports = 0"),
            (br#"{"agent_ports": 9}"#, "agent_ports = 9"),
            (br#"{"stop_timeout_ms": 0}"#, "stop_timeout_ms = 0"),
            (br#"{"vmm": ""}"#, "vmm"),
            (br#"{"run_dir": ""}"#, "run_dir"),
            (br#"{"run_dir": "/tmp/a,b"}"#, "a,b"),
            (br#"{"vsock": "yes"}"#, "expected a boolean"),
        ] {
            let e = error_report::chain(&KvmConfig::parse(json).unwrap_err());
            assert!(
                e.starts_with("kvm plugin config") && e.contains(want),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn relative_run_dir_is_made_absolute() {
        let c = KvmConfig::parse(br#"{"run_dir": "vms"}"#).unwrap();
        assert!(
            c.run_dir.is_absolute() && c.run_dir.ends_with("vms"),
            "{:?}",
            c.run_dir
        );
    }

    #[test]
    fn finding_the_vmm() {
        let c = KvmConfig {
            vmm: Some("sh".into()),
            ..KvmConfig::default()
        };
        assert!(c.find_vmm().unwrap().is_absolute());
        let c = KvmConfig {
            vmm: Some("/no/such/vmm".into()),
            ..KvmConfig::default()
        };
        assert_eq!(
            c.find_vmm().unwrap_err(),
            vec![PathBuf::from("/no/such/vmm")]
        );
        // The default looks beside the test binary first (cargo puts `vmm` in the profile
        // directory, one level up from the test binaries in deps/, so it is not found there).
        let looked = match KvmConfig::default().find_vmm() {
            Ok(found) => vec![found],
            Err(looked) => looked,
        };
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_owned();
        assert!(
            looked[0] == exe_dir.join("vmm") || looked[0].ends_with("vmm"),
            "{looked:?}"
        );
    }
}
