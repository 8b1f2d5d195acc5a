//! The thread that serves an activated device's queues, and the epoll set it waits on.
//!
//! Devices are activated from a vCPU thread (the driver's `DRIVER_OK` write), whose seccomp
//! filter allows no thread creation. So once [`start_spawner`] has run, [`Worker::spawn`]
//! hands the spawning to an unfiltered spawner thread and waits for it; the new worker thread
//! installs the device seccomp filter before it runs the device's code.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The token [`Waiter::wait`] returns when the worker must stop.
pub const STOP_TOKEN: u64 = u64::MAX;

/// An epoll set: file descriptors with a `u64` token each, plus the worker's stop eventfd.
pub struct Waiter {
    epoll: Epoll,
    events: Vec<EpollEvent>,
}

impl Waiter {
    fn new(stop: &EventFd) -> std::io::Result<Self> {
        let mut waiter = Self {
            epoll: Epoll::new()?,
            events: vec![EpollEvent::default(); 32],
        };
        waiter.add(stop.as_raw_fd(), STOP_TOKEN, EventSet::IN)?;
        Ok(waiter)
    }

    /// Watches `fd` for `events`, reporting it as `token`.
    pub fn add(&mut self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(events, token))
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&mut self, fd: RawFd, token: u64, events: EventSet) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, token))
    }

    /// Stops watching `fd`.
    pub fn remove(&mut self, fd: RawFd) -> std::io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }

    /// Waits (at most `timeout_ms`, -1 for ever) and returns the ready tokens with their
    /// event sets. Interrupted waits return an empty list.
    pub fn wait(&mut self, timeout_ms: i32) -> std::io::Result<Vec<(u64, EventSet)>> {
        let n = match self.epoll.wait(timeout_ms, &mut self.events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        Ok(self.events[..n]
            .iter()
            .map(|e| (e.data(), EventSet::from_bits_truncate(e.events())))
            .collect())
    }
}

type SpawnJob = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Mutex<Sender<SpawnJob>>> = OnceLock::new();

/// Starts the thread that spawns device workers on behalf of filtered threads. Call before
/// the vCPUs start; later calls do nothing.
pub fn start_spawner() -> std::io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = channel::<SpawnJob>();
    std::thread::Builder::new().name("vmm-spawner".into()).spawn(move || {
        for job in rx {
            job();
        }
    })?;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

fn spawn_thread<F, T>(name: &str, body: F) -> std::io::Result<JoinHandle<Option<T>>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let name = name.to_owned();
    let run = move || {
        if let Err(e) = crate::seccomp::apply_device() {
            tracing::error!(error = %e, thread = %std::thread::current().name().unwrap_or("?"), "no seccomp filter: the device does not run");
            return None;
        }
        Some(body())
    };
    let Some(spawner) = SPAWNER.get() else {
        return std::thread::Builder::new().name(name).spawn(run);
    };
    let (reply_tx, reply_rx) = channel();
    let job: SpawnJob = Box::new(move || {
        let _ = reply_tx.send(std::thread::Builder::new().name(name).spawn(run));
    });
    let sent = spawner.lock().unwrap_or_else(|p| p.into_inner()).send(job);
    if sent.is_err() {
        return Err(std::io::Error::other("the worker spawner thread is gone"));
    }
    reply_rx.recv().map_err(|_| std::io::Error::other("the worker spawner thread did not answer"))?
}

/// A running device worker thread; stopping (or dropping) it signals the stop eventfd and
/// joins the thread. `T` is what its body hands back when it ends (a device's queues, for a
/// save).
pub struct Worker<T: Send + 'static = ()> {
    stop: EventFd,
    thread: Option<JoinHandle<Option<T>>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Spawns thread `name` running `body` with a [`Waiter`] that already watches the stop
    /// eventfd: `body` must return once `wait` reports [`STOP_TOKEN`].
    pub fn spawn<F>(name: &str, body: F) -> std::io::Result<Self>
    where
        F: FnOnce(Waiter) -> T + Send + 'static,
    {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        let waiter = Waiter::new(&stop)?;
        let thread = spawn_thread(name, move || body(waiter))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Signals the worker to stop and waits for it.
    pub fn stop(&mut self) {
        let _ = self.stop_and_take();
    }

    /// Signals the worker to stop, waits for it and returns what its body handed back: `None`
    /// when it never ran (no seccomp filter), panicked, or was stopped before.
    pub fn stop_and_take(&mut self) -> Option<T> {
        let thread = self.thread.take()?;
        if let Err(e) = self.stop.write(1) {
            tracing::error!(error = %e, "signalling a device worker to stop");
            return None;
        }
        match thread.join() {
            Ok(out) => out,
            Err(_) => {
                tracing::error!("a device worker panicked");
                None
            }
        }
    }

    /// Signals the worker to stop and waits at most `timeout` for it (polling, so the caller
    /// needs no other calls than sleeping): true once it ended and was joined. A worker that
    /// does not end in time (blocked on a backend that does not answer) is detached: it goes
    /// on until its blocking call returns, then sees the stop eventfd and ends on its own.
    pub fn stop_within(&mut self, timeout: std::time::Duration) -> bool {
        let Some(thread) = self.thread.take() else {
            return true;
        };
        if let Err(e) = self.stop.write(1) {
            tracing::error!(error = %e, "signalling a device worker to stop");
        }
        let deadline = std::time::Instant::now() + timeout;
        while !thread.is_finished() {
            if std::time::Instant::now() >= deadline {
                tracing::error!(thread = thread.thread().name().unwrap_or("?"), "a device worker did not stop in time; detached");
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if thread.join().is_err() {
            tracing::error!("a device worker panicked");
        }
        true
    }
}

impl<T: Send + 'static> Drop for Worker<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn worker_sees_its_fds_and_stops() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let theirs = evt.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut worker = Worker::spawn("test-worker", move |mut waiter| {
            waiter.add(theirs.as_raw_fd(), 7, EventSet::IN).unwrap();
            loop {
                for (token, _) in waiter.wait(-1).unwrap() {
                    if token == STOP_TOKEN {
                        return;
                    }
                    theirs.read().unwrap();
                    tx.send(token).unwrap();
                }
            }
        })
        .unwrap();
        evt.write(1).unwrap();
        assert_eq!(rx.recv().unwrap(), 7);
        worker.stop();
        assert!(
            rx.recv().is_err(),
            "the worker ended and dropped its sender"
        );
    }
}
