//! A container's cgroup v2: where it is, its statistics, its processes and resource updates.

use agent_protocol::pb;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The cgroup v2 mount.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup directory of a process, from /proc/PID/cgroup.
pub fn of_pid(pid: i32) -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| std::io::Error::other(format!("process {pid} is in no cgroup v2")))?;
    Ok(Path::new(CGROUP_ROOT).join(rel.trim_start_matches('/')))
}

fn keyed(dir: &Path, file: &str) -> HashMap<String, u64> {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn single(dir: &Path, file: &str) -> u64 {
    // "max" (no limit) and a missing file both read as 0.
    std::fs::read_to_string(dir.join(file)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// The container's statistics; `pid` (its init) gives the network namespace.
pub fn stats(dir: &Path, pid: Option<i32>) -> pb::ContainerStats {
    let cpu = keyed(dir, "cpu.stat");
    let mem = keyed(dir, "memory.stat");
    let mut io = pb::IoStats::default();
    for line in std::fs::read_to_string(dir.join("io.stat")).unwrap_or_default().lines() {
        for field in line.split_whitespace().skip(1) {
            let Some((k, v)) = field.split_once('=') else { continue };
            let v: u64 = v.parse().unwrap_or(0);
            match k {
                "rbytes" => io.read_bytes += v,
                "wbytes" => io.write_bytes += v,
                "rios" => io.read_ops += v,
                "wios" => io.write_ops += v,
                _ => {}
            }
        }
    }
    let get = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    pb::ContainerStats {
        cpu: Some(pb::CpuStats {
            usage_usec: get(&cpu, "usage_usec"),
            user_usec: get(&cpu, "user_usec"),
            system_usec: get(&cpu, "system_usec"),
            nr_throttled: get(&cpu, "nr_throttled"),
            throttled_usec: get(&cpu, "throttled_usec"),
        }),
        memory: Some(pb::MemoryStats {
            usage_bytes: single(dir, "memory.current"),
            limit_bytes: single(dir, "memory.max"),
            anon_bytes: get(&mem, "anon"),
            file_bytes: get(&mem, "file"),
        }),
        pids: Some(pb::PidsStats { current: single(dir, "pids.current"), limit: single(dir, "pids.max") }),
        io: Some(io),
        network: pid.map(network).unwrap_or_default(),
    }
}

/// Per-interface counters from the process's network namespace (/proc/PID/net/dev).
fn network(pid: i32) -> Vec<pb::NetworkStats> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            (v.len() >= 10).then(|| pb::NetworkStats {
                interface: name.trim().to_owned(),
                rx_bytes: v[0],
                rx_packets: v[1],
                tx_bytes: v[8],
                tx_packets: v[9],
            })
        })
        .collect()
}

/// The processes in the cgroup, with their command lines.
pub fn processes(dir: &Path) -> std::io::Result<pb::ProcessList> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    let processes = procs
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let command = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>().join(" ");
            pb::ProcessInfo { pid, command }
        })
        .collect();
    Ok(pb::ProcessList { processes })
}

/// Applies OCI `linux.resources` to the cgroup through libcgroups.
pub fn update(dir: &Path, resources: &oci_spec::runtime::LinuxResources) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use libcgroups::common::{CgroupManager, ControllerOpt};
    let rel = dir.strip_prefix(CGROUP_ROOT).map_err(|_| format!("{} is not under {CGROUP_ROOT}", dir.display()))?;
    let manager = libcgroups::v2::manager::Manager::new(CGROUP_ROOT.into(), rel.to_path_buf())?;
    let opt = ControllerOpt { resources, disable_oom_killer: false, oom_score_adj: None, freezer_state: None };
    manager.apply(&opt)?;
    Ok(())
}
