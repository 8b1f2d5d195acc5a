//! Seccomp filters for the threads that face the guest.
//!
//! Once the VM is built, each vCPU thread and each device worker thread installs its own
//! filter (the `seccompiler` crate) before it touches guest input:
//!
//! - **vCPU threads** may call `KVM_RUN` and the `KVM_GET_*` ioctls that read their own state
//!   for a save (no other ioctl but `FIONBIO`/`FIOCLEX`, no `KVM_SET_*`), read and
//!   write what they already hold (eventfds, the console log), manage memory and futexes,
//!   and duplicate or create the eventfds and epoll sets a device activation needs. They
//!   cannot open files, create sockets, fork, exec or spawn threads: device worker threads
//!   are started by an unfiltered spawner thread on their behalf (see `worker.rs`).
//! - **device threads** may wait on epoll, do I/O on the descriptors they hold (including
//!   `pread`/`pwrite`/`fdatasync` on disk images), send and receive on sockets (with passed
//!   descriptors: virtio-fs's vhost-user requests), accept and connect Unix sockets (vsock's
//!   hybrid backend: `socket` only with `AF_UNIX`), and the same memory and futex calls. No
//!   `open`, `exec`, `fork`, `ptrace`, `mount`, `kill` of others, ...
//!
//! A call outside the filter kills the whole vmm (`--seccomp kill`, the default): a guest that
//! got code execution in a device thread gets nothing more. `--seccomp log` allows and logs
//! such calls (to the kernel audit log) for finding what a filter misses; `--seccomp off`
//! installs none.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};

/// What a filter does with a call it does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the process.
    Kill,
    /// Allow and log the call.
    Log,
    /// Install no filter.
    Off,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter did not compile.
    #[error("building the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    /// Filters were already set up.
    #[error("the seccomp filters were already set up")]
    AlreadySet,
}

struct Filters {
    vcpu: BpfProgram,
    device: BpfProgram,
}

static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();

/// Calls every guest-facing thread needs: memory, futexes, signals, time, exit, and I/O on
/// descriptors already open.
const COMMON: &[libc::c_long] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    // A panic aborts through tgkill on itself.
    libc::SYS_tgkill,
];

const DEVICE: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
];

fn arg_eq(index: u8, value: u64) -> SeccompRule {
    let condition = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .expect("a 32-bit equality on arguments 0-5 is a valid condition");
    SeccompRule::new(vec![condition]).expect("a rule with one condition is valid")
}

fn build(
    name: &'static str,
    extra: &[libc::c_long],
    conditional: Vec<(libc::c_long, Vec<SeccompRule>)>,
    mode: SeccompMode,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in COMMON.iter().chain(extra) {
        rules.insert(*call, Vec::new());
    }
    for (call, conditions) in conditional {
        rules.insert(call, conditions);
    }
    let mismatch = if mode == SeccompMode::Log { SeccompAction::Log } else { SeccompAction::KillProcess };
    let arch = std::env::consts::ARCH.try_into().map_err(|e| SeccompError::Build(name, e))?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(|e| SeccompError::Build(name, e))?;
    filter.try_into().map_err(|e| SeccompError::Build(name, e))
}

fn ioctls(requests: &[u64]) -> Vec<SeccompRule> {
    requests.iter().map(|r| arg_eq(1, *r)).collect()
}

/// `_IOR(KVMIO, nr, T)`: a KVM ioctl that reads a `T` from the kernel.
const fn kvm_ior<T>(nr: u64) -> u64 {
    (2 << 30) | ((std::mem::size_of::<T>() as u64) << 16) | ((kvm_bindings::KVMIO as u64) << 8) | nr
}

/// The ioctls a vCPU thread may make: `KVM_RUN`, and the reads of its state for a save
/// (`vstate::snapshot::VcpuState::capture`), besides `FIONBIO` and `FIOCLEX`.
fn vcpu_ioctls() -> Vec<u64> {
    use kvm_bindings::*;
    let kvmio = KVMIO as u64;
    vec![
        (kvmio << 8) | 0x80, // KVM_RUN
        kvm_ior::<kvm_regs>(0x81),
        kvm_ior::<kvm_sregs>(0x83),
        (3 << 30) | ((std::mem::size_of::<kvm_msrs>() as u64) << 16) | (kvmio << 8) | 0x88, // KVM_GET_MSRS (_IOWR)
        kvm_ior::<kvm_lapic_state>(0x8e),
        kvm_ior::<kvm_mp_state>(0x98),
        kvm_ior::<kvm_vcpu_events>(0x9f),
        kvm_ior::<kvm_debugregs>(0xa1),
        (kvmio << 8) | 0xa3, // KVM_GET_TSC_KHZ
        kvm_ior::<kvm_xsave>(0xa4),
        kvm_ior::<kvm_xcrs>(0xa6),
        libc::FIONBIO,
        libc::FIOCLEX,
    ]
}

/// Builds both filters for `mode`; the threads install them with [`apply_vcpu`] and
/// [`apply_device`]. Call once, before the vCPUs start.
pub fn setup(mode: SeccompMode) -> Result<(), SeccompError> {
    let filters = match mode {
        SeccompMode::Off => None,
        _ => {
            let vcpu = build("vCPU", &[], vec![(libc::SYS_ioctl, ioctls(&vcpu_ioctls()))], mode)?;
            let device = build("device", DEVICE, device_conditional(), mode)?;
            Some(Filters { vcpu, device })
        }
    };
    FILTERS.set(filters).map_err(|_| SeccompError::AlreadySet)
}

/// The device threads' calls allowed only with some arguments.
fn device_conditional() -> Vec<(libc::c_long, Vec<SeccompRule>)> {
    vec![
        (libc::SYS_ioctl, ioctls(&[libc::FIONBIO, libc::FIOCLEX, libc::FIONREAD])),
        (libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)]),
    ]
}

/// The device filter with `EPERM` instead of a kill, for tests that run device code under
/// it without risking the test process.
#[cfg(test)]
pub(crate) fn device_filter_returning_eperm() -> BpfProgram {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().chain(DEVICE).map(|c| (*c, Vec::new())).collect();
    rules.extend(device_conditional());
    let arch = std::env::consts::ARCH.try_into().expect("a supported arch");
    let filter = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch)
        .expect("the device rules are valid");
    filter.try_into().expect("the device filter compiles")
}

fn apply(name: &'static str, pick: impl Fn(&Filters) -> &BpfProgram) -> Result<(), SeccompError> {
    match FILTERS.get() {
        Some(Some(filters)) => seccompiler::apply_filter(pick(filters)).map_err(|e| SeccompError::Install(name, e)),
        _ => Ok(()),
    }
}

/// Installs the vCPU filter on the calling thread (nothing when filters are off or were
/// never set up, as in unit tests).
pub fn apply_vcpu() -> Result<(), SeccompError> {
    apply("vCPU", |f| &f.vcpu)
}

/// Installs the device filter on the calling thread.
pub fn apply_device() -> Result<(), SeccompError> {
    apply("device", |f| &f.device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_for_this_arch() {
        for mode in [SeccompMode::Kill, SeccompMode::Log] {
            let prog = build("test", DEVICE, vec![(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)])], mode).unwrap();
            assert!(prog.len() > COMMON.len());
        }
    }

    #[test]
    fn a_filtered_vcpu_thread_can_read_its_state_for_a_save_and_nothing_more() {
        let mem = crate::vstate::memory::create_guest_memory_backed(64, crate::vstate::memory::Backing::Memfd).unwrap();
        let vm = match crate::vstate::vm::Vm::new(&mem) {
            Ok(vm) => vm,
            Err(e) if std::env::var_os("SANDBOX_TESTS_STRICT").is_none() => return eprintln!("skipped: this test needs /dev/kvm ({e})"),
            Err(e) => panic!("SANDBOX_TESTS_STRICT is set and /dev/kvm does not work: {e}"),
        };
        let vcpu = crate::vstate::vcpu::create_vcpu(&vm, 0, 1, None).unwrap();
        let msrs = crate::vstate::snapshot::vcpu_state::msr_indexes(&vm.kvm).unwrap();
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().map(|c| (*c, Vec::new())).collect();
        rules.insert(libc::SYS_ioctl, ioctls(&vcpu_ioctls()));
        let arch = std::env::consts::ARCH.try_into().unwrap();
        let filter = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch).unwrap();
        let prog: BpfProgram = filter.try_into().unwrap();
        let (saved, set) = std::thread::scope(|s| {
            s.spawn(|| {
                seccompiler::apply_filter(&prog).unwrap();
                let saved = crate::vstate::snapshot::VcpuState::capture(&vcpu, &msrs).map(|_| ()).map_err(|e| error_report::chain(&e));
                let set = vcpu.set_regs(&Default::default()).map_err(|e| e.errno());
                (saved, set)
            })
            .join()
            .unwrap()
        });
        assert_eq!(saved, Ok(()));
        assert_eq!(set, Err(libc::EPERM), "KVM_SET_REGS is not a vCPU thread's call");
    }

    #[test]
    fn a_filtered_thread_cannot_open_files() {
        // Errno instead of kill, so the test process survives: the same rules otherwise.
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON.iter().map(|c| (*c, Vec::new())).collect();
        rules.insert(libc::SYS_ioctl, ioctls(&[libc::FIONBIO]));
        let arch = std::env::consts::ARCH.try_into().unwrap();
        let filter = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch).unwrap();
        let prog: BpfProgram = filter.try_into().unwrap();
        let result = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            let opened = std::fs::File::open("/proc/self/status").map(|_| ()).map_err(|e| e.raw_os_error());
            let written = std::io::Write::write(&mut std::io::sink(), b"x").is_ok();
            (opened, written)
        })
        .join()
        .unwrap();
        assert_eq!(result, (Err(Some(libc::EPERM)), true));
    }
}
