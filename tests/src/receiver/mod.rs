//! A scriptable, recording HTTP receiver that plays "the external system".
//!
//! [`Receiver`] is a real axum server on `127.0.0.1` (port 0 by default). It
//! accepts any method at any path, records every request (method, path,
//! headers, body, arrival time) before deciding how to answer, and answers
//! according to the [`Behavior`] configured for that path: a status, failures
//! for the first K requests, `429`/`503` with `Retry-After`, hanging, delays,
//! failures for a seeded-random fraction of requests, or a JSON body computed
//! from the request ([`Behavior::respond_with`]).
//!
//! A path can also follow a load-dependent model of a real receiver, whose answer
//! depends on what it is serving at that moment or has served lately: one that admits
//! at most N requests at once ([`Behavior::admit`]), a token-bucket rate limit
//! ([`Behavior::token_bucket`]), or one whose latency grows with the requests in
//! service ([`Behavior::queueing`]). For those, every recorded request also says how
//! many requests were in service at its path when it arrived
//! ([`RecordedRequest::in_progress`]) and how long the receiver took to answer it
//! ([`RecordedRequest::took`]); [`Load`] sums that up (refusals, peak concurrency,
//! latency percentiles at the receiver).
//!
//! ```no_run
//! # async fn demo() {
//! use testkit::{Behavior, Receiver};
//! let rx = Receiver::builder()
//!     .path("/crm", Behavior::ok().fail_first(2, 500))
//!     .path("/slow", Behavior::ok().hang_fraction(0.5).seed(7))
//!     .start()
//!     .await;
//! let url = rx.url("/crm");
//! // ... point a target at `url`, then:
//! let reqs = rx.expect_requests("/crm", 3).await;
//! # }
//! ```

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{default_timeout, scaled};

mod behavior;
mod recorded;

pub use behavior::*;
pub use recorded::*;

/// Called for every request as it arrives (used by `demo-receiver` to print).
pub type OnRequest = Arc<dyn Fn(&RecordedRequest) + Send + Sync>;

struct PathState {
    behavior: Behavior,
    rng: StdRng,
    count: usize,
}

impl PathState {
    fn new(behavior: Behavior) -> Self {
        let rng = StdRng::seed_from_u64(behavior.seed);
        Self {
            behavior,
            rng,
            count: 0,
        }
    }
}

/// What a path is carrying: requests in service and a token bucket's state. Kept apart from
/// the behaviour so that replacing the behaviour keeps the requests in service (the bucket
/// starts afresh).
#[derive(Default)]
struct PathLoad {
    in_progress: usize,
    bucket: Option<Bucket>,
}

struct Inner {
    requests: Vec<RecordedRequest>,
    paths: HashMap<String, PathState>,
    default_behavior: Behavior,
    default_rng: StdRng,
    default_counts: HashMap<String, usize>,
    loads: HashMap<String, PathLoad>,
}

struct Shared {
    inner: Mutex<Inner>,
    arrivals: watch::Sender<usize>,
    on_request: Option<OnRequest>,
    keep_requests: bool,
}

/// Configures a [`Receiver`] before it starts.
pub struct ReceiverBuilder {
    addr: SocketAddr,
    paths: Vec<(String, Behavior)>,
    default_behavior: Behavior,
    on_request: Option<OnRequest>,
    keep_requests: bool,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ReceiverBuilder {
    /// Speak HTTPS with this server configuration (see [`crate::tls::TestPki`]); its
    /// [`Receiver::url`]s then start `https://`, and [`Receiver::handshake_failures`] counts
    /// the connections whose handshake failed.
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Listen on `addr` instead of `127.0.0.1:0`.
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Script the behaviour of `path` (exact match, e.g. `/crm`).
    pub fn path(mut self, path: &str, behavior: Behavior) -> Self {
        self.paths.push((path.to_owned(), behavior));
        self
    }

    /// Behaviour of every path not scripted with [`ReceiverBuilder::path`] (default: 200).
    pub fn default_behavior(mut self, behavior: Behavior) -> Self {
        self.default_behavior = behavior;
        self
    }

    /// Call `f` for every request as it arrives, before it is answered.
    pub fn on_request(mut self, f: impl Fn(&RecordedRequest) + Send + Sync + 'static) -> Self {
        self.on_request = Some(Arc::new(f));
        self
    }

    /// Whether to keep requests in memory (default true; a long-running demo may not want to).
    pub fn keep_requests(mut self, keep: bool) -> Self {
        self.keep_requests = keep;
        self
    }

    /// Bind and start serving on the current tokio runtime.
    ///
    /// # Panics
    /// If the address cannot be bound.
    pub async fn start(self) -> Receiver {
        self.try_start().await.unwrap_or_else(|e| panic!("receiver: {e}"))
    }

    /// Bind and start serving on the current tokio runtime.
    pub async fn try_start(self) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", self.addr)))?;
        let addr = listener.local_addr()?;
        let default_rng = StdRng::seed_from_u64(self.default_behavior.seed);
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                requests: Vec::new(),
                paths: self.paths.into_iter().map(|(p, b)| (p, PathState::new(b))).collect(),
                default_behavior: self.default_behavior,
                default_rng,
                default_counts: HashMap::new(),
                loads: HashMap::new(),
            }),
            arrivals: watch::channel(0).0,
            on_request: self.on_request,
            keep_requests: self.keep_requests,
        });
        let app = Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(shared.clone());
        let handshake_failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let server = match self.tls {
            None => tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    eprintln!("receiver on {addr} stopped: {e}");
                }
            }),
            Some(config) => tokio::spawn(serve_tls(listener, app, config, Arc::clone(&handshake_failures))),
        };
        Ok(Receiver {
            addr,
            shared,
            server,
            handshake_failures,
            scheme,
        })
    }
}

/// Serves `app` over TLS: each connection's handshake, then HTTP/1.1 on it.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    config: Arc<rustls::ServerConfig>,
    handshake_failures: Arc<std::sync::atomic::AtomicUsize>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, app, failures) = (acceptor.clone(), app.clone(), Arc::clone(&handshake_failures));
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(stream) => stream,
                Err(_) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A running recording HTTP server; stops when dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    /// TLS connections whose handshake failed (always 0 over plain HTTP).
    handshake_failures: Arc<std::sync::atomic::AtomicUsize>,
    /// `http` or `https`.
    scheme: &'static str,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A request in service at its path: counted in the path's [`PathLoad::in_progress`] until it
/// is answered or its client gives up (axum then drops the handler, and with it this guard).
struct InService {
    shared: Arc<Shared>,
    path: String,
}

impl Drop for InService {
    fn drop(&mut self) {
        let mut inner = self.shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(load) = inner.loads.get_mut(&self.path) {
            load.in_progress = load.in_progress.saturating_sub(1);
        }
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received_at = Instant::now();
    let received_at_wall = SystemTime::now();
    let path = uri.path().to_owned();
    let (record, default_status, in_service) = {
        let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        let seq = inner.requests.len();
        let inner = &mut *inner;
        let (index, (reply, by_rule), behavior) = match inner.paths.get_mut(&path) {
            Some(state) => {
                let index = state.count;
                state.count += 1;
                let decided = state.behavior.decide_by_rule(index, &mut state.rng);
                (index, decided, state.behavior.clone())
            }
            None => {
                let count = inner.default_counts.entry(path.clone()).or_default();
                let index = *count;
                *count += 1;
                let decided = inner.default_behavior.decide_by_rule(index, &mut inner.default_rng);
                (index, decided, inner.default_behavior.clone())
            }
        };
        let load = inner.loads.entry(path.clone()).or_default();
        let in_progress = load.in_progress;
        let (reply, by_rule) = match (&behavior.model, by_rule) {
            (Some(model), false) => (model.decide(load, received_at), true),
            _ => (reply, by_rule),
        };
        let waits = matches!(reply, Reply::Delay(_) | Reply::Hang);
        if waits {
            load.in_progress += 1;
        }
        let default_status = behavior.default_status;
        let mut record = RecordedRequest {
            seq,
            index,
            method,
            path,
            query: uri.query().map(str::to_owned),
            headers,
            body,
            received_at,
            received_at_wall,
            reply,
            status: None,
            in_progress,
            took: None,
        };
        behavior.finish(&mut record, by_rule);
        record.status = match &record.reply {
            Reply::Status(s) | Reply::RetryAfter { status: s, .. } | Reply::Computed { status: s, .. } => Some(*s),
            Reply::Delay(_) => Some(default_status),
            Reply::Hang => None,
        };
        if shared.keep_requests {
            inner.requests.push(record.clone());
        } else {
            // Keep the sequence numbering without keeping the bodies.
            inner.requests.push(RecordedRequest {
                body: Bytes::new(),
                headers: HeaderMap::new(),
                ..record.clone()
            });
        }
        let in_service = waits.then(|| InService {
            shared: Arc::clone(&shared),
            path: record.path.clone(),
        });
        (record, default_status, in_service)
    };
    shared.arrivals.send_modify(|n| *n += 1);
    if let Some(cb) = &shared.on_request {
        cb(&record);
    }
    let response = match record.reply {
        Reply::Status(s) => status_response(s, None),
        Reply::RetryAfter { status, secs } => status_response(status, Some(secs)),
        Reply::Hang => {
            std::future::pending::<()>().await;
            unreachable!("pending() never completes")
        }
        Reply::Delay(d) => {
            tokio::time::sleep(d).await;
            status_response(default_status, None)
        }
        Reply::Computed { status, body } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (code, [("content-type", "application/json")], body).into_response()
        }
    };
    {
        let mut inner = shared.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = inner.requests.get_mut(record.seq) {
            r.took = Some(received_at.elapsed());
        }
    }
    drop(in_service);
    response
}

fn status_response(status: u16, retry_after: Option<u64>) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = format!("receiver says {status}\n");
    let mut resp = (code, body).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut().insert("retry-after", HeaderValue::from(secs));
    }
    resp
}

impl Receiver {
    /// A receiver on `127.0.0.1:0`, answering 200 everywhere.
    pub async fn start() -> Receiver {
        Self::builder().start().await
    }

    /// Configure a receiver.
    pub fn builder() -> ReceiverBuilder {
        ReceiverBuilder {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            paths: Vec::new(),
            default_behavior: Behavior::ok(),
            on_request: None,
            keep_requests: true,
            tls: None,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as written in a manifest's `allowed_hosts`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT{path}` (`https://` for a TLS receiver).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// TLS connections whose handshake failed: e.g. a client that sent no certificate.
    pub fn handshake_failures(&self) -> usize {
        self.handshake_failures.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Replace the behaviour of `path` now; "first K" rules count from here. The requests
    /// in service at `path` stay in service (and count against a new [`Behavior::admit`]
    /// limit); a token bucket starts full.
    pub fn behave(&self, path: &str, behavior: Behavior) {
        let mut inner = self.lock();
        inner.paths.insert(path.to_owned(), PathState::new(behavior));
        if let Some(load) = inner.loads.get_mut(path) {
            load.bucket = None;
        }
    }

    /// Requests in service at `path` now (see [`RecordedRequest::in_progress`]).
    pub fn in_progress_at(&self, path: &str) -> usize {
        self.lock().loads.get(path).map_or(0, |l| l.in_progress)
    }

    /// What `path` has seen so far, summed up (see [`Load`]).
    pub fn load_at(&self, path: &str) -> Load {
        Load::of(&self.requests_at(path))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.shared.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The requests to `path` so far, in arrival order.
    pub fn requests_at(&self, path: &str) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// How many requests reached `path`.
    pub fn count_at(&self, path: &str) -> usize {
        self.count_where(Some(path))
    }

    /// How many requests reached the receiver.
    pub fn total(&self) -> usize {
        self.count_where(None)
    }

    /// How many requests reached `path`, or the receiver at all (`None`).
    fn count_where(&self, path: Option<&str>) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| path.is_none_or(|p| r.path == p))
            .count()
    }

    /// Distinct `idempotency-key` header values seen at `path`, or anywhere (`None`).
    fn keys_where(&self, path: Option<&str>) -> BTreeSet<String> {
        self.lock()
            .requests
            .iter()
            .filter(|r| path.is_none_or(|p| r.path == p))
            .filter_map(|r| r.idempotency_key().map(str::to_owned))
            .collect()
    }

    /// Distinct `idempotency-key` header values seen at `path`.
    pub fn idempotency_keys_at(&self, path: &str) -> BTreeSet<String> {
        self.keys_where(Some(path))
    }

    /// Distinct `idempotency-key` header values seen anywhere.
    pub fn idempotency_keys(&self) -> BTreeSet<String> {
        self.keys_where(None)
    }

    /// A readable dump of every request, for failure messages.
    pub fn describe(&self) -> String {
        let reqs = self.requests();
        if reqs.is_empty() {
            return "  (no requests)".to_owned();
        }
        reqs.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n")
    }

    /// Wait until `pred` holds over all requests, or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[RecordedRequest]) -> bool,
    ) -> Result<Vec<RecordedRequest>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut arrivals = self.shared.arrivals.subscribe();
        loop {
            arrivals.borrow_and_update();
            {
                let inner = self.lock();
                if pred(&inner.requests) {
                    return Ok(inner.requests.clone());
                }
            }
            match tokio::time::timeout_at(deadline, arrivals.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("receiver stopped".to_owned()),
                Err(_) => {
                    return Err(format!(
                        "condition not met after {timeout:?}; the receiver saw {} request(s):\n{}",
                        self.total(),
                        self.describe()
                    ));
                }
            }
        }
    }

    /// Wait until at least `n` requests reached `path`; returns those requests.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Result<Vec<RecordedRequest>, String> {
        self.wait_until(timeout, |reqs| reqs.iter().filter(|r| r.path == path).count() >= n)
            .await
            .map(|_| self.requests_at(path))
            .map_err(|e| format!("waiting for {n} request(s) at {path}: {e}"))
    }

    /// Like [`Receiver::wait_for`] with the default timeout, panicking on timeout.
    pub async fn expect_requests(&self, path: &str, n: usize) -> Vec<RecordedRequest> {
        match self.wait_for(path, n, default_timeout()).await {
            Ok(reqs) => reqs,
            Err(e) => panic!("{e}"),
        }
    }

    /// Asserts that exactly `expected` requests have reached `path` and that no further one
    /// arrives during a quiet window of `scaled(window)` (see [`crate::scaled`]): the way to
    /// prove that something does not happen. Call it once the host has shown by a positive sign
    /// (a delivery's status or attempt count, a target's counts) that it has dealt with what it
    /// was given; the window then only has to catch a stray late request. Fails as soon as one
    /// arrives.
    pub async fn expect_no_more_at(&self, path: &str, expected: usize, window: Duration) {
        self.expect_quiet(Some(path), expected, window).await;
    }

    /// [`Receiver::expect_no_more_at`] over every path: exactly `expected` requests in all, and
    /// none more during `scaled(window)`.
    pub async fn expect_no_more(&self, expected: usize, window: Duration) {
        self.expect_quiet(None, expected, window).await;
    }

    async fn expect_quiet(&self, path: Option<&str>, expected: usize, window: Duration) {
        let window = scaled(window);
        let place = path.map_or_else(|| "the receiver".to_owned(), str::to_owned);
        let before = self.count_where(path);
        assert_eq!(
            before,
            expected,
            "{place}: {before} request(s) where {expected} were expected, before a quiet window:\n{}",
            self.describe()
        );
        let deadline = tokio::time::Instant::now() + window;
        let mut arrivals = self.shared.arrivals.subscribe();
        loop {
            arrivals.borrow_and_update();
            let now = self.count_where(path);
            assert_eq!(
                now,
                expected,
                "{place}: a request arrived within the quiet window of {window:?} ({now} where {expected} were expected):\n{}",
                self.describe()
            );
            match tokio::time::timeout_at(deadline, arrivals.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives as long as `self`; the window is over either way.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        let after = self.count_where(path);
        assert_eq!(
            after,
            expected,
            "{place}: {after} request(s) after the quiet window of {window:?}, {expected} expected:\n{}",
            self.describe()
        );
    }
}
