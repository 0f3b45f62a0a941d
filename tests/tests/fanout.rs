//! One event, several webhook targets: routing, per-target idempotency keys, signatures.

use std::collections::BTreeSet;

use serde_json::json;
use testkit::{Host, Receiver, Target, delivery, history, verify_standard_webhook};

const CRM_SECRET: &str = "whsec_Y3JtLXNlY3JldC1mb3ItdGhlLWUyZS10ZXN0cw==";
const BILLING_SECRET: &str = "whsec_YmlsbGluZy1zZWNyZXQtZm9yLWUyZS10ZXN0cw==";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_post_reaches_three_webhook_targets() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target(
        "crm",
        &Target::webhook(&rx.url("/crm")).events(&["order.*"]).secret(CRM_SECRET),
    )
    .add_target(
        "analytics",
        &Target::webhook(&rx.url("/analytics")).events(&["order.*", "user.*"]),
    )
    .add_target(
        "billing",
        &Target::webhook(&rx.url("/billing"))
            .events(&["order.created"])
            .secret(BILLING_SECRET),
    );
    host.start().await;

    let payload = json!({"order_id": 42, "total": "19.99", "lines": [{"sku": "A-1", "qty": 2}]});
    let (status, body) = host
        .post_event(&json!({
            "type": "order.created",
            "payload": payload,
            "headers": {"x-trace-id": "trace-123"}
        }))
        .await;
    assert_eq!(status, 202, "POST /v1/events: {body}");
    assert_eq!(body["duplicate"], false, "{body}");
    let id = body["id"].as_str().expect("id in answer").to_owned();

    let event = host.wait_delivered(&id, &["crm", "analytics", "billing"]).await;
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["type"], "order.created");
    assert_eq!(event["payload"], payload);
    let headers = event["headers"].to_string();
    assert!(
        headers.contains("x-trace-id") && headers.contains("trace-123"),
        "ingest headers not kept: {headers}"
    );
    assert_eq!(
        event["deliveries"].as_array().map(Vec::len),
        Some(3),
        "exactly the three matching targets get a delivery: {event:#}"
    );

    let mut keys = BTreeSet::new();
    for (target, secret) in [
        ("crm", Some(CRM_SECRET)),
        ("analytics", None),
        ("billing", Some(BILLING_SECRET)),
    ] {
        let d = delivery(&event, target);
        assert_eq!(d["status"], "delivered", "{target}: {d:#}");
        assert_eq!(d["attempts"], 1, "{target}: {d:#}");
        assert!(!d["delivered_at"].is_null(), "{target}: {d:#}");
        let hist = history(&event, target);
        assert_eq!(hist.len(), 1, "{target}: {d:#}");
        assert_eq!(hist[0]["outcome"], "delivered", "{target}: {d:#}");
        assert_eq!(hist[0]["n"], 1, "{target}: {d:#}");
        let key = d["idempotency_key"]
            .as_str()
            .unwrap_or_else(|| panic!("{target} delivery has no idempotency_key: {d:#}"))
            .to_owned();

        let path = format!("/{target}");
        let reqs = rx.requests_at(&path);
        assert_eq!(
            reqs.len(),
            1,
            "{target} should get exactly one request:\n{}",
            rx.describe()
        );
        let req = &reqs[0];
        assert_eq!(req.method, "POST");
        assert!(
            req.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{req}"
        );
        assert_eq!(req.idempotency_key(), Some(key.as_str()), "{req}");
        assert_eq!(req.header("webhook-id"), Some(key.as_str()), "{req}");
        assert_eq!(req.event_id(), Some(id.as_str()), "{req}");
        assert_eq!(req.attempt(), Some(1), "{req}");
        assert_eq!(req.header("outboxd-event-type"), Some("order.created"));
        let ts: u64 = req
            .header("webhook-timestamp")
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("webhook-timestamp missing or not unix seconds: {req}"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(ts.abs_diff(now) < 300, "webhook-timestamp {ts} is not now ({now})");

        let body = req.json();
        assert_eq!(body["type"], "order.created", "{body}");
        assert_eq!(body["data"], payload, "{body}");
        assert!(body["timestamp"].is_string(), "{body}");

        if let Some(secret) = secret {
            assert!(
                verify_standard_webhook(secret, &req.headers, &req.body),
                "{target}: signature does not verify with its secret: {req}"
            );
            let other = if target == "crm" { BILLING_SECRET } else { CRM_SECRET };
            assert!(
                !verify_standard_webhook(other, &req.headers, &req.body),
                "{target}: signature also verifies with another target's secret"
            );
        }
        keys.insert(key);
    }
    assert_eq!(keys.len(), 3, "idempotency keys must differ across targets: {keys:?}");
    assert_eq!(rx.total(), 3, "{}", rx.describe());

    // The targets listing reflects configuration and counts.
    let targets = host.targets().await;
    let list = targets.as_array().expect("targets is an array");
    let names: BTreeSet<&str> = list.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, BTreeSet::from(["analytics", "billing", "crm"]), "{targets:#}");
    for t in list {
        assert_eq!(t["plugin"], "webhook.wasm", "{t}");
        assert!(t["hash"].as_str().is_some_and(|h| !h.is_empty()), "{t}");
        assert_eq!(t["counts"]["delivered"], 1, "{t}");
        assert_eq!(t["counts"]["pending"], 0, "{t}");
        assert_eq!(t["counts"]["in_flight"], 0, "{t}");
        assert_eq!(t["counts"]["dead"], 0, "{t}");
    }
    let billing = list.iter().find(|t| t["name"] == "billing").unwrap();
    assert_eq!(billing["events"], json!(["order.created"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_route_by_type_glob() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("orders", &Target::webhook(&rx.url("/orders")).events(&["order.*"]))
        .add_target("paid", &Target::webhook(&rx.url("/paid")).events(&["*.paid"]));
    // A bare component without a manifest is a target with default settings
    // (events = ["*"]); it only needs to exist and receive the delivery.
    host.add_bare_plugin("noop", "misbehave.wasm");
    host.start().await;

    let unmatched = host.enqueue("user.signup", json!({"user": 7})).await;
    let created = host.enqueue("order.created", json!({"order": 1})).await;
    let paid = host.enqueue("invoice.paid", json!({"invoice": 2})).await;

    let ev = host.get_event(&unmatched).await;
    let targets: BTreeSet<String> = testkit::deliveries_by_target(&ev).into_keys().collect();
    assert_eq!(
        targets,
        BTreeSet::from(["noop".to_owned()]),
        "user.signup matches only the catch-all bare target: {ev:#}"
    );
    host.wait_delivered(&created, &["orders"]).await;
    let ev = host.get_event(&created).await;
    assert!(testkit::status_of(&ev, "paid").is_none(), "{ev:#}");
    host.wait_delivered(&paid, &["paid"]).await;
    let ev = host.get_event(&paid).await;
    assert!(testkit::status_of(&ev, "orders").is_none(), "{ev:#}");

    let orders = rx.requests_at("/orders");
    assert_eq!(orders.len(), 1, "{}", rx.describe());
    assert_eq!(orders[0].event_id(), Some(created.as_str()));
    let paid_reqs = rx.requests_at("/paid");
    assert_eq!(paid_reqs.len(), 1, "{}", rx.describe());
    assert_eq!(paid_reqs[0].event_id(), Some(paid.as_str()));
    assert!(
        rx.requests().iter().all(|r| r.event_id() != Some(unmatched.as_str())),
        "{}",
        rx.describe()
    );
}

/// A key rotation with the stock adapter: `secrets = [new, old]` signs every request with both,
/// so a receiver still on the old key and one already on the new key both accept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_signs_with_the_new_and_the_old_key() {
    const NEW: &str = BILLING_SECRET;
    const OLD: &str = CRM_SECRET;
    const UNRELATED: &str = "whsec_dW5yZWxhdGVkLXNlY3JldC1mb3ItdGhlLXRlc3Q=";
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target(
        "billing",
        &Target::webhook(&rx.url("/billing")).config("secrets", toml::Value::Array(vec![NEW.into(), OLD.into()])),
    );
    host.start().await;

    let (status, body) = host
        .post_event(&json!({"type": "invoice.sent", "payload": {"n": 1}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    host.wait_delivered(&id, &["billing"]).await;

    let reqs = rx.requests_at("/billing");
    assert_eq!(reqs.len(), 1, "{}", rx.describe());
    let req = &reqs[0];
    let header = req.header("webhook-signature").unwrap_or_default();
    assert_eq!(header.split(' ').count(), 2, "one entry per key: {req}");
    for key in [NEW, OLD] {
        assert!(
            verify_standard_webhook(key, &req.headers, &req.body),
            "does not verify with {key}: {req}"
        );
    }
    assert!(!verify_standard_webhook(UNRELATED, &req.headers, &req.body), "{req}");
    let targets = host.targets().await.to_string();
    for key in [NEW, OLD] {
        assert!(!targets.contains(&key[6..]), "GET /v1/targets shows a key: {targets}");
    }
}

/// A payload filter: a target subscribed to `order.*` with
/// `filter = "payload.total > 100 && headers['x-region'] == 'eu'"` gets only the orders that
/// pass; an event the filter fails on (no `total`) gets no delivery to it and is counted as an
/// error; the other target, without a filter, gets every order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_filter_picks_the_events_a_target_wants() {
    const FILTER: &str = "payload.total > 100 && headers['x-region'] == 'eu'";
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target(
        "billing",
        &Target::webhook(&rx.url("/billing")).events(&["order.*"]).filter(FILTER),
    )
    .add_target("crm", &Target::webhook(&rx.url("/crm")).events(&["order.*"]));
    host.start().await;

    let mut ids = Vec::new();
    for (payload, region) in [
        (json!({"total": 150}), "eu"),
        (json!({"total": 50}), "eu"),
        (json!({"total": 150}), "us"),
        (json!({"note": "no total"}), "eu"),
    ] {
        let (status, body) = host
            .post_event(&json!({"type": "order.created", "payload": payload, "headers": {"x-region": region}}))
            .await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().expect("id").to_owned());
    }
    host.wait_delivered(&ids[0], &["billing", "crm"]).await;
    for id in &ids[1..] {
        let ev = host.wait_delivered(id, &["crm"]).await;
        let targets: BTreeSet<String> = testkit::deliveries_by_target(&ev).into_keys().collect();
        assert_eq!(
            targets,
            BTreeSet::from(["crm".to_owned()]),
            "no delivery to billing: {ev:#}"
        );
    }
    let billing = rx.requests_at("/billing");
    assert_eq!(billing.len(), 1, "{}", rx.describe());
    assert_eq!(billing[0].event_id(), Some(ids[0].as_str()));
    assert_eq!(rx.requests_at("/crm").len(), 4, "{}", rx.describe());

    let targets = host.targets().await;
    let listed = targets
        .as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == "billing"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(listed["filter"], FILTER, "{targets:#}");

    let metrics = reqwest::get(host.url("/metrics")).await.unwrap().text().await.unwrap();
    for (result, n) in [("matched", 1), ("skipped", 2), ("error", 1)] {
        let line = format!("outboxd_filter_events_total{{target=\"billing\",result=\"{result}\"}} {n}");
        assert!(metrics.contains(&line), "no `{line}` in /metrics:\n{metrics}");
    }
}

/// Credentials held by the host: `[headers]` of the manifest, one read from the environment,
/// reach the receiver on every request, replace a header of the same name the plugin sets,
/// and are shown nowhere (the targets listing names them only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_held_by_the_host_reach_the_receiver_and_are_shown_nowhere() {
    const KEY: &str = "key-from-the-environment-4711";
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.set_env("OUTBOXD_TEST_HELD_API_KEY", KEY);
    let mut key = toml::Table::new();
    key.insert("env".into(), "OUTBOXD_TEST_HELD_API_KEY".into());
    host.add_target(
        "crm",
        &Target::webhook(&rx.url("/crm"))
            .header("X-Api-Key", toml::Value::Table(key))
            .header("authorization", "Bearer static-token")
            // The plugin sets `idempotency-key` itself; the host's value wins.
            .header("idempotency-key", "held"),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"n": 1})).await;
    host.wait_delivered(&id, &["crm"]).await;
    let reqs = rx.requests_at("/crm");
    assert_eq!(reqs.len(), 1, "{}", rx.describe());
    assert_eq!(reqs[0].header("x-api-key"), Some(KEY), "{}", reqs[0]);
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer static-token"),
        "{}",
        reqs[0]
    );
    assert_eq!(reqs[0].header("idempotency-key"), Some("held"), "{}", reqs[0]);

    let targets = host.targets().await;
    let listed = targets.to_string();
    assert!(!listed.contains(KEY), "GET /v1/targets shows the key: {listed}");
    let crm = targets
        .as_array()
        .and_then(|l| l.iter().find(|t| t["name"] == "crm"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        crm["held_headers"],
        json!(["authorization", "idempotency-key", "x-api-key"]),
        "{crm}"
    );
    let event = host.get_event(&id).await.to_string();
    assert!(!event.contains(KEY), "{event}");
    assert!(!host.stderr_this_run().contains(KEY), "the log shows the key");
}
