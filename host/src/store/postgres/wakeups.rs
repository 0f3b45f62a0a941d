//! Wake-ups across hosts: a `NOTIFY` sent inside the transactions that make work due (it goes
//! out at commit), and the `LISTEN` loop that wakes this host's idle lanes on each. A manual
//! resumption says so in its payload: the resumed target's lanes, paused, do not wake for new
//! work (every ingest announces some) and look again only when told of a resumption.
//!
//! Ingest, the one frequent writer, announces after its commit instead ([`Announcer`]):
//! PostgreSQL serializes the commits of all notifying transactions of a database (a lock taken
//! before the commit and held through its WAL flush, so that notifications queue in commit
//! order), so a `NOTIFY` inside every ingest transaction made concurrent ingests (this host's
//! two group writers, other hosts') wait for each other's flushes one after another.

use std::time::Duration;

use sqlx::PgExecutor;
use sqlx::postgres::{PgConnection, PgListener, PgPool};
use tokio_util::sync::CancellationToken;

use super::counted;
use crate::store::{StoreError, Wakeups};

/// The channel of wake-ups.
const WAKE_CHANNEL: &str = "outboxd_wake";
/// The payload of a manual resumption's wake-up (the others have none).
const RESUMED: &str = "resumed";

/// Sends a wake-up with `payload` to every host (this one included), at the commit of the
/// transaction it runs in.
async fn send<'e>(conn: impl PgExecutor<'e>, payload: &str) -> Result<(), StoreError> {
    counted::query(sql!("notify"))
        .bind(WAKE_CHANNEL)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Announces new due work at the commit of `conn`'s transaction.
pub(super) async fn notify(conn: &mut PgConnection) -> Result<(), StoreError> {
    send(conn, "").await
}

/// Announces a target resumed by hand at the commit of `conn`'s transaction (its deliveries
/// are due again: this wakes idle lanes too).
pub(super) async fn notify_resumed(conn: &mut PgConnection) -> Result<(), StoreError> {
    send(conn, RESUMED).await
}

/// Announces new due work after the commit that wrote it, outside that transaction, at most
/// one `NOTIFY` at a time: announcements asked for while one is on its way become a single
/// next one. It is sent on a connection whose commit does not wait for the WAL flush (a lost
/// announcement costs a poll interval, never work). Should the process die between the commit
/// and the announcement, other hosts find the work at their next poll.
#[derive(Debug, Default)]
pub(super) struct Announcer {
    state: std::sync::Mutex<Announcing>,
}

#[derive(Debug, Default)]
struct Announcing {
    /// One announcement is on its way.
    sending: bool,
    /// Another was asked for meanwhile.
    again: bool,
}

impl Announcer {
    pub(super) async fn announce(&self, relaxed: &PgPool) {
        let state = || self.state.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut s = state();
            if s.sending {
                s.again = true;
                return;
            }
            s.sending = true;
        }
        loop {
            if let Err(e) = send(relaxed, "").await {
                tracing::warn!(error = %e, "cannot announce new work to the other hosts; they will find it by polling");
            }
            let mut s = state();
            if !s.again {
                s.sending = false;
                return;
            }
            s.again = false;
        }
    }
}

/// `LISTEN`s for wake-ups and passes each on to `to` until `stop`. A lost connection is
/// re-established (with a wake-up and a resumption, since notifications may have been missed
/// meanwhile); polling covers the gap.
pub(super) async fn forward(pool: &PgPool, to: &Wakeups, stop: &CancellationToken) {
    let missed = || {
        to.work.notify_waiters();
        (to.resumed)();
    };
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
        missed();
        loop {
            tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(n)) => {
                        to.work.notify_waiters();
                        if n.payload() == RESUMED {
                            (to.resumed)();
                        }
                    }
                    Ok(None) => missed(), // the connection dropped; the next try_recv reconnects
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
