//! A small synchronous QMP client: one connection per session, the greeting, capabilities
//! negotiation, then commands, each answered by a `return` or an `error` line (event lines in
//! between are skipped).
//!
//! QEMU's QMP socket serves one client at a time and makes the others wait unanswered, so each
//! session holds an exclusive `flock` on the VM's `qmp.lock`: concurrent host processes queue
//! for it, and give up with [`QmpError::Busy`] rather than hang. Every session has a deadline
//! that bounds each read and write.

use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The longest QMP message this client reads.
const MAX_LINE: u64 = 1 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The lock file could not be opened or locked.
    #[error("locking {path:?}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another session held the lock for the whole timeout.
    #[error("another process kept the QMP lock {path:?} for {timeout:?}")]
    Busy {
        /// The lock file.
        path: PathBuf,
        /// How long this one waited.
        timeout: Duration,
    },
    /// The socket did not accept the connection.
    #[error("connecting to QMP at {path:?}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading or writing failed (a timeout included).
    #[error("QMP {command}: I/O failed")]
    Io {
        /// The command (or `greeting`).
        command: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// QEMU closed the connection.
    #[error("QMP {command}: QEMU closed the connection")]
    Closed {
        /// The command (or `greeting`).
        command: String,
    },
    /// A line that is not the QMP message expected.
    #[error("QMP {command}: unexpected message {message}: {why}")]
    Malformed {
        /// The command (or `greeting`).
        command: String,
        /// The message (shortened).
        message: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A migration (saving or restoring a template's device state) failed or did not finish.
    #[error("QEMU could not {what}: {why}")]
    Migration {
        /// `save the device state`, `restore the device state`.
        what: &'static str,
        /// Its status and error, or the time it ran out after.
        why: String,
    },
    /// QEMU answered with an error.
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
}

/// An open QMP session, capabilities negotiated. Dropping it closes the connection and
/// releases the lock.
pub struct QmpSession {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    deadline: Instant,
    _lock: File,
}

/// Takes `lock`, connects to `socket`, reads the greeting and negotiates capabilities. The
/// wait for the lock and the whole session (its later commands too) must fit in `timeout`.
pub fn connect(socket: &Path, lock: &Path, timeout: Duration) -> Result<QmpSession, QmpError> {
    let deadline = Instant::now() + timeout;
    let lock = lock_exclusive(lock, deadline, timeout)?;
    let stream = UnixStream::connect(socket).map_err(|source| QmpError::Connect { path: socket.to_owned(), source })?;
    let writer = stream.try_clone().map_err(|source| QmpError::Connect { path: socket.to_owned(), source })?;
    let mut session = QmpSession { reader: BufReader::new(stream), writer, deadline, _lock: lock };
    let greeting = session.read_message("greeting")?;
    if !greeting.get("QMP").is_some_and(Value::is_object) {
        return Err(malformed("greeting", &greeting, "no \"QMP\" object: not a QMP server"));
    }
    session.execute("qmp_capabilities", None)?;
    Ok(session)
}

/// One command in a session of its own; returns the `return` value.
pub fn execute(socket: &Path, lock: &Path, command: &str, timeout: Duration) -> Result<Value, QmpError> {
    connect(socket, lock, timeout)?.execute(command, None)
}

impl QmpSession {
    /// Runs `command` (with `arguments`, if any); returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        let io_error = |source| QmpError::Io { command: command.to_owned(), source };
        self.writer.set_write_timeout(Some(self.remaining(command)?)).map_err(io_error)?;
        self.writer.write_all(line.as_bytes()).map_err(io_error)?;
        loop {
            let reply = self.read_message(command)?;
            if reply.get("event").is_some() {
                tracing::debug!(command, "QMP event while waiting for a reply: {reply}");
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                let field = |name| error.get(name).and_then(Value::as_str).map(str::to_owned);
                return match (field("class"), field("desc")) {
                    (Some(class), Some(desc)) => Err(QmpError::Command { command: command.to_owned(), class, desc }),
                    _ => Err(malformed(command, &reply, "an error without a class and a desc")),
                };
            }
            return Err(malformed(command, &reply, "neither a return, an error nor an event"));
        }
    }

    fn remaining(&self, command: &str) -> Result<Duration, QmpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let source = io::Error::new(io::ErrorKind::TimedOut, "the QMP session's deadline passed");
            return Err(QmpError::Io { command: command.to_owned(), source });
        }
        Ok(left)
    }

    /// Reads one message: a JSON object on one line.
    fn read_message(&mut self, command: &str) -> Result<Value, QmpError> {
        let io_error = |source| QmpError::Io { command: command.to_owned(), source };
        loop {
            let left = self.remaining(command)?;
            self.reader.get_ref().set_read_timeout(Some(left)).map_err(io_error)?;
            let mut line = Vec::new();
            let n = self.reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut line).map_err(io_error)?;
            if n == 0 {
                return Err(QmpError::Closed { command: command.to_owned() });
            }
            if !line.ends_with(b"\n") && n as u64 == MAX_LINE {
                let source = io::Error::new(io::ErrorKind::InvalidData, format!("a message longer than {MAX_LINE} bytes"));
                return Err(io_error(source));
            }
            if line.trim_ascii().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_slice(&line).map_err(|_| QmpError::Malformed {
                command: command.to_owned(),
                message: shorten(&String::from_utf8_lossy(&line)),
                why: "not JSON",
            })?;
            if !value.is_object() {
                return Err(malformed(command, &value, "not a JSON object"));
            }
            return Ok(value);
        }
    }
}

fn malformed(command: &str, message: &Value, why: &'static str) -> QmpError {
    QmpError::Malformed { command: command.to_owned(), message: shorten(&message.to_string()), why }
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// Opens (creating it, mode 0600) and exclusively locks `path`, polling until `deadline`
/// (`timeout` is for the message).
fn lock_exclusive(path: &Path, deadline: Instant, timeout: Duration) -> Result<File, QmpError> {
    let lock_error = |source| QmpError::Lock { path: path.to_owned(), source };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path).map_err(lock_error)?;
    loop {
        // SAFETY: flock on a descriptor the `file` owns and keeps open; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Some(libc::EWOULDBLOCK) => return Err(QmpError::Busy { path: path.to_owned(), timeout }),
            Some(libc::EINTR) => {}
            _ => return Err(lock_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread::JoinHandle;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;
    const T: Duration = Duration::from_secs(5);

    /// A fake QMP server: accepts one client on a socket in a tempdir and runs `script` on it.
    struct FakeQmp {
        dir: tempfile::TempDir,
        thread: Option<JoinHandle<()>>,
    }

    /// The fake's side of a connection.
    struct Peer {
        reader: BufReader<UnixStream>,
        writer: UnixStream,
    }

    impl Peer {
        fn send(&mut self, line: &str) {
            self.writer.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        }
        fn expect(&mut self, command: &str) {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["execute"], command, "{line}");
        }
        fn handshake(&mut self) {
            self.send(GREETING);
            self.expect("qmp_capabilities");
            self.send(r#"{"return": {}}"#);
        }
    }

    impl FakeQmp {
        fn start(script: impl FnOnce(Peer) + Send + 'static) -> FakeQmp {
            let dir = tempfile::tempdir().unwrap();
            let listener = UnixListener::bind(dir.path().join("qmp.sock")).unwrap();
            let thread = std::thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                let writer = stream.try_clone().unwrap();
                script(Peer { reader: BufReader::new(stream), writer });
            });
            FakeQmp { dir, thread: Some(thread) }
        }
        fn socket(&self) -> PathBuf {
            self.dir.path().join("qmp.sock")
        }
        fn lock(&self) -> PathBuf {
            self.dir.path().join("qmp.lock")
        }
        fn run(&self, command: &str, timeout: Duration) -> Result<Value, QmpError> {
            execute(&self.socket(), &self.lock(), command, timeout)
        }
    }

    impl Drop for FakeQmp {
        fn drop(&mut self) {
            if let Some(t) = self.thread.take() {
                let result = t.join();
                if !std::thread::panicking() {
                    result.expect("the fake QMP server's script failed");
                }
            }
        }
    }

    #[test]
    fn return_value_with_events_interleaved() {
        let fake = FakeQmp::start(|mut p| {
            p.send(GREETING);
            p.expect("qmp_capabilities");
            p.send(r#"{"event": "NIC_RX_FILTER_CHANGED", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}"#);
            p.send(r#"{"return": {}}"#);
            p.expect("query-status");
            p.send("");
            p.send(r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#);
            p.send(r#"{"return": {"status": "paused", "singlestep": false, "running": false}}"#);
        });
        let status = fake.run("query-status", T).unwrap();
        assert_eq!(status["status"], "paused");
        assert_eq!(status["running"], false);
    }

    #[test]
    fn error_replies_name_the_command_class_and_desc() {
        let fake = FakeQmp::start(|mut p| {
            p.handshake();
            p.expect("cont");
            p.send(r#"{"error": {"class": "GenericError", "desc": "Resetting the Virtual Machine is required"}}"#);
        });
        let e = fake.run("cont", T).unwrap_err();
        assert!(matches!(&e, QmpError::Command { class, .. } if class == "GenericError"), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("QMP cont failed: GenericError: Resetting"), "{text}");
    }

    #[test]
    fn arguments_are_sent() {
        let fake = FakeQmp::start(|mut p| {
            p.handshake();
            let mut line = String::new();
            p.reader.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v, json!({"execute": "human-monitor-command", "arguments": {"command-line": "info version"}}));
            p.send(r#"{"return": "7.2.0\r\n"}"#);
        });
        let mut session = connect(&fake.socket(), &fake.lock(), T).unwrap();
        let v = session.execute("human-monitor-command", Some(json!({"command-line": "info version"}))).unwrap();
        assert_eq!(v, "7.2.0\r\n");
    }

    #[test]
    fn a_bad_greeting_is_refused() {
        let fake = FakeQmp::start(|mut p| p.send(r#"{"hello": "I am not QEMU"}"#));
        let e = fake.run("query-status", T).unwrap_err().to_string();
        assert!(e.contains("greeting") && e.contains("not a QMP server"), "{e}");
        let fake = FakeQmp::start(|mut p| p.send("SSH-2.0-OpenSSH"));
        let e = fake.run("query-status", T).unwrap_err().to_string();
        assert!(e.contains("not JSON") && e.contains("SSH-2.0"), "{e}");
    }

    #[test]
    fn malformed_replies_are_errors() {
        for (reply, why) in [
            ("[1, 2]", "not a JSON object"),
            (r#"{"something": 1}"#, "neither a return"),
            (r#"{"error": {"class": 7}}"#, "without a class and a desc"),
            (r#"{"return": "#, "not JSON"),
        ] {
            let fake = FakeQmp::start(move |mut p| {
                p.handshake();
                p.expect("stop");
                p.send(reply);
            });
            let e = fake.run("stop", T).unwrap_err().to_string();
            assert!(e.contains("QMP stop") && e.contains(why), "{reply}: {e}");
        }
    }

    #[test]
    fn closed_connection_and_silence() {
        let fake = FakeQmp::start(|mut p| {
            p.handshake();
            p.expect("quit");
        });
        let e = fake.run("quit", T).unwrap_err();
        assert!(matches!(e, QmpError::Closed { ref command } if command == "quit"), "{e:?}");

        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let fake = FakeQmp::start(move |mut p| {
            p.send(GREETING);
            // Say nothing more until the client gave up.
            let _ = rx.recv();
        });
        let started = Instant::now();
        let e = fake.run("query-status", Duration::from_millis(300)).unwrap_err();
        tx.send(()).unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(matches!(&e, QmpError::Io { command, .. } if command == "qmp_capabilities"), "{e:?}");
    }

    #[test]
    fn no_server() {
        let dir = tempfile::tempdir().unwrap();
        let e = execute(&dir.path().join("qmp.sock"), &dir.path().join("qmp.lock"), "query-status", T).unwrap_err();
        assert!(matches!(e, QmpError::Connect { .. }), "{e:?}");
        let e = execute(&dir.path().join("qmp.sock"), &dir.path().join("gone/qmp.lock"), "query-status", T).unwrap_err();
        assert!(matches!(e, QmpError::Lock { .. }), "{e:?}");
    }

    #[test]
    fn sessions_queue_on_the_lock() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let fake = FakeQmp::start(move |mut p| {
            p.handshake();
            let _ = rx.recv();
        });
        let held = connect(&fake.socket(), &fake.lock(), T).unwrap();
        let e = connect(&fake.socket(), &fake.lock(), Duration::from_millis(100)).err().expect("busy");
        assert!(matches!(e, QmpError::Busy { .. }), "{e:?}");
        assert!(e.to_string().contains("qmp.lock"));
        drop(held);
        tx.send(()).unwrap();
        // The lock is free again (the socket has no more clients, so only lock it).
        let t = Duration::from_millis(100);
        drop(lock_exclusive(&fake.lock(), Instant::now() + t, t).unwrap());
    }
}
