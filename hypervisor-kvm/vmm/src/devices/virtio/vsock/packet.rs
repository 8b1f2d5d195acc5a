//! The virtio-vsock packet header (virtio 1.2, 5.10.6): layout, serialization and the
//! checks every packet from the guest goes through before the device acts on it.

/// Size of `struct virtio_vsock_hdr` on the wire.
pub const HDR_LEN: usize = 44;
/// The host's CID: the only destination the guest may address.
pub const HOST_CID: u64 = 2;
/// The largest payload of one packet, either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device offers.
pub const TYPE_STREAM: u16 = 1;

/// `VIRTIO_VSOCK_OP_REQUEST`.
pub const OP_REQUEST: u16 = 1;
/// `VIRTIO_VSOCK_OP_RESPONSE`.
pub const OP_RESPONSE: u16 = 2;
/// `VIRTIO_VSOCK_OP_RST`.
pub const OP_RST: u16 = 3;
/// `VIRTIO_VSOCK_OP_SHUTDOWN`.
pub const OP_SHUTDOWN: u16 = 4;
/// `VIRTIO_VSOCK_OP_RW`.
pub const OP_RW: u16 = 5;
/// `VIRTIO_VSOCK_OP_CREDIT_UPDATE`.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// `VIRTIO_VSOCK_OP_CREDIT_REQUEST`.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `VIRTIO_VSOCK_SHUTDOWN_RCV`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Why a packet from the guest is not acted upon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain holds fewer readable bytes than a header.
    #[error("chain of {0} readable bytes is shorter than a header")]
    ShortHeader(usize),
    /// `src_cid` is not the guest's CID (spoofed).
    #[error("src_cid {0} is not the guest's CID")]
    BadSrcCid(u64),
    /// `dst_cid` is not the host.
    #[error("dst_cid {0} is not the host")]
    BadDstCid(u64),
    /// A socket type other than STREAM.
    #[error("socket type {0} is not STREAM")]
    BadType(u16),
    /// An op code outside the spec's list.
    #[error("unknown op {0}")]
    BadOp(u16),
    /// `len` claims more payload than the chain holds.
    #[error("len {len} exceeds the {avail} payload bytes of the chain")]
    LenBeyondChain {
        /// The header's `len`.
        len: u32,
        /// Readable bytes after the header.
        avail: usize,
    },
    /// `len` exceeds the largest packet the device accepts.
    #[error("len {0} exceeds the {MAX_PAYLOAD}-byte limit")]
    LenTooLarge(u32),
    /// A control packet (not RW) with a payload.
    #[error("op {op} carries {len} payload bytes")]
    PayloadOnControl {
        /// The op.
        op: u16,
        /// The header's `len`.
        len: u32,
    },
}

impl PacketError {
    /// Whether the device answers the packet with an RST (addressed back to where it came
    /// from): yes when it plausibly comes from a guest socket, no for a spoofed source or a
    /// chain too short to hold a header.
    pub fn answer_with_rst(&self) -> bool {
        !matches!(self, Self::ShortHeader(_) | Self::BadSrcCid(_))
    }
}

/// The operations of the stream protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request,
    /// Connection accepted.
    Response,
    /// Connection reset (refused or torn down).
    Rst,
    /// No more data in the direction(s) of the flags.
    Shutdown,
    /// Data.
    Rw,
    /// The sender's buffer space (every header carries it; this packet only that).
    CreditUpdate,
    /// Asks the peer for a credit update.
    CreditRequest,
}

impl Op {
    /// The op for a wire value.
    pub fn from_wire(op: u16) -> Option<Self> {
        Some(match op {
            OP_REQUEST => Self::Request,
            OP_RESPONSE => Self::Response,
            OP_RST => Self::Rst,
            OP_SHUTDOWN => Self::Shutdown,
            OP_RW => Self::Rw,
            OP_CREDIT_UPDATE => Self::CreditUpdate,
            OP_CREDIT_REQUEST => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub type_: u16,
    /// Operation.
    pub op: u16,
    /// Op-specific flags (shutdown direction).
    pub flags: u32,
    /// The sender's receive buffer size for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer so far (wrapping).
    pub fwd_cnt: u32,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes a header (every bit pattern is a header; [`Header::validate`] judges it).
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: le_u64(b, 0),
            dst_cid: le_u64(b, 8),
            src_port: le_u32(b, 16),
            dst_port: le_u32(b, 20),
            len: le_u32(b, 24),
            type_: le_u16(b, 28),
            op: le_u16(b, 30),
            flags: le_u32(b, 32),
            buf_alloc: le_u32(b, 36),
            fwd_cnt: le_u32(b, 40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a header from the guest whose chain holds `avail` readable bytes after it, and
    /// returns its op. The source is checked first (a spoofed packet is dropped unanswered),
    /// then the length against the chain and the size limit, then type, destination and op.
    pub fn validate(&self, guest_cid: u64, avail: usize) -> Result<Op, PacketError> {
        if self.src_cid != guest_cid {
            return Err(PacketError::BadSrcCid(self.src_cid));
        }
        if self.len as usize > avail {
            return Err(PacketError::LenBeyondChain { len: self.len, avail });
        }
        if self.len > MAX_PAYLOAD {
            return Err(PacketError::LenTooLarge(self.len));
        }
        if self.type_ != TYPE_STREAM {
            return Err(PacketError::BadType(self.type_));
        }
        if self.dst_cid != HOST_CID {
            return Err(PacketError::BadDstCid(self.dst_cid));
        }
        let op = Op::from_wire(self.op).ok_or(PacketError::BadOp(self.op))?;
        if op != Op::Rw && self.len != 0 {
            return Err(PacketError::PayloadOnControl { op: self.op, len: self.len });
        }
        Ok(op)
    }

    /// The RST answering this packet: addresses swapped, no payload, no credit.
    pub fn reset_reply(&self) -> Header {
        Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Header::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(op: u16, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn round_trips_in_little_endian() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 9,
            len: 100,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 262_144,
            fwd_cnt: u32::MAX,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(&b[28..32], &[1, 0, 5, 0]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn accepts_every_stream_op() {
        for op in [OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST] {
            assert!(good(op, 0).validate(3, 0).is_ok(), "op {op}");
        }
        assert_eq!(good(OP_RW, 10).validate(3, 10), Ok(Op::Rw));
        assert_eq!(good(OP_RW, MAX_PAYLOAD).validate(3, 1 << 20), Ok(Op::Rw));
    }

    #[test]
    fn rejects_what_must_not_be_trusted() {
        let spoofed = Header { src_cid: 4, ..good(OP_RW, 0) };
        assert_eq!(spoofed.validate(3, 0), Err(PacketError::BadSrcCid(4)));
        assert!(!PacketError::BadSrcCid(4).answer_with_rst());

        assert_eq!(
            good(OP_RW, 11).validate(3, 10),
            Err(PacketError::LenBeyondChain { len: 11, avail: 10 })
        );
        assert_eq!(good(OP_RW, u32::MAX).validate(3, usize::MAX), Err(PacketError::LenTooLarge(u32::MAX)));
        assert_eq!(Header { type_: 2, ..good(OP_RW, 0) }.validate(3, 0), Err(PacketError::BadType(2)));
        assert_eq!(Header { dst_cid: 5, ..good(OP_RW, 0) }.validate(3, 0), Err(PacketError::BadDstCid(5)));
        assert_eq!(good(0, 0).validate(3, 0), Err(PacketError::BadOp(0)));
        assert_eq!(good(8, 0).validate(3, 0), Err(PacketError::BadOp(8)));
        assert_eq!(
            good(OP_REQUEST, 4).validate(3, 4),
            Err(PacketError::PayloadOnControl { op: OP_REQUEST, len: 4 })
        );
        assert!(PacketError::BadType(2).answer_with_rst());
    }

    #[test]
    fn reset_reply_swaps_addresses() {
        let h = Header { dst_cid: 9, ..good(OP_REQUEST, 0) };
        let r = h.reset_reply();
        assert_eq!((r.src_cid, r.dst_cid, r.src_port, r.dst_port), (9, 3, 52, 1234));
        assert_eq!((r.op, r.type_, r.len, r.buf_alloc), (OP_RST, TYPE_STREAM, 0, 0));
    }
}
