//! Wake-ups across hosts: a `NOTIFY` sent inside the transactions that make work due (it goes
//! out at commit), and the `LISTEN` loop that wakes this host's idle lanes on each.

use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::counted;
use crate::store::StoreError;

/// The channel of wake-ups.
const WAKE_CHANNEL: &str = "outboxd_wake";

/// Announces new due work to every host (this one included), at the commit of `conn`'s
/// transaction.
pub(super) async fn notify(conn: &mut PgConnection) -> Result<(), StoreError> {
    counted::query(sql!("notify")).bind(WAKE_CHANNEL).execute(conn).await?;
    Ok(())
}

/// `LISTEN`s for wake-ups and wakes this host's idle lanes on each, until `stop`. A lost
/// connection is re-established (with a wake-up, since notifications may have been missed
/// meanwhile); polling covers the gap.
pub(super) async fn forward(pool: &PgPool, wake: &Notify, stop: &CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let listener = async {
            let mut l = PgListener::connect_with(pool).await?;
            l.listen(WAKE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for wake-ups; polling meanwhile");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        backoff = Duration::from_millis(100);
        wake.notify_waiters();
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => wake.notify_waiters(),
                    Ok(None) => {
                        // The connection dropped; the next try_recv reconnects.
                        wake.notify_waiters();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "wake-up listener failed; reconnecting");
                        break;
                    }
                },
                _ = stop.cancelled() => return,
            }
        }
    }
}
