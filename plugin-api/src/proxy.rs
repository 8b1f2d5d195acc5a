//! The proxy interface: `start(params) -> (pid, url)`, `stop(pid)` and `consoleWatched()` of
//! the original runtime. A proxy sits between the runtime (and shims) and the guest agent.

use crate::error::PluginError;
use crate::guard::{guard, guard_infallible};
use crate::payload::{payload, Payload};
use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RSlice, RString},
    StableAbi,
};
use serde::{Deserialize, Serialize};

/// What a proxy needs to start (a versioned JSON payload).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProxyParams {
    /// Schema version of this payload.
    pub schema: u32,
    /// The sandbox the proxy serves.
    pub sandbox_id: String,
    /// The proxy binary, for proxies that run one.
    pub path: Option<String>,
    /// Where the agent listens (`unix:///.../kata.sock`, `hvsock://...`).
    pub agent_url: String,
    /// The VM console socket, whose lines a proxy may log.
    pub console_url: Option<String>,
    /// Whether to turn on the proxy's debug output.
    pub debug: bool,
}
payload!(ProxyParams, 1);

/// What a started proxy reports.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ProxyStarted {
    /// The proxy process (0: none, -1: built into the runtime).
    pub pid: i64,
    /// The URL clients dial to reach the agent through the proxy.
    pub url: RString,
}

/// The FFI-safe proxy interface. Plugin authors implement [`ProxyPlugin`].
#[sabi_trait]
pub trait Proxy: Send + Sync {
    /// Starts the proxy from a [`ProxyParams`] payload.
    fn start(&self, params: RSlice<'_, u8>) -> RResult<ProxyStarted, PluginError>;
    /// Stops the proxy process `pid` (as returned by `start`).
    fn stop(&self, pid: i64) -> RResult<(), PluginError>;
    /// Whether the proxy already watches the VM console.
    #[sabi(last_prefix_field)]
    fn console_watched(&self) -> bool;
}

/// An owned proxy trait object.
pub type ProxyBox = Proxy_TO<'static, RBox<()>>;

/// What a proxy plugin author implements. See [`Proxy`] for each method.
#[allow(missing_docs)]
pub trait ProxyPlugin: Send + Sync + 'static {
    fn start(&self, params: &ProxyParams) -> Result<(i64, String), PluginError>;
    fn stop(&self, pid: i64) -> Result<(), PluginError>;
    fn console_watched(&self) -> bool;
}

/// Wraps a [`ProxyPlugin`] into the FFI trait object, catching panics.
pub fn proxy_into_ffi<P: ProxyPlugin>(p: P) -> ProxyBox {
    Proxy_TO::from_value(ProxyAdapter(p), abi_stable::sabi_trait::TD_Opaque)
}

struct ProxyAdapter<P>(P);

impl<P: ProxyPlugin> Proxy for ProxyAdapter<P> {
    fn start(&self, params: RSlice<'_, u8>) -> RResult<ProxyStarted, PluginError> {
        guard("proxy start", || {
            let (pid, url) = self.0.start(&ProxyParams::decode(&params)?)?;
            Ok(ProxyStarted { pid, url: url.into() })
        })
    }
    fn stop(&self, pid: i64) -> RResult<(), PluginError> {
        guard("proxy stop", || self.0.stop(pid))
    }
    fn console_watched(&self) -> bool {
        guard_infallible(|| self.0.console_watched(), false)
    }
}
