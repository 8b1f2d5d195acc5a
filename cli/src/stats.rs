//! `sandboxctl container stats`: a container's cgroup statistics as a table or JSON.

use crate::output::Table;
use runtime_core::sandbox::ContainerStats;
use serde_json::{json, Value};

/// One row per resource: what it uses, its limit, and the details.
pub fn table(s: &ContainerStats) -> Table {
    let mut t = Table::new(&["RESOURCE", "USAGE", "LIMIT", "DETAILS"]);
    let limit = |l: u64| if l == 0 { "none".to_owned() } else { l.to_string() };
    if let Some(cpu) = &s.cpu {
        t.row(vec![
            "cpu".into(),
            format!("{} us", cpu.usage_usec),
            String::new(),
            format!("user {} us, system {} us, throttled {} times ({} us)", cpu.user_usec, cpu.system_usec, cpu.nr_throttled, cpu.throttled_usec),
        ]);
    }
    if let Some(m) = &s.memory {
        t.row(vec!["memory".into(), format!("{} B", m.usage_bytes), limit(m.limit_bytes), format!("anon {} B, file {} B", m.anon_bytes, m.file_bytes)]);
    }
    if let Some(p) = &s.pids {
        t.row(vec!["pids".into(), p.current.to_string(), limit(p.limit), String::new()]);
    }
    if let Some(io) = &s.io {
        t.row(vec![
            "io".into(),
            format!("{} B read, {} B written", io.read_bytes, io.write_bytes),
            String::new(),
            format!("{} reads, {} writes", io.read_ops, io.write_ops),
        ]);
    }
    for n in &s.network {
        t.row(vec![
            format!("net {}", n.interface),
            format!("rx {} B, tx {} B", n.rx_bytes, n.tx_bytes),
            String::new(),
            format!("rx {} packets, tx {} packets", n.rx_packets, n.tx_packets),
        ]);
    }
    t
}

/// The statistics as a JSON object; a limit of 0 (none) is `null`.
pub fn json(s: &ContainerStats) -> Value {
    let limit = |l: u64| if l == 0 { Value::Null } else { json!(l) };
    json!({
        "cpu": s.cpu.as_ref().map(|c| json!({"usage_usec": c.usage_usec, "user_usec": c.user_usec, "system_usec": c.system_usec,
            "nr_throttled": c.nr_throttled, "throttled_usec": c.throttled_usec})),
        "memory": s.memory.as_ref().map(|m| json!({"usage_bytes": m.usage_bytes, "limit_bytes": limit(m.limit_bytes),
            "anon_bytes": m.anon_bytes, "file_bytes": m.file_bytes})),
        "pids": s.pids.as_ref().map(|p| json!({"current": p.current, "limit": limit(p.limit)})),
        "io": s.io.as_ref().map(|io| json!({"read_bytes": io.read_bytes, "write_bytes": io.write_bytes,
            "read_ops": io.read_ops, "write_ops": io.write_ops})),
        "network": s.network.iter().map(|n| json!({"interface": n.interface, "rx_bytes": n.rx_bytes, "rx_packets": n.rx_packets,
            "tx_bytes": n.tx_bytes, "tx_packets": n.tx_packets})).collect::<Vec<_>>(),
    })
}
