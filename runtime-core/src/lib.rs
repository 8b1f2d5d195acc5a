//! The thin core of the sandbox runtime.
//!
//! This first layer loads plugins ([`plugins`]) and reads the configuration ([`config`]);
//! the Sandbox API of the seed builds on them.

pub mod agent;
pub mod config;
pub mod plugins;

pub use plugin_api;
