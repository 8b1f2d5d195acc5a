//! Booting L1 and waiting for its markers, with a timeout on every step and one retry of a
//! hung L1. L1 proves it is alive with a heartbeat on its second serial port; when that stops,
//! L1 is wedged (its whole CPU state, not a test, is stuck), and what its vCPUs were doing is
//! asked of QEMU over QMP and printed before QEMU is killed.

use super::l1::L1Image;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long L1 may take to boot and load its modules (about 10 s under TCG here).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the command may print nothing (L1's kernel lines do not count) before L1 counts
/// as hung: every command we run prints at least a line a minute (a test's result, a benchmark
/// boot), so five minutes of silence is a hang, not a slow step.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long L1's heartbeat (a line on its second serial port every 5 s, from a shell loop
/// in L1) may stop before L1 counts as wedged: with L1 up, even two L2 guests spinning leave
/// that loop a turn every few milliseconds, so 90 s of silence is a dead L1. CI runs saw L1
/// freeze whole (no kernel line, its in-L1 watchdog silent) in the first seconds of an L2 boot.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the host looks at the heartbeat file.
const POLL: Duration = Duration::from_secs(5);

/// Whether a console line comes from L1's kernel (`[  217.587984] ...`): a soft lockup or an
/// RCU stall keeps the kernel printing, dozens of lines at a time, while nothing else runs.
fn is_kernel_line(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('[') else { return false };
    rest.split_once(']').is_some_and(|(stamp, _)| super::progress::is_printk_stamp(stamp))
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

/// One boot of L1.
pub enum Attempt {
    /// The command ran to its end.
    Done(Outcome),
    /// L1 stopped answering in a step (no marker, no output, no heartbeat): the reason and
    /// the last lines, and the command's lines so far.
    Hung(Step, String, Vec<String>),
    /// L1 itself died in a step (its kernel panicked) without a result: the last lines and
    /// the command's lines so far.
    Crashed(Step, String, Vec<String>),
}

/// Boots L1 with `image` and waits for its command; a hung step is retried once.
pub fn run(image: &L1Image, timeout: Duration) -> Result<Outcome> {
    for attempt in 1..=2 {
        match once(image, timeout)? {
            Attempt::Done(outcome) => return Ok(outcome),
            Attempt::Hung(step, tail, _) if attempt == 1 => {
                eprintln!("nested: L1 hung in step {step:?}; retrying once. Last console lines:\n{tail}");
            }
            Attempt::Crashed(step, tail, _) if attempt == 1 => {
                eprintln!("nested: L1 crashed in step {step:?} (its own kernel, not the command); retrying once. Last console lines:\n{tail}");
            }
            Attempt::Hung(step, tail, _) | Attempt::Crashed(step, tail, _) => {
                bail!("L1 hung or crashed twice in step {step:?}; last console lines:\n{tail}")
            }
        }
    }
    bail!("L1 did not finish in two attempts")
}

fn spawn(image: &L1Image, heartbeat: &Path, qmp: &Path) -> Result<Child> {
    Command::new("qemu-system-x86_64")
        // One vCPU: with two, L1 wedged in about half of its boots that ran L2 guests, both
        // vCPUs with interrupts off, one at `asm_exc_int3` (L1's kernel patching its own text
        // while the other vCPU ran it, under multi-threaded TCG: docs/NESTED.md).
        .args(["-M", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "4096"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        // kvm.nx_huge_pages=off: L1's KVM would otherwise run its NX huge page recovery
        // thread, which twice held both L1 CPUs in a soft lockup for minutes (one CPU in
        // `kvm-nx-lpage-re`, the other waiting on it) under QEMU/TCG's emulated SVM, with an
        // L2 guest running (.ci/run, 2026-12-07 17:10); the iTLB multihit mitigation it
        // serves means nothing in a test VM. nokaslr: the RIPs of a wedge's QMP dump can be
        // looked up in another L1's /proc/kallsyms.
        .args(["-append", "console=ttyS0 panic=-1 quiet nokaslr kvm.nx_huge_pages=off"])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults"])
        .arg("-serial")
        .arg(format!("file:{}", heartbeat.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .args(["-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning qemu-system-x86_64 (Debian package qemu-system-x86)")
}

/// Boots L1 once with `image` and waits for its command, without retrying.
pub fn once(image: &L1Image, timeout: Duration) -> Result<Attempt> {
    let files = tempfile::Builder::new().prefix("nested-l1-").tempdir().context("a directory for L1's heartbeat and QMP socket")?;
    let (heartbeat, qmp) = (files.path().join("heartbeat"), files.path().join("qmp.sock"));
    let mut child = spawn(image, &heartbeat, &qmp)?;
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
    let (mut beats, mut last_beat) = (0u64, spawned);
    let result = loop {
        let now = Instant::now();
        let limit = if step == Step::Command { deadline.min(last_line + IDLE_TIMEOUT) } else { deadline };
        let left = limit.saturating_duration_since(now);
        // L1's heartbeat starts with its command; a file that stopped growing is a wedged L1.
        let size = std::fs::metadata(&heartbeat).map(|m| m.len()).unwrap_or(0);
        if size != beats {
            (beats, last_beat) = (size, now);
        } else if step == Step::Command && now.duration_since(last_beat.max(last_line)) >= HEARTBEAT_TIMEOUT {
            let cpus = describe_cpus(&qmp);
            break Attempt::Hung(step, format!("(L1 wedged: no heartbeat for {} s)\n{}\n{cpus}", HEARTBEAT_TIMEOUT.as_secs(), tail.join("\n")), output);
        }
        if left.is_zero() {
            let why = if now >= deadline { "reached its time limit".to_owned() } else { format!("printed nothing for {} s", IDLE_TIMEOUT.as_secs()) };
            let cpus = describe_cpus(&qmp);
            break Attempt::Hung(step, format!("({why})\n{}\n{cpus}", tail.join("\n")), output);
        }
        match rx.recv_timeout(left.min(POLL)) {
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
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break Attempt::Crashed(step, tail.join("\n"), output),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    Ok(result)
}

/// What L1's vCPUs are doing, from QEMU's monitor: each one's RIP, flags, halt state and
/// control registers, sampled twice a second apart (a RIP that moves is a loop, one that does
/// not is a CPU stuck on one instruction or halted with interrupts off). Best effort: a QEMU
/// that does not answer is said to.
fn describe_cpus(qmp: &Path) -> String {
    let sample = || -> Result<String> {
        let mut stream = UnixStream::connect(qmp).with_context(|| format!("connecting to {}", qmp.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?; // the greeting
        stream.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"human-monitor-command\",\"arguments\":{\"command-line\":\"info registers -a\"}}\n")?;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("QEMU closed its monitor");
            }
            let reply: serde_json::Value = serde_json::from_str(&line).context("QEMU's monitor reply")?;
            if let Some(text) = reply["return"].as_str() {
                return Ok(condense_registers(text));
            }
            if let Some(error) = reply.get("error") {
                bail!("QEMU's monitor: {error}");
            }
        }
    };
    let mut out = String::from("L1's vCPUs (QEMU monitor, `info registers -a`, twice 1 s apart):");
    for round in 0..2 {
        if round == 1 {
            std::thread::sleep(Duration::from_secs(1));
        }
        match sample() {
            Ok(text) => out.push_str(&text),
            Err(e) => {
                out.push_str(&format!("\n  (no answer: {e:#})"));
                break;
            }
        }
    }
    out
}

/// The lines of `info registers -a` that tell where each CPU is: its header, RIP and flags
/// (with HLT), the control registers and EFER.
fn condense_registers(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let l = line.trim_start();
        if l.starts_with("CPU#") || l.starts_with("RIP=") || l.starts_with("CR0=") || l.starts_with("EFER=") {
            out.push_str("\n  ");
            out.push_str(line.trim_end());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::is_kernel_line;

    #[test]
    fn registers_are_condensed_to_where_each_cpu_is() {
        let text = "CPU#0\nRAX=0 RBX=1\nRIP=ffffffff8107e744 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\nES =0000\nCR0=80050033 CR2=0 CR3=1000 CR4=00350ef0\nEFER=0000000000001d01\nCPU#1\nRIP=1 RFL=2\n";
        let c = super::condense_registers(text);
        assert_eq!(c.lines().filter(|l| !l.is_empty()).count(), 6, "{c}");
        assert!(c.contains("HLT=1") && !c.contains("RAX") && !c.contains("ES ="), "{c}");
    }

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
