//! The standard mapping from HTTP results to delivery outcomes.
//!
//! - 2xx: delivered.
//! - 408, 429 and 5xx: retry. For 429 and 503 a `Retry-After` header given in
//!   delta-seconds becomes the minimum wait; an HTTP-date is no hint.
//! - Any other status (1xx, 3xx — the host does not follow redirects — and
//!   other 4xx): permanent, with the status and a short body excerpt.
//! - No response: timeouts and connection failures are retried; requests the
//!   host denied and other errors are permanent.

use crate::DeliveryError;
use crate::http::{HttpError, Response};

/// Longest body excerpt quoted in a failure reason, in characters.
const EXCERPT_CHARS: usize = 200;

/// Classifies a response the standard way (see the [module docs](self)).
pub fn classify_response(response: &Response) -> Result<(), DeliveryError> {
    let status = response.status;
    if response.is_success() {
        return Ok(());
    }
    let reason = match excerpt(&response.body) {
        Some(body) => format!("HTTP {status}: {body}"),
        None => format!("HTTP {status}"),
    };
    match status {
        429 | 503 => Err(match response.header("retry-after").and_then(parse_retry_after) {
            Some(after_ms) => DeliveryError::retry_after(reason, after_ms),
            None => DeliveryError::retry(reason),
        }),
        408 | 500..=599 => Err(DeliveryError::retry(reason)),
        _ => Err(DeliveryError::permanent(reason)),
    }
}

/// Classifies a request that produced no response: timeouts and connection
/// failures are retried, denied requests and other errors are permanent.
///
/// The reason is [`HttpError::describe`], e.g. `"connect: connection refused"`.
pub fn classify_http_error(error: &HttpError) -> DeliveryError {
    match error {
        HttpError::Timeout | HttpError::Connect(_) => DeliveryError::retry(error.describe()),
        HttpError::Denied(_) | HttpError::Other(_) => DeliveryError::permanent(error.describe()),
    }
}

/// Converts with [`classify_http_error`], so `http::send(request)?` works in
/// [`Target::deliver`](crate::Target::deliver).
impl From<HttpError> for DeliveryError {
    fn from(error: HttpError) -> Self {
        classify_http_error(&error)
    }
}

/// Parses a `Retry-After` value given in delta-seconds into milliseconds.
///
/// Returns `None` for anything else, including an HTTP-date. Absurdly large
/// values saturate; the host caps the wait by the target's maximum backoff.
pub fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(seconds.saturating_mul(1000))
}

/// A one-line excerpt of a response body: lossy UTF-8, whitespace runs
/// collapsed to single spaces, at most [`EXCERPT_CHARS`] characters.
fn excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut words = text.split_whitespace();
    let mut out = String::from(words.next()?);
    for word in words {
        out.push(' ');
        out.push_str(word);
    }
    if let Some((cut, _)) = out.char_indices().nth(EXCERPT_CHARS) {
        out.truncate(cut);
        out.push('…');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn success_statuses_are_delivered() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(classify_response(&response(status, &[], "")), Ok(()));
        }
    }

    #[test]
    fn transient_statuses_are_retried() {
        for status in [408, 500, 502, 504, 599] {
            let err = classify_response(&response(status, &[("retry-after", "7")], "")).unwrap_err();
            assert_eq!(err, DeliveryError::retry(format!("HTTP {status}")));
        }
    }

    #[test]
    fn retry_after_is_honoured_for_429_and_503() {
        let err = classify_response(&response(429, &[("retry-after", "30")], "slow down")).unwrap_err();
        assert_eq!(err, DeliveryError::retry_after("HTTP 429: slow down", 30_000));

        let err = classify_response(&response(503, &[("Retry-After", " 2 ")], "")).unwrap_err();
        assert_eq!(err, DeliveryError::retry_after("HTTP 503", 2_000));

        let dated = [("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")];
        let err = classify_response(&response(503, &dated, "")).unwrap_err();
        assert_eq!(err, DeliveryError::retry("HTTP 503"));
    }

    #[test]
    fn other_statuses_are_permanent_with_an_excerpt() {
        let err = classify_response(&response(404, &[], "  no such\n\thook ")).unwrap_err();
        assert_eq!(err, DeliveryError::permanent("HTTP 404: no such hook"));
        for status in [100, 301, 400, 401, 403, 409, 422] {
            assert!(!classify_response(&response(status, &[], "")).unwrap_err().is_retry());
        }
    }

    #[test]
    fn long_bodies_are_cut_on_a_char_boundary() {
        let body = "é".repeat(EXCERPT_CHARS + 50);
        let err = classify_response(&response(400, &[], &body)).unwrap_err();
        let expected = format!("HTTP 400: {}…", "é".repeat(EXCERPT_CHARS));
        assert_eq!(err.reason(), expected);
    }

    #[test]
    fn retry_after_parses_delta_seconds_only() {
        assert_eq!(parse_retry_after("0"), Some(0));
        assert_eq!(parse_retry_after("120"), Some(120_000));
        assert_eq!(parse_retry_after("\t5 "), Some(5_000));
        assert_eq!(parse_retry_after("99999999999999999999999"), Some(u64::MAX));
        assert_eq!(parse_retry_after(""), None);
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("+1"), None);
        assert_eq!(parse_retry_after("1.5"), None);
        assert_eq!(parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT"), None);
    }

    #[test]
    fn http_errors_split_into_retry_and_permanent() {
        assert_eq!(
            classify_http_error(&HttpError::Connect("connection refused".into())),
            DeliveryError::retry("connect: connection refused")
        );
        assert!(classify_http_error(&HttpError::Timeout).is_retry());
        assert_eq!(
            DeliveryError::from(HttpError::Denied("evil.test:443 is not allowed".into())),
            DeliveryError::permanent("denied: evil.test:443 is not allowed")
        );
        assert!(!classify_http_error(&HttpError::Other("bad header".into())).is_retry());
    }
}
