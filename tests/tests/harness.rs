//! Self-tests of the harness's `Receiver` (no outboxd needed): the scripted behaviours do what they say.

use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{Behavior, Receiver, Reply, sign_standard_webhook, verify_standard_webhook};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn post(c: &reqwest::Client, url: &str, key: &str) -> Result<reqwest::Response, reqwest::Error> {
    c.post(url)
        .header("idempotency-key", key)
        .body(r#"{"hello":"world"}"#)
        .send()
        .await
}

#[tokio::test]
async fn fail_first_then_succeed_and_record_everything() {
    let rx = Receiver::builder()
        .path("/flaky", Behavior::ok().fail_first(2, 500))
        .start()
        .await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = post(&c, &rx.url("/flaky"), &format!("k{}", i % 2)).await.unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [500, 500, 200, 200]);
    let other = post(&c, &rx.url("/other?x=1"), "z").await.unwrap();
    assert_eq!(other.status(), 200);

    let reqs = rx.requests_at("/flaky");
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].json()["hello"], "world");
    assert_eq!(reqs[1].reply, Reply::Status(500));
    assert_eq!((reqs[1].status, reqs[1].succeeded()), (Some(500), false));
    assert_eq!((reqs[2].status, reqs[2].succeeded()), (Some(200), true));
    assert_eq!(reqs[3].index, 3);
    assert_eq!(rx.requests_at("/other")[0].query.as_deref(), Some("x=1"));
    assert_eq!(rx.idempotency_keys_at("/flaky").len(), 2);
    assert_eq!(rx.idempotency_keys().len(), 3);
    assert_eq!(rx.total(), 5);
}

#[tokio::test]
async fn retry_after_and_runtime_behaviour_change() {
    let rx = Receiver::builder()
        .path("/busy", Behavior::ok().retry_after_first(1, 429, 7))
        .start()
        .await;
    let c = client();
    let r = post(&c, &rx.url("/busy"), "a").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(post(&c, &rx.url("/busy"), "a").await.unwrap().status(), 200);

    rx.behave("/busy", Behavior::status(503).retry_after(503, 1));
    let r = post(&c, &rx.url("/busy"), "a").await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test]
async fn hang_and_delay() {
    let rx = Receiver::builder()
        .path("/hang", Behavior::ok().hang_first(1))
        .path("/slow", Behavior::status(202).delay(Duration::from_millis(300)))
        .start()
        .await;
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = post(&c, &rx.url("/hang"), "h").await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(post(&c, &rx.url("/hang"), "h").await.unwrap().status(), 200);
    let t0 = Instant::now();
    assert_eq!(post(&c, &rx.url("/slow"), "s").await.unwrap().status(), 202);
    assert!(t0.elapsed() >= Duration::from_millis(290));
    assert_eq!(rx.requests_at("/hang")[0].reply, Reply::Hang);
    assert_eq!(rx.requests_at("/hang")[0].status, None, "a hung request has no status");
    let slow = &rx.requests_at("/slow")[0];
    assert_eq!(
        (slow.status, slow.succeeded()),
        (Some(202), true),
        "a delay answers the default"
    );
}

#[tokio::test]
async fn seeded_fractions_are_reproducible() {
    async fn run(seed: u64) -> Vec<u16> {
        let rx = Receiver::builder()
            .path("/r", Behavior::ok().fail_fraction(0.5, 500).seed(seed))
            .start()
            .await;
        let c = client();
        let mut out = Vec::new();
        for _ in 0..40 {
            out.push(post(&c, &rx.url("/r"), "k").await.unwrap().status().as_u16());
        }
        out
    }
    let a = run(1).await;
    assert_eq!(a, run(1).await, "same seed, same answers");
    let fails = a.iter().filter(|s| **s == 500).count();
    assert!((8..=32).contains(&fails), "about half fail: {fails}/40");
}

#[tokio::test]
async fn waiting_times_out_with_a_clear_message() {
    let rx = Receiver::start().await;
    let c = client();
    let waiter = rx.wait_for("/w", 2, Duration::from_secs(5));
    let poster = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post(&c, &rx.url("/w"), "1").await.unwrap();
        post(&c, &rx.url("/w"), "2").await.unwrap();
    };
    let (got, ()) = tokio::join!(waiter, poster);
    assert_eq!(got.unwrap().len(), 2);

    let err = rx.wait_for("/never", 1, Duration::from_millis(200)).await.unwrap_err();
    assert!(err.contains("/never") && err.contains("2 request(s)"), "{err}");
}

#[tokio::test]
async fn signatures_round_trip_through_the_receiver() {
    let secret = "whsec_c2VjcmV0LWZvci10aGUtaGFybmVzcy10ZXN0";
    let rx = Receiver::start().await;
    let body = br#"{"type":"x","timestamp":"2024-01-01T00:00:00Z","data":{}}"#;
    let sig = sign_standard_webhook(secret, "msg_1", "1700000000", body);
    client()
        .post(rx.url("/signed"))
        .header("webhook-id", "msg_1")
        .header("webhook-timestamp", "1700000000")
        .header("webhook-signature", sig)
        .body(&body[..])
        .send()
        .await
        .unwrap();
    let req = &rx.expect_requests("/signed", 1).await[0];
    assert!(verify_standard_webhook(secret, &req.headers, &req.body));
    assert!(!verify_standard_webhook(
        "whsec_b3RoZXItc2VjcmV0",
        &req.headers,
        &req.body
    ));
}

#[tokio::test]
async fn a_quiet_window_passes_when_nothing_arrives_and_fails_at_the_first_request() {
    let rx = Arc::new(Receiver::start().await);
    let c = client();
    post(&c, &rx.url("/q"), "1").await.unwrap();
    rx.expect_no_more_at("/q", 1, Duration::from_millis(100)).await;
    rx.expect_no_more(1, Duration::from_millis(100)).await;

    // A count that is not the expected one fails before the window.
    let early = Instant::now();
    let wrong = tokio::spawn({
        let rx = Arc::clone(&rx);
        async move { rx.expect_no_more_at("/q", 0, Duration::from_secs(30)).await }
    });
    assert!(wrong.await.unwrap_err().is_panic(), "1 request where 0 were expected");
    assert!(early.elapsed() < Duration::from_secs(10), "it failed at once");

    // One more request within the window fails it as soon as it arrives.
    let started = Instant::now();
    let watcher = tokio::spawn({
        let rx = Arc::clone(&rx);
        async move { rx.expect_no_more(1, Duration::from_secs(30)).await }
    });
    post(&c, &rx.url("/elsewhere"), "2").await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the window fails before its end");
    assert!(outcome.unwrap_err().is_panic(), "a request within the window");
    assert!(started.elapsed() < Duration::from_secs(10));
}
