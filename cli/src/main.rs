//! `sandboxctl`: the operator CLI. The built-in storage plugins are linked in statically;
//! more plugins are loaded from the directories the config file names.

mod commands;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

// Link the built-in plugins so that their static registrations are part of this binary.
use storage_fs as _;
use storage_leveldb as _;

#[derive(Parser)]
#[command(name = "sandboxctl", version, about = "Operate sandboxes: containers in lightweight VMs")]
struct Cli {
    /// The runtime config file.
    #[arg(long, short, global = true, env = "SANDBOX_CONFIG", default_value = "/etc/sandbox-runtime/config.toml")]
    config: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, global = true, env = "SANDBOX_LOG", default_value = "warn")]
    log: tracing::level_filters::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the plugins found (and those refused, with the reason).
    Plugins,
    /// Operate on the configured metadata store.
    #[command(subcommand)]
    Store(commands::StoreCommand),
    /// Run the MetadataStorage conformance suite against a plugin library.
    Conformance {
        /// The plugin library (`.so`).
        library: PathBuf,
        /// The plugin's config as JSON; `{dir}` is replaced by a fresh temporary directory.
        #[arg(long, default_value = r#"{"path": "{dir}"}"#)]
        plugin_config: String,
    },
    /// The demo: list the plugins, then save, load, list and delete a record.
    Demo,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_max_level(cli.log).init();
    if let Err(e) = run(cli) {
        eprintln!("error: {}", runtime_core::plugins::error_chain(e.as_ref()));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Plugins => commands::plugins(&cli.config),
        Command::Store(cmd) => commands::store(&cli.config, cmd),
        Command::Conformance { library, plugin_config } => commands::conformance(&library, &plugin_config),
        Command::Demo => commands::demo(&cli.config),
    }
}
