//! Guest housekeeping after a VM is cloned from a template: its clock and its RNG.

use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};
use std::os::fd::AsRawFd;

/// Most entropy accepted in one call.
pub const MAX_SEED: usize = 4096;

/// Why a housekeeping call failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The time is out of range.
    #[error("nanoseconds {0} is not below 1000000000")]
    BadNanoseconds(u32),
    /// Setting the clock failed.
    #[error("setting CLOCK_REALTIME")]
    Clock(#[source] nix::Error),
    /// Seed size out of range.
    #[error("seed of {0} bytes: give 1 to {MAX_SEED} bytes")]
    BadSeed(usize),
    /// Writing to the RNG failed.
    #[error("adding entropy to /dev/urandom")]
    Random(#[source] std::io::Error),
    /// The kernel refused to reseed its CRNG.
    #[error("reseeding the kernel's CRNG (RNDRESEEDCRNG)")]
    Reseed(#[source] std::io::Error),
}

/// Sets the wall clock.
pub fn set_time(seconds: i64, nanoseconds: u32) -> Result<(), GuestError> {
    if nanoseconds >= 1_000_000_000 {
        return Err(GuestError::BadNanoseconds(nanoseconds));
    }
    let ts = TimeSpec::new(seconds, i64::from(nanoseconds));
    clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(GuestError::Clock)
}

/// Mixes `data` into the kernel's pool and credits it (RNDADDENTROPY), then has the kernel
/// reseed its CRNG from the pool at once (RNDRESEEDCRNG), so that a clone of a template does
/// not share its RNG output with its siblings: without the reseed, what `/dev/urandom` and
/// `getrandom` give comes from the CRNG state the clone resumed, which only reseeds itself
/// from the pool every minute.
pub fn reseed_random(data: &[u8]) -> Result<(), GuestError> {
    if data.is_empty() || data.len() > MAX_SEED {
        return Err(GuestError::BadSeed(data.len()));
    }
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + data.len());
    info.extend_from_slice(&((data.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(data.len() as i32).to_ne_bytes());
    info.extend_from_slice(data);
    let urandom = std::fs::OpenOptions::new().write(true).open("/dev/urandom").map_err(GuestError::Random)?;
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: the buffer holds a rand_pool_info header followed by buf_size bytes, as the
    // ioctl expects; the fd is open for writing.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } < 0 {
        return Err(GuestError::Random(std::io::Error::last_os_error()));
    }
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: an ioctl without an argument on the fd opened above.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } < 0 {
        let e = std::io::Error::last_os_error();
        // ENODATA: the CRNG is not initialized yet, and will seed itself from the pool.
        if e.raw_os_error() != Some(libc::ENODATA) {
            return Err(GuestError::Reseed(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_values_by_name() {
        assert!(set_time(0, 1_000_000_000).unwrap_err().to_string().contains("1000000000"));
        assert!(reseed_random(&[]).unwrap_err().to_string().contains("0 bytes"));
        assert!(reseed_random(&vec![0; MAX_SEED + 1]).unwrap_err().to_string().contains("4097"));
    }
}
