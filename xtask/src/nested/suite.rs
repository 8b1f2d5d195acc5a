//! `cargo xtask nested-test`: the hypervisor-kvm end-to-end tests, run inside the nested L1
//! (test tier 4). The test binaries are built here on the host; L1 runs them from the shared
//! (read-only) target directory with `SANDBOX_TESTS_STRICT=1`, so a test that would skip
//! fails instead, and each binary under its own timeout so a hung test is reported as hung.

use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::progress::{self, Run};
use super::run::Attempt;
use super::{l1, run};

/// How many L1s one suite run may boot: an L1 that wedges (QEMU/TCG's emulated SVM, not a
/// test: MACHINE-FACTS.md) is replaced by a new one that resumes after the last finished
/// test.
const ATTEMPTS: usize = 3;

/// The test binaries and the filter that selects their hypervisor-kvm tests.
const SUITES: &[(&str, &str, &str)] = &[
    // (package, test target, filter)
    ("integration-tests", "sandbox_api", "::kvm"),
    ("integration-tests", "factory", "::kvm"),
    ("integration-tests", "vmm_devices", "kvm"),
    ("integration-tests", "vmm_api", "kvm"),
];


/// Longest one test binary may run in L1 before it counts as hung.
const BINARY_TIMEOUT_S: u64 = 900;

/// The test executables, built in one cargo call with `--workspace`, as `cargo xtask test`
/// builds them: the same feature resolution, so no second build of the dependencies (bundled
/// RocksDB alone is 15 minutes here).
fn test_artifacts() -> Result<Vec<serde_json::Value>> {
    crate::build::artifacts(&["test", "--workspace", "--no-run"])
}

fn test_executable(artifacts: &[serde_json::Value], package: &str, test: &str) -> Result<PathBuf> {
    crate::build::find_executable(artifacts, test, |msg| {
        let id = msg["package_id"].as_str().unwrap_or_default();
        let ours = id.contains(&format!("/{package}#")) || id.contains(&format!("{package}@")) || id.contains(&format!(" {package} "));
        msg["profile"]["test"] == true && ours
    })
    .with_context(|| format!("cargo test --workspace --no-run did not name the executable of {package}/{test}"))
}

/// Longest one test may print nothing in L1 before it counts as stalled: below the host's
/// 300 s idle limit, so L1 can still say what it saw.
const STALL_S: u64 = 240;

/// What L1 prints about a stalled test before killing it: its processes, the VMMs' threads and
/// kernel stacks, the VM logs and consoles the tests left in /tmp, each VM's KVM exit counters
/// twice 5 s apart (a guest spinning on a device, a nested page fault loop and an idle guest
/// look different there), memory and L1's kernel log.
const DIAGNOSE: &str = r#"diagnose() {
  echo "nested-test: $1 STALLED (no test output for $2 s); diagnostics follow"
  ps -eo pid,ppid,stat,wchan:32,etime,args | grep -v '\[' | cut -c1-300 | sed 's/^/nested-diag: ps: /'
  for p in $(pgrep -f 'debug/vmm |qemu-system-x86_64 .*-name sandbox-'); do
    for t in /proc/$p/task/*; do
      echo "nested-diag: task $t $(cut -d' ' -f2,3 $t/stat) wchan=$(cat $t/wchan)"
      sed 's/^/nested-diag:     /' $t/stack 2>/dev/null | head -12
    done
  done
  for f in $(find /tmp -name vmm.log -o -name console.log 2>/dev/null); do
    echo "nested-diag: == $f"; tail -8 "$f" | cut -c1-300 | sed 's/^/nested-diag:    /'
  done
  mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
  for round in 1 2; do
    for d in /sys/kernel/debug/kvm/*-*/; do
      [ -d "$d" ] || continue
      line="nested-diag: kvm $d"
      for f in exits io_exits mmio_exits halt_exits halt_wakeup pf_taken pf_fixed irq_exits irq_injections insn_emulation signal_exits; do
        [ -f "$d$f" ] && line="$line $f=$(cat "$d$f")"
      done
      echo "$line"
    done
    [ $round = 1 ] && sleep 5
  done
  grep -E 'MemFree|Shmem|AnonHuge' /proc/meminfo | tr -s ' \n' ' ' | sed 's/^/nested-diag: meminfo: /'; echo
  dmesg | tail -20 | sed 's/^/nested-diag: dmesg: /'
}
"#;

/// The shell script L1 runs: every suite with a watchdog, a marker line per binary. A binary
/// whose tests print nothing for [`STALL_S`] seconds, or that runs longer than
/// [`BINARY_TIMEOUT_S`], is diagnosed and killed, and reported as hung.
fn script(runs: &[Run], options: &Options) -> String {
    let mut s = String::from("status=0\nexport SANDBOX_TESTS_STRICT=1 RUST_BACKTRACE=1 TMPDIR=/tmp\n");
    if options.huge_pages {
        s.push_str("echo advise > /sys/kernel/mm/transparent_hugepage/shmem_enabled\n");
    }
    s.push_str(DIAGNOSE);
    for run in runs {
        let (name, exe, filter) = (&run.name, &run.exe, &run.filter);
        let skips: String = run.skip.iter().map(|t| format!(" --skip '{}'", t.replace('\'', r"'\''"))).collect();
        s.push_str(&format!(
            "echo \"nested-test: {name}\"\n\
             : > /tmp/nested-test.out\n\
             '{exe}' --test-threads 1 --color never '{filter}'{skips} > /tmp/nested-test.out 2>&1 &\n\
             pid=$!\n\
             tail -f /tmp/nested-test.out &\n\
             tailpid=$!\n\
             idle=0; ran=0; last=0; hung=0\n\
             while kill -0 $pid 2>/dev/null; do\n\
               sleep 5; ran=$((ran+5)); size=$(wc -c < /tmp/nested-test.out)\n\
               if [ \"$size\" = \"$last\" ]; then idle=$((idle+5)); else idle=0; last=$size; fi\n\
               if [ $idle -ge {STALL_S} ] || [ $ran -ge {BINARY_TIMEOUT_S} ]; then\n\
                 diagnose '{name}' $idle; kill -9 $pid; pkill -9 -f 'debug/vmm |qemu-system-x86_64 .*-name sandbox-'; hung=1; break\n\
               fi\n\
             done\n\
             wait $pid; rc=$?\n\
             sleep 1; kill $tailpid\n\
             if [ $hung = 1 ]; then echo \"nested-test: {name} HUNG (killed after $ran s, $idle s without output)\"; status=2; \
             elif [ $rc != 0 ]; then echo \"nested-test: {name} FAILED (exit $rc)\"; [ $status = 0 ] && status=1; fi\n",
            exe = exe.display()
        ));
    }
    s.push_str("exit $status\n");
    s
}

/// Whether this machine's `/dev/kvm` can boot Linux itself, as the built `vmm --check-host`
/// says (the check the end-to-end tests make): then the `::kvm` tests run directly in the
/// normal suite and no L1 is needed. `Err` when the vmm cannot be run at all.
pub fn hardware_kvm() -> Result<bool> {
    crate::build::build_for_nested()?;
    let vmm = crate::build::target_dir()?.join("debug/vmm");
    let out = Command::new(&vmm).arg("--check-host").output().with_context(|| format!("running {} --check-host", vmm.display()))?;
    let verdict = String::from_utf8_lossy(&out.stdout);
    println!("{}", verdict.trim());
    Ok(out.status.success())
}

/// How `cargo xtask nested-test` runs the suites.
#[derive(Debug, Clone)]
pub struct Options {
    /// The whole L1 run's timeout.
    pub timeout: Duration,
    /// Allow transparent huge pages on shared memory in L1 (`shmem_enabled` = `advise`), so the
    /// vmm's memfd guest RAM gets them; off by default, since L2 guests on huge pages
    /// sometimes stall in this nested environment (MACHINE-FACTS.md).
    pub huge_pages: bool,
    /// How many times each suite runs in the one L1.
    pub repeat: usize,
    /// Only the suite of this test target (`factory`), when set.
    pub only: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options { timeout: Duration::from_secs(BINARY_TIMEOUT_S * SUITES.len() as u64 + 60), huge_pages: false, repeat: 1, only: None }
    }
}

/// Builds, boots L1, runs the suites; returns the libtest result lines, or an error that says
/// whether a test failed, a binary hung, or L1 itself did not work.
pub fn run_suites(options: &Options) -> Result<Vec<String>> {
    let target = crate::build::target_dir()?;
    crate::build::build_for_nested()?;
    crate::guest::build(&target)?;
    let mut binaries = Vec::new();
    // Every suite by default, the VM factories' too (they keep up to three L2 VMs at once,
    // which L1 survives since it has one vCPU: docs/NESTED.md).
    let chosen = |test: &str| options.only.as_deref().is_none_or(|only| only == test);
    let artifacts = test_artifacts()?;
    for (package, test, filter) in SUITES.iter().filter(|(_, test, _)| chosen(test)) {
        binaries.push((format!("{package}/{test}"), test_executable(&artifacts, package, test)?, filter.to_string()));
    }
    if binaries.is_empty() {
        bail!("no nested suite is named {:?}; the suites: {}", options.only.as_deref().unwrap_or(""), SUITES.iter().map(|s| s.1).collect::<Vec<_>>().join(", "));
    }
    let mut runs: Vec<Run> = std::iter::repeat_n(&binaries, options.repeat)
        .flatten()
        .map(|(name, exe, filter)| Run::new(name.clone(), exe.clone(), filter.clone()))
        .collect();
    let mut wedged = Vec::new();
    for attempt in 1..=ATTEMPTS {
        let todo: Vec<Run> = runs.iter().filter(|r| r.result.is_none()).cloned().collect();
        let image = l1::build_with(&target, &["sh".into(), "-c".into(), script(&todo, options)])?;
        let (step, tail, output, how) = match run::once(&image, options.timeout)? {
            Attempt::Done(outcome) => {
                if !outcome.kvm {
                    bail!("L1 has no /dev/kvm: kvm_amd did not load (see the console above)");
                }
                progress::record(&mut runs, &outcome.output);
                println!("nested-test: L1 up in {:.1} s; tests ran {:.1} s", outcome.boot.as_secs_f64(), outcome.ran.as_secs_f64());
                return verdict(&runs, outcome.status);
            }
            Attempt::Hung(step, tail, output) => (step, tail, output, "hung"),
            Attempt::Crashed(step, tail, output) => (step, tail, output, "crashed (its own kernel, not the command)"),
        };
        progress::record(&mut runs, &output);
        let during = match progress::running_at_end(&output) {
            Some(test) => format!(" during {test}"),
            None => String::new(),
        };
        let next = if attempt < ATTEMPTS { "; a new L1 resumes after the last finished test" } else { "" };
        eprintln!("nested: L1 {how} in step {step:?}{during} (L1 {attempt} of {ATTEMPTS}){next}. Last console lines:\n{tail}");
        wedged.push(format!("{how} in step {step:?}{during}"));
    }
    bail!("L1 failed {ATTEMPTS} times: {}", wedged.join("; "))
}

/// The suites' result lines once every run finished, or what went wrong: a failed test (in
/// this L1 or an earlier one), a binary that hung in L1, a run with no result.
fn verdict(runs: &[Run], status: i32) -> Result<Vec<String>> {
    let failed: Vec<&str> = runs.iter().flat_map(|r| r.failed.iter().map(String::as_str)).collect();
    let results: Vec<String> = runs.iter().filter_map(|r| r.result.clone()).collect();
    match status {
        2 => bail!("a test binary hung in L1 (see the HUNG line above)"),
        0 if failed.is_empty() && results.len() == runs.len() => Ok(results),
        0 if failed.is_empty() => bail!("only {} of {} test binary runs reported a result", results.len(), runs.len()),
        n => bail!("hypervisor-kvm end-to-end tests failed in L1 (exit status {n}; failed: {}): {}", failed.join(", "), results.join("; ")),
    }
}

const USAGE: &str = "usage: cargo xtask nested-test [--timeout SECS] [--repeat N] [--huge-pages] [--only TEST]";

/// `cargo xtask nested-test [--timeout SECS] [--repeat N] [--huge-pages] [--only TEST]`.
pub fn task(args: &[String]) -> Result<()> {
    let mut options = Options::default();
    let mut timeout = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--timeout" => timeout = Some(super::timeout_arg(it.next())?),
            "--repeat" => options.repeat = it.next().and_then(|s| s.parse().ok()).filter(|n| *n > 0).context("--repeat needs a positive number")?,
            "--huge-pages" => options.huge_pages = true,
            "--only" => options.only = Some(it.next().context("--only needs a test target (sandbox_api, factory, vmm_devices, vmm_api)")?.clone()),
            other => bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    options.timeout = timeout.unwrap_or(options.timeout * options.repeat as u32);
    for line in run_suites(&options)? {
        println!("nested-test: {line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn script_reports_each_binary() {
        let mut run = super::Run::new("p/t".into(), "/x/t-1".into(), "::kvm".into());
        let s = super::script(std::slice::from_ref(&run), &super::Options::default());
        assert!(s.contains("'/x/t-1' --test-threads 1 --color never '::kvm' > /tmp/nested-test.out"), "{s}");
        run.skip = vec!["a::kvm".into(), "it's".into()];
        let s = super::script(&[run], &super::Options::default());
        assert!(s.contains("'::kvm' --skip 'a::kvm' --skip 'it'\\''s' > /tmp/"), "{s}");
        assert!(s.contains("diagnose 'p/t'") && s.contains("HUNG") && s.ends_with("exit $status\n"));
    }
}
