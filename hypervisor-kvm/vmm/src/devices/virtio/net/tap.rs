//! The host side of a virtio-net device: a tap interface opened through `/dev/net/tun`
//! with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte `virtio_net_hdr_v1` in front of
//! every frame in both directions, no offloads, and a non-blocking file descriptor.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::queue::{Frames, VNET_HDR_LEN};

const TUN_PATH: &str = "/dev/net/tun";
const REQUIRED_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is not one Linux accepts.
    #[error("tap name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A system call failed.
    #[error("tap {name}: {step}{hint}")]
    Io {
        /// The interface (or what is known of it).
        name: String,
        /// The step that failed ("opening /dev/net/tun", "TUNSETIFF", ...).
        step: &'static str,
        /// What to do about it, when known (" (needs CAP_NET_ADMIN)"), otherwise empty.
        hint: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file descriptor handed over is a tun/tap but not opened the way the device needs.
    #[error("tap {name}: opened with flags {flags:#x}, needs IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    Flags {
        /// The interface.
        name: String,
        /// The flags it has.
        flags: u16,
    },
}

impl TapError {
    fn io(name: &str, step: &'static str, source: io::Error) -> Self {
        let hint = match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => " (needs CAP_NET_ADMIN)",
            Some(libc::EBUSY) => " (the tap is already attached to another file descriptor)",
            _ => "",
        };
        Self::Io { name: name.to_owned(), step, hint, source }
    }
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// Checks `name` the way the kernel's `dev_valid_name` does, so the error can say why.
fn validate_name(name: &str) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() >= libc::IFNAMSIZ {
        "longer than 15 bytes"
    } else if name == "." || name == ".." {
        "reserved"
    } else if name.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace()) {
        "contains '/', ':', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(TapError::InvalidName { name: name.to_owned(), reason })
}

fn ifreq_with_name(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (a name array and a union of integers, addresses and
    // a pointer); all zeroes is a valid value of it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // `validate_name` checked that the name fits with its terminating NUL.
    for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr.ifr_name.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Tap {
    /// Attaches to the tap interface `name` (creating it if it does not exist; a `%d` in the
    /// name lets the kernel pick a number).
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|e| TapError::io(name, "opening /dev/net/tun", e))?;
        let fd = OwnedFd::from(file);
        let mut ifr = ifreq_with_name(name);
        ifr.ifr_ifru.ifru_flags = REQUIRED_FLAGS as libc::c_short;
        // SAFETY: `fd` is an open /dev/net/tun; TUNSETIFF reads and writes one `ifreq`, and
        // `ifr` is a valid, exclusively borrowed `ifreq` for the duration of the call.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::io(name, "TUNSETIFF", io::Error::last_os_error()));
        }
        let tap = Self { fd, name: ifreq_name(&ifr) };
        tap.configure()?;
        Ok(tap)
    }

    /// Takes over a tap that someone else opened (with `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR`); makes it non-blocking and sets its header size and offloads.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let unknown = format!("fd {}", fd.as_raw_fd());
        // SAFETY: as in `ifreq_with_name`, all zeroes is a valid `ifreq`.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes one `ifreq` into `ifr`, a valid exclusively borrowed one;
        // on any other kind of fd the ioctl fails without touching it.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut ifr) };
        if ret < 0 {
            return Err(TapError::io(&unknown, "TUNGETIFF (is it a tap?)", io::Error::last_os_error()));
        }
        let name = ifreq_name(&ifr);
        // SAFETY: TUNGETIFF filled in the flags member of the union.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags } as u16;
        if i32::from(flags) & REQUIRED_FLAGS != REQUIRED_FLAGS {
            return Err(TapError::Flags { name, flags });
        }
        // SAFETY: F_GETFL on an fd we own takes no argument and has no memory effects.
        let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: F_SETFL takes an int argument and only changes the file status flags.
        if fl < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(TapError::io(&name, "setting O_NONBLOCK", io::Error::last_os_error()));
        }
        let tap = Self { fd, name };
        tap.configure()?;
        Ok(tap)
    }

    /// Sets the vnet header size to 12 (`virtio_net_hdr_v1`) and turns every offload off,
    /// so the kernel neither expects nor produces checksum or segmentation requests.
    fn configure(&self) -> Result<(), TapError> {
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which points at `size`.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &size) };
        if ret < 0 {
            return Err(TapError::io(&self.name, "TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of TUN_F_*
        // bits); no memory is passed.
        let ret = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if ret < 0 {
            return Err(TapError::io(&self.name, "TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        Ok(())
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Another handle on the same tap queue (a duplicated fd), for a device worker.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { fd: self.fd.try_clone()?, name: self.name.clone() })
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Frames for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes and exclusively borrowed;
        // read(2) writes at most that many.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: `frame` is valid for reads of `frame.len()` bytes; write(2) reads at most
        // that many and keeps no reference.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Running a test in a network namespace of its own, with a tap and a packet socket.

    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::time::{Duration, Instant};

    /// Skips (one line saying why, returns true) unless `available`; under
    /// `SANDBOX_TESTS_STRICT=1` (root CI) a missing requirement fails instead.
    pub fn skip_unless(available: bool, why: &str) -> bool {
        if available {
            return false;
        }
        let strict = std::env::var("SANDBOX_TESTS_STRICT").is_ok_and(|v| v == "1");
        assert!(!strict, "required in strict mode but unavailable: {why}");
        eprintln!("SKIP: {why}");
        true
    }

    /// Runs `f` on a thread moved into a new network namespace (so its taps and links are
    /// private and vanish with it); returns false after printing why when that is not
    /// possible (not root, no /dev/net/tun, no CAP_SYS_ADMIN).
    pub fn in_private_netns<F: FnOnce() + Send + 'static>(f: F) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if skip_unless(root, "the real-tap test needs root (CAP_NET_ADMIN)") {
            return false;
        }
        if skip_unless(std::path::Path::new("/dev/net/tun").exists(), "no /dev/net/tun on this machine") {
            return false;
        }
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare(CLONE_NEWNET) only moves this thread into a new network
            // namespace; threads may do that on their own.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f();
            Ok(())
        });
        match thread.join() {
            Ok(Ok(())) => true,
            Ok(Err(e)) => !skip_unless(false, &format!("cannot create a network namespace: {e}")),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Brings interface `name` up and returns its index.
    pub fn link_up(name: &str) -> i32 {
        // SAFETY: creating a socket has no memory effects; the result is checked.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        assert!(sock >= 0, "socket: {}", io::Error::last_os_error());
        // SAFETY: `sock` is a fresh fd that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        let mut ifr = super::ifreq_with_name(name);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one `ifreq` at the valid pointer.
        unsafe {
            assert!(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) == 0);
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert!(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr) == 0, "SIOCSIFFLAGS");
        }
        let cname = std::ffi::CString::new(name).expect("no NUL in the name");
        // SAFETY: `cname` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert!(index > 0, "if_nametoindex {name}");
        index as i32
    }

    /// An AF_PACKET socket on interface `ifindex` for frames of one EtherType.
    pub struct PacketSocket {
        fd: OwnedFd,
        addr: libc::sockaddr_ll,
    }

    impl PacketSocket {
        /// Binds to `ifindex` for `ethertype` frames.
        pub fn bind(ifindex: i32, ethertype: u16) -> Self {
            let proto = ethertype.to_be();
            // SAFETY: creating a socket has no memory effects; the result is checked.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
            assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: `fd` is a fresh fd that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `sockaddr_ll` is plain old data; all zeroes is valid.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = ifindex;
            addr.sll_halen = 6;
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `addr` is a valid `sockaddr_ll` of `len` bytes.
            let ret = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
            assert!(ret == 0, "bind AF_PACKET: {}", io::Error::last_os_error());
            Self { fd, addr }
        }

        /// Sends `frame` (a whole Ethernet frame) out of the interface.
        pub fn send(&self, frame: &[u8]) {
            let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `frame` is valid for reads of its length and `addr` is a valid
            // `sockaddr_ll` of `len` bytes.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const self.addr).cast(),
                    len,
                )
            };
            assert_eq!(n, frame.len() as isize, "sendto: {}", io::Error::last_os_error());
        }

        /// The next frame received within `timeout`.
        pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
            let deadline = Instant::now() + timeout;
            let mut buf = vec![0u8; 65536];
            loop {
                let left = deadline.checked_duration_since(Instant::now())?;
                let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: `pfd` is one valid pollfd.
                let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
                if ready <= 0 {
                    continue;
                }
                // SAFETY: `buf` is valid for writes of its length.
                let n =
                    unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                if let Ok(n) = usize::try_from(n) {
                    return Some(buf[..n].to_vec());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_with_a_reason() {
        for (name, reason) in [
            ("", "empty"),
            ("a-name-far-too-long", "longer than 15 bytes"),
            ("..", "reserved"),
            ("tap/0", "contains '/', ':', NUL or whitespace"),
            ("tap 0", "contains '/', ':', NUL or whitespace"),
        ] {
            match Tap::open(name) {
                Err(TapError::InvalidName { reason: r, .. }) => assert_eq!(r, reason, "{name:?}"),
                other => panic!("{name:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_fd_that_is_not_a_tap_is_refused_naming_the_step() {
        let fd = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let err = Tap::from_fd(fd).unwrap_err();
        assert!(err.to_string().contains("TUNGETIFF"), "{err}");
    }

    #[test]
    fn permission_errors_say_what_is_needed() {
        let err = TapError::io("tap0", "TUNSETIFF", io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(err.to_string(), "tap tap0: TUNSETIFF (needs CAP_NET_ADMIN)");
        let err = TapError::io("tap0", "TUNSETIFF", io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(err.to_string(), "tap tap0: TUNSETIFF");
    }

    /// A /dev/net/tun fd attached to tap `name` with `flags`, as a runtime would hand over.
    fn raw_tap(name: &str, flags: libc::c_int) -> OwnedFd {
        let file = OpenOptions::new().read(true).write(true).open(TUN_PATH).unwrap();
        let fd = OwnedFd::from(file);
        let mut ifr = ifreq_with_name(name);
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        // SAFETY: as in `Tap::open`.
        let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        assert_eq!(ret, 0, "TUNSETIFF: {}", io::Error::last_os_error());
        fd
    }

    #[test]
    fn real_tap_opens_by_name_and_by_fd() {
        testutil::in_private_netns(|| {
            let mut tap = Tap::open("vnt%d").expect("creating a tap");
            assert!(tap.name().starts_with("vnt") && !tap.name().contains('%'), "{}", tap.name());
            let mut buf = [0u8; 64];
            let err = tap.read_frame(&mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "the fd is non-blocking");
            let busy = Tap::open(tap.name()).unwrap_err();
            assert!(busy.to_string().contains("already attached"), "{busy}");

            let fd = raw_tap("vnt-handed", REQUIRED_FLAGS);
            let handed = Tap::from_fd(fd).expect("taking over a tap fd");
            assert_eq!(handed.name(), "vnt-handed");
            // SAFETY: F_GETFL takes no argument.
            let fl = unsafe { libc::fcntl(handed.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(fl & libc::O_NONBLOCK, 0, "made non-blocking");
        });
    }

    #[test]
    fn a_tun_without_vnet_header_is_refused() {
        testutil::in_private_netns(|| {
            let fd = raw_tap("vnt-plain", libc::IFF_TAP | libc::IFF_NO_PI);
            match Tap::from_fd(fd) {
                Err(TapError::Flags { name, .. }) => assert_eq!(name, "vnt-plain"),
                other => panic!("{other:?}"),
            }
        });
    }
}
