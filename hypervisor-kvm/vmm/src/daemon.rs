//! `--daemonize`: the vmm forks before doing anything else; the parent waits until the child
//! has built the VM and bound its API socket (or failed), prints the child's error if any and
//! exits. The child runs in its own session, so it outlives whoever started it and is not
//! their child (no zombie for them to reap).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;

const READY: &[u8] = b"ready\n";

/// The child's end of the readiness pipe.
pub struct Readiness(File);

impl Readiness {
    /// Tells the parent the VM is up; it exits 0.
    pub fn ready(mut self) {
        let _ = self.0.write_all(READY);
    }

    /// Tells the parent why the vmm failed; it prints that and exits 1.
    pub fn failed(mut self, message: &str) {
        let _ = self.0.write_all(message.as_bytes());
    }
}

/// Forks. Returns in the child only (with its end of the pipe); the parent exits with 0 once
/// the child is ready, 1 when it failed or died.
pub fn daemonize() -> std::io::Result<Readiness> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created by pipe2 and are owned by nobody else.
    let (mut read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    // SAFETY: called at the start of main, before any thread exists, so the child is a
    // complete copy of a single-threaded process.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(read_end);
            // SAFETY: setsid has no memory-safety preconditions.
            if unsafe { libc::setsid() } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let null = File::open("/dev/null")?;
            // SAFETY: both fds are open; dup2 onto stdin replaces it atomically.
            if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 0) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Readiness(write_end))
        }
        _child => {
            drop(write_end);
            let mut said = Vec::new();
            let _ = read_end.read_to_end(&mut said);
            if said == READY {
                std::process::exit(0);
            }
            let message = String::from_utf8_lossy(&said);
            if message.is_empty() {
                eprintln!("vmm: the daemonized vmm exited before it was ready");
            } else {
                eprintln!("{message}");
            }
            std::process::exit(1);
        }
    }
}
