//! The control API server: [`vmm_api::protocol`] (JSON lines over a Unix stream socket, whose
//! requests and answers are documented there) served on a thread of its own.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use vmm_api::protocol::{DeviceInfo, Request, Response, VmInfo, IDLE_TIMEOUT_SECS, MAX_REQUEST};

use crate::devices::bus::Bus;
use crate::vstate::runstate::RunControl;
use crate::event::Event;

const IDLE_TIMEOUT: Duration = Duration::from_secs(IDLE_TIMEOUT_SECS);

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The socket path is in use by something that is not a stale socket.
    #[error("the API socket path {0} exists and is not a socket")]
    NotASocket(String),
    /// Binding failed.
    #[error("binding the API socket {0}")]
    Bind(String, #[source] std::io::Error),
    /// Spawning the API thread failed.
    #[error("starting the API thread")]
    Thread(#[source] std::io::Error),
}

/// What the API thread needs.
pub struct ApiContext {
    /// The run state.
    pub control: Arc<RunControl>,
    /// The buses (for the device list).
    pub bus: Arc<Bus>,
    /// Where shutdown requests go.
    pub events: Sender<Event>,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The VM, for a save (`None` in tests without KVM).
    pub vm: Option<Arc<crate::vstate::vm::Vm>>,
    /// Where a save writes the state (`--state-file`).
    pub state_file: Option<PathBuf>,
}

/// The bound API socket; the file is removed when this is dropped.
pub struct ApiSocket {
    path: PathBuf,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (replacing a stale socket file) and serves requests on a thread.
pub fn serve(path: &Path, ctx: ApiContext) -> Result<ApiSocket, ApiError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ApiError::NotASocket(path.display().to_string()));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener =
        UnixListener::bind(path).map_err(|e| ApiError::Bind(path.display().to_string(), e))?;
    let socket = ApiSocket {
        path: path.to_owned(),
    };
    std::thread::Builder::new()
        .name("vmm-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        if let Err(e) = connection(stream, &ctx) {
                            tracing::debug!(error = %e, "API connection ended");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "accepting an API connection"),
                }
            }
        })
        .map_err(ApiError::Thread)?;
    Ok(socket)
}

fn connection(stream: UnixStream, ctx: &ApiContext) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut reader).take(MAX_REQUEST + 1).read_line(&mut line)?;
        if n == 0 {
            return Ok(());
        }
        let (answer, shutdown) = if n as u64 > MAX_REQUEST {
            (Response::Error(format!("request longer than {MAX_REQUEST} bytes")), false)
        } else {
            handle(line.trim(), ctx)
        };
        writer.write_all(answer.to_line().as_bytes())?;
        if shutdown {
            let _ = ctx.events.send(Event::Shutdown);
            return Ok(());
        }
        if n as u64 > MAX_REQUEST {
            return Ok(());
        }
    }
}

/// Answers one request line; the flag says whether the vmm must shut down.
fn handle(line: &str, ctx: &ApiContext) -> (Response, bool) {
    let request = match Request::parse(line) {
        Ok(r) => r,
        Err(e) => return (Response::Error(e), false),
    };
    let changed = match request {
        Request::State => {
            let info = VmInfo { state: ctx.control.state(), vcpus: ctx.vcpus, memory_mib: ctx.memory_mib, pid: std::process::id() };
            return (Response::Info(info), false);
        }
        Request::Devices => return (Response::Devices(devices(ctx)), false),
        Request::Shutdown => return (Response::State(vmm_api::RunState::Stopping), true),
        Request::Start => ctx.control.start(),
        Request::Pause => ctx.control.pause(),
        Request::Resume => ctx.control.resume(),
        Request::Stop => ctx.control.halt(),
        Request::Save => {
            let saved = match &ctx.vm {
                Some(vm) => crate::save::save(&ctx.control, vm, &ctx.bus, ctx.state_file.as_deref()),
                None => Err(crate::save::VmSaveError::NoStateFile),
            };
            return match saved {
                Ok(()) => (Response::State(ctx.control.state()), false),
                Err(e) => (Response::Error(error_report::chain(&e)), false),
            };
        }
    };
    match changed {
        Ok(()) => (Response::State(ctx.control.state()), false),
        Err(e) => (Response::Error(e.to_string()), false),
    }
}

fn devices(ctx: &ApiContext) -> Vec<DeviceInfo> {
    ctx.bus
        .mmio_slots()
        .iter()
        .map(|slot| {
            let t = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
            DeviceInfo {
                kind: t.device().device_type(),
                name: t.device().name().to_owned(),
                base: slot.base,
                gsi: slot.gsi,
                active: t.is_active(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::legacy::pio::PioBus;
    use crate::devices::legacy::serial::SerialPort;
    use vmm_api::RunState;

    fn context() -> ApiContext {
        let sink: Box<dyn std::io::Write + Send> = Box::new(std::io::sink());
        let serial = SerialPort::new(sink).expect("a serial port").0;
        ApiContext {
            // No vCPU threads: the run state alone, as the vCPUs see it.
            control: Arc::new(RunControl::new(0, libc::SIGUSR2)),
            bus: Arc::new(Bus::new(PioBus::new(serial), Vec::new())),
            events: std::sync::mpsc::channel().0,
            vcpus: 1,
            memory_mib: 256,
            vm: None,
            state_file: None,
        }
    }

    fn op(ctx: &ApiContext, request: Request) -> Response {
        handle(request.to_line().trim(), ctx).0
    }

    fn state(ctx: &ApiContext, request: Request) -> RunState {
        match op(ctx, request) {
            Response::State(state) => state,
            other => panic!("{request}: {other:?}"),
        }
    }

    #[test]
    fn every_op_answers_with_the_state_it_left() {
        let ctx = context();
        match op(&ctx, Request::State) {
            Response::Info(info) => assert_eq!((info.state, info.vcpus, info.memory_mib), (RunState::Created, 1, 256)),
            other => panic!("state: {other:?}"),
        }
        assert_eq!(state(&ctx, Request::Start), RunState::Running);
        assert_eq!(state(&ctx, Request::Pause), RunState::Paused);
        assert_eq!(state(&ctx, Request::Resume), RunState::Running);
        assert_eq!(state(&ctx, Request::Stop), RunState::Stopped);
        assert_eq!(op(&ctx, Request::Resume), Response::Error("cannot resume: the VM is stopped".into()));
        assert_eq!(op(&ctx, Request::Devices), Response::Devices(Vec::new()));
        match op(&ctx, Request::Save) {
            Response::Error(e) => assert!(e.contains("without --state-file"), "{e}"),
            other => panic!("save: {other:?}"),
        }
        let (answer, shutdown) = handle(r#"{"op":"shutdown"}"#, &ctx);
        assert!(shutdown && answer == Response::State(RunState::Stopping));
    }

    #[test]
    fn bad_requests_name_what_was_wrong() {
        let ctx = context();
        for (line, says) in [
            (r#"{"op":"reboot"}"#, "unknown variant `reboot`"),
            ("garbage", "bad request"),
            (r#"{"op":"state","extra":1}"#, "unknown field `extra`"),
        ] {
            let (answer, shutdown) = handle(line, &ctx);
            assert!(!shutdown);
            assert!(matches!(&answer, Response::Error(e) if e.contains(says)), "{line}: {answer:?}");
        }
    }
}
