//! The 16550 UART at COM1 (I/O ports 0x3f8..=0x3ff), writing to the console log. Its
//! interrupt is an EventFd that KVM injects as IRQ 4 (irqfd).

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
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
    /// A saved state the UART cannot take.
    #[error("restoring the serial port's registers: {0}")]
    Restore(String),
}

/// The UART's registers and receive FIFO in a state file (vm-superio's `SerialState`, which
/// has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialRegs {
    /// DLL.
    pub baud_divisor_low: u8,
    /// DLM.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// SCR.
    pub scratch: u8,
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
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

    /// A UART writing to `out` with the registers of a saved one (a restored VM).
    pub fn restored(out: W, regs: &SerialRegs) -> Result<(Self, EventFd), SerialError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(SerialError::EventFd)?;
        let irq = evt.try_clone().map_err(SerialError::EventFd)?;
        let state = SerialState {
            baud_divisor_low: regs.baud_divisor_low,
            baud_divisor_high: regs.baud_divisor_high,
            interrupt_enable: regs.interrupt_enable,
            interrupt_identification: regs.interrupt_identification,
            line_control: regs.line_control,
            line_status: regs.line_status,
            modem_control: regs.modem_control,
            modem_status: regs.modem_status,
            scratch: regs.scratch,
            in_buffer: regs.in_buffer.clone(),
        };
        let serial = Serial::from_state(&state, IrqTrigger(irq), NoEvents, out).map_err(|e| SerialError::Restore(format!("{e:?}")))?;
        Ok((Self { serial }, evt))
    }

    /// The registers, for a save.
    pub fn regs(&self) -> SerialRegs {
        let s = self.serial.state();
        SerialRegs {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
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
    fn registers_survive_a_save() {
        let (mut port, _evt) = SerialPort::new(Vec::new()).unwrap();
        port.write(0x3fb, &[0x03]).unwrap(); // LCR: 8N1
        port.write(0x3ff, &[0x5a]).unwrap(); // scratch
        let regs = port.regs();
        let json = serde_json::to_string(&regs).unwrap();
        let (mut back, _evt) = SerialPort::restored(Vec::new(), &serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back.regs(), regs);
        let mut scratch = [0u8];
        back.read(0x3ff, &mut scratch);
        assert_eq!(scratch, [0x5a]);
        let too_much = SerialRegs { in_buffer: vec![0; 1 << 20], ..regs };
        assert!(SerialPort::restored(Vec::new(), &too_much).is_err());
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
