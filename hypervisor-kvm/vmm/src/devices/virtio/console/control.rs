//! The multiport control protocol (virtio 1.x, 5.3.6.2): the 8-byte message, and the state
//! that decides what the device tells the driver next. Pure: no I/O, no guest memory.
//!
//! What the Linux driver (`drivers/char/virtio_console.c`, 6.1) needs, in order:
//! 1. it sends `DEVICE_READY 1` once its control receive queue has buffers;
//! 2. the device sends `DEVICE_ADD` for each port id (`add_port`: this creates
//!    `/dev/vport<dev>p<id>` and fills the port's receive queue); the driver answers
//!    `PORT_READY 1` (or 0 if it failed);
//! 3. on `PORT_READY 1` the device sends `PORT_NAME` (header, then the name; the driver copies
//!    `len - 8` bytes with `strscpy`, so a trailing NUL is optional: we send one, as QEMU
//!    does): this creates `/sys/class/virtio-ports/vport<dev>p<id>/name`;
//! 4. `PORT_OPEN 1` tells the driver a host is connected (reads then block instead of
//!    returning 0, writes are accepted); `PORT_OPEN 0` that it went away (reads return 0
//!    once the buffered data is consumed: the guest sees end of file);
//! 5. the driver sends `PORT_OPEN 1`/`0` when a guest process opens or closes the port. While
//!    the port is closed the driver discards whatever arrives on it, so the device only
//!    forwards host bytes to an open port.
//!
//! Port 0 is not added (as in QEMU without a `virtconsole`): its queues exist, because the
//! driver always sets up queues 0 and 1, but it gets no device node. Named ports are ids
//! `1..=N`, so the first one is `/dev/vport0p1`, the same as under QEMU.
//!
//! The pending messages are flags, not a queue, so a driver that repeats `PORT_READY` or never
//! gives receive buffers cannot make the device store more than a few messages per port.

/// Size of the control message header.
pub const HEADER_LEN: usize = 8;
/// The port id the Linux driver puts in device-wide messages (`VIRTIO_CONSOLE_BAD_ID`).
pub const BAD_ID: u32 = u32::MAX;

/// `VIRTIO_CONSOLE_DEVICE_READY`: driver to device.
pub const DEVICE_READY: u16 = 0;
/// `VIRTIO_CONSOLE_DEVICE_ADD` (`PORT_ADD` in Linux): device to driver.
pub const DEVICE_ADD: u16 = 1;
/// `VIRTIO_CONSOLE_DEVICE_REMOVE`: device to driver.
pub const DEVICE_REMOVE: u16 = 2;
/// `VIRTIO_CONSOLE_PORT_READY`: driver to device.
pub const PORT_READY: u16 = 3;
/// `VIRTIO_CONSOLE_CONSOLE_PORT`: device to driver.
pub const CONSOLE_PORT: u16 = 4;
/// `VIRTIO_CONSOLE_RESIZE`: device to driver.
pub const RESIZE: u16 = 5;
/// `VIRTIO_CONSOLE_PORT_OPEN`: both ways.
pub const PORT_OPEN: u16 = 6;
/// `VIRTIO_CONSOLE_PORT_NAME`: device to driver.
pub const PORT_NAME: u16 = 7;

/// Why a control message from the driver was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Fewer than 8 bytes.
    #[error("control message of {0} bytes, shorter than its 8-byte header")]
    TooShort(usize),
    /// An event number the protocol does not define.
    #[error("unknown control event {0}")]
    UnknownEvent(u16),
    /// An event only the device may send.
    #[error("control event {0} is sent by the device, not the driver")]
    DeviceOnlyEvent(u16),
    /// A port id beyond `max_nr_ports`.
    #[error("port id {0} out of range")]
    PortOutOfRange(u32),
    /// A port the device never added (port 0, or before its `DEVICE_ADD` was sent).
    #[error("port {0} was not added")]
    PortNotAdded(u32),
    /// A value other than 0 or 1.
    #[error("control event {event} with value {value}, expected 0 or 1")]
    BadValue {
        /// The event.
        event: u16,
        /// Its value.
        value: u16,
    },
}

/// A control message header: `struct virtio_console_control` (little endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlMsg {
    /// The port id.
    pub id: u32,
    /// The event.
    pub event: u16,
    /// The event's value.
    pub value: u16,
}

impl ControlMsg {
    /// Parses the header at the start of `bytes`; bytes after it are ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, ControlError> {
        let header: &[u8; HEADER_LEN] =
            bytes.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(ControlError::TooShort(bytes.len()))?;
        Ok(Self {
            id: u32::from_le_bytes([header[0], header[1], header[2], header[3]]),
            event: u16::from_le_bytes([header[4], header[5]]),
            value: u16::from_le_bytes([header[6], header[7]]),
        })
    }

    /// The 8 header bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[..4].copy_from_slice(&self.id.to_le_bytes());
        out[4..6].copy_from_slice(&self.event.to_le_bytes());
        out[6..].copy_from_slice(&self.value.to_le_bytes());
        out
    }
}

/// What a valid driver message meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverEvent {
    /// `DEVICE_READY 1`: the ports are being added.
    DeviceReady,
    /// `DEVICE_READY 0`: the driver failed to set the device up.
    DeviceFailed,
    /// `PORT_READY 1` for a port.
    PortReady(u32),
    /// `PORT_READY 0`: the driver failed to add the port.
    PortFailed(u32),
    /// `PORT_OPEN`: a guest process opened (true) or closed (false) the port.
    GuestOpen(u32, bool),
}

/// A message the device has to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outgoing {
    /// `DEVICE_ADD` for a port.
    Add(u32),
    /// `PORT_NAME` for a port.
    Name(u32),
    /// `PORT_OPEN` with the host's connection state.
    Open(u32, bool),
}

#[derive(Debug, Default)]
struct PortState {
    name: String,
    add_pending: bool,
    added: bool,
    ready: bool,
    name_pending: bool,
    open_pending: bool,
    /// The last `PORT_OPEN` value the driver received.
    guest_sees_host: bool,
    host_connected: bool,
    guest_open: bool,
}

/// One port's control state in a save: what the driver was told and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPort {
    /// Its name (a restored console must have the same ports in the same order).
    pub name: String,
    /// `DEVICE_ADD` not sent yet.
    pub add_pending: bool,
    /// `DEVICE_ADD` sent.
    pub added: bool,
    /// The driver answered `PORT_READY 1`.
    pub ready: bool,
    /// `PORT_NAME` not sent yet.
    pub name_pending: bool,
    /// The last `PORT_OPEN` the driver got said a host was connected.
    pub guest_sees_host: bool,
    /// A guest process has the port open.
    pub guest_open: bool,
}

/// The control state in a save.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedControl {
    /// The driver sent `DEVICE_READY 1`.
    pub device_ready: bool,
    /// The named ports, ids 1..=N.
    pub ports: Vec<SavedPort>,
}

/// The control state of one activation: the driver's view of each named port.
#[derive(Debug)]
pub struct ControlState {
    device_ready: bool,
    ports: Vec<PortState>,
}

fn bool_value(event: u16, value: u16) -> Result<bool, ControlError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ControlError::BadValue { event, value }),
    }
}

impl ControlState {
    /// The state for named ports `names` (ids 1..=N), none of them added yet.
    pub fn new(names: &[String]) -> Self {
        Self {
            device_ready: false,
            ports: names.iter().map(|n| PortState { name: n.clone(), ..PortState::default() }).collect(),
        }
    }

    /// The state to save.
    pub fn save(&self) -> SavedControl {
        let ports = self
            .ports
            .iter()
            .map(|p| SavedPort {
                name: p.name.clone(),
                add_pending: p.add_pending,
                added: p.added,
                ready: p.ready,
                name_pending: p.name_pending,
                guest_sees_host: p.guest_sees_host,
                guest_open: p.guest_open,
            })
            .collect();
        SavedControl { device_ready: self.device_ready, ports }
    }

    /// The state of a restored console with ports `names`: as saved, but no host is
    /// connected (the saved VM's host connections are gone), so a port whose driver was told a
    /// host is there gets `PORT_OPEN 0` first, as after a hang-up. `Err` says why the saved
    /// ports are not these.
    pub fn restored(saved: &SavedControl, names: &[String]) -> Result<Self, String> {
        let saved_names: Vec<&str> = saved.ports.iter().map(|p| p.name.as_str()).collect();
        if saved_names != names.iter().map(String::as_str).collect::<Vec<_>>() {
            return Err(format!("the saved ports are {saved_names:?}; this console's are {names:?}"));
        }
        let ports = saved
            .ports
            .iter()
            .map(|p| PortState {
                name: p.name.clone(),
                add_pending: p.add_pending,
                added: p.added,
                ready: p.ready,
                name_pending: p.name_pending,
                open_pending: p.ready && p.guest_sees_host,
                guest_sees_host: p.guest_sees_host,
                host_connected: false,
                guest_open: p.guest_open,
            })
            .collect();
        Ok(Self { device_ready: saved.device_ready, ports })
    }

    /// `max_nr_ports` of the config space: the named ports plus port 0.
    pub fn max_nr_ports(&self) -> u32 {
        u32::try_from(self.ports.len()).map_or(u32::MAX, |n| n.saturating_add(1))
    }

    fn port(&self, id: u32) -> Option<&PortState> {
        self.ports.get(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    fn port_mut(&mut self, id: u32) -> Option<&mut PortState> {
        self.ports.get_mut(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    fn added_port(&mut self, id: u32) -> Result<&mut PortState, ControlError> {
        if id >= self.max_nr_ports() {
            return Err(ControlError::PortOutOfRange(id));
        }
        match self.port_mut(id) {
            Some(p) if p.added => Ok(p),
            _ => Err(ControlError::PortNotAdded(id)),
        }
    }

    /// Applies a message the driver sent on the control transmit queue.
    pub fn handle(&mut self, bytes: &[u8]) -> Result<DriverEvent, ControlError> {
        let msg = ControlMsg::parse(bytes)?;
        match msg.event {
            DEVICE_READY => {
                // The id is VIRTIO_CONSOLE_BAD_ID in Linux; like QEMU, ignore it. A repeated
                // DEVICE_READY adds the ports again (the driver answers PORT_READY again).
                if !bool_value(msg.event, msg.value)? {
                    return Ok(DriverEvent::DeviceFailed);
                }
                self.device_ready = true;
                for p in &mut self.ports {
                    p.add_pending = true;
                }
                Ok(DriverEvent::DeviceReady)
            }
            PORT_READY => {
                let ok = bool_value(msg.event, msg.value)?;
                let port = self.added_port(msg.id)?;
                if !ok {
                    port.ready = false;
                    return Ok(DriverEvent::PortFailed(msg.id));
                }
                port.ready = true;
                port.name_pending = true;
                if port.host_connected {
                    port.open_pending = true;
                }
                Ok(DriverEvent::PortReady(msg.id))
            }
            PORT_OPEN => {
                let open = bool_value(msg.event, msg.value)?;
                self.added_port(msg.id)?.guest_open = open;
                Ok(DriverEvent::GuestOpen(msg.id, open))
            }
            DEVICE_ADD | DEVICE_REMOVE | CONSOLE_PORT | RESIZE | PORT_NAME => {
                Err(ControlError::DeviceOnlyEvent(msg.event))
            }
            other => Err(ControlError::UnknownEvent(other)),
        }
    }

    /// Records that a host connected to (or left) port `id`. Ignored for ids without a port.
    pub fn set_host_connected(&mut self, id: u32, connected: bool) {
        let Some(port) = self.port_mut(id) else { return };
        port.host_connected = connected;
        // Tell the driver when it knows the port and its view differs; a connection that
        // came and went before the driver heard of it needs no message.
        port.open_pending = port.ready && port.guest_sees_host != connected;
    }

    /// The next message to send, if any: adds first, then each ready port's name before its
    /// open state.
    pub fn next_outgoing(&self) -> Option<Outgoing> {
        let ids = (1..).zip(&self.ports);
        if self.device_ready {
            if let Some((id, _)) = ids.clone().find(|(_, p)| p.add_pending) {
                return Some(Outgoing::Add(id));
            }
        }
        ids.filter(|(_, p)| p.ready).find_map(|(id, p)| {
            if p.name_pending {
                Some(Outgoing::Name(id))
            } else if p.open_pending {
                Some(Outgoing::Open(id, p.host_connected))
            } else {
                None
            }
        })
    }

    /// The bytes of `msg` (for `PORT_NAME`: the header, the name and a NUL).
    pub fn encode(&self, msg: Outgoing) -> Vec<u8> {
        let (id, event, value) = match msg {
            Outgoing::Add(id) => (id, DEVICE_ADD, 1),
            Outgoing::Name(id) => (id, PORT_NAME, 1),
            Outgoing::Open(id, open) => (id, PORT_OPEN, u16::from(open)),
        };
        let mut out = ControlMsg { id, event, value }.to_bytes().to_vec();
        if let (Outgoing::Name(_), Some(port)) = (msg, self.port(id)) {
            out.extend_from_slice(port.name.as_bytes());
            out.push(0);
        }
        out
    }

    /// Records that `msg` reached the driver.
    pub fn mark_sent(&mut self, msg: Outgoing) {
        match msg {
            Outgoing::Add(id) => {
                if let Some(p) = self.port_mut(id) {
                    p.add_pending = false;
                    p.added = true;
                }
            }
            Outgoing::Name(id) => {
                if let Some(p) = self.port_mut(id) {
                    p.name_pending = false;
                }
            }
            Outgoing::Open(id, open) => {
                if let Some(p) = self.port_mut(id) {
                    p.guest_sees_host = open;
                    p.open_pending = p.host_connected != open;
                }
            }
        }
    }

    /// Whether a new host connection may be accepted on port `id`: none is connected, and the
    /// driver was told the last one ended (so the guest sees each connection separately).
    pub fn can_accept(&self, id: u32) -> bool {
        self.port(id).is_some_and(|p| !p.host_connected && !p.guest_sees_host)
    }

    /// Whether host bytes may go to port `id`'s receive queue: the driver knows the host is
    /// connected and a guest process has the port open.
    pub fn rx_allowed(&self, id: u32) -> bool {
        self.port(id).is_some_and(|p| p.host_connected && p.guest_sees_host && p.guest_open)
    }

    /// Whether a guest process has port `id` open.
    pub fn guest_open(&self, id: u32) -> bool {
        self.port(id).is_some_and(|p| p.guest_open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_port_whose_host_was_there_is_told_it_left() {
        let names = vec!["agent.0".to_owned(), "agent.1".to_owned()];
        let mut c = ControlState::new(&names);
        c.handle(&msg(0xffff_ffff, DEVICE_READY, 1)).unwrap();
        for id in [1, 2] {
            c.mark_sent(Outgoing::Add(id));
            c.handle(&msg(id, PORT_READY, 1)).unwrap();
            c.mark_sent(Outgoing::Name(id));
        }
        c.set_host_connected(1, true);
        c.mark_sent(Outgoing::Open(1, true));
        c.handle(&msg(1, PORT_OPEN, 1)).unwrap();
        assert!(c.rx_allowed(1));
        let saved = c.save();
        let json = serde_json::to_string(&saved).unwrap();
        let back = ControlState::restored(&serde_json::from_str(&json).unwrap(), &names).unwrap();
        assert_eq!(back.next_outgoing(), Some(Outgoing::Open(1, false)), "port 1's host is gone");
        assert!(back.guest_open(1) && !back.rx_allowed(1) && !back.can_accept(1));
        assert_eq!(back.save().ports[1], saved.ports[1]);
        let e = ControlState::restored(&saved, &names[..1]).unwrap_err();
        assert!(e.contains("agent.1"), "{e}");
    }

    fn msg(id: u32, event: u16, value: u16) -> [u8; 8] {
        ControlMsg { id, event, value }.to_bytes()
    }

    fn names() -> Vec<String> {
        vec!["agent.0".to_owned(), "agent.1".to_owned()]
    }

    /// Sends everything pending, as a driver with plenty of buffers would receive it.
    fn drain(state: &mut ControlState) -> Vec<Outgoing> {
        let mut sent = Vec::new();
        while let Some(m) = state.next_outgoing() {
            state.mark_sent(m);
            sent.push(m);
            assert!(sent.len() < 100, "the outgoing messages never end");
        }
        sent
    }

    #[test]
    fn header_round_trips_little_endian() {
        let m = ControlMsg { id: 0x0403_0201, event: 0x0605, value: 0x0807 };
        assert_eq!(m.to_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(ControlMsg::parse(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), Ok(m));
        assert_eq!(ControlMsg::parse(&[1, 2, 3, 4, 5, 6, 7]), Err(ControlError::TooShort(7)));
        assert_eq!(ControlMsg::parse(&[]), Err(ControlError::TooShort(0)));
    }

    #[test]
    fn handshake_adds_names_and_opens_in_order() {
        let mut s = ControlState::new(&names());
        assert_eq!(s.max_nr_ports(), 3);
        assert_eq!(s.next_outgoing(), None, "nothing before DEVICE_READY");
        s.set_host_connected(2, true);
        assert_eq!(s.handle(&msg(BAD_ID, DEVICE_READY, 1)), Ok(DriverEvent::DeviceReady));
        assert_eq!(drain(&mut s), [Outgoing::Add(1), Outgoing::Add(2)]);
        assert_eq!(s.handle(&msg(1, PORT_READY, 1)), Ok(DriverEvent::PortReady(1)));
        assert_eq!(drain(&mut s), [Outgoing::Name(1)], "no host on port 1: no PORT_OPEN");
        assert_eq!(s.handle(&msg(2, PORT_READY, 1)), Ok(DriverEvent::PortReady(2)));
        assert_eq!(drain(&mut s), [Outgoing::Name(2), Outgoing::Open(2, true)]);
        let name = s.encode(Outgoing::Name(2));
        assert_eq!(&name[..8], &msg(2, PORT_NAME, 1));
        assert_eq!(&name[8..], b"agent.1\0");
        assert_eq!(s.encode(Outgoing::Open(2, false)), msg(2, PORT_OPEN, 0));
        assert_eq!(s.encode(Outgoing::Add(1)), msg(1, DEVICE_ADD, 1));
    }

    #[test]
    fn host_data_flows_only_to_an_open_port_that_knows_the_host() {
        let mut s = ControlState::new(&names());
        s.handle(&msg(BAD_ID, DEVICE_READY, 1)).expect("ready");
        drain(&mut s);
        s.handle(&msg(1, PORT_READY, 1)).expect("port ready");
        drain(&mut s);
        assert!(s.can_accept(1));
        s.set_host_connected(1, true);
        assert!(!s.can_accept(1));
        assert_eq!(s.handle(&msg(1, PORT_OPEN, 1)), Ok(DriverEvent::GuestOpen(1, true)));
        assert!(!s.rx_allowed(1), "PORT_OPEN 1 not sent yet");
        assert_eq!(drain(&mut s), [Outgoing::Open(1, true)]);
        assert!(s.rx_allowed(1));
        s.handle(&msg(1, PORT_OPEN, 0)).expect("close");
        assert!(!s.rx_allowed(1) && !s.guest_open(1));
    }

    #[test]
    fn a_disconnect_reaches_the_driver_before_the_next_connection() {
        let mut s = ControlState::new(&names());
        s.handle(&msg(BAD_ID, DEVICE_READY, 1)).expect("ready");
        drain(&mut s);
        s.handle(&msg(1, PORT_READY, 1)).expect("port ready");
        s.set_host_connected(1, true);
        drain(&mut s);
        s.set_host_connected(1, false);
        assert!(!s.can_accept(1), "PORT_OPEN 0 still pending");
        assert_eq!(drain(&mut s), [Outgoing::Open(1, false)]);
        assert!(s.can_accept(1));
        // A connection that comes and goes before the driver hears of it is not reported.
        s.set_host_connected(1, true);
        s.set_host_connected(1, false);
        assert_eq!(drain(&mut s), []);
    }

    #[test]
    fn a_connection_before_port_ready_is_reported_after_the_name() {
        let mut s = ControlState::new(&names());
        s.set_host_connected(1, true);
        s.handle(&msg(BAD_ID, DEVICE_READY, 1)).expect("ready");
        drain(&mut s);
        s.handle(&msg(1, PORT_READY, 1)).expect("port ready");
        assert_eq!(drain(&mut s), [Outgoing::Name(1), Outgoing::Open(1, true)]);
    }

    #[test]
    fn repeated_ready_messages_stay_bounded() {
        let mut s = ControlState::new(&names());
        s.handle(&msg(BAD_ID, DEVICE_READY, 1)).expect("ready");
        drain(&mut s);
        s.set_host_connected(1, true);
        for _ in 0..1000 {
            s.handle(&msg(1, PORT_READY, 1)).expect("port ready");
            s.handle(&msg(BAD_ID, DEVICE_READY, 1)).expect("ready");
        }
        // Without buffers nothing is sent; what is pending is at most a few flags per port.
        assert_eq!(drain(&mut s).len(), 2 + 2, "two adds, one name and one open");
    }

    #[test]
    fn malicious_messages_are_rejected() {
        let mut s = ControlState::new(&names());
        assert_eq!(s.handle(&msg(1, PORT_READY, 1)), Err(ControlError::PortNotAdded(1)), "before any add");
        s.handle(&msg(BAD_ID, DEVICE_READY, 1)).expect("ready");
        drain(&mut s);
        assert_eq!(s.handle(&[0; 7]), Err(ControlError::TooShort(7)));
        assert_eq!(s.handle(&msg(1, 8, 1)), Err(ControlError::UnknownEvent(8)));
        assert_eq!(s.handle(&msg(1, u16::MAX, 1)), Err(ControlError::UnknownEvent(u16::MAX)));
        for event in [DEVICE_ADD, DEVICE_REMOVE, CONSOLE_PORT, RESIZE, PORT_NAME] {
            assert_eq!(s.handle(&msg(1, event, 1)), Err(ControlError::DeviceOnlyEvent(event)));
        }
        assert_eq!(s.handle(&msg(3, PORT_READY, 1)), Err(ControlError::PortOutOfRange(3)));
        assert_eq!(s.handle(&msg(u32::MAX, PORT_OPEN, 1)), Err(ControlError::PortOutOfRange(u32::MAX)));
        assert_eq!(s.handle(&msg(0, PORT_OPEN, 1)), Err(ControlError::PortNotAdded(0)), "port 0 is never added");
        assert_eq!(s.handle(&msg(1, PORT_OPEN, 2)), Err(ControlError::BadValue { event: PORT_OPEN, value: 2 }));
        assert_eq!(
            s.handle(&msg(BAD_ID, DEVICE_READY, 7)),
            Err(ControlError::BadValue { event: DEVICE_READY, value: 7 })
        );
        assert_eq!(s.handle(&msg(BAD_ID, DEVICE_READY, 0)), Ok(DriverEvent::DeviceFailed));
        assert_eq!(s.handle(&msg(2, PORT_READY, 0)), Ok(DriverEvent::PortFailed(2)));
        assert_eq!(drain(&mut s), [], "a failed port gets no name");
        // Out-of-range ids given by the device side are ignored, not a panic.
        s.set_host_connected(0, true);
        s.set_host_connected(99, true);
        assert!(!s.can_accept(0) && !s.rx_allowed(99));
    }
}
