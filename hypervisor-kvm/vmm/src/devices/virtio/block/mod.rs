//! virtio-blk (device ID 2): one request queue served from a raw image file.
//!
//! Offers `VIRTIO_BLK_F_FLUSH`, `SEG_MAX`, `BLK_SIZE` (512), `RO` for a read-only image and
//! `VIRTIO_RING_F_EVENT_IDX`. Requests (`IN`, `OUT`, `FLUSH`, `GET_ID`; others answer
//! `VIRTIO_BLK_S_UNSUPP`) are validated in [`request`], served synchronously by the worker
//! thread through [`queue::process_queue`], with `pread`/`pwrite` straight between the image
//! and guest memory ([`disk`]).

pub mod disk;
mod error;
pub mod metrics;
pub mod queue;
pub mod request;
mod worker;

#[cfg(test)]
mod tests;

use std::mem::{offset_of, size_of};
use std::path::Path;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

pub use self::error::BlockError;
pub use self::request::{ID_BYTES, SECTOR_SIZE};

use self::disk::Disk;
use self::metrics::BlockMetrics;
use super::worker::Worker;
use super::save::{DeviceSave, SaveError};
use super::{ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::logger::RateLimit;

/// The device type's name in logs and errors.
pub const NAME: &str = "virtio-blk";
/// virtio device ID of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver may use (`seg_max`), as QEMU offers with its
/// 128-entry queues (queue size minus header and status). Longer chains are served too:
/// only the queue size bounds them.
pub const SEG_MAX: u32 = 126;
/// Size of the configuration space (`struct virtio_blk_config`).
pub const CONFIG_SIZE: usize = size_of::<virtio_blk_config>();

/// A virtio-blk device.
pub struct Block {
    disk: Arc<Disk>,
    features: u64,
    config: [u8; CONFIG_SIZE],
    metrics: Arc<BlockMetrics>,
    worker: Option<Worker<worker::BlockWorker>>,
    complaints: RateLimit,
}

fn put(config: &mut [u8], offset: usize, bytes: &[u8]) {
    config[offset..offset + bytes.len()].copy_from_slice(bytes);
}

impl Block {
    /// A device serving the raw image at `path` (read-write unless `read_only`), whose
    /// `VIRTIO_BLK_T_GET_ID` answer is `id` (at most 20 bytes). The image size must be a
    /// multiple of 512 bytes.
    pub fn new(path: &Path, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let disk = Disk::open(path, read_only, id)?;
        let mut features = VIRTIO_F_VERSION_1
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_RING_F_EVENT_IDX;
        if read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        let mut config = [0u8; CONFIG_SIZE];
        put(&mut config, offset_of!(virtio_blk_config, capacity), &disk.sectors().to_le_bytes());
        put(&mut config, offset_of!(virtio_blk_config, seg_max), &SEG_MAX.to_le_bytes());
        put(&mut config, offset_of!(virtio_blk_config, blk_size), &(SECTOR_SIZE as u32).to_le_bytes());
        tracing::debug!(device = NAME, path = %path.display(), sectors = disk.sectors(), read_only, "disk opened");
        Ok(Self {
            disk: Arc::new(disk),
            features,
            config,
            metrics: Arc::default(),
            worker: None,
            complaints: RateLimit::default(),
        })
    }

    /// The capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// The device's counters.
    pub fn metrics(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn name(&self) -> &'static str {
        NAME
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else { return };
        if let Some(bytes) = self.config.get(start..) {
            let n = bytes.len().min(data.len());
            data[..n].copy_from_slice(&bytes[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // No field is writable without VIRTIO_BLK_F_CONFIG_WCE, which is not offered.
        if self.complaints.hit() {
            tracing::warn!(device = NAME, offset, len = data.len(), "ignored write to the read-only config space");
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation { mem, queues, queue_evts, interrupt, .. } = activation;
        let bad = |reason: &str| ActivateError::BadQueues { device: NAME, reason: reason.to_owned() };
        let (Some(queue), Some(queue_evt)) = (queues.into_iter().next(), queue_evts.into_iter().next()) else {
            return Err(bad("no request queue"));
        };
        if !queue.ready() {
            return Err(bad("the request queue is not ready"));
        }
        self.reset();
        let worker = worker::BlockWorker {
            mem,
            queue,
            queue_evt,
            interrupt,
            disk: self.disk.clone(),
            metrics: self.metrics.clone(),
        };
        let worker = Worker::spawn(NAME, move |waiter| worker.run(waiter))
            .map_err(|source| ActivateError::Worker { device: NAME, source })?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        // Dropping the worker stops and joins its thread, which drops the queue.
        self.worker = None;
    }

    /// The state is the disk's size the guest read: a restored VM needs a disk of that size.
    fn save(&mut self) -> Result<DeviceSave, SaveError> {
        let state = serde_json::json!({ "sectors": self.sectors() });
        let Some(mut worker) = self.worker.take() else { return Ok(DeviceSave { queues: Vec::new(), state }) };
        let body = worker.stop_and_take().ok_or(SaveError::Worker(NAME))?;
        let queue = body.queue.state();
        let worker = Worker::spawn(NAME, move |waiter| body.run(waiter)).map_err(|source| SaveError::Restart { device: NAME, source })?;
        self.worker = Some(worker);
        Ok(DeviceSave { queues: vec![queue], state })
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), SaveError> {
        match state.get("sectors").and_then(serde_json::Value::as_u64) {
            Some(sectors) if sectors == self.sectors() => Ok(()),
            Some(sectors) => Err(SaveError::State { device: NAME, what: format!("the saved disk had {sectors} sectors; this one has {}", self.sectors()) }),
            None => Err(SaveError::State { device: NAME, what: format!("{state} is not a block device's state") }),
        }
    }
}

#[cfg(test)]
mod device_tests {
    use std::time::{Duration, Instant};

    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    use super::tests::{header, image, memory, Driver, R, W};
    use super::*;
    use crate::devices::virtio::{Interrupt, INT_USED_RING};

    fn read_config(blk: &Block, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xff; len];
        blk.read_config(offset, &mut data);
        data
    }

    #[test]
    fn features_and_config_space() {
        let img = image(9);
        let mut blk = Block::new(img.path(), false, "vda").unwrap();
        assert_eq!(blk.device_type(), 2);
        assert_eq!(blk.queue_max_sizes(), &[256]);
        assert_eq!(blk.sectors(), 9);
        let want = VIRTIO_F_VERSION_1 | 1 << 9 | 1 << 2 | 1 << 6 | 1 << 29;
        assert_eq!(blk.features(), want);
        assert_eq!(Block::new(img.path(), true, "vda").unwrap().features(), want | 1 << 5);

        assert_eq!(read_config(&blk, 0, 8), 9u64.to_le_bytes());
        assert_eq!(read_config(&blk, 0, 4), [9, 0, 0, 0]);
        assert_eq!(read_config(&blk, 12, 4), 126u32.to_le_bytes());
        assert_eq!(read_config(&blk, 20, 4), 512u32.to_le_bytes());
        assert_eq!(read_config(&blk, 8, 4), [0; 4], "size_max: not offered");
        // Out of range bytes read as 0, also partly out of range and at absurd offsets.
        assert_eq!(read_config(&blk, CONFIG_SIZE as u64 - 2, 4), [0; 4]);
        assert_eq!(read_config(&blk, u64::MAX, 8), [0; 8]);

        // The guest cannot change anything.
        blk.write_config(0, &[1, 2, 3, 4, 5, 6, 7, 8]);
        blk.write_config(20, &[0, 0x10, 0, 0]);
        blk.write_config(u64::MAX, &[1]);
        assert_eq!(read_config(&blk, 0, 8), 9u64.to_le_bytes());
        assert_eq!(read_config(&blk, 20, 4), 512u32.to_le_bytes());
    }

    #[test]
    fn new_names_a_missing_image() {
        let err = Block::new(Path::new("/nonexistent/vda.img"), false, "vda").err().unwrap();
        assert!(err.to_string().contains("/nonexistent/vda.img"), "{err}");
    }

    fn activation(blk: &Block, driver: &Driver, mem: &vm_memory::GuestMemoryMmap) -> (Activation, EventFd, EventFd) {
        let queue_evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let activation = Activation {
            mem: mem.clone(),
            queues: vec![driver.queue(false)],
            queue_evts: vec![queue_evt.try_clone().unwrap()],
            interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
            acked_features: blk.features(),
        };
        (activation, queue_evt, irq)
    }

    fn wait_for_interrupt(irq: &EventFd) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if irq.read().is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    #[test]
    fn the_worker_serves_notifications_until_reset() {
        let mem = memory();
        let img = image(8);
        let mut blk = Block::new(img.path(), false, "vda").unwrap();
        let mut driver = Driver::new(&mem);
        header(&mem, 0x1000, VIRTIO_BLK_T_IN, 1);
        let (act, queue_evt, irq) = activation(&blk, &driver, &mem);
        let interrupt = act.interrupt.clone();
        blk.activate(act).unwrap();

        mem.write_obj(0xffu8, GuestAddress(0x3000)).unwrap();
        driver.add(&[(0x1000, 16, R), (0x2000, 512, W), (0x3000, 1, W)]);
        queue_evt.write(1).unwrap();
        assert!(wait_for_interrupt(&irq), "no interrupt within 10 s");
        assert_eq!(interrupt.status() & INT_USED_RING, INT_USED_RING);
        assert_eq!(driver.used(), [(0, 513)]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x3000)).unwrap(), VIRTIO_BLK_S_OK as u8);
        let mut data = [0u8; 512];
        mem.read_slice(&mut data, GuestAddress(0x2000)).unwrap();
        assert_eq!(data[..], std::fs::read(img.path()).unwrap()[512..1024]);
        assert_eq!(BlockMetrics::get(&blk.metrics().reads), 1);

        // After a reset the worker is gone: a notification is not served.
        blk.reset();
        driver.add(&[(0x1000, 16, R), (0x2000, 512, W), (0x3000, 1, W)]);
        queue_evt.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(driver.used().len(), 1);

        // The driver sets the device up again.
        let mut driver = Driver::new(&mem);
        let (act, queue_evt, irq) = activation(&blk, &driver, &mem);
        blk.activate(act).unwrap();
        driver.add(&[(0x1000, 16, R), (0x2000, 512, W), (0x3000, 1, W)]);
        queue_evt.write(1).unwrap();
        assert!(wait_for_interrupt(&irq), "no interrupt within 10 s after a reset");
        assert_eq!(driver.used(), [(0, 513)]);
        assert_eq!(BlockMetrics::get(&blk.metrics().reads), 2);
    }

    #[test]
    fn a_save_hands_the_queue_indexes_and_the_device_serves_on() {
        let mem = memory();
        let img = image(8);
        let mut blk = Block::new(img.path(), false, "vda").unwrap();
        let idle = blk.save().unwrap();
        assert!(idle.queues.is_empty() && idle.state == serde_json::json!({"sectors": 8}), "an inactive device hands no queues");
        let mut driver = Driver::new(&mem);
        header(&mem, 0x1000, VIRTIO_BLK_T_IN, 1);
        let (act, queue_evt, irq) = activation(&blk, &driver, &mem);
        blk.activate(act).unwrap();
        driver.add(&[(0x1000, 16, R), (0x2000, 512, W), (0x3000, 1, W)]);
        queue_evt.write(1).unwrap();
        assert!(wait_for_interrupt(&irq), "no interrupt within 10 s");

        let saved = blk.save().unwrap();
        assert_eq!(saved.queues.len(), 1);
        assert_eq!((saved.queues[0].next_avail, saved.queues[0].next_used, saved.queues[0].ready), (1, 1, true));
        // The worker runs again on the same queue.
        driver.add(&[(0x1000, 16, R), (0x2000, 512, W), (0x3000, 1, W)]);
        queue_evt.write(1).unwrap();
        assert!(wait_for_interrupt(&irq), "no interrupt within 10 s after the save");
        assert_eq!(driver.used().len(), 2);
        blk.restore(&saved.state).unwrap();
        assert!(blk.restore(&serde_json::json!({"x": 1})).is_err());
        let e = blk.restore(&serde_json::json!({"sectors": 9})).unwrap_err().to_string();
        assert!(e.contains("the saved disk had 9 sectors; this one has 8"), "{e}");
    }

    #[test]
    fn activation_needs_a_ready_queue() {
        let mem = memory();
        let img = image(1);
        let mut blk = Block::new(img.path(), false, "vda").unwrap();
        let driver = Driver::new(&mem);
        let (mut act, _, _) = activation(&blk, &driver, &mem);
        act.queues[0].set_ready(false);
        assert!(matches!(blk.activate(act), Err(ActivateError::BadQueues { .. })));
        let (mut act, _, _) = activation(&blk, &driver, &mem);
        act.queues.clear();
        assert!(matches!(blk.activate(act), Err(ActivateError::BadQueues { .. })));
        blk.reset();
    }
}
