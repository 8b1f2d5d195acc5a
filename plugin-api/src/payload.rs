//! Rich values cross the ABI as versioned JSON, so they can grow without an ABI break.

use crate::error::PluginError;
use serde::{de::DeserializeOwned, Serialize};

/// A serde type that crosses the boundary as JSON bytes with a schema version.
pub trait Payload: Serialize + DeserializeOwned {
    /// What the payload is, for error messages (`"HypervisorConfig"`).
    const NAME: &'static str;
    /// The newest schema version this build understands.
    const SCHEMA: u32;

    /// The schema version carried by a decoded value.
    fn schema(&self) -> u32;

    /// Encodes the value.
    fn encode(&self) -> Vec<u8> {
        // Serializing plain data structs to a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes and checks the schema version; unknown fields from newer writers are ignored.
    fn decode(bytes: &[u8]) -> Result<Self, PluginError> {
        let value: Self = serde_json::from_slice(bytes).map_err(|e| {
            PluginError::invalid_input(format!("malformed {}: {e}", Self::NAME))
        })?;
        if value.schema() == 0 || value.schema() > Self::SCHEMA {
            return Err(PluginError::invalid_input(format!(
                "{} has schema version {}, this build understands 1 to {}",
                Self::NAME,
                value.schema(),
                Self::SCHEMA
            )));
        }
        Ok(value)
    }
}

/// Implements [`Payload`] for a struct with a `schema: u32` field.
macro_rules! payload {
    ($ty:ty, $schema:expr) => {
        impl $crate::payload::Payload for $ty {
            const NAME: &'static str = stringify!($ty);
            const SCHEMA: u32 = $schema;
            fn schema(&self) -> u32 {
                self.schema
            }
        }
    };
}
pub(crate) use payload;
