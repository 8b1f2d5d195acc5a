//! Parsing and validating one virtio-blk request from its descriptor chain.
//!
//! The device makes no assumption about how the driver frames a request (virtio 1.x): the
//! device-readable bytes are the 16-byte header followed by the data of a write; the
//! device-writable bytes are the data of a read (or the ID) followed by the status byte, the
//! very last byte of the chain.

use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Bytes per sector (the unit of capacity and of request offsets).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the device ID (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;

/// Size of `struct virtio_blk_outhdr`: type (le32), ioprio (le32), sector (le64).
pub const HEADER_SIZE: u32 = 16;

/// A piece of a request's buffers in guest memory, checked to lie inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `VIRTIO_BLK_T_IN`: read sectors into the writable data.
    In,
    /// `VIRTIO_BLK_T_OUT`: write the readable data to sectors.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: the device ID into the writable data.
    GetId,
    /// Any other type, answered `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

/// A validated request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The request type.
    pub kind: RequestKind,
    /// The sector in the header (whatever it is for types other than In and Out).
    pub sector: u64,
    /// In and Out: the byte offset of `sector` on the disk, with `offset + data_len` within
    /// the disk; 0 for other types.
    pub offset: u64,
    /// The data buffers: readable for Out, writable for In and GetId, empty otherwise.
    pub data: Vec<Segment>,
    /// Their total length (a multiple of 512 for In and Out).
    pub data_len: u64,
}

/// Why a request is refused (answered `VIRTIO_BLK_S_IOERR`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A descriptor's buffer is not all inside guest memory.
    #[error("a {len}-byte buffer at {addr:#x} lies outside guest memory")]
    OutsideMemory {
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor comes after a device-writable one.
    #[error("a device-readable descriptor follows a device-writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes.
    #[error("the header has {0} device-readable bytes, not 16")]
    ShortHeader(u64),
    /// Data in the wrong direction for the request type.
    #[error("request type {kind:?} with {readable} readable and {writable} writable data bytes")]
    WrongDirection {
        /// The request type.
        kind: RequestKind,
        /// Readable bytes after the header.
        readable: u64,
        /// Writable bytes before the status byte.
        writable: u64,
    },
    /// A read or write whose length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// A read or write past the end of the disk (or overflowing).
    #[error("{len} bytes at sector {sector} do not fit in a disk of {capacity} sectors")]
    OutOfRange {
        /// The first sector.
        sector: u64,
        /// The data length.
        len: u64,
        /// The disk size in sectors.
        capacity: u64,
    },
}

/// Where the status byte goes: the last byte of the last non-empty descriptor, when that one
/// is device-writable and its last byte lies in guest memory.
pub fn status_byte(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> Option<GuestAddress> {
    let last = descs.iter().rev().find(|d| d.len() > 0)?;
    if !last.is_write_only() {
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    mem.check_range(addr, 1, vm_memory::Permissions::Write).then_some(addr)
}

fn total(segs: &[Segment]) -> u64 {
    // At most 65536 descriptors of at most 4 GiB each: no overflow in u64.
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Removes the first `n` bytes from `segs`; returns them, or `None` (and leaves `segs`
/// alone) when `segs` holds fewer.
fn take_front(segs: &mut Vec<Segment>, mut n: u32) -> Option<Vec<Segment>> {
    if total(segs) < u64::from(n) {
        return None;
    }
    let mut front = Vec::new();
    let mut whole = 0;
    for seg in segs.iter_mut() {
        if n == 0 {
            break;
        }
        let part = seg.len.min(n);
        front.push(Segment { addr: seg.addr, len: part });
        n -= part;
        if part == seg.len {
            whole += 1;
        } else {
            // Inside a buffer checked to lie in guest memory: cannot overflow.
            seg.addr = seg.addr.unchecked_add(u64::from(part));
            seg.len -= part;
        }
    }
    segs.drain(..whole);
    Some(front)
}

impl Request {
    /// Validates the chain `descs` of a disk of `capacity` sectors. The caller has found its
    /// status byte ([`status_byte`]), which is not part of the request's data.
    pub fn parse(mem: &GuestMemoryMmap, descs: &[Descriptor], capacity: u64) -> Result<Self, RequestError> {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for desc in descs.iter().filter(|d| d.len() > 0) {
            let seg = Segment { addr: desc.addr(), len: desc.len() };
            if !mem.check_range(seg.addr, seg.len as usize, vm_memory::Permissions::ReadWrite) {
                return Err(RequestError::OutsideMemory { addr: seg.addr.raw_value(), len: seg.len });
            }
            if desc.is_write_only() {
                writable.push(seg);
            } else if writable.is_empty() {
                readable.push(seg);
            } else {
                return Err(RequestError::ReadableAfterWritable);
            }
        }
        // Drop the status byte.
        if let Some(last) = writable.last_mut() {
            last.len -= 1;
            if last.len == 0 {
                writable.pop();
            }
        }

        let header_segs =
            take_front(&mut readable, HEADER_SIZE).ok_or(RequestError::ShortHeader(total(&readable)))?;
        let mut header = [0u8; HEADER_SIZE as usize];
        let mut at = 0;
        for seg in header_segs {
            let end = at + seg.len as usize;
            mem.read_slice(&mut header[at..end], seg.addr)
                .map_err(|_| RequestError::OutsideMemory { addr: seg.addr.raw_value(), len: seg.len })?;
            at = end;
        }
        let [t0, t1, t2, t3, _, _, _, _, s @ ..] = header;
        let sector = u64::from_le_bytes(s);
        let kind = match u32::from_le_bytes([t0, t1, t2, t3]) {
            VIRTIO_BLK_T_IN => RequestKind::In,
            VIRTIO_BLK_T_OUT => RequestKind::Out,
            VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
            VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
            other => RequestKind::Unsupported(other),
        };

        let (readable_len, writable_len) = (total(&readable), total(&writable));
        let wrong = || RequestError::WrongDirection { kind, readable: readable_len, writable: writable_len };
        let data = match kind {
            RequestKind::In | RequestKind::GetId if readable_len == 0 => writable,
            RequestKind::Out if writable_len == 0 => readable,
            RequestKind::Flush if readable_len == 0 && writable_len == 0 => Vec::new(),
            RequestKind::Unsupported(_) => Vec::new(),
            _ => return Err(wrong()),
        };
        let data_len = total(&data);
        let mut offset = 0;
        if matches!(kind, RequestKind::In | RequestKind::Out) {
            if !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(RequestError::Unaligned(data_len));
            }
            offset = sector
                .checked_mul(SECTOR_SIZE)
                // `capacity` came from a byte size: `capacity * 512` does not overflow.
                .filter(|start| start.checked_add(data_len).is_some_and(|end| end <= capacity * SECTOR_SIZE))
                .ok_or(RequestError::OutOfRange { sector, len: data_len, capacity })?;
        }
        Ok(Self { kind, sector, offset, data, data_len })
    }
}
