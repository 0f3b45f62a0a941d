//! Standard Webhooks signing: the `webhook-signature` header value,
//! `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`, one such entry
//! per key, separated by spaces (how the standard carries a key rotation: a
//! receiver accepts the request when any entry verifies with its key).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of Standard Webhooks secrets; the base64 key follows it.
const SECRET_PREFIX: &str = "whsec_";

/// An HMAC-SHA256 signing key decoded from a Standard Webhooks secret, held
/// as the MAC state after the key (so each signature hashes only its message).
pub struct SigningKey(Hmac<Sha256>);

impl SigningKey {
    /// Decodes `secret`: the base64 text after the `whsec_` prefix, or the
    /// whole string if it has no prefix. Errors describe what is wrong
    /// without quoting the secret.
    pub fn from_secret(secret: &str) -> Result<Self, String> {
        let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let key = STANDARD
            .decode(encoded.trim())
            .map_err(|err| format!("config key `secret` is not valid base64: {err}"))?;
        if key.is_empty() {
            return Err("config key `secret` is empty".to_owned());
        }
        Ok(Self(
            Hmac::<Sha256>::new_from_slice(&key).expect("HMAC accepts any key length"),
        ))
    }

    /// The `webhook-signature` header value for message `id` sent at
    /// `timestamp` (Unix seconds) with `body`.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

/// The signing keys a target's configuration gives: `secret` (one key) or `secrets` (the
/// manifest's list, which the host hands over as a JSON array; the new key first, by
/// convention). Both at once, an empty list or an undecodable key is an error that names
/// the key's position but never quotes it.
pub fn keys(secret: Option<String>, secrets: Option<String>) -> Result<Vec<SigningKey>, String> {
    match (secret, secrets) {
        (None, None) => Ok(Vec::new()),
        (Some(_), Some(_)) => {
            Err("config keys `secret` and `secrets` are both set: keep one (`secrets` for a rotation)".to_owned())
        }
        (Some(one), None) => Ok(vec![SigningKey::from_secret(&one)?]),
        (None, Some(list)) => {
            let list: Vec<String> = match serde_json::from_str(&list) {
                Ok(list) => list,
                // A single string written as `secrets = "whsec_…"`.
                Err(_) if !list.trim_start().starts_with('[') => vec![list],
                Err(_) => return Err("config key `secrets` must be a list of strings".to_owned()),
            };
            if list.is_empty() {
                return Err("config key `secrets` is an empty list".to_owned());
            }
            list.iter()
                .enumerate()
                .map(|(i, s)| SigningKey::from_secret(s).map_err(|e| format!("`secrets[{i}]`: {e}")))
                .collect()
        }
    }
}

/// The `webhook-signature` header value signed with every key in `keys`, in order.
pub fn sign_all(keys: &[SigningKey], id: &str, timestamp: u64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| key.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks reference
    /// implementations.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: u64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn reproduces_the_published_test_vector() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn the_prefix_is_optional() {
        let key = SigningKey::from_secret(&SECRET[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(key.sign(ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn a_different_message_gives_a_different_signature() {
        let key = SigningKey::from_secret(SECRET).unwrap();
        assert_ne!(key.sign(ID, TIMESTAMP + 1, BODY), SIGNATURE);
    }

    #[test]
    fn invalid_secrets_are_rejected_without_being_quoted() {
        let err = SigningKey::from_secret("whsec_not base64!").err().unwrap();
        assert!(err.starts_with("config key `secret` is not valid base64"), "{err}");
        assert!(!err.contains("not base64!"));
        assert!(SigningKey::from_secret("whsec_").is_err());
    }

    #[test]
    fn a_rotation_signs_with_every_key_in_order() {
        let other = "whsec_Y3JtLXNlY3JldC1mb3ItdGhlLWUyZS10ZXN0cw==";
        let list = format!(r#"["{other}", "{SECRET}"]"#);
        let keys = keys(None, Some(list)).unwrap();
        let header = sign_all(&keys, ID, TIMESTAMP, BODY);
        let entries: Vec<&str> = header.split(' ').collect();
        assert_eq!(entries.len(), 2, "{header}");
        assert_eq!(entries[1], SIGNATURE, "the old key's entry is the standard's vector");
        assert_ne!(entries[0], SIGNATURE);
        assert!(entries[0].starts_with("v1,"));
    }

    #[test]
    fn secret_forms_and_their_errors() {
        assert!(keys(None, None).unwrap().is_empty());
        assert_eq!(keys(Some(SECRET.into()), None).unwrap().len(), 1);
        assert_eq!(keys(None, Some(SECRET.into())).unwrap().len(), 1);
        let both = keys(Some(SECRET.into()), Some(format!(r#"["{SECRET}"]"#)))
            .err()
            .unwrap();
        assert!(both.contains("both set"), "{both}");
        assert!(keys(None, Some("[]".into())).err().unwrap().contains("empty list"));
        let bad = keys(None, Some(format!(r#"["{SECRET}", "whsec_not base64!"]"#)))
            .err()
            .unwrap();
        assert!(bad.starts_with("`secrets[1]`"), "{bad}");
        assert!(!bad.contains("not base64!"), "the key is not quoted: {bad}");
    }
}
