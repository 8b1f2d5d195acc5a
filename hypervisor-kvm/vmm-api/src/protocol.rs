//! The control API: JSON lines over a Unix stream socket (the vmm's `--api-socket`).
//!
//! A client writes one [`Request`] per line, `{"op": "state"}`; the vmm answers each with one
//! [`Response`] line: `{"info": {...}}`, `{"state": "running"}`, `{"devices": [...]}` or
//! `{"error": "what was wrong"}`. Unknown ops and unknown fields are refused with an
//! `error`. A connection may send any number of requests; the vmm closes it after
//! [`IDLE_TIMEOUT_SECS`] without one, or after a line longer than [`MAX_REQUEST`] bytes.
//!
//! Which ops a VM in each [`RunState`] takes is on each [`Request`] variant.

use serde::{Deserialize, Serialize};

/// Longest request line the vmm accepts, in bytes.
pub const MAX_REQUEST: u64 = 4096;
/// Longest answer line a client reads, in bytes.
pub const MAX_RESPONSE: u64 = 1 << 20;
/// Seconds the vmm keeps an idle connection open.
pub const IDLE_TIMEOUT_SECS: u64 = 30;

/// A request: one line, `{"op": "<name>"}` ([`Request::to_line`], [`Request::parse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    /// Reports the VM and changes nothing: [`Response::Info`].
    State,
    /// `created` → `running`: runs the vCPUs of a vmm started with `--paused`.
    /// [`Response::State`].
    Start,
    /// `running` → `paused`; answers once every vCPU is parked. [`Response::State`].
    Pause,
    /// `paused` → `running`. [`Response::State`].
    Resume,
    /// `created`, `running` or `paused` → `stopped`: the vCPUs park for good; the process and
    /// its API stay up (for `state`, `devices` and `shutdown`). [`Response::State`].
    Stop,
    /// Any state → `stopping`: answers, then stops the vCPUs and ends the vmm process (exit
    /// status 0). [`Response::State`].
    Shutdown,
    /// Lists the virtio devices and changes nothing: [`Response::Devices`].
    Devices,
    /// `paused` → `paused`: writes the whole VM's state (vCPUs, interrupt controllers, PIT,
    /// clock, every device) to the vmm's `--state-file`, mode 0600, through a temporary file
    /// renamed into place; guest RAM stays in the vmm's `--memory-file`. The VM can resume
    /// afterwards. Refused while not paused, without `--state-file`, or when a device cannot
    /// be saved (the error names it): then no state file is written. [`Response::State`].
    Save,
}

impl Request {
    /// Every request, in the order of the table above.
    pub const ALL: [Request; 8] = [
        Request::State,
        Request::Start,
        Request::Pause,
        Request::Resume,
        Request::Stop,
        Request::Shutdown,
        Request::Devices,
        Request::Save,
    ];

    /// The op's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Request::State => "state",
            Request::Start => "start",
            Request::Pause => "pause",
            Request::Resume => "resume",
            Request::Stop => "stop",
            Request::Shutdown => "shutdown",
            Request::Devices => "devices",
            Request::Save => "save",
        }
    }

    /// The request as one line, newline included.
    pub fn to_line(self) -> String {
        let mut line = serde_json::to_string(&RequestLine { op: self }).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Parses one request line (without its newline); the error says what was wrong.
    pub fn parse(line: &str) -> Result<Request, String> {
        serde_json::from_str::<RequestLine>(line).map(|r| r.op).map_err(|e| format!("bad request: {e}"))
    }
}

/// A request line's object: the op and nothing else.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    op: Request,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The state of the VM as the control API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Built, vCPUs not started yet (`--paused`).
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// Shutting down: vCPUs leave their loops, the process ends.
    Stopping,
    /// vCPUs parked for good: the guest never runs again; the process and its API stay (to be
    /// asked, or told to shut down).
    Stopped,
}

impl RunState {
    /// The state's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Stopping => "stopping",
            RunState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`Request::State`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    /// The run state.
    pub state: RunState,
    /// vCPU count.
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// The vmm's process id.
    pub pid: u32,
}

/// One virtio device, as [`Request::Devices`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// The virtio device type (2 block, 1 net, 3 console, 19 vsock, 26 fs).
    #[serde(rename = "type")]
    pub kind: u32,
    /// The device's name (its `--disk name=`, `--net`, ...).
    pub name: String,
    /// The guest physical address of its virtio-mmio window.
    pub base: u64,
    /// Its interrupt line.
    pub gsi: u32,
    /// Whether the guest driver has set it up (status DRIVER_OK).
    pub active: bool,
}

/// An answer: one line, one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Response {
    /// The answer to [`Request::State`].
    Info(VmInfo),
    /// The state a run-state request left the VM in.
    State(RunState),
    /// The answer to [`Request::Devices`].
    Devices(Vec<DeviceInfo>),
    /// The request was refused or malformed; the text says why.
    Error(String),
}

impl Response {
    /// The answer as one line, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"encoding the answer: {e}\"}}"));
        line.push('\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        for request in Request::ALL {
            let line = request.to_line();
            assert_eq!(line, format!("{{\"op\":\"{}\"}}\n", request.name()));
            assert_eq!(Request::parse(line.trim()), Ok(request));
        }
        let e = Request::parse(r#"{"op":"reboot"}"#).unwrap_err();
        assert!(e.starts_with("bad request: unknown variant `reboot`"), "{e}");
        for request in Request::ALL {
            assert!(e.contains(&format!("`{request}`")), "the error names {request}: {e}");
        }
        assert!(Request::parse(r#"{"op":"state","extra":1}"#).unwrap_err().contains("extra"));
        assert!(Request::parse("garbage").unwrap_err().starts_with("bad request"));
        assert!(Request::parse("{}").unwrap_err().contains("op"));
    }

    #[test]
    fn responses_on_the_wire() {
        let info = Response::Info(VmInfo { state: RunState::Paused, vcpus: 2, memory_mib: 256, pid: 7 });
        assert_eq!(info.to_line(), "{\"info\":{\"state\":\"paused\",\"vcpus\":2,\"memory_mib\":256,\"pid\":7}}\n");
        assert_eq!(Response::State(RunState::Stopping).to_line(), "{\"state\":\"stopping\"}\n");
        assert_eq!(Response::Error("no".into()).to_line(), "{\"error\":\"no\"}\n");
        let devices = Response::Devices(vec![DeviceInfo { kind: 2, name: "rootfs".into(), base: 0xd000_0000, gsi: 5, active: true }]);
        let line = devices.to_line();
        assert!(line.contains("\"type\":2"), "{line}");
        for r in [info, devices, Response::State(RunState::Created)] {
            assert_eq!(serde_json::from_str::<Response>(r.to_line().trim()).unwrap(), r);
        }
        assert!(serde_json::from_str::<Response>(r#"{"state":"running","ok":true}"#).is_err());
    }
}
