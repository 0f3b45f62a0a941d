//! A check over the SQL files of both backends (statements, migrations, the shared fragment): every quoted
//! literal is a delivery status or an attempt outcome as [`DeliveryStatus`] and
//! [`AttemptOutcome`] spell them (the SQL names them as literals so that partial indexes such
//! as `WHERE status = 'in_flight'` serve), and those compared with `status` or `outcome` are
//! of the right kind. A typo cannot hide in a statement that no test happens to run.

use std::path::{Path, PathBuf};

use crate::domain::{AttemptOutcome, DeliveryStatus, ReplayJobStatus};

/// Literals that are neither: the table whose `AUTOINCREMENT` counter SQLite migration 8
/// keeps (`sqlite_sequence.name`).
const OTHER_LITERALS: &[&str] = &["deliveries"];

fn sql_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut files = Vec::new();
    for dir in [
        "sql",
        "sqlite/sql",
        "sqlite/migrations",
        "postgres/sql",
        "postgres/migrations",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sql") {
                files.push(path);
            }
        }
    }
    files
}

/// `sql` without its `--` comments.
fn code(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split_once("--").map_or(l, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every single-quoted literal, with the 40 characters of code before it.
fn literals(code: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = code;
    let mut offset = 0;
    while let Some(start) = rest.find('\'') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('\'') else { break };
        let at = offset + start;
        let before = &code[code[..at].char_indices().rev().nth(40).map_or(0, |(i, _)| i)..at];
        out.push((before.to_owned(), after[..end].to_owned()));
        offset = at + 1 + end + 1;
        rest = &code[offset..];
    }
    out
}

/// The column a literal is compared with (`status = '…'`, `outcome IN (…, '…'`), if any.
fn compared_with(before: &str) -> Option<&'static str> {
    let s = before.trim_end();
    let lhs = if let Some(lhs) = ["<>", "!=", "="].iter().find_map(|op| s.strip_suffix(op)) {
        lhs
    } else if s.ends_with(',') || s.ends_with('(') {
        // In a list: what precedes its opening parenthesis is `<column> [NOT] IN`.
        let list = s[..s.rfind('(')?].trim_end();
        let lhs = list.strip_suffix("IN").or_else(|| list.strip_suffix("in"))?.trim_end();
        lhs.strip_suffix("NOT").unwrap_or(lhs)
    } else {
        return None;
    };
    let word = lhs.trim_end().rsplit([' ', '.', '(', '\n', '\t']).next()?;
    match word.to_ascii_lowercase().as_str() {
        "status" => Some("status"),
        "outcome" => Some("outcome"),
        _ => None,
    }
}

#[test]
fn every_status_and_outcome_in_the_sql_is_spelled_as_the_domain_spells_it() {
    let files = sql_files();
    assert!(files.len() > 40, "found only {} SQL files", files.len());
    let mut checked = 0;
    for path in files {
        let code = code(&std::fs::read_to_string(&path).unwrap());
        // A statement on `replay_jobs` compares its `status` with a job's statuses.
        let of_jobs = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("replay_job"));
        for (before, literal) in literals(&code) {
            let status = if of_jobs {
                literal.parse::<ReplayJobStatus>().is_ok()
            } else {
                literal.parse::<DeliveryStatus>().is_ok()
            };
            let outcome = literal.parse::<AttemptOutcome>().is_ok();
            let what = format!("{}: '{literal}' after `{before}`", path.display());
            assert!(
                status || outcome || OTHER_LITERALS.contains(&literal.as_str()),
                "{what}"
            );
            match compared_with(&before) {
                Some("status") => assert!(status, "not a status of what the statement reads: {what}"),
                Some("outcome") => assert!(outcome, "not an attempt outcome: {what}"),
                _ => {}
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} literals");
}

#[test]
fn the_check_sees_a_typo() {
    let found = literals(&code(
        "UPDATE d SET x = 1 -- 'comment'\nWHERE status IN ('pending', 'in_fligt')",
    ));
    let texts: Vec<&str> = found.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(texts, ["pending", "in_fligt"]);
    assert_eq!(compared_with(&found[1].0), Some("status"));
    assert!("in_fligt".parse::<DeliveryStatus>().is_err());
    assert_eq!(compared_with("WHERE attempts.outcome = "), Some("outcome"));
    assert_eq!(compared_with("SELECT r.id, r.n, r.started_at, "), None);
}
