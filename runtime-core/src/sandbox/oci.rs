//! The OCI runtime spec and process objects sent to the agent, generated in the manner of
//! `runc spec`: the container gets its own pid, ipc, uts and mount namespaces and shares the
//! guest's network, as in Kata.

use super::config::{ContainerConfig, ProcessConfig};
use serde_json::{json, Value};

const CAPS: &[&str] = &["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The OCI `process` object.
pub fn process(p: &ProcessConfig) -> Value {
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    if p.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    json!({
        "terminal": p.terminal,
        "user": { "uid": p.uid, "gid": p.gid },
        "args": p.args,
        "env": env,
        "cwd": p.cwd,
        "capabilities": { "bounding": CAPS, "effective": CAPS, "permitted": CAPS },
        "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
        "noNewPrivileges": true
    })
}

/// The whole spec of a container: its own `oci_spec` if given, else one generated from its
/// process, hostname and resources. The root is writable if the rootfs says so (a private
/// layer over the shared disk), and `/tmp` is a tmpfs either way.
pub fn spec(c: &ContainerConfig) -> Value {
    if let Some(spec) = &c.oci_spec {
        return spec.clone();
    }
    let process = c.process.as_ref().map(process).unwrap_or(Value::Null);
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": { "path": "rootfs", "readonly": !c.rootfs.writable },
        "hostname": c.hostname.clone().unwrap_or_else(|| c.id.clone()),
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
              "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] },
            { "destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"] }
        ],
        "linux": {
            "namespaces": [{ "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if let Some(r) = &c.resources {
        spec["linux"]["resources"] = r.clone();
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::config::RootfsConfig;

    #[test]
    fn generated_spec_carries_the_config() {
        let mut p = ProcessConfig::new(["sh", "-c", "id"]);
        p.terminal = true;
        p.uid = 1000;
        let c = ContainerConfig {
            id: "web".into(),
            rootfs: RootfsConfig::disk("rootfs"),
            process: Some(p),
            hostname: None,
            resources: Some(json!({"pids": {"limit": 10}})),
            oci_spec: None,
        };
        let s = spec(&c);
        assert_eq!(s["hostname"], "web");
        assert_eq!(s["process"]["args"], json!(["sh", "-c", "id"]));
        assert_eq!(s["process"]["user"]["uid"], 1000);
        assert_eq!(s["process"]["env"], json!([DEFAULT_PATH, "TERM=xterm"]));
        assert_eq!(s["linux"]["resources"]["pids"]["limit"], 10);
        let own = ContainerConfig { oci_spec: Some(json!({"process": {"args": ["x"]}})), ..c };
        assert_eq!(spec(&own), json!({"process": {"args": ["x"]}}));
    }
}
