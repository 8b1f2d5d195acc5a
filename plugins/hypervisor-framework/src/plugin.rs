//! The [`HypervisorPlugin`] side of a plugin whose VMs live in state blobs: a [`Hypervisor`]
//! holds the parsed plugin config (nothing else: all VM state is in the blobs), decodes each
//! blob into a [`VmState`], runs the plugin's typed operation ([`VmOps`]) and converts at the
//! trait boundary: the state back into a blob, an error into a [`PluginError`] whose kind comes
//! from the plugin ([`VmOps::error_kind`]) and whose message is the whole error chain.

use crate::config::PluginConfigError;
use error_report::chain;
use plugin_api::endpoint::{format_endpoints, AgentEndpoint};
use crate::control::Control;
use crate::ops::{self, inventory, OpError};
use crate::state::VmState;
use plugin_api::hypervisor::{HypervisorConfig, HypervisorPlugin};
use plugin_api::{ErrorKind, PluginError};
use crate::template::TemplateError;
use std::path::Path;
use std::time::Duration;

/// Why an operation of the plugin `C` failed, for the reasons every plugin shares.
pub type SharedError<C> = OpError<<<C as VmOps>::Fields as Control>::Error>;

/// A plugin's typed VM operations, implemented by its config (what every operation reads).
/// Starting, stopping, pausing, resuming and the status are the shared [`ops`] unless the
/// plugin says otherwise.
pub trait VmOps: Sized + Send + Sync + 'static {
    /// The plugin's fields of its state blob, with its hooks into the shared operations.
    type Fields: Control;
    /// Why an operation failed; the shared reasons (a refused blob among them) are some.
    type Error: std::error::Error + From<SharedError<Self>>;
    /// Parses and checks the plugin config.
    fn parse(config: &[u8]) -> Result<Self, PluginConfigError>;
    /// The [`ErrorKind`] the host sees for `error`.
    fn error_kind(error: &Self::Error) -> ErrorKind;
    /// How long [`VmOps::stop_vm`] gives the VMM to quit before it is killed.
    fn stop_timeout(&self) -> Duration;
    /// The directory under which each VM gets `<run_dir>/<sandbox_id>/`.
    fn run_dir(&self) -> &Path;
    /// Creates the VM (its directory and its state); starts nothing.
    fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<VmState<Self::Fields>, Self::Error>;
    /// The agent's addresses, best first (the ABI carries them as
    /// [`format_endpoints`]' text).
    fn agent_endpoint(&self, state: &VmState<Self::Fields>) -> Result<Vec<AgentEndpoint>, Self::Error>;

    /// Boots a created VM ([`ops::start_vm`]).
    fn start_vm(&self, state: &VmState<Self::Fields>) -> Result<VmState<Self::Fields>, Self::Error> {
        Ok(ops::start_vm(state)?)
    }
    /// Stops the VM and removes its directory, idempotently ([`ops::stop_vm`]).
    fn stop_vm(&self, state: &VmState<Self::Fields>) -> Result<VmState<Self::Fields>, Self::Error> {
        Ok(ops::stop_vm(state, self.stop_timeout())?)
    }
    /// Pauses a running VM ([`ops::pause_vm`]).
    fn pause_vm(&self, state: &VmState<Self::Fields>) -> Result<VmState<Self::Fields>, Self::Error> {
        Ok(ops::pause_vm(state)?)
    }
    /// Resumes a paused VM ([`ops::resume_vm`]).
    fn resume_vm(&self, state: &VmState<Self::Fields>) -> Result<VmState<Self::Fields>, Self::Error> {
        Ok(ops::resume_vm(state)?)
    }
    /// `created`, `running`, `paused`, `stopped` or `dead` ([`ops::vm_status`]).
    fn vm_status(&self, state: &VmState<Self::Fields>) -> &'static str {
        ops::vm_status(state)
    }
    /// Saves the paused VM as a template in the private directory `dir`; returns the
    /// descriptor. The default: this plugin has no templates.
    fn save_template(&self, state: &VmState<Self::Fields>, dir: &Path) -> Result<Vec<u8>, Self::Error> {
        let _ = (state, dir);
        Err(unsupported::<Self>())
    }
    /// Creates the VM of `sandbox_id` as a clone of the template `template` describes, with
    /// `config`'s console log; starts nothing. The default: this plugin has no templates.
    fn create_from_template(&self, sandbox_id: &str, template: &[u8], config: &HypervisorConfig) -> Result<VmState<Self::Fields>, Self::Error> {
        let _ = (sandbox_id, template, config);
        Err(unsupported::<Self>())
    }
}

/// The error of a plugin without templates.
fn unsupported<C: VmOps>() -> C::Error {
    SharedError::<C>::from(TemplateError::Unsupported { program: <C::Fields as Control>::THE_PROGRAM }).into()
}

/// A hypervisor instance: the plugin config `C`, nothing else.
#[derive(Debug, Clone)]
pub struct Hypervisor<C> {
    config: C,
}

impl<C: VmOps> Hypervisor<C> {
    /// Parses the plugin config; a refused one is `INVALID_INPUT`.
    pub fn new(config: &[u8]) -> Result<Hypervisor<C>, PluginError> {
        let config = C::parse(config).map_err(|e| PluginError::invalid_input(chain(&e)))?;
        Ok(Hypervisor { config })
    }

    /// The parsed config.
    pub fn config(&self) -> &C {
        &self.config
    }

    /// Converts at the trait boundary: the kind from the plugin, the whole chain as the message.
    fn plugin_error(error: C::Error) -> PluginError {
        PluginError::new(C::error_kind(&error), chain(&error))
    }

    fn decode(blob: &[u8]) -> Result<VmState<C::Fields>, PluginError> {
        VmState::decode(blob).map_err(|e| Self::plugin_error(SharedError::<C>::from(e).into()))
    }

    /// Writes the copy of a new VM's state into its directory (without it, `list_vms` could
    /// not find the VM should the host lose its blob) and encodes the state.
    fn keep_state_file(&self, state: VmState<C::Fields>) -> Result<Vec<u8>, PluginError> {
        if let Err(e) = inventory::save_state_file(&state) {
            let _ = crate::dir::remove(&state.dir);
            return Err(Self::plugin_error(SharedError::<C>::from(e).into()));
        }
        Ok(state.encode())
    }

    /// Decodes `blob`, runs `op` on it, keeps the copy in the VM directory up to date and
    /// encodes the new state.
    fn apply(
        &self,
        blob: &[u8],
        op: impl FnOnce(&C, &VmState<C::Fields>) -> Result<VmState<C::Fields>, C::Error>,
    ) -> Result<Vec<u8>, PluginError> {
        let state = op(&self.config, &Self::decode(blob)?).map_err(Self::plugin_error)?;
        if let Err(e) = inventory::save_state_file(&state) {
            // The VM is fine; only `list_vms` may see an older state of it.
            tracing::warn!(sandbox_id = %state.sandbox_id, "{}", chain(&e));
        }
        Ok(state.encode())
    }
}

impl<C: VmOps> HypervisorPlugin for Hypervisor<C> {
    fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        let state = self.config.create_vm(sandbox_id, config).map_err(Self::plugin_error)?;
        self.keep_state_file(state)
    }

    fn start_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        self.apply(blob, C::start_vm)
    }

    fn save_template(&self, blob: &[u8], dir: &str) -> Result<Vec<u8>, PluginError> {
        let state = Self::decode(blob)?;
        let dir = crate::template::check_dir(dir).map_err(|e| Self::plugin_error(SharedError::<C>::from(e).into()))?;
        self.config.save_template(&state, &dir).map_err(Self::plugin_error)
    }

    fn create_from_template(&self, sandbox_id: &str, template: &[u8], config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        let state = self.config.create_from_template(sandbox_id, template, config).map_err(Self::plugin_error)?;
        self.keep_state_file(state)
    }

    fn stop_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        self.apply(blob, C::stop_vm)
    }

    fn pause_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        self.apply(blob, C::pause_vm)
    }

    fn resume_vm(&self, blob: &[u8]) -> Result<Vec<u8>, PluginError> {
        self.apply(blob, C::resume_vm)
    }

    fn agent_endpoint(&self, blob: &[u8]) -> Result<String, PluginError> {
        let endpoints = self.config.agent_endpoint(&Self::decode(blob)?).map_err(Self::plugin_error)?;
        Ok(format_endpoints(&endpoints))
    }

    fn vm_status(&self, blob: &[u8]) -> Result<String, PluginError> {
        Ok(self.config.vm_status(&Self::decode(blob)?).to_owned())
    }

    fn list_vms(&self) -> Result<Vec<(String, Vec<u8>)>, PluginError> {
        inventory::list_vms::<C::Fields>(self.config.run_dir()).map_err(|e| PluginError::new(ErrorKind::IO, chain(&e)))
    }

    fn adopt_vm(&self, blob: &[u8], sandbox_id: &str) -> Result<Vec<u8>, PluginError> {
        let state = Self::decode(blob)?;
        let adopted = inventory::adopt_vm(&state, self.config.run_dir(), sandbox_id)
            .map_err(|e| Self::plugin_error(e.into()))?;
        Ok(adopted.encode())
    }
}
