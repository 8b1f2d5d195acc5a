//! A VMM's process (QEMU, our `vmm`), seen through `/proc`. A VM's process is named by its pid
//! *and* its start time, so a pid the kernel reused for another process is never taken for (or
//! signalled as) the VMM. Signals go through a pidfd opened before the start time is checked,
//! which closes the race between the check and the signal.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};
use tracing::warn;

/// How often waits look at `/proc`.
const POLL: Duration = Duration::from_millis(20);
/// How long [`terminate`] waits for the process to go after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(5);

/// Why signalling or stopping a VMM process failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The kernel refused.
    #[error("sending signal {signal} to {program} (pid {pid})")]
    Signal {
        /// What the process is (`QEMU`, `vmm`).
        program: String,
        /// The pid.
        pid: i32,
        /// The signal.
        signal: i32,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The process survived SIGKILL.
    #[error("{program} (pid {pid}) is still there {waited:?} after SIGKILL")]
    Unkillable {
        /// What the process is.
        program: String,
        /// The pid.
        pid: i32,
        /// How long it was given.
        waited: Duration,
    },
}

/// What this module reads from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `Z` (zombie), ...
    pub state: char,
    /// Field 22: when the process started, in clock ticks after boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process has exited: a zombie (`Z`, not yet reaped) or dead (`X`, `x`).
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 was the state; field 22 is 19 further on.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// The stat of a process, if it exists.
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether process `pid` is the one that started at `start_time` and has not exited (a zombie
/// has exited).
pub fn is_alive(pid: i32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && !s.exited())
}

/// Whether process `pid` exists and has not exited (a zombie, killed but not yet reaped by its
/// parent, has exited). For a pid whose start time is not known; see [`is_alive`] otherwise.
pub fn runs(pid: i32) -> bool {
    stat(pid).is_some_and(|s| !s.exited())
}

/// Whether process `pid` is alive and its command line holds `args` as consecutive arguments
/// (a VMM found through a pid file, whose start time is not known: QEMU's `-name
/// sandbox-<id>`, the `vmm`'s `--api-socket <dir>/api.sock`).
pub fn is_alive_with_args(pid: i32, args: &[&str]) -> bool {
    let Some(stat) = stat(pid) else { return false };
    if stat.exited() || args.is_empty() {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let have: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    have.windows(args.len()).any(|w| w.iter().zip(args).all(|(h, a)| *h == a.as_bytes()))
}

/// The pid in a pid file (one decimal number, surrounding whitespace allowed), if there is a
/// readable one naming a process other than init.
pub fn read_pidfile(path: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
    (pid > 1).then_some(pid)
}

/// The process named by `pidfile`, with its start time, if it is alive and its command line
/// holds `args` (see [`is_alive_with_args`]).
pub fn live_from_pidfile(pidfile: &Path, args: &[&str]) -> Option<(i32, u64)> {
    let pid = read_pidfile(pidfile)?;
    if !is_alive_with_args(pid, args) {
        return None;
    }
    Some((pid, stat(pid)?.start_time))
}

/// Sends `signal` to the process `pid` that started at `start_time`. Returns `false` (and
/// sends nothing) when that process no longer exists. `program` names it in errors.
pub fn signal(program: &str, pid: i32, start_time: u64, signal: i32) -> Result<bool, ProcessError> {
    let fail = |source| ProcessError::Signal { program: program.to_owned(), pid, signal, source };
    // SAFETY: pidfd_open takes a pid and flags by value and returns a new descriptor or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(false),
            // Kernels before 5.3: check, then kill (the small race pidfds close remains).
            Some(libc::ENOSYS) => {
                if stat(pid).is_none_or(|s| s.start_time != start_time) {
                    return Ok(false);
                }
                // SAFETY: kill takes plain integers; the pid was just checked to be the
                // process that started at `start_time`.
                match unsafe { libc::kill(pid, signal) } {
                    0 => Ok(true),
                    _ => match io::Error::last_os_error() {
                        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
                        e => Err(fail(e)),
                    },
                }
            }
            _ => Err(fail(e)),
        };
    }
    // SAFETY: the syscall returned a new descriptor (it fits in an i32) that nothing else
    // owns; the OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The pidfd pins the process that had `pid` when it was opened: if that one started at
    // `start_time`, the signal below reaches it and no other.
    if stat(pid).is_none_or(|s| s.start_time != start_time) {
        return Ok(false);
    }
    // SAFETY: a valid pidfd, a signal number, a null siginfo (the kernel fills in a default)
    // and zero flags.
    let r = unsafe {
        libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0)
    };
    if r == 0 {
        return Ok(true);
    }
    match io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
        e => Err(fail(e)),
    }
}

/// Waits until process `pid` (started at `start_time`) has exited, up to `timeout`; returns
/// whether it did.
pub fn wait_gone(pid: i32, start_time: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_alive(pid, start_time) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Stops the process `pid` (started at `start_time`): `ask` first (the VMM's own quit command);
/// if that fails, SIGTERM; if the process is still there after `timeout`, SIGKILL, and then it
/// must be gone within [`KILL_WAIT`]. A process that is already gone is fine. `program` names
/// it in logs and errors.
pub fn terminate<E: std::fmt::Display>(
    program: &str,
    pid: i32,
    start_time: u64,
    timeout: Duration,
    ask: impl FnOnce() -> Result<(), E>,
) -> Result<(), ProcessError> {
    if let Err(e) = ask() {
        warn!("asking {program} (pid {pid}) to quit failed ({e}); sending SIGTERM");
        signal(program, pid, start_time, libc::SIGTERM)?;
    }
    if wait_gone(pid, start_time, timeout) {
        return Ok(());
    }
    warn!("{program} (pid {pid}) still there after {timeout:?}; sending SIGKILL");
    signal(program, pid, start_time, libc::SIGKILL)?;
    if wait_gone(pid, start_time, KILL_WAIT) {
        Ok(())
    } else {
        Err(ProcessError::Unkillable { program: program.to_owned(), pid, waited: KILL_WAIT })
    }
}

/// Waits up to 5 s until a just-spawned child has exec'd (before that, its command line is
/// its parent's); returns whether it did. For tests that spawn stand-ins for a VMM.
pub fn wait_for_exec(pid: i32) -> bool {
    let ours = fs::read("/proc/self/cmdline").unwrap_or_default();
    for _ in 0..500 {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !cmdline.is_empty() && cmdline != ours {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 5 0 0 0 7 3 0 0 20 0 3 0 123456 1000 50";
        assert_eq!(parse_stat(line), Some(ProcStat { state: 'S', start_time: 123456 }));
        assert_eq!(parse_stat("1 (init) Z 0"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_start_times_must_match() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("own stat");
        assert!(is_alive(me, s.start_time));
        assert!(!is_alive(me, s.start_time + 1));
        assert!(runs(me));
        assert!(stat(i32::MAX).is_none());
        assert!(!runs(i32::MAX));
    }

    #[test]
    fn signals_reach_only_the_right_process() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id() as i32;
        let start = stat(pid).unwrap().start_time;
        // A wrong start time: nothing is sent.
        assert!(!signal("sleep", pid, start + 1, libc::SIGKILL).unwrap());
        assert!(is_alive(pid, start));
        assert!(signal("sleep", pid, start, libc::SIGKILL).unwrap());
        // Our own child stays a zombie until reaped, and a zombie counts as gone.
        assert!(wait_gone(pid, start, Duration::from_secs(5)));
        assert!(!runs(pid), "a zombie does not run");
        child.wait().unwrap();
        assert!(!runs(pid));
        assert!(!signal("sleep", pid, start, libc::SIGKILL).unwrap());
    }

    #[test]
    fn names_from_the_command_line_and_pid_files() {
        // `sh -c SCRIPT -name sandbox-x`: sh keeps its argv ($0 = -name, $1 = sandbox-x).
        // `read` blocks sh itself, so killing it leaves no orphan holding the test's output.
        let mut child = Command::new("sh").args(["-c", "read line", "-name", "sandbox-x"]).stdin(std::process::Stdio::piped()).spawn().expect("sh");
        let pid = child.id() as i32;
        assert!(wait_for_exec(pid));
        assert!(is_alive_with_args(pid, &["-name", "sandbox-x"]));
        assert!(is_alive_with_args(pid, &["sandbox-x"]));
        assert!(!is_alive_with_args(pid, &["-name", "sandbox-y"]));
        assert!(!is_alive_with_args(pid, &["sandbox-x", "-name"]));
        assert!(!is_alive_with_args(pid, &[]));
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("x.pid");
        std::fs::write(&pidfile, format!(" {pid}\n")).unwrap();
        assert_eq!(live_from_pidfile(&pidfile, &["-name", "sandbox-x"]), Some((pid, stat(pid).unwrap().start_time)));
        assert_eq!(live_from_pidfile(&pidfile, &["-name", "sandbox-y"]), None);
        for bad in ["", "1", "-5", "x"] {
            std::fs::write(&pidfile, bad).unwrap();
            assert_eq!(read_pidfile(&pidfile), None, "{bad:?}");
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_alive_with_args(pid, &["-name", "sandbox-x"]));
    }

    #[test]
    fn terminate_asks_then_escalates() {
        // `ask` succeeds and the process goes: no signal needed (the child ends itself).
        let mut child = Command::new("sh").args(["-c", "read line || true"]).stdin(std::process::Stdio::piped()).spawn().expect("sh");
        let pid = child.id() as i32;
        let start = stat(pid).unwrap().start_time;
        let mut stdin = child.stdin.take();
        terminate("sh", pid, start, Duration::from_secs(5), || {
            drop(stdin.take());
            Ok::<(), String>(())
        })
        .unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
        // `ask` fails and SIGTERM is ignored: SIGKILL after the timeout.
        let mut child = Command::new("sh").args(["-c", "trap '' TERM; exec sleep 30"]).spawn().expect("sh");
        let pid = child.id() as i32;
        assert!(wait_for_exec(pid));
        std::thread::sleep(Duration::from_millis(100));
        let start = stat(pid).unwrap().start_time;
        let began = Instant::now();
        terminate("sleep", pid, start, Duration::from_millis(300), || Err("no API")).unwrap();
        assert!(began.elapsed() >= Duration::from_millis(300));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    }
}
