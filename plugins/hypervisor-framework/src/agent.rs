//! The guest agent's channels: what the kernel command line tells the agent to listen on
//! (`agent.channels=`, defined with the agent in [`agent_protocol::channels`]) for a VM with a
//! vsock device or not and some serial agent ports.

use agent_protocol::channels::{self, Channel};

/// The guest agent's vsock port.
pub const AGENT_VSOCK_PORT: u32 = channels::VSOCK_PORT;
/// The most serial agent ports (`agent.0` ...) a VM may have.
pub const MAX_AGENT_PORTS: u32 = 8;

/// The name of serial agent port `n` in the guest (`agent.<n>`).
pub fn port_name(n: u32) -> String {
    channels::serial_port_name(n)
}

/// The guest agent's channels: vsock first when there is one, then every port.
pub fn agent_channels(agent_ports: u32, vsock: bool) -> Vec<Channel> {
    let vsock = vsock.then_some(Channel::Vsock(AGENT_VSOCK_PORT));
    vsock.into_iter().chain((0..agent_ports).map(|n| Channel::Serial(port_name(n)))).collect()
}

/// The kernel command line: the serial console on `ttyS0`, reboot at once on a panic (the
/// VMM exits on a reboot, so the host sees a dead VM rather than a hung one), the agent's
/// channels, then `extra` (the plugin's own parameters) and `kernel_params` (the host's).
pub fn kernel_cmdline(agent_ports: u32, vsock: bool, extra: &str, kernel_params: &str) -> String {
    let mut cmdline = format!("console=ttyS0 panic=-1 quiet {}", channels::kernel_param(&agent_channels(agent_ports, vsock)));
    for more in [extra, kernel_params] {
        if !more.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(more);
        }
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_and_cmdlines() {
        assert_eq!(agent_channels(2, false), [Channel::Serial("agent.0".into()), Channel::Serial("agent.1".into())]);
        assert_eq!(agent_channels(1, true), [Channel::Vsock(1024), Channel::Serial("agent.0".into())]);
        assert_eq!(kernel_cmdline(1, false, "", ""), "console=ttyS0 panic=-1 quiet agent.channels=serial:agent.0");
        assert_eq!(
            kernel_cmdline(1, true, "reboot=k", "agent.log=debug"),
            "console=ttyS0 panic=-1 quiet agent.channels=vsock:1024,serial:agent.0 reboot=k agent.log=debug"
        );
    }
}
