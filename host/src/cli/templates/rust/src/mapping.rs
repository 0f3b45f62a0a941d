//! The plugin's decisions as plain functions, without the host: what to send for an event, and
//! what an answer means. `cargo test` runs the tests below natively.

/// A request to send, before it becomes the host's `http::Request`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a delivery did not succeed: `Retry` makes outboxd try again later, `Permanent` ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Retry { reason: String, after_ms: Option<u64> },
    Permanent(String),
}

/// The event's payload, POSTed as JSON with its idempotency key (the same on every retry: the
/// receiver deduplicates on it) and its type.
pub fn request(url: &str, event_type: &str, idempotency_key: &str, payload: &str) -> Outgoing {
    Outgoing {
        method: "POST",
        url: url.to_owned(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("idempotency-key".into(), idempotency_key.into()),
            ("x-event-type".into(), event_type.into()),
        ],
        body: payload.as_bytes().to_vec(),
    }
}

/// 2xx: delivered. 408, 429 and 5xx: retry (after `Retry-After` seconds on 429 and 503, when
/// given). Anything else: permanent.
pub fn classify(status: u16, headers: &[(String, String)], body: &[u8]) -> Result<(), Failure> {
    let reason = || {
        let text = String::from_utf8_lossy(body);
        let excerpt: String = text.trim().chars().take(200).collect();
        if excerpt.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {excerpt}")
        }
    };
    match status {
        200..=299 => Ok(()),
        429 | 503 => Err(Failure::Retry {
            reason: reason(),
            after_ms: retry_after_ms(headers),
        }),
        408 | 500..=599 => Err(Failure::Retry {
            reason: reason(),
            after_ms: None,
        }),
        _ => Err(Failure::Permanent(reason())),
    }
}

/// A `Retry-After` given in seconds, in milliseconds (an HTTP date is no hint).
fn retry_after_ms(headers: &[(String, String)]) -> Option<u64> {
    let (_, value) = headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("retry-after"))?;
    value.trim().parse::<u64>().ok().map(|secs| secs.saturating_mul(1000))
}

/// A request that got no answer: timeouts and failed connections retry; a denied host (not in
/// `allowed_hosts`) or an invalid request will not get better by retrying.
pub fn http_error(kind: &str, text: &str) -> Failure {
    let reason = if text.is_empty() { kind.to_owned() } else { format!("{kind}: {text}") };
    match kind {
        "timeout" | "connect" => Failure::Retry { reason, after_ms: None },
        _ => Failure::Permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posts_the_payload_with_its_keys() {
        let out = request("http://127.0.0.1:9100/hook", "order.created", "e1.demo", r#"{"id":1}"#);
        assert_eq!(out.method, "POST");
        assert_eq!(out.url, "http://127.0.0.1:9100/hook");
        assert_eq!(out.body, br#"{"id":1}"#);
        assert!(out.headers.contains(&("idempotency-key".into(), "e1.demo".into())));
        assert!(out.headers.contains(&("x-event-type".into(), "order.created".into())));
    }

    #[test]
    fn classifies_answers() {
        assert_eq!(classify(204, &[], b""), Ok(()));
        let busy = classify(503, &[("retry-after".into(), "5".into())], b"busy");
        assert_eq!(busy, Err(Failure::Retry { reason: "HTTP 503: busy".into(), after_ms: Some(5000) }));
        assert!(matches!(classify(500, &[], b""), Err(Failure::Retry { after_ms: None, .. })));
        assert_eq!(classify(422, &[], b""), Err(Failure::Permanent("HTTP 422".into())));
    }

    #[test]
    fn classifies_requests_without_an_answer() {
        assert!(matches!(http_error("timeout", ""), Failure::Retry { .. }));
        assert!(matches!(http_error("connect", "refused"), Failure::Retry { .. }));
        assert_eq!(http_error("denied", "not allowed"), Failure::Permanent("denied: not allowed".into()));
    }
}
