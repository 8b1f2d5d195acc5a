//! Each state rule of `runtime_core::sandbox::rules` as a call: the end-to-end rule test calls
//! every function in every sandbox and container state its rule refuses, and checks the refusal.

use crate::sandbox::container;
use runtime_core::sandbox::rules::Rule;
use runtime_core::sandbox::{ProcessConfig, Sandbox, SandboxError};

/// Drops a call's value, keeping whether it failed.
fn ok<T>(r: Result<T, SandboxError>) -> Result<(), SandboxError> {
    r.map(drop)
}

/// The calls that `rule` governs, on container `c` where the rule names one (`c` is also the
/// token of its first process). Several functions share a rule (ListInterfaces, ListRoutes and
/// UpdateRoutes; IOStream, SignalProcess and WinsizeProcess): each is called.
///
/// # Panics
/// For a rule this module does not know (a new rule needs its calls here).
pub async fn call(sb: &Sandbox, rule: &Rule, c: &str) -> Vec<(&'static str, Result<(), SandboxError>)> {
    match rule.function {
        "sandbox.Start" => vec![("Start", sb.start().await)],
        "sandbox.Stop" => vec![("Stop", sb.stop(false).await)],
        "sandbox.Delete" => vec![("Delete", ok(sb.delete().await))],
        "PauseSandbox" => vec![("PauseSandbox", sb.pause().await)],
        "ResumeSandbox" => vec![("ResumeSandbox", sb.resume().await)],
        "sandbox.Monitor" => vec![("Monitor", ok(sb.monitor().await))],
        "sandbox.Stats" => vec![("Stats", ok(sb.stats().await))],
        "sandbox.ListInterfaces" => vec![
            ("ListInterfaces", ok(sb.list_interfaces().await)),
            ("ListRoutes", ok(sb.list_routes().await)),
            ("UpdateRoutes", ok(sb.update_routes(vec![]).await)),
        ],
        "sandbox.CreateContainer" => vec![("CreateContainer", ok(sb.create_container(container("refused", "true")).await))],
        "sandbox.DeleteContainer" => vec![("DeleteContainer", ok(sb.delete_container(c).await))],
        "sandbox.EnterContainer" => vec![("EnterContainer", ok(sb.enter_container(c, ProcessConfig::new(["true"])).await))],
        "sandbox.KillContainer" => vec![("KillContainer", sb.kill_container(c, libc::SIGTERM, false).await)],
        "sandbox.PauseContainer" => vec![("PauseContainer", ok(sb.pause_container(c).await))],
        "sandbox.ProcessListContainer" => vec![("ProcessListContainer", ok(sb.process_list_container(c).await))],
        "sandbox.ResumeContainer" => vec![("ResumeContainer", ok(sb.resume_container(c).await))],
        "sandbox.StartContainer" => vec![("StartContainer", ok(sb.start_container(c).await))],
        "sandbox.StatsContainer" => vec![("StatsContainer", ok(sb.stats_container(c).await))],
        "sandbox.StopContainer" => vec![("StopContainer", ok(sb.stop_container(c, false).await))],
        "sandbox.UpdateContainer" => vec![("UpdateContainer", sb.update_container(c, serde_json::json!({})).await)],
        "sandbox.WaitProcess" => vec![("WaitProcess", ok(sb.wait_process(c, c).await))],
        "sandbox.IOStream" => vec![
            ("IOStream", ok(sb.io_stream(c, c).await)),
            ("SignalProcess", sb.signal_process(c, c, libc::SIGTERM, false).await),
            ("WinsizeProcess", sb.winsize_process(c, c, 24, 80).await),
        ],
        other => panic!("no call for the rule of {other}: add it to tests/src/rules.rs"),
    }
}
