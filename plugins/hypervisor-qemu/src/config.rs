//! The plugin's own config (the JSON object the host gives `new_hypervisor`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
pub use hypervisor_framework::config::PluginConfigError;
use hypervisor_framework::config::ConfigCheck;

/// The QEMU binary used when the config names none.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";
/// Where VM directories go by default.
pub const DEFAULT_RUN_DIR: &str = "/run/sandbox-runtime/qemu";
/// The most virtio-serial agent ports a VM may have.
pub const MAX_AGENT_PORTS: u32 = hypervisor_framework::agent::MAX_AGENT_PORTS;
/// Checks this config; its errors start with `hypervisor-qemu config`.
const CHECK: ConfigCheck = ConfigCheck("hypervisor-qemu config");

/// Which accelerator to use.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when it can boot a standard kernel, TCG otherwise.
    #[default]
    Auto,
    /// KVM, or an error saying why not.
    Kvm,
    /// TCG (emulation).
    Tcg,
}

/// The guest's network.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// QEMU's user networking on a virtio-net NIC: the guest gets `eth0`.
    #[default]
    User,
    /// No NIC.
    None,
}

/// The plugin config, every key optional:
/// `{"qemu": "qemu-system-x86_64", "run_dir": "/run/sandbox-runtime/qemu", "accel": "auto",
/// "machine": "pc", "agent_ports": 4, "network": "user", "stop_timeout_ms": 10000}`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QemuConfig {
    /// The QEMU binary: a name looked up in `PATH`, or a path.
    pub qemu: String,
    /// The directory under which each VM gets `<run_dir>/<sandbox_id>/`.
    pub run_dir: PathBuf,
    /// The accelerator.
    pub accel: AccelChoice,
    /// The QEMU machine type (`-M`).
    pub machine: String,
    /// How many virtio-serial agent ports (`agent.0` ...) each VM has.
    pub agent_ports: u32,
    /// The guest's network.
    pub network: Network,
    /// How long `stop_vm` waits for QEMU to quit before killing it.
    pub stop_timeout_ms: u64,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            qemu: DEFAULT_QEMU.into(),
            run_dir: DEFAULT_RUN_DIR.into(),
            accel: AccelChoice::Auto,
            machine: "pc".into(),
            agent_ports: 4,
            network: Network::User,
            stop_timeout_ms: 10_000,
        }
    }
}

impl QemuConfig {
    /// Parses and checks the config. Empty input and `null` mean all defaults. A relative
    /// `run_dir` is made absolute against the current directory (QEMU runs from `/`).
    pub fn parse(bytes: &[u8]) -> Result<QemuConfig, PluginConfigError> {
        let mut config: QemuConfig = CHECK.parse(bytes)?;
        CHECK.program("qemu", &config.qemu)?;
        CHECK.agent_ports(config.agent_ports)?;
        let machine_ok = !config.machine.is_empty()
            && config.machine.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-=,".contains(&b));
        if !machine_ok {
            return Err(CHECK.bad("machine", format!("{:?}", config.machine), "must be a QEMU machine type such as \"pc\" or \"q35\""));
        }
        CHECK.stop_timeout_ms(config.stop_timeout_ms)?;
        config.run_dir = CHECK.run_dir(&config.run_dir)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_object_empty_input_and_null() {
        for input in [&b"{}"[..], b"", b"null", b"  \n"] {
            assert_eq!(QemuConfig::parse(input).unwrap(), QemuConfig::default(), "{input:?}");
        }
        let c = QemuConfig::default();
        assert_eq!((c.qemu.as_str(), c.machine.as_str(), c.agent_ports), ("qemu-system-x86_64", "pc", 4));
        assert_eq!((c.accel, c.network, c.stop_timeout_ms), (AccelChoice::Auto, Network::User, 10_000));
    }

    #[test]
    fn every_key() {
        let json = br#"{"qemu": "/opt/qemu", "run_dir": "/tmp/r", "accel": "tcg", "machine": "q35",
            "agent_ports": 8, "network": "none", "stop_timeout_ms": 500}"#;
        let c = QemuConfig::parse(json).unwrap();
        assert_eq!(c.qemu, "/opt/qemu");
        assert_eq!(c.run_dir, PathBuf::from("/tmp/r"));
        assert_eq!((c.accel, c.network, c.agent_ports, c.stop_timeout_ms), (AccelChoice::Tcg, Network::None, 8, 500));
        assert_eq!(QemuConfig::parse(br#"{"accel": "kvm"}"#).unwrap().accel, AccelChoice::Kvm);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = error_report::chain(&QemuConfig::parse(br#"{"acel": "tcg"}"#).unwrap_err());
        assert!(e.contains("unknown field `acel`"), "{e}");
    }

    #[test]
    fn bad_accel_and_network() {
        let e = error_report::chain(&QemuConfig::parse(br#"{"accel": "hvf"}"#).unwrap_err());
        assert!(e.contains("hvf") && e.contains("auto"), "{e}");
        let e = error_report::chain(&QemuConfig::parse(br#"{"network": "tap"}"#).unwrap_err());
        assert!(e.contains("tap"), "{e}");
    }

    #[test]
    fn ports_out_of_range() {
        for n in [0, 9, 100] {
            let e = error_report::chain(&QemuConfig::parse(format!(r#"{{"agent_ports": {n}}}"#).as_bytes()).unwrap_err());
            assert!(e.contains(&format!("agent_ports = {n}")) && e.contains("1 to 8"), "{e}");
        }
        let e = error_report::chain(&QemuConfig::parse(br#"{"agent_ports": -1}"#).unwrap_err());
        assert!(e.contains("-1"), "{e}");
    }

    #[test]
    fn other_bad_values() {
        let e = error_report::chain(&QemuConfig::parse(br#"{"machine": "pc -snapshot"}"#).unwrap_err());
        assert!(e.contains("machine"), "{e}");
        let e = error_report::chain(&QemuConfig::parse(br#"{"run_dir": "/tmp/a,b"}"#).unwrap_err());
        assert!(e.contains("run_dir") && e.contains("a,b"), "{e}");
        let e = error_report::chain(&QemuConfig::parse(br#"{"stop_timeout_ms": 0}"#).unwrap_err());
        assert!(e.contains("stop_timeout_ms = 0"), "{e}");
        let e = error_report::chain(&QemuConfig::parse(br#"{"qemu": ""}"#).unwrap_err());
        assert!(e.contains("qemu"), "{e}");
        assert!(QemuConfig::parse(b"[1]").is_err());
    }

    #[test]
    fn relative_run_dir_is_made_absolute() {
        let c = QemuConfig::parse(br#"{"run_dir": "vms"}"#).unwrap();
        assert!(c.run_dir.is_absolute() && c.run_dir.ends_with("vms"), "{:?}", c.run_dir);
    }
}
