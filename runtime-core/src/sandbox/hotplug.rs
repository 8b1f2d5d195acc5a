//! The Sandbox Hotplug API. Device and NIC hotplug need the hypervisor's hotplug support,
//! which comes in a later release: those calls fail with [`SandboxError::NotSupportedYet`].
//! The guest's network table (interfaces and routes) is the agent's and works now.

use super::handle::Sandbox;
use super::rules;
use super::state::require_sandbox;
use super::{Interface, Route, SandboxError};
use agent_protocol::pb;
use plugin_api::hypervisor::DeviceRequest;

impl Sandbox {
    /// sandbox.AddDevice(info): not supported yet.
    pub async fn add_device(&self, _device: DeviceRequest) -> Result<(), SandboxError> {
        Err(SandboxError::NotSupportedYet { function: "AddDevice" })
    }

    /// sandbox.AddInterface(inf): not supported yet (it needs a NIC hot-plugged into the VM).
    pub async fn add_interface(&self, _interface: Interface) -> Result<Interface, SandboxError> {
        Err(SandboxError::NotSupportedYet { function: "AddInterface" })
    }

    /// sandbox.RemoveInterface(inf): not supported yet.
    pub async fn remove_interface(&self, _interface: Interface) -> Result<Interface, SandboxError> {
        Err(SandboxError::NotSupportedYet { function: "RemoveInterface" })
    }

    async fn network_agent(&self, action: &'static str) -> Result<crate::agent::RawClient, SandboxError> {
        let (_lock, record) = self.locked().await?;
        require_sandbox(&self.id, record.state, rules::NETWORK.sandbox, action)?;
        Ok(self.agent(&record).await?.raw())
    }

    /// sandbox.ListInterfaces(): the guest's NICs.
    pub async fn list_interfaces(&self) -> Result<Vec<Interface>, SandboxError> {
        let mut raw = self.network_agent("list the interfaces of").await?;
        Ok(raw.list_interfaces(pb::Empty {}).await.map_err(self.call_error("ListInterfaces"))?.into_inner().interfaces)
    }

    /// sandbox.UpdateRoutes(routes): replaces the guest's routes (the kernel's own routes are
    /// kept); returns the table after the change.
    pub async fn update_routes(&self, routes: Vec<Route>) -> Result<Vec<Route>, SandboxError> {
        let mut raw = self.network_agent("update the routes of").await?;
        Ok(raw.update_routes(pb::RouteList { routes }).await.map_err(self.call_error("UpdateRoutes"))?.into_inner().routes)
    }

    /// sandbox.ListRoutes(): the guest's routes.
    pub async fn list_routes(&self) -> Result<Vec<Route>, SandboxError> {
        let mut raw = self.network_agent("list the routes of").await?;
        Ok(raw.list_routes(pb::Empty {}).await.map_err(self.call_error("ListRoutes"))?.into_inner().routes)
    }
}
