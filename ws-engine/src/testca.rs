//! A throwaway certificate authority made at run time (rcgen), for tests, benchmarks and
//! `ws-trace demo`: it issues server certificates for host names / IP addresses and gives
//! the CA certificate as PEM for the client's [`TlsOptions::ca_file`](crate::TlsOptions).
//!
//! ```no_run
//! use ws_engine::server::{Feed, FeedServer};
//! use ws_engine::testca::TestCa;
//!
//! let ca = TestCa::new()?;
//! let server = FeedServer::start_tls(
//!     Feed { count: 10, size: 64, gap: Default::default(), payload: Default::default() },
//!     ca.server_config(&["127.0.0.1", "localhost"])?,
//! )?;
//! let ca_file = std::env::temp_dir().join("ws-engine-test-ca.pem");
//! ca.write_ca_pem(&ca_file)?;
//! let mut cfg = ws_engine::ConnConfig::default();
//! cfg.tls.ca_file = Some(ca_file);
//! // server.url() is wss://127.0.0.1:PORT/feed
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use crate::tls::crypto_provider;

/// Errors of making certificates or server configurations.
#[derive(Debug, thiserror::Error)]
pub enum TestCaError {
    /// Certificate generation.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the server configuration.
    #[error("server TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// Writing a PEM file.
    #[error("writing PEM: {0}")]
    Io(#[from] io::Error),
}

/// When a server certificate is valid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Validity {
    /// Valid now (1975 to 4096).
    #[default]
    Current,
    /// Expired (valid only during 2020).
    Expired,
}

/// A throwaway CA.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A server certificate (chain: leaf only) and its key.
#[derive(Debug)]
pub struct ServerCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key (PKCS#8), PEM.
    pub key_pem: String,
    der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCa {
    /// A new CA with a fresh ECDSA P-256 key.
    pub fn new() -> Result<TestCa, TestCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        // A unique name: two test CAs must not look like the same issuer.
        let tag: String = crate::handshake::random_bytes::<6>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("ws-engine throwaway test CA {tag}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM (what a client trusts).
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// Writes the CA certificate as PEM to `path`.
    pub fn write_ca_pem(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, &self.pem)
    }

    /// Issues a server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(
        &self,
        names: &[&str],
        validity: Validity,
    ) -> Result<ServerCert, TestCaError> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }

    /// A server configuration with a current certificate for `names`: TLS 1.3 and 1.2,
    /// every ring cipher suite, ALPN `http/1.1`.
    pub fn server_config(&self, names: &[&str]) -> Result<Arc<ServerConfig>, TestCaError> {
        self.server_cert(names, Validity::Current)?
            .server_config(&[&rustls::version::TLS13, &rustls::version::TLS12], None)
    }
}

impl ServerCert {
    /// A server configuration for this certificate, limited to `versions` and, if given,
    /// to `suites` (ring provider, ALPN `http/1.1`).
    pub fn server_config(
        &self,
        versions: &[&'static SupportedProtocolVersion],
        suites: Option<&[SupportedCipherSuite]>,
    ) -> Result<Arc<ServerConfig>, TestCaError> {
        let mut provider = (*crypto_provider()).clone();
        if let Some(s) = suites {
            provider.cipher_suites = s.to_vec();
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)?
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Writes the certificate and key as PEM files (e.g. for Python's `ssl`).
    pub fn write_pem(&self, cert_path: &Path, key_path: &Path) -> io::Result<()> {
        std::fs::write(cert_path, &self.cert_pem)?;
        std::fs::write(key_path, &self.key_pem)
    }
}
