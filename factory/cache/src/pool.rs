//! The pool: VMs booted to agent-ready through the base factory, under the host's pool
//! hypervisor instance (a run directory of their own), and the thread that keeps it full.
//!
//! One refill thread boots one VM at a time until `size` VMs are ready or booting, and about
//! once a second checks the ready ones: a VM whose process is gone is stopped (its files
//! removed) and replaced, never handed out. A boot that fails is logged and retried after a
//! back-off (1 s, doubling up to 30 s), so a broken config does not boot in a loop. Its
//! boots run at a lower CPU priority than the sandboxes being served (see `priority`).

use crate::priority::Priority;
use plugin_api::factory::{FactoryHostBox, PooledVm};
use plugin_api::hypervisor::{HypervisorConfig, HypervisorHandle};
use plugin_api::payload::Payload;
use plugin_api::PluginError;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often the refill thread looks at the pool when it has nothing to boot.
const WATCH: Duration = Duration::from_secs(1);
/// The longest wait after failed boots.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A VM ready in the pool.
pub struct Ready {
    /// The id it was made under (`pool-<n>`).
    pub id: String,
    /// Its state blob.
    pub blob: Vec<u8>,
    /// Its console log, in the factory's work directory.
    pub console: PathBuf,
    /// When its boot began.
    pub born: Instant,
}

#[derive(Default)]
struct State {
    ready: VecDeque<Ready>,
    /// The VM being booted: id and when it began.
    booting: Option<(String, Instant)>,
    next: u64,
    closed: bool,
}

/// The pool and what it was made with.
pub struct Pool {
    /// How many VMs to keep ready or booting.
    pub size: u32,
    host: FactoryHostBox,
    /// The pool's hypervisor instance.
    pub hypervisor: HypervisorHandle,
    /// The VM every pooled VM is (without a console log).
    pub config: HypervisorConfig,
    work_dir: PathBuf,
    state: Mutex<State>,
    wake: Condvar,
    /// The refill thread's boot priority, once it runs.
    priority: Mutex<Option<Priority>>,
}

impl Pool {
    /// A pool of `size` VMs as `host` describes them; nothing booted yet.
    pub fn new(size: u32, host: FactoryHostBox) -> Result<Pool, PluginError> {
        let config = HypervisorConfig::decode(&host.vm_config())?;
        let hypervisor = HypervisorHandle::new(host.pool_hypervisor(), "hypervisor");
        let work_dir = PathBuf::from(host.work_dir().as_str());
        Ok(Pool { size, host, hypervisor, config, work_dir, state: Mutex::new(State::default()), wake: Condvar::new(), priority: Mutex::new(None) })
    }

    /// The host object.
    pub fn host(&self) -> &FactoryHostBox {
        &self.host
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the oldest ready VM whose process still runs; dead ones met on the way are
    /// discarded. `None` when none is ready.
    pub fn take(&self) -> Option<Ready> {
        loop {
            let vm = self.state().ready.pop_front()?;
            self.wake.notify_all();
            match self.hypervisor.vm_status(&vm.blob) {
                Ok(s) if s == "running" => return Some(vm),
                status => {
                    tracing::warn!(vm = %vm.id, ?status, "a pooled VM is no longer running: discarding it");
                    self.discard(vm);
                }
            }
        }
    }

    /// Returns a VM that [`Pool::take`] gave out and the request could not use (it is still
    /// the pool's: nothing was moved) to the front of the queue, stopped instead when the pool
    /// is closed or full. A refill boot begun meanwhile is stopped when it ends if the pool is
    /// full by then, so the pool never holds more than `size` ready VMs.
    pub fn put_back(&self, vm: Ready) {
        let mut s = self.state();
        if !s.closed && s.ready.len() < self.size as usize {
            s.ready.push_front(vm);
            return;
        }
        drop(s);
        self.discard(vm);
    }

    /// Gives a VM being handed out the normal CPU priority again (see `priority`).
    pub fn restore_priority(&self, vm: &Ready) {
        let priority = *self.priority.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(priority), Some(pid)) = (priority, pid_of(&vm.blob)) {
            priority.restore(pid);
        }
    }

    /// Stops a VM of the pool and removes its console log.
    pub fn discard(&self, vm: Ready) {
        if let Err(e) = self.hypervisor.stop_vm(&vm.blob) {
            tracing::error!(vm = %vm.id, "stopping a pooled VM failed: {e}");
        }
        let _ = std::fs::remove_file(&vm.console);
    }

    /// The VMs held now, for `status`; the plugin is asked about each without the lock held.
    pub fn list(&self) -> Vec<PooledVm> {
        struct Seen {
            id: String,
            blob: Vec<u8>,
            age_ms: u64,
        }
        let (ready, booting) = {
            let s = self.state();
            let ready: Vec<Seen> =
                s.ready.iter().map(|v| Seen { id: v.id.clone(), blob: v.blob.clone(), age_ms: v.born.elapsed().as_millis() as u64 }).collect();
            (ready, s.booting.clone())
        };
        let mut vms: Vec<PooledVm> = ready
            .into_iter()
            .map(|v| PooledVm {
                vm_status: self.hypervisor.vm_status(&v.blob).unwrap_or_else(|e| format!("unknown ({e})")),
                pid: pid_of(&v.blob),
                id: v.id,
                state: "ready".into(),
                age_ms: v.age_ms,
            })
            .collect();
        if let Some((id, since)) = booting {
            vms.push(PooledVm { id, state: "booting".into(), vm_status: "starting".into(), age_ms: since.elapsed().as_millis() as u64, pid: None });
        }
        vms
    }

    /// Stops refilling and stops every ready VM; returns once the refill thread is done
    /// (a boot in flight is finished, then stopped).
    pub fn close(&self, refill: Option<std::thread::JoinHandle<()>>) {
        self.state().closed = true;
        self.wake.notify_all();
        if let Some(t) = refill {
            let _ = t.join();
        }
        let ready: Vec<Ready> = self.state().ready.drain(..).collect();
        for vm in ready {
            self.discard(vm);
        }
    }

    /// The refill thread's loop.
    pub fn refill(self: Arc<Self>) {
        *self.priority.lock().unwrap_or_else(|p| p.into_inner()) = Some(Priority::lower_this_thread());
        let mut backoff = Duration::ZERO;
        loop {
            if !backoff.is_zero() && self.sleep(backoff) {
                return;
            }
            let id = {
                let mut s = self.state();
                if s.closed {
                    return;
                }
                if s.ready.len() + usize::from(s.booting.is_some()) >= self.size as usize {
                    drop(s);
                    if self.sleep(WATCH) {
                        return;
                    }
                    self.drop_dead();
                    continue;
                }
                s.next += 1;
                let id = format!("pool-{}", s.next);
                s.booting = Some((id.clone(), Instant::now()));
                id
            };
            let outcome = self.boot(&id);
            let mut s = self.state();
            s.booting = None;
            match outcome {
                Ok(vm) if s.closed => {
                    drop(s);
                    self.discard(vm);
                    return;
                }
                Ok(vm) if s.ready.len() >= self.size as usize => {
                    drop(s);
                    tracing::info!(vm = %vm.id, "the pool filled while this VM booted (a VM came back): stopping it");
                    self.discard(vm);
                }
                Ok(vm) => {
                    let ms = vm.born.elapsed().as_millis() as u64;
                    tracing::info!(vm = %vm.id, ms, ready = s.ready.len() + 1, size = self.size, "pooled VM ready");
                    s.ready.push_back(vm);
                    backoff = Duration::ZERO;
                }
                Err(e) => {
                    backoff = if backoff.is_zero() { Duration::from_secs(1) } else { (backoff * 2).min(MAX_BACKOFF) };
                    tracing::error!(vm = %id, retry_in_s = backoff.as_secs(), "booting a pooled VM failed: {e}");
                }
            }
        }
    }

    /// Waits up to `time` or until woken; whether the pool was closed.
    fn sleep(&self, time: Duration) -> bool {
        let s = self.state();
        if s.closed {
            return true;
        }
        let (s, _) = self.wake.wait_timeout(s, time).unwrap_or_else(|p| p.into_inner());
        s.closed
    }

    /// Boots pool VM `id` through the base factory and waits for its agent; on failure
    /// nothing of it is left.
    fn boot(&self, id: &str) -> Result<Ready, PluginError> {
        let born = Instant::now();
        let console = self.work_dir.join(format!("{id}.console.log"));
        let config = HypervisorConfig { console_log: Some(console.clone()), ..self.config.clone() };
        tracing::info!(vm = id, "booting a pooled VM");
        let blob = self.host.base_new_vm(self.hypervisor.raw(), id.into(), config.encode().as_slice().into()).into_result()?.into_vec();
        let vm = Ready { id: id.to_owned(), blob, console, born };
        let console = vm.console.to_string_lossy().into_owned();
        if let Err(e) = self.host.wait_agent(vm.blob.as_slice().into(), console.as_str().into(), u64::MAX).into_result() {
            self.discard(vm);
            return Err(e);
        }
        Ok(vm)
    }

    /// Stops and forgets the ready VMs whose process is gone.
    fn drop_dead(&self) {
        let blobs: Vec<(String, Vec<u8>)> = self.state().ready.iter().map(|v| (v.id.clone(), v.blob.clone())).collect();
        for (id, blob) in blobs {
            let status = self.hypervisor.vm_status(&blob).unwrap_or_else(|e| format!("unknown ({e})"));
            if status == "running" {
                continue;
            }
            let vm = {
                let mut s = self.state();
                let at = s.ready.iter().position(|v| v.id == id);
                at.and_then(|i| s.ready.remove(i))
            };
            if let Some(vm) = vm {
                tracing::warn!(vm = %id, %status, "a pooled VM died: replacing it");
                self.discard(vm);
            }
        }
    }
}

/// The `pid` of a state blob that is a JSON object with one (the built-in plugins' blobs).
pub fn pid_of(blob: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(blob).ok()?.get("pid")?.as_i64()
}
