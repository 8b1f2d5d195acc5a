//! The guest agent's API, shared by the agent and the host-side client: the gRPC messages and
//! service stubs generated from `proto/agent.proto`, the protocol version and its handshake
//! rule, and the agent's channels and the kernel parameter naming them ([`channels`]). No I/O
//! lives here. Without the default feature `grpc` there is no [`pb`] and no tonic: the
//! hypervisor plugins use the channels alone.

#![deny(missing_docs)]

pub mod channels;

pub use channels::{SERIAL_PORT_NAME, VSOCK_PORT};

/// Generated messages and the `Agent` service's client and server stubs.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("sandbox.agent.v1");
}

/// The protocol version this crate defines. Minor versions only add; a major bump breaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 1 };

/// The metadata header every call carries: the client's protocol version, `"major.minor"`.
pub const VERSION_HEADER: &str = "x-agent-protocol";

/// The exec id of a container's init process.
pub const INIT_EXEC_ID: &str = "";

/// A protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    /// Incompatible changes.
    pub major: u32,
    /// Additions.
    pub minor: u32,
}

/// Why a version was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    /// The header is missing.
    #[error("the call carries no {VERSION_HEADER} header; the client must send its protocol version")]
    Missing,
    /// The header is not `major.minor`.
    #[error("{VERSION_HEADER} header {0:?} is not major.minor")]
    Malformed(String),
    /// Majors differ.
    #[error("client speaks agent protocol {client}, the agent speaks {agent}: majors differ")]
    Incompatible {
        /// The client's version.
        client: ProtocolVersion,
        /// The agent's version.
        agent: ProtocolVersion,
    },
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl std::str::FromStr for ProtocolVersion {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || VersionError::Malformed(s.to_owned());
        let (major, minor) = s.split_once('.').ok_or_else(malformed)?;
        Ok(ProtocolVersion {
            major: major.parse().map_err(|_| malformed())?,
            minor: minor.parse().map_err(|_| malformed())?,
        })
    }
}

#[cfg(feature = "grpc")]
impl From<ProtocolVersion> for pb::Version {
    fn from(v: ProtocolVersion) -> Self {
        pb::Version { major: v.major, minor: v.minor }
    }
}

#[cfg(feature = "grpc")]
impl From<pb::Version> for ProtocolVersion {
    fn from(v: pb::Version) -> Self {
        ProtocolVersion { major: v.major, minor: v.minor }
    }
}

/// The handshake rule: a peer accepts another whose major equals its own. Either side may be
/// the newer minor; the newer side must not rely on what the older one lacks.
pub fn check_compatible(client: ProtocolVersion, agent: ProtocolVersion) -> Result<(), VersionError> {
    if client.major == agent.major {
        Ok(())
    } else {
        Err(VersionError::Incompatible { client, agent })
    }
}

/// Checks a call's header value (as the agent does on every call).
pub fn check_header(value: Option<&str>) -> Result<ProtocolVersion, VersionError> {
    let client: ProtocolVersion = value.ok_or(VersionError::Missing)?.parse()?;
    check_compatible(client, PROTOCOL_VERSION)?;
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_is_compatible_either_way() {
        let newer = ProtocolVersion { major: 1, minor: 7 };
        assert!(check_compatible(newer, PROTOCOL_VERSION).is_ok());
        assert!(check_compatible(PROTOCOL_VERSION, newer).is_ok());
    }

    #[test]
    fn header_errors_name_the_problem() {
        assert_eq!(check_header(None), Err(VersionError::Missing));
        assert!(matches!(check_header(Some("one")), Err(VersionError::Malformed(_))));
        let err = check_header(Some("2.0")).unwrap_err();
        assert_eq!(err.to_string(), "client speaks agent protocol 2.0, the agent speaks 1.1: majors differ");
        assert_eq!(check_header(Some("1.3")), Ok(ProtocolVersion { major: 1, minor: 3 }));
    }
}
