//! The hypervisor interface. A plugin creates VMs and drives them; every VM outlives the
//! process that created it, so each call takes the VM's state blob (opaque to the host,
//! persisted by it) and may return an updated one.

use crate::error::PluginError;
use crate::guard::guard;
use crate::payload::payload;
use abi_stable::{
    sabi_trait,
    std_types::{RArc, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How to build a VM (the seed's `HypervisorConfig`), sent as a versioned JSON payload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HypervisorConfig {
    /// Schema version of this payload.
    pub schema: u32,
    /// The guest kernel (an ELF `vmlinux` or a bzImage).
    pub kernel: PathBuf,
    /// The initramfs.
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters.
    #[serde(default)]
    pub kernel_params: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Plugin-specific settings.
    #[serde(default)]
    pub extra: serde_json::Value,
    /// The file the VM's serial console is written to. The host owns it (and removes it when
    /// the sandbox is deleted); `None` discards the console.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// Disks attached when the VM is created, in order (the only way to give a VM disks
    /// today: device hotplug is not built yet).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// A file to hold the guest's RAM, mapped shared (the guest's writes reach the file), for
    /// a VM that a `template` factory will save with
    /// [`save_template`](HypervisorPlugin::save_template): its clones map the file
    /// copy-on-write. The file is created (or truncated) to the RAM's size; its directory
    /// must exist, and should be a tmpfs. `None` (the default): anonymous memory. A plugin
    /// that cannot back RAM by a file refuses a config that sets it.
    #[serde(default)]
    pub memory_file: Option<PathBuf>,
}
payload!(HypervisorConfig, 1);

/// The longest [`DiskConfig::name`]: the size of a virtio-blk serial number.
pub const MAX_DISK_NAME_LEN: usize = 20;

/// A disk image attached to a VM as a virtio-blk device.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DiskConfig {
    /// The name the guest finds the disk by: its virtio-blk serial number (1 to
    /// [`MAX_DISK_NAME_LEN`] bytes of `[A-Za-z0-9_.-]`), read from `/sys/block/vdX/serial`.
    pub name: String,
    /// The image file (raw).
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default = "yes")]
    pub read_only: bool,
}

fn yes() -> bool {
    true
}

impl DiskConfig {
    /// Checks the name's length and characters.
    pub fn validate_name(name: &str) -> Result<(), PluginError> {
        let ok = !name.is_empty()
            && name.len() <= MAX_DISK_NAME_LEN
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(())
        } else {
            Err(PluginError::invalid_input(format!(
                "disk name {name:?} must be 1 to {MAX_DISK_NAME_LEN} characters of A-Z, a-z, 0-9, '_', '.' and '-'"
            )))
        }
    }
}

/// A device to hot-plug into or out of a running VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeviceRequest {
    /// Schema version of this payload.
    pub schema: u32,
    /// `true` to add, `false` to remove.
    pub add: bool,
    /// `"block"`, `"net"`, `"vfio"`, ...
    pub kind: String,
    /// The device's identifier, unique within the VM.
    pub id: String,
    /// Kind-specific settings (image path, tap name, ...).
    #[serde(default)]
    pub settings: serde_json::Value,
}
payload!(DeviceRequest, 1);

/// The FFI-safe hypervisor interface. Plugin authors implement [`HypervisorPlugin`], whose
/// documentation is the contract of each method.
#[sabi_trait]
pub trait Hypervisor: Send + Sync {
    /// Creates (but does not start) a VM for `sandbox_id` from a [`HypervisorConfig`]
    /// payload; returns the VM's state blob.
    fn create_vm(&self, sandbox_id: RStr<'_>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Boots a created VM; returns its updated state.
    fn start_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Stops a VM and releases its resources; returns its updated state.
    fn stop_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Pauses a running VM.
    fn pause_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Resumes a paused VM.
    fn resume_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// Saves a paused VM as a template under `dir`; returns the template descriptor.
    fn save_template(&self, vm: RSlice<'_, u8>, dir: RStr<'_>) -> RResult<RVec<u8>, PluginError>;
    /// Superseded by [`create_vm_from_template`](Self::create_vm_from_template) (1.3), which
    /// also takes the clone's config; a 1.3 plugin answers `UNSUPPORTED` here.
    fn create_from_template(
        &self,
        sandbox_id: RStr<'_>,
        template: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError>;
    /// Hot-plugs or unplugs a device ([`DeviceRequest`] payload); returns the updated state.
    fn hotplug(&self, vm: RSlice<'_, u8>, request: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError>;
    /// The addresses the host may dial to reach the guest agent, comma-separated, best first:
    /// `serial:<path>` (the host socket of a virtio-serial port, carrying Yamux),
    /// `hvsock:<path>:<port>` (hybrid vsock), `vsock:<cid>:<port>` or `unix:<path>`. A host
    /// process takes one address for as long as it talks to the agent; several addresses let
    /// several host processes talk to the agent at once.
    fn agent_endpoint(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError>;
    /// Whether the VM's process is alive, as `"created"` (not started yet), `"running"`,
    /// `"paused"`, `"stopped"` (stopped through the plugin) or `"dead"` (it was started and its
    /// process is gone although nobody stopped it).
    #[sabi(last_prefix_field)]
    fn vm_status(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError>;

    /// Every VM this instance finds under its run directory, live or left over, whoever
    /// created it (added in 1.2). Plugins built against an older 1.x lack this method; for
    /// them it answers `UNSUPPORTED`.
    fn list_vms(&self) -> RResult<RVec<ListedVm>, PluginError> {
        RResult::RErr(PluginError::unsupported(LIST_VMS_UNSUPPORTED))
    }

    /// Makes the VM of state blob `vm`, created by another instance of this plugin (a VM
    /// factory's pool), the VM of `sandbox_id` under this instance's run directory; returns
    /// its new blob (added in 1.2). Plugins built against an older 1.x lack this method; for
    /// them it answers `UNSUPPORTED`.
    fn adopt_vm(&self, vm: RSlice<'_, u8>, sandbox_id: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        let _ = (vm, sandbox_id);
        RResult::RErr(PluginError::unsupported(ADOPT_VM_UNSUPPORTED))
    }

    /// Creates (but does not start) the VM of `sandbox_id` as a clone of a template descriptor
    /// that [`save_template`](Self::save_template) returned, made as the [`HypervisorConfig`]
    /// payload `config` asks (its console log); returns its state blob (added in 1.3). Plugins
    /// built against an older 1.x lack this method; for them it answers `UNSUPPORTED`.
    fn create_vm_from_template(
        &self,
        sandbox_id: RStr<'_>,
        template: RSlice<'_, u8>,
        config: RSlice<'_, u8>,
    ) -> RResult<RVec<u8>, PluginError> {
        let _ = (sandbox_id, template, config);
        RResult::RErr(PluginError::unsupported(TEMPLATES_UNSUPPORTED))
    }
}

const TEMPLATES_UNSUPPORTED: &str = "this hypervisor cannot create VMs from templates";

const LIST_VMS_UNSUPPORTED: &str = "this hypervisor cannot list its VMs";
const ADOPT_VM_UNSUPPORTED: &str = "this hypervisor cannot adopt VMs";

/// A VM that [`Hypervisor::list_vms`] found: the sandbox it belongs to (its directory's name)
/// and a state blob through which it can be asked about and stopped.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ListedVm {
    /// The sandbox id the VM was created for (or last adopted as).
    pub sandbox_id: RString,
    /// Its state blob.
    pub vm: RVec<u8>,
}

/// A shared hypervisor trait object (the factory plugins receive one).
pub type HypervisorBox = Hypervisor_TO<'static, RArc<()>>;

/// What a hypervisor plugin author implements, in plain Rust types. The plugin's
/// [`Plugin::new_hypervisor`](crate::Plugin::new_hypervisor) returns one, built from the
/// plugin's config (the `[hypervisor]` table of the runtime config without the keys the core
/// reads, as JSON); the root module wraps it with [`hypervisor_into_ffi`] into the FFI trait
/// object [`Hypervisor`], which decodes the JSON payloads and catches panics.
///
/// # The contract
///
/// - **All of a VM's state is in its state blob.** The host keeps no VM state of its own: it
///   stores the bytes each call returns in the sandbox's record (in the metadata storage) and
///   passes them to the next call, which may come from another host process, with another
///   instance of the plugin, after the first process exited. So the blob must name everything a
///   later call needs (the VMM's pid and something that tells a reused pid apart, its sockets,
///   its directory), and the plugin instance should hold nothing a later call needs besides
///   its parsed config. The blob is opaque to the host, must not be empty (the host takes an
///   empty blob for "no VM was made"), and should be small versioned data (the built-in
///   plugins write JSON with a `"schema"` such as `"qemu-vm/1"`). A blob the plugin cannot
///   read, or one of another plugin or of a newer schema, is an
///   [`ErrorKind::INVALID_INPUT`](crate::ErrorKind::INVALID_INPUT) error that says which.
/// - **VMs outlive the host process.** The VMM runs detached (daemonized) from the process
///   that called [`start_vm`](Self::start_vm); only [`stop_vm`](Self::stop_vm) ends it.
/// - **Every method blocks** until it is done, and is called on a blocking thread of the host,
///   never on its async threads. Calls for different VMs may run at the same time on one
///   instance (hence `Send + Sync`); calls that change one VM come one at a time (the host
///   holds the sandbox's lock), but [`vm_status`](Self::vm_status) may run beside them (a
///   sandbox monitor asks without the lock).
/// - **Errors** are a [`PluginError`]: a kind and a one-line message that names what was wrong
///   (the field, the file, the VM and its state). The host does not act on the kind; it wraps
///   the error as `hypervisor plugin <name> failed to <op> the VM of sandbox <id>: <kind>:
///   <message>` and hands that to the caller. Use
///   [`INVALID_INPUT`](crate::ErrorKind::INVALID_INPUT) for a config, request, blob or VM
///   state the call cannot accept, [`NOT_FOUND`](crate::ErrorKind::NOT_FOUND) for a missing
///   VMM binary, [`IO`](crate::ErrorKind::IO) for a failed file-system or system call,
///   [`BUSY`](crate::ErrorKind::BUSY) for a VM whose directory or control channel another VMM
///   or caller holds, [`UNSUPPORTED`](crate::ErrorKind::UNSUPPORTED) for what this plugin or
///   host cannot do, and [`OTHER`](crate::ErrorKind::OTHER) for the rest (a VMM that failed to
///   start or to answer). A panic is caught at the boundary and reaches the host as
///   [`PANICKED`](crate::ErrorKind::PANICKED).
///
/// Which calls the host makes, in order: [`create_vm`](Self::create_vm), then
/// [`start_vm`](Self::start_vm), then [`agent_endpoint`](Self::agent_endpoint); then
/// [`vm_status`](Self::vm_status) whenever it needs to know, [`pause_vm`](Self::pause_vm) and
/// [`resume_vm`](Self::resume_vm) as asked, and [`stop_vm`](Self::stop_vm) to end;
/// [`list_vms`](Self::list_vms) when it looks for VMs no record owns. The other methods have
/// defaults that return `UNSUPPORTED`: [`adopt_vm`](Self::adopt_vm) is for the `cache` VM
/// factory, [`save_template`](Self::save_template) and
/// [`create_from_template`](Self::create_from_template) for the `template` one, and
/// [`hotplug`](Self::hotplug) is not called yet.
pub trait HypervisorPlugin: Send + Sync + 'static {
    /// Creates the VM of sandbox `sandbox_id` from `config` and returns its state blob; starts
    /// nothing.
    ///
    /// - `sandbox_id`: 1 to 64 bytes of `[A-Za-z0-9_.-]`, not starting with `.` or `-` (the
    ///   core checks it; a plugin that names files or processes after it should check again).
    ///   A new VM for the same id replaces one that was stopped, or left behind by a process
    ///   that was killed before it could record its VM; a VM of that id that still runs must
    ///   be refused (`BUSY`).
    /// - `config`: already decoded and its schema checked (a malformed or newer payload is
    ///   refused with `INVALID_INPUT` before this is called). `vcpus` and `memory_mib` are
    ///   what the sandbox asked for (or the host's defaults), and the plugin is what decides
    ///   what it can run: refuse values outside its own limits with `INVALID_INPUT`, naming
    ///   the field, the value and the range (`HypervisorConfig.memory_mib = 4096: must be 32
    ///   to 3072`), rather than count on the host to have refused them. Check here everything
    ///   that would otherwise fail late: the kernel and initrd exist and have a format the VMM
    ///   boots, every disk exists and its name is valid ([`DiskConfig::validate_name`]), the
    ///   VMM binary is there, `extra` holds only settings this plugin knows. `console_log` is
    ///   the file the host wants the serial console written to (the host owns it: never
    ///   remove it); `None` discards the console.
    ///
    /// The host saves the blob at once, before it calls [`start_vm`](Self::start_vm), so a
    /// host process killed in between leaves a record through which the VM can still be
    /// stopped. If anything after this fails, the host calls [`stop_vm`](Self::stop_vm) with
    /// this blob, so `stop_vm` must undo what `create_vm` did.
    fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError>;

    /// Boots the created VM of state blob `vm` and returns its updated blob: runs the VMM
    /// detached from the calling process, records what names its process, and returns once
    /// the VMM runs the guest (its control channel answering), without waiting for the guest's
    /// agent.
    ///
    /// Only a created VM starts: a blob in any other state is `INVALID_INPUT` naming the state.
    /// A VMM that cannot be run, exits while starting or does not answer is an error (`OTHER`,
    /// with the VMM's own output where there is some) and must leave no process behind.
    ///
    /// The host stores the returned blob, counts a new boot and asks
    /// [`agent_endpoint`](Self::agent_endpoint); then it waits up to `boot_timeout_s` for the
    /// agent, polling [`vm_status`](Self::vm_status) about once a second: `"dead"` fails the
    /// boot at once, with the end of the console log. On any failure it calls
    /// [`stop_vm`](Self::stop_vm).
    fn start_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;

    /// Stops the VM of state blob `vm` and releases everything it holds except the console
    /// log (the VMM process, its sockets, its directory); returns the blob of a stopped VM.
    ///
    /// It must accept a blob in every state (created and never started, running, paused,
    /// already stopped, or dead) and be idempotent: stopping a stopped or dead VM cleans up
    /// what is left and succeeds. Ask the VMM to quit first; kill it after the plugin's stop
    /// timeout; signal only the recorded process (a reused pid must never be signalled). An
    /// error (a VMM that could not be killed, a directory that could not be removed) means the
    /// VM may still be there: the host reports it and leaves the sandbox's record as it was
    /// (a failed DeleteSandbox keeps the record, the only way left to reach that VM).
    ///
    /// The host calls it on StopSandbox and DeleteSandbox, to roll back a create or start that
    /// failed, and before it boots a fresh VM for a stopped sandbox. A stopped VM is never
    /// started again: the host creates a new one.
    fn stop_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;

    /// Pauses the running VM of state blob `vm` (its vCPUs stop; the VMM process stays) and
    /// returns its updated blob. A VM that is not running (created, paused, stopped, or whose
    /// process is gone) is `INVALID_INPUT` naming its state; a VMM that does not carry out the
    /// request is an error (`OTHER`, or `BUSY` if its control channel is held).
    ///
    /// The host stores the blob and marks the sandbox paused; it does not health-check the
    /// agent of a paused sandbox.
    fn pause_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;

    /// Resumes the paused VM of state blob `vm` (its vCPUs run again) and returns its updated
    /// blob. A VM that is not paused is `INVALID_INPUT` naming its state.
    ///
    /// Besides ResumeSandbox, the host calls it to stop a paused sandbox (its containers are
    /// stopped through the agent, which needs running vCPUs).
    fn resume_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError>;

    /// Saves the paused VM of state blob `vm` as a template in the directory `dir` and returns
    /// the template's descriptor (opaque bytes that [`create_from_template`] reads back).
    /// For VM factories of kind `template`; the default refuses with `UNSUPPORTED`.
    ///
    /// - The VM must be paused and must have been created with a
    ///   [`memory_file`](HypervisorConfig::memory_file) (its RAM, which the clones map):
    ///   anything else is `INVALID_INPUT` naming what is missing.
    /// - `dir` is an existing directory of the caller's (mode 0700, on a tmpfs by default);
    ///   the plugin writes its files there (mode 0600) and names them in the descriptor.
    /// - The descriptor holds everything a clone needs, including the config the VM was made
    ///   from, so a clone does not depend on the plugin config of the instance that saved it.
    /// - The guest is saved as it is: a host connection to its agent that closed just before
    ///   the pause may not have been seen by the agent yet, and every clone would resume in
    ///   that old session. So the caller lets the agent settle after its last host connection
    ///   closed before it pauses the VM (the `template` factory waits 2 s, as Kata 1.x did).
    /// - Afterwards the VM stays paused, must never run again (its RAM file is now the
    ///   template's: the clones would see its writes), and is the caller's to stop; a plugin
    ///   refuses to resume it (`INVALID_INPUT`).
    ///
    /// [`create_from_template`]: Self::create_from_template
    fn save_template(&self, _vm: &[u8], _dir: &str) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::unsupported("this hypervisor cannot save templates"))
    }

    /// Creates (but does not start) the VM of sandbox `sandbox_id` as a clone of a template
    /// descriptor that [`save_template`](Self::save_template) returned, and returns its state
    /// blob, as [`create_vm`](Self::create_vm) does; [`start_vm`](Self::start_vm) then
    /// restores the template's state and runs the clone from where the template stopped (its
    /// agent already up: no kernel boot). The clone maps the template's RAM copy-on-write.
    ///
    /// `config` must ask for the VM the template was made from (kernel, initrd, kernel
    /// parameters, vCPUs, memory, disks, `extra`): a difference is `INVALID_INPUT` naming the
    /// key and both values. Its `console_log` is the clone's own, and its `memory_file` must
    /// be `None`. A descriptor this plugin cannot read, of another plugin or version, or whose
    /// files are gone or were made by another VMM binary, is `INVALID_INPUT` saying which.
    /// The default refuses with `UNSUPPORTED`.
    ///
    /// Every clone resumes the template's guest: same clock, same RNG state. The host sets
    /// the guest's clock and reseeds its RNG through the agent before it uses a clone.
    fn create_from_template(&self, _sandbox_id: &str, _template: &[u8], _config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::unsupported(TEMPLATES_UNSUPPORTED))
    }

    /// Adds a device to, or removes one from, the running VM of state blob `vm` as `request`
    /// says, and returns the updated blob. A kind the plugin does not know, or settings it
    /// cannot use, are `INVALID_INPUT`; a kind it knows but cannot hot-plug is
    /// `UNSUPPORTED`. The default refuses every request with `UNSUPPORTED`.
    ///
    /// Today's core never calls it: AddDevice, AddInterface and RemoveInterface answer
    /// "not supported yet" without asking the plugin.
    fn hotplug(&self, _vm: &[u8], _request: &DeviceRequest) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::unsupported("this hypervisor cannot hot-plug devices"))
    }

    /// Every VM under this instance's run directory, with a state blob for each, whether its
    /// VMM runs or it was left over (a directory whose VMM is gone): `(sandbox id, blob)`.
    ///
    /// The host uses it to find VMs that no sandbox record owns (a record lost with its
    /// store, a host process killed between creating a VM and saving its record): `list` shows
    /// them and `delete` stops them with [`stop_vm`](Self::stop_vm) on the blob given here,
    /// which must therefore name the live process if there is one. A VM factory's server uses
    /// it to find the pool VMs a killed server left behind. Skip what is not a VM of this
    /// plugin; an unreadable run directory is an error (`IO`), a missing one an empty list.
    /// The default answers `UNSUPPORTED` (the host then knows no VM besides its records).
    fn list_vms(&self) -> Result<Vec<(String, Vec<u8>)>, PluginError> {
        Err(PluginError::unsupported(LIST_VMS_UNSUPPORTED))
    }

    /// Takes over the VM of state blob `vm`, which another instance of this plugin created
    /// (with another `run_dir`: a VM factory's pool), as the VM of `sandbox_id`: moves
    /// whatever names the VM (its directory, with the sockets in it) under this instance's
    /// run directory as that sandbox's, and returns the new blob, through which every later
    /// call reaches the same VMM process. The VM keeps running; its agent keeps its
    /// connections' addresses only through the new blob's [`agent_endpoint`](Self::agent_endpoint).
    ///
    /// The move must be atomic (a `rename`): a caller killed half-way leaves the VM either
    /// where it was or adopted, never both and never neither. A VM of `sandbox_id` that still
    /// runs here is `BUSY`; a blob of another plugin is `INVALID_INPUT`. The default answers
    /// `UNSUPPORTED` (a factory then cannot hand out pooled VMs of this plugin).
    fn adopt_vm(&self, _vm: &[u8], _sandbox_id: &str) -> Result<Vec<u8>, PluginError> {
        Err(PluginError::unsupported(ADOPT_VM_UNSUPPORTED))
    }

    /// The addresses at which the host can reach the guest agent of the VM of state blob `vm`,
    /// comma-separated, best first. Each is one of
    ///
    /// - `serial:<path>`: the host's Unix socket of a virtio-serial (or virtio-console) port,
    ///   over which the host runs Yamux;
    /// - `hvsock:<path>:<port>`: hybrid vsock, a Unix socket on which the host writes
    ///   `CONNECT <port>\n` and reads an `OK ...` line before it speaks;
    /// - `vsock:<cid>:<port>`: `AF_VSOCK`;
    /// - `unix:<path>`: a Unix socket the agent itself listens on;
    ///
    /// with absolute paths that hold no `,`. Build the text with
    /// [`format_endpoints`](crate::endpoint::format_endpoints) from typed
    /// [`AgentEndpoint`](crate::endpoint::AgentEndpoint)s
    /// ([`parse_endpoints`](crate::endpoint::parse_endpoints) reads it back); a list the host
    /// cannot parse fails every connection to the agent. The guest must be told to listen
    /// on the same channels (the built-in plugins put `agent.channels=` on the kernel command
    /// line).
    ///
    /// The host asks once per boot, right after [`start_vm`](Self::start_vm), and stores the
    /// answer in the sandbox's record. A host process that talks to the agent claims one
    /// address (the first free one, through a lock file per address) for as long as its
    /// connection lives, so the number of addresses is the number of host processes that can
    /// talk to one sandbox at once; a serial port carries one connection at a time, so give
    /// several. A stopped VM has no endpoint: `INVALID_INPUT`.
    fn agent_endpoint(&self, vm: &[u8]) -> Result<String, PluginError>;

    /// What the VM of state blob `vm` is now, as seen from its process and its control channel:
    ///
    /// - `"created"`: created, not started;
    /// - `"running"`: started and its vCPUs run (also when the process is alive but its control
    ///   channel does not answer in time);
    /// - `"paused"`: the process is alive and its vCPUs do not run;
    /// - `"stopped"`: stopped through [`stop_vm`](Self::stop_vm);
    /// - `"dead"`: it was started and its process is gone although nobody stopped it (the
    ///   guest shut down or crashed, the VMM was killed).
    ///
    /// It must be quick (a couple of seconds at most) and change nothing. The host calls it
    /// often: before it connects to the agent (it connects only to a `"running"` VM), before it
    /// stops containers (`"running"` or `"paused"`), about once a second while a VM boots
    /// (`"dead"` fails the boot), every 0.5 s in a sandbox monitor (`"dead"` or `"stopped"`
    /// becomes `MonitorEvent::VmDied`), and for every status query, where an error is shown as
    /// `unknown (<error>)`. Return an error only for a blob it cannot read.
    fn vm_status(&self, vm: &[u8]) -> Result<String, PluginError>;
}

/// Wraps a [`HypervisorPlugin`] into the FFI trait object, catching panics.
pub fn hypervisor_into_ffi<H: HypervisorPlugin>(h: H) -> HypervisorBox {
    Hypervisor_TO::from_ptr(RArc::new(HypervisorAdapter(h)), abi_stable::sabi_trait::TD_Opaque)
}

struct HypervisorAdapter<H>(H);

fn out(r: Result<Vec<u8>, PluginError>) -> Result<RVec<u8>, PluginError> {
    r.map(RVec::from)
}

impl<H: HypervisorPlugin> Hypervisor for HypervisorAdapter<H> {
    fn create_vm(&self, id: RStr<'_>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        use crate::payload::Payload;
        guard("create_vm", || out(self.0.create_vm(id.as_str(), &HypervisorConfig::decode(&config)?)))
    }
    fn start_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("start_vm", || out(self.0.start_vm(&vm)))
    }
    fn stop_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("stop_vm", || out(self.0.stop_vm(&vm)))
    }
    fn pause_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("pause_vm", || out(self.0.pause_vm(&vm)))
    }
    fn resume_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        guard("resume_vm", || out(self.0.resume_vm(&vm)))
    }
    fn save_template(&self, vm: RSlice<'_, u8>, dir: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        guard("save_template", || out(self.0.save_template(&vm, dir.as_str())))
    }
    fn create_from_template(&self, _id: RStr<'_>, _t: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        RResult::RErr(PluginError::unsupported("create_from_template is superseded by create_vm_from_template (plugin-api 1.3)"))
    }
    fn hotplug(&self, vm: RSlice<'_, u8>, request: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        use crate::payload::Payload;
        guard("hotplug", || out(self.0.hotplug(&vm, &DeviceRequest::decode(&request)?)))
    }
    fn agent_endpoint(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError> {
        guard("agent_endpoint", || self.0.agent_endpoint(&vm).map(RString::from))
    }
    fn vm_status(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError> {
        guard("vm_status", || self.0.vm_status(&vm).map(RString::from))
    }
    fn list_vms(&self) -> RResult<RVec<ListedVm>, PluginError> {
        guard("list_vms", || {
            let vms = self.0.list_vms()?;
            Ok(vms.into_iter().map(|(id, vm)| ListedVm { sandbox_id: id.into(), vm: vm.into() }).collect())
        })
    }
    fn adopt_vm(&self, vm: RSlice<'_, u8>, sandbox_id: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        guard("adopt_vm", || out(self.0.adopt_vm(&vm, sandbox_id.as_str())))
    }
    fn create_vm_from_template(&self, id: RStr<'_>, t: RSlice<'_, u8>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        use crate::payload::Payload;
        guard("create_vm_from_template", || out(self.0.create_from_template(id.as_str(), &t, &HypervisorConfig::decode(&config)?)))
    }
}

/// A shared handle as a hypervisor trait object ([`HypervisorHandle::share`]).
struct Shared(std::sync::Arc<HypervisorHandle>);

impl Hypervisor for Shared {
    fn create_vm(&self, id: RStr<'_>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.create_vm(id, config)
    }
    fn start_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.start_vm(vm)
    }
    fn stop_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.stop_vm(vm)
    }
    fn pause_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.pause_vm(vm)
    }
    fn resume_vm(&self, vm: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.resume_vm(vm)
    }
    fn save_template(&self, vm: RSlice<'_, u8>, dir: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.save_template(vm, dir)
    }
    fn create_from_template(&self, id: RStr<'_>, t: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.create_from_template(id, t)
    }
    fn hotplug(&self, vm: RSlice<'_, u8>, request: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.hotplug(vm, request)
    }
    fn agent_endpoint(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError> {
        self.0.inner.agent_endpoint(vm)
    }
    fn vm_status(&self, vm: RSlice<'_, u8>) -> RResult<RString, PluginError> {
        self.0.inner.vm_status(vm)
    }
    fn list_vms(&self) -> RResult<RVec<ListedVm>, PluginError> {
        self.0.inner.list_vms()
    }
    fn adopt_vm(&self, vm: RSlice<'_, u8>, sandbox_id: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.adopt_vm(vm, sandbox_id)
    }
    fn create_vm_from_template(&self, id: RStr<'_>, t: RSlice<'_, u8>, config: RSlice<'_, u8>) -> RResult<RVec<u8>, PluginError> {
        self.0.inner.create_vm_from_template(id, t, config)
    }
}

/// The host's view of a hypervisor plugin instance, in plain Rust types. Every call blocks:
/// async hosts call it from a blocking thread.
pub struct HypervisorHandle {
    inner: HypervisorBox,
    plugin: String,
}

impl std::fmt::Debug for HypervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HypervisorHandle").field("plugin", &self.plugin).finish()
    }
}

impl HypervisorHandle {
    /// Wraps a hypervisor trait object that came from the plugin named `plugin`.
    pub fn new(inner: HypervisorBox, plugin: impl Into<String>) -> Self {
        Self { inner, plugin: plugin.into() }
    }

    /// The name of the plugin behind this handle.
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The raw trait object (what factory plugins receive).
    pub fn raw(&self) -> &HypervisorBox {
        &self.inner
    }

    /// A new trait object that forwards every call to this handle's (a trait object cannot be
    /// cloned; this is how a host lends its hypervisor to a factory for good).
    pub fn share(self: &std::sync::Arc<Self>) -> HypervisorBox {
        Hypervisor_TO::from_ptr(RArc::new(Shared(self.clone())), abi_stable::sabi_trait::TD_Opaque)
    }

    fn span(&self, op: &'static str) -> tracing::span::EnteredSpan {
        tracing::debug_span!("plugin", plugin = %self.plugin, op).entered()
    }

    /// See [`Hypervisor::create_vm`].
    pub fn create_vm(&self, sandbox_id: &str, config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        use crate::payload::Payload;
        let _span = self.span("create_vm");
        let bytes = config.encode();
        Ok(self.inner.create_vm(sandbox_id.into(), bytes.as_slice().into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::start_vm`].
    pub fn start_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("start_vm");
        Ok(self.inner.start_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::stop_vm`].
    pub fn stop_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("stop_vm");
        Ok(self.inner.stop_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::pause_vm`].
    pub fn pause_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("pause_vm");
        Ok(self.inner.pause_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::resume_vm`].
    pub fn resume_vm(&self, vm: &[u8]) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("resume_vm");
        Ok(self.inner.resume_vm(vm.into()).into_result()?.into_vec())
    }

    /// See [`Hypervisor::agent_endpoint`].
    pub fn agent_endpoint(&self, vm: &[u8]) -> Result<String, PluginError> {
        let _span = self.span("agent_endpoint");
        Ok(self.inner.agent_endpoint(vm.into()).into_result()?.into_string())
    }

    /// See [`Hypervisor::vm_status`].
    pub fn vm_status(&self, vm: &[u8]) -> Result<String, PluginError> {
        let _span = self.span("vm_status");
        Ok(self.inner.vm_status(vm.into()).into_result()?.into_string())
    }

    /// See [`HypervisorPlugin::list_vms`]: `(sandbox id, state blob)` of every VM the plugin
    /// finds under its run directory.
    pub fn list_vms(&self) -> Result<Vec<(String, Vec<u8>)>, PluginError> {
        let _span = self.span("list_vms");
        let vms = self.inner.list_vms().into_result()?;
        Ok(vms.into_iter().map(|v| (v.sandbox_id.into_string(), v.vm.into_vec())).collect())
    }

    /// See [`HypervisorPlugin::adopt_vm`].
    pub fn adopt_vm(&self, vm: &[u8], sandbox_id: &str) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("adopt_vm");
        Ok(self.inner.adopt_vm(vm.into(), sandbox_id.into()).into_result()?.into_vec())
    }

    /// See [`HypervisorPlugin::save_template`].
    pub fn save_template(&self, vm: &[u8], dir: &str) -> Result<Vec<u8>, PluginError> {
        let _span = self.span("save_template");
        Ok(self.inner.save_template(vm.into(), dir.into()).into_result()?.into_vec())
    }

    /// See [`HypervisorPlugin::create_from_template`].
    pub fn create_from_template(&self, sandbox_id: &str, template: &[u8], config: &HypervisorConfig) -> Result<Vec<u8>, PluginError> {
        use crate::payload::Payload;
        let _span = self.span("create_from_template");
        let bytes = config.encode();
        Ok(self.inner.create_vm_from_template(sandbox_id.into(), template.into(), bytes.as_slice().into()).into_result()?.into_vec())
    }
}
