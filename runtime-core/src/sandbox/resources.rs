//! OCI `linux.resources` (runtime-spec `config-linux.md`, "Control groups") as a caller gives
//! it to CreateContainer or UpdateContainer: every key must be one the spec defines, so a typo
//! (`memroy`) is refused with its path instead of silently setting no limit.

use serde_json::Value;

/// What is wrong, and where: `path` is relative to the resources object (`pids.max`; empty
/// for the object itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Where, dotted (`[]` for an element of an array).
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// The keys of each object of `linux.resources`, by path (`[]` is an element of an array).
const KEYS: &[(&str, &[&str])] = &[
    ("", &["devices", "memory", "cpu", "pids", "blockIO", "hugepageLimits", "network", "rdma", "unified"]),
    ("devices[]", &["allow", "type", "major", "minor", "access"]),
    (
        "memory",
        &["limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness", "disableOOMKiller", "useHierarchy", "checkBeforeUpdate"],
    ),
    ("cpu", &["shares", "quota", "burst", "period", "realtimeRuntime", "realtimePeriod", "cpus", "mems", "idle"]),
    ("pids", &["limit"]),
    (
        "blockIO",
        &[
            "weight",
            "leafWeight",
            "weightDevice",
            "throttleReadBpsDevice",
            "throttleWriteBpsDevice",
            "throttleReadIOPSDevice",
            "throttleWriteIOPSDevice",
        ],
    ),
    ("blockIO.weightDevice[]", &["major", "minor", "weight", "leafWeight"]),
    ("blockIO.throttleReadBpsDevice[]", &["major", "minor", "rate"]),
    ("blockIO.throttleWriteBpsDevice[]", &["major", "minor", "rate"]),
    ("blockIO.throttleReadIOPSDevice[]", &["major", "minor", "rate"]),
    ("blockIO.throttleWriteIOPSDevice[]", &["major", "minor", "rate"]),
    ("hugepageLimits[]", &["pageSize", "limit"]),
    ("network", &["classID", "priorities"]),
    ("network.priorities[]", &["name", "priority"]),
];

/// Objects whose keys are the caller's to choose (`rdma` devices, `unified` cgroup v2 files).
const FREE: &[&str] = &["rdma", "unified"];

/// Checks `resources`: an object whose keys, at every level the spec defines, are the spec's.
pub fn check(resources: &Value) -> Result<(), Refused> {
    walk("", resources)
}

fn walk(path: &str, value: &Value) -> Result<(), Refused> {
    match value {
        Value::Object(map) => {
            if FREE.contains(&path) {
                return Ok(());
            }
            let Some((_, keys)) = KEYS.iter().find(|(p, _)| *p == path) else { return Ok(()) };
            for (key, inner) in map {
                if !keys.contains(&key.as_str()) {
                    return Err(Refused {
                        path: join(path, key),
                        reason: format!("is not a key of OCI linux.resources{} (known: {})", at(path), keys.join(", ")),
                    });
                }
                walk(&join(path, key), inner)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|item| walk(&format!("{path}[]"), item)),
        _ if path.is_empty() => Err(Refused { path: String::new(), reason: "must be an object (OCI linux.resources)".into() }),
        _ => Ok(()),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(".{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_spec_keys_pass() {
        let r = json!({
            "memory": {"limit": 64 << 20, "swap": 0}, "cpu": {"shares": 512, "cpus": "0"}, "pids": {"limit": 20},
            "devices": [{"allow": false, "access": "rwm"}], "blockIO": {"weight": 100, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
            "hugepageLimits": [{"pageSize": "2MB", "limit": 0}], "unified": {"memory.high": "max"}, "rdma": {"mlx5_0": {"hcaHandles": 3}}
        });
        assert_eq!(check(&r), Ok(()));
    }

    #[test]
    fn a_typo_is_named_with_its_path() {
        let e = check(&json!({"memroy": {"limit": 1}})).unwrap_err();
        assert_eq!(e.path, "memroy");
        assert!(e.reason.starts_with("is not a key of OCI linux.resources (known: devices, memory"), "{}", e.reason);
        let e = check(&json!({"pids": {"max": 20}})).unwrap_err();
        assert_eq!((e.path.as_str(), e.reason.as_str()), ("pids.max", "is not a key of OCI linux.resources.pids (known: limit)"));
        let e = check(&json!({"devices": [{"allow": true}, {"alow": true}]})).unwrap_err();
        assert_eq!(e.path, "devices[].alow");
        assert!(check(&json!(3)).unwrap_err().reason.contains("must be an object"));
    }
}
