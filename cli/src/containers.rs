//! The container subcommands: the container half of the Sandbox Operation API.

use crate::attach::attach;
use crate::output::{self, Format, Table};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use runtime_core::sandbox::{ContainerConfig, ProcessConfig, RootfsConfig, Runtime};

/// How a process runs.
#[derive(Args, Clone)]
pub struct ProcessArgs {
    /// Give it a terminal.
    #[arg(long, short)]
    pub tty: bool,
    /// `NAME=value`, repeatable.
    #[arg(long, short)]
    pub env: Vec<String>,
    /// Working directory.
    #[arg(long, default_value = "/")]
    pub cwd: String,
    /// `UID[:GID]`.
    #[arg(long, short, default_value = "0:0")]
    pub user: String,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    pub args: Vec<String>,
}

impl ProcessArgs {
    fn config(&self) -> Result<ProcessConfig> {
        let (uid, gid) = self.user.split_once(':').unwrap_or((&self.user, "0"));
        let mut p = ProcessConfig::new(self.args.clone());
        p.terminal = self.tty;
        p.env = self.env.clone();
        p.cwd = self.cwd.clone();
        p.uid = uid.parse().with_context(|| format!("--user {}: {uid:?} is not a number", self.user))?;
        p.gid = gid.parse().with_context(|| format!("--user {}: {gid:?} is not a number", self.user))?;
        Ok(p)
    }
}

/// `sandboxctl container ...`
#[derive(Subcommand)]
pub enum ContainerCommand {
    /// Create a container (not started) in a sandbox.
    Create {
        /// The sandbox.
        sandbox: String,
        /// The new container's id.
        id: String,
        /// The sandbox disk holding its rootfs.
        #[arg(long, default_value = "rootfs")]
        disk: String,
        /// Hostname (the id by default).
        #[arg(long)]
        hostname: Option<String>,
        /// A read-only root (by default the container writes to a private layer).
        #[arg(long)]
        read_only_root: bool,
        #[command(flatten)]
        process: ProcessArgs,
    },
    /// Start a created container; with --attach, stream its output until it exits.
    Start {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
        /// Stream its output and wait for it.
        #[arg(long, short)]
        attach: bool,
        /// With --attach: forward stdin.
        #[arg(long, short)]
        interactive: bool,
    },
    /// Run a new process in a running container and attach to it.
    Exec {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
        /// Forward stdin (with --tty: an interactive terminal).
        #[arg(long, short)]
        interactive: bool,
        /// Return at once, printing the process token.
        #[arg(long, short)]
        detach: bool,
        #[command(flatten)]
        process: ProcessArgs,
    },
    /// Stream a process's output (the container's first process by default).
    Attach {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
        /// The process token (from exec --detach).
        token: Option<String>,
    },
    /// Signal a container.
    Kill {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
        /// Signal name or number.
        #[arg(long, short, default_value = "TERM")]
        signal: String,
        /// Signal every process in the container.
        #[arg(long, short)]
        all: bool,
    },
    /// List a container's processes.
    Ps {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
    },
    /// A container's cgroup statistics.
    Stats {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
    },
    /// A container's status.
    Status {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
    },
    /// Freeze a container.
    Pause {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
    },
    /// Thaw a container.
    Resume {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
    },
    /// Set a container's cgroup limits (OCI linux.resources JSON).
    Update {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
        /// For example '{"memory": {"limit": 67108864}, "pids": {"limit": 20}}'.
        #[arg(long)]
        resources: String,
    },
    /// Stop a container (SIGTERM, then SIGKILL).
    Stop {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
        /// Ignore guest failures.
        #[arg(long, short)]
        force: bool,
    },
    /// Delete a created or stopped container.
    Delete {
        /// The sandbox.
        sandbox: String,
        /// The container.
        id: String,
    },
}

/// Runs a container subcommand; returns the exit status to exit with.
pub async fn run(runtime: &Runtime, cmd: ContainerCommand, format: Format) -> Result<i32> {
    use ContainerCommand::*;
    match cmd {
        Create { sandbox, id, disk, hostname, read_only_root, process } => {
            let sb = runtime.fetch_sandbox(&sandbox).await?;
            let config = ContainerConfig {
                id,
                rootfs: RootfsConfig { writable: !read_only_root, ..RootfsConfig::disk(disk) },
                process: Some(process.config()?),
                hostname,
                resources: None,
                oci_spec: None,
            };
            let status = sb.create_container(config).await?;
            println!("{}", status.id);
        }
        Start { sandbox, id, attach: follow, interactive } => {
            let sb = runtime.fetch_sandbox(&sandbox).await?;
            sb.start_container(&id).await?;
            if follow {
                let terminal = sb.config().containers.iter().find(|c| c.id == id).and_then(|c| c.process.clone()).is_some_and(|p| p.terminal);
                return attach(&sb, &id, &id, interactive, terminal).await;
            }
        }
        Exec { sandbox, id, interactive, detach, process } => {
            let sb = runtime.fetch_sandbox(&sandbox).await?;
            let p = sb.enter_container(&id, process.config()?).await?;
            if detach {
                println!("{}", p.token);
                return Ok(0);
            }
            return attach(&sb, &id, &p.token, interactive, process.tty).await;
        }
        Attach { sandbox, id, token } => {
            let sb = runtime.fetch_sandbox(&sandbox).await?;
            let token = token.unwrap_or_else(|| id.clone());
            return attach(&sb, &id, &token, false, false).await;
        }
        Kill { sandbox, id, signal, all } => {
            let signal = crate::signals::parse(&signal).map_err(anyhow::Error::msg)?;
            runtime.fetch_sandbox(&sandbox).await?.kill_container(&id, signal, all).await?;
        }
        Ps { sandbox, id } => {
            let list = runtime.fetch_sandbox(&sandbox).await?.process_list_container(&id).await?;
            let table = || {
                let mut t = Table::new(&["PID", "COMMAND"]);
                list.iter().for_each(|p| t.row(vec![p.pid.to_string(), p.command.clone()]));
                t
            };
            let json = || Ok(list.iter().map(|p| serde_json::json!({"pid": p.pid, "command": p.command})).collect());
            output::print(format, table, json)?;
        }
        Stats { sandbox, id } => {
            let s = runtime.fetch_sandbox(&sandbox).await?.stats_container(&id).await?;
            output::print(format, || crate::stats::table(&s), || Ok(crate::stats::json(&s)))?;
        }
        Status { sandbox, id } => {
            let status = runtime.fetch_sandbox(&sandbox).await?.status_container(&id).await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        Pause { sandbox, id } => {
            runtime.fetch_sandbox(&sandbox).await?.pause_container(&id).await?;
        }
        Resume { sandbox, id } => {
            runtime.fetch_sandbox(&sandbox).await?.resume_container(&id).await?;
        }
        Update { sandbox, id, resources } => {
            let resources: serde_json::Value = serde_json::from_str(&resources).context("--resources is not JSON")?;
            runtime.fetch_sandbox(&sandbox).await?.update_container(&id, resources).await?;
        }
        Stop { sandbox, id, force } => {
            let status = runtime.fetch_sandbox(&sandbox).await?.stop_container(&id, force).await?;
            if let Some(code) = status.exit_status {
                println!("exit status {code}");
            }
        }
        Delete { sandbox, id } => {
            runtime.fetch_sandbox(&sandbox).await?.delete_container(&id).await?;
        }
    }
    Ok(0)
}
