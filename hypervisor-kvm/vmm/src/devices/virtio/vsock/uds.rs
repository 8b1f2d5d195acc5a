//! The Unix-socket side of hybrid vsock: the `CONNECT <port>` line host clients send, and
//! the non-blocking connect to `<uds_path>_<port>` for guest-initiated connections.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The longest `CONNECT` line, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Parses a `CONNECT <port>` line without its newline (the keyword in any case, as
/// Firecracker accepts it); `None` if it is anything else.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(cmd), Some(port), None) if cmd.eq_ignore_ascii_case("CONNECT") => port.parse().ok(),
        _ => None,
    }
}

/// Connects to the Unix socket at `path` without blocking (a full backlog fails at once).
pub fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "unusable socket path"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that outlives the call and `len` does not exceed
    // its size (the path is shorter than sun_path and NUL-terminated by the zeroing).
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"connect 4294967295\r"), Some(u32::MAX));
        for bad in [&b"CONNECT"[..], b"CONNECT x", b"CONNECT 1 2", b"CONNECT 4294967296", b"CONNECT -1", b"OPEN 5", b"\xff 5", b""] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn connect_fails_fast() {
        let dir = tempfile::tempdir().unwrap();
        let missing = connect_nonblocking(&dir.path().join("nothing")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        let long = dir.path().join("x".repeat(200));
        assert_eq!(connect_nonblocking(&long).unwrap_err().kind(), ErrorKind::InvalidInput);
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let mut ours = connect_nonblocking(&path).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        std::io::Write::write_all(&mut ours, b"x").unwrap();
        let mut b = [0u8];
        std::io::Read::read_exact(&mut theirs, &mut b).unwrap();
        assert_eq!(&b, b"x");
    }
}
