//! A config generation: one `RelayConfig` with everything derived from it (compiled
//! policy, loaded credentials, rustls server config), built once and shared by `Arc`.
//!
//! A session keeps the generation it started with; a reload swaps in a new one for new
//! sessions only. Building a generation reads the TLS and credential files, so a reload
//! also picks up rotated certificates and passwords.

use std::fs::File;
use std::io::BufReader;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::auth::{Credentials, CredentialsError};
use crate::config::{RelayConfig, TlsFiles};
use crate::policy::Policy;
use crate::session::SessionConfig;

/// Why a config cannot be put in force.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    #[error("TLS certificate or key: {0}")]
    Tls(String),
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// One config in force.
#[derive(Debug)]
pub struct Generation {
    /// Increases by one per reload, starting at 1.
    pub id: u64,
    pub config: Arc<RelayConfig>,
    /// SHA-256 of the config (computed when the document carried none).
    pub hash: String,
    pub session: SessionConfig,
    pub credentials: Credentials,
    pub tls: Option<Arc<ServerConfig>>,
}

impl Generation {
    /// Builds generation `id` from `config`.
    pub fn build(id: u64, config: RelayConfig) -> Result<Self, GenerationError> {
        let tls = config.tls.as_ref().map(load_tls).transpose()?;
        let credentials = Credentials::load(config.organization.credentials_file.as_deref())?;
        let policy = Arc::new(Policy::new(&config));
        let hash = if config.hash.is_empty() {
            config.compute_hash()
        } else {
            config.hash.clone()
        };
        let session = SessionConfig {
            hostname: config.hostname.clone(),
            limits: config.limits.clone(),
            policy,
            tls_available: tls.is_some(),
        };
        Ok(Self {
            id,
            config: Arc::new(config),
            hash,
            session,
            credentials,
            tls,
        })
    }
}

/// Reads the PEM chain and key into a rustls server config using the ring provider.
pub fn load_tls(files: &TlsFiles) -> Result<Arc<ServerConfig>, GenerationError> {
    let open = |path: &str| {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| GenerationError::Tls(format!("cannot open {path}: {e}")))
    };
    let certs = rustls_pemfile::certs(&mut open(&files.cert_file)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GenerationError::Tls(format!("{}: {e}", files.cert_file)))?;
    if certs.is_empty() {
        return Err(GenerationError::Tls(format!(
            "{} holds no certificate",
            files.cert_file
        )));
    }
    let key = rustls_pemfile::private_key(&mut open(&files.key_file)?)
        .map_err(|e| GenerationError::Tls(format!("{}: {e}", files.key_file)))?
        .ok_or_else(|| GenerationError::Tls(format!("{} holds no private key", files.key_file)))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| GenerationError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| GenerationError::Tls(format!("{}: {e}", files.cert_file)))?;
    Ok(Arc::new(config))
}
