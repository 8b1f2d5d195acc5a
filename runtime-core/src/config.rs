//! The runtime configuration file (TOML), in the manner of Kata's `configuration.toml`.
//!
//! ```toml
//! [plugins]
//! dirs = ["/usr/lib/sandbox-runtime/plugins"]  # searched in order; relative to this file
//! static = true                                # also use plugins linked into the binary
//!
//! [storage]
//! plugin = "fs"                                # a storage plugin's name
//! path = "/var/lib/sandbox-runtime/metadata"   # every other key goes to the plugin
//!                                              # (keys named path, *_dir, *_path are paths,
//!                                              # relative to this file)
//! [hypervisor]                                 # optional: only sandboxes need it
//! plugin = "qemu"                              # a hypervisor plugin's name
//! kernel = "/usr/share/sandbox-runtime/vmlinuz"
//! initrd = "/usr/share/sandbox-runtime/initramfs.img"
//! kernel_params = ""                           # appended to the kernel command line
//! vcpus = 1                                    # default for sandboxes that do not say
//! memory_mib = 512
//! accel = "auto"                               # every other key goes to the plugin
//!
//! [factory]                                    # optional: where sandboxes' VMs come from
//! plugin = "cache"                             # a VM factory plugin's name (default `new`:
//!                                              # every VM cold-boots; `template`: clones of
//!                                              # a saved VM; `cache`: a pool of ready VMs)
//! base = "new"                                 # the factory a cache fills its pool with
//!                                              # (`new` or `template`)
//! disks = [{ name = "rootfs", path = "/var/lib/sandbox-runtime/rootfs.img" }]
//!                                              # disks every pooled VM has (read-only)
//! server = "/run/sandbox-runtime/factory.sock" # optional: take VMs from the factory server
//!                                              # (`sandboxctl factory init`) on this socket
//! size = 2                                     # every other key goes to the plugin; a table
//!                                              # named after `base` goes to the base plugin
//!
//! [runtime]
//! state_dir = "/run/sandbox-runtime"           # locks and console logs, per sandbox
//! boot_timeout_s = 120                         # from VM start to the agent answering
//! stop_timeout_s = 0                           # stopping a container: SIGKILL at once (Kata's
//!                                              # rule); N > 0: SIGTERM, N s to exit, then SIGKILL
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Config errors; each names the file and the key.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (the message names the key
    /// and the line).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, on one line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config file {path}: key {key}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The `[plugins]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directories searched for plugin libraries, in order.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Whether plugins linked into the binary are used.
    #[serde(default = "default_true", rename = "static")]
    pub include_static: bool,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self { dirs: Vec::new(), include_static: true }
    }
}

fn default_true() -> bool {
    true
}

/// The `[storage]` table.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageConfig {
    /// The storage plugin's name.
    pub plugin: String,
    /// Everything else in the table: the plugin's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl StorageConfig {
    /// The plugin's settings as the JSON object handed to it.
    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).unwrap_or_default()
    }
}

/// The `[hypervisor]` table.
#[derive(Debug, Clone, Deserialize)]
pub struct HypervisorSection {
    /// The hypervisor plugin's name.
    pub plugin: String,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The guest initramfs (with the agent).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters.
    #[serde(default)]
    pub kernel_params: String,
    /// Default vCPUs per sandbox.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// Default memory per sandbox, MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Everything else in the table: the plugin's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

fn default_vcpus() -> u32 {
    1
}

fn default_memory() -> u64 {
    512
}

impl HypervisorSection {
    /// Checks that `kernel` and `initrd` are files, before a sandbox is created; the error
    /// names the config `file`, the key and the path. (Loading the config does not check them:
    /// commands that need no VM work before the guest image is built.)
    pub fn check_files(&self, file: &Path) -> Result<(), ConfigError> {
        let check = |key: &'static str, path: &Path| match std::fs::metadata(path) {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(ConfigError::Invalid { path: file.to_owned(), key, reason: format!("{} is not a file", path.display()) }),
            Err(e) => Err(ConfigError::Invalid { path: file.to_owned(), key, reason: format!("{}: {e}", path.display()) }),
        };
        check("hypervisor.kernel", &self.kernel)?;
        if let Some(initrd) = &self.initrd {
            check("hypervisor.initrd", initrd)?;
        }
        Ok(())
    }

    /// The plugin's settings as the JSON object handed to it.
    pub fn settings_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.settings).unwrap_or_default()
    }
}

/// The `[factory]` table: where sandboxes' VMs come from.
#[derive(Debug, Clone, Deserialize)]
pub struct FactorySection {
    /// The VM factory plugin's name.
    pub plugin: String,
    /// The factory a wrapping factory (`cache`) makes its VMs with; `new` when absent.
    #[serde(default)]
    pub base: Option<String>,
    /// The disks every VM the factory keeps has (a pool's VMs serve only sandboxes with exactly
    /// these disks), as a sandbox's `[[disks]]`.
    #[serde(default, deserialize_with = "crate::sandbox::config::strict_disks")]
    pub disks: Vec<plugin_api::hypervisor::DiskConfig>,
    /// The Unix socket of a factory server (`sandboxctl factory init`): when set, runtimes take
    /// their VMs from the server that holds the factory instead of opening it themselves.
    #[serde(default)]
    pub server: Option<PathBuf>,
    /// Everything else in the table: the plugin's own settings.
    #[serde(flatten)]
    pub settings: toml::Table,
}

impl FactorySection {
    /// The base factory's name: `base`, or `new`.
    pub fn base(&self) -> &str {
        self.base.as_deref().unwrap_or("new")
    }

    /// The factory plugin's settings (without the table named after the base).
    pub fn settings_json(&self) -> serde_json::Value {
        let mut settings = self.settings.clone();
        if matches!(settings.get(self.base()), Some(toml::Value::Table(_))) {
            settings.remove(self.base());
        }
        serde_json::to_value(&settings).unwrap_or_default()
    }

    /// The base plugin's settings: the table named after it (`[factory.new]`), or none.
    pub fn base_settings_json(&self) -> serde_json::Value {
        match self.settings.get(self.base()) {
            Some(v @ toml::Value::Table(_)) => serde_json::to_value(v).unwrap_or_default(),
            _ => serde_json::json!({}),
        }
    }
}

/// The `[runtime]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Per-sandbox locks and console logs.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Seconds from starting a VM to its agent answering.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_s: u64,
    /// Seconds a container gets between SIGTERM and SIGKILL when it is stopped (StopContainer,
    /// StopSandbox, DeleteSandbox). 0, the default, sends SIGKILL to all its processes at
    /// once, as Kata 1.x's container stop does: a shell as PID 1 ignores SIGTERM, so a grace
    /// period would only make it wait.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_s: u64,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/run/sandbox-runtime")
}

fn default_boot_timeout() -> u64 {
    120
}

fn default_stop_timeout() -> u64 {
    0
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self { state_dir: default_state_dir(), boot_timeout_s: default_boot_timeout(), stop_timeout_s: default_stop_timeout() }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `[plugins]`.
    #[serde(default)]
    pub plugins: PluginsConfig,
    /// `[storage]`.
    pub storage: StorageConfig,
    /// `[hypervisor]`: required to run sandboxes.
    #[serde(default)]
    pub hypervisor: Option<HypervisorSection>,
    /// `[factory]`: without it every VM cold-boots (the `new` factory).
    #[serde(default)]
    pub factory: Option<FactorySection>,
    /// `[runtime]`.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// The file this config was read from (for messages; relative paths in it were resolved
    /// against its directory).
    #[serde(skip)]
    pub file: PathBuf,
}

impl RuntimeConfig {
    /// Reads and validates a config file. Relative plugin directories and a relative
    /// `storage.path` are taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is used for messages and relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let mut config: Self =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: crate::parse_error::toml(text, &e) })?;
        let invalid = |key, reason: String| ConfigError::Invalid { path: path.to_owned(), key, reason };
        if config.storage.plugin.trim().is_empty() {
            return Err(invalid("storage.plugin", "is empty; name a storage plugin".into()));
        }
        // Paths are resolved against the file's directory made absolute, so that what a
        // command prints later (status, console logs) does not depend on where it ran.
        config.file = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base = config.file.parent().unwrap_or(Path::new("/")).to_owned();
        for dir in &mut config.plugins.dirs {
            if dir.as_os_str().is_empty() {
                return Err(invalid("plugins.dirs", "holds an empty path".into()));
            }
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        let relative = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(h) = &mut config.hypervisor {
            if h.plugin.trim().is_empty() {
                return Err(invalid("hypervisor.plugin", "is empty; name a hypervisor plugin".into()));
            }
            if h.kernel.as_os_str().is_empty() {
                return Err(invalid("hypervisor.kernel", "is empty; give the guest kernel's path".into()));
            }
            relative(&mut h.kernel);
            if let Some(initrd) = &mut h.initrd {
                relative(initrd);
            }
            if !(1..=crate::sandbox::config::MAX_VCPUS).contains(&h.vcpus) {
                return Err(invalid("hypervisor.vcpus", format!("is {}; it must be 1 to {}", h.vcpus, crate::sandbox::config::MAX_VCPUS)));
            }
            // The floor and ceiling are the hypervisor plugin's (create_vm names them).
            if h.memory_mib == 0 {
                return Err(invalid("hypervisor.memory_mib", crate::sandbox::config::ZERO_MEMORY.into()));
            }
        }
        if let Some(f) = &mut config.factory {
            if config.hypervisor.is_none() {
                return Err(invalid("factory", "needs a [hypervisor] table: a VM factory makes VMs with it".into()));
            }
            if f.plugin.trim().is_empty() {
                return Err(invalid("factory.plugin", "is empty; name a VM factory plugin (new, cache, template)".into()));
            }
            if let Some(base) = f.base.as_ref().filter(|b| b.trim().is_empty() || **b == f.plugin) {
                return Err(invalid("factory.base", format!("is {base:?}; name another VM factory plugin (new, template)")));
            }
            if let Some(server) = &mut f.server {
                relative(server);
                if server.as_os_str().len() > 107 {
                    return Err(invalid("factory.server", format!("{} is longer than a Unix socket path may be (107 bytes)", server.display())));
                }
            }
            for d in &mut f.disks {
                plugin_api::hypervisor::DiskConfig::validate_name(&d.name).map_err(|e| invalid("factory.disks", e.message.to_string()))?;
                relative(&mut d.path);
            }
        }
        relative(&mut config.runtime.state_dir);
        if config.runtime.boot_timeout_s == 0 {
            return Err(invalid("runtime.boot_timeout_s", "is 0; it must be at least 1".into()));
        }
        resolve_plugin_paths(&mut config.storage.settings, "storage", &base).map_err(|(key, reason)| invalid(key, reason))?;
        if let Some(h) = &mut config.hypervisor {
            resolve_plugin_paths(&mut h.settings, "hypervisor", &base).map_err(|(key, reason)| invalid(key, reason))?;
        }
        Ok(config)
    }
}

/// Plugin settings named `path` or ending in `_dir` or `_path` are paths: a relative one is
/// taken relative to the config file's directory. They must be strings.
fn resolve_plugin_paths(settings: &mut toml::Table, table: &'static str, base: &Path) -> Result<(), (&'static str, String)> {
    for (key, value) in settings.iter_mut() {
        if key != "path" && !key.ends_with("_dir") && !key.ends_with("_path") {
            continue;
        }
        let toml::Value::String(p) = value else {
            let key: &'static str = match (table, key.as_str()) {
                ("storage", "path") => "storage.path",
                ("storage", _) => "storage.*_dir/_path",
                (_, "path") => "hypervisor.path",
                _ => "hypervisor.*_dir/_path",
            };
            return Err((key, format!("must be a string, not {}", value.type_str())));
        };
        if Path::new(p.as_str()).is_relative() {
            *p = base.join(p.as_str()).to_string_lossy().into_owned();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuntimeConfig, String> {
        RuntimeConfig::parse(text, Path::new("/etc/rt/config.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn paths_of_a_config_given_by_a_relative_path_are_absolute() {
        let c = RuntimeConfig::parse("[storage]\nplugin = 'fs'\npath = 'meta'\n[runtime]\nstate_dir = 'state'\n", Path::new("rel/config.toml"))
            .expect("config");
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(c.runtime.state_dir, cwd.join("rel/state"));
        assert_eq!(c.storage.settings_json(), serde_json::json!({"path": cwd.join("rel/meta")}));
        assert_eq!(c.file, cwd.join("rel/config.toml"));
    }

    #[test]
    fn a_toml_error_is_one_line_naming_the_file_and_place() {
        let e = RuntimeConfig::parse("[storage]\nplugin = 'fs'\n[runtime]\nstop_timeout = 3\n", Path::new("/etc/rt/config.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config file /etc/rt/config.toml: line 4, column 1 (`stop_timeout = 3`): unknown field `stop_timeout`, expected one of `state_dir`, `boot_timeout_s`, `stop_timeout_s`"
        );
    }

    #[test]
    fn a_full_config_resolves_relative_paths() {
        let c = parse("[plugins]\ndirs = ['plugins', '/abs']\nstatic = false\n[storage]\nplugin = 'fs'\npath = 'meta'\nextra = 3\n")
            .unwrap();
        assert_eq!(c.plugins.dirs, vec![PathBuf::from("/etc/rt/plugins"), PathBuf::from("/abs")]);
        assert!(!c.plugins.include_static);
        assert_eq!(c.storage.settings_json(), serde_json::json!({"path": "/etc/rt/meta", "extra": 3}));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[plugins]\ndirz = []\n[storage]\nplugin = 'fs'\n").unwrap_err();
        assert!(e.contains("dirz") && e.contains("config.toml"), "{e}");
        let e = parse("[plugins]\n").unwrap_err();
        assert!(e.contains("storage"), "{e}");
        let e = parse("[storage]\nplugin = ''\n").unwrap_err();
        assert!(e.contains("storage.plugin"), "{e}");
        let e = parse("[storage]\nplugin = 'fs'\npath = 5\n").unwrap_err();
        assert!(e.contains("storage.path") && e.contains("integer"), "{e}");
        let e = parse("[plugins]\nstatic = 'yes'\n[storage]\nplugin = 'fs'\n").unwrap_err();
        assert!(e.contains("static"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn the_factory_table() {
        let base = "[storage]\nplugin = 'fs'\n[hypervisor]\nplugin = 'qemu'\nkernel = 'k'\n";
        let c = parse(&format!("{base}[factory]\nplugin = 'cache'\nsize = 2\ndisks = [{{ name = 'rootfs', path = 'root.img' }}]\n[factory.new]\n")).unwrap();
        let f = c.factory.expect("factory");
        assert_eq!((f.plugin.as_str(), f.base()), ("cache", "new"));
        assert_eq!(f.disks[0].path, PathBuf::from("/etc/rt/root.img"));
        assert!(f.disks[0].read_only, "pooled disks are read-only by default");
        assert_eq!(f.settings_json(), serde_json::json!({"size": 2}), "the base's table is not the plugin's");
        assert_eq!(f.base_settings_json(), serde_json::json!({}));
        let e = parse("[storage]\nplugin = 'fs'\n[factory]\nplugin = 'new'\n").unwrap_err();
        assert!(e.contains("key factory: needs a [hypervisor] table"), "{e}");
        let e = parse(&format!("{base}[factory]\nplugin = 'cache'\nbase = 'cache'\n")).unwrap_err();
        assert!(e.contains("key factory.base"), "{e}");
        assert!(parse(&format!("{base}[factory]\nplugin = 'new'\n")).is_ok(), "new needs no base");
        let e = parse(&format!("{base}[factory]\nplugin = ''\n")).unwrap_err();
        assert!(e.contains("key factory.plugin"), "{e}");
        let e = parse(&format!("{base}[factory]\nplugin = 'cache'\ndisks = [{{ name = 'a b', path = 'x' }}]\n")).unwrap_err();
        assert!(e.contains("key factory.disks") && e.contains("a b"), "{e}");
        let e = parse(&format!("{base}[factory]\nplugin = 'cache'\ndisks = [{{ name = 'a', path = 'x', size = 1 }}]\n")).unwrap_err();
        assert!(e.contains("size"), "{e}");
    }

    #[test]
    fn hypervisor_and_runtime_tables() {
        let c = parse("[storage]\nplugin = 'fs'\n[hypervisor]\nplugin = 'qemu'\nkernel = 'vmlinuz'\nvcpus = 2\naccel = 'tcg'\n[runtime]\nstate_dir = 'state'\n")
            .unwrap();
        let h = c.hypervisor.expect("hypervisor");
        assert_eq!(h.kernel, PathBuf::from("/etc/rt/vmlinuz"));
        assert_eq!((h.vcpus, h.memory_mib), (2, 512));
        assert_eq!(h.settings_json(), serde_json::json!({"accel": "tcg"}));
        let paths = parse("[storage]\nplugin = 'fs'\n[hypervisor]\nplugin = 'qemu'\nkernel = '/k'\nrun_dir = 'vms'\nqemu = 'qemu-system-x86_64'\n").unwrap();
        assert_eq!(paths.hypervisor.expect("h").settings_json(), serde_json::json!({"run_dir": "/etc/rt/vms", "qemu": "qemu-system-x86_64"}));
        assert_eq!(c.runtime.state_dir, PathBuf::from("/etc/rt/state"));
        assert_eq!(c.runtime.boot_timeout_s, 120);
        let base = "[storage]\nplugin = 'fs'\n[hypervisor]\nplugin = 'qemu'\nkernel = 'k'\n";
        let e = parse(&format!("{base}vcpus = 0\n")).unwrap_err();
        assert!(e.contains("hypervisor.vcpus") && e.contains("is 0"), "{e}");
        let e = parse(&format!("{base}memory_mib = 0\n")).unwrap_err();
        assert!(e.contains("hypervisor.memory_mib") && e.contains("is 0"), "{e}");
        let e = parse("[storage]\nplugin = 'fs'\n[hypervisor]\nplugin = 'qemu'\n").unwrap_err();
        assert!(e.contains("kernel"), "{e}");
        let e = parse("[storage]\nplugin = 'fs'\n[runtime]\nboot_timeout = 3\n").unwrap_err();
        assert!(e.contains("boot_timeout"), "{e}");
        let e = parse("[storage]\nplugin = 'fs'\n[runtime]\nboot_timeout_s = 0\n").unwrap_err();
        assert!(e.contains("runtime.boot_timeout_s"), "{e}");
    }
}
