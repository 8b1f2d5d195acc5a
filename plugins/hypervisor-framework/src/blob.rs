//! Versioned JSON state blobs: `{"schema": "<family>/<version>", ...}`. The schema is checked
//! before the shape, so a blob of another plugin (or of a newer build) says so instead of
//! failing on some field.

use serde::de::DeserializeOwned;

/// Why a blob is refused.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Not JSON, or not the shape of this schema.
    #[error("malformed {what}")]
    Malformed {
        /// What the blob should be (`QEMU VM state`).
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but not of this schema family, or of a version this build does not read.
    #[error("not a {what} this plugin can read: {why}")]
    Foreign {
        /// What the blob should be.
        what: &'static str,
        /// What it is instead.
        why: String,
    },
}

/// A blob schema: `<prefix><version>`, versions 1 to `version` readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// What the blob is, for messages (`QEMU VM state`).
    pub what: &'static str,
    /// The family, with its slash (`qemu-vm/`).
    pub prefix: &'static str,
    /// The newest version this build writes and reads.
    pub version: u32,
}

impl Schema {
    /// The current schema string.
    pub fn current(&self) -> String {
        format!("{}{}", self.prefix, self.version)
    }

    /// Decodes a blob: the schema first, then the shape.
    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, BlobError> {
        let what = self.what;
        let foreign = |why: String| BlobError::Foreign { what, why };
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|source| BlobError::Malformed { what, source })?;
        let Some(object) = value.as_object() else {
            return Err(foreign(format!("expected a JSON object, got {}", kind_of(&value))));
        };
        let schema = match object.get("schema") {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(other) => return Err(foreign(format!("its schema is {other}, expected \"{}\"", self.current()))),
            None => return Err(foreign("it has no \"schema\" field".into())),
        };
        match schema.strip_prefix(self.prefix).and_then(|v| v.parse::<u32>().ok()) {
            Some(v) if (1..=self.version).contains(&v) => {}
            Some(v) if v > self.version => {
                return Err(foreign(format!("its schema {schema:?} is newer than this plugin's \"{}\"", self.current())))
            }
            _ => return Err(foreign(format!("its schema is {schema:?}, expected \"{}\"", self.current()))),
        }
        serde_json::from_value(value).map_err(|source| BlobError::Malformed { what, source })
    }
}

fn kind_of(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCHEMA: Schema = Schema { what: "test VM state", prefix: "test-vm/", version: 2 };

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Blob {
        schema: String,
        n: u32,
    }

    fn error(value: serde_json::Value) -> String {
        SCHEMA.decode::<Blob>(value.to_string().as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn schema_then_shape() {
        assert_eq!(SCHEMA.current(), "test-vm/2");
        for v in ["test-vm/1", "test-vm/2"] {
            let blob: Blob = SCHEMA.decode(json!({"schema": v, "n": 3}).to_string().as_bytes()).unwrap();
            assert_eq!(blob, Blob { schema: v.into(), n: 3 });
        }
        assert_eq!(SCHEMA.decode::<Blob>(b"x").unwrap_err().to_string(), "malformed test VM state");
        assert!(error(json!(null)).contains("expected a JSON object, got null"));
        assert!(error(json!({"n": 1})).contains("no \"schema\" field"));
        assert!(error(json!({"schema": 2})).contains("its schema is 2, expected \"test-vm/2\""));
        assert!(error(json!({"schema": "test-vm/3"})).contains("newer"));
        let e = error(json!({"schema": "qemu-vm/1"}));
        assert!(e.starts_with("not a test VM state") && e.contains("\"qemu-vm/1\""), "{e}");
        assert!(error(json!({"schema": "test-vm/0", "n": 1})).contains("test-vm/0"));
        assert!(error(json!({"schema": "test-vm/1", "n": 1, "m": 2})).contains("malformed"));
    }
}
