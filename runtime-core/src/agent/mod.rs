//! The agent client: gRPC to the guest agent over any byte stream a [`Dialer`] opens.

mod client;
mod dial;
mod endpoint;
mod yamux;

pub use client::{AgentClient, RawClient};
pub use dial::{BoxedIo, Dialer};
pub use endpoint::{connect, connect_claimed, connect_once, parse_endpoints, probe, Endpoint, EndpointError};
pub use yamux::YamuxSession;

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The stream could not be opened.
    #[error("dialing the agent at {address}")]
    Dial {
        /// The dialer's address.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// gRPC's connection failed.
    #[error("connecting to the agent at {address}")]
    Connect {
        /// The dialer's address.
        address: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent speaks another protocol major.
    #[error("the agent is incompatible")]
    Incompatible(#[source] agent_protocol::VersionError),
    /// The agent did not answer in time.
    #[error("the agent at {address} did not answer within {after:?}")]
    Timeout {
        /// The endpoint.
        address: String,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// A call failed.
    #[error("agent call {method} failed: {} ({:?})", .status.message(), .status.code())]
    Call {
        /// The method.
        method: &'static str,
        /// The agent's answer.
        status: tonic::Status,
    },
}
