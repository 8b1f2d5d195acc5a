//! Driving the agent from tests: the calls of a container's life, with output collected.

use agent_protocol::pb;
use runtime_core::agent::RawClient;

/// Creates a container from `spec` on `rootfs`.
pub async fn create(client: &mut RawClient, id: &str, spec: &serde_json::Value, rootfs: pb::Storage) -> Result<(), tonic::Status> {
    let request = pb::CreateContainerRequest {
        container_id: id.into(),
        oci_spec_json: serde_json::to_vec(spec).expect("spec json"),
        rootfs: Some(rootfs),
    };
    client.create_container(request).await.map(|_| ())
}

/// Reads a process's stdout (or stderr) to its end.
pub async fn read_all(mut client: RawClient, id: &str, exec_id: &str, stderr: bool) -> Result<Vec<u8>, tonic::Status> {
    let stream = if stderr { pb::OutputStream::Stderr } else { pb::OutputStream::Stdout };
    let request = pb::ReadOutputRequest { container_id: id.into(), exec_id: exec_id.into(), stream: stream.into() };
    let mut chunks = client.read_output(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

/// Starts a reader of stdout (or stderr) in the background.
pub fn spawn_reader(client: &RawClient, id: &str, exec_id: &str, stderr: bool) -> tokio::task::JoinHandle<Result<Vec<u8>, tonic::Status>> {
    let (client, id, exec_id) = (client.clone(), id.to_owned(), exec_id.to_owned());
    tokio::spawn(async move { read_all(client, &id, &exec_id, stderr).await })
}

/// Waits for a process; returns its exit status.
pub async fn wait(client: &mut RawClient, id: &str, exec_id: &str) -> Result<i32, tonic::Status> {
    let request = pb::ProcessRef { container_id: id.into(), exec_id: exec_id.into() };
    Ok(client.wait_process(request).await?.into_inner().exit_status)
}

/// A container reference.
pub fn cref(id: &str) -> pb::ContainerRef {
    pb::ContainerRef { container_id: id.into() }
}

/// A client that sends `header` (or nothing) as its protocol version, to test the agent's check.
pub async fn unversioned_client(
    socket: &std::path::Path,
    header: Option<&'static str>,
) -> pb::agent_client::AgentClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, impl tonic::service::Interceptor>> {
    let socket = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move { tokio::net::UnixStream::connect(socket).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .expect("connect");
    pb::agent_client::AgentClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        if let Some(value) = header {
            request.metadata_mut().insert(agent_protocol::VERSION_HEADER, value.parse().expect("ascii"));
        }
        Ok(request)
    })
}
