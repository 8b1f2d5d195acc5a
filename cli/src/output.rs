//! How the CLI prints what it lists: a table with aligned columns for people, or JSON for
//! scripts (`--json`, `-o json`).

use anyhow::Result;
use serde::Serialize;
use std::fmt::Write as _;

/// The output format of the listing commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns aligned to the longest value, one row per line.
    #[default]
    Table,
    /// One pretty-printed JSON document.
    Json,
}

/// Spaces between two columns.
const GAP: usize = 3;

/// A table whose columns are as wide as their widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&'static str]) -> Table {
        Table { header: header.to_vec(), rows: Vec::new() }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| one_line(&c)).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as text: the title line, then the rows; no trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}{:GAP$}", "");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A cell on one line: control characters (a newline in a command, an escape sequence in a
/// name) are written escaped, so they can neither break a row nor colour the terminal.
fn one_line(cell: &str) -> String {
    cell.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// Prints `table` or `value` as JSON, as `format` says.
pub fn print(format: Format, table: impl FnOnce() -> Table, value: impl FnOnce() -> Result<serde_json::Value>) -> Result<()> {
    match format {
        Format::Table => print!("{}", table().render()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&value()?)?),
    }
    Ok(())
}

/// `value` as a JSON value.
pub fn json(value: &impl Serialize) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_whatever_the_lengths() {
        let mut t = Table::new(&["ID", "STATE", "CONTAINERS"]);
        t.row(vec!["a-very-long-sandbox-identifier-of-sixty-characters-or-so-xx".into(), "running".into(), "c1:running".into()]);
        t.row(vec!["s".into(), "ready".into(), String::new()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        let state_col = lines[0].find("STATE").expect("title");
        assert_eq!(lines[1].find("running"), Some(state_col), "{text}");
        assert_eq!(lines[2].find("ready"), Some(state_col), "{text}");
        assert_eq!(lines[0].find("CONTAINERS"), lines[1].find("c1:running"), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "no trailing spaces: {text:?}");
    }

    #[test]
    fn a_cell_never_breaks_a_row_or_colours_the_terminal() {
        let mut t = Table::new(&["PID", "COMMAND"]);
        t.row(vec!["1".into(), "sh -c 'echo a\nb' \u{1b}[31m".into()]);
        let text = t.render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(text.contains("echo a\\nb"), "{text}");
    }

    #[test]
    fn short_rows_are_padded() {
        let mut t = Table::new(&["A", "B", "C"]);
        t.row(vec!["x".into()]);
        assert_eq!(t.render(), "A   B   C\nx\n");
    }
}
