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

/// The FFI-safe proxy interface. Plugin authors implement [`ProxyPlugin`], whose
/// documentation is the contract of each method.
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

/// What a proxy plugin author implements, in plain Rust types. The plugin's
/// [`Plugin::new_proxy`](crate::Plugin::new_proxy) returns one, built from the plugin's config
/// (JSON); the root module wraps it with [`proxy_into_ffi`] into the FFI trait object
/// [`Proxy`], which decodes the [`ProxyParams`] payload and catches panics.
///
/// A proxy stands between the host (the runtime's agent client and the shims) and the guest
/// agent of one sandbox, as the proxies of the original runtime did: `noop` and `none` start
/// nothing, `kata` and `cc` run a proxy process per VM, `kata-builtin` works inside the host
/// process. Every method blocks and may be called on any thread; several sandboxes may use one
/// instance at once. Errors are a [`PluginError`] whose one-line message names what was wrong;
/// a panic reaches the host as [`PANICKED`](crate::ErrorKind::PANICKED).
///
/// Today's core loads and lists proxy plugins (`sandboxctl plugins`) but never calls one: no
/// proxy plugin is built yet (`plugins/proxy-*`), and the host dials the agent at the
/// addresses the hypervisor plugin gives. The methods below say what a proxy must do and what
/// the core will do with the answers, following the original runtime.
pub trait ProxyPlugin: Send + Sync + 'static {
    /// Starts the proxy for the sandbox `params.sandbox_id` and returns `(pid, url)`.
    ///
    /// - `params.agent_url`: where the agent listens, which the proxy relays to;
    ///   `params.console_url`: the VM's console socket, whose lines a proxy may read and log;
    ///   `params.path`: the proxy binary, for a proxy that runs one (missing where it needs one:
    ///   [`INVALID_INPUT`](crate::ErrorKind::INVALID_INPUT); not there:
    ///   [`NOT_FOUND`](crate::ErrorKind::NOT_FOUND)); `params.debug`: turn on its debug output.
    /// - `pid`: the proxy process the plugin started (it must outlive the calling host
    ///   process, as the VM does), `0` when there is no process, `-1` when the proxy runs
    ///   inside the host process.
    /// - `url`: what clients dial to reach the agent from now on: the proxy's own socket, or
    ///   `params.agent_url` itself for a proxy that relays nothing.
    ///
    /// The host is to keep both with the sandbox, hand `url` to its agent client and to every
    /// shim of the sandbox's processes, and call `stop(pid)` when the sandbox stops; it skips
    /// `start` while [`console_watched`](Self::console_watched) says the proxy already serves
    /// the VM. A proxy process that does not come up is an error
    /// ([`OTHER`](crate::ErrorKind::OTHER), with its output) and leaves no process behind.
    fn start(&self, params: &ProxyParams) -> Result<(i64, String), PluginError>;

    /// Stops the proxy that [`start`](Self::start) reported as `pid`: ends that process (a
    /// SIGTERM, as the original `kata` proxy does), or for `pid` 0 or -1 releases what the
    /// in-process proxy holds (its console connection). It must be idempotent: a process that
    /// is already gone, or a proxy already stopped, is success. A signal that is refused is an
    /// [`IO`](crate::ErrorKind::IO) error.
    fn stop(&self, pid: i64) -> Result<(), PluginError>;

    /// Whether this proxy already watches the VM's console (holds its console connection and
    /// logs its lines); the host is then not to start it again. It cannot fail; a panic in it
    /// counts as `false`.
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
