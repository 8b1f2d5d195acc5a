//! A dynamically loaded plugin's `tracing` events reach the host's subscriber, tagged with
//! the plugin's name.

use integration_tests::workspace_plugin;
use runtime_core::plugins::Registry;
use serde_json::json;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl<S: tracing::Subscriber> Layer<S> for Captured {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields(format!("{} {}", event.metadata().level(), event.metadata().target()));
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[test]
fn plugin_events_reach_the_host_subscriber_with_the_plugin_name() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(captured.clone());
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut registry = Registry::new();
    registry.add_library(&workspace_plugin("storage_fs_plugin")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = registry.open_storage("fs", &json!({"path": dir.path()})).unwrap();
    std::fs::write(dir.path().join("%zz-foreign-file"), b"x").unwrap();
    assert!(store.list("").unwrap().is_empty());

    let events = captured.0.lock().unwrap();
    let forwarded = events
        .iter()
        .find(|e| e.contains("ignoring a file that is not a record"))
        .unwrap_or_else(|| panic!("plugin event not forwarded; host saw {events:#?}"));
    assert!(forwarded.starts_with("WARN plugin"), "{forwarded}");
    assert!(forwarded.contains("plugin=\"fs\""), "{forwarded}");
    assert!(forwarded.contains("origin=\"storage_fs::store\""), "{forwarded}");
    assert!(forwarded.contains("%zz-foreign-file"), "{forwarded}");
}
