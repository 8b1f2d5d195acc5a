//! CPU priority of pooled VMs: a refill boot runs at a lower priority than the sandboxes the
//! host serves, and a VM handed out gets the normal priority back.
//!
//! A refill boot starts at each hand-out, just when the sandbox that took the VM creates its
//! containers, and a boot keeps a CPU busy for seconds (all of it under TCG). The refill
//! thread lowers its own nice value by [`BOOT_NICE`] before it boots (a VMM process inherits
//! the nice value of the thread that spawns it, and its threads that of the thread creating
//! them); the hand-out sets every thread of the VMM process back to the factory's own value.
//! Raising a priority again needs `CAP_SYS_NICE` or a large enough `RLIMIT_NICE`; without
//! either, pooled VMs boot at the normal priority, as a VM handed out must not stay lowered.

/// The capability bit of `CAP_SYS_NICE` (linux/capability.h).
const CAP_SYS_NICE: u32 = 23;

/// How much lower (in nice steps) a refill boot runs than the factory.
pub const BOOT_NICE: i32 = 10;

/// The nice value of the calling thread.
fn own_nice() -> i32 {
    // SAFETY: getpriority takes no pointers; errno is cleared first as its -1 can be a value.
    unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

/// Sets the nice value of thread (or process) `tid`; 0 is the calling thread.
fn set_nice(tid: i32, nice: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes no pointers; on Linux PRIO_PROCESS with a tid sets one thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether this process may raise a priority from `nice + BOOT_NICE` back to `nice`.
fn can_raise(nice: i32) -> bool {
    let cap_sys_nice = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_owned())))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_NICE) != 0);
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the rlimit it is given.
    let rlimit_ok = unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } == 0 && limit.rlim_cur >= (20 - nice) as libc::rlim_t;
    cap_sys_nice || rlimit_ok
}

/// The refill thread's priority: lowered for boots where the hand-out can restore it.
#[derive(Debug, Clone, Copy)]
pub struct Priority {
    /// The factory's own nice value, which a handed-out VM gets back.
    normal: i32,
    /// Whether boots run lowered.
    lowered: bool,
}

impl Priority {
    /// Called on the refill thread: lowers it if the hand-out will be able to undo that.
    pub fn lower_this_thread() -> Priority {
        let normal = own_nice();
        if !can_raise(normal) {
            tracing::info!("pooled VMs boot at the normal CPU priority: no CAP_SYS_NICE or RLIMIT_NICE to raise it again at hand-out");
            return Priority { normal, lowered: false };
        }
        match set_nice(0, (normal + BOOT_NICE).min(19)) {
            Ok(()) => Priority { normal, lowered: true },
            Err(e) => {
                tracing::warn!("lowering the refill thread's CPU priority: {e}");
                Priority { normal, lowered: false }
            }
        }
    }

    /// Gives every thread of process `pid` the normal priority again. A thread that ends
    /// meanwhile is no error; any other failure is logged, and the VM runs on regardless.
    pub fn restore(&self, pid: i64) {
        if !self.lowered {
            return;
        }
        let tasks = match std::fs::read_dir(format!("/proc/{pid}/task")) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(pid, "listing the threads of a handed-out VM to restore their CPU priority: {e}");
                return;
            }
        };
        for tid in tasks.flatten().filter_map(|t| t.file_name().to_str().and_then(|n| n.parse::<i32>().ok())) {
            match set_nice(tid, self.normal) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => tracing::warn!(pid, tid, "restoring the CPU priority of a handed-out VM's thread: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_spawns_lowered_children_and_restore_raises_them() {
        let normal = own_nice();
        let (priority, child) = std::thread::spawn(|| {
            let p = Priority::lower_this_thread();
            let child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
            (p, child)
        })
        .join()
        .expect("thread");
        let mut child = child;
        let nice_of = |pid: u32| -> i32 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            let after = &stat[stat.rfind(')').expect("comm") + 2..];
            after.split(' ').nth(16).expect("nice field").parse().expect("nice")
        };
        if priority.lowered {
            assert_eq!(nice_of(child.id()), (normal + BOOT_NICE).min(19));
            priority.restore(child.id() as i64);
            assert_eq!(nice_of(child.id()), normal);
        } else {
            assert_eq!(nice_of(child.id()), normal, "without the right to raise it again, nothing is lowered");
        }
        assert_eq!(own_nice(), normal, "only the refill thread was lowered");
        let _ = child.kill();
        let _ = child.wait();
    }
}
