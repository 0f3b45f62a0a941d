//! Per-key FIFO, one rule for both backends: an ordered claim adds the condition of
//! `sql/fifo.sql` in place of its claim statement's `/*AND FIFO*/` marker.

/// Where a claim statement takes the FIFO condition.
const FIFO_MARKER: &str = "/*AND FIFO*/";

/// A claim statement as it is for an unordered target and for an ordered one.
pub(crate) fn claim_variants(sql: &str) -> [String; 2] {
    debug_assert!(sql.contains(FIFO_MARKER), "no FIFO marker in {sql}");
    let fifo: Vec<&str> = include_str!("sql/fifo.sql")
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    [sql.to_owned(), sql.replace(FIFO_MARKER, &fifo.join("\n"))]
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
}
