//! The trust boundary, against the real binary (issue 23): what a web page may do with the
//! local API, what a half-sent request may hold, where secrets in URLs and manifests show up,
//! which idempotency keys a producer may take, how far a replay reaches, and where a plugin's
//! requests may go once names are resolved.

use std::time::Duration;

use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target, default_timeout, delivery, history, scaled, target_count};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A request with raw headers: (status, JSON body or the text).
async fn raw(host: &Host, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), host.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if !body.is_empty() {
        req = req.body(body.to_owned());
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_can_neither_drive_nor_read_the_local_api() {
    let rx = Receiver::builder().path("/bad", Behavior::status(400)).start().await;
    let mut host = Host::new();
    host.add_target("crm", &Target::webhook(&rx.url("/bad")).fast_retry(1));
    host.set_api_config("allowed_hosts", vec!["outboxd.internal"]);
    host.start().await;
    let own = format!("http://{}", host.addr());
    let event = r#"{"type":"order.created","payload":{}}"#;

    // What a page's `fetch(…, {mode: "no-cors"})` can send: a text/plain body.
    let (status, body) = raw(&host, "POST", "/v1/events", &[("content-type", "text/plain")], event).await;
    assert_eq!(status, 415, "{body}");
    let (status, body) = raw(&host, "POST", "/v1/events", &[], event).await;
    assert_eq!(status, 415, "no content type at all: {body}");
    // A foreign origin, even with a JSON body.
    let (status, body) = raw(
        &host,
        "POST",
        "/v1/deliveries/replay",
        &[("content-type", "application/json"), ("origin", "http://evil.example")],
        "{}",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("evil.example"), "{body}");
    // A state change with no body and nothing a page could not send.
    let (status, body) = raw(&host, "POST", "/v1/targets/crm/pause", &[], "").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        host.targets().await[0]["paused"] == false,
        "refused requests change nothing"
    );
    // A name that resolves to us only by rebinding: nothing is answered, not even the page.
    for path in ["/v1/deliveries/failed", "/v1/targets", "/"] {
        let (status, body) = raw(&host, "GET", path, &[("host", "rebind.evil.example")], "").await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    let (status, body) = raw(
        &host,
        "POST",
        "/v1/events",
        &[("content-type", "application/json")],
        event,
    )
    .await;
    assert_eq!(status, 202, "nothing was stored by the refused requests before: {body}");
    // (The delivery dies at the receiver's 400: outboxd's own dead-letter event is not counted.)
    assert_eq!(
        host.sql_i64("SELECT count(*) FROM events WHERE type = 'order.created'"),
        1
    );

    // What clients, the CLI's users and the dashboard send still works.
    let port = host.addr().port();
    for name in [format!("localhost:{port}"), format!("outboxd.internal:{port}")] {
        let (status, body) = raw(&host, "GET", "/v1/targets", &[("host", &name)], "").await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    let (status, body) = raw(
        &host,
        "POST",
        "/v1/targets/crm/pause",
        &[("origin", &own), ("x-outboxd-request", "dashboard")],
        "",
    )
    .await;
    assert_eq!((status, body["paused"].clone()), (200, json!(true)), "{body}");
    let (status, body) = raw(
        &host,
        "POST",
        "/v1/targets/crm/resume",
        &[("content-type", "application/json")],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_do_not_hold_the_server() {
    let mut host = Host::new();
    host.set_api_config("header_read_timeout_ms", 300)
        .set_api_config("request_timeout_ms", 600)
        .set_api_config("max_connections", 8);
    host.start().await;
    let limit = scaled(Duration::from_secs(5));

    // Headers that never end: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(host.addr()).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(limit, slow.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a request whose headers never end holds its connection");

    // A body that never ends: 408, then closed.
    let mut slow = tokio::net::TcpStream::connect(host.addr()).await.unwrap();
    slow.write_all(
        b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"type\"",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(limit, slow.read_to_end(&mut answer))
        .await
        .expect("a request whose body never ends is cut off")
        .ok();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // As many idle connections as the limit: the next waits until they are cut off.
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(tokio::net::TcpStream::connect(host.addr()).await.unwrap());
    }
    let started = std::time::Instant::now();
    let (status, _) = tokio::time::timeout(limit, raw(&host, "GET", "/healthz", &[], ""))
        .await
        .expect("answered once the idle ones are cut off");
    assert_eq!(status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "served at once beside 8 connections: no connection limit ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_a_target_url_stay_out_of_errors_and_alerts() {
    let rx = Receiver::builder().path("/alerts", Behavior::ok()).start().await;
    let mut host = Host::new();
    // Nothing listens on port 1: the connection is refused, and reqwest's error text would
    // end with the whole URL.
    let secret_url = "http://127.0.0.1:1/services/T0/B0/PATHSECRET?token=QUERYSECRET";
    host.add_target("slack", &Target::webhook(secret_url).events(&["order.*"]).fast_retry(1))
        .add_target(
            "alerts",
            &Target::webhook(&rx.url("/alerts")).events(&["outboxd.delivery.dead"]),
        );
    host.start().await;
    let id = host.enqueue("order.created", json!({"n": 1})).await;
    let event = host.wait_settled(&id, &["slack"]).await;
    let slack = delivery(&event, "slack");
    assert_eq!(slack["status"], "dead", "{event:#}");
    let last_error = slack["last_error"].as_str().unwrap();
    assert!(
        last_error.contains("127.0.0.1:1"),
        "where it failed is kept: {last_error}"
    );
    let alerts = rx.wait_for("/alerts", 1, default_timeout()).await.unwrap();
    let alert = String::from_utf8_lossy(&alerts[0].body).into_owned();
    let (_, failed) = host.get_json("/v1/deliveries/failed").await;
    for (what, text) in [
        ("the event", event.to_string()),
        ("the alert", alert),
        ("the dead letters", failed.to_string()),
        ("the log", host.stderr()),
    ] {
        for secret in ["PATHSECRET", "QUERYSECRET"] {
            assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
        }
    }
    assert!(!history(&event, "slack").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_where_a_manifest_is_wrong_without_quoting_it() {
    let mut host = Host::new();
    host.add_target_raw(
        "bad",
        "webhook.wasm",
        "plugin = \"webhook.wasm\"\nevents = [\"order.*\"]\n[config]\nsecret = whsec_MANIFESTSECRET\n",
    );
    host.start().await;
    let (status, health) = host.healthz(default_timeout()).await.expect("healthz");
    assert_eq!(status, 200);
    assert_eq!(health["status"], "degraded", "{health}");
    let error = &health["errors"][0];
    assert!(error["file"].as_str().unwrap().ends_with("bad.toml"), "{health}");
    assert_eq!(
        (error["line"].clone(), error["column"].clone()),
        (json!(4), json!(10)),
        "{health}"
    );
    assert!(!error["message"].as_str().unwrap().is_empty(), "{health}");
    let targets = host.targets().await;
    for (what, text) in [("/healthz", health.to_string()), ("/v1/targets", targets.to_string())] {
        assert!(!text.contains("MANIFESTSECRET"), "{what} quotes the manifest: {text}");
    }
    // The log has the whole story.
    host.wait_for_stderr(&["MANIFESTSECRET"], default_timeout())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_cannot_take_outboxd_keys_nor_learn_other_producers_ids() {
    const INGEST: &str = "ingest-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";
    let mut host = Host::new();
    host.add_api_token("producer", INGEST, &["ingest"])
        .add_api_token("ops", ADMIN, &["admin"])
        .set_api_token(INGEST);
    host.start().await;
    for key in ["source:shop:1000", "outboxd.delivery.dead:7:1"] {
        let (status, body) = host
            .post_event(&json!({"type": "order.created", "payload": {}, "idempotency_key": key}))
            .await;
        assert_eq!(status, 400, "{key}: {body}");
        assert!(body["error"].as_str().unwrap().contains("idempotency_key"), "{body}");
    }
    assert_eq!(host.count_rows("events"), 0, "a refused key stores nothing");

    let keyed = json!({"type": "order.created", "payload": {}, "idempotency_key": "order-1"});
    let (status, first) = host.post_event(&keyed).await;
    assert_eq!(status, 202, "{first}");
    assert!(first["id"].is_string(), "{first}");
    let (status, again) = host.post_event(&keyed).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again,
        json!({"id": null, "duplicate": true}),
        "an ingest-only token is not told the id"
    );
    host.set_api_token(ADMIN);
    let (status, again) = host.post_event(&keyed).await;
    assert_eq!((status, &again["id"]), (200, &first["id"]), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_capped_and_says_how_many_it_took() {
    let rx = Receiver::builder().path("/bad", Behavior::status(400)).start().await;
    let mut host = Host::new();
    host.add_target("crm", &Target::webhook(&rx.url("/bad")).fast_retry(1));
    host.start().await;
    for n in 0..3 {
        host.enqueue("order.created", json!({"n": n})).await;
    }
    let dead = |n| move |t: &Value| target_count(t, "crm", "dead") == n;
    host.wait_for_targets(default_timeout(), dead(3)).await;
    let job = host.replay_job(&json!({"limit": 2})).await;
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"], &job["limit"]),
        (&json!("done"), &json!(2), &json!(2), &json!(2)),
        "the job stops at its cap: {job}"
    );
    host.wait_for_targets(default_timeout(), dead(3)).await;
    let job = host.replay_job(&json!({"all": true})).await;
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"], &job["limit"]),
        (&json!("done"), &json!(3), &json!(3), &Value::Null),
        "{job}"
    );
    // A list of deliveries is replayed at once, capped by `limit`.
    host.wait_for_targets(default_timeout(), dead(3)).await;
    let (_, failed) = host.get_json("/v1/deliveries/failed?target=crm").await;
    let ids: Vec<i64> = failed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["delivery_id"].as_i64())
        .collect();
    let (status, body) = host
        .post_json("/v1/deliveries/replay", &json!({"delivery_ids": ids, "limit": 2}))
        .await;
    assert_eq!((status, body), (200, json!({"replayed": 2, "more": true})));
    let (status, body) = host.post_json("/v1/deliveries/replay", &json!({"limit": 0})).await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_that_resolves_to_a_private_address_is_not_reached() {
    let rx = Receiver::builder().path("/ok", Behavior::ok()).start().await;
    let port = rx.authority().rsplit_once(':').unwrap().1.to_owned();
    let by_name = format!("http://localhost:{port}/ok");
    let mut host = Host::new();
    host.add_target("named", &Target::webhook(&by_name).events(&["a"]).fast_retry(1))
        .add_target(
            "opted-in",
            &Target::webhook(&by_name).events(&["b"]).allow_private(true),
        )
        .add_target("listed", &Target::webhook(&rx.url("/ok")).events(&["c"]));
    host.start().await;
    let named = host.enqueue("a", json!({})).await;
    let event = host.wait_settled(&named, &["named"]).await;
    let d = delivery(&event, "named");
    assert_eq!(d["status"], "dead", "{event:#}");
    assert!(d["last_error"].as_str().unwrap().contains("allow_private"), "{event:#}");
    assert_eq!(rx.count_at("/ok"), 0, "{}", rx.describe());
    for (event_type, target) in [("b", "opted-in"), ("c", "listed")] {
        let id = host.enqueue(event_type, json!({})).await;
        host.wait_delivered(&id, &[target]).await;
    }
    assert_eq!(rx.count_at("/ok"), 2);
}
