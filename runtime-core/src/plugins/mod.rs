//! Plugin discovery and loading.

pub mod elf;
mod host_log;
pub mod loader;
pub mod open;
pub mod registry;
pub mod trust;

pub use loader::{load_library, LoadError};
pub use open::{discover, open, OpenError, Opened};
pub use registry::{error_chain, PluginInfo, PluginSource, Refused, Registry, RegistryError};
