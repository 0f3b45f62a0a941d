//! A target's TLS client identity (mutual TLS) and private CA, from its manifest's `[tls]`:
//! read and checked once, when the manifest loads, then handed to the HTTP client that serves
//! that target's requests only (see `Runtime::client_for`). The private key is held by reqwest's
//! `Identity` and never shown; what identifies a configuration is a digest of its PEM text.

use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// A loaded `[tls]`: the client identity (certificate chain and key) and the CA certificates
/// that alone are trusted for the target's servers, when given.
#[derive(Clone)]
pub struct ClientTls {
    pub identity: Option<reqwest::Identity>,
    /// With a private CA, only these roots are trusted (not the built-in ones).
    pub ca: Vec<reqwest::Certificate>,
    /// SHA-256 of the PEM text, hex: tells two configurations apart without holding them.
    digest: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("identity", &self.identity.is_some())
            .field("ca", &self.ca.len())
            .field("digest", &&self.digest[..12])
            .finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl ClientTls {
    /// From the PEM texts of `[tls]`: `client_cert` (a certificate, or a chain leaf first) and
    /// `client_key` (PKCS#8, PKCS#1 or SEC1) together or neither, and `ca`. Errors name the
    /// key at fault and never quote the key.
    pub fn from_pem(cert: Option<&str>, key: Option<&Secret>, ca: Option<&str>) -> Result<Self, String> {
        let mut hasher = Sha256::new();
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => return Err("`tls.client_cert` needs `tls.client_key`".into()),
            (None, Some(_)) => return Err("`tls.client_key` needs `tls.client_cert`".into()),
            (Some(cert), Some(key)) => {
                match reqwest::Certificate::from_pem_bundle(cert.as_bytes()) {
                    Ok(certs) if !certs.is_empty() => {}
                    _ => return Err("`tls.client_cert`: no PEM certificate found".into()),
                }
                if !key.expose().contains("PRIVATE KEY-----") {
                    return Err("`tls.client_key`: no PEM private key found (PKCS#8, PKCS#1 or SEC1)".into());
                }
                let pem = format!("{}\n{cert}\n", key.expose());
                let identity = reqwest::Identity::from_pem(pem.as_bytes()).map_err(|_| {
                    "`tls.client_key`: not a usable PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()
                })?;
                // Building a client checks that the key is one rustls can sign with.
                reqwest::Client::builder()
                    .identity(identity.clone())
                    .build()
                    .map_err(|e| {
                        format!(
                            "`tls`: the client certificate and key cannot be used: {}",
                            super::host::error_chain(&e)
                        )
                    })?;
                hasher.update(pem.as_bytes());
                Some(identity)
            }
        };
        let ca = match ca {
            None => Vec::new(),
            Some(ca) => {
                let certs = reqwest::Certificate::from_pem_bundle(ca.as_bytes())
                    .map_err(|_| "`tls.ca`: not PEM certificates".to_owned())?;
                if certs.is_empty() {
                    return Err("`tls.ca`: no PEM certificate found".into());
                }
                hasher.update(b"\0ca\0");
                hasher.update(ca.as_bytes());
                certs
            }
        };
        if identity.is_none() && ca.is_empty() {
            return Err("`tls` needs `client_cert` and `client_key`, or `ca`".into());
        }
        Ok(Self {
            identity,
            ca,
            digest: hex::encode(hasher.finalize()),
        })
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether it presents a client certificate.
    pub fn mutual(&self) -> bool {
        self.identity.is_some()
    }
}
