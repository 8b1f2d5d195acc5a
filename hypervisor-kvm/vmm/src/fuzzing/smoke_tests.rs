//! Every fuzz harness on its seed corpus and on generated inputs: queues laid out as a driver
//! would (descriptor chains whose buffers lie in guest memory, the available ring naming their
//! heads, plausible request headers), then mutated (bytes overwritten at random, lengths and
//! indexes pushed out of range), so that the device code goes past its first checks and meets
//! the malformed cases there. Not coverage-guided (that is `cargo fuzz`), but run on every
//! `cargo test`. Each test also checks that its inputs reached the device's real work, so a
//! generator that stops producing usable queues fails instead of passing vacuously.

use std::path::Path;

/// Inputs generated per harness.
const INPUTS: usize = 2000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// xorshift64*: a fixed sequence, so that a failure is reproduced by rerunning the test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
}

/// One buffer of a chain: guest address, length, whether the device writes it.
type Buf = (u64, u32, bool);

/// A split queue in an input image: descriptor table and available ring offsets, size.
struct Ring {
    desc: usize,
    avail: usize,
    size: u16,
}

fn put(image: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = image.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// Writes `chains` into `ring` as a driver would (table entries in order, heads in the
/// available ring, the available index after them).
fn publish(image: &mut [u8], ring: &Ring, chains: &[Vec<Buf>]) {
    let mut next = 0u16;
    for (n, chain) in chains.iter().enumerate() {
        let head = next;
        for (i, &(addr, len, write)) in chain.iter().enumerate() {
            if next >= ring.size {
                return;
            }
            let more = i + 1 < chain.len();
            let flags = if more { F_NEXT } else { 0 } | if write { F_WRITE } else { 0 };
            let at = ring.desc + 16 * usize::from(next);
            put(image, at, &addr.to_le_bytes());
            put(image, at + 8, &len.to_le_bytes());
            put(image, at + 12, &flags.to_le_bytes());
            put(image, at + 14, &(next + 1).to_le_bytes());
            next += 1;
        }
        put(
            image,
            ring.avail + 4 + 2 * (n % usize::from(ring.size)),
            &head.to_le_bytes(),
        );
        put(image, ring.avail + 2, &(n as u16 + 1).to_le_bytes());
    }
}

/// Overwrites a few bytes of `image` at random: anywhere, or in the first `hot` bytes.
fn mutate(rng: &mut Rng, image: &mut [u8], hot: usize) {
    if image.is_empty() {
        return;
    }
    for _ in 0..rng.below(6) {
        let span = if rng.chance(2) {
            hot.min(image.len())
        } else {
            image.len()
        };
        let at = rng.below(span as u64) as usize;
        image[at] = match rng.below(4) {
            0 => 0,
            1 => 0xff,
            2 => image[at] ^ (1 << rng.below(8)),
            _ => rng.next() as u8,
        };
    }
}

/// Runs `harness` on the seeds in `fuzz/seeds/<target>`, then on `INPUTS` generated inputs.
fn smoke(target: &str, harness: fn(&[u8]), mut generate: impl FnMut(&mut Rng) -> Vec<u8>) {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    for seed in std::fs::read_dir(&seeds).into_iter().flatten().flatten() {
        let data =
            std::fs::read(seed.path()).unwrap_or_else(|e| panic!("reading {:?}: {e}", seed.path()));
        harness(&data);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ target.len() as u64);
    for _ in 0..INPUTS {
        harness(&generate(&mut rng));
    }
}

#[test]
fn virtio_blk_harness_survives_generated_requests() {
    let before = super::blk::REACHED.get();
    // Input: size code, options, ring addresses / 16 (table 0, avail 0x1000, used 0x2000),
    // then guest memory from 0 (64 KiB; requests in the upper half).
    smoke("virtio_blk", super::blk::run, |rng| {
        let mut image = vec![0u8; 0x10000];
        let ring = Ring {
            desc: 0,
            avail: 0x1000,
            size: 16,
        };
        let chains: Vec<Vec<Buf>> = (0..1 + rng.below(6))
            .map(|i| {
                let header = 0x8000 + 0x1000 * i;
                let kind: u32 = [0, 1, 4, 8, rng.next() as u32][rng.below(5) as usize];
                put(&mut image, header as usize, &kind.to_le_bytes());
                put(
                    &mut image,
                    header as usize + 8,
                    &rng.below(70).to_le_bytes(),
                );
                let writes = kind != 1;
                let data: Vec<Buf> = (0..rng.below(3))
                    .map(|d| {
                        (
                            header + 0x100 + 0x200 * d,
                            512 * (1 + rng.below(2) as u32) / (1 + u32::from(rng.chance(8))),
                            writes,
                        )
                    })
                    .collect();
                let mut chain = vec![(header, 16, false)];
                chain.extend(data);
                chain.push((header + 0xf00, 1, true));
                chain
            })
            .collect();
        publish(&mut image, &ring, &chains);
        mutate(rng, &mut image, 0x1100);
        let mut input = vec![4, rng.below(4) as u8, 0, 0, 0x00, 0x01, 0x00, 0x02];
        input.extend_from_slice(&image);
        mutate(rng, &mut input[..8], 8);
        input
    });
    let after = super::blk::REACHED.get();
    eprintln!("blk reached: {before:?} -> {after:?}");
    assert!(
        (0..4).all(|i| after[i] > before[i]),
        "reads, writes, flushes and malformed requests all reached: {before:?} -> {after:?}"
    );
}

#[test]
fn virtio_net_harness_survives_generated_frames() {
    let before = super::net::REACHED.get();
    // Input: options (bit 0 event idx, bit 1 rx too), size log2, available index, then guest
    // memory from 0 (table 0, avail 0x1000, used 0x2000; buffers from 0x4000).
    smoke("virtio_net", super::net::run, |rng| {
        let mut image = vec![0u8; 0x10000];
        let ring = Ring {
            desc: 0,
            avail: 0x1000,
            size: 16,
        };
        let count = 1 + rng.below(6);
        let chains: Vec<Vec<Buf>> = (0..count)
            .map(|i| {
                let at = 0x4000 + 0x1000 * i;
                let len = 12 + rng.below(1600) as u32;
                if rng.chance(2) {
                    vec![(at, len, rng.chance(16))]
                } else {
                    vec![
                        (at, 12, false),
                        (at + 0x100, len.min(0xe00), rng.chance(16)),
                    ]
                }
            })
            .collect();
        publish(&mut image, &ring, &chains);
        mutate(rng, &mut image, 0x1100);
        let mut input = vec![rng.below(4) as u8, 4, count as u8, 0];
        input.extend_from_slice(&image[..0x4000 + 0x1000 * count as usize]);
        mutate(rng, &mut input[..4], 4);
        input
    });
    let after = super::net::REACHED.get();
    eprintln!("net reached: {before:?} -> {after:?}");
    assert!(
        (0..2).all(|i| after[i] > before[i]),
        "frames reached the tap and malformed chains were met: {before:?} -> {after:?}"
    );
}

#[test]
fn virtio_console_harness_survives_generated_queues() {
    let before = super::console::REACHED.get();
    // Guest memory from 0: queue i's table at i * 0x400, avail + 0x100, used + 0x200 (size
    // 16); buffers from 0x4000. The seed goes through the whole handshake; generated inputs
    // mix driver control messages and port data.
    smoke("virtio_console", super::console::run, |rng| {
        let mut image = vec![0u8; 0x8000];
        let mut buf = 0x4000u64;
        for queue in 0..8usize {
            let ring = Ring {
                desc: queue * 0x400,
                avail: queue * 0x400 + 0x100,
                size: 16,
            };
            let device_writes = queue % 2 == 0;
            // The driver's side of the handshake, in order: DEVICE_READY, PORT_READY and
            // PORT_OPEN for port 1, PORT_READY for port 2 (port id, event, value).
            let handshake: [(u32, u16, u16); 4] = [(0, 0, 1), (1, 3, 1), (1, 6, 1), (2, 3, 1)];
            let chains: Vec<Vec<Buf>> = (0..if queue == 3 { 4 } else { rng.below(4) })
                .map(|n| {
                    let len = if queue == 3 {
                        8
                    } else {
                        1 + rng.below(64) as u32
                    };
                    if queue == 3 {
                        let (id, event, value) = if rng.chance(4) {
                            (
                                rng.below(4) as u32,
                                rng.below(9) as u16,
                                rng.below(2) as u16,
                            )
                        } else {
                            handshake[n as usize]
                        };
                        put(&mut image, buf as usize, &id.to_le_bytes());
                        put(&mut image, buf as usize + 4, &event.to_le_bytes());
                        put(&mut image, buf as usize + 6, &value.to_le_bytes());
                    }
                    let chain = vec![(buf, len, device_writes ^ rng.chance(16))];
                    buf += 0x80;
                    chain
                })
                .collect();
            publish(&mut image, &ring, &chains);
        }
        mutate(rng, &mut image, 0x2000);
        image
    });
    let after = super::console::REACHED.get();
    eprintln!("console reached: {before:?} -> {after:?}");
    assert!(
        (0..3).all(|i| after[i] > before[i]),
        "control messages, invalid ones and port data all reached: {before:?} -> {after:?}"
    );
}

#[test]
fn virtio_vsock_harness_survives_generated_packets() {
    let before = super::vsock::REACHED.get();
    // Records [shape, n, bytes[n]]: shape's high bit stamps a plausible address (guest CID 3
    // to host 2, STREAM) over the header; the op, port and length are chosen here.
    smoke("virtio_vsock", super::vsock::run, |rng| {
        let mut input = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let payload = rng.below(40) as usize;
            let mut packet = vec![0u8; 44 + payload];
            packet[16..20].copy_from_slice(&(1024 + rng.below(2) as u32).to_le_bytes());
            packet[20..24].copy_from_slice(
                &[52u32, 1024, rng.next() as u32][rng.below(3) as usize].to_le_bytes(),
            );
            packet[24..28].copy_from_slice(&(payload as u32).to_le_bytes());
            packet[30..32].copy_from_slice(&(1 + rng.below(7) as u16).to_le_bytes());
            packet[36..40].copy_from_slice(&(65536u32).to_le_bytes());
            mutate(rng, &mut packet, 44);
            let shape = (rng.below(0x40) as u8) | if rng.chance(8) { 0 } else { 0x80 };
            input.push(shape);
            input.push(packet.len().min(255) as u8);
            input.extend_from_slice(&packet);
        }
        input
    });
    let after = super::vsock::REACHED.get();
    eprintln!("vsock reached: {before:?} -> {after:?}");
    assert!(
        (0..2).all(|i| after[i] > before[i]),
        "packets reached the muxer and malformed ones were met: {before:?} -> {after:?}"
    );
}
