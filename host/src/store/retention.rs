//! Retention: a background task that deletes what the outbox no longer needs. Events whose
//! deliveries are all `delivered`, `discarded` or `cancelled` (or that have none) and that are older
//! than `retention` are deleted with their deliveries and attempt history; producer
//! idempotency keys older than `idempotency_retention` leave the ledger. `dead` deliveries
//! (and so their events) are kept until replayed or pruned by hand (`outboxd prune`). With
//! `payload_retention` (shorter than `retention`), the payload and headers of finished events
//! older than it are erased first, the event, its history and its key kept until `retention`.
//!
//! Work is done in small batches, one short transaction each, with a pause between batches,
//! so that ingest and claims, which share the database's single writer, never wait long.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{Millis, now_ms};
use crate::store::{Store, StoreError};

/// How retention behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Finished events older than this are deleted; `None` keeps everything.
    pub retention: Option<Duration>,
    /// Producer idempotency keys are remembered this long; `None` forever.
    pub idempotency_retention: Option<Duration>,
    /// The payloads of finished events older than this are erased; `None` keeps them (until
    /// `retention`).
    pub payload_retention: Option<Duration>,
    /// Events (or keys) deleted per transaction.
    pub batch: usize,
    /// How often a pass runs.
    pub interval: Duration,
    /// Pause between two batches of one pass, leaving the writer to ingest and claims.
    pub pause: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            idempotency_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            payload_retention: None,
            batch: 500,
            interval: Duration::from_secs(10),
            pause: Duration::from_millis(20),
        }
    }
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub keys: usize,
    /// Events whose payload was erased.
    pub payloads: usize,
}

fn cutoff(now: Millis, age: Duration) -> Millis {
    now - age.as_millis().min(i64::MAX as u128) as Millis
}

/// One retention pass at `now`: deletes in batches until nothing old is left (or `stop`).
pub async fn prune_once(
    store: &dyn Store,
    config: &RetentionConfig,
    now: Millis,
    stop: &CancellationToken,
) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let batch = config.batch.max(1);
    if let Some(age) = config.payload_retention {
        let before = cutoff(now, age);
        loop {
            let n = store.erase_finished_payloads(before, batch, now).await?;
            pruned.payloads += n;
            if n < batch || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(config.pause).await;
        }
    }
    if let Some(age) = config.retention {
        let before = cutoff(now, age);
        loop {
            let n = store.prune_finished(before, batch).await?;
            pruned.events += n;
            if n < batch || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(config.pause).await;
        }
    }
    if let Some(age) = config.idempotency_retention {
        let before = cutoff(now, age);
        loop {
            let n = store.prune_idempotency_keys(before, batch).await?;
            pruned.keys += n;
            if n < batch || stop.is_cancelled() {
                break;
            }
            tokio::time::sleep(config.pause).await;
        }
    }
    Ok(pruned)
}

/// Runs retention passes every `interval` until `stop`.
pub async fn run(store: Arc<dyn Store>, mut config: watch::Receiver<RetentionConfig>, stop: CancellationToken) {
    // Whether the configuration may still change (its sender, the reloader, is alive).
    let mut live = true;
    loop {
        let current = *config.borrow_and_update();
        let off = current.retention.is_none()
            && current.idempotency_retention.is_none()
            && current.payload_retention.is_none();
        tokio::select! {
            _ = tokio::time::sleep(current.interval), if !off => {}
            changed = config.changed(), if live => {
                live = changed.is_ok();
                continue;
            }
            _ = stop.cancelled() => return,
            // Off, and nothing can turn it on.
            _ = std::future::ready(()), if off && !live => return,
        }
        match prune_once(store.as_ref(), &current, now_ms(), &stop).await {
            Ok(Pruned {
                events: 0,
                keys: 0,
                payloads: 0,
            }) => {}
            Ok(p) => tracing::info!(
                events = p.events,
                keys = p.keys,
                payloads = p.payloads,
                "retention: deleted old events and keys, erased old payloads"
            ),
            Err(e) => tracing::error!(error = %e, "retention pass failed; retrying at the next one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttemptOutcome, DeliveryStatus, EventId, EventType, ProducerKey, TargetName};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{NewEvent, Settlement};

    fn event(key: &str, targets: &[&str]) -> NewEvent {
        NewEvent {
            id: EventId::new(),
            event_type: EventType::try_from("order.created".to_owned()).unwrap(),
            payload: "{}".into(),
            headers: Vec::new(),
            idempotency_key: Some(ProducerKey::try_from(key.to_owned()).unwrap()),
            ordering_key: None,
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            due_at: None,
            traceparent: None,
        }
    }

    async fn finish(store: &SqliteStore, target: &str, status: DeliveryStatus, at: Millis) {
        let t: TargetName = target.parse().unwrap();
        let request = crate::store::ClaimRequest {
            target: t.clone(),
            limit: 1000,
            owner: "me".into(),
            now: at,
            lease_ms: 60_000,
            ordered: false,
        };
        let claimed = store.claim(request).await.unwrap();
        let batch = claimed
            .iter()
            .map(|c| Settlement {
                target: t.clone(),
                delivery_id: c.delivery_id,
                seq: c.seq,
                status,
                next_attempt_at: at,
                last_error: None,
                outcome: AttemptOutcome::Delivered,
                finished_at: at,
                duration_ms: 1,
                plugin_hash: None,
                response: None,
                detail: None,
                emit: Vec::new(),
            })
            .collect();
        store.settle("me", batch).await.unwrap();
    }

    #[tokio::test]
    async fn deletes_old_finished_events_keeps_dead_and_young_ones_and_keys_for_their_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("o.db")).unwrap();
        const DAY: Millis = 24 * 3_600_000;
        let t0: Millis = 1_000 * DAY;
        // Old: one delivered everywhere, one with a dead delivery, one routed nowhere.
        let old = store
            .ingest(vec![event("a", &["ok"]), event("b", &["bad"]), event("c", &[])], t0)
            .await
            .unwrap();
        finish(&store, "ok", DeliveryStatus::Delivered, t0).await;
        finish(&store, "bad", DeliveryStatus::Dead, t0).await;
        // Young, delivered.
        let young = store.ingest(vec![event("d", &["ok"])], t0 + 6 * DAY).await.unwrap();
        finish(&store, "ok", DeliveryStatus::Delivered, t0 + 6 * DAY).await;

        let config = RetentionConfig {
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            idempotency_retention: Some(Duration::from_secs(30 * 24 * 3600)),
            batch: 1,
            pause: Duration::ZERO,
            ..RetentionConfig::default()
        };
        let stop = CancellationToken::new();
        let pruned = prune_once(&store, &config, t0 + 8 * DAY, &stop).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                events: 2,
                keys: 0,
                payloads: 0
            },
            "in batches of one"
        );
        assert!(store.event(old[0].id).await.unwrap().is_none(), "delivered: deleted");
        assert!(
            store.event(old[2].id).await.unwrap().is_none(),
            "no deliveries: deleted"
        );
        assert!(store.event(old[1].id).await.unwrap().is_some(), "dead: kept");
        assert!(store.event(young[0].id).await.unwrap().is_some(), "young: kept");

        // The ledger still knows the deleted event's key: a late retry is a duplicate.
        let again = store.ingest(vec![event("a", &["ok"])], t0 + 8 * DAY).await.unwrap();
        assert!(again[0].duplicate);
        assert_eq!(again[0].id, old[0].id);
        // Past the ledger's window, the key is forgotten.
        let pruned = prune_once(&store, &config, t0 + 31 * DAY, &stop).await.unwrap();
        assert_eq!(pruned.keys, 3, "{pruned:?}");
        let counts = store.status_counts().await.unwrap();
        assert_eq!(counts["bad"][&DeliveryStatus::Dead], 1);

        // `outboxd prune` removes the dead one and its event.
        let filter = crate::store::FailedFilter {
            target: Some("bad".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(store.prune_failed(filter.clone(), 10).await.unwrap(), 1);
        assert!(store.event(old[1].id).await.unwrap().is_none());
        assert_eq!(store.prune_failed(filter, 10).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retention_turned_on_while_running_applies_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("o.db")).unwrap());
        const DAY: Millis = 24 * 3_600_000;
        let past = now_ms() - 2 * DAY;
        let old = store.ingest(vec![event("a", &["ok"])], past).await.unwrap();
        finish(&store, "ok", DeliveryStatus::Delivered, past).await;
        let off = RetentionConfig {
            retention: None,
            idempotency_retention: None,
            interval: Duration::from_millis(10),
            pause: Duration::ZERO,
            ..RetentionConfig::default()
        };
        let (tx, rx) = watch::channel(off);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(Arc::clone(&store) as Arc<dyn Store>, rx, stop.clone()));
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.event(old[0].id).await.unwrap().is_some(), "off: kept");
        tx.send_replace(RetentionConfig {
            retention: Some(Duration::from_secs(24 * 3600)),
            ..off
        });
        let mut gone = false;
        for _ in 0..500 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if store.event(old[0].id).await.unwrap().is_none() {
                gone = true;
                break;
            }
        }
        assert!(gone, "a day's retention deletes the two-day-old event");
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn erases_payloads_of_finished_events_before_it_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("o.db")).unwrap();
        const DAY: Millis = 24 * 3_600_000;
        let t0: Millis = 1_000 * DAY;
        let ids = store
            .ingest(vec![event("a", &["ok"]), event("b", &["later"])], t0)
            .await
            .unwrap();
        finish(&store, "ok", DeliveryStatus::Delivered, t0).await;
        let config = RetentionConfig {
            payload_retention: Some(Duration::from_secs(24 * 3600)),
            pause: Duration::ZERO,
            ..RetentionConfig::default()
        };
        let stop = CancellationToken::new();
        let pruned = prune_once(&store, &config, t0 + 2 * DAY, &stop).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                events: 0,
                keys: 0,
                payloads: 1
            }
        );
        let erased = store.event(ids[0].id).await.unwrap().unwrap();
        assert_eq!(erased.erased_at, Some(t0 + 2 * DAY));
        let waiting = store.event(ids[1].id).await.unwrap().unwrap();
        assert_eq!((waiting.erased_at, waiting.event.payload.as_str()), (None, "{}"));
        let pruned = prune_once(&store, &config, t0 + 8 * DAY, &stop).await.unwrap();
        assert_eq!((pruned.events, pruned.payloads), (1, 0), "{pruned:?}");
    }
}
