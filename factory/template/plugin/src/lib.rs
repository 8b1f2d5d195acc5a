//! The `template` VM factory as a `.so`. The logic lives in the `factory-template` crate.
plugin_api::export_plugin!(factory_template::TemplatePlugin);
