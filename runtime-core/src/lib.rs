//! The thin core of the sandbox runtime: the Sandbox API of the seed ([`sandbox`]), on top of
//! the plugins ([`plugins`]), the configuration ([`config`]) and the agent client
//! ([`agent`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use runtime_core::sandbox::{Runtime, SandboxConfig};
//! let runtime = Runtime::from_file("/etc/sandbox-runtime/config.toml".as_ref())?;
//! let config: SandboxConfig = runtime_core::sandbox::load_sandbox_config("sandbox.toml".as_ref())?;
//! let sandbox = runtime.run_sandbox(config).await?;
//! println!("{:?}", sandbox.status().await?);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod agent;
pub mod config;
mod console_tail;
pub mod factory;
mod parse_error;
pub mod plugins;
pub mod sandbox;

pub use plugin_api;
