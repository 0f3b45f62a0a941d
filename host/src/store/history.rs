//! The one model of attempt history that both backends keep, in Rust so that it is written
//! once: an attempt's row is written when it ends (settled or abandoned), the in-flight
//! delivery stands for the running attempt until then, an abandoned attempt says why
//! ([`Abandonment`]), a settle batch is written in id order and counted per plugin version.
//! The backends hold only the SQL that stores it.

use std::collections::BTreeMap;

use crate::domain::{DeliveryStatus, Millis};
use crate::store::{AttemptRecord, Settlement};

/// Why an attempt was abandoned: its history row's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandonment {
    /// A claim found the lease expired and took the delivery over.
    LeaseExpiredAtClaim,
    /// The sweeper found the lease expired.
    Swept,
    /// The host released its leases at a graceful shutdown.
    Released,
    /// A new `serve` found the delivery in flight, left by its crashed predecessor.
    Recovered,
}

impl Abandonment {
    /// The text stored as the abandoned attempt's error.
    pub const fn as_str(self) -> &'static str {
        match self {
            Abandonment::LeaseExpiredAtClaim => "lease expired before the attempt reported back",
            Abandonment::Swept => "lease expired: the worker stopped without reporting back",
            Abandonment::Released => "host stopped before the attempt finished",
            Abandonment::Recovered => "the host stopped during the attempt (crash or kill)",
        }
    }
}

/// Which in-flight deliveries to return to pending, or (at a claim) whose attempt to abandon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InFlight<'a> {
    /// Leases of this target expired at `at` (a claim takes them over).
    ExpiredOf { target: &'a str, at: Millis },
    /// Leases expired at this time, any target (the sweeper).
    Expired(Millis),
    /// Every lease of this owner (a graceful shutdown).
    Owned(&'a str),
    /// Every in-flight delivery (start-up recovery of an exclusive store).
    All,
}

impl InFlight<'_> {
    /// Why the attempts of these deliveries are abandoned.
    pub(crate) fn abandonment(self) -> Abandonment {
        match self {
            InFlight::ExpiredOf { .. } => Abandonment::LeaseExpiredAtClaim,
            InFlight::Expired(_) => Abandonment::Swept,
            InFlight::Owned(_) => Abandonment::Released,
            InFlight::All => Abandonment::Recovered,
        }
    }
}

/// Completes the stored `history` of a delivery (rows in `n` order) with its running attempt:
/// an in-flight delivery whose attempt `seq` has no row yet is that attempt, started when it
/// was claimed (`claimed_at`, the delivery's `updated_at`).
pub(crate) fn push_running_attempt(
    history: &mut Vec<AttemptRecord>,
    status: DeliveryStatus,
    seq: u32,
    claimed_at: Millis,
) {
    if status == DeliveryStatus::InFlight && history.last().is_none_or(|h| h.n < seq) {
        history.push(AttemptRecord::running(seq, claimed_at));
    }
}

/// A settle batch in the order it is written: by delivery id, so that concurrent settles lock
/// rows in one order and the lost leases are reported in that order.
pub(crate) fn settle_order(mut batch: Vec<Settlement>) -> Vec<Settlement> {
    batch.sort_by_key(|s| s.delivery_id);
    batch
}

/// When a settled attempt started, for a history row written at settle time.
pub(crate) fn started_at(s: &Settlement) -> Millis {
    s.finished_at - s.duration_ms as Millis
}

/// The attempts of a settle batch per (target, plugin hash), in key order: one counter update
/// each. Every attempt counts, lease lost or not: it ran.
pub(crate) fn version_counts(batch: &[Settlement]) -> BTreeMap<(&str, &str), i64> {
    let mut counts = BTreeMap::new();
    for s in batch {
        if let Some(hash) = &s.plugin_hash {
            *counts.entry((s.target.as_str(), hash.as_str())).or_default() += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AttemptOutcome;

    fn record(n: u32, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            n,
            started_at: 1,
            duration_ms: Some(2),
            outcome,
            error: None,
            plugin_hash: None,
            response: None,
            detail: None,
        }
    }

    #[test]
    fn an_in_flight_delivery_is_its_running_attempt_until_it_has_a_row() {
        let mut history = vec![record(1, AttemptOutcome::Retry)];
        push_running_attempt(&mut history, DeliveryStatus::InFlight, 2, 50);
        assert_eq!(history.len(), 2);
        assert_eq!(
            (history[1].n, history[1].started_at, history[1].outcome),
            (2, 50, AttemptOutcome::Running)
        );
        // A row for the attempt (an older version's `running` row, or an abandonment a late
        // settle has not replaced yet) is the attempt: nothing is added.
        let mut history = vec![record(1, AttemptOutcome::Running)];
        push_running_attempt(&mut history, DeliveryStatus::InFlight, 1, 50);
        assert_eq!(history.len(), 1);
        // Not in flight: nothing runs.
        let mut history = Vec::new();
        push_running_attempt(&mut history, DeliveryStatus::Pending, 1, 50);
        assert!(history.is_empty());
    }

    #[test]
    fn a_settle_batch_is_counted_per_target_and_version_in_key_order() {
        let s = |target: &str, id: i64, hash: Option<&str>| Settlement {
            plugin_hash: hash.map(str::to_owned),
            ..Settlement::delivered(target, id, 10)
        };
        let batch = settle_order(vec![
            s("crm", 3, Some("b")),
            s("crm", 1, Some("a")),
            s("billing", 2, Some("a")),
            s("crm", 4, Some("a")),
            s("crm", 5, None),
        ]);
        let ids: Vec<i64> = batch.iter().map(|s| s.delivery_id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5]);
        let counts: Vec<_> = version_counts(&batch).into_iter().collect();
        assert_eq!(counts, [(("billing", "a"), 1), (("crm", "a"), 2), (("crm", "b"), 1)]);
        assert_eq!(started_at(&batch[0]), 6);
    }

    #[test]
    fn every_abandonment_says_why_in_words_of_its_own() {
        let all = [
            Abandonment::LeaseExpiredAtClaim,
            Abandonment::Swept,
            Abandonment::Released,
            Abandonment::Recovered,
        ];
        let texts: std::collections::BTreeSet<_> = all.iter().map(|a| a.as_str()).collect();
        assert_eq!(texts.len(), all.len());
        assert_eq!(InFlight::All.abandonment(), Abandonment::Recovered);
        assert_eq!(InFlight::Owned("me").abandonment(), Abandonment::Released);
    }
}
