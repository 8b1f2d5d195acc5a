//! The agent in a real guest (tier 3): QEMU with TCG boots the image `cargo xtask guest`
//! builds; the agent answers over virtio-serial + Yamux and runs a busybox container whose
//! rootfs is an ext4 image on virtio-blk.

use agent_protocol::pb;
use integration_tests::agent::{cref, create, read_all, spawn_reader, wait};
use integration_tests::qemu::{image_or_skip, Guest};
use integration_tests::oci;
use std::time::Duration;

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// A process's CPU time (user and system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("QEMU's stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf takes no pointers.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn blk_rootfs() -> pb::Storage {
    pb::Storage { driver: "blk".into(), source: "/dev/vda".into(), fstype: "ext4".into(), read_only: true, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn busybox_container_in_a_qemu_guest() {
    let Some(image) = image_or_skip() else { return };
    let guest = Guest::boot(&image);
    let agent = guest.connect(BOOT_TIMEOUT).await;
    eprintln!("agent ready {:?} after spawning QEMU (TCG)", guest.spawned.elapsed());
    assert!(agent.handshake.channels.iter().any(|c| c == "serial:agent.0"), "{:?}", agent.handshake);
    let health = agent.health().await.expect("health");
    assert_eq!(health.status(), pb::health_response::Status::Serving);
    eprintln!("agent RSS in the guest: {} KiB", health.agent_rss_kib);
    let mut c = agent.raw();

    // A container that prints, reads stdin and exits with a status.
    let spec = oci::spec(&["sh", "-c", "echo hello from busybox; cat /etc/hostname; read l; echo got:$l; exit 3"], false);
    create(&mut c, "c1", &spec, blk_rootfs()).await.unwrap_or_else(|e| panic!("{e}\n{}", guest.console()));
    let out = spawn_reader(&c, "c1", "", false);
    c.start_container(cref("c1")).await.expect("start");
    let input = pb::WriteStdinRequest { container_id: "c1".into(), exec_id: String::new(), data: b"ping\n".to_vec() };
    c.write_stdin(input).await.expect("stdin");
    assert_eq!(wait(&mut c, "c1", "").await.unwrap(), 3);
    let text = String::from_utf8(out.await.unwrap().unwrap()).unwrap();
    assert_eq!(text, "hello from busybox\nbusybox\ngot:ping\n");

    // A long-running one: exec, stats, pause and resume, signal, wait.
    create(&mut c, "c2", &oci::spec(&["sh", "-c", "trap 'exit 42' TERM; while true; do sleep 1; done"], false), blk_rootfs())
        .await
        .expect("create c2");
    c.start_container(cref("c2")).await.expect("start c2");
    let exec = pb::ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "e1".into(),
        oci_process_json: serde_json::to_vec(&oci::process(&["sh", "-c", "echo exec-out; ls /"], false)).unwrap(),
    };
    c.exec_process(exec).await.expect("exec");
    let listing = String::from_utf8(read_all(c.clone(), "c2", "e1", false).await.unwrap()).unwrap();
    assert_eq!(wait(&mut c, "c2", "e1").await.unwrap(), 0);
    assert!(listing.starts_with("exec-out\n") && listing.contains("bin"), "{listing}");

    let stats = c.stats_container(cref("c2")).await.expect("stats").into_inner();
    let memory = stats.memory.expect("memory stats");
    let pids = stats.pids.expect("pids stats");
    assert!(memory.usage_bytes > 0, "memory controller in the guest: {memory:?}");
    assert!(pids.current >= 2, "sh and sleep at least: {pids:?}");

    // Resource limits, applied to the container's cgroup.
    let limits = serde_json::json!({ "memory": { "limit": 67108864 }, "pids": { "limit": 50 } });
    let update = pb::UpdateContainerRequest { container_id: "c2".into(), resources_json: serde_json::to_vec(&limits).unwrap() };
    c.update_container(update).await.expect("update");
    let stats = c.stats_container(cref("c2")).await.expect("stats").into_inner();
    assert_eq!(stats.memory.expect("memory").limit_bytes, 64 << 20);
    assert_eq!(stats.pids.expect("pids").limit, 50);

    // The guest clock and RNG, as after a clone from a template.
    let in_2030 = 1_893_456_000;
    c.set_guest_time(pb::SetGuestTimeRequest { seconds: in_2030, nanoseconds: 0 }).await.expect("set time");
    let date = pb::ExecProcessRequest {
        container_id: "c2".into(),
        exec_id: "date".into(),
        oci_process_json: serde_json::to_vec(&oci::process(&["date", "+%s"], false)).unwrap(),
    };
    c.exec_process(date).await.expect("exec date");
    let now: i64 = String::from_utf8(read_all(c.clone(), "c2", "date", false).await.unwrap()).unwrap().trim().parse().unwrap();
    assert!((in_2030..in_2030 + 120).contains(&now), "guest time {now}");
    c.reseed_random(pb::ReseedRandomRequest { data: vec![7; 64] }).await.expect("reseed");
    let empty = c.reseed_random(pb::ReseedRandomRequest { data: vec![] }).await.unwrap_err();
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);

    // The guest's NIC, configured over netlink; the container shares the guest's network.
    let eth0 = pb::Interface { name: "eth0".into(), up: true, addresses: vec!["10.0.2.15/24".into()], ..Default::default() };
    let eth0 = c.update_interface(eth0).await.expect("update eth0").into_inner();
    assert!(eth0.up && eth0.mac.len() == 17, "{eth0:?}");
    let default = pb::Route { gateway: "10.0.2.2".into(), device: "eth0".into(), ..Default::default() };
    let table = c.update_routes(pb::RouteList { routes: vec![default] }).await.expect("routes").into_inner();
    assert!(table.routes.iter().any(|r| r.destination.is_empty() && r.gateway == "10.0.2.2"), "{table:?}");
    assert!(table.routes.iter().any(|r| r.destination == "10.0.2.0/24" && r.device == "eth0"), "kernel route kept: {table:?}");
    let stats = c.stats_container(cref("c2")).await.expect("stats").into_inner();
    assert!(stats.network.iter().any(|n| n.interface == "eth0"), "{:?}", stats.network);

    c.pause_container(cref("c2")).await.expect("pause");
    c.resume_container(cref("c2")).await.expect("resume");
    let term = pb::SignalProcessRequest { container_id: "c2".into(), exec_id: String::new(), signal: 15, all: false };
    c.signal_process(term).await.expect("signal");
    assert_eq!(wait(&mut c, "c2", "").await.unwrap(), 42, "the trap ran");
    for id in ["c1", "c2"] {
        c.remove_container(pb::RemoveContainerRequest { container_id: id.into(), force: false }).await.expect("remove");
    }
    assert_eq!(agent.health().await.expect("health").containers, 0);

    // The host goes away (as a runtime process does on Release) and a new one connects: the
    // agent starts a fresh Yamux session on the port.
    drop(c);
    drop(agent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // With no host on its port the agent waits for one: it does not spin. An idle guest
    // leaves QEMU (TCG) nearly idle; a busy loop in it takes a whole host CPU.
    let before = cpu_seconds(guest.pid());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_seconds(guest.pid()) - before;
    assert!(used < 1.5, "QEMU used {used:.2} s of CPU in 3 s with the guest idle and no host on the agent's port");
    let again = guest.connect(Duration::from_secs(30)).await;
    assert_eq!(again.health().await.expect("health after reconnect").containers, 0);
}
