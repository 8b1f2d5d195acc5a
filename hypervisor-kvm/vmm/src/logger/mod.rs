//! The vmm's logging: `tracing` events to stderr (the plugin sends it to `vmm.log`), and the
//! rate limiter every guest-triggered log goes through.

mod rate_limit;

pub use rate_limit::RateLimit;

/// Installs the log subscriber: INFO and above, to stderr, coloured only on a terminal (the
/// plugin's `vmm.log` is plain text). Call it after daemonizing (it starts no thread, but the
/// daemon's stderr is the one to write to).
pub fn init() {
    let colour = error_report::wants_colour(&std::io::stderr());
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_ansi(colour).with_max_level(tracing::Level::INFO).init();
}
