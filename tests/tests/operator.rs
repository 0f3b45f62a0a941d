//! The operator's view, against the real binary: `GET /metrics` after a sample event (parsed
//! by Python's `prometheus_client` OpenMetrics parser), API tokens and their scopes, the
//! refusal of an open API on a non-loopback address, the OpenAPI document's routes, and a
//! schemathesis run against the document.
//!
//! The Python tools come from `OUTBOXD_TEST_PYTHON` (a venv's `python`, set by
//! `cargo xtask test`, which installs `tests/tools/requirements.txt` into it).

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use testkit::{Behavior, Host, default_timeout, target_count};

const INGEST: &str = "ingest-token-0123456789";
const READ: &str = "read-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

fn python() -> PathBuf {
    let python = std::env::var_os("OUTBOXD_TEST_PYTHON").unwrap_or_else(|| {
        panic!(
            "OUTBOXD_TEST_PYTHON is not set: run the tests through `cargo xtask test`, which \
             installs tests/tools/requirements.txt (prometheus_client, schemathesis) into a venv"
        )
    });
    PathBuf::from(python)
}

fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools")
}

/// The three tokens (ingest, read, admin) and `[api] open`.
fn add_tokens(host: &mut Host, open: &[&str]) {
    host.set_api_open(open)
        .add_api_token("producer", INGEST, &["ingest"])
        .add_api_token("grafana", READ, &["read"])
        .add_api_token("ops", ADMIN, &["admin"]);
}

/// (status, JSON body or null, content type).
async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value, String) {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = res.status().as_u16();
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null), ctype)
}

/// `(name, labels, value)` of every sample, as Python's OpenMetrics parser reads them.
fn parse_openmetrics(text: &str) -> Vec<(String, serde_json::Map<String, Value>, f64)> {
    let mut child = Command::new(python())
        .arg(tools_dir().join("parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tests/tools/parse_metrics.py");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics:\n{}\n--- output ---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_owned(),
                s[1].as_object().unwrap().clone(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect()
}

fn sample(
    samples: &[(String, serde_json::Map<String, Value>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).and_then(Value::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_sample_event_show_the_attempts_and_no_backlog() {
    let (_rx, mut host) = testkit::demo(Behavior::ok()).await;
    host.start().await;
    let (status, body) = host
        .post_event(&json!({"type": "order.created", "payload": {"order_id": 1001}}))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    host.wait_delivered(&id, &["crm", "analytics", "billing"]).await;

    let (status, _, ctype) = call("GET", &host.url("/metrics"), None, None).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let text = reqwest::get(host.url("/metrics")).await.unwrap().text().await.unwrap();
    let samples = parse_openmetrics(&text);
    for target in ["crm", "analytics", "billing"] {
        let t = [("target", target)];
        assert_eq!(
            sample(
                &samples,
                "outboxd_attempts_total",
                &[("target", target), ("outcome", "delivered")]
            ),
            Some(1.0),
            "one delivered attempt for {target}:\n{text}"
        );
        assert_eq!(
            sample(&samples, "outboxd_attempt_duration_seconds_count", &t),
            Some(1.0),
            "{text}"
        );
        for status in ["pending", "in_flight", "dead", "paused"] {
            assert_eq!(
                sample(
                    &samples,
                    "outboxd_deliveries",
                    &[("target", target), ("status", status)]
                ),
                Some(0.0),
                "no {status} backlog for {target}:\n{text}"
            );
        }
        assert_eq!(
            sample(
                &samples,
                "outboxd_deliveries",
                &[("target", target), ("status", "delivered")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&samples, "outboxd_delivery_lag_seconds", &t),
            Some(0.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &samples,
                "outboxd_breaker_state",
                &[("target", target), ("state", "closed")]
            ),
            Some(1.0),
            "{text}"
        );
    }
    assert_eq!(
        sample(&samples, "outboxd_events_ingested_total", &[("result", "accepted")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "outboxd_ingest_request_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "outboxd_plugin_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    // The test hosts share one compile cache, so whether this host compiled the file or found
    // it there depends on which test ran first; either way it is loaded once.
    let loads: f64 = ["compile", "cache"]
        .iter()
        .filter_map(|from| {
            sample(
                &samples,
                "outboxd_plugin_load_duration_seconds_count",
                &[("from", from)],
            )
        })
        .sum();
    assert_eq!(loads, 1.0, "three targets share one plugin file: loaded once\n{text}");
    assert_eq!(sample(&samples, "outboxd_targets_loaded", &[]), Some(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_scopes_guard_the_api() {
    let (_rx, mut host) = testkit::demo(Behavior::status(422)).await;
    add_tokens(&mut host, &["/healthz"]);
    host.start().await;
    let event = json!({"type": "order.created", "payload": {"n": 1}});

    // No token: 401, JSON, nothing stored.
    let (status, body, _) = call("POST", &host.url("/v1/events"), None, Some(event.clone())).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let (status, body, _) = call(
        "POST",
        &host.url("/v1/events"),
        Some("not-a-token-at-all"),
        Some(event.clone()),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unknown token");
    assert_eq!(host.count_rows("events"), 0, "refused requests store nothing");

    // The ingest token ingests, and may do nothing else.
    let (status, body, _) = call("POST", &host.url("/v1/events"), Some(INGEST), Some(event.clone())).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let (status, body, _) = call(
        "POST",
        &host.url("/v1/deliveries/replay"),
        Some(INGEST),
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`admin`"), "{body}");
    let (status, body, _) = call("GET", &host.url("/v1/targets"), Some(INGEST), None).await;
    assert_eq!(status, 403, "{body}");

    // The read token reads, and may not pause.
    let (status, body, _) = call("GET", &host.url(&format!("/v1/events/{id}")), Some(READ), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body, _) = call("POST", &host.url("/v1/targets/crm/pause"), Some(READ), None).await;
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = call("POST", &host.url("/v1/events"), Some(READ), Some(event.clone())).await;
    assert_eq!(status, 403);

    // /healthz is open by configuration; /metrics is not.
    let (status, body, _) = call("GET", &host.url("/healthz"), None, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = call("GET", &host.url("/metrics"), None, None).await;
    assert_eq!(status, 401);
    let (status, _, _) = call("GET", &host.url("/metrics"), Some(READ), None).await;
    assert_eq!(status, 200);

    // The admin token does everything: the billing delivery died (422); replay it.
    host.set_api_token(ADMIN);
    host.wait_for_targets(default_timeout(), |targets| {
        target_count(targets, "billing", "dead") == 1
    })
    .await;
    let (status, body, _) = call("POST", &host.url("/v1/deliveries/replay"), Some(ADMIN), Some(json!({}))).await;
    assert_eq!(
        (status, &body["status"], &body["total"]),
        (202, &json!("running"), &json!(1)),
        "{body}"
    );
    let job = host
        .wait_for_replay(body["id"].as_i64().unwrap(), default_timeout())
        .await;
    assert_eq!(job["replayed"], 1, "{job}");
    // Reading a job takes the `admin` scope too.
    let path = format!("/v1/replays/{}", job["id"]);
    let (status, body, _) = call("GET", &host.url(&path), Some(READ), None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = call("POST", &host.url("/v1/targets/crm/pause"), Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["paused"], true);

    // The dashboard and the OpenAPI document are served without a token (they hold no data).
    let (status, _, ctype) = call("GET", &host.url("/"), None, None).await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    let (status, doc, _) = call("GET", &host.url("/v1/openapi.json"), None, None).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/v1/events"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_api_on_a_public_address_is_refused_at_start() {
    let mut host = Host::new();
    host.set_config("listen", "0.0.0.0:0");
    let err = host
        .try_start()
        .await
        .expect_err("serve must refuse a non-loopback listen without tokens");
    let text = err.to_string();
    assert!(text.contains("no API tokens are configured"), "{text}");
    assert!(text.contains("outboxd.toml"), "the message names the file: {text}");

    // Explicitly allowed: it starts.
    let mut host = Host::new();
    host.set_config("listen", "0.0.0.0:0");
    host.append_config_raw("[api]\nallow_unauthenticated = true\n");
    host.try_start().await.expect("allowed explicitly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let mut host = Host::new();
    host.start().await;
    let (status, doc, _) = call("GET", &host.url("/v1/openapi.json"), None, None).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap_or_default().starts_with("3.1"), "{doc}");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9, "{paths:?}");
    for (path, item) in paths {
        let concrete = path
            .replace("{id}", "01a2200a-c31e-724e-b564-e1df5db6fbb0")
            .replace("{name}", "crm");
        for method in item.as_object().unwrap().keys() {
            let body = (method == "post").then(|| json!({"type": "order.created", "payload": {}}));
            let body = if path.ends_with("/replay") {
                Some(json!({}))
            } else {
                body
            };
            let (status, answer, _) = call(&method.to_uppercase(), &host.url(&concrete), None, body).await;
            let documented = item[method]["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path} answered {status} ({answer}), not in the document"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_response_outside_the_document() {
    let (_rx, mut host) = testkit::demo(Behavior::status(422)).await;
    add_tokens(&mut host, &[]);
    host.start().await;
    let python = python();
    let st = python.with_file_name("schemathesis");
    let base = host.url("");
    let base = base.trim_end_matches('/');
    let out = tokio::process::Command::new(&st)
        .args(["run", &format!("{base}/v1/openapi.json"), "--url", base])
        .args([
            // Every check: also that what the document says is valid is accepted
            // (positive_data_acceptance) and what it says is invalid is refused.
            "--checks",
            "all",
            "--max-examples",
            "40",
            "--request-timeout",
            "10",
            "--seed",
            "1",
            "--no-color",
            "-H",
            &format!("Authorization: Bearer {ADMIN}"),
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", st.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "schemathesis found problems ({}):\n{stdout}\n{stderr}\n--- outboxd ---\n{}",
        out.status,
        host.stderr_tail(40)
    );
    eprintln!("{stdout}");
}
