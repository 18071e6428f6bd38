//! How answers are shown: plain aligned tables for people, pretty JSON for scripts, and the
//! small text forms (durations, tallies) the tables share.
//!
//! Everything goes through fallible writes to stdout rather than `println!`, which panics
//! when the reader has gone (`fulcrumctl status | head -3`); `main` ends quietly then.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use serde::Serialize;

/// The `-o` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns, for people.
    Table,
    /// The API's JSON, pretty-printed, for scripts.
    Json,
    /// A cluster file (`get config` only).
    Toml,
}

/// Rows of cells printed in aligned columns separated by two spaces.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first row is `header`; an empty header makes a table of rows only.
    pub(crate) fn new(header: &[&str]) -> Table {
        let rows = if header.is_empty() {
            Vec::new()
        } else {
            vec![header.iter().map(|h| h.to_string()).collect()]
        };
        Table { rows }
    }

    /// Adds a row; a row shorter than others leaves its last columns empty, and its last
    /// cell may be longer than its column.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines, each without trailing spaces.
    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in &self.rows {
            // The last cell of a short row (a note such as "no answer: ...") runs on past
            // the columns rather than widening one.
            let aligned = if row.len() < columns { row.len().saturating_sub(1) } else { columns };
            for (width, cell) in widths.iter_mut().zip(&row[..aligned]) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (cell, width) in row.iter().zip(&widths) {
                line.push_str(cell);
                let pad = width.saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub(crate) fn print(&self) -> io::Result<()> {
        write!(io::stdout(), "{}", self.render())
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("cannot write the answer as JSON")?;
    writeln!(io::stdout(), "{text}")?;
    Ok(())
}

/// A duration as people write it in files: `30s`, `1m 30s`, `500ms`.
pub(crate) fn duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A measured time with two decimals: `0.42s`.
pub(crate) fn seconds(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Counts values and lists them as `2 up, 1 down`, in the order of `known` first, then
/// alphabetically; an empty list is `-`.
pub(crate) fn tally<'a>(values: impl IntoIterator<Item = &'a str>, known: &[&str]) -> String {
    let mut counts: BTreeMap<(usize, &str), usize> = BTreeMap::new();
    for value in values {
        let rank = known.iter().position(|k| *k == value).unwrap_or(known.len());
        *counts.entry((rank, value)).or_default() += 1;
    }
    if counts.is_empty() {
        return "-".to_owned();
    }
    counts.iter().map(|((_, value), n)| format!("{n} {value}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_on_the_widest_cell() {
        let mut table = Table::new(&["NAME", "ADDRESS", "STATE"]);
        table.row(vec!["web".into(), "198.18.0.21:8080".into(), "active".into()]);
        table.row(vec!["web-canary".into(), "[2001:db8::1]:80".into(), "draining".into()]);
        table.row(vec!["é".into(), "x".into(), String::new()]);
        table.row(vec!["db".into(), "no answer: connection refused".into()]);
        assert_eq!(
            table.render(),
            "NAME        ADDRESS           STATE\n\
             web         198.18.0.21:8080  active\n\
             web-canary  [2001:db8::1]:80  draining\n\
             é           x\n\
             db          no answer: connection refused\n"
        );
    }

    #[test]
    fn tables_without_header_and_short_rows() {
        let mut table = Table::new(&[]);
        table.row(vec!["algorithm:".into(), "round_robin".into()]);
        table.row(vec!["drain timeout:".into(), "30s".into()]);
        table.row(vec!["alone, and longer than the first column".into()]);
        assert_eq!(
            table.render(),
            "algorithm:      round_robin\n\
             drain timeout:  30s\n\
             alone, and longer than the first column\n"
        );
        assert_eq!(Table::new(&[]).render(), "");
    }

    #[test]
    fn tallies_put_known_values_first() {
        let health = ["down", "up", "weird", "up", "unchecked"];
        assert_eq!(
            tally(health, &["up", "down", "unchecked"]),
            "2 up, 1 down, 1 unchecked, 1 weird"
        );
        assert_eq!(tally([], &["up"]), "-");
    }

    #[test]
    fn durations_read_like_files() {
        assert_eq!(duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(seconds(Duration::from_millis(420)), "0.42s");
    }
}
