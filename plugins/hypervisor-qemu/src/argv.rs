//! The VM directory's layout and QEMU's command line.

use crate::accel::Accel;
use crate::config::Network;
use crate::spec::VmSpec;
use std::path::Path;
pub use hypervisor_framework::agent::AGENT_VSOCK_PORT;
pub use hypervisor_framework::dir::MAX_SOCKET_PATH;
use hypervisor_framework::argv::Argv;
use hypervisor_framework::dir::Layout;
/// The prefix of the vsock device argument, followed by the CID.
const VSOCK_DEVICE: &str = "vhost-vsock-pci,guest-cid=";

/// The lock that serializes QMP sessions, in the VM directory.
pub const QMP_LOCK: &str = "qmp.lock";

/// The files in a VM's directory: `qemu.pid`, `qmp.sock`, [`QMP_LOCK`] and the agent ports'
/// sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuLayout;

impl Layout for QemuLayout {
    const PIDFILE: &'static str = "qemu.pid";
    const CONTROL_SOCKET: &'static str = "qmp.sock";
    const OTHER_SOCKETS: &'static [&'static str] = &[];
}

/// A VM's directory.
pub type VmDir = hypervisor_framework::dir::VmDir<QemuLayout>;

/// What the command line is built from.
#[derive(Debug, Clone)]
pub struct VmArgs<'a> {
    /// The QEMU binary (absolute).
    pub qemu: &'a Path,
    /// The sandbox id.
    pub sandbox_id: &'a str,
    /// The VM directory.
    pub dir: &'a VmDir,
    /// The machine type.
    pub machine: &'a str,
    /// The accelerator.
    pub accel: Accel,
    /// The number of agent ports.
    pub agent_ports: u32,
    /// The network.
    pub network: Network,
    /// The vsock CID, when the host has `/dev/vhost-vsock`.
    pub vsock_cid: Option<u32>,
    /// The checked VM config.
    pub spec: &'a VmSpec,
    /// Whether the VM is a template's clone: its RAM file (`spec.memory_file`, the
    /// template's) mapped private, copy-on-write, and its state restored (`-incoming defer`).
    pub clone: bool,
}

/// QEMU's full argv, the binary first. Paths are absolute and were checked to hold no ','.
pub fn build(a: &VmArgs<'_>) -> Vec<String> {
    let s = a.spec;
    let mut argv = Argv::new(a.qemu);
    argv.push(&["-name", &format!("sandbox-{}", a.sandbox_id)]);
    argv.push(&["-M", a.machine, "-accel", a.accel.name(), "-cpu", a.accel.cpu()]);
    argv.push(&["-smp", &s.vcpus.to_string(), "-m", &s.memory_mib.to_string()]);
    if let Some(file) = &s.memory_file {
        // The RAM in a shared file mapping, so the VM can be saved as a template (its state
        // saved without the RAM, which stays in the file for the clones to map); a clone maps
        // the template's file private.
        let share = if a.clone { "off" } else { "on" };
        let backend = format!("memory-backend-file,id=ram,size={}M,mem-path={},share={share}", s.memory_mib, file.display());
        argv.push(&["-object", &backend, "-machine", "memory-backend=ram"]);
    }
    if a.clone {
        argv.push(&["-incoming", "defer"]);
    }
    argv.path("-kernel", &s.kernel);
    argv.opt_path("-initrd", s.initrd.as_deref());
    let append = hypervisor_framework::agent::kernel_cmdline(a.agent_ports, a.vsock_cid.is_some(), "", &s.kernel_params);
    argv.push(&["-append", &append]);
    argv.push(&["-display", "none", "-nodefaults", "-no-reboot", "-no-user-config", "-monitor", "none"]);
    match &s.console_log {
        // A clone's console goes after the note its log starts with (see `template`).
        Some(log) if a.clone => {
            argv.push(&["-chardev", &format!("file,id=console,path={},append=on", log.display()), "-serial", "chardev:console"]);
        }
        Some(log) => argv.push(&["-serial", &format!("file:{}", log.display())]),
        None => argv.push(&["-serial", "null"]),
    }
    argv.push(&["-qmp", &format!("unix:{},server=on,wait=off", a.dir.control_socket().display())]);
    argv.push(&["-device", "virtio-serial-pci"]);
    for n in 0..a.agent_ports {
        let chardev = format!("socket,id=agent{n},path={},server=on,wait=off", a.dir.agent_socket(n).display());
        argv.push(&["-chardev", &chardev]);
        argv.push(&["-device", &format!("virtserialport,chardev=agent{n},name={}", hypervisor_framework::agent::port_name(n))]);
    }
    for (i, d) in s.disks.iter().enumerate() {
        let readonly = if d.read_only { "on" } else { "off" };
        argv.push(&["-drive", &format!("file={},if=none,id=disk{i},format=raw,readonly={readonly}", d.path.display())]);
        argv.push(&["-device", &format!("virtio-blk-pci,drive=disk{i},serial={}", d.name)]);
    }
    if a.network == Network::User {
        argv.push(&["-nic", "user,model=virtio-net-pci"]);
    }
    if let Some(cid) = a.vsock_cid {
        argv.push(&["-device", &format!("{VSOCK_DEVICE}{cid}")]);
    }
    argv.push(&["-daemonize"]);
    argv.path("-pidfile", &a.dir.pidfile());
    argv.into_vec()
}

/// A vsock CID for `sandbox_id` (3 or more: 0 to 2 are reserved, `u32::MAX` is "any").
/// `attempt` picks another one when QEMU reports the previous one in use.
pub fn vsock_cid(sandbox_id: &str, attempt: u32) -> u32 {
    // FNV-1a: stable across processes and builds, unlike std's hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for b in sandbox_id.bytes().chain(attempt.to_le_bytes()) {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    3 + hash % (u32::MAX - 3)
}

/// Replaces the vsock CID in `argv`; returns whether there was a vsock device.
pub fn set_vsock_cid(argv: &mut [String], cid: u32) -> bool {
    match argv.iter_mut().find(|a| a.starts_with(VSOCK_DEVICE)) {
        Some(arg) => {
            *arg = format!("{VSOCK_DEVICE}{cid}");
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DiskSpec;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/img/vmlinuz".into(),
            initrd: Some("/img/initrd".into()),
            kernel_params: "agent.log=debug".into(),
            vcpus: 2,
            memory_mib: 512,
            console_log: Some("/logs/console.log".into()),
            disks: vec![
                DiskSpec { name: "rootfs".into(), path: "/img/root.ext4".into(), read_only: true },
                DiskSpec { name: "data".into(), path: "/img/data.img".into(), read_only: false },
            ],
            memory_file: None,
        }
    }

    fn argv(accel: Accel, network: Network, vsock_cid: Option<u32>, spec: &VmSpec) -> Vec<String> {
        let dir = VmDir::new("/run/q/sb1");
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        build(&VmArgs { qemu, sandbox_id: "sb1", dir: &dir, machine: "pc", accel, agent_ports: 2, network, vsock_cid, spec, clone: false })
    }

    /// Whether `pair` appears as two consecutive arguments.
    fn has(argv: &[String], pair: [&str; 2]) -> bool {
        argv.windows(2).any(|w| w[0] == pair[0] && w[1] == pair[1])
    }

    #[test]
    fn the_important_arguments() {
        let a = argv(Accel::Tcg, Network::User, None, &spec());
        assert_eq!(a[0], "/usr/bin/qemu-system-x86_64");
        assert!(has(&a, ["-name", "sandbox-sb1"]));
        assert!(has(&a, ["-M", "pc"]) && has(&a, ["-accel", "tcg"]) && has(&a, ["-cpu", "max"]));
        assert!(has(&a, ["-smp", "2"]) && has(&a, ["-m", "512"]));
        assert!(has(&a, ["-kernel", "/img/vmlinuz"]) && has(&a, ["-initrd", "/img/initrd"]));
        assert!(has(&a, [
            "-append",
            "console=ttyS0 panic=-1 quiet agent.channels=serial:agent.0,serial:agent.1 agent.log=debug"
        ]));
        assert!(has(&a, ["-serial", "file:/logs/console.log"]));
        assert!(has(&a, ["-qmp", "unix:/run/q/sb1/qmp.sock,server=on,wait=off"]));
        assert!(has(&a, ["-device", "virtio-serial-pci"]));
        for n in 0..2 {
            assert!(has(&a, ["-chardev", &format!("socket,id=agent{n},path=/run/q/sb1/agent-{n}.sock,server=on,wait=off")]));
            assert!(has(&a, ["-device", &format!("virtserialport,chardev=agent{n},name=agent.{n}")]));
        }
        assert!(!a.iter().any(|x| x.contains("agent2")));
        assert!(has(&a, ["-drive", "file=/img/root.ext4,if=none,id=disk0,format=raw,readonly=on"]));
        assert!(has(&a, ["-device", "virtio-blk-pci,drive=disk0,serial=rootfs"]));
        assert!(has(&a, ["-drive", "file=/img/data.img,if=none,id=disk1,format=raw,readonly=off"]));
        assert!(has(&a, ["-device", "virtio-blk-pci,drive=disk1,serial=data"]));
        assert!(has(&a, ["-nic", "user,model=virtio-net-pci"]));
        assert!(a.iter().any(|x| x == "-daemonize") && has(&a, ["-pidfile", "/run/q/sb1/qemu.pid"]));
        for flag in ["-nodefaults", "-no-reboot", "-no-user-config"] {
            assert!(a.iter().any(|x| x == flag), "{flag}");
        }
        assert!(has(&a, ["-monitor", "none"]) && has(&a, ["-display", "none"]));
        assert!(!a.iter().any(|x| x.contains("vsock")));
    }

    #[test]
    fn kvm_no_network_no_console_no_initrd() {
        let mut s = spec();
        s.console_log = None;
        s.initrd = None;
        s.kernel_params.clear();
        s.disks.clear();
        let a = argv(Accel::Kvm, Network::None, None, &s);
        assert!(has(&a, ["-accel", "kvm"]) && has(&a, ["-cpu", "host"]));
        assert!(has(&a, ["-serial", "null"]));
        assert!(!a.iter().any(|x| x == "-initrd" || x == "-nic" || x == "-drive"));
        assert!(has(&a, ["-append", "console=ttyS0 panic=-1 quiet agent.channels=serial:agent.0,serial:agent.1"]));
    }

    #[test]
    fn a_memory_file_backs_the_ram_shared() {
        assert!(!argv(Accel::Tcg, Network::User, None, &spec()).iter().any(|x| x.starts_with("memory-backend")));
        let s = VmSpec { memory_file: Some("/dev/shm/t/memory".into()), ..spec() };
        let a = argv(Accel::Tcg, Network::User, None, &s);
        assert!(has(&a, ["-object", "memory-backend-file,id=ram,size=512M,mem-path=/dev/shm/t/memory,share=on"]), "{a:?}");
        assert!(has(&a, ["-machine", "memory-backend=ram"]));
        assert!(has(&a, ["-m", "512"]), "-m stays: QEMU checks the backend's size against it");
        assert!(!a.iter().any(|x| x == "-incoming"));
        // A template's clone maps the file private and waits for its state.
        let dir = VmDir::new("/run/q/sb1");
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        let a = build(&VmArgs { qemu, sandbox_id: "sb1", dir: &dir, machine: "pc", accel: Accel::Tcg, agent_ports: 2, network: Network::User, vsock_cid: None, spec: &s, clone: true });
        assert!(has(&a, ["-object", "memory-backend-file,id=ram,size=512M,mem-path=/dev/shm/t/memory,share=off"]), "{a:?}");
        assert!(has(&a, ["-incoming", "defer"]));
        assert!(has(&a, ["-chardev", "file,id=console,path=/logs/console.log,append=on"]) && has(&a, ["-serial", "chardev:console"]));
    }

    #[test]
    fn vsock_goes_first_in_the_channels() {
        let mut a = argv(Accel::Tcg, Network::User, Some(77), &spec());
        assert!(has(&a, ["-device", "vhost-vsock-pci,guest-cid=77"]));
        assert!(a.iter().any(|x| x.contains("agent.channels=vsock:1024,serial:agent.0,serial:agent.1 ")));
        assert!(set_vsock_cid(&mut a, 1234));
        assert!(has(&a, ["-device", "vhost-vsock-pci,guest-cid=1234"]));
        assert!(!set_vsock_cid(&mut argv(Accel::Tcg, Network::User, None, &spec()), 5));
    }

    #[test]
    fn vsock_cids_are_stable_valid_and_vary() {
        assert_eq!(vsock_cid("sb1", 0), vsock_cid("sb1", 0));
        assert_ne!(vsock_cid("sb1", 0), vsock_cid("sb1", 1));
        assert_ne!(vsock_cid("sb1", 0), vsock_cid("sb2", 0));
        for id in ["", "a", "sb1", "x-y-z"] {
            for attempt in 0..10 {
                let cid = vsock_cid(id, attempt);
                assert!((3..u32::MAX).contains(&cid), "{cid}");
            }
        }
    }

    #[test]
    fn the_sockets_of_a_vm_dir() {
        let dir = VmDir::new("/run/q/sb1");
        let names = ["qmp.sock", "agent-0.sock", "agent-1.sock"].map(|n| dir.file(n)).to_vec();
        assert_eq!((dir.sockets(2), dir.pidfile()), (names, dir.file("qemu.pid")));
    }
}
