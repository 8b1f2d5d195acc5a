//! What the hypervisor-kvm end-to-end tests need: a `/dev/kvm` that can boot a Linux guest
//! (hardware virtualization, as in the nested L1 of `cargo xtask nested-test`), the `vmm`
//! binary and the guest image.

use crate::qemu::{guest_image, GuestImage};
use std::path::PathBuf;

/// Whether `/dev/kvm` can run a standard Linux guest (the vmm's own check,
/// [`vmm::host::check`]). This host's `/dev/kvm` (kvm_pvm) cannot
/// (MACHINE-FACTS.md).
pub fn hardware_kvm() -> bool {
    vmm::host::check().is_ok()
}

/// The `vmm` binary of this build, or the one `SANDBOX_TESTS_VMM` names (the benchmarks run
/// the release build).
pub fn vmm_binary() -> PathBuf {
    std::env::var_os("SANDBOX_TESTS_VMM").map(PathBuf::from).unwrap_or_else(|| crate::profile_dir().join("vmm"))
}

/// The guest image for a hypervisor-kvm end-to-end test, or `None` after saying why it
/// skips. Without hardware KVM the test cannot run on this machine at all (the nested tier
/// runs it), so that skip is allowed even in strict mode; missing root, `vmm` or image where
/// KVM works fails under strict mode.
pub fn image_or_skip() -> Option<GuestImage> {
    if !hardware_kvm() {
        eprintln!("SKIP: /dev/kvm cannot boot a Linux guest here (no vmx/svm); `cargo xtask nested-test` runs this test in a nested L1");
        return None;
    }
    if crate::skip_unless(crate::is_root(), "the VM's network is a tap the vmm creates, which needs root") {
        return None;
    }
    if crate::skip_unless(vmm_binary().exists(), "the vmm binary is not built: cargo build -p vmm") {
        return None;
    }
    let image = guest_image();
    if crate::skip_unless(image.is_some(), "no guest image: run `cargo xtask guest`") {
        return None;
    }
    image
}

/// A child process (a vmm, a virtiofsd) killed and reaped when dropped, so a failing test
/// leaves nothing running.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
