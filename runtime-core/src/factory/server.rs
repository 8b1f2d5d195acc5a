//! The factory server (`sandboxctl factory serve`, started in the background by `sandboxctl
//! factory init`): one process holds the factory of the config (a cache's pool) and serves it
//! to the runtimes of other processes over the Unix socket `[factory] server`
//! (`factory-protocol`), as Kata 1.x's VMCache server did.
//!
//! - One server per socket: the server holds `flock` on `<socket>.lock` (which names its pid)
//!   for as long as it runs; a second server is refused naming the first's pid. A socket file
//!   left by a server that died is removed by the next one, which holds the lock.
//! - A server killed before it could close its factory leaves that factory's work directory;
//!   the next factory opened under the same state directory (the next server, or `factory
//!   destroy`) stops the VMs listed there.
//! - The socket is 0600: only the user the runtimes run as may take VMs.

use super::remote::ServerStatus;
use super::Factory;
use crate::config::RuntimeConfig;
use crate::sandbox::config::validate_id;
use factory_protocol::pb::factory_server::{Factory as FactoryService, FactoryServer};
use factory_protocol::pb::{NewVmReply, NewVmRequest, ShutdownReply, ShutdownRequest, StatusReply, StatusRequest};
use factory_protocol::VERSION;
use plugin_api::hypervisor::{HypervisorConfig, HypervisorHandle};
use plugin_api::payload::Payload;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The config names no socket.
    #[error("config file {file}, table [factory]: no `server` socket to serve on (add server = \"/run/sandbox-runtime/factory.sock\")")]
    NoSocket {
        /// The config file.
        file: PathBuf,
    },
    /// The config has no `[factory]` table.
    #[error("config file {file}: no [factory] table, so there is no factory to serve")]
    NoFactory {
        /// The config file.
        file: PathBuf,
    },
    /// Another server holds the socket.
    #[error("a VM factory server already runs on {socket} (pid {pid})")]
    Running {
        /// The socket.
        socket: PathBuf,
        /// Its pid, as its lock file says.
        pid: String,
    },
    /// A file-system operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Opening the plugins or the factory failed.
    #[error(transparent)]
    Open(Box<crate::sandbox::SandboxError>),
    /// Serving failed.
    #[error("serving on {socket}")]
    Serve {
        /// The socket.
        socket: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
}

impl From<crate::sandbox::SandboxError> for ServerError {
    fn from(e: crate::sandbox::SandboxError) -> ServerError {
        ServerError::Open(Box::new(e))
    }
}

/// The lock that makes a server the only one on its socket; removes its file on drop.
struct ServerLock {
    file: std::fs::File,
    path: PathBuf,
}

impl ServerLock {
    fn take(socket: &Path) -> Result<ServerLock, ServerError> {
        let path = lock_path(socket);
        let io = |what| {
            let path = path.clone();
            move |source| ServerError::Io { what, path, source }
        };
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::Io { what: "creating the directory of", path: dir.to_owned(), source })?;
        }
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io("opening"))?;
        // SAFETY: flock(2) on a file descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = std::fs::read_to_string(&path).unwrap_or_default().trim().to_owned();
            return Err(ServerError::Running { socket: socket.to_owned(), pid: if pid.is_empty() { "unknown".into() } else { pid } });
        }
        file.set_len(0).map_err(io("writing"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("writing"))?;
        Ok(ServerLock { file, path })
    }
}

impl Drop for ServerLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = &self.file;
    }
}

/// `<socket>.lock`.
pub fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Runs the server of `config` until it is asked to shut down (the Shutdown call, SIGTERM or
/// SIGINT); then closes the factory (stopping every VM it holds) and removes its socket.
/// `ready` is called once the socket accepts connections.
pub async fn serve(config: RuntimeConfig, ready: impl FnOnce(&Path)) -> Result<(), ServerError> {
    let file = config.file.clone();
    let section = config.factory.clone().ok_or_else(|| ServerError::NoFactory { file: file.clone() })?;
    let socket = section.server.clone().ok_or(ServerError::NoSocket { file })?;
    let _lock = ServerLock::take(&socket)?;
    match std::fs::remove_file(&socket) {
        Ok(()) => tracing::info!(socket = %socket.display(), "removed the socket a dead server left"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(ServerError::Io { what: "removing the stale socket", path: socket, source }),
    }
    let config_file = config.file.display().to_string();
    let (factory, hypervisor) = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let ctx = crate::sandbox::context::RuntimeContext::open(config)?;
        let (hv, _) = ctx.hypervisor()?;
        let hv = hv.clone();
        let factory = Factory::open_local(&ctx.config, ctx.registry(), &hv).map_err(crate::sandbox::SandboxError::from)?;
        Ok((Arc::new(factory), hv, ctx))
    })
    .await
    .map_err(|e| ServerError::Open(Box::new(crate::sandbox::SandboxError::Task(e.to_string()))))?
    .map(|(f, hv, ctx)| ((f, Arc::new(ctx)), hv))?;
    let listener = tokio::net::UnixListener::bind(&socket).map_err(|source| ServerError::Io { what: "listening on", path: socket.clone(), source })?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| ServerError::Io { what: "setting the mode of", path: socket.clone(), source })?;
    tracing::info!(socket = %socket.display(), factory = %factory.0.plugin(), "VM factory server listening");
    ready(&socket);
    let shutdown = Arc::new(Notify::new());
    let destroy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = Service { factory: factory.0.clone(), hypervisor, shutdown: shutdown.clone(), destroy: destroy.clone(), config: config_file };
    let stop = async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = shutdown.notified() => tracing::info!("asked to shut down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => tracing::info!("terminated: shutting down"),
        }
    };
    let result = tonic::transport::Server::builder()
        .add_service(FactoryServer::new(service))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), stop)
        .await;
    let _ = std::fs::remove_file(&socket);
    // Closing stops the pool's VMs: off the async threads.
    let (f, ctx) = factory;
    let _ = tokio::task::spawn_blocking(move || {
        if destroy.load(std::sync::atomic::Ordering::SeqCst) {
            match f.destroy() {
                Ok(()) => tracing::info!("destroyed the VM factory"),
                Err(e) => tracing::error!("destroying the VM factory: {e}"),
            }
        }
        drop(f);
        drop(ctx);
    })
    .await;
    tracing::info!("VM factory server stopped");
    result.map_err(|source| ServerError::Serve { socket, source })
}

struct Service {
    factory: Arc<Factory>,
    hypervisor: Arc<HypervisorHandle>,
    shutdown: Arc<Notify>,
    /// Whether the Shutdown call asked for the factory to be destroyed.
    destroy: Arc<std::sync::atomic::AtomicBool>,
    config: String,
}

fn check_version(version: u32) -> Result<(), Status> {
    if version == VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!("the client speaks factory protocol {version}, this server {VERSION}")))
    }
}

#[tonic::async_trait]
impl FactoryService for Service {
    async fn new_vm(&self, request: Request<NewVmRequest>) -> Result<Response<NewVmReply>, Status> {
        let request = request.into_inner();
        check_version(request.version)?;
        validate_id("sandbox id", &request.sandbox_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let config = HypervisorConfig::decode(&request.config).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (factory, hv, id) = (self.factory.clone(), self.hypervisor.clone(), request.sandbox_id);
        let vm = tokio::task::spawn_blocking(move || factory.new_vm(&hv, &id, &config))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(NewVmReply { vm }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        check_version(request.into_inner().version)?;
        let factory = self.factory.clone();
        let status = tokio::task::spawn_blocking(move || factory.status())
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(e.to_string()))?;
        let status = match status {
            super::Status::Local(s) => s,
            super::Status::Server(ServerStatus { status, .. }) => status,
        };
        Ok(Response::new(StatusReply { status: status.encode(), pid: std::process::id(), config: self.config.clone() }))
    }

    async fn shutdown(&self, request: Request<ShutdownRequest>) -> Result<Response<ShutdownReply>, Status> {
        let request = request.into_inner();
        check_version(request.version)?;
        if request.destroy {
            self.destroy.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.shutdown.notify_one();
        Ok(Response::new(ShutdownReply {}))
    }
}
