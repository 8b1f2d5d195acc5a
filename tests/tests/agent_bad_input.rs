//! Bad input to the agent (tier 2, on the host): each gets a clear error and the agent goes on
//! serving the other containers.

use agent_protocol::pb;
use integration_tests::agent::{cref, create, read_all, spawn_reader, wait};
use integration_tests::host_agent::{cid, skip, HostAgent};
use integration_tests::oci;
use runtime_core::agent::{AgentClient, Dialer, RawClient};
use std::time::Duration;
use tonic::Code;

fn expect_err(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, text: &str) {
    let status = result.expect_err("the call should fail");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(text), "{:?} does not say {text:?}", status.message());
}

async fn run_ok(c: &mut RawClient, agent: &HostAgent, id: &str) {
    create(c, id, &oci::spec(&["echo", "still serving"], false), agent.rootfs()).await.expect("create");
    let out = spawn_reader(c, id, "", false);
    c.start_container(cref(id)).await.expect("start");
    assert_eq!(wait(c, id, "").await.unwrap(), 0);
    assert_eq!(out.await.unwrap().unwrap(), b"still serving\n");
    c.remove_container(pb::RemoveContainerRequest { container_id: id.into(), force: false }).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_ids_rootfs_and_states_get_clear_errors() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let good = agent.rootfs();

    // A long-running container that must survive everything below.
    let keep = cid("keep");
    create(&mut c, &keep, &oci::spec(&["sleep", "1000"], false), good.clone()).await.expect("create keep");
    c.start_container(cref(&keep)).await.expect("start keep");

    let bad_json = pb::CreateContainerRequest { container_id: cid("bad"), oci_spec_json: b"{not json".to_vec(), rootfs: Some(good.clone()) };
    expect_err(c.create_container(bad_json).await, Code::InvalidArgument, "invalid OCI spec");
    let mut no_args = oci::spec(&["x"], false);
    no_args["process"]["args"] = serde_json::json!([]);
    expect_err(create(&mut c, &cid("noargs"), &no_args, good.clone()).await, Code::InvalidArgument, "process.args is empty");
    expect_err(create(&mut c, "../escape", &oci::spec(&["true"], false), good.clone()).await, Code::InvalidArgument, "container id");

    let missing = pb::Storage { source: "/nonexistent/rootfs".into(), ..good.clone() };
    let id = cid("norootfs");
    expect_err(create(&mut c, &id, &oci::spec(&["true"], false), missing).await, Code::NotFound, "rootfs source /nonexistent/rootfs does not exist");
    assert!(!agent.dir().join("state/bundles").join(&id).exists(), "no half-made bundle is left");
    let no_driver = pb::Storage { driver: "nfs".into(), ..good.clone() };
    expect_err(create(&mut c, &id, &oci::spec(&["true"], false), no_driver).await, Code::InvalidArgument, "\"nfs\"");

    let dup = create(&mut c, &keep, &oci::spec(&["true"], false), good.clone()).await;
    expect_err(dup, Code::AlreadyExists, "already exists");

    // A stopped container: no exec, no start.
    let done = cid("done");
    create(&mut c, &done, &oci::spec(&["true"], false), good.clone()).await.expect("create done");
    c.start_container(cref(&done)).await.expect("start done");
    assert_eq!(wait(&mut c, &done, "").await.unwrap(), 0);
    let exec = pb::ExecProcessRequest {
        container_id: done.clone(),
        exec_id: "late".into(),
        oci_process_json: serde_json::to_vec(&oci::process(&["true"], false)).unwrap(),
    };
    expect_err(c.exec_process(exec).await, Code::FailedPrecondition, "is stopped: cannot exec");
    let running = pb::RemoveContainerRequest { container_id: keep.clone(), force: false };
    expect_err(c.remove_container(running).await, Code::FailedPrecondition, "is running: cannot remove without force");

    // Signals to what does not exist.
    let unknown = pb::SignalProcessRequest { container_id: keep.clone(), exec_id: "nope".into(), signal: 15, all: false };
    expect_err(c.signal_process(unknown).await, Code::NotFound, "process nope of container");
    let bad_sig = pb::SignalProcessRequest { container_id: keep.clone(), exec_id: String::new(), signal: 999, all: false };
    expect_err(c.signal_process(bad_sig).await, Code::InvalidArgument, "999 is not a signal");
    let no_container = pb::SignalProcessRequest { container_id: "ghost".into(), exec_id: String::new(), signal: 15, all: false };
    expect_err(c.signal_process(no_container).await, Code::NotFound, "container ghost not found");
    let exited = pb::SignalProcessRequest { container_id: done.clone(), exec_id: String::new(), signal: 15, all: false };
    expect_err(c.signal_process(exited).await, Code::NotFound, "exited with status 0");
    let resize = pb::ResizeTerminalRequest { container_id: keep.clone(), exec_id: String::new(), rows: 1, columns: 1 };
    expect_err(c.resize_terminal(resize).await, Code::FailedPrecondition, "has no terminal");

    // The agent still serves, and the survivor is untouched.
    run_ok(&mut c, &agent, &cid("after")).await;
    let ps = c.list_processes(cref(&keep)).await.expect("ps").into_inner();
    assert!(ps.processes.iter().any(|p| p.command == "sleep 1000"), "{ps:?}");
    c.remove_container(pb::RemoveContainerRequest { container_id: keep.clone(), force: true }).await.expect("force remove");
    c.remove_container(pb::RemoveContainerRequest { container_id: done.clone(), force: false }).await.expect("remove done");
    assert_eq!(agent.connect().await.health().await.expect("health").containers, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_megabytes_in_one_burst_arrive_whole() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let id = cid("burst");
    create(&mut c, &id, &oci::spec(&["head", "-c", "10485760", "/dev/zero"], false), agent.rootfs()).await.expect("create");
    c.start_container(cref(&id)).await.expect("start");
    // Nobody reads yet: the agent buffers a bounded amount and the process waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = read_all(c.clone(), &id, "", false).await.expect("read");
    assert_eq!(out.len(), 10 << 20);
    assert!(out.iter().all(|b| *b == 0));
    assert_eq!(wait(&mut c, &id, "").await.unwrap(), 0);
    c.remove_container(pb::RemoveContainerRequest { container_id: id.clone(), force: false }).await.expect("remove");
    run_ok(&mut c, &agent, &cid("after-burst")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reader_that_disconnects_mid_stream_frees_the_stream() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let id = cid("drop");
    let script = "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done";
    create(&mut c, &id, &oci::spec(&["sh", "-c", script], false), agent.rootfs()).await.expect("create");
    c.start_container(cref(&id)).await.expect("start");

    // A second client reads one chunk and goes away with its whole connection.
    {
        let mut other = agent.connect().await.raw();
        let request = pb::ReadOutputRequest { container_id: id.clone(), exec_id: String::new(), stream: 0 };
        let mut stream = other.read_output(request).await.expect("read").into_inner();
        assert!(!stream.message().await.expect("chunk").expect("some output").data.is_empty());
        let request = pb::ReadOutputRequest { container_id: id.clone(), exec_id: String::new(), stream: 0 };
        expect_err(c.read_output(request).await.map(|_| ()), Code::FailedPrecondition, "another reader is attached to stdout");
    }
    // The seat frees once the agent sees the disconnect; the rest of the output is there.
    let mut rest = None;
    for _ in 0..100 {
        match read_all(c.clone(), &id, "", false).await {
            Ok(out) => {
                rest = Some(out);
                break;
            }
            Err(s) if s.code() == Code::FailedPrecondition => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(s) => panic!("{s}"),
        }
    }
    let rest = String::from_utf8(rest.expect("the stream was freed")).unwrap();
    assert!(rest.ends_with("line-19999\n"), "...{}", &rest[rest.len().saturating_sub(40)..]);
    assert_eq!(wait(&mut c, &id, "").await.unwrap(), 0);
    c.remove_container(pb::RemoveContainerRequest { container_id: id.clone(), force: false }).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_without_a_compatible_protocol_version_are_refused() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    // Handshake first, so the socket exists.
    drop(agent.connect().await);
    let socket = agent.dir().join("agent.sock");
    for (header, text) in [(None, "x-agent-protocol header"), (Some("2.0"), "majors differ"), (Some("one"), "not major.minor")] {
        let mut client = integration_tests::agent::unversioned_client(&socket, header).await;
        expect_err(client.health(pb::Empty {}).await, Code::FailedPrecondition, text);
    }
    // The versioned client still works.
    let ok = AgentClient::connect(Dialer::Unix(socket)).await.expect("connect");
    assert_eq!(ok.handshake.agent_protocol.expect("version").major, agent_protocol::PROTOCOL_VERSION.major);
}
