//! The host's end of plugin logging: the callback dynamically loaded plugins log through.

use plugin_api::logging::{HostContext, LogLevel, LogRecord};
use std::panic::{catch_unwind, AssertUnwindSafe};
use tracing::level_filters::LevelFilter;

/// Re-emits a plugin's event in the host's `tracing`, with target `plugin` and the plugin's
/// name and original target as fields.
extern "C" fn host_log(record: &LogRecord<'_>) {
    // A panicking subscriber must not unwind into the plugin's frames.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let plugin = record.plugin.as_str();
        let origin = record.target.as_str();
        let message = record.message.as_str();
        match record.level {
            LogLevel::ERROR => tracing::error!(target: "plugin", plugin, origin, "{message}"),
            LogLevel::WARN => tracing::warn!(target: "plugin", plugin, origin, "{message}"),
            LogLevel::INFO => tracing::info!(target: "plugin", plugin, origin, "{message}"),
            LogLevel::DEBUG => tracing::debug!(target: "plugin", plugin, origin, "{message}"),
            _ => tracing::trace!(target: "plugin", plugin, origin, "{message}"),
        }
    }));
}

/// The context passed to each dynamically loaded plugin's `init`.
pub fn host_context() -> HostContext {
    HostContext { log: host_log, max_level: LogLevel::from_filter(LevelFilter::current()) }
}
