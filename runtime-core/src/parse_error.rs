//! Parse errors of the files a user writes (the runtime config, sandbox configs), each as one
//! line: where (`line L, column C`) and what, without the parser's multi-line excerpt.

/// Longest excerpt of the offending line, in characters.
const EXCERPT: usize = 60;

/// A TOML error in `text`: ``line L, column C (`the line`): message`` (the line names the key
/// where the message does not, as for a wrong type).
pub(crate) fn toml(text: &str, e: &toml::de::Error) -> String {
    let message = one_line(e.message());
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            let source = text.lines().nth(line - 1).unwrap_or("").trim();
            let excerpt: String = source.chars().take(EXCERPT).collect();
            let more = if source.chars().count() > EXCERPT { "..." } else { "" };
            format!("line {line}, column {column} (`{excerpt}{more}`): {message}")
        }
        None => message,
    }
}

/// A JSON error: `line L, column C: message`.
pub(crate) fn json(e: &serde_json::Error) -> String {
    let message = plugin_api::settings::json_message(e);
    if e.line() == 0 {
        return message;
    }
    format!("line {}, column {}: {message}", e.line(), e.column())
}

/// The parser's lines joined with `; `.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        a: u32,
    }

    #[test]
    fn toml_errors_are_one_line_with_their_place() {
        let text = "a = 1\nb = 2\n";
        let e = toml::from_str::<T>(text).unwrap_err();
        assert_eq!(toml(text, &e), "line 2, column 1 (`b = 2`): unknown field `b`, expected `a`");
        let text = "a = \"x\n";
        let e = toml::from_str::<T>(text).unwrap_err();
        let line = toml(text, &e);
        assert!(line.starts_with("line 1, column ") && !line.contains('\n') && !line.contains(" | "), "{line}");
    }

    #[test]
    fn json_errors_are_one_line_with_their_place() {
        let e = serde_json::from_str::<T>("{\n  \"a\": 1,\n  \"b\": 2}").unwrap_err();
        assert_eq!(json(&e), "line 3, column 5: unknown field `b`, expected `a`");
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("é = 1", 2), (1, 2));
        assert_eq!(line_column("a\nbc", 3), (2, 2));
        assert_eq!(line_column("a", 99), (1, 2));
    }
}
