//! The `new` VM factory as a `.so`. The logic lives in the `factory-new` crate.
plugin_api::export_plugin!(factory_new::NewPlugin);
