//! Guest network: interfaces and routes over netlink.
//!
//! Not implemented yet (issue #3 is in progress): every call answers UNIMPLEMENTED, never a
//! silent success.

use agent_protocol::pb;
use tonic::Status;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what}: guest network management is not implemented in this agent yet"))
}

/// Lists the guest's interfaces.
pub async fn list_interfaces() -> Result<pb::InterfaceList, Status> {
    Err(not_yet("ListInterfaces"))
}

/// Sets an interface's addresses, MTU and state.
pub async fn update_interface(_interface: pb::Interface) -> Result<pb::Interface, Status> {
    Err(not_yet("UpdateInterface"))
}

/// Lists the main routing table.
pub async fn list_routes() -> Result<pb::RouteList, Status> {
    Err(not_yet("ListRoutes"))
}

/// Replaces the routes.
pub async fn update_routes(_routes: pb::RouteList) -> Result<pb::RouteList, Status> {
    Err(not_yet("UpdateRoutes"))
}
