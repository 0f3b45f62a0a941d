//! What only a shared store does: several hosts on one database (migrating once, claiming side
//! by side, one key from many hosts, one rate bucket, the host registry). What every store
//! does is in the conformance suite.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{PgStore, schema};
use crate::domain::{AttemptOutcome, DeliveryStatus, Millis, now_ms};
use crate::store::Store;
use crate::store::conformance::{TempDb, claim, event, settlement, t};

/// Two hosts on the made-up timeline of the scenarios (see [`super::LeaseClock`]).
async fn two_hosts(db: &TempDb) -> (PgStore, PgStore) {
    (
        PgStore::open_on_caller_clock(&db.url()).await.unwrap(),
        PgStore::open_on_caller_clock(&db.url()).await.unwrap(),
    )
}

#[tokio::test]
async fn hosts_opening_together_migrate_once() {
    let db = TempDb::new().await;
    let url = db.url();
    let opens: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::open(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().unwrap());
    }
    let versions: Vec<i32> = sqlx::query_scalar("SELECT version FROM outboxd_schema ORDER BY version")
        .fetch_all(&stores[0].pool)
        .await
        .unwrap();
    let all: Vec<i32> = (1..=schema::MIGRATIONS.len() as i32).collect();
    assert!(all.len() >= 8, "{all:?}");
    assert_eq!(versions, all, "each migration once");
}

#[tokio::test]
async fn hosts_sharing_a_database_probe_the_one_readiness_row() {
    let db = TempDb::new().await;
    let (a, b) = two_hosts(&db).await;
    a.probe_write(7).await.unwrap();
    b.probe_write(9).await.unwrap();
    let rows: Vec<(i32, i64)> = sqlx::query_as("SELECT id, probed_at FROM readiness_probe")
        .fetch_all(&a.pool)
        .await
        .unwrap();
    assert_eq!(rows, [(1, 9)]);
}

#[tokio::test]
async fn leases_are_exclusive_across_hosts_and_a_lost_lease_settles_nothing() {
    let db = TempDb::new().await;
    let (a, b) = two_hosts(&db).await;
    a.ingest((0..6).map(|_| event(None, &["crm"])).collect(), 0)
        .await
        .unwrap();
    // Two hosts claiming at once get disjoint deliveries.
    let (x, y) = tokio::join!(
        a.claim(claim("crm", 4, "a", 100, 1_000)),
        b.claim(claim("crm", 4, "b", 100, 1_000))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.len() + y.len(), 6);
    let ids: BTreeSet<i64> = x.iter().chain(&y).map(|c| c.delivery_id).collect();
    assert_eq!(ids.len(), 6, "no delivery claimed twice");

    // After expiry, the other host takes over one of them; the late outcome changes nothing.
    let first = x.first().or(y.first()).unwrap().clone();
    let holder = if x.iter().any(|c| c.delivery_id == first.delivery_id) {
        "a"
    } else {
        "b"
    };
    let taker = if holder == "a" { "b" } else { "a" };
    let again = b.claim(claim("crm", 10, taker, 1_000, 2_000)).await.unwrap();
    assert_eq!(again.len(), 6, "every expired lease is taken over");
    let late = settlement(&first, DeliveryStatus::Dead, AttemptOutcome::Permanent, 1_100);
    let report = a.settle(holder, vec![late]).await.unwrap();
    assert_eq!(report.lost_leases, vec![first.delivery_id]);
    let now_held = again.iter().find(|c| c.delivery_id == first.delivery_id).unwrap();
    assert_eq!(now_held.attempt, 2);
    let held = settlement(now_held, DeliveryStatus::Delivered, AttemptOutcome::Delivered, 1_200);
    let report = b.settle(taker, vec![held]).await.unwrap();
    assert!(report.lost_leases.is_empty());
    let detail = a.event(first.event.id).await.unwrap().unwrap();
    let d = &detail.deliveries[0];
    assert_eq!(d.status, DeliveryStatus::Delivered);
    let outcomes: Vec<_> = d.history.iter().map(|h| h.outcome).collect();
    assert_eq!(outcomes, [AttemptOutcome::Permanent, AttemptOutcome::Delivered]);
    // The history row names the host that ran each attempt.
    let owners: Vec<Option<String>> =
        sqlx::query_scalar("SELECT owner FROM attempts WHERE delivery_id = $1 ORDER BY n")
            .bind(first.delivery_id)
            .fetch_all(&a.pool)
            .await
            .unwrap();
    assert_eq!(owners, [Some(holder.to_owned()), Some(taker.to_owned())]);
}

#[tokio::test]
async fn one_key_ingested_by_many_hosts_at_once_is_one_event() {
    let db = TempDb::new().await;
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(PgStore::open(&db.url()).await.unwrap());
    }
    for round in 0..10 {
        let key = format!("k{round}");
        let tasks: Vec<_> = stores
            .iter()
            .map(|s| {
                let (s, key) = (s.clone(), key.clone());
                tokio::spawn(async move { s.ingest(vec![event(Some(&key), &["crm"])], 0).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap().unwrap()[0]);
        }
        assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1, "{results:?}");
        assert!(results.iter().all(|r| r.id == results[0].id), "{results:?}");
    }
    assert_eq!(
        stores[0].status_counts().await.unwrap()["crm"][&DeliveryStatus::Pending],
        10
    );
}

#[tokio::test]
async fn a_target_is_paused_only_when_no_live_host_has_it() {
    let db = TempDb::new().await;
    let (a, b) = two_hosts(&db).await;
    a.ingest(vec![event(None, &["crm", "billing"])], 0).await.unwrap();
    assert_eq!(a.sync_paused(vec![t("crm"), t("billing")]).await.unwrap(), (0, 0));
    // Host b (in the middle of a deploy) has only crm: billing is still delivered by a.
    assert_eq!(b.sync_paused(vec![t("crm")]).await.unwrap(), (0, 0));
    assert_eq!(b.hold_target(&t("billing"), "no plugin here", 0).await.unwrap(), 0);
    // Once a stops, nobody has billing any more.
    a.release("a", 0).await.unwrap();
    assert_eq!(b.sync_paused(vec![t("crm")]).await.unwrap(), (1, 0));
    assert_eq!(b.sync_paused(vec![t("crm"), t("billing")]).await.unwrap(), (0, 1));
}

#[tokio::test]
async fn a_resumption_is_announced_to_every_host_as_such() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use crate::store::Wakeups;

    let db = TempDb::new().await;
    let (a, b) = two_hosts(&db).await;
    let resumed = Arc::new(AtomicUsize::new(0));
    let to = Wakeups {
        work: Arc::new(Notify::new()),
        resumed: {
            let resumed = Arc::clone(&resumed);
            Arc::new(move || {
                resumed.fetch_add(1, Ordering::SeqCst);
            })
        },
    };
    let stop = CancellationToken::new();
    let listening = {
        let (to, stop) = (to.clone(), stop.clone());
        tokio::spawn(async move { a.forward_wakeups(to, stop).await })
    };
    // Listening once the first (re)connection's catch-up has been passed on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while resumed.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let heard = || resumed.load(Ordering::SeqCst);
    let before = heard();

    // New work wakes idle lanes but is no resumption.
    let work = to.work.notified();
    tokio::pin!(work);
    work.as_mut().enable();
    b.ingest(vec![event(None, &["crm"])], 0).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .expect("new work announced");
    b.set_target_paused(&t("crm"), true, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(heard(), before, "neither new work nor a pause is a resumption");

    // Host b resumes crm: host a hears it as a resumption.
    b.set_target_paused(&t("crm"), false, 0).await.unwrap();
    while heard() == before {
        assert!(tokio::time::Instant::now() < deadline, "the resumption never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    listening.await.unwrap();
}

#[tokio::test]
async fn the_rate_limit_is_one_bucket_for_all_hosts() {
    let db = TempDb::new().await;
    let (a, b) = two_hosts(&db).await;
    let grant = a.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap();
    assert_eq!(grant.granted, 4, "the bucket starts full (burst 5)");
    let grant = b.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap();
    assert_eq!(grant.granted, 1, "the other host shares what is left");
    let grant = a.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap();
    assert_eq!(grant.granted, 0);
    assert!(
        grant.wait > Duration::ZERO && grant.wait <= Duration::from_millis(200),
        "{grant:?}"
    );
    b.give_back_tokens(&t("crm"), 5.0, 2).await.unwrap();
    assert_eq!(a.take_tokens(&t("crm"), 5.0, 4).await.unwrap().unwrap().granted, 2);
}

/// Lease times are read from the database's clock, not from the hosts': a host whose own clock
/// runs an hour ahead neither sweeps nor takes over a live lease, and a host whose clock runs
/// an hour behind neither hands out leases that the others see as long over nor keeps an
/// expired one alive with its heartbeat. (The skew is the `now` each host passes.)
#[tokio::test]
async fn a_host_with_a_skewed_clock_neither_steals_a_live_lease_nor_keeps_an_expired_one() {
    const HOUR: Millis = 3_600_000;
    let db = TempDb::new().await;
    let on_time = PgStore::open(&db.url()).await.unwrap();
    let ahead = PgStore::open(&db.url()).await.unwrap();
    let behind = PgStore::open(&db.url()).await.unwrap();
    // Due for every host, the one behind included.
    on_time
        .ingest(
            vec![event(None, &["crm"]), event(None, &["billing"])],
            now_ms() - 2 * HOUR,
        )
        .await
        .unwrap();
    let now = now_ms();
    let held = on_time
        .claim(claim("crm", 10, "on-time", now, now + 60_000))
        .await
        .unwrap();
    assert_eq!(held.len(), 1);

    // An hour ahead, that lease ended long ago by the host's clock; not by the database's.
    let skewed = now_ms() + HOUR;
    assert_eq!(
        ahead.sweep_expired(skewed).await.unwrap(),
        0,
        "no sweep of a live lease"
    );
    let stolen = ahead
        .claim(claim("crm", 10, "ahead", skewed, skewed + 60_000))
        .await
        .unwrap();
    assert!(stolen.is_empty(), "no take-over of a live lease: {stolen:?}");

    // An hour behind, a lease of 300 ms: by that host's clock it would end an hour before the
    // others' now; by the database's it is live for 300 ms.
    let skewed = now_ms() - HOUR;
    let short = behind
        .claim(claim("billing", 10, "behind", skewed, skewed + 300))
        .await
        .unwrap();
    assert_eq!(short.len(), 1);
    assert_eq!(
        on_time.sweep_expired(now_ms()).await.unwrap(),
        0,
        "both leases are live"
    );

    tokio::time::sleep(Duration::from_millis(450)).await;
    // Over by the database's clock: the late heartbeat of the host behind (its clock says the
    // lease has an hour to go) does not revive it, and its own sweeper returns it.
    let skewed = now_ms() - HOUR;
    assert_eq!(behind.extend_leases("behind", skewed, 60_000).await.unwrap(), 0);
    assert_eq!(on_time.extend_leases("on-time", now_ms(), 60_000).await.unwrap(), 1);
    assert_eq!(behind.sweep_expired(skewed).await.unwrap(), 1, "the expired lease only");
    let d = &on_time.event(short[0].event.id).await.unwrap().unwrap().deliveries[0];
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(d.history.last().unwrap().outcome, AttemptOutcome::Abandoned);
    let late = settlement(
        &short[0],
        DeliveryStatus::Delivered,
        AttemptOutcome::Delivered,
        now_ms(),
    );
    assert_eq!(
        behind.settle("behind", vec![late]).await.unwrap().lost_leases,
        vec![short[0].delivery_id]
    );

    // The live lease is still its holder's.
    let outcome = settlement(&held[0], DeliveryStatus::Delivered, AttemptOutcome::Delivered, now_ms());
    assert!(
        on_time
            .settle("on-time", vec![outcome])
            .await
            .unwrap()
            .lost_leases
            .is_empty()
    );
}
