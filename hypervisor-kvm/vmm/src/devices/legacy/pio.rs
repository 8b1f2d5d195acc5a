//! Port I/O dispatch: COM1, the i8042 reset line, everything else ignored.

use std::collections::BTreeMap;
use std::io::Write;

use crate::devices::legacy::serial::SerialPort;
use crate::logger::RateLimit;

/// i8042 command port; writing 0xfe pulses the CPU reset line (`reboot=k`).
pub const I8042_COMMAND: u16 = 0x64;
/// i8042 "pulse reset" command.
pub const I8042_RESET: u8 = 0xfe;

/// What the absent i8042 reports as status: input buffer empty (bit 1 clear) so the
/// guest's reset path (`kb_wait` polls up to 65536 times for it) writes the reset command at
/// once; output buffer full (bit 0) with 0xff data so the guest's probe fails fast.
pub const I8042_STATUS_ABSENT: u8 = 0xfd;

/// CMOS/RTC index and data ports. There is no RTC: data reads return 0 so that the
/// update-in-progress bit reads clear. With all ones the guest's RTC probe polls for about
/// 20000 exits (seconds under nested KVM) before declaring it broken.
pub const CMOS_INDEX: u16 = 0x70;
/// CMOS data port.
pub const CMOS_DATA: u16 = 0x71;

/// What a port write asks of the VMM.
#[derive(Debug, PartialEq, Eq)]
pub enum PioAction {
    /// Keep running.
    Continue,
    /// The guest asked for a reset.
    Reset,
}

/// The VM's port I/O devices.
pub struct PioBus<W: Write> {
    /// COM1.
    pub serial: SerialPort<W>,
    /// Accesses to ports without a device.
    pub unhandled: RateLimit,
    /// Failed writes to the console log.
    pub log_errors: RateLimit,
    /// Exits per port (reads and writes), for finding slow guest paths.
    pub exits: BTreeMap<u16, u64>,
}

impl<W: Write> PioBus<W> {
    /// A bus with COM1.
    pub fn new(serial: SerialPort<W>) -> Self {
        Self {
            serial,
            unhandled: RateLimit::default(),
            log_errors: RateLimit::default(),
            exits: BTreeMap::new(),
        }
    }

    /// The `n` ports with the most exits, most first.
    pub fn busiest_ports(&self, n: usize) -> Vec<(u16, u64)> {
        let mut v: Vec<(u16, u64)> = self.exits.iter().map(|(p, c)| (*p, *c)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// A guest `in`: COM1 answers its ports, others read as all ones.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        *self.exits.entry(port).or_default() += 1;
        if SerialPort::<W>::offset(port).is_some() {
            self.serial.read(port, data);
        } else if port == CMOS_DATA {
            data.fill(0);
        } else if port == I8042_COMMAND {
            data.fill(I8042_STATUS_ABSENT);
        } else {
            data.fill(0xff);
            if self.unhandled.hit() {
                tracing::debug!(port, len = data.len(), "unhandled port read");
            }
        }
    }

    /// A guest `out`.
    pub fn write(&mut self, port: u16, data: &[u8]) -> PioAction {
        *self.exits.entry(port).or_default() += 1;
        if SerialPort::<W>::offset(port).is_some() {
            if let Err(e) = self.serial.write(port, data) {
                if self.log_errors.hit() {
                    tracing::warn!(error = ?e, "serial output failed");
                }
            }
        } else if port == I8042_COMMAND && data == [I8042_RESET] {
            return PioAction::Reset;
        } else if port == CMOS_INDEX || port == CMOS_DATA {
            // Index selection and writes to the (absent) RTC are dropped.
        } else if self.unhandled.hit() {
            tracing::debug!(port, ?data, "unhandled port write");
        }
        PioAction::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bus() -> PioBus<Vec<u8>> {
        PioBus::new(SerialPort::new(Vec::new()).unwrap().0)
    }

    #[test]
    fn dispatches_serial_and_ignores_the_rest() {
        let mut bus = bus();
        assert_eq!(bus.write(0x3f8, b"A"), PioAction::Continue);
        assert_eq!(bus.write(0x80, &[1]), PioAction::Continue);
        assert_eq!(bus.write(0x64, &[0x01]), PioAction::Continue);
        assert_eq!(bus.write(0xcf8, &[1, 2, 3, 4]), PioAction::Continue);
        let mut data = [0u8; 4];
        bus.read(0xcfc, &mut data);
        assert_eq!(data, [0xff; 4]);
        let mut lsr = [0u8];
        bus.read(0x3fd, &mut lsr);
        assert_ne!(lsr[0], 0xff);
        assert_eq!(bus.serial.writer_mut().as_slice(), b"A");
        assert_eq!(bus.unhandled.count(), 4);
        bus.write(0x3f8, b"B");
        // Most exits first, ties by port number.
        assert_eq!(bus.busiest_ports(2), vec![(0x3f8, 2), (0x64, 1)]);
    }

    #[test]
    fn cmos_reads_zero() {
        let mut bus = bus();
        assert_eq!(bus.write(0x70, &[0x0a]), PioAction::Continue);
        let mut reg_a = [0xffu8];
        bus.read(0x71, &mut reg_a);
        assert_eq!(reg_a, [0], "update-in-progress must read clear");
        assert_eq!(bus.unhandled.count(), 0);
    }

    #[test]
    fn i8042_reset() {
        let mut status = [0u8];
        bus().read(0x64, &mut status);
        assert_eq!(status[0] & 0x02, 0, "input buffer empty");
        assert_eq!(bus().write(0x64, &[0xfe]), PioAction::Reset);
    }

    #[test]
    fn rate_limit() {
        let mut rl = RateLimit::default();
        let logged = (0..1000).filter(|_| rl.hit()).count();
        assert_eq!(logged, 10 + 6); // 16, 32, 64, 128, 256, 512
    }
}
