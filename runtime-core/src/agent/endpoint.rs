//! Connecting to an agent endpoint ([`Endpoint`], plugin-api's typed form of what the
//! hypervisor plugins report: `serial:<path>`, `hvsock:<path>:<port>`, `vsock:<cid>:<port>`,
//! `unix:<path>`, best first).

use super::{AgentClient, AgentError, Dialer, YamuxSession};
pub use plugin_api::endpoint::{parse_endpoints, AgentEndpoint as Endpoint, EndpointError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connects and does the handshake once. For a serial port this starts a Yamux session
/// that lives as long as the client.
pub async fn connect_once(endpoint: &Endpoint) -> Result<AgentClient, AgentError> {
    connect_holding(endpoint, Arc::new(())).await
}

/// [`connect_once`]; a serial port's session keeps `guard` until it ends.
async fn connect_holding(endpoint: &Endpoint, guard: Arc<dyn std::any::Any + Send + Sync>) -> Result<AgentClient, AgentError> {
    let dialer = match endpoint {
        Endpoint::Serial(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| AgentError::Dial { address: endpoint.to_string(), source })?;
            Dialer::Yamux(YamuxSession::client_holding(stream, &endpoint.to_string(), guard))
        }
        Endpoint::HybridVsock(path, port) => Dialer::HybridVsock { path: path.clone(), port: *port },
        Endpoint::Vsock(cid, port) => Dialer::Vsock { cid: *cid, port: *port },
        Endpoint::Unix(path) => Dialer::Unix(path.clone()),
    };
    AgentClient::connect(dialer).await
}

/// Connects, retrying failed dials (the VM may still be booting) until `timeout`. A guest
/// still booting does not answer over a serial port yet: the handshake then simply waits.
pub async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<AgentClient, AgentError> {
    connect_claimed(endpoint, timeout, None, Arc::new(())).await
}

/// [`connect`] over a claimed channel: a serial port's Yamux session holds
/// `claim` for as long as it lives, that is until every client and stream made from it is
/// gone (a serial port's host socket takes one connection at a time).
///
/// With `per_attempt`, an attempt whose handshake does not answer in that time is dropped
/// and another made: for an agent known to be up. A host process that went away may have
/// left the agent's end of a serial port in a session whose bytes the next connection
/// would continue; dropping the connection makes the agent start afresh.
pub async fn connect_claimed(
    endpoint: &Endpoint,
    timeout: Duration,
    per_attempt: Option<Duration>,
    claim: Arc<dyn std::any::Any + Send + Sync>,
) -> Result<AgentClient, AgentError> {
    let deadline = Instant::now() + timeout;
    let attempt = async {
        loop {
            let once = connect_holding(endpoint, claim.clone());
            let outcome = match per_attempt {
                None => once.await,
                Some(limit) => match tokio::time::timeout(limit, once).await {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        tracing::debug!(endpoint = %endpoint, "no handshake within {limit:?}: reconnecting");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                },
            };
            match outcome {
                Ok(client) => return Ok(client),
                Err(e @ AgentError::Incompatible(_)) => return Err(e),
                // The handshake broke on the way (the agent was still tearing down the
                // session of a host process that went away): a fresh session will do.
                Err(AgentError::Call { status, .. })
                    if matches!(status.code(), tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Cancelled)
                        && Instant::now() < deadline =>
                {
                    tracing::debug!(endpoint = %endpoint, "handshake broke, retrying: {}", status.message());
                }
                Err(e @ AgentError::Call { .. }) => return Err(e),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(e) => tracing::debug!(endpoint = %endpoint, "agent not reachable yet: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| AgentError::Timeout { address: endpoint.to_string(), after: timeout })?
}

/// Whether the agent answers within `timeout` at one of `endpoints` (a hypervisor plugin's
/// endpoint text), counted from the last: `nth` 0 is the last, 1 the one before, and so on
/// round. Connect, handshake and a health check; `Err` says why not. For a VM that no sandbox
/// owns yet (a factory's pooled VM, a conformance kit's), so it claims no channel.
///
/// The last address is the one a sandbox's processes take last (they claim the first free
/// one), and a serial port a probe has used is best not used again at once: the agent's end
/// of it may still be in the old session (see [`connect_claimed`]). So a pool probes the last
/// port and its sandbox starts on the first; a caller that probes one VM repeatedly passes a
/// new `nth` each time.
pub async fn probe(endpoints: &str, nth: usize, timeout: Duration) -> Result<(), String> {
    let list = parse_endpoints(endpoints).map_err(|e| format!("agent endpoint {endpoints:?}: {e}"))?;
    if list.is_empty() {
        return Err("the VM has no agent endpoint".to_owned());
    }
    let endpoint = list[list.len() - 1 - nth % list.len()].clone();
    let answered = async {
        let client = connect(&endpoint, timeout).await.map_err(|e| format!("the agent at {endpoint}: {}", error_report::chain(&e)))?;
        client.health().await.map_err(|e| format!("the agent's health check at {endpoint}: {}", error_report::chain(&e)))?;
        Ok(())
    };
    match tokio::time::timeout(timeout, answered).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("the agent at {endpoint} did not answer within {} s", timeout.as_secs())),
    }
}
