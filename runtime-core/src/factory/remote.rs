//! A runtime's side of the factory server (`[factory] server`): each VM is asked of the
//! server over its Unix socket (`factory-protocol`), which hands over a VM of its pool (or
//! cold-boots one) already moved under the runtime's run directory.

use factory_protocol::pb::{factory_client::FactoryClient, NewVmRequest, ShutdownRequest, StatusRequest};
use factory_protocol::VERSION;
use hyper_util::rt::TokioIo;
use plugin_api::factory::FactoryStatus;
use plugin_api::hypervisor::HypervisorConfig;
use plugin_api::payload::Payload;
use plugin_api::PluginError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// Nothing answers on the socket.
    #[error("no VM factory server answers on {socket}")]
    Unreachable {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server answered with an error.
    #[error("the VM factory server on {socket} failed to {op}: {message}")]
    Call {
        /// The socket.
        socket: PathBuf,
        /// What it was asked.
        op: &'static str,
        /// Its words.
        message: String,
    },
    /// The server's answer is not what the protocol says.
    #[error("the VM factory server on {socket} answered {op} with a bad payload")]
    BadReply {
        /// The socket.
        socket: PathBuf,
        /// What it was asked.
        op: &'static str,
        /// The cause.
        #[source]
        source: PluginError,
    },
}

/// What `factory status` shows of a server.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// The factory's status.
    pub status: FactoryStatus,
    /// The server's pid.
    pub pid: u32,
    /// The config file it runs with.
    pub config: String,
}

/// A client of the server on `socket`.
#[derive(Debug, Clone)]
pub struct Remote {
    socket: PathBuf,
}

impl Remote {
    /// The server on `socket` (nothing is dialled yet).
    pub fn new(socket: impl Into<PathBuf>) -> Remote {
        Remote { socket: socket.into() }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn client(&self) -> Result<FactoryClient<Channel>, RemoteError> {
        let path = self.socket.clone();
        let channel = Endpoint::from_static("http://factory")
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move { tokio::net::UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|source| RemoteError::Unreachable { socket: self.socket.clone(), source })?;
        Ok(FactoryClient::new(channel))
    }

    fn call_error(&self, op: &'static str) -> impl Fn(tonic::Status) -> RemoteError + '_ {
        move |status| RemoteError::Call { socket: self.socket.clone(), op, message: status.message().to_owned() }
    }

    /// A VM for `sandbox_id`, already the sandbox's.
    pub async fn new_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, RemoteError> {
        let request = NewVmRequest { version: VERSION, sandbox_id: sandbox_id.to_owned(), config: config.encode() };
        let reply = self.client().await?.new_vm(request).await.map_err(self.call_error("make a VM"))?;
        Ok(reply.into_inner().vm)
    }

    /// The server's status.
    pub async fn status(&self) -> Result<ServerStatus, RemoteError> {
        let reply = self.client().await?.status(StatusRequest { version: VERSION }).await.map_err(self.call_error("report its status"))?.into_inner();
        let status = FactoryStatus::decode(&reply.status)
            .map_err(|source| RemoteError::BadReply { socket: self.socket.clone(), op: "status", source })?;
        Ok(ServerStatus { status, pid: reply.pid, config: reply.config })
    }

    /// Asks the server to close its factory and end; with `destroy`, also to remove what the
    /// factory keeps beyond it (a template).
    pub async fn shutdown(&self, destroy: bool) -> Result<(), RemoteError> {
        self.client().await?.shutdown(ShutdownRequest { version: VERSION, destroy }).await.map_err(self.call_error("shut down"))?;
        Ok(())
    }
}
