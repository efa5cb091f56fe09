//! The TLS policy of a route (SPEC §3.5) as a type, and the certificate verifiers behind it.
//!
//! [`TlsPolicy`] is built from [`RouteTlsConfig`]: a [`TlsRequirement`] (may the mail go in
//! plaintext when the server offers no STARTTLS?) and a [`CertificateCheck`] (which of the
//! CA-chain and host-name checks apply). [`TlsPolicy::client_config`] builds the rustls client
//! configuration with a verifier for exactly that check; every variant still verifies the
//! handshake signature, so the peer proves it holds the certificate's key.
//!
//! Choice for `requireTls` off (opportunistic): when the server offers STARTTLS, the
//! certificate is checked as the route says and a failed check bounces the mail with
//! `5.7.5`, exactly as with `requireTls` on (SPEC §3.5: a route whose certificate cannot be
//! validated bounces). A handshake that fails for another reason (protocol error,
//! handshake failure, a connection closed or silent mid-handshake) is retried once on the
//! same address in plaintext, as Postfix does: the server cannot speak TLS with us, and
//! without `requireTls` the route accepts plaintext from a server that offers no STARTTLS
//! at all, so refusing it here would only bounce mail to old servers after five days.
//! The certificate case differs because there TLS worked and the check failed: the check is
//! what the route asked for, and falling back would let anyone on the path who presents a
//! bad certificate turn it off. The retry is logged and counted by the caller
//! ([`super::attempt`]). With `requireTls` there is no plaintext: a failed handshake is a
//! temporary failure, and a server that offers no STARTTLS bounces with `5.7.10`.
//!
//! The route's CA file is read when a configuration is built
//! ([`TlsPolicy::client_config`] reads it; [`TlsPolicy::read_ca`] and
//! [`TlsPolicy::client_config_with_ca`] let a caller that caches configurations key them
//! by the file's content, so a CA rotated in place is trusted at the next delivery).
//!
//! This module does not connect or deliver; the route probe lives in [`super::probe`].

use std::fmt;
use std::io::BufReader;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::RouteTlsConfig;

/// May mail go in plaintext?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TlsRequirement {
    /// STARTTLS when offered, plaintext when not (`requireTls: false`).
    Opportunistic,
    /// No TLS, no delivery (`requireTls: true`).
    Required,
}

/// Which certificate checks apply once TLS is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CertificateCheck {
    /// Any certificate (encryption without authentication).
    AnyCertificate,
    /// The chain verifies against the trusted roots; the names are not checked.
    CaSigned,
    /// The certificate names the host connected to; who signed it is not checked.
    HostnameOnly,
    /// Both: the chain verifies and the certificate names the host.
    CaSignedAndHostname,
}

impl CertificateCheck {
    /// The check for `(requireCaSigned, validateHostname)`.
    pub fn from_flags(require_ca_signed: bool, validate_hostname: bool) -> Self {
        match (require_ca_signed, validate_hostname) {
            (false, false) => Self::AnyCertificate,
            (true, false) => Self::CaSigned,
            (false, true) => Self::HostnameOnly,
            (true, true) => Self::CaSignedAndHostname,
        }
    }

    fn needs_roots(self) -> bool {
        matches!(self, Self::CaSigned | Self::CaSignedAndHostname)
    }
}

/// The TLS policy of one route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TlsPolicy {
    /// Whether plaintext is allowed.
    pub requirement: TlsRequirement,
    /// Checks on the server certificate.
    pub check: CertificateCheck,
    /// PEM file of extra trusted roots, used with the CA checks.
    pub extra_ca_file: Option<String>,
    /// TLS from the first byte (port 465) instead of STARTTLS; never plaintext.
    pub implicit: bool,
}

/// The TLS configuration of a route could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the route's CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the route's CA file {path} holds no usable certificate")]
    CaFileEmpty { path: String },
    #[error("cannot build the TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsPolicy {
    /// The policy a route declares.
    pub fn from_route(tls: &RouteTlsConfig) -> Self {
        Self {
            requirement: if tls.require_tls {
                TlsRequirement::Required
            } else {
                TlsRequirement::Opportunistic
            },
            check: CertificateCheck::from_flags(tls.require_ca_signed, tls.validate_hostname),
            extra_ca_file: tls.extra_ca_file.clone(),
            implicit: tls.implicit,
        }
    }

    /// Whether a session under this policy has passed every check a route can ask for
    /// (TLS required, CA-signed chain, host name): the only sessions that may carry
    /// credentials.
    pub fn fully_verified(&self) -> bool {
        self.requirement == TlsRequirement::Required
            && self.check == CertificateCheck::CaSignedAndHostname
    }

    /// A rustls client configuration that verifies servers as this policy says, with the
    /// CA file as it is now.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsSetupError> {
        self.client_config_with_ca(self.read_ca()?.as_deref())
    }

    /// The bytes of the route's CA file (`None` when the policy names none, or its checks
    /// do not use roots).
    pub fn read_ca(&self) -> Result<Option<Vec<u8>>, TlsSetupError> {
        match &self.extra_ca_file {
            Some(path) if self.check.needs_roots() => {
                std::fs::read(path)
                    .map(Some)
                    .map_err(|source| TlsSetupError::CaFile {
                        path: path.clone(),
                        source,
                    })
            }
            _ => Ok(None),
        }
    }

    /// [`TlsPolicy::client_config`] with the CA file's content given (`ca_pem`, as
    /// [`TlsPolicy::read_ca`] read it).
    pub fn client_config_with_ca(
        &self,
        ca_pem: Option<&[u8]>,
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let webpki = if self.check.needs_roots() {
            let roots = self.roots(ca_pem)?;
            let verifier =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
            Some(verifier)
        } else {
            None
        };
        let verifier = RouteVerifier {
            check: self.check,
            webpki,
            algorithms,
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    fn roots(&self, ca_pem: Option<&[u8]>) -> Result<RootCertStore, TlsSetupError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &self.extra_ca_file {
            let Some(pem) = ca_pem else {
                return Err(TlsSetupError::CaFileEmpty { path: path.clone() });
            };
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut BufReader::new(pem)) {
                let cert = cert.map_err(|source| TlsSetupError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                if roots.add(cert).is_ok() {
                    added += 1;
                }
            }
            if added == 0 {
                return Err(TlsSetupError::CaFileEmpty { path: path.clone() });
            }
        }
        Ok(roots)
    }
}

/// A server certificate verifier for one [`CertificateCheck`].
struct RouteVerifier {
    check: CertificateCheck,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for RouteVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteVerifier")
            .field("check", &self.check)
            .finish()
    }
}

fn is_name_error(e: &rustls::Error) -> bool {
    matches!(
        e,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}

impl ServerCertVerifier for RouteVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let webpki = || {
            self.webpki
                .as_ref()
                .ok_or_else(|| rustls::Error::General("no trusted roots configured".into()))
        };
        match self.check {
            CertificateCheck::AnyCertificate => Ok(ServerCertVerified::assertion()),
            CertificateCheck::CaSignedAndHostname => webpki()?.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            CertificateCheck::CaSigned => {
                // webpki checks the chain before the name, so a name error means the
                // chain is good.
                match webpki()?.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp_response,
                    now,
                ) {
                    Err(e) if is_name_error(&e) => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
            CertificateCheck::HostnameOnly => {
                let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
                    rustls::Error::InvalidCertificate(CertificateError::BadEncoding)
                })?;
                cert.verify_is_valid_for_subject_name(server_name)
                    .map_err(|e| match e {
                        webpki::Error::CertNotValidForName(context) => {
                            rustls::Error::InvalidCertificate(
                                CertificateError::NotValidForNameContext {
                                    expected: context.expected,
                                    presented: context.presented,
                                },
                            )
                        }
                        _ => rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                    })?;
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_checks_from_flags() {
        assert_eq!(
            CertificateCheck::from_flags(false, false),
            CertificateCheck::AnyCertificate
        );
        assert_eq!(
            CertificateCheck::from_flags(true, false),
            CertificateCheck::CaSigned
        );
        assert_eq!(
            CertificateCheck::from_flags(false, true),
            CertificateCheck::HostnameOnly
        );
        assert_eq!(
            CertificateCheck::from_flags(true, true),
            CertificateCheck::CaSignedAndHostname
        );
    }

    #[test]
    fn missing_ca_file_is_an_error_naming_the_file() {
        let policy = TlsPolicy {
            requirement: TlsRequirement::Required,
            check: CertificateCheck::CaSigned,
            extra_ca_file: Some("/nonexistent/ca.crt".into()),
            implicit: false,
        };
        let err = policy.client_config().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.crt"), "{err}");
    }
}
