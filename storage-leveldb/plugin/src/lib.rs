//! The LevelDB-family storage plugin as a `.so`. The logic lives in `storage-leveldb`.
plugin_api::export_plugin!(storage_leveldb::LevelDbPlugin);
