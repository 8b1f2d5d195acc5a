//! QEMU's process, seen through `/proc`. A VM's process is named by its pid *and* its start
//! time, so a pid the kernel reused for another process is never taken for (or signalled as)
//! QEMU. Signals go through a pidfd opened before the start time is checked, which closes the
//! race between the check and the signal.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// How often waits look at `/proc`.
const POLL: Duration = Duration::from_millis(20);

/// Why signalling QEMU failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The kernel refused.
    #[error("sending signal {signal} to QEMU (pid {pid})")]
    Signal {
        /// The pid.
        pid: i32,
        /// The signal.
        signal: i32,
        /// The cause.
        #[source]
        source: io::Error,
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
    stat(pid).is_some_and(|s| s.start_time == start_time && !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Whether process `pid` is alive and runs with `-name <name>` (a QEMU found through a pid
/// file, whose start time is not known).
pub fn is_alive_with_name(pid: i32, name: &str) -> bool {
    let Some(stat) = stat(pid) else { return false };
    if matches!(stat.state, 'Z' | 'X' | 'x') {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2).any(|w| w[0] == b"-name" && w[1] == name.as_bytes())
}

/// Sends `signal` to the process `pid` that started at `start_time`. Returns `false` (and
/// sends nothing) when that process no longer exists.
pub fn signal(pid: i32, start_time: u64, signal: i32) -> Result<bool, ProcessError> {
    let fail = |source| ProcessError::Signal { pid, signal, source };
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

#[cfg(test)]
pub(crate) mod tests {
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
        assert!(stat(i32::MAX).is_none());
    }

    #[test]
    fn signals_reach_only_the_right_process() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id() as i32;
        let start = stat(pid).unwrap().start_time;
        // A wrong start time: nothing is sent.
        assert!(!signal(pid, start + 1, libc::SIGKILL).unwrap());
        assert!(is_alive(pid, start));
        assert!(signal(pid, start, libc::SIGKILL).unwrap());
        // Our own child stays a zombie until reaped, and a zombie counts as gone.
        assert!(wait_gone(pid, start, Duration::from_secs(5)));
        child.wait().unwrap();
        assert!(!signal(pid, start, libc::SIGKILL).unwrap());
    }

    /// Waits until a just-spawned child has exec'd (before that, its command line is ours).
    pub(crate) fn wait_for_exec(pid: i32) {
        let ours = fs::read("/proc/self/cmdline").unwrap_or_default();
        for _ in 0..500 {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if !cmdline.is_empty() && cmdline != ours {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("process {pid} did not exec within 5 s");
    }

    #[test]
    fn names_from_the_command_line() {
        // `sh -c SCRIPT -name sandbox-x`: sh keeps its argv ($0 = -name, $1 = sandbox-x).
        // `read` blocks sh itself, so killing it leaves no orphan holding the test's output.
        let mut child = Command::new("sh").args(["-c", "read line", "-name", "sandbox-x"]).stdin(std::process::Stdio::piped()).spawn().expect("sh");
        let pid = child.id() as i32;
        wait_for_exec(pid);
        assert!(is_alive_with_name(pid, "sandbox-x"));
        assert!(!is_alive_with_name(pid, "sandbox-y"));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_alive_with_name(pid, "sandbox-x"));
    }
}
