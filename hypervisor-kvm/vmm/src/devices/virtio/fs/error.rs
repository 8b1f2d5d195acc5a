//! Errors of a virtio-fs device and its vhost-user backend.

/// Errors of a virtio-fs device and its vhost-user backend.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty, too long or contains a NUL byte.
    #[error("the virtio-fs tag {0:?} must be 1 to 36 bytes with no NUL")]
    BadTag(String),
    /// Connecting to the backend's socket failed.
    #[error("connecting to the vhost-user backend {socket}")]
    Connect {
        /// The backend's socket.
        socket: String,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// A vhost-user request failed or was answered wrongly.
    #[error("the vhost-user backend {socket}: {step}")]
    Request {
        /// The backend's socket.
        socket: String,
        /// The request (or step) that failed.
        step: String,
        /// The cause.
        #[source]
        source: vhost::Error,
    },
    /// The backend cannot serve a virtio-fs device the way this vmm needs.
    #[error("the vhost-user backend {socket}: {reason}")]
    Unsuitable {
        /// The backend's socket.
        socket: String,
        /// What is missing.
        reason: String,
    },
    /// Guest memory cannot be described to the backend.
    #[error("the vhost-user backend {socket}: guest memory at {gpa:#x} cannot be shared")]
    Memory {
        /// The backend's socket.
        socket: String,
        /// The guest physical address concerned.
        gpa: u64,
    },
}
