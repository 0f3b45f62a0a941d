//! [`RecordedRequest`]: one request as the receiver saw it, and [`Load`]: what it saw over
//! some requests (refusals, peak concurrency, latency percentiles at the receiver).

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method};

use super::Reply;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Position among all requests to this receiver, from 0.
    pub seq: usize,
    /// Position among requests to this path since its behaviour was set, from 0.
    pub index: usize,
    /// HTTP method.
    pub method: Method,
    /// Request path (without query).
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Request headers.
    pub headers: HeaderMap,
    /// Raw request body.
    pub body: Bytes,
    /// When the request arrived (monotonic).
    pub received_at: Instant,
    /// When the request arrived (wall clock).
    pub received_at_wall: SystemTime,
    /// How the receiver decided to answer it.
    pub reply: Reply,
    /// The status code of that answer (after any delay); `None` for a request left hanging.
    pub status: Option<u16>,
    /// Requests at this path that were in service when it arrived, itself not included. A
    /// request is in service from its arrival until the receiver answers it (or its client
    /// gives up) if the receiver makes it wait (a delay, a model's service time, a hang);
    /// one answered at once (a refusal, a plain status) is never in service.
    pub in_progress: usize,
    /// How long the receiver took to answer it, from its arrival to the answer being ready
    /// (after any delay); `None` until then, and for a request left hanging or whose client
    /// gave up first. Read it from [`Receiver::requests`] once the request was answered.
    pub took: Option<Duration>,
}

impl RecordedRequest {
    /// The value of header `name` (case-insensitive) if present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `idempotency-key` header.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.header("idempotency-key")
    }

    /// The `outboxd-event-id` header.
    pub fn event_id(&self) -> Option<&str> {
        self.header("outboxd-event-id")
    }

    /// The `outboxd-attempt` header, parsed.
    pub fn attempt(&self) -> Option<u32> {
        self.header("outboxd-attempt")?.trim().parse().ok()
    }

    /// Whether the receiver answered it with a 2xx.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// Whether the receiver refused it as overloaded: a 429 or a 503.
    pub fn refused(&self) -> bool {
        matches!(self.status, Some(429 | 503))
    }

    /// Whether the receiver made it wait (so that it was in service; see
    /// [`RecordedRequest::in_progress`]).
    pub fn waited(&self) -> bool {
        matches!(self.reply, Reply::Delay(_) | Reply::Hang)
    }

    /// The body as (lossy) UTF-8 text.
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    ///
    /// # Panics
    /// With the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request #{} to {} has a body that is not JSON ({e}): {}",
                self.seq,
                self.path,
                self.body_text()
            )
        })
    }
}

impl fmt::Display for RecordedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = self.body_text();
        let excerpt: String = body.chars().take(160).collect();
        write!(
            f,
            "#{} {} {} key={} event={} attempt={} -> {:?} body={}",
            self.seq,
            self.method,
            self.path,
            self.idempotency_key().unwrap_or("-"),
            self.event_id().unwrap_or("-"),
            self.header("outboxd-attempt").unwrap_or("-"),
            self.reply,
            excerpt
        )
    }
}

/// A summary of what a receiver saw over some requests (usually those of one path, possibly
/// over a span of time: filter [`Receiver::requests_at`] by
/// [`RecordedRequest::received_at`]): how many it served and refused, how many it served at
/// once at most, and how long it took to answer, as the adaptive-delivery tests and the
/// benchmark read it.
#[derive(Clone, Debug, Default)]
pub struct Load {
    /// Requests in all.
    pub requests: usize,
    /// Requests answered with a 2xx.
    pub succeeded: usize,
    /// Requests refused as overloaded (429 or 503, see [`RecordedRequest::refused`]).
    pub refused: usize,
    /// The most requests in service at once: over the requests the receiver made wait, the
    /// largest [`RecordedRequest::in_progress`] plus one (themselves).
    pub peak_concurrency: usize,
    /// The answer times ([`RecordedRequest::took`]) of the succeeded requests, sorted.
    latencies: Vec<Duration>,
}

impl Load {
    /// The summary of `requests`.
    pub fn of<'a>(requests: impl IntoIterator<Item = &'a RecordedRequest>) -> Self {
        let mut load = Load::default();
        for r in requests {
            load.requests += 1;
            load.succeeded += usize::from(r.succeeded());
            load.refused += usize::from(r.refused());
            let at_once = r.in_progress + usize::from(r.waited());
            load.peak_concurrency = load.peak_concurrency.max(at_once);
            if let (true, Some(took)) = (r.succeeded(), r.took) {
                load.latencies.push(took);
            }
        }
        load.latencies.sort_unstable();
        load
    }

    /// The refused share of all requests (0 when there were none).
    pub fn refused_share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.refused as f64 / self.requests as f64
        }
    }

    /// The `q` quantile (0..=1, nearest rank) of the succeeded requests' answer times;
    /// `None` when none was answered.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let rank = (self.latencies.len() as f64 * q.clamp(0.0, 1.0)).ceil() as usize;
        self.latencies.get(rank.max(1) - 1).copied()
    }

    /// How many succeeded requests have an answer time.
    pub fn timed(&self) -> usize {
        self.latencies.len()
    }
}
