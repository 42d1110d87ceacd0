//! Columns for people: each as wide as its widest cell, so that a long
//! server name, a dual-stack address or a long state ("DRAINING
//! (maintenance (health monitor)), ramping up 40%") does not push the
//! cells after it out of their column, as fixed widths did.

/// How a column's cells sit in it.
#[derive(Clone, Copy)]
pub enum Align {
    Left,
    /// Numbers, so that their digits line up.
    Right,
}

pub struct Table {
    columns: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(columns: &[(&'static str, Align)]) -> Table {
        Table { columns: columns.to_vec(), rows: Vec::new() }
    }

    /// One cell a column, in the columns' order.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "a cell for every column");
        self.rows.push(cells);
    }

    /// The header and the rows, two spaces between columns, no space at a
    /// line's end; an empty last column adds nothing.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                let cells = self.rows.iter().map(|r| r[i].chars().count());
                cells.chain([self.columns[i].0.len()]).max().unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = self.columns.iter().map(|(name, _)| (*name).to_owned()).collect();
        let mut out = String::new();
        for cells in std::iter::once(&header).chain(&self.rows) {
            let line: Vec<String> = cells
                .iter()
                .zip(&self.columns)
                .zip(&widths)
                .map(|((cell, (_, align)), &width)| match align {
                    Align::Left => format!("{cell:<width$}"),
                    Align::Right => format!("{cell:>width$}"),
                })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_cell_widens_its_column_and_the_next_columns_stay_aligned() {
        let mut table = Table::new(&[("SERVER", Align::Left), ("FLOWS", Align::Right), ("STATE", Align::Left)]);
        table.row(vec!["s1".into(), "7".into(), "ENABLED".into()]);
        table.row(vec!["a-rather-long-server-name".into(), "1000000".into(), "".into()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "SERVER                       FLOWS  STATE");
        assert_eq!(lines[1], "s1                               7  ENABLED");
        assert_eq!(lines[2], "a-rather-long-server-name  1000000");
        let state_at = |line: &str| line.find("ENABLED").or_else(|| line.find("STATE"));
        assert_eq!(state_at(lines[0]), state_at(lines[1]));
    }
}
