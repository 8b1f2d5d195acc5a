//! The filesystem storage plugin as a `.so`. The logic lives in the `storage-fs` crate.
plugin_api::export_plugin!(storage_fs::FsPlugin);
