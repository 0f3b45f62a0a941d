//! Keeping secrets out of error text: a URL may carry credentials in its user info, path or
//! query (a Slack-style `…/services/T/B/<secret>` webhook), and error text is shown by the
//! API, the dashboard and the log and is sent on in `outboxd.delivery.dead` events. Wherever
//! a URL appears in an error, only its scheme, host and port are kept.

use std::borrow::Cow;

/// `scheme://host:port` of `url`, or `(an invalid URL)`: never the user info, path or query.
pub fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port_or_known_default()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            _ => format!("{}:", u.scheme()),
        },
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

/// `text` with every `http://…` and `https://…` URL in it (up to the next space, quote or
/// bracket) cut to its [`origin`].
pub fn urls(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    if !lower.contains("http://") && !lower.contains("https://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = 0;
    let mut i = 0;
    while i < text.len() {
        let tail = &lower[i..];
        let scheme = if tail.starts_with("http://") {
            7
        } else if tail.starts_with("https://") {
            8
        } else {
            i += text[i..].chars().next().map_or(1, char::len_utf8);
            continue;
        };
        // The URL runs to the next space or quote, less the punctuation that closes the text
        // around it (`(… url)`, `url,`); an IPv6 host's brackets stay inside.
        let mut end = text[i + scheme..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>'))
            .map_or(text.len(), |n| i + scheme + n);
        while end > i + scheme && text[..end].ends_with([')', '}', ',', '.', ';', ':']) {
            end -= 1;
        }
        out.push_str(&text[rest..i]);
        let url = &text[i..end];
        let kept = origin(url);
        if kept == "(an invalid URL)" {
            // Not parseable: keep the scheme only, whatever follows may be a secret.
            out.push_str(&url[..scheme]);
            out.push('…');
        } else {
            out.push_str(&kept);
        }
        rest = end;
        i = end;
    }
    out.push_str(&text[rest..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheme_host_and_port_are_kept() {
        assert_eq!(
            origin("https://user:pw@hooks.slack.com/services/T0/B0/SECRET?token=x"),
            "https://hooks.slack.com:443"
        );
        assert_eq!(origin("http://127.0.0.1:9/a"), "http://127.0.0.1:9");
        assert_eq!(origin("not a url SECRET"), "(an invalid URL)");
        let text = "error sending request for url (https://hooks.slack.com/services/T/B/SECRET): \
                    connect: refused; see HTTP://u:p@[::1]:8/x?k=SECRET, and 'https://a.b/SECRET'";
        let redacted = urls(text);
        assert!(!redacted.contains("SECRET") && !redacted.contains("u:p"), "{redacted}");
        assert!(redacted.contains("(https://hooks.slack.com:443)"), "{redacted}");
        assert!(redacted.contains("http://[::1]:8,"), "{redacted}");
        assert!(redacted.contains("'https://a.b:443'"), "{redacted}");
        assert!(matches!(urls("no url here: é"), Cow::Borrowed(_)));
        assert_eq!(urls("x https://%zz/SECRET y"), "x https://… y");
    }
}
