//! SQL written once and composed: a statement's text may hold a marker comment (`/*AND FIFO*/`,
//! `/*DUE*/`, …) that a fragment replaces, so that statements differing in one condition are
//! one file and their fragments (themselves `.sql` files, checked like every other). The
//! per-key FIFO condition of `sql/fifo.sql` is such a fragment, the same for both backends.

/// Where a claim statement takes the FIFO condition.
const FIFO_MARKER: &str = "/*AND FIFO*/";

/// `sql` without its `--` comment lines, on one line per line of code.
fn code(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `template` with `marker` replaced by `fragment` (its comment lines dropped).
pub(crate) fn fill(template: &str, marker: &str, fragment: &str) -> String {
    debug_assert!(template.contains(marker), "no {marker} in {template}");
    template.replace(marker, &code(fragment))
}

/// A claim statement as it is for an unordered target and for an ordered one.
pub(crate) fn claim_variants(sql: &str) -> [String; 2] {
    [sql.to_owned(), fill(sql, FIFO_MARKER, include_str!("sql/fifo.sql"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordered_claim_has_the_fifo_condition_in_place_of_the_marker() {
        let [unordered, ordered] = claim_variants("SELECT 1 WHERE x\n    /*AND FIFO*/\nORDER BY id");
        assert_eq!(unordered, "SELECT 1 WHERE x\n    /*AND FIFO*/\nORDER BY id");
        assert!(
            ordered.contains("AND (d.ordering_key IS NULL OR NOT EXISTS ("),
            "{ordered}"
        );
        assert!(!ordered.contains("--") && !ordered.contains(FIFO_MARKER), "{ordered}");
    }

    #[test]
    fn a_marker_takes_the_fragment_without_its_comments() {
        let sql = fill("UPDATE t SET a = 1 WHERE /*DUE*/ AND b", "/*DUE*/", "-- why\nc <= ?4");
        assert_eq!(sql, "UPDATE t SET a = 1 WHERE c <= ?4 AND b");
    }
}
