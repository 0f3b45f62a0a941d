//! The API behind the dashboard's charts and events page, through the real binary:
//! `GET /v1/history` counts every finished attempt by what happened to its delivery
//! (delivered, retried, failed for good), with latency and backlog, and refuses a range it
//! does not keep; `GET /v1/events` finds events by key, type, status and target, and time,
//! newest first and paged without repeats, needs the `read` scope (while `POST /v1/events`
//! on the same path keeps needing `ingest`), and refuses bad input with a clear `400`.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use testkit::{Behavior, DEMO_TARGETS, default_timeout, target_count};

const ADMIN: &str = "admin-token-0123456789";
const INGEST: &str = "ingest-token-0123456789";
const READ: &str = "read-token-0123456789";
const EVENTS: usize = 12;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn sum(points: &Value, field: &str) -> u64 {
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_counts_every_attempt_and_the_search_finds_events_by_each_filter() {
    // billing fails every fourth order (500): three attempts, then dead.
    let (_rx, mut host) = testkit::demo(Behavior::ok().respond_with(|r| {
        if String::from_utf8_lossy(&r.body).contains("\"refuse\":true") {
            (500, "no".to_owned())
        } else {
            (200, "ok".to_owned())
        }
    }))
    .await;
    host.add_api_token("ops", ADMIN, &["admin"])
        .add_api_token("producer", INGEST, &["ingest"])
        .add_api_token("viewer", READ, &["read"])
        .set_api_token(ADMIN);
    host.start().await;
    let started = now_ms();

    let events: Vec<Value> = (0..EVENTS)
        .map(|n| {
            json!({
                "type": if n.is_multiple_of(2) { "order.created" } else { "order.paid" },
                "idempotency_key": format!("order-{n}"),
                "payload": {"n": n, "refuse": n.is_multiple_of(4)},
            })
        })
        .collect();
    let ids = host.enqueue_batch(events).await;
    let refused = (0..EVENTS).filter(|n| n.is_multiple_of(4)).count() as u64;
    let targets = host
        .wait_for_targets(default_timeout(), |t| {
            target_count(t, "billing", "dead") == refused
                && DEMO_TARGETS
                    .iter()
                    .map(|name| target_count(t, name, "delivered"))
                    .sum::<u64>()
                    == 3 * EVENTS as u64 - refused
        })
        .await;

    // ---- history ----
    let (status, history) = host.get_json("/v1/history?minutes=5").await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["bucket_ms"], 60_000);
    let all = &history["all"];
    assert_eq!(all.as_array().unwrap().len(), 5, "one point per minute: {history}");
    assert_eq!(sum(all, "delivered"), 3 * EVENTS as u64 - refused, "{history}");
    assert_eq!(
        sum(all, "failed"),
        refused,
        "one failed attempt per dead delivery: {history}"
    );
    assert_eq!(sum(all, "retried"), 2 * refused, "and two retried before it: {history}");
    let latest = all
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|p| p["p50_ms"].is_number())
        .expect("a minute with attempts");
    let (p50, p99) = (latest["p50_ms"].as_f64().unwrap(), latest["p99_ms"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{latest}");
    let by_target: BTreeSet<&str> = history["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["target"].as_str().unwrap())
        .collect();
    assert_eq!(by_target, BTreeSet::from(DEMO_TARGETS), "{history}");
    let billing = history["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["target"] == "billing")
        .unwrap();
    assert_eq!(sum(&billing["points"], "failed"), refused);
    // The backlog was sampled at start-up (before any target had work: no series yet) and
    // is sampled every 15 s: the points carry a number or null, never anything else.
    for p in all.as_array().unwrap() {
        assert!(p["backlog"].is_null() || p["backlog"].is_u64(), "{p}");
    }
    assert_eq!(target_count(&targets, "billing", "dead"), refused);
    for bad in ["0", "361", "x", "1.5", "-1"] {
        let (status, body) = host.get_json(&format!("/v1/history?minutes={bad}")).await;
        assert_eq!(status, 400, "minutes={bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains("minutes"), "{body}");
    }
    let (status, _) = host.get_json("/v1/history").await;
    assert_eq!(status, 200);

    // ---- search ----
    let search = |q: &str| {
        let q = q.to_owned();
        let host = &host;
        async move {
            let (status, body) = host.get_json(&format!("/v1/events?{q}")).await;
            assert_eq!(status, 200, "{q}: {body}");
            let found: Vec<String> = body["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect();
            (found, body)
        }
    };
    let (found, body) = search("key=order-4").await;
    assert_eq!(found, [ids[4].clone()], "{body}");
    let event = &body["events"][0];
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["idempotency_key"], "order-4");
    let statuses: Vec<String> = event["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| format!("{}={}", d["target"].as_str().unwrap(), d["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, ["analytics=delivered", "billing=dead", "crm=delivered"]);

    let (found, _) = search("status=dead&target=billing").await;
    let expected: Vec<String> = (0..EVENTS)
        .rev()
        .filter(|n| n.is_multiple_of(4))
        .map(|n| ids[n].clone())
        .collect();
    assert_eq!(found, expected, "the refused ones, newest first");
    let (found, _) = search("type=order.paid").await;
    assert_eq!(found.len(), EVENTS / 2);
    let (found, _) = search("type=order.*&status=dead&target=crm").await;
    assert!(found.is_empty(), "crm delivered everything");
    // outboxd's own events are events too: one `outboxd.delivery.dead` per dead delivery.
    let (found, _) = search(&format!("since={started}&until={}", now_ms() + 1)).await;
    assert_eq!(found.len(), EVENTS + refused as usize);
    let (found, _) = search("type=outboxd.delivery.dead").await;
    assert_eq!(found.len(), refused as usize);
    let (found, _) = search(&format!("until={started}")).await;
    assert!(found.is_empty());

    // Pages of five: every order once, newest first.
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let q = match &before {
            Some(b) => format!("type=order.*&limit=5&before={b}"),
            None => "type=order.*&limit=5".into(),
        };
        let (found, body) = search(&q).await;
        seen.extend(found);
        match body["next_before"].as_str() {
            Some(b) => before = Some(b.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    for bad in [
        "status=bogus",
        "target=Not A Target",
        "type=order%20created",
        "before=not-a-uuid",
        "limit=0",
        "limit=201",
        "since=yesterday",
        "key=a%00b",
        "colour=blue",
    ] {
        let (status, body) = host.get_json(&format!("/v1/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }

    // The read scope: an ingest-only token may post to /v1/events but not search it.
    let client = reqwest::Client::new();
    let get = |token: &'static str| client.get(host.url("/v1/events?limit=1")).bearer_auth(token).send();
    assert_eq!(get(INGEST).await.unwrap().status(), 403);
    assert_eq!(get(READ).await.unwrap().status(), 200);
    assert_eq!(client.get(host.url("/v1/events")).send().await.unwrap().status(), 401);
    let posted = client
        .post(host.url("/v1/events"))
        .bearer_auth(INGEST)
        .json(&json!({"type": "order.created", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let read_post = client
        .post(host.url("/v1/events"))
        .bearer_auth(READ)
        .json(&json!({"type": "order.created", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(read_post.status(), 403, "reading does not allow ingesting");
}
