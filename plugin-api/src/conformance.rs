//! Conformance kits: the behaviour every plugin of a kind must show, runnable against any
//! loaded plugin: [`storage`], [`hypervisor`] (boots the guest image) and [`factory`].
//! `sandboxctl conformance LIB.so` runs the kit of the library's kind, loaded as the runtime
//! loads it (`docs/PLUGIN-VENDORS.md`); the workspace's own tests run them against the
//! built-in plugins (`tests/tests/storage_conformance.rs`, `tests/tests/factory.rs`), so a kit
//! that cannot fail would show there.

pub mod factory;
pub mod hypervisor;
pub mod storage;

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The check's name.
    pub name: &'static str,
    /// `Ok` or what went wrong.
    pub outcome: Result<(), String>,
}

/// The outcome of a whole kit.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per check, in the order they ran.
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &CheckResult> {
        self.checks.iter().filter(|c| c.outcome.is_err())
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for check in &self.checks {
            match &check.outcome {
                Ok(()) => writeln!(f, "ok   {}", check.name)?,
                Err(e) => writeln!(f, "FAIL {}: {e}", check.name)?,
            }
        }
        let failed = self.failures().count();
        write!(f, "{} passed, {} failed", self.checks.len() - failed, failed)
    }
}
