//! The control API: JSON lines over a Unix stream socket.
//!
//! Each request is one line, `{"op": "..."}`; each answer is one line with `"ok": true` and
//! the op's fields, or `"ok": false` and an `"error"` that says what was wrong. Ops:
//!
//! | op | does | answer fields |
//! |---|---|---|
//! | `state` | nothing | `state` (`created`, `running`, `paused`, `stopping`), `vcpus`, `memory_mib`, `pid` |
//! | `start` | created → running | `state` |
//! | `pause` | running → paused (returns once every vCPU is parked) | `state` |
//! | `resume` | paused → running | `state` |
//! | `shutdown` | stops the vCPUs and ends the vmm process (after answering) | `state` |
//! | `devices` | nothing | `devices`: `[{"type", "name", "base", "gsi", "active"}]` |
//!
//! A connection may send any number of requests; it is closed after 30 s without one.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::bus::Bus;
use crate::runstate::RunControl;
use crate::vmm::Event;

/// Longest request line accepted.
pub const MAX_REQUEST: u64 = 4096;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A request line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    op: String,
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
            (
                error(format!("request longer than {MAX_REQUEST} bytes")),
                false,
            )
        } else {
            handle(line.trim(), ctx)
        };
        let mut out = answer.to_string();
        out.push('\n');
        writer.write_all(out.as_bytes())?;
        if shutdown {
            let _ = ctx.events.send(Event::Shutdown);
            return Ok(());
        }
        if n as u64 > MAX_REQUEST {
            return Ok(());
        }
    }
}

fn error(message: String) -> Value {
    json!({ "ok": false, "error": message })
}

fn state(ctx: &ApiContext) -> Value {
    json!({ "ok": true, "state": ctx.control.state() })
}

#[derive(Serialize)]
struct DeviceInfo {
    #[serde(rename = "type")]
    kind: u32,
    name: &'static str,
    base: u64,
    gsi: u32,
    active: bool,
}

/// Answers one request; the flag says whether the vmm must shut down.
fn handle(line: &str, ctx: &ApiContext) -> (Value, bool) {
    let request: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return (error(format!("bad request: {e}")), false),
    };
    let result = match request.op.as_str() {
        "state" => {
            return (
                json!({
                    "ok": true,
                    "state": ctx.control.state(),
                    "vcpus": ctx.vcpus,
                    "memory_mib": ctx.memory_mib,
                    "pid": std::process::id(),
                }),
                false,
            )
        }
        "start" => ctx.control.start(),
        "pause" => ctx.control.pause(),
        "resume" => ctx.control.resume(),
        "stop" => ctx.control.halt(),
        "shutdown" => return (json!({ "ok": true, "state": "stopping" }), true),
        "devices" => {
            let devices: Vec<DeviceInfo> = ctx
                .bus
                .mmio_slots()
                .iter()
                .map(|slot| {
                    let t = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
                    DeviceInfo {
                        kind: t.device().device_type(),
                        name: t.device().name(),
                        base: slot.base,
                        gsi: slot.gsi,
                        active: t.is_active(),
                    }
                })
                .collect();
            return (json!({ "ok": true, "devices": devices }), false);
        }
        other => {
            return (
                error(format!(
                    "unknown op {other:?} (known: state, start, pause, resume, stop, shutdown, devices)"
                )),
                false,
            )
        }
    };
    match result {
        Ok(()) => (state(ctx), false),
        Err(e) => (error(e.to_string()), false),
    }
}

/// A client for the API, used by the hypervisor plugin and the tests.
pub mod client {
    use super::*;

    /// Errors talking to a vmm.
    #[derive(Debug, thiserror::Error)]
    pub enum ClientError {
        /// Connecting, writing or reading failed.
        #[error("talking to the vmm API at {0}")]
        Io(String, #[source] std::io::Error),
        /// The answer was not JSON.
        #[error("the vmm API at {0} answered something that is not JSON")]
        Json(String, #[source] serde_json::Error),
        /// The vmm refused the request.
        #[error("the vmm refused {op}: {message}")]
        Refused {
            /// The op.
            op: String,
            /// Its error.
            message: String,
        },
    }

    /// Sends `{"op": op}` to the vmm at `socket` and returns the answer (with `ok` true).
    pub fn request(socket: &Path, op: &str, timeout: Duration) -> Result<Value, ClientError> {
        let where_ = || socket.display().to_string();
        let io = |e| ClientError::Io(where_(), e);
        let stream = UnixStream::connect(socket).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut writer = stream.try_clone().map_err(io)?;
        writer
            .write_all(format!("{}\n", json!({ "op": op })).as_bytes())
            .map_err(io)?;
        let mut line = String::new();
        BufReader::new(stream)
            .take(1 << 20)
            .read_line(&mut line)
            .map_err(io)?;
        let answer: Value =
            serde_json::from_str(&line).map_err(|e| ClientError::Json(where_(), e))?;
        if answer["ok"] == Value::Bool(true) {
            Ok(answer)
        } else {
            Err(ClientError::Refused {
                op: op.to_owned(),
                message: answer["error"]
                    .as_str()
                    .unwrap_or("no error message")
                    .to_owned(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pio::PioBus;
    use crate::serial::SerialPort;

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
        }
    }

    fn op(ctx: &ApiContext, op: &str) -> Value {
        handle(&json!({ "op": op }).to_string(), ctx).0
    }

    #[test]
    fn every_op_answers_with_the_state_it_left() {
        let ctx = context();
        assert_eq!(op(&ctx, "state")["state"], "created");
        assert_eq!(op(&ctx, "start")["state"], "running");
        assert_eq!(op(&ctx, "pause")["state"], "paused");
        assert_eq!(op(&ctx, "resume")["state"], "running");
        assert_eq!(op(&ctx, "stop")["state"], "stopped");
        let refused = op(&ctx, "resume");
        assert_eq!(refused["ok"], false);
        assert_eq!(refused["error"], "cannot resume: the VM is stopped");
        assert_eq!(op(&ctx, "devices")["devices"], json!([]));
        let (answer, shutdown) = handle(r#"{"op":"shutdown"}"#, &ctx);
        assert!(shutdown && answer["state"] == "stopping");
    }

    #[test]
    fn bad_requests_name_what_was_wrong() {
        let ctx = context();
        assert!(op(&ctx, "reboot")["error"].as_str().is_some_and(|e| e.contains("unknown op \"reboot\"")));
        let (answer, shutdown) = handle("garbage", &ctx);
        assert!(!shutdown && answer["error"].as_str().is_some_and(|e| e.starts_with("bad request")));
        let (answer, _) = handle(r#"{"op":"state","extra":1}"#, &ctx);
        assert_eq!(answer["ok"], false);
    }
}
