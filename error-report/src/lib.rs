//! An error with its chain of causes, as one line: `what failed: why: why`. Every binary and
//! every crate that flattens an error into a message (a `PluginError` crossing the plugin ABI,
//! the vmm's and the agent's last words) prints it through [`chain`] or [`Report`].
//!
//! Each cause is written once: a cause whose text the line already holds (a library error
//! that repeats its source in its own message) is left out.
//!
//! [`wants_colour`] is the one rule for colour in what the binaries print (their logs): ANSI
//! codes on a terminal only, never where `NO_COLOR` is set.
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

/// Whether text written to `stream` may carry ANSI colour codes: only when it is a terminal,
/// and never when the `NO_COLOR` environment variable is set and not empty (no-color.org).
/// A log written to a pipe or a file is plain text.
pub fn wants_colour(stream: &impl std::io::IsTerminal) -> bool {
    colour_for(stream.is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

fn colour_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
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

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_for(true, None));
        assert!(colour_for(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
        assert!(!colour_for(true, Some(OsStr::new("1"))));
        assert!(!colour_for(false, None), "a pipe or a file gets no colour");
        let file = unnamed_file();
        assert!(!wants_colour(&file));
    }

    fn unnamed_file() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("error-report-colour-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("temp file");
        let _ = std::fs::remove_file(&path);
        file
    }
}
