//! The web dashboard at `/`: one static page (HTML, CSS and a small vanilla JavaScript app,
//! embedded in the binary with `include_str!`) that polls the JSON API. Nothing is loaded
//! from elsewhere, so it works offline and needs no build step. The assets hold no data and
//! are served without a token; the page asks for one when the API answers `401` and keeps
//! it in the tab's `sessionStorage`.

use axum::Router;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");
const CHARTS_JS: &str = include_str!("dashboard/charts.js");
const EVENTS_JS: &str = include_str!("dashboard/events.js");
const SOURCES_JS: &str = include_str!("dashboard/sources.js");

/// Only this origin's own scripts, styles and API: the page loads nothing from elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    response
}

/// `/` and `/dashboard/*`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/dashboard/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/dashboard/charts.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHARTS_JS) }),
        )
        .route(
            "/dashboard/events.js",
            get(|| async { asset("text/javascript; charset=utf-8", EVENTS_JS) }),
        )
        .route(
            "/dashboard/sources.js",
            get(|| async { asset("text/javascript; charset=utf-8", SOURCES_JS) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("app.css", APP_CSS),
            ("charts.js", CHARTS_JS),
            ("events.js", EVENTS_JS),
            ("sources.js", SOURCES_JS),
        ] {
            // The SVG namespace is a name that createElementNS needs, never fetched.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            for needle in ["http://", "https://", "//cdn", "@import", "innerHTML", "eval("] {
                assert!(!text.contains(needle), "{name} refers to {needle}");
            }
        }
        for script in ["app.js", "charts.js", "events.js", "sources.js"] {
            assert!(INDEX_HTML.contains(&format!("src=\"/dashboard/{script}\"")), "{script}");
        }
        assert!(INDEX_HTML.contains("href=\"/dashboard/app.css\""));
        assert!(APP_JS.contains("sessionStorage") && !APP_JS.contains("localStorage"));
    }
}
