//! The `cache` VM factory as a `.so`. The logic lives in the `factory-cache` crate.
plugin_api::export_plugin!(factory_cache::CachePlugin);
