//! `sandboxctl` end to end (tier 3, QEMU/TCG): each command is a new process, so this is also
//! the multi-process path an operator takes: create, list, start, exec (streamed output, exit
//! status passed on, an interactive terminal), ps, status, stop (Kata's SIGKILL), delete, and
//! errors.

use integration_tests::qemu::image_or_skip;
use integration_tests::sandbox::write_config;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sandboxctl(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandboxctl")).arg("--config").arg(config).args(args).stdin(Stdio::null()).output().expect("running sandboxctl")
}

/// Runs `args` expecting exit status 1 and one line on stderr naming each of `needles`, with
/// no panic, and the sandbox's record unchanged.
fn refused(config: &Path, args: &[&str], needles: &[&str]) {
    let record = || sandboxctl(config, &["store", "get", "sandbox/cli"]).stdout;
    let before = record();
    let out = sandboxctl(config, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "sandboxctl {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "sandboxctl {args:?}: one line: {err}");
    assert!(!err.contains("panicked"), "sandboxctl {args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "sandboxctl {args:?}: {n:?} not in {err}");
    }
    assert_eq!(record(), before, "sandboxctl {args:?} changed the record");
}

/// Runs each `container` subcommand of `cmds`, expecting the sandbox's `state` to refuse it
/// with its action named.
fn container_commands_refused(config: &Path, state: &str, cmds: &[(&[&str], &str)]) {
    for (cmd, action) in cmds {
        let args: Vec<&str> = std::iter::once("container").chain(cmd.iter().copied()).collect();
        refused(config, &args, &[&format!("cannot {action} sandbox cli: it is {state}")]);
    }
}

fn ok(config: &Path, args: &[&str]) -> String {
    let out = sandboxctl(config, args);
    assert!(out.status.success(), "sandboxctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn operator_session() {
    let Some(image) = image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let config = write_config(dir.path(), &image);
    // Kata's stop rule, the default: SIGKILL at once, even for a process that handles SIGTERM.
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("stop_timeout_s = 5", "stop_timeout_s = 0")).expect("config");
    let sandbox = dir.path().join("sandbox.toml");
    std::fs::write(
        &sandbox,
        format!(
            "id = 'cli'\n[[disks]]\nname = 'rootfs'\npath = {:?}\n[[containers]]\nid = 'c1'\nrootfs = {{ disk = 'rootfs' }}\n\
             process = {{ args = ['sh', '-c', 'trap \"exit 0\" TERM; while :; do sleep 0.1; done'] }}\n",
            image.rootfs
        ),
    )
    .expect("sandbox config");

    assert_eq!(ok(&config, &["create", sandbox.to_str().expect("utf-8")]).trim(), "cli");
    let list = ok(&config, &["list"]);
    assert!(list.lines().any(|l| l.starts_with("cli ") && l.contains("ready") && l.contains("c1:ready")), "{list}");
    ok(&config, &["start", "cli"]);
    assert!(ok(&config, &["list"]).contains("c1:running"));

    let out = ok(&config, &["container", "exec", "cli", "c1", "--", "sh", "-c", "echo from-exec; echo to-stderr >&2"]);
    assert_eq!(out, "from-exec\n");
    let failed = sandboxctl(&config, &["container", "exec", "cli", "c1", "--", "sh", "-c", "exit 7"]);
    assert_eq!(failed.status.code(), Some(7), "the exit status is passed on");
    let ps = ok(&config, &["container", "ps", "cli", "c1"]);
    assert!(ps.contains("sleep") || ps.contains("sh"), "{ps}");
    assert_eq!(ps.lines().next().map(|l| l.split_whitespace().collect::<Vec<_>>()), Some(vec!["PID", "COMMAND"]), "{ps}");
    let ps: serde_json::Value = serde_json::from_str(&ok(&config, &["container", "ps", "--json", "cli", "c1"])).expect("ps --json");
    let has = |p: &serde_json::Value| p["pid"].as_i64().is_some() && p["command"].as_str().is_some_and(|c| c.contains("sh") || c.contains("sleep"));
    assert!(ps.as_array().is_some_and(|l| l.iter().any(has)), "the container's processes: {ps}");
    let stats: serde_json::Value = serde_json::from_str(&ok(&config, &["-o", "json", "container", "stats", "cli", "c1"])).expect("stats JSON");
    assert!(stats["pids"]["current"].as_u64().is_some_and(|n| n >= 1), "{stats}");
    let list: serde_json::Value = serde_json::from_str(&ok(&config, &["list", "--json"])).expect("list --json");
    assert_eq!(list[0]["id"], "cli");
    assert_eq!(list[0]["containers"][0]["state"], "running");
    let status: serde_json::Value = serde_json::from_str(&ok(&config, &["status", "cli"])).expect("status is JSON");
    assert_eq!(status["state"], "running");
    assert_eq!(status["containers"][0]["processes"].as_array().map(Vec::len), Some(2));

    // An interactive terminal, through script(1) for a pty on our side.
    let cmd = format!(
        "{} --config {} container exec -i -t cli c1 -- sh",
        env!("CARGO_BIN_EXE_sandboxctl"),
        config.display()
    );
    let mut script = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) (Debian package bsdutils)");
    {
        use std::io::Write;
        let mut stdin = script.stdin.take().expect("stdin");
        stdin.write_all(b"echo tty:$(tty)\nexit 4\n").expect("typing");
    }
    let out = script.wait_with_output().expect("script");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty:/dev/pts/"), "{text}");
    assert_eq!(out.status.code(), Some(4), "{text}");

    // Errors name what was wrong.
    let e = sandboxctl(&config, &["start", "nosuch"]);
    assert_eq!(e.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&e.stderr).contains("no sandbox nosuch"));

    // Every container command with an unknown container, then the wrong states of a running
    // sandbox and a running container.
    for cmd in [
        &["start", "cli", "nope"][..],
        &["exec", "cli", "nope", "--", "true"],
        &["attach", "cli", "nope"],
        &["kill", "cli", "nope"],
        &["ps", "cli", "nope"],
        &["stats", "cli", "nope"],
        &["status", "cli", "nope"],
        &["pause", "cli", "nope"],
        &["resume", "cli", "nope"],
        &["update", "cli", "nope", "--resources", "{}"],
        &["stop", "cli", "nope"],
        &["delete", "cli", "nope"],
    ] {
        let args: Vec<&str> = std::iter::once("container").chain(cmd.iter().copied()).collect();
        refused(&config, &args, &["sandbox cli has no container nope"]);
    }
    refused(&config, &["container", "create", "cli", "c1", "--", "true"], &["container.id", "already a container of sandbox cli"]);
    refused(&config, &["container", "update", "cli", "c1", "--resources", r#"{"pids": {"max": 5}}"#], &["resources.pids.max"]);
    refused(&config, &["start", "cli"], &["cannot start sandbox cli: it is running (allowed when ready or stopped)"]);
    refused(&config, &["resume", "cli"], &["cannot resume sandbox cli: it is running (allowed when paused)"]);
    refused(&config, &["container", "start", "cli", "c1"], &["cannot start container c1: it is running (allowed when ready)"]);
    refused(&config, &["container", "resume", "cli", "c1"], &["cannot resume container c1: it is running (allowed when paused)"]);
    refused(&config, &["container", "delete", "cli", "c1"], &["cannot delete container c1: it is running (allowed when ready or stopped)"]);

    // The wrong states of a paused sandbox; its running container shows as paused.
    ok(&config, &["pause", "cli"]);
    let status: serde_json::Value = serde_json::from_str(&ok(&config, &["status", "cli"])).expect("status is JSON");
    assert_eq!((&status["state"], &status["containers"][0]["state"]), (&serde_json::json!("paused"), &serde_json::json!("paused")), "{status}");
    refused(&config, &["pause", "cli"], &["cannot pause sandbox cli: it is paused (allowed when ready or running)"]);
    refused(&config, &["start", "cli"], &["cannot start sandbox cli: it is paused (allowed when ready or stopped)"]);
    container_commands_refused(
        &config,
        "paused",
        &[
            (&["exec", "cli", "c1", "--", "true"], "enter a container of"),
            (&["kill", "cli", "c1"], "signal a container of"),
            (&["resume", "cli", "c1"], "resume a container of"),
            (&["stop", "cli", "c1"], "stop a container in"),
        ],
    );
    ok(&config, &["resume", "cli"]);
    assert!(ok(&config, &["list"]).contains("c1:running"), "resume runs what the pause froze");

    // Stop kills the containers with SIGKILL (c1 would exit 0 on SIGTERM), then delete.
    ok(&config, &["stop", "cli"]);
    let status: serde_json::Value = serde_json::from_str(&ok(&config, &["status", "cli"])).expect("status is JSON");
    assert_eq!((&status["state"], &status["containers"][0]["exit_status"]), (&serde_json::json!("stopped"), &serde_json::json!(137)), "{status}");
    ok(&config, &["stop", "cli"]); // as Kata: a stopped sandbox stops again without error

    // The wrong states of a stopped sandbox.
    refused(&config, &["pause", "cli"], &["cannot pause sandbox cli: it is stopped (allowed when ready or running)"]);
    refused(&config, &["resume", "cli"], &["cannot resume sandbox cli: it is stopped (allowed when paused)"]);
    container_commands_refused(
        &config,
        "stopped",
        &[
            (&["exec", "cli", "c1", "--", "true"], "enter a container of"),
            (&["kill", "cli", "c1"], "signal a container of"),
            (&["ps", "cli", "c1"], "list the processes of a container of"),
            (&["stats", "cli", "c1"], "get statistics of a container of"),
            (&["pause", "cli", "c1"], "pause a container of"),
            (&["start", "cli", "c1"], "start a container in"),
            (&["update", "cli", "c1", "--resources", "{}"], "update a container of"),
            (&["create", "cli", "c9", "--", "true"], "create a container in"),
        ],
    );
    ok(&config, &["delete", "cli"]);
    assert_eq!(ok(&config, &["list"]).lines().count(), 1, "only the header is left");
}

/// A VM whose record was lost (here deleted from the store behind the runtime's back) is not
/// lost to the operator: `list` shows it as an orphan and `delete` stops it.
#[test]
fn a_vm_whose_record_was_lost_is_listed_and_deleted() {
    let Some(image) = image_or_skip() else { return };
    let dir = integration_tests::private_dir();
    let config = write_config(dir.path(), &image);
    let sandbox = dir.path().join("lost.toml");
    std::fs::write(&sandbox, "id = 'lost'\n").expect("sandbox config");
    ok(&config, &["create", sandbox.to_str().expect("utf-8")]);
    let copy = std::fs::read(dir.path().join("vms/lost/vm-state.json")).expect("the plugin's copy of the VM state");
    let copy: serde_json::Value = serde_json::from_slice(&copy).expect("JSON");
    let pid = copy["pid"].as_i64().expect("a pid");
    ok(&config, &["store", "delete", "sandbox/lost"]);

    let out = sandboxctl(&config, &["list"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let row = stdout.lines().find(|l| l.starts_with("lost ")).unwrap_or_else(|| panic!("no row for lost: {stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["lost", "orphan", "running", "qemu"], "{stdout}");
    assert!(stderr.contains("1 VM(s) have no sandbox record") && stderr.contains("sandboxctl delete ID"), "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&ok(&config, &["list", "--json"])).expect("JSON");
    assert_eq!(listed, serde_json::json!([{"id": "lost", "state": "orphan", "vm_status": "running", "hypervisor": "qemu", "containers": []}]));
    refused(&config, &["status", "lost"], &["no sandbox lost"]);

    let out = sandboxctl(&config, &["delete", "lost"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("sandbox lost had no record: stopped its qemu VM (it was running)"), "{stderr}");
    let gone = (0..50).any(|_| {
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        std::thread::sleep(std::time::Duration::from_millis(100));
        !alive
    });
    assert!(gone, "QEMU (pid {pid}) still runs");
    assert!(!dir.path().join("vms/lost").exists() && !dir.path().join("state/sandboxes/lost").exists());
    assert_eq!(ok(&config, &["list", "--json"]).trim(), "[]");
    refused(&config, &["delete", "lost"], &["no sandbox lost"]);
}
