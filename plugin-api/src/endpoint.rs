//! Where the host reaches a VM's guest agent: the typed form of what
//! [`HypervisorPlugin::agent_endpoint`](crate::hypervisor::HypervisorPlugin::agent_endpoint)
//! returns. Across the ABI the list travels as text, `,`-separated, best first, each entry one
//! of
//!
//! | entry | [`AgentEndpoint`] | the host dials |
//! |---|---|---|
//! | `serial:<path>` | [`Serial`](AgentEndpoint::Serial) | the Unix socket of a virtio-serial port, with Yamux on it |
//! | `hvsock:<path>:<port>` | [`HybridVsock`](AgentEndpoint::HybridVsock) | a Unix socket, then `CONNECT <port>` (Firecracker's hybrid vsock) |
//! | `vsock:<cid>:<port>` | [`Vsock`](AgentEndpoint::Vsock) | AF_VSOCK |
//! | `unix:<path>` | [`Unix`](AgentEndpoint::Unix) | a Unix socket the agent listens on |
//!
//! Paths are absolute. A plugin builds the list with [`format_endpoints`] (or each entry's
//! `Display`); the host parses it with [`parse_endpoints`]. Neither writes the format by hand.

use std::path::PathBuf;

/// One way to reach the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEndpoint {
    /// The host socket of a virtio-serial port, carrying Yamux.
    Serial(PathBuf),
    /// Hybrid vsock: a Unix socket plus `CONNECT <port>`.
    HybridVsock(PathBuf, u32),
    /// AF_VSOCK: the guest's CID and the agent's port.
    Vsock(u32, u32),
    /// A Unix socket the agent listens on.
    Unix(PathBuf),
}

/// An endpoint (or endpoint list) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad agent endpoint {entry:?}: {reason}")]
pub struct EndpointError {
    /// The entry.
    pub entry: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a `,`-separated endpoint list (blank entries are skipped).
pub fn parse_endpoints(list: &str) -> Result<Vec<AgentEndpoint>, EndpointError> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse()).collect()
}

/// The list as the ABI carries it: entries `,`-separated, in order.
pub fn format_endpoints(endpoints: &[AgentEndpoint]) -> String {
    endpoints.iter().map(AgentEndpoint::to_string).collect::<Vec<_>>().join(",")
}

impl std::str::FromStr for AgentEndpoint {
    type Err = EndpointError;

    fn from_str(entry: &str) -> Result<AgentEndpoint, EndpointError> {
        let bad = |reason| EndpointError { entry: entry.to_owned(), reason };
        let (scheme, rest) = entry.split_once(':').ok_or(bad("no scheme (serial:, hvsock:, vsock: or unix:)"))?;
        let path = |p: &str| {
            if !p.starts_with('/') {
                Err(bad("the path is not absolute"))
            } else if p.contains(',') {
                Err(bad("the path holds a ','"))
            } else {
                Ok(PathBuf::from(p))
            }
        };
        let port = |p: &str| p.parse::<u32>().map_err(|_| bad("the port is not a number"));
        match scheme {
            "serial" => Ok(AgentEndpoint::Serial(path(rest)?)),
            "unix" => Ok(AgentEndpoint::Unix(path(rest)?)),
            "hvsock" => {
                let (p, n) = rest.rsplit_once(':').ok_or(bad("no port"))?;
                Ok(AgentEndpoint::HybridVsock(path(p)?, port(n)?))
            }
            "vsock" => {
                let (cid, n) = rest.split_once(':').ok_or(bad("no port"))?;
                Ok(AgentEndpoint::Vsock(cid.parse().map_err(|_| bad("the CID is not a number"))?, port(n)?))
            }
            _ => Err(bad("unknown scheme (serial:, hvsock:, vsock: or unix:)")),
        }
    }
}

impl std::fmt::Display for AgentEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentEndpoint::Serial(p) => write!(f, "serial:{}", p.display()),
            AgentEndpoint::HybridVsock(p, n) => write!(f, "hvsock:{}:{n}", p.display()),
            AgentEndpoint::Vsock(cid, n) => write!(f, "vsock:{cid}:{n}"),
            AgentEndpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_print_and_bad_entries_are_named() {
        let list = parse_endpoints("vsock:3:1024, serial:/run/a-0.sock,hvsock:/run/v.sock:1024,unix:/tmp/a").expect("parse");
        assert_eq!(
            list,
            vec![
                AgentEndpoint::Vsock(3, 1024),
                AgentEndpoint::Serial("/run/a-0.sock".into()),
                AgentEndpoint::HybridVsock("/run/v.sock".into(), 1024),
                AgentEndpoint::Unix("/tmp/a".into())
            ]
        );
        let text = format_endpoints(&list);
        assert_eq!(text, "vsock:3:1024,serial:/run/a-0.sock,hvsock:/run/v.sock:1024,unix:/tmp/a");
        assert_eq!(parse_endpoints(&text).unwrap(), list);
        let e = parse_endpoints("serial:rel.sock").unwrap_err();
        assert_eq!(e.to_string(), "bad agent endpoint \"serial:rel.sock\": the path is not absolute");
        assert!(parse_endpoints("tcp:1.2.3.4:5").unwrap_err().to_string().contains("unknown scheme"));
        assert!(parse_endpoints("vsock:x:1").unwrap_err().to_string().contains("CID"));
        assert!(parse_endpoints("nocolon").unwrap_err().to_string().contains("no scheme"));
        assert!(parse_endpoints("hvsock:/run/v.sock").unwrap_err().to_string().contains("no port"));
        assert!(parse_endpoints("hvsock:/run/v.sock:x").unwrap_err().to_string().contains("the port is not a number"));
        assert_eq!(parse_endpoints(" , ").unwrap(), []);
    }
}
