//! The agent API on the host (tier 2): the agent runs as root in fresh mount and pid
//! namespaces and serves a Unix socket; containers are busybox on a bind-mounted tree.

use agent_protocol::pb;
use integration_tests::agent::{cref, create, read_all, spawn_reader, wait};
use integration_tests::host_agent::{cid, skip, HostAgent};
use integration_tests::oci;
use runtime_core::agent::RawClient;
use tonic::Code;

async fn stdin(client: &mut RawClient, id: &str, exec_id: &str, data: &[u8]) {
    let request = pb::WriteStdinRequest { container_id: id.into(), exec_id: exec_id.into(), data: data.to_vec() };
    client.write_stdin(request).await.expect("write_stdin");
}

async fn remove(client: &mut RawClient, id: &str, force: bool) {
    let request = pb::RemoveContainerRequest { container_id: id.into(), force };
    client.remove_container(request).await.expect("remove");
}

#[tokio::test(flavor = "multi_thread")]
async fn container_output_stdin_and_exit_status() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let id = cid("io");
    let spec = oci::spec(&["sh", "-c", "echo hello; read l; echo got:$l; echo oops >&2; exit 3"], false);
    create(&mut c, &id, &spec, agent.rootfs()).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let out = spawn_reader(&c, &id, "", false);
    let err = spawn_reader(&c, &id, "", true);
    c.start_container(cref(&id)).await.expect("start");
    stdin(&mut c, &id, "", b"ping\n").await;
    c.close_stdin(pb::ProcessRef { container_id: id.clone(), exec_id: String::new() }).await.expect("close_stdin");
    assert_eq!(wait(&mut c, &id, "").await.unwrap(), 3);
    assert_eq!(String::from_utf8(out.await.unwrap().unwrap()).unwrap(), "hello\ngot:ping\n");
    assert_eq!(String::from_utf8(err.await.unwrap().unwrap()).unwrap(), "oops\n");
    let again = c.start_container(cref(&id)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    assert!(again.message().contains("is stopped: cannot start"), "{}", again.message());
    remove(&mut c, &id, false).await;
    let gone = c.start_container(cref(&id)).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{}", gone.message());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_signal_pause_resume_stats_and_processes() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let id = cid("life");
    create(&mut c, &id, &oci::spec(&["sleep", "1000"], false), agent.rootfs()).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    c.start_container(cref(&id)).await.expect("start");

    let exec = pb::ExecProcessRequest {
        container_id: id.clone(),
        exec_id: "e1".into(),
        oci_process_json: serde_json::to_vec(&oci::process(&["sh", "-c", "echo exec-out; hostname; echo $$"], false)).unwrap(),
    };
    c.exec_process(exec).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let out = String::from_utf8(read_all(c.clone(), &id, "e1", false).await.unwrap()).unwrap();
    assert_eq!(wait(&mut c, &id, "e1").await.unwrap(), 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], ["exec-out", "busybox"], "uts namespace and hostname from the spec: {out}");
    assert_ne!(lines[2], "1", "exec'd process is not the container's init");

    let ps = c.list_processes(cref(&id)).await.expect("ps").into_inner();
    assert!(ps.processes.iter().any(|p| p.command == "sleep 1000"), "{ps:?}");

    c.pause_container(cref(&id)).await.expect("pause");
    let frozen = std::fs::read_to_string(format!("/sys/fs/cgroup/agent/{id}/cgroup.events")).ok();
    let paused_exec = pb::ExecProcessRequest {
        container_id: id.clone(),
        exec_id: "e2".into(),
        oci_process_json: serde_json::to_vec(&oci::process(&["true"], false)).unwrap(),
    };
    let refused = c.exec_process(paused_exec).await.unwrap_err();
    assert!(refused.message().contains("is paused: cannot exec"), "{}", refused.message());
    let again = c.pause_container(cref(&id)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    c.resume_container(cref(&id)).await.expect("resume");
    if let Some(events) = frozen {
        assert!(events.contains("frozen 1"), "{events}");
    }

    let stats = c.stats_container(cref(&id)).await.expect("stats").into_inner();
    assert!(stats.pids.is_some() && stats.cpu.is_some(), "{stats:?}");
    assert!(stats.network.iter().any(|n| n.interface == "lo"), "{stats:?}");

    // The init is PID 1 of its namespace: SIGTERM without a handler is ignored, SIGKILL is not.
    let sig = pb::SignalProcessRequest { container_id: id.clone(), exec_id: String::new(), signal: 9, all: false };
    c.signal_process(sig).await.expect("signal");
    assert_eq!(wait(&mut c, &id, "").await.unwrap(), 128 + 9);
    remove(&mut c, &id, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn terminal_process_with_resize() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let id = cid("tty");
    create(&mut c, &id, &oci::spec(&["sh"], true), agent.rootfs()).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let out = spawn_reader(&c, &id, "", false);
    c.start_container(cref(&id)).await.expect("start");
    let resize = pb::ResizeTerminalRequest { container_id: id.clone(), exec_id: String::new(), rows: 40, columns: 123 };
    c.resize_terminal(resize).await.expect("resize");
    stdin(&mut c, &id, "", b"stty size; echo $((6*7)); exit 5\n").await;
    assert_eq!(wait(&mut c, &id, "").await.unwrap(), 5);
    let text = String::from_utf8_lossy(&out.await.unwrap().unwrap()).into_owned();
    assert!(text.contains("40 123") && text.contains("42"), "{text:?}");
    remove(&mut c, &id, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_spec_isolates_the_container() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let id = cid("iso");
    let script = "echo pid=$$; ulimit -n; pwd; echo foo=$FOO; hostname; ls /; \
                  grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; \
                  grep -c ' /proc/timer_list ' /proc/self/mountinfo; grep ' /proc/sys ' /proc/self/mountinfo | grep -c ' ro'; \
                  touch /written 2>/dev/null && echo rootfs=rw || echo rootfs=ro";
    let mut spec = oci::spec(&["sh", "-c", script], false);
    spec["process"]["cwd"] = "/tmp".into();
    spec["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
    spec["process"]["rlimits"] = serde_json::json!([{ "type": "RLIMIT_NOFILE", "hard": 512, "soft": 512 }]);
    create(&mut c, &id, &spec, agent.rootfs()).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let out = spawn_reader(&c, &id, "", false);
    c.start_container(cref(&id)).await.expect("start");
    assert_eq!(wait(&mut c, &id, "").await.unwrap(), 0);
    let text = String::from_utf8(out.await.unwrap().unwrap()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let expected = [
        "pid=1",                        // its own pid namespace
        "512",                          // rlimits
        "/tmp",                         // cwd
        "foo=bar",                      // env
        "busybox",                      // uts namespace, hostname
        "bin", "dev", "etc", "proc", "sys", "tmp", // pivot_root into the bundle's rootfs
        "CapEff:\t0000000020000420",    // CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE only
        "NoNewPrivs:\t1",
        "1",                            // /proc/timer_list masked
        "1",                            // /proc/sys read-only
        "rootfs=ro",                    // root.readonly
    ];
    assert_eq!(lines, expected, "{text}");

    // Another user, through exec.
    c.start_container(cref(&id)).await.expect_err("stopped");
    c.remove_container(pb::RemoveContainerRequest { container_id: id.clone(), force: false }).await.expect("remove");
    create(&mut c, &id, &oci::spec(&["sleep", "1000"], false), agent.rootfs()).await.expect("create");
    c.start_container(cref(&id)).await.expect("start");
    let mut process = oci::process(&["sh", "-c", "id -u; id -g; id -G"], false);
    process["user"] = serde_json::json!({ "uid": 1000, "gid": 1000, "additionalGids": [2000] });
    let exec = pb::ExecProcessRequest { container_id: id.clone(), exec_id: "u".into(), oci_process_json: serde_json::to_vec(&process).unwrap() };
    c.exec_process(exec).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let ids = String::from_utf8(read_all(c.clone(), &id, "u", false).await.unwrap()).unwrap();
    assert_eq!(ids, "1000\n1000\n1000 2000\n");
    c.remove_container(pb::RemoveContainerRequest { container_id: id.clone(), force: true }).await.expect("remove");
}

/// Runs a container with `spec` to its exit and removes it; returns its exit status.
async fn run_to_exit(agent: &HostAgent, client: &mut RawClient, id: &str, spec: &serde_json::Value) -> i32 {
    create(client, id, spec, agent.rootfs()).await.unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    client.start_container(cref(id)).await.unwrap_or_else(|e| panic!("start {id}: {e}\n{}", agent.log()));
    let status = wait(client, id, "").await.expect("wait");
    remove(client, id, false).await;
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn helpers_are_forked_by_the_spawner_and_exec_d_once_it_is_gone() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    assert_eq!(run_to_exit(&agent, &mut c, &cid("forked"), &oci::spec(&["sh", "-c", "exit 4"], false)).await, 4);
    let log = agent.log();
    assert!(log.contains("container helper spawner started"), "{log}");
    assert!(!log.contains("helpers are exec'd"), "{log}");
    // A poststart hook needs the helper's start (it runs a command in the agent's namespaces).
    let marker = agent.dir().join("poststart-ran");
    let mut spec = oci::spec(&["true"], false);
    spec["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", format!("echo ran > {}", marker.display())]}]});
    assert_eq!(run_to_exit(&agent, &mut c, &cid("hook"), &spec).await, 0);
    assert_eq!(std::fs::read_to_string(&marker).expect("the poststart hook ran"), "ran\n");
    // The spawner dies: the next helper is exec'd, and containers still run.
    let spawner = agent.descendant_with_arg("__container-spawner").expect("the spawner process");
    // SAFETY: kill takes no pointers.
    assert_eq!(unsafe { libc::kill(spawner, libc::SIGKILL) }, 0);
    assert_eq!(run_to_exit(&agent, &mut c, &cid("execd"), &oci::spec(&["sh", "-c", "exit 5"], false)).await, 5);
    assert!(agent.log().contains("helpers are exec'd from now on"), "{}", agent.log());
}
