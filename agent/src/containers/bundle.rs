//! Preparing a container's bundle: checking the OCI spec, mounting the rootfs the host named,
//! and writing the `config.json` libcontainer reads.

use super::ContainerError;
use agent_protocol::pb;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{RootBuilder, Spec};
use std::path::{Path, PathBuf};

/// Longest container or exec id.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id: 1 to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`, so it is safe as a
/// path component and a cgroup name.
pub fn validate_id(kind: &str, id: &str) -> Result<(), ContainerError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if id.is_empty() || id.len() > MAX_ID_LEN || !id.chars().all(ok_char) || id.starts_with(['.', '-']) {
        return Err(ContainerError::InvalidArgument(format!(
            "{kind} id {id:?} must be 1 to {MAX_ID_LEN} of A-Z a-z 0-9 _ . - and not start with . or -"
        )));
    }
    Ok(())
}

/// Parses and checks the spec; points its root at `rootfs` and gives it a cgroup path.
pub fn prepare_spec(id: &str, json: &[u8], rootfs: &Path) -> Result<Spec, ContainerError> {
    let mut spec: Spec = serde_json::from_slice(json).map_err(|e| ContainerError::InvalidSpec(e.to_string()))?;
    let process = spec.process().as_ref().ok_or_else(|| ContainerError::InvalidSpec("the spec has no process".into()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(ContainerError::InvalidSpec("process.args is empty".into()));
    }
    let readonly = spec.root().as_ref().and_then(|r| r.readonly()).unwrap_or(false);
    let root = RootBuilder::default().path(rootfs).readonly(readonly).build().map_err(|e| ContainerError::InvalidSpec(e.to_string()))?;
    spec.set_root(Some(root));
    let mut linux = spec.linux().clone().ok_or_else(|| ContainerError::InvalidSpec("the spec has no linux section".into()))?;
    if linux.cgroups_path().is_none() {
        linux.set_cgroups_path(Some(PathBuf::from(format!("/agent/{id}"))));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Mounts the container's root filesystem at `target`: the source itself, or with
/// `writable_layer` the source read-only under an overlay whose upper layer is a tmpfs (the
/// lower and layer mounts sit next to `target`, in the bundle).
pub fn mount_rootfs(storage: &pb::Storage, target: &Path) -> Result<(), ContainerError> {
    if !storage.writable_layer {
        return mount_source(storage, target);
    }
    let bundle = target.parent().unwrap_or(Path::new("/"));
    let (lower, layer) = (bundle.join("lower"), bundle.join("layer"));
    let io = |what: String| move |e: nix::Error| ContainerError::Io { what, source: e.into() };
    for dir in [&lower, &layer] {
        std::fs::create_dir_all(dir).map_err(|e| ContainerError::Io { what: format!("creating {}", dir.display()), source: e })?;
    }
    mount_source(&pb::Storage { read_only: true, writable_layer: false, ..storage.clone() }, &lower)?;
    let layered = (|| {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(Some("tmpfs"), &layer, Some("tmpfs"), flags, Some("mode=0755")).map_err(io(format!("mounting a tmpfs on {}", layer.display())))?;
        for dir in ["upper", "work"] {
            std::fs::create_dir(layer.join(dir)).map_err(|e| ContainerError::Io { what: format!("creating {dir} in {}", layer.display()), source: e })?;
        }
        let data = format!("lowerdir={},upperdir={},workdir={}", lower.display(), layer.join("upper").display(), layer.join("work").display());
        mount(Some("overlay"), target, Some("overlay"), MsFlags::empty(), Some(data.as_str())).map_err(io(format!("mounting an overlay on {}", target.display())))
    })();
    if layered.is_err() {
        let _ = umount2(&layer, MntFlags::MNT_DETACH);
        let _ = umount2(&lower, MntFlags::MNT_DETACH);
    }
    layered
}

/// Mounts `storage`'s source at `target`.
fn mount_source(storage: &pb::Storage, target: &Path) -> Result<(), ContainerError> {
    let mut flags = MsFlags::empty();
    if storage.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let options = storage.options.join(",");
    let data = (!options.is_empty()).then_some(options.as_str());
    let io = |what: String| move |e: nix::Error| ContainerError::Io { what, source: e.into() };
    let source = match storage.driver.as_str() {
        "blk" if !storage.source.starts_with('/') => disk_by_serial(Path::new("/sys/block"), &storage.source)?.display().to_string(),
        _ => storage.source.clone(),
    };
    let storage = &pb::Storage { source, ..storage.clone() };
    match storage.driver.as_str() {
        "blk" | "bind" => {
            if !Path::new(&storage.source).exists() {
                return Err(ContainerError::NoRootfs { path: storage.source.clone() });
            }
            if storage.driver == "bind" {
                let what = format!("bind-mounting {} on {}", storage.source, target.display());
                mount(Some(storage.source.as_str()), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).map_err(io(what.clone()))?;
                if storage.read_only {
                    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                    mount(None::<&str>, target, None::<&str>, ro, None::<&str>).map_err(io(what))?;
                }
                return Ok(());
            }
            if storage.fstype.is_empty() {
                return Err(ContainerError::InvalidArgument("rootfs driver blk needs an fstype".into()));
            }
            let what = format!("mounting {} ({}) on {}", storage.source, storage.fstype, target.display());
            mount(Some(storage.source.as_str()), target, Some(storage.fstype.as_str()), flags, data).map_err(io(what))
        }
        "virtiofs" => {
            let what = format!("mounting virtio-fs tag {} on {}", storage.source, target.display());
            mount(Some(storage.source.as_str()), target, Some("virtiofs"), flags, data).map_err(io(what))
        }
        other => Err(ContainerError::InvalidArgument(format!("rootfs driver {other:?} is not blk, virtiofs or bind"))),
    }
}

/// The `/dev` node of the virtio-blk disk whose serial number is `serial`, found through
/// `sys_block` (`/sys/block/vdX/serial`): without udev there are no `/dev/disk/by-id` links.
fn disk_by_serial(sys_block: &Path, serial: &str) -> Result<PathBuf, ContainerError> {
    let entries = std::fs::read_dir(sys_block)
        .map_err(|e| ContainerError::Io { what: format!("listing {}", sys_block.display()), source: e })?;
    let mut names: Vec<String> = entries.filter_map(Result::ok).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    for name in names {
        let found = std::fs::read_to_string(sys_block.join(&name).join("serial")).unwrap_or_default();
        if found.trim_end_matches(['\n', '\0']) == serial {
            return Ok(Path::new("/dev").join(name));
        }
    }
    Err(ContainerError::NoRootfs { path: format!("a disk with serial {serial:?} (none in {})", sys_block.display()) })
}

/// Unmounts the rootfs and, if it had a writable layer, the layer and the lower mount
/// (lazily: a process that escaped the cgroup must not block removal).
pub fn unmount_rootfs(target: &Path) {
    let _ = umount2(target, MntFlags::MNT_DETACH);
    if let Some(bundle) = target.parent() {
        for dir in ["layer", "lower"] {
            if bundle.join(dir).exists() {
                let _ = umount2(&bundle.join(dir), MntFlags::MNT_DETACH);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_disk_by_its_serial() {
        let sys = tempfile::tempdir().expect("tempdir");
        for (dev, serial) in [("vda", "rootfs\n"), ("vdb", "data\0\0"), ("loop0", "")] {
            std::fs::create_dir(sys.path().join(dev)).expect("mkdir");
            std::fs::write(sys.path().join(dev).join("serial"), serial).expect("write");
        }
        assert_eq!(disk_by_serial(sys.path(), "rootfs").expect("rootfs"), Path::new("/dev/vda"));
        assert_eq!(disk_by_serial(sys.path(), "data").expect("data"), Path::new("/dev/vdb"));
        let e = disk_by_serial(sys.path(), "nope").unwrap_err().to_string();
        assert!(e.contains("serial \"nope\""), "{e}");
    }
}
