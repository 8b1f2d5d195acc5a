//! The legacy devices on port I/O: the 16550 UART at COM1 and the port dispatch around it.

pub mod pio;
pub mod serial;
