//! The `slack-notify` plugin end to end: the Slack message it posts, and how the host settles a
//! receiver's 2xx, 429 with `Retry-After` and 400.

use std::time::Duration;

use serde_json::json;
use testkit::{Behavior, Host, Receiver, Target, delivery, history};

const PLUGIN: &str = "slack_notify.wasm";

/// A `slack_notify.wasm` target posting to `url`, allowed to reach `authority`.
fn slack(url: &str, authority: &str) -> Target {
    Target::new(PLUGIN)
        .events(&["order.*"])
        .allow(authority)
        .config("webhook_url", url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_slack_messages_and_settles_ok_429_and_400() {
    let rx = Receiver::builder()
        .path("/hooks/ok", Behavior::ok())
        .path("/hooks/busy", Behavior::ok().retry_after_first(1, 429, 1))
        .path("/hooks/bad", Behavior::status(400))
        .start()
        .await;
    let authority = rx.authority();
    let mut host = Host::new();
    host.add_target(
        "slack",
        &slack(&rx.url("/hooks/ok"), &authority)
            .config("channel", "#orders")
            .config("username", "outboxd"),
    )
    // Retry-After is capped at max_backoff_ms: leave room for its 1 s, keep the own backoff short.
    .add_target(
        "slack-busy",
        &slack(&rx.url("/hooks/busy"), &authority).retry(5, 50, 10_000),
    )
    .add_target(
        "slack-bad",
        &slack(&rx.url("/hooks/bad"), &authority).retry(5, 50, 10_000),
    );
    host.start().await;

    // Raw text, so that `99.90` reaches the plugin as written.
    let (status, answer) = host
        .post_raw(
            r#"{"type":"order.created","payload":{"order_id":1001,"customer":{"email":"ada@example.com"},"total":99.90,"currency":"EUR"}}"#,
            "application/json",
        )
        .await;
    assert_eq!(status, 202, "POST /v1/events: {answer}");
    let id = answer["id"].as_str().expect("id in answer").to_owned();
    let event = host.wait_settled(&id, &["slack", "slack-busy", "slack-bad"]).await;

    // 2xx: delivered at once, with the Slack body and the delivery's idempotency key.
    let ok = delivery(&event, "slack");
    assert_eq!(ok["status"], "delivered", "{event:#}");
    assert_eq!(ok["attempts"], 1, "{event:#}");
    let requests = rx.requests_at("/hooks/ok");
    assert_eq!(requests.len(), 1, "{}", rx.describe());
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.header("content-type"), Some("application/json"), "{request}");
    assert_eq!(
        request.idempotency_key(),
        Some(format!("{id}.slack").as_str()),
        "{request}"
    );
    assert_eq!(ok["idempotency_key"].as_str(), request.idempotency_key());
    let summary = "order 1001 by ada@example.com — 99.90 EUR";
    assert_eq!(
        request.json(),
        json!({
            "text": format!("order.created: {summary}"),
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": format!("*order.created*\n{summary}")}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("event `{id}`")}]},
            ],
            "channel": "#orders",
            "username": "outboxd",
        }),
        "{request}"
    );

    // 429 with Retry-After: 1: retried after that second (not the 50 ms backoff), then delivered.
    let busy = delivery(&event, "slack-busy");
    assert_eq!(busy["status"], "delivered", "{event:#}");
    assert_eq!(busy["attempts"], 2, "{event:#}");
    let attempts = history(&event, "slack-busy");
    assert_eq!(attempts[0]["outcome"], "retry", "{event:#}");
    let reason = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(reason.contains("429"), "{event:#}");
    let requests = rx.requests_at("/hooks/busy");
    assert_eq!(requests.len(), 2, "{}", rx.describe());
    let waited = requests[1].received_at - requests[0].received_at;
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}, not after Retry-After"
    );
    assert_eq!(requests[0].idempotency_key(), requests[1].idempotency_key());
    assert_eq!(
        requests[0].body, requests[1].body,
        "the message is the same on every attempt"
    );

    // 400: permanent, dead after one attempt whatever attempts are left.
    let bad = delivery(&event, "slack-bad");
    assert_eq!(bad["status"], "dead", "{event:#}");
    assert_eq!(bad["attempts"], 1, "{event:#}");
    let last_error = bad["last_error"].as_str().unwrap_or_default();
    assert!(last_error.starts_with("permanent failure: HTTP 400"), "{event:#}");
    assert_eq!(rx.count_at("/hooks/bad"), 1, "{}", rx.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_webhook_url_is_permanent() {
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.add_target("slack", &Target::new(PLUGIN).allow(&rx.authority()).fast_retry(5));
    host.start().await;

    let id = host.enqueue("user.signed_up", json!({"user": 7})).await;
    let event = host.wait_settled(&id, &["slack"]).await;
    let d = delivery(&event, "slack");
    assert_eq!(d["status"], "dead", "{event:#}");
    assert_eq!(d["attempts"], 1, "{event:#}");
    assert_eq!(
        d["last_error"], "permanent failure: missing required config key `webhook_url`",
        "{event:#}"
    );
    assert_eq!(rx.total(), 0, "{}", rx.describe());
}
