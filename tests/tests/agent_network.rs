//! The agent's network calls (netlink), on the host tier: the agent has a fresh network
//! namespace of its own, so it may change it freely.

use agent_protocol::pb;
use integration_tests::host_agent::{skip, HostAgent};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn interfaces_and_routes_are_listed_and_replaced() {
    if skip() {
        return;
    }
    let agent = HostAgent::start();
    let mut c = agent.connect().await.raw();
    let before = c.list_interfaces(pb::Empty {}).await.expect("list").into_inner();
    let lo = before.interfaces.iter().find(|i| i.name == "lo").expect("lo");
    assert!(!lo.up, "a fresh namespace's lo is down: {lo:?}");

    let wanted = pb::Interface {
        name: "lo".into(),
        mtu: 60000,
        up: true,
        addresses: vec!["127.0.0.1/8".into(), "10.7.0.1/24".into()],
        ..Default::default()
    };
    let now = c.update_interface(wanted).await.expect("update").into_inner();
    assert!(now.up && now.mtu == 60000, "{now:?}");
    for a in ["127.0.0.1/8", "10.7.0.1/24"] {
        assert!(now.addresses.iter().any(|x| x == a), "{a} missing from {now:?}");
    }
    // Addresses are made exactly the given ones.
    let fewer = pb::Interface { name: "lo".into(), up: true, addresses: vec!["127.0.0.1/8".into()], ..Default::default() };
    let now = c.update_interface(fewer).await.expect("update").into_inner();
    assert!(!now.addresses.iter().any(|x| x.starts_with("10.7.")), "{now:?}");

    let restore = pb::Interface { name: "lo".into(), up: true, addresses: vec!["127.0.0.1/8".into(), "10.7.0.1/24".into()], ..Default::default() };
    c.update_interface(restore).await.expect("update");
    let routes = pb::RouteList {
        routes: vec![
            pb::Route { destination: "10.9.0.0/16".into(), device: "lo".into(), ..Default::default() },
            pb::Route { destination: "10.8.0.0/16".into(), gateway: "10.7.0.2".into(), ..Default::default() },
        ],
    };
    let table = c.update_routes(routes).await.expect("routes").into_inner();
    assert!(table.routes.iter().any(|r| r.destination == "10.9.0.0/16" && r.device == "lo"), "{table:?}");
    assert!(table.routes.iter().any(|r| r.destination == "10.8.0.0/16" && r.gateway == "10.7.0.2"), "{table:?}");
    // Replacing drops what is not listed. (lo has no kernel subnet routes; that they are kept
    // is checked on the guest's eth0, in agent_qemu.)
    let table = c.update_routes(pb::RouteList { routes: vec![] }).await.expect("routes").into_inner();
    assert!(!table.routes.iter().any(|r| r.destination.starts_with("10.8.") || r.destination.starts_with("10.9.")), "{table:?}");

    // Bad input.
    let ghost = pb::Interface { name: "nope0".into(), up: true, ..Default::default() };
    let e = c.update_interface(ghost).await.unwrap_err();
    assert!(e.code() == Code::NotFound && e.message().contains("no interface nope0"), "{e:?}");
    let bad = pb::Interface { name: "lo".into(), up: true, addresses: vec!["10.0.0.1".into()], ..Default::default() };
    let e = c.update_interface(bad).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("\"10.0.0.1\""), "{e:?}");
    let nowhere = pb::RouteList { routes: vec![pb::Route { destination: "10.5.0.0/16".into(), ..Default::default() }] };
    let e = c.update_routes(nowhere).await.unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("neither a gateway nor a device"), "{e:?}");
}
