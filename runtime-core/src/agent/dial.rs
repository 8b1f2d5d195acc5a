//! Dialers: how the agent client reaches the agent. Each gives a fresh byte stream per
//! connection, which gRPC then runs over (the seed's "custom gRPC dialer").

use super::yamux::YamuxSession;
use super::AgentError;
use std::path::PathBuf;
use std::pin::Pin;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A byte stream to the agent.
pub trait AgentIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AgentIo for T {}

/// A boxed stream.
pub type BoxedIo = Pin<Box<dyn AgentIo>>;

/// Longest reply line to a hybrid-vsock `CONNECT`.
const MAX_REPLY: usize = 64;

/// Where the agent is.
#[derive(Clone)]
pub enum Dialer {
    /// A Unix socket the agent listens on (the agent on the host, in tests).
    Unix(PathBuf),
    /// Hybrid vsock: a Unix socket of the VMM plus a `CONNECT <port>` handshake.
    HybridVsock {
        /// The VMM's vsock socket.
        path: PathBuf,
        /// The guest port.
        port: u32,
    },
    /// Streams of a Yamux session over a virtio-serial port's host socket.
    Yamux(YamuxSession),
    /// AF_VSOCK (needs `/dev/vhost-vsock` on the host).
    Vsock {
        /// The guest's context id.
        cid: u32,
        /// The guest port.
        port: u32,
    },
}

impl std::fmt::Display for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dialer::Unix(p) => write!(f, "unix:{}", p.display()),
            Dialer::HybridVsock { path, port } => write!(f, "hvsock:{}:{port}", path.display()),
            Dialer::Yamux(s) => write!(f, "yamux:{}", s.address()),
            Dialer::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

impl Dialer {
    /// Opens one stream.
    pub async fn dial(&self) -> Result<BoxedIo, AgentError> {
        let fail = |source| AgentError::Dial { address: self.to_string(), source };
        match self {
            Dialer::Unix(path) => Ok(Box::pin(UnixStream::connect(path).await.map_err(fail)?)),
            Dialer::HybridVsock { path, port } => {
                let stream = UnixStream::connect(path).await.map_err(fail)?;
                Ok(Box::pin(hybrid_vsock_handshake(stream, *port).await.map_err(fail)?))
            }
            Dialer::Yamux(session) => Ok(Box::pin(session.open().await.map_err(fail)?)),
            Dialer::Vsock { cid, port } => {
                let address = tokio_vsock::VsockAddr::new(*cid, *port);
                Ok(Box::pin(tokio_vsock::VsockStream::connect(address).await.map_err(fail)?))
            }
        }
    }
}

/// `CONNECT <port>\n` -> `OK <host port>\n`; anything else is an error naming the reply.
async fn hybrid_vsock_handshake(mut stream: UnixStream, port: u32) -> std::io::Result<BufReader<UnixStream>> {
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut limited = (&mut reader).take(MAX_REPLY as u64);
    limited.read_until(b'\n', &mut line).await?;
    let text = String::from_utf8_lossy(&line);
    if !text.starts_with("OK ") || !text.ends_with('\n') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            format!("hybrid vsock CONNECT {port} answered {:?}", text.trim_end()),
        ));
    }
    Ok(reader)
}
