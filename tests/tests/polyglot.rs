//! The non-Rust adapters against the real host: `crm-js.wasm` (JavaScript,
//! componentize-js) and `analytics-py.wasm` (Python, componentize-py), each
//! delivering, retrying a 500 with the same idempotency key, and going dead on
//! a 400.
//!
//! The components come from `OUTBOXD_POLYGLOT_DIR` if set (as `cargo xtask
//! test` does), else from running `plugins/build-polyglot.sh` once per test
//! process (which needs node + npm and python3, and installs the pinned
//! toolchains into the repo on first use).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use testkit::{Behavior, Host, Receiver, Target, artifacts, delivery, history};

/// One component under three targets, at `<rx>/ok`, `<rx>/flaky` (500 once) and
/// `<rx>/reject` (always 400).
struct Scenario {
    host: Host,
    rx: Receiver,
    id: String,
    event: Value,
}

const TARGETS: [&str; 3] = ["ok", "flaky", "reject"];

/// Starts a host whose targets `ok`, `flaky` and `reject` run `component`
/// with `config` plus `url`, posts one `order.created` event with `payload`
/// and waits until all three deliveries are settled.
async fn run_scenario(component: &str, config: &[(&str, &str)], payload: Value) -> Scenario {
    let src = artifacts::polyglot_dir().await.join(component);
    assert!(src.is_file(), "{} was not built", src.display());
    let rx = scripted_receiver().await;
    let mut host = Host::new();
    std::fs::copy(&src, host.plugins_dir().join(component)).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    for name in TARGETS {
        let mut target = Target::new(component)
            .events(&["order.*"])
            .allow(&rx.authority())
            .fast_retry(5)
            .config("url", rx.url(&format!("/{name}/")));
        for (key, value) in config {
            target = target.config(key, *value);
        }
        // The component is copied above: it is not one of the Rust plugins
        // the harness knows, so no plugin file is named here.
        host.add_target_raw(name, "", &target.to_toml());
    }
    host.start().await;
    let id = host.enqueue("order.created", payload).await;
    let event = host.wait_settled(&id, &TARGETS).await;
    Scenario { host, rx, id, event }
}

/// A receiver scripted per target prefix: the adapters append their endpoint
/// (`contacts`, `track`) to the configured URL.
async fn scripted_receiver() -> Receiver {
    let mut builder = Receiver::builder();
    for endpoint in ["contacts", "track"] {
        builder = builder
            .path(&format!("/ok/{endpoint}"), Behavior::ok())
            .path(&format!("/flaky/{endpoint}"), Behavior::ok().fail_first(1, 500))
            .path(&format!("/reject/{endpoint}"), Behavior::status(400));
    }
    builder.start().await
}

impl Scenario {
    /// The idempotency key of the delivery to `target`.
    fn key(&self, target: &str) -> String {
        delivery(&self.event, target)["idempotency_key"]
            .as_str()
            .unwrap_or_else(|| panic!("no idempotency_key: {:#}", self.event))
            .to_owned()
    }

    /// Delivered at once, retried once after a 500 with the same key, dead on 400.
    fn assert_outcomes(&self, endpoint: &str) {
        let (event, rx) = (&self.event, &self.rx);

        let ok = delivery(event, "ok");
        assert_eq!(ok["status"], "delivered", "{ok:#}");
        assert_eq!(ok["attempts"], 1, "{ok:#}");
        assert_eq!(rx.count_at(&format!("/ok/{endpoint}")), 1, "{}", rx.describe());

        let flaky = delivery(event, "flaky");
        assert_eq!(flaky["status"], "delivered", "{flaky:#}");
        assert_eq!(flaky["attempts"], 2, "{flaky:#}");
        let hist = history(event, "flaky");
        let outcomes: Vec<&str> = hist.iter().filter_map(|h| h["outcome"].as_str()).collect();
        assert_eq!(outcomes, ["retry", "delivered"], "{flaky:#}");
        let first_error = hist[0]["error"].as_str().unwrap_or_default();
        assert!(first_error.contains("HTTP 500"), "{flaky:#}");
        let reqs = rx.requests_at(&format!("/flaky/{endpoint}"));
        assert_eq!(reqs.len(), 2, "a 500 and a 200:\n{}", rx.describe());
        let key = self.key("flaky");
        for r in &reqs {
            assert_eq!(r.idempotency_key(), Some(key.as_str()), "{r}");
        }
        assert_eq!(reqs[0].body, reqs[1].body, "a retry sends the same body");

        let reject = delivery(event, "reject");
        assert_eq!(reject["status"], "dead", "{reject:#}");
        assert_eq!(reject["attempts"], 1, "{reject:#}");
        let last_error = reject["last_error"].as_str().unwrap_or_default();
        assert!(last_error.contains("HTTP 400"), "{reject:#}");
        assert_eq!(history(event, "reject")[0]["outcome"], "permanent", "{reject:#}");
        assert_eq!(rx.count_at(&format!("/reject/{endpoint}")), 1, "{}", rx.describe());

        let keys = [self.key("ok"), key, self.key("reject")];
        assert!(
            keys[0] != keys[1] && keys[1] != keys[2],
            "keys differ per target: {keys:?}"
        );
    }

    /// The adapter logged one info line per attempt through the log import.
    fn assert_logged(&self, prefix: &str) {
        let stderr = self.host.stderr();
        for line in [
            format!("{prefix}: event {} (order.created) attempt 1: delivered", self.id),
            format!(
                "{prefix}: event {} (order.created) attempt 1: will retry: HTTP 500",
                self.id
            ),
            format!("{prefix}: event {} (order.created) attempt 2: delivered", self.id),
            format!(
                "{prefix}: event {} (order.created) attempt 1: failed permanently: HTTP 400",
                self.id
            ),
        ] {
            assert!(stderr.contains(&line), "no log line {line:?} in:\n{stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_crm_adapter_upserts_contacts() {
    let payload = json!({
        "id": "ord_1001",
        "total": 42.5,
        "currency": "EUR",
        "customer": {"id": 7, "email": " Ada@Example.com ", "name": "Ada Lovelace"}
    });
    let s = run_scenario("crm-js.wasm", &[("api_key", "sk_test_123")], payload).await;
    s.assert_outcomes("contacts");
    s.assert_logged("crm");

    let req = &s.rx.requests_at("/ok/contacts")[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("content-type"), Some("application/json"), "{req}");
    assert_eq!(req.header("authorization"), Some("Bearer sk_test_123"), "{req}");
    assert_eq!(req.idempotency_key(), Some(s.key("ok").as_str()), "{req}");
    assert_eq!(
        req.json(),
        json!({
            "email": "ada@example.com",
            "name": "Ada Lovelace",
            "external_id": "7",
            "last_order": {
                "id": "ord_1001",
                "status": "created",
                "total": 42.5,
                "currency": "EUR",
                "at": s.event["created_at"],
            },
            "source": {"system": "outboxd", "event_id": s.id, "event_type": "order.created"},
        }),
        "{req}"
    );

    // A payload without the contact key is dead before any request is made.
    let before = s.rx.total();
    let id = s
        .host
        .enqueue("order.paid", json!({"id": "ord_1002", "customer": {"name": "No Mail"}}))
        .await;
    let event = s.host.wait_settled(&id, &TARGETS).await;
    for target in TARGETS {
        let d = delivery(&event, target);
        assert_eq!(d["status"], "dead", "{d:#}");
        assert_eq!(d["attempts"], 1, "{d:#}");
        let reason = d["last_error"].as_str().unwrap_or_default();
        assert!(reason.contains("no customer e-mail (`customer.email`)"), "{d:#}");
    }
    assert_eq!(
        s.rx.total(),
        before,
        "no request for an invalid payload:\n{}",
        s.rx.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_analytics_adapter_tracks_events() {
    let payload = json!({"id": "ord_2001", "total": 19.99, "items": [{"sku": "A-1", "qty": 2}]});
    let s = run_scenario("analytics-py.wasm", &[("write_key", "wk_test")], payload.clone()).await;
    s.assert_outcomes("track");
    s.assert_logged("analytics");

    let req = &s.rx.requests_at("/ok/track")[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("content-type"), Some("application/json"), "{req}");
    let basic = format!("Basic {}", STANDARD.encode("wk_test:"));
    assert_eq!(req.header("authorization"), Some(basic.as_str()), "{req}");
    let key = s.key("ok");
    assert_eq!(req.idempotency_key(), Some(key.as_str()), "{req}");
    assert_eq!(
        req.json(),
        json!({
            "event": "order.created",
            "properties": payload,
            "message_id": key,
            "timestamp": s.event["created_at"],
        }),
        "{req}"
    );
}
