//! Fetching Debian's kernel package with `apt-get download` and unpacking the parts the guest
//! needs (the bzImage and the modules tree) without installing anything on the host.

use crate::deps::run;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The metapackage that names the current Debian kernel.
const METAPACKAGE: &str = "linux-image-amd64";

/// One kernel package as apt describes it.
#[derive(Debug, Clone)]
pub struct KernelPackage {
    /// Package name, e.g. `linux-image-6.1.0-56-amd64`.
    pub name: String,
    /// Debian version, e.g. `6.1.192-2`.
    pub version: String,
    /// SHA-256 of the `.deb` from the archive's index.
    pub sha256: String,
    /// The file `apt-get download` writes.
    pub file_name: String,
}

fn apt_cache(args: &[&str]) -> Result<String> {
    let out = Command::new("apt-cache").args(args).output().context("running apt-cache")?;
    if !out.status.success() {
        bail!("apt-cache {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Resolves `linux-image-amd64` to the kernel package it depends on, from apt's index.
pub fn resolve() -> Result<KernelPackage> {
    let meta = apt_cache(&["show", "--no-all-versions", METAPACKAGE])?;
    let depends = field(&meta, "Depends").with_context(|| format!("{METAPACKAGE} has no Depends field"))?;
    let name = depends
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{METAPACKAGE} depends on no linux-image package: {depends}"))?
        .to_owned();
    let show = apt_cache(&["show", "--no-all-versions", &name])?;
    let version = field(&show, "Version").context("kernel package without Version")?;
    let sha256 = field(&show, "SHA256").context("kernel package without SHA256")?;
    let filename = field(&show, "Filename").context("kernel package without Filename")?;
    let file_name = filename.rsplit('/').next().unwrap_or(&filename).replace(':', "%3a");
    Ok(KernelPackage { name, version, sha256, file_name })
}

fn field(stanza: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}: ");
    stanza.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().to_owned())
}

/// Downloads the package into `dir` unless a file with the index's checksum is already there.
pub fn download(pkg: &KernelPackage, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(&pkg.file_name);
    if path.exists() && sha256_file(&path)? == pkg.sha256 {
        return Ok(path);
    }
    eprintln!("xtask: apt-get download {}={}", pkg.name, pkg.version);
    run(Command::new("apt-get").arg("download").arg(format!("{}={}", pkg.name, pkg.version)).current_dir(dir))?;
    let got = sha256_file(&path).with_context(|| format!("apt-get download wrote no {}", path.display()))?;
    if got != pkg.sha256 {
        bail!("{}: SHA-256 {got} does not match the archive index ({})", path.display(), pkg.sha256);
    }
    Ok(path)
}

/// SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `unpack` found.
pub struct Unpacked {
    /// The kernel release (`uname -r`), from the modules directory.
    pub release: String,
    /// The bzImage.
    pub bzimage: PathBuf,
    /// `lib/modules/<release>`.
    pub modules: PathBuf,
}

/// Unpacks `boot/vmlinuz-*` and `lib/modules/**` of the package into `dest` (a fresh directory
/// written beside it and renamed into place, so an interrupted run leaves nothing half-done).
pub fn unpack(deb: &Path, dest: &Path) -> Result<Unpacked> {
    if !dest.exists() {
        let tmp = dest.with_extension("partial");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        extract_data(deb, &tmp).with_context(|| format!("unpacking {}", deb.display()))?;
        std::fs::rename(&tmp, dest)?;
    }
    let modules_root = dest.join("lib/modules");
    let release = std::fs::read_dir(&modules_root)
        .with_context(|| format!("{} has no lib/modules", deb.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .context("no kernel release under lib/modules")?;
    let bzimage = dest.join("boot").join(format!("vmlinuz-{release}"));
    if !bzimage.is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    Ok(Unpacked { modules: modules_root.join(&release), bzimage, release })
}

fn extract_data(deb: &Path, dest: &Path) -> Result<()> {
    let mut archive = ar::Archive::new(BufReader::new(File::open(deb)?));
    while let Some(entry) = archive.next_entry() {
        let entry = entry?;
        if entry.header().identifier() != b"data.tar.xz" {
            continue;
        }
        let xz = liblzma::read::XzDecoder::new(BufReader::new(entry));
        return extract_tar(xz, dest);
    }
    bail!("no data.tar.xz member")
}

fn extract_tar(reader: impl Read, dest: &Path) -> Result<()> {
    let mut tar = tar::Archive::new(reader);
    for entry in tar.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let rel: PathBuf = path.components().filter(|c| matches!(c, Component::Normal(_))).collect();
        let wanted = rel.starts_with("boot") || rel.starts_with("lib/modules");
        if !wanted || !entry.header().entry_type().is_file() {
            continue;
        }
        let out = dest.join(&rel);
        std::fs::create_dir_all(out.parent().context("entry without parent")?)?;
        entry.unpack(&out)?;
    }
    Ok(())
}
