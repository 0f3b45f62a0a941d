//! OAuth2 client credentials held by the host (RFC 6749 §4.4): a target's manifest names a
//! token endpoint and a client; the host fetches an access token, keeps it until shortly before
//! it expires, and sets `Authorization: Bearer …` on the plugin's requests to the hosts it
//! applies to. One fetch runs at a time per target: requests that find no valid token wait for
//! the fetch under way and share its result (a token, or its failure). A receiver's 401 drops
//! the token it was sent with, so that the next request fetches a fresh one (`plugin::host`
//! sends that request once more). Neither the client secret nor a token is ever shown: both
//! are held as [`Secret`]s or sensitive header values, and errors name only the token
//! endpoint's origin, its status and its RFC 6749 §5.2 error code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use tokio::time::Instant;

use crate::secret::{ConfigValue, Secret};

/// A token whose response gave no `expires_in` is kept this long (a 401 drops it sooner).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// A token is never kept longer than this, whatever `expires_in` says.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// A token is dropped this much before it expires, at most ...
const MAX_SKEW: Duration = Duration::from_secs(30);
/// ... and at most this share of its lifetime (a 10 s token is used for 9 s).
const SKEW_SHARE: u32 = 10;
/// At most this much of a token endpoint's answer is read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// How the client authenticates at the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthStyle {
    /// HTTP Basic with the form-encoded id and secret (the RFC's default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

impl AuthStyle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Body => "body",
        }
    }
}

/// A target's `[oauth2]`, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Config {
    pub token_url: reqwest::Url,
    pub client_id: ConfigValue,
    pub client_secret: Secret,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub auth_style: AuthStyle,
    /// Lower-cased `host:port` pairs whose requests get the token (a subset of the target's
    /// `allowed_hosts`; by default all of them).
    pub hosts: Vec<String>,
}

/// Why no token could be had. Never holds the secret or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("OAuth2 token endpoint {origin}: {detail}")]
    Request { origin: String, detail: String },
    #[error("OAuth2 token endpoint {origin} answered {status}{}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        origin: String,
        status: u16,
        code: Option<String>,
    },
    #[error("OAuth2 token endpoint {origin}: {detail}")]
    Response { origin: String, detail: String },
    #[error("OAuth2 token endpoint {origin}: no answer before the attempt's deadline")]
    Timeout { origin: String },
}

/// A token as the host sends it: `Bearer …`, marked sensitive.
#[derive(Debug)]
pub struct Token {
    header: HeaderValue,
    /// When it is no longer used.
    refresh_at: Instant,
}

impl Token {
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

/// A fresh token: its header value and its lifetime (`expires_in`), if the endpoint said.
pub type Fetched = (HeaderValue, Option<Duration>);

/// What an operator sees of a target's token: never the token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenStatus {
    /// Milliseconds until the cached token is dropped; `None` without one.
    pub valid_for: Option<Duration>,
    /// Tokens fetched since the target loaded.
    pub fetches: u64,
    /// Failed fetches since the target loaded.
    pub failures: u64,
    /// Why the last fetch failed, if it did.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct State {
    token: Option<Arc<Token>>,
    /// Fetches finished (either way): a waiter compares it to tell that one ended while it
    /// waited.
    finished: u64,
    fetches: u64,
    failures: u64,
    last_error: Option<TokenError>,
}

/// A target's OAuth2 client: its configuration and its token cache. One per loaded target
/// version, shared by all its instances; a changed manifest loads a new one (an empty cache).
pub struct TokenSource {
    config: OAuth2Config,
    state: Mutex<State>,
    /// Held while a fetch is under way: the single flight.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(config: OAuth2Config) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn config(&self) -> &OAuth2Config {
        &self.config
    }

    /// Whether requests to `host_port` (lower-cased) carry the token.
    pub fn applies_to(&self, host_port: &str) -> bool {
        self.config.hosts.iter().any(|h| h == host_port)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self) -> Option<Arc<Token>> {
        let state = self.lock();
        state.token.as_ref().filter(|t| Instant::now() < t.refresh_at).cloned()
    }

    /// What the API shows.
    pub fn status(&self) -> TokenStatus {
        let state = self.lock();
        let now = Instant::now();
        TokenStatus {
            valid_for: state
                .token
                .as_ref()
                .filter(|t| now < t.refresh_at)
                .map(|t| t.refresh_at - now),
            fetches: state.fetches,
            failures: state.failures,
            last_error: state.last_error.as_ref().map(ToString::to_string),
        }
    }

    /// The cached token, or a fresh one from the token endpoint through `client`, whose answer
    /// must come before `deadline`.
    pub async fn token(
        &self,
        client: &reqwest::Client,
        deadline: std::time::Instant,
    ) -> Result<Arc<Token>, TokenError> {
        self.get_or_fetch(|| fetch(client, &self.config, deadline)).await
    }

    /// The single flight: a valid cached token, else the result of the one fetch under way
    /// (waited for), else a fetch of its own.
    pub async fn get_or_fetch<F, Fut>(&self, fetch: F) -> Result<Arc<Token>, TokenError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Fetched, TokenError>>,
    {
        if let Some(token) = self.cached() {
            return Ok(token);
        }
        let seen = self.lock().finished;
        let _flight = self.fetching.lock().await;
        {
            let state = self.lock();
            if let Some(token) = state.token.as_ref().filter(|t| Instant::now() < t.refresh_at) {
                return Ok(Arc::clone(token));
            }
            // A fetch ended while this one waited, and failed: its answer is this one's too
            // (a failing endpoint is asked once, not once per waiting request).
            if state.finished != seen
                && let Some(e) = &state.last_error
            {
                return Err(e.clone());
            }
        }
        let result = fetch().await;
        let mut state = self.lock();
        state.finished += 1;
        match result {
            Ok((header, lifetime)) => {
                let token = Arc::new(Token {
                    header,
                    refresh_at: Instant::now() + usable_for(lifetime.unwrap_or(DEFAULT_LIFETIME)),
                });
                state.fetches += 1;
                state.last_error = None;
                state.token = Some(Arc::clone(&token));
                Ok(token)
            }
            Err(e) => {
                state.failures += 1;
                state.token = None;
                state.last_error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// The receiver refused `used` (401): it is dropped, unless a newer token replaced it.
    pub fn invalidate(&self, used: &Arc<Token>) {
        let mut state = self.lock();
        if state.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, used)) {
            state.token = None;
        }
    }
}

/// How long a token of `lifetime` is used: up to 30 s, and at most a tenth of its lifetime,
/// before it expires.
pub fn usable_for(lifetime: Duration) -> Duration {
    let lifetime = lifetime.min(MAX_LIFETIME);
    lifetime - (lifetime / SKEW_SHARE).min(MAX_SKEW)
}

/// `application/x-www-form-urlencoded` of one value.
fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The token request's form body and, with HTTP Basic, its `Authorization` (sensitive).
fn token_request(config: &OAuth2Config, origin: &str) -> Result<(String, Option<HeaderValue>), TokenError> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("grant_type", "client_credentials");
    if let Some(scope) = &config.scope {
        form.append_pair("scope", scope);
    }
    if let Some(audience) = &config.audience {
        form.append_pair("audience", audience);
    }
    let basic = match config.auth_style {
        AuthStyle::Basic => {
            let pair = format!(
                "{}:{}",
                form_encode(config.client_id.as_str()),
                form_encode(config.client_secret.expose())
            );
            let mut value = HeaderValue::from_str(&format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            ))
            .map_err(|_| TokenError::Request {
                origin: origin.to_owned(),
                detail: "the client credentials make no valid header".into(),
            })?;
            value.set_sensitive(true);
            Some(value)
        }
        AuthStyle::Body => {
            form.append_pair("client_id", config.client_id.as_str());
            form.append_pair("client_secret", config.client_secret.expose());
            None
        }
    };
    Ok((form.finish(), basic))
}

/// One token request: `grant_type=client_credentials`, with the client's authentication.
async fn fetch(
    client: &reqwest::Client,
    config: &OAuth2Config,
    deadline: std::time::Instant,
) -> Result<Fetched, TokenError> {
    let origin = crate::redact::origin(config.token_url.as_str());
    let remaining = deadline.saturating_duration_since(std::time::Instant::now());
    if remaining.is_zero() {
        return Err(TokenError::Timeout { origin });
    }
    let (body, basic) = token_request(config, &origin)?;
    let mut request = client
        .post(config.token_url.clone())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(ACCEPT, "application/json")
        .timeout(remaining);
    if let Some(basic) = basic {
        request = request.header(AUTHORIZATION, basic);
    }
    let mut response = request.body(body).send().await.map_err(|e| classify(e, &origin))?;
    let status = response.status().as_u16();
    let mut bytes = Vec::new();
    while bytes.len() < MAX_TOKEN_RESPONSE {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => return Err(classify(e, &origin)),
        }
    }
    parse_response(status, &bytes, &origin)
}

fn classify(e: reqwest::Error, origin: &str) -> TokenError {
    if e.is_timeout() {
        return TokenError::Timeout {
            origin: origin.to_owned(),
        };
    }
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    TokenError::Request {
        origin: origin.to_owned(),
        detail: crate::redact::urls(&detail).into_owned(),
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
}

/// The token endpoint's answer: a `Bearer` token and its lifetime, or why not (RFC 6749 §5).
/// Of an error answer only the status and the `error` code (a short ASCII word) are kept.
fn parse_response(status: u16, body: &[u8], origin: &str) -> Result<Fetched, TokenError> {
    let parsed: Option<TokenResponse> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let code = parsed
            .and_then(|p| p.error)
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        return Err(TokenError::Status {
            origin: origin.to_owned(),
            status,
            code,
        });
    }
    let response = |detail: &str| TokenError::Response {
        origin: origin.to_owned(),
        detail: detail.to_owned(),
    };
    let parsed = parsed.ok_or_else(|| response("the answer is not a JSON token response"))?;
    let token = parsed
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| response("the answer has no `access_token`"))?;
    if let Some(kind) = &parsed.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(response("the token is not of type `Bearer`"));
    }
    let lifetime = match parsed.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => n.as_u64().map(Duration::from_secs),
        // Some servers send it as a string.
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok().map(Duration::from_secs),
        Some(_) => None,
    };
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| response("the `access_token` is not valid in a header"))?;
    header.set_sensitive(true);
    Ok((header, lifetime))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn source() -> TokenSource {
        TokenSource::new(OAuth2Config {
            token_url: "http://127.0.0.1:1/token".parse().unwrap(),
            client_id: ConfigValue::Plain("id".into()),
            client_secret: Secret::new("s3cret".into()),
            scope: None,
            audience: None,
            auth_style: AuthStyle::Basic,
            hosts: vec!["api.example:443".into()],
        })
    }

    fn issued(n: u32, lifetime: Option<u64>) -> Result<Fetched, TokenError> {
        Ok((
            HeaderValue::from_str(&format!("Bearer t{n}")).unwrap(),
            lifetime.map(Duration::from_secs),
        ))
    }

    async fn get(source: &TokenSource, calls: &AtomicU32, lifetime: Option<u64>) -> String {
        let token = source
            .get_or_fetch(|| async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                issued(n, lifetime)
            })
            .await
            .unwrap();
        token.header().to_str().unwrap().to_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_is_kept_until_shortly_before_it_expires() {
        let s = source();
        let calls = AtomicU32::new(0);
        assert_eq!(get(&s, &calls, Some(600)).await, "Bearer t1");
        // 600 s: dropped 30 s early.
        tokio::time::advance(Duration::from_secs(569)).await;
        assert_eq!(get(&s, &calls, Some(600)).await, "Bearer t1");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(get(&s, &calls, Some(10)).await, "Bearer t2");
        // 10 s: a tenth early.
        tokio::time::advance(Duration::from_millis(8_999)).await;
        assert_eq!(get(&s, &calls, Some(10)).await, "Bearer t2");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(get(&s, &calls, None).await, "Bearer t3");
        // No `expires_in`: an hour, less 30 s.
        tokio::time::advance(Duration::from_secs(3569)).await;
        assert_eq!(get(&s, &calls, None).await, "Bearer t3");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(get(&s, &calls, None).await, "Bearer t4");
        assert_eq!(s.status().fetches, 4);
        assert_eq!(
            usable_for(Duration::from_secs(100 * 24 * 3600)),
            Duration::from_secs(24 * 3600 - 30)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_fetch_and_its_failure() {
        let s = Arc::new(source());
        let calls = Arc::new(AtomicU32::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (s, calls, gate) = (Arc::clone(&s), Arc::clone(&calls), Arc::clone(&gate));
            tasks.push(tokio::spawn(async move {
                s.get_or_fetch(|| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    issued(1, Some(60))
                })
                .await
                .map(|t| t.header().to_str().unwrap().to_owned())
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "Bearer t1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // A failing endpoint: the waiters get the failure of the fetch they waited for.
        let s = Arc::new(source());
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let (s, calls, gate) = (Arc::clone(&s), Arc::clone(&calls), Arc::clone(&gate));
            tasks.push(tokio::spawn(async move {
                s.get_or_fetch(|| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Err(TokenError::Status {
                        origin: "http://127.0.0.1:1".into(),
                        status: 401,
                        code: Some("invalid_client".into()),
                    })
                })
                .await
                .map(|_| ())
            }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        gate.notify_one();
        for t in tasks {
            let e = t.await.unwrap().unwrap_err().to_string();
            assert_eq!(
                e,
                "OAuth2 token endpoint http://127.0.0.1:1 answered 401 (invalid_client)"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(s.status().failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_dropped_but_not_a_newer_one() {
        let s = source();
        let calls = AtomicU32::new(0);
        get(&s, &calls, Some(600)).await;
        let first = s.cached().unwrap();
        s.invalidate(&first);
        assert_eq!(get(&s, &calls, Some(600)).await, "Bearer t2");
        // A second request refused with the old token does not drop the new one.
        s.invalidate(&first);
        assert_eq!(get(&s, &calls, Some(600)).await, "Bearer t2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn token_responses_are_read_and_errors_show_no_secret() {
        let o = "https://auth.example:443";
        let (h, l) = parse_response(
            200,
            br#"{"access_token":"abc","token_type":"bearer","expires_in":"120"}"#,
            o,
        )
        .unwrap();
        assert_eq!((h.to_str().unwrap(), l), ("Bearer abc", Some(Duration::from_secs(120))));
        assert!(h.is_sensitive());
        let (_, l) = parse_response(200, br#"{"access_token":"abc"}"#, o).unwrap();
        assert_eq!(l, None);
        let e = parse_response(200, br#"{"access_token":"abc","token_type":"mac"}"#, o).unwrap_err();
        assert!(e.to_string().contains("not of type `Bearer`"), "{e}");
        let e = parse_response(200, br#"{"access_token":"a\nb"}"#, o).unwrap_err();
        assert!(!e.to_string().contains("a\nb"), "{e}");
        let e = parse_response(
            400,
            br#"{"error":"invalid_scope","error_description":"secret s3cret echoed"}"#,
            o,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "OAuth2 token endpoint https://auth.example:443 answered 400 (invalid_scope)"
        );
        let e = parse_response(500, b"s3cret", o).unwrap_err().to_string();
        assert_eq!(e, "OAuth2 token endpoint https://auth.example:443 answered 500");
        assert!(!format!("{:?}", source()).contains("s3cret"));
    }
}
