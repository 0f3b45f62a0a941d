//! The benchmark's HTTP sink: answers every `POST` on loopback with `200` and an empty body,
//! after reading the whole request body, and counts what it received. Both the raw-ceiling
//! client and outboxd's plugins send to it, so that the two figures share one receiver.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    /// When the first request after [`Sink::arm`] arrived (the wake-up latency probes).
    first_arrival: Mutex<Option<Instant>>,
    armed: std::sync::atomic::AtomicBool,
}

/// A running sink. Counting is cheap (one relaxed atomic per request), so the sink costs
/// the same whoever sends to it.
#[derive(Clone)]
pub struct Sink {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Sink {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let app = Router::new()
            .route("/{*path}", post(receive))
            .with_state(Arc::clone(&counters));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bench: sink failed: {e}");
            }
        });
        Ok(Self { addr, counters })
    }

    /// `127.0.0.1:<port>`, as an `allowed_hosts` entry.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// Forgets the last first arrival: the next request's time is kept.
    pub fn arm(&self) {
        *self.counters.first_arrival.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.counters.armed.store(true, Ordering::SeqCst);
    }

    /// When the first request since [`Sink::arm`] arrived, if one has.
    pub fn first_arrival(&self) -> Option<Instant> {
        *self.counters.first_arrival.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until at least `total` requests have arrived, checking every millisecond;
    /// returns when they had (to within that millisecond), or `None` after `timeout`.
    pub async fn wait_for(&self, total: u64, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.requests() >= total {
                return Some(Instant::now());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn receive(State(counters): State<Arc<Counters>>, _body: Bytes) -> StatusCode {
    if counters.armed.swap(false, Ordering::SeqCst) {
        *counters.first_arrival.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }
    counters.requests.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}
