//! The client proper: connects through a dialer, sends the protocol version on every call,
//! and checks the agent's version at connect time.

use super::{AgentError, Dialer};
use agent_protocol::pb::{self, agent_client};
use agent_protocol::{check_compatible, ProtocolVersion, PROTOCOL_VERSION, VERSION_HEADER};
use hyper_util::rt::TokioIo;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Adds the version header to every call.
#[derive(Clone)]
pub struct VersionHeader;

impl tonic::service::Interceptor for VersionHeader {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let value = MetadataValue::try_from(PROTOCOL_VERSION.to_string()).map_err(|_| tonic::Status::internal("version header"))?;
        request.metadata_mut().insert(VERSION_HEADER, value);
        Ok(request)
    }
}

/// The generated client, with the version header.
pub type RawClient = agent_client::AgentClient<InterceptedService<Channel, VersionHeader>>;

/// A connected, version-checked agent client.
#[derive(Clone)]
pub struct AgentClient {
    raw: RawClient,
    /// What the agent said in the handshake.
    pub handshake: pb::HandshakeResponse,
}

impl AgentClient {
    /// Connects through `dialer` and does the handshake.
    pub async fn connect(dialer: Dialer) -> Result<AgentClient, AgentError> {
        let address = dialer.to_string();
        // The URI is required by the API but unused: the connector ignores it.
        let endpoint = Endpoint::from_static("http://agent");
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let dialer = dialer.clone();
                async move { dialer.dial().await.map(TokioIo::new) }
            }))
            .await
            .map_err(|source| AgentError::Connect { address, source })?;
        let mut raw = agent_client::AgentClient::with_interceptor(channel, VersionHeader);
        let request = pb::HandshakeRequest { client_protocol: Some(PROTOCOL_VERSION.into()) };
        let handshake = raw.handshake(request).await.map_err(|status| AgentError::Call { method: "Handshake", status })?.into_inner();
        let agent: ProtocolVersion = handshake.agent_protocol.unwrap_or_default().into();
        check_compatible(PROTOCOL_VERSION, agent).map_err(AgentError::Incompatible)?;
        Ok(AgentClient { raw, handshake })
    }

    /// The generated client, for calls not wrapped here.
    pub fn raw(&self) -> RawClient {
        self.raw.clone()
    }

    /// Health check.
    pub async fn health(&self) -> Result<pb::HealthResponse, AgentError> {
        let mut raw = self.raw.clone();
        Ok(raw.health(pb::Empty {}).await.map_err(|status| AgentError::Call { method: "Health", status })?.into_inner())
    }
}
