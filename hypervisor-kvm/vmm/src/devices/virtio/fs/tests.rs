//! The device without a backend: configuration space, tags, features, connection errors.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;

use super::backend::GUEST_FEATURES;
use super::*;

fn read(config: &[u8; CONFIG_SIZE], offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0xff; len];
    read_space(config, offset, &mut data);
    data
}

#[test]
fn config_space_has_the_tag_and_one_request_queue() {
    let config = config_space("shared").unwrap();
    assert_eq!(CONFIG_SIZE, 40);
    assert_eq!(&read(&config, 0, 6), b"shared");
    assert_eq!(read(&config, 6, 30), [0; 30], "NUL-padded");
    assert_eq!(read(&config, 36, 4), 1u32.to_le_bytes(), "num_request_queues");
    assert_eq!(read(&config, 0, 1), b"s");
    assert_eq!(read(&config, 2, 2), b"ar");
    // Straddling the end, past it, and at offsets that would overflow.
    assert_eq!(read(&config, 38, 4), [0; 4]);
    assert_eq!(read(&config, 40, 4), [0; 4]);
    assert_eq!(read(&config, u64::MAX, 8), [0; 8]);
    assert_eq!(read(&config, u64::MAX - 1, 4), [0; 4]);

    let longest = "x".repeat(TAG_LEN);
    let config = config_space(&longest).unwrap();
    assert_eq!(read(&config, 0, 36), longest.as_bytes(), "36 bytes: no NUL at all");
    assert_eq!(read(&config, 36, 4), [1, 0, 0, 0]);
}

#[test]
fn tags_are_checked() {
    for bad in [String::new(), "x".repeat(TAG_LEN + 1), "a\0b".into(), "é".repeat(19)] {
        let err = config_space(&bad).unwrap_err();
        assert!(matches!(err, FsError::BadTag(_)), "{bad:?}: {err}");
        assert!(err.to_string().contains("1 to 36 bytes"), "{err}");
    }
    // Checked before any connection is tried.
    assert!(matches!(Fs::new("", Path::new("/nonexistent")), Err(FsError::BadTag(_))));
}

#[test]
fn only_ring_features_and_version_1_reach_the_guest() {
    let bits: Vec<u32> = (0..64).filter(|b| GUEST_FEATURES & (1 << b) != 0).collect();
    // INDIRECT_DESC, EVENT_IDX, VERSION_1: not PROTOCOL_FEATURES (30), LOG_ALL (26),
    // NOTIFY_ON_EMPTY (24), VIRTIO_FS_F_NOTIFICATION (0), packed rings (34).
    assert_eq!(bits, vec![28, 29, 32]);
}

#[test]
fn a_missing_backend_is_named() {
    let err = Fs::new("tag", Path::new("/nonexistent/vfsd.sock")).err().unwrap();
    assert!(matches!(err, FsError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/vfsd.sock"), "{err}");
}

#[test]
fn a_backend_that_hangs_up_fails_the_device_and_nothing_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        // Reads the first request (SET_OWNER), then closes before GET_FEATURES is answered.
        let (mut conn, _) = listener.accept().unwrap();
        let mut header = [0u8; 12];
        conn.read_exact(&mut header).unwrap();
        u32::from_le_bytes([header[0], header[1], header[2], header[3]])
    });
    let err = Fs::new("tag", &path).err().unwrap();
    assert_eq!(peer.join().unwrap(), 3, "SET_OWNER came first");
    assert!(matches!(&err, FsError::Request { step, .. } if step == "GET_FEATURES"), "{err}");
    assert!(err.to_string().contains("gone.sock"), "{err}");
}

#[test]
fn a_backend_without_version_1_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let peer = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = listener.accept().unwrap();
        for _ in 0..2 {
            let mut header = [0u8; 12];
            conn.read_exact(&mut header).unwrap();
            if header[0] == 1 {
                // GET_FEATURES: a reply (flags version 1 | reply) with legacy features only.
                let mut reply = Vec::from(1u32.to_le_bytes());
                reply.extend(0x5u32.to_le_bytes());
                reply.extend(8u32.to_le_bytes());
                reply.extend((1u64 << 28).to_le_bytes());
                conn.write_all(&reply).unwrap();
            }
        }
    });
    let err = Fs::new("tag", &path).err().unwrap();
    peer.join().unwrap();
    assert!(err.to_string().contains("lack VIRTIO_F_VERSION_1"), "{err}");
}

/// A backend that answers GET_FEATURES (VERSION_1 only: no protocol features, so no acks)
/// and reads everything else, but never answers GET_VRING_BASE until `release` is sent.
fn silent_backend(path: &Path) -> (std::thread::JoinHandle<Vec<u32>>, std::sync::mpsc::Sender<()>) {
    use std::io::Write;
    let listener = UnixListener::bind(path).unwrap();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut requests = Vec::new();
        loop {
            let mut header = [0u8; 12];
            if conn.read_exact(&mut header).is_err() {
                return requests;
            }
            let request = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let size = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
            let mut body = vec![0u8; size as usize];
            conn.read_exact(&mut body).unwrap();
            requests.push(request);
            match request {
                1 => {
                    let mut reply = Vec::from(1u32.to_le_bytes());
                    reply.extend(0x5u32.to_le_bytes());
                    reply.extend(8u32.to_le_bytes());
                    reply.extend(crate::devices::virtio::VIRTIO_F_VERSION_1.to_le_bytes());
                    conn.write_all(&reply).unwrap();
                }
                11 => {
                    let _ = released.recv();
                    return requests;
                }
                _ => {}
            }
        }
    });
    (peer, release)
}

#[test]
fn a_backend_that_stops_answering_cannot_block_a_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("silent.sock");
    let (peer, release) = silent_backend(&path);
    let mem = crate::vstate::memory::create_guest_memory(32).unwrap();
    let mut fs = Fs::new("tag", &path).unwrap();
    assert_eq!(fs.features(), crate::devices::virtio::VIRTIO_F_VERSION_1);
    let (act, _guest) = super::virtiofsd_tests::activation(&fs, &mem);
    fs.activate(act).unwrap();
    let started = std::time::Instant::now();
    fs.reset();
    let took = started.elapsed();
    assert!(took >= STOP_TIMEOUT && took < STOP_TIMEOUT + Duration::from_secs(2), "{took:?}");
    assert_eq!(FsMetrics::get(&fs.metrics().backend_errors), 1);
    // The detached worker ends once the backend answers or goes away.
    release.send(()).unwrap();
    let requests = peer.join().unwrap();
    // SET_OWNER, GET_FEATURES, SET_FEATURES, SET_MEM_TABLE, then per queue SET_VRING_NUM,
    // ADDR, BASE, CALL, KICK; then GET_VRING_BASE for queue 0.
    assert_eq!(requests, [3, 1, 2, 5, 8, 9, 10, 13, 12, 8, 9, 10, 13, 12, 11]);
}
