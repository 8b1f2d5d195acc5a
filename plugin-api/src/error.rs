//! The error that crosses the plugin boundary.

use abi_stable::{std_types::RString, StableAbi};
use std::fmt;

/// What kind of failure a [`PluginError`] reports.
///
/// A transparent integer rather than an enum, so that later minor versions can add kinds
/// without breaking the ABI. Unknown values are shown as `other(N)`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The caller passed something invalid (a bad key, a malformed config).
    pub const INVALID_INPUT: Self = Self(1);
    /// A thing the call needs does not exist.
    pub const NOT_FOUND: Self = Self(2);
    /// Stored data failed its integrity check.
    pub const CORRUPT: Self = Self(3);
    /// An operating-system I/O error.
    pub const IO: Self = Self(4);
    /// The plugin does not implement this operation.
    pub const UNSUPPORTED: Self = Self(5);
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PANICKED: Self = Self(6);
    /// The resource is busy (locked by someone else) and the plugin gave up waiting.
    pub const BUSY: Self = Self(7);
    /// Anything else.
    pub const OTHER: Self = Self(100);

    /// A short lower-case name for the kind.
    pub fn name(self) -> &'static str {
        match self {
            Self::INVALID_INPUT => "invalid input",
            Self::NOT_FOUND => "not found",
            Self::CORRUPT => "corrupt data",
            Self::IO => "I/O error",
            Self::UNSUPPORTED => "unsupported",
            Self::PANICKED => "plugin panicked",
            Self::BUSY => "busy",
            _ => "other",
        }
    }
}

impl fmt::Debug for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            "other" => write!(f, "other({})", self.0),
            name => f.write_str(name),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// An error returned by a plugin across the ABI: a kind and a one-line message.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// A human-readable message that names what was wrong.
    pub message: RString,
}

impl PluginError {
    /// Builds an error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: RString::from(message.into()) }
    }

    /// An [`ErrorKind::INVALID_INPUT`] error.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INVALID_INPUT, message)
    }

    /// An [`ErrorKind::CORRUPT`] error.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CORRUPT, message)
    }

    /// An [`ErrorKind::UNSUPPORTED`] error.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNSUPPORTED, message)
    }

    /// An [`ErrorKind::IO`] error whose message says what was being done.
    pub fn io(context: impl fmt::Display, err: &std::io::Error) -> Self {
        Self::new(ErrorKind::IO, format!("{context}: {err}"))
    }

    /// An [`ErrorKind::OTHER`] error.
    pub fn other(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OTHER, message)
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PluginError({:?}: {})", self.kind, self.message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for PluginError {}
