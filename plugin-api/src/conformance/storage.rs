//! The MetadataStorage conformance kit.
//!
//! Every check works under a fresh key prefix and removes what it wrote, so the kit can run
//! against a store that holds other data.

use super::{CheckResult, Report};
use crate::error::ErrorKind;
use crate::storage::{StorageHandle, MAX_KEY_LEN};
use abi_stable::std_types::RResult;
use std::time::{SystemTime, UNIX_EPOCH};

type Check = fn(&StorageHandle, &str) -> Result<(), String>;

const CHECKS: &[(&str, Check)] = &[
    ("missing key loads as None", missing_key),
    ("save then load round-trips", round_trip),
    ("save replaces the previous value", overwrite),
    ("an empty value is stored and differs from a missing key", empty_value),
    ("delete removes, and deleting a missing key succeeds", delete_idempotent),
    ("list returns exactly the keys under a prefix, sorted", list_prefix),
    ("keys with separators, dots and other bytes stay distinct", tricky_keys),
    ("a key of the maximum length works", longest_key),
    ("invalid keys are rejected by the plugin itself", invalid_keys),
    ("a 1 MiB binary value round-trips", large_value),
    ("a batch applies its saves and deletes", batch),
    ("concurrent saves from several threads all land", concurrent),
];

/// Runs every check against `storage`.
pub fn run(storage: &StorageHandle) -> Report {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let base = format!("conformance-{}-{stamp}", std::process::id());
    let checks = CHECKS
        .iter()
        .enumerate()
        .map(|(i, (name, check))| {
            let prefix = format!("{base}/{i}/");
            let outcome = check(storage, &prefix);
            let cleanup = cleanup(storage, &prefix);
            CheckResult { name, outcome: outcome.and(cleanup) }
        })
        .collect();
    Report { checks }
}

fn cleanup(s: &StorageHandle, prefix: &str) -> Result<(), String> {
    for key in s.list(prefix).map_err(|e| format!("cleanup list: {e}"))? {
        s.delete(&key).map_err(|e| format!("cleanup delete {key:?}: {e}"))?;
    }
    Ok(())
}

fn expect_value(s: &StorageHandle, key: &str, want: Option<&[u8]>) -> Result<(), String> {
    let got = s.load(key).map_err(|e| format!("load {key:?}: {e}"))?;
    if got.as_deref() != want {
        return Err(format!(
            "load {key:?}: got {}, want {}",
            describe(got.as_deref()),
            describe(want)
        ));
    }
    Ok(())
}

fn describe(v: Option<&[u8]>) -> String {
    match v {
        None => "None".to_owned(),
        Some(v) if v.len() <= 32 => format!("{:?}", String::from_utf8_lossy(v)),
        Some(v) => format!("{} bytes", v.len()),
    }
}

fn save(s: &StorageHandle, key: &str, value: &[u8]) -> Result<(), String> {
    s.save(key, value).map_err(|e| format!("save {key:?}: {e}"))
}

fn missing_key(s: &StorageHandle, p: &str) -> Result<(), String> {
    expect_value(s, &format!("{p}never-saved"), None)
}

fn round_trip(s: &StorageHandle, p: &str) -> Result<(), String> {
    let key = format!("{p}sandbox/config");
    save(s, &key, b"{\"vcpus\":2}")?;
    expect_value(s, &key, Some(b"{\"vcpus\":2}"))
}

fn overwrite(s: &StorageHandle, p: &str) -> Result<(), String> {
    let key = format!("{p}state");
    save(s, &key, b"a much longer first value")?;
    save(s, &key, b"short")?;
    expect_value(s, &key, Some(b"short"))
}

fn empty_value(s: &StorageHandle, p: &str) -> Result<(), String> {
    let key = format!("{p}empty");
    save(s, &key, b"")?;
    expect_value(s, &key, Some(b""))
}

fn delete_idempotent(s: &StorageHandle, p: &str) -> Result<(), String> {
    let key = format!("{p}doomed");
    save(s, &key, b"x")?;
    s.delete(&key).map_err(|e| format!("delete: {e}"))?;
    expect_value(s, &key, None)?;
    s.delete(&key).map_err(|e| format!("second delete of the same key: {e}"))?;
    s.delete(&format!("{p}never-existed")).map_err(|e| format!("delete of a missing key: {e}"))
}

fn list_prefix(s: &StorageHandle, p: &str) -> Result<(), String> {
    let wanted = [format!("{p}sb/a"), format!("{p}sb/b/c"), format!("{p}sb/c")];
    for key in wanted.iter().rev() {
        save(s, key, b"1")?;
    }
    save(s, &format!("{p}sbx"), b"not under sb/")?;
    save(s, &format!("{p}other"), b"1")?;
    let got = s.list(&format!("{p}sb/")).map_err(|e| format!("list: {e}"))?;
    if got != wanted {
        return Err(format!("list {p:?}sb/: got {got:?}, want {wanted:?}"));
    }
    let all = s.list(p).map_err(|e| format!("list: {e}"))?;
    if all.len() != 5 {
        return Err(format!("list {p:?}: got {} keys, want 5: {all:?}", all.len()));
    }
    Ok(())
}

fn tricky_keys(s: &StorageHandle, p: &str) -> Result<(), String> {
    let suffixes = [
        "a/b", "a%2Fb", "a_2Fb", "../escape", "..", ".", "./x", "/absolute", "//double",
        "back\\slash", "trailing/", "Case", "case", "sp ace", "ünïcødé ✓", "tab\tnew\nline",
        ".hidden", "~tilde", "%", "%%25",
    ];
    let keys: Vec<String> = suffixes.iter().map(|x| format!("{p}{x}")).collect();
    for (i, key) in keys.iter().enumerate() {
        save(s, key, format!("value {i}").as_bytes())?;
    }
    for (i, key) in keys.iter().enumerate() {
        expect_value(s, key, Some(format!("value {i}").as_bytes()))?;
    }
    let mut want = keys.clone();
    want.sort();
    let got = s.list(p).map_err(|e| format!("list: {e}"))?;
    if got != want {
        return Err(format!("list gave {got:?}, want {want:?}"));
    }
    Ok(())
}

fn longest_key(s: &StorageHandle, p: &str) -> Result<(), String> {
    let key = format!("{p}{}", "/..%".repeat(MAX_KEY_LEN)).chars().take(MAX_KEY_LEN).collect::<String>();
    save(s, &key, b"long")?;
    expect_value(s, &key, Some(b"long"))
}

fn invalid_keys(s: &StorageHandle, p: &str) -> Result<(), String> {
    let raw = s.raw();
    let too_long = "k".repeat(MAX_KEY_LEN + 1);
    let nul = format!("{p}nul\0byte");
    for key in ["", nul.as_str(), too_long.as_str()] {
        match raw.save(key.into(), b"x".as_slice().into()) {
            RResult::RErr(e) if e.kind == ErrorKind::INVALID_INPUT => {}
            RResult::RErr(e) => return Err(format!("save {key:?}: want invalid input, got {e}")),
            RResult::ROk(()) => return Err(format!("save {key:?} succeeded, want invalid input")),
        }
        if let RResult::ROk(_) = raw.load(key.into()) {
            return Err(format!("load {key:?} succeeded, want invalid input"));
        }
    }
    Ok(())
}

fn large_value(s: &StorageHandle, p: &str) -> Result<(), String> {
    let key = format!("{p}big");
    let value: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    save(s, &key, &value)?;
    expect_value(s, &key, Some(&value))
}

fn batch(s: &StorageHandle, p: &str) -> Result<(), String> {
    let (a, b, c) = (format!("{p}a"), format!("{p}b"), format!("{p}c"));
    save(s, &c, b"old")?;
    s.save_batch(&[(&a, Some(b"1")), (&b, Some(b"")), (&c, None)])
        .map_err(|e| format!("save_batch: {e}"))?;
    expect_value(s, &a, Some(b"1"))?;
    expect_value(s, &b, Some(b""))?;
    expect_value(s, &c, None)
}

fn concurrent(s: &StorageHandle, p: &str) -> Result<(), String> {
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || -> Result<(), String> {
                    for i in 0..25 {
                        save(s, &format!("{p}t{t}/k{i:02}"), format!("{t}-{i}").as_bytes())?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().map_err(|_| "a worker panicked".to_owned())?)
    })?;
    let keys = s.list(p).map_err(|e| format!("list: {e}"))?;
    if keys.len() != 100 {
        return Err(format!("{} keys after 100 concurrent saves", keys.len()));
    }
    expect_value(s, &format!("{p}t3/k24"), Some(b"3-24"))
}
