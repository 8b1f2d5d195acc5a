//! `sandboxctl factory init | serve | status | destroy`: the VM factory server, as Kata 1.x's
//! `kata-runtime factory` had it. `init` starts `serve` in the background and returns once it
//! answers (a `template` factory has then made its template); `status` shows its pool and its
//! template; `destroy` stops it, stopping every VM it holds and removing its template (and,
//! when no server answers, the VMs a killed one left and the template).

use crate::output::{self, Format, Table};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use runtime_core::config::RuntimeConfig;
use runtime_core::factory::remote::{Remote, RemoteError};
use runtime_core::sandbox::Runtime;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `init` waits for the server to answer, and `destroy` for it to end.
const WAIT: Duration = Duration::from_secs(120);

/// The `factory` subcommands.
#[derive(Subcommand)]
pub enum FactoryCommand {
    /// Start the factory server of the config's `[factory]` (which must name its `server`
    /// socket) in the background; return once it answers, printing its pid.
    Init {
        /// Also wait until its pool is full.
        #[arg(long)]
        wait: bool,
    },
    /// Run the factory server in the foreground (what `init` starts); SIGTERM or Ctrl-C stop
    /// it, stopping every VM it holds.
    Serve,
    /// The server's pool: each VM's id, state, what the hypervisor says of it, age and pid.
    Status,
    /// Stop the factory server and every VM it holds, and remove its template; with no server
    /// answering, stop the VMs that a killed server left, remove its stale socket and the
    /// template.
    Destroy,
}

fn socket_of(config: &RuntimeConfig) -> Result<PathBuf> {
    let server = config.factory.as_ref().and_then(|f| f.server.clone());
    server.with_context(|| {
        format!("config file {}, table [factory]: no `server` socket (add server = \"/run/sandbox-runtime/factory.sock\")", config.file.display())
    })
}

/// Runs a factory command.
pub async fn run(config_path: &Path, command: FactoryCommand, format: Format) -> Result<()> {
    let config = RuntimeConfig::load(config_path)?;
    if let FactoryCommand::Serve = command {
        runtime_core::factory::server::serve(config, |socket| tracing::info!("serving on {}", socket.display())).await?;
        return Ok(());
    }
    let socket = socket_of(&config)?;
    let remote = Remote::new(&socket);
    match command {
        FactoryCommand::Init { wait } => init(&config, &remote, wait).await,
        FactoryCommand::Status => status(&remote, format).await,
        FactoryCommand::Destroy => destroy(&config, &remote).await,
        FactoryCommand::Serve => unreachable!("handled above"),
    }
}

async fn init(config: &RuntimeConfig, remote: &Remote, wait: bool) -> Result<()> {
    if let Ok(s) = remote.status().await {
        bail!("a VM factory server already runs on {} (pid {})", remote.socket().display(), s.pid);
    }
    let log = PathBuf::from(format!("{}.log", remote.socket().display()));
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).with_context(|| format!("opening {}", log.display()))?;
    let mut cmd = std::process::Command::new(std::env::current_exe().context("finding sandboxctl")?);
    cmd.arg("--config").arg(&config.file).args(["--log", "info", "factory", "serve"]);
    cmd.stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: setsid(2) only, between fork and exec: the server leaves this terminal's session.
    unsafe {
        cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
    }
    let mut child = cmd.spawn().context("starting the factory server")?;
    let began = Instant::now();
    let status = loop {
        if let Some(exit) = child.try_wait()? {
            bail!("the factory server exited ({exit}) before it answered: {}", tail(&log));
        }
        match remote.status().await {
            Ok(s) => break s,
            Err(_) if began.elapsed() < WAIT => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => bail!("the factory server (pid {}) did not answer within {} s: {}", child.id(), WAIT.as_secs(), runtime_core::plugins::error_chain(&e)),
        }
    };
    if wait {
        loop {
            let s = remote.status().await?;
            let ready = s.status.vms.iter().filter(|v| v.state == "ready").count();
            if ready >= s.status.size as usize {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    println!("factory server pid {} on {} (log {})", status.pid, remote.socket().display(), log.display());
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

async fn status(remote: &Remote, format: Format) -> Result<()> {
    let s = remote.status().await?;
    let table = || {
        let mut t = Table::new(&["ID", "STATE", "VM", "AGE", "PID"]);
        for vm in &s.status.vms {
            let pid = vm.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            t.row(vec![vm.id.clone(), vm.state.clone(), vm.vm_status.clone(), format!("{:.1}s", vm.age_ms as f64 / 1000.0), pid]);
        }
        t
    };
    if format == Format::Table {
        println!("factory {} (size {}), server pid {}, config {}", s.status.factory, s.status.size, s.pid, s.config);
        if let Some(t) = &s.status.template {
            println!("{}", template_line(t));
        }
    }
    output::print(format, table, || {
        Ok(serde_json::json!({"factory": s.status.factory, "size": s.status.size, "server_pid": s.pid, "config": s.config, "vms": s.status.vms, "template": s.status.template}))
    })
}

/// One line on a template: where, how big, made by what for which VM, how many clones.
fn template_line(t: &plugin_api::factory::TemplateInfo) -> String {
    let c = &t.config;
    let age = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()).saturating_sub(t.created_unix_s);
    format!(
        "template {} ({:.1} MiB on disk), hypervisor {}, saved {age} s ago, for {} vCPU(s), {} MiB, kernel {}, {} disk(s); {} clone(s) made",
        t.path.display(),
        t.disk_bytes as f64 / (1024.0 * 1024.0),
        t.hypervisor,
        c.vcpus,
        c.memory_mib,
        c.kernel.display(),
        c.disks.len(),
        t.clones
    )
}

async fn destroy(config: &RuntimeConfig, remote: &Remote) -> Result<()> {
    match remote.status().await {
        Ok(s) => {
            let held = s.status.vms.len();
            remote.shutdown(true).await?;
            let began = Instant::now();
            while Path::new(&format!("/proc/{}", s.pid)).exists() && !zombie(s.pid) {
                if began.elapsed() > WAIT {
                    bail!("the factory server (pid {}) did not end within {} s", s.pid, WAIT.as_secs());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            println!("stopped the factory server (pid {}) and the {held} VM(s) it held", s.pid);
        }
        Err(RemoteError::Unreachable { .. }) => {
            let runtime = Runtime::new(config.clone())?;
            let reaped = runtime.reap_dead_factories().await?;
            runtime.destroy_factory_files().await?;
            for path in [remote.socket().to_owned(), runtime_core::factory::server::lock_path(remote.socket())] {
                if path.exists() {
                    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                }
            }
            println!("no factory server answers on {}; stopped what {reaped} dead factory(ies) left", remote.socket().display());
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
}
