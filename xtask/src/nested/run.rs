//! Booting L1 and waiting for its markers, with a timeout on every step and one retry of a
//! hung L1.

use super::l1::L1Image;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long L1 may take to boot and load its modules (about 10 s under TCG here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the command may print nothing (L1's kernel lines do not count) before L1 counts
/// as hung: every command we run prints at least a line a minute (a test's result, a benchmark
/// boot), so five minutes of silence is a hang, not a slow step.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Whether a console line comes from L1's kernel (`[  217.587984] ...`): a soft lockup or an
/// RCU stall keeps the kernel printing, dozens of lines at a time, while nothing else runs.
fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('[') else { return false };
    let Some((stamp, _)) = rest.split_once(']') else { return false };
    let stamp = stamp.trim();
    stamp.split_once('.').is_some_and(|(s, us)| !s.is_empty() && !us.is_empty() && s.bytes().chain(us.bytes()).all(|b| b.is_ascii_digit()))
}

/// A step of a run, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// From spawning QEMU to `NESTED-READY`.
    Boot,
    /// From `NESTED-READY` to `NESTED-EXIT`.
    Command,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Spawn to L1 ready.
    pub boot: Duration,
    /// Whether L1 had `/dev/kvm`.
    pub kvm: bool,
    /// How long the command ran.
    pub ran: Duration,
    /// Its exit status.
    pub status: i32,
    /// The lines it printed (on the console between the markers).
    pub output: Vec<String>,
}

enum Attempt {
    Done(Outcome),
    /// L1 stopped answering in a step (no marker, no output): the reason and the last lines.
    Hung(Step, String),
    /// L1 itself died in a step (its kernel panicked) without a result.
    Crashed(Step, String),
}

/// Boots L1 with `image` and waits for its command; a hung step is retried once.
pub fn run(image: &L1Image, timeout: Duration) -> Result<Outcome> {
    for attempt in 1..=2 {
        match once(image, timeout)? {
            Attempt::Done(outcome) => return Ok(outcome),
            Attempt::Hung(step, tail) if attempt == 1 => {
                eprintln!("nested: L1 hung in step {step:?}; retrying once. Last console lines:\n{tail}");
            }
            Attempt::Crashed(step, tail) if attempt == 1 => {
                eprintln!("nested: L1 crashed in step {step:?} (its own kernel, not the command); retrying once. Last console lines:\n{tail}");
            }
            Attempt::Hung(step, tail) | Attempt::Crashed(step, tail) => {
                bail!("L1 hung or crashed twice in step {step:?}; last console lines:\n{tail}")
            }
        }
    }
    bail!("L1 did not finish in two attempts")
}

fn spawn(image: &L1Image) -> Result<Child> {
    Command::new("qemu-system-x86_64")
        .args(["-M", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "4096"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        // kvm.nx_huge_pages=off: L1's KVM would otherwise run its NX huge page recovery
        // thread, which twice held both L1 CPUs in a soft lockup for minutes (one CPU in
        // `kvm-nx-lpage-re`, the other waiting on it) under QEMU/TCG's emulated SVM, with an
        // L2 guest running (.ci/run, 2026-12-07 17:10); the iTLB multihit mitigation it
        // serves means nothing in a test VM.
        .args(["-append", "console=ttyS0 panic=-1 quiet kvm.nx_huge_pages=off"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults"])
        .args(["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning qemu-system-x86_64 (Debian package qemu-system-x86)")
}

fn once(image: &L1Image, timeout: Duration) -> Result<Attempt> {
    let mut child = spawn(image)?;
    let stdout = child.stdout.take().context("QEMU's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let spawned = Instant::now();
    let mut tail: Vec<String> = Vec::new();
    let mut step = Step::Boot;
    let mut deadline = spawned + BOOT_TIMEOUT;
    let mut last_line = spawned;
    let (mut boot, mut kvm) = (Duration::ZERO, false);
    let mut output = Vec::new();
    let result = loop {
        let now = Instant::now();
        let limit = if step == Step::Command { deadline.min(last_line + IDLE_TIMEOUT) } else { deadline };
        let left = limit.saturating_duration_since(now);
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                // Only the command's own lines are signs of life: L1's kernel reporting that
                // L1 is stuck keeps printing while nothing runs (a CI run once sat 8 minutes
                // in soft-lockup lines).
                if !is_kernel_line(&line) {
                    last_line = Instant::now();
                }
                if let Some(rest) = line.strip_prefix("NESTED-READY ") {
                    boot = spawned.elapsed();
                    kvm = rest.contains("kvm=yes");
                    step = Step::Command;
                    deadline = Instant::now() + timeout;
                } else if let Some(code) = line.strip_prefix("NESTED-EXIT ") {
                    let status = code.trim().parse().with_context(|| format!("bad exit line {line:?}"))?;
                    break Attempt::Done(Outcome { boot, kvm, ran: spawned.elapsed() - boot, status, output });
                } else if step == Step::Command {
                    println!("{line}");
                    output.push(line.clone());
                }
                tail.push(line);
                if tail.len() > 30 {
                    tail.remove(0);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let why = if Instant::now() >= deadline { "reached its time limit" } else { "printed nothing for 300 s" };
                break Attempt::Hung(step, format!("({why})\n{}", tail.join("\n")));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break Attempt::Crashed(step, tail.join("\n")),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::is_kernel_line;

    #[test]
    fn kernel_lines_are_told_from_the_commands_own() {
        assert!(is_kernel_line("[  245.298826] watchdog: BUG: soft lockup - CPU#0 stuck for 157s! [swapper/0:0]"));
        assert!(is_kernel_line("[217.587984] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:"));
        assert!(!is_kernel_line("test every_state_rule_refuses_what_it_should::kvm ... ok"));
        assert!(!is_kernel_line("[build] 12 steps"));
        assert!(!is_kernel_line("[ .5] x"));
        assert!(!is_kernel_line("nested-test: integration-tests/sandbox_api"));
    }
}
