//! Accepting events: each with its idempotency key and one pending delivery per target.
//! Concurrent ingests share one transaction and one fsync (group commit), each request in a
//! savepoint of its own so that one failing request does not undo the others.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, Synchronous, begin_write};
use crate::domain::{EventId, Millis};
use crate::store::group_commit::{GroupCommit, Waiter};
use crate::store::layout;
use crate::store::rows::{decode, encode_headers};
use crate::store::{Ingested, NewEvent, StoreError};

/// One ingest request (its events and their acceptance time) and its answer.
type IngestRequest = (Vec<NewEvent>, Millis);
type IngestAnswer = Result<Vec<Ingested>, StoreError>;
/// Concurrent ingests, written together (see [`GroupCommit`]).
pub(super) type IngestGroup = GroupCommit<IngestRequest, IngestAnswer>;

/// [`Store::ingest`](crate::store::Store::ingest): answered only after the commit of the
/// group that carried it, so an acknowledged event is as durable as alone.
pub(super) async fn ingest(store: &SqliteStore, events: Vec<NewEvent>, now: Millis) -> IngestAnswer {
    let conn = Arc::clone(&store.writer.conn);
    store
        .ingests
        .submit((events, now), &store.writer.gate, None, move |permit, group| {
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut guard = conn.lock().unwrap_or_else(|e| e.into_inner());
                ingest_group(&mut guard, group);
            });
        })
        .await
        .unwrap_or_else(|| Err(StoreError::Task("the ingest was dropped before its commit".into())))
}

/// Writes events, their idempotency keys and one pending delivery per target, inside the
/// caller's transaction. Events with a known idempotency key (or one given earlier in
/// `events`) write nothing. The rows go in the order of [`layout`](crate::store::layout):
/// a target's deliveries together, by due time.
pub(super) fn insert_events(tx: &Connection, events: Vec<NewEvent>, now: Millis) -> IngestAnswer {
    let mut out = Vec::with_capacity(events.len());
    let mut find_key = tx.prepare_cached(sql!("find_idempotency_key"))?;
    // Which events are new, in the order given: a key's first event is the first one given.
    let mut keys: HashMap<&str, EventId> = HashMap::new();
    let mut new: Vec<(&NewEvent, Millis)> = Vec::with_capacity(events.len());
    for e in &events {
        if let Some(key) = &e.idempotency_key {
            let first = match keys.get(key.as_str()) {
                Some(first) => Some(*first),
                None => find_key
                    .query_row([key.as_str()], |r| r.get::<_, String>(0))
                    .optional()?
                    .map(|first| decode(&first))
                    .transpose()?,
            };
            if let Some(id) = first {
                out.push(Ingested { id, duplicate: true });
                continue;
            }
            keys.insert(key.as_str(), e.id);
        }
        out.push(Ingested {
            id: e.id,
            duplicate: false,
        });
        new.push((e, now));
    }
    let ids: Vec<String> = new.iter().map(|(e, _)| e.id.to_string()).collect();
    let mut insert_event = tx.prepare_cached(sql!("insert_event"))?;
    let mut insert_key = tx.prepare_cached(sql!("insert_idempotency_key"))?;
    for i in layout::events_in_order(&new) {
        let (e, now) = new[i];
        let key = e.idempotency_key.as_ref().map(|k| k.as_str());
        insert_event.execute(params![
            ids[i],
            e.event_type.as_str(),
            e.payload,
            encode_headers(&e.headers)?,
            key,
            e.ordering_key,
            now,
            e.traceparent.map(|t| t.to_string())
        ])?;
        if let Some(key) = key {
            insert_key.execute(params![key, ids[i], now])?;
        }
    }
    let mut insert_delivery = tx.prepare_cached(sql!("insert_delivery"))?;
    for (i, target) in layout::deliveries_in_order(&new) {
        let (e, now) = new[i];
        insert_delivery.execute(params![ids[i], target.as_str(), now, e.ordering_key, e.due_at])?;
    }
    Ok(out)
}

/// Writes a group of ingest requests in one transaction, each inside its own savepoint so
/// that one failing request (all or nothing, as alone) does not undo the others, and answers
/// every request once the transaction has committed.
fn ingest_group(conn: &mut Connection, group: Vec<Waiter<IngestRequest, IngestAnswer>>) {
    // A `202` means on disk: the commit waits for the fsync.
    let mut tx = match begin_write(conn, Synchronous::Full) {
        Ok(tx) => tx,
        Err(e) => {
            let message = e.to_string();
            let mut first = Some(e);
            for w in group {
                let err = first.take().unwrap_or_else(|| StoreError::Task(message.clone()));
                w.answer(Err(err));
            }
            return;
        }
    };
    let mut done = Vec::with_capacity(group.len());
    for mut w in group {
        let (events, now) = std::mem::take(&mut w.request);
        let result = tx.savepoint().map_err(StoreError::from).and_then(|mut sp| {
            sp.set_drop_behavior(rusqlite::DropBehavior::Rollback);
            let out = insert_events(&sp, events, now)?;
            sp.commit()?;
            Ok(out)
        });
        done.push((w, result));
    }
    match tx.commit() {
        Ok(()) => done.into_iter().for_each(|(w, r)| w.answer(r)),
        Err(e) => {
            let message = format!("commit failed: {e}");
            for (w, r) in done {
                w.answer(r.and_then(|_| Err(StoreError::Task(message.clone()))));
            }
        }
    }
}
