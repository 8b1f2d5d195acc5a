//! The gRPC service: checks the protocol version of every call and maps each method onto the
//! container manager, the network and the guest housekeeping modules.

use crate::containers::{ContainerError, Containers};
use crate::{guest, net};
use agent_protocol::pb::{self, agent_server::Agent};
use agent_protocol::{check_header, VERSION_HEADER};
use futures::Stream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// The agent service.
pub struct AgentService {
    containers: Arc<Containers>,
    channels: Vec<String>,
    started: Instant,
}

impl AgentService {
    /// A service over the container manager, reporting `channels` in the handshake.
    pub fn new(containers: Arc<Containers>, channels: Vec<String>) -> AgentService {
        AgentService { containers, channels, started: Instant::now() }
    }
}

/// The interceptor every call goes through: the client's protocol major must be ours.
pub fn check_version(request: Request<()>) -> Result<Request<()>, Status> {
    let header = request.metadata().get(VERSION_HEADER).and_then(|v| v.to_str().ok());
    check_header(header).map_err(|e| Status::failed_precondition(e.to_string()))?;
    Ok(request)
}

impl From<ContainerError> for Status {
    fn from(e: ContainerError) -> Status {
        use ContainerError as E;
        let message = crate::error_chain(&e);
        match e {
            E::InvalidArgument(_) | E::InvalidSpec(_) => Status::invalid_argument(message),
            E::NotFound { .. } | E::NoRootfs { .. } => Status::not_found(message),
            E::Exists(_) => Status::already_exists(message),
            E::WrongState { .. } | E::ReaderAttached { .. } | E::NoTerminal { .. } => Status::failed_precondition(message),
            E::Io { .. } | E::Runtime { .. } | E::Helper(_) => Status::internal(message),
        }
    }
}

/// VmRSS of this process, in KiB (0 if unreadable).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<pb::OutputChunk, Status>> + Send>>;

fn ok<T>(value: T) -> Result<Response<T>, Status> {
    Ok(Response::new(value))
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn handshake(&self, _request: Request<pb::HandshakeRequest>) -> Result<Response<pb::HandshakeResponse>, Status> {
        ok(pb::HandshakeResponse {
            agent_protocol: Some(agent_protocol::PROTOCOL_VERSION.into()),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            channels: self.channels.clone(),
        })
    }

    async fn health(&self, _request: Request<pb::Empty>) -> Result<Response<pb::HealthResponse>, Status> {
        ok(pb::HealthResponse {
            status: pb::health_response::Status::Serving.into(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            containers: self.containers.count() as u32,
            agent_rss_kib: rss_kib(),
        })
    }

    async fn create_container(&self, request: Request<pb::CreateContainerRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.containers.create(&r.container_id, &r.oci_spec_json, r.rootfs).await?;
        ok(pb::Empty {})
    }

    async fn start_container(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::Empty>, Status> {
        self.containers.start(&request.into_inner().container_id).await?;
        ok(pb::Empty {})
    }

    async fn remove_container(&self, request: Request<pb::RemoveContainerRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.containers.remove(&r.container_id, r.force).await?;
        ok(pb::Empty {})
    }

    async fn pause_container(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::Empty>, Status> {
        self.containers.pause(&request.into_inner().container_id).await?;
        ok(pb::Empty {})
    }

    async fn resume_container(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::Empty>, Status> {
        self.containers.resume(&request.into_inner().container_id).await?;
        ok(pb::Empty {})
    }

    async fn stats_container(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerStats>, Status> {
        ok(self.containers.stats(&request.into_inner().container_id).await?)
    }

    async fn update_container(&self, request: Request<pb::UpdateContainerRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.containers.update(&r.container_id, &r.resources_json).await?;
        ok(pb::Empty {})
    }

    async fn list_processes(&self, request: Request<pb::ContainerRef>) -> Result<Response<pb::ProcessList>, Status> {
        ok(self.containers.processes(&request.into_inner().container_id).await?)
    }

    async fn exec_process(&self, request: Request<pb::ExecProcessRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.containers.exec(&r.container_id, &r.exec_id, &r.oci_process_json).await?;
        ok(pb::Empty {})
    }

    async fn signal_process(&self, request: Request<pb::SignalProcessRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.containers.signal(&r.container_id, &r.exec_id, r.signal, r.all).await?;
        ok(pb::Empty {})
    }

    async fn wait_process(&self, request: Request<pb::ProcessRef>) -> Result<Response<pb::WaitProcessResponse>, Status> {
        let r = request.into_inner();
        let exit_status = self.containers.wait(&r.container_id, &r.exec_id).await?;
        ok(pb::WaitProcessResponse { exit_status })
    }

    async fn status_process(&self, request: Request<pb::ProcessRef>) -> Result<Response<pb::ProcessStatus>, Status> {
        let r = request.into_inner();
        let (state, exit) = self.containers.status(&r.container_id, &r.exec_id)?;
        ok(pb::ProcessStatus { container_state: state.to_string(), exited: exit.is_some(), exit_status: exit.unwrap_or_default() })
    }

    async fn write_stdin(&self, request: Request<pb::WriteStdinRequest>) -> Result<Response<pb::WriteStdinResponse>, Status> {
        let r = request.into_inner();
        let written = self.containers.write_stdin(&r.container_id, &r.exec_id, &r.data).await?;
        ok(pb::WriteStdinResponse { written })
    }

    async fn close_stdin(&self, request: Request<pb::ProcessRef>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.containers.close_stdin(&r.container_id, &r.exec_id).await?;
        ok(pb::Empty {})
    }

    type ReadOutputStream = OutputStream;

    async fn read_output(&self, request: Request<pb::ReadOutputRequest>) -> Result<Response<OutputStream>, Status> {
        let r = request.into_inner();
        let stderr = r.stream() == pb::OutputStream::Stderr;
        let stream = self.containers.read_output(&r.container_id, &r.exec_id, stderr).await?;
        ok(Box::pin(stream) as OutputStream)
    }

    async fn resize_terminal(&self, request: Request<pb::ResizeTerminalRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        self.containers.resize(&r.container_id, &r.exec_id, r.rows, r.columns).await?;
        ok(pb::Empty {})
    }

    async fn list_interfaces(&self, _request: Request<pb::Empty>) -> Result<Response<pb::InterfaceList>, Status> {
        ok(net::list_interfaces().await?)
    }

    async fn update_interface(&self, request: Request<pb::Interface>) -> Result<Response<pb::Interface>, Status> {
        ok(net::update_interface(request.into_inner()).await?)
    }

    async fn list_routes(&self, _request: Request<pb::Empty>) -> Result<Response<pb::RouteList>, Status> {
        ok(net::list_routes().await?)
    }

    async fn update_routes(&self, request: Request<pb::RouteList>) -> Result<Response<pb::RouteList>, Status> {
        ok(net::update_routes(request.into_inner()).await?)
    }

    async fn set_guest_time(&self, request: Request<pb::SetGuestTimeRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        guest::set_time(r.seconds, r.nanoseconds).map_err(|e| Status::invalid_argument(crate::error_chain(&e)))?;
        ok(pb::Empty {})
    }

    async fn reseed_random(&self, request: Request<pb::ReseedRandomRequest>) -> Result<Response<pb::Empty>, Status> {
        let data = request.into_inner().data;
        guest::reseed_random(&data).map_err(|e| Status::invalid_argument(crate::error_chain(&e)))?;
        tracing::info!(bytes = data.len(), "reseeded the RNG from the host (RNDADDENTROPY, RNDRESEEDCRNG)");
        ok(pb::Empty {})
    }
}
