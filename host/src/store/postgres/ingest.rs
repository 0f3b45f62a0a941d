//! Accepting events: the producer key first (`ON CONFLICT DO NOTHING`, so that one key
//! ingested by many hosts at once is one event), then the event and one pending delivery per
//! target, and a wake-up for every host.

use sqlx::postgres::PgConnection;

use super::{counted, wakeups};
use crate::domain::Millis;
use crate::store::rows::{decode, encode_headers};
use crate::store::{Ingested, NewEvent, StoreError};

/// Writes events, their idempotency keys and one pending delivery per target, inside the
/// caller's transaction. Events with a known idempotency key write nothing.
pub(super) async fn insert_events(
    conn: &mut PgConnection,
    events: &[NewEvent],
    now: Millis,
) -> Result<Vec<Ingested>, StoreError> {
    let mut out = Vec::with_capacity(events.len());
    let mut any_delivery = false;
    for e in events {
        let id = e.id.to_string();
        if let Some(key) = &e.idempotency_key {
            let taken = counted::query(sql!("insert_idempotency_key"))
                .bind(key.as_str())
                .bind(&id)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 0;
            if taken {
                let first: String = counted::query_scalar(sql!("find_idempotency_key"))
                    .bind(key.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
                out.push(Ingested {
                    id: decode(&first)?,
                    duplicate: true,
                });
                continue;
            }
        }
        counted::query(sql!("insert_event"))
            .bind(&id)
            .bind(e.event_type.as_str())
            .bind(&e.payload)
            .bind(encode_headers(&e.headers)?)
            .bind(e.idempotency_key.as_ref().map(|k| k.as_str()))
            .bind(&e.ordering_key)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        if !e.targets.is_empty() {
            let targets: Vec<&str> = e.targets.iter().map(|t| t.as_str()).collect();
            counted::query(sql!("insert_deliveries"))
                .bind(&id)
                .bind(targets)
                .bind(now)
                .bind(&e.ordering_key)
                .execute(&mut *conn)
                .await?;
            any_delivery = true;
        }
        out.push(Ingested {
            id: e.id,
            duplicate: false,
        });
    }
    if any_delivery {
        // Delivered at commit, to every host listening (this one included).
        wakeups::notify(conn).await?;
    }
    Ok(out)
}
