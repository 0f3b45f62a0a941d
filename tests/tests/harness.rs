//! Self-tests of the harness's `Receiver` (no outboxd needed): the scripted behaviours and the
//! load-dependent models do what they say.

use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::{Behavior, Load, Receiver, Reply, sign_standard_webhook, verify_standard_webhook};

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

/// `n` requests to `url` at once (each on a connection of its own); their statuses and
/// `Retry-After` headers, in the order they were sent.
async fn at_once(url: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let c = client();
    let sends = (0..n).map(|i| {
        let (c, url) = (c.clone(), url.to_owned());
        async move {
            let r = post(&c, &url, &format!("k{i}")).await.unwrap();
            let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry_after)
        }
    });
    futures_join_all(sends).await
}

/// `futures::future::join_all` without the dependency: spawns each future, awaits them in order.
async fn futures_join_all<T: Send + 'static>(
    futures: impl IntoIterator<Item = impl Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

fn count(replies: &[(u16, Option<String>)], status: u16) -> usize {
    replies.iter().filter(|(s, _)| *s == status).count()
}

#[tokio::test]
async fn admit_serves_n_at_once_refuses_the_rest_and_takes_a_new_limit_at_run_time() {
    let rx = Arc::new(
        Receiver::builder()
            .path("/two", Behavior::admit(2, Duration::from_millis(400)))
            .start()
            .await,
    );
    let url = rx.url("/two");
    let replies = at_once(&url, 5).await;
    assert_eq!(count(&replies, 200), 2, "{replies:?}");
    assert_eq!(count(&replies, 503), 3, "{replies:?}");
    assert!(
        replies.iter().all(|(s, ra)| *s == 200 || ra.as_deref() == Some("1")),
        "every refusal says Retry-After: 1: {replies:?}"
    );
    let reqs = rx.requests_at("/two");
    let admitted: Vec<_> = reqs.iter().filter(|r| r.succeeded()).collect();
    assert!(
        admitted
            .iter()
            .all(|r| r.reply == Reply::Delay(Duration::from_millis(400)))
    );
    assert!(admitted.iter().all(|r| r.took.unwrap() >= Duration::from_millis(400)));
    let refused: Vec<_> = reqs.iter().filter(|r| r.refused()).collect();
    assert!(
        refused
            .iter()
            .all(|r| r.in_progress == 2 && r.took.unwrap() < Duration::from_millis(400))
    );
    let load = rx.load_at("/two");
    assert_eq!(
        (load.requests, load.succeeded, load.refused, load.peak_concurrency),
        (5, 2, 3, 2)
    );
    assert!((load.refused_share() - 0.6).abs() < 1e-9);
    assert_eq!(rx.in_progress_at("/two"), 0, "nothing in service once answered");

    // A new limit while two are in service: they count against it.
    let busy = tokio::spawn({
        let url = url.clone();
        async move { at_once(&url, 2).await }
    });
    wait_in_service(&rx, "/two", 2).await;
    rx.behave("/two", Behavior::admit(3, Duration::from_millis(400)));
    let more = at_once(&url, 2).await;
    assert_eq!((count(&more, 200), count(&more, 503)), (1, 1), "{more:?}");
    assert_eq!(count(&busy.await.unwrap(), 200), 2);
    assert_eq!(rx.load_at("/two").peak_concurrency, 3);
}

/// Waits (at most 5 s) until `n` requests are in service at `path`.
async fn wait_in_service(rx: &Receiver, path: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.in_progress_at(path) != n {
        assert!(
            Instant::now() < deadline,
            "{} in service at {path}, not {n}",
            rx.in_progress_at(path)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_client_that_gives_up_leaves_service() {
    let rx = Receiver::builder()
        .path("/slow", Behavior::admit(1, Duration::from_secs(30)))
        .start()
        .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert!(post(&impatient, &rx.url("/slow"), "a").await.is_err());
    wait_in_service(&rx, "/slow", 0).await;
    assert_eq!(rx.requests_at("/slow")[0].took, None, "never answered");
}

#[tokio::test]
async fn a_token_bucket_spends_its_burst_then_refuses_until_it_refills() {
    // 4 tokens a second, 3 at most: the sequential requests below take far less than the
    // quarter of a second a token takes to come back.
    let rx = Receiver::builder()
        .path("/limited", Behavior::token_bucket(4.0, 3))
        .start()
        .await;
    let c = client();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = post(&c, &rx.url("/limited"), &format!("k{i}")).await.unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
        }
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // 600 ms: 2.4 tokens.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut later = Vec::new();
    for i in 0..3 {
        later.push(
            post(&c, &rx.url("/limited"), &format!("l{i}"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(later, [200, 200, 429]);
    let load = rx.load_at("/limited");
    assert_eq!((load.succeeded, load.refused), (5, 3));
    assert!(rx.requests_at("/limited")[3].reply == Reply::RetryAfter { status: 429, secs: 1 });

    // A new behaviour starts with a full bucket; a service time makes the served ones wait.
    rx.behave(
        "/limited",
        Behavior::token_bucket(1.0, 1).service_time(Duration::from_millis(100)),
    );
    let replies = at_once(&rx.url("/limited"), 3).await;
    assert_eq!((count(&replies, 200), count(&replies, 429)), (1, 2), "{replies:?}");
    let served = rx.requests_at("/limited").into_iter().rfind(|r| r.succeeded()).unwrap();
    assert!(served.took.unwrap() >= Duration::from_millis(100));
}

#[tokio::test]
async fn a_queueing_receiver_slows_down_with_load_and_never_refuses() {
    // 200 ms alone or with one other; 100 ms more for each beyond two.
    let rx = Receiver::builder()
        .path(
            "/queue",
            Behavior::queueing(Duration::from_millis(200), Duration::from_millis(100), 2),
        )
        .start()
        .await;
    let replies = at_once(&rx.url("/queue"), 4).await;
    assert_eq!(count(&replies, 200), 4, "{replies:?}");
    let mut reqs = rx.requests_at("/queue");
    reqs.sort_by_key(|r| r.in_progress);
    let seen: Vec<(usize, Reply)> = reqs.iter().map(|r| (r.in_progress, r.reply.clone())).collect();
    let ms = |m| Reply::Delay(Duration::from_millis(m));
    assert_eq!(seen, [(0, ms(200)), (1, ms(200)), (2, ms(300)), (3, ms(400))]);
    for r in &reqs {
        let Reply::Delay(d) = r.reply else { unreachable!() };
        let took = r.took.unwrap();
        assert!(took >= d && took < d + Duration::from_millis(150), "{r}: took {took:?}");
    }
    let load = Load::of(&reqs);
    assert_eq!((load.refused, load.peak_concurrency, load.timed()), (0, 4, 4));
    assert!(load.latency_quantile(0.5).unwrap() < Duration::from_millis(300));
    assert!(load.latency_quantile(0.99).unwrap() >= Duration::from_millis(400));

    // Alone again: the unloaded latency.
    post(&client(), &rx.url("/queue"), "alone").await.unwrap();
    let alone = rx.requests_at("/queue").pop().unwrap();
    assert_eq!((alone.in_progress, alone.reply), (0, ms(200)));
}
