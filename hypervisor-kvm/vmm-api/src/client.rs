//! A blocking client of the control API: one connection per request, every read and write
//! bounded by the client's timeout.

use crate::protocol::{DeviceInfo, Request, Response, RunState, VmInfo, MAX_RESPONSE};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors talking to a vmm.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed.
    #[error("talking to the vmm API at {0}")]
    Io(String, #[source] std::io::Error),
    /// The answer was not a [`Response`].
    #[error("the vmm API at {0} answered something that is not a response")]
    Json(String, #[source] serde_json::Error),
    /// The vmm refused the request.
    #[error("the vmm refused {op}: {message}")]
    Refused {
        /// The request.
        op: Request,
        /// Its error.
        message: String,
    },
    /// The vmm answered with a response of another kind than the request takes.
    #[error("the vmm answered {op} with {answer}")]
    Unexpected {
        /// The request.
        op: Request,
        /// The answer, as JSON.
        answer: String,
    },
}

/// A client of one vmm's API socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the API at `socket`, each request bounded by `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client { socket: socket.into(), timeout }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and returns the answer; [`Response::Error`] is
    /// [`ClientError::Refused`].
    pub fn call(&self, request: Request) -> Result<Response, ClientError> {
        let where_ = || self.socket.display().to_string();
        let io = |e| ClientError::Io(where_(), e);
        let stream = UnixStream::connect(&self.socket).map_err(io)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
        (&stream).write_all(request.to_line().as_bytes()).map_err(io)?;
        let mut line = String::new();
        BufReader::new(&stream).take(MAX_RESPONSE).read_line(&mut line).map_err(io)?;
        match serde_json::from_str(&line).map_err(|e| ClientError::Json(where_(), e))? {
            Response::Error(message) => Err(ClientError::Refused { op: request, message }),
            answer => Ok(answer),
        }
    }

    /// [`Request::State`].
    pub fn info(&self) -> Result<VmInfo, ClientError> {
        match self.call(Request::State)? {
            Response::Info(info) => Ok(info),
            other => Err(unexpected(Request::State, &other)),
        }
    }

    /// A request that changes the run state (start, pause, resume, stop, shutdown) or saves
    /// it (save): the state it left the VM in.
    pub fn run_state(&self, request: Request) -> Result<RunState, ClientError> {
        match self.call(request)? {
            Response::State(state) => Ok(state),
            other => Err(unexpected(request, &other)),
        }
    }

    /// [`Request::Devices`].
    pub fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        match self.call(Request::Devices)? {
            Response::Devices(devices) => Ok(devices),
            other => Err(unexpected(Request::Devices, &other)),
        }
    }
}

fn unexpected(op: Request, answer: &Response) -> ClientError {
    ClientError::Unexpected { op, answer: answer.to_line().trim_end().to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Serves one connection: answers each request line with the next canned line.
    fn serve(answers: &'static [&'static str]) -> (tempfile::TempDir, Client) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for (conn, answer) in listener.incoming().zip(answers) {
                let conn = conn.unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                assert!(Request::parse(line.trim()).is_ok(), "{line}");
                (&conn).write_all(answer.as_bytes()).unwrap();
            }
        });
        (dir, Client::new(path, Duration::from_secs(5)))
    }

    #[test]
    fn typed_answers_and_errors() {
        let (_dir, client) = serve(&[
            "{\"info\":{\"state\":\"created\",\"vcpus\":1,\"memory_mib\":64,\"pid\":9}}\n",
            "{\"state\":\"running\"}\n",
            "{\"error\":\"cannot pause: the VM is created\"}\n",
            "{\"state\":\"running\"}\n",
            "not json\n",
        ]);
        assert_eq!(client.info().unwrap(), VmInfo { state: RunState::Created, vcpus: 1, memory_mib: 64, pid: 9 });
        assert_eq!(client.run_state(Request::Start).unwrap(), RunState::Running);
        let e = client.run_state(Request::Pause).unwrap_err();
        assert!(matches!(&e, ClientError::Refused { op: Request::Pause, message } if message.contains("is created")), "{e:?}");
        assert_eq!(e.to_string(), "the vmm refused pause: cannot pause: the VM is created");
        let e = client.devices().unwrap_err();
        assert_eq!(e.to_string(), "the vmm answered devices with {\"state\":\"running\"}");
        assert!(matches!(client.info().unwrap_err(), ClientError::Json(..)));
    }

    #[test]
    fn no_vmm_is_an_io_error_naming_the_socket() {
        let e = Client::new("/nonexistent/api.sock", Duration::from_secs(1)).info().unwrap_err();
        assert_eq!(e.to_string(), "talking to the vmm API at /nonexistent/api.sock");
    }
}
