//! The last lines of a VM's console log, for errors about a VM that did not come up.

use std::path::Path;

/// How many lines of the console an error quotes.
const CONSOLE_TAIL_LINES: usize = 20;

/// The last lines of the console log at `path`, joined by `separator`, or a note that there is
/// none.
pub(crate) fn console_tail(path: Option<&Path>, separator: &str) -> String {
    let Some(text) = path.and_then(|p| std::fs::read(p).ok()) else {
        return "(no console log)".into();
    };
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(CONSOLE_TAIL_LINES)..].join(separator)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_the_last_lines_or_says_there_is_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let text: String = (1..=25).map(|n| format!("line {n}\n")).collect();
        std::fs::write(&log, text).unwrap();
        let tail = console_tail(Some(&log), " | ");
        assert!(tail.starts_with("line 6 | line 7") && tail.ends_with("line 25"), "{tail}");
        assert_eq!(console_tail(Some(&dir.path().join("absent")), "\n"), "(no console log)");
        assert_eq!(console_tail(None, "\n"), "(no console log)");
    }
}
