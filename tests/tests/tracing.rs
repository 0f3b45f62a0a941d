//! OpenTelemetry (issue 25, point 2): with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local
//! collector stand-in (a receiver that keeps what is posted to `/v1/traces`, as OTLP/JSON),
//! the spans of ingest, the attempt and its outbound request arrive, under the producer's
//! trace; the receiver's request carries a child `traceparent` of that trace; log lines inside
//! an attempt carry the trace id. Without the variables (or with `OTEL_TRACES_EXPORTER=none`)
//! nothing is exported, and only a traced event's requests carry a `traceparent`: a producer's
//! trace still reaches the receiver, from the HTTP header or from a source's column.

use std::collections::HashMap;

use serde_json::{Value, json};
use testkit::sources::sqlite_outbox_with;
use testkit::{Behavior, Host, Receiver, Target, default_timeout, eventually_within, source_entry};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PRODUCER_SPAN: &str = "00f067aa0ba902b7";

fn producer_traceparent() -> String {
    format!("00-{TRACE}-{PRODUCER_SPAN}-01")
}

/// One exported span, as OTLP/JSON writes it.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attributes: HashMap<String, Value>,
}

/// Every span the collector stand-in received.
fn collected(collector: &Receiver) -> Vec<Span> {
    let mut out = Vec::new();
    for request in collector.requests_at("/v1/traces") {
        let body = request.json();
        for rs in body["resourceSpans"].as_array().into_iter().flatten() {
            let service = rs["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .map(|a| a["value"]["stringValue"].clone());
            assert_eq!(service, Some(json!("outboxd")), "the resource names the service: {rs}");
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let attributes = s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            // OTLP/JSON writes 64-bit integers as strings (`{"intValue": "500"}`).
                            let value = match a["value"].as_object().and_then(|v| v.iter().next()) {
                                Some((kind, v)) if kind == "intValue" => v
                                    .as_str()
                                    .and_then(|n| n.parse::<i64>().ok())
                                    .map_or(Value::Null, Value::from),
                                Some((_, v)) => v.clone(),
                                None => Value::Null,
                            };
                            (a["key"].as_str().unwrap_or_default().to_owned(), value)
                        })
                        .collect();
                    out.push(Span {
                        name: s["name"].as_str().unwrap_or_default().to_owned(),
                        trace_id: s["traceId"].as_str().unwrap_or_default().to_owned(),
                        span_id: s["spanId"].as_str().unwrap_or_default().to_owned(),
                        parent: s["parentSpanId"].as_str().unwrap_or_default().to_owned(),
                        attributes,
                    });
                }
            }
        }
    }
    out
}

/// The `traceparent` a receiver's request carried: (trace id, parent span id).
fn traceparent_of(request: &testkit::RecordedRequest) -> (String, String) {
    let value = request
        .header("traceparent")
        .unwrap_or_else(|| panic!("the request carries no traceparent: {request}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00", "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// Posts one `order.created` event with payload `{"n": n}` and the given `traceparent`
/// header; asserts the 202 and returns the event's id.
async fn post_traced(host: &Host, n: u32, traceparent: &str) -> String {
    let (status, body) = host
        .post_event_with_headers(
            &json!({"type": "order.created", "payload": {"n": n}}),
            &[("traceparent", traceparent)],
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

fn collector_env(host: &mut Host, collector: &Receiver) {
    host.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url("").trim_end_matches('/'));
    host.set_env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
    // The batch processor sends every 100 ms instead of every 5 s.
    host.set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_and_the_receiver_joins_the_producers_trace() {
    let collector = Receiver::builder().path("/v1/traces", Behavior::ok()).start().await;
    // The first request fails: the plugin's log line about it is inside the attempt's span.
    let rx = Receiver::builder()
        .path("/crm", Behavior::ok().fail_first(1, 500))
        .start()
        .await;
    let mut host = Host::new();
    collector_env(&mut host, &collector);
    host.add_target("crm", &Target::webhook(&rx.url("/crm")).fast_retry(5));
    host.start().await;

    let id = post_traced(&host, 1, &producer_traceparent()).await;
    host.wait_delivered(&id, &["crm"]).await;

    // The receiver's requests are children of the producer's trace, each with its own parent.
    let requests = rx.requests_at("/crm");
    assert_eq!(requests.len(), 2, "one failed attempt, one delivered");
    let handed: Vec<(String, String)> = requests.iter().map(traceparent_of).collect();
    for (trace, parent) in &handed {
        assert_eq!(trace, TRACE, "the receiver's trace is the producer's");
        assert_ne!(parent, PRODUCER_SPAN, "a child, not the producer's own span");
    }
    assert_ne!(handed[0].1, handed[1].1, "each request is a span of its own");
    let event = host.get_event(&id).await;
    let stored = event["traceparent"].as_str().unwrap_or_default();
    assert!(stored.starts_with(&format!("00-{TRACE}-")), "{event:#}");

    // The spans arrive: ingest under the producer's span, each attempt under the ingest, each
    // request under its attempt, and the receiver's traceparent names the request's span.
    let wanted = |spans: &[Span]| {
        spans
            .iter()
            .filter(|s| s.trace_id == TRACE && s.name == "request")
            .count()
            >= 2
    };
    eventually_within(default_timeout(), "the collector receives the request spans", || {
        let spans = collected(&collector);
        (wanted(&spans), format!("{spans:#?}"))
    })
    .await;
    let spans: Vec<Span> = collected(&collector)
        .into_iter()
        .filter(|s| s.trace_id == TRACE)
        .collect();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).cloned().collect::<Vec<_>>();
    let ingest = named("ingest");
    assert_eq!(ingest.len(), 1, "{spans:#?}");
    assert_eq!(
        ingest[0].parent, PRODUCER_SPAN,
        "the ingest span's parent is the producer's span"
    );
    assert_eq!(
        ingest[0].attributes.get("origin"),
        Some(&json!("api")),
        "{:?}",
        ingest[0]
    );
    let attempts = named("attempt");
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for attempt in &attempts {
        assert_eq!(attempt.parent, ingest[0].span_id, "an attempt is a child of the ingest");
        assert_eq!(attempt.attributes.get("target"), Some(&json!("crm")), "{attempt:?}");
        assert_eq!(attempt.attributes.get("event_id"), Some(&json!(id)), "{attempt:?}");
        assert_eq!(attempt.attributes.get("events"), Some(&json!(1)), "{attempt:?}");
    }
    let outcomes: Vec<&Value> = attempts.iter().filter_map(|a| a.attributes.get("outcome")).collect();
    assert!(
        outcomes.contains(&&json!("retry")) && outcomes.contains(&&json!("delivered")),
        "{attempts:#?}"
    );
    let requests = named("request");
    for (_, parent) in &handed {
        let request = requests
            .iter()
            .find(|r| &r.span_id == parent)
            .unwrap_or_else(|| panic!("no request span {parent} for the receiver's traceparent: {spans:#?}"));
        assert!(
            attempts.iter().any(|a| a.span_id == request.parent),
            "a request is a child of an attempt: {request:?}"
        );
        assert_eq!(
            request.attributes.get("http.request.method"),
            Some(&json!("POST")),
            "{request:?}"
        );
    }
    let statuses: Vec<&Value> = requests
        .iter()
        .filter_map(|r| r.attributes.get("http.response.status_code"))
        .collect();
    assert!(
        statuses.contains(&&json!(500)) && statuses.contains(&&json!(200)),
        "{requests:#?}"
    );

    // The plugin's log line about the failed attempt carries the trace id.
    let log = host.stderr_this_run();
    let line = log
        .lines()
        .find(|l| l.contains("will retry"))
        .unwrap_or_else(|| panic!("no log line of the failed attempt:\n{log}"));
    assert!(line.contains(&format!("trace_id={TRACE}")), "{line}");

    // An event without a traceparent starts a trace of its own at its ingest span, which its
    // receiver joins.
    let second = host.enqueue("order.created", json!({"n": 2})).await;
    host.wait_delivered(&second, &["crm"]).await;
    let last = rx.requests_at("/crm").pop().expect("a request");
    let (trace, parent) = traceparent_of(&last);
    assert_ne!(trace, TRACE);
    eventually_within(default_timeout(), "the second event's spans arrive", || {
        let spans = collected(&collector);
        let ok = spans
            .iter()
            .any(|s| s.name == "ingest" && s.trace_id == trace && s.parent.is_empty())
            && spans.iter().any(|s| s.name == "request" && s.span_id == parent);
        (ok, format!("{spans:#?}"))
    })
    .await;
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_export_only_a_producers_trace_is_handed_on() {
    let collector = Receiver::builder().path("/v1/traces", Behavior::ok()).start().await;
    let rx = Receiver::start().await;
    let mut host = Host::new();
    // An endpoint, but export turned off: nothing may reach it.
    collector_env(&mut host, &collector);
    host.set_env("OTEL_TRACES_EXPORTER", "none");
    host.add_target("crm", &Target::webhook(&rx.url("/crm")));
    let (_, app) = sqlite_outbox_with(&mut host, "trace", "traceparent");
    host.start().await;

    let untraced = host.enqueue("order.created", json!({"n": 1})).await;
    let traced = post_traced(&host, 2, &producer_traceparent()).await;
    // An invalid header is ignored: the event is accepted, untraced.
    let invalid = post_traced(&host, 3, "00-not-a-trace-01").await;
    // Rows of the application's outbox: one with the producer's trace, one without.
    let row_trace = "0af7651916cd43dd8448eb211c80319c";
    app.execute_batch(&format!(
        "INSERT INTO outbox (id, event_type, payload, trace) VALUES (1, 'order.paid', '{{\"row\":1}}', '00-{row_trace}-b7ad6b7169203331-01');
         INSERT INTO outbox (id, event_type, payload) VALUES (2, 'order.paid', '{{\"row\":2}}');"
    ))
    .expect("rows");
    for id in [&untraced, &traced, &invalid] {
        host.wait_delivered(id, &["crm"]).await;
    }
    rx.wait_for("/crm", 5, default_timeout())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let sources = host
        .wait_for_sources(default_timeout(), |s| source_entry(s, "shop")["rows_relayed"] == 2)
        .await;
    assert_eq!(source_entry(&sources, "shop")["rows_failed"], 0, "{sources:#}");

    let requests = rx.requests_at("/crm");
    let by_body = |needle: &str| {
        requests
            .iter()
            .find(|r| r.body_text().contains(needle))
            .unwrap_or_else(|| panic!("no request with {needle}"))
    };
    for needle in ["\"n\":1", "\"n\":3", "\"row\":2"] {
        assert_eq!(
            by_body(needle).header("traceparent"),
            None,
            "an untraced event hands on no trace"
        );
    }
    let (trace, parent) = traceparent_of(by_body("\"n\":2"));
    assert_eq!((trace.as_str(), parent == PRODUCER_SPAN), (TRACE, false));
    let (trace, parent) = traceparent_of(by_body("\"row\":1"));
    assert_eq!((trace.as_str(), parent == "b7ad6b7169203331"), (row_trace, false));
    assert!(host.get_event(&untraced).await["traceparent"].is_null());
    assert_eq!(
        host.get_event(&traced).await["traceparent"],
        json!(producer_traceparent()),
        "without export the producer's own context is kept"
    );

    // A stop flushes what an exporter still holds: had anything been exported, it is there now.
    host.stop().await;
    assert!(
        collector.requests().is_empty(),
        "OTEL_TRACES_EXPORTER=none exports nothing"
    );
}
