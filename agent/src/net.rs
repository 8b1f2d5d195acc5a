//! Guest network over netlink (rtnetlink): list interfaces and IPv4 routes, set an interface's
//! addresses, MTU and state, and replace the routes the runtime manages.
//!
//! Semantics, as in Kata's agent: `UpdateInterface` names an existing interface (by name, or
//! by MAC when the name is empty) and makes its addresses exactly the given ones;
//! `UpdateRoutes` replaces every IPv4 route of the main table that the kernel did not add
//! itself (subnet routes of addresses stay) with the given ones.

use agent_protocol::pb;
use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::net::{IpAddr, Ipv4Addr};
use tonic::Status;

/// Why a network call failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A field does not parse.
    #[error("{0}")]
    Invalid(String),
    /// No such interface.
    #[error("no interface {0}")]
    NoInterface(String),
    /// Netlink refused.
    #[error("{what}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
}

impl From<NetError> for Status {
    fn from(e: NetError) -> Status {
        let message = crate::error_chain(&e);
        match e {
            NetError::Invalid(_) => Status::invalid_argument(message),
            NetError::NoInterface(_) => Status::not_found(message),
            NetError::Netlink { .. } | NetError::Socket(_) => Status::internal(message),
        }
    }
}

fn handle() -> Result<Handle, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetError::Socket)?;
    tokio::spawn(connection);
    Ok(handle)
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

fn mac_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn link_name(link: &LinkMessage) -> String {
    link.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None }).unwrap_or_default()
}

fn to_interface(link: &LinkMessage, addresses: &[AddressMessage]) -> pb::Interface {
    let mut iface = pb::Interface { name: link_name(link), up: link.header.flags.contains(LinkFlags::Up), ..Default::default() };
    for attr in &link.attributes {
        match attr {
            LinkAttribute::Address(mac) => iface.mac = mac_string(mac),
            LinkAttribute::Mtu(mtu) => iface.mtu = *mtu,
            _ => {}
        }
    }
    for addr in addresses.iter().filter(|a| a.header.index == link.header.index) {
        if let Some(ip) = address_of(addr) {
            iface.addresses.push(format!("{ip}/{}", addr.header.prefix_len));
        }
    }
    iface
}

fn address_of(addr: &AddressMessage) -> Option<IpAddr> {
    addr.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    })
    .or_else(|| addr.attributes.iter().find_map(|a| if let AddressAttribute::Address(ip) = a { Some(*ip) } else { None }))
}

async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, NetError> {
    handle.link().get().execute().try_collect().await.map_err(nl("listing links"))
}

async fn addresses(handle: &Handle) -> Result<Vec<AddressMessage>, NetError> {
    handle.address().get().execute().try_collect().await.map_err(nl("listing addresses"))
}

/// Lists the guest's interfaces.
pub async fn list_interfaces() -> Result<pb::InterfaceList, NetError> {
    let handle = handle()?;
    let addrs = addresses(&handle).await?;
    let interfaces = links(&handle).await?.iter().map(|l| to_interface(l, &addrs)).collect();
    Ok(pb::InterfaceList { interfaces })
}

/// Parses "a.b.c.d/len" (or an IPv6 CIDR).
fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), NetError> {
    let bad = || NetError::Invalid(format!("{cidr:?} is not an address with a prefix length (10.0.0.2/24)"));
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok((ip, len))
}

/// Sets an interface's addresses, MTU and state; returns the interface as it now is.
pub async fn update_interface(wanted: pb::Interface) -> Result<pb::Interface, NetError> {
    let parsed: Vec<(IpAddr, u8)> = wanted.addresses.iter().map(|a| parse_cidr(a)).collect::<Result<_, _>>()?;
    let handle = handle()?;
    let all = links(&handle).await?;
    let link = all
        .iter()
        .find(|l| {
            let by_name = !wanted.name.is_empty() && link_name(l) == wanted.name;
            let by_mac = wanted.name.is_empty() && !wanted.mac.is_empty() && to_interface(l, &[]).mac.eq_ignore_ascii_case(&wanted.mac);
            by_name || by_mac
        })
        .ok_or_else(|| NetError::NoInterface(if wanted.name.is_empty() { wanted.mac.clone() } else { wanted.name.clone() }))?;
    let index = link.header.index;
    let name = link_name(link);
    let mut set = LinkUnspec::new_with_index(index);
    if wanted.mtu != 0 {
        set = set.mtu(wanted.mtu);
    }
    set = if wanted.up { set.up() } else { set.down() };
    handle.link().set(set.build()).execute().await.map_err(nl(format!("setting {name} mtu {} up={}", wanted.mtu, wanted.up)))?;

    let existing: Vec<AddressMessage> = addresses(&handle).await?.into_iter().filter(|a| a.header.index == index).collect();
    for old in existing {
        let keep = address_of(&old).is_some_and(|ip| parsed.contains(&(ip, old.header.prefix_len)));
        if !keep {
            handle.address().del(old).execute().await.map_err(nl(format!("removing an address of {name}")))?;
        }
    }
    let now: Vec<(IpAddr, u8)> = addresses(&handle)
        .await?
        .iter()
        .filter(|a| a.header.index == index)
        .filter_map(|a| Some((address_of(a)?, a.header.prefix_len)))
        .collect();
    for (ip, len) in parsed.iter().filter(|p| !now.contains(p)) {
        handle.address().add(index, *ip, *len).execute().await.map_err(nl(format!("adding {ip}/{len} to {name}")))?;
    }
    let addrs = addresses(&handle).await?;
    let link = links(&handle).await?.into_iter().find(|l| l.header.index == index).ok_or(NetError::NoInterface(name))?;
    Ok(to_interface(&link, &addrs))
}

async fn ipv4_routes(handle: &Handle) -> Result<Vec<RouteMessage>, NetError> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let all: Vec<RouteMessage> = handle.route().get(filter).execute().try_collect().await.map_err(nl("listing routes"))?;
    // The main table only (254); local and broadcast routes live in the local table.
    Ok(all.into_iter().filter(|r| r.header.table == 254).collect())
}

fn to_route(r: &RouteMessage, links: &[LinkMessage]) -> pb::Route {
    let mut route = pb::Route::default();
    for attr in &r.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => route.destination = format!("{ip}/{}", r.header.destination_prefix_length),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => route.gateway = ip.to_string(),
            RouteAttribute::Oif(index) => {
                route.device = links.iter().find(|l| l.header.index == *index).map(link_name).unwrap_or_default();
            }
            _ => {}
        }
    }
    route
}

/// Lists the IPv4 routes of the main table.
pub async fn list_routes() -> Result<pb::RouteList, NetError> {
    let handle = handle()?;
    let links = links(&handle).await?;
    let routes = ipv4_routes(&handle).await?.iter().map(|r| to_route(r, &links)).collect();
    Ok(pb::RouteList { routes })
}

/// Replaces the managed routes with `wanted`; returns the table as it now is.
pub async fn update_routes(wanted: pb::RouteList) -> Result<pb::RouteList, NetError> {
    let handle = handle()?;
    let links = links(&handle).await?;
    let mut messages = Vec::new();
    for route in &wanted.routes {
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new();
        if !route.destination.is_empty() {
            let (ip, len) = parse_cidr(&route.destination)?;
            let IpAddr::V4(ip) = ip else { return Err(NetError::Invalid(format!("route {} is not IPv4", route.destination))) };
            builder = builder.destination_prefix(ip, len);
        }
        if !route.gateway.is_empty() {
            let gw: Ipv4Addr = route.gateway.parse().map_err(|_| NetError::Invalid(format!("gateway {:?} is not an IPv4 address", route.gateway)))?;
            builder = builder.gateway(gw);
        }
        if !route.device.is_empty() {
            let link = links.iter().find(|l| link_name(l) == route.device).ok_or_else(|| NetError::NoInterface(route.device.clone()))?;
            builder = builder.output_interface(link.header.index);
        } else if route.gateway.is_empty() {
            return Err(NetError::Invalid(format!("route {:?} has neither a gateway nor a device", route.destination)));
        }
        messages.push((route.clone(), builder.build()));
    }
    for old in ipv4_routes(&handle).await?.into_iter().filter(|r| r.header.protocol != RouteProtocol::Kernel) {
        handle.route().del(old).execute().await.map_err(nl("removing a route"))?;
    }
    // Device routes first, so that gateways they make reachable can be added after them.
    messages.sort_by_key(|(r, _)| !r.gateway.is_empty());
    for (route, message) in messages {
        let what = format!("adding route {:?} via {:?} dev {:?}", route.destination, route.gateway, route.device);
        match handle.route().add(message).execute().await {
            Ok(()) => {}
            // Already there (a kernel subnet route the caller listed too).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
            Err(e) => return Err(nl(what)(e)),
        }
    }
    list_routes().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_or_say_what_is_wrong() {
        assert_eq!(parse_cidr("10.0.0.2/24").unwrap(), ("10.0.0.2".parse().unwrap(), 24));
        for bad in ["10.0.0.2", "10.0.0.2/33", "x/8", "10.0.0.2/-1"] {
            assert!(parse_cidr(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }
}
