//! Standard Webhooks signing: the `webhook-signature` header value,
//! `v1,<base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))>`.

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
}
