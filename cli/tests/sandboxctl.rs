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

    // Stop kills the containers with SIGKILL (c1 would exit 0 on SIGTERM), then delete.
    ok(&config, &["stop", "cli"]);
    let status: serde_json::Value = serde_json::from_str(&ok(&config, &["status", "cli"])).expect("status is JSON");
    assert_eq!((&status["state"], &status["containers"][0]["exit_status"]), (&serde_json::json!("stopped"), &serde_json::json!(137)), "{status}");
    ok(&config, &["delete", "cli"]);
    assert_eq!(ok(&config, &["list"]).lines().count(), 1, "only the header is left");
}
