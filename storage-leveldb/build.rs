//! Empty on purpose: the `[build-dependencies]` in Cargo.toml pin host features so that every
//! cargo command builds RocksDB's C++ once (see the comment there).

fn main() {}
