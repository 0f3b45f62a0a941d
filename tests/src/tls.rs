//! TLS for the test receivers: a private PKI made in the test ([`TestPki`]: a CA, a server
//! certificate for `127.0.0.1` and `localhost`, and a client certificate, all signed by the
//! CA) and the server configuration of a [`Receiver`](crate::Receiver) that speaks HTTPS and
//! requires a client certificate signed by that CA (mutual TLS): see
//! [`ReceiverBuilder::tls`](crate::receiver::ReceiverBuilder::tls).

use std::path::Path;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;

/// A CA with a server and a client certificate.
pub struct TestPki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// The client certificate, PEM.
    pub client_cert_pem: String,
    /// The client's private key, PEM (PKCS#8).
    pub client_key_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    ca_der: CertificateDer<'static>,
}

impl TestPki {
    /// Makes the CA and the two certificates (ECDSA P-256, fresh keys every time).
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "outboxd test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");

        let server_key = KeyPair::generate().expect("server key");
        let mut server_params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("server params");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = server_params
            .signed_by(&server_key, &ca, &ca_key)
            .expect("server certificate");

        let client_key = KeyPair::generate().expect("client key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "outboxd test client");
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = client_params
            .signed_by(&client_key, &ca, &ca_key)
            .expect("client certificate");

        Self {
            ca_pem: ca.pem(),
            client_cert_pem: client.pem(),
            client_key_pem: client_key.serialize_pem(),
            server_chain: vec![server.der().clone()],
            server_key: server_key.serialize_der(),
            ca_der: ca.der().clone(),
        }
    }

    /// Writes `ca.pem`, `client.pem` and `client.key` into `dir`.
    pub fn write_to(&self, dir: &Path) {
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).expect("write ca.pem");
        std::fs::write(dir.join("client.pem"), &self.client_cert_pem).expect("write client.pem");
        std::fs::write(dir.join("client.key"), &self.client_key_pem).expect("write client.key");
    }

    /// A server configuration that presents the server certificate and requires a client
    /// certificate signed by the CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA as root");
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()
            .expect("client verifier");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
