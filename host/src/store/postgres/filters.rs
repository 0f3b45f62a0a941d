//! The SQL composed at run time, in one place: the claim statement with and without the
//! per-key FIFO condition, and the statements over a dead-letter filter (its conditions, bound
//! as parameters).

use std::sync::LazyLock;

use sqlx::{Postgres, QueryBuilder};

use crate::domain::{DeliveryStatus, Millis};
use crate::store::history::InFlight;
use crate::store::template::{claim_variants, fill};
use crate::store::{EventFilter, FailedFilter};

/// The claim statement without and with the FIFO condition, composed once.
static CLAIMS: LazyLock<[String; 2]> = LazyLock::new(|| claim_variants(sql!("claim_pending")));

/// The statements that return in-flight deliveries to pending, composed once: expired leases
/// of one target (a claim's take-over, keeping their place), expired leases (the sweeper),
/// one owner's leases (a release), every one (a recovery).
static RETURNS: LazyLock<[String; 4]> = LazyLock::new(|| {
    let take_over = fill(sql!("return_in_flight"), "/*DUE*/", "LEAST(d.next_attempt_at, $1)");
    let now = fill(sql!("return_in_flight"), "/*DUE*/", "$1");
    [
        fill(&take_over, "/*AND WHICH*/", sql!("which_expired_of_target")),
        fill(&now, "/*AND WHICH*/", sql!("which_expired")),
        fill(&now, "/*AND WHICH*/", sql!("which_owned")),
        fill(&now, "/*AND WHICH*/", ""),
    ]
});

/// The statement that returns the in-flight deliveries `which` chooses to pending.
pub(super) fn return_in_flight(which: InFlight<'_>) -> &'static str {
    &RETURNS[match which {
        InFlight::ExpiredOf { .. } => 0,
        InFlight::Expired(_) => 1,
        InFlight::Owned(_) => 2,
        InFlight::All => 3,
    }]
}

/// The claim of due pending deliveries, for an `ordered` target or not.
pub(super) fn claim_pending(ordered: bool) -> &'static str {
    &CLAIMS[usize::from(ordered)]
}

/// Appends the conditions of a [`FailedFilter`] over `deliveries d` (after `WHERE`).
fn push_failed_where(q: &mut QueryBuilder<'_, Postgres>, f: &FailedFilter) {
    let statuses: Vec<&str> = f.failed_statuses().iter().map(|s| s.as_str()).collect();
    q.push("d.status = ANY(").push_bind(statuses).push(")");
    if let Some(t) = &f.target {
        q.push(" AND d.target = ").push_bind(t.to_string());
    }
    if let Some(glob) = &f.event_type {
        q.push(" AND d.event_id IN (SELECT id FROM events WHERE type LIKE ")
            .push_bind(glob_to_like(glob))
            .push(" ESCAPE '\\')");
    }
    if let Some(since) = f.since {
        q.push(" AND d.updated_at >= ").push_bind(since);
    }
    if let Some(until) = f.until {
        q.push(" AND d.updated_at < ").push_bind(until);
    }
    if let Some(text) = &f.error_contains {
        q.push(" AND strpos(lower(d.last_error), lower(")
            .push_bind(text.clone())
            .push(")) > 0");
    }
    if !f.delivery_ids.is_empty() {
        q.push(" AND d.id = ANY(").push_bind(f.delivery_ids.clone()).push(")");
    }
    if let Some((above, up_to)) = f.id_range {
        q.push(" AND d.id > ").push_bind(above);
        q.push(" AND d.id <= ").push_bind(up_to);
    }
}

/// A manifest-style glob (`*`, `?`, everything else literal) as a `LIKE` pattern with `\` as
/// the escape character.
fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// The events matching `f`, newest first, at most `limit`. The key goes through the
/// idempotency ledger's primary key; status and target through the deliveries'
/// `(event_id, target)` key, per event.
pub(super) fn search_events(f: &EventFilter, limit: i64) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new("SELECT e.id, e.type, e.idempotency_key, e.created_at FROM events e WHERE TRUE");
    if let Some(glob) = &f.event_type {
        q.push(" AND e.type LIKE ")
            .push_bind(glob_to_like(glob))
            .push(" ESCAPE '\\'");
    }
    if let Some(key) = &f.key {
        q.push(" AND e.id IN (SELECT event_id FROM idempotency_keys WHERE key = ")
            .push_bind(key.clone())
            .push(") AND e.idempotency_key = ")
            .push_bind(key.clone());
    }
    if f.target.is_some() || f.status.is_some() {
        q.push(" AND EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id");
        if let Some(t) = &f.target {
            q.push(" AND d.target = ").push_bind(t.to_string());
        }
        if let Some(status) = f.status {
            q.push(" AND d.status = ").push_bind(status.as_str());
        }
        q.push(")");
    }
    if let Some(since) = f.since {
        q.push(" AND e.created_at >= ").push_bind(since);
    }
    if let Some(until) = f.until {
        q.push(" AND e.created_at < ").push_bind(until);
    }
    if let Some(before) = &f.before {
        q.push(" AND e.id < ").push_bind(before.to_string());
    }
    q.push(" ORDER BY e.id DESC LIMIT ").push_bind(limit);
    q
}

/// The failed deliveries matching `f` with an id above `after`, oldest first, at most `limit`.
pub(super) fn list_failed(f: &FailedFilter, after: i64, limit: i64) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new(
        "SELECT d.id, d.event_id, e.type, d.target, d.status, d.attempts::bigint, d.last_error, d.updated_at,
                a.response_status::bigint, a.response_body
         FROM deliveries d JOIN events e ON e.id = d.event_id
         LEFT JOIN attempts a ON a.delivery_id = d.id AND a.n = d.attempt_seq WHERE ",
    );
    push_failed_where(&mut q, f);
    q.push(" AND d.id > ")
        .push_bind(after)
        .push(" ORDER BY d.id LIMIT ")
        .push_bind(limit);
    q
}

pub(super) fn count_failed(f: &FailedFilter) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new("SELECT COUNT(*) FROM deliveries d WHERE ");
    push_failed_where(&mut q, f);
    q
}

/// Up to `limit` failed deliveries matching `f` pending again, due `now`, their attempt count
/// reset; rows another transaction holds are skipped.
pub(super) fn replay(f: &FailedFilter, limit: i64, now: Millis) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new("WITH chosen AS MATERIALIZED (SELECT d.id FROM deliveries d WHERE ");
    push_failed_where(&mut q, f);
    // An erased event has no payload to deliver.
    q.push(" AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id AND e.erased_at IS NOT NULL)");
    q.push(" ORDER BY d.id LIMIT ")
        .push_bind(limit)
        .push(format!(
            " FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d SET status = '{}', attempts = 0, next_attempt_at = ",
            DeliveryStatus::Pending.as_str()
        ))
        .push_bind(now)
        .push(", updated_at = ")
        .push_bind(now)
        .push(" FROM chosen c WHERE d.id = c.id");
    q
}

/// The ids of up to `limit` failed deliveries matching `f`, oldest first, each with whether
/// its event's payload was erased: the window of a replay job's chunk. Nothing is locked here:
/// [`replay_window`] takes the rows.
pub(super) fn choose_replay_window(f: &FailedFilter, limit: i64) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new(
        "SELECT d.id, EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id AND e.erased_at IS NOT NULL)
         FROM deliveries d WHERE ",
    );
    push_failed_where(&mut q, f);
    q.push(" ORDER BY d.id LIMIT ").push_bind(limit);
    q
}

/// Every failed delivery matching `f` (a job's window) pending again, due `now`, its attempt
/// count reset, but those of erased events. Unlike [`replay`], a row another transaction holds
/// is waited for, not skipped (the job's cursor moves past it), and then checked again.
pub(super) fn replay_window(f: &FailedFilter, now: Millis) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new(format!(
        "UPDATE deliveries d SET status = '{}', attempts = 0, next_attempt_at = ",
        DeliveryStatus::Pending.as_str()
    ));
    q.push_bind(now).push(", updated_at = ").push_bind(now).push(" WHERE ");
    push_failed_where(&mut q, f);
    q.push(" AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id AND e.erased_at IS NOT NULL)");
    q
}

/// The ids and events of up to `limit` failed deliveries matching `f`, locked.
pub(super) fn choose_failed(f: &FailedFilter, limit: i64) -> QueryBuilder<'static, Postgres> {
    let mut q = QueryBuilder::new("SELECT d.id, d.event_id FROM deliveries d WHERE ");
    push_failed_where(&mut q, f);
    q.push(" ORDER BY d.id LIMIT ")
        .push_bind(limit)
        .push(" FOR UPDATE SKIP LOCKED");
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_like_patterns() {
        assert_eq!(glob_to_like("order.*"), "order.%");
        assert_eq!(glob_to_like("a?c"), "a_c");
        assert_eq!(glob_to_like("100%_x\\"), "100\\%\\_x\\\\");
    }
}
