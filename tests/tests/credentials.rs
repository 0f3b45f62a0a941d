//! Credentials held by the host (issue 27, point 6): OAuth2 client credentials against a
//! local token endpoint, and mutual TLS against a local HTTPS receiver that requires a client
//! certificate. The plugin (the plain webhook adapter) does nothing for either: the host
//! authenticates its requests, and neither a secret nor a token appears in the API or the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::json;
use testkit::tls::TestPki;
use testkit::{Behavior, Host, Receiver, Target, default_timeout, delivery, history, target_entry};

const SECRET: &str = "client-secret-from-the-environment-0042";

/// A token endpoint at `/token` issuing `tok-1`, `tok-2`, … with `expires_in` seconds; and
/// its request counter.
async fn token_endpoint(expires_in: u64) -> (Receiver, Arc<AtomicUsize>) {
    let issued = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&issued);
    let rx = Receiver::builder()
        .path(
            "/token",
            Behavior::ok().respond_with(move |_| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                (
                    200,
                    json!({"access_token": format!("tok-{n}"), "token_type": "Bearer", "expires_in": expires_in})
                        .to_string(),
                )
            }),
        )
        .start()
        .await;
    (rx, issued)
}

fn env_ref(name: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("env".into(), name.into());
    toml::Value::Table(t)
}

fn file_ref(path: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("file".into(), path.into());
    toml::Value::Table(t)
}

fn oauth2_target(url: &str, token_url: &str) -> Target {
    Target::webhook(url)
        .oauth2("token_url", token_url)
        .oauth2("client_id", "outboxd-client")
        .oauth2("client_secret", env_ref("OUTBOXD_TEST_OAUTH2_SECRET"))
        .oauth2("scope", "deliveries:write")
}

/// One token for 1,000 deliveries: fetched once with the client's credentials (HTTP Basic),
/// sent as `Bearer` on every request, and shown nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_fetches_one_token_for_a_thousand_deliveries_and_shows_it_nowhere() {
    let (auth, issued) = token_endpoint(3600).await;
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.set_env("OUTBOXD_TEST_OAUTH2_SECRET", SECRET);
    host.add_target(
        "crm",
        &oauth2_target(&rx.url("/crm"), &auth.url("/token")).concurrency(16),
    );
    host.start().await;

    let events: Vec<_> = (0..1000)
        .map(|n| json!({"type": "order.created", "payload": {"n": n}}))
        .collect();
    let ids = host.enqueue_batch(events).await;
    rx.wait_for("/crm", 1000, default_timeout() * 3)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    host.wait_delivered(&ids[999], &["crm"]).await;

    assert_eq!(issued.load(Ordering::SeqCst), 1, "one token fetch for 1,000 deliveries");
    let token_requests = auth.requests_at("/token");
    let fetch = &token_requests[0];
    assert_eq!(fetch.method, "POST");
    assert_eq!(fetch.header("content-type"), Some("application/x-www-form-urlencoded"));
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("outboxd-client:{SECRET}"));
    assert_eq!(fetch.header("authorization"), Some(format!("Basic {basic}").as_str()));
    let form = fetch.body_text();
    assert!(
        form.contains("grant_type=client_credentials") && form.contains("scope=deliveries%3Awrite"),
        "{form}"
    );
    let requests = rx.requests_at("/crm");
    assert!(
        requests
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer tok-1")),
        "every request carries the token: {}",
        requests[0]
    );
    assert!(requests.iter().all(|r| !r.body_text().contains(SECRET)));

    let targets = host.targets().await;
    let crm = target_entry(&targets, "crm");
    assert_eq!(crm["credentials"], json!(["oauth2"]), "{crm}");
    let oauth2 = &crm["oauth2"];
    assert_eq!(oauth2["token_url"], auth.url("").trim_end_matches('/'), "{oauth2}");
    assert_eq!(oauth2["fetches"], 1, "{oauth2}");
    assert_eq!(oauth2["failures"], 0, "{oauth2}");
    assert!(
        oauth2["token_valid_ms"].as_u64().is_some_and(|ms| ms > 3_000_000),
        "{oauth2}"
    );
    let listed = targets.to_string();
    for hidden in [SECRET, "tok-1"] {
        assert!(!listed.contains(hidden), "GET /v1/targets shows {hidden}: {listed}");
        let event = host.get_event(&ids[0]).await.to_string();
        assert!(!event.contains(hidden), "the event shows {hidden}: {event}");
        assert!(!host.stderr_this_run().contains(hidden), "the log shows {hidden}");
    }
    let metrics = reqwest::get(host.url("/metrics"))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("text");
    assert!(!metrics.contains("tok-1") && !metrics.contains(SECRET));

    // A changed `[oauth2]` reloads with the manifest (here at SIGHUP), with an empty cache:
    // the next delivery fetches a token with the new scope.
    host.add_target(
        "crm",
        &oauth2_target(&rx.url("/crm"), &auth.url("/token"))
            .concurrency(16)
            .oauth2("scope", "deliveries:admin"),
    );
    host.sighup();
    host.wait_for_targets(default_timeout(), |ts| {
        target_entry(ts, "crm")["oauth2"]["scope"] == "deliveries:admin"
    })
    .await;
    let id = host.enqueue("order.created", json!({"n": "after reload"})).await;
    host.wait_delivered(&id, &["crm"]).await;
    assert_eq!(
        issued.load(Ordering::SeqCst),
        2,
        "a new token for the new configuration"
    );
    let refetch = auth.requests_at("/token").pop().expect("a second token request");
    assert!(refetch.body_text().contains("scope=deliveries%3Aadmin"), "{refetch}");
    let last = rx.requests_at("/crm").pop().expect("a request");
    assert_eq!(last.header("authorization"), Some("Bearer tok-2"));
}

/// A receiver's 401 drops the token: the request goes once more with a fresh one, and the
/// delivery succeeds in one attempt. A receiver that refuses the fresh one too gets no third
/// request: its 401 is the plugin's answer. A token whose lifetime ran out is fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_refreshes_the_token_once_and_an_expired_token_is_fetched_again() {
    let (auth, issued) = token_endpoint(1).await;
    let rx = Receiver::builder()
        .path("/crm", Behavior::ok().fail_first(1, 401))
        .path("/locked", Behavior::status(401))
        .start()
        .await;
    let mut host = Host::new();
    host.set_env("OUTBOXD_TEST_OAUTH2_SECRET", SECRET);
    host.add_target(
        "crm",
        &oauth2_target(&rx.url("/crm"), &auth.url("/token"))
            .events(&["order.*"])
            .oauth2("auth_style", "body"),
    )
    .add_target(
        "locked",
        &oauth2_target(&rx.url("/locked"), &auth.url("/token")).events(&["audit.*"]),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"n": 1})).await;
    let event = host.wait_delivered(&id, &["crm"]).await;
    assert_eq!(history(&event, "crm").len(), 1, "one attempt: {event}");
    let seen: Vec<_> = rx
        .requests_at("/crm")
        .iter()
        .map(|r| r.header("authorization").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(seen, ["Bearer tok-1", "Bearer tok-2"]);
    assert_eq!(issued.load(Ordering::SeqCst), 2);
    // `auth_style = "body"`: the client's credentials in the form, no Basic header.
    let fetch = &auth.requests_at("/token")[0];
    assert_eq!(fetch.header("authorization"), None);
    assert!(fetch.body_text().contains(&format!("client_secret={SECRET}")));

    let audit = host.enqueue("audit.logged", json!({"n": 2})).await;
    let event = host.wait_settled(&audit, &["locked"]).await;
    assert_eq!(delivery(&event, "locked")["status"], "dead", "{event}");
    assert_eq!(rx.count_at("/locked"), 2, "the first token, then one fresh one");

    // `expires_in = 1`: each token is used for 0.9 s; one second later the next request
    // fetches a new one.
    let before = issued.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = host.enqueue("order.created", json!({"n": 3})).await;
    host.wait_delivered(&id, &["crm"]).await;
    assert_eq!(issued.load(Ordering::SeqCst), before + 1);
    let last = rx.requests_at("/crm").last().cloned().expect("a request");
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer tok-{}", before + 1).as_str())
    );
}

/// A token endpoint that refuses the client: the attempt fails, retryably, with the host's
/// reason (the endpoint's origin, status and error code), the receiver is never called, and
/// the secret is nowhere in what is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_request_fails_the_attempt_with_a_reason_and_no_secret() {
    let auth = Receiver::builder()
        .path(
            "/token",
            Behavior::ok().respond_with(|_| {
                (
                    401,
                    json!({"error": "invalid_client", "error_description": format!("bad secret {SECRET}")}).to_string(),
                )
            }),
        )
        .start()
        .await;
    let rx = Receiver::start().await;
    let mut host = Host::new();
    host.set_env("OUTBOXD_TEST_OAUTH2_SECRET", SECRET);
    host.add_target(
        "crm",
        &oauth2_target(&rx.url("/crm"), &auth.url("/token")).fast_retry(50),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"n": 1})).await;
    let event = host
        .wait_for(&id, default_timeout(), |e| {
            delivery(e, "crm")["attempts"].as_u64().unwrap_or(0) >= 2
        })
        .await;
    let d = delivery(&event, "crm");
    let reason = format!(
        "OAuth2 token endpoint {} answered 401 (invalid_client)",
        auth.url("").trim_end_matches('/')
    );
    assert_eq!(d["last_error"], reason.as_str(), "{event}");
    assert_ne!(d["status"], "dead", "a token failure is retried: {event}");
    assert_eq!(rx.count_at("/crm"), 0);
    let targets = host.targets().await;
    let crm = target_entry(&targets, "crm");
    assert!(crm["oauth2"]["failures"].as_u64().is_some_and(|n| n >= 2), "{crm}");
    assert_eq!(crm["oauth2"]["last_error"], reason.as_str(), "{crm}");
    assert!(!event.to_string().contains(SECRET) && !targets.to_string().contains(SECRET));
    assert!(!host.stderr_this_run().contains(SECRET), "the log shows the secret");
}

/// Mutual TLS: the target with `[tls]` presents its client certificate (from files) and is
/// delivered to; another target of the same receiver, trusting its CA but holding no
/// certificate, is refused at the handshake. The key is shown nowhere; a bad key is a load
/// error naming the manifest and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate_of_its_target_only() {
    let pki = TestPki::new();
    let rx = Receiver::builder().tls(pki.server_config()).start().await;
    assert!(rx.url("/x").starts_with("https://127.0.0.1:"));
    let mut host = Host::new();
    pki.write_to(&host.plugins_dir());
    host.add_target(
        "secure",
        &Target::webhook(&rx.url("/secure"))
            .events(&["order.*"])
            .tls("client_cert", file_ref("client.pem"))
            .tls("client_key", file_ref("client.key"))
            .tls("ca", file_ref("ca.pem")),
    )
    .add_target(
        "nocert",
        &Target::webhook(&rx.url("/nocert"))
            .events(&["order.*"])
            .tls("ca", file_ref("ca.pem"))
            .fast_retry(5),
    )
    .add_target(
        "broken",
        &Target::webhook(&rx.url("/broken"))
            .events(&["never.*"])
            .tls("client_cert", file_ref("client.pem"))
            .tls("client_key", file_ref("ca.pem")),
    );
    host.start().await;

    let id = host.enqueue("order.created", json!({"n": 1})).await;
    host.wait_delivered(&id, &["secure"]).await;
    assert_eq!(rx.count_at("/secure"), 1, "{}", rx.describe());
    let event = host
        .wait_for(&id, default_timeout(), |e| {
            delivery(e, "nocert")["attempts"].as_u64().unwrap_or(0) >= 1
        })
        .await;
    let nocert = delivery(&event, "nocert");
    assert_ne!(nocert["status"], "delivered", "{event}");
    assert!(
        nocert["last_error"].as_str().is_some_and(|e| e.contains("127.0.0.1")),
        "{event}"
    );
    assert_eq!(
        rx.count_at("/nocert"),
        0,
        "no request got through without a certificate"
    );
    assert!(rx.handshake_failures() >= 1);

    let targets = host.targets().await;
    assert_eq!(target_entry(&targets, "secure")["credentials"], json!(["ca", "mtls"]));
    assert_eq!(target_entry(&targets, "nocert")["credentials"], json!(["ca"]));
    let broken = target_entry(&targets, "broken");
    let message = broken["last_reload_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`tls.client_key`"), "{broken}");
    assert!(
        broken["last_reload_error"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("broken.toml")),
        "{broken}"
    );
    let key_line = pki.client_key_pem.lines().nth(1).expect("a line of the key").to_owned();
    assert!(
        !targets.to_string().contains(&key_line),
        "GET /v1/targets shows the key"
    );
    assert!(!host.stderr_this_run().contains(&key_line), "the log shows the key");
}
