//! The 16550 UART at COM1 (I/O ports 0x3f8..=0x3ff), writing to the console log. Its
//! interrupt is an EventFd that KVM injects as IRQ 4 (irqfd).

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// First I/O port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of registers of a 16550.
pub const COM1_LEN: u16 = 8;
/// The legacy IRQ of COM1.
pub const COM1_IRQ: u32 = 4;

/// Errors of the serial device.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Creating the interrupt EventFd failed.
    #[error("creating the serial interrupt eventfd")]
    EventFd(#[source] std::io::Error),
}

/// An EventFd as a vm-superio interrupt trigger.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// COM1 with its output sink.
pub struct SerialPort<W: Write> {
    serial: Serial<IrqTrigger, NoEvents, W>,
}

impl<W: Write> SerialPort<W> {
    /// A UART writing to `out`; returns it with the EventFd to register as IRQ 4.
    pub fn new(out: W) -> Result<(Self, EventFd), SerialError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let irq = evt.try_clone().map_err(SerialError::EventFd)?;
        Ok((
            Self {
                serial: Serial::new(IrqTrigger(irq), out),
            },
            evt,
        ))
    }

    /// Register offset for `port`, or None when the port is not ours.
    pub fn offset(port: u16) -> Option<u8> {
        port.checked_sub(COM1_BASE)
            .filter(|off| *off < COM1_LEN)
            .map(|off| off as u8)
    }

    /// A guest `in` from `port` (one of ours); fills `data`.
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        if let (Some(off), Some(first)) = (Self::offset(port), data.first_mut()) {
            *first = self.serial.read(off);
        }
    }

    /// A guest `out` to `port` (one of ours). Errors writing the log are returned to be logged.
    pub fn write(
        &mut self,
        port: u16,
        data: &[u8],
    ) -> Result<(), vm_superio::serial::Error<std::io::Error>> {
        match (Self::offset(port), data.first()) {
            (Some(off), Some(value)) => self.serial.write(off, *value),
            _ => Ok(()),
        }
    }

    /// The output sink.
    pub fn writer_mut(&mut self) -> &mut W {
        self.serial.writer_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_dispatch() {
        assert_eq!(SerialPort::<Vec<u8>>::offset(0x3f7), None);
        assert_eq!(SerialPort::<Vec<u8>>::offset(0x3f8), Some(0));
        assert_eq!(SerialPort::<Vec<u8>>::offset(0x3ff), Some(7));
        assert_eq!(SerialPort::<Vec<u8>>::offset(0x400), None);
        assert_eq!(SerialPort::<Vec<u8>>::offset(0), None);
    }

    #[test]
    fn data_register_writes_reach_the_log_and_interrupt() {
        let (mut port, evt) = SerialPort::new(Vec::new()).unwrap();
        port.write(0x3f9, &[0x02]).unwrap(); // IER: THR empty interrupt
        for b in b"Linux version" {
            port.write(0x3f8, &[*b]).unwrap();
        }
        assert_eq!(port.writer_mut().as_slice(), b"Linux version");
        assert!(evt.read().unwrap() >= 1);
        let mut lsr = [0u8];
        port.read(0x3fd, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        // Out-of-range ports and empty accesses are ignored.
        port.write(0x2f8, b"x").unwrap();
        port.write(0x3f8, &[]).unwrap();
        let mut none: [u8; 0] = [];
        port.read(0x3f8, &mut none);
        assert_eq!(port.writer_mut().as_slice(), b"Linux version");
    }
}
