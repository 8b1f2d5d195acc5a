//! The subcommands.

use crate::output::{self, Format, Table};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use plugin_api::storage::StorageHandle;
use runtime_core::config::RuntimeConfig;
use runtime_core::plugins::{self, Registry};
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
    let plugins::Opened { registry, storage, .. } = plugins::open(&config, false)?;
    Ok((config, registry, storage))
}

/// The plugins found and those refused: a table (the refused after it, one line each) or a
/// JSON object `{"plugins": [...], "refused": [...]}`.
fn print_plugins(registry: &Registry, format: Format) -> Result<()> {
    let table = || {
        let mut t = Table::new(&["KIND", "NAME", "VERSION", "API", "VENDOR", "SOURCE"]);
        for p in registry.plugins() {
            t.row(vec![p.kind.name().into(), p.name.clone(), p.version.clone(), p.api_version.clone(), p.vendor.clone(), p.source.to_string()]);
        }
        t
    };
    let json = || {
        let plugins: Vec<serde_json::Value> = registry
            .plugins()
            .map(|p| {
                serde_json::json!({"kind": p.kind.name(), "name": p.name, "version": p.version, "api_version": p.api_version,
                    "vendor": p.vendor, "source": p.source.to_string()})
            })
            .collect();
        let refused: Vec<serde_json::Value> =
            registry.refused().iter().map(|r| serde_json::json!({"path": r.path, "reason": r.reason})).collect();
        Ok(serde_json::json!({"plugins": plugins, "refused": refused}))
    };
    output::print(format, table, json)?;
    if format == Format::Table {
        for r in registry.refused() {
            println!("refused: {}", r.reason);
        }
    }
    Ok(())
}

/// `sandboxctl plugins`
pub fn plugins(config_path: &Path, format: Format) -> Result<()> {
    let config = RuntimeConfig::load(config_path)?;
    print_plugins(&plugins::discover(&config)?, format)
}

/// `sandboxctl store ...`
pub fn store(config_path: &Path, cmd: StoreCommand, format: Format) -> Result<()> {
    let (_, _, storage) = open(config_path)?;
    match cmd {
        StoreCommand::Put { key, value } => storage.save(&key, value.as_bytes())?,
        StoreCommand::Get { key } => match storage.load(&key)? {
            Some(value) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                writeln!(out)?;
            }
            None => bail!("no record under key {key:?}"),
        },
        StoreCommand::Delete { key } => storage.delete(&key)?,
        StoreCommand::List { prefix } => {
            let keys = storage.list(&prefix)?;
            let table = || {
                let mut t = Table::new(&["KEY"]);
                keys.iter().for_each(|k| t.row(vec![k.clone()]));
                t
            };
            output::print(format, table, || output::json(&keys))?;
        }
    }
    Ok(())
}

/// `sandboxctl demo`
pub fn demo(config_path: &Path) -> Result<()> {
    let (config, registry, storage) = open(config_path)?;
    println!("Plugins (config {}):", config_path.display());
    print_plugins(&registry, Format::Table)?;
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
