//! `cargo xtask nested-bench`: our `vmm` against QEMU (`-M pc` and `-M microvm`) side by side,
//! in one run inside the nested L1, with the same kernel (the ELF vmlinux, PVH), initramfs,
//! vCPUs, memory and kernel command line. For each boot: the time from spawning the VMM to the
//! agent's "agent ready" line on the serial console, and the VMM's peak RSS (`VmHWM`) at
//! that moment. Medians of the rounds, and ratios against QEMU `-M pc`.
//!
//! Every round boots each VMM twice: with 4 KiB pages for all (L1's transparent huge pages
//! off for anonymous and shared memory) and with huge pages for all (each VMM's RAM gets them
//! because it advises them: QEMU's anonymous RAM and the vmm's memfd). Each comparison is
//! like for like; the guest's page faults are what the nested L1 pays most for.
//!
//! The host side builds what is needed and boots L1; L1 runs `xtask nested-bench-inner`
//! (this same binary) with the paths.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{l1, run};

const MEMORY_MIB: u32 = 256;
const VCPUS: u32 = 1;
const CMDLINE: &str = "console=ttyS0 panic=-1 quiet reboot=k agent.channels=serial:agent.0";
/// Added for the VMMs without a PCI bus (ours, as the kvm plugin passes it, and microvm).
const NO_PCI: &str = "pci=off";
const READY: &str = "agent ready";
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// One VMM set-up under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vmm {
    Ours,
    QemuPc,
    QemuMicrovm,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Ours => "vmm (hypervisor-kvm)",
            Vmm::QemuPc => "QEMU -M pc",
            Vmm::QemuMicrovm => "QEMU -M microvm",
        }
    }

    fn command(self, vmm: &Path, kernel: &Path, initrd: &Path, dir: &Path) -> Command {
        let console = dir.join("console.log");
        let socket = dir.join("agent-0.sock");
        match self {
            Vmm::Ours => {
                let mut c = Command::new(vmm);
                c.arg("--kernel").arg(kernel).arg("--initrd").arg(initrd);
                c.args(["--cmdline", &format!("{CMDLINE} {NO_PCI}"), "--memory-mib", &MEMORY_MIB.to_string(), "--vcpus", &VCPUS.to_string()]);
                c.arg("--console-log").arg(&console);
                c.arg("--serial-port").arg(format!("name=agent.0,socket={}", socket.display()));
                c
            }
            Vmm::QemuPc | Vmm::QemuMicrovm => {
                let (machine, bus) = if self == Vmm::QemuPc { ("pc", "virtio-serial-pci") } else { ("microvm", "virtio-serial-device") };
                let mut c = Command::new("qemu-system-x86_64");
                c.args(["-M", machine, "-accel", "kvm", "-cpu", "host", "-smp", &VCPUS.to_string(), "-m", &MEMORY_MIB.to_string()]);
                let cmdline = if self == Vmm::QemuPc { CMDLINE.to_owned() } else { format!("{CMDLINE} {NO_PCI}") };
                c.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd).args(["-append", &cmdline]);
                c.args(["-display", "none", "-monitor", "none", "-nodefaults", "-no-reboot"]);
                c.arg("-serial").arg(format!("file:{}", console.display()));
                c.args(["-device", bus]);
                c.arg("-chardev").arg(format!("socket,id=a0,path={},server=on,wait=off", socket.display()));
                c.args(["-device", "virtserialport,chardev=a0,name=agent.0"]);
                c
            }
        }
    }
}

/// How guest RAM is backed in a boot: L1's transparent huge page settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pages {
    /// No transparent huge pages: 4 KiB pages for every VMM's RAM.
    Small,
    /// Huge pages where a VMM advises them (QEMU and the vmm both do).
    Huge,
}

impl Pages {
    const ALL: [Pages; 2] = [Pages::Small, Pages::Huge];

    fn name(self) -> &'static str {
        match self {
            Pages::Small => "4 KiB pages",
            Pages::Huge => "huge pages",
        }
    }

    /// Sets L1's `enabled` (anonymous memory) and `shmem_enabled` (memfd) for this mode.
    fn apply(self) -> Result<()> {
        let (anon, shmem) = match self {
            Pages::Small => ("never", "never"),
            Pages::Huge => ("madvise", "advise"),
        };
        for (file, value) in [("enabled", anon), ("shmem_enabled", shmem)] {
            let path = format!("/sys/kernel/mm/transparent_hugepage/{file}");
            std::fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))?;
        }
        Ok(())
    }
}

/// Peak RSS of `pid` in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Spawns one VMM and waits for the agent: (time to ready, peak RSS in KiB).
fn boot_once(which: Vmm, vmm: &Path, kernel: &Path, initrd: &Path) -> Result<(Duration, u64)> {
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let console = dir.path().join("console.log");
    let mut cmd = which.command(vmm, kernel, initrd, dir.path());
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child: Child = cmd.spawn().with_context(|| format!("spawning {}", which.name()))?;
    let result = loop {
        if std::fs::read_to_string(&console).is_ok_and(|c| c.contains(READY)) {
            let elapsed = start.elapsed();
            let rss = peak_rss_kib(child.id()).context("reading the VMM's VmHWM")?;
            break Ok((elapsed, rss));
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            break Err(anyhow::anyhow!("{} exited ({status}) before the agent was ready: {err}", which.name()));
        }
        if start.elapsed() > BOOT_TIMEOUT {
            let seen = std::fs::read_to_string(&console).unwrap_or_default();
            let last = seen.lines().last().unwrap_or("(nothing)").to_owned();
            break Err(anyhow::anyhow!(
                "{}: no {READY:?} on the console within {BOOT_TIMEOUT:?} (last console line: {last:?}; {})",
                which.name(),
                stall_report(child.id())
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The median; NaN for no values (printed as such: nothing was measured).
/// What a stalled VMM's threads and its VM's KVM counters say: thread states (`R` running,
/// `S` sleeping) and the exit counters of L1's KVM twice, 5 s apart (a guest that idles, one
/// that spins without exits and one caught in a page-fault loop look different there).
fn stall_report(pid: u32) -> String {
    let states: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
                .filter_map(|stat| {
                    let (name, rest) = stat.split_once(") ")?;
                    Some(format!("{}:{}", name.split_once(" (")?.1, rest.split(' ').next()?))
                })
                .collect()
        })
        .unwrap_or_default();
    let _ = Command::new("mount").args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"]).stderr(Stdio::null()).status();
    let counters = || -> String {
        let Ok(dirs) = std::fs::read_dir("/sys/kernel/debug/kvm") else { return "no KVM debugfs".into() };
        let vm = dirs.flatten().find(|d| d.file_name().to_string_lossy().starts_with(&format!("{pid}-")));
        let Some(vm) = vm else { return "no KVM debugfs entry for the VM".into() };
        ["exits", "halt_exits", "io_exits", "mmio_exits", "pf_taken", "pf_fixed", "irq_injections"]
            .iter()
            .map(|f| format!("{f}={}", std::fs::read_to_string(vm.path().join(f)).unwrap_or_default().trim()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let before = counters();
    std::thread::sleep(Duration::from_secs(5));
    format!("threads {}; KVM {before}; 5 s later {}", states.join(" "), counters())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs inside L1: `xtask nested-bench-inner VMM KERNEL INITRD ROUNDS`.
pub fn inner(args: &[String]) -> Result<()> {
    let [vmm, kernel, initrd, rounds] = args else { bail!("usage: xtask nested-bench-inner VMM KERNEL INITRD ROUNDS") };
    let rounds: usize = rounds.parse().context("ROUNDS")?;
    let (vmm, kernel, initrd) = (PathBuf::from(vmm), PathBuf::from(kernel), PathBuf::from(initrd));
    let all = [Vmm::Ours, Vmm::QemuPc, Vmm::QemuMicrovm];
    // (pages, vmm) -> the rounds' times and peak RSS.
    let mut times: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); all.len()]; Pages::ALL.len()];
    let mut rss = times.clone();
    // A boot that does not reach the agent (L2 guests on huge pages sometimes stall in the
    // nested L1, whatever the VMM: MACHINE-FACTS.md) is counted and left out of the medians.
    let mut stalls = vec![vec![0usize; all.len()]; Pages::ALL.len()];
    // Interleaved rounds, so a slow phase of the shared machine hits every VMM alike.
    for round in 0..rounds {
        for (p, pages) in Pages::ALL.iter().enumerate() {
            pages.apply()?;
            for (i, which) in all.iter().enumerate() {
                match boot_once(*which, &vmm, &kernel, &initrd) {
                    Ok((t, kib)) => {
                        println!("bench: round {} {:<11} {:<22} ready {:>7.1} ms  peak RSS {:>7} KiB", round + 1, pages.name(), which.name(), t.as_secs_f64() * 1e3, kib);
                        times[p][i].push(t.as_secs_f64() * 1e3);
                        rss[p][i].push(kib as f64);
                    }
                    Err(e) => {
                        println!("bench: round {} {:<11} {:<22} STALLED: {e:#}", round + 1, pages.name(), which.name());
                        stalls[p][i] += 1;
                    }
                }
            }
        }
    }
    println!("bench: medians of {rounds} rounds; {VCPUS} vCPU, {MEMORY_MIB} MiB, ELF vmlinux (PVH), the guest initramfs, cmdline {CMDLINE:?} (+ {NO_PCI:?} for vmm and microvm, which have no PCI bus)");
    for (p, pages) in Pages::ALL.iter().enumerate() {
        let (t_pc, r_pc) = (median(&times[p][1]), median(&rss[p][1]));
        for (i, which) in all.iter().enumerate() {
            let (t, r) = (median(&times[p][i]), median(&rss[p][i]));
            println!(
                "bench: {:<11} {:<22} spawn to agent ready {:>7.1} ms ({:.2}x faster than QEMU -M pc), peak RSS {:>7.0} KiB ({:.2}x of QEMU -M pc); {} of {rounds} boots, {} stalled",
                pages.name(),
                which.name(),
                t,
                t_pc / t,
                r,
                r / r_pc,
                times[p][i].len(),
                stalls[p][i]
            );
        }
    }
    Ok(())
}

/// `cargo xtask nested-bench [--rounds N] [--factory | --template]`.
pub fn task(args: &[String]) -> Result<()> {
    let mut rounds = 5usize;
    let mut bench = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => rounds = it.next().and_then(|s| s.parse().ok()).filter(|n| *n > 0).context("--rounds needs a positive number")?,
            "--factory" => bench = Some("factory"),
            "--template" => bench = Some("template"),
            other => bail!("unknown argument {other:?}; usage: cargo xtask nested-bench [--rounds N] [--factory | --template]"),
        }
    }
    if let Some(name) = bench {
        return factory_bench(name);
    }
    let target = crate::build::target_dir()?;
    crate::build::build_vmm_release()?;
    let image = crate::guest::build(&target)?;
    let xtask = std::env::current_exe().context("the xtask binary")?;
    let command: Vec<String> = vec![
        xtask.display().to_string(),
        "nested-bench-inner".into(),
        target.join("release/vmm").display().to_string(),
        image.vmlinux.display().to_string(),
        image.initramfs.display().to_string(),
        rounds.to_string(),
    ];
    let l1_image = l1::build_with(&target, &command)?;
    let per_round = 6 * BOOT_TIMEOUT.as_secs();
    let outcome = run(&l1_image, Duration::from_secs(per_round * rounds as u64 + 60))?;
    println!("nested-bench: L1 up in {:.1} s, ran {:.1} s", outcome.boot.as_secs_f64(), outcome.ran.as_secs_f64());
    if outcome.status != 0 {
        bail!("the benchmark failed in L1 (exit status {})", outcome.status);
    }
    Ok(())
}

/// Longest a VM factory benchmark may run in L1 (five rounds of a cold boot, a cached run
/// and a hand-out, then five raw hand-outs, each with a pool refill of one L2 boot; or the
/// template's five rounds of three kinds and its eight VMs at once).
const FACTORY_BENCH_TIMEOUT: Duration = Duration::from_secs(1500);

/// `cargo xtask nested-bench --factory` or `--template`: a VM factory benchmark
/// (`tests/benches/factory.rs`, `tests/benches/template.rs`) on our vmm (its release build, as
/// the other benchmarks) through the `kvm` plugin, inside L1 as root.
fn factory_bench(name: &str) -> Result<()> {
    let target = crate::build::target_dir()?;
    crate::build::build_for_nested()?;
    crate::build::build_vmm_release()?;
    crate::guest::build(&target)?;
    let exe = bench_executable(name)?;
    let vmm = target.join("release").join("vmm");
    let script = format!(
        "export TMPDIR=/tmp SANDBOX_TESTS_STRICT=1 RUST_BACKTRACE=1 SANDBOX_TESTS_VMM='{}'\nexec '{}' --hypervisor kvm\n",
        vmm.display(),
        exe.display()
    );
    let image = l1::build_with(&target, &["sh".into(), "-c".into(), script])?;
    let outcome = run(&image, FACTORY_BENCH_TIMEOUT)?;
    println!("nested-bench: L1 up in {:.1} s, ran {:.1} s", outcome.boot.as_secs_f64(), outcome.ran.as_secs_f64());
    if !outcome.kvm {
        bail!("L1 has no /dev/kvm: kvm_amd did not load (see the console above)");
    }
    if outcome.status != 0 {
        bail!("the {name} benchmark failed in L1 (exit status {})", outcome.status);
    }
    Ok(())
}

/// Builds the bench target `name` with the dev profile, as the test suite's builds
/// (`--workspace`, so the dependencies are those already built), and returns its executable.
fn bench_executable(name: &str) -> Result<PathBuf> {
    crate::build::executable(&["bench", "--workspace", "--bench", name, "--profile", "dev", "--no-run"], name, |msg| {
        msg["target"]["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bench"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn the_three_command_lines_share_kernel_initrd_and_sizes() {
        let (v, k, i, d) = (Path::new("/v"), Path::new("/k"), Path::new("/i"), Path::new("/d"));
        for which in [Vmm::Ours, Vmm::QemuPc, Vmm::QemuMicrovm] {
            let c = which.command(v, k, i, d);
            let args: Vec<String> = c.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
            for needed in ["/k", "/i", CMDLINE, "256"] {
                assert!(args.iter().any(|a| a.starts_with(needed)), "{which:?} lacks {needed}: {args:?}");
            }
        }
    }
}
