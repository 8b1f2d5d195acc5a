//! The device options of the `vmm` command line (`--disk path=P,ro=on`, ...) and building
//! the device models from them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::devices::virtio::block::{Block, BlockError};
use crate::devices::virtio::console::{Console, ConsoleError};
use crate::devices::virtio::fs::{self, Fs, FsError};
use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;

/// Errors building the devices.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A virtio-blk device.
    #[error("disk {0}")]
    Block(String, #[source] BlockError),
    /// The virtio-console device of the serial ports.
    #[error("the serial ports")]
    Console(#[source] ConsoleError),
    /// A virtio-net device.
    #[error("the network device")]
    Net(#[source] NetError),
    /// The virtio-vsock device.
    #[error("the vsock device")]
    Vsock(#[source] VsockError),
    /// A virtio-fs device.
    #[error("the virtio-fs device {0:?}")]
    Fs(String, #[source] FsError),
    /// Two virtio-fs devices with one tag (the guest mounts by tag).
    #[error("two virtio-fs devices have the tag {0:?}")]
    DuplicateFsTag(String),
}

/// Builds the device models, in command-line order (all serial ports share one
/// virtio-console device, placed where the first one was given).
pub fn build(configs: &[DeviceConfig]) -> Result<Vec<Box<dyn VirtioDevice>>, DeviceError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    let ports: Vec<(String, PathBuf)> = configs
        .iter()
        .filter_map(|c| match c {
            DeviceConfig::SerialPort { name, socket } => Some((name.clone(), socket.clone())),
            _ => None,
        })
        .collect();
    let mut ports = Some(ports).filter(|p| !p.is_empty());
    let mut tags = std::collections::BTreeSet::new();
    for config in configs {
        if let DeviceConfig::Fs { tag, .. } = config {
            if !tags.insert(tag) {
                return Err(DeviceError::DuplicateFsTag(tag.clone()));
            }
        }
    }
    for config in configs {
        match config {
            DeviceConfig::Block { path, read_only, id } => {
                let block = Block::new(path, *read_only, id).map_err(|e| DeviceError::Block(path.display().to_string(), e))?;
                devices.push(Box::new(block));
            }
            DeviceConfig::Vsock { cid, socket } => {
                devices.push(Box::new(Vsock::new(*cid, socket).map_err(DeviceError::Vsock)?))
            }
            DeviceConfig::SerialPort { .. } => {
                if let Some(ports) = ports.take() {
                    devices.push(Box::new(Console::new(&ports).map_err(DeviceError::Console)?));
                }
            }
            DeviceConfig::Net { tap, mac } => devices.push(Box::new(Net::new(tap, *mac).map_err(DeviceError::Net)?)),
            DeviceConfig::Fs { tag, socket } => {
                devices.push(Box::new(Fs::new(tag, socket).map_err(|e| DeviceError::Fs(tag.clone(), e))?))
            }
        }
    }
    Ok(devices)
}

/// Errors in a device option.
#[derive(Debug, thiserror::Error)]
pub enum DeviceOptionError {
    /// A `key=value` pair is malformed, unknown, repeated or missing.
    #[error("--{option} {text:?}: {reason}")]
    Bad {
        /// The option (`disk`, `vsock`, ...).
        option: &'static str,
        /// What was given.
        text: String,
        /// What is wrong.
        reason: String,
    },
}

/// One device as the command line describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceConfig {
    /// `--disk path=P[,ro=on|off][,id=NAME]`: virtio-blk on a raw image.
    Block {
        /// The image file.
        path: PathBuf,
        /// Read-only for the guest.
        read_only: bool,
        /// The serial the guest reads (`VIRTIO_BLK_T_GET_ID`), at most 20 bytes.
        id: String,
    },
    /// `--vsock cid=N,socket=PATH`: virtio-vsock with a hybrid-vsock Unix socket.
    Vsock {
        /// The guest's CID (3 or more).
        cid: u64,
        /// The host-side Unix socket.
        socket: PathBuf,
    },
    /// `--serial-port name=NAME,socket=PATH` (repeatable; all ports share one
    /// virtio-console device).
    SerialPort {
        /// The port's name in the guest (`/sys/class/virtio-ports/*/name`).
        name: String,
        /// The host-side listening Unix socket.
        socket: PathBuf,
    },
    /// `--net tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`: virtio-net on a tap device.
    Net {
        /// The tap interface.
        tap: String,
        /// The guest's MAC address.
        mac: Option<[u8; 6]>,
    },
    /// `--fs tag=TAG,socket=PATH`: virtio-fs served by a vhost-user backend (virtiofsd).
    Fs {
        /// The mount tag the guest sees (1 to 36 bytes).
        tag: String,
        /// The backend's vhost-user socket.
        socket: PathBuf,
    },
}

struct Pairs {
    option: &'static str,
    text: String,
    map: BTreeMap<String, String>,
}

impl Pairs {
    fn parse(option: &'static str, text: &str, known: &[&str]) -> Result<Self, DeviceOptionError> {
        let mut pairs = Pairs { option, text: text.to_owned(), map: BTreeMap::new() };
        for item in text.split(',') {
            let Some((key, value)) = item.split_once('=') else {
                return Err(pairs.bad(format!("{item:?} is not key=value")));
            };
            if !known.contains(&key) {
                return Err(pairs.bad(format!("unknown key {key:?} (known: {})", known.join(", "))));
            }
            if pairs.map.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(pairs.bad(format!("{key} given twice")));
            }
        }
        Ok(pairs)
    }

    fn bad(&self, reason: String) -> DeviceOptionError {
        DeviceOptionError::Bad { option: self.option, text: self.text.clone(), reason }
    }

    fn required(&mut self, key: &str) -> Result<String, DeviceOptionError> {
        match self.map.remove(key) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(self.bad(format!("{key}= is required"))),
        }
    }

    fn flag(&mut self, key: &str) -> Result<bool, DeviceOptionError> {
        match self.map.remove(key).as_deref() {
            None | Some("off") => Ok(false),
            Some("on") => Ok(true),
            Some(other) => Err(self.bad(format!("{key}={other}: use on or off"))),
        }
    }
}

impl DeviceConfig {
    /// Parses a `--disk` value.
    pub fn disk(text: &str) -> Result<Self, DeviceOptionError> {
        let mut p = Pairs::parse("disk", text, &["path", "ro", "id"])?;
        let path = PathBuf::from(p.required("path")?);
        let read_only = p.flag("ro")?;
        let id = p.map.remove("id").unwrap_or_default();
        if id.len() > 20 {
            return Err(p.bad(format!("id {id:?} is longer than 20 bytes")));
        }
        Ok(DeviceConfig::Block { path, read_only, id })
    }

    /// Parses a `--vsock` value.
    pub fn vsock(text: &str) -> Result<Self, DeviceOptionError> {
        let mut p = Pairs::parse("vsock", text, &["cid", "socket"])?;
        let cid_text = p.required("cid")?;
        let cid = match cid_text.parse::<u64>() {
            Ok(cid) if (3..u64::from(u32::MAX)).contains(&cid) => cid,
            _ => return Err(p.bad(format!("cid {cid_text:?} is not a number from 3 to 2^32-2"))),
        };
        let socket = PathBuf::from(p.required("socket")?);
        Ok(DeviceConfig::Vsock { cid, socket })
    }

    /// Parses a `--serial-port` value.
    pub fn serial_port(text: &str) -> Result<Self, DeviceOptionError> {
        let mut p = Pairs::parse("serial-port", text, &["name", "socket"])?;
        let name = p.required("name")?;
        let socket = PathBuf::from(p.required("socket")?);
        Ok(DeviceConfig::SerialPort { name, socket })
    }

    /// Parses a `--net` value.
    pub fn net(text: &str) -> Result<Self, DeviceOptionError> {
        let mut p = Pairs::parse("net", text, &["tap", "mac"])?;
        let tap = p.required("tap")?;
        let mac = match p.map.remove("mac") {
            None => None,
            Some(m) => Some(crate::devices::virtio::net::parse_mac(&m).ok_or_else(|| p.bad(format!("mac {m:?} is not aa:bb:cc:dd:ee:ff")))?),
        };
        Ok(DeviceConfig::Net { tap, mac })
    }

    /// Parses a `--fs` value.
    pub fn fs(text: &str) -> Result<Self, DeviceOptionError> {
        let mut p = Pairs::parse("fs", text, &["tag", "socket"])?;
        let tag = p.required("tag")?;
        if fs::config_space(&tag).is_err() {
            return Err(p.bad(format!("tag {tag:?} must be 1 to {} bytes with no NUL", fs::TAG_LEN)));
        }
        let socket = PathBuf::from(p.required("socket")?);
        Ok(DeviceConfig::Fs { tag, socket })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        assert_eq!(
            DeviceConfig::disk("path=/a.img,ro=on,id=rootfs").unwrap(),
            DeviceConfig::Block { path: "/a.img".into(), read_only: true, id: "rootfs".into() }
        );
        assert_eq!(
            DeviceConfig::disk("path=/a.img").unwrap(),
            DeviceConfig::Block { path: "/a.img".into(), read_only: false, id: String::new() }
        );
        assert_eq!(
            DeviceConfig::vsock("cid=3,socket=/run/v.sock").unwrap(),
            DeviceConfig::Vsock { cid: 3, socket: "/run/v.sock".into() }
        );
        assert_eq!(
            DeviceConfig::serial_port("name=agent.0,socket=/run/a0.sock").unwrap(),
            DeviceConfig::SerialPort { name: "agent.0".into(), socket: "/run/a0.sock".into() }
        );
        assert_eq!(
            DeviceConfig::net("tap=tap0,mac=02:00:00:00:00:0a").unwrap(),
            DeviceConfig::Net { tap: "tap0".into(), mac: Some([2, 0, 0, 0, 0, 10]) }
        );
        assert_eq!(
            DeviceConfig::fs("tag=shared,socket=/run/vfsd.sock").unwrap(),
            DeviceConfig::Fs { tag: "shared".into(), socket: "/run/vfsd.sock".into() }
        );
        let longest = "t".repeat(36);
        assert_eq!(
            DeviceConfig::fs(&format!("socket=/s,tag={longest}")).unwrap(),
            DeviceConfig::Fs { tag: longest, socket: "/s".into() }
        );
    }

    #[test]
    fn bad_options_name_the_problem() {
        let cases = [
            (DeviceConfig::disk("ro=on"), "path= is required"),
            (DeviceConfig::disk("path=/a,ro=yes"), "ro=yes: use on or off"),
            (DeviceConfig::disk("path=/a,path=/b"), "path given twice"),
            (DeviceConfig::disk("path=/a,size=3"), "unknown key \"size\""),
            (DeviceConfig::disk("/a"), "\"/a\" is not key=value"),
            (DeviceConfig::disk("path=/a,id=123456789012345678901"), "longer than 20 bytes"),
            (DeviceConfig::vsock("cid=2,socket=/v"), "cid \"2\" is not a number"),
            (DeviceConfig::vsock("cid=x,socket=/v"), "cid \"x\""),
            (DeviceConfig::net("tap=t,mac=1:2:3"), "mac \"1:2:3\""),
            (DeviceConfig::fs("socket=/s"), "tag= is required"),
            (DeviceConfig::fs("tag=x"), "socket= is required"),
            (DeviceConfig::fs("tag=,socket=/s"), "tag= is required"),
            (DeviceConfig::fs(&format!("tag={},socket=/s", "t".repeat(37))), "must be 1 to 36 bytes"),
            (DeviceConfig::fs("tag=a\0b,socket=/s"), "with no NUL"),
            (DeviceConfig::fs("tag=a,socket=/s,cache=none"), "unknown key \"cache\""),
        ];
        for (result, expected) in cases {
            let e = result.unwrap_err().to_string();
            assert!(e.contains(expected), "{e:?} should contain {expected:?}");
        }
    }

    #[test]
    fn fs_tags_are_unique_and_a_missing_backend_is_named() {
        let fs = |tag: &str| DeviceConfig::Fs { tag: tag.into(), socket: "/nonexistent/vfsd.sock".into() };
        let err = build(&[fs("a"), fs("a")]).err().unwrap();
        assert_eq!(err.to_string(), "two virtio-fs devices have the tag \"a\"");
        let err = build(&[fs("a")]).err().unwrap();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("\"a\"") && chain.contains("/nonexistent/vfsd.sock"), "{chain}");
    }
}
