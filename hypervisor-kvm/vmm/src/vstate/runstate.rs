//! The VM's run state, shared by the vCPU threads and the control API: vCPUs park while the
//! VM is created (not started), paused or stopped, and leave their loop when the vmm shuts
//! down.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};


pub use vmm_api::RunState;

use crate::vstate::snapshot::VcpuState;

/// How long a `save` waits for the parked vCPUs to report their state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The state stored in the atomic (`RunState as u8`).
fn from_u8(v: u8) -> RunState {
    match v {
        0 => RunState::Created,
        1 => RunState::Running,
        2 => RunState::Paused,
        4 => RunState::Stopped,
        _ => RunState::Stopping,
    }
}

/// Errors of state changes.
#[derive(Debug, thiserror::Error)]
pub enum RunStateError {
    /// The change is not allowed from the current state.
    #[error("cannot {action}: the VM is {state}")]
    Wrong {
        /// What was asked.
        action: &'static str,
        /// The state it was in.
        state: RunState,
    },
    /// A vCPU could not read its state for a save.
    #[error("saving vCPU {0}: {1}")]
    Save(usize, String),
    /// Not every vCPU reported its state in time.
    #[error("only {0} of {1} vCPUs reported their state within {SAVE_TIMEOUT:?}")]
    SaveTimeout(usize, usize),
    /// Not every vCPU parked in time.
    #[error(
        "only {parked} of {total} vCPUs paused within {0:?}",
        Self::PAUSE_TIMEOUT
    )]
    PauseTimeout {
        /// vCPUs parked.
        parked: usize,
        /// vCPUs in total.
        total: usize,
    },
}

impl RunStateError {
    const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
}

struct Inner {
    parked: usize,
    /// A save in progress: each parked vCPU puts its state in its slot.
    saves: Option<Vec<Option<Result<VcpuState, String>>>>,
    /// The vCPU threads' ids, kicked with a signal to leave KVM_RUN.
    threads: Vec<libc::pthread_t>,
}

/// Shared run state. The fast path (running) is one atomic load per vCPU exit.
pub struct RunControl {
    state: AtomicU8,
    inner: Mutex<Inner>,
    cond: Condvar,
    vcpus: usize,
    kick_signal: libc::c_int,
}

impl RunControl {
    /// A control for `vcpus` vCPUs, kicked with `kick_signal` (whose handler must be a
    /// no-op installed without `SA_RESTART`).
    pub fn new(vcpus: usize, kick_signal: libc::c_int) -> Self {
        Self {
            state: AtomicU8::new(RunState::Created as u8),
            inner: Mutex::new(Inner {
                parked: 0,
                saves: None,
                threads: Vec::new(),
            }),
            cond: Condvar::new(),
            vcpus,
            kick_signal,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        from_u8(self.state.load(Ordering::SeqCst))
    }

    fn set(&self, state: RunState) {
        self.state.store(state as u8, Ordering::SeqCst);
        self.cond.notify_all();
    }

    /// Records a vCPU thread so that pause and stop can kick it.
    pub fn register_thread(&self, thread: libc::pthread_t) {
        self.lock().threads.push(thread);
    }

    /// Called by a vCPU before each KVM_RUN: returns at once while running, parks while
    /// created or paused, and returns false when the vCPU must leave its loop.
    pub fn checkpoint(&self) -> bool {
        self.checkpoint_saving(usize::MAX, &mut || Err("this vCPU cannot be saved".to_owned()))
    }

    /// [`RunControl::checkpoint`] for vCPU `id`, which reads its state with `save` when a
    /// [`RunControl::save_vcpus`] asks while it is parked.
    pub fn checkpoint_saving(&self, id: usize, save: &mut dyn FnMut() -> Result<VcpuState, String>) -> bool {
        match self.state() {
            RunState::Running => return true,
            RunState::Stopping => return false,
            _ => {}
        }
        let mut inner = self.lock();
        inner.parked += 1;
        self.cond.notify_all();
        loop {
            if let Some(slot) = inner.saves.as_mut().and_then(|s| s.get_mut(id)).filter(|slot| slot.is_none()) {
                *slot = Some(save());
                self.cond.notify_all();
            }
            match self.state() {
                RunState::Running | RunState::Stopping => break,
                _ => inner = self.cond.wait(inner).unwrap_or_else(|p| p.into_inner()),
            }
        }
        inner.parked -= 1;
        self.state() == RunState::Running
    }

    fn kick_all(&self, inner: &Inner) {
        for &thread in &inner.threads {
            // SAFETY: `thread` is a vCPU thread that the vmm has not joined yet (threads are
            // joined only after `stop`, which takes this lock and ends all kicking), so the
            // id is valid; the signal has a no-op handler.
            let rc = unsafe { libc::pthread_kill(thread, self.kick_signal) };
            if rc != 0 && rc != libc::ESRCH {
                tracing::warn!(rc, "kicking a vCPU thread");
            }
        }
    }

    /// Created → running.
    pub fn start(&self) -> Result<(), RunStateError> {
        let _inner = self.lock();
        match self.state() {
            RunState::Created => {
                self.set(RunState::Running);
                Ok(())
            }
            state => Err(RunStateError::Wrong {
                action: "start",
                state,
            }),
        }
    }

    /// Running → paused; returns once every vCPU has left KVM_RUN and parked (if they do not
    /// within [`RunStateError::PAUSE_TIMEOUT`], the VM runs on).
    pub fn pause(&self) -> Result<(), RunStateError> {
        let inner = self.lock();
        match self.state() {
            RunState::Running => self.set(RunState::Paused),
            state => {
                return Err(RunStateError::Wrong {
                    action: "pause",
                    state,
                })
            }
        }
        self.park_all(inner).inspect_err(|_| self.set(RunState::Running))
    }

    /// Created, running or paused → stopped: the vCPUs park for good; returns once every one
    /// has left KVM_RUN (one that has not within [`RunStateError::PAUSE_TIMEOUT`] parks when
    /// it next leaves it). Stopping a stopped VM does nothing.
    pub fn halt(&self) -> Result<(), RunStateError> {
        let inner = self.lock();
        match self.state() {
            RunState::Created | RunState::Running | RunState::Paused => self.set(RunState::Stopped),
            RunState::Stopped => return Ok(()),
            state @ RunState::Stopping => {
                return Err(RunStateError::Wrong {
                    action: "stop",
                    state,
                })
            }
        }
        self.park_all(inner)
    }

    /// Waits until every vCPU has parked, kicking them out of KVM_RUN meanwhile.
    fn park_all(&self, mut inner: MutexGuard<'_, Inner>) -> Result<(), RunStateError> {
        let deadline = Instant::now() + RunStateError::PAUSE_TIMEOUT;
        while inner.parked < self.vcpus {
            let now = Instant::now();
            if now >= deadline {
                return Err(RunStateError::PauseTimeout {
                    parked: inner.parked,
                    total: self.vcpus,
                });
            }
            // A kick can land just before a vCPU enters KVM_RUN and be lost: repeat it.
            self.kick_all(&inner);
            let wait = (deadline - now).min(Duration::from_millis(10));
            inner = self
                .cond
                .wait_timeout(inner, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Every vCPU's state, read by each parked vCPU thread (which owns its vCPU): only while
    /// paused.
    pub fn save_vcpus(&self) -> Result<Vec<VcpuState>, RunStateError> {
        let mut inner = self.lock();
        match self.state() {
            RunState::Paused if inner.parked == self.vcpus => {}
            RunState::Paused => return Err(RunStateError::PauseTimeout { parked: inner.parked, total: self.vcpus }),
            state => return Err(RunStateError::Wrong { action: "save", state }),
        }
        inner.saves = Some((0..self.vcpus).map(|_| None).collect());
        self.cond.notify_all();
        let deadline = Instant::now() + SAVE_TIMEOUT;
        loop {
            let done = inner.saves.as_ref().map_or(0, |s| s.iter().filter(|x| x.is_some()).count());
            if done == self.vcpus {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                inner.saves = None;
                return Err(RunStateError::SaveTimeout(done, self.vcpus));
            }
            inner = self.cond.wait_timeout(inner, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        let saves = inner.saves.take().unwrap_or_default();
        saves.into_iter().enumerate().map(|(id, s)| s.unwrap_or_else(|| Err("no state".into())).map_err(|e| RunStateError::Save(id, e))).collect()
    }

    /// Paused → running.
    pub fn resume(&self) -> Result<(), RunStateError> {
        let _inner = self.lock();
        match self.state() {
            RunState::Paused => {
                self.set(RunState::Running);
                Ok(())
            }
            state => Err(RunStateError::Wrong {
                action: "resume",
                state,
            }),
        }
    }

    /// Any state → stopping; kicks the vCPUs out of KVM_RUN (repeatedly, until `done`
    /// returns true or `timeout` passes). Returns whether `done` became true.
    /// The lock is held only to change the state and to kick: a vCPU parked in
    /// [`RunControl::checkpoint`] (created, paused, stopped VM) needs it to wake and leave.
    pub fn stop(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        self.set_locked(RunState::Stopping);
        let deadline = Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.kick_all(&self.lock());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn set_locked(&self, state: RunState) {
        let _inner = self.lock();
        self.set(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn transitions_are_checked() {
        let rc = RunControl::new(0, libc::SIGUSR2);
        assert!(matches!(
            rc.pause(),
            Err(RunStateError::Wrong {
                action: "pause",
                state: RunState::Created
            })
        ));
        assert!(rc.resume().is_err());
        rc.start().unwrap();
        assert!(rc.start().is_err());
        rc.pause().unwrap();
        assert_eq!(rc.state(), RunState::Paused);
        rc.resume().unwrap();
        rc.halt().unwrap();
        assert_eq!(rc.state(), RunState::Stopped);
        rc.halt().unwrap();
        for refused in [rc.start(), rc.resume(), rc.pause()] {
            assert!(matches!(refused, Err(RunStateError::Wrong { state: RunState::Stopped, .. })));
        }
        assert!(rc.stop(Duration::from_millis(10), || true));
        assert_eq!(rc.state(), RunState::Stopping);
        assert!(rc.start().is_err());
        assert!(rc.halt().is_err());
    }

    fn fake_state(id: usize) -> VcpuState {
        use crate::vstate::snapshot::raw::Raw;
        VcpuState {
            mp_state: Raw(Default::default()),
            regs: Raw(kvm_bindings::kvm_regs { rax: id as u64, ..Default::default() }),
            sregs: Raw(Default::default()),
            xsave: Raw(Default::default()),
            xcrs: Raw(Default::default()),
            debugregs: Raw(Default::default()),
            lapic: Raw(Default::default()),
            msrs: Vec::new(),
            events: Raw(Default::default()),
            tsc_khz: None,
        }
    }

    #[test]
    fn a_paused_vm_s_vcpus_each_report_their_state() {
        let rc = Arc::new(RunControl::new(2, libc::SIGUSR2));
        let threads: Vec<_> = (0..2)
            .map(|id| {
                let rc = rc.clone();
                std::thread::spawn(move || while rc.checkpoint_saving(id, &mut || if id < 2 { Ok(fake_state(id)) } else { Err("bad".into()) }) {
                    std::thread::sleep(Duration::from_millis(1));
                })
            })
            .collect();
        rc.start().unwrap();
        assert!(matches!(rc.save_vcpus(), Err(RunStateError::Wrong { action: "save", state: RunState::Running })));
        rc.pause().unwrap();
        let states = rc.save_vcpus().unwrap();
        assert_eq!(states.iter().map(|s| s.regs.0.rax).collect::<Vec<_>>(), [0, 1]);
        // Saving again works, and the VM still resumes.
        assert_eq!(rc.save_vcpus().unwrap().len(), 2);
        rc.resume().unwrap();
        assert!(rc.stop(Duration::from_secs(5), || threads.iter().all(|t| t.is_finished())));
    }

    #[test]
    fn a_vcpu_that_cannot_read_its_state_fails_the_save() {
        let rc = Arc::new(RunControl::new(1, libc::SIGUSR2));
        let vcpu = {
            let rc = rc.clone();
            std::thread::spawn(move || while rc.checkpoint_saving(0, &mut || Err("KVM_GET_XSAVE failed".into())) {})
        };
        rc.start().unwrap();
        rc.pause().unwrap();
        let e = rc.save_vcpus().unwrap_err().to_string();
        assert_eq!(e, "saving vCPU 0: KVM_GET_XSAVE failed");
        assert!(rc.stop(Duration::from_secs(5), || vcpu.is_finished()));
    }

    #[test]
    fn parked_vcpus_leave_on_stop() {
        for park in [RunControl::start as fn(&RunControl) -> Result<(), RunStateError>, RunControl::halt] {
            let rc = Arc::new(RunControl::new(1, libc::SIGUSR2));
            let vcpu = {
                let rc = rc.clone();
                std::thread::spawn(move || while rc.checkpoint() {})
            };
            // Created (never started), or started then stopped: the vCPU is parked.
            park(&rc).unwrap();
            if rc.state() == RunState::Running {
                rc.pause().unwrap();
            }
            assert!(rc.stop(Duration::from_secs(5), || vcpu.is_finished()), "a parked vCPU must see the stop");
            vcpu.join().unwrap();
        }
    }

    #[test]
    fn vcpus_park_until_started_and_leave_on_stop() {
        let rc = Arc::new(RunControl::new(1, libc::SIGUSR2));
        let (tx, rx) = std::sync::mpsc::channel();
        let vcpu = {
            let rc = rc.clone();
            std::thread::spawn(move || {
                let mut runs = 0;
                while rc.checkpoint() {
                    runs += 1;
                    tx.send(runs).unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(rx.try_recv().is_err(), "a created VM's vCPU does not run");
        rc.start().unwrap();
        rx.recv().unwrap();
        rc.pause().unwrap();
        while rx.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_millis(20));
        assert!(rx.try_recv().is_err(), "a paused VM's vCPU does not run");
        rc.resume().unwrap();
        rx.recv().unwrap();
        rc.halt().unwrap();
        while rx.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_millis(20));
        assert!(rx.try_recv().is_err(), "a stopped VM's vCPU does not run");
        assert!(rc.stop(Duration::from_secs(2), || vcpu.is_finished()));
        vcpu.join().unwrap();
    }
}
