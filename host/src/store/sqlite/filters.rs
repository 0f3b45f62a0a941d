//! The SQL composed at run time, in one place: the claim statements with and without the
//! per-key FIFO condition, and the statements over a dead-letter filter (its conditions and
//! their named parameters).

use std::sync::LazyLock;

use crate::domain::DeliveryStatus;
use crate::store::template::{claim_variants, fill};
use crate::store::{EventFilter, FailedFilter};

/// The claim statements: (expired leases, due pending), each without and with the FIFO
/// condition, composed once.
static CLAIMS: LazyLock<[[String; 2]; 2]> = LazyLock::new(|| {
    [sql!("due_expired"), sql!("due_pending")].map(|due| claim_variants(&fill(sql!("claim"), "/*DUE*/", due)))
});

/// The claim of expired leases, for an `ordered` target or not.
pub(super) fn claim_expired(ordered: bool) -> &'static str {
    &CLAIMS[0][usize::from(ordered)]
}

/// The claim of due pending deliveries, for an `ordered` target or not.
pub(super) fn claim_pending(ordered: bool) -> &'static str {
    &CLAIMS[1][usize::from(ordered)]
}

/// Named SQL parameters, owned.
pub(super) type NamedParams = Vec<(&'static str, Box<dyn rusqlite::ToSql>)>;

/// The conditions of a [`FailedFilter`] over `deliveries d`, and their parameters.
pub(super) fn failed_where(f: &FailedFilter) -> (String, NamedParams) {
    let list = f
        .failed_statuses()
        .iter()
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let mut clauses = vec![format!(
        "d.status IN ({})",
        if list.is_empty() { "NULL".into() } else { list }
    )];
    let mut params: NamedParams = Vec::new();
    if let Some(t) = &f.target {
        clauses.push("d.target = :target".into());
        params.push((":target", Box::new(t.to_string())));
    }
    if let Some(t) = &f.event_type {
        clauses.push("d.event_id IN (SELECT id FROM events WHERE type GLOB :type)".into());
        params.push((":type", Box::new(glob_pattern(t))));
    }
    if let Some(since) = f.since {
        clauses.push("d.updated_at >= :since".into());
        params.push((":since", Box::new(since)));
    }
    if let Some(until) = f.until {
        clauses.push("d.updated_at < :until".into());
        params.push((":until", Box::new(until)));
    }
    if let Some(text) = &f.error_contains {
        clauses.push("instr(lower(d.last_error), lower(:error)) > 0".into());
        params.push((":error", Box::new(text.clone())));
    }
    if !f.delivery_ids.is_empty() {
        let ids = f
            .delivery_ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        clauses.push(format!("d.id IN ({ids})"));
    }
    if let Some((above, up_to)) = f.id_range {
        clauses.push("d.id > :above AND d.id <= :up_to".into());
        params.push((":above", Box::new(above)));
        params.push((":up_to", Box::new(up_to)));
    }
    (clauses.join(" AND "), params)
}

/// The conditions of an [`EventFilter`] over `events e`, and their parameters. The key goes
/// through the idempotency ledger's primary key; status and target through the deliveries'
/// `(event_id, target)` key, per event.
pub(super) fn event_where(f: &EventFilter) -> (String, NamedParams) {
    let mut clauses: Vec<String> = vec!["TRUE".into()];
    let mut params: NamedParams = Vec::new();
    if let Some(t) = &f.event_type {
        clauses.push("e.type GLOB :type".into());
        params.push((":type", Box::new(glob_pattern(t))));
    }
    if let Some(key) = &f.key {
        clauses.push(
            "e.id IN (SELECT event_id FROM idempotency_keys WHERE key = :key) AND e.idempotency_key = :key".into(),
        );
        params.push((":key", Box::new(key.clone())));
    }
    let mut delivery = Vec::new();
    if let Some(t) = &f.target {
        delivery.push("d.target = :target");
        params.push((":target", Box::new(t.to_string())));
    }
    if let Some(status) = f.status {
        delivery.push("d.status = :status");
        params.push((":status", Box::new(status.as_str())));
    }
    if !delivery.is_empty() {
        clauses.push(format!(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND {})",
            delivery.join(" AND ")
        ));
    }
    if let Some(since) = f.since {
        clauses.push("e.created_at >= :since".into());
        params.push((":since", Box::new(since)));
    }
    if let Some(until) = f.until {
        clauses.push("e.created_at < :until".into());
        params.push((":until", Box::new(until)));
    }
    if let Some(before) = &f.before {
        clauses.push("e.id < :before".into());
        params.push((":before", Box::new(before.to_string())));
    }
    (clauses.join(" AND "), params)
}

/// The events matching `clause`, newest first, at most `:limit`.
pub(super) fn search_events(clause: &str) -> String {
    format!(
        "SELECT e.id, e.type, e.idempotency_key, e.created_at FROM events e
         WHERE {clause} ORDER BY e.id DESC LIMIT :limit"
    )
}

/// A manifest-style glob (`*`, `?`, everything else literal) as a `GLOB` pattern: SQLite's
/// `[…]` classes would otherwise make `[` special.
fn glob_pattern(glob: &str) -> String {
    glob.replace('[', "[[]")
}

/// `params` as rusqlite binds them, with `extra` after them.
pub(super) fn bind<'a>(
    params: &'a NamedParams,
    extra: &[(&'a str, &'a dyn rusqlite::ToSql)],
) -> Vec<(&'a str, &'a dyn rusqlite::ToSql)> {
    let mut all: Vec<(&str, &dyn rusqlite::ToSql)> = params.iter().map(|(k, v)| (*k, v.as_ref())).collect();
    all.extend_from_slice(extra);
    all
}

/// The failed deliveries matching `clause` after `:after`, oldest first, at most `:limit`.
pub(super) fn list_failed(clause: &str) -> String {
    format!(
        "SELECT d.id, d.event_id, e.type, d.target, d.status, d.attempts, d.last_error, d.updated_at,
                a.response_status, a.response_body
         FROM deliveries d JOIN events e ON e.id = d.event_id
         LEFT JOIN attempts a ON a.delivery_id = d.id AND a.n = d.attempt_seq
         WHERE {clause} AND d.id > :after ORDER BY d.id LIMIT :limit"
    )
}

pub(super) fn count_failed(clause: &str) -> String {
    format!("SELECT COUNT(*) FROM deliveries d WHERE {clause}")
}

/// Up to `:limit` failed deliveries matching `clause` pending again, due `:now`, their
/// attempt count reset.
pub(super) fn replay(clause: &str) -> String {
    format!(
        "UPDATE deliveries
         SET status = '{pending}', attempts = 0, next_attempt_at = :now, updated_at = :now
         WHERE id IN (SELECT d.id FROM deliveries d WHERE {clause}
                        AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id AND e.erased_at IS NOT NULL)
                      ORDER BY d.id LIMIT :limit)",
        pending = DeliveryStatus::Pending.as_str()
    )
}

/// The ids of up to `:limit` failed deliveries matching `clause`, oldest first, each with
/// whether its event's payload was erased: the window of a replay job's chunk.
pub(super) fn choose_replay_window(clause: &str) -> String {
    format!(
        "SELECT d.id, EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id AND e.erased_at IS NOT NULL)
         FROM deliveries d WHERE {clause} ORDER BY d.id LIMIT :limit"
    )
}

/// Lists up to `:limit` failed deliveries matching `clause` in `prune_deliveries`.
pub(super) fn choose_failed(clause: &str) -> String {
    format!(
        "INSERT INTO prune_deliveries (id, event_id)
         SELECT d.id, d.event_id FROM deliveries d WHERE {clause} ORDER BY d.id LIMIT :limit"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_keep_brackets_literal() {
        assert_eq!(glob_pattern("order.*"), "order.*");
        assert_eq!(glob_pattern("a[bc]?"), "a[[]bc]?");
    }
}
