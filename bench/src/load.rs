//! Load generators: the raw-ceiling client loop (outboxd's own HTTP client stack posting the
//! webhook body straight to the sink), and producers posting events to outboxd's API, one per
//! request or in arrays, with latency percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The event payload every benchmark event carries (about 200 bytes, the shape of the
/// README's examples; the JavaScript adapter needs `customer.email`).
pub fn payload(i: u64) -> Value {
    json!({
        "id": format!("ord_{i}"),
        "total": 42.5,
        "currency": "EUR",
        "customer": {"id": 7, "email": "ada@example.com", "name": "Ada Lovelace"},
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]
    })
}

/// One event of type `event_type` for `POST /v1/events`.
/// Events of the routed mode ([`crate::service::ROUTED`]) carry a priority: 0, 30 or 60.
pub fn event(event_type: &str, i: u64) -> Value {
    if event_type == crate::service::ROUTED {
        json!({"type": event_type, "payload": payload(i), "priority": i % 3 * 30})
    } else {
        json!({"type": event_type, "payload": payload(i)})
    }
}

/// The body the webhook plugin sends for [`event`]: `{"type", "timestamp", "data"}`.
pub fn webhook_body(i: u64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "type": "order.created",
        "timestamp": "2026-11-28T01:02:03.456Z",
        "data": payload(i),
    }))
    .expect("serializable")
}

/// What a timed load produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    pub count: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub errors: u64,
}

impl Throughput {
    pub fn new(count: u64, took: Duration, errors: u64) -> Self {
        let seconds = took.as_secs_f64();
        Self {
            count,
            seconds,
            per_second: count as f64 / seconds.max(1e-9),
            errors,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            samples
                .get(((samples.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        Self {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// The raw ceiling: `concurrency` tasks POSTing the webhook body (with the webhook's
/// headers) to the sink through `client` until `total` requests are done.
pub async fn ceiling(client: reqwest::Client, urls: Vec<String>, concurrency: usize, total: u64) -> Throughput {
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let body = axum::body::Bytes::from(webhook_body(1));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let (client, next, errors, body) = (client.clone(), Arc::clone(&next), Arc::clone(&errors), body.clone());
        let url = urls[t % urls.len()].clone();
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let key = "01a2200a-c31e-724e-b564-e1df5db6fbb0.hook-a";
                let sent = client
                    .post(&url)
                    .timeout(Duration::from_secs(10))
                    .header("content-type", "application/json")
                    .header("idempotency-key", key)
                    .header("webhook-id", key)
                    .header("webhook-timestamp", "1795827723")
                    .header("outboxd-event-id", "01a2200a-c31e-724e-b564-e1df5db6fbb0")
                    .header("outboxd-event-type", "order.created")
                    .header("outboxd-attempt", "1")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match sent {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Throughput::new(total, started.elapsed(), errors.load(Ordering::Relaxed))
}

/// Producers: `connections` tasks posting `total` events of `event_type` to
/// `POST /v1/events`, `per_request` events per request (1: single objects, otherwise arrays),
/// numbered from `first`; the connections take the hosts of `bases` in turn. Returns the
/// events/s and the latency of each request.
pub async fn ingest(
    client: reqwest::Client,
    bases: &[String],
    event_type: &str,
    connections: usize,
    total: u64,
    per_request: u64,
    first: u64,
) -> (Throughput, Latency) {
    let requests = total.div_ceil(per_request);
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let (client, next, errors) = (client.clone(), Arc::clone(&next), Arc::clone(&errors));
        let url = format!("{}/v1/events", bases[c % bases.len()]);
        let event_type = event_type.to_owned();
        tasks.push(tokio::spawn(async move {
            let event = |i| event(&event_type, i);
            let mut samples = Vec::new();
            loop {
                let r = next.fetch_add(1, Ordering::Relaxed);
                if r >= requests {
                    break;
                }
                let lo = r * per_request;
                let hi = (lo + per_request).min(total);
                let body = if per_request == 1 {
                    serde_json::to_vec(&event(first + lo))
                } else {
                    serde_json::to_vec(&(lo..hi).map(|i| event(first + i)).collect::<Vec<_>>())
                }
                .expect("serializable");
                let t0 = Instant::now();
                let ok = post_accepted(&client, &url, body).await;
                samples.push(t0.elapsed());
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            samples
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        samples.extend(t.await.unwrap_or_default());
    }
    (
        Throughput::new(total, started.elapsed(), errors.load(Ordering::Relaxed)),
        Latency::of(samples),
    )
}

/// Posts a JSON `body` to `url`; whether it was accepted (`202`, the whole answer read).
async fn post_accepted(client: &reqwest::Client, url: &str, body: Vec<u8>) -> bool {
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => resp.status().as_u16() == 202 && resp.bytes().await.is_ok(),
        Err(_) => false,
    }
}

/// Wake-up latency with idle hosts: `probes` events of `event_type`, numbered from `first`,
/// posted one at a time to the hosts of `bases` in turn, each once the `per_event` deliveries
/// of the one before have reached `sink` and a pause of 20 to 80 ms has let the lanes fall
/// idle. Each sample is the time from the `202` to the first request of that event at the
/// sink (0 when the request came first: the lanes are woken at the commit, before the answer
/// is written). Returns the latencies and how many events did not arrive within 10 s.
pub async fn wake_latency(
    client: reqwest::Client,
    bases: &[String],
    sink: &crate::sink::Sink,
    event_type: &str,
    per_event: u64,
    probes: u64,
    first: u64,
) -> (Latency, u64) {
    let mut samples = Vec::with_capacity(probes as usize);
    let mut lost = 0;
    let mut jitter: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..probes {
        jitter ^= jitter << 13;
        jitter ^= jitter >> 7;
        jitter ^= jitter << 17;
        tokio::time::sleep(Duration::from_millis(20 + jitter % 60)).await;
        let before = sink.requests();
        sink.arm();
        let url = format!("{}/v1/events", bases[i as usize % bases.len()]);
        let body = serde_json::to_vec(&event(event_type, first + i)).expect("serializable");
        let accepted = post_accepted(&client, &url, body).await;
        let answered = Instant::now();
        if !accepted
            || sink
                .wait_for(before + per_event, Duration::from_secs(10))
                .await
                .is_none()
        {
            lost += 1;
            continue;
        }
        let arrived = sink.first_arrival().unwrap_or(answered);
        samples.push(arrived.saturating_duration_since(answered));
    }
    (Latency::of(samples), lost)
}
