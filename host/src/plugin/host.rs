//! The host side of the plugin contract: the per-invocation state a `Store` carries and the
//! imports a plugin may call (`http.send`, `log.log`, `config.get`). Outbound HTTP is
//! allowed only to the target's `allowed_hosts` (and, once names are resolved, to public
//! addresses unless the manifest says otherwise: see `reach`), never follows redirects, and
//! never runs past the invocation's deadline. What a plugin sends is measured before it is
//! parsed or kept (URL and header sizes), the transcript of an invocation is bounded in bytes,
//! and URLs in what it records or returns as an error keep only scheme, host and port. The
//! credentials a target's manifest holds are set here, on every request, out of the plugin's
//! sight: its `[headers]`, and its OAuth2 token (see `oauth2`), fetched when needed and sent
//! once more with a fresh token when the receiver answers 401. When no token can be had, the
//! plugin's request fails and so does the attempt, retryably, with the host's reason.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::Grants;
use super::bindings::outboxd::target::{config, http, log, report, types};
use super::logbudget::LogMeter;
use super::oauth2::TokenSource;
use crate::domain::{ReceiverResponse, cap_text};
use crate::telemetry::trace_context::TraceParent;
use crate::telemetry::traces;

/// The W3C Trace Context header an outbound request carries.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A response body is cut at this size; a plugin needs the status and a little text.
const MAX_RESPONSE_BODY: usize = 1024 * 1024;
/// At most this many log lines and requests are kept per invocation for its report.
const MAX_TRANSCRIPT: usize = 256;
/// ... and at most this many bytes of them.
const MAX_TRANSCRIPT_BYTES: usize = 256 * 1024;
/// Each kept log line is cut at this size.
const MAX_LOG_LINE: usize = 4096;
/// Each kept request's error text is cut at this size.
const MAX_RECORDED_ERROR: usize = 1024;
/// A detail an adapter attaches to an attempt (`report.detail`) is cut at this size.
pub const MAX_DETAIL: usize = 1024;
/// An event id is a UUID (36 bytes): a longer `report.detail` id names no event of the call.
const MAX_EVENT_ID: usize = 64;
/// The longest URL a plugin may send, measured before it is parsed.
pub const MAX_URL_BYTES: usize = 8 * 1024;
/// At most this many request headers ...
pub const MAX_HEADERS: usize = 100;
/// ... of at most this many bytes together (names and values).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Severity of a plugin's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// One outbound request a plugin made, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpExchange {
    pub method: String,
    pub url: String,
    /// The status, or why there was none (`denied: …`, `timeout`, `connect: …`).
    pub result: Result<u16, String>,
    /// The response, when there was one: its status and the first KiB of its body (see
    /// [`ReceiverResponse`]), what the attempt's history shows of the receiver's answer.
    pub response: Option<ReceiverResponse>,
}

/// What a `Store` carries: the instance's WASI context and resources, and the current
/// invocation's deadline, log budget and transcript (reset by [`HostState::begin`]).
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    grants: Grants,
    http: reqwest::Client,
    deadline: Instant,
    logs: Vec<LogLine>,
    requests: Vec<HttpExchange>,
    /// What the adapter attached to each event's attempt (`report.detail`): (event id, text),
    /// the latest per id.
    details: Vec<(String, String)>,
    /// Bytes held by `logs` and `requests`.
    transcript_bytes: usize,
    /// This invocation's log budget (see `logbudget`); captured guest output shares it.
    pub(crate) log_meter: LogMeter,
    /// Why the host could not authenticate a request of this invocation (no OAuth2 token):
    /// the attempt's reason, whatever the plugin made of the failed request.
    credential_failure: Option<String>,
    /// The trace this invocation's outbound requests join (each as a new child).
    trace: Option<TraceParent>,
}

impl HostState {
    pub(crate) fn new(
        wasi: WasiCtx,
        table: ResourceTable,
        limits: StoreLimits,
        grants: Grants,
        http: reqwest::Client,
    ) -> Self {
        Self {
            wasi,
            table,
            limits,
            log_meter: LogMeter::new(grants.log_budget),
            grants,
            http,
            deadline: Instant::now(),
            logs: Vec::new(),
            requests: Vec::new(),
            details: Vec::new(),
            transcript_bytes: 0,
            credential_failure: None,
            trace: None,
        }
    }

    /// Why the host could not authenticate a request of this invocation, if it could not;
    /// then forgets it.
    pub(crate) fn take_credential_failure(&mut self) -> Option<String> {
        self.credential_failure.take()
    }

    /// Whether `bytes` more fit into the invocation's transcript; counts them if so.
    fn transcript_admits(&mut self, entries: usize, bytes: usize) -> bool {
        if entries >= MAX_TRANSCRIPT || self.transcript_bytes + bytes > MAX_TRANSCRIPT_BYTES {
            return false;
        }
        self.transcript_bytes += bytes;
        true
    }

    /// Starts an invocation that must end by `deadline`, with a full log budget, whose
    /// outbound requests join `trace`.
    pub(crate) fn begin(&mut self, deadline: Instant, trace: Option<TraceParent>) {
        self.deadline = deadline;
        self.trace = trace;
        self.log_meter = LogMeter::new(self.grants.log_budget);
        self.details.clear();
        self.credential_failure = None;
    }

    /// What the adapter attached with `report.detail` to each of `event_ids` during this
    /// invocation, in their order (none for an event it said nothing about); then forgets it.
    pub(crate) fn take_details<'a>(&mut self, event_ids: impl Iterator<Item = &'a str>) -> Vec<Option<String>> {
        let details = std::mem::take(&mut self.details);
        event_ids
            .map(|id| details.iter().find(|(of, _)| of == id).map(|(_, text)| text.clone()))
            .collect()
    }

    /// The current invocation's deadline.
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Ends the invocation: logs the one line saying what the log budget suppressed, if
    /// anything, and hands back what the plugin logged and requested.
    pub(crate) fn end(&mut self) -> (Vec<LogLine>, Vec<HttpExchange>) {
        if let Some(summary) = self.log_meter.summary() {
            tracing::warn!(target: "outboxd::plugin", plugin = %self.grants.target, "{summary}");
            if self.transcript_admits(self.logs.len(), summary.len()) {
                self.logs.push(LogLine {
                    level: LogLevel::Warn,
                    message: summary,
                });
            }
        }
        self.transcript_bytes = 0;
        (std::mem::take(&mut self.logs), std::mem::take(&mut self.requests))
    }

    /// Keeps one request in the transcript: its method, the URL's origin (see [`url_origin`])
    /// and the first bytes of its error or of its response.
    fn record(&mut self, method: String, url: String, result: Result<u16, String>, response: Option<ReceiverResponse>) {
        let result = result.map_err(|e| super::logbudget::cut_at_boundary(&e, MAX_RECORDED_ERROR).to_owned());
        let bytes = method.len()
            + url.len()
            + result.as_ref().err().map_or(0, String::len)
            + response.as_ref().map_or(0, |r| r.body.len());
        if self.transcript_admits(self.requests.len(), bytes) {
            self.requests.push(HttpExchange {
                method,
                url,
                result,
                response,
            });
        }
    }

    /// Checks the URL against the grants; returns the parsed URL and its `host:port`, or why
    /// it is refused.
    fn permit(&self, url: &str) -> Result<(reqwest::Url, String), http::Error> {
        if url.len() > MAX_URL_BYTES {
            return Err(http::Error::Other(format!(
                "the URL is {} bytes long, over the limit of {MAX_URL_BYTES}",
                url.len()
            )));
        }
        let parsed = reqwest::Url::parse(url).map_err(|e| http::Error::Other(format!("invalid URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(http::Error::Denied(format!(
                "scheme `{}` is not allowed, only http and https",
                parsed.scheme()
            )));
        }
        let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = parsed.port_or_known_default().unwrap_or(0);
        let host_port = format!("{host}:{port}");
        if self.grants.allowed_hosts.contains(&host_port) {
            Ok((parsed, host_port))
        } else {
            Err(http::Error::Denied(format!(
                "{host_port} is not in allowed_hosts of target `{}`",
                self.grants.target
            )))
        }
    }
}

/// Why a request was not sent: the plugin's error, or no credentials to be had (the host's
/// reason, which fails the attempt).
enum SendError {
    Plugin(http::Error),
    Credentials(String),
}

impl From<http::Error> for SendError {
    fn from(e: http::Error) -> Self {
        Self::Plugin(e)
    }
}

/// What the host adds to a plugin's request: the target's held headers, its OAuth2 token
/// source (when it applies to the request's host) and the trace context to hand on.
struct Held<'a> {
    headers: &'a [(HeaderName, HeaderValue)],
    oauth2: Option<&'a TokenSource>,
    trace: Option<HeaderValue>,
}

/// Sends a permitted request with the target's credentials: its held headers, and with
/// `oauth2`, a bearer token; a 401 answer to a token sends the request once more with a fresh
/// one (the second answer is the plugin's, whatever it is). A free function: the future must
/// not borrow the store's state, which is not `Sync`.
async fn send_authenticated(
    client: reqwest::Client,
    deadline: Instant,
    url: reqwest::Url,
    mut req: http::Request,
    held: Held<'_>,
) -> Result<http::Response, SendError> {
    let body = Bytes::from(std::mem::take(&mut req.body));
    let Some(source) = held.oauth2 else {
        return Ok(send_permitted(&client, deadline, url, &req, body, &held, None).await?);
    };
    let token = source
        .token(&client, deadline)
        .await
        .map_err(|e| SendError::Credentials(e.to_string()))?;
    let response = send_permitted(
        &client,
        deadline,
        url.clone(),
        &req,
        body.clone(),
        &held,
        Some(token.header()),
    )
    .await?;
    if response.status != 401 {
        return Ok(response);
    }
    source.invalidate(&token);
    let fresh = source
        .token(&client, deadline)
        .await
        .map_err(|e| SendError::Credentials(e.to_string()))?;
    tracing::debug!(target: "outboxd::plugin", url = %crate::redact::origin(url.as_str()), "the receiver refused the OAuth2 token (401): sending once more with a fresh one");
    Ok(send_permitted(&client, deadline, url, &req, body, &held, Some(fresh.header())).await?)
}

/// Sends a permitted request, never past `deadline`, with what the host holds (the target's
/// headers, the trace context) and the OAuth2 `bearer` token over the plugin's own headers.
async fn send_permitted(
    client: &reqwest::Client,
    deadline: Instant,
    url: reqwest::Url,
    req: &http::Request,
    body: Bytes,
    held: &Held<'_>,
    bearer: Option<&HeaderValue>,
) -> Result<http::Response, http::Error> {
    {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(http::Error::Timeout);
        }
        let timeout = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()).min(remaining))
            .unwrap_or(remaining);
        let method = reqwest::Method::from_bytes(req.method.as_bytes()).map_err(|_| {
            http::Error::Other(format!(
                "invalid method `{}`",
                super::logbudget::cut_at_boundary(&req.method, 32)
            ))
        })?;
        check_headers(&req.headers)?;
        // The request is put together here rather than through reqwest's builder: the header
        // map is sized once, and a bad header is refused with its name.
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        for (name, value) in &req.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| http::Error::Other(format!("invalid header name `{name}`")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| http::Error::Other(format!("invalid value of header `{name}`")))?;
            headers.append(name, value);
        }
        // The target's own headers (parsed and marked sensitive at load), over the plugin's.
        for (name, value) in held.headers {
            headers.insert(name.clone(), value.clone());
        }
        // The OAuth2 token (sensitive), over the plugin's and the held `authorization`.
        if let Some(bearer) = bearer {
            headers.insert(AUTHORIZATION, bearer.clone());
        }
        // The event's trace, handed on: the receiver's spans join the producer's trace.
        if let Some(trace) = &held.trace {
            headers.insert(TRACEPARENT, trace.clone());
        }
        let mut request = reqwest::Request::new(method, url);
        *request.headers_mut() = headers;
        *request.timeout_mut() = Some(timeout);
        *request.body_mut() = Some(body.into());
        let mut response = client.execute(request).await.map_err(map_reqwest_error)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(map_reqwest_error(e)),
            }
        }
        body.truncate(MAX_RESPONSE_BODY);
        Ok(http::Response { status, headers, body })
    }
}

/// What the transcript and the log keep of a plugin's URL: scheme, host and port.
fn url_origin(url: &str) -> String {
    if url.len() > MAX_URL_BYTES {
        "(an oversized URL)".to_owned()
    } else {
        crate::redact::origin(url)
    }
}

/// Refuses headers over the limits (before any is parsed) and a `Host` header: the host
/// sets it from the URL, so that a request reaches only the name that was allowed.
fn check_headers(headers: &[(String, String)]) -> Result<(), http::Error> {
    if headers.len() > MAX_HEADERS {
        return Err(http::Error::Other(format!(
            "{} headers, over the limit of {MAX_HEADERS}",
            headers.len()
        )));
    }
    let bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(http::Error::Other(format!(
            "the headers are {bytes} bytes, over the limit of {MAX_HEADER_BYTES}"
        )));
    }
    if headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        return Err(http::Error::Denied(
            "a plugin cannot set the `Host` header: it is taken from the URL".to_owned(),
        ));
    }
    Ok(())
}

/// What went wrong, with the URL's scheme, host and port only: reqwest's own text ends with
/// the full URL (user info, path and query).
fn map_reqwest_error(e: reqwest::Error) -> http::Error {
    let at = e.url().map(|u| crate::redact::origin(u.as_str()));
    let e = e.without_url();
    let text = || match &at {
        Some(origin) => format!("{origin}: {}", error_chain(&e)),
        None => error_chain(&e),
    };
    if e.is_timeout() {
        http::Error::Timeout
    } else if e.is_builder() || (e.is_request() && !e.is_connect()) {
        http::Error::Other(text())
    } else {
        http::Error::Connect(text())
    }
}

/// An error with its sources, `outer: inner: …`.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    crate::redact::urls(&text).into_owned()
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl http::Host for HostState {
    async fn send(&mut self, req: http::Request) -> Result<http::Response, http::Error> {
        // Measured, not copied: a plugin's URL may be as large as its memory.
        let method = super::logbudget::cut_at_boundary(&req.method, 32).to_owned();
        let url = url_origin(&req.url);
        let result = match self.permit(&req.url) {
            Ok((parsed, host_port)) => {
                let held = Arc::clone(&self.grants.headers);
                let oauth2 = self.grants.oauth2.clone().filter(|o| o.applies_to(&host_port));
                // The request's own span when exporting, else a new child of the event's trace.
                let span = traces::request(&method, &url, self.trace);
                let trace = traces::handed_on(&span).or_else(|| self.trace.map(TraceParent::random_child));
                let trace = trace.and_then(|t| HeaderValue::from_str(&t.to_string()).ok());
                let held = Held {
                    headers: &held,
                    oauth2: oauth2.as_deref(),
                    trace,
                };
                let sent = send_authenticated(self.http.clone(), self.deadline, parsed, req, held).await;
                traces::request_ended(&span, sent.as_ref().ok().map(|r| r.status));
                match sent {
                    Ok(response) => Ok(response),
                    Err(SendError::Plugin(e)) => Err(e),
                    Err(SendError::Credentials(why)) => {
                        tracing::warn!(target: "outboxd::plugin", plugin = %self.grants.target, %why, "no credentials for the plugin's request");
                        self.credential_failure.get_or_insert_with(|| why.clone());
                        Err(http::Error::Connect(why))
                    }
                }
            }
            Err(e) => Err(e),
        };
        let response = result.as_ref().ok().map(|r| ReceiverResponse::new(r.status, &r.body));
        let summary = match &result {
            Ok(r) => Ok(r.status),
            Err(http::Error::Denied(m)) => Err(format!("denied: {m}")),
            Err(http::Error::Timeout) => Err("timeout".to_owned()),
            Err(http::Error::Connect(m)) => Err(format!("connect: {m}")),
            Err(http::Error::Other(m)) => Err(format!("other: {m}")),
        };
        if let Err(why) = &summary {
            let why = super::logbudget::cut_at_boundary(why, MAX_RECORDED_ERROR);
            tracing::debug!(target: "outboxd::plugin", plugin = %self.grants.target, %method, %url, why, "plugin request failed");
        }
        self.record(method, url, summary, response);
        result
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) {
        // Over the budget: counted for the closing summary, not logged.
        let Some(message) = self.log_meter.admit(&message) else {
            return;
        };
        let target = &*self.grants.target;
        let level = match level {
            log::Level::Debug => {
                tracing::debug!(target: "outboxd::plugin", plugin = target, "{message}");
                LogLevel::Debug
            }
            log::Level::Info => {
                tracing::info!(target: "outboxd::plugin", plugin = target, "{message}");
                LogLevel::Info
            }
            log::Level::Warn => {
                tracing::warn!(target: "outboxd::plugin", plugin = target, "{message}");
                LogLevel::Warn
            }
            log::Level::Error => {
                tracing::error!(target: "outboxd::plugin", plugin = target, "{message}");
                LogLevel::Error
            }
        };
        let message = super::logbudget::cut_at_boundary(&message, MAX_LOG_LINE);
        if self.transcript_admits(self.logs.len(), message.len()) {
            let message = message.to_owned();
            self.logs.push(LogLine { level, message });
        }
    }
}

impl report::Host for HostState {
    async fn detail(&mut self, event_id: String, text: String) {
        if event_id.len() > MAX_EVENT_ID {
            return;
        }
        let text = cap_text(text, MAX_DETAIL);
        if let Some(kept) = self.details.iter_mut().find(|(of, _)| *of == event_id) {
            kept.1 = text;
        } else if self.details.len() < MAX_TRANSCRIPT {
            self.details.push((event_id, text));
        }
    }
}

impl config::Host for HostState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.grants.config.get(&key).map(|v| v.as_str().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> http::Request {
        http::Request {
            method: "POST".into(),
            url: "http://127.0.0.1:9/".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    async fn send(req: http::Request) -> Result<http::Response, http::Error> {
        let client = reqwest::Client::new();
        let url = reqwest::Url::parse(&req.url).unwrap();
        let body = Bytes::from(req.body.clone());
        send_permitted(
            &client,
            Instant::now() + Duration::from_secs(5),
            url,
            &req,
            body,
            &Held {
                headers: &[],
                oauth2: None,
                trace: None,
            },
            None,
        )
        .await
    }

    fn state(allowed: &[&str]) -> HostState {
        let grants = Grants {
            target: "t".into(),
            config: Default::default(),
            allowed_hosts: allowed.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>().into(),
            headers: Arc::from([]),
            oauth2: None,
            tls: None,
            allow_private: false,
            timeout: Duration::from_secs(5),
            memory_bytes: 1 << 20,
            log_budget: super::super::LogBudget::default(),
        };
        let mut state = HostState::new(
            WasiCtx::builder().build(),
            ResourceTable::new(),
            wasmtime::StoreLimitsBuilder::new().build(),
            grants,
            reqwest::Client::new(),
        );
        state.begin(Instant::now() + Duration::from_secs(5), None);
        state
    }

    async fn host_send(state: &mut HostState, req: http::Request) -> Result<http::Response, http::Error> {
        <HostState as http::Host>::send(state, req).await
    }

    #[tokio::test]
    async fn what_a_plugin_sends_is_measured_before_it_is_parsed_or_kept() {
        let mut s = state(&["127.0.0.1:1"]);
        let mut huge = request(&[]);
        huge.url = format!("http://127.0.0.1:1/{}", "x".repeat(1 << 20));
        huge.method = "M".repeat(1 << 16);
        for _ in 0..300 {
            match host_send(&mut s, huge.clone()).await {
                Err(http::Error::Other(m)) => assert!(m.contains("over the limit of 8192"), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        let mut many = request(&[]);
        many.url = "http://127.0.0.1:1/".into();
        many.headers = (0..=MAX_HEADERS).map(|i| (format!("x-{i}"), "v".into())).collect();
        assert!(matches!(host_send(&mut s, many).await, Err(http::Error::Other(m)) if m.contains("101 headers")));
        let mut big = request(&[("x-big", &"v".repeat(MAX_HEADER_BYTES))]);
        big.url = "http://127.0.0.1:1/".into();
        assert!(matches!(host_send(&mut s, big).await, Err(http::Error::Other(m)) if m.contains("bytes, over")));
        let (_, requests) = s.end();
        let kept: usize = requests
            .iter()
            .map(|r| r.method.len() + r.url.len() + r.result.as_ref().err().map_or(0, String::len))
            .sum();
        assert!(
            requests.len() <= MAX_TRANSCRIPT && kept <= MAX_TRANSCRIPT_BYTES,
            "{} entries, {kept} bytes",
            requests.len()
        );
        assert_eq!(requests[0].url, "(an oversized URL)");
        assert!(requests[0].method.len() <= 32);
    }

    #[tokio::test]
    async fn a_plugin_cannot_set_host_nor_see_its_url_in_errors() {
        let mut s = state(&["127.0.0.1:1"]);
        let mut to_host = request(&[("Host", "internal.example")]);
        to_host.url = "http://127.0.0.1:1/".into();
        assert!(matches!(host_send(&mut s, to_host).await, Err(http::Error::Denied(m)) if m.contains("`Host`")));
        // Nothing listens on port 1: reqwest's error text would end with the whole URL.
        let mut refused = request(&[]);
        refused.url = "http://user:pw@127.0.0.1:1/services/T/B/PATHSECRET?token=QUERYSECRET".into();
        let err = match host_send(&mut s, refused).await {
            Err(http::Error::Connect(m) | http::Error::Other(m)) => m,
            other => panic!("{other:?}"),
        };
        for secret in ["PATHSECRET", "QUERYSECRET", "pw@"] {
            assert!(!err.contains(secret), "{err}");
        }
        assert!(
            err.starts_with("http://127.0.0.1:1: "),
            "where it failed is kept: {err}"
        );
        let (_, requests) = s.end();
        assert_eq!(requests[1].url, "http://127.0.0.1:1");
        assert!(!format!("{requests:?}").contains("SECRET"), "{requests:?}");
    }

    #[tokio::test]
    async fn a_bad_header_is_refused_by_name_before_anything_is_sent() {
        match send(request(&[("content-type", "a"), ("bad name", "x")])).await {
            Err(http::Error::Other(m)) => assert_eq!(m, "invalid header name `bad name`"),
            other => panic!("{other:?}"),
        }
        match send(request(&[("x-ok", "line\nbreak")])).await {
            Err(http::Error::Other(m)) => assert_eq!(m, "invalid value of header `x-ok`"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_transcript_keeps_the_status_and_the_first_kib_of_each_answer() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = format!("{{\"error\":\"upstream exploded\"}}{}", " ".repeat(2000));
        let answer = format!(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        let mut s = state(&[&format!("127.0.0.1:{port}")]);
        let mut req = request(&[]);
        req.url = format!("http://127.0.0.1:{port}/hook");
        let response = host_send(&mut s, req).await.unwrap();
        assert_eq!(
            (response.status, response.body.len()),
            (500, body.len()),
            "the plugin gets it all"
        );
        let mut denied = request(&[]);
        denied.url = "http://elsewhere.example/".into();
        assert!(host_send(&mut s, denied).await.is_err());
        let (_, requests) = s.end();
        let kept = requests[0].response.as_ref().expect("a response");
        assert_eq!(kept.status, 500);
        assert!(
            kept.body.starts_with(r#"{"error":"upstream exploded"}"#),
            "{}",
            kept.body
        );
        assert!(
            kept.body.ends_with(&format!("… [cut from {} bytes]", body.len())),
            "{}",
            kept.body
        );
        assert_eq!(requests[1].response, None, "no response, nothing kept");
    }

    #[tokio::test]
    async fn a_detail_is_kept_per_event_bounded_and_the_latest_wins() {
        async fn detail(s: &mut HostState, id: &str, text: String) {
            <HostState as report::Host>::detail(s, id.to_owned(), text).await
        }
        let mut s = state(&[]);
        detail(&mut s, "e1", "first".into()).await;
        detail(&mut s, "e2", "x".repeat(10_000)).await;
        detail(&mut s, "e1", "stage=charge ref=42".into()).await;
        detail(&mut s, &"i".repeat(100), "no such event".into()).await;
        let details = s.take_details(["e1", "e2", "e3"].into_iter());
        assert_eq!(details[0].as_deref(), Some("stage=charge ref=42"), "the latest");
        let long = details[1].as_deref().unwrap();
        assert!(
            long.len() <= MAX_DETAIL && long.ends_with("[cut from 10000 bytes]"),
            "{long}"
        );
        assert_eq!(details[2], None);
        assert_eq!(s.take_details(["e1"].into_iter()), [None], "taken once");
        detail(&mut s, "e1", "stale".into()).await;
        s.begin(Instant::now() + Duration::from_secs(5), None);
        assert_eq!(
            s.take_details(["e1"].into_iter()),
            [None],
            "a new invocation starts empty"
        );
    }
}
