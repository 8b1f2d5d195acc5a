//! Why a block device could not be set up.

/// Errors opening a block device's image.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("opening the disk image {path}")]
    Open {
        /// The image path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("the disk image {0} is not a regular file or a block device")]
    NotAnImage(String),
    /// Its size could not be read.
    #[error("reading the size of the disk image {path}")]
    Size {
        /// The image path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Its size is not a whole number of sectors.
    #[error("the disk image {path} is {size} bytes, not a multiple of 512")]
    Unaligned {
        /// The image path.
        path: String,
        /// Its size in bytes.
        size: u64,
    },
    /// The device ID does not fit in 20 bytes.
    #[error("the block device ID {0:?} is longer than 20 bytes")]
    IdTooLong(String),
}
