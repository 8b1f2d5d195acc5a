//! `sandboxctl`: the operator CLI. The built-in storage plugins are linked in statically;
//! more plugins are loaded from the directories the config file names.

mod attach;
mod commands;
mod conformance;
mod containers;
mod factory;
mod output;
mod sandboxes;
mod signals;
mod stats;
mod tty;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

// Link the built-in plugins so that their static registrations are part of this binary.
use factory_cache as _;
use factory_new as _;
use factory_template as _;
use hypervisor_kvm as _;
use hypervisor_qemu as _;
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
    /// How listings (list, plugins, store list, container ps, container stats) are printed.
    #[arg(long, short, global = true, value_enum, default_value_t)]
    output: output::Format,
    /// The same as `--output json`.
    #[arg(long, global = true)]
    json: bool,
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
    /// Run the conformance kit of a plugin library's kind against it (storage; hypervisor and
    /// factory boot the guest image of the config's [hypervisor] table).
    Conformance {
        /// The plugin library (`.so`).
        library: PathBuf,
        /// The plugin's config as JSON; `{dir}` is replaced by a fresh temporary directory.
        /// Default: storage `{"path": "{dir}/store"}`, a hypervisor or factory the config's
        /// settings of that plugin.
        #[arg(long)]
        plugin_config: Option<String>,
    },
    /// The storage demo: list the plugins, then save, load, list and delete a record.
    Demo,
    /// Create a sandbox from a config file (TOML or JSON): boot its VM and create its
    /// containers without starting them.
    Create {
        /// The sandbox config.
        file: PathBuf,
    },
    /// Create and start a sandbox and its containers, then stream the first container's
    /// output until it exits.
    Run(sandboxes::RunArgs),
    /// List the sandboxes.
    List,
    /// A sandbox's detailed status (JSON).
    Status {
        /// The sandbox.
        id: String,
    },
    /// Start a sandbox and its containers (a stopped sandbox gets a fresh VM).
    Start {
        /// The sandbox.
        id: String,
    },
    /// Stop a sandbox: destroy its containers and stop its VM.
    Stop {
        /// The sandbox.
        id: String,
        /// Ignore guest failures.
        #[arg(long, short)]
        force: bool,
    },
    /// Delete a sandbox (stopping it first): nothing of it remains.
    Delete {
        /// The sandbox.
        id: String,
    },
    /// Pause a sandbox's VM.
    Pause {
        /// The sandbox.
        id: String,
    },
    /// Resume a paused sandbox.
    Resume {
        /// The sandbox.
        id: String,
    },
    /// Print a sandbox's VM console log.
    Console {
        /// The sandbox.
        id: String,
    },
    /// Operate on the containers of a sandbox.
    #[command(subcommand)]
    Container(containers::ContainerCommand),
    /// The VM factory server: init, serve, status, destroy.
    #[command(subcommand)]
    Factory(factory::FactoryCommand),
}

fn main() {
    let cli = Cli::parse();
    let colour = error_report::wants_colour(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(colour).with_max_level(cli.log).init();
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {}", runtime_core::plugins::error_chain(e.as_ref()));
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let done = |r: Result<()>| r.map(|()| 0);
    let format = if cli.json { output::Format::Json } else { cli.output };
    match cli.command {
        Command::Plugins => done(commands::plugins(&cli.config, format)),
        Command::Store(cmd) => done(commands::store(&cli.config, cmd, format)),
        Command::Conformance { library, plugin_config } => done(conformance::run(&library, plugin_config.as_deref(), &cli.config)),
        Command::Demo => done(commands::demo(&cli.config)),
        command => {
            let tokio = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            let result = tokio.block_on(sandbox_command(&cli.config, command, format));
            // A read of our stdin may still block a thread (interactive exec): do not wait for it.
            tokio.shutdown_background();
            result
        }
    }
}

async fn sandbox_command(config: &std::path::Path, command: Command, format: output::Format) -> Result<i32> {
    if let Command::Factory(cmd) = command {
        return factory::run(config, cmd, format).await.map(|()| 0);
    }
    let runtime = runtime_core::sandbox::Runtime::from_file(config).map_err(anyhow::Error::from_boxed)?;
    let done = |r: Result<()>| r.map(|()| 0);
    match command {
        Command::Create { file } => done(sandboxes::create(&runtime, file).await),
        Command::Run(args) => sandboxes::run(&runtime, args).await,
        Command::List => done(sandboxes::list(&runtime, format).await),
        Command::Status { id } => done(sandboxes::status(&runtime, &id).await),
        Command::Start { id } => done(sandboxes::start(&runtime, &id).await),
        Command::Stop { id, force } => done(sandboxes::stop(&runtime, &id, force).await),
        Command::Delete { id } => done(sandboxes::delete(&runtime, &id).await),
        Command::Pause { id } => done(sandboxes::pause(&runtime, &id, true).await),
        Command::Resume { id } => done(sandboxes::pause(&runtime, &id, false).await),
        Command::Console { id } => done(sandboxes::console(&runtime, &id).await),
        Command::Container(cmd) => containers::run(&runtime, cmd, format).await,
        Command::Plugins | Command::Store(_) | Command::Conformance { .. } | Command::Demo | Command::Factory(_) => {
            anyhow::bail!("not a sandbox command")
        }
    }
}
