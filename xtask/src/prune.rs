//! Keeps the reused cargo target directory bounded. CI reuses it across runs (a cold build
//! takes most of an hour here), on a disk everyone's runs share, so `cargo xtask test` ends
//! by measuring it and, past [`LIMIT_GIB`], pruning it in steps until it fits:
//!
//! 1. the incremental-compilation data (`*/incremental`): caches that only speed up rebuilds
//!    of the workspace's own crates, and grow with every change;
//! 2. the build outputs (`debug/`, `release/`, the guest agent's target): the next run builds
//!    them again, cold. The guest image, the nested L1's files and the fixtures stay.

use std::path::Path;

/// The size past which the target directory is pruned.
pub const LIMIT_GIB: u64 = 40;

const GIB: u64 = 1 << 30;

/// The bytes `path` takes on disk (allocated blocks, so sparse files count as what they use).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path).map(|d| d.filter_map(Result::ok).map(|e| disk_usage(&e.path())).sum()).unwrap_or(0);
    own + children
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// Measures `target` and prunes it past the limit; returns the line to print.
pub fn prune(target: &Path) -> String {
    let limit = LIMIT_GIB * GIB;
    let before = disk_usage(target);
    if before <= limit {
        return format!("target directory {}: {} (limit {LIMIT_GIB} GiB), nothing pruned", target.display(), gib(before));
    }
    let steps: [(&str, &[&str]); 2] = [
        ("incremental data", &["debug/incremental", "release/incremental", "x86_64-unknown-linux-gnu/release/incremental", "x86_64-unknown-linux-gnu/debug/incremental"]),
        ("build outputs", &["debug", "release", "x86_64-unknown-linux-gnu", "demo"]),
    ];
    let mut removed = Vec::new();
    for (what, dirs) in steps {
        for dir in dirs {
            let _ = std::fs::remove_dir_all(target.join(dir));
        }
        removed.push(what);
        if disk_usage(target) <= limit {
            break;
        }
    }
    let after = disk_usage(target);
    format!(
        "target directory {}: {} was past the limit of {LIMIT_GIB} GiB; removed the {}: now {}",
        target.display(),
        gib(before),
        removed.join(", then the "),
        gib(after)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_blocks_of_the_whole_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), vec![1u8; 64 * 1024]).unwrap();
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let used = disk_usage(dir.path());
        assert!((64 * 1024..1 << 20).contains(&used), "{used}: the file's 64 KiB, the sparse GiB almost nothing");
        let line = prune(dir.path());
        assert!(line.contains("nothing pruned") && line.contains("limit 40 GiB"), "{line}");
    }
}
