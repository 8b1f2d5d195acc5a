//! `cargo xtask nested-test`: the hypervisor-kvm end-to-end tests, run inside the nested L1
//! (test tier 4). The test binaries are built here on the host; L1 runs them from the shared
//! (read-only) target directory with `SANDBOX_TESTS_STRICT=1`, so a test that would skip
//! fails instead, and each binary under its own timeout so a hung test is reported as hung.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{l1, run};

/// The test binaries and the filter that selects their hypervisor-kvm tests.
const SUITES: &[(&str, &str, &str)] = &[
    // (package, test target, filter)
    ("integration-tests", "sandbox_api", "::kvm"),
    ("integration-tests", "vmm_devices", "kvm"),
];

/// Longest one test binary may run in L1 before it counts as hung.
const BINARY_TIMEOUT_S: u64 = 900;

fn test_executable(package: &str, test: &str) -> Result<PathBuf> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        // --workspace, as `cargo xtask test` builds them: the same feature resolution, so no
        // second build of the dependencies (bundled RocksDB alone is 15 minutes here).
        .args(["test", "--workspace", "--no-run", "--message-format=json", "--quiet"])
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building test {test} of {package} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let ours = msg["package_id"].as_str().is_some_and(|id| id.contains(&format!("/{package}#")) || id.contains(&format!("{package}@")) || id.contains(&format!(" {package} ")));
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == test && msg["profile"]["test"] == true && ours {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo did not name the executable of test {test} of {package}")
}

/// The shell script L1 runs: every suite under `timeout`, a marker line per binary.
fn script(binaries: &[(String, PathBuf, String)]) -> String {
    let mut s = String::from("status=0\nexport SANDBOX_TESTS_STRICT=1 RUST_BACKTRACE=1 TMPDIR=/tmp\n");
    for (name, exe, filter) in binaries {
        s.push_str(&format!(
            "echo \"nested-test: {name}\"\n\
             timeout -s KILL {BINARY_TIMEOUT_S} '{}' --test-threads 1 --color never '{filter}'\n\
             rc=$?\n\
             if [ $rc = 137 ]; then echo \"nested-test: {name} HUNG (killed after {BINARY_TIMEOUT_S} s)\"; status=2; \
             elif [ $rc != 0 ]; then echo \"nested-test: {name} FAILED (exit $rc)\"; [ $status = 0 ] && status=1; fi\n",
            exe.display()
        ));
    }
    s.push_str("exit $status\n");
    s
}

/// Whether this machine's `/dev/kvm` can boot Linux itself, as the built `vmm --check-host`
/// says (the check the end-to-end tests make): then the `::kvm` tests run directly in the
/// normal suite and no L1 is needed. `Err` when the vmm cannot be run at all.
pub fn hardware_kvm() -> Result<bool> {
    crate::tasks::build_for_nested()?;
    let vmm = crate::tasks::target_dir()?.join("debug/vmm");
    let out = Command::new(&vmm).arg("--check-host").output().with_context(|| format!("running {} --check-host", vmm.display()))?;
    let verdict = String::from_utf8_lossy(&out.stdout);
    println!("{}", verdict.trim());
    Ok(out.status.success())
}

/// Builds, boots L1, runs the suites; returns the libtest result lines, or an error that says
/// whether a test failed, a binary hung, or L1 itself did not work.
pub fn run_suites(timeout: Duration) -> Result<Vec<String>> {
    let target = crate::tasks::target_dir()?;
    crate::tasks::build_for_nested()?;
    crate::guest::build(&target)?;
    let mut binaries = Vec::new();
    for (package, test, filter) in SUITES {
        binaries.push((format!("{package}/{test}"), test_executable(package, test)?, filter.to_string()));
    }
    let text = script(&binaries);
    let image = l1::build_with(&target, &["sh".into(), "-c".into(), text])?;
    let outcome = run(&image, timeout)?;
    if !outcome.kvm {
        bail!("L1 has no /dev/kvm: kvm_amd did not load (see the console above)");
    }
    let results: Vec<String> = outcome.output.iter().filter(|l| l.starts_with("test result:")).cloned().collect();
    println!("nested-test: L1 up in {:.1} s; tests ran {:.1} s", outcome.boot.as_secs_f64(), outcome.ran.as_secs_f64());
    match outcome.status {
        0 if results.len() == binaries.len() => Ok(results),
        0 => bail!("only {} of {} test binaries reported a result", results.len(), binaries.len()),
        2 => bail!("a test binary hung in L1 (see the HUNG line above)"),
        n => bail!("hypervisor-kvm end-to-end tests failed in L1 (exit status {n}): {}", results.join("; ")),
    }
}

/// The default timeout of the whole L1 run.
pub fn default_timeout() -> Duration {
    Duration::from_secs(BINARY_TIMEOUT_S * SUITES.len() as u64 + 60)
}

/// `cargo xtask nested-test [--timeout SECS]`.
pub fn task(args: &[String]) -> Result<()> {
    let mut timeout = default_timeout();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--timeout" => timeout = super::timeout_arg(it.next())?,
            other => bail!("unknown argument {other:?}; usage: cargo xtask nested-test [--timeout SECS]"),
        }
    }
    for line in run_suites(timeout)? {
        println!("nested-test: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_reports_each_binary() {
        let s = super::script(&[("p/t".into(), "/x/t-1".into(), "::kvm".into())]);
        assert!(s.contains("timeout -s KILL 900 '/x/t-1' --test-threads 1 --color never '::kvm'"), "{s}");
        assert!(s.contains("HUNG") && s.ends_with("exit $status\n"));
    }
}
