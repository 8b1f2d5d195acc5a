//! The shim interface: `start(sandbox, ShimParams) -> pid` of the original runtime. A shim
//! relays one container process's I/O, signals and exit status; pid 0 means no process
//! (noop) and -1 means the work is done in-process (built-in).

use crate::error::PluginError;
use crate::guard::guard;
use crate::payload::{payload, Payload};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RSlice},
};
use serde::{Deserialize, Serialize};

/// What a shim needs to start (a versioned JSON payload).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShimParams {
    /// Schema version of this payload.
    pub schema: u32,
    /// The sandbox the process runs in.
    pub sandbox_id: String,
    /// The container the process runs in.
    pub container_id: String,
    /// The process token (exec id) the shim attaches to.
    pub token: String,
    /// The address of the agent or the proxy the shim dials.
    pub url: String,
    /// A console (pty) path to use as the shim's stdio.
    pub console: Option<String>,
    /// Whether the process has a terminal.
    pub terminal: bool,
    /// Whether the shim is detached from the runtime's stdio.
    pub detach: bool,
}
payload!(ShimParams, 1);

/// The FFI-safe shim interface. Plugin authors implement [`ShimPlugin`].
#[sabi_trait]
pub trait Shim: Send + Sync {
    /// Starts a shim for one process from a [`ShimParams`] payload; returns its pid
    /// (0: no process, -1: built into the runtime).
    #[sabi(last_prefix_field)]
    fn start(&self, params: RSlice<'_, u8>) -> RResult<i64, PluginError>;
}

/// An owned shim trait object.
pub type ShimBox = Shim_TO<'static, RBox<()>>;

/// What a shim plugin author implements.
pub trait ShimPlugin: Send + Sync + 'static {
    /// See [`Shim::start`].
    fn start(&self, params: &ShimParams) -> Result<i64, PluginError>;
}

/// Wraps a [`ShimPlugin`] into the FFI trait object, catching panics.
pub fn shim_into_ffi<S: ShimPlugin>(s: S) -> ShimBox {
    Shim_TO::from_value(ShimAdapter(s), abi_stable::sabi_trait::TD_Opaque)
}

struct ShimAdapter<S>(S);

impl<S: ShimPlugin> Shim for ShimAdapter<S> {
    fn start(&self, params: RSlice<'_, u8>) -> RResult<i64, PluginError> {
        guard("shim start", || self.0.start(&ShimParams::decode(&params)?))
    }
}
