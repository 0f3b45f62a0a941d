//! Accepting events in sets: whatever the number of events, one statement takes their producer
//! keys (`ON CONFLICT DO NOTHING`, so that one key ingested by many hosts or requests at once is
//! one event), one writes the events and their pending deliveries; after the commit, a
//! wake-up for every host ([`wakeups::Announcer`]). Concurrent requests of this host share a
//! transaction (group commit, as on SQLite): answered only after its commit, so a `202` still
//! means committed.

use std::collections::HashMap;

use sqlx::postgres::PgConnection;

use super::{PgStore, counted, wakeups};
use crate::domain::Millis;
use crate::store::group_commit::{GroupCommit, Waiter};
use crate::store::layout;
use crate::store::rows::{decode, encode_headers};
use crate::store::{Ingested, NewEvent, StoreError};

/// One ingest request (its events and their acceptance time) and its answer.
type IngestRequest = (Vec<NewEvent>, Millis);
type IngestAnswer = Result<Vec<Ingested>, StoreError>;
/// Concurrent ingests of this host, written together (see [`GroupCommit`]).
pub(super) type IngestGroup = GroupCommit<IngestRequest, IngestAnswer>;

/// The fewest events of a request that may take this host's second ingest writer. One writer
/// at a time suffices for small requests: while its group waits for the commit's WAL flush, the
/// next group fills, and fewer, larger groups cost the server fewer transactions (a second
/// writer halved the events per transaction of single events and lengthened their p99). A
/// large request's own work (encoding, inserting its rows) outweighs a commit, and a second
/// writer overlaps that work with the first's (arrays of 1,000: about 1.5 times the events/s
/// of one writer). Measured in docs/performance.md (eighth and ninth sessions).
pub(super) const SPARE_WRITER_FROM: usize = 100;

/// [`Store::ingest`](crate::store::Store::ingest): the request joins the group being
/// gathered, answered once the group's transaction has committed.
pub(super) async fn ingest(store: &PgStore, events: Vec<NewEvent>, now: Millis) -> IngestAnswer {
    let writer = store.clone();
    let spare = (events.len() >= SPARE_WRITER_FROM).then_some(&store.spare_ingest_gate);
    store
        .ingests
        .submit((events, now), &store.ingest_gate, spare, move |permit, group| {
            tokio::spawn(async move {
                let wrote = ingest_group(&writer, group).await;
                drop(permit);
                if wrote {
                    writer.announcer.announce(&writer.claims).await;
                }
            });
        })
        .await
        .unwrap_or_else(|| Err(StoreError::Task("the ingest was dropped before its commit".into())))
}

/// Writes a group of requests in one transaction and answers each. Should it fail (a request
/// the database refuses fails its whole transaction), each request is written again alone, so
/// that one request's failure is its own, as without grouping. Returns whether deliveries were
/// written that are still to be announced.
async fn ingest_group(store: &PgStore, group: Vec<Waiter<IngestRequest, IngestAnswer>>) -> bool {
    let mut requests = Vec::with_capacity(group.len());
    let mut waiters = Vec::with_capacity(group.len());
    for mut w in group {
        requests.push(std::mem::take(&mut w.request));
        waiters.push(w);
    }
    let written = if requests.len() == 1 {
        Err(None)
    } else {
        let all: Vec<(&NewEvent, Millis)> = requests
            .iter()
            .flat_map(|(events, now)| events.iter().map(move |e| (e, *now)))
            .collect();
        let all = &all;
        store
            .transaction(|mut tx| async move {
                let out = insert_events_at(&mut tx, all).await?;
                Ok((tx, out))
            })
            .await
            .map_err(Some)
    };
    match written {
        Ok((out, deliveries)) => {
            let mut out = out.into_iter();
            for (w, (events, _)) in waiters.into_iter().zip(&requests) {
                w.answer(Ok(out.by_ref().take(events.len()).collect()));
            }
            deliveries
        }
        // The database refused a statement: nothing was written, so each request goes again
        // alone. Any other failure (the connection, say) may have hit the commit, whose
        // outcome is then unknown: writing again could store an event twice, so every
        // request gets the error, as a lone request would.
        Err(Some(e)) if !matches!(e, StoreError::Postgres(sqlx::Error::Database(_))) => {
            let message = e.to_string();
            let mut first = Some(e);
            for w in waiters {
                w.answer(Err(first.take().unwrap_or_else(|| StoreError::Task(message.clone()))));
            }
            true // it may have been written: an announcement too many costs a claim
        }
        Err(_) => {
            let mut announce = false;
            for (w, (events, now)) in waiters.into_iter().zip(&requests) {
                let at: Vec<(&NewEvent, Millis)> = events.iter().map(|e| (e, *now)).collect();
                let at = &at;
                let alone = store
                    .transaction(|mut tx| async move {
                        let out = insert_events_at(&mut tx, at).await?;
                        Ok((tx, out))
                    })
                    .await;
                w.answer(alone.map(|(out, deliveries)| {
                    announce |= deliveries;
                    out
                }));
            }
            announce
        }
    }
}

/// Writes events, their idempotency keys and one pending delivery per target, inside the
/// caller's transaction, with the wake-up that announces them at its commit (the operational
/// events of a settle: rare). Events with a known idempotency key (or one given earlier in
/// `events`) write nothing.
pub(super) async fn insert_events(
    conn: &mut PgConnection,
    events: &[NewEvent],
    now: Millis,
) -> Result<Vec<Ingested>, StoreError> {
    let at: Vec<(&NewEvent, Millis)> = events.iter().map(|e| (e, now)).collect();
    let (out, deliveries) = insert_events_at(conn, &at).await?;
    if deliveries {
        // Delivered at commit, to every host listening (this one included).
        wakeups::notify(conn).await?;
    }
    Ok(out)
}

/// [`insert_events`] for events each with its own acceptance time, unannounced: also says
/// whether it wrote deliveries.
async fn insert_events_at(
    conn: &mut PgConnection,
    events: &[(&NewEvent, Millis)],
) -> Result<(Vec<Ingested>, bool), StoreError> {
    let ids: Vec<String> = events.iter().map(|(e, _)| e.id.to_string()).collect();
    let duplicates = take_keys(conn, events, &ids).await?;
    let mut out = Vec::with_capacity(events.len());
    let mut new = Vec::with_capacity(events.len());
    for (i, (e, now)) in events.iter().enumerate() {
        match duplicates.get(&i) {
            Some(first) => out.push(Ingested {
                id: *first,
                duplicate: true,
            }),
            None => {
                out.push(Ingested {
                    id: e.id,
                    duplicate: false,
                });
                new.push((i, *e, *now));
            }
        }
    }
    if new.is_empty() {
        return Ok((out, false));
    }
    // Written in the order of `layout`: a target's deliveries together, by due time.
    let at: Vec<(&NewEvent, Millis)> = new.iter().map(|(_, e, now)| (*e, *now)).collect();
    let deliveries: Vec<NewDelivery<'_>> = layout::deliveries_in_order(&at)
        .into_iter()
        .map(|(k, target)| {
            let (i, e, now) = new[k];
            NewDelivery {
                event: ids[i].as_str(),
                target: target.as_str(),
                accepted: now,
                ordering_key: e.ordering_key.as_deref(),
                due_at: e.due_at,
            }
        })
        .collect();
    let new: Vec<(usize, &NewEvent, Millis)> = layout::events_in_order(&at).into_iter().map(|k| new[k]).collect();
    let mut headers = Vec::with_capacity(new.len());
    for (_, e, _) in &new {
        headers.push(encode_headers(&e.headers)?);
    }
    counted::query(sql!("insert_events"))
        .bind(new.iter().map(|(i, _, _)| ids[*i].as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|(_, e, _)| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(new.iter().map(|(_, e, _)| e.payload.as_str()).collect::<Vec<_>>())
        .bind(headers)
        .bind(
            new.iter()
                .map(|(_, e, _)| e.idempotency_key.as_ref().map(|k| k.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            new.iter()
                .map(|(_, e, _)| e.ordering_key.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(new.iter().map(|(_, _, now)| *now).collect::<Vec<_>>())
        .bind(
            new.iter()
                .map(|(_, e, _)| e.traceparent.map(|t| t.to_string()))
                .collect::<Vec<_>>(),
        )
        .bind(deliveries.iter().map(|d| d.event).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.target).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.accepted).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.ordering_key).collect::<Vec<_>>())
        .bind(deliveries.iter().map(|d| d.due_at).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    Ok((out, !deliveries.is_empty()))
}

/// Takes the producer keys of `events` (ids `ids`) in one statement; returns, by index in
/// `events`, the duplicates: events whose key was known, or taken by an earlier event of
/// `events`, with the first event's id.
async fn take_keys(
    conn: &mut PgConnection,
    events: &[(&NewEvent, Millis)],
    ids: &[String],
) -> Result<HashMap<usize, crate::domain::EventId>, StoreError> {
    // By key, and for one key in the order given: the first event of a key takes it.
    let mut keyed: Vec<(&str, usize)> = events
        .iter()
        .enumerate()
        .filter_map(|(i, (e, _))| e.idempotency_key.as_ref().map(|k| (k.as_str(), i)))
        .collect();
    let mut duplicates = HashMap::new();
    if keyed.is_empty() {
        return Ok(duplicates);
    }
    keyed.sort_unstable();
    let taken: Vec<(String, String)> = counted::query_as(sql!("insert_idempotency_keys"))
        .bind(keyed.iter().map(|(k, _)| *k).collect::<Vec<_>>())
        .bind(keyed.iter().map(|(_, i)| ids[*i].as_str()).collect::<Vec<_>>())
        .bind(keyed.iter().map(|(_, i)| events[*i].1).collect::<Vec<_>>())
        .fetch_all(&mut *conn)
        .await?;
    let mut first: HashMap<&str, &str> = taken.iter().map(|(k, e)| (k.as_str(), e.as_str())).collect();
    let known: Vec<&str> = keyed
        .iter()
        .filter(|(k, _)| !first.contains_key(k))
        .map(|(k, _)| *k)
        .collect();
    let found: Vec<(String, String)> = if known.is_empty() {
        Vec::new()
    } else {
        counted::query_as(sql!("find_idempotency_keys"))
            .bind(&known)
            .fetch_all(&mut *conn)
            .await?
    };
    first.extend(found.iter().map(|(k, e)| (k.as_str(), e.as_str())));
    for (key, i) in keyed {
        let Some(owner) = first.get(key) else {
            // Known a moment ago, gone now (pruned in between): the request can be tried again.
            return Err(StoreError::Task(format!(
                "idempotency key {key:?} was pruned while being checked; try again"
            )));
        };
        if *owner != ids[i] {
            duplicates.insert(i, decode(owner)?);
        }
    }
    Ok(duplicates)
}

/// One delivery row of `insert_events`: a pending delivery of `event` to `target`.
struct NewDelivery<'a> {
    event: &'a str,
    target: &'a str,
    accepted: Millis,
    ordering_key: Option<&'a str>,
    due_at: Option<Millis>,
}
