//! Outbound HTTP through the host's `http` import: [`send`], request
//! builders and response accessors.
//!
//! The host performs the request: it pools connections, enforces timeouts,
//! does not follow redirects and only reaches the `host:port` pairs listed in
//! the target's `allowed_hosts`. Any status code is a [`Response`]; an
//! [`HttpError`] means no response arrived. [`crate::outcome`] maps both to a
//! delivery outcome, and `?` converts an [`HttpError`] into a
//! [`DeliveryError`](crate::DeliveryError) the same way.

use std::borrow::Cow;

use crate::bindings::outboxd::target::http as wit;

pub use wit::{Error as HttpError, Request, Response};

/// Sends `request` through the host and waits for the response.
pub fn send(request: Request) -> Result<Response, HttpError> {
    wit::send(&request)
}

impl Request {
    /// A request with `method` to the absolute `http(s)://` `url`, with no
    /// headers, an empty body and the host's default timeout.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms: None,
        }
    }

    /// A `GET` request to `url`.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new("GET", url)
    }

    /// A `POST` request to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new("POST", url)
    }

    /// A `PUT` request to `url`.
    pub fn put(url: impl Into<String>) -> Self {
        Self::new("PUT", url)
    }

    /// A `PATCH` request to `url`.
    pub fn patch(url: impl Into<String>) -> Self {
        Self::new("PATCH", url)
    }

    /// A `DELETE` request to `url`.
    pub fn delete(url: impl Into<String>) -> Self {
        Self::new("DELETE", url)
    }

    /// Appends a header; repeated names are sent as repeated headers.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets the timeout in milliseconds (`None`: the host's default). The
    /// host caps it by the time left before the attempt's deadline.
    pub fn timeout_ms(mut self, timeout_ms: impl Into<Option<u32>>) -> Self {
        self.timeout_ms = timeout_ms.into();
        self
    }

    /// Sends this request; shorthand for [`send`].
    pub fn send(self) -> Result<Response, HttpError> {
        send(self)
    }
}

impl Response {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text, with invalid UTF-8 replaced by `U+FFFD`.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

impl HttpError {
    /// The kind of failure: `"denied"`, `"timeout"`, `"connect"` or `"other"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Denied(_) => "denied",
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Other(_) => "other",
        }
    }

    /// A one-line description, `"<kind>: <host's text>"`, e.g.
    /// `"denied: example.com:443 is not in allowed_hosts"`.
    ///
    /// Prefer this to `Display`, whose generated form is the `Debug` one.
    pub fn describe(&self) -> String {
        match self {
            Self::Denied(text) | Self::Connect(text) | Self::Other(text) => {
                format!("{}: {text}", self.kind())
            }
            Self::Timeout => "timeout: no response before the request timeout".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_fill_in_the_request() {
        let request = Request::post("https://example.com/hook")
            .header("content-type", "application/json")
            .header("x-a", "1")
            .body("{}")
            .timeout_ms(2500);
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, "https://example.com/hook");
        assert_eq!(
            request.headers,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("x-a".to_owned(), "1".to_owned()),
            ]
        );
        assert_eq!(request.body, b"{}");
        assert_eq!(request.timeout_ms, Some(2500));
        assert_eq!(Request::get("http://x").timeout_ms(None).timeout_ms, None);
    }

    #[test]
    fn response_headers_are_case_insensitive() {
        let response = Response {
            status: 204,
            headers: vec![("retry-after".to_owned(), "5".to_owned())],
            body: Vec::new(),
        };
        assert!(response.is_success());
        assert_eq!(response.header("Retry-After"), Some("5"));
        assert_eq!(response.header("etag"), None);
    }

    #[test]
    fn errors_describe_themselves_with_their_kind() {
        assert_eq!(
            HttpError::Denied("nope:443 not allowed".to_owned()).describe(),
            "denied: nope:443 not allowed"
        );
        assert_eq!(HttpError::Timeout.kind(), "timeout");
        assert!(HttpError::Timeout.describe().starts_with("timeout: "));
        assert_eq!(HttpError::Connect("refused".to_owned()).describe(), "connect: refused");
        assert_eq!(HttpError::Other("bad url".to_owned()).kind(), "other");
    }
}
