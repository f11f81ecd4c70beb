//! Aligned text tables, in the layout of the original tool (columns padded
//! by two spaces, a title line and 64 `=` above each table), so people who
//! read the original's output find the same shape.

use std::fmt::Write as _;

/// A table being built.
pub struct Table {
    title: Option<String>,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headings.
    pub fn new(header: &[&str]) -> Table {
        Table {
            title: None,
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Puts a title and a rule above the table.
    pub fn titled(mut self, title: &str) -> Table {
        self.title = Some(title.to_string());
        self
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, each line ending in a newline, without trailing
    /// spaces.
    pub fn render(&self) -> String {
        let ncols = self
            .rows
            .iter()
            .map(Vec::len)
            .chain([self.header.len()])
            .max()
            .unwrap_or(0);
        let mut widths = vec![0usize; ncols];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        if let Some(title) = &self.title {
            let _ = writeln!(out, "{title}");
            let _ = writeln!(out, "{}", "=".repeat(64));
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count() + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["Account", "P0"]).titled("Balances");
        t.row(vec!["a".into(), "1.0".into()]);
        t.row(vec!["longer-name".into(), "".into()]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Balances");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2], "Account      P0");
        assert_eq!(lines[3], "a            1.0");
        assert_eq!(lines[4], "longer-name");
    }
}
