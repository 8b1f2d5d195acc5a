//! The Sandbox Relay API: a process's terminal size, its signals and its standard streams.

use super::guest::{call_error, exec_id};
use super::handle::Sandbox;
use super::rules;
use super::state::require_sandbox;
use super::SandboxError;
use crate::agent::RawClient;
use agent_protocol::pb;
use futures::StreamExt;

/// Largest write sent to the agent in one call.
const STDIN_CHUNK: usize = 64 << 10;

/// A process's standard streams, from sandbox.IOStream().
pub struct IoStream {
    /// Its stdin.
    pub stdin: StdinWriter,
    /// Its stdout (on a terminal: everything it prints).
    pub stdout: OutputReader,
    /// Its stderr; `None` for a process on a terminal, whose stderr is its stdout.
    pub stderr: Option<OutputReader>,
}

/// Writes to a process's stdin.
pub struct StdinWriter {
    raw: RawClient,
    process: pb::ProcessRef,
    sandbox: String,
}

/// A process's stdout or stderr, as it comes.
pub struct OutputReader {
    stream: tonic::Streaming<pb::OutputChunk>,
    sandbox: String,
}

impl StdinWriter {
    /// Writes all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), SandboxError> {
        while !data.is_empty() {
            let n = data.len().min(STDIN_CHUNK);
            let request = pb::WriteStdinRequest {
                container_id: self.process.container_id.clone(),
                exec_id: self.process.exec_id.clone(),
                data: data[..n].to_vec(),
            };
            let written = self.raw.write_stdin(request).await.map_err(call_error(&self.sandbox, "WriteStdin"))?.into_inner().written;
            let written = usize::try_from(written).unwrap_or(usize::MAX);
            if written == 0 || written > n {
                return Err(SandboxError::BadReply { sandbox: self.sandbox.clone(), what: format!("wrote {written} of {n} stdin bytes") });
            }
            data = &data[written..];
        }
        Ok(())
    }

    /// Closes stdin: the process reads end of file.
    pub async fn close(mut self) -> Result<(), SandboxError> {
        self.raw.close_stdin(self.process.clone()).await.map_err(call_error(&self.sandbox, "CloseStdin"))?;
        Ok(())
    }
}

impl OutputReader {
    /// The next chunk of output; `None` once the process exited and everything was read.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SandboxError> {
        match self.stream.next().await {
            None => Ok(None),
            Some(Ok(chunk)) => Ok(Some(chunk.data)),
            Some(Err(status)) => Err(call_error(&self.sandbox, "ReadOutput")(status)),
        }
    }

    /// The rest of the output, as an [`AsyncRead`](tokio::io::AsyncRead).
    pub fn into_async_read(self) -> impl tokio::io::AsyncRead + Send + Unpin {
        let stream = self.stream.map(|r| r.map(|c| bytes::Bytes::from(c.data)).map_err(std::io::Error::other));
        tokio_util::io::StreamReader::new(stream)
    }
}

impl Sandbox {
    async fn process_ref(&self, container: &str, token: &str, action: &'static str) -> Result<(RawClient, pb::ProcessRef), SandboxError> {
        let (_lock, mut record) = self.locked().await?;
        require_sandbox(&self.id, record.state, rules::RELAY.sandbox, action)?;
        self.check_token(&mut record, container, token)?;
        let agent = self.agent(&record).await?;
        Ok((agent.raw(), pb::ProcessRef { container_id: container.to_owned(), exec_id: exec_id(container, token) }))
    }

    /// sandbox.WinsizeProcess(container, token, height, width): resizes the process's
    /// terminal.
    pub async fn winsize_process(&self, container: &str, token: &str, height: u32, width: u32) -> Result<(), SandboxError> {
        let (mut raw, p) = self.process_ref(container, token, "resize a terminal in").await?;
        let request = pb::ResizeTerminalRequest { container_id: p.container_id, exec_id: p.exec_id, rows: height, columns: width };
        raw.resize_terminal(request).await.map_err(self.call_error("ResizeTerminal"))?;
        Ok(())
    }

    /// sandbox.SignalProcess(container, token, signal, all): signals one process, or (with
    /// `all`) every process of the container.
    pub async fn signal_process(&self, container: &str, token: &str, signal: i32, all: bool) -> Result<(), SandboxError> {
        let (mut raw, p) = self.process_ref(container, token, "signal a process in").await?;
        let signal = u32::try_from(signal).map_err(|_| super::config::ConfigError { field: "signal".into(), reason: format!("{signal} is not a signal") })?;
        let request = pb::SignalProcessRequest { container_id: p.container_id, exec_id: p.exec_id, signal, all };
        raw.signal_process(request).await.map_err(self.call_error("SignalProcess"))?;
        Ok(())
    }

    /// sandbox.IOStream(container, token): the process's stdin, stdout and stderr. Output
    /// the process wrote before this call is delivered too (the agent buffers it).
    pub async fn io_stream(&self, container: &str, token: &str) -> Result<IoStream, SandboxError> {
        let (mut raw, p) = self.process_ref(container, token, "attach to a process in").await?;
        let terminal = {
            let record = self.snapshot();
            let config = record.config.containers.iter().find(|c| c.id == container).cloned();
            if token == container {
                config.and_then(|c| c.process.map(|p| p.terminal)).unwrap_or(false)
            } else {
                record.containers.get(container).and_then(|c| c.processes.get(token)).is_some_and(|p| p.config.terminal)
            }
        };
        let read = |stream: pb::OutputStream| pb::ReadOutputRequest { container_id: p.container_id.clone(), exec_id: p.exec_id.clone(), stream: stream as i32 };
        let stdout = raw.read_output(read(pb::OutputStream::Stdout)).await.map_err(self.call_error("ReadOutput"))?.into_inner();
        let stderr = if terminal {
            None
        } else {
            let s = raw.read_output(read(pb::OutputStream::Stderr)).await.map_err(self.call_error("ReadOutput"))?.into_inner();
            Some(OutputReader { stream: s, sandbox: self.id.clone() })
        };
        Ok(IoStream {
            stdin: StdinWriter { raw, process: p, sandbox: self.id.clone() },
            stdout: OutputReader { stream: stdout, sandbox: self.id.clone() },
            stderr,
        })
    }
}
