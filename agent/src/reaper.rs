//! Reaping children. The agent is PID 1 in the guest (and a child subreaper on the host), so
//! every orphan ends up its child; one task collects every exit with `waitpid(-1)` and hands
//! the status of the processes the agent tracks to whoever waits for them.
//!
//! Nothing else in the agent may wait for a child: spawn, then `Reaper::watch` the pid.

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::debug;

/// Exits nobody watched yet, kept for a watcher that registers late; bounded, oldest dropped.
const MAX_UNCLAIMED: usize = 4096;

/// The exit status as a shell reports it: the code, or 128 + the signal number.
pub type ExitStatus = i32;

#[derive(Default)]
struct State {
    watched: HashMap<i32, watch::Sender<Option<ExitStatus>>>,
    unclaimed: HashMap<i32, ExitStatus>,
    order: VecDeque<i32>,
}

/// The reaper; cheap to clone.
#[derive(Clone, Default)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
}

impl Reaper {
    /// Starts the reaping task on the current tokio runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let task = reaper.clone();
        tokio::spawn(async move {
            loop {
                task.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// Returns a receiver that gets the pid's exit status (at once if it already exited).
    pub fn watch(&self, pid: i32) -> watch::Receiver<Option<ExitStatus>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(status) = state.unclaimed.remove(&pid) {
            return watch::channel(Some(status)).1;
        }
        state.watched.entry(pid).or_insert_with(|| watch::channel(None).0).subscribe()
    }

    /// Waits for the pid's exit.
    pub async fn wait(&self, pid: i32) -> ExitStatus {
        wait_for(self.watch(pid)).await
    }

    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            debug!(pid, status, "child exited");
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = state.watched.remove(&pid) {
                let _ = tx.send(Some(status));
            } else {
                if state.order.len() >= MAX_UNCLAIMED {
                    if let Some(old) = state.order.pop_front() {
                        state.unclaimed.remove(&old);
                    }
                }
                state.order.push_back(pid);
                state.unclaimed.insert(pid, status);
            }
        }
    }
}

/// Waits until a receiver from [`Reaper::watch`] carries the exit status.
pub async fn wait_for(mut rx: watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    loop {
        if let Some(status) = *rx.borrow_and_update() {
            return status;
        }
        if rx.changed().await.is_err() {
            // The sender is only dropped after sending; treat as killed.
            return 128 + libc::SIGKILL;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    // The reaper under test is what waits for these children.
    #[allow(clippy::zombie_processes)]
    async fn reports_exit_codes_and_signals_in_either_order() {
        let reaper = Reaper::start().unwrap();
        let fast = std::process::Command::new("sh").args(["-c", "exit 7"]).spawn().unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        // Registered after the exit: found among the unclaimed.
        assert_eq!(reaper.wait(fast.id() as i32).await, 7);
        let slow = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let waiter = tokio::spawn({
            let reaper = reaper.clone();
            let pid = slow.id() as i32;
            async move { reaper.wait(pid).await }
        });
        nix::sys::signal::kill(Pid::from_raw(slow.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
        assert_eq!(waiter.await.unwrap(), 128 + libc::SIGTERM);
    }
}
