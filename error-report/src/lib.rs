//! An error with its chain of causes, as one line: `what failed: why: why`. Every binary and
//! every crate that flattens an error into a message (a `PluginError` crossing the plugin ABI,
//! the vmm's and the agent's last words) prints it through [`chain`] or [`Report`].
//!
//! Each cause is written once: a cause whose text the line already holds (a library error
//! that repeats its source in its own message) is left out.
#![deny(missing_docs)]

use std::error::Error;
use std::fmt;

/// Displays an error and its causes, separated by `": "`.
pub struct Report<'a>(pub &'a dyn Error);

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0))
    }
}

/// The error and its causes, separated by `": "`.
pub fn chain(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("starting the VM")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("reading the kernel: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(chain(&Outer(Middle(io()))), "starting the VM: reading the kernel: no such file");
        assert_eq!(Report(&io()).to_string(), "no such file");
        assert_eq!(chain(&Middle(io())), "reading the kernel: no such file", "a cause already in the message is not repeated");
    }
}
