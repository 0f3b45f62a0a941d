//! API tokens: the `[api]` section of `outboxd.toml`, the scopes (`ingest`, `read`,
//! `admin`), and the middleware that checks `Authorization: Bearer …` on every protected
//! route. Missing or unknown tokens get a JSON `401`, a token without the route's scope a
//! JSON `403`. With no tokens configured the API is open, which is allowed only on a
//! loopback address unless `allow_unauthenticated = true`.
//!
//! Tokens are kept as SHA-256 digests: a presented token is hashed and looked up, so the
//! comparison never runs over the secret itself and the configuration may hold digests only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::secret::Written;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `POST /v1/events`.
    Ingest,
    /// Every `GET` of the API, and `/metrics`.
    Read,
    /// Everything: pause, resume, replay, cancel and erase, plus what `ingest` and `read` allow.
    Admin,
}

impl Scope {
    pub const ALL: &'static [Scope] = &[Scope::Ingest, Scope::Read, Scope::Admin];

    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .iter()
            .copied()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| format!("unknown scope `{s}` (expected ingest, read or admin)"))
    }
}

/// Endpoints that may be left open (answered without a token) by `[api] open`.
pub const OPENABLE: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The `[api]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    /// Start even on a non-loopback `listen` address without any token.
    allow_unauthenticated: Option<bool>,
    /// Endpoints answered without a token even when tokens are configured.
    open: Option<Vec<String>>,
    #[serde(default)]
    tokens: Vec<TokenFile>,
    /// Host names (beyond the listen address and loopback names) the API answers to.
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
    /// How long a client may take to send a request's headers, in ms.
    pub(crate) header_read_timeout_ms: Option<u64>,
    /// How long a request may take, its body and the answer included, in ms.
    pub(crate) request_timeout_ms: Option<u64>,
    /// Connections served at once; more wait to be accepted.
    pub(crate) max_connections: Option<usize>,
}

/// One `[[api.tokens]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    name: String,
    scopes: Vec<String>,
    /// The secret itself (or `{ env = … }`, `{ file = … }`: see `crate::secret`).
    token: Option<Written>,
    /// Or its SHA-256, hex (written in any of the same forms).
    sha256: Option<Written>,
}

/// Shortest accepted `token`: a guessable token is no protection.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Clone)]
struct Token {
    name: String,
    scopes: Vec<Scope>,
}

/// The API's access rules, built from `[api]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    tokens: HashMap<[u8; 32], Token>,
    open: Vec<String>,
    allow_unauthenticated: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            tokens: HashMap::new(),
            open: vec!["/healthz".into(), "/readyz".into()],
            allow_unauthenticated: false,
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AuthConfig {
    /// Validates `[api]`'s tokens and open endpoints; the message names the offending key.
    /// `base` is the directory of `outboxd.toml`, for a token read from a relative `file`.
    pub fn from_file(file: ApiFile, base: &Path) -> Result<Self, String> {
        let mut config = AuthConfig {
            allow_unauthenticated: file.allow_unauthenticated.unwrap_or(false),
            ..AuthConfig::default()
        };
        if let Some(open) = file.open {
            for path in &open {
                if !OPENABLE.contains(&path.as_str()) {
                    return Err(format!(
                        "`api.open`: `{path}` cannot be opened (only {})",
                        OPENABLE.join(", ")
                    ));
                }
            }
            config.open = open;
        }
        for (i, t) in file.tokens.into_iter().enumerate() {
            let at = format!("`api.tokens[{i}]` (`{}`)", t.name);
            if t.name.trim().is_empty() {
                return Err(format!("`api.tokens[{i}].name` must not be empty"));
            }
            let read = |key: &str, w: Written| w.resolve(base).map_err(|e| format!("{at}: `{key}`: {e}"));
            let token = t.token.map(|w| read("token", w)).transpose()?;
            let sha256 = t.sha256.map(|w| read("sha256", w)).transpose()?;
            let digest = match (token, sha256) {
                (Some(token), None) => {
                    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
                        return Err(format!(
                            "{at}: `token` must be at least {MIN_TOKEN_LEN} characters without spaces"
                        ));
                    }
                    digest(&token)
                }
                (None, Some(hex_digest)) => hex::decode(hex_digest.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| format!("{at}: `sha256` must be 64 hex digits"))?,
                _ => return Err(format!("{at}: give exactly one of `token` and `sha256`")),
            };
            if t.scopes.is_empty() {
                return Err(format!("{at}: `scopes` must list at least one of ingest, read, admin"));
            }
            let scopes = t
                .scopes
                .iter()
                .map(|s| s.parse::<Scope>().map_err(|e| format!("{at}: `scopes`: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            if config.tokens.contains_key(&digest) {
                return Err(format!("{at}: the same token is configured twice"));
            }
            config.tokens.insert(digest, Token { name: t.name, scopes });
        }
        Ok(config)
    }

    /// Whether requests must carry a token.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// Refuses an open API on an address other machines can reach.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), String> {
        if self.enabled() || self.allow_unauthenticated || listen.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "`listen = \"{listen}\"` is not a loopback address and no API tokens are configured: \
             anyone who can reach it could ingest, pause targets and replay dead letters. \
             Add `[[api.tokens]]`, or set `[api] allow_unauthenticated = true` if the network is trusted"
        ))
    }

    /// The token's name and scopes, if `presented` is a configured token.
    fn lookup(&self, presented: &str) -> Option<&Token> {
        self.tokens.get(&digest(presented))
    }
}

/// The access rules in force: replaced whole when `outboxd.toml` is reloaded (`SIGHUP`).
/// Readers take the current `Arc` and let go of the channel at once.
pub type LiveAuth = tokio::sync::watch::Receiver<Arc<AuthConfig>>;

/// Rules that never change (for tests and documentation dumps).
pub fn fixed(auth: AuthConfig) -> LiveAuth {
    tokio::sync::watch::channel(Arc::new(auth)).1
}

/// What a route needs: its scope, shared with the middleware.
#[derive(Clone)]
pub struct Guard {
    auth: LiveAuth,
    scope: Scope,
}

impl Guard {
    pub fn new(auth: LiveAuth, scope: Scope) -> Self {
        Self { auth, scope }
    }
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or not a configured one: `401`.
    Unauthenticated(&'static str),
    /// A valid token without the needed scope: `403`.
    Forbidden { token: String, scope: Scope },
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthenticated(why) => {
                let mut response = (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({ "error": why })),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"outboxd\""));
                response
            }
            Denied::Forbidden { token, scope } => (
                StatusCode::FORBIDDEN,
                axum::Json(serde_json::json!({
                    "error": format!("token `{token}` lacks the `{}` scope this endpoint needs", scope.as_str())
                })),
            )
                .into_response(),
        }
    }
}

/// Decides one request: `Ok` to serve it.
pub fn check(auth: &AuthConfig, scope: Scope, path: &str, authorization: Option<&HeaderValue>) -> Result<(), Denied> {
    if !auth.enabled() || auth.open.iter().any(|p| p == path) {
        return Ok(());
    }
    let header = authorization.ok_or(Denied::Unauthenticated(
        "this endpoint needs a token: send `Authorization: Bearer <token>`",
    ))?;
    let presented = header
        .to_str()
        .ok()
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(Denied::Unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        ))?;
    let token = auth.lookup(presented).ok_or(Denied::Unauthenticated("unknown token"))?;
    if token.scopes.contains(&Scope::Admin) || token.scopes.contains(&scope) {
        Ok(())
    } else {
        Err(Denied::Forbidden {
            token: token.name.clone(),
            scope,
        })
    }
}

/// What the caller of a served request may see beyond its route: a handler whose answer
/// could show other producers' data asks it (an ingest-only token is not told the id of
/// another producer's event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The API is open, or the token has the `read` (or `admin`) scope.
    pub may_read: bool,
}

impl Caller {
    fn of(auth: &AuthConfig, authorization: Option<&HeaderValue>) -> Self {
        let may_read = !auth.enabled()
            || authorization
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.split_once(' '))
                .and_then(|(_, token)| auth.lookup(token.trim()))
                .is_some_and(|t| t.scopes.iter().any(|s| matches!(s, Scope::Read | Scope::Admin)));
        Self { may_read }
    }
}

/// The middleware: serves the request if its token has the guard's scope, with the
/// [`Caller`] in the request's extensions.
pub async fn require(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let auth = Arc::clone(&guard.auth.borrow());
    match check(
        &auth,
        guard.scope,
        request.uri().path(),
        request.headers().get(AUTHORIZATION),
    ) {
        Ok(()) => {
            let caller = Caller::of(&auth, request.headers().get(AUTHORIZATION));
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(denied) => denied.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> Result<AuthConfig, String> {
        let file: ApiFile = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        AuthConfig::from_file(file, Path::new("."))
    }

    const TOKENS: &str = r#"
        open = ["/healthz", "/metrics"]
        [[tokens]]
        name = "producer"
        token = "ingest-token-0123456789"
        scopes = ["ingest"]
        [[tokens]]
        name = "ops"
        sha256 = "SHA"
        scopes = ["admin"]
        [[tokens]]
        name = "grafana"
        token = "read-token-0123456789"
        scopes = ["read"]
    "#;

    fn tokens() -> AuthConfig {
        let sha = hex::encode(digest("admin-token-0123456789"));
        config(&TOKENS.replace("SHA", &sha)).unwrap()
    }

    fn bearer(t: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
    }

    #[test]
    fn scopes_decide_what_a_token_may_do() {
        let auth = tokens();
        let ingest = bearer("ingest-token-0123456789");
        let admin = bearer("admin-token-0123456789");
        let read = bearer("read-token-0123456789");
        assert_eq!(check(&auth, Scope::Ingest, "/v1/events", Some(&ingest)), Ok(()));
        assert_eq!(
            check(&auth, Scope::Admin, "/v1/deliveries/replay", Some(&ingest)),
            Err(Denied::Forbidden {
                token: "producer".into(),
                scope: Scope::Admin
            })
        );
        assert!(check(&auth, Scope::Read, "/v1/targets", Some(&ingest)).is_err());
        assert_eq!(check(&auth, Scope::Read, "/v1/targets", Some(&read)), Ok(()));
        assert!(check(&auth, Scope::Ingest, "/v1/events", Some(&read)).is_err());
        for scope in Scope::ALL {
            assert_eq!(
                check(&auth, *scope, "/v1/x", Some(&admin)),
                Ok(()),
                "admin may {scope:?}"
            );
        }
        assert!(matches!(
            check(&auth, Scope::Read, "/v1/targets", None),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            check(&auth, Scope::Read, "/v1/targets", Some(&bearer("nope-nope-nope-nope"))),
            Err(Denied::Unauthenticated("unknown token"))
        ));
        let basic = HeaderValue::from_static("Basic dXNlcjpwYXNz");
        assert!(matches!(
            check(&auth, Scope::Read, "/v1/targets", Some(&basic)),
            Err(Denied::Unauthenticated(_))
        ));
        // Only a token that may read is told what others sent.
        assert!(!Caller::of(&auth, Some(&ingest)).may_read);
        assert!(Caller::of(&auth, Some(&read)).may_read && Caller::of(&auth, Some(&admin)).may_read);
        assert!(
            Caller::of(&config("").unwrap(), None).may_read,
            "an open API hides nothing"
        );
        // Opened by configuration.
        assert_eq!(check(&auth, Scope::Read, "/metrics", None), Ok(()));
        assert_eq!(check(&auth, Scope::Read, "/healthz", None), Ok(()));
    }

    #[test]
    fn probes_are_open_by_default_and_only_what_is_listed_when_open_is_set() {
        let tokens = "[[tokens]]\nname = \"ops\"\ntoken = \"ops-token-0123456789\"\nscopes = [\"read\"]\n";
        let auth = config(tokens).unwrap();
        assert_eq!(check(&auth, Scope::Read, "/healthz", None), Ok(()));
        assert_eq!(check(&auth, Scope::Read, "/readyz", None), Ok(()));
        let auth = config(&format!("open = [\"/healthz\"]\n{tokens}")).unwrap();
        assert!(check(&auth, Scope::Read, "/readyz", None).is_err());
        assert!(config("open = [\"/readyz\"]").is_ok());
    }

    #[test]
    fn without_tokens_everything_is_open_but_only_on_loopback() {
        let auth = config("").unwrap();
        assert_eq!(check(&auth, Scope::Admin, "/v1/deliveries/replay", None), Ok(()));
        assert!(auth.check_listen("127.0.0.1:8080".parse().unwrap()).is_ok());
        assert!(auth.check_listen("[::1]:8080".parse().unwrap()).is_ok());
        let err = auth.check_listen("0.0.0.0:8080".parse().unwrap()).unwrap_err();
        assert!(err.contains("allow_unauthenticated"), "{err}");
        assert!(
            config("allow_unauthenticated = true")
                .unwrap()
                .check_listen("0.0.0.0:8080".parse().unwrap())
                .is_ok()
        );
        assert!(tokens().check_listen("0.0.0.0:8080".parse().unwrap()).is_ok());
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        let cases = [
            ("open = [\"/v1/targets\"]", "api.open"),
            (
                "[[tokens]]\nname = \"a\"\ntoken = \"short\"\nscopes = [\"read\"]",
                "at least 16",
            ),
            (
                "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nscopes = [\"root\"]",
                "unknown scope `root`",
            ),
            (
                "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nscopes = []",
                "at least one",
            ),
            ("[[tokens]]\nname = \"a\"\nscopes = [\"read\"]", "exactly one of"),
            (
                "[[tokens]]\nname = \"a\"\nsha256 = \"abc\"\nscopes = [\"read\"]",
                "64 hex digits",
            ),
            (
                "[[tokens]]\nname = \"a\"\ntoken = \"0123456789abcdefg\"\nscopes = [\"read\"]\nrole = 1",
                "unknown field `role`",
            ),
        ];
        for (text, expected) in cases {
            let err = config(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
