//! Guest figures: QEMU (TCG) spawn to agent-ready over 5 boots (median, min, max), the
//! agent's RSS in the guest, and the sizes of the image parts. Boots take seconds, so this is
//! a plain bench binary, not criterion. Run: `cargo bench -p integration-tests --bench guest_boot`
//! (or `cargo xtask bench`), after `cargo xtask guest`.

use integration_tests::qemu::{guest_image, qemu_available, Guest};
use std::time::Duration;

const RUNS: usize = 5;

fn size(path: &std::path::Path) -> String {
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    format!("{:.1} MiB ({bytes} bytes)", bytes as f64 / (1 << 20) as f64)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let (Some(image), true) = (guest_image(), qemu_available()) else {
        eprintln!("guest_boot: needs `cargo xtask guest` and qemu-system-x86_64");
        std::process::exit(1);
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for run in 1..=RUNS {
        let guest = Guest::boot(&image);
        let (elapsed, kib) = runtime.block_on(async {
            let agent = guest.connect(Duration::from_secs(180)).await;
            let elapsed = guest.spawned.elapsed();
            (elapsed, agent.health().await.expect("health").agent_rss_kib)
        });
        println!("boot {run}: agent ready {:.2} s after spawning QEMU; agent RSS {kib} KiB", elapsed.as_secs_f64());
        times.push(elapsed);
        rss.push(kib);
    }
    times.sort();
    rss.sort();
    println!(
        "QEMU -M pc TCG, 1 vCPU, {} MiB, bzImage: spawn to agent-ready median {:.2} s (min {:.2}, max {:.2}, {RUNS} runs)",
        integration_tests::qemu::MEMORY_MIB,
        times[RUNS / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[RUNS - 1].as_secs_f64()
    );
    println!("agent RSS in the guest after the handshake: median {} KiB", rss[RUNS / 2]);
    println!("bzImage {}", size(&image.vmlinuz));
    println!("vmlinux (ELF, PVH) {}", size(&image.vmlinux));
    println!("initramfs (gzip cpio, agent + modules) {}", size(&image.initramfs));
    let agent = image.initramfs.parent().expect("guest dir").parent().expect("target").join("x86_64-unknown-linux-gnu/release/guest-agent");
    println!("agent binary (static, stripped) {}", size(&agent));
    println!("busybox rootfs (ext4) {}", size(&image.rootfs));
}
