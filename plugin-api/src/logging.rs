//! Plugin logs reach the host's `tracing` subscriber through a callback.
//!
//! A dynamically loaded plugin has its own copy of the `tracing` statics, so its events would
//! be lost. At load time the host passes a [`HostContext`]; the plugin installs a subscriber
//! (in its own copy of `tracing`) that forwards each event to [`HostContext::log`], tagged with
//! the plugin's name. Statically linked plugins share the host's `tracing` and need none of this.

use abi_stable::{std_types::RStr, StableAbi};
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// A log level across the ABI.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct LogLevel(pub u8);

impl LogLevel {
    /// Nothing is logged.
    pub const OFF: Self = Self(0);
    /// `ERROR`.
    pub const ERROR: Self = Self(1);
    /// `WARN`.
    pub const WARN: Self = Self(2);
    /// `INFO`.
    pub const INFO: Self = Self(3);
    /// `DEBUG`.
    pub const DEBUG: Self = Self(4);
    /// `TRACE`.
    pub const TRACE: Self = Self(5);

    /// The level of a `tracing` level.
    pub fn from_tracing(level: &Level) -> Self {
        match *level {
            Level::ERROR => Self::ERROR,
            Level::WARN => Self::WARN,
            Level::INFO => Self::INFO,
            Level::DEBUG => Self::DEBUG,
            Level::TRACE => Self::TRACE,
        }
    }

    /// The most verbose level a `tracing` level filter lets through.
    pub fn from_filter(filter: LevelFilter) -> Self {
        filter.into_level().map_or(Self::OFF, |l| Self::from_tracing(&l))
    }

    /// The `tracing` level filter of this level.
    pub fn to_filter(self) -> LevelFilter {
        match self {
            Self::OFF => LevelFilter::OFF,
            Self::ERROR => LevelFilter::ERROR,
            Self::WARN => LevelFilter::WARN,
            Self::INFO => LevelFilter::INFO,
            Self::DEBUG => LevelFilter::DEBUG,
            _ => LevelFilter::TRACE,
        }
    }
}

/// One log event from a plugin.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct LogRecord<'a> {
    /// The name of the plugin that logged it.
    pub plugin: RStr<'a>,
    /// Its level.
    pub level: LogLevel,
    /// The `tracing` target inside the plugin (usually a module path).
    pub target: RStr<'a>,
    /// The message, followed by the event's other fields as ` key=value`.
    pub message: RStr<'a>,
}

/// What the host gives a dynamically loaded plugin when it initializes it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HostContext {
    /// Receives the plugin's log events.
    pub log: extern "C" fn(&LogRecord<'_>),
    /// The most verbose level the host wants; the plugin drops anything above it.
    pub max_level: LogLevel,
}

/// Installs, in the plugin's own copy of `tracing`, a global subscriber that forwards events
/// to the host, and a panic hook that logs panics through it. Called by the code the export
/// macros generate, in dynamically loaded plugins only. A second call does nothing.
pub fn install_forwarder(host: HostContext, plugin: &'static str) {
    let layer = Forwarder { host, plugin };
    let subscriber = tracing_subscriber::registry().with(host.max_level.to_filter()).with(layer);
    if tracing::subscriber::set_global_default(subscriber).is_ok() {
        std::panic::set_hook(Box::new(move |info| {
            let message = format!("panic: {info}");
            (host.log)(&LogRecord {
                plugin: RStr::from(plugin),
                level: LogLevel::ERROR,
                target: RStr::from("panic"),
                message: RStr::from(message.as_str()),
            });
        }));
    }
}

struct Forwarder {
    host: HostContext,
    plugin: &'static str,
}

impl<S: Subscriber> Layer<S> for Forwarder {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = MessageText::default();
        event.record(&mut text);
        let meta = event.metadata();
        (self.host.log)(&LogRecord {
            plugin: RStr::from(self.plugin),
            level: LogLevel::from_tracing(meta.level()),
            target: RStr::from(meta.target()),
            message: RStr::from(text.finish().as_str()),
        });
    }
}

#[derive(Default)]
struct MessageText {
    message: String,
    fields: String,
}

impl MessageText {
    fn finish(mut self) -> String {
        self.message.push_str(&self.fields);
        self.message
    }
}

impl Visit for MessageText {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());

    extern "C" fn collect(record: &LogRecord<'_>) {
        SEEN.lock().unwrap().push(format!(
            "{}|{:?}|{}|{}",
            record.plugin, record.level, record.target, record.message
        ));
    }

    #[test]
    fn events_are_forwarded_with_plugin_name_fields_and_level_filter() {
        let host = HostContext { log: collect, max_level: LogLevel::INFO };
        let subscriber = tracing_subscriber::registry()
            .with(host.max_level.to_filter())
            .with(Forwarder { host, plugin: "demo" });
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "demo::store", key = "a/b", "saved {} bytes", 3);
            tracing::debug!("dropped by the filter");
        });
        let seen = SEEN.lock().unwrap();
        assert_eq!(*seen, vec!["demo|LogLevel(3)|demo::store|saved 3 bytes key=a/b".to_owned()]);
    }
}
