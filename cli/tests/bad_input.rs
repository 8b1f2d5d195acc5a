//! `sandboxctl` with input a user gets wrong, without a VM: every command on a sandbox that
//! does not exist, ids that are not ids, bad files and bad values. Each must fail with exit
//! status 1 (2 for a usage error), one line that names what was wrong, no panic or backtrace,
//! and leave the store and the state directory as they were.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn sandboxctl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandboxctl"))
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("running sandboxctl")
}

/// A runtime config on the QEMU plugin whose kernel does not exist: nothing here boots.
fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[storage]\nplugin = 'fs'\npath = 'store'\n[hypervisor]\nplugin = 'qemu'\nkernel = 'no-such-vmlinuz'\nrun_dir = 'vms'\n\
         [runtime]\nstate_dir = 'state'\n",
    )
    .expect("config");
    (dir, config)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            out.push(path.strip_prefix(root).expect("under root").display().to_string());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Runs `args`, expecting failure with `code` and one line on stderr containing every one of
/// `needles`; checks that no file appeared or went away under `dir`.
fn refused(dir: &Path, config: &Path, args: &[&str], code: i32, needles: &[&str]) {
    let before = files(dir);
    let out = sandboxctl(config, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "sandboxctl {args:?}: {err}");
    assert!(out.stdout.is_empty(), "sandboxctl {args:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(!err.contains("panicked") && !err.contains("backtrace") && !err.contains("RUST_BACKTRACE"), "sandboxctl {args:?}: {err}");
    if code == 1 {
        assert_eq!(err.lines().count(), 1, "sandboxctl {args:?}: one line: {err}");
        assert!(err.starts_with("error: "), "sandboxctl {args:?}: {err}");
    }
    for n in needles {
        assert!(err.contains(n), "sandboxctl {args:?}: {n:?} not in {err}");
    }
    assert_eq!(files(dir), before, "sandboxctl {args:?} changed the files");
}

#[test]
fn every_command_on_an_unknown_sandbox() {
    let (dir, config) = setup();
    // Make the store and state directories exist, as after a first use.
    assert!(sandboxctl(&config, &["list"]).status.success());
    assert!(!sandboxctl(&config, &["status", "first-use"]).status.success());
    let id = "nosuch";
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", id],
        vec!["start", id],
        vec!["stop", id],
        vec!["stop", "--force", id],
        vec!["delete", id],
        vec!["pause", id],
        vec!["resume", id],
        vec!["console", id],
        vec!["container", "create", id, "c1", "--", "true"],
        vec!["container", "start", id, "c1"],
        vec!["container", "exec", id, "c1", "--", "true"],
        vec!["container", "attach", id, "c1"],
        vec!["container", "kill", id, "c1"],
        vec!["container", "ps", id, "c1"],
        vec!["container", "stats", id, "c1"],
        vec!["container", "status", id, "c1"],
        vec!["container", "pause", id, "c1"],
        vec!["container", "resume", id, "c1"],
        vec!["container", "update", id, "c1", "--resources", "{}"],
        vec!["container", "stop", id, "c1"],
        vec!["container", "delete", id, "c1"],
    ];
    for args in &commands {
        refused(dir.path(), &config, args, 1, &["no sandbox nosuch"]);
    }
}

#[test]
fn ids_that_are_not_ids_touch_no_file() {
    let (dir, config) = setup();
    assert!(sandboxctl(&config, &["list"]).status.success());
    assert!(!sandboxctl(&config, &["status", "first-use"]).status.success());
    for id in ["../escape", "a/b", ".hidden", "-dash", "x".repeat(65).as_str(), "sp ace"] {
        for cmd in ["status", "delete", "stop"] {
            refused(dir.path(), &config, &[cmd, "--", id], 1, &["invalid sandbox id", "must be 1 to 64 characters"]);
        }
    }
    assert!(!dir.path().join("escape.lock").exists());
}

#[test]
fn bad_files_and_values_are_named() {
    let (dir, config) = setup();
    assert!(sandboxctl(&config, &["list"]).status.success());
    let d = dir.path();
    let file = |name: &str| d.join(name).display().to_string();
    refused(d, &config, &["create", &file("no-such-sandbox.toml")], 1, &["no-such-sandbox.toml", "cannot be read"]);

    std::fs::write(d.join("extra.toml"), "id = 's1'\ncolour = 'blue'\n").expect("file");
    refused(d, &config, &["create", &file("extra.toml")], 1, &["extra.toml", "line 2, column 1", "unknown field `colour`"]);

    std::fs::write(d.join("extra.json"), "{\"id\": \"s1\",\n \"containers\": [{\"id\": \"c\", \"rootfs\": {\"disk\": \"r\"}, \"sizzle\": 1}]}")
        .expect("file");
    refused(d, &config, &["create", &file("extra.json")], 1, &["extra.json", "line 2", "unknown field `sizzle`"]);

    std::fs::write(d.join("nodisk.toml"), "id = 's1'\n[[disks]]\nname = 'rootfs'\npath = 'missing.ext4'\n").expect("file");
    refused(d, &config, &["create", &file("nodisk.toml")], 1, &["disks[0].path", "missing.ext4", "is not a file"]);

    std::fs::write(d.join("ok.toml"), "id = 's1'\n").expect("file");
    refused(d, &config, &["create", &file("ok.toml")], 1, &["hypervisor.kernel", "no-such-vmlinuz"]);

    refused(d, &config, &["container", "kill", "--signal", "NOPE", "s1", "c1"], 1, &["NOPE"]);
    refused(d, &config, &["container", "update", "s1", "c1", "--resources", "{not json"], 1, &["--resources"]);
    refused(d, &config, &["--output", "yaml", "list"], 2, &["yaml"]);
    refused(d, &config, &["frobnicate"], 2, &["frobnicate"]);
}

#[test]
fn a_bad_runtime_config_is_named_on_one_line() {
    let (dir, _config) = setup();
    let d = dir.path();
    let missing = d.join("missing.toml");
    refused(d, &missing, &["list"], 1, &["missing.toml", "cannot read config file"]);
    let bad = d.join("bad.toml");
    std::fs::write(&bad, "[storage]\nplugin = 'fs'\npath = 'store'\n[runtime]\nstate_dir = 'state'\nboot_timeout = 3\n").expect("file");
    refused(d, &bad, &["list"], 1, &["bad.toml", "line 6, column 1", "unknown field `boot_timeout`"]);
    std::fs::write(&bad, "[storage]\nplugin = 'fs'\npath = 'store'\n[hypervisor]\nplugin = 'qemu'\nkernel = 'k'\naccelerator = 'kvm'\n")
        .expect("file");
    refused(d, &bad, &["list"], 1, &["bad.toml, table [hypervisor]", "accelerator"]);
    std::fs::write(&bad, "[storage\nplugin = 'fs'\n").expect("file");
    refused(d, &bad, &["list"], 1, &["bad.toml", "line 1"]);
    // A [factory] table is checked by every command, though the factory starts only with a VM.
    let factory = |table: &str| format!("[storage]\nplugin = 'fs'\npath = 'store'\n[hypervisor]\nplugin = 'qemu'\nkernel = 'k'\n[factory]\n{table}");
    std::fs::write(&bad, factory("plugin = 'cache'\nsize = 1\nsise = 2\n")).expect("file");
    refused(d, &bad, &["list"], 1, &["bad.toml, table [factory]", "unknown field `sise`"]);
    std::fs::write(&bad, factory("plugin = 'cache'\nsize = 0\n")).expect("file");
    refused(d, &bad, &["list"], 1, &["bad.toml, table [factory]", "size = 0: must be 1 to 64"]);
    std::fs::write(&bad, factory("plugin = 'nosuch'\n")).expect("file");
    refused(d, &bad, &["list"], 1, &["bad.toml, table [factory]", "no factory plugin named \"nosuch\"; available: "]);
    std::fs::write(&bad, factory("plugin = 'cache'\nsize = 1\ndisks = [{ name = 'r', path = 'r.img', ro = true }]\n")).expect("file");
    refused(d, &bad, &["list"], 1, &["bad.toml", "unknown field `ro`"]);
}
