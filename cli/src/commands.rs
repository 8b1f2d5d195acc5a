//! The subcommands.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use plugin_api::storage::StorageHandle;
use runtime_core::config::RuntimeConfig;
use runtime_core::plugins::Registry;
use std::io::Write;
use std::path::Path;

/// `sandboxctl store ...`
#[derive(Subcommand)]
pub enum StoreCommand {
    /// Save VALUE under KEY.
    Put {
        /// The key.
        key: String,
        /// The value (UTF-8 text).
        value: String,
    },
    /// Print the value under KEY.
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// List the keys under PREFIX.
    List {
        /// The prefix (all keys if absent).
        #[arg(default_value = "")]
        prefix: String,
    },
}

fn open(config_path: &Path) -> Result<(RuntimeConfig, Registry, StorageHandle)> {
    let config = RuntimeConfig::load(config_path)?;
    let registry = Registry::discover(&config.plugins.dirs, config.plugins.include_static)?;
    let storage = registry.open_storage(&config.storage.plugin, &config.storage.settings_json())?;
    Ok((config, registry, storage))
}

fn print_plugins(registry: &Registry) {
    println!("{:<11} {:<10} {:<8} {:<8} {:<16} SOURCE", "KIND", "NAME", "VERSION", "API", "VENDOR");
    for p in registry.plugins() {
        println!(
            "{:<11} {:<10} {:<8} {:<8} {:<16} {}",
            p.kind.name(),
            p.name,
            p.version,
            p.api_version,
            p.vendor,
            p.source
        );
    }
    for r in registry.refused() {
        println!("refused: {}", r.reason);
    }
}

/// `sandboxctl plugins`
pub fn plugins(config_path: &Path) -> Result<()> {
    let config = RuntimeConfig::load(config_path)?;
    let registry = Registry::discover(&config.plugins.dirs, config.plugins.include_static)?;
    print_plugins(&registry);
    Ok(())
}

/// `sandboxctl store ...`
pub fn store(config_path: &Path, cmd: StoreCommand) -> Result<()> {
    let (_, _, storage) = open(config_path)?;
    let mut out = std::io::stdout().lock();
    match cmd {
        StoreCommand::Put { key, value } => storage.save(&key, value.as_bytes())?,
        StoreCommand::Get { key } => match storage.load(&key)? {
            Some(value) => {
                out.write_all(&value)?;
                writeln!(out)?;
            }
            None => bail!("no record under key {key:?}"),
        },
        StoreCommand::Delete { key } => storage.delete(&key)?,
        StoreCommand::List { prefix } => {
            for key in storage.list(&prefix)? {
                writeln!(out, "{key}")?;
            }
        }
    }
    Ok(())
}

/// `sandboxctl conformance LIB`
pub fn conformance(library: &Path, plugin_config: &str) -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let json = plugin_config.replace("{dir}", &dir.path().join("store").to_string_lossy());
    let config: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("--plugin-config is not JSON: {json}"))?;
    let mut registry = Registry::new();
    let name = registry.add_library(library)?.name.clone();
    let storage = registry.open_storage(&name, &config)?;
    println!("MetadataStorage conformance of {name:?} ({})", library.display());
    let report = plugin_api::conformance::storage::run(&storage);
    println!("{report}");
    if !report.passed() {
        bail!("{} conformance checks failed", report.failures().count());
    }
    Ok(())
}

/// `sandboxctl demo`
pub fn demo(config_path: &Path) -> Result<()> {
    let (config, registry, storage) = open(config_path)?;
    println!("Plugins (config {}):", config_path.display());
    print_plugins(&registry);
    let key = format!("demo/{}", std::process::id());
    let value = format!("hello from sandboxctl, pid {}", std::process::id());
    println!("\nMetadata store: plugin {:?}, settings {}", config.storage.plugin, config.storage.settings_json());
    storage.save(&key, value.as_bytes())?;
    println!("saved   {key} = {value:?}");
    let loaded = storage.load(&key)?.context("the record just saved is missing")?;
    println!("loaded  {key} = {:?}", String::from_utf8_lossy(&loaded));
    if loaded != value.as_bytes() {
        bail!("the store returned a different value");
    }
    println!("listed  {:?}", storage.list("demo/")?);
    storage.delete(&key)?;
    println!("deleted {key}; load now gives {:?}", storage.load(&key)?);
    Ok(())
}
