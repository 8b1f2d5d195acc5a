//! The channels the guest agent serves on, and the kernel parameter that names them:
//! `agent.channels=vsock:1024,serial:agent.0` (the default when the parameter is absent). The
//! hypervisor plugins write the parameter ([`kernel_param`]); the agent reads it
//! ([`from_cmdline`]). Both use [`Channel`], so neither writes the format by hand.

use std::path::PathBuf;

/// The kernel parameter's name, without its `=`.
pub const PARAM: &str = "agent.channels";
/// The vsock port the agent listens on.
pub const VSOCK_PORT: u32 = 1024;
/// The name of the first virtio-serial port the agent serves Yamux on (port `n` is
/// [`serial_port_name`]`(n)`).
pub const SERIAL_PORT_NAME: &str = "agent.0";

/// The name of the agent's serial port `n` in the guest: `agent.<n>`.
pub fn serial_port_name(n: u32) -> String {
    format!("agent.{n}")
}

/// A channel the agent serves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// A Unix socket path (the agent on the host, in tests): `unix:PATH`.
    Unix(PathBuf),
    /// A vsock port, any CID: `vsock:PORT`.
    Vsock(u32),
    /// A virtio-serial port by name, with Yamux on it: `serial:NAME`.
    Serial(String),
}

/// A channel address that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("channel {0:?} is not unix:PATH, vsock:PORT or serial:NAME")]
pub struct BadChannel(pub String);

impl std::str::FromStr for Channel {
    type Err = BadChannel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadChannel(s.to_owned());
        match s.split_once(':').ok_or_else(bad)? {
            ("unix", path) if !path.is_empty() => Ok(Channel::Unix(path.into())),
            ("vsock", port) => Ok(Channel::Vsock(port.parse().map_err(|_| bad())?)),
            ("serial", name) if !name.is_empty() && !name.contains([',', ' ']) => Ok(Channel::Serial(name.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Channel::Unix(p) => write!(f, "unix:{}", p.display()),
            Channel::Vsock(port) => write!(f, "vsock:{port}"),
            Channel::Serial(name) => write!(f, "serial:{name}"),
        }
    }
}

/// The channels the agent serves on when the kernel command line names none: vsock, then the
/// first serial port.
pub fn defaults() -> Vec<Channel> {
    vec![Channel::Vsock(VSOCK_PORT), Channel::Serial(SERIAL_PORT_NAME.to_owned())]
}

/// The kernel parameter for `channels`: `agent.channels=A,B,...`.
pub fn kernel_param(channels: &[Channel]) -> String {
    let list: Vec<String> = channels.iter().map(Channel::to_string).collect();
    format!("{PARAM}={}", list.join(","))
}

/// The channels a kernel command line names (its first `agent.channels=`), or [`defaults`]
/// when it names none.
pub fn from_cmdline(cmdline: &str) -> Result<Vec<Channel>, BadChannel> {
    let prefix = format!("{PARAM}=");
    match cmdline.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str())) {
        Some(list) => list.split(',').filter(|c| !c.is_empty()).map(str::parse).collect(),
        None => Ok(defaults()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_parse_and_print() {
        assert_eq!("vsock:1024".parse::<Channel>().unwrap(), Channel::Vsock(1024));
        assert_eq!("serial:agent.0".parse::<Channel>().unwrap(), Channel::Serial("agent.0".into()));
        assert_eq!("unix:/run/a.sock".parse::<Channel>().unwrap(), Channel::Unix("/run/a.sock".into()));
        for bad in ["vsock:x", "tcp:1", "unix:", "nothing", "serial:"] {
            assert_eq!(bad.parse::<Channel>(), Err(BadChannel(bad.into())), "{bad}");
        }
        for c in defaults() {
            assert_eq!(c.to_string().parse::<Channel>().unwrap(), c);
        }
    }

    #[test]
    fn the_kernel_parameter_both_ways() {
        let channels = vec![Channel::Vsock(VSOCK_PORT), Channel::Serial(serial_port_name(0)), Channel::Serial(serial_port_name(1))];
        let param = kernel_param(&channels);
        assert_eq!(param, "agent.channels=vsock:1024,serial:agent.0,serial:agent.1");
        assert_eq!(from_cmdline(&format!("console=ttyS0 {param} quiet")).unwrap(), channels);
        assert_eq!(from_cmdline("console=ttyS0").unwrap(), defaults());
        assert_eq!(from_cmdline("agent.channels=serial:a agent.channels=serial:b").unwrap(), [Channel::Serial("a".into())]);
        assert!(from_cmdline("agent.channels=tcp:1").is_err());
        assert_eq!(serial_port_name(0), SERIAL_PORT_NAME);
    }
}
