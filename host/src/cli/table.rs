//! The fixed-width text tables of the CLI's listings: each column padded to its width, left-
//! or right-aligned, columns apart by a separator, the last one as long as it is.

use std::fmt::Write as _;

/// How a column is laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Col {
    Left(usize),
    Right(usize),
    /// The last column: as long as its text.
    Rest,
}

/// A table being written, header first.
pub(crate) struct Table {
    cols: &'static [Col],
    sep: &'static str,
    out: String,
}

impl Table {
    /// A table of `cols`, apart by `sep`, starting with the `header` row.
    pub(crate) fn new(cols: &'static [Col], sep: &'static str, header: &[&str]) -> Self {
        let mut table = Self {
            cols,
            sep,
            out: String::new(),
        };
        table.row(header);
        table
    }

    /// One row: a cell per column.
    pub(crate) fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        for (i, (col, cell)) in self.cols.iter().zip(cells).enumerate() {
            let cell = cell.as_ref();
            if i > 0 {
                self.out.push_str(self.sep);
            }
            let _ = match col {
                Col::Left(w) => write!(self.out, "{cell:<w$}"),
                Col::Right(w) => write!(self.out, "{cell:>w$}"),
                Col::Rest => write!(self.out, "{cell}"),
            };
        }
        self.out.push('\n');
    }

    /// A line of its own under the last row.
    pub(crate) fn note(&mut self, line: &str) {
        let _ = writeln!(self.out, "{line}");
    }

    pub(crate) fn finish(self) -> String {
        self.out
    }
}

/// `text` on one line and harmless to a terminal (it may be a receiver's answer): control
/// characters (line breaks, escape sequences) written as escapes (`\n`, `\u{1b}`), everything
/// else as it is.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_text_is_one_line_without_control_characters() {
        assert_eq!(
            one_line(r#"{"error":"upstream exploded"}"#),
            r#"{"error":"upstream exploded"}"#
        );
        assert_eq!(one_line("a\nb\u{1b}[31mred é"), "a\\nb\\u{1b}[31mred é");
    }

    #[test]
    fn columns_are_padded_and_the_last_runs_on() {
        const COLS: &[Col] = &[Col::Right(4), Col::Left(5), Col::Rest];
        let mut t = Table::new(COLS, "  ", &["ID", "NAME", "NOTE"]);
        t.row(&["7", "crm", "a long note"]);
        t.note("    more");
        assert_eq!(t.finish(), "  ID  NAME   NOTE\n   7  crm    a long note\n    more\n");
    }
}
