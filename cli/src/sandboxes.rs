//! The sandbox subcommands: the Sandbox Management API on the command line.

use crate::attach::attach;
use crate::output::{self, Format, Table};
use anyhow::{Context, Result};
use clap::Args;
use runtime_core::sandbox::{load_sandbox_config, Runtime, SandboxError, SandboxStatus};
use std::path::PathBuf;

/// `sandboxctl run`
#[derive(Args)]
pub struct RunArgs {
    /// The sandbox config (TOML or JSON): id, disks, containers.
    pub file: PathBuf,
    /// Start it and return, without attaching to its first container.
    #[arg(long, short)]
    pub detach: bool,
    /// Delete the sandbox once its first container exited (or on Ctrl-C).
    #[arg(long)]
    pub rm: bool,
    /// Forward stdin to the first container.
    #[arg(long, short)]
    pub interactive: bool,
}

fn print_status(status: &SandboxStatus) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(status)?);
    Ok(())
}

/// `sandboxctl create FILE`
pub async fn create(runtime: &Runtime, file: PathBuf) -> Result<()> {
    let config = load_sandbox_config(&file)?;
    let sandbox = runtime.create_sandbox(config).await?;
    println!("{}", sandbox.id());
    Ok(())
}

/// `sandboxctl run FILE`: RunSandbox, then (unless detached) the first container's output
/// until it exits. The exit status is the container's.
pub async fn run(runtime: &Runtime, args: RunArgs) -> Result<i32> {
    let config = load_sandbox_config(&args.file)?;
    let first = config.containers.first().cloned();
    let sandbox = runtime.run_sandbox(config).await?;
    let Some(first) = first.filter(|_| !args.detach) else {
        println!("{}", sandbox.id());
        return Ok(0);
    };
    let terminal = first.process.as_ref().is_some_and(|p| p.terminal);
    let status = tokio::select! {
        status = attach(&sandbox, &first.id, &first.id, args.interactive, terminal) => status,
        _ = tokio::signal::ctrl_c(), if !terminal => {
            // Interrupted: the sandbox keeps running unless --rm asked for it to go.
            eprintln!("interrupted{}", if args.rm { "; deleting the sandbox" } else { "; the sandbox keeps running" });
            Ok(130)
        }
    };
    if args.rm {
        sandbox.release().await;
        runtime.delete_sandbox(sandbox.id()).await.with_context(|| format!("deleting sandbox {}", sandbox.id()))?;
    }
    status
}

/// `sandboxctl list`: the sandboxes, then the VMs under the hypervisor plugin's run directory
/// that no record owns (state `orphan`; `sandboxctl delete ID` stops one).
pub async fn list(runtime: &Runtime, format: Format) -> Result<()> {
    let sandboxes = runtime.list_sandboxes().await?;
    let orphans = runtime.orphan_vms().await.unwrap_or_else(|e| {
        tracing::warn!("looking for VMs without a sandbox record: {}", error_report::chain(&e));
        vec![]
    });
    let table = || {
        let mut t = Table::new(&["ID", "STATE", "VM", "HYPERVISOR", "CONTAINERS"]);
        for s in &sandboxes {
            let containers: Vec<String> = s.containers.iter().map(|c| format!("{}:{}", c.id, c.state)).collect();
            t.row(vec![s.id.clone(), s.state.to_string(), s.vm_status.clone(), s.hypervisor.clone(), containers.join(",")]);
        }
        for o in &orphans {
            t.row(vec![o.sandbox_id.clone(), ORPHAN.into(), o.vm_status.clone(), o.hypervisor.clone(), String::new()]);
        }
        t
    };
    let json = || {
        let mut rows: Vec<serde_json::Value> = sandboxes.iter().map(output::json).collect::<Result<_>>()?;
        rows.extend(orphans.iter().map(|o| {
            serde_json::json!({"id": o.sandbox_id, "state": ORPHAN, "vm_status": o.vm_status, "hypervisor": o.hypervisor, "containers": []})
        }));
        Ok(serde_json::Value::Array(rows))
    };
    output::print(format, table, json)?;
    if !orphans.is_empty() && format == Format::Table {
        eprintln!("{} VM(s) have no sandbox record (state {ORPHAN}): `sandboxctl delete ID` stops one", orphans.len());
    }
    Ok(())
}

/// The state `list` shows for a VM that no sandbox record owns.
const ORPHAN: &str = "orphan";

/// `sandboxctl status ID`
pub async fn status(runtime: &Runtime, id: &str) -> Result<()> {
    print_status(&runtime.status_sandbox(id).await?)
}

/// `sandboxctl start ID`
pub async fn start(runtime: &Runtime, id: &str) -> Result<()> {
    runtime.start_sandbox(id).await?;
    Ok(())
}

/// `sandboxctl stop ID`
pub async fn stop(runtime: &Runtime, id: &str, force: bool) -> Result<()> {
    runtime.stop_sandbox(id, force).await?;
    Ok(())
}

/// `sandboxctl delete ID`: DeleteSandbox, or, for an id without a record, stops the VM that
/// the hypervisor plugin still has for it (an orphan that `list` shows).
pub async fn delete(runtime: &Runtime, id: &str) -> Result<()> {
    match runtime.delete_sandbox(id).await {
        Err(e @ SandboxError::NotFound { .. }) => match runtime.remove_orphan_vm(id).await? {
            Some(vm) => {
                eprintln!("sandbox {id} had no record: stopped its {} VM (it was {}) and removed its files", vm.hypervisor, vm.vm_status);
                Ok(())
            }
            None => Err(e.into()),
        },
        other => other.map(drop).map_err(Into::into),
    }
}

/// `sandboxctl pause ID` / `resume ID`
pub async fn pause(runtime: &Runtime, id: &str, pause: bool) -> Result<()> {
    let sandbox = runtime.fetch_sandbox(id).await?;
    if pause {
        sandbox.pause().await?;
    } else {
        sandbox.resume().await?;
    }
    Ok(())
}

/// `sandboxctl console ID`: the VM's console log.
pub async fn console(runtime: &Runtime, id: &str) -> Result<()> {
    let path = runtime.fetch_sandbox(id).await?.console_log().context("the sandbox has no console log")?;
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    print!("{}", String::from_utf8_lossy(&text));
    Ok(())
}
