//! The API as a web browser sees it: checks every request passes before any route, so that a
//! page the operator visits can neither drive the local API (cross-site requests) nor read it
//! through a name it controls (DNS rebinding).
//!
//! - **`Host`** must name this server: an IP literal the server listens on (any IP literal
//!   when it listens on every address, as rebinding needs a name), a loopback address,
//!   `localhost` (and `*.localhost`), or a name in `[api] allowed_hosts`. Otherwise `403`.
//! - **`Origin`**, when sent, must be this server's own (`http(s)://` + the request's `Host`).
//!   Otherwise `403`: browsers send it on every cross-site request but a top-level `GET`.
//! - **A body** must be `Content-Type: application/json`, else `415`: a form or a
//!   `text/plain` `fetch` is what a page can send cross-site without asking.
//! - **A state change** (any method but `GET`, `HEAD` and `OPTIONS`) needs a marker no page can
//!   send cross-site without the server's consent, which it never gives (no CORS): an
//!   `Authorization` header, `Content-Type: application/json`, or the header
//!   [`MARKER`] (which the dashboard sends). Otherwise `403`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The header that marks a state change as sent by a client of the API, not a web page.
pub const MARKER: &str = "x-outboxd-request";

/// Which `Host` values this server answers to.
#[derive(Debug, Clone)]
pub struct HostRules {
    listen: SocketAddr,
    /// `[api] allowed_hosts`, lower case, without ports.
    names: Vec<String>,
}

impl HostRules {
    pub fn new(listen: SocketAddr, names: &[String]) -> Self {
        Self {
            listen,
            names: names.iter().map(|n| n.trim().to_ascii_lowercase()).collect(),
        }
    }

    /// Validates `[api] allowed_hosts`: names without scheme, port or path.
    pub fn check_names(names: &[String]) -> Result<(), String> {
        for name in names {
            let ok = !name.is_empty()
                && name.len() <= 253
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
            if !ok {
                return Err(format!(
                    "`api.allowed_hosts`: `{name}` is not a host name (give names such as \
                     `outboxd.internal`, without scheme, port or path; `*.example.com` for subdomains)"
                ));
            }
        }
        Ok(())
    }

    /// Whether `host` (a `Host` header value, with or without port) names this server.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return ip.is_loopback() || ip == self.listen.ip() || self.listen.ip().is_unspecified();
        }
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        self.names.iter().any(|allowed| match allowed.strip_prefix("*.") {
            Some(domain) => name.ends_with(&format!(".{domain}")),
            None => *allowed == name,
        })
    }
}

/// The name of a `Host` value: without the port, brackets kept for IPv6.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Why a request was refused before any route.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Host(String),
    Origin(String),
    ContentType(String),
    NoMarker,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refused::Host(host) => (
                StatusCode::FORBIDDEN,
                format!(
                    "`Host: {host}` is not a name of this server; add it to `[api] allowed_hosts` \
                     if clients reach outboxd by that name"
                ),
            ),
            Refused::Origin(origin) => (
                StatusCode::FORBIDDEN,
                format!("requests from `Origin: {origin}` are refused: only this server's own pages may call the API"),
            ),
            Refused::ContentType(sent) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("a request body must be sent as `Content-Type: application/json`, not `{sent}`"),
            ),
            Refused::NoMarker => (
                StatusCode::FORBIDDEN,
                format!(
                    "a request that changes something must carry a token (`Authorization: Bearer …`), \
                     `Content-Type: application/json`, or the header `{MARKER}: 1`"
                ),
            ),
        };
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
}

fn text(headers: &HeaderMap, name: impl axum::http::header::AsHeaderName) -> Option<String> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// Decides one request from its method and headers: `Ok` to go on to the routes.
pub fn check(rules: &HostRules, method: &Method, headers: &HeaderMap) -> Result<(), Refused> {
    let host = text(headers, HOST).unwrap_or_default();
    if !rules.allows(&host) {
        return Err(Refused::Host(host));
    }
    if let Some(origin) = text(headers, ORIGIN) {
        let own = ["http://", "https://"]
            .iter()
            .any(|scheme| origin.eq_ignore_ascii_case(&format!("{scheme}{host}")));
        if !own {
            return Err(Refused::Origin(origin));
        }
    }
    let content_type = text(headers, CONTENT_TYPE);
    let has_body =
        headers.contains_key(TRANSFER_ENCODING) || text(headers, CONTENT_LENGTH).is_some_and(|l| l.trim() != "0");
    let json = content_type.as_deref().is_some_and(is_json);
    if has_body && !json {
        return Err(Refused::ContentType(content_type.unwrap_or_else(|| "(none)".into())));
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && !json && !headers.contains_key(AUTHORIZATION) && !headers.contains_key(MARKER) {
        return Err(Refused::NoMarker);
    }
    Ok(())
}

/// The middleware over the whole router.
pub async fn guard(State(rules): State<Arc<HostRules>>, request: Request, next: Next) -> Response {
    match check(&rules, request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refused) => {
            tracing::debug!(?refused, method = %request.method(), path = request.uri().path(), "refused a request a browser may have sent");
            refused.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn loopback() -> HostRules {
        HostRules::new(
            "127.0.0.1:8080".parse().unwrap(),
            &["outboxd.internal".into(), "*.svc.local".into()],
        )
    }

    #[test]
    fn only_names_of_this_server_are_answered() {
        let r = loopback();
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:1",
            "[::1]:8080",
            "outboxd.internal:8080",
            "a.svc.local",
        ] {
            assert!(r.allows(ok), "{ok}");
        }
        for refused in [
            "rebind.evil.example",
            "10.0.0.5:8080",
            "",
            "svc.local",
            "outboxd.internal.evil",
        ] {
            assert!(!r.allows(refused), "{refused}");
        }
        let any = HostRules::new("0.0.0.0:8080".parse().unwrap(), &[]);
        assert!(any.allows("10.0.0.5:8080") && !any.allows("evil.example"));
        assert!(HostRules::check_names(&["a.b".into(), "*.c".into()]).is_ok());
        for bad in ["http://a", "a:80", "a/b", ""] {
            assert!(HostRules::check_names(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let r = loopback();
        let host = ("host", "127.0.0.1:8080");
        let json = ("content-type", "application/json; charset=utf-8");
        // A page's no-cors POST: text/plain, foreign origin, or no marker at all.
        assert!(matches!(
            check(
                &r,
                &Method::POST,
                &headers(&[host, ("content-type", "text/plain"), ("content-length", "2")])
            ),
            Err(Refused::ContentType(_))
        ));
        assert!(matches!(
            check(
                &r,
                &Method::POST,
                &headers(&[host, json, ("origin", "http://evil.example")])
            ),
            Err(Refused::Origin(_))
        ));
        assert!(matches!(
            check(&r, &Method::GET, &headers(&[host, ("origin", "null")])),
            Err(Refused::Origin(_))
        ));
        assert_eq!(check(&r, &Method::POST, &headers(&[host])), Err(Refused::NoMarker));
        assert!(matches!(
            check(&r, &Method::GET, &headers(&[("host", "rebind.evil.example")])),
            Err(Refused::Host(_))
        ));
        // What clients and the dashboard send.
        assert_eq!(check(&r, &Method::POST, &headers(&[host, json])), Ok(()));
        assert_eq!(check(&r, &Method::POST, &headers(&[host, (MARKER, "1")])), Ok(()));
        assert_eq!(
            check(&r, &Method::POST, &headers(&[host, ("authorization", "Bearer x")])),
            Ok(())
        );
        assert_eq!(
            check(
                &r,
                &Method::POST,
                &headers(&[host, json, ("origin", "http://127.0.0.1:8080")])
            ),
            Ok(())
        );
        assert_eq!(check(&r, &Method::GET, &headers(&[host])), Ok(()));
    }
}
