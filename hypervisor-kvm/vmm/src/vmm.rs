//! Building the VM and running it: memory, devices on the MMIO bus with their irqfds and
//! ioeventfds, ACPI tables, the kernel, one thread per vCPU, the control API; then waiting
//! until the guest or the API ends it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::IoEventAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::arch::acpi::{self, MmioDeviceInfo};
use crate::api::{self, ApiContext};
use crate::devices::bus::{Bus, MmioSlot};
use crate::arch::layout::{FIRST_DEVICE_GSI, MAX_DEVICES, MAX_VCPUS, MMIO_BASE};
use crate::devices::legacy::pio::PioBus;
use crate::vstate::runstate::RunControl;
use crate::seccomp::SeccompMode;
use crate::devices::legacy::serial::{self, SerialPort};
use crate::vstate::vcpu::{self, GuestExit, VcpuError};
use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW, QUEUE_NOTIFY};
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::boot;
use crate::error::VmmError;
use crate::event::Event;
use crate::vstate::{memory, vm};

/// How long stopping waits for the vCPU threads.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How the VM starts.
#[derive(Debug, Clone)]
pub enum Start {
    /// Boot a kernel.
    Boot {
        /// ELF vmlinux with a PVH note, or a bzImage.
        kernel: PathBuf,
        /// Optional initrd/initramfs.
        initrd: Option<PathBuf>,
    },
    /// Go on from a saved state file (`save`); RAM is the `memory_file`, mapped private.
    Restore(PathBuf),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Boot a kernel or restore a saved VM.
    pub start: Start,
    /// Kernel command line (not used by a restore).
    pub cmdline: String,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// A file to hold guest RAM, mapped shared (a VM a template will be saved from), or with
    /// [`Start::Restore`] the saved VM's RAM, mapped private; `None`: a memfd.
    pub memory_file: Option<PathBuf>,
    /// Where the API's `save` writes the state.
    pub state_file: Option<PathBuf>,
    /// Number of vCPUs (1 to [`MAX_VCPUS`]).
    pub vcpus: u8,
    /// Where the serial console output goes.
    pub console_log: PathBuf,
    /// The control API socket, if any.
    pub api_socket: Option<PathBuf>,
    /// Wait for the API's `start` instead of starting the vCPUs at once.
    pub start_paused: bool,
    /// The seccomp filters of the vCPU and device threads.
    pub seccomp: SeccompMode,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn attach_devices(
    vm: &vm::Vm,
    mem: &vm_memory::GuestMemoryMmap,
    devices: Vec<Box<dyn VirtioDevice>>,
) -> Result<(Vec<MmioSlot>, Vec<MmioDeviceInfo>), VmmError> {
    let mut slots = Vec::new();
    let mut infos = Vec::new();
    for (i, device) in devices.into_iter().enumerate() {
        let base = MMIO_BASE + MMIO_WINDOW * i as u64;
        let gsi = FIRST_DEVICE_GSI + i as u32;
        let name = device.name();
        let device_io = |e| VmmError::Device(name, e);
        let irq = EventFd::new(EFD_NONBLOCK).map_err(device_io)?;
        vm.register_irqfd(&irq, gsi)?;
        let transport = MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(irq)))
            .map_err(device_io)?;
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            vm.fd
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY),
                    queue as u32,
                )
                .map_err(|e| VmmError::Ioeventfd(name, e))?;
        }
        tracing::info!(device = name, base, gsi, "virtio-mmio device");
        slots.push(MmioSlot {
            base,
            gsi,
            transport: Mutex::new(transport),
        });
        infos.push(MmioDeviceInfo {
            base,
            size: MMIO_WINDOW,
            gsi,
        });
    }
    Ok((slots, infos))
}

/// Boots the guest with `devices` and runs it until it shuts down or resets, or the API
/// shuts it down. `on_ready` runs once the VM is built and the API socket is bound.
pub fn run(
    config: &VmConfig,
    devices: Vec<Box<dyn VirtioDevice>>,
    on_ready: impl FnOnce(),
) -> Result<GuestExit, VmmError> {
    if config.vcpus == 0 || config.vcpus > MAX_VCPUS {
        return Err(VmmError::Vcpus(config.vcpus));
    }
    if devices.len() > MAX_DEVICES {
        return Err(VmmError::TooManyDevices(devices.len()));
    }
    // A restore reads and checks its state first: a state from another vmm or CPU is refused
    // before anything is built.
    let restored = match &config.start {
        Start::Restore(path) => {
            let kvm = kvm_ioctls::Kvm::new().map_err(|e| VmmError::Vm(vm::VmSetupError::OpenKvm(e)))?;
            Some(crate::save::read(path, &kvm, config.vcpus, devices.len()).map_err(|e| VmmError::Restore(path.display().to_string(), e.into()))?)
        }
        Start::Boot { .. } => None,
    };
    // A restored VM's console goes on after what is there (the plugin notes that it is a
    // clone); a booted VM's starts empty.
    // The guest's output is private to the host (0600 when the vmm creates the file).
    let mut open = std::fs::OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(open.create(true), 0o600);
    let log = match &restored {
        Some(_) => open.append(true).open(&config.console_log),
        None => open.write(true).truncate(true).open(&config.console_log),
    }
    .map_err(|e| VmmError::ConsoleLog(config.console_log.display().to_string(), e))?;
    let backing = match (&config.memory_file, &restored) {
        (Some(path), Some(_)) => memory::Backing::PrivateFile(path),
        (Some(path), None) => memory::Backing::SharedFile(path),
        (None, None) => memory::Backing::Memfd,
        (None, Some(_)) => return Err(VmmError::RestoreWithoutMemory),
    };
    let mem = memory::create_guest_memory_backed(config.memory_mib, backing)?;
    let vm = Arc::new(vm::Vm::new(&mem)?);
    let (slots, infos) = attach_devices(&vm, &mem, devices)?;
    let boot = match &config.start {
        Start::Boot { kernel, initrd } => {
            let rsdp = acpi::write(&mem, config.vcpus, &infos)?;
            Some(boot::load(&mem, kernel, initrd.as_deref(), &config.cmdline, rsdp)?)
        }
        Start::Restore(_) => None,
    };

    let out = Box::new(log) as Box<dyn Write + Send>;
    let (serial, serial_evt) = match &restored {
        Some(state) => SerialPort::restored(out, &state.devices.serial)?,
        None => SerialPort::new(out)?,
    };
    vm.register_irqfd(&serial_evt, serial::COM1_IRQ)?;

    crate::seccomp::setup(config.seccomp)?;
    crate::devices::virtio::worker::start_spawner().map_err(VmmError::Thread)?;
    // The devices go on where they were saved (their workers start under the device filter,
    // so after the filters are set up).
    if let Some(state) = &restored {
        for (index, (slot, saved)) in slots.iter().zip(&state.devices.mmio).enumerate() {
            let mut transport = slot.transport.lock().unwrap_or_else(|p| p.into_inner());
            transport.restore(index, saved).map_err(|e| VmmError::Restore(format!("device {index}"), e.into()))?;
        }
    }
    let bus = Arc::new(Bus::new(PioBus::new(serial), slots));
    let kick = SIGRTMIN();
    register_signal_handler(kick, kick_handler).map_err(VmmError::Signal)?;
    let control = Arc::new(RunControl::new(usize::from(config.vcpus), kick));
    let (events, rx) = channel();
    let mut fds = Vec::new();
    for id in 0..config.vcpus {
        fds.push(vcpu::create_vcpu(
            &vm,
            id,
            config.vcpus,
            boot.filter(|_| id == 0),
        )?);
    }
    if let Some(state) = &restored {
        for (id, (fd, saved)) in fds.iter().zip(&state.kvm.vcpus).enumerate() {
            saved.restore(fd).map_err(|e| VmmError::Restore(format!("vCPU {id}"), e.into()))?;
        }
        state.kvm.chip.restore(&vm.fd).map_err(|e| VmmError::Restore("the interrupt controllers".into(), e.into()))?;
        tracing::info!("VM restored from its saved state");
    }
    // The MSRs a save reads (`snapshot`): KVM's list, asked once.
    let msrs: Arc<[u32]> = match crate::vstate::snapshot::vcpu_state::msr_indexes(&vm.kvm) {
        Ok(list) => list.into(),
        Err(e) => {
            tracing::warn!(error = %error_report::chain(&e), "no MSR list: this VM's state cannot be saved");
            Arc::from([])
        }
    };
    let mut threads = Vec::new();
    for (id, fd) in fds.into_iter().enumerate() {
        threads.push(spawn_vcpu(id as u8, fd, &msrs, &bus, &control, events.clone())?);
    }
    let _api = match &config.api_socket {
        Some(path) => Some(api::serve(
            path,
            ApiContext {
                control: control.clone(),
                bus: bus.clone(),
                events: events.clone(),
                vcpus: config.vcpus,
                memory_mib: config.memory_mib,
                vm: Some(vm.clone()),
                state_file: config.state_file.clone(),
            },
        )?),
        None => None,
    };
    on_ready();
    if !config.start_paused {
        control.start()?;
    }
    tracing::info!(entry = boot.map(|b| b.entry), vcpus = config.vcpus, "VM ready");

    let result = match rx.recv() {
        Ok(Event::Vcpu(id, result)) => {
            tracing::info!(vcpu = id, ?result, "vCPU stopped");
            result
        }
        Ok(Event::Shutdown) => {
            tracing::info!("shutdown requested through the API");
            Ok(GuestExit::Stopped)
        }
        Err(_) => Ok(GuestExit::Stopped),
    };
    if !control.stop(STOP_TIMEOUT, || threads.iter().all(|t| t.is_finished())) {
        tracing::error!("vCPU threads did not stop within {STOP_TIMEOUT:?}");
        bus.finish();
        return Err(VmmError::StuckVcpus);
    }
    for t in threads {
        let _ = t.join();
    }
    bus.finish();
    // Device workers stop when the bus goes; `mem` must outlive the VM's memory slot.
    drop(bus);
    drop(vm);
    drop(mem);
    Ok(result?)
}

fn spawn_vcpu(
    id: u8,
    mut fd: kvm_ioctls::VcpuFd,
    msrs: &Arc<[u32]>,
    bus: &Arc<Bus>,
    control: &Arc<RunControl>,
    events: Sender<Event>,
) -> Result<std::thread::JoinHandle<()>, VmmError> {
    use std::os::unix::thread::JoinHandleExt;
    let (bus, ctl, msrs) = (bus.clone(), control.clone(), msrs.clone());
    let handle = std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            let result = match crate::seccomp::apply_vcpu() {
                Ok(()) => vcpu::run(&mut fd, usize::from(id), &msrs, &bus, &ctl),
                Err(e) => Err(VcpuError::Seccomp(e)),
            };
            let _ = events.send(Event::Vcpu(id, result));
        })
        .map_err(VmmError::Thread)?;
    control.register_thread(handle.as_pthread_t());
    Ok(handle)
}
