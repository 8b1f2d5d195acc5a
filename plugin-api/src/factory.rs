//! The VM factory interface: `NewVM(HypervisorConfig)` of the seed. The design's kinds are
//! `new` (boot a fresh VM), `template` (clone a saved template) and `cache` (hand out a VM
//! booted ahead of time); none is built yet, and today's core boots every VM through the
//! hypervisor plugin itself, never through a factory.

use crate::error::PluginError;
use crate::guard::guard;
use crate::hypervisor::{HypervisorBox, HypervisorConfig};
use crate::payload::Payload;
use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RSlice, RStr, RVec},
};

/// The FFI-safe factory interface. Plugin authors implement [`VmFactoryPlugin`].
#[sabi_trait]
pub trait VmFactory: Send + Sync {
    /// Returns a VM for `sandbox_id` built by `hypervisor` from a [`HypervisorConfig`]
    /// payload, as the hypervisor's VM state blob.
    #[sabi(last_prefix_field)]
    fn new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: RStr<'_>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;
}

/// An owned factory trait object.
pub type VmFactoryBox = VmFactory_TO<'static, RBox<()>>;

/// What a factory plugin author implements.
pub trait VmFactoryPlugin: Send + Sync + 'static {
    /// See [`VmFactory::new_vm`].
    fn new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: &str,
        config: &HypervisorConfig,
    ) -> Result<Vec<u8>, PluginError>;
}

/// Wraps a [`VmFactoryPlugin`] into the FFI trait object, catching panics.
pub fn factory_into_ffi<F: VmFactoryPlugin>(f: F) -> VmFactoryBox {
    VmFactory_TO::from_value(FactoryAdapter(f), abi_stable::sabi_trait::TD_Opaque)
}

struct FactoryAdapter<F>(F);

impl<F: VmFactoryPlugin> VmFactory for FactoryAdapter<F> {
    fn new_vm(
        &self,
        hypervisor: &HypervisorBox,
        sandbox_id: RStr<'_>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError> {
        guard("new_vm", || {
            let config = HypervisorConfig::decode(&config)?;
            self.0.new_vm(hypervisor, sandbox_id.as_str(), &config).map(RVec::from)
        })
    }
}
