//! The message: pure functions from an event to a Slack incoming-webhook body.

use serde_json::{Value, json};

/// How many characters of a payload a generic summary keeps.
const GENERIC_SUMMARY_CHARS: usize = 200;

/// Optional `[config]` values copied into the body.
#[derive(Debug, Default)]
pub struct Options {
    /// `channel`: overrides the webhook's default channel.
    pub channel: Option<String>,
    /// `username`: overrides the webhook's default user name.
    pub username: Option<String>,
}

/// The JSON body posted for an event: `text` (the notification fallback), `blocks`, and the
/// optional `channel` and `username`.
pub fn body(event_id: &str, event_type: &str, payload: &str, options: &Options) -> Value {
    let summary = summary(event_type, payload);
    let mut body = json!({
        "text": escape(&format!("{event_type}: {summary}")),
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": format!("*{}*\n{}", escape(event_type), escape(&summary)),
                },
            },
            {
                "type": "context",
                "elements": [{ "type": "mrkdwn", "text": format!("event `{}`", escape(event_id)) }],
            },
        ],
    });
    for (key, value) in [("channel", &options.channel), ("username", &options.username)] {
        if let Some(value) = value {
            body[key] = Value::String(value.clone());
        }
    }
    body
}

/// A one-line summary of an event: `order <id> by <email> — <total>` for an `order.*` event
/// whose payload has an order id, else the payload's first 200 characters.
pub fn summary(event_type: &str, payload: &str) -> String {
    let order = event_type
        .starts_with("order.")
        .then(|| serde_json::from_str::<Value>(payload).ok())
        .flatten()
        .and_then(|payload| order_summary(&payload));
    order.unwrap_or_else(|| truncate(payload.trim(), GENERIC_SUMMARY_CHARS))
}

/// `order <id>[ by <customer.email>][ — <total>[ <currency>]]`, or `None` without an id.
fn order_summary(payload: &Value) -> Option<String> {
    let id = payload.get("order_id").or_else(|| payload.get("id")).and_then(scalar)?;
    let mut summary = format!("order {id}");
    if let Some(email) = payload.pointer("/customer/email").and_then(Value::as_str) {
        summary.push_str(&format!(" by {email}"));
    }
    if let Some(total) = payload.get("total").and_then(scalar) {
        summary.push_str(&format!(" — {total}"));
        if let Some(currency) = payload.get("currency").and_then(Value::as_str) {
            summary.push_str(&format!(" {currency}"));
        }
    }
    Some(summary)
}

/// A string or number as text; anything else is `None`.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The first `max` characters of `text`, with `…` when something was cut.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Escapes the three characters Slack's message formatting reserves, so that a payload cannot
/// turn into links or mentions such as `<!channel>`.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDER: &str = r#"{"order_id":1001,"customer":{"email":"ada@example.com"},"total":99.90,"currency":"EUR"}"#;

    #[test]
    fn order_events_are_summarised_from_their_fields() {
        assert_eq!(
            summary("order.created", ORDER),
            "order 1001 by ada@example.com — 99.90 EUR"
        );
        assert_eq!(
            summary("order.paid", r#"{"id":"A-7","total":"12.00"}"#),
            "order A-7 — 12.00"
        );
        assert_eq!(summary("order.shipped", r#"{"order_id":5,"customer":{}}"#), "order 5");
    }

    #[test]
    fn order_events_without_an_id_fall_back_to_the_payload() {
        assert_eq!(summary("order.created", r#"{"total":3}"#), r#"{"total":3}"#);
        assert_eq!(summary("order.created", "not json"), "not json");
    }

    #[test]
    fn other_events_keep_the_first_200_characters() {
        assert_eq!(summary("user.signed_up", r#" {"id":1} "#), r#"{"id":1}"#);
        let long = format!("\"{}\"", "é".repeat(300));
        let cut = summary("user.note", &long);
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.starts_with("\"éé") && cut.ends_with("é…"));
        // An order-looking payload is not special for other types.
        assert_eq!(summary("refund.created", ORDER), ORDER);
    }

    #[test]
    fn body_has_text_blocks_and_optional_fields() {
        let plain = body("e1", "order.created", ORDER, &Options::default());
        assert_eq!(
            plain["text"],
            "order.created: order 1001 by ada@example.com — 99.90 EUR"
        );
        assert_eq!(
            plain["blocks"][0]["text"]["text"],
            "*order.created*\norder 1001 by ada@example.com — 99.90 EUR"
        );
        assert_eq!(plain["blocks"][1]["elements"][0]["text"], "event `e1`");
        assert!(plain.get("channel").is_none() && plain.get("username").is_none());

        let options = Options {
            channel: Some("#orders".into()),
            username: Some("outboxd".into()),
        };
        let full = body("e1", "order.created", ORDER, &options);
        assert_eq!(full["channel"], "#orders");
        assert_eq!(full["username"], "outboxd");
    }

    #[test]
    fn slack_control_characters_are_escaped() {
        let b = body("e1", "note", r#""<!channel> & <http://x|y>""#, &Options::default());
        assert_eq!(b["text"], r#"note: "&lt;!channel&gt; &amp; &lt;http://x|y&gt;""#);
    }
}
