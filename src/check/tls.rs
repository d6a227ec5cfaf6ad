//! The TLS stage: handshake with SNI set to the private name, the chain
//! verified against the system roots plus `--ca-file`, and the leaf
//! certificate recorded so that a failure can say what it presents.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Roots and verifier, built once per run.
pub struct TlsContext {
    provider: Arc<CryptoProvider>,
    verifier: Option<Arc<WebPkiServerVerifier>>,
    pub system_roots: usize,
    pub extra_roots: usize,
}

impl TlsContext {
    /// Loads the system roots and the certificates of `ca_file`. A CA file
    /// that cannot be read or holds no certificate is an error (exit 2).
    pub fn new(ca_file: Option<&Path>) -> Result<TlsContext, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (system_roots, _) = roots.add_parsable_certificates(native.certs);
        let mut extra_roots = 0;
        if let Some(path) = ca_file {
            let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            let mut certs = Vec::new();
            for c in iter {
                certs.push(c.map_err(|e| format!("--ca-file {}: {e}", path.display()))?);
            }
            if certs.is_empty() {
                return Err(format!("--ca-file {}: no PEM certificate in the file", path.display()));
            }
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "--ca-file {}: none of its {ignored} certificate(s) can be used as a root",
                    path.display()
                ));
            }
            extra_roots = added;
        }
        // With no root at all (no ca-certificates, no --ca-file) every chain
        // is untrusted: the TLS stage says so, after recording the names.
        let verifier = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("cannot build the certificate verifier: {e}"))?,
            )
        };
        Ok(TlsContext {
            provider,
            verifier,
            system_roots,
            extra_roots,
        })
    }

    /// No trusted root at all: neither system certificates nor --ca-file.
    pub fn has_no_roots(&self) -> bool {
        self.verifier.is_none()
    }

    fn connector(&self, recorder: Arc<Recorder>) -> Result<TlsConnector, rustls::Error> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(recorder)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsConnector::from(Arc::new(cfg)))
    }
}

/// Delegates to the WebPKI verifier and keeps the leaf certificate it saw.
#[derive(Debug)]
struct Recorder {
    /// None when there is no trusted root: every chain is then untrusted.
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    leaf: Mutex<Option<CertificateDer<'static>>>,
    chain_len: Mutex<usize>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap_or_else(|p| p.into_inner()) = Some(end_entity.clone().into_owned());
        *self.chain_len.lock().unwrap_or_else(|p| p.into_inner()) = 1 + intermediates.len();
        match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// What the leaf certificate says, for the report.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    /// DNS names of the subjectAltName extension (or the subject CN when the
    /// certificate has none).
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// Days until expiry (negative when expired).
    pub days_left: i64,
    pub self_signed: bool,
    /// Number of certificates the server sent (leaf included).
    pub chain_len: usize,
}

impl CertInfo {
    pub fn from_der(der: &[u8]) -> Option<CertInfo> {
        use x509_parser::prelude::*;
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut info = CertInfo {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
            not_before: cert.validity().not_before.to_string(),
            not_after: cert.validity().not_after.to_string(),
            ..CertInfo::default()
        };
        let now = ASN1Time::now();
        info.days_left = (cert.validity().not_after.timestamp() - now.timestamp()) / 86_400;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for gn in &san.value.general_names {
                match gn {
                    GeneralName::DNSName(d) => info.dns_names.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(b) => {
                        let ip = match b.len() {
                            4 => Some(IpAddr::from(<[u8; 4]>::try_from(*b).ok()?)),
                            16 => Some(IpAddr::from(<[u8; 16]>::try_from(*b).ok()?)),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            info.ip_addresses.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        if info.dns_names.is_empty() && info.ip_addresses.is_empty() {
            for cn in cert.subject().iter_common_name() {
                if let Ok(s) = cn.as_str() {
                    info.dns_names.push(s.to_ascii_lowercase());
                }
            }
        }
        Some(info)
    }

    /// The names the certificate presents, for messages.
    pub fn names(&self) -> Vec<String> {
        self.dns_names.iter().chain(self.ip_addresses.iter()).cloned().collect()
    }

    /// Whether a presented name covers `host` (exact, or `*.` for one label).
    pub fn covers(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.parse::<IpAddr>().is_ok() {
            return self.ip_addresses.contains(&host);
        }
        self.dns_names.iter().any(|pat| {
            let pat = pat.trim_end_matches('.');
            match pat.strip_prefix("*.") {
                Some(suffix) => host
                    .split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix),
                None => pat == host,
            }
        })
    }
}

/// How a handshake ended.
pub enum HandshakeError {
    /// The certificate was rejected.
    Certificate(rustls::CertificateError),
    /// Another TLS-level failure (alert, protocol, not TLS at all).
    Tls(rustls::Error),
    Io(std::io::Error),
    Timeout,
}

pub struct Handshake {
    pub result: Result<TlsStream<TcpStream>, HandshakeError>,
    pub cert: Option<CertInfo>,
    pub protocol: Option<String>,
    pub alpn: Option<String>,
}

/// Runs the handshake on an open TCP stream with SNI = `host`.
pub async fn handshake(
    ctx: &TlsContext,
    tcp: TcpStream,
    host: ServerName<'static>,
    timeout: std::time::Duration,
) -> Handshake {
    let recorder = Arc::new(Recorder {
        inner: ctx.verifier.clone(),
        provider: ctx.provider.clone(),
        leaf: Mutex::new(None),
        chain_len: Mutex::new(0),
    });
    let connector = match ctx.connector(recorder.clone()) {
        Ok(c) => c,
        Err(e) => {
            return Handshake {
                result: Err(HandshakeError::Tls(e)),
                cert: None,
                protocol: None,
                alpn: None,
            };
        }
    };
    let outcome = tokio::time::timeout(timeout, connector.connect(host, tcp)).await;
    let cert = recorder
        .leaf
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|d| CertInfo::from_der(d))
        .map(|mut c| {
            c.chain_len = *recorder.chain_len.lock().unwrap_or_else(|p| p.into_inner());
            c
        });
    let result = match outcome {
        Err(_) => Err(HandshakeError::Timeout),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(classify(e)),
    };
    let (protocol, alpn) = match &result {
        Ok(s) => {
            let c = s.get_ref().1;
            (
                c.protocol_version()
                    .and_then(|v| v.as_str())
                    .map(|s| s.replace('_', ".").replace("TLSv1.", "TLS 1.")),
                c.alpn_protocol().map(|a| String::from_utf8_lossy(a).into_owned()),
            )
        }
        Err(_) => (None, None),
    };
    Handshake {
        result,
        cert,
        protocol,
        alpn,
    }
}

fn classify(e: std::io::Error) -> HandshakeError {
    let inner = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).cloned();
    match inner {
        Some(rustls::Error::InvalidCertificate(ce)) => HandshakeError::Certificate(ce),
        Some(other) => HandshakeError::Tls(other),
        None => HandshakeError::Io(e),
    }
}

/// The server name to send as SNI and verify against.
pub fn server_name(host: &super::target::Host) -> Result<ServerName<'static>, String> {
    match host {
        super::target::Host::Name(n) => ServerName::try_from(n.to_string()).map_err(|e| format!("{n}: {e}")),
        super::target::Host::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_exact_and_wildcard() {
        let c = CertInfo {
            dns_names: vec!["registry.corp.example".into(), "*.public.example".into()],
            ip_addresses: vec!["127.0.0.1".into()],
            ..CertInfo::default()
        };
        assert!(c.covers("Registry.Corp.Example."));
        assert!(c.covers("lb.public.example"));
        assert!(!c.covers("a.lb.public.example"));
        assert!(!c.covers("public.example"));
        assert!(c.covers("127.0.0.1"));
        assert!(!c.covers("127.0.0.2"));
    }
}
