//! Agent endpoints as hypervisor plugins give them (`serial:<path>`, `hvsock:<path>:<port>`,
//! `vsock:<cid>:<port>`, `unix:<path>`, comma-separated, best first), and connecting to one.

use super::{AgentClient, AgentError, Dialer, YamuxSession};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One way to reach the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The host socket of a virtio-serial port, carrying Yamux.
    Serial(PathBuf),
    /// Hybrid vsock: a Unix socket plus `CONNECT <port>`.
    HybridVsock(PathBuf, u32),
    /// AF_VSOCK.
    Vsock(u32, u32),
    /// A Unix socket the agent listens on.
    Unix(PathBuf),
}

/// An endpoint list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad agent endpoint {entry:?}: {reason}")]
pub struct EndpointError {
    /// The entry.
    pub entry: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// Parses a comma-separated endpoint list.
pub fn parse_endpoints(list: &str) -> Result<Vec<Endpoint>, EndpointError> {
    list.split(',').filter(|s| !s.trim().is_empty()).map(|s| parse_one(s.trim())).collect()
}

fn parse_one(entry: &str) -> Result<Endpoint, EndpointError> {
    let bad = |reason| EndpointError { entry: entry.to_owned(), reason };
    let (scheme, rest) = entry.split_once(':').ok_or(bad("no scheme (serial:, hvsock:, vsock: or unix:)"))?;
    let path = |p: &str| if p.starts_with('/') { Ok(PathBuf::from(p)) } else { Err(bad("the path is not absolute")) };
    let port = |p: &str| p.parse::<u32>().map_err(|_| bad("the port is not a number"));
    match scheme {
        "serial" => Ok(Endpoint::Serial(path(rest)?)),
        "unix" => Ok(Endpoint::Unix(path(rest)?)),
        "hvsock" => {
            let (p, n) = rest.rsplit_once(':').ok_or(bad("no port"))?;
            Ok(Endpoint::HybridVsock(path(p)?, port(n)?))
        }
        "vsock" => {
            let (cid, n) = rest.split_once(':').ok_or(bad("no port"))?;
            Ok(Endpoint::Vsock(cid.parse().map_err(|_| bad("the CID is not a number"))?, port(n)?))
        }
        _ => Err(bad("unknown scheme (serial:, hvsock:, vsock: or unix:)")),
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Serial(p) => write!(f, "serial:{}", p.display()),
            Endpoint::HybridVsock(p, n) => write!(f, "hvsock:{}:{n}", p.display()),
            Endpoint::Vsock(cid, n) => write!(f, "vsock:{cid}:{n}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Endpoint {
    /// Connects and does the handshake once. For a serial port this starts a Yamux session
    /// that lives as long as the client.
    pub async fn connect_once(&self) -> Result<AgentClient, AgentError> {
        self.connect_holding(Arc::new(())).await
    }

    /// [`Endpoint::connect_once`]; a serial port's session keeps `guard` until it ends.
    async fn connect_holding(&self, guard: Arc<dyn std::any::Any + Send + Sync>) -> Result<AgentClient, AgentError> {
        let dialer = match self {
            Endpoint::Serial(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| AgentError::Dial { address: self.to_string(), source })?;
                Dialer::Yamux(YamuxSession::client_holding(stream, &self.to_string(), guard))
            }
            Endpoint::HybridVsock(path, port) => Dialer::HybridVsock { path: path.clone(), port: *port },
            Endpoint::Vsock(cid, port) => Dialer::Vsock { cid: *cid, port: *port },
            Endpoint::Unix(path) => Dialer::Unix(path.clone()),
        };
        AgentClient::connect(dialer).await
    }

    /// Connects, retrying failed dials (the VM may still be booting) until `timeout`. A guest
    /// still booting does not answer over a serial port yet: the handshake then simply waits.
    pub async fn connect(&self, timeout: Duration) -> Result<AgentClient, AgentError> {
        self.connect_claimed(timeout, None, Arc::new(())).await
    }

    /// [`Endpoint::connect`] over a claimed channel: a serial port's Yamux session holds
    /// `claim` for as long as it lives, that is until every client and stream made from it is
    /// gone (a serial port's host socket takes one connection at a time).
    ///
    /// With `per_attempt`, an attempt whose handshake does not answer in that time is dropped
    /// and another made: for an agent known to be up. A host process that went away may have
    /// left the agent's end of a serial port in a session whose bytes the next connection
    /// would continue; dropping the connection makes the agent start afresh.
    pub async fn connect_claimed(
        &self,
        timeout: Duration,
        per_attempt: Option<Duration>,
        claim: Arc<dyn std::any::Any + Send + Sync>,
    ) -> Result<AgentClient, AgentError> {
        let deadline = Instant::now() + timeout;
        let attempt = async {
            loop {
                let once = self.connect_holding(claim.clone());
                let outcome = match per_attempt {
                    None => once.await,
                    Some(limit) => match tokio::time::timeout(limit, once).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            tracing::debug!(endpoint = %self, "no handshake within {limit:?}: reconnecting");
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
                        tracing::debug!(endpoint = %self, "handshake broke, retrying: {}", status.message());
                    }
                    Err(e @ AgentError::Call { .. }) => return Err(e),
                    Err(e) if Instant::now() >= deadline => return Err(e),
                    Err(e) => tracing::debug!(endpoint = %self, "agent not reachable yet: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| AgentError::Timeout { address: self.to_string(), after: timeout })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_bad_entries_are_named() {
        let list = parse_endpoints("vsock:3:1024, serial:/run/a-0.sock,hvsock:/run/v.sock:1024,unix:/tmp/a").expect("parse");
        assert_eq!(
            list,
            vec![
                Endpoint::Vsock(3, 1024),
                Endpoint::Serial("/run/a-0.sock".into()),
                Endpoint::HybridVsock("/run/v.sock".into(), 1024),
                Endpoint::Unix("/tmp/a".into())
            ]
        );
        assert_eq!(list[2].to_string(), "hvsock:/run/v.sock:1024");
        let e = parse_endpoints("serial:rel.sock").unwrap_err();
        assert_eq!(e.to_string(), "bad agent endpoint \"serial:rel.sock\": the path is not absolute");
        assert!(parse_endpoints("tcp:1.2.3.4:5").unwrap_err().to_string().contains("unknown scheme"));
        assert!(parse_endpoints("vsock:x:1").unwrap_err().to_string().contains("CID"));
        assert!(parse_endpoints("nocolon").unwrap_err().to_string().contains("no scheme"));
    }
}
