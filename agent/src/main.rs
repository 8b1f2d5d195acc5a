//! The guest agent: PID 1 of the guest VM. It prepares the guest (mounts, modules, cgroups,
//! loopback), reaps every orphan, and serves the agent API (gRPC) on vsock and on a
//! virtio-serial port multiplexed with Yamux.
//!
//! Usage:
//! - as the guest's `/init` (PID 1): no arguments; channels from the kernel command line
//!   (`agent.channels=vsock:1024,serial:agent.0`, the default) and log level (`agent.log=debug`);
//! - on a host, for tests: `guest-agent serve --listen unix:/path [--state-dir DIR]`;
//! - internally: `guest-agent __container JSON` (see containers::helper).

mod channels;
mod containers;
mod guest;
mod init;
mod net;
mod reaper;
mod service;
mod switch_root;

use agent_protocol::pb::agent_server::AgentServer;
use channels::Channel;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info};

/// An error and its causes on one line.
pub use error_report::chain as error_chain;

struct Options {
    channels: Vec<Channel>,
    state_dir: PathBuf,
    log: String,
    /// The guest's init (PID 1, no arguments), as opposed to `serve` on a host, which may be
    /// PID 1 of a test's pid namespace but must not prepare the machine.
    pid1: bool,
}

const USAGE: &str = "usage: guest-agent [serve --listen CHANNEL... [--state-dir DIR] [--log LEVEL]]";

/// The kernel command line. PID 1 starts before anything is mounted: if `/proc` is not
/// there yet, it is mounted for the read and unmounted again (`init::boot` mounts it for good).
fn kernel_cmdline() -> String {
    if let Ok(text) = std::fs::read_to_string("/proc/cmdline") {
        return text;
    }
    let _ = std::fs::create_dir_all("/proc");
    let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC;
    if let Err(e) = nix::mount::mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>) {
        eprintln!("guest-agent: mounting /proc to read the kernel command line: {e}; using the default channels");
        return String::new();
    }
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let _ = nix::mount::umount("/proc");
    text
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let pid1 = std::process::id() == 1;
    let mut opts = Options { channels: Vec::new(), state_dir: PathBuf::from("/run/agent"), log: "info".into(), pid1: false };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        None if pid1 => {
            opts.pid1 = true;
            let cmdline = kernel_cmdline();
            let param = |key: &str| cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)).map(str::to_owned);
            opts.channels = agent_protocol::channels::from_cmdline(&cmdline).map_err(|e| e.to_string())?;
            if let Some(level) = param("agent.log=") {
                opts.log = level;
            }
            return Ok(opts);
        }
        Some("serve") => {}
        _ => return Err(USAGE.into()),
    }
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--listen" => opts.channels.push(value()?.parse().map_err(|e: channels::BadChannel| e.to_string())?),
            "--state-dir" => opts.state_dir = value()?.into(),
            "--log" => opts.log = value()?,
            _ => return Err(format!("unknown argument {arg}; {USAGE}")),
        }
    }
    if opts.channels.is_empty() {
        return Err(format!("no --listen channel; {USAGE}"));
    }
    Ok(opts)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(containers::helper::HELPER_ARG) {
        let code = containers::helper::main(args.get(1).map(String::as_str).unwrap_or(""));
        std::process::exit(code);
    }
    if args.first().map(String::as_str) == Some(containers::spawner::SPAWNER_ARG) {
        std::process::exit(containers::spawner::main(containers::helper::main));
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("guest-agent: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::filter::LevelFilter::from_level(opts.log.parse().unwrap_or(tracing::Level::INFO));
    tracing_subscriber::fmt().with_max_level(filter).with_ansi(false).with_writer(std::io::stderr).init();
    let pid1 = opts.pid1;
    if let Err(e) = run(opts) {
        error!("{}", error_chain(&*e));
        // PID 1 must not exit: the kernel would panic and the host would see a dead VM with no
        // reason. Stay, so the console log keeps the error.
        if pid1 {
            loop {
                std::thread::park();
            }
        }
        std::process::exit(1);
    }
}

fn run(opts: Options) -> Result<(), Box<dyn std::error::Error>> {
    if opts.pid1 {
        if !switch_root::switched() {
            return Err(switch_root::switch_root().into());
        }
        init::boot()?;
    } else {
        // Orphans of container processes come to us, as they would to PID 1 in the guest.
        nix::sys::prctl::set_child_subreaper(true)?;
    }
    std::fs::create_dir_all(&opts.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(serve(opts))
}

async fn serve(opts: Options) -> Result<(), Box<dyn std::error::Error>> {
    let reaper = reaper::Reaper::start()?;
    let containers = Arc::new(containers::Containers::new(opts.state_dir.clone(), reaper));
    let (tx, rx) = mpsc::channel(64);
    let up = channels::listen(&opts.channels, tx).await;
    if up.is_empty() {
        return Err("no channel could be set up".into());
    }
    info!(version = env!("CARGO_PKG_VERSION"), channels = ?up, "agent ready");
    let service = service::AgentService::new(containers, up);
    tonic::transport::Server::builder()
        .add_service(AgentServer::with_interceptor(service, service::check_version))
        .serve_with_incoming(ReceiverStream::new(rx))
        .await?;
    Ok(())
}
