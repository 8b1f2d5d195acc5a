//! `cargo xtask <task>`: the project's set-up and test entry points.
//!
//! - `demo`: installs the Debian packages the build needs, builds the CLI and the plugin
//!   libraries, and runs the main job.
//! - `test`: installs what the tests need, builds the plugin libraries and runs the suite.
//! - `bench`: runs the benchmarks (release build).

mod deps;
mod tasks;

use anyhow::{bail, Result};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => tasks::demo(),
        Some("test") => tasks::test(&args[1..]),
        Some("bench") => tasks::bench(&args[1..]),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn usage() -> Result<()> {
    bail!("usage: cargo xtask demo | test [nextest args] | bench [criterion args]")
}
